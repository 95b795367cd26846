//! The client crate's `LocalCache` against two replicas on PostgreSQL and Redis: a write through
//! the other replica reaches the cache within the Watch's lag; a Watch cut by a partition stops
//! answers from memory once the staleness bound passes; an expiry and a policy version's
//! effective date are honoured with no event; and a reconnect catches up from its last revision
//! (or, past the server's replay limit, forgets everything). docs/clients.md states the rules.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use assent::proto::{self, Choice, Decision, Plan, Purpose, Source};
use assent::store::testing::{Backend, TestDatabase};
use assent_client::{AnswerFrom, CacheOptions, Client, LocalCache};

use crate::proxy::FaultProxy;
use crate::{Cluster, Options, actor, percentile};

const HEARTBEAT: Duration = Duration::from_millis(100);

fn options() -> CacheOptions {
    CacheOptions {
        heartbeat_interval: HEARTBEAT,
        ..CacheOptions::default()
    }
}

async fn two_replicas(settings: Vec<(&'static str, String)>) -> Cluster {
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        settings,
        ..Options::default()
    };
    Cluster::start(database, options).await
}

/// A cache whose misses go to replica 0 and whose Watch goes to replica 0 through `proxy`
/// (directly without one); fresh before it is returned.
async fn cache_on(cluster: &Cluster, proxy: Option<&FaultProxy>) -> LocalCache {
    let client = Client::new(cluster.replicas[0].channel().await);
    let watch = match proxy {
        Some(proxy) => Client::connect(vec![
            tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.address())).unwrap(),
        ]),
        None => client.clone(),
    };
    let cache = LocalCache::start_watching(client, watch, options());
    assert!(
        cache.wait_fresh(Duration::from_secs(10)).await,
        "never fresh"
    );
    cache
}

async fn training(cache: &LocalCache, subject_id: &str) -> assent_client::Answer {
    cache
        .check(
            subject_id,
            Purpose::ModelTraining,
            None,
            Source::Conversation,
        )
        .await
        .unwrap()
}

/// 300 trials: the answer is in memory, the other replica takes a write that turns it, and
/// the cache answers the new decision within the Watch's delivery lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_another_replica_flips_the_cached_answer_within_the_watch_lag() {
    let mut cluster = two_replicas(Vec::new()).await;
    cluster.upsert(1, "flipper", Plan::Free).await;
    let cache = cache_on(&cluster, None).await;
    let mut choice = Choice::Granted;
    let mut lags = Vec::new();
    for trial in 0..300 {
        training(&cache, "flipper").await;
        let held = training(&cache, "flipper").await;
        assert_eq!(held.from, AnswerFrom::Memory, "trial {trial}");
        choice = crate::flip(choice);
        let expected = if choice == Choice::Granted {
            Decision::Allow
        } else {
            Decision::Deny
        };
        assert_ne!(held.response.decision(), expected, "trial {trial}");
        cluster
            .set_choice(1, "flipper", Purpose::ModelTraining, choice)
            .await
            .unwrap();
        let written = Instant::now();
        loop {
            if training(&cache, "flipper").await.response.decision() == expected {
                lags.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "trial {trial}: never reflected"
            );
        }
    }
    lags.sort();
    eprintln!(
        "local cache: a write on the other replica reached the cache over {} trials: p50 {:?}, \
         p99 {:?}, max {:?}",
        lags.len(),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().unwrap()
    );
    let stats = cache.stats();
    assert!(stats.hits >= 300 && stats.invalidations >= 300, "{stats:?}");
    // An open Watch holds a server's graceful shutdown: the cache goes first.
    drop(cache);
    cluster.stop();
}

