//! The decision log: what is recorded, when it is durable, and what happens when it cannot be.

use std::sync::Arc;
use std::time::{Duration, Instant};

use assent::decision_log::LogMode;
use assent::proto::{self, Plan, Purpose};
use assent::store::DatabaseUrl;
use assent::store::testing::{Backend, TestDatabase};
use tonic::Code;

use crate::helpers::{DecisionLogReader, TestApp, assert_status, check_request};
use crate::proxy::FaultProxy;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    request
}

/// Unary, batched and streamed decisions are all recorded, and a graceful shutdown writes every
/// queued one before the store closes.
#[tokio::test]
async fn every_decision_is_recorded_and_flushed_on_shutdown() {
    let app = TestApp::spawn().await;
    let revision = app.upsert("uma", Plan::Free).await;
    let single = app
        .decisions()
        .check(traced(check_request("uma", Purpose::ModelTraining)))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..49 {
        app.check("uma", Purpose::Memory).await;
    }
    let batch = vec![check_request("ghost", Purpose::MarketingEmail); 100];
    app.decisions()
        .batch_check(proto::BatchCheckRequest { checks: batch })
        .await
        .unwrap();
    let streamed = vec![check_request("uma", Purpose::ServiceDelivery); 100];
    let mut answers = app
        .decisions()
        .stream_check(tokio_stream::iter(streamed))
        .await
        .unwrap()
        .into_inner();
    while answers.message().await.unwrap().is_some() {}

    let data = app.stop().await;
    let restarted = TestApp::spawn_on(data).await;
    let log = restarted.decision_log().await;
    assert_eq!(log.count().await, 250);
    let row = log.row(&single.decision_id).await.unwrap();
    let revision = assent::revision::Revision::parse_token(&revision).unwrap();
    assert_eq!(
        row,
        (
            "uma".to_owned(),
            "MODEL_TRAINING".to_owned(),
            "T6".to_owned(),
            Some(revision.sequence() as i64),
            "anonymous".to_owned(),
            "0af7651916cd43dd8448eb211c80319c".to_owned(),
        )
    );
    log.close().await;
}

