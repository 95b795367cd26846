//! PostgreSQL behind a network partition: fail closed, and fast.
//!
//! Two replicas without Redis (so a subject not in a replica's memory can only come from the
//! store, and every such Check meets the partition), PostgreSQL behind the test's proxy. The
//! proxy first cuts (resets open connections, refuses new ones), then swallows (accepts and
//! reads, never answers), then heals; last, it swallows straight from a healthy state, which
//! silences the connections the pool holds open, and heals again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use assent::proto::{self, Choice, Plan, Purpose, consistency::Requirement};
use assent::store::testing::{Backend, TestDatabase};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{Cluster, Options, process, proxy_for};

/// The longest a Check may take during the partition (a gateway's authorization timeout is
/// 200 ms).
const CHECK_BUDGET: Duration = Duration::from_millis(250);
/// The longest a write may take to fail during the partition.
const WRITE_BUDGET: Duration = Duration::from_secs(1);
/// How soon after healing everything must be right again.
const HEAL_BUDGET: Duration = Duration::from_secs(5);

/// Fully consistent Checks kept in flight on each replica when its connections are silenced:
/// more than its pool holds (16).
const LOAD_PER_REPLICA: usize = 48;

const PURPOSES: [Purpose; 10] = [
    Purpose::ModelTraining,
    Purpose::Memory,
    Purpose::SensitiveMemory,
    Purpose::IpGeolocation,
    Purpose::MarketingEmail,
    Purpose::AnalyticsCookies,
    Purpose::MarketingCookies,
    Purpose::AbuseMonitoringRetention,
    Purpose::ProductImprovement,
    Purpose::ServiceDelivery,
];

/// Which subjects a replica holds in memory when the partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// Checked before the partition: in memory.
    Cached,
    /// Written, never checked: only the store has them.
    Uncached,
    /// Never written.
    Unknown,
}

/// A subject of the test, and whether it opted out of training.
struct Subject {
    id: String,
    kind: Kind,
    opted_out: bool,
}

/// One answer given during a partition.
struct Answered {
    replica: usize,
    subject: usize,
    purpose: Purpose,
    answer: proto::CheckResponse,
}

/// The slowest answer of each kind, and how many were degraded, over a phase.
#[derive(Default)]
struct Tally {
    slowest: HashMap<Kind, Duration>,
    slowest_batch: Duration,
    degraded: usize,
    answers: Vec<Answered>,
}

fn check_request(subject_id: &str, purpose: Purpose) -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: subject_id.into(),
        purpose: purpose as i32,
        ..Default::default()
    }
}

/// Every Check of every subject, purpose and replica, each timed, and one BatchCheck of the
/// uncached subjects per replica and purpose.
async fn check_everything(cluster: &mut Cluster, subjects: &[Subject], phase: &str) -> Tally {
    let mut tally = Tally::default();
    for replica in 0..cluster.decisions.len() {
        for (index, subject) in subjects.iter().enumerate() {
            for purpose in PURPOSES {
                let started = Instant::now();
                let answer = cluster.decisions[replica]
                    .check(check_request(&subject.id, purpose))
                    .await
                    .unwrap_or_else(|status| {
                        panic!("{phase}: {} {purpose:?} failed: {status}", subject.id)
                    })
                    .into_inner();
                let took = started.elapsed();
                assert!(
                    took < CHECK_BUDGET,
                    "{phase}: {} {purpose:?} on replica {replica} took {took:?}",
                    subject.id
                );
                let slowest = tally.slowest.entry(subject.kind).or_default();
                *slowest = (*slowest).max(took);
                tally.degraded += usize::from(answer.degraded);
                tally.answers.push(Answered {
                    replica,
                    subject: index,
                    purpose,
                    answer,
                });
            }
        }
        for purpose in [Purpose::ModelTraining, Purpose::ServiceDelivery] {
            let checks = subjects
                .iter()
                .filter(|subject| subject.kind == Kind::Uncached)
                .map(|subject| check_request(&subject.id, purpose))
                .collect();
            let started = Instant::now();
            let answers = cluster.decisions[replica]
                .batch_check(proto::BatchCheckRequest { checks })
                .await
                .unwrap_or_else(|status| panic!("{phase}: a BatchCheck failed: {status}"))
                .into_inner()
                .results;
            let took = started.elapsed();
            assert!(took < CHECK_BUDGET, "{phase}: a BatchCheck took {took:?}");
            tally.slowest_batch = tally.slowest_batch.max(took);
            for answer in answers {
                let subject = subjects
                    .iter()
                    .position(|subject| subject.id == answer.subject_id)
                    .unwrap();
                tally.degraded += usize::from(answer.degraded);
                tally.answers.push(Answered {
                    replica,
                    subject,
                    purpose,
                    answer,
                });
            }
        }
    }
    tally
}

