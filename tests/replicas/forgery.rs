//! Whoever can write to Redis or publish on the announcement channel — a co-tenant of a shared
//! Redis, a leaked Redis password, a role that may `NOTIFY` — cannot change an answer: values
//! copied from another subject's key, forged by hand, or junk are not used (and are counted and
//! replaced), and forged announcements move nothing a caller can observe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use assent::cache::{RedisEntryKey, SharedCache, SharedSettings};
use assent::proto::{Choice, Plan, Purpose};
use assent::revision::Revision;
use assent::store::DatabaseUrl;
use assent::store::testing::{Backend, TestDatabase};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Cluster, ENTRY_KEY, Options, email_rule, flip, percentile, process, redis_url};

/// What computes the cluster's Redis key names.
fn shared(cluster: &Cluster) -> SharedCache {
    SharedCache::new(SharedSettings {
        url: DatabaseUrl::new(redis_url()),
        cluster: false,
        prefix: cluster.prefix.clone(),
        time_to_live: Duration::from_secs(600),
        timeout: Duration::from_millis(500),
        entry_key: RedisEntryKey::new(ENTRY_KEY),
    })
    .unwrap()
}

/// A value sealed as a replica seals it (the format of docs/security.md), by someone who holds
/// the entry key.
fn seal(prefix: &str, subject_id: &str, revision: u64, body: &str) -> String {
    let mut derive = Hmac::<Sha256>::new_from_slice(ENTRY_KEY.as_bytes()).unwrap();
    derive.update(b"assent redis entry mac v1");
    let mac_key = derive.finalize().into_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key).unwrap();
    for part in [prefix.as_bytes(), subject_id.as_bytes()] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    let written_at = assent::store::now_micros();
    mac.update(&revision.to_be_bytes());
    mac.update(&written_at.to_be_bytes());
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{revision} {written_at} {} {body}", hex::encode(&tag[..16]))
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(redis).await.unwrap()
}

async fn set(redis: &mut redis::aio::MultiplexedConnection, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(redis)
        .await
        .unwrap();
}

