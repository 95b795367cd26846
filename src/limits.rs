//! Limits on what a call may take, as tower layers in front of the services.
//!
//! - Concurrency with load shedding: at most `max_concurrent` calls are served at once; a call
//!   beyond gets RESOURCE_EXHAUSTED at once. Nothing queues, so memory stays bounded however
//!   many calls arrive.
//! - A deadline per call: the configured one, or the caller's `grpc-timeout` if shorter. A call
//!   past it gets DEADLINE_EXCEEDED and its work is dropped; a write not yet committed is rolled
//!   back.
//! - A rate of writes per caller (token bucket): a caller past it gets RESOURCE_EXHAUSTED.
//!
//! Each refusal is counted in `assent_limited_requests_total{limit}`. (The message-size limit is
//! tonic's own, set on each service.)

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use crate::api::{ANONYMOUS_CALLER, Caller};
use crate::auth::{Requirement, Scope, requirement};
use crate::metrics;

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
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        LimitSettings {
            max_concurrent: 4_096,
            deadline: Some(Duration::from_secs(10)),
            writes_per_second: 1_000,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Where in the stack a limit layer sits: admission (concurrency and deadline) comes before
/// authentication, so a flood is shed before any token is verified; the write rate comes after
/// it, as it is counted per authenticated caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Admission,
    WriteRate,
}

/// The service that was made ready, for this call; a fresh clone stays for the next one (the
/// tower idiom for a `Clone` service whose `call` moves into a future).
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// A call's future, as the layers return it.
pub type BoxedCall<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// The state the limit layers share across calls.
#[derive(Clone)]
pub struct LimitLayer {
    settings: LimitSettings,
    stage: Stage,
    slots: Option<Arc<Semaphore>>,
    writes: Option<Arc<DefaultKeyedRateLimiter<String>>>,
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
        }
    }

    /// The write-rate layer sharing this one's settings, to put after authentication.
    pub fn write_rate(&self) -> LimitLayer {
        LimitLayer {
            stage: Stage::WriteRate,
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
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> LimitService<S> {
        LimitService {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LimitService<S> {
    inner: S,
    limits: LimitLayer,
}

/// The most of a refused request's body read before answering, and for how long.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(100);

/// Answers a refused call with `status` once the caller has finished sending its request (up
/// to a bound). Answering while the request is still being sent resets the HTTP/2 stream, and
/// the caller would see a transport error instead of the status.
pub async fn answer_after_request<RequestBody, ResponseBody>(
    request: http::Request<RequestBody>,
    status: tonic::Status,
) -> http::Response<ResponseBody>
where
    RequestBody: http_body::Body + Send + Unpin,
    ResponseBody: Default,
{
    use http_body_util::BodyExt;
    let mut body = request.into_body();
    let drained = async {
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data);
            }
            if read > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
    status.into_http()
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

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for LimitService<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RequestBody: http_body::Body + Send + Unpin + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxedCall<S::Response, S::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let needed = requirement(request.uri().path());
        if self.limits.stage == Stage::WriteRate {
            return self.limit_writes(request, needed);
        }
        // Health checks are never shed: a replica under load is busy, not dead.
        let permit = match (&self.limits.slots, needed) {
            (_, Requirement::Nobody) | (None, _) => None,
            (Some(slots), _) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "concurrency: the server is serving its limit of {} calls; retry with \
                         backoff",
                        self.limits.settings.max_concurrent
                    ));
                    return refuse("concurrency", request, status);
                }
            },
        };
        let deadline = match (
            self.limits.settings.deadline,
            caller_deadline(request.headers()),
        ) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        let mut inner = take_ready(&mut self.inner);
        let future = inner.call(request);
        Box::pin(async move {
            let _permit = permit;
            let Some(deadline) = deadline else {
                return future.await;
            };
            match tokio::time::timeout(deadline, future).await {
                Ok(result) => result,
                Err(_) => {
                    let status = tonic::Status::deadline_exceeded(format!(
                        "deadline: the call took longer than {} ms and was abandoned",
                        deadline.as_millis()
                    ));
                    metrics::record_limited("deadline");
                    Ok(status.into_http())
                }
            }
        })
    }
}

impl<S> LimitService<S> {
    fn limit_writes<RequestBody: http_body::Body + Send + Unpin + 'static, ResponseBody>(
        &mut self,
        request: http::Request<RequestBody>,
        needed: Requirement,
    ) -> BoxedCall<S::Response, S::Error>
    where
        S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResponseBody: Default + Send + 'static,
    {
        if matches!(
            needed,
            Requirement::Scope(Scope::SubjectsWrite | Scope::RightsWrite)
        ) && let Some(writes) = &self.limits.writes
        {
            let caller = request
                .extensions()
                .get::<Caller>()
                .map_or(ANONYMOUS_CALLER, |caller| caller.0.as_str());
            if writes.check_key(&caller.to_owned()).is_err() {
                let status = tonic::Status::resource_exhausted(format!(
                    "rate: the caller {caller} is over its {} writes per second; retry with \
                     backoff",
                    self.limits.settings.writes_per_second
                ));
                return refuse("write_rate", request, status);
            }
        }
        let mut inner = take_ready(&mut self.inner);
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
