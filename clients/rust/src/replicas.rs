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
/// (or starts draining, or loses its store) leaves the channel at once, and is put back when it
/// serves again. When no replica serves but some still answer NOT_SERVING (every replica cut
/// off from the same store, say), calls go to those: a replica without its store still answers
/// Checks safely (exactly from memory, or the degraded DENY at once), where waiting for a
/// SERVING replica would hold every call until its deadline.
#[derive(Debug)]
pub struct Replicas {
    channel: Channel,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Replicas {
    /// Starts watching `endpoints`; calls made before any replica is known to answer wait for
    /// one (up to the call's own deadline). Sets HTTP/2 keepalive pings on the endpoints.
    pub fn connect(endpoints: Vec<Endpoint>) -> Replicas {
        let (channel, changes) = Channel::balance_channel(endpoints.len().max(1) * 4);
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .map(|endpoint| {
                endpoint
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE)
                    .keep_alive_while_idle(true)
            })
            .collect();
        let (reports, reported) = tokio::sync::mpsc::channel(endpoints.len().max(1) * 4);
        let mut watchers: Vec<_> = endpoints
            .iter()
            .enumerate()
            .map(|(key, endpoint)| tokio::spawn(watch(key, endpoint.clone(), reports.clone())))
            .collect();
        watchers.push(tokio::spawn(elect(endpoints, reported, changes)));
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

/// What a replica's health watch last said of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Serving,
    /// It answers, and says it is not serving: draining, or cut off from its store.
    NotServing,
    /// No answer: stopped, unreachable.
    Gone,
}

/// Reports what one replica's health says, each time it changes.
async fn watch(key: usize, endpoint: Endpoint, reports: Sender<(usize, Seen)>) {
    let mut last = Seen::Gone;
    loop {
        if let Some(mut statuses) = health_stream(&endpoint).await {
            while let Ok(Some(status)) = statuses.message().await {
                let seen = if status.status() == ServingStatus::Serving {
                    Seen::Serving
                } else {
                    Seen::NotServing
                };
                if seen != last {
                    if reports.send((key, seen)).await.is_err() {
                        return;
                    }
                    last = seen;
                }
            }
        }
        if last != Seen::Gone {
            if reports.send((key, Seen::Gone)).await.is_err() {
                return;
            }
            last = Seen::Gone;
        }
        tokio::time::sleep(RECONNECT_INTERVAL).await;
    }
}

/// Keeps the channel's members what the replicas' health says ([`members`]).
async fn elect(
    endpoints: Vec<Endpoint>,
    mut reported: tokio::sync::mpsc::Receiver<(usize, Seen)>,
    changes: Sender<Change<usize, Endpoint>>,
) {
    let mut seen = vec![Seen::Gone; endpoints.len()];
    let mut member = vec![false; endpoints.len()];
    while let Some((key, now)) = reported.recv().await {
        seen[key] = now;
        let wanted = members(&seen);
        // Newcomers first, so the channel is never empty in between.
        for (key, endpoint) in endpoints.iter().enumerate() {
            if wanted[key] && !member[key] {
                if changes
                    .send(Change::Insert(key, endpoint.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                member[key] = true;
            }
        }
        for key in 0..endpoints.len() {
            if !wanted[key] && member[key] {
                if changes.send(Change::Remove(key)).await.is_err() {
                    return;
                }
                member[key] = false;
            }
        }
    }
}

/// Which replicas take calls: those SERVING; when none is, those that answer NOT_SERVING.
fn members(seen: &[Seen]) -> Vec<bool> {
    let chosen = if seen.contains(&Seen::Serving) {
        Seen::Serving
    } else {
        Seen::NotServing
    };
    seen.iter().map(|state| *state == chosen).collect()
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
///
/// A call the server shed (RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`: a limit refused it
/// before any work) is retried too, after the pause the server asked for, with jitter so that
/// callers shed together do not come back together. A pause longer than `max_pause` is not
/// waited: the refusal is returned.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try; doubled before each further one.
    pub backoff: Duration,
    /// The longest pause a shed call waits for before its next try.
    pub max_pause: Duration,
}

impl Default for Retry {
    /// 4 tries, 10, 20 and 40 ms apart: a replica that went away costs a call at most 70 ms of
    /// waiting, on top of the tries themselves. A shed call waits what the server asks (up to
    /// half again as long, for jitter), at most 200 ms: a gateway's whole budget.
    fn default() -> Retry {
        Retry {
            attempts: 4,
            backoff: Duration::from_millis(10),
            max_pause: Duration::from_millis(200),
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
            let status = match call().await {
                Err(status) if tries < self.attempts => status,
                outcome => return outcome,
            };
            let pause = if unanswered(&status) {
                let pause = backoff;
                backoff *= 2;
                pause
            } else {
                match shed_pause(&status) {
                    Some(pause) if pause <= self.max_pause => jittered(pause),
                    _ => return Err(status),
                }
            };
            tokio::time::sleep(pause).await;
            tries += 1;
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

/// The pause the server asked for, when it shed the call: RESOURCE_EXHAUSTED with a
/// `RetryInfo`. A RESOURCE_EXHAUSTED without one is not assent's shedding (a proxy's limit, a
/// response over the client's message size): the same call would likely get it again.
pub fn shed_pause(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    tonic_types::StatusExt::get_details_retry_info(status)?.retry_delay
}

/// `pause` stretched by a random fraction of up to a half: never shorter than asked.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(1.0 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_only_unanswered_calls_and_only_so_often() {
        let retry = Retry {
            attempts: 3,
            backoff: Duration::from_millis(1),
            ..Retry::default()
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

    fn shed(pause: Duration) -> Status {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(pause));
        <Status as tonic_types::StatusExt>::with_error_details(
            Code::ResourceExhausted,
            "concurrency: retry with backoff",
            details,
        )
    }

    /// A shed call is tried again after at least the pause it was given, at most half again
    /// as long; one with no `RetryInfo`, or asking for more than `max_pause`, is not.
    #[tokio::test]
    async fn a_shed_call_is_retried_after_the_pause_it_was_given() {
        let retry = Retry::default();
        let pause = Duration::from_millis(30);
        let mut tries = 0;
        let started = tokio::time::Instant::now();
        let outcome = retry
            .run(|| {
                tries += 1;
                let answer = if tries < 3 {
                    Err(shed(pause))
                } else {
                    Ok(tries)
                };
                async move { answer }
            })
            .await;
        let waited = started.elapsed();
        assert_eq!(outcome.unwrap(), 3);
        assert!(waited >= pause * 2, "{waited:?}");
        assert!(waited < pause * 3 + Duration::from_millis(50), "{waited:?}");

        for refusal in [
            Status::resource_exhausted("a proxy's limit"),
            shed(retry.max_pause + Duration::from_millis(1)),
        ] {
            let mut tries = 0;
            let outcome: Result<(), Status> = retry
                .run(|| {
                    tries += 1;
                    let refusal = refusal.clone();
                    async move { Err(refusal) }
                })
                .await;
            assert_eq!(outcome.unwrap_err().code(), Code::ResourceExhausted);
            assert_eq!(tries, 1, "{refusal:?}");
        }
    }

    /// SERVING replicas when there are any; otherwise the ones that still answer; never one
    /// that does not.
    #[test]
    fn calls_go_to_the_serving_replicas_or_else_to_those_that_answer() {
        use Seen::{Gone, NotServing, Serving};
        assert_eq!(members(&[Serving, NotServing, Gone]), [true, false, false]);
        assert_eq!(
            members(&[NotServing, NotServing, Gone]),
            [true, true, false]
        );
        assert_eq!(members(&[Gone, Gone]), [false, false]);
    }
}
