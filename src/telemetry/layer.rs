//! The layer every gRPC call passes through: it names the call, decides once whether it is
//! traced, opens its server span (a child of the caller's span when a `traceparent` came in),
//! and counts it in the request metrics with its status code and duration.
//!
//! A call ends when its answer has gone out. A unary call's answer is whole when its response
//! headers go out (its status is in them when it failed, and OK otherwise), so it is measured
//! then, at no cost beyond reading the headers. A streaming answer (Watch, StreamCheck, health
//! Watch, reflection) ends with its trailers, which carry its status, or when its client drops
//! it (CANCELLED): its body is watched ([`HoldingBody::watched`]) and the span and the metrics
//! end there.
//!
//! What it decides is visible to the call's own code through a task-local [`CallTrace`]:
//! [`traced`] says whether to open child spans, [`call_trace_id`] gives the W3C trace id to store
//! in audit events and decision-log rows and to print in error logs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

use http::Request;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics;
use crate::rpc::{Body, Call, EndWatcher, Ended, Filter, Filtered, HoldingBody, Inner, take_ready};

static TRACING: AtomicBool = AtomicBool::new(false);
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0);
static FOLLOWS_PARENT: AtomicBool = AtomicBool::new(true);
static HASH_KEY: OnceLock<Vec<u8>> = OnceLock::new();

tokio::task_local! {
    static CALL: CallTrace;
}

/// What the layer decided about the call being served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallTrace {
    /// Whether the call has a span that will be exported (child spans are made only then).
    pub traced: bool,
    /// The W3C trace id: the caller's, or the one assent started; empty when there is none.
    pub trace_id: String,
}

/// Which calls are traced: the samplers of `OTEL_TRACES_SAMPLER`, as this layer applies them
/// once per call (the SDK's own sampler then keeps every span it is given).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Whether a call whose caller sent a `traceparent` is traced exactly when the caller's span
    /// is sampled (the `parentbased_*` samplers).
    pub follows_parent: bool,
    /// The fraction of the other calls traced, 0 to 1: of those without a `traceparent` by
    /// chance, of those with one by their trace id (`traceidratio`: every service sampling a
    /// trace id at the same ratio keeps the same traces).
    pub ratio: f64,
}

impl Sampler {
    /// The sampler named `name` as `OTEL_TRACES_SAMPLER` names it; `argument` is
    /// `OTEL_TRACES_SAMPLER_ARG`, the ratio of the two ratio samplers (others ignore it).
    pub fn parse(name: &str, argument: &str) -> Result<Sampler, SamplerError> {
        let ratio = || {
            argument
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .ok_or_else(|| SamplerError::Ratio(argument.to_owned()))
        };
        let (follows_parent, ratio) = match name.trim() {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, ratio()?),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, ratio()?),
            other => return Err(SamplerError::Name(other.to_owned())),
        };
        Ok(Sampler {
            follows_parent,
            ratio,
        })
    }

    /// Whether no call is ever traced (`always_off`).
    pub fn never(&self) -> bool {
        !self.follows_parent && self.ratio <= 0.0
    }

    /// Whether a call is traced: `parent` is the caller's span, when a valid `traceparent` came
    /// in.
    fn samples(&self, parent: Option<&opentelemetry::trace::SpanContext>) -> bool {
        match parent {
            None => fastrand::f64() < self.ratio,
            Some(parent) if self.follows_parent => parent.is_sampled(),
            Some(parent) => trace_id_admitted(parent.trace_id(), self.ratio),
        }
    }
}

/// A sampler setting that names no sampler, or a ratio that is none.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    #[error(
        "expected always_on, always_off, traceidratio, parentbased_always_on, \
         parentbased_always_off or parentbased_traceidratio, got {0:?}"
    )]
    Name(String),
    #[error("expected a ratio from 0 to 1, got {0:?}")]
    Ratio(String),
}

/// The trace-id ratio rule of the OpenTelemetry SDKs (`TraceIdRatioBased`): the trace id's
/// last 8 bytes, as a number, below the ratio's share of their range.
fn trace_id_admitted(trace_id: opentelemetry::trace::TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1_u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0_u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// Turns on span creation for the calls `sampler` samples.
pub fn enable_tracing(sampler: Sampler) {
    SAMPLE_RATIO.store(sampler.ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    FOLLOWS_PARENT.store(sampler.follows_parent, Ordering::Relaxed);
    TRACING.store(true, Ordering::Release);
}

fn sampler() -> Sampler {
    Sampler {
        follows_parent: FOLLOWS_PARENT.load(Ordering::Relaxed),
        ratio: f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed)),
    }
}