/// A bare answer leaves the decision id out, but the decision log records the decision in full:
/// unary, batched, streamed and `require_audit` bare checks each add a row like a full check's.
#[tokio::test]
async fn a_bare_check_is_recorded_in_full() {
    let app = TestApp::spawn().await;
    app.upsert("bea", Plan::Free).await;
    let bare = proto::CheckRequest {
        bare: true,
        ..check_request("bea", Purpose::ModelTraining)
    };
    let log = app.decision_log().await;
    let before = log.count().await;
    let audited = app
        .decisions()
        .check(traced(proto::CheckRequest {
            require_audit: true,
            ..bare.clone()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audited.decision_id, "");
    assert_eq!(log.count().await, before + 1);
    log.close().await;

    let full = app
        .decisions()
        .check(traced(check_request("bea", Purpose::ModelTraining)))
        .await
        .unwrap()
        .into_inner();
    let single = app
        .decisions()
        .check(traced(bare.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (single.rule.as_str(), single.decision_id.as_str()),
        ("T6", "")
    );
    app.decisions()
        .batch_check(traced(proto::BatchCheckRequest {
            checks: vec![bare.clone(); 3],
        }))
        .await
        .unwrap();
    let mut answers = app
        .decisions()
        .stream_check(traced(tokio_stream::iter(vec![bare; 2])))
        .await
        .unwrap()
        .into_inner();
    while answers.message().await.unwrap().is_some() {}

    let data = app.stop().await;
    let restarted = TestApp::spawn_on(data).await;
    let log = restarted.decision_log().await;
    assert_eq!(log.count().await, before + 8);
    let full_row = log.row(&full.decision_id).await.unwrap();
    assert_eq!(full_row.2, "T6");
    let rows = log.rows_of("bea").await;
    assert_eq!(rows, vec![full_row; 8]);
    log.close().await;
}

/// With the log off, only `require_audit` checks are recorded, and each one is durable by the
/// time its answer arrives.
#[tokio::test]
async fn a_require_audit_check_answers_after_its_row_is_durable() {
    let app = TestApp::spawn_adjusted(|settings| settings.decision_log = LogMode::Off).await;
    app.upsert("vera", Plan::Pro).await;
    let log = app.decision_log().await;
    for _ in 0..5 {
        let audited = app.audited_check("vera", Purpose::ModelTraining).await;
        assert!(log.row(&audited.decision_id).await.is_some());
    }
    let unaudited = app.check("vera", Purpose::ModelTraining).await;
    let audited_batch = app
        .decisions()
        .batch_check(proto::BatchCheckRequest {
            checks: vec![
                proto::CheckRequest {
                    require_audit: true,
                    ..check_request("vera", Purpose::Memory)
                };
                20
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.count().await, 25);
    assert!(log.row(&unaudited.decision_id).await.is_none());
    for result in &audited_batch.results {
        assert!(log.row(&result.decision_id).await.is_some());
    }
    log.close().await;
}

#[tokio::test]
async fn deny_only_records_only_denials() {
    let app = TestApp::spawn_adjusted(|settings| settings.decision_log = LogMode::DenyOnly).await;
    app.upsert("walt", Plan::Enterprise).await;
    let allowed = app.check("walt", Purpose::ServiceDelivery).await;
    let denied = app.check("walt", Purpose::ModelTraining).await;
    let data = app.stop().await;
    let restarted = TestApp::spawn_on(data).await;
    let log = restarted.decision_log().await;
    assert!(log.row(&denied.decision_id).await.is_some());
    assert!(log.row(&allowed.decision_id).await.is_none());
    assert_eq!(log.count().await, 1);
    log.close().await;
}

/// The log cannot be written (another process holds its table's lock): ordinary checks keep
/// being answered, a `require_audit` check fails UNAVAILABLE instead of answering unrecorded.
#[tokio::test]
async fn a_require_audit_check_fails_when_its_record_cannot_be_written() {
    let app = TestApp::spawn().await;
    app.upsert("xena", Plan::Free).await;
    let mut intruder = app.direct_connection().await;
    intruder.hold_write_lock("decision_log").await;
    let answered = app.check("xena", Purpose::ModelTraining).await;
    assert_eq!(answered.rule, "T6");
    let refused = app
        .decisions()
        .check(proto::CheckRequest {
            require_audit: true,
            ..check_request("xena", Purpose::ModelTraining)
        })
        .await;
    let status = refused.expect_err("answered without its audit record");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().starts_with("require_audit"),
        "{}",
        status.message()
    );
    intruder.release().await;
    let audited = app.audited_check("xena", Purpose::ModelTraining).await;
    let log = app.decision_log().await;
    assert!(log.row(&audited.decision_id).await.is_some());
    log.close().await;
}

/// Every decision of the log through ListDecisions, `page_size` at a time.
async fn list_all(
    app: &TestApp,
    request: proto::ListDecisionsRequest,
) -> Vec<proto::RecordedDecision> {
    let mut listed = Vec::new();
    let mut request = request;
    loop {
        let page = app
            .audit()
            .list_decisions(request.clone())
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.decisions);
        if page.next_page_token.is_empty() {
            return listed;
        }
        request.page_token = page.next_page_token;
    }
}

/// ListDecisions pages through the log in order, by subject, by decision or by time, reading
/// the shipped segments and the `require_audit` rows alike; a forged page token or a bad filter
/// is refused, naming its field.
#[tokio::test]
async fn list_decisions_pages_filters_and_refuses_bad_input() {
    let app = TestApp::spawn().await;
    app.upsert("yuri", Plan::Free).await;
    let mut yuri = Vec::new();
    for _ in 0..25 {
        yuri.push(app.check("yuri", Purpose::ModelTraining).await);
    }
    let audited = app.audited_check("zoe", Purpose::Memory).await;
    for _ in 0..5 {
        app.check("zoe", Purpose::Memory).await;
    }
    // A restart ships everything recorded (a live server ships within about a second).
    let app = TestApp::spawn_on(app.stop().await).await;

    let everything = list_all(
        &app,
        proto::ListDecisionsRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(everything.len(), 31);
    let order: Vec<_> = everything
        .iter()
        .map(|decision| {
            let at = decision.decided_at.unwrap();
            (at.seconds, at.nanos, decision.decision_id.clone())
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "listed out of order");

    let of_yuri = list_all(
        &app,
        proto::ListDecisionsRequest {
            subject_id: Some("yuri".into()),
            page_size: 10,
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<_> = of_yuri
        .iter()
        .map(|decision| decision.decision_id.clone())
        .collect();
    let answered: Vec<_> = yuri
        .iter()
        .map(|answer| answer.decision_id.clone())
        .collect();
    assert_eq!(ids, answered);
    let first = &of_yuri[0];
    assert_eq!(
        (first.rule.as_str(), first.revision.as_str(), first.purpose),
        (
            yuri[0].rule.as_str(),
            yuri[0].revision.as_str(),
            Purpose::ModelTraining as i32
        )
    );

    let one = list_all(
        &app,
        proto::ListDecisionsRequest {
            decision_id: Some(audited.decision_id.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].subject_id, "zoe");
    assert_eq!(
        (one[0].decision, one[0].reason),
        (audited.decision, audited.reason)
    );

    // From the eleventh of yuri's decisions on, before the twenty-first.
    let window = list_all(
        &app,
        proto::ListDecisionsRequest {
            subject_id: Some("yuri".into()),
            start_time: of_yuri[10].decided_at,
            end_time: of_yuri[20].decided_at,
            ..Default::default()
        },
    )
    .await;
    let from = of_yuri[10].decided_at.unwrap();
    let until = of_yuri[20].decided_at.unwrap();
    assert!(!window.is_empty());
    for decision in &window {
        let at = decision.decided_at.unwrap();
        assert!((at.seconds, at.nanos) >= (from.seconds, from.nanos));
        assert!((at.seconds, at.nanos) < (until.seconds, until.nanos));
    }

    for (request, field) in [
        (
            proto::ListDecisionsRequest {
                page_token: "d1.12.zz".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            proto::ListDecisionsRequest {
                page_token: "a token of ListEvents".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            proto::ListDecisionsRequest {
                subject_id: Some("no spaces".into()),
                ..Default::default()
            },
            "subject_id",
        ),
        (
            proto::ListDecisionsRequest {
                decision_id: Some("'; DROP TABLE decision_log; --".into()),
                ..Default::default()
            },
            "decision_id",
        ),
        (
            proto::ListDecisionsRequest {
                start_time: until.into(),
                end_time: from.into(),
                ..Default::default()
            },
            "end_time",
        ),
    ] {
        assert_status(
            app.audit().list_decisions(request).await,
            Code::InvalidArgument,
            field,
        );
    }
}

/// A server on a fresh PostgreSQL store whose decision log is the database at `log_url`
/// (`decision_log_database_url`), its segment files in `segments`.
async fn spawn_with_log_database(log_url: String, segments: std::path::PathBuf) -> TestApp {
    let main = Arc::new(TestDatabase::create(Backend::Postgres).await);
    TestApp::spawn_with(main, |settings| {
        settings.decision_log_database_url = Some(DatabaseUrl::new(log_url));
        settings.decision_log_dir = segments;
    })
    .await
}

/// The segment files waiting in `directory` to be shipped.
fn segment_files(directory: &std::path::Path) -> usize {
    std::fs::read_dir(directory).map_or(0, |entries| {
        entries
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().ends_with(".segment"))
            })
            .count()
    })
}

/// ListDecisions until it lists `wanted` decisions (segments ship every second), for at most
/// 30 s; the last listing.
async fn listed_when(app: &TestApp, wanted: usize) -> Vec<proto::RecordedDecision> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = match app
            .audit()
            .list_decisions(proto::ListDecisionsRequest {
                page_size: 1_000,
                ..Default::default()
            })
            .await
        {
            Ok(page) => page.into_inner().decisions,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
                Vec::new()
            }
        };
        if listed.len() >= wanted || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With a database of its own, the whole decision log is there and nothing of it in the
/// store's: the segments of logged Checks and the `require_audit` rows land in the log's
/// database, ListDecisions reads them back from it, and `assent audit prune` drops the day
/// partitions there.
#[tokio::test]
async fn a_decision_log_database_of_its_own_holds_the_whole_log() {
    let log_database = TestDatabase::create(Backend::Postgres).await;
    let segments = log_database.directory().join("segments");
    let app = spawn_with_log_database(log_database.url(), segments).await;
    app.upsert("lena", Plan::Free).await;
    let mut decided = Vec::new();
    for _ in 0..20 {
        decided.push(app.check("lena", Purpose::ModelTraining).await.decision_id);
    }
    decided.push(app.audited_check("lena", Purpose::Memory).await.decision_id);
    let listed = listed_when(&app, decided.len()).await;
    let mut listed: Vec<String> = listed.into_iter().map(|d| d.decision_id).collect();
    listed.sort();
    decided.sort();
    assert_eq!(listed, decided);

    let log = DecisionLogReader::open(&log_database).await;
    assert_eq!(log.count().await, 21);
    let main_log = app.decision_log().await;
    assert_eq!(
        main_log.count().await,
        0,
        "a decision reached the store's database"
    );
    main_log.close().await;

    // A decision of three days ago, in its own day partition, which prune drops there.
    let mut old = log.all().await.remove(0);
    old.decision_id = uuid::Uuid::now_v7().to_string();
    old.decided_at_micros -= 3 * 86_400_000_000;
    log.insert(&old).await;
    assert_eq!(log.count().await, 22);
    let output = tokio::task::spawn_blocking({
        let main_url = app.data.url();
        let log_url = log_database.url();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_assent"))
                .args(["audit", "prune", "--older-than-days", "1"])
                .env("ASSENT_DATABASE_URL", main_url)
                .env("ASSENT_DECISION_LOG_DATABASE_URL", log_url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.starts_with("dropped decision_log_"),
        "{printed} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(log.count().await, 21);
    assert!(log.row(&old.decision_id).await.is_none());
    log.close().await;
    app.stop().await;
}

/// The log's database cannot be reached (nothing listens where its URL points): the server
/// starts, Checks are answered as ever and at once, `require_audit` ones fail UNAVAILABLE
/// rather than answer unrecorded, the decisions wait in segment files, and once the database
/// is there they are shipped to it.
#[tokio::test]
async fn decisions_wait_on_disk_while_the_log_database_is_down() {
    let log_database = TestDatabase::create(Backend::Postgres).await;
    let target = tokio::net::lookup_host(authority(&log_database.url()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(target).await;
    proxy.cut();
    let log_url = log_database.url().replacen(
        authority(&log_database.url()),
        &proxy.address().to_string(),
        1,
    );
    let segments = log_database.directory().join("segments");
    let app = spawn_with_log_database(log_url, segments.clone()).await;
    app.upsert("milo", Plan::Free).await;
    let mut decided = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let answer = app.check("milo", Purpose::ModelTraining).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            (answer.decision, answer.rule.as_str()),
            (proto::Decision::Allow as i32, "T6")
        );
        decided.push(answer.decision_id);
    }
    let refused = app
        .decisions()
        .check(proto::CheckRequest {
            require_audit: true,
            ..check_request("milo", Purpose::ModelTraining)
        })
        .await
        .expect_err("answered without its audit record");
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    let status = app
        .audit()
        .list_decisions(proto::ListDecisionsRequest::default())
        .await
        .expect_err("listed a log it cannot reach");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    let deadline = Instant::now() + Duration::from_secs(20);
    while segment_files(&segments) == 0 {
        assert!(Instant::now() < deadline, "no segment file was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.restore().await;
    let listed = listed_when(&app, decided.len()).await;
    let mut listed: Vec<String> = listed.into_iter().map(|d| d.decision_id).collect();
    listed.sort();
    decided.sort();
    assert_eq!(listed, decided);
    let deadline = Instant::now() + Duration::from_secs(10);
    while segment_files(&segments) > 0 {
        assert!(Instant::now() < deadline, "a shipped segment file is left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let main_log = app.decision_log().await;
    assert_eq!(
        main_log.count().await,
        0,
        "a decision reached the store's database"
    );
    main_log.close().await;
    app.stop().await;
}

/// `host:port` of a URL such as `postgres://u:p@127.0.0.1:5432/db`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap()
}
