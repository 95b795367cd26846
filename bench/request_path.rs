//! The rest of the request path, against one `assent serve` process on PostgreSQL (decision log
//! off):
//! - BatchCheck of 1,000 cached subjects: latency per batch (client time, encoding and decoding
//!   included) and server CPU per batch, BENCH_BATCHES (default 1,000) one at a time;
//! - StreamCheck on one connection: decisions per second, the client keeping 256 in flight;
//! - writes (UpsertSubject, SetChoice), each with its audit event: latency, one at a time;
//! - memory per cached subject: resident memory before and after BENCH_SUBJECTS subjects
//!   (default 1,000,000; each a plan, 3 choices and 5 conversation facts, seeded into the
//!   database) were read into the cache.
//!
//!     cargo bench --bench request_path

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Choice, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use sqlx::Connection;
use support::{Server, ensure_services, env_number, process_cpu};
use tokio_stream::StreamExt;

fn percentiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |fraction: f64| values[((values.len() - 1) as f64 * fraction) as usize];
    (at(0.5), at(0.99))
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kilobytes: u64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|number| number.parse().ok())
        .unwrap();
    kilobytes * 1024
}

/// Subjects `mem-N` with a plan, 3 choices and 5 conversation facts each, straight into the
/// database (the schema is the server's).
async fn seed(database: &TestDatabase, subjects: usize) {
    assent::store::Store::open(database.location())
        .await
        .unwrap()
        .close()
        .await;
    let mut connection = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    let statements = [
        "INSERT INTO subjects (subject_id, plan, status, gpc, zero_data_retention,
                               created_at, updated_at, revision)
         SELECT 'mem-' || n, (ARRAY['FREE', 'PRO', 'STUDENT'])[1 + n % 3], 'ACTIVE', FALSE,
                FALSE, 0, 0, 0
         FROM generate_series(0, $1 - 1) AS n",
        "INSERT INTO choices (subject_id, purpose, choice, updated_at, revision)
         SELECT 'mem-' || n, p, CASE WHEN n % 2 = 0 THEN 'GRANTED' ELSE 'REFUSED' END, 0, 0
         FROM generate_series(0, $1 - 1) AS n,
              unnest(ARRAY['MODEL_TRAINING', 'MEMORY', 'MARKETING_EMAIL']) AS p",
        "INSERT INTO conversation_facts (subject_id, conversation_id, feedback,
                                         automated_moderation, user_report, updated_at, revision)
         SELECT 'mem-' || n, 'conversation-' || c, 'THUMBS_UP', FALSE, FALSE, c, 0
         FROM generate_series(0, $1 - 1) AS n, generate_series(1, 5) AS c",
    ];
    for statement in statements {
        sqlx::query(statement)
            .bind(subjects as i64)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    connection.close().await.unwrap();
}

/// May subject `mem-N` be trained on, in its first conversation?
fn training_check(index: usize) -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: format!("mem-{index}"),
        purpose: Purpose::ModelTraining as i32,
        conversation_id: Some("conversation-1".into()),
        ..Default::default()
    }
}

/// BatchChecks of the subjects `mem-N` for N in `range`, 1,000 at a time.
async fn load(
    decisions: &mut DecisionsClient<tonic::transport::Channel>,
    range: std::ops::Range<usize>,
) {
    for first in range.clone().step_by(1_000) {
        let checks = (first..(first + 1_000).min(range.end))
            .map(training_check)
            .collect();
        decisions
            .batch_check(proto::BatchCheckRequest { checks })
            .await
            .unwrap();
    }
}