/// Whether the current call is traced (false outside a call).
pub fn traced() -> bool {
    CALL.try_with(|call| call.traced).unwrap_or(false)
}

/// The trace id of the current call, or empty.
pub fn call_trace_id() -> String {
    CALL.try_with(|call| call.trace_id.clone())
        .unwrap_or_default()
}

/// The current call's trace decision, to carry into a task the call spawns.
pub fn current_call() -> CallTrace {
    CALL.try_with(CallTrace::clone).unwrap_or_default()
}

/// Runs `work` (a task a call spawned) under the call's trace decision.
pub async fn within_call<F: Future>(call: CallTrace, work: F) -> F::Output {
    CALL.scope(call, work).await
}

/// Sets the key of [`super::subject_hash`]; the first setting wins. Returns false when a key
/// was already in use.
pub fn set_hash_key(key: &[u8]) -> bool {
    HASH_KEY.set(key.to_vec()).is_ok()
}

/// The subject hash key: the configured one, or a random key for this process, from the
/// operating system's generator (a secret: not from `fastrand`, which is predictable).
pub fn hash_key() -> &'static [u8] {
    HASH_KEY.get_or_init(|| {
        let mut key = vec![0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        key
    })
}

/// A gRPC method as metrics and spans name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MethodName {
    /// `assent.v1.Decisions/Check`.
    full: &'static str,
    /// `assent.v1.Decisions`.
    service: &'static str,
    /// `Check`.
    method: &'static str,
    /// Whether its answer is a stream (server or bidirectional streaming).
    streams: bool,
}

const UNKNOWN_METHOD: MethodName = MethodName {
    full: "unknown",
    service: "unknown",
    method: "unknown",
    streams: false,
};

/// Every method served, by request path, read from the descriptors the server registers (so a
/// label is never made from a caller's input).
static METHODS: LazyLock<HashMap<String, MethodName>> = LazyLock::new(|| {
    let mut methods = HashMap::new();
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut names: Vec<(String, String, bool)> = Vec::new();
    for encoded in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    let streams = method.server_streaming.unwrap_or(false);
                    names.push((
                        service_name.clone(),
                        method.name.unwrap_or_default(),
                        streams,
                    ));
                }
            }
        }
    }
    for version in ["v1", "v1alpha"] {
        names.push((
            format!("grpc.reflection.{version}.ServerReflection"),
            "ServerReflectionInfo".to_owned(),
            true,
        ));
    }
    // Envoy's ext_authz (`api::ext_authz`), whose descriptors the server does not register.
    names.push((
        "envoy.service.auth.v3.Authorization".to_owned(),
        "Check".to_owned(),
        false,
    ));
    // Leaked once: the set of methods is fixed for the life of the process.
    for (service, method, streams) in names {
        let full: &'static str = Box::leak(format!("{service}/{method}").into_boxed_str());
        let (service, method) = full.split_once('/').expect("the name has a slash");
        methods.insert(
            format!("/{full}"),
            MethodName {
                full,
                service,
                method,
                streams,
            },
        );
    }
    methods
});

fn method_of(path: &str) -> MethodName {
    METHODS.get(path).copied().unwrap_or(UNKNOWN_METHOD)
}

/// The names of gRPC status codes, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const OK: usize = 0;
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// The `grpc-status` of response headers or trailers, if they carry one. A failed call answers
/// with its status in the headers (trailers-only); a call that got as far as a body carries it
/// in its trailers.
fn status_in(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|code| *code < CODE_NAMES.len())
        .unwrap_or(UNKNOWN);
    Some(code)
}

/// Whether a server span ending with `code` has status ERROR. The OpenTelemetry semantic
/// conventions for gRPC ("gRPC Status") count only these codes as the server's errors; the
/// others (CANCELLED, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED, …)
/// answer the caller's request as it deserves, and leave the span's status unset. (A client
/// span would count every code but OK; assent makes no gRPC client spans.)
fn is_server_error(code: usize) -> bool {
    matches!(
        CODE_NAMES[code],
        "UNKNOWN"
            | "DEADLINE_EXCEEDED"
            | "UNIMPLEMENTED"
            | "INTERNAL"
            | "UNAVAILABLE"
            | "DATA_LOSS"
    )
}

/// A call has ended with `code`: it is counted, and its span (when traced) given its status;
/// the span ends when its last handle is dropped.
fn finish(method: MethodName, started: Instant, span: &tracing::Span, code: usize) {
    metrics::record_request(method.full, CODE_NAMES[code], started.elapsed());
    if !span.is_disabled() {
        span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", CODE_NAMES[code]);
        }
    }
}

