//! The wire contract `assent.v1` (see `proto/`), generated in the client crate, which shares
//! its types with the server. Conversions to and from the domain types live in `api/`, next to
//! their use.

pub use assent_client::proto::*;