/// The Watch partitioned (its connection swallowed, nothing refused): 10,000 answers held in
/// memory (100 subjects, 100 conversations each, training allowed), every subject opts out
/// through the other replica, and once the staleness bound has passed no check is answered
/// from memory: 0 stale ALLOWs in 10,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_watch_stops_answers_from_memory_once_the_bound_passes() {
    let mut cluster = two_replicas(Vec::new()).await;
    let target = cluster.replicas[0].address.parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    let subjects: Vec<String> = (0..100).map(|index| format!("held-{index}")).collect();
    for subject_id in &subjects {
        cluster.upsert(1, subject_id, Plan::Free).await;
    }
    let cache = Arc::new(cache_on(&cluster, Some(&proxy)).await);
    let questions: Arc<Vec<(String, String)>> = Arc::new(
        subjects
            .iter()
            .flat_map(|subject_id| {
                (0..100).map(move |index| (subject_id.clone(), format!("c-{index}")))
            })
            .collect(),
    );
    let filled = Instant::now();
    let answers = ask_all(&cache, &questions).await;
    assert!(
        answers
            .iter()
            .all(|(decision, _)| *decision == Decision::Allow)
    );
    eprintln!(
        "local cache: 10,000 answers fetched in {:?}",
        filled.elapsed()
    );
    let answers = ask_all(&cache, &questions).await;
    assert!(
        answers
            .iter()
            .all(|(decision, from)| *decision == Decision::Allow && *from == AnswerFrom::Memory)
    );

    proxy.swallow().await;
    let cut = Instant::now();
    for subject_id in &subjects {
        cluster
            .set_choice(1, subject_id, Purpose::ModelTraining, Choice::Refused)
            .await
            .unwrap();
    }
    let bound = HEARTBEAT * 3;
    let opted_out = cut.elapsed();
    tokio::time::sleep((bound + Duration::from_millis(20)).saturating_sub(opted_out)).await;
    assert!(!cache.is_fresh());
    let answers = ask_all(&cache, &questions).await;
    let stale_allows = answers
        .iter()
        .filter(|(decision, _)| *decision == Decision::Allow)
        .count();
    let from_memory = answers
        .iter()
        .filter(|(_, from)| *from == AnswerFrom::Memory)
        .count();
    eprintln!(
        "local cache: watch partitioned, 100 opt-outs in {opted_out:?}; after the {bound:?} \
         bound, {} checks: {stale_allows} ALLOW, {from_memory} from memory",
        answers.len()
    );
    assert_eq!((stale_allows, from_memory), (0, 0));
    assert!(cache.stats().stale_answers >= 10_000);

    // Given back, the Watch resumes: the opt-outs it missed forget their subjects, and memory
    // answers again, with the new decisions.
    proxy.restore().await;
    assert!(cache.wait_fresh(Duration::from_secs(10)).await);
    let answers = ask_all(&cache, &questions).await;
    assert!(
        answers
            .iter()
            .all(|(decision, _)| *decision == Decision::Deny)
    );
    let answers = ask_all(&cache, &questions).await;
    assert!(
        answers
            .iter()
            .all(|(decision, from)| *decision == Decision::Deny && *from == AnswerFrom::Memory)
    );
    // An open Watch holds a server's graceful shutdown: the cache goes first.
    drop(cache);
    cluster.stop();
}

