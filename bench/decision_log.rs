//! What recording every decision costs: Check throughput with the decision log `off` and `all`,
//! and the decisions per second the log ships into PostgreSQL meanwhile.
//!
//!     cargo bench --bench decision_log
//!
//! Starts PostgreSQL when needed (scripts/ensure-postgres), then runs both settings in each of
//! several rounds (order alternating, so drift of a shared machine cancels), each on a fresh
//! `assent serve` process over a fresh database, under the same closed-loop load of unary Checks
//! on loopback. Reports per-run figures, medians, the median of the per-round throughput ratios,
//! and CPU time per Check of the server and of PostgreSQL (from /proc): on a busy machine the CPU
//! figures are steadier than throughput. Environment: BENCH_ROUNDS (default 5), BENCH_SECONDS
//! per run (default 8), BENCH_CONCURRENCY (in-flight calls, default 32).

#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assent::proto::decisions_client::DecisionsClient;
use assent::proto::{self, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use sqlx::Connection;
use support::{Server, ensure_services, env_number, median, postgres_cpu, seed_subjects};
use tonic::transport::Channel;

const SUBJECTS: usize = 1_000;

struct Round {
    mode: &'static str,
    checks_per_second: f64,
    cpu_micros_per_check: f64,
    postgres_cpu_micros_per_check: f64,
    p50_micros: u64,
    p99_micros: u64,
    logged_per_second: f64,
}

async fn count_decisions(database: &TestDatabase) -> i64 {
    let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    // Rows (require_audit decisions) and the decisions of the shipped segments.
    let (count,): (i64,) = sqlx::query_as(
        "SELECT CAST((SELECT COUNT(*) FROM decision_log)
              + (SELECT COALESCE(SUM(records), 0) FROM decision_log_segments) AS BIGINT)",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    count
}

async fn round(mode: &'static str, seconds: u64, concurrency: usize) -> Round {
    let database = TestDatabase::create(Backend::Postgres).await;
    let server = Server::start(&[
        ("ASSENT_DATABASE_URL", database.url()),
        ("ASSENT_DATABASE_MAX_CONNECTIONS", "16".to_owned()),
        ("ASSENT_DECISION_LOG", mode.to_owned()),
    ]);
    let channel = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    seed_subjects(
        channel.clone(),
        "bench",
        SUBJECTS,
        &[Plan::Free, Plan::Pro, Plan::Team],
    )
    .await;
    // Four HTTP/2 connections, as a gateway pool would hold.
    let mut channels = vec![channel];
    for _ in 1..4 {
        channels.push(
            Channel::from_shared(format!("http://{}", server.address))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }

    let running = Arc::new(AtomicBool::new(true));
    let completed = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(1);
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let mut client = DecisionsClient::new(channels[worker % channels.len()].clone());
        let running = running.clone();
        let completed = completed.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = worker;
            while running.load(Ordering::Relaxed) {
                let request = proto::CheckRequest {
                    subject_id: format!("bench-{}", index % SUBJECTS),
                    purpose: Purpose::ModelTraining as i32,
                    ..Default::default()
                };
                let started = Instant::now();
                client.check(request).await.unwrap();
                latencies.push(started.elapsed().as_micros() as u64);
                completed.fetch_add(1, Ordering::Relaxed);
                index += concurrency;
            }
            latencies
        }));
    }
    tokio::time::sleep(warmup).await;
    let rows_before = count_decisions(&database).await;
    let cpu_before = server.cpu_time();
    let postgres_before = postgres_cpu();
    let checks_before = completed.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed();
    let checks = completed.load(Ordering::Relaxed) - checks_before;
    let cpu = server.cpu_time() - cpu_before;
    let postgres = postgres_cpu().saturating_sub(postgres_before);
    let rows_after = count_decisions(&database).await;
    running.store(false, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    latencies.sort_unstable();
    let percentile = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    server.stop();
    Round {
        mode,
        checks_per_second: checks as f64 / elapsed.as_secs_f64(),
        cpu_micros_per_check: cpu.as_micros() as f64 / checks as f64,
        postgres_cpu_micros_per_check: postgres.as_micros() as f64 / checks as f64,
        p50_micros: percentile(0.50),
        p99_micros: percentile(0.99),
        logged_per_second: (rows_after - rows_before) as f64 / elapsed.as_secs_f64(),
    }
}

