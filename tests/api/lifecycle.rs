//! The server's life: restarts, graceful shutdown, health, reflection, and a locked store.

use std::time::Duration;

use assent::proto::{Choice, Plan, Purpose};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::{TestApp, check_request};

#[tokio::test]
async fn state_and_audit_survive_a_restart() {
    let app = TestApp::spawn().await;
    app.upsert("quinn", Plan::Free).await;
    let revision = app
        .set_choice("quinn", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    let events_before = app.all_events(None).await;
    let data = app.stop().await;

    let restarted = TestApp::spawn_on(data).await;
    let response = restarted.check("quinn", Purpose::ModelTraining).await;
    assert_eq!(
        (response.rule.as_str(), response.revision.as_str()),
        ("T5", revision.as_str())
    );
    assert_eq!(restarted.all_events(None).await, events_before);
    let report = restarted.verify_chain().await;
    assert!(report.ok);
    assert_eq!(report.events_checked, 2);
    // The chain continues where it stopped.
    restarted.upsert("rosa", Plan::Pro).await;
    let events = restarted.all_events(None).await;
    assert_eq!(events[2].prev_hash, events[1].hash);
    assert!(restarted.verify_chain().await.ok);
}

#[tokio::test]
async fn a_shutdown_lets_in_flight_calls_finish() {
    let mut app = TestApp::spawn().await;
    app.upsert("sam", Plan::Free).await;
    let (requests, outbound) = tokio::sync::mpsc::channel(16);
    let mut answers = app
        .decisions()
        .stream_check(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..10 {
        requests
            .send(check_request("sam", Purpose::ModelTraining))
            .await
            .unwrap();
        assert_eq!(answers.message().await.unwrap().unwrap().rule, "T6");
    }
    app.begin_shutdown();
    // The open stream keeps being answered while the server drains.
    for _ in 0..10 {
        requests
            .send(check_request("sam", Purpose::Memory))
            .await
            .unwrap();
        assert_eq!(answers.message().await.unwrap().unwrap().rule, "M2");
    }
    drop(requests);
    assert!(answers.message().await.unwrap().is_none());
    let data = app.stop().await;
    if let assent::store::StoreLocation::SqliteFile(path) = data.location() {
        // Closed cleanly: the WAL was checkpointed into the database file.
        let wal = path.with_extension("db-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    }
}

#[tokio::test]
async fn health_reports_every_service() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel());
    for service in [
        "",
        "assent.v1.Decisions",
        "assent.v1.Subjects",
        "assent.v1.Audit",
    ] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
}

/// On shutdown every health entry turns NOT_SERVING, not only the server-wide one: a client
/// watching one service's entry moves away too.
#[tokio::test]
async fn every_health_entry_turns_not_serving_on_shutdown() {
    let mut app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel());
    let mut watches = Vec::new();
    for service in crate::process::HEALTH_ENTRIES {
        let mut watch = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap().status();
        assert_eq!(first, ServingStatus::Serving, "{service:?}");
        watches.push((service, watch));
    }
    app.begin_shutdown();
    for (service, watch) in &mut watches {
        let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap_or_else(|_| panic!("{service:?} said nothing on shutdown"))
            .unwrap()
            .unwrap()
            .status();
        assert_eq!(next, ServingStatus::NotServing, "{service:?}");
    }
    drop(watches);
    app.stop().await;
}

/// What `grpcurl -plaintext HOST list` asks: reflection, in both protocol versions (grpcurl
/// before 1.9 speaks only v1alpha).
#[tokio::test]
async fn reflection_lists_the_three_services() {
    let app = TestApp::spawn().await;
    let expected = [
        "assent.v1.Audit",
        "assent.v1.Decisions",
        "assent.v1.Subjects",
        "grpc.health.v1.Health",
    ];

    let mut v1 = ServerReflectionClient::new(app.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in expected {
        assert!(
            names.iter().any(|name| name == service),
            "{service} missing from {names:?}"
        );
    }

    use tonic_reflection::pb::v1alpha as alpha;
    let mut v1alpha = alpha::server_reflection_client::ServerReflectionClient::new(app.channel());
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = v1alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1alpha reflection answer {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in expected {
        assert!(
            names.iter().any(|name| name == service),
            "{service} missing from {names:?}"
        );
    }
}

/// Another process holds the lock every write needs past the store's lock timeout: writes fail
/// UNAVAILABLE and leave nothing behind, decisions keep being answered, and writes succeed again
/// once the lock is gone.
#[tokio::test]
async fn writes_fail_unavailable_while_the_store_is_locked() {
    let app = TestApp::spawn().await;
    app.upsert("tara", Plan::Free).await;
    let mut intruder = app.direct_connection().await;
    intruder.hold_write_lock("audit_chain_head").await;

    let started = std::time::Instant::now();
    let refused = app
        .set_choice("tara", Purpose::ModelTraining, Choice::Refused)
        .await;
    let status = refused.expect_err("a write got through a locked store");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(app.check("tara", Purpose::ModelTraining).await.rule, "T6");

    intruder.release().await;
    assert_eq!(
        app.all_events(None).await.len(),
        1,
        "the refused write left an event"
    );
    app.set_choice("tara", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    assert_eq!(app.check("tara", Purpose::ModelTraining).await.rule, "T5");
}
