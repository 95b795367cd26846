//! `LocalCache`: Checks answered from the caller's memory, kept fresh by `Changes.Watch`, with
//! a bound on how stale an answer may be. The rules are docs/clients.md's; in short:
//!
//! - a change about a subject forgets its answers, a policy version applied forgets all, and an
//!   answer is not used at or past its `valid_until`;
//! - a miss asks the server for an answer at least as fresh as the last revision the Watch
//!   delivered, and keeps it only when it is at least as new as every change about its subject
//!   delivered while it was asked (the subject's *floor*);
//! - memory answers only while the Watch is open, has caught up (a heartbeat since it opened)
//!   and has spoken within `stale_after`; otherwise the server is asked (or, configured so, the
//!   answer is DENY);
//! - a Watch that ends resumes from the last revision it delivered, so no change is missed.
//!
//! The order of two steps carries the correctness argument: the Watch publishes a change's
//! revision *before* it takes the subject's lock to raise its floor, and a miss registers its
//! subject under that lock *before* it reads the revision to ask for. Either the miss registered
//! first (and the floor is raised on its entry, refusing an older answer), or it reads a revision
//! at least the change's (and the server's answer reflects the change).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use crate::client::Client;
use crate::proto::{self, consistency::Requirement, watch_response::Event};
use crate::revision::Revision;

/// What a check does while the cache is not fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenStale {
    /// Ask the server (the answer is not remembered).
    #[default]
    AskServer,
    /// Answer DENY (reason STATE_UNAVAILABLE, degraded) without asking.
    Deny,
}

#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// The Watch's heartbeat interval; the server accepts 100 ms to 60 s.
    pub heartbeat_interval: Duration,
    /// How long the Watch may be silent before memory stops answering; `None`: three heartbeat
    /// intervals.
    pub stale_after: Option<Duration>,
    pub when_stale: WhenStale,
    /// Subjects held at most.
    pub capacity: usize,
}

impl Default for CacheOptions {
    fn default() -> CacheOptions {
        CacheOptions {
            heartbeat_interval: Duration::from_secs(1),
            stale_after: None,
            when_stale: WhenStale::AskServer,
            capacity: 100_000,
        }
    }
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerFrom {
    Memory,
    Server,
    /// The cache was stale and configured to deny ([`WhenStale::Deny`]).
    StaleDeny,
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub response: Arc<proto::CheckResponse>,
    pub from: AnswerFrom,
}

/// Counters since the cache started, and its state now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answered from memory.
    pub hits: u64,
    /// Asked the server while fresh.
    pub misses: u64,
    /// Subjects forgotten by a change, plus one per policy version or resync.
    pub invalidations: u64,
    /// Answers found in memory at or past their `valid_until`.
    pub expirations: u64,
    /// Checks made while not fresh.
    pub stale_answers: u64,
    /// Watch streams opened again after one ended or went silent.
    pub reconnects: u64,
    /// Subjects held now (some may hold no answer: forgotten, or being asked).
    pub subjects: usize,
    /// The last revision the Watch delivered.
    pub revision: Option<Revision>,
    /// Since the Watch's last message.
    pub staleness: Duration,
    pub fresh: bool,
}

