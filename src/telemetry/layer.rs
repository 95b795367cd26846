//! The layer every gRPC call passes through: it names the call, decides once whether it is
//! traced, opens its server span (a child of the caller's span when a `traceparent` came in),
//! and counts it in the request metrics with its status code and duration.
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
use crate::rpc::{Body, Call, Filter, Filtered, Inner, take_ready};

static TRACING: AtomicBool = AtomicBool::new(false);
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0);
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

/// Turns on span creation for sampled calls; `ratio` is the fraction of calls without a
/// sampled parent that are traced.
pub fn enable_tracing(ratio: f64) {
    SAMPLE_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    TRACING.store(true, Ordering::Release);
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
}

const UNKNOWN_METHOD: MethodName = MethodName {
    full: "unknown",
    service: "unknown",
    method: "unknown",
};

/// Every method served, by request path, read from the descriptors the server registers (so a
/// label is never made from a caller's input).
static METHODS: LazyLock<HashMap<String, MethodName>> = LazyLock::new(|| {
    let mut methods = HashMap::new();
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut names: Vec<(String, String)> = Vec::new();
    for encoded in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    names.push((service_name.clone(), method.name.unwrap_or_default()));
                }
            }
        }
    }
    for version in ["v1", "v1alpha"] {
        names.push((
            format!("grpc.reflection.{version}.ServerReflection"),
            "ServerReflectionInfo".to_owned(),
        ));
    }
    // Envoy's ext_authz (`api::ext_authz`), whose descriptors the server does not register.
    names.push((
        "envoy.service.auth.v3.Authorization".to_owned(),
        "Check".to_owned(),
    ));
    // Leaked once: the set of methods is fixed for the life of the process.
    for (service, method) in names {
        let full: &'static str = Box::leak(format!("{service}/{method}").into_boxed_str());
        let (service, method) = full.split_once('/').expect("the name has a slash");
        methods.insert(
            format!("/{full}"),
            MethodName {
                full,
                service,
                method,
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

/// The status of a response from its headers: a failed call answers with its `grpc-status` in
/// the headers (trailers-only); a call that got as far as a body has none there (OK).
fn status_of(headers: &http::HeaderMap) -> usize {
    const UNKNOWN: usize = 2;
    let Some(value) = headers.get("grpc-status") else {
        return 0;
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|code| *code < CODE_NAMES.len())
        .unwrap_or(UNKNOWN)
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
    let sampled = if parent_context.is_valid() {
        parent_context.is_sampled()
    } else {
        let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
        fastrand::f64() < ratio
    };
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
            let result = CALL.scope(call, future.instrument(span.clone())).await;
            let code = match &result {
                Ok(response) => status_of(response.headers()),
                Err(_) => 2,
            };
            metrics::record_request(method.full, CODE_NAMES[code], started.elapsed());
            if !span.is_disabled() {
                span.record("rpc.grpc.status_code", code as i64);
                if code != 0 {
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
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
    fn status_codes_come_from_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(CODE_NAMES[status_of(&headers)], "OK");
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(CODE_NAMES[status_of(&headers)], "INVALID_ARGUMENT");
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(CODE_NAMES[status_of(&headers)], "UNKNOWN");
    }
}
