//! Check throughput with the decision log `all` in the store's database, against the log in a
//! PostgreSQL server of its own (`decision_log_database_url`), beside the constant tonic server
//! (the framework's limit on this machine at that moment) in the same run.
//!
//!     cargo bench --bench decision_log_database
//!
//! Starts PostgreSQL when needed (scripts/ensure-postgres, 127.0.0.1:5432) and a second server
//! (scripts/ensure-postgres-second, 127.0.0.1:5435). Each round runs three targets, the order
//! rotating so that drift of a shared machine cancels: `tonic constant`; `log in the store's
//! database` (`assent serve`, ASSENT_DECISION_LOG=all, a fresh database on 5432); `log in another
//! server` (the same, with ASSENT_DECISION_LOG_DATABASE_URL naming a fresh database on 5435).
//! Each assent target gets SUBJECTS subjects; then BENCH_CONCURRENCY Checks in flight (default
//! 32, over four HTTP/2 connections), each of the next subject in turn, and meanwhile
//! BENCH_WRITERS consent writers (default 4, each waiting for its answer, on subjects of their
//! own, each write a change: one audit event, one transaction on the store), for BENCH_SECONDS
//! (default 8) after a second of warm-up, BENCH_ROUNDS rounds (default 5). Reports per run and
//! as medians: Checks/s, their p50 and p99, writes/s, decisions shipped to the log's database
//! per second, server CPU per Check, and the CPU of every PostgreSQL process of the machine
//! (both servers) per Check, from /proc.

#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use sqlx::Connection;
use support::{Server, ensure_services, env_number, median, postgres_cpu, process_cpu};
use tonic::transport::Channel;

/// The subjects the Checks ask about, each in turn.
const SUBJECTS: usize = 10_000;
/// The subjects the consent writers write, apart from the checked ones.
const WRITTEN_SUBJECTS: usize = 200;
/// The second PostgreSQL server (scripts/ensure-postgres-second).
const SECOND_SERVER: &str = "postgres://assent:assent@127.0.0.1:5435";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Constant,
    SameDatabase,
    OtherServer,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Constant => "tonic constant",
            Target::SameDatabase => "log in the store's database",
            Target::OtherServer => "log in another server",
        }
    }
}

const TARGETS: [Target; 3] = [Target::Constant, Target::SameDatabase, Target::OtherServer];

struct Run {
    target: Target,
    checks_per_second: f64,
    p50_micros: f64,
    p99_micros: f64,
    writes_per_second: f64,
    logged_per_second: f64,
    server_cpu_micros_per_check: f64,
    postgres_cpu_micros_per_check: f64,
}

/// A database of its own on the second server, dropped with it.
struct SecondDatabase {
    name: String,
}

impl SecondDatabase {
    async fn create() -> SecondDatabase {
        let name = format!("assent_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{SECOND_SERVER}/postgres"))
            .await
            .expect("the second PostgreSQL server does not answer");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        SecondDatabase { name }
    }

    fn url(&self) -> String {
        format!("{SECOND_SERVER}/{}", self.name)
    }

    async fn drop_database(self) {
        let mut admin = sqlx::PgConnection::connect(&format!("{SECOND_SERVER}/postgres"))
            .await
            .unwrap();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
    }
}

/// The decisions in the log of the database at `url`: its rows and those of its segments.
async fn logged(url: &str) -> i64 {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let (count,): (i64,) = sqlx::query_as(
        "SELECT CAST((SELECT COUNT(*) FROM decision_log)
              + (SELECT COALESCE(SUM(records), 0) FROM decision_log_segments) AS BIGINT)",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    let _ = connection.close().await;
    count
}

