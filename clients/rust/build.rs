//! Compiles the wire contract in the repository's `proto/` into Rust: messages and clients, and
//! (behind the `server` feature, used by the assent server) the server traits and the file
//! descriptor set that server reflection serves. protox is a pure-Rust compiler, so building
//! needs no `protoc` on the machine.

use std::path::PathBuf;

const PROTO_ROOT: &str = "../../proto";

const PROTO_FILES: &[&str] = &[
    "assent/v1/types.proto",
    "assent/v1/decisions.proto",
    "assent/v1/subjects.proto",
    "assent/v1/audit.proto",
    "assent/v1/changes.proto",
    "assent/v1/policies.proto",
    "assent/v1/rights.proto",
    "assent/v1/retention.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = PROTO_FILES
        .iter()
        .map(|file| PathBuf::from(PROTO_ROOT).join(file))
        .collect();

    let descriptors = protox::compile(&files, [PROTO_ROOT])?;
    let descriptor_bytes = protox::prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("assent_descriptor.bin"), descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .server_mod_attribute(".", "#[cfg(feature = \"server\")]")
        .compile_fds(descriptors)?;
    Ok(())
}
