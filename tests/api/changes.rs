//! Changes.Watch: every committed change once, in revision order, across a reconnect; the
//! decisions each change flipped; heartbeats; and revisions that cannot be resumed from.

use std::time::Duration;

use assent::proto::{self, Choice, Decision, Plan, Purpose};
use assent::revision::Revision;
use assent::store::testing::Backend;
use tonic::Code;

use crate::helpers::{TestApp, actor, assert_status};

/// How many writers write at once, and how many changes each makes.
const WRITERS: usize = 8;
const CHANGES_PER_WRITER: usize = 1_250;
const SUBJECTS_PER_WRITER: usize = 25;

/// One writer's changes: its subjects created, then their training choice toggled, each write
/// a change. Returns the revision of every write.
async fn write_changes(app: &TestApp, writer: usize) -> Vec<u64> {
    let mut subjects = app.subjects();
    let mut revisions = Vec::with_capacity(CHANGES_PER_WRITER);
    for index in 0..CHANGES_PER_WRITER {
        let subject_id = format!("w{writer}-s{}", index % SUBJECTS_PER_WRITER);
        let response = if index < SUBJECTS_PER_WRITER {
            subjects
                .upsert_subject(proto::UpsertSubjectRequest {
                    subject_id,
                    plan: Some(Plan::Free as i32),
                    actor: actor(),
                    ..Default::default()
                })
                .await
        } else {
            // Rounds alternate REFUSED, GRANTED, REFUSED... so every write changes the choice.
            let round = index / SUBJECTS_PER_WRITER;
            let choice = if round % 2 == 1 {
                Choice::Refused
            } else {
                Choice::Granted
            };
            subjects
                .set_choice(proto::SetChoiceRequest {
                    subject_id,
                    purpose: Purpose::ModelTraining as i32,
                    choice: choice as i32,
                    actor: actor(),
                    ..Default::default()
                })
                .await
        };
        let response = response.unwrap().into_inner();
        assert!(
            response.changed,
            "every write of the test changes something"
        );
        revisions.push(
            Revision::parse_token(&response.revision)
                .unwrap()
                .sequence(),
        );
    }
    revisions
}

/// Reads changes from a stream until `until` of them are in `seen`.
async fn read_changes(
    stream: &mut tonic::Streaming<proto::WatchResponse>,
    seen: &mut Vec<proto::ChangeEvent>,
    until: usize,
) {
    while seen.len() < until {
        let message = stream
            .message()
            .await
            .expect("the watch stream failed")
            .expect("the watch stream ended");
        if let Some(proto::watch_response::Event::Change(change)) = message.event {
            seen.push(change);
        }
    }
}

async fn watch(app: &TestApp, since: &str) -> tonic::Streaming<proto::WatchResponse> {
    app.changes()
        .watch(proto::WatchRequest {
            since_revision: since.to_owned(),
            heartbeat_interval_ms: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The acceptance test: 10,000 changes from several writers while a watcher reads from the
/// start, dropping its stream midway and resuming from the last revision it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_every_change_once_in_order_across_a_reconnect() {
    // The writers write as fast as the store commits; one caller's write rate limit (1,000 a
    // second by default) is not what this test is about.
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.writes_per_second = 0;
    })
    .await;
    let total = WRITERS * CHANGES_PER_WRITER;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let app = &app;
            async move { write_changes(app, writer).await }
        })
        .collect();
    let watcher = async {
        let mut seen = Vec::with_capacity(total);
        let mut first = watch(&app, "").await;
        read_changes(&mut first, &mut seen, total / 2).await;
        // The reconnect: the first stream is dropped, and a new one resumes after the last
        // revision seen.
        drop(first);
        let resume_from = seen.last().unwrap().revision.clone();
        let mut second = watch(&app, &resume_from).await;
        read_changes(&mut second, &mut seen, total).await;
        seen
    };
    let (written, seen) = tokio::time::timeout(
        Duration::from_secs(300),
        futures_util::future::join(futures_util::future::join_all(writers), watcher),
    )
    .await
    .expect("writing and watching 10,000 changes took over 5 minutes");

    let mut written: Vec<u64> = written.into_iter().flatten().collect();
    written.sort_unstable();
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(written, expected, "the writes made revisions 1..={total}");
    let seen_revisions: Vec<u64> = seen
        .iter()
        .map(|change| Revision::parse_token(&change.revision).unwrap().sequence())
        .collect();
    assert_eq!(
        seen_revisions, expected,
        "the watcher saw every change exactly once, in revision order"
    );

    // Each change is told whole: a refusal on the free plan flips training ALLOW → DENY.
    let refusal = seen
        .iter()
        .find(|change| change.after_json == "\"REFUSED\"" && change.before_json == "\"GRANTED\"")
        .expect("a refusal was watched");
    assert_eq!(refusal.before_json, "\"GRANTED\"");
    assert_eq!(refusal.policy_version, "2026-01-01");
    let training: Vec<_> = refusal
        .flipped
        .iter()
        .filter(|flip| flip.purpose == Purpose::ModelTraining as i32)
        .collect();
    assert_eq!(training.len(), 1, "{:?}", refusal.flipped);
    assert_eq!(
        (training[0].before, training[0].after),
        (Decision::Allow as i32, Decision::Deny as i32)
    );
    assert_eq!(
        (
            training[0].before_rule.as_str(),
            training[0].after_rule.as_str()
        ),
        ("T6", "T5")
    );
    let creation = &seen[0];
    assert_eq!(creation.kind, "subject_upserted");
    assert_eq!(creation.before_json, "null");
    let after: serde_json::Value = serde_json::from_str(&creation.after_json).unwrap();
    assert_eq!(after["plan"], "FREE");
    app.stop().await;
}

