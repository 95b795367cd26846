//! Calling several replicas from one client: a channel that spreads calls over the replicas
//! whose gRPC health service says they serve, and a retry for read-only calls that a replica
//! going away left unanswered.
//!
//! gRPC keeps one HTTP/2 connection per server open for many calls, so a Kubernetes Service
//! (which balances connections, not calls) would send all of one gateway's calls to the one
//! replica it connected to. Callers balance calls themselves: resolve every replica (the
//! chart's headless Service), then
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use assent_client::{Client, Replicas};
//! use tonic::transport::Endpoint;
//!
//! let endpoints = ["http://10.0.0.11:50051", "http://10.0.0.12:50051"]
//!     .into_iter()
//!     .map(Endpoint::from_static)
//!     .collect();
//! let client = Client::over(Replicas::connect(endpoints));
//! let request = assent_client::proto::CheckRequest {
//!     subject_id: "user-1".into(),
//!     purpose: assent_client::proto::Purpose::ModelTraining as i32,
//!     ..Default::default()
//! };
//! // Retried (Retry::default) when a replica going away left it unanswered.
//! let answer = client.check(request).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a replica that went away waits before it is asked again.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// HTTP/2 pings on every replica's connection, this often, answered within as long: a
/// partitioned replica (nothing refused, nothing answered) leaves the channel within about two
/// seconds, and its streams (a local cache's Watch) fail rather than wait forever.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// A channel over a set of replicas. A replica takes calls while its health service reports
/// SERVING: each is watched over a health `Watch` stream of its own, so a replica that stops
/// (or starts draining) leaves the channel at once, and is put back when it serves again.
#[derive(Debug)]
pub struct Replicas {
    channel: Channel,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Replicas {
    /// Starts watching `endpoints`; calls made before any replica is known to serve wait for
    /// one (up to the call's own deadline). Sets HTTP/2 keepalive pings on the endpoints.
    pub fn connect(endpoints: Vec<Endpoint>) -> Replicas {
        let (channel, changes) = Channel::balance_channel(endpoints.len().max(1) * 4);
        let watchers = endpoints
            .into_iter()
            .map(|endpoint| {
                endpoint
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE)
                    .keep_alive_while_idle(true)
            })
            .enumerate()
            .map(|(key, endpoint)| tokio::spawn(watch(key, endpoint, changes.clone())))
            .collect();
        Replicas { channel, watchers }
    }

    /// The channel to build clients on; clones share the replicas.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

/// Keeps one replica in the channel while it serves.
async fn watch(key: usize, endpoint: Endpoint, changes: Sender<Change<usize, Endpoint>>) {
    let mut member = false;
    loop {
        if let Some(mut statuses) = health_stream(&endpoint).await {
            while let Ok(Some(status)) = statuses.message().await {
                let serving = status.status() == ServingStatus::Serving;
                if serving != member {
                    let change = if serving {
                        Change::Insert(key, endpoint.clone())
                    } else {
                        Change::Remove(key)
                    };
                    if changes.send(change).await.is_err() {
                        return;
                    }
                    member = serving;
                }
            }
        }
        if member {
            if changes.send(Change::Remove(key)).await.is_err() {
                return;
            }
            member = false;
        }
        tokio::time::sleep(RECONNECT_INTERVAL).await;
    }
}

async fn health_stream(
    endpoint: &Endpoint,
) -> Option<tonic::Streaming<tonic_health::pb::HealthCheckResponse>> {
    let channel = endpoint.connect().await.ok()?;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = HealthClient::new(channel).watch(request).await.ok()?;
    Some(response.into_inner())
}

/// Retries a call that no replica answered: refused with UNAVAILABLE, or cut off with its
/// connection. Only for calls that change nothing (Check, BatchCheck, GetSubject, reads of the
/// audit log); a write may have been applied before its answer was lost.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try; doubled before each further one.
    pub backoff: Duration,
}

impl Default for Retry {
    /// 4 tries, 10, 20 and 40 ms apart: a replica that went away costs a call at most 70 ms of
    /// waiting, on top of the tries themselves.
    fn default() -> Retry {
        Retry {
            attempts: 4,
            backoff: Duration::from_millis(10),
        }
    }
}

impl Retry {
    /// Runs `call` until it answers, fails for another reason, or the tries are spent.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.backoff;
        let mut tries = 1;
        loop {
            match call().await {
                Err(status) if tries < self.attempts && unanswered(&status) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    tries += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// Whether a call failed because no replica answered it, rather than by an answer.
pub fn unanswered(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // A connection cut mid-call surfaces as UNKNOWN, or as CANCELLED when the transport
        // saw the connection close, with the transport's error as source (a cancellation the
        // server answered carries none).
        Code::Unknown | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_only_unanswered_calls_and_only_so_often() {
        let retry = Retry {
            attempts: 3,
            backoff: Duration::from_millis(1),
        };
        let mut tries = 0;
        let outcome: Result<(), Status> = retry
            .run(|| {
                tries += 1;
                async { Err(Status::unavailable("gone")) }
            })
            .await;
        assert_eq!(outcome.unwrap_err().code(), Code::Unavailable);
        assert_eq!(tries, 3);

        let mut tries = 0;
        let outcome: Result<(), Status> = retry
            .run(|| {
                tries += 1;
                async { Err(Status::invalid_argument("subject_id: empty")) }
            })
            .await;
        assert_eq!(outcome.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(tries, 1);

        let mut tries = 0;
        let outcome = retry
            .run(|| {
                tries += 1;
                let answer = if tries < 2 {
                    Err(Status::unavailable("gone"))
                } else {
                    Ok(tries)
                };
                async move { answer }
            })
            .await;
        assert_eq!(outcome.unwrap(), 2);
    }

    #[test]
    fn a_connection_closed_mid_call_is_unanswered_and_a_server_cancellation_is_not() {
        let closed = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection closed");
        let mut cut = Status::cancelled("operation was canceled");
        cut.set_source(std::sync::Arc::new(closed));
        assert!(unanswered(&cut));
        assert!(!unanswered(&Status::cancelled("the caller gave up")));
        assert!(!unanswered(&Status::unknown("a handler panicked")));
    }
}
