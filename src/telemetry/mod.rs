//! Telemetry set up once, at start: logs, and traces exported over OTLP when configured.
//!
//! Logs: readable lines for a terminal or JSON lines for a collector, level from `RUST_LOG`
//! (default `info,sqlx=warn`), on standard error. Logs carry no subject ids or other personal
//! data.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans go to that OTLP/gRPC collector. A call
//! is traced when its caller's `traceparent` says the caller's span is sampled, or, for a call
//! without one, with probability `OTEL_TRACES_SAMPLER_ARG` (parent-based ratio sampling). The
//! decision is made once per call by the [`layer`]; the spans of its work (cache lookup, store
//! queries, policy evaluation, audit writes) are created only when it is traced, so an untraced
//! call costs no span at all. Subject ids appear in spans only as a keyed hash
//! ([`subject_hash`]).

pub mod layer;

use std::io::IsTerminal;
use std::time::Duration;

use hmac::{Hmac, Mac};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use sha2::Sha256;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where traces go and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/gRPC collector, e.g. `http://otel-collector:4317`.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// The fraction of calls without a sampled parent that are traced (0 to 1).
    pub sample_ratio: f64,
}

/// The key of the subject hash. It is a secret (whoever has it can test guesses of a subject
/// id against a hash), so it never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectHashKey(String);

impl SubjectHashKey {
    pub fn new(key: impl Into<String>) -> SubjectHashKey {
        SubjectHashKey(key.into())
    }

    /// Makes this the key of [`subject_hash`] for the process (the first key set wins).
    pub fn install(&self) {
        if !layer::set_hash_key(self.0.as_bytes()) {
            tracing::debug!("a subject hash key was already set; keeping it");
        }
    }
}

impl std::fmt::Debug for SubjectHashKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SubjectHashKey(***)")
    }
}

/// Keeps the trace exporter running; [`TelemetryGuard::shutdown`] flushes what is buffered.
#[must_use = "dropping the guard does not flush the traces; call shutdown"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the trace exporter (blocking work runs off the async threads).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(%error, "cannot flush the last traces");
            }
        }
    }
}

/// Installs logging and, when configured, trace export. A second call (tests start many
/// servers in one process) keeps the first subscriber and exports nothing.
pub fn init(log_format: LogFormat, traces: Option<&TraceSettings>) -> TelemetryGuard {
    // The log level applies to the log lines only: spans of a sampled call are exported
    // whatever RUST_LOG says, and only assent's own (not its libraries').
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match log_format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr),
        ),
    };
    let provider = traces.and_then(|settings| match tracer_provider(settings) {
        Ok(provider) => Some(provider),
        Err(error) => {
            eprintln!("assent: traces will not be exported: {error}");
            None
        }
    });
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("assent"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("assent", Level::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        layer::enable_tracing(traces.map_or(0.0, |settings| settings.sample_ratio));
    }
    TelemetryGuard {
        provider: provider.filter(|_| installed),
    }
}

fn tracer_provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.otlp_endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| error.to_string())?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "trace export needs the async runtime to be running".to_owned())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        // The layer samples each call; the spans it lets through are all kept.
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_batch_exporter(OnRuntime { exporter, handle })
        .with_resource(resource)
        .build())
}

/// Runs an exporter's I/O on the async runtime. The SDK's batch processor exports from a thread
/// of its own, where the gRPC client (which needs the runtime's reactor) cannot run by itself.
#[derive(Debug)]
struct OnRuntime<E> {
    exporter: E,
    handle: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let result = self.handle.block_on(self.exporter.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}

/// The subject id as it may appear in telemetry: HMAC-SHA-256 under the process's key (set
/// `ASSENT_SUBJECT_HASH_KEY` for hashes that agree across replicas and restarts), 16 hex
/// characters. A trace is then no new copy of personal data.
pub fn subject_hash(subject_id: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(layer::hash_key()).expect("HMAC takes a key of any length");
    mac.update(subject_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    hex::encode(&digest[..8])
}

/// The error and its causes on one line: "a: b: c".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A span for part of a traced call; a disabled span (free) when the call is not traced.
#[macro_export]
macro_rules! child_span {
    ($name:expr $(, $($fields:tt)*)?) => {
        if $crate::telemetry::layer::traced() {
            tracing::info_span!($name $(, $($fields)*)?)
        } else {
            tracing::Span::none()
        }
    };
}