#[tokio::test]
async fn the_purposes_filter_sends_only_flips_and_heartbeats_advance() {
    let app = TestApp::spawn().await;
    app.upsert("ada", Plan::Free).await;
    // Analytics cookies: consent granted flips ANALYTICS_COOKIES, not training.
    let cookies = app
        .set_choice("ada", Purpose::AnalyticsCookies, Choice::Granted)
        .await
        .unwrap();
    let opt_out = app
        .set_choice("ada", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    let mut stream = app
        .changes()
        .watch(proto::WatchRequest {
            purposes: vec![Purpose::ModelTraining as i32],
            heartbeat_interval_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut changes = Vec::new();
    let heartbeat = loop {
        let message = stream.message().await.unwrap().unwrap();
        match message.event.unwrap() {
            proto::watch_response::Event::Change(change) => changes.push(change),
            proto::watch_response::Event::Heartbeat(heartbeat) => break heartbeat,
        }
    };
    // The creation flips training DENY (unknown subject) → ALLOW, the opt-out ALLOW → DENY;
    // the cookie consent flips no training decision and is left out.
    let kinds: Vec<&str> = changes.iter().map(|change| change.kind.as_str()).collect();
    assert_eq!(kinds, ["subject_upserted", "choice_set"]);
    assert_eq!(changes[1].revision, opt_out);
    assert!(
        changes
            .iter()
            .flat_map(|change| &change.flipped)
            .all(|flip| flip.purpose == Purpose::ModelTraining as i32)
    );
    assert_eq!(changes[0].flipped[0].before_rule, "G1");
    assert_eq!(changes[0].flipped[0].after_rule, "T6");
    assert_ne!(cookies, opt_out);
    assert_eq!(
        heartbeat.revision, opt_out,
        "the heartbeat carries the position"
    );

    // A change while watching arrives without a new call.
    app.set_choice("ada", Purpose::ModelTraining, Choice::Granted)
        .await
        .unwrap();
    let next = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the new change arrives")
            .unwrap()
            .unwrap();
        if let Some(proto::watch_response::Event::Change(change)) = message.event {
            break change;
        }
    };
    assert_eq!(next.flipped[0].after, Decision::Allow as i32);
    app.stop().await;
}

#[tokio::test]
async fn conversation_changes_flip_the_answer_about_that_conversation() {
    let app = TestApp::spawn().await;
    app.upsert("ada", Plan::Free).await;
    app.set_choice("ada", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    app.rate("ada", "c-1", proto::Rating::ThumbsUp).await;
    let mut stream = watch(&app, "r1.2").await;
    let mut seen = Vec::new();
    read_changes(&mut stream, &mut seen, 1).await;
    let feedback = &seen[0];
    assert_eq!(feedback.kind, "feedback_recorded");
    assert_eq!(feedback.conversation_id, "c-1");
    let flip = &feedback.flipped[0];
    assert_eq!(flip.purpose, Purpose::ModelTraining as i32);
    assert_eq!(flip.conversation_id, "c-1");
    assert_eq!(
        (flip.before_rule.as_str(), flip.after_rule.as_str()),
        ("T5", "T3")
    );
    app.stop().await;
}

#[tokio::test]
async fn revisions_outside_the_change_log_ask_for_a_resync() {
    let app = TestApp::spawn().await;
    for subject in ["a", "b", "c"] {
        app.upsert(subject, Plan::Pro).await;
    }
    let watch = |since: &str| {
        let mut changes = app.changes();
        let request = proto::WatchRequest {
            since_revision: since.to_owned(),
            ..Default::default()
        };
        async move { changes.watch(request).await }
    };
    assert_status(
        watch("r1.9").await,
        Code::FailedPrecondition,
        "since_revision",
    );
    assert_status(watch("7").await, Code::InvalidArgument, "since_revision");
    assert!(watch("r1.3").await.is_ok());
    // The change log's start moves on (the oldest events archived away, the append-only guard
    // lifted for it): a revision before it can no longer be resumed from.
    let mut database = app.direct_connection().await;
    let lift_guard = match app.backend() {
        Backend::Sqlite => "DROP TRIGGER audit_events_append_only_delete",
        Backend::Postgres => "DROP TRIGGER audit_events_append_only ON audit_events",
    };
    database.execute(lift_guard).await.unwrap();
    database
        .execute("DELETE FROM audit_events WHERE sequence <= 2")
        .await
        .unwrap();
    let status = watch("r1.1").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("resync"), "{}", status.message());
    assert!(watch("r1.2").await.is_ok());
    let bad_purpose = app
        .changes()
        .watch(proto::WatchRequest {
            purposes: vec![0],
            ..Default::default()
        })
        .await;
    assert_status(bad_purpose, Code::InvalidArgument, "purposes[0]");
    let bad_interval = app
        .changes()
        .watch(proto::WatchRequest {
            heartbeat_interval_ms: 5,
            ..Default::default()
        })
        .await;
    assert_status(bad_interval, Code::InvalidArgument, "heartbeat_interval_ms");
    let both_starts = app
        .changes()
        .watch(proto::WatchRequest {
            since_revision: "r1.2".into(),
            from_latest: true,
            ..Default::default()
        })
        .await;
    assert_status(both_starts, Code::InvalidArgument, "from_latest");
    app.stop().await;
}

/// A watch from the latest revision sends only what comes after it, starting with a heartbeat
/// at once; a watch that replays sends its heartbeat as soon as the replay is done, long before
/// its interval (a client's cache is fresh from that moment).
#[tokio::test]
async fn a_watch_says_at_once_when_it_has_caught_up() {
    let app = TestApp::spawn().await;
    let first = app.upsert("before-1", Plan::Free).await;
    let latest = app.upsert("before-2", Plan::Free).await;
    let mut from_latest = app
        .changes()
        .watch(proto::WatchRequest {
            from_latest: true,
            heartbeat_interval_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let message = tokio::time::timeout(Duration::from_secs(5), from_latest.message())
        .await
        .expect("the first heartbeat comes at once, not after the interval")
        .unwrap()
        .unwrap();
    match message.event {
        Some(proto::watch_response::Event::Heartbeat(heartbeat)) => {
            assert_eq!(heartbeat.revision, latest);
        }
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    let after = app.upsert("after", Plan::Free).await;
    let mut replaying = app
        .changes()
        .watch(proto::WatchRequest {
            since_revision: first,
            heartbeat_interval_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    let caught_up = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), replaying.message())
            .await
            .expect("the heartbeat after the replay comes at once")
            .unwrap()
            .unwrap();
        match message.event.unwrap() {
            proto::watch_response::Event::Change(change) => replayed.push(change.revision),
            proto::watch_response::Event::Heartbeat(heartbeat) => break heartbeat,
        }
    };
    assert_eq!(caught_up.revision, after);
    assert_eq!(replayed, [latest, after.clone()]);
    let next = tokio::time::timeout(Duration::from_secs(5), from_latest.message())
        .await
        .expect("the change after the start arrives")
        .unwrap()
        .unwrap();
    match next.event {
        Some(proto::watch_response::Event::Change(change)) => assert_eq!(change.revision, after),
        other => panic!("expected the new change, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn a_watch_further_back_than_its_replay_limit_is_told_to_resync() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.limits.watch_max_replay = 5;
    })
    .await;
    let mut revisions = Vec::new();
    for index in 0..8 {
        revisions.push(app.upsert(&format!("replayed-{index}"), Plan::Free).await);
    }
    let watch = |since: &str| {
        let mut changes = app.changes();
        let request = proto::WatchRequest {
            since_revision: since.to_owned(),
            ..Default::default()
        };
        async move { changes.watch(request).await }
    };
    // From the beginning: 8 changes to replay, more than 5.
    let status = watch("").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("since_revision: ")
            && message.contains("8 changes behind")
            && message.contains("watch_max_replay 5")
            && message.contains("resync"),
        "{message}"
    );
    // From 5 changes back, it replays them.
    let mut stream = watch(&revisions[2]).await.unwrap().into_inner();
    for expected in &revisions[3..] {
        match stream.message().await.unwrap().unwrap().event {
            Some(proto::watch_response::Event::Change(change)) => {
                assert_eq!(&change.revision, expected);
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }
    app.stop().await;
}
