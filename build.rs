//! Compiles the wire contract in `proto/` into Rust (messages, clients and servers) and writes
//! the file descriptor set that server reflection serves. The proto files are parsed by protox,
//! a pure-Rust compiler, so building needs no `protoc` on the machine.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "proto/assent/v1/types.proto",
    "proto/assent/v1/decisions.proto",
    "proto/assent/v1/subjects.proto",
    "proto/assent/v1/audit.proto",
    "proto/assent/v1/changes.proto",
    "proto/assent/v1/policies.proto",
    "proto/assent/v1/rights.proto",
    "proto/assent/v1/retention.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTO_FILES, ["proto"])?;
    let descriptor_bytes = protox::prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("assent_descriptor.bin"), descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
