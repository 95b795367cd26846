//! Server processes: a crash mid-load loses no acknowledged write, and two processes on one
//! database keep one linear history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{DecisionLogReader, actor, all_events, check_request};
use crate::process::ServerProcess;
use assent::proto::audit_client::AuditClient;
use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Choice, Plan, Purpose};
use assent::revision::Revision;
use assent::store::testing::{Backend, TestDatabase};

/// A server process on `database`, whose files (its decision log's segments) are in the
/// directory `name` of the database's: a restart under the same name takes them up.
fn start(database: &TestDatabase, name: &str) -> ServerProcess {
    ServerProcess::start(&[
        ("ASSENT_DATABASE_URL", database.url()),
        (
            "ASSENT_DATA_DIR",
            database.directory().join(name).display().to_string(),
        ),
    ])
}

fn sequence(token: &str) -> u64 {
    Revision::parse_token(token).unwrap().sequence()
}

/// Sixteen writers write as fast as they can (so writes are committed in groups); the server is
/// killed with SIGKILL mid-load and started again. Every write that was acknowledged is there:
/// in the state, in the audit chain, one event per change, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_write() {
    let database = TestDatabase::create(Backend::from_env()).await;
    let server = start(&database, "server");
    let mut subjects = SubjectsClient::new(server.channel().await);
    for index in 0..5 {
        subjects
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id: format!("crash-{index}"),
                plan: Some(Plan::Team as i32),
                actor: actor(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut subjects = subjects.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for index in 0.. {
                let request = proto::RecordFeedbackRequest {
                    subject_id: format!("crash-{}", index % 5),
                    conversation_id: format!("c-{writer}-{index}"),
                    rating: proto::Rating::ThumbsUp as i32,
                    actor: actor(),
                };
                match subjects.record_feedback(request.clone()).await {
                    Ok(response) => acknowledged.push((request, response.into_inner().revision)),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(
            tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .expect("a writer did not notice the crash")
                .unwrap(),
        );
    }
    assert!(
        acknowledged.len() >= 10,
        "only {} writes before the crash",
        acknowledged.len()
    );
    eprintln!(
        "crash test: {} writes acknowledged before SIGKILL",
        acknowledged.len()
    );

    let restarted = start(&database, "server");
    let channel = restarted.channel().await;
    let mut decisions = DecisionsClient::new(channel.clone());
    let events = all_events(channel.clone(), None).await;
    let by_revision: HashMap<u64, &proto::AuditEvent> = events
        .iter()
        .map(|event| (sequence(&event.revision), event))
        .collect();
    for (request, revision) in &acknowledged {
        let check = proto::CheckRequest {
            conversation_id: Some(request.conversation_id.clone()),
            ..check_request(&request.subject_id, Purpose::ModelTraining)
        };
        let answer = decisions.check(check).await.unwrap().into_inner();
        assert_eq!(
            answer.rule, "T3",
            "{} lost its feedback",
            request.conversation_id
        );
        let event = by_revision[&sequence(revision)];
        assert_eq!(event.kind, "feedback_recorded");
        assert!(
            event
                .detail_json
                .contains(&format!("\"{}\"", request.conversation_id))
        );
    }
    // One event per change: no feedback recorded twice (a write is never applied again).
    let feedback: Vec<&str> = events
        .iter()
        .filter(|event| event.kind == "feedback_recorded")
        .map(|event| event.detail_json.as_str())
        .collect();
    let distinct: HashSet<&str> = feedback.iter().copied().collect();
    assert_eq!(distinct.len(), feedback.len(), "a change recorded twice");
    let report = AuditClient::new(channel)
        .verify_chain(proto::VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, events.len() as u64);
    restarted.stop();
}

/// Checks under load, one in ten with `require_audit`; the server is killed with SIGKILL
/// mid-load and started again on the same files. Every decision whose answer said it was
/// recorded (a `require_audit` check that was answered) is in the decision log, each decision
/// is there once, and the ordinary ones the dead process had written to its segment files are
/// shipped by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_decision_said_to_be_recorded() {
    const CLIENTS: usize = 8;
    let database = TestDatabase::create(Backend::from_env()).await;
    let server = start(&database, "server");
    let channel = server.channel().await;
    SubjectsClient::new(channel.clone())
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: "kim".into(),
            plan: Some(Plan::Free as i32),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let mut decisions = DecisionsClient::new(channel.clone());
            tokio::spawn(async move {
                let (mut recorded, mut answered) = (Vec::new(), Vec::new());
                for index in 0.. {
                    let require_audit = (index + client) % 10 == 0;
                    let check = proto::CheckRequest {
                        require_audit,
                        ..check_request("kim", Purpose::ModelTraining)
                    };
                    match decisions.check(check).await {
                        Ok(answer) if require_audit => {
                            recorded.push(answer.into_inner().decision_id)
                        }
                        Ok(answer) => answered.push(answer.into_inner().decision_id),
                        Err(_) => break,
                    }
                }
                (recorded, answered)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.kill();
    let (mut recorded, mut answered) = (Vec::new(), Vec::new());
    for client in clients {
        let (durable, ordinary) = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("a client did not notice the crash")
            .unwrap();
        recorded.extend(durable);
        answered.extend(ordinary);
    }
    assert!(
        recorded.len() >= 10,
        "only {} recorded checks",
        recorded.len()
    );

    let restarted = start(&database, "server");
    restarted.channel().await;
    let log = DecisionLogReader::open(&database).await;
    // The new process ships the dead one's segments as it starts; wait until the count settles.
    let mut rows = log.count().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = log.count().await;
        if now == rows {
            break;
        }
        rows = now;
    }
    let logged: HashSet<String> = log
        .all()
        .await
        .into_iter()
        .map(|record| record.decision_id)
        .collect();
    assert_eq!(logged.len() as u64, rows, "a decision is in the log twice");
    for decision_id in &recorded {
        assert!(
            logged.contains(decision_id),
            "the recorded decision {decision_id} is not in the log"
        );
    }
    let shipped = answered.iter().filter(|id| logged.contains(*id)).count();
    eprintln!(
        "crash test: {} require_audit checks answered, all in the log; {shipped} of {} other \
         answered checks in the log after the restart",
        recorded.len(),
        answered.len()
    );
    // Only what was in memory when the process died (at most a flush interval) may be missing.
    assert!(
        shipped * 10 >= answered.len() * 9,
        "{shipped} of {}",
        answered.len()
    );
    log.close().await;
    restarted.stop();
}

/// What one acknowledged write set.
#[derive(Clone, Debug)]
struct Acknowledged {
    revision: u64,
    changed: bool,
    subject_id: String,
    field: String,
    value: String,
}

/// 8 clients × 500 writes to the same 10 subjects through 2 server processes on one database:
/// the final state is the last acknowledged change of each field, the audit log has exactly one
/// event per change, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_keep_one_linear_history() {
    const CLIENTS: usize = 8;
    const WRITES: usize = 500;
    const SUBJECTS: usize = 10;
    let database = TestDatabase::create(Backend::from_env()).await;
    let servers = [start(&database, "first"), start(&database, "second")];
    let channels = Arc::new([servers[0].channel().await, servers[1].channel().await]);
    let mut setup = SubjectsClient::new(channels[0].clone());
    for subject in 0..SUBJECTS {
        setup
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id: format!("hot-{subject}"),
                plan: Some(Plan::Free as i32),
                actor: actor(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let purposes = [
        Purpose::Memory,
        Purpose::MarketingEmail,
        Purpose::AnalyticsCookies,
    ];
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let channels = channels.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::with_capacity(WRITES);
            for write in 0..WRITES {
                let mut subjects = SubjectsClient::new(channels[(client + write) % 2].clone());
                let subject_id = format!("hot-{}", (client * 31 + write * 7) % SUBJECTS);
                let salt = client * 1_000 + write;
                let (field, value, response) = if write % 4 == 3 {
                    let plan = if salt % 3 == 0 {
                        Plan::Pro
                    } else {
                        Plan::Student
                    };
                    let response = subjects
                        .upsert_subject(proto::UpsertSubjectRequest {
                            subject_id: subject_id.clone(),
                            plan: Some(plan as i32),
                            actor: actor(),
                            ..Default::default()
                        })
                        .await;
                    ("plan".to_owned(), plan.as_str_name().to_owned(), response)
                } else {
                    let purpose = purposes[salt % purposes.len()];
                    let choice = if salt % 2 == 0 {
                        Choice::Granted
                    } else {
                        Choice::Refused
                    };
                    let response = subjects
                        .set_choice(proto::SetChoiceRequest {
                            subject_id: subject_id.clone(),
                            purpose: purpose as i32,
                            choice: choice as i32,
                            actor: actor(),
                            ..Default::default()
                        })
                        .await;
                    (
                        purpose.as_str_name().to_owned(),
                        choice.as_str_name().to_owned(),
                        response,
                    )
                };
                let response = response.unwrap().into_inner();
                acknowledged.push(Acknowledged {
                    revision: sequence(&response.revision),
                    changed: response.changed,
                    subject_id,
                    field,
                    value,
                });
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert_eq!(acknowledged.len(), CLIENTS * WRITES);
    let changes: Vec<&Acknowledged> = acknowledged.iter().filter(|write| write.changed).collect();
    eprintln!(
        "concurrency test: {} writes acknowledged, {} changed something",
        acknowledged.len(),
        changes.len()
    );

    // One event per change, at the change's own revision; no two changes share one.
    let events = all_events(channels[1].clone(), None).await;
    assert_eq!(events.len(), SUBJECTS + changes.len());
    let change_revisions: HashSet<u64> = changes.iter().map(|write| write.revision).collect();
    assert_eq!(change_revisions.len(), changes.len());
    let by_revision: HashMap<u64, &proto::AuditEvent> = events
        .iter()
        .map(|event| (sequence(&event.revision), event))
        .collect();
    for change in &changes {
        let event = by_revision[&change.revision];
        assert_eq!(event.subject_id, change.subject_id);
    }

    // The final state of each field is its last change.
    let mut last: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    for change in &changes {
        let key = (change.subject_id.clone(), change.field.clone());
        let entry = last.entry(key).or_insert((0, String::new()));
        if change.revision > entry.0 {
            *entry = (change.revision, change.value.clone());
        }
    }
    let mut subjects = SubjectsClient::new(channels[0].clone());
    for ((subject_id, field), (_, value)) in &last {
        let subject = subjects
            .get_subject(proto::GetSubjectRequest {
                subject_id: subject_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let stored = if field == "plan" {
            subject.plan().as_str_name().to_owned()
        } else {
            subject
                .choices
                .iter()
                .find(|record| record.purpose().as_str_name() == field)
                .map(|record| record.choice().as_str_name().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(&stored, value, "{subject_id} {field}");
    }

    let report = AuditClient::new(channels[0].clone())
        .verify_chain(proto::VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    let [first, second] = servers;
    first.stop();
    second.stop();
}