/// Every question, asked from four tasks at once: (decision, where from), in order.
async fn ask_all(
    cache: &Arc<LocalCache>,
    questions: &Arc<Vec<(String, String)>>,
) -> Vec<(Decision, AnswerFrom)> {
    let tasks = 4;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (cache, questions) = (cache.clone(), questions.clone());
        handles.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (subject_id, conversation_id) in questions.iter().skip(task).step_by(tasks) {
                let answer = cache
                    .check(
                        subject_id,
                        Purpose::ModelTraining,
                        Some(conversation_id),
                        Source::Conversation,
                    )
                    .await
                    .unwrap();
                answers.push((answer.response.decision(), answer.from));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for handle in handles {
        answers.extend(handle.await.unwrap());
    }
    answers
}

/// No event comes when a granted consent expires (the expiry sweep is off) or when a policy
/// version takes effect: the cache stops using the answers at their `valid_until`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_and_an_effective_date_are_honoured_with_no_event() {
    let mut cluster = two_replicas(vec![("ASSENT_CONSENT_EXPIRY_SWEEP_MS", "0".into())]).await;
    cluster.upsert(1, "expiring", Plan::Free).await;
    let expires = SystemTime::now() + Duration::from_millis(1_500);
    cluster.subjects[1]
        .set_choice(proto::SetChoiceRequest {
            subject_id: "expiring".into(),
            purpose: Purpose::MarketingEmail as i32,
            choice: Choice::Granted as i32,
            expires_at: Some(expires.into()),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cache = cache_on(&cluster, None).await;
    let email = || {
        cache.check(
            "expiring",
            Purpose::MarketingEmail,
            None,
            Source::Conversation,
        )
    };
    let asked = email().await.unwrap();
    assert_eq!(asked.response.decision(), Decision::Allow);
    assert!(asked.response.valid_until.is_some());
    assert_eq!(email().await.unwrap().from, AnswerFrom::Memory);
    sleep_until(expires).await;
    let expired = email().await.unwrap();
    assert_eq!(
        (expired.response.decision(), expired.from),
        (Decision::Deny, AnswerFrom::Server)
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.expirations, stats.invalidations),
        (1, 0),
        "{stats:?}"
    );

    // A version excluding the free plan from training, in force two seconds from now: its
    // application forgets everything (an event), its effective date is an instant only.
    cluster.upsert(1, "trained", Plan::Free).await;
    let effective = SystemTime::now() + Duration::from_secs(2);
    let source = include_str!("../../policies/2026-01-01.toml")
        .replacen("version = \"2026-01-01\"", "version = \"2026-12-cache\"", 1)
        .replacen(
            "effective_from = 2026-01-01",
            &format!(
                "effective_from = {}",
                humantime::format_rfc3339_micros(effective)
            ),
            1,
        )
        .replacen(
            "plan = [\"TEAM\", \"ENTERPRISE\", \"API_PAID\"]",
            "plan = [\"FREE\", \"TEAM\", \"ENTERPRISE\", \"API_PAID\"]",
            1,
        );
    let mut policies =
        proto::policies_client::PoliciesClient::new(cluster.replicas[1].channel().await);
    policies
        .apply_policy(proto::ApplyPolicyRequest {
            source,
            actor: actor(),
        })
        .await
        .unwrap();
    let applied = Instant::now();
    while cache.stats().invalidations == 0 {
        assert!(
            applied.elapsed() < Duration::from_secs(5),
            "no policy event"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = training(&cache, "trained").await;
    assert_eq!(before.response.decision(), Decision::Allow);
    assert_eq!(
        before.response.valid_until,
        Some(prost_types::Timestamp::from(effective)).map(|at| prost_types::Timestamp {
            nanos: at.nanos / 1_000 * 1_000,
            ..at
        })
    );
    assert_eq!(training(&cache, "trained").await.from, AnswerFrom::Memory);
    sleep_until(effective).await;
    let after = training(&cache, "trained").await;
    assert_eq!(
        (after.response.decision(), after.from),
        (Decision::Deny, AnswerFrom::Server)
    );
    assert_eq!(cache.stats().invalidations, 1);
    // An open Watch holds a server's graceful shutdown: the cache goes first.
    drop(cache);
    cluster.stop();
}

async fn sleep_until(instant: SystemTime) {
    let wait = instant
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
}

/// The Watch cut while a subject changes: on its return it replays what it missed from its last
/// revision (the changed subject is forgotten, the unchanged one still answered from memory).
/// Past the server's replay limit it cannot: the cache forgets everything and starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_catches_up_from_its_last_revision() {
    let mut cluster = two_replicas(vec![("ASSENT_WATCH_MAX_REPLAY", "20".into())]).await;
    let target = cluster.replicas[0].address.parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    for subject_id in ["changed", "unchanged"] {
        cluster.upsert(1, subject_id, Plan::Free).await;
    }
    let cache = cache_on(&cluster, Some(&proxy)).await;
    for subject_id in ["changed", "unchanged"] {
        training(&cache, subject_id).await;
        assert_eq!(training(&cache, subject_id).await.from, AnswerFrom::Memory);
    }

    // Five writes starting with an opt-out: the last is an opt-out.
    let mut choice = Choice::Refused;
    changes_while_cut(&mut cluster, &proxy, &cache, 5, &mut choice).await;
    let changed = training(&cache, "changed").await;
    assert_eq!(
        (changed.response.decision(), changed.from),
        (Decision::Deny, AnswerFrom::Server)
    );
    let unchanged = training(&cache, "unchanged").await;
    assert_eq!(
        (unchanged.response.decision(), unchanged.from),
        (Decision::Allow, AnswerFrom::Memory)
    );
    assert!(cache.stats().reconnects >= 1);

    // More changes missed than the server replays (20): told to resync, the cache forgets
    // everything and watches from the latest revision.
    changes_while_cut(&mut cluster, &proxy, &cache, 25, &mut choice).await;
    let unchanged = training(&cache, "unchanged").await;
    assert_eq!(
        (unchanged.response.decision(), unchanged.from),
        (Decision::Allow, AnswerFrom::Server)
    );
    // An open Watch holds a server's graceful shutdown: the cache goes first.
    drop(cache);
    cluster.stop();
}

/// Cuts the cache's Watch, waits until the cache knows, toggles the training choice of
/// "changed" `writes` times through the other replica (from `choice`), and gives the Watch back
/// until the cache is fresh again.
async fn changes_while_cut(
    cluster: &mut Cluster,
    proxy: &FaultProxy,
    cache: &LocalCache,
    writes: usize,
    choice: &mut Choice,
) {
    proxy.cut();
    let cut = Instant::now();
    while cache.is_fresh() {
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "the cut went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..writes {
        cluster
            .set_choice(1, "changed", Purpose::ModelTraining, *choice)
            .await
            .unwrap();
        *choice = crate::flip(*choice);
    }
    proxy.restore().await;
    assert!(cache.wait_fresh(Duration::from_secs(10)).await);
}
