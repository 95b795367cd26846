//! Telemetry set up once, at start: logs, and traces exported over OTLP when configured.
//!
//! Logs: readable lines for a terminal or JSON lines for a collector, level from `RUST_LOG`
//! (default `info,sqlx=warn`), on standard error. Logs carry no subject ids or other personal
//! data.
//!
//! Traces: with an OTLP endpoint set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans go to that collector over OTLP/gRPC or, by
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, OTLP/HTTP (protobuf or JSON). Which calls are traced is
//! `OTEL_TRACES_SAMPLER` with `OTEL_TRACES_SAMPLER_ARG` (by default parent-based ratio sampling:
//! a call follows its caller's `traceparent`, and one without is traced with that probability).
//! The decision is made once per call by the [`layer`]; the spans of its work (cache lookup,
//! store queries, policy evaluation, audit writes) are created only when it is traced, so an
//! untraced call costs no span at all. The resource names the service (`OTEL_SERVICE_NAME`),
//! its version (the crate's) and what `OTEL_RESOURCE_ATTRIBUTES` adds. Subject ids appear in
//! spans only as a keyed hash ([`subject_hash`]).

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
    /// Where spans are sent: the collector's address for gRPC (`http://otel-collector:4317`),
    /// the whole URL of its traces path for HTTP (`http://otel-collector:4318/v1/traces`).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The resource's other attributes (`OTEL_RESOURCE_ATTRIBUTES`), `service.version` the
    /// crate's unless they name one.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: layer::Sampler,
}

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies (`http/json`).
    HttpJson,
}

impl OtlpProtocol {
    /// The protocol as the OpenTelemetry variables name it.
    pub fn parse(name: &str) -> Result<OtlpProtocol, String> {
        match name.trim() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            other => Err(format!(
                "expected grpc, http/protobuf or http/json, got {other:?}"
            )),
        }
    }
}

/// The endpoint spans are sent to, by the OTLP exporter specification: the traces endpoint
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) as it is; otherwise the endpoint of every signal
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`), to which OTLP/HTTP appends the traces path `v1/traces`.
pub fn traces_endpoint(
    protocol: OtlpProtocol,
    traces_endpoint: Option<&str>,
    endpoint: Option<&str>,
) -> Option<String> {
    if let Some(traces_endpoint) = traces_endpoint {
        return Some(traces_endpoint.to_owned());
    }
    let endpoint = endpoint?;
    Some(match protocol {
        OtlpProtocol::Grpc => endpoint.to_owned(),
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
    })
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, each value
/// percent-encoded where it holds a comma, an equals sign, a space or a `%` (the W3C Baggage
/// form, without properties).
pub fn parse_resource_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut attributes = Vec::new();
    for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("expected key=value, got {:?}", pair.trim()));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("a key is empty in {:?}", pair.trim()));
        }
        let value = percent_decoded(value.trim())
            .ok_or_else(|| format!("the value of {key} is not percent-encoded UTF-8"))?;
        attributes.push((key.to_owned(), value));
    }
    Ok(attributes)
}

fn percent_decoded(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let hex = after.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).ok()
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
    // A sampler that samples nothing needs no exporter: no span is ever made.
    let traces = traces.filter(|settings| !settings.sampler.never());
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
    if installed && let (Some(_), Some(settings)) = (&provider, traces) {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        layer::enable_tracing(settings.sampler);
    }
    TelemetryGuard {
        provider: provider.filter(|_| installed),
    }
}

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

fn tracer_provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let exporter = span_exporter(settings).map_err(|error| error.to_string())?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "trace export needs the async runtime to be running".to_owned())?;
    Ok(SdkTracerProvider::builder()
        // The layer samples each call; the spans it lets through are all kept.
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_batch_exporter(OnRuntime { exporter, handle })
        .with_resource(resource(settings))
        .build())
}

/// The resource of every span: the SDK's own attributes, the service's version, those of
/// `OTEL_RESOURCE_ATTRIBUTES` (which may name another version), and the service's name.
fn resource(settings: &TraceSettings) -> opentelemetry_sdk::Resource {
    use opentelemetry::KeyValue;
    let given = settings
        .resource_attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()));
    opentelemetry_sdk::Resource::builder_empty()
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(given)
        .with_service_name(settings.service_name.clone())
        .build()
}

/// The OTLP exporter of the protocol configured. OTLP/HTTP goes through hyper (already the
/// server's HTTP stack) with rustls over the operating system's roots for `https://`.
fn span_exporter(
    settings: &TraceSettings,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_http::hyper::HyperClient;
    use opentelemetry_otlp::{Protocol, WithHttpConfig};
    let protocol = match settings.protocol {
        OtlpProtocol::Grpc => {
            return opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build();
        }
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT);
    let builder = if settings.endpoint.starts_with("https://") {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|error| {
                opentelemetry_otlp::ExporterBuildError::InternalFailure(format!(
                    "no TLS roots for the collector: {error}"
                ))
            })?
            .https_only()
            .enable_http1()
            .build();
        builder.with_http_client(HyperClient::new(connector, EXPORT_TIMEOUT, None))
    } else {
        builder.with_http_client(HyperClient::with_default_connector(EXPORT_TIMEOUT, None))
    };
    builder.build()
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