/// A streaming call, finished when its response body ends.
struct StreamEnd {
    method: MethodName,
    started: Instant,
    span: tracing::Span,
}

impl EndWatcher for StreamEnd {
    fn ended(self, how: Ended<'_>) {
        let code = match how {
            Ended::Trailers(trailers) => status_in(trailers).unwrap_or(UNKNOWN),
            Ended::WithoutTrailers | Ended::Failed => UNKNOWN,
            Ended::Dropped => CANCELLED,
        };
        // The exporter takes a span's end from the last time it was left: entered once more
        // here, the span ends with the stream, not with the last message the handler made.
        self.span
            .in_scope(|| finish(self.method, self.started, &self.span, code));
    }
}

/// The trace id of a W3C `traceparent` value (`00-<trace id>-<parent id>-<flags>`), or empty
/// when it is malformed.
pub fn trace_id_of_traceparent(header: &str) -> String {
    let mut parts = header.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return String::new();
    };
    let is_hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && is_hex(flags, 2);
    if valid {
        trace_id.to_owned()
    } else {
        String::new()
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Decides whether a call is traced and opens its span if so.
fn start_call(headers: &http::HeaderMap, method: MethodName) -> (CallTrace, tracing::Span) {
    let caller_trace_id = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(trace_id_of_traceparent)
        .unwrap_or_default();
    if !TRACING.load(Ordering::Acquire) {
        let call = CallTrace {
            traced: false,
            trace_id: caller_trace_id,
        };
        return (call, tracing::Span::none());
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let parent_context = parent.span().span_context().clone();
    let sampled = sampler().samples(parent_context.is_valid().then_some(&parent_context));
    if !sampled {
        let call = CallTrace {
            traced: false,
            trace_id: caller_trace_id,
        };
        return (call, tracing::Span::none());
    }
    let span = tracing::info_span!(
        "grpc.call",
        otel.name = method.full,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = method.service,
        rpc.method = method.method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    if parent_context.is_valid() {
        // Fails only without the OpenTelemetry layer, when nothing is exported anyway.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    let trace_id = if trace_id == opentelemetry::trace::TraceId::INVALID {
        caller_trace_id
    } else {
        trace_id.to_string()
    };
    (
        CallTrace {
            traced: !span.is_disabled(),
            trace_id,
        },
        span,
    )
}

/// The layer of the module documentation, around the gRPC services.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcLayer;

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Filtered<S, RpcLayer>;

    fn layer(&self, inner: S) -> Filtered<S, RpcLayer> {
        Filtered {
            inner,
            filter: RpcLayer,
        }
    }
}

impl Filter for RpcLayer {
    fn call<S: Inner<B>, B: Body>(&self, inner: &mut S, request: Request<B>) -> Call<S, B> {
        let started = Instant::now();
        let method = method_of(request.uri().path());
        let (call, span) = start_call(request.headers(), method);
        let mut inner = take_ready(inner);
        Box::pin(async move {
            let future = {
                let _entered = span.enter();
                inner.call(request)
            };
            let response = match CALL.scope(call, future.instrument(span.clone())).await {
                Ok(response) => response,
                Err(error) => {
                    finish(method, started, &span, UNKNOWN);
                    return Err(error);
                }
            };
            match status_in(response.headers()) {
                // A stream under way: it ends with its body.
                None if method.streams => {
                    let end = StreamEnd {
                        method,
                        started,
                        span,
                    };
                    Ok(response.map(|body| body.watched(end)))
                }
                // A unary answer, whole with its headers; or a call refused or failed at once.
                code => {
                    finish(method, started, &span, code.unwrap_or(OK));
                    Ok(response)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of_traceparent(valid),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "garbage",
        ] {
            assert_eq!(trace_id_of_traceparent(invalid), "", "{invalid}");
        }
    }

    #[test]
    fn methods_are_named_from_the_descriptors() {
        let check = method_of("/assent.v1.Decisions/Check");
        assert_eq!(check.full, "assent.v1.Decisions/Check");
        assert_eq!(check.service, "assent.v1.Decisions");
        assert_eq!(check.method, "Check");
        assert_eq!(
            method_of("/grpc.health.v1.Health/Check").service,
            "grpc.health.v1.Health"
        );
        assert_eq!(method_of("/assent.v1.Decisions/Nope"), UNKNOWN_METHOD);
        let ext_authz = method_of("/envoy.service.auth.v3.Authorization/Check");
        assert_eq!(
            (ext_authz.service, ext_authz.method),
            ("envoy.service.auth.v3.Authorization", "Check")
        );
    }

    #[test]
    fn status_codes_come_from_the_headers_or_trailers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(
            status_in(&headers).map(|code| CODE_NAMES[code]),
            Some("INVALID_ARGUMENT")
        );
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(
            status_in(&headers).map(|code| CODE_NAMES[code]),
            Some("UNKNOWN")
        );
    }

    #[test]
    fn only_the_servers_own_failures_are_span_errors() {
        let errors: Vec<&str> = (0..CODE_NAMES.len())
            .filter(|code| is_server_error(*code))
            .map(|code| CODE_NAMES[code])
            .collect();
        assert_eq!(
            errors,
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
    }

    #[test]
    fn streaming_methods_are_known_from_the_descriptors() {
        assert!(method_of("/assent.v1.Changes/Watch").streams);
        assert!(method_of("/assent.v1.Decisions/StreamCheck").streams);
        assert!(method_of("/grpc.health.v1.Health/Watch").streams);
        assert!(method_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").streams);
        assert!(!method_of("/assent.v1.Decisions/Check").streams);
        assert!(!method_of("/assent.v1.Audit/ListEvents").streams);
        assert!(!method_of("/envoy.service.auth.v3.Authorization/Check").streams);
    }

    #[test]
    fn samplers_are_the_opentelemetry_ones() {
        let parse = |name: &str, argument: &str| Sampler::parse(name, argument).unwrap();
        let sampler = |follows_parent: bool, ratio: f64| Sampler {
            follows_parent,
            ratio,
        };
        assert_eq!(parse("always_on", "junk"), sampler(false, 1.0));
        assert_eq!(parse("always_off", "1"), sampler(false, 0.0));
        assert_eq!(parse("traceidratio", "0.25"), sampler(false, 0.25));
        assert_eq!(parse("parentbased_always_on", ""), sampler(true, 1.0));
        assert_eq!(parse("parentbased_always_off", ""), sampler(true, 0.0));
        assert_eq!(
            parse("parentbased_traceidratio", "0.01"),
            sampler(true, 0.01)
        );
        assert!(parse("always_off", "").never());
        assert!(!parse("parentbased_always_off", "").never());
        for (name, argument) in [
            ("traceidratio", "2"),
            ("parentbased_traceidratio", "-0.5"),
            ("traceidratio", "half"),
            ("jaeger_remote", ""),
            ("AlwaysOn", ""),
        ] {
            assert!(Sampler::parse(name, argument).is_err(), "{name} {argument}");
        }
    }

    #[test]
    fn samplers_decide_with_and_without_a_caller() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let parent = |trace_id: u128, sampled: bool| {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            SpanContext::new(
                TraceId::from(trace_id),
                SpanId::from(1_u64),
                flags,
                true,
                TraceState::default(),
            )
        };
        let sampler = |name: &str, argument: &str| Sampler::parse(name, argument).unwrap();
        let sampled_parent = parent(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, true);
        let unsampled_parent = parent(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, false);
        // The parent-based samplers follow the caller, whatever their ratio.
        for name in ["parentbased_always_on", "parentbased_always_off"] {
            assert!(sampler(name, "").samples(Some(&sampled_parent)), "{name}");
            assert!(
                !sampler(name, "").samples(Some(&unsampled_parent)),
                "{name}"
            );
        }
        // The others ignore the caller's flag.
        assert!(sampler("always_on", "").samples(Some(&unsampled_parent)));
        assert!(!sampler("always_off", "").samples(Some(&sampled_parent)));
        assert!(sampler("always_on", "").samples(None));
        assert!(!sampler("always_off", "").samples(None));
        assert!(!sampler("parentbased_always_off", "").samples(None));
        // The trace-id ratio: the same trace id, the same answer; low ids in, high ids out.
        let half = sampler("traceidratio", "0.5");
        assert!(half.samples(Some(&parent(
            0x0000_0000_0000_0000_0000_0000_0000_0002,
            false
        ))));
        assert!(!half.samples(Some(&parent(
            0x0000_0000_0000_0000_ffff_ffff_ffff_fffe,
            true
        ))));
        let admitted = (1..=1_000_u128)
            .filter(|index| {
                let trace_id = index.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
                half.samples(Some(&parent(trace_id, false)))
            })
            .count();
        assert!((400..=600).contains(&admitted), "{admitted}");
    }
}
