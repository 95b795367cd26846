//! The decision log: what is recorded, when it is durable, and what happens when it cannot be.

use assent::decision_log::LogMode;
use assent::proto::{self, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, check_request};

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
    let mut connection = restarted.direct_connection().await;
    assert_eq!(connection.count("decision_log").await, 250);
    let row = connection.decision_row(&single.decision_id).await.unwrap();
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
    connection.close().await;
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
    let mut connection = app.direct_connection().await;
    let before = connection.count("decision_log").await;
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
    assert_eq!(connection.count("decision_log").await, before + 1);
    connection.close().await;

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
    let mut connection = restarted.direct_connection().await;
    assert_eq!(connection.count("decision_log").await, before + 8);
    let full_row = connection.decision_row(&full.decision_id).await.unwrap();
    assert_eq!(full_row.2, "T6");
    let rows = connection.decision_rows_of("bea").await;
    assert_eq!(rows, vec![full_row; 8]);
    connection.close().await;
}

/// With the log off, only `require_audit` checks are recorded, and each one is durable by the
/// time its answer arrives.
#[tokio::test]
async fn a_require_audit_check_answers_after_its_row_is_durable() {
    let app = TestApp::spawn_adjusted(|settings| settings.decision_log = LogMode::Off).await;
    app.upsert("vera", Plan::Pro).await;
    let mut connection = app.direct_connection().await;
    for _ in 0..5 {
        let audited = app
            .decisions()
            .check(proto::CheckRequest {
                require_audit: true,
                ..check_request("vera", Purpose::ModelTraining)
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            connection
                .decision_row(&audited.decision_id)
                .await
                .is_some()
        );
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
    assert_eq!(connection.count("decision_log").await, 25);
    assert!(
        connection
            .decision_row(&unaudited.decision_id)
            .await
            .is_none()
    );
    for result in &audited_batch.results {
        assert!(connection.decision_row(&result.decision_id).await.is_some());
    }
    connection.close().await;
}

#[tokio::test]
async fn deny_only_records_only_denials() {
    let app = TestApp::spawn_adjusted(|settings| settings.decision_log = LogMode::DenyOnly).await;
    app.upsert("walt", Plan::Enterprise).await;
    let allowed = app.check("walt", Purpose::ServiceDelivery).await;
    let denied = app.check("walt", Purpose::ModelTraining).await;
    let data = app.stop().await;
    let restarted = TestApp::spawn_on(data).await;
    let mut connection = restarted.direct_connection().await;
    assert!(connection.decision_row(&denied.decision_id).await.is_some());
    assert!(
        connection
            .decision_row(&allowed.decision_id)
            .await
            .is_none()
    );
    assert_eq!(connection.count("decision_log").await, 1);
    connection.close().await;
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
    let audited = app
        .decisions()
        .check(proto::CheckRequest {
            require_audit: true,
            ..check_request("xena", Purpose::ModelTraining)
        })
        .await
        .unwrap()
        .into_inner();
    let mut connection = app.direct_connection().await;
    assert!(
        connection
            .decision_row(&audited.decision_id)
            .await
            .is_some()
    );
    connection.close().await;
}