/// The log alone: how fast decisions recorded on the request path reach PostgreSQL (through
/// segment files, shipped as rows of `decision_log_segments`) when nothing else runs.
async fn ingestion_capacity(records: usize) -> f64 {
    use assent::audit::Decided;
    use assent::decision_log::{DecisionLog, LogMode, LogStore};
    use assent::policy::{Decision, POLICY_VERSION, Reason, Source};
    let database = TestDatabase::create(Backend::Postgres).await;
    let store = assent::store::Store::open(database.location())
        .await
        .unwrap();
    let directory = database.directory().join("decision-log");
    let (log, writer) = DecisionLog::start(
        LogStore::main(store.clone()),
        LogMode::All,
        (records, 1 << 30),
        &directory,
    )
    .unwrap();
    let now = assent::store::now_micros();
    let subjects: Vec<String> = (0..SUBJECTS)
        .map(|index| format!("bench-{index}"))
        .collect();
    let started = Instant::now();
    for index in 0..records {
        log.record(&Decided {
            decided_at_micros: now,
            decision_id: uuid::Uuid::now_v7(),
            subject_id: &subjects[index % SUBJECTS],
            purpose: Purpose::ModelTraining.try_into().unwrap(),
            conversation_id: None,
            source: Source::Conversation,
            consistency: "minimize_latency",
            decision: Decision::Allow,
            reason: Reason::PlanDefault,
            rule: "T6",
            policy_version: POLICY_VERSION,
            revision: Some(index as u64),
            degraded: false,
            caller: "bench",
            trace_id: "",
        });
    }
    writer.shutdown().await;
    let elapsed = started.elapsed();
    let written = store.count_decisions().await.unwrap();
    assert_eq!(written as usize, records, "{:?}", log.stats());
    store.close().await;
    records as f64 / elapsed.as_secs_f64()
}

fn main() {
    ensure_services(false);
    let rounds = env_number("BENCH_ROUNDS", 5);
    let seconds = env_number("BENCH_SECONDS", 8);
    let concurrency = env_number("BENCH_CONCURRENCY", 32) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    let capacity = runtime.block_on(ingestion_capacity(200_000));
    println!(
        "decision-log writer alone: {capacity:.0} decisions/s into PostgreSQL (200,000 decisions)"
    );
    let mut ratios = Vec::new();
    runtime.block_on(async {
        for number in 1..=rounds {
            let order = if number % 2 == 1 { ["off", "all"] } else { ["all", "off"] };
            let mut pair = Vec::new();
            for mode in order {
                let result = round(mode, seconds, concurrency).await;
                println!(
                    "round {number} {:<4} {:>8.0} checks/s  server {:>6.1} µs CPU/check  postgres {:>6.1} µs CPU/check  p50 {:>5} µs  p99 {:>6} µs  logged {:>8.0}/s",
                    result.mode,
                    result.checks_per_second,
                    result.cpu_micros_per_check,
                    result.postgres_cpu_micros_per_check,
                    result.p50_micros,
                    result.p99_micros,
                    result.logged_per_second
                );
                pair.push((mode, result.checks_per_second));
                results.push(result);
            }
            let throughput = |wanted: &str| pair.iter().find(|(mode, _)| *mode == wanted).unwrap().1;
            ratios.push(throughput("all") / throughput("off"));
        }
    });
    let of = |mode: &str, field: fn(&Round) -> f64| -> f64 {
        median(
            results
                .iter()
                .filter(|r| r.mode == mode)
                .map(field)
                .collect(),
        )
    };
    let off = of("off", |r| r.checks_per_second);
    let all = of("all", |r| r.checks_per_second);
    println!();
    println!(
        "| decision log | Checks/s (median) | server CPU µs/Check | PostgreSQL CPU µs/Check | p50 µs | p99 µs | decisions logged/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mode in ["off", "all"] {
        println!(
            "| {mode} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            of(mode, |r| r.checks_per_second),
            of(mode, |r| r.cpu_micros_per_check),
            of(mode, |r| r.postgres_cpu_micros_per_check),
            of(mode, |r| r.p50_micros as f64),
            of(mode, |r| r.p99_micros as f64),
            of(mode, |r| r.logged_per_second),
        );
    }
    println!();
    let ratio = median(ratios.clone());
    println!(
        "logging all / off throughput: median of per-round ratios {ratio:.3} ({:+.1}%), ratio of medians {:.3}; rounds {ratios:.3?}; {rounds} rounds of {seconds} s, {concurrency} calls in flight",
        (ratio - 1.0) * 100.0,
        all / off,
    );
    let cpu = |mode: &str| {
        of(mode, |r| r.cpu_micros_per_check) + of(mode, |r| r.postgres_cpu_micros_per_check)
    };
    println!(
        "server + PostgreSQL CPU per Check: off {:.1} µs, all {:.1} µs ({:+.1}%)",
        cpu("off"),
        cpu("all"),
        (cpu("all") / cpu("off") - 1.0) * 100.0
    );
}