/// The answers remembered, and the Watch keeping them fresh (stopped when the cache is dropped).
pub struct LocalCache {
    shared: Arc<Shared>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl LocalCache {
    /// Starts watching through `client`, which also answers the misses. Must be called within a
    /// Tokio runtime.
    pub fn start(client: Client, options: CacheOptions) -> LocalCache {
        LocalCache::start_watching(client.clone(), client, options)
    }

    /// Misses are asked of `client`, the Watch is opened through `watch` (another route to the
    /// servers, for instance one replica kept for streams).
    pub fn start_watching(client: Client, watch: Client, options: CacheOptions) -> LocalCache {
        let shared = Arc::new(Shared::new(client, options));
        let watcher = tokio::spawn(watch_changes(shared.clone(), watch));
        LocalCache { shared, watcher }
    }

    /// The answer to a check of the subject-wide question (`conversation_id` `None`) or of one
    /// about a conversation, under the policy in force now.
    pub async fn check(
        &self,
        subject_id: &str,
        purpose: proto::Purpose,
        conversation_id: Option<&str>,
        source: proto::Source,
    ) -> Result<Answer, Status> {
        let key = Key::new(purpose, conversation_id, source);
        let shared = &self.shared;
        if !shared.fresh() {
            shared
                .counters
                .stale_answers
                .fetch_add(1, Ordering::Relaxed);
            return match shared.options.when_stale {
                WhenStale::Deny => Ok(Answer {
                    response: Arc::new(stale_deny(subject_id, &key)),
                    from: AnswerFrom::StaleDeny,
                }),
                WhenStale::AskServer => {
                    let response = shared.client.check(key.request(subject_id, None)).await?;
                    Ok(Answer {
                        response: Arc::new(response),
                        from: AnswerFrom::Server,
                    })
                }
            };
        }
        if let Some(response) = shared.remembered(subject_id, &key) {
            return Ok(Answer {
                response,
                from: AnswerFrom::Memory,
            });
        }
        shared.ask(subject_id, key).await
    }

    /// The answer in memory, if the cache is fresh and holds one (no call otherwise).
    pub fn cached(
        &self,
        subject_id: &str,
        purpose: proto::Purpose,
        conversation_id: Option<&str>,
        source: proto::Source,
    ) -> Option<Arc<proto::CheckResponse>> {
        let key = Key::new(purpose, conversation_id, source);
        if !self.shared.fresh() {
            return None;
        }
        self.shared.remembered(subject_id, &key)
    }

    /// Whether memory answers now.
    pub fn is_fresh(&self) -> bool {
        self.shared.fresh()
    }

    /// Waits until memory answers (the Watch has caught up), at most `timeout`.
    pub async fn wait_fresh(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.fresh() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    pub fn stats(&self) -> CacheStats {
        let shared = &self.shared;
        let counters = &shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&counters.hits),
            misses: load(&counters.misses),
            invalidations: load(&counters.invalidations),
            expirations: load(&counters.expirations),
            stale_answers: load(&counters.stale_answers),
            reconnects: load(&counters.reconnects),
            subjects: shared.shards.iter().map(|shard| read(shard).len()).sum(),
            revision: shared.revision(),
            staleness: shared.staleness(),
            fresh: shared.fresh(),
        }
    }
}

/// Shards of the subject map: a check locks one, for reading.
const SHARDS: usize = 64;

/// `revision` before the Watch delivered any.
const NO_REVISION: u64 = u64::MAX;

/// The first wait before opening the Watch again; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    expirations: AtomicU64,
    stale_answers: AtomicU64,
    reconnects: AtomicU64,
}

type Shard = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

struct Shared {
    client: Client,
    options: CacheOptions,
    stale_after: Duration,
    shards: Box<[RwLock<Shard>]>,
    shard_capacity: usize,
    hasher: foldhash::fast::FixedState,
    started: Instant,
    /// When the Watch last spoke, in nanoseconds after `started`.
    last_message: AtomicU64,
    /// A heartbeat arrived since the Watch was (re)opened.
    caught_up: AtomicBool,
    /// The sequence of the last revision the Watch delivered, or [`NO_REVISION`].
    revision: AtomicU64,
    /// Bumped whenever everything is forgotten: an answer asked before is not kept.
    generation: AtomicU64,
    /// Numbers the subject entries, so an answer is kept only in the entry it was asked for.
    incarnations: AtomicU64,
    counters: Counters,
}

/// What is held of one subject.
struct Entry {
    incarnation: u64,
    /// The revision of the last change about the subject seen since the entry was made.
    floor: u64,
    answers: Vec<Remembered>,
}

struct Remembered {
    key: Key,
    /// Microseconds since the Unix epoch; `i64::MAX` when the answer names none.
    valid_until: i64,
    response: Arc<proto::CheckResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    purpose: proto::Purpose,
    source: proto::Source,
    conversation_id: Option<Box<str>>,
}

impl Key {
    fn new(purpose: proto::Purpose, conversation_id: Option<&str>, source: proto::Source) -> Key {
        Key {
            purpose,
            // The server reads UNSPECIFIED as CONVERSATION: one question, one entry.
            source: match source {
                proto::Source::Unspecified => proto::Source::Conversation,
                source => source,
            },
            conversation_id: conversation_id.map(Box::from),
        }
    }

    fn is(
        &self,
        purpose: proto::Purpose,
        source: proto::Source,
        conversation_id: Option<&str>,
    ) -> bool {
        self.purpose == purpose
            && self.source == source
            && self.conversation_id.as_deref() == conversation_id
    }

    fn request(&self, subject_id: &str, at_least: Option<Revision>) -> proto::CheckRequest {
        proto::CheckRequest {
            subject_id: subject_id.to_owned(),
            purpose: self.purpose as i32,
            conversation_id: self.conversation_id.as_deref().map(str::to_owned),
            source: self.source as i32,
            consistency: at_least.map(|revision| proto::Consistency {
                requirement: Some(Requirement::AtLeastAsFresh(revision.to_token())),
            }),
            ..Default::default()
        }
    }
}

