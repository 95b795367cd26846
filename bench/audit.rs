//! The audit log's Merkle tree: what keeping it costs a write, and what a proof costs at ten
//! million events.
//!
//! Writes: this checkout's `assent serve` against a baseline binary (`BENCH_BASELINE_BIN`, a
//! build from before the tree), on the embedded store (the default configuration: a fresh data
//! directory, no database URL) and on PostgreSQL (a fresh database per server start), in
//! BENCH_ROUNDS rounds (default 5), the two binaries' order alternating per round:
//! - latency of single writes one at a time: 1,000 writes, UpsertSubject of a new subject and
//!   SetChoice on it in turn, after 50 writes of warm-up;
//! - throughput: BENCH_WRITERS writers (default 16) over 4 connections, each writing
//!   UpsertSubject / SetChoice on subjects of its own as fast as answers come, for
//!   BENCH_SECONDS (default 10) after a second of warm-up.
//!
//! Every write must append an audit event: the events in the database are counted against the
//! writes answered.
//!
//! Proofs: a fresh PostgreSQL database at the current schema (and an embedded one with
//! BENCH_PROOF_SQLITE=1) filled with BENCH_EVENTS synthetic audit events (default 10,000,000),
//! each with the tree nodes `Frontier::push` returns for it, and the head with the tree's peaks;
//! then `Store::inclusion_proof` of 1,000 random leaves and `Store::consistency_proof` from
//! 1,000 random older sizes to the head, each proof checked against the tree's root.
//!
//!     BENCH_BASELINE_BIN=path/to/baseline/assent cargo bench --bench audit
//!
//! BENCH_PARTS (default `writes,proofs`) picks the parts, BENCH_STORES (`embedded`, `postgres`;
//! default both) the stores the writes are measured on. The per-caller write rate limit is off
//! in both servers (`support::Server`): the benchmark's writers stand for many callers.

#[path = "support.rs"]
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assent::audit::merkle::{self, Frontier, Hash};
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Choice, Plan, Purpose};
use assent::store::Store;
use assent::store::testing::{Backend, TestDatabase};
use sqlx::Connection;
use support::{Server, ensure_services, env_number, median};
use tonic::transport::Channel;

/// A small deterministic generator (SplitMix64): random picks without another dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [low, high).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * fraction) as usize]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

// ---------------------------------------------------------------------------------------------
// Writes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    Baseline,
    New,
}

impl Build {
    fn name(self) -> &'static str {
        match self {
            Build::Baseline => "baseline",
            Build::New => "new",
        }
    }
}

/// What one server start measured.
struct WriteRun {
    /// Writes that failed under the throughput load.
    failures: u64,
    writes_per_second: f64,
    /// Latency under the throughput load.
    loaded_p99_us: f64,
    single_p50_us: f64,
    single_p99_us: f64,
}

