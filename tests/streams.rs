//! Streams are bounded. Against a real `assent serve` process (embedded store, bearer tokens),
//! one HTTP/2 connection opens 10,000 Watches from revision zero, then 10,000 StreamChecks that
//! never send a check, then 10,000 health Watches without credentials. Each time the caller's
//! cap is served and every stream beyond it gets RESOURCE_EXHAUSTED naming the limit; the idle
//! StreamChecks are ended with UNAVAILABLE; the server's resident memory grows by less than
//! 64 MiB; and another caller's Checks, on their own connection, are answered throughout
//! (their latency is printed, not asserted: the machine running the test is shared).

#[path = "support/process.rs"]
mod process;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assent::proto::changes_client::ChangesClient;
use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Plan, Purpose};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use process::ServerProcess;

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "assent";
const SECRET: &str = "a-development-secret-of-at-least-32-bytes";

/// Streams each attack opens.
const ATTEMPTS: usize = 10_000;
/// `max_streams_per_caller` of the server under attack (its default).
const CAP: usize = 64;
/// `stream_idle_timeout_ms` of the server under attack.
const IDLE: Duration = Duration::from_secs(2);
/// Subjects written before the attack (two changes each), so a Watch from zero replays.
const SUBJECTS: usize = 200;
/// The most the server's resident memory may grow during the attack.
const MAX_GROWTH: u64 = 64 * 1024 * 1024;

fn token(sub: &str, scope: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "exp": now + 600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn check(subject_id: &str) -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: subject_id.into(),
        purpose: Purpose::ModelTraining as i32,
        ..Default::default()
    }
}

fn watch_from_zero() -> proto::WatchRequest {
    proto::WatchRequest {
        since_revision: "r1.0".into(),
        ..Default::default()
    }
}

/// Opens `count` calls at once (each `open(index)`): the ones answered, and the refusals.
async fn open_all<T, F, Fut>(count: usize, open: F) -> (Vec<T>, Vec<Status>)
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    let mut calls = JoinSet::new();
    for _ in 0..count {
        calls.spawn(open());
    }
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    while let Some(outcome) = calls.join_next().await {
        match outcome.unwrap() {
            Ok(stream) => accepted.push(stream),
            Err(status) => refused.push(status),
        }
    }
    (accepted, refused)
}

/// Every refusal is RESOURCE_EXHAUSTED from the per-caller stream limit, naming its setting.
#[track_caller]
fn assert_refused_by_the_cap(refused: &[Status], what: &str) {
    assert_eq!(refused.len(), ATTEMPTS - CAP, "{what}: refusals");
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
        assert!(
            status.message().starts_with("streams: ")
                && status.message().contains("max_streams_per_caller"),
            "{what}: {status:?}"
        );
    }
}

