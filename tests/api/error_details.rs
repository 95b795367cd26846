//! The `google.rpc` details of refusals, decoded as a client decodes them, and the bundled
//! client retrying a call the server shed.

use std::time::{Duration, Instant};

use assent::proto::{self, Plan, Purpose};
use assent_client::{Client, Retry};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, actor, check_request, upsert_request};

#[tokio::test]
async fn a_bad_field_and_a_deleted_subject_say_which_field_and_why() {
    let app = TestApp::spawn().await;
    let status = app
        .decisions()
        .check(check_request("", Purpose::ModelTraining))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.check_error_details().expect("decodable details");
    let violations = &details
        .bad_request()
        .expect("a BadRequest")
        .field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "subject_id");
    assert!(
        status.message().ends_with(&violations[0].description),
        "{status:?}"
    );
    let info = details.error_info().expect("an ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("INVALID_FIELD", "assent")
    );
    assert_eq!(info.metadata["field"], "subject_id");
    assert!(details.retry_info().is_none());

    // A field nested in a batch: the path to it.
    let status = app
        .decisions()
        .batch_check(proto::BatchCheckRequest {
            checks: vec![
                check_request("someone", Purpose::Memory),
                check_request("someone", Purpose::Unspecified),
            ],
        })
        .await
        .unwrap_err();
    let violations = status.get_details_bad_request().expect("a BadRequest");
    assert_eq!(violations.field_violations[0].field, "checks[1].purpose");

    app.upsert("gone", Plan::Free).await;
    app.subjects()
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: "gone".into(),
            actor: actor(),
        })
        .await
        .unwrap();
    let status = app
        .subjects()
        .upsert_subject(upsert_request("gone"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let failure = status
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "SUBJECT_DELETED");
    assert_eq!(failure.violations[0].subject, "subject_id");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "SUBJECT_DELETED"
    );
    app.stop().await;
}

/// With the only admission slot held by a Watch, a Check is shed with a `RetryInfo`; the
/// bundled client waits the pause and tries again, and succeeds once the Watch has closed.
/// Without retries the same Check fails, so the success is the retry's.
#[tokio::test]
async fn a_shed_call_is_retried_by_the_client_and_succeeds() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.max_concurrent = 1;
    })
    .await;
    app.upsert("someone", Plan::Free).await;
    let watch = app.open_watch().await;

    let status = app
        .decisions()
        .check(check_request("someone", Purpose::Memory))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.check_error_details().expect("decodable details");
    let pause = details
        .retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("a RetryInfo with a delay");
    assert_eq!(pause, assent::limits::RETRY_CONCURRENCY);
    let info = details.error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "CONCURRENCY_LIMIT");
    assert_eq!(info.metadata["limit"], "max_concurrent_requests");
    let quota = details.quota_failure().expect("a QuotaFailure");
    assert_eq!(quota.violations[0].subject, "server");

    let once = Retry {
        attempts: 1,
        ..Retry::default()
    };
    let client = Client::new(app.channel()).with_retry(once);
    let refused = client
        .check(check_request("someone", Purpose::Memory))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // The Watch closes while the client is pausing between tries.
    let patient = Retry {
        attempts: 20,
        ..Retry::default()
    };
    let client = Client::new(app.channel()).with_retry(patient);
    let started = Instant::now();
    let close = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(watch);
    });
    let answer = client
        .check(check_request("someone", Purpose::Memory))
        .await
        .expect("the shed Check answered on a later try");
    assert!(!answer.rule.is_empty(), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(60));
    close.await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_callers_write_rate_says_when_its_next_write_is_admitted() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.writes_per_second = 1;
    })
    .await;
    app.upsert("first", Plan::Free).await;
    let status = app
        .subjects()
        .upsert_subject(upsert_request("second"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "WRITE_RATE_LIMIT");
    assert_eq!(info.metadata["limit"], "writes_per_second");
    let pause = status
        .get_details_retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("a RetryInfo with a delay");
    // One write a second: the next is admitted within the second.
    assert!(
        pause > Duration::ZERO && pause <= Duration::from_secs(1),
        "{pause:?}"
    );
    app.stop().await;
}

/// A StreamCheck sent nothing for longer than `stream_idle_timeout_ms` ends UNAVAILABLE, with
/// a `RetryInfo` of no pause: the caller opens another at once.
#[tokio::test]
async fn an_idle_stream_ends_unavailable_with_a_retry_at_once() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.stream_idle = Some(Duration::from_millis(100));
    })
    .await;
    let (keep_open, requests) = tokio::sync::mpsc::channel::<proto::CheckRequest>(1);
    let mut answers = app
        .decisions()
        .stream_check(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .get_details_error_info()
            .expect("an ErrorInfo")
            .reason,
        "STREAM_IDLE"
    );
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::ZERO)
    );
    drop(keep_open);
    app.stop().await;
}