/// Write number `step` of a writer whose subjects are `prefix-N`: an UpsertSubject of a new
/// subject, then a SetChoice on it, so that every write changes something and appends an
/// audit event.
async fn write(
    client: &mut SubjectsClient<Channel>,
    prefix: &str,
    step: u64,
) -> Result<(), tonic::Status> {
    let subject_id = format!("{prefix}-{}", step / 2);
    let actor = Some(proto::Actor {
        operator_id: "bench".into(),
        reason: "write benchmark".into(),
    });
    if step.is_multiple_of(2) {
        client
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id,
                plan: Some(Plan::Pro as i32),
                actor,
                ..Default::default()
            })
            .await?;
    } else {
        client
            .set_choice(proto::SetChoiceRequest {
                subject_id,
                purpose: Purpose::ModelTraining as i32,
                choice: Choice::Refused as i32,
                actor,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// The number of audit events in the database.
async fn count_events(database: &TestDatabase) -> u64 {
    let query = "SELECT COALESCE(MAX(sequence), 0) FROM audit_events";
    let (events,): (i64,) = match database.backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
            sqlx::query_as(query)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&database.url())
                .await
                .unwrap();
            sqlx::query_as(query)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
    };
    events as u64
}

async fn measure_writes(binary: &Path, backend: Backend, writers: usize, seconds: u64) -> WriteRun {
    let database = TestDatabase::create(backend).await;
    let mut settings = vec![(
        "ASSENT_DATA_DIR",
        database.directory().to_str().unwrap().to_owned(),
    )];
    if backend == Backend::Postgres {
        settings.push(("ASSENT_DATABASE_URL", database.url()));
    }
    let server = Server::start_binary(binary, &settings);
    let channels = server.channels(4).await;
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));

    // Single writes, one at a time.
    let mut client = SubjectsClient::new(channels[0].clone());
    for step in 0..50 {
        write(&mut client, "warm", step)
            .await
            .expect("a warm-up write failed");
    }
    let mut latencies = Vec::new();
    for step in 0..1_000 {
        let started = Instant::now();
        write(&mut client, "one", step)
            .await
            .expect("a single write failed");
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    written.fetch_add(1_050, Ordering::Relaxed);
    let single = sorted(latencies);

    // Throughput.
    let running = Arc::new(AtomicBool::new(true));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let mut client = SubjectsClient::new(channels[writer % channels.len()].clone());
        let (running, measuring, written, failed) = (
            running.clone(),
            measuring.clone(),
            written.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let prefix = format!("w{writer}");
            let mut latencies = Vec::new();
            let mut step = 0;
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                if let Err(status) = write(&mut client, &prefix, step).await {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("a write failed: {status}");
                    }
                    step += 2 - step % 2;
                    continue;
                }
                written.fetch_add(1, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed().as_secs_f64() * 1e6);
                }
                step += 1;
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
    let mut loaded = Vec::new();
    for task in tasks {
        loaded.extend(task.await.unwrap());
    }
    let loaded = sorted(loaded);
    server.stop();

    let events = count_events(&database).await;
    let writes = written.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);
    // A write that failed (a deadline) may still have committed; one that succeeded must have
    // appended exactly one event.
    assert!(
        events == writes || (failures > 0 && events >= writes && events <= writes + failures),
        "{}: {writes} writes answered ({failures} failed) but {events} audit events stored",
        binary.display()
    );
    WriteRun {
        failures,
        writes_per_second: loaded.len() as f64 / elapsed.as_secs_f64(),
        loaded_p99_us: percentile(&loaded, 0.99),
        single_p50_us: percentile(&single, 0.5),
        single_p99_us: percentile(&single, 0.99),
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "embedded (default)",
        Backend::Postgres => "PostgreSQL",
    }
}

