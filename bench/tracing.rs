//! What tracing costs on the request path: Check throughput with trace export off, on at 1%
//! sampling, and on for every call.
//!
//!     cargo bench --bench tracing
//!
//! Each round runs every setting (order rotating, so drift of a shared machine cancels), each
//! on a fresh `assent serve` process over a fresh embedded store with the decision log off (so
//! the figures are the tracing's and not the log's), under the same closed-loop load of unary
//! Checks on loopback answered from the cache. The spans go to an OTLP receiver in this process,
//! which counts them. Reports per-run figures, medians, the median of the per-round throughput
//! ratios against export off, and server CPU time per Check (from /proc). Environment:
//! BENCH_ROUNDS (default 5), BENCH_SECONDS per run (default 8), BENCH_CONCURRENCY (in-flight
//! calls, default 32), BENCH_BASELINE_BIN (an `assent` binary of another build: its runs with
//! export off and at 1% join every round, to compare the request path of two builds).
//!
//!     BENCH_BASELINE_BIN=path/to/other/assent cargo bench --bench tracing

#[path = "support.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use assent::proto::{self, Plan, Purpose};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use support::{Server, check_load, env_number, median, seed_subjects};
use tokio_stream::wrappers::TcpListenerStream;

const SUBJECTS: usize = 1_000;

/// A setting compared: its name, the sampling ratio (`None`: no export configured), and the
/// binary (`None`: this checkout's).
struct Mode {
    name: &'static str,
    ratio: Option<&'static str>,
    binary: Option<PathBuf>,
}

/// The settings compared; the first is the one the others are measured against.
fn modes() -> Vec<Mode> {
    let mut modes = vec![
        Mode {
            name: "export off",
            ratio: None,
            binary: None,
        },
        Mode {
            name: "export on, 1%",
            ratio: Some("0.01"),
            binary: None,
        },
        Mode {
            name: "export on, 100%",
            ratio: Some("1"),
            binary: None,
        },
    ];
    if let Ok(baseline) = std::env::var("BENCH_BASELINE_BIN") {
        for (name, ratio) in [("baseline, off", None), ("baseline, 1%", Some("0.01"))] {
            modes.push(Mode {
                name,
                ratio,
                binary: Some(PathBuf::from(&baseline)),
            });
        }
    }
    modes
}

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Run {
    mode: usize,
    checks_per_second: f64,
    cpu_micros_per_check: f64,
    p50_micros: u128,
    p99_micros: u128,
    spans: u64,
}

async fn run(
    modes: &[Mode],
    mode: usize,
    endpoint: &str,
    receiver: &Receiver,
    seconds: u64,
) -> Run {
    let data = tempfile::tempdir().unwrap();
    let mut settings = vec![
        ("ASSENT_DATA_DIR", data.path().to_str().unwrap().to_owned()),
        ("ASSENT_DECISION_LOG", "off".to_owned()),
    ];
    if let Some(ratio) = modes[mode].ratio {
        settings.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()));
        settings.push(("OTEL_TRACES_SAMPLER_ARG", ratio.to_owned()));
    }
    let server = match &modes[mode].binary {
        Some(binary) => Server::start_binary(binary, &settings),
        None => Server::start(&settings),
    };
    let channels = server.channels(4).await;
    seed_subjects(
        channels[0].clone(),
        "bench",
        SUBJECTS,
        &[Plan::Free, Plan::Pro, Plan::Team],
    )
    .await;
    let spans_before = receiver.spans.load(Ordering::Relaxed);
    let load = check_load(
        &server,
        &channels,
        env_number("BENCH_CONCURRENCY", 32) as usize,
        Duration::from_secs(seconds),
        None,
        |index| proto::CheckRequest {
            subject_id: format!("bench-{}", index % SUBJECTS),
            purpose: Purpose::ModelTraining as i32,
            ..Default::default()
        },
    )
    .await;
    server.stop();
    Run {
        mode,
        checks_per_second: load.requests_per_second,
        cpu_micros_per_check: load.server_cpu_per_request.as_secs_f64() * 1e6,
        p50_micros: load.p50.as_micros(),
        p99_micros: load.p99.as_micros(),
        spans: receiver.spans.load(Ordering::Relaxed) - spans_before,
    }
}

fn main() {
    let rounds = env_number("BENCH_ROUNDS", 5) as usize;
    let seconds = env_number("BENCH_SECONDS", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let modes = modes();
        let mut runs: Vec<Run> = Vec::new();
        for round in 0..rounds {
            for step in 0..modes.len() {
                let mode = (round + step) % modes.len();
                let result = run(&modes, mode, &endpoint, &receiver, seconds).await;
                println!(
                    "round {} {:>16}: {:>8.0} Checks/s  {:>6.1} µs CPU/Check  p50 {:>5} µs  \
                     p99 {:>6} µs  {:>7} spans received",
                    round + 1,
                    modes[mode].name,
                    result.checks_per_second,
                    result.cpu_micros_per_check,
                    result.p50_micros,
                    result.p99_micros,
                    result.spans,
                );
                runs.push(result);
            }
        }
        println!();
        let of = |mode: usize| runs.iter().filter(move |run| run.mode == mode);
        for (mode, Mode { name, .. }) in modes.iter().enumerate() {
            let throughput = median(of(mode).map(|run| run.checks_per_second).collect());
            let cpu = median(of(mode).map(|run| run.cpu_micros_per_check).collect());
            let ratios: Vec<f64> = (0..rounds)
                .map(|round| {
                    let in_round = |mode: usize| {
                        runs[round * modes.len()..(round + 1) * modes.len()]
                            .iter()
                            .find(|run| run.mode == mode)
                            .unwrap()
                    };
                    in_round(mode).checks_per_second / in_round(0).checks_per_second
                })
                .collect();
            println!(
                "{name:>16}: median {throughput:>8.0} Checks/s, {cpu:>6.1} µs CPU/Check, \
                 throughput vs export off (median of per-round ratios) {:.3}",
                median(ratios)
            );
        }
    });
}