/// What the store answers now, for every subject and purpose (read through replica 0).
async fn store_answers(
    cluster: &mut Cluster,
    subjects: &[Subject],
) -> HashMap<(usize, Purpose), String> {
    let mut answers = HashMap::new();
    for (index, subject) in subjects.iter().enumerate() {
        for purpose in PURPOSES {
            let mut request = check_request(&subject.id, purpose);
            request.consistency = Some(proto::Consistency {
                requirement: Some(Requirement::FullyConsistent(true)),
            });
            let answer = cluster.decisions[0]
                .check(request)
                .await
                .unwrap()
                .into_inner();
            assert!(!answer.degraded);
            answers.insert((index, purpose), answer.rule);
        }
    }
    answers
}

/// Every answer is the store's, or the degraded one; an opted-out subject is never allowed
/// training; cached and unknown subjects are answered from memory.
fn assert_safe(
    phase: &str,
    tally: &Tally,
    subjects: &[Subject],
    truth: &HashMap<(usize, Purpose), String>,
) {
    for Answered {
        replica,
        subject,
        purpose,
        answer,
    } in &tally.answers
    {
        let subject_id = &subjects[*subject].id;
        let about = format!("{phase}: {subject_id} {purpose:?} on replica {replica}");
        if subjects[*subject].opted_out && *purpose == Purpose::ModelTraining {
            assert_eq!(answer.decision(), proto::Decision::Deny, "{about}");
        }
        if answer.degraded {
            let allowed = *purpose == Purpose::ServiceDelivery;
            let expected = if allowed {
                proto::Decision::Allow
            } else {
                proto::Decision::Deny
            };
            assert_eq!(
                (answer.decision(), answer.reason()),
                (expected, proto::Reason::StateUnavailable),
                "{about}"
            );
            assert_eq!(
                subjects[*subject].kind,
                Kind::Uncached,
                "{about}: degraded, though its state is in memory"
            );
        } else {
            assert_eq!(answer.rule, truth[&(*subject, *purpose)], "{about}");
        }
    }
}

/// Writes on every replica fail UNAVAILABLE within the budget; the slowest failure.
async fn writes_fail_fast(cluster: &mut Cluster, subject_id: &str, phase: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for replica in 0..cluster.subjects.len() {
        for choice in [Choice::Granted, Choice::Refused] {
            let started = Instant::now();
            let refused = cluster
                .set_choice(replica, subject_id, Purpose::Memory, choice)
                .await
                .expect_err("a write was acknowledged without the store");
            let took = started.elapsed();
            assert_eq!(
                refused.code(),
                tonic::Code::Unavailable,
                "{phase}: {}",
                refused.message()
            );
            assert!(
                took < WRITE_BUDGET,
                "{phase}: a write took {took:?} to fail"
            );
            slowest = slowest.max(took);
        }
    }
    slowest
}

