//! The limits in front of the services: load shedding, deadlines, write rate, message size,
//! open streams.

use std::time::Duration;

use assent::proto::{self, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, check_request, upsert_request, watch_request};

/// Resident memory of this process (server and clients both run in it), from /proc.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kilobytes: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kilobytes * 1024
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.max_concurrent = 4;
        settings.limits.deadline = Some(Duration::from_secs(30));
        // The held writes must wait for the lock through every wave below.
        settings.store_timeouts.write = Duration::from_secs(30);
    })
    .await;
    app.upsert("known", Plan::Free).await;
    let mut lock = app.direct_connection().await;
    lock.hold_write_lock("audit_chain_head").await;
    // Four writes take the four slots and wait for the lock.
    let held: Vec<_> = (0..4)
        .map(|index| {
            let mut subjects = app.subjects();
            tokio::spawn(async move {
                subjects
                    .upsert_subject(upsert_request(&format!("held-{index}")))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Everything else is refused while they wait: nothing queues behind them.
    let mut memory_after_wave = Vec::new();
    for _ in 0..5 {
        let wave: Vec<_> = (0..1_000)
            .map(|_| {
                let mut decisions = app.decisions();
                tokio::spawn(async move {
                    decisions
                        .check(check_request("known", Purpose::ModelTraining))
                        .await
                })
            })
            .collect();
        for call in wave {
            let status = call.await.unwrap().expect_err("a call beyond the limit");
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().starts_with("concurrency:"), "{status:?}");
        }
        memory_after_wave.push(resident_bytes());
    }
    assert!(held.iter().all(|call| !call.is_finished()));
    // 4,000 refused calls after the first wave left memory where it was (bounded; a queue
    // would have grown with every wave).
    let growth = memory_after_wave[4].saturating_sub(memory_after_wave[0]);
    assert!(
        growth < 32 * 1024 * 1024,
        "memory grew by {growth} bytes: {memory_after_wave:?}"
    );

    lock.release().await;
    for call in held {
        call.await.unwrap().expect("an admitted call succeeds");
    }
    // With the slots free again, calls are admitted.
    app.check("known", Purpose::ModelTraining).await;
    let metrics = assent::metrics::METRICS.encode();
    assert!(metrics.contains("assent_limited_requests_total{limit=\"concurrency\"}"));
    app.stop().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_is_abandoned_and_writes_nothing() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.deadline = Some(Duration::from_millis(300));
    })
    .await;
    let mut lock = app.direct_connection().await;
    lock.hold_write_lock("audit_chain_head").await;
    let status = app
        .subjects()
        .upsert_subject(upsert_request("late"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().starts_with("deadline:"), "{status:?}");
    lock.release().await;

    let missing = app
        .subjects()
        .get_subject(proto::GetSubjectRequest {
            subject_id: "late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(app.all_events(Some("late")).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn writes_beyond_a_callers_rate_are_refused_and_reads_are_not() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.writes_per_second = 5;
    })
    .await;
    let started = std::time::Instant::now();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for index in 0..30 {
        let subject = format!("rated-{index}");
        match app
            .subjects()
            .upsert_subject(upsert_request(&subject))
            .await
        {
            Ok(_) => accepted.push(subject),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().starts_with("rate:"), "{status:?}");
                refused.push(subject);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of 5, then 5 a second.
    assert!(accepted.len() >= 5, "{accepted:?}");
    assert!(
        accepted.len() as f64 <= 5.0 + 5.0 * elapsed + 1.0,
        "{} accepted in {elapsed} s",
        accepted.len()
    );
    assert!(!refused.is_empty());
    // Reads are not rate-limited; refused writes left nothing.
    for _ in 0..50 {
        app.check("rated-0", Purpose::ModelTraining).await;
    }
    for subject in &refused {
        assert!(app.all_events(Some(subject)).await.is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.max_message_bytes = 4 * 1024;
    })
    .await;
    let checks = (0..500)
        .map(|index| check_request(&format!("subject-{index}"), Purpose::Memory))
        .collect();
    let status = app
        .decisions()
        .batch_check(proto::BatchCheckRequest { checks })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // A message within the limit is served.
    app.check("subject-1", Purpose::Memory).await;
    app.stop().await;
}

#[tokio::test]
async fn a_stream_holds_its_admission_slot_until_it_ends() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.max_concurrent = 2;
    })
    .await;
    // Both are served (a heartbeat each) long after their handlers returned.
    let first = app.open_watch().await;
    let mut second = app.open_watch().await;
    let status = app
        .decisions()
        .check(check_request("someone", Purpose::Memory))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("concurrency:"), "{status:?}");
    // A watch closed by its client gives its slot back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match app
            .decisions()
            .check(check_request("someone", Purpose::Memory))
            .await
        {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.message().await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn streams_beyond_a_callers_limit_are_refused_and_a_closed_one_frees_its_place() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.max_streams_per_caller = 3;
    })
    .await;
    let open_stream_check = || {
        let mut decisions = app.decisions();
        async move {
            decisions
                .stream_check(futures_util::stream::pending::<proto::CheckRequest>())
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // Watches and StreamChecks count together.
    let (finish_first, requests) = tokio::sync::mpsc::channel::<proto::CheckRequest>(1);
    let mut first = app
        .decisions()
        .stream_check(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let _second = open_stream_check().await.unwrap();
    let _watch = app.open_watch().await;
    let status = open_stream_check().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("streams: ")
            && status.message().contains("limit of 3 streams")
            && status.message().contains("max_streams_per_caller"),
        "{status:?}"
    );
    let status = app.changes().watch(watch_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Unary calls are not streams.
    app.check("someone", Purpose::Memory).await;
    // A stream its client finishes frees its place.
    drop(finish_first);
    assert!(first.message().await.unwrap().is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let _third = loop {
        match open_stream_check().await {
            Ok(stream) => break stream,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let metrics = assent::metrics::METRICS.encode();
    assert!(metrics.contains("assent_limited_requests_total{limit=\"streams_per_caller\"}"));
    app.stop().await;
}