fn main() {
    ensure_services(false);
    let subjects = env_number("BENCH_SUBJECTS", 1_000_000) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let database = TestDatabase::create(Backend::Postgres).await;
        // 1,000 more than are measured: a first batch of them opens the server's store
        // connections before the resident memory is read.
        seed(&database, subjects + 1_000).await;
        let server = Server::start(&[
            ("ASSENT_DATABASE_URL", database.url()),
            ("ASSENT_DECISION_LOG", "off".to_owned()),
            ("ASSENT_CACHE_MAX_SUBJECTS", (subjects * 2).to_string()),
            ("ASSENT_CACHE_TTL_SECONDS", "3600".to_owned()),
        ]);
        let channel = server.channels(1).await.remove(0);
        let mut decisions = DecisionsClient::new(channel.clone());
        let mut writer = SubjectsClient::new(channel.clone());

        // Memory per cached subject.
        load(&mut decisions, subjects..subjects + 1_000).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = resident_bytes(server_pid(&server));
        let loaded = Instant::now();
        load(&mut decisions, 0..subjects).await;
        let load_time = loaded.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = resident_bytes(server_pid(&server));
        let per_subject = (after.saturating_sub(before)) as f64 / subjects as f64;
        // The same subjects again: all answered from memory if all stayed cached.
        let again = Instant::now();
        load(&mut decisions, 0..subjects).await;
        println!(
            "memory: {subjects} subjects cached (plan, 3 choices, 5 conversation facts) in {:.1} \
             s, read again from the cache in {:.1} s: resident {:.1} MiB -> {:.1} MiB, \
             {per_subject:.0} bytes per subject",
            load_time.as_secs_f64(),
            again.elapsed().as_secs_f64(),
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );

        // BatchCheck of 1,000 cached subjects.
        let batch: Vec<proto::CheckRequest> = (0..1_000).map(training_check).collect();
        let mut latencies = Vec::new();
        let batches = env_number("BENCH_BATCHES", 1_000);
        let cpu_before = process_cpu(server_pid(&server)).unwrap();
        for _ in 0..batches {
            let started = Instant::now();
            decisions
                .batch_check(proto::BatchCheckRequest {
                    checks: batch.clone(),
                })
                .await
                .unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let cpu = process_cpu(server_pid(&server)).unwrap() - cpu_before;
        let (p50, p99) = percentiles(latencies);
        println!(
            "BatchCheck of 1,000 cached subjects: p50 {p50:.2} ms, p99 {p99:.2} ms per batch \
             ({:.2} ms server CPU each)",
            cpu.as_secs_f64() * 1e3 / batches as f64
        );

        // StreamCheck on one connection.
        let seconds = env_number("BENCH_SECONDS", 5);
        let requests: Vec<proto::CheckRequest> = (0..1_000)
            .map(|index| proto::CheckRequest {
                subject_id: format!("mem-{index}"),
                purpose: Purpose::ModelTraining as i32,
                ..Default::default()
            })
            .collect();
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        let producer = tokio::spawn(async move {
            let mut index = 0;
            while sender
                .send(requests[index % requests.len()].clone())
                .await
                .is_ok()
            {
                index += 1;
            }
        });
        let cpu_before = process_cpu(server_pid(&server)).unwrap();
        let mut answers = decisions
            .stream_check(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        let started = Instant::now();
        let mut answered = 0_u64;
        while started.elapsed() < Duration::from_secs(seconds) {
            answers.next().await.unwrap().unwrap();
            answered += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = process_cpu(server_pid(&server)).unwrap() - cpu_before;
        drop(answers);
        producer.abort();
        println!(
            "StreamCheck on one connection: {:.0} decisions/s ({:.2} µs server CPU each)",
            answered as f64 / elapsed,
            cpu.as_secs_f64() * 1e6 / answered as f64
        );

        // Writes with their audit events.
        let actor = Some(proto::Actor {
            operator_id: "bench".into(),
            reason: "write latency".into(),
        });
        let mut upserts = Vec::new();
        let mut choices = Vec::new();
        for index in 0..2_000 {
            let subject_id = format!("writer-{index}");
            let started = Instant::now();
            writer
                .upsert_subject(proto::UpsertSubjectRequest {
                    subject_id: subject_id.clone(),
                    plan: Some(Plan::Pro as i32),
                    actor: actor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            upserts.push(started.elapsed().as_secs_f64() * 1e6);
            let started = Instant::now();
            writer
                .set_choice(proto::SetChoiceRequest {
                    subject_id,
                    purpose: Purpose::ModelTraining as i32,
                    choice: Choice::Refused as i32,
                    actor: actor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            choices.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let (upsert_p50, upsert_p99) = percentiles(upserts);
        let (choice_p50, choice_p99) = percentiles(choices);
        println!(
            "writes on PostgreSQL, one at a time: UpsertSubject p50 {upsert_p50:.0} µs p99 \
             {upsert_p99:.0} µs; SetChoice p50 {choice_p50:.0} µs p99 {choice_p99:.0} µs"
        );
        server.stop();
    });
}

fn server_pid(server: &Server) -> u32 {
    server.pid()
}
