//! Limits on what a call may take, as tower layers in front of the services.
//!
//! - Concurrency with load shedding: at most `max_concurrent` calls are served at once; a call
//!   beyond gets RESOURCE_EXHAUSTED at once. Nothing queues, so memory stays bounded however
//!   many calls arrive.
//! - A deadline per call: the configured one, or the caller's `grpc-timeout` if shorter. A call
//!   past it gets DEADLINE_EXCEEDED and its work is dropped; a write not yet committed is rolled
//!   back.
//! - A rate of writes per caller (token bucket): a caller past it gets RESOURCE_EXHAUSTED.
//! - Open streams per caller (Watch, StreamCheck, health Watch, reflection): a caller at its
//!   limit gets RESOURCE_EXHAUSTED for the next one. A caller without credentials (the health
//!   service's, or every caller when no authentication is configured) is counted by its address.
//!
//! A call holds its admission slot, and a stream its place among its caller's, until its
//! response has ended (the last message sent, or the stream reset): the slot travels in the
//! response body ([`Held`]), so a Watch that lasts a day holds one for a day. A refused call
//! gives back what it held before its request is drained ([`answer_after_request`]).
//!
//! Each refusal is counted in `assent_limited_requests_total{limit}`. (The message-size limit is
//! tonic's own, set on each service; the HTTP/2 limits are the server builder's, in `startup`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::Request;
use tokio::sync::Semaphore;

use crate::auth::{Requirement, Scope, requirement};
use crate::metrics;
use crate::rpc::{
    ANONYMOUS_CALLER, Body, BoxedCall, Call, Caller, Filter, Filtered, Held, HoldingBody, Inner,
    answer_after_request, take_ready,
};

/// The pause a call shed at the concurrency limit is told to wait (`RetryInfo`): about a
/// call's time under load, so a retry finds a slot freed without piling onto the next one.
pub const RETRY_CONCURRENCY: Duration = Duration::from_millis(20);

/// The pause a stream refused at its caller's limit is told to wait: streams are long-lived, and
/// one closes in seconds, not milliseconds.
pub const RETRY_STREAMS: Duration = Duration::from_secs(1);

/// The shortest pause any refusal asks for.
const RETRY_MINIMUM: Duration = Duration::from_millis(1);

/// The limits of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// Calls served at once; more are refused. 0: no limit.
    pub max_concurrent: usize,
    /// The longest a call may take. `None`: only the caller's deadline.
    pub deadline: Option<Duration>,
    /// Writes per second per caller (with a burst of as many). 0: no limit.
    pub writes_per_second: u32,
    /// The largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Streams one caller may have open at once; more are refused. 0: no limit.
    pub max_streams_per_caller: usize,
    /// How long a stream may stay idle (a StreamCheck receiving no request, any stream whose
    /// client takes no answer) before it is ended. `None`: never.
    pub stream_idle: Option<Duration>,
    /// The most changes a Watch replays: one resuming further back is refused (resync). 0: no
    /// limit.
    pub watch_max_replay: u64,
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub http2_max_concurrent_streams: u32,
    /// How often an idle connection is pinged (HTTP/2 PING); `None`: never.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection (and its streams) is closed.
    pub http2_keepalive_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        LimitSettings {
            max_concurrent: 4_096,
            deadline: Some(Duration::from_secs(10)),
            writes_per_second: 1_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_streams_per_caller: 64,
            stream_idle: Some(Duration::from_secs(60)),
            watch_max_replay: 1_000_000,
            http2_max_concurrent_streams: 1_024,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether a path is a streaming call: one that may stay open as long as its client wants.
pub fn is_stream(path: &str) -> bool {
    matches!(
        path,
        "/assent.v1.Changes/Watch"
            | "/assent.v1.Decisions/StreamCheck"
            | "/grpc.health.v1.Health/Watch"
            | "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
}

/// The streams each caller has open.
#[derive(Debug, Default)]
struct OpenStreams(Mutex<HashMap<String, usize>>);

impl OpenStreams {
    /// A place for one more stream of `caller`, unless it has `limit` open already.
    fn open(self: &Arc<Self>, caller: String, limit: usize) -> Option<OpenStream> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(caller.clone()).or_insert(0);
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(OpenStream {
            streams: self.clone(),
            caller,
        })
    }
}

/// One open stream of a caller; dropped when the stream ends.
struct OpenStream {
    streams: Arc<OpenStreams>,
    caller: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Only callers with a stream open take room.
                open.remove(&self.caller);
            }
        }
    }
}

/// Who a stream counts against: the authenticated caller, or a caller without credentials by
/// its address (so one client's health watches do not take every other client's).
fn stream_owner<B>(request: &Request<B>) -> String {
    if let Some(caller) = request.extensions().get::<Caller>() {
        return caller.0.clone();
    }
    match peer_ip(request) {
        Some(ip) => format!("{ANONYMOUS_CALLER}@{ip}"),
        None => ANONYMOUS_CALLER.to_owned(),
    }
}

