//! The cache over a real store of each backend.

use std::time::Duration;

use super::*;
use crate::domain::{Actor, ConversationId, SubjectId};
use crate::policy::{Plan, Rating};
use crate::store::testing::{Backend, TestDatabase, backend_tests};
use crate::store::{Command, SubjectFields, WriteContext, WriteRequest};

backend_tests!(
    a_cached_subject_answers_from_memory,
    a_flood_of_unknown_ids_barely_reaches_the_store,
    conversations_beyond_the_bound_are_still_answered,
    a_change_made_elsewhere_arrives_through_the_change_log,
    an_expiry_travels_with_the_state_through_every_tier,
    forged_announcements_change_nothing_a_caller_sees,
    values_in_redis_that_fail_their_checks_are_replaced,
    a_genuine_older_value_put_back_after_a_restart_is_refused,
);

const ENTRY_KEY: &str = "the entry key of the cache tests, 32+ characters";

fn redis_settings() -> SharedSettings {
    use crate::store::DatabaseUrl;
    let redis_url =
        std::env::var("ASSENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    SharedSettings {
        url: DatabaseUrl::new(redis_url),
        cluster: false,
        prefix: format!("assent-test-{}", uuid::Uuid::now_v7().simple()),
        time_to_live: Duration::from_secs(60),
        timeout: Duration::from_millis(500),
        entry_key: RedisEntryKey::new(ENTRY_KEY),
    }
}

