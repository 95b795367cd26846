//! The client of assent, the consent and purpose-limitation authority.
//!
//! - [`proto`]: the wire contract `assent.v1`, messages and clients (and, with the `server`
//!   feature, the server traits the assent server implements).
//! - [`Client`]: typed calls over the replicas ([`Replicas`]), with a bearer token, retrying
//!   the calls that change nothing ([`Retry`]).
//! - [`LocalCache`]: answers Checks from memory, kept fresh by `Changes.Watch`, with a bound
//!   on how stale an answer may be (docs/clients.md).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use assent_client::proto::{Purpose, Source};
//! use assent_client::{CacheOptions, Client, LocalCache};
//! use tonic::transport::Endpoint;
//!
//! let client = Client::connect(vec![
//!     Endpoint::from_static("http://10.0.0.11:50051"),
//!     Endpoint::from_static("http://10.0.0.12:50051"),
//! ]);
//! let cache = LocalCache::start(client, CacheOptions::default());
//! let answer = cache
//!     .check("user-1", Purpose::ModelTraining, Some("conversation-9"), Source::Conversation)
//!     .await?;
//! println!("{:?} by rule {}", answer.response.decision(), answer.response.rule);
//! # Ok(())
//! # }
//! ```

#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("assent.v1");

    /// The encoded file descriptor set of `proto/`, served by gRPC reflection.
    #[cfg(feature = "server")]
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("assent_descriptor");
}

mod cache;
mod client;
mod replicas;
pub mod revision;

pub use cache::{Answer, AnswerFrom, CacheOptions, CacheStats, LocalCache, WhenStale};
pub use client::{BearerToken, Client, Connection, InvalidToken};
pub use replicas::{Replicas, Retry, shed_pause, unanswered};