async fn writes() {
    let baseline = PathBuf::from(std::env::var("BENCH_BASELINE_BIN").expect(
        "BENCH_BASELINE_BIN: the path of an `assent` binary built from before the audit tree",
    ));
    assert!(baseline.is_file(), "no file at {}", baseline.display());
    let new = PathBuf::from(env!("CARGO_BIN_EXE_assent"));
    let rounds = env_number("BENCH_ROUNDS", 5) as usize;
    let writers = env_number("BENCH_WRITERS", 16) as usize;
    let seconds = env_number("BENCH_SECONDS", 10);
    println!(
        "writes: {rounds} rounds; {writers} writers for {seconds} s; 1,000 single writes; \
         baseline {}",
        baseline.display()
    );
    let backends: Vec<Backend> = match std::env::var("BENCH_STORES").as_deref() {
        Ok("postgres") => vec![Backend::Postgres],
        Ok("embedded") => vec![Backend::Sqlite],
        _ => vec![Backend::Sqlite, Backend::Postgres],
    };
    // runs[backend][build] = one WriteRun per round.
    let mut runs: Vec<[Vec<WriteRun>; 2]> = backends.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) {
            [Build::Baseline, Build::New]
        } else {
            [Build::New, Build::Baseline]
        };
        for (slot, &backend) in backends.iter().enumerate() {
            for build in order {
                let binary = match build {
                    Build::Baseline => &baseline,
                    Build::New => &new,
                };
                let run = measure_writes(binary, backend, writers, seconds).await;
                println!(
                    "  round {} {:<18} {:<9}: {:>6.0} writes/s (p99 {:>6.0} µs under load); \
                     one at a time p50 {:>5.0} µs p99 {:>5.0} µs; {} failed",
                    round + 1,
                    backend_name(backend),
                    build.name(),
                    run.writes_per_second,
                    run.loaded_p99_us,
                    run.single_p50_us,
                    run.single_p99_us,
                    run.failures
                );
                runs[slot][build as usize].push(run);
            }
        }
    }

    println!();
    println!(
        "| store | build | writes/s, {writers} writers | p99 µs under that load | single write p50 µs | single write p99 µs |"
    );
    println!("|---|---|---|---|---|---|");
    for (slot, &backend) in backends.iter().enumerate() {
        for build in [Build::Baseline, Build::New] {
            let these = &runs[slot][build as usize];
            let of = |field: fn(&WriteRun) -> f64| median(these.iter().map(field).collect());
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                backend_name(backend),
                build.name(),
                of(|run| run.writes_per_second),
                of(|run| run.loaded_p99_us),
                of(|run| run.single_p50_us),
                of(|run| run.single_p99_us),
            );
        }
    }
    println!();
    for (slot, &backend) in backends.iter().enumerate() {
        let [base, new] = &runs[slot];
        let ratios = |field: fn(&WriteRun) -> f64| -> (f64, Vec<f64>) {
            let per_round: Vec<f64> = base
                .iter()
                .zip(new)
                .map(|(base, new)| field(new) / field(base))
                .collect();
            (median(per_round.clone()), per_round)
        };
        let show = |values: &[f64]| {
            values
                .iter()
                .map(|value| format!("{value:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (throughput, throughput_rounds) = ratios(|run| run.writes_per_second);
        let (loaded, _) = ratios(|run| run.loaded_p99_us);
        let (p50, _) = ratios(|run| run.single_p50_us);
        let (p99, p99_rounds) = ratios(|run| run.single_p99_us);
        println!(
            "{}: throughput new / baseline {throughput:.3} (rounds {}), a cost of {:.1}%; \
             p99 under load {loaded:.3}; single write p50 {p50:.3}, p99 {p99:.3} (rounds {}) \
             — medians of the per-round ratios",
            backend_name(backend),
            show(&throughput_rounds),
            (1.0 - throughput) * 100.0,
            show(&p99_rounds)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Proofs

/// The leaf hash of synthetic event `sequence`: derived, so the check can recompute it.
fn synthetic_leaf(sequence: u64) -> Hash {
    merkle::leaf_hash(&sequence.to_le_bytes())
}

/// The other columns of a synthetic event, in the order of [`EVENT_COLUMNS`] after `sequence`
/// and before `tree`: any valid values.
fn synthetic_columns(sequence: u64) -> [String; 12] {
    [
        format!("00000000-0000-7000-8000-{sequence:012x}"),
        (1_700_000_000_000_000 + sequence as i64).to_string(),
        format!("user-{}", sequence % 100_000),
        "choice_set".to_owned(),
        "bench".to_owned(),
        "bench".to_owned(),
        String::new(),
        format!("{sequence:064x}"),
        "2026-01-01".to_owned(),
        String::new(),
        "0".repeat(64),
        "0".repeat(64),
    ]
}

const EVENT_COLUMNS: &str = "sequence, event_id, at_micros, subject_id, kind, caller, \
     operator_id, actor_reason, payload_sha256, policy_version, trace_id, prev_hash, hash, tree";

/// Pushes leaves `1..=events` through a frontier, handing each event's sequence and `tree`
/// column to `row`, and records the root at each size in `sizes` (sorted).
struct Filler {
    frontier: Frontier,
    sizes: Vec<u64>,
    next_size: usize,
    roots: Vec<Hash>,
}

impl Filler {
    fn new(sizes: Vec<u64>) -> Filler {
        Filler {
            frontier: Frontier::new(),
            sizes,
            next_size: 0,
            roots: Vec::new(),
        }
    }

    /// The next event: its sequence and its `tree` column.
    fn push(&mut self) -> (u64, Vec<u8>) {
        let sequence = self.frontier.size() + 1;
        let tree = self.frontier.push(synthetic_leaf(sequence)).concat();
        while self.sizes.get(self.next_size) == Some(&sequence) {
            self.roots.push(self.frontier.root());
            self.next_size += 1;
        }
        (sequence, tree)
    }
}

async fn fill_postgres(database: &TestDatabase, events: u64, filler: &mut Filler) {
    use std::fmt::Write;
    let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    const PER_COPY: u64 = 1_000_000;
    let mut done = 0;
    while done < events {
        let count = PER_COPY.min(events - done);
        let mut copy = connection
            .copy_in_raw(&format!("COPY audit_events ({EVENT_COLUMNS}) FROM STDIN"))
            .await
            .unwrap();
        let mut buffer = String::new();
        for _ in 0..count {
            let (sequence, tree) = filler.push();
            buffer.push_str(&sequence.to_string());
            for column in synthetic_columns(sequence) {
                buffer.push('\t');
                buffer.push_str(&column);
            }
            let _ = writeln!(buffer, "\t\\\\x{}", hex::encode(tree));
            if buffer.len() > 8 << 20 {
                copy.send(std::mem::take(&mut buffer).into_bytes())
                    .await
                    .unwrap();
            }
        }
        copy.send(buffer.into_bytes()).await.unwrap();
        copy.finish().await.unwrap();
        done += count;
    }
    sqlx::query(
        "UPDATE audit_chain_head SET sequence = $1, hash = $2, frontier = $3 WHERE chain_id = 0",
    )
    .bind(events as i64)
    .bind("0".repeat(64))
    .bind(filler.frontier.to_bytes())
    .execute(&mut connection)
    .await
    .unwrap();
    // What autovacuum would do soon after such a load: statistics for the planner.
    sqlx::query("ANALYZE audit_events")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
}

async fn fill_sqlite(database: &TestDatabase, events: u64, filler: &mut Filler) {
    let mut connection = sqlx::SqliteConnection::connect(&database.url())
        .await
        .unwrap();
    sqlx::query("PRAGMA synchronous = OFF")
        .execute(&mut connection)
        .await
        .unwrap();
    const PER_STATEMENT: u64 = 500;
    const PER_TRANSACTION: u64 = 1_000_000;
    let row = format!("({})", vec!["?"; 14].join(", "));
    let full = format!(
        "INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES {}",
        vec![row.as_str(); PER_STATEMENT as usize].join(", ")
    );
    let mut done = 0;
    while done < events {
        let mut transaction = connection.begin().await.unwrap();
        let end = (done + PER_TRANSACTION).min(events);
        while done < end {
            let count = PER_STATEMENT.min(end - done);
            let partial;
            let sql = if count == PER_STATEMENT {
                full.as_str()
            } else {
                partial = format!(
                    "INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES {}",
                    vec![row.as_str(); count as usize].join(", ")
                );
                partial.as_str()
            };
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
            for _ in 0..count {
                let (sequence, tree) = filler.push();
                let [
                    event_id,
                    at,
                    subject,
                    kind,
                    caller,
                    operator,
                    reason,
                    payload,
                    policy,
                    trace,
                    prev,
                    hash,
                ] = synthetic_columns(sequence);
                statement = statement
                    .bind(sequence as i64)
                    .bind(event_id)
                    .bind(at.parse::<i64>().unwrap())
                    .bind(subject)
                    .bind(kind)
                    .bind(caller)
                    .bind(operator)
                    .bind(reason)
                    .bind(payload)
                    .bind(policy)
                    .bind(trace)
                    .bind(prev)
                    .bind(hash)
                    .bind(tree);
            }
            statement.execute(&mut *transaction).await.unwrap();
            done += count;
        }
        transaction.commit().await.unwrap();
    }
    sqlx::query(
        "UPDATE audit_chain_head SET sequence = ?, hash = ?, frontier = ? WHERE chain_id = 0",
    )
    .bind(events as i64)
    .bind("0".repeat(64))
    .bind(filler.frontier.to_bytes())
    .execute(&mut connection)
    .await
    .unwrap();
    sqlx::query("ANALYZE")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
}

/// The time of the one SELECT of an inclusion proof alone, on one connection outside any
/// transaction, for each of `leaves`: the store's own cost, without the pool and the read
/// transaction around it.
async fn select_alone(database: &TestDatabase, leaves: &[u64], events: u64) -> Vec<f64> {
    let sequences = |leaf: u64| -> Vec<i64> {
        let nodes: Vec<merkle::NodeId> = merkle::inclusion_ranges(leaf, events)
            .iter()
            .flat_map(|&(start, end)| merkle::range_nodes(start, end))
            .collect();
        let mut sequences: Vec<i64> = nodes.iter().map(|node| node.stored_at().0 as i64).collect();
        sequences.sort_unstable();
        sequences.dedup();
        sequences
    };
    let mut micros = Vec::new();
    match database.backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
            for &leaf in leaves {
                let sequences = sequences(leaf);
                let sql = format!(
                    "SELECT sequence, tree FROM audit_events WHERE sequence IN ({})",
                    (1..=sequences.len())
                        .map(|n| format!("${n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let started = Instant::now();
                let mut statement = sqlx::query_as::<_, (i64, Vec<u8>)>(sqlx::AssertSqlSafe(sql));
                for sequence in &sequences {
                    statement = statement.bind(sequence);
                }
                let found = statement.fetch_all(&mut connection).await.unwrap();
                micros.push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(found.len(), sequences.len());
            }
            connection.close().await.unwrap();
        }
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&database.url())
                .await
                .unwrap();
            for &leaf in leaves {
                let sequences = sequences(leaf);
                let sql = format!(
                    "SELECT sequence, tree FROM audit_events WHERE sequence IN ({})",
                    vec!["?"; sequences.len()].join(", ")
                );
                let started = Instant::now();
                let mut statement = sqlx::query_as::<_, (i64, Vec<u8>)>(sqlx::AssertSqlSafe(sql));
                for sequence in &sequences {
                    statement = statement.bind(sequence);
                }
                let found = statement.fetch_all(&mut connection).await.unwrap();
                micros.push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(found.len(), sequences.len());
            }
            connection.close().await.unwrap();
        }
    }
    micros
}

/// The distinct events (rows) a proof of these ranges reads, and the nodes it asks for.
fn reads(ranges: &[(u64, u64)]) -> (usize, usize) {
    let nodes: Vec<merkle::NodeId> = ranges
        .iter()
        .flat_map(|&(start, end)| merkle::range_nodes(start, end))
        .collect();
    let rows: HashSet<u64> = nodes.iter().map(|node| node.stored_at().0).collect();
    (rows.len(), nodes.len())
}

fn summary(name: &str, micros: Vec<f64>, rows: Vec<f64>, nodes: Vec<f64>) {
    let micros = sorted(micros);
    let rows = sorted(rows);
    let nodes = sorted(nodes);
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} |",
        percentile(&micros, 0.5),
        percentile(&micros, 0.99),
        micros[micros.len() - 1],
        rows[0],
        percentile(&rows, 0.5),
        rows[rows.len() - 1],
        percentile(&nodes, 0.5),
        nodes[nodes.len() - 1],
    );
}

async fn proofs(backend: Backend, events: u64, picks: usize) {
    assert!(events >= 2, "BENCH_EVENTS: at least 2");
    let database = TestDatabase::create(backend).await;
    Store::open(database.location())
        .await
        .unwrap()
        .close()
        .await;
    let mut random = Random(0x5eed_0000 + events);
    let mut olds: Vec<u64> = (0..picks).map(|_| random.between(1, events)).collect();
    olds.sort_unstable();
    let mut filler = Filler::new(olds.clone());

    let started = Instant::now();
    match backend {
        Backend::Postgres => fill_postgres(&database, events, &mut filler).await,
        Backend::Sqlite => fill_sqlite(&database, events, &mut filler).await,
    }
    let fill = started.elapsed();
    let root = filler.frontier.root();
    let size = match backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
            let (bytes,): (i64,) = sqlx::query_as("SELECT pg_total_relation_size('audit_events')")
                .fetch_one(&mut connection)
                .await
                .unwrap();
            connection.close().await.unwrap();
            bytes as u64
        }
        Backend::Sqlite => database
            .directory()
            .read_dir()
            .unwrap()
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|metadata| metadata.len())
            .sum(),
    };
    println!(
        "proofs, {}: {events} events filled in {:.1} s ({:.0} events/s), {:.2} GiB on disk",
        backend_name(backend),
        fill.as_secs_f64(),
        events as f64 / fill.as_secs_f64(),
        size as f64 / (1u64 << 30) as f64
    );

    let store = Store::open(database.location()).await.unwrap();
    // A few proofs first, so that the pool's connections are open.
    for _ in 0..10 {
        store
            .inclusion_proof(random.between(0, events), events)
            .await
            .unwrap();
    }

    let (mut micros, mut rows, mut nodes) = (vec![], vec![], vec![]);
    let mut leaves = Vec::new();
    for _ in 0..picks {
        let leaf = random.between(0, events);
        leaves.push(leaf);
        let started = Instant::now();
        let proof = store.inclusion_proof(leaf, events).await.unwrap();
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        assert!(
            merkle::verify_inclusion(leaf, events, &synthetic_leaf(leaf + 1), &proof, &root),
            "the inclusion proof of leaf {leaf} in {events} does not verify"
        );
        let (row_count, node_count) = reads(&merkle::inclusion_ranges(leaf, events));
        rows.push(row_count as f64);
        nodes.push(node_count as f64);
    }
    println!();
    println!(
        "| proof ({events} events, {picks} random picks, each verified) | p50 µs | p99 µs | max µs | rows read min / median / max | tree nodes read median / max |"
    );
    println!("|---|---|---|---|---|---|");
    summary("inclusion", micros, rows.clone(), nodes.clone());
    let alone = select_alone(&database, &leaves, events).await;
    summary("inclusion: its SELECT alone", alone, rows, nodes);

    // The older sizes in a random order, each with the root recorded when the tree had it.
    let mut picked: Vec<(u64, Hash)> = olds.into_iter().zip(filler.roots).collect();
    for index in (1..picked.len()).rev() {
        picked.swap(index, random.between(0, index as u64 + 1) as usize);
    }
    let (mut micros, mut rows, mut nodes) = (vec![], vec![], vec![]);
    for (old, old_root) in picked {
        let started = Instant::now();
        let proof = store.consistency_proof(old, events).await.unwrap();
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        assert!(
            merkle::verify_consistency(old, events, &old_root, &root, &proof),
            "the consistency proof {old} -> {events} does not verify"
        );
        let (row_count, node_count) = reads(&merkle::consistency_ranges(old, events));
        rows.push(row_count as f64);
        nodes.push(node_count as f64);
    }
    summary("consistency", micros, rows, nodes);
    println!();
    store.close().await;
    drop(database);
}

fn main() {
    ensure_services(false);
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "writes,proofs".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if parts.split(',').any(|part| part == "proofs") {
            let events = env_number("BENCH_EVENTS", 10_000_000);
            proofs(Backend::Postgres, events, 1_000).await;
            if env_number("BENCH_PROOF_SQLITE", 0) == 1 {
                proofs(Backend::Sqlite, events, 1_000).await;
            }
        }
        if parts.split(',').any(|part| part == "writes") {
            writes().await;
        }
    });
}