async fn connect(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Creates the subjects `bench-0` … and `writer-0` …, sixteen writes at a time.
async fn seed(channel: Channel) {
    let mut tasks = Vec::new();
    for task in 0..16 {
        let mut subjects = SubjectsClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let names = (0..SUBJECTS)
                .map(|index| format!("bench-{index}"))
                .chain((0..WRITTEN_SUBJECTS).map(|index| format!("writer-{index}")));
            for (index, subject_id) in names.enumerate().skip(task).step_by(16) {
                let plans = [Plan::Free, Plan::Pro, Plan::Team];
                subjects
                    .upsert_subject(upsert(subject_id, plans[index % plans.len()]))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn upsert(subject_id: String, plan: Plan) -> proto::UpsertSubjectRequest {
    proto::UpsertSubjectRequest {
        subject_id,
        plan: Some(plan as i32),
        actor: Some(proto::Actor {
            operator_id: "bench".into(),
            reason: String::new(),
        }),
        ..Default::default()
    }
}

/// Checks from `concurrency` tasks over `channels`, and consent writes from `writers` tasks,
/// for `seconds` after a second of warm-up.
async fn measure(
    target: Target,
    channels: &[Channel],
    server_pid: u32,
    log_url: Option<&str>,
    (concurrency, writers, seconds): (usize, usize, u64),
) -> Run {
    let running = Arc::new(AtomicBool::new(true));
    let measuring = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let mut checkers = Vec::new();
    for worker in 0..concurrency {
        let mut client = DecisionsClient::new(channels[worker % channels.len()].clone());
        let (running, measuring, checks) = (running.clone(), measuring.clone(), checks.clone());
        checkers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = worker;
            while running.load(Ordering::Relaxed) {
                let request = proto::CheckRequest {
                    subject_id: format!("bench-{}", index % SUBJECTS),
                    purpose: Purpose::ModelTraining as i32,
                    ..Default::default()
                };
                let started = Instant::now();
                client.check(request).await.expect("a check failed");
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed().as_micros() as u64);
                    checks.fetch_add(1, Ordering::Relaxed);
                }
                index += concurrency;
            }
            latencies
        }));
    }
    let mut writing = Vec::new();
    if target != Target::Constant {
        for writer in 0..writers {
            let mut subjects = SubjectsClient::new(channels[writer % channels.len()].clone());
            let (running, measuring, writes) = (running.clone(), measuring.clone(), writes.clone());
            writing.push(tokio::spawn(async move {
                let mut round = 0;
                while running.load(Ordering::Relaxed) {
                    // Each writer its own subjects; the plan alternates, so each write is a
                    // change.
                    for index in (writer..WRITTEN_SUBJECTS).step_by(writers) {
                        let plan = if round % 2 == 0 {
                            Plan::Enterprise
                        } else {
                            Plan::Free
                        };
                        subjects
                            .upsert_subject(upsert(format!("writer-{index}"), plan))
                            .await
                            .expect("a write failed");
                        if measuring.load(Ordering::Relaxed) {
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                        if !running.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    round += 1;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logged_before = match log_url {
        Some(url) => logged(url).await,
        None => 0,
    };
    let cpu_before = process_cpu(server_pid).unwrap_or_default();
    let postgres_before = postgres_cpu();
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu(server_pid).unwrap_or_default() - cpu_before;
    let postgres = postgres_cpu().saturating_sub(postgres_before);
    let logged_after = match log_url {
        Some(url) => logged(url).await,
        None => 0,
    };
    running.store(false, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for checker in checkers {
        latencies.extend(checker.await.unwrap());
    }
    for writer in writing {
        writer.await.unwrap();
    }
    latencies.sort_unstable();
    let percentile =
        |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize] as f64;
    let checks = checks.load(Ordering::Relaxed).max(1) as f64;
    Run {
        target,
        checks_per_second: checks / elapsed,
        p50_micros: percentile(0.50),
        p99_micros: percentile(0.99),
        writes_per_second: writes.load(Ordering::Relaxed) as f64 / elapsed,
        logged_per_second: (logged_after - logged_before) as f64 / elapsed,
        server_cpu_micros_per_check: cpu.as_micros() as f64 / checks,
        postgres_cpu_micros_per_check: postgres.as_micros() as f64 / checks,
    }
}

async fn run(target: Target, load: (usize, usize, u64)) -> Run {
    if target == Target::Constant {
        let (mut child, address) = spawn_constant_server();
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(connect(&address).await);
        }
        let run = measure(target, &channels, child.id(), None, load).await;
        let _ = child.kill();
        let _ = child.wait();
        return run;
    }
    let database = TestDatabase::create(Backend::Postgres).await;
    let second = match target {
        Target::OtherServer => Some(SecondDatabase::create().await),
        _ => None,
    };
    let mut settings = vec![
        ("ASSENT_DATABASE_URL", database.url()),
        ("ASSENT_DATABASE_MAX_CONNECTIONS", "16".to_owned()),
        ("ASSENT_DECISION_LOG", "all".to_owned()),
    ];
    if let Some(second) = &second {
        settings.push(("ASSENT_DECISION_LOG_DATABASE_URL", second.url()));
    }
    let server = Server::start(&settings);
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(connect(&server.address).await);
    }
    seed(channels[0].clone()).await;
    let log_url = second
        .as_ref()
        .map_or_else(|| database.url(), SecondDatabase::url);
    // The log's database is opened in the background: wait until the server has made it.
    if second.is_some() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while sqlx::PgConnection::connect(&log_url)
            .await
            .map(|_| ())
            .is_err()
            || !has_log_tables(&log_url).await
        {
            assert!(
                Instant::now() < deadline,
                "the log's database was not migrated"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let run = measure(target, &channels, server.pid(), Some(&log_url), load).await;
    server.stop();
    if let Some(second) = second {
        second.drop_database().await;
    }
    run
}

async fn has_log_tables(url: &str) -> bool {
    let Ok(mut connection) = sqlx::PgConnection::connect(url).await else {
        return false;
    };
    let found: Result<(bool,), _> =
        sqlx::query_as("SELECT to_regclass('decision_log_segments') IS NOT NULL")
            .fetch_one(&mut connection)
            .await;
    let _ = connection.close().await;
    found.is_ok_and(|(found,)| found)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("constant-server") {
        return run_constant_server();
    }
    ensure_services(false);
    let status = std::process::Command::new("scripts/ensure-postgres-second").status();
    assert!(
        status.is_ok_and(|status| status.success()),
        "the second PostgreSQL server is not available"
    );
    let rounds = env_number("BENCH_ROUNDS", 5) as usize;
    let seconds = env_number("BENCH_SECONDS", 8);
    let concurrency = env_number("BENCH_CONCURRENCY", 32) as usize;
    let writers = env_number("BENCH_WRITERS", 4) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();
    runtime.block_on(async {
        for round in 0..rounds {
            for turn in 0..TARGETS.len() {
                let target = TARGETS[(round + turn) % TARGETS.len()];
                let run = run(target, (concurrency, writers, seconds)).await;
                println!(
                    "round {} {:<28} {:>7.0} checks/s  p50 {:>5.0} µs  p99 {:>6.0} µs  writes {:>6.0}/s  logged {:>7.0}/s  server {:>5.1} µs CPU/check  postgres {:>5.1} µs CPU/check",
                    round + 1,
                    target.name(),
                    run.checks_per_second,
                    run.p50_micros,
                    run.p99_micros,
                    run.writes_per_second,
                    run.logged_per_second,
                    run.server_cpu_micros_per_check,
                    run.postgres_cpu_micros_per_check,
                );
                runs.push(run);
            }
        }
    });
    let of = |target: Target, field: fn(&Run) -> f64| {
        median(
            runs.iter()
                .filter(|run| run.target == target)
                .map(field)
                .collect(),
        )
    };
    let constant = of(Target::Constant, |run| run.checks_per_second);
    println!();
    println!(
        "| target | Checks/s (median) | × constant | p50 µs | p99 µs | consent writes/s | decisions logged/s | server CPU µs/Check | PostgreSQL CPU µs/Check |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for target in TARGETS {
        let checks = of(target, |run| run.checks_per_second);
        let dash = |value: f64| {
            if target == Target::Constant {
                "–".to_owned()
            } else {
                format!("{value:.0}")
            }
        };
        println!(
            "| {} | {checks:.0} | {:.2} | {:.0} | {:.0} | {} | {} | {:.1} | {} |",
            target.name(),
            checks / constant,
            of(target, |run| run.p50_micros),
            of(target, |run| run.p99_micros),
            dash(of(target, |run| run.writes_per_second)),
            dash(of(target, |run| run.logged_per_second)),
            of(target, |run| run.server_cpu_micros_per_check),
            dash(of(target, |run| run.postgres_cpu_micros_per_check)),
        );
    }
    println!();
    println!(
        "{rounds} rounds of {seconds} s, {concurrency} Checks in flight over {SUBJECTS} subjects, {writers} consent writers"
    );
}

fn run_constant_server() {
    use std::io::Write;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let answer = proto::CheckResponse {
            subject_id: "bench-1".into(),
            purpose: Purpose::ModelTraining as i32,
            decision: proto::Decision::Allow as i32,
            reason: proto::Reason::PlanDefault as i32,
            basis: proto::LawfulBasis::LegitimateInterest as i32,
            rule: "T6".into(),
            policy_version: "2026-01-01".into(),
            revision: "r1".into(),
            explanation: "constant".into(),
            decision_id: "0".into(),
            ..Default::default()
        };
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(proto::decisions_server::DecisionsServer::new(
                support::Constant(answer),
            ))
            .serve_with_incoming(assent::startup::incoming(listener))
            .await
            .unwrap();
    });
}

/// Starts this benchmark binary as the constant server and reads the address it prints.
fn spawn_constant_server() -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("constant-server")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_owned();
    (child, address)
}
