//! The generated code of the wire contract `assent.v1` (see `proto/`). Conversions to and from
//! the domain types live in `api/`, next to their use.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("assent.v1");

/// The encoded file descriptor set of `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("assent_descriptor");