/// Until the cache reads from Redis and has read the change log to the store's head, tombstones
/// written: a value a test then puts in Redis is not overwritten by the cache's catching up.
async fn until_listening(cache: &SubjectCache) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reads = || {
        cache
            .inner
            .counters
            .change_log_reads
            .load(Ordering::Relaxed)
    };
    while !cache.inner.shared_ready.load(Ordering::Acquire) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis is not answering"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let head = cache.inner.store.head_revision().await.unwrap();
    while cache.inner.watermark.applied() < head {
        assert!(tokio::time::Instant::now() < deadline, "no catching up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The read that applied the head may still be writing its tombstones; one that ended after
    // a later one began has.
    let caught_up = reads() + 2;
    while reads() < caught_up {
        assert!(tokio::time::Instant::now() < deadline, "no catching up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn subject(id: &str) -> SubjectId {
    SubjectId::parse(id).unwrap()
}

fn settings() -> CacheSettings {
    CacheSettings {
        poll_interval: Duration::from_millis(20),
        ..CacheSettings::default()
    }
}

async fn write(store: &Store, subject_id: &str, command: Command) -> Revision {
    let request = WriteRequest {
        subject_id: subject(subject_id),
        command,
        context: WriteContext {
            caller: "cache-tests".into(),
            actor: Actor::parse("tester", "").unwrap(),
            trace_id: String::new(),
            policy_version: crate::policy::POLICY_VERSION.to_owned(),
        },
    };
    store.write(&request).await.unwrap().revision
}

fn upsert(plan: Plan) -> Command {
    Command::Upsert(SubjectFields {
        plan: Some(plan),
        ..Default::default()
    })
}

async fn a_cached_subject_answers_from_memory(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    let revision = write(&store, "u-1", upsert(Plan::Pro)).await;
    let (cache, tasks) = SubjectCache::start(store.clone(), settings())
        .await
        .unwrap();
    let fresh = Freshness::MinimizeLatency;
    let (first, tier) = cache
        .decision_state(&subject("u-1"), None, fresh)
        .await
        .unwrap();
    assert_eq!((tier, first.revision), (Tier::Store, revision));
    let (second, tier) = cache
        .decision_state(&subject("u-1"), None, fresh)
        .await
        .unwrap();
    assert_eq!((tier, second), (Tier::Local, first));
    let (consistent, tier) = cache
        .decision_state(&subject("u-1"), None, Freshness::FullyConsistent)
        .await
        .unwrap();
    assert_eq!((tier, consistent.subject), (Tier::Store, first.subject));
    let stats = cache.stats();
    assert_eq!(
        (stats.local_hits, stats.store_reads, stats.entries),
        (1, 2, 1)
    );
    tasks.shutdown().await;
    store.close().await;
}

/// 100,000 checks of distinct ids nobody created: the known-subjects filter answers almost all
/// of them, and the store is read for about one in a thousand.
async fn a_flood_of_unknown_ids_barely_reaches_the_store(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    for index in 0..100 {
        write(&store, &format!("known-{index}"), upsert(Plan::Free)).await;
    }
    let (cache, tasks) = SubjectCache::start(store.clone(), settings())
        .await
        .unwrap();
    for index in 0..100_000 {
        let (state, _) = cache
            .decision_state(
                &subject(&format!("stranger-{index}")),
                None,
                Freshness::MinimizeLatency,
            )
            .await
            .unwrap();
        assert_eq!(state.subject, None);
    }
    for index in 0..100 {
        let (state, _) = cache
            .decision_state(
                &subject(&format!("known-{index}")),
                None,
                Freshness::MinimizeLatency,
            )
            .await
            .unwrap();
        assert!(state.subject.is_some(), "known-{index} was filtered out");
    }
    let stats = cache.stats();
    eprintln!("flood of 100,000 unknown ids: {stats:?}");
    assert!(stats.store_reads < 100 + 500, "{stats:?}");
    assert!(stats.unknown_filtered > 99_000, "{stats:?}");
    // A subject created after start is known at once through its announcement.
    let revision = write(&store, "newcomer", upsert(Plan::Free)).await;
    cache.committed(Changed::Subject(subject("newcomer")), revision);
    let (state, _) = cache
        .decision_state(&subject("newcomer"), None, Freshness::MinimizeLatency)
        .await
        .unwrap();
    assert!(state.subject.is_some());
    tasks.shutdown().await;
    store.close().await;
}

async fn conversations_beyond_the_bound_are_still_answered(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    write(&store, "chatty", upsert(Plan::Free)).await;
    for index in 0..10 {
        let feedback = Command::RecordFeedback {
            conversation_id: ConversationId::parse(&format!("c-{index}")).unwrap(),
            rating: Rating::ThumbsUp,
        };
        write(&store, "chatty", feedback).await;
    }
    let bounded = CacheSettings {
        max_conversations: 4,
        ..settings()
    };
    let (cache, tasks) = SubjectCache::start(store.clone(), bounded).await.unwrap();
    for round in 0..2 {
        for index in 0..12 {
            let conversation = ConversationId::parse(&format!("c-{index}")).unwrap();
            let (state, _) = cache
                .decision_state(
                    &subject("chatty"),
                    Some(&conversation),
                    Freshness::MinimizeLatency,
                )
                .await
                .unwrap();
            let expected = (index < 10).then_some(Rating::ThumbsUp);
            assert_eq!(
                state.conversation.and_then(|facts| facts.feedback),
                expected,
                "round {round}, c-{index}"
            );
        }
    }
    let stats = cache.stats();
    // Round one: 8 answers need the store (the first loads the entry; c-0..c-5, c-10 and c-11
    // are not kept in it), the 4 kept conversations answer from memory; round two: all memory.
    assert_eq!(stats.store_reads, 8, "{stats:?}");
    assert_eq!(stats.local_hits, 4 + 12, "{stats:?}");
    tasks.shutdown().await;
    store.close().await;
}

/// A change committed by another process (straight into the store, unannounced here) reaches
/// the cache through the change log: at once for a check that names its revision, within a few
/// reads of the change log otherwise.
async fn a_change_made_elsewhere_arrives_through_the_change_log(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    write(&store, "u-1", upsert(Plan::Free)).await;
    let (cache, tasks) = SubjectCache::start(store.clone(), settings())
        .await
        .unwrap();
    let latency = Freshness::MinimizeLatency;
    cache
        .decision_state(&subject("u-1"), None, latency)
        .await
        .unwrap();
    let revision = write(&store, "u-1", upsert(Plan::Team)).await;
    let (state, _) = cache
        .decision_state(&subject("u-1"), None, Freshness::AtLeastAsFresh(revision))
        .await
        .unwrap();
    assert_eq!(state.subject.unwrap().plan, Some(Plan::Team));
    let revision = write(&store, "u-1", upsert(Plan::Enterprise)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (state, _) = cache
            .decision_state(&subject("u-1"), None, latency)
            .await
            .unwrap();
        if state.subject.unwrap().plan == Some(Plan::Enterprise) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The answer may come first (a NOTIFY, on PostgreSQL, is a hint that drops the entry);
    // the change log applies the change soon after.
    assert!(
        cache
            .wait_for_revision(revision, Duration::from_secs(10))
            .await
    );
    tasks.shutdown().await;
    store.close().await;
}

/// An expiring choice keeps its expiry in every tier — read from the store, kept in memory,
/// shared through Redis — so the decision path, which drops what has expired at its own
/// instant (`SubjectState::at`), never answers from an expired choice whichever tier answered.
async fn an_expiry_travels_with_the_state_through_every_tier(backend: Backend) {
    use crate::policy::{Choice, ConsentMethod, Purpose};
    use crate::store::{ConsentMeta, DatabaseUrl};
    const EXPIRES_AT: i64 = 2_000_000_000_000_000;
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    write(&store, "u-1", upsert(Plan::Free)).await;
    let grant = Command::SetChoice {
        purpose: Purpose::AnalyticsCookies,
        choice: Some(Choice::Granted),
        consent: ConsentMeta {
            notice_version: "cookies-1".into(),
            method: ConsentMethod::CookieBanner,
            expires_at_micros: Some(EXPIRES_AT),
        },
    };
    write(&store, "u-1", grant).await;
    let redis_url =
        std::env::var("ASSENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let shared = SharedSettings {
        url: DatabaseUrl::new(redis_url),
        cluster: false,
        prefix: format!("assent-test-{}", uuid::Uuid::now_v7().simple()),
        time_to_live: Duration::from_secs(60),
        timeout: Duration::from_millis(500),
        entry_key: RedisEntryKey::new(ENTRY_KEY),
    };
    let with_redis = CacheSettings {
        shared: Some(shared.clone()),
        ..settings()
    };
    let (first, first_tasks) = SubjectCache::start(store.clone(), with_redis.clone())
        .await
        .unwrap();
    let (second, second_tasks) = SubjectCache::start(store.clone(), with_redis)
        .await
        .unwrap();
    // Both listen to Redis (and have re-announced the recent changes there) before any read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ![&first, &second]
        .iter()
        .all(|cache| cache.inner.shared_ready.load(Ordering::Acquire))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis is not answering at {:?}",
            shared.url
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latency = Freshness::MinimizeLatency;
    let (from_store, tier) = first
        .decision_state(&subject("u-1"), None, latency)
        .await
        .unwrap();
    assert_eq!(tier, Tier::Store);
    let (from_memory, tier) = first
        .decision_state(&subject("u-1"), None, latency)
        .await
        .unwrap();
    assert_eq!(tier, Tier::Local);
    // The first replica shares what it read; the second then finds it in Redis.
    let redis = SharedCache::new(shared).unwrap();
    while !matches!(
        redis.get("u-1", Revision::new(u64::MAX)).await,
        SharedLookup::Hit(_)
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entry never reached redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (from_redis, tier) = second
        .decision_state(&subject("u-1"), None, latency)
        .await
        .unwrap();
    assert_eq!(tier, Tier::Shared);
    for (state, tier) in [
        (from_store, "store"),
        (from_memory, "memory"),
        (from_redis, "redis"),
    ] {
        let subject = state.subject.unwrap();
        let cookies = Purpose::AnalyticsCookies;
        assert_eq!(subject.expiries.get(cookies), Some(EXPIRES_AT), "{tier}");
        assert_eq!(
            subject.at(EXPIRES_AT - 1).choices.get(cookies),
            Some(Choice::Granted),
            "{tier}"
        );
        assert_eq!(subject.at(EXPIRES_AT).choices.get(cookies), None, "{tier}");
    }
    first_tasks.shutdown().await;
    second_tasks.shutdown().await;
    store.close().await;
}

/// Hints with far-future revisions, for a subject and for a policy version, and junk: the
/// watermark, the policy changes and the answers stay what the store says, the subject stays
/// cacheable, and each is counted once the change log has been read after it.
async fn forged_announcements_change_nothing_a_caller_sees(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    write(&store, "victim", upsert(Plan::Free)).await;
    let (cache, tasks) = SubjectCache::start(store.clone(), settings())
        .await
        .unwrap();
    let mut policies = cache.policy_changes();
    let head = cache.applied_revision();
    let latency = Freshness::MinimizeLatency;
    cache
        .decision_state(&subject("victim"), None, latency)
        .await
        .unwrap();
    cache.hint(&format!("{}@1 victim", u64::MAX));
    cache.hint("18446744073709551000@1 ");
    cache.hint(&format!("{} victim", head.sequence() + 1));
    for junk in ["", "junk", "12", "x victim", "1 not an id!", "\u{0}"] {
        cache.hint(junk);
    }
    // Junk is counted at once; the three hints once the change log has been read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.rejected(Rejection::Announcement) < 6 + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            cache.rejected(Rejection::Announcement)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cache.applied_revision(), head);
    assert!(!policies.has_changed().unwrap());
    // The subject's entry is still answered from memory.
    let (_, tier) = cache
        .decision_state(&subject("victim"), None, latency)
        .await
        .unwrap();
    assert_eq!(tier, Tier::Local);
    // A real change arrives, and a token of it is honoured exactly.
    let revision = write(&store, "victim", upsert(Plan::Team)).await;
    assert!(
        !cache
            .wait_for_revision(Revision::new(revision.sequence() + 1), Duration::ZERO)
            .await
    );
    let (state, _) = cache
        .decision_state(
            &subject("victim"),
            None,
            Freshness::AtLeastAsFresh(revision),
        )
        .await
        .unwrap();
    assert_eq!(state.subject.unwrap().plan, Some(Plan::Team));
    assert_eq!(state.revision, revision);
    // And the next real policy version is still told of, after a forged one far beyond it.
    let policy = crate::store::NewPolicy {
        version: "forgery-test".into(),
        effective_from_micros: 0,
        description: String::new(),
        source: "not read by the cache".into(),
    };
    let context = WriteContext {
        caller: "cache-tests".into(),
        actor: Actor::parse("tester", "").unwrap(),
        trace_id: String::new(),
        policy_version: crate::policy::POLICY_VERSION.to_owned(),
    };
    let applied = store.apply_policy(&policy, &context).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), policies.changed())
        .await
        .expect("the policy change was not told of")
        .unwrap();
    assert_eq!(*policies.borrow(), applied.revision);
    tasks.shutdown().await;
    store.close().await;
}

/// Values in the subject's Redis key that fail the MAC (another subject's entry, a hand-made
/// one), cannot be read, or claim a revision the store has not committed are not used: the
/// store answers, the value is replaced by the store's entry, and each is counted.
async fn values_in_redis_that_fail_their_checks_are_replaced(backend: Backend) {
    use crate::policy::{Choice, Purpose};
    use crate::store::ConsentMeta;
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    write(&store, "victim", upsert(Plan::Free)).await;
    write(&store, "other", upsert(Plan::Free)).await;
    let refuse = Command::SetChoice {
        purpose: Purpose::ModelTraining,
        choice: Some(Choice::Refused),
        consent: ConsentMeta::default(),
    };
    write(&store, "victim", refuse).await;
    let grant = Command::SetChoice {
        purpose: Purpose::ModelTraining,
        choice: Some(Choice::Granted),
        consent: ConsentMeta::default(),
    };
    write(&store, "other", grant).await;
    let shared = redis_settings();
    let with_redis = CacheSettings {
        shared: Some(shared.clone()),
        ..settings()
    };
    let (writer, writer_tasks) = SubjectCache::start(store.clone(), with_redis.clone())
        .await
        .unwrap();
    until_listening(&writer).await;
    let latency = Freshness::MinimizeLatency;
    writer
        .decision_state(&subject("other"), None, latency)
        .await
        .unwrap();
    let redis = SharedCache::new(shared.clone()).unwrap();
    let mut connection = redis
        .subscriber(0)
        .await
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let others = value_in_redis(&redis, &mut connection, "other", |_| true).await;
    // The other subject's body, sealed for the victim with the key, at a revision never
    // committed: what a writer holding the key could do.
    let body = others.splitn(4, ' ').nth(3).unwrap();
    assert!(body.contains("GRANTED"), "{others}");
    let forged_with_the_key = redis.seal("victim", Revision::new(1 << 60), body);
    // And one the victim's own, genuine, but written an hour ago: put back from a recording.
    let an_hour_ago = crate::store::now_micros() - 3_600_000_000;
    let recorded = redis.seal_at("victim", Revision::new(1), an_hour_ago, body);
    let cases = [
        (others.clone(), Rejection::Mac),
        (recorded, Rejection::Stale),
        (
            format!("{} 1 00000000000000000000000000000000 -", u64::MAX),
            Rejection::Mac,
        ),
        ("junk".to_owned(), Rejection::Unreadable),
        (forged_with_the_key, Rejection::FutureRevision),
    ];
    for (value, reason) in cases {
        let (reader, reader_tasks) = SubjectCache::start(store.clone(), with_redis.clone())
            .await
            .unwrap();
        until_listening(&reader).await;
        let _: () = redis::cmd("SET")
            .arg(redis.key("victim"))
            .arg(&value)
            .query_async(&mut connection)
            .await
            .unwrap();
        let (state, tier) = reader
            .decision_state(&subject("victim"), None, latency)
            .await
            .unwrap();
        assert_eq!(tier, Tier::Store, "{reason}");
        assert_eq!(
            state.subject.unwrap().choices.get(Purpose::ModelTraining),
            Some(Choice::Refused),
            "{reason}"
        );
        // Counted and replaced (in the background).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now: Option<String> = redis::cmd("GET")
                .arg(redis.key("victim"))
                .query_async(&mut connection)
                .await
                .unwrap();
            if now.as_deref() != Some(value.as_str()) && reader.rejected(reason) == 1 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{reason}: {now:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            redis.get("victim", Revision::new(u64::MAX)).await,
            SharedLookup::Hit(CachedSubject::from_snapshot(
                store.snapshot(&subject("victim"), 64).await.unwrap()
            )),
            "{reason}"
        );
        reader_tasks.shutdown().await;
    }
    writer_tasks.shutdown().await;
    store.close().await;
}

/// A value the replicas wrote themselves, recorded from Redis and put back after the subject
/// changed (a replay by anyone who can write to Redis, no key needed), is not used by a replica
/// started since: at start it learns each subject changed within the time a value may be used.
async fn a_genuine_older_value_put_back_after_a_restart_is_refused(backend: Backend) {
    use crate::policy::{Choice, Purpose};
    use crate::store::ConsentMeta;
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    write(&store, "victim", upsert(Plan::Free)).await;
    let choose = |choice| Command::SetChoice {
        purpose: Purpose::ModelTraining,
        choice: Some(choice),
        consent: ConsentMeta::default(),
    };
    write(&store, "victim", choose(Choice::Granted)).await;
    let shared = redis_settings();
    let with_redis = CacheSettings {
        shared: Some(shared.clone()),
        ..settings()
    };
    let (first, first_tasks) = SubjectCache::start(store.clone(), with_redis.clone())
        .await
        .unwrap();
    until_listening(&first).await;
    let latency = Freshness::MinimizeLatency;
    first
        .decision_state(&subject("victim"), None, latency)
        .await
        .unwrap();
    let redis = SharedCache::new(shared.clone()).unwrap();
    let mut connection = redis
        .subscriber(0)
        .await
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let recorded = value_in_redis(&redis, &mut connection, "victim", |value| {
        value.contains("GRANTED")
    })
    .await;
    first_tasks.shutdown().await;
    write(&store, "victim", choose(Choice::Refused)).await;
    let (second, second_tasks) = SubjectCache::start(store.clone(), with_redis)
        .await
        .unwrap();
    until_listening(&second).await;
    let _: () = redis::cmd("SET")
        .arg(redis.key("victim"))
        .arg(&recorded)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (state, tier) = second
        .decision_state(&subject("victim"), None, latency)
        .await
        .unwrap();
    assert_eq!(
        state.subject.unwrap().choices.get(Purpose::ModelTraining),
        Some(Choice::Refused)
    );
    assert_eq!(tier, Tier::Store);
    second_tasks.shutdown().await;
    store.close().await;
}

/// The value `subject_id` has in Redis, once there is one `wanted` accepts (within ten seconds).
async fn value_in_redis(
    redis: &SharedCache,
    connection: &mut redis::aio::MultiplexedConnection,
    subject_id: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value: Option<String> = redis::cmd("GET")
            .arg(redis.key(subject_id))
            .query_async(connection)
            .await
            .unwrap();
        if let Some(value) = value.filter(|value| wanted(value)) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "never shared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
