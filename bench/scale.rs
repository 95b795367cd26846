//! Check throughput and latency through one balanced client (`assent_client::Replicas`) over
//! one replica, then over three, all on one PostgreSQL and one Redis: BENCH_SECONDS (default 5)
//! per setting after a second of warm-up, BENCH_CONCURRENCY (default 32) calls in flight,
//! 1,000 subjects in the cache, BENCH_ROUNDS (default 3) rounds alternating the settings,
//! medians reported.
//!
//! On one machine the replicas share its cores with each other and with the load generator, so
//! this measures what spreading costs, not what it gains; on separate nodes each replica
//! brings its own cores.
//!
//!     cargo bench --bench scale

#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use assent::proto::decisions_client::DecisionsClient;
use assent::proto::{self, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use assent_client::{Replicas, Retry};
use support::{Server, ensure_services, env_number, median, seed_subjects};

struct Measured {
    checks_per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(count: usize, seconds: u64, concurrency: usize) -> Measured {
    let database = TestDatabase::create(Backend::Postgres).await;
    let redis =
        std::env::var("ASSENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let settings = [
        ("ASSENT_DATABASE_URL", database.url()),
        ("ASSENT_DECISION_LOG", "off".to_owned()),
        ("ASSENT_REDIS_URL", redis),
        (
            "ASSENT_REDIS_ENTRY_KEY",
            "the redis entry key of the benchmarks (32+ chars)".to_owned(),
        ),
        (
            "ASSENT_REDIS_PREFIX",
            format!("assent-scale-{}", uuid::Uuid::now_v7().simple()),
        ),
    ];
    let servers: Vec<Server> = (0..count).map(|_| Server::start(&settings)).collect();
    let channel = servers[0].channels(1).await.remove(0);
    seed_subjects(channel, "s", 1_000, &[Plan::Free]).await;
    let endpoints = servers
        .iter()
        .map(|server| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", server.address)).unwrap()
        })
        .collect();
    let replicas = Replicas::connect(endpoints);
    let running = Arc::new(AtomicBool::new(true));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..concurrency {
        let decisions = DecisionsClient::new(replicas.channel());
        let (running, measuring) = (running.clone(), measuring.clone());
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = caller;
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let request = proto::CheckRequest {
                    subject_id: format!("s-{}", index % 1_000),
                    purpose: Purpose::ModelTraining as i32,
                    ..Default::default()
                };
                Retry::default()
                    .run(|| {
                        let mut decisions = decisions.clone();
                        let request = request.clone();
                        async move { decisions.check(request).await }
                    })
                    .await
                    .expect("a check failed");
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                }
                index += concurrency;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.unwrap());
    }
    for server in servers {
        server.stop();
    }
    latencies.sort_unstable();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    Measured {
        checks_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn main() {
    ensure_services(true);
    let rounds = env_number("BENCH_ROUNDS", 3);
    let seconds = env_number("BENCH_SECONDS", 5);
    let concurrency = env_number("BENCH_CONCURRENCY", 32) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<(usize, Measured)> = Vec::new();
    runtime.block_on(async {
        for round in 0..rounds {
            let order = if round % 2 == 0 { [1, 3] } else { [3, 1] };
            for count in order {
                let measured = measure(count, seconds, concurrency).await;
                println!(
                    "round {} {count} replica(s): {:.0} Checks/s, p50 {:?}, p99 {:?}",
                    round + 1,
                    measured.checks_per_second,
                    measured.p50,
                    measured.p99
                );
                results.push((count, measured));
            }
        }
    });
    println!("\n| replicas | Checks/s (median) | p50 µs | p99 µs |\n|---|---|---|---|");
    for count in [1, 3] {
        let of = |field: fn(&Measured) -> f64| {
            median(
                results
                    .iter()
                    .filter(|(replicas, _)| *replicas == count)
                    .map(|(_, measured)| field(measured))
                    .collect(),
            )
        };
        println!(
            "| {count} | {:.0} | {:.0} | {:.0} |",
            of(|m| m.checks_per_second),
            of(|m| m.p50.as_secs_f64() * 1e6),
            of(|m| m.p99.as_secs_f64() * 1e6)
        );
    }
    println!("\n{rounds} rounds of {seconds} s, {concurrency} calls in flight");
}