/// Waits until every health entry of every replica says `expected` (the entries follow
/// readiness within a probe interval, a second, plus a probe's own second at most).
async fn health_turns(cluster: &Cluster, expected: ServingStatus, phase: &str) -> Duration {
    let started = Instant::now();
    for replica in &cluster.replicas {
        let mut health = HealthClient::new(replica.channel().await);
        for entry in process::HEALTH_ENTRIES {
            loop {
                let status = health
                    .check(HealthCheckRequest {
                        service: entry.into(),
                    })
                    .await
                    .expect("the health service answers")
                    .into_inner()
                    .status();
                if status == expected {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{phase}: health of {entry:?} still {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    started.elapsed()
}

/// `/readyz` of every replica answers 503 (each probe within the budget), and every gRPC health
/// entry turns NOT_SERVING; the slowest probe.
async fn unready(cluster: &Cluster, phase: &str) -> Duration {
    let turned = health_turns(cluster, ServingStatus::NotServing, phase).await;
    println!("{phase}: every health entry NOT_SERVING within {turned:?}");
    let mut slowest = Duration::ZERO;
    for replica in &cluster.replicas {
        let started = Instant::now();
        let (status, body) = process::http_get(&replica.admin_address, "/readyz").await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{phase}: /readyz said {body}");
        assert!(
            took < Duration::from_millis(1_500),
            "{phase}: /readyz took {took:?}"
        );
        slowest = slowest.max(took);
    }
    slowest
}

/// With every replica NOT_SERVING (the store they share is gone), the Rust client's balance
/// still sends Checks to them, and they are answered within the budget, exactly or degraded:
/// not held until a replica serves again.
async fn answered_through_the_balance(cluster: &Cluster, subjects: &[Subject]) {
    let endpoints = cluster
        .replicas
        .iter()
        .map(|replica| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", replica.address)).unwrap()
        })
        .collect();
    let client = assent_client::Client::over(assent_client::Replicas::connect(endpoints));
    // The health watches report, and the first call opens the connections, before the timed
    // ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm = client.check(check_request(&subjects[0].id, Purpose::Memory));
    tokio::time::timeout(Duration::from_secs(2), warm)
        .await
        .expect("held by a balance with no SERVING replica")
        .expect("answered");
    for subject in subjects {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            client.check(check_request(&subject.id, Purpose::ModelTraining)),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: held by a balance with no SERVING replica", subject.id))
        .expect("answered");
        let took = started.elapsed();
        if subject.opted_out {
            assert_ne!(
                answer.decision,
                proto::Decision::Allow as i32,
                "{}",
                subject.id
            );
        }
        assert!(took < CHECK_BUDGET * 2, "{}: {took:?}", subject.id);
    }
}

/// After healing: writes succeed, `/readyz` is ready, the store answers every Check again, and
/// the subjects in memory are answered as the store answers; how long that took, and what the
/// store answers.
async fn healed(
    cluster: &mut Cluster,
    subjects: &[Subject],
    write_subject: &str,
    phase: &str,
) -> (Duration, HashMap<(usize, Purpose), String>) {
    let healing = Instant::now();
    let written = loop {
        match cluster
            .set_choice(0, write_subject, Purpose::Memory, Choice::Granted)
            .await
        {
            Ok(written) => break written,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{phase}");
                assert!(
                    healing.elapsed() < HEAL_BUDGET,
                    "{phase}: writes did not recover"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for replica in 0..cluster.replicas.len() {
        loop {
            let (status, _) =
                process::http_get(&cluster.replicas[replica].admin_address, "/readyz").await;
            if status == 200 {
                break;
            }
            assert!(
                healing.elapsed() < HEAL_BUDGET,
                "{phase}: replica {replica} stays unready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        health_turns(cluster, ServingStatus::Serving, phase).await;
        // The first reads after healing may still be cut short while the replica reconnects.
        loop {
            match cluster
                .check(
                    replica,
                    write_subject,
                    Purpose::Memory,
                    Some(&written.revision),
                )
                .await
            {
                Ok(memory) if !memory.degraded => break,
                Ok(_) => {}
                Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{phase}"),
            }
            assert!(
                healing.elapsed() < HEAL_BUDGET,
                "{phase}: replica {replica} reads no store"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let recovered = healing.elapsed();
    let truth = store_answers(cluster, subjects).await;
    // Those in memory (checked without demanding freshness, so that the uncached ones stay
    // out of memory for the next partition).
    let in_memory: Vec<Subject> = subjects
        .iter()
        .filter(|subject| subject.kind != Kind::Uncached)
        .map(|subject| Subject {
            id: subject.id.clone(),
            kind: subject.kind,
            opted_out: subject.opted_out,
        })
        .collect();
    let tally = check_everything(cluster, &in_memory, phase).await;
    assert_eq!(tally.degraded, 0, "{phase}: degraded answers after healing");
    for answered in &tally.answers {
        let index = subjects
            .iter()
            .position(|subject| subject.id == in_memory[answered.subject].id)
            .unwrap();
        assert_eq!(
            answered.answer.rule,
            truth[&(index, answered.purpose)],
            "{phase}: {} {:?}",
            subjects[index].id,
            answered.purpose
        );
    }
    assert!(
        healing.elapsed() < HEAL_BUDGET * 2,
        "{phase}: slow to recover"
    );
    (recovered, truth)
}

fn report(phase: &str, tally: &Tally, write: Duration, ready: Duration) {
    let slowest = |kind| tally.slowest.get(&kind).copied().unwrap_or_default();
    println!(
        "{phase}: {} Checks ({} degraded); slowest Check cached {:?}, uncached {:?}, unknown \
         {:?}, BatchCheck {:?}; slowest failed write {write:?}; slowest /readyz {ready:?}",
        tally.answers.len(),
        tally.degraded,
        slowest(Kind::Cached),
        slowest(Kind::Uncached),
        slowest(Kind::Unknown),
        tally.slowest_batch,
    );
}

/// The partition test of docs/operations.md ("PostgreSQL behind a partition").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_store_is_answered_safely_and_fast() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let postgres = proxy_for(&database.url()).await;
    let options = Options {
        replicas: 2,
        redis: false,
        postgres_through: Some(postgres.address()),
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    let mut subjects = Vec::new();
    for (kind, count) in [(Kind::Cached, 4), (Kind::Uncached, 6), (Kind::Unknown, 2)] {
        for index in 0..count {
            subjects.push(Subject {
                id: format!("{kind:?}-{index}").to_lowercase(),
                kind,
                opted_out: index % 2 == 0 && kind != Kind::Unknown,
            });
        }
    }
    let write_subject = "partition-writer".to_owned();
    let mut last_revision = cluster.upsert(0, &write_subject, Plan::Free).await;
    for subject in &subjects {
        if subject.kind == Kind::Unknown {
            continue;
        }
        last_revision = cluster.upsert(0, &subject.id, Plan::Free).await;
        if subject.opted_out {
            last_revision = cluster
                .set_choice(0, &subject.id, Purpose::ModelTraining, Choice::Refused)
                .await
                .unwrap()
                .revision;
        }
    }
    // Warm the cached ones into both replicas' memory, at the last write's revision.
    for replica in 0..2 {
        for subject in subjects
            .iter()
            .filter(|subject| subject.kind == Kind::Cached)
        {
            for purpose in PURPOSES {
                cluster
                    .check(replica, &subject.id, purpose, Some(&last_revision))
                    .await
                    .unwrap();
            }
        }
    }
    // What the store says, before anything goes wrong (fully consistent reads, which cache
    // nothing).
    let truth = store_answers(&mut cluster, &subjects).await;
    for (index, subject) in subjects.iter().enumerate() {
        if subject.opted_out {
            assert_eq!(
                truth[&(index, Purpose::ModelTraining)],
                "T5",
                "{}",
                subject.id
            );
        }
    }

    postgres.cut();
    let tally = check_everything(&mut cluster, &subjects, "cut").await;
    assert_safe("cut", &tally, &subjects, &truth);
    assert!(
        tally.degraded > 0,
        "no Check of an uncached subject met the cut store"
    );
    let write = writes_fail_fast(&mut cluster, &write_subject, "cut").await;
    let ready = unready(&cluster, "cut").await;
    report("cut (reset and refused)", &tally, write, ready);
    answered_through_the_balance(&cluster, &subjects).await;

    postgres.swallow().await;
    let tally = check_everything(&mut cluster, &subjects, "swallowed").await;
    assert_safe("swallowed", &tally, &subjects, &truth);
    assert!(
        tally.degraded > 0,
        "no Check of an uncached subject met the partition"
    );
    let write = writes_fail_fast(&mut cluster, &write_subject, "swallowed").await;
    let ready = unready(&cluster, "swallowed").await;
    report("swallowed (accepted, never answered)", &tally, write, ready);

    postgres.restore().await;
    let (recovered, truth) = healed(&mut cluster, &subjects, &write_subject, "healed").await;
    println!("healed: writes, /readyz and Checks right again after {recovered:?}");

    // A partition that silences the connections the pool holds open, some of them in the
    // middle of a read: nothing tells them apart from healthy ones but the deadlines. The proxy
    // keeps swallowing what it swallowed after healing too, so whatever still waits on one of
    // them waits forever.
    // Under load, so that connections are silenced in the middle of their reads.
    let started = Instant::now();
    let running = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    for decisions in &cluster.decisions {
        for task in 0..LOAD_PER_REPLICA {
            let (mut decisions, running) = (decisions.clone(), running.clone());
            let subject_id = subjects[task % subjects.len()].id.clone();
            load.push(tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let mut request = check_request(&subject_id, Purpose::ModelTraining);
                    request.consistency = Some(proto::Consistency {
                        requirement: Some(Requirement::FullyConsistent(true)),
                    });
                    let _ = decisions.check(request).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    postgres.swallow().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let tally = check_everything(&mut cluster, &subjects, "silenced").await;
    assert_safe("silenced", &tally, &subjects, &truth);
    assert!(
        tally.degraded > 0,
        "no Check of an uncached subject met the partition"
    );
    let write = writes_fail_fast(&mut cluster, &write_subject, "silenced").await;
    let ready = unready(&cluster, "silenced").await;
    report(
        "silenced (open connections swallowed)",
        &tally,
        write,
        ready,
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    postgres.restore().await;
    let (recovered, _) = healed(&mut cluster, &subjects, &write_subject, "healed again").await;
    println!("healed again: right after {recovered:?}");
    cluster.stop();
}