/// The subject's entry (not a tombstone), once a replica has put it in Redis.
async fn entry_in_redis(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = get(redis, key).await
            && !value.ends_with(b" -")
        {
            return String::from_utf8(value).unwrap();
        }
        assert!(Instant::now() < deadline, "no entry reached redis at {key}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sample of each replica's `/metrics`.
async fn samples(cluster: &Cluster, series: &str) -> Vec<f64> {
    let mut values = Vec::new();
    for replica in &cluster.replicas {
        let scraped = process::scrape(&replica.admin_address).await;
        values.push(scraped.get(series).copied().unwrap_or(0.0));
    }
    values
}

fn rejected_series(reason: &str) -> String {
    format!("assent_cache_rejected_total{{reason=\"{reason}\"}}")
}

/// Waits until `done` holds of the replicas' samples of `series`.
async fn until_samples(cluster: &Cluster, series: &str, done: impl Fn(&[f64]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let values = samples(cluster, series).await;
        if done(&values) {
            return;
        }
        assert!(Instant::now() < deadline, "{series}: {values:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every replica has applied the change log up to `token`.
async fn until_applied(cluster: &Cluster, token: &str) {
    let revision = Revision::parse_token(token).unwrap().sequence() as f64;
    until_samples(cluster, "assent_cache_applied_revision", |values| {
        values.iter().all(|applied| *applied >= revision)
    })
    .await;
}

/// Waits until every replica listens to Redis and reads from it: junk published on the
/// channel is counted by each only once it is.
async fn until_listening(cluster: &Cluster, redis: &mut redis::aio::MultiplexedConnection) {
    let channel = format!("{}:changes", cluster.prefix);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg("are you listening?")
            .query_async(redis)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let heard = samples(cluster, &rejected_series("announcement")).await;
        if heard.iter().all(|count| *count >= 1.0) {
            return;
        }
        assert!(Instant::now() < deadline, "not listening: {heard:?}");
    }
}

/// Model training on every replica, without a token and with `token`: `rule`, never degraded.
async fn training_everywhere(
    cluster: &mut Cluster,
    subject_id: &str,
    token: Option<&str>,
    rule: &str,
) {
    for replica in 0..cluster.replicas.len() {
        let answer = cluster
            .check(replica, subject_id, Purpose::ModelTraining, token)
            .await
            .unwrap_or_else(|status| panic!("replica {replica}: {status}"));
        assert_eq!(
            (answer.rule.as_str(), answer.degraded),
            (rule, false),
            "{subject_id} on replica {replica} (token {token:?})"
        );
    }
}

/// (a) The victim opts out of training (DENY T5). Another subject's entry copied over her key,
/// a hand-made value with a huge revision, and a value sealed with the key at a revision never
/// committed; the replicas restart (cold memory, so they read Redis), and a later write follows
/// each: every Check on every replica says T5, each value is counted and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_copied_or_forged_into_a_victims_key_change_no_answer() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    let keys = shared(&cluster);
    let mut redis = redis().await;
    // Before she opts out, her genuine entry (training allowed) is in Redis: recorded.
    let token = cluster.upsert(0, "victim", Plan::Free).await;
    until_applied(&cluster, &token).await;
    until_listening(&cluster, &mut redis).await;
    training_everywhere(&mut cluster, "victim", None, "T6").await;
    let recorded = entry_in_redis(&mut redis, &keys.key("victim")).await;
    cluster
        .set_choice(0, "victim", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    // Written after the opt-out: its entry's revision is the later one, which an unchecked
    // guarded write would let win.
    let token = cluster.upsert(0, "bystander", Plan::Free).await;
    until_applied(&cluster, &token).await;
    training_everywhere(&mut cluster, "victim", None, "T5").await;
    training_everywhere(&mut cluster, "bystander", None, "T6").await;

    let (victim_key, bystander_key) = (keys.key("victim"), keys.key("bystander"));
    assert!(!victim_key.contains("victim"), "{victim_key}");
    let bystanders = entry_in_redis(&mut redis, &bystander_key).await;
    let body = bystanders.splitn(4, ' ').nth(3).unwrap();
    assert!(body.contains("\"subject\""), "{bystanders}");
    let cases = [
        ("another subject's entry", bystanders.clone(), Some("mac")),
        (
            "a hand-made entry with a huge revision",
            format!("{} 1 {} {body}", u64::MAX / 2, "0".repeat(32)),
            Some("mac"),
        ),
        (
            "an entry sealed with the key at a revision never committed",
            seal(&cluster.prefix, "victim", 1 << 60, body),
            Some("future_revision"),
        ),
        // Genuine, but from before her opt-out: refused, as the replicas learn at start every
        // subject changed within the time a value lives in Redis.
        (
            "her own entry from before the opt-out, put back",
            recorded,
            None,
        ),
    ];
    let mut email = Choice::Refused;
    for (case, value, reason) in cases {
        set(&mut redis, &victim_key, value.as_bytes()).await;
        cluster.restart().await;
        until_listening(&cluster, &mut redis).await;
        // Again once they listen: the tombstones replicas put at start replace a value older
        // than the victim's opt-out.
        set(&mut redis, &victim_key, value.as_bytes()).await;
        training_everywhere(&mut cluster, "victim", None, "T5").await;
        if let Some(reason) = reason {
            until_samples(&cluster, &rejected_series(reason), |counts| {
                counts.iter().sum::<f64>() >= 1.0
            })
            .await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(&mut redis, &victim_key).await.as_deref() == Some(value.as_bytes()) {
            assert!(Instant::now() < deadline, "{case}: not replaced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A later write reaches every replica, with its token and without.
        email = flip(email);
        let written = cluster
            .set_choice(1, "victim", Purpose::MarketingEmail, email)
            .await
            .unwrap();
        training_everywhere(&mut cluster, "victim", Some(&written.revision), "T5").await;
        for replica in 0..2 {
            let answer = cluster
                .check(
                    replica,
                    "victim",
                    Purpose::MarketingEmail,
                    Some(&written.revision),
                )
                .await
                .unwrap();
            assert_eq!(answer.rule, email_rule(email), "{case}: replica {replica}");
        }
        until_applied(&cluster, &written.revision).await;
        training_everywhere(&mut cluster, "victim", None, "T5").await;
        eprintln!("{case}: rejected ({reason:?}), replaced, answers right");
    }
    // She opts in and out again: the opt-out holds everywhere.
    cluster
        .set_choice(0, "victim", Purpose::ModelTraining, Choice::Granted)
        .await
        .unwrap();
    let written = cluster
        .set_choice(1, "victim", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    training_everywhere(&mut cluster, "victim", Some(&written.revision), "T5").await;
    cluster.stop();
}

/// (b) Junk in the victim's key, one value per subject so that each is read from Redis: every
/// replica answers, right, not degraded; each value is counted as unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_values_are_answered_right_and_not_degraded() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    let keys = shared(&cluster);
    let mut redis = redis().await;
    until_listening(&cluster, &mut redis).await;
    let junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"junk".to_vec(),
        b"-".to_vec(),
        b"42".to_vec(),
        b"42 -".to_vec(),
        b"x y z".to_vec(),
        b"99999999999999999999 {}".to_vec(),
        b"18446744073709551616 ffffffffffffffffffffffffffffffff -".to_vec(),
        b"7 FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF {\"subject\":null}".to_vec(),
        vec![0xff, 0xfe, b' ', 0x00, b' ', 0x80],
        vec![b'A'; 64 * 1024],
    ];
    for (index, value) in junk.iter().enumerate() {
        let subject_id = format!("junk-{index}");
        cluster.upsert(0, &subject_id, Plan::Free).await;
        let written = cluster
            .set_choice(0, &subject_id, Purpose::ModelTraining, Choice::Refused)
            .await
            .unwrap();
        // Every replica has applied the change (and put its tombstones) before the junk goes in.
        until_applied(&cluster, &written.revision).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        set(&mut redis, &keys.key(&subject_id), value).await;
        training_everywhere(&mut cluster, &subject_id, None, "T5").await;
        until_samples(&cluster, &rejected_series("unreadable"), |counts| {
            counts.iter().sum::<f64>() >= (index + 1) as f64
        })
        .await;
    }
    let mac = samples(&cluster, &rejected_series("mac")).await;
    assert_eq!(mac.iter().sum::<f64>(), 0.0, "junk counted as a bad mac");
    cluster.stop();
}

/// Where forged announcements are sent.
enum Channel {
    Redis(redis::aio::MultiplexedConnection, String),
    Postgres(sqlx::PgConnection),
}

impl Channel {
    async fn send(&mut self, message: &str) {
        self.try_send(message)
            .await
            .unwrap_or_else(|error| panic!("cannot send {message:?}: {error}"));
    }

    async fn try_send(&mut self, message: &str) -> Result<(), String> {
        match self {
            Channel::Redis(redis, channel) => redis::cmd("PUBLISH")
                .arg(&*channel)
                .arg(message)
                .query_async::<i64>(redis)
                .await
                .map(drop)
                .map_err(|error| error.to_string()),
            Channel::Postgres(connection) => sqlx::query("SELECT pg_notify('assent_changes', $1)")
                .bind(message)
                .execute(&mut *connection)
                .await
                .map(drop)
                .map_err(|error| error.to_string()),
        }
    }
}

/// (c) Forged announcements — far-future revisions for the victim, another subject and the
/// policy, the next revisions before they are committed, and junk — change nothing a caller
/// sees: a check with a write's token reflects the write, and without a token a write reaches
/// the other replica as soon as without them (the bound `replicas_reflect_a_write_without_a_token_soon_after`
/// holds to), while forgeries and junk keep arriving.
/// Each replica counts each forged and each junk announcement.
async fn forged_announcements_change_nothing(mut cluster: Cluster, mut channel: Channel) {
    // Every replica listens (junk is counted once it does), and what each has counted so far.
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        channel.send("are you listening?").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let heard = samples(&cluster, &rejected_series("announcement")).await;
        if heard.iter().all(|count| *count >= 1.0) {
            break heard;
        }
        assert!(Instant::now() < deadline, "not listening: {heard:?}");
    };
    let head = cluster.upsert(0, "victim", Plan::Free).await;
    until_applied(&cluster, &head).await;
    let head = Revision::parse_token(&head).unwrap().sequence();
    let now = assent::store::now_micros();
    let mut forged = vec![
        format!("{}@{now} victim", u64::MAX),
        format!("{}@{now} ", u64::MAX - 1),
        format!("{}@{now} bystander", 1_u64 << 62),
    ];
    forged.extend((head + 1..=head + 20).map(|revision| format!("{revision}@{now} decoy")));
    let junk = [
        "garbage",
        "",
        "1@x victim",
        "12",
        "-5 victim",
        "1 not a subject id!",
        &"x".repeat(7_000),
    ];
    let messages = forged.len() + junk.len();
    for message in forged.iter().map(String::as_str).chain(junk) {
        channel.send(message).await;
    }
    until_samples(&cluster, &rejected_series("announcement"), |counts| {
        counts
            .iter()
            .zip(&before)
            .all(|(count, before)| *count >= before + messages as f64)
    })
    .await;
    // Nothing moved the watermark: the revisions named were never committed.
    let applied = samples(&cluster, "assent_cache_applied_revision").await;
    assert_eq!(
        applied,
        vec![head as f64; applied.len()],
        "the watermark moved"
    );

    // Tokens stay exact: each write is preceded by a forged announcement of its own revision,
    // naming another subject, and the other replica answers with the write's token.
    let mut choice = Choice::Refused;
    for trial in 0..50 {
        cluster
            .check(1, "victim", Purpose::MarketingEmail, None)
            .await
            .unwrap();
        let next = head + 1 + trial;
        channel
            .send(&format!("{next}@{} decoy", assent::store::now_micros()))
            .await;
        choice = flip(choice);
        let written = cluster
            .set_choice(0, "victim", Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        assert_eq!(
            Revision::parse_token(&written.revision).unwrap().sequence(),
            next
        );
        let answer = cluster
            .check(
                1,
                "victim",
                Purpose::MarketingEmail,
                Some(&written.revision),
            )
            .await
            .unwrap();
        assert_eq!(answer.rule, email_rule(choice), "trial {trial}");
        assert!(
            Revision::parse_token(&answer.revision).unwrap()
                >= Revision::parse_token(&written.revision).unwrap(),
            "trial {trial}: answered at {} for {}",
            answer.revision,
            written.revision
        );
    }

    // Lag without a token, with forged and junk announcements arriving all along.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut sent = 0_u64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let message = match sent % 3 {
                    0 => format!("{}@1 victim", u64::MAX - sent),
                    1 => format!("{}@1 ", u64::MAX - sent),
                    _ => "junk".to_owned(),
                };
                // A slow send on this busy machine is no failure of the server's.
                if channel.try_send(&message).await.is_ok() {
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        })
    };
    let mut lags = Vec::new();
    for trial in 0..50 {
        cluster
            .check(1, "victim", Purpose::MarketingEmail, None)
            .await
            .unwrap();
        choice = flip(choice);
        cluster
            .set_choice(0, "victim", Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let written = Instant::now();
        loop {
            let answer = cluster
                .check(1, "victim", Purpose::MarketingEmail, None)
                .await
                .unwrap();
            if answer.rule == email_rule(choice) {
                lags.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "trial {trial}: never reflected: {answer:?}"
            );
        }
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.await.unwrap();
    lags.sort();
    eprintln!(
        "lag without a token under {sent} forged and junk announcements: p50 {:?}, p99 {:?}, \
         max {:?}",
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().unwrap()
    );
    // Real announcements still work as hints: at the median, sooner than the change log's
    // poll interval (100 ms) alone would tell.
    assert!(
        percentile(&lags, 0.50) < Duration::from_millis(100),
        "{lags:?}"
    );
    let counted = samples(&cluster, &rejected_series("announcement")).await;
    eprintln!("announcements rejected per replica: {counted:?}");
    let by_reason: HashMap<&str, Vec<f64>> = HashMap::from([
        ("mac", samples(&cluster, &rejected_series("mac")).await),
        (
            "future_revision",
            samples(&cluster, &rejected_series("future_revision")).await,
        ),
    ]);
    for (reason, counts) in by_reason {
        assert_eq!(counts.iter().sum::<f64>(), 0.0, "{reason}");
    }
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_announcements_on_the_redis_channel_change_nothing() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        ..Options::default()
    };
    let cluster = Cluster::start(database, options).await;
    let channel = Channel::Redis(redis().await, format!("{}:changes", cluster.prefix));
    forged_announcements_change_nothing(cluster, channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifications_through_postgres_change_nothing() {
    use sqlx::Connection;
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        redis: false,
        ..Options::default()
    };
    let cluster = Cluster::start(database, options).await;
    let connection = sqlx::PgConnection::connect(&cluster.database.url())
        .await
        .unwrap();
    forged_announcements_change_nothing(cluster, Channel::Postgres(connection)).await;
}