/// The address the call came from.
fn peer_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })?;
    tcp.remote_addr().map(|address| address.ip())
}

/// Where in the stack a limit layer sits: admission (concurrency and deadline) comes before
/// authentication, so a flood is shed before any token is verified; the write rate and the
/// open streams come after it, as they are counted per authenticated caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Admission,
    PerCaller,
}

/// The state the limit layers share across calls.
#[derive(Clone)]
pub struct LimitLayer {
    settings: LimitSettings,
    stage: Stage,
    slots: Option<Arc<Semaphore>>,
    writes: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    streams: Arc<OpenStreams>,
}

impl std::fmt::Debug for LimitLayer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LimitLayer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl LimitLayer {
    /// The admission layer (concurrency and deadline), to put before authentication.
    pub fn new(settings: LimitSettings) -> LimitLayer {
        let slots = (settings.max_concurrent > 0)
            .then(|| Arc::new(Semaphore::new(settings.max_concurrent)));
        let writes = NonZeroU32::new(settings.writes_per_second)
            .map(|rate| Arc::new(RateLimiter::keyed(Quota::per_second(rate))));
        LimitLayer {
            settings,
            stage: Stage::Admission,
            slots,
            writes,
            streams: Arc::default(),
        }
    }

    /// The per-caller layer (write rate, open streams) sharing this one's settings, to put
    /// after authentication.
    pub fn per_caller(&self) -> LimitLayer {
        LimitLayer {
            stage: Stage::PerCaller,
            ..self.clone()
        }
    }

    /// Forgets the write budgets of callers that have not written lately (bounds the memory of
    /// the per-caller table); run it now and then.
    pub fn forget_idle_callers(&self) {
        if let Some(writes) = &self.writes {
            writes.retain_recent();
            writes.shrink_to_fit();
        }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Filtered<S, LimitLayer>;

    fn layer(&self, inner: S) -> Filtered<S, LimitLayer> {
        let filter = self.clone();
        Filtered { inner, filter }
    }
}

fn refuse<RequestBody, ResponseBody, Error>(
    limit: &'static str,
    request: http::Request<RequestBody>,
    status: tonic::Status,
) -> BoxedCall<http::Response<ResponseBody>, Error>
where
    RequestBody: http_body::Body + Send + Unpin + 'static,
    ResponseBody: Default + Send + 'static,
    Error: Send + 'static,
{
    metrics::record_limited(limit);
    Box::pin(async move { Ok(answer_after_request(request, status).await) })
}

/// The `grpc-timeout` header: an integer of at most 8 digits and a unit.
fn caller_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

impl Filter for LimitLayer {
    fn call<S: Inner<B>, B: Body>(&self, inner: &mut S, request: Request<B>) -> Call<S, B> {
        match self.stage {
            Stage::Admission => self.admit(inner, request),
            Stage::PerCaller => self.per_caller_call(inner, request),
        }
    }
}

impl LimitLayer {
    /// Concurrency and deadline: the slot is held until the response ends.
    fn admit<S: Inner<B>, B: Body>(&self, inner: &mut S, mut request: Request<B>) -> Call<S, B> {
        let path = request.uri().path();
        let stream = is_stream(path);
        // Health checks are never shed: a replica under load is busy, not dead. A health
        // watch is a stream like any other, and holds a slot for its life.
        if requirement(path) == Requirement::Nobody && !stream {
            return Box::pin(take_ready(inner).call(request));
        }
        let held = Held::default();
        if let Some(slots) = &self.slots {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => held.hold(permit),
                Err(_) => {
                    let status = crate::status::shed(
                        "CONCURRENCY_LIMIT",
                        "max_concurrent_requests",
                        None,
                        format!(
                            "concurrency: the server is serving its limit of {} calls \
                             (max_concurrent_requests); retry with backoff",
                            self.settings.max_concurrent
                        ),
                        RETRY_CONCURRENCY,
                    );
                    return refuse("concurrency", request, status);
                }
            }
        }
        request.extensions_mut().insert(held.clone());
        let deadline = match (self.settings.deadline, caller_deadline(request.headers())) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        let future = take_ready(inner).call(request);
        Box::pin(async move {
            let answered = match deadline {
                None => future.await,
                Some(deadline) => match tokio::time::timeout(deadline, future).await {
                    Ok(result) => result,
                    Err(_) => {
                        let status = tonic::Status::deadline_exceeded(format!(
                            "deadline: the call took longer than {} ms and was abandoned",
                            deadline.as_millis()
                        ));
                        metrics::record_limited("deadline");
                        Ok(status.into_http())
                    }
                },
            };
            answered.map(|response| response.map(|body| body.holding(held)))
        })
    }

