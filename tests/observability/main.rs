//! What SREs see of a running `assent serve`: the spans it exports over OTLP, and the metrics on
//! its admin port. Each test runs its own server process (tracing and metrics are process-wide)
//! on the embedded store.

#[path = "../support/process.rs"]
mod process;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assent::proto::changes_client::ChangesClient;
use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Choice, Plan, Purpose};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use process::{ServerProcess, http_get, scrape};

const SUBJECT: &str = "jane.doe@example.com";
const HASH_KEY: &str = "observability-test-key";

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves on a free loopback port; returns the endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    attribute_of(&span.attributes, key)
}

fn attribute_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|attribute| attribute.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        Value::BoolValue(flag) => flag.to_string(),
        Value::DoubleValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

fn find<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
            panic!("no span {name}; spans: {names:?}")
        })
}

/// A request carrying a W3C `traceparent`.
fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

fn actor() -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: "support:tester".into(),
        reason: "observability test".into(),
    })
}

fn data_dir() -> (tempfile::TempDir, (&'static str, String)) {
    let directory = tempfile::tempdir().unwrap();
    let setting = (
        "ASSENT_DATA_DIR",
        directory.path().to_str().unwrap().to_owned(),
    );
    (directory, setting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_never_hold_the_subject_id() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let (_data, data_setting) = data_dir();
    let server = ServerProcess::start(&[
        data_setting,
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "assent-under-test".to_owned()),
        // Only calls whose caller samples them are traced.
        ("OTEL_TRACES_SAMPLER_ARG", "0".to_owned()),
        ("ASSENT_SUBJECT_HASH_KEY", HASH_KEY.to_owned()),
        // Quiet logs do not silence the traces.
        ("RUST_LOG", "warn,assent::startup=info".to_owned()),
    ]);
    let channel = server.channel().await;
    let mut subjects = SubjectsClient::new(channel.clone());
    let mut decisions = DecisionsClient::new(channel);

    let write_trace = "0af7651916cd43dd8448eb211c80319c";
    let write_parent = "b7ad6b7169203331";
    subjects
        .upsert_subject(traced(
            proto::UpsertSubjectRequest {
                subject_id: SUBJECT.into(),
                plan: Some(Plan::Free as i32),
                actor: actor(),
                ..Default::default()
            },
            &format!("00-{write_trace}-{write_parent}-01"),
        ))
        .await
        .unwrap();
    subjects
        .set_choice(proto::SetChoiceRequest {
            subject_id: SUBJECT.into(),
            purpose: Purpose::ModelTraining as i32,
            choice: Choice::Refused as i32,
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();

    let check_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let check_parent = "00f067aa0ba902b7";
    let answer = decisions
        .check(traced(
            proto::CheckRequest {
                subject_id: SUBJECT.into(),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            },
            &format!("00-{check_trace}-{check_parent}-01"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.decision, proto::Decision::Deny as i32);

    // A caller that does not sample its call: nothing of it is exported.
    let unsampled_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    decisions
        .check(traced(
            proto::CheckRequest {
                subject_id: SUBJECT.into(),
                purpose: Purpose::Memory as i32,
                ..Default::default()
            },
            &format!("00-{unsampled_trace}-00f067aa0ba902b8-00"),
        ))
        .await
        .unwrap();

    // The audit event of the traced write carries its trace id.
    let events = assent::proto::audit_client::AuditClient::new(server.channel().await)
        .list_events(proto::ListEventsRequest {
            subject_id: Some(SUBJECT.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events[0].trace_id, write_trace);

    // SIGTERM: the server flushes its last spans before it exits.
    assert!(server.stop_with_status().success());
    let spans = receiver.spans();
    let trace_hex = |span: &Span| hex::encode(&span.trace_id);
    let of_trace = |trace: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|span| trace_hex(span) == trace)
            .cloned()
            .collect()
    };

    let check_spans = of_trace(check_trace);
    let server_span = find(&check_spans, "assent.v1.Decisions/Check");
    assert_eq!(hex::encode(&server_span.parent_span_id), check_parent);
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(server_span, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attribute(server_span, "rpc.service").as_deref(),
        Some("assent.v1.Decisions")
    );
    assert_eq!(
        attribute(server_span, "rpc.method").as_deref(),
        Some("Check")
    );
    assert_eq!(
        attribute(server_span, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let is_child_of = |child: &Span, parent: &Span| child.parent_span_id == parent.span_id;

    let lookup = find(&check_spans, "cache.lookup");
    assert!(is_child_of(lookup, server_span));
    let tier = attribute(lookup, "cache.tier").unwrap();
    assert!(
        ["local", "redis", "store"].contains(&tier.as_str()),
        "{tier}"
    );
    let expected_hash = {
        assert!(assent::telemetry::layer::set_hash_key(HASH_KEY.as_bytes()));
        assent::telemetry::subject_hash(SUBJECT)
    };
    assert_eq!(
        attribute(lookup, "assent.subject").as_deref(),
        Some(expected_hash.as_str())
    );

    let policy = find(&check_spans, "policy.evaluate");
    assert!(is_child_of(policy, server_span));
    assert_eq!(
        attribute(policy, "assent.purpose").as_deref(),
        Some("MODEL_TRAINING")
    );
    assert_eq!(
        attribute(policy, "assent.decision").as_deref(),
        Some("DENY")
    );
    assert_eq!(
        attribute(policy, "assent.reason").as_deref(),
        Some("CHOICE_REFUSED")
    );
    assert_eq!(
        attribute(policy, "assent.rule").as_deref(),
        Some(answer.rule.as_str())
    );

    let decision_log = find(&check_spans, "audit.decision_log");
    assert!(is_child_of(decision_log, server_span));

    // The write: its store transaction, and the audit event appended in it.
    let write_spans = of_trace(write_trace);
    let write_span = find(&write_spans, "assent.v1.Subjects/UpsertSubject");
    assert_eq!(hex::encode(&write_span.parent_span_id), write_parent);
    let store_write = find(&write_spans, "store.query");
    assert!(is_child_of(store_write, write_span));
    assert_eq!(
        attribute(store_write, "db.operation.name").as_deref(),
        Some("write")
    );
    assert_eq!(
        attribute(store_write, "db.system.name").as_deref(),
        Some("sqlite")
    );
    assert_eq!(store_write.kind, SpanKind::Client as i32);
    // The deprecated names are gone.
    assert_eq!(attribute(store_write, "db.operation"), None);
    assert_eq!(attribute(store_write, "db.system"), None);
    let append = find(&write_spans, "audit.append");
    assert!(is_child_of(append, store_write));
    // The cache lookup missed right after the write, so the store was read under it.
    if tier == "store" {
        let read = check_spans
            .iter()
            .find(|span| span.name == "store.query")
            .expect("a store read under the lookup");
        assert!(is_child_of(read, lookup));
    }

    assert!(of_trace(unsampled_trace).is_empty());
    assert!(spans.len() >= check_spans.len() + write_spans.len());
    for span in &spans {
        assert!(!span.name.contains(SUBJECT));
        for attribute in &span.attributes {
            let text = format!("{:?}", attribute.value);
            assert!(
                !text.contains(SUBJECT) && !text.contains("jane.doe"),
                "span {} holds the subject id in {}",
                span.name,
                attribute.key
            );
        }
    }
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let (_data, data_setting) = data_dir();
    let server = ServerProcess::start(&[data_setting]);
    let admin = server.admin_address.clone();
    assert_eq!(http_get(&admin, "/healthz").await.0, 200);
    assert_eq!(http_get(&admin, "/readyz").await.0, 200);
    let channel: Channel = server.channel().await;
    let mut subjects = SubjectsClient::new(channel.clone());
    let mut decisions = DecisionsClient::new(channel);

    let before = scrape(&admin).await;
    assert_eq!(
        before["assent_build_info{version=\"0.1.0\",policy_version=\"2026-01-01\"}"],
        1.0
    );
    subjects
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: "metrics-user".into(),
            plan: Some(Plan::Free as i32),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    subjects
        .set_choice(proto::SetChoiceRequest {
            subject_id: "metrics-user".into(),
            purpose: Purpose::ModelTraining as i32,
            choice: Choice::Refused as i32,
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..3 {
        decisions
            .check(proto::CheckRequest {
                subject_id: "metrics-user".into(),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let status = decisions
            .check(proto::CheckRequest {
                subject_id: String::new(),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // The decision log ships within about a second; wait for its counter rather than guess.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&admin).await;
        if delta(&before, &after, "assent_decision_log_written_total") >= 3.0
            || Instant::now() > deadline
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let check = "method=\"assent.v1.Decisions/Check\"";
    assert_eq!(
        delta(
            &before,
            &after,
            &format!("assent_grpc_requests_total{{{check},code=\"OK\"}}")
        ),
        3.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &format!("assent_grpc_requests_total{{{check},code=\"INVALID_ARGUMENT\"}}")
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &format!("assent_grpc_request_duration_seconds_count{{{check}}}")
        ),
        5.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "assent_grpc_requests_total{method=\"assent.v1.Subjects/SetChoice\",code=\"OK\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "assent_decisions_total{purpose=\"MODEL_TRAINING\",decision=\"DENY\",reason=\"CHOICE_REFUSED\"}"
        ),
        3.0
    );
    let answered: f64 = ["local", "redis", "store"]
        .iter()
        .map(|tier| {
            delta(
                &before,
                &after,
                &format!("assent_cache_answers_total{{tier=\"{tier}\"}}"),
            )
        })
        .sum();
    assert_eq!(answered, 3.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "assent_store_query_duration_seconds_count{operation=\"write\"}"
        ),
        2.0
    );
    assert_eq!(
        delta(&before, &after, "assent_decision_log_written_total"),
        3.0
    );
    assert_eq!(after["assent_decision_log_dropped_total"], 0.0);
    assert_eq!(after["assent_decision_log_queue_depth"], 0.0);

    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_subjects_barely_reaches_the_store() {
    const FLOOD: usize = 100_000;
    let (_data, data_setting) = data_dir();
    let server = ServerProcess::start(&[data_setting, ("ASSENT_DECISION_LOG", "off".to_owned())]);
    let admin = server.admin_address.clone();
    let mut subjects = SubjectsClient::new(server.channel().await);
    for index in 0..100 {
        subjects
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id: format!("customer-{index}"),
                plan: Some(Plan::Pro as i32),
                actor: actor(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let store_reads = |samples: &HashMap<String, f64>| -> f64 {
        samples
            .iter()
            .filter(|(series, _)| {
                series.starts_with("assent_store_query_duration_seconds_count")
                    && !series.contains("changes_since")
            })
            .map(|(_, value)| value)
            .sum()
    };
    let before = scrape(&admin).await;
    let mut decisions = DecisionsClient::new(server.channel().await);
    let mut answered = 0;
    for batch in 0..FLOOD / 1_000 {
        let checks = (0..1_000)
            .map(|index| proto::CheckRequest {
                subject_id: format!("stranger-{batch}-{index}"),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            })
            .collect();
        let results = decisions
            .batch_check(proto::BatchCheckRequest { checks })
            .await
            .unwrap()
            .into_inner()
            .results;
        for result in results {
            assert_eq!(result.decision, proto::Decision::Deny as i32);
            assert_eq!(result.reason, proto::Reason::UnknownSubject as i32);
            answered += 1;
        }
    }
    assert_eq!(answered, FLOOD);
    let after = scrape(&admin).await;
    let reads = store_reads(&after) - store_reads(&before);
    let filtered = delta(&before, &after, "assent_cache_unknown_filtered_total");
    eprintln!("{FLOOD} unknown subjects: {filtered} answered by the filter, {reads} store reads");
    // The filter's false-positive rate is 0.1%: about 100 reads, never one per stranger.
    assert!(reads <= 1_000.0, "{reads} store reads");
    assert!(filtered >= (FLOOD - 1_000) as f64, "{filtered}");
    server.stop();
}

/// A span's status code (unset when the span has no status).
fn status_of(span: &Span) -> StatusCode {
    span.status
        .as_ref()
        .map_or(StatusCode::Unset, |status| status.code())
}

fn unix_nanos(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

/// Waits up to 10 s for `probe` to find something.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The settings of a server exporting to `endpoint` over OTLP/gRPC every 100 ms (the SDK's
/// batch delay), tracing the calls whose caller samples them.
fn exporting_to(
    endpoint: String,
    data_setting: (&'static str, String),
) -> Vec<(&'static str, String)> {
    vec![
        data_setting,
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_SAMPLER_ARG", "0".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

fn of_trace(spans: &[Span], trace: &str) -> Vec<Span> {
    spans
        .iter()
        .filter(|span| hex::encode(&span.trace_id) == trace)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_span_and_metrics_end_when_the_stream_ends() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let (_data, data_setting) = data_dir();
    let server = ServerProcess::start(&exporting_to(endpoint, data_setting));
    let admin = server.admin_address.clone();
    let channel = server.channel().await;

    let watch_trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let mut stream = ChangesClient::new(channel.clone())
        .watch(traced(
            proto::WatchRequest {
                from_latest: true,
                ..Default::default()
            },
            &format!("00-{watch_trace}-00f067aa0ba902b9-01"),
        ))
        .await
        .unwrap()
        .into_inner();
    // A traced write, whose change the stream then carries.
    let write_trace = "7bf92f3577b34da6a3ce929d0e0e4739";
    SubjectsClient::new(channel)
        .upsert_subject(traced(
            proto::UpsertSubjectRequest {
                subject_id: "watched-user".into(),
                plan: Some(Plan::Free as i32),
                actor: actor(),
                ..Default::default()
            },
            &format!("00-{write_trace}-00f067aa0ba902ba-01"),
        ))
        .await
        .unwrap();
    loop {
        let message = stream.message().await.unwrap().unwrap();
        if let Some(proto::watch_response::Event::Change(change)) = message.event {
            assert_eq!(change.subject_id, "watched-user");
            break;
        }
    }
    let last_message = SystemTime::now();

    // The write's span is exported within the batch delay; the stream's is not: the stream is
    // still open, and neither counted nor timed yet.
    eventually("the write's span exported", || {
        (!of_trace(&receiver.spans(), write_trace).is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exported = of_trace(&receiver.spans(), watch_trace);
    let names: Vec<&str> = exported.iter().map(|span| span.name.as_str()).collect();
    assert!(!names.contains(&"assent.v1.Changes/Watch"), "{names:?}");
    let watch = "method=\"assent.v1.Changes/Watch\"";
    let duration_count = format!("assent_grpc_request_duration_seconds_count{{{watch}}}");
    let duration_sum = format!("assent_grpc_request_duration_seconds_sum{{{watch}}}");
    assert_eq!(scrape(&admin).await.get(&duration_count), None);

    // The client goes away: the stream ends, CANCELLED (not a server error).
    drop(stream);
    let server_span = eventually("the stream's span exported", || {
        of_trace(&receiver.spans(), watch_trace)
            .into_iter()
            .find(|span| span.name == "assent.v1.Changes/Watch")
    })
    .await;
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    assert!(server_span.start_time_unix_nano < unix_nanos(last_message));
    assert!(
        server_span.end_time_unix_nano >= unix_nanos(last_message + Duration::from_millis(300)),
        "the span ended {} ns before the stream did",
        unix_nanos(last_message + Duration::from_millis(300))
            .saturating_sub(server_span.end_time_unix_nano)
    );
    assert_eq!(
        attribute(&server_span, "rpc.grpc.status_code").as_deref(),
        Some("1")
    );
    assert_eq!(status_of(&server_span), StatusCode::Unset);
    let closed = scrape(&admin).await;
    assert_eq!(closed[&duration_count], 1.0);
    assert!(closed[&duration_sum] >= 0.3, "{}", closed[&duration_sum]);
    assert_eq!(
        closed[&format!("assent_grpc_requests_total{{{watch},code=\"CANCELLED\"}}")],
        1.0
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_is_an_error_only_for_the_servers_own_failures() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let (_data, data_setting) = data_dir();
    let server = ServerProcess::start(&exporting_to(endpoint, data_setting));
    let admin = server.admin_address.clone();
    let channel = server.channel().await;
    let mut decisions = DecisionsClient::new(channel.clone());
    let traceparent = |trace: &str| format!("00-{trace}-00f067aa0ba902bb-01");

    // A StreamCheck answering one check, then ending with INVALID_ARGUMENT in its trailers.
    let stream_trace = "8bf92f3577b34da6a3ce929d0e0e473a";
    let checks = tokio_stream::iter([
        proto::CheckRequest {
            subject_id: "someone".into(),
            purpose: Purpose::ModelTraining as i32,
            ..Default::default()
        },
        proto::CheckRequest {
            subject_id: String::new(),
            purpose: Purpose::ModelTraining as i32,
            ..Default::default()
        },
    ]);
    let mut answers = decisions
        .stream_check(traced(checks, &traceparent(stream_trace)))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A unary Check refused: INVALID_ARGUMENT.
    let check_trace = "9bf92f3577b34da6a3ce929d0e0e473b";
    let status = decisions
        .check(traced(
            proto::CheckRequest {
                subject_id: String::new(),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            },
            &traceparent(check_trace),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A method the server does not have: UNIMPLEMENTED, the server's failure.
    let missing_trace = "abf92f3577b34da6a3ce929d0e0e473c";
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<proto::CheckRequest, proto::CheckResponse, _>(
            traced(proto::CheckRequest::default(), &traceparent(missing_trace)),
            http::uri::PathAndQuery::from_static("/assent.v1.Decisions/Missing"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    // The stream is counted with the code it ended with, not the OK of its headers.
    let samples = scrape(&admin).await;
    let stream_check = "method=\"assent.v1.Decisions/StreamCheck\"";
    assert_eq!(
        samples[&format!("assent_grpc_requests_total{{{stream_check},code=\"INVALID_ARGUMENT\"}}")],
        1.0
    );
    assert_eq!(
        samples.get(&format!(
            "assent_grpc_requests_total{{{stream_check},code=\"OK\"}}"
        )),
        None
    );

    assert!(server.stop_with_status().success());
    let spans = receiver.spans();
    let server_span = |trace: &str| -> Span {
        of_trace(&spans, trace)
            .into_iter()
            .find(|span| span.kind == SpanKind::Server as i32)
            .unwrap_or_else(|| panic!("no server span in trace {trace}"))
    };
    for (trace, name) in [
        (stream_trace, "assent.v1.Decisions/StreamCheck"),
        (check_trace, "assent.v1.Decisions/Check"),
    ] {
        let span = server_span(trace);
        assert_eq!(span.name, name);
        assert_eq!(
            attribute(&span, "rpc.grpc.status_code").as_deref(),
            Some("3")
        );
        assert_eq!(status_of(&span), StatusCode::Unset, "{name}");
        assert_eq!(attribute(&span, "error.type"), None, "{name}");
    }
    let missing = server_span(missing_trace);
    assert_eq!(
        attribute(&missing, "rpc.grpc.status_code").as_deref(),
        Some("12")
    );
    assert_eq!(status_of(&missing), StatusCode::Error);
    assert_eq!(
        attribute(&missing, "error.type").as_deref(),
        Some("UNIMPLEMENTED")
    );
}

/// Runs a server with `sampler`, makes a Check whose caller samples it, one whose caller does
/// not, and one without a caller's trace; the spans exported.
async fn spans_sampled_by(sampler: &str) -> (Vec<Span>, [&'static str; 2]) {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let (_data, data_setting) = data_dir();
    let mut settings = exporting_to(endpoint, data_setting);
    settings.push(("OTEL_TRACES_SAMPLER", sampler.to_owned()));
    let server = ServerProcess::start(&settings);
    let mut decisions = DecisionsClient::new(server.channel().await);
    let check = || proto::CheckRequest {
        subject_id: "sampled-user".into(),
        purpose: Purpose::ModelTraining as i32,
        ..Default::default()
    };
    let traces = [
        "bbf92f3577b34da6a3ce929d0e0e473d",
        "cbf92f3577b34da6a3ce929d0e0e473e",
    ];
    for (trace, flags) in traces.iter().zip(["01", "00"]) {
        let traceparent = format!("00-{trace}-00f067aa0ba902bc-{flags}");
        decisions
            .check(traced(check(), &traceparent))
            .await
            .unwrap();
    }
    decisions.check(check()).await.unwrap();
    assert!(server.stop_with_status().success());
    (receiver.spans(), traces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_setting_decides_which_calls_are_traced() {
    // always_on: every call, whatever its caller chose, and one without a caller.
    let (spans, [sampled, unsampled]) = spans_sampled_by("always_on").await;
    let check = "assent.v1.Decisions/Check";
    find(&of_trace(&spans, sampled), check);
    find(&of_trace(&spans, unsampled), check);
    let traces: BTreeSet<Vec<u8>> = spans
        .iter()
        .filter(|span| span.name == check)
        .map(|span| span.trace_id.clone())
        .collect();
    assert_eq!(traces.len(), 3);

    // always_off: nothing, not even the call its caller sampled.
    let (spans, _) = spans_sampled_by("always_off").await;
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    assert!(spans.is_empty(), "{names:?}");
}

/// An OTLP/HTTP trace receiver: keeps each request it is sent.
#[derive(Clone, Default)]
struct HttpReceiver {
    posts: Arc<Mutex<Vec<Post>>>,
}

/// A request to the OTLP/HTTP receiver.
#[derive(Clone)]
struct Post {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

impl HttpReceiver {
    /// Serves on a free loopback port; returns its base URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let posts = self.posts.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let posts = posts.clone();
            async move {
                let path = request.uri().path().to_owned();
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = axum::body::to_bytes(request.into_body(), 64 << 20)
                    .await
                    .unwrap();
                posts.lock().unwrap().push(Post {
                    path,
                    content_type: content_type.clone(),
                    body: body.to_vec(),
                });
                // An empty ExportTraceServiceResponse in the request's encoding.
                let answer = if content_type == "application/json" {
                    b"{}".to_vec()
                } else {
                    Vec::new()
                };
                ([(http::header::CONTENT_TYPE, content_type)], answer)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

/// Runs a server with these trace settings and makes one Check its caller samples.
async fn one_traced_check(settings: Vec<(&'static str, String)>, trace: &str) {
    let (_data, data_setting) = data_dir();
    let mut settings = settings;
    settings.push(data_setting);
    let server = ServerProcess::start(&settings);
    DecisionsClient::new(server.channel().await)
        .check(traced(
            proto::CheckRequest {
                subject_id: "http-user".into(),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            },
            &format!("00-{trace}-00f067aa0ba902bd-01"),
        ))
        .await
        .unwrap();
    assert!(server.stop_with_status().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_otlp_http_with_the_resource_configured() {
    // http/protobuf, to the endpoint of every signal: the traces path is appended.
    let receiver = HttpReceiver::default();
    let base = receiver.start().await;
    let trace = "dbf92f3577b34da6a3ce929d0e0e473f";
    one_traced_check(
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_SERVICE_NAME", "assent-over-http".to_owned()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test,team=privacy%20office".to_owned(),
            ),
        ],
        trace,
    )
    .await;
    let posts = receiver.posts();
    assert!(!posts.is_empty());
    let mut spans = Vec::new();
    for post in &posts {
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.content_type, "application/x-protobuf");
        let request = <ExportTraceServiceRequest as prost::Message>::decode(post.body.as_slice())
            .expect("an ExportTraceServiceRequest");
        for resource_spans in request.resource_spans {
            let resource = resource_spans.resource.expect("a resource");
            let attributes = &resource.attributes;
            assert_eq!(
                attribute_of(attributes, "service.name").as_deref(),
                Some("assent-over-http")
            );
            assert_eq!(
                attribute_of(attributes, "service.version").as_deref(),
                Some(env!("CARGO_PKG_VERSION"))
            );
            assert_eq!(
                attribute_of(attributes, "deployment.environment.name").as_deref(),
                Some("test")
            );
            assert_eq!(
                attribute_of(attributes, "team").as_deref(),
                Some("privacy office")
            );
            assert_eq!(
                attribute_of(attributes, "telemetry.sdk.language").as_deref(),
                Some("rust")
            );
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans);
            }
        }
    }
    let check = find(&of_trace(&spans, trace), "assent.v1.Decisions/Check").clone();
    assert_eq!(check.kind, SpanKind::Server as i32);

    // http/json, to a traces endpoint of its own, used as it is.
    let receiver = HttpReceiver::default();
    let base = receiver.start().await;
    let trace = "ebf92f3577b34da6a3ce929d0e0e4740";
    one_traced_check(
        vec![
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("{base}/collector/traces"),
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json".to_owned()),
        ],
        trace,
    )
    .await;
    let posts = receiver.posts();
    assert!(!posts.is_empty());
    let mut names = Vec::new();
    for post in &posts {
        assert_eq!(post.path, "/collector/traces");
        assert_eq!(post.content_type, "application/json");
        let request: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
        for resource_spans in request["resourceSpans"].as_array().unwrap() {
            let attributes = resource_spans["resource"]["attributes"].as_array().unwrap();
            let value_of = |key: &str| {
                attributes
                    .iter()
                    .find(|attribute| attribute["key"] == key)
                    .map(|attribute| attribute["value"]["stringValue"].clone())
            };
            assert_eq!(value_of("service.name"), Some("assent".into()));
            assert_eq!(
                value_of("service.version"),
                Some(env!("CARGO_PKG_VERSION").into())
            );
            for scope_spans in resource_spans["scopeSpans"].as_array().unwrap() {
                for span in scope_spans["spans"].as_array().unwrap() {
                    names.push(span["name"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(
        names.iter().any(|name| name == "assent.v1.Decisions/Check"),
        "{names:?}"
    );
}

/// The metric names of docs/observability.md's table, as they are exposed.
fn documented_metrics() -> BTreeSet<String> {
    let text = include_str!("../../docs/observability.md");
    let section = text
        .split("\n## ")
        .find(|section| section.starts_with("Metrics"))
        .expect("a Metrics section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| format!("assent_{name}"))
        .collect()
}

/// The `assent_` metric names a text names, without the suffixes of histogram series.
fn metrics_named_in(text: &str) -> BTreeSet<String> {
    text.match_indices("assent_")
        .map(|(start, _)| {
            text[start..]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap()
        })
        .map(|name| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_keep_their_names_and_say_their_units() {
    let (_data, data_setting) = data_dir();
    let server = ServerProcess::start(&[data_setting]);
    // A family is written once it has a member: a write and a Check make most of them.
    let channel = server.channel().await;
    SubjectsClient::new(channel.clone())
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: "named-user".into(),
            plan: Some(Plan::Free as i32),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    DecisionsClient::new(channel.clone())
        .check(proto::CheckRequest {
            subject_id: "named-user".into(),
            purpose: Purpose::ModelTraining as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assent::proto::audit_client::AuditClient::new(channel)
        .verify_chain(proto::VerifyChainRequest::default())
        .await
        .unwrap();
    let (status, text) = http_get(&server.admin_address, "/metrics").await;
    assert_eq!(status, 200);
    server.stop();

    // Every metric family, by the name its samples carry (a counter's ends with `_total`).
    let mut exposed = BTreeSet::new();
    let mut units = Vec::new();
    for line in text.lines() {
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            let sampled = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            };
            exposed.insert(sampled);
        }
        if let Some((name, unit)) = line
            .strip_prefix("# UNIT ")
            .and_then(|rest| rest.split_once(' '))
        {
            units.push((name.to_owned(), unit.to_owned()));
        }
    }
    // The names are those documented, but for those written only once they count something
    // (a limit reached, a checkpoint signed) and a read replica's (only with replicas).
    let documented = documented_metrics();
    let undocumented: Vec<&String> = exposed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exposed, not documented: {undocumented:?}"
    );
    let missing: Vec<&String> = documented
        .difference(&exposed)
        .filter(|name| !name.starts_with("assent_replica_"))
        .filter(|name| {
            ![
                "assent_limited_requests_total",
                "assent_audit_checkpoints_total",
            ]
            .contains(&name.as_str())
        })
        .collect();
    assert!(missing.is_empty(), "documented, not exposed: {missing:?}");
    // Those the dashboard and the alert rules query are among them.
    for (file, text) in [
        (
            "docs/grafana-dashboard.json",
            include_str!("../../docs/grafana-dashboard.json"),
        ),
        (
            "helm/assent/templates/prometheusrule.yaml",
            include_str!("../../helm/assent/templates/prometheusrule.yaml"),
        ),
    ] {
        for name in metrics_named_in(text) {
            assert!(documented.contains(&name), "{file} queries {name}");
        }
    }
    // Times and sizes say their unit, which ends their name.
    units.sort();
    let unit = |name: &str, unit: &str| (name.to_owned(), unit.to_owned());
    assert_eq!(
        units,
        [
            unit("assent_decision_log_backlog_bytes", "bytes"),
            unit("assent_decision_log_unreadable_bytes", "bytes"),
            unit("assent_grpc_request_duration_seconds", "seconds"),
            unit("assent_invalidation_lag_seconds", "seconds"),
            unit("assent_store_query_duration_seconds", "seconds"),
        ]
    );
}