impl Shared {
    fn new(client: Client, options: CacheOptions) -> Shared {
        let shards = SHARDS.min(options.capacity.max(1));
        Shared {
            client,
            stale_after: options
                .stale_after
                .unwrap_or(options.heartbeat_interval * 3),
            shard_capacity: options.capacity.div_ceil(shards).max(1),
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            hasher: foldhash::fast::FixedState::default(),
            options,
            started: Instant::now(),
            last_message: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            revision: AtomicU64::new(NO_REVISION),
            generation: AtomicU64::new(0),
            incarnations: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    fn shard(&self, subject_id: &str) -> &RwLock<Shard> {
        let index = self.hasher.hash_one(subject_id) as usize % self.shards.len();
        &self.shards[index]
    }

    fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn fresh(&self) -> bool {
        self.caught_up.load(Ordering::Acquire) && self.staleness() <= self.stale_after
    }

    fn staleness(&self) -> Duration {
        let last = self.last_message.load(Ordering::Acquire);
        Duration::from_nanos(self.elapsed_nanos().saturating_sub(last))
    }

    fn revision(&self) -> Option<Revision> {
        match self.revision.load(Ordering::Acquire) {
            NO_REVISION => None,
            sequence => Some(Revision::new(sequence)),
        }
    }

    /// The answer held for `key`, if it is still valid.
    fn remembered(&self, subject_id: &str, key: &Key) -> Option<Arc<proto::CheckResponse>> {
        let shard = read(self.shard(subject_id));
        let entry = shard.get(subject_id)?;
        let conversation_id = key.conversation_id.as_deref();
        let held = entry
            .answers
            .iter()
            .find(|held| held.key.is(key.purpose, key.source, conversation_id))?;
        if now_micros() >= held.valid_until {
            self.counters.expirations.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(held.response.clone())
    }

    /// A miss: asks the server, and keeps the answer when the rules allow.
    async fn ask(&self, subject_id: &str, key: Key) -> Result<Answer, Status> {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let (incarnation, generation) = self.register(subject_id);
        // Read after registering: see the module's comment.
        let at_least = self.revision();
        let response = self.client.check(key.request(subject_id, at_least)).await?;
        let response = Arc::new(response);
        self.keep(subject_id, key, incarnation, generation, &response);
        Ok(Answer {
            response,
            from: AnswerFrom::Server,
        })
    }

    /// Makes (or finds) the subject's entry for an answer about to be asked: its incarnation and
    /// the generation now.
    fn register(&self, subject_id: &str) -> (u64, u64) {
        let mut shard = write(self.shard(subject_id));
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(entry) = shard.get(subject_id) {
            return (entry.incarnation, generation);
        }
        if shard.len() >= self.shard_capacity {
            // Any subject makes room; an answer being asked for it will not be kept.
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed);
        shard.insert(
            subject_id.into(),
            Entry {
                incarnation,
                floor: 0,
                answers: Vec::new(),
            },
        );
        (incarnation, generation)
    }

    /// Keeps `response` if it may be reused: not degraded, with a revision at least the
    /// subject's floor, asked in this entry and generation, and the cache still fresh.
    fn keep(
        &self,
        subject_id: &str,
        key: Key,
        incarnation: u64,
        generation: u64,
        response: &Arc<proto::CheckResponse>,
    ) {
        if response.degraded || !self.fresh() {
            return;
        }
        let Ok(revision) = Revision::parse_token(&response.revision) else {
            return;
        };
        let valid_until = response.valid_until.as_ref().map_or(i64::MAX, |at| {
            at.seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(at.nanos / 1_000))
        });
        let mut shard = write(self.shard(subject_id));
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let Some(entry) = shard.get_mut(subject_id) else {
            return;
        };
        if entry.incarnation != incarnation || revision.sequence() < entry.floor {
            return;
        }
        let conversation_id = key.conversation_id.as_deref();
        entry
            .answers
            .retain(|held| !held.key.is(key.purpose, key.source, conversation_id));
        entry.answers.push(Remembered {
            key,
            valid_until,
            response: response.clone(),
        });
    }

    /// A message of the Watch.
    fn receive(&self, event: Event) -> Result<(), Status> {
        match event {
            Event::Heartbeat(heartbeat) => {
                self.advance(&heartbeat.revision)?;
                self.caught_up.store(true, Ordering::Release);
            }
            Event::Change(change) => {
                let revision = self.advance(&change.revision)?;
                if change.kind == "policy_applied" || change.subject_id.is_empty() {
                    self.forget_all();
                } else {
                    self.forget(&change.subject_id, revision);
                }
            }
        }
        self.last_message
            .store(self.elapsed_nanos(), Ordering::Release);
        Ok(())
    }

    /// Publishes a revision the Watch delivered (before anything is forgotten because of it).
    fn advance(&self, token: &str) -> Result<Revision, Status> {
        let revision = Revision::parse_token(token).map_err(|malformed| {
            Status::data_loss(format!(
                "the watch sent revision {token:?}, which {malformed}"
            ))
        })?;
        self.revision.store(revision.sequence(), Ordering::Release);
        Ok(revision)
    }

    fn forget(&self, subject_id: &str, revision: Revision) {
        let mut shard = write(self.shard(subject_id));
        if let Some(entry) = shard.get_mut(subject_id) {
            entry.floor = entry.floor.max(revision.sequence());
            if !entry.answers.is_empty() {
                entry.answers.clear();
                self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            write(shard).clear();
        }
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// The revision the Watch delivered can no longer be resumed from: forget everything and
    /// start again from the latest.
    fn resync(&self) {
        self.revision.store(NO_REVISION, Ordering::Release);
        self.forget_all();
    }
}

/// Keeps the Watch open, resuming from the last revision it delivered.
async fn watch_changes(shared: Arc<Shared>, watch: Client) {
    let mut changes = watch.changes();
    let heartbeat_interval_ms =
        u32::try_from(shared.options.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
    // A stream that says nothing for this long is given up on (a partition refuses nothing);
    // memory stopped answering at half of it.
    let silence = shared.stale_after * 2;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let since = shared.revision();
        let request = proto::WatchRequest {
            since_revision: since.map(Revision::to_token).unwrap_or_default(),
            from_latest: since.is_none(),
            heartbeat_interval_ms,
            purposes: Vec::new(),
        };
        let ended = match tokio::time::timeout(silence, changes.watch(request)).await {
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                loop {
                    match tokio::time::timeout(silence, stream.message()).await {
                        Ok(Ok(Some(message))) => {
                            let Some(event) = message.event else { continue };
                            if let Err(status) = shared.receive(event) {
                                break Some(status);
                            }
                            backoff = FIRST_BACKOFF;
                        }
                        Ok(Err(status)) => break Some(status),
                        Ok(Ok(None)) | Err(_) => break None,
                    }
                }
            }
            Ok(Err(status)) => Some(status),
            Err(_) => None,
        };
        shared.caught_up.store(false, Ordering::Release);
        if let Some(status) = ended
            && matches!(status.code(), Code::FailedPrecondition | Code::DataLoss)
        {
            shared.resync();
        }
        shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The answer of [`WhenStale::Deny`].
fn stale_deny(subject_id: &str, key: &Key) -> proto::CheckResponse {
    proto::CheckResponse {
        subject_id: subject_id.to_owned(),
        purpose: key.purpose as i32,
        conversation_id: key
            .conversation_id
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        decision: proto::Decision::Deny as i32,
        reason: proto::Reason::StateUnavailable as i32,
        degraded: true,
        explanation: "The local cache's change stream is stale; assent was not asked.".into(),
        ..Default::default()
    }
}

fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// A lock is only poisoned by a panic while holding it; the map is still whole then (every
/// change under it is a single insert, remove or clear).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache with no Watch running: the tests feed it the Watch's messages. (Within a
    /// runtime: the channel is made lazily there.)
    fn shared(options: CacheOptions) -> Shared {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Shared::new(Client::new(channel), options)
    }

    fn heartbeat(revision: u64) -> Event {
        Event::Heartbeat(proto::Heartbeat {
            revision: Revision::new(revision).to_token(),
            at: None,
        })
    }

    fn change(subject_id: &str, kind: &str, revision: u64) -> Event {
        Event::Change(proto::ChangeEvent {
            revision: Revision::new(revision).to_token(),
            subject_id: subject_id.into(),
            kind: kind.into(),
            ..Default::default()
        })
    }

    fn answer(revision: u64, decision: proto::Decision) -> Arc<proto::CheckResponse> {
        Arc::new(proto::CheckResponse {
            decision: decision as i32,
            revision: Revision::new(revision).to_token(),
            ..Default::default()
        })
    }

    fn key() -> Key {
        Key::new(
            proto::Purpose::ModelTraining,
            None,
            proto::Source::Unspecified,
        )
    }

    /// Asks (registers), lets `meanwhile` happen, then offers `response`: whether it was kept.
    fn asked(
        cache: &Shared,
        response: Arc<proto::CheckResponse>,
        meanwhile: impl FnOnce(),
    ) -> bool {
        let (incarnation, generation) = cache.register("ada");
        meanwhile();
        cache.keep("ada", key(), incarnation, generation, &response);
        cache.remembered("ada", &key()).is_some()
    }

    #[tokio::test]
    async fn a_change_seen_while_asking_keeps_out_an_older_answer_and_not_a_newer_one() {
        let cache = shared(CacheOptions::default());
        cache.receive(heartbeat(10)).unwrap();
        assert!(cache.fresh());
        let allow = proto::Decision::Allow;
        assert!(asked(&cache, answer(8, allow), || ()));
        // Held, then forgotten by a change about the subject.
        cache.receive(change("ada", "choice_set", 11)).unwrap();
        assert!(cache.remembered("ada", &key()).is_none());
        assert_eq!(cache.counters.invalidations.load(Ordering::Relaxed), 1);
        // Asked while a change at 12 arrives: an answer from before it is not kept, one
        // computed from it is.
        assert!(!asked(&cache, answer(11, allow), || {
            cache.receive(change("ada", "choice_set", 12)).unwrap();
        }));
        assert!(asked(&cache, answer(12, allow), || {
            cache.receive(change("ada", "choice_set", 12)).unwrap();
        }));
        // A change about someone else forgets nothing of hers.
        cache.receive(change("grace", "choice_set", 13)).unwrap();
        assert!(cache.remembered("ada", &key()).is_some());
    }

    #[tokio::test]
    async fn a_policy_version_or_a_resync_forgets_everything_and_what_was_being_asked() {
        let cache = shared(CacheOptions::default());
        cache.receive(heartbeat(10)).unwrap();
        let allow = proto::Decision::Allow;
        assert!(asked(&cache, answer(5, allow), || ()));
        cache.receive(change("", "policy_applied", 11)).unwrap();
        assert!(cache.remembered("ada", &key()).is_none());
        // Newer than the policy's revision, but asked before it arrived: not kept.
        assert!(!asked(&cache, answer(20, allow), || {
            cache.receive(change("", "policy_applied", 12)).unwrap();
        }));
        assert!(!asked(&cache, answer(20, allow), || cache.resync()));
        assert_eq!(cache.revision(), None);
    }

    #[tokio::test]
    async fn degraded_answers_and_answers_past_valid_until_are_not_used() {
        let cache = shared(CacheOptions::default());
        cache.receive(heartbeat(10)).unwrap();
        let degraded = Arc::new(proto::CheckResponse {
            degraded: true,
            ..(*answer(5, proto::Decision::Deny)).clone()
        });
        assert!(!asked(&cache, degraded, || ()));
        let expired = Arc::new(proto::CheckResponse {
            valid_until: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..(*answer(5, proto::Decision::Allow)).clone()
        });
        assert!(!asked(&cache, expired, || ()));
        assert_eq!(cache.counters.expirations.load(Ordering::Relaxed), 1);
        let unparsable = Arc::new(proto::CheckResponse {
            revision: "7".into(),
            ..Default::default()
        });
        assert!(!asked(&cache, unparsable, || ()));
    }

    #[tokio::test]
    async fn memory_answers_only_after_a_heartbeat_and_within_the_bound() {
        let cache = shared(CacheOptions {
            heartbeat_interval: Duration::from_millis(100),
            stale_after: Some(Duration::from_millis(30)),
            ..CacheOptions::default()
        });
        assert!(!cache.fresh(), "no heartbeat yet");
        cache.receive(change("ada", "choice_set", 3)).unwrap();
        assert!(!cache.fresh(), "a replayed change is not a catch-up");
        cache.receive(heartbeat(3)).unwrap();
        assert!(cache.fresh());
        // Nothing is kept while stale, either.
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.fresh());
        assert!(!asked(&cache, answer(3, proto::Decision::Allow), || ()));
    }

    #[tokio::test]
    async fn a_forged_revision_from_the_watch_is_refused() {
        let cache = shared(CacheOptions::default());
        let forged = Event::Heartbeat(proto::Heartbeat {
            revision: "r1.zz".into(),
            at: None,
        });
        let status = cache.receive(forged).unwrap_err();
        assert_eq!(status.code(), Code::DataLoss);
        assert!(!cache.fresh());
    }

    #[tokio::test]
    async fn the_memory_holds_at_most_its_capacity() {
        let cache = shared(CacheOptions {
            capacity: 8,
            ..CacheOptions::default()
        });
        for index in 0..100 {
            cache.register(&format!("subject-{index}"));
        }
        let held: usize = cache.shards.iter().map(|shard| read(shard).len()).sum();
        assert!(held <= 8, "{held}");
    }
}