    /// The write rate and the open streams of the caller authentication named.
    fn per_caller_call<S: Inner<B>, B: Body>(
        &self,
        inner: &mut S,
        mut request: Request<B>,
    ) -> Call<S, B> {
        let needed = requirement(request.uri().path());
        if let Some(status) = self.over_write_rate(&request, needed) {
            return refuse("write_rate", request, status);
        }
        if !is_stream(request.uri().path()) {
            return Box::pin(take_ready(inner).call(request));
        }
        let owner = stream_owner(&request);
        let limit = self.settings.max_streams_per_caller;
        let Some(open) = self.streams.open(owner.clone(), limit) else {
            let status = crate::status::shed(
                "STREAMS_PER_CALLER_LIMIT",
                "max_streams_per_caller",
                Some(&owner),
                format!(
                    "streams: the caller {owner} has its limit of {limit} streams open \
                     (max_streams_per_caller); close one, or retry with backoff"
                ),
                RETRY_STREAMS,
            );
            return refuse("streams_per_caller", request, status);
        };
        // The admission layer's, when it is in front; otherwise this layer keeps its own.
        let (held, own) = match request.extensions().get::<Held>() {
            Some(held) => (held.clone(), false),
            None => (Held::default(), true),
        };
        held.hold(open);
        if own {
            request.extensions_mut().insert(held.clone());
        }
        let future = take_ready(inner).call(request);
        if !own {
            return Box::pin(future);
        }
        Box::pin(async move {
            let answered = future.await;
            answered.map(|response| response.map(|body| body.holding(held)))
        })
    }
}

impl LimitLayer {
    /// The refusal of a write past its caller's rate.
    fn over_write_rate<B>(
        &self,
        request: &http::Request<B>,
        needed: Requirement,
    ) -> Option<tonic::Status> {
        if matches!(
            needed,
            Requirement::Scope(Scope::SubjectsWrite | Scope::RightsWrite)
        ) && let Some(writes) = &self.writes
        {
            let caller = request
                .extensions()
                .get::<Caller>()
                .map_or(ANONYMOUS_CALLER, |caller| caller.0.as_str());
            if let Err(not_until) = writes.check_key(&caller.to_owned()) {
                // The pause until the caller's next write is admitted, as the limiter knows it.
                let wait = not_until.wait_time_from(governor::clock::Clock::now(writes.clock()));
                return Some(crate::status::shed(
                    "WRITE_RATE_LIMIT",
                    "writes_per_second",
                    Some(caller),
                    format!(
                        "rate: the caller {caller} is over its {} writes per second; retry \
                         with backoff",
                        self.settings.writes_per_second
                    ),
                    wait.max(RETRY_MINIMUM),
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_streams_are_capped_and_a_closed_one_frees_its_place() {
        let streams = Arc::new(OpenStreams::default());
        let gateway: Vec<_> = (0..3)
            .map(|_| streams.open("gateway".into(), 3).unwrap())
            .collect();
        assert!(streams.open("gateway".into(), 3).is_none());
        // Another caller has places of its own.
        let pipeline = streams.open("pipeline".into(), 3).unwrap();
        drop(gateway);
        assert!(streams.open("gateway".into(), 3).is_some());
        drop(pipeline);
        // Callers without a stream open take no room.
        assert!(streams.0.lock().unwrap().is_empty());
        // 0: no limit.
        let many: Vec<_> = (0..1_000)
            .map(|_| streams.open("gateway".into(), 0).unwrap())
            .collect();
        assert_eq!(many.len(), 1_000);
    }

    #[test]
    fn streams_are_the_calls_that_stay_open_and_count_against_their_caller() {
        assert!(is_stream("/assent.v1.Changes/Watch"));
        assert!(is_stream("/assent.v1.Decisions/StreamCheck"));
        assert!(is_stream("/grpc.health.v1.Health/Watch"));
        assert!(!is_stream("/grpc.health.v1.Health/Check"));
        assert!(!is_stream("/assent.v1.Decisions/Check"));
        let mut request = Request::new(());
        assert_eq!(stream_owner(&request), "anonymous");
        let address = "10.1.2.3:4567".parse().unwrap();
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(address),
            });
        assert_eq!(stream_owner(&request), "anonymous@10.1.2.3");
        request.extensions_mut().insert(Caller("gateway".into()));
        assert_eq!(stream_owner(&request), "gateway");
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(caller_deadline(&headers), None);
        for (text, expected) in [
            ("250m", Some(Duration::from_millis(250))),
            ("3S", Some(Duration::from_secs(3))),
            ("1H", Some(Duration::from_secs(3600))),
            ("100u", Some(Duration::from_micros(100))),
            ("m", None),
            ("123456789m", None),
            ("12x", None),
            ("-1S", None),
        ] {
            headers.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(caller_deadline(&headers), expected, "{text}");
        }
    }
}
