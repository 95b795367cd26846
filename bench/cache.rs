//! Check on cache hits against Check on cache misses served by PostgreSQL (and by Redis).
//!
//!     cargo bench --bench cache
//!
//! Each scenario runs an `assent serve` process on PostgreSQL (decision log off) with subjects
//! seeded straight into the database:
//! - `hit`: 1,000 subjects, all in the in-process cache;
//! - `miss, PostgreSQL`: 20,000 subjects cycled through a 16-entry cache, no Redis: nearly every
//!   Check reads PostgreSQL;
//! - `miss, Redis`: the same with Redis configured and warmed: nearly every Check reads Redis.
//!
//! For each: saturated throughput (BENCH_CONCURRENCY calls in flight, default 32, over 4
//! connections) with server CPU per Check, then latency at a paced 1,000 Checks/s. Scenarios
//! alternate within each of BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS (default 8);
//! medians are reported.

#[path = "support.rs"]
mod support;

use std::time::Duration;

use assent::proto::{self, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use sqlx::Connection;
use support::{Server, check_load, ensure_services, env_number, median};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Hit,
    MissPostgres,
    MissRedis,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Hit => "hit",
            Scenario::MissPostgres => "miss, PostgreSQL",
            Scenario::MissRedis => "miss, Redis",
        }
    }

    fn subjects(self) -> usize {
        if self == Scenario::Hit { 1_000 } else { 20_000 }
    }
}

struct Result {
    scenario: Scenario,
    throughput: f64,
    cpu_micros: f64,
    p50_micros: f64,
    p99_micros: f64,
}

/// Subjects straight into the database (no audit events: decisions need only the rows).
async fn seed(database: &TestDatabase, subjects: usize) {
    let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    // The schema is the server's; a first open migrates it.
    assent::store::Store::open(database.location())
        .await
        .unwrap()
        .close()
        .await;
    sqlx::query(
        "INSERT INTO subjects (subject_id, plan, status, gpc, zero_data_retention,
                               created_at, updated_at, revision)
         SELECT 'bench-' || n, (ARRAY['FREE', 'PRO', 'TEAM'])[1 + n % 3], 'ACTIVE', FALSE, FALSE,
                0, 0, 0
         FROM generate_series(0, $1 - 1) AS n",
    )
    .bind(subjects as i64)
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
}

async fn run(scenario: Scenario, seconds: u64, concurrency: usize) -> Result {
    let database = TestDatabase::create(Backend::Postgres).await;
    seed(&database, scenario.subjects()).await;
    let mut settings = vec![
        ("ASSENT_DATABASE_URL", database.url()),
        ("ASSENT_DECISION_LOG", "off".to_owned()),
    ];
    if scenario != Scenario::Hit {
        settings.push(("ASSENT_CACHE_MAX_SUBJECTS", "16".to_owned()));
    }
    if scenario == Scenario::MissRedis {
        let redis = std::env::var("ASSENT_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        settings.push(("ASSENT_REDIS_URL", redis));
        settings.push((
            "ASSENT_REDIS_ENTRY_KEY",
            "the redis entry key of the benchmarks (32+ chars)".to_owned(),
        ));
        settings.push((
            "ASSENT_REDIS_PREFIX",
            format!("assent-bench-{}", uuid::Uuid::now_v7().simple()),
        ));
    }
    let server = Server::start(&settings);
    let channels = server.channels(4).await;
    let subjects = scenario.subjects();
    let request = move |index: usize| proto::CheckRequest {
        subject_id: format!("bench-{}", index % subjects),
        purpose: Purpose::ModelTraining as i32,
        ..Default::default()
    };
    // Warm: every subject once (into the cache, or into Redis).
    let mut decisions = proto::decisions_client::DecisionsClient::new(channels[0].clone());
    for chunk in (0..subjects).collect::<Vec<_>>().chunks(1_000) {
        let checks = chunk.iter().map(|index| request(*index)).collect();
        decisions
            .batch_check(proto::BatchCheckRequest { checks })
            .await
            .unwrap();
    }
    let duration = Duration::from_secs(seconds);
    let saturated = check_load(&server, &channels, concurrency, duration, None, request).await;
    let paced = check_load(&server, &channels, 16, duration, Some(1_000.0), request).await;
    server.stop();
    Result {
        scenario,
        throughput: saturated.requests_per_second,
        cpu_micros: saturated.server_cpu_per_request.as_secs_f64() * 1e6,
        p50_micros: paced.p50.as_secs_f64() * 1e6,
        p99_micros: paced.p99.as_secs_f64() * 1e6,
    }
}

fn main() {
    ensure_services(true);
    let rounds = env_number("BENCH_ROUNDS", 3);
    let seconds = env_number("BENCH_SECONDS", 8);
    let concurrency = env_number("BENCH_CONCURRENCY", 32) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scenarios = [Scenario::Hit, Scenario::MissPostgres, Scenario::MissRedis];
    let mut results = Vec::new();
    runtime.block_on(async {
        for round in 0..rounds as usize {
            let mut order = scenarios.to_vec();
            order.rotate_left(round % scenarios.len());
            for scenario in order {
                let result = run(scenario, seconds, concurrency).await;
                println!(
                    "round {} {:<17} {:>8.0} checks/s  {:>6.1} µs server CPU/check  at 1,000/s: p50 {:>6.0} µs  p99 {:>6.0} µs",
                    round + 1,
                    scenario.name(),
                    result.throughput,
                    result.cpu_micros,
                    result.p50_micros,
                    result.p99_micros
                );
                results.push(result);
            }
        }
    });
    println!();
    println!(
        "| Check | Checks/s, {concurrency} in flight (median) | server CPU µs/Check | p50 µs at 1,000/s | p99 µs at 1,000/s |"
    );
    println!("|---|---|---|---|---|");
    for scenario in scenarios {
        let of = |field: fn(&Result) -> f64| {
            median(
                results
                    .iter()
                    .filter(|r| r.scenario == scenario)
                    .map(field)
                    .collect(),
            )
        };
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.0} |",
            scenario.name(),
            of(|r| r.throughput),
            of(|r| r.cpu_micros),
            of(|r| r.p50_micros),
            of(|r| r.p99_micros)
        );
    }
    println!("\n{rounds} rounds of {seconds} s per scenario and load");
}
