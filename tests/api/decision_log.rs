//! The decision log: what is recorded, when it is durable, and what happens when it cannot be.

use assent::decision_log::LogMode;
use assent::proto::{self, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, assert_status, check_request};

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