/// Another caller's Checks on a connection of its own, one at a time until `stop`: the
/// latency of each, all answered.
fn checks_until(
    channel: Channel,
    gateway: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut decisions = DecisionsClient::new(channel);
        let mut latencies = Vec::new();
        let mut index = 0;
        while !stop.load(Ordering::Relaxed) {
            let subject_id = format!("subject-{}", index % SUBJECTS);
            index += 1;
            let started = Instant::now();
            let answer = decisions
                .check(with_token(check(&subject_id), &gateway))
                .await;
            latencies.push(started.elapsed());
            let answer = answer.expect("another caller's check during the attack");
            assert!(!answer.into_inner().degraded);
        }
        latencies
    })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_unbounded_streams() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[
        ("ASSENT_DATA_DIR", data.path().to_str().unwrap().to_owned()),
        ("ASSENT_JWT_HS256_SECRET", SECRET.to_owned()),
        ("ASSENT_JWT_ISSUER", ISSUER.to_owned()),
        ("ASSENT_JWT_AUDIENCE", AUDIENCE.to_owned()),
        ("ASSENT_MAX_STREAMS_PER_CALLER", CAP.to_string()),
        (
            "ASSENT_STREAM_IDLE_TIMEOUT_MS",
            IDLE.as_millis().to_string(),
        ),
        ("ASSENT_DECISION_LOG", "off".to_owned()),
    ]);
    let attacker = token("attacker", "decisions:check changes:watch");
    let gateway = token("gateway", "decisions:check");
    let writer = token("billing", "subjects:write");

    // The change log a Watch from zero replays.
    let mut subjects = SubjectsClient::new(server.channel().await);
    for index in 0..SUBJECTS {
        let subject_id = format!("subject-{index}");
        let upsert = proto::UpsertSubjectRequest {
            subject_id: subject_id.clone(),
            plan: Some(Plan::Free as i32),
            actor: Some(proto::Actor {
                operator_id: "billing:job".into(),
                reason: "sign-up".into(),
            }),
            ..Default::default()
        };
        subjects
            .upsert_subject(with_token(upsert, &writer))
            .await
            .unwrap();
        let choice = proto::SetChoiceRequest {
            subject_id,
            purpose: Purpose::ModelTraining as i32,
            choice: proto::Choice::Refused as i32,
            actor: Some(proto::Actor {
                operator_id: "user".into(),
                reason: "settings page".into(),
            }),
            ..Default::default()
        };
        subjects
            .set_choice(with_token(choice, &writer))
            .await
            .unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let victim = checks_until(server.channel().await, gateway, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.resident_bytes();
    let mut peak = before;

    // The attacker's one connection.
    let attack = server.channel().await;

    // Without credentials, no stream but health: UNAUTHENTICATED, before any handler.
    let (accepted, refused) = open_all(1_000, || {
        let mut changes = ChangesClient::new(attack.clone());
        async move {
            changes
                .watch(watch_from_zero())
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert!(accepted.is_empty());
    assert!(
        refused
            .iter()
            .all(|status| status.code() == Code::Unauthenticated),
        "{:?}",
        refused.first()
    );

    // 10,000 Watches from revision zero: the cap's worth replay, the rest are refused.
    let started = Instant::now();
    let (mut watches, refused) = open_all(ATTEMPTS, || {
        let mut changes = ChangesClient::new(attack.clone());
        let request = with_token(watch_from_zero(), &attacker);
        async move {
            changes
                .watch(request)
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert_eq!(watches.len(), CAP, "Watches served");
    assert_refused_by_the_cap(&refused, "Watch");
    for watch in &mut watches {
        let first = watch.message().await.unwrap().unwrap();
        assert!(
            matches!(first.event, Some(proto::watch_response::Event::Change(_))),
            "{first:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak = peak.max(server.resident_bytes());
    println!(
        "10,000 Watches opened in {:?}; server resident memory {} MiB",
        started.elapsed(),
        server.resident_bytes() >> 20
    );
    // Closing them gives their places back.
    drop(watches);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 10,000 StreamChecks that never send a check.
    let started = Instant::now();
    let (mut stream_checks, refused) = open_all(ATTEMPTS, || {
        let mut decisions = DecisionsClient::new(attack.clone());
        let request = with_token(
            futures_util::stream::pending::<proto::CheckRequest>(),
            &attacker,
        );
        async move {
            decisions
                .stream_check(request)
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert_eq!(stream_checks.len(), CAP, "StreamChecks served");
    assert_refused_by_the_cap(&refused, "StreamCheck");
    peak = peak.max(server.resident_bytes());
    println!(
        "10,000 StreamChecks opened in {:?}; server resident memory {} MiB",
        started.elapsed(),
        server.resident_bytes() >> 20
    );
    // Idle, each is ended by the server with a status saying so.
    for stream_check in &mut stream_checks {
        let status = tokio::time::timeout(IDLE * 5, stream_check.message())
            .await
            .expect("an idle StreamCheck is ended")
            .expect_err("an idle StreamCheck ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().starts_with("idle: "), "{status:?}");
    }
    drop(stream_checks);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 10,000 health Watches without credentials: counted by address, capped the same.
    let started = Instant::now();
    let (mut health_watches, refused) = open_all(ATTEMPTS, || {
        let mut health = HealthClient::new(attack.clone());
        async move {
            health
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert_eq!(health_watches.len(), CAP, "health Watches served");
    assert_refused_by_the_cap(&refused, "health Watch");
    for watch in &mut health_watches {
        watch.message().await.unwrap().unwrap();
    }
    peak = peak.max(server.resident_bytes());
    println!(
        "10,000 health Watches opened in {:?}; server resident memory {} MiB",
        started.elapsed(),
        server.resident_bytes() >> 20
    );

    stop.store(true, Ordering::Relaxed);
    let mut latencies = victim.await.unwrap();
    latencies.sort();
    drop(health_watches);
    let growth = peak.saturating_sub(before);
    println!(
        "another caller's Checks during the attack: {} answered, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    println!(
        "server resident memory: {} MiB before, {} MiB at the peak (+{} KiB)",
        before >> 20,
        peak >> 20,
        growth >> 10
    );
    assert!(
        growth < MAX_GROWTH,
        "the server grew by {growth} bytes under the attack"
    );
    let metrics = process::scrape(&server.admin_address).await;
    let refused_streams = metrics
        .get("assent_limited_requests_total{limit=\"streams_per_caller\"}")
        .copied()
        .unwrap_or_default();
    assert_eq!(refused_streams, (3 * (ATTEMPTS - CAP)) as f64);
    // The idle StreamChecks (and any Watch whose blocked answers waited out the limit).
    let ended_idle = metrics
        .get("assent_limited_requests_total{limit=\"stream_idle\"}")
        .copied()
        .unwrap_or_default();
    assert!(ended_idle >= CAP as f64, "{ended_idle} streams ended idle");
}
