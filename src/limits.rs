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

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::Request;
use tokio::sync::Semaphore;

use crate::auth::{Requirement, Scope, requirement};
use crate::metrics;
use crate::rpc::{
    ANONYMOUS_CALLER, Body, BoxedCall, Call, Caller, Filter, Filtered, Inner, answer_after_request,
    take_ready,
};

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
        let needed = requirement(request.uri().path());
        if self.stage == Stage::WriteRate {
            if let Some(status) = self.over_write_rate(&request, needed) {
                return refuse("write_rate", request, status);
            }
            return Box::pin(take_ready(inner).call(request));
        }
        // Health checks are never shed: a replica under load is busy, not dead.
        let permit = match (&self.slots, needed) {
            (_, Requirement::Nobody) | (None, _) => None,
            (Some(slots), _) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "concurrency: the server is serving its limit of {} calls; retry with \
                         backoff",
                        self.settings.max_concurrent
                    ));
                    return refuse("concurrency", request, status);
                }
            },
        };
        let deadline = match (self.settings.deadline, caller_deadline(request.headers())) {
            (Some(ours), Some(theirs)) => Some(ours.min(theirs)),
            (ours, theirs) => ours.or(theirs),
        };
        let future = take_ready(inner).call(request);
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
            if writes.check_key(&caller.to_owned()).is_err() {
                return Some(tonic::Status::resource_exhausted(format!(
                    "rate: the caller {caller} is over its {} writes per second; retry with \
                     backoff",
                    self.settings.writes_per_second
                )));
            }
        }
        None
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
