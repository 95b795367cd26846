//! The read path's memory: subject state cached in-process, kept fresh by the change log.
//!
//! A Check asks [`SubjectCache::decision_state`]. A cached subject answers every purpose and
//! conversation without I/O; a miss reads Redis (when configured and authentic, see
//! [`shared`]) or the store once and caches what it read. Every committed change is applied —
//! at once by the replica that made it, and by every replica from the store's change log (the
//! audit events, which carry gap-free revisions) — and applying it drops the subject's entry.
//! The [`Watermark`] says up to which revision this replica has applied every change, which is
//! what decides whether an `at_least_as_fresh` check may be answered from memory.
//!
//! Announcements (Redis pub/sub, PostgreSQL NOTIFY) are hints, not facts: anyone who can publish
//! on the channel can send one. A hint marks the named subject as possibly known and wakes the
//! change-log reader (at most every 5 ms), which applies the real change; it never drops or
//! keeps out an entry, never moves the watermark, never announces a policy version. A hint whose
//! revision the change log has not reached by the read that follows it (every real one is
//! published after its commit) is counted as rejected
//! (`assent_cache_rejected_total{reason="announcement"}`), as is one that does not parse.
//!
//! Architecture Invariant: an answer from memory reflects every change up to the watermark; a
//! check that needs more (a later revision than the watermark, or `fully_consistent`) reads the
//! store. Only the store's change log and this replica's own commits move the watermark.

pub mod known;
pub mod local;
pub mod shared;
pub mod watermark;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use known::KnownSubjects;
pub use local::{CachedSubject, ConversationLookup, LocalCache};
pub use shared::{RedisEntryKey, SharedCache, SharedLookup, SharedSettings};
pub use watermark::Watermark;

use crate::domain::{ConversationId, SubjectId};
use crate::named::named_enum;
use crate::revision::{Freshness, Revision};
use crate::store::{ChangeNotice, Changed, DecisionState, Store, StoreError};

/// The most changes read from the change log in one query.
const CHANGE_LOG_PAGE: u32 = 10_000;
/// How long a lost announcement channel waits before it is re-made.
const LISTEN_RETRY: Duration = Duration::from_millis(500);
/// The longest connecting to a node for the announcement channel may take (a node that does
/// not answer, on a cluster, is passed over for the next seed).
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most hints waiting for the change log to confirm them; beyond, a hint still wakes the
/// reader but is not checked (and not counted).
const MAX_UNCONFIRMED_HINTS: usize = 1_024;
/// The least time between two reads of the change log: a flood of announcements (real or not)
/// wakes the reader at most this often, so it cannot become a flood of store reads.
const CHANGE_LOG_READ_GAP: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests;

/// Every subject id of the store, in a filter sized for twice as many (at least a million).
async fn load_known_subjects(store: &Store) -> Result<KnownSubjects, StoreError> {
    const PAGE: u32 = 10_000;
    let count = store.count_subjects().await?;
    let known = KnownSubjects::with_capacity((count * 2).max(1_000_000));
    let mut after = String::new();
    loop {
        let page = store.subject_ids(&after, PAGE).await?;
        for subject_id in &page {
            known.insert(subject_id);
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after.clone_from(last),
            _ => return Ok(known),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the store's latest revision")]
    Store(#[from] StoreError),
    #[error("invalid redis settings")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// How many subjects the in-process tier keeps.
    pub max_subjects: u64,
    /// How long an entry may live without being announced as changed (a safety net: changes
    /// are announced).
    pub time_to_live: Duration,
    /// How many conversation facts an entry keeps per subject.
    pub max_conversations: usize,
    /// How often the change log is read for changes not announced otherwise.
    pub poll_interval: Duration,
    /// How long an `at_least_as_fresh` check waits for the watermark before reading the store.
    pub freshness_wait: Duration,
    /// The shared Redis tier and announcement channel, if any.
    pub shared: Option<SharedSettings>,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            max_subjects: 1_000_000,
            time_to_live: Duration::from_secs(600),
            max_conversations: 64,
            poll_interval: Duration::from_millis(100),
            freshness_wait: Duration::from_millis(50),
            shared: None,
        }
    }
}

named_enum! {
    /// Which tier answered.
    pub enum Tier {
        Local => "local",
        Shared => "redis",
        Store => "store",
    }
}

named_enum! {
    /// Why a value read from Redis, or an announcement, was not used.
    pub enum Rejection {
        /// A value whose MAC does not verify: written without the key, changed, or copied from
        /// another subject's key.
        Mac => "mac",
        /// A value that does not parse, or whose body does not decode.
        Unreadable => "unreadable",
        /// A value claiming a revision the store had not committed when read afterwards.
        FutureRevision => "future_revision",
        /// A value written longer ago than a value lives in Redis (or later than now): a
        /// genuine value recorded and put back.
        Stale => "stale",
        /// An announcement that does not parse, or names a revision the change log did not
        /// have when read after it.
        Announcement => "announcement",
    }
}

/// The cached read path, shared by every handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SubjectCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    local: LocalCache,
    known: KnownSubjects,
    counters: Counters,
    shared: Option<SharedCache>,
    watermark: Watermark,
    settings: CacheSettings,
    /// Wakes the change-log reader before its next tick.
    read_change_log: Notify,
    /// Whether entries read from Redis may be used: only while its announcements are heard,
    /// and once the changes it may have missed have been re-announced to it.
    shared_ready: AtomicBool,
    /// When this replica last lost Redis (microseconds since the epoch).
    shared_lost_at: Mutex<Option<i64>>,
    /// The revision of the latest change about no subject (a policy version applied) learnt
    /// from the change log or this replica's own commit.
    policy_changes: watch::Sender<Revision>,
    /// The highest revision this replica has seen the store commit: the change log, its own
    /// commits, and the revisions its store reads returned. A value in Redis claiming more is
    /// not used.
    seen: AtomicU64,
    /// The revisions named by hints since the change log was last read, beyond the watermark
    /// then: what the next read must confirm.
    unconfirmed_hints: Mutex<Vec<Revision>>,
}

/// How the cache has answered since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answered from memory.
    pub local_hits: u64,
    /// Answered from Redis.
    pub shared_hits: u64,
    /// Read from the store (misses, overflow conversations, demanded freshness).
    pub store_reads: u64,
    /// Unknown subjects answered by the known-subjects filter, without a store read.
    pub unknown_filtered: u64,
    /// Subjects in memory now.
    pub entries: u64,
    /// The revision up to which every change has been applied.
    pub applied_revision: u64,
}

#[derive(Debug, Default)]
struct Counters {
    local_hits: AtomicU64,
    shared_hits: AtomicU64,
    store_reads: AtomicU64,
    unknown_filtered: AtomicU64,
    /// By [`Rejection`], in the order of `Rejection::ALL`.
    rejected: [AtomicU64; Rejection::ALL.len()],
    /// Reads of the change log that ended well (its tombstones written): each after the one
    /// before, so two more than a moment ago means one began after that moment.
    change_log_reads: AtomicU64,
}

impl Counters {
    fn count(&self, tier: Tier) {
        let counter = match tier {
            Tier::Local => &self.local_hits,
            Tier::Shared => &self.shared_hits,
            Tier::Store => &self.store_reads,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn reject(&self, reason: Rejection) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The background tasks of the cache; [`CacheTasks::shutdown`] stops them.
pub struct CacheTasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl CacheTasks {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

impl crate::metrics::Scraped for SubjectCache {
    fn scrape(&self, scrape: &mut crate::metrics::Scrape<'_>) -> std::fmt::Result {
        let stats = self.stats();
        scrape.counters_by_tier(
            "cache_answers",
            "State lookups by the tier that answered (local memory, redis, store)",
            &[
                ("local", stats.local_hits),
                ("redis", stats.shared_hits),
                ("store", stats.store_reads),
            ],
        )?;
        scrape.counter(
            "cache_unknown_filtered",
            "Unknown subjects answered by the known-subjects filter, without a store read",
            stats.unknown_filtered,
        )?;
        scrape.gauge(
            "cache_entries",
            "Subjects held in this replica's memory",
            stats.entries,
        )?;
        scrape.gauge(
            "cache_applied_revision",
            "The revision up to which this replica has applied every change",
            stats.applied_revision,
        )?;
        let rejected: Vec<(&'static str, u64)> = Rejection::ALL
            .iter()
            .map(|reason| (reason.as_str(), self.rejected(*reason)))
            .collect();
        scrape.counters_by_reason(
            "cache_rejected",
            "Values read from Redis and announcements not used, by reason (mac, unreadable, \
             stale, future_revision, announcement)",
            &rejected,
        )
    }
}

impl SubjectCache {
    /// Starts with an empty cache at the store's latest revision, the change-log reader, and
    /// the listener of announcements (Redis when configured, else PostgreSQL's NOTIFY).
    pub async fn start(
        store: Store,
        settings: CacheSettings,
    ) -> Result<(SubjectCache, CacheTasks), CacheError> {
        let head = store.head_revision().await?;
        let known = load_known_subjects(&store).await?;
        let shared = settings.shared.clone().map(SharedCache::new).transpose()?;
        let cache = SubjectCache {
            inner: Arc::new(Inner {
                local: LocalCache::new(settings.max_subjects, settings.time_to_live)
                    .remember_changes_for(
                        settings
                            .shared
                            .as_ref()
                            .map_or(Duration::ZERO, SharedSettings::longest_use),
                    ),
                known,
                counters: Counters::default(),
                shared,
                watermark: Watermark::new(head),
                store,
                settings,
                read_change_log: Notify::new(),
                shared_ready: AtomicBool::new(false),
                shared_lost_at: Mutex::new(None),
                policy_changes: watch::channel(head).0,
                seen: AtomicU64::new(head.sequence()),
                unconfirmed_hints: Mutex::new(Vec::new()),
            }),
        };
        let (stop, stopped) = watch::channel(false);
        let mut handles = vec![tokio::spawn(cache.clone().read_change_log(stopped.clone()))];
        if cache.inner.shared.is_some() {
            handles.push(tokio::spawn(cache.clone().listen_redis(stopped)));
        } else if let Store::Postgres(postgres) = &cache.inner.store {
            let pool = postgres.pool().clone();
            handles.push(tokio::spawn(cache.clone().listen_postgres(pool, stopped)));
        }
        Ok((cache, CacheTasks { stop, handles }))
    }

    /// The revision up to which every change has been applied to this replica's cache.
    pub fn applied_revision(&self) -> Revision {
        self.inner.watermark.applied()
    }

    /// The revision of the latest policy version applied that this replica has learnt of.
    pub fn latest_policy_revision(&self) -> Revision {
        *self.inner.policy_changes.borrow()
    }

    /// Changes about no subject (policy versions applied), by the revision of the latest: what
    /// tells this replica to reload its policy versions.
    pub fn policy_changes(&self) -> watch::Receiver<Revision> {
        self.inner.policy_changes.subscribe()
    }

    /// Waits until this replica has applied the change log up to `revision`, for at most
    /// `timeout`; whether it has.
    pub async fn wait_for_revision(&self, revision: Revision, timeout: Duration) -> bool {
        self.inner.watermark.wait_for(revision, timeout).await
    }

    /// How many values from Redis or announcements were rejected for `reason` since start.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.inner.counters.rejected[reason as usize].load(Ordering::Relaxed)
    }

    /// The highest revision this replica has seen the store commit.
    fn seen(&self) -> Revision {
        let seen = self.inner.seen.load(Ordering::Acquire);
        Revision::new(seen.max(self.inner.watermark.applied().sequence()))
    }

    /// A revision read from the store (or committed here): the store has committed it.
    fn saw(&self, revision: Revision) {
        self.inner
            .seen
            .fetch_max(revision.sequence(), Ordering::AcqRel);
    }

    pub fn stats(&self) -> CacheStats {
        let counters = &self.inner.counters;
        CacheStats {
            local_hits: counters.local_hits.load(Ordering::Relaxed),
            shared_hits: counters.shared_hits.load(Ordering::Relaxed),
            store_reads: counters.store_reads.load(Ordering::Relaxed),
            unknown_filtered: counters.unknown_filtered.load(Ordering::Relaxed),
            entries: self.inner.local.entry_count(),
            applied_revision: self.applied_revision().sequence(),
        }
    }

    /// Answers, counting which tier did.
    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        freshness: Freshness,
    ) -> Result<(DecisionState, Tier), StoreError> {
        // The common case, answered from memory, stays a small future; the paths that wait or
        // read (and whose futures are large) are boxed, so that moving the request's future
        // does not copy them.
        if let Some(answer) = self.decision_state_in_memory(subject_id, conversation_id, freshness)
        {
            return Ok(answer);
        }
        let answer = Box::pin(self.decide_state(subject_id, conversation_id, freshness)).await?;
        self.inner.counters.count(answer.1);
        Ok(answer)
    }

    /// The answer from memory, counted, when memory has it and the freshness asked for allows
    /// it; `None` when it takes `decision_state`.
    pub fn decision_state_in_memory(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        freshness: Freshness,
    ) -> Option<(DecisionState, Tier)> {
        let answer = self.answer_in_memory(subject_id, conversation_id, freshness)?;
        self.inner.counters.count(answer.1);
        Some(answer)
    }

    /// The answer when memory has it and the freshness asked for allows it; `None` otherwise.
    fn answer_in_memory(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        freshness: Freshness,
    ) -> Option<(DecisionState, Tier)> {
        let inner = &self.inner;
        match freshness {
            Freshness::FullyConsistent => return None,
            Freshness::AtLeastAsFresh(revision) if inner.watermark.applied() < revision => {
                return None;
            }
            Freshness::AtLeastAsFresh(_) | Freshness::MinimizeLatency => {}
        }
        let Some(entry) = inner.local.get(subject_id.as_str()) else {
            if inner.known.may_contain(subject_id.as_str()) {
                return None;
            }
            return Some(self.never_created());
        };
        let conversation = match conversation_id {
            None => None,
            Some(conversation_id) => match entry.conversation(conversation_id.as_str()) {
                ConversationLookup::Known(facts) => facts,
                ConversationLookup::NotKept => return None,
            },
        };
        let state = DecisionState {
            subject: entry.subject,
            conversation,
            revision: entry.revision,
        };
        Some((state, Tier::Local))
    }

    /// The state a decision needs, from the fastest tier the freshness allows.
    async fn decide_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        freshness: Freshness,
    ) -> Result<(DecisionState, Tier), StoreError> {
        let inner = &self.inner;
        match freshness {
            Freshness::FullyConsistent => {
                let state = inner
                    .store
                    .decision_state(subject_id, conversation_id)
                    .await?;
                self.saw(state.revision);
                return Ok((state, Tier::Store));
            }
            Freshness::AtLeastAsFresh(revision) if inner.watermark.applied() < revision => {
                inner.read_change_log.notify_one();
                let caught_up = inner
                    .watermark
                    .wait_for(revision, inner.settings.freshness_wait)
                    .await;
                if !caught_up {
                    // From a read replica only if it has replayed the revision demanded.
                    let state = inner
                        .store
                        .decision_state_at_least(
                            subject_id,
                            conversation_id,
                            revision,
                            inner.settings.max_conversations,
                        )
                        .await?;
                    self.saw(state.revision);
                    return Ok((state, Tier::Store));
                }
            }
            Freshness::AtLeastAsFresh(_) | Freshness::MinimizeLatency => {}
        }

        let (entry, tier) = match inner.local.get(subject_id.as_str()) {
            Some(entry) => (entry, Tier::Local),
            None if !inner.known.may_contain(subject_id.as_str()) => {
                return Ok(self.never_created());
            }
            None => self.load(subject_id).await?,
        };
        let conversation = match conversation_id {
            None => None,
            Some(conversation_id) => match entry.conversation(conversation_id.as_str()) {
                ConversationLookup::Known(facts) => facts,
                ConversationLookup::NotKept => {
                    return self.overflow(subject_id, conversation_id, &entry).await;
                }
            },
        };
        Ok((
            DecisionState {
                subject: entry.subject,
                conversation,
                revision: entry.revision,
            },
            tier,
        ))
    }

    /// The answer for a subject never created (as of the watermark), with no store read.
    fn never_created(&self) -> (DecisionState, Tier) {
        let inner = &self.inner;
        inner
            .counters
            .unknown_filtered
            .fetch_add(1, Ordering::Relaxed);
        let state = DecisionState {
            subject: None,
            conversation: None,
            revision: inner.watermark.applied(),
        };
        (state, Tier::Local)
    }

    /// A subject not in memory: from Redis if it has an entry that passes its checks, else from
    /// the store (and then shared, in the place of a rejected value if there was one).
    async fn load(&self, subject_id: &SubjectId) -> Result<(Arc<CachedSubject>, Tier), StoreError> {
        let inner = &self.inner;
        let mut rejected = None;
        if let Some(shared) = &inner.shared
            && inner.shared_ready.load(Ordering::Acquire)
        {
            match shared.get(subject_id.as_str(), self.seen()).await {
                SharedLookup::Hit(entry) => {
                    // Used only if no later change of the subject was applied meanwhile.
                    let entry = Arc::new(entry);
                    if inner.local.insert(subject_id.as_str(), entry.clone()) {
                        return Ok((entry, Tier::Shared));
                    }
                }
                SharedLookup::Miss => {}
                SharedLookup::Rejected(value) => rejected = Some(value),
            }
        }
        // From a read replica only if it has replayed every revision this server knows
        // committed, so that the entry reflects every change up to the watermark.
        let snapshot = inner
            .store
            .snapshot_at_least(subject_id, inner.settings.max_conversations, self.seen())
            .await?;
        self.saw(snapshot.revision);
        let entry = Arc::new(CachedSubject::from_snapshot(snapshot));
        inner.local.insert(subject_id.as_str(), entry.clone());
        if inner.shared.is_some() {
            let cache = self.clone();
            let (subject_id, shared_entry) = (subject_id.as_str().to_owned(), entry.clone());
            tokio::spawn(async move {
                let Some(shared) = &cache.inner.shared else {
                    return;
                };
                match rejected {
                    Some(rejected) if rejected.forged(shared_entry.revision) => {
                        cache.inner.counters.reject(rejected.reason);
                        tracing::warn!(
                            reason = rejected.reason.as_str(),
                            subject_hash = crate::telemetry::subject_hash(&subject_id),
                            "a value in redis was rejected; replacing it with the store's"
                        );
                        shared.replace(&subject_id, &rejected, &shared_entry).await;
                    }
                    // A change this replica had not applied yet: the value stays unless older.
                    Some(_) | None => shared.put(&subject_id, &shared_entry).await,
                }
            });
        }
        Ok((entry, Tier::Store))
    }

    /// A conversation of a subject with more facts than an entry keeps.
    async fn overflow(
        &self,
        subject_id: &SubjectId,
        conversation_id: &ConversationId,
        entry: &CachedSubject,
    ) -> Result<(DecisionState, Tier), StoreError> {
        let inner = &self.inner;
        let (subject, conversation) = (subject_id.as_str(), conversation_id.as_str());
        if let Some(facts) = inner.local.overflow(subject, conversation, entry.revision) {
            let state = DecisionState {
                subject: entry.subject,
                conversation: facts,
                revision: entry.revision,
            };
            return Ok((state, Tier::Local));
        }
        let state = inner
            .store
            .decision_state(subject_id, Some(conversation_id))
            .await?;
        self.saw(state.revision);
        if state.revision == entry.revision {
            inner.local.remember_overflow(
                subject,
                conversation,
                state.revision,
                state.conversation,
            );
        }
        Ok((state, Tier::Store))
    }

    /// A change this replica committed: drop the subject's entry at once (so this replica reads
    /// its own writes), count the revision as applied, and announce it to the other replicas.
    pub fn committed(&self, changed: Changed, revision: Revision) {
        self.apply_change(&changed, revision);
        if self.inner.shared.is_some() {
            let cache = self.clone();
            tokio::spawn(async move {
                if let Some(shared) = &cache.inner.shared {
                    shared.announce(&changed, revision).await;
                }
            });
        }
    }

    /// A change read from the store's change log. The first time it is applied here, the time
    /// since its commit is the invalidation lag.
    fn apply(&self, change: &ChangeNotice) {
        let fresh = change.revision > self.inner.watermark.applied();
        self.apply_change(&change.changed, change.revision);
        if fresh && change.at_micros > 0 {
            let lag_micros = crate::store::now_micros().saturating_sub(change.at_micros);
            crate::metrics::METRICS
                .invalidation_lag
                .observe(lag_micros.max(0) as f64 / 1e6);
        }
    }

    /// A change the store committed (read from its change log, or committed here).
    fn apply_change(&self, changed: &Changed, revision: Revision) {
        self.saw(revision);
        match changed {
            Changed::Subject(subject_id) => {
                self.inner.known.insert(subject_id.as_str());
                self.inner.local.invalidate(subject_id.as_str(), revision);
            }
            Changed::PolicyVersion => {
                self.inner.policy_changes.send_if_modified(|latest| {
                    let newer = revision > *latest;
                    *latest = (*latest).max(revision);
                    newer
                });
            }
        }
        self.inner.watermark.record(revision);
    }

    /// An announcement heard on the channel (Redis) or through NOTIFY (PostgreSQL): a hint that
    /// the change log has something new. The named subject may be known (a false positive of
    /// the known-subjects filter costs a store read, never an answer), and the change-log reader
    /// is woken: it applies the real change, if there is one, and checks the revision named.
    /// Nothing else: the entry stays until the change log drops it, so a flood of hints naming
    /// a subject costs no store reads of it, and a forged revision is never remembered.
    fn hint(&self, message: &str) {
        let inner = &self.inner;
        let Some(change) = ChangeNotice::parse_announcement(message) else {
            inner.counters.reject(Rejection::Announcement);
            return;
        };
        if let Changed::Subject(subject_id) = &change.changed {
            inner.known.insert(subject_id.as_str());
        }
        if change.revision > inner.watermark.applied() {
            let mut unconfirmed = inner
                .unconfirmed_hints
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if unconfirmed.len() < MAX_UNCONFIRMED_HINTS {
                unconfirmed.push(change.revision);
            }
        }
        inner.read_change_log.notify_one();
    }

    /// Reads the change log after the watermark every `poll_interval` (or when woken), and
    /// applies what it finds: changes made by other replicas, and announcements lost on the way.
    async fn read_change_log(self, mut stopped: watch::Receiver<bool>) {
        let interval = self.inner.settings.poll_interval;
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                () = tokio::time::sleep(interval) => {}
                () = self.inner.read_change_log.notified() => {}
            }
            // Every real announcement is sent after its commit, so the change log read from now
            // on has each hint heard so far: one naming a later revision was not a real one.
            let hints = std::mem::take(
                &mut *self
                    .inner
                    .unconfirmed_hints
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            match self.catch_up().await {
                Ok(()) => {
                    self.inner
                        .counters
                        .change_log_reads
                        .fetch_add(1, Ordering::Relaxed);
                    let applied = self.inner.watermark.applied();
                    // Counted, and not logged one by one: a flood on the channel must not
                    // become a flood of log lines.
                    let forged = hints.iter().filter(|revision| **revision > applied).count();
                    if forged > 0 {
                        self.inner.counters.rejected[Rejection::Announcement as usize]
                            .fetch_add(forged as u64, Ordering::Relaxed);
                        tracing::debug!(
                            forged,
                            applied = applied.sequence(),
                            "announcements named revisions the store has not committed"
                        );
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot read the change log; retrying"),
            }
            // Wake-ups meanwhile are kept (one permit) and served after the gap.
            tokio::time::sleep(CHANGE_LOG_READ_GAP).await;
        }
    }

    /// Takes the announcements of other replicas from Redis as hints, reconnecting after
    /// failures (on a cluster, to the next seed node: the one listened to may be the one that
    /// died). After each (re)subscription the changes made meanwhile are tombstoned again and
    /// the change log is read, for what was announced meanwhile.
    async fn listen_redis(self, mut stopped: watch::Receiver<bool>) {
        use tokio_stream::StreamExt;
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let mut failures = 0_usize;
        loop {
            let subscribed = async {
                let mut pubsub = shared
                    .subscriber(failures)
                    .await?
                    .get_async_pubsub()
                    .await?;
                pubsub.subscribe(shared.channel()).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let subscribed = match tokio::time::timeout(LISTEN_CONNECT_TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) if self.reannounce_to_redis(shared).await => Ok(pubsub),
                Ok(Ok(_)) => Err("cannot re-announce recent changes to redis".to_owned()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("subscribing timed out".to_owned()),
            };
            match subscribed {
                Ok(pubsub) => {
                    tracing::info!("listening to change announcements on redis");
                    self.inner.shared_ready.store(true, Ordering::Release);
                    self.inner.read_change_log.notify_one();
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return,
                            message = messages.next() => match message {
                                Some(message) => match message.get_payload::<String>() {
                                    Ok(text) => self.hint(&text),
                                    Err(_) => self.inner.counters.reject(Rejection::Announcement),
                                },
                                None => break,
                            },
                        }
                    }
                    self.lost_redis();
                    failures = failures.wrapping_add(1);
                    tracing::warn!("lost the redis announcement channel; reconnecting");
                }
                Err(error) => {
                    failures = failures.wrapping_add(1);
                    tracing::debug!(%error, "cannot subscribe to redis announcements");
                }
            }
            tokio::select! {
                _ = stopped.changed() => return,
                () = tokio::time::sleep(LISTEN_RETRY) => {}
            }
        }
    }

    fn lost_redis(&self) {
        self.inner.shared_ready.store(false, Ordering::Release);
        let mut lost_at = self
            .inner
            .shared_lost_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *lost_at = Some(crate::store::now_micros());
    }

    /// Before entries are read from Redis again: puts a tombstone for every subject changed
    /// while this replica could not reach it (a minute of margin before it noticed), or, at
    /// start, within the time a value there may be used. A change whose tombstone got lost then
    /// cannot be hidden by an older entry; and each of those changes is remembered, so that an
    /// older genuine value of the subject put back there (a replay) is refused.
    async fn reannounce_to_redis(&self, shared: &SharedCache) -> bool {
        const MARGIN_MICROS: i64 = 60_000_000;
        let lost_at = *self
            .inner
            .shared_lost_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let since = match lost_at {
            Some(lost_at) => lost_at - MARGIN_MICROS,
            None => {
                let lived = i64::try_from(shared.longest_use().as_micros()).unwrap_or(i64::MAX);
                crate::store::now_micros().saturating_sub(lived)
            }
        };
        let Ok(changes) = self.inner.store.subjects_changed_since(since).await else {
            return false;
        };
        for change in &changes {
            if let Changed::Subject(subject_id) = &change.changed {
                self.inner
                    .local
                    .invalidate(subject_id.as_str(), change.revision);
            }
        }
        shared.tombstone(&tombstones(&changes)).await
    }

    /// Takes the announcements PostgreSQL delivers (NOTIFY at each commit) as hints, when there
    /// is no Redis. A lost connection is re-made by the listener; the change log covers the gap.
    async fn listen_postgres(self, pool: sqlx::PgPool, mut stopped: watch::Receiver<bool>) {
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(crate::store::CHANGES_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listening.await {
                Ok(mut listener) => {
                    self.inner.read_change_log.notify_one();
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return,
                            notification = listener.try_recv() => match notification {
                                Ok(Some(notification)) => self.hint(notification.payload()),
                                // Reconnected: what was sent meanwhile is in the change log.
                                Ok(None) => self.inner.read_change_log.notify_one(),
                                Err(_) => break,
                            },
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot listen to PostgreSQL announcements"),
            }
            tokio::select! {
                _ = stopped.changed() => return,
                () = tokio::time::sleep(LISTEN_RETRY) => {}
            }
        }
    }

    /// Applies every change after the watermark, page by page, up to the store's head. A
    /// change learnt here was not announced through Redis (or not yet): its tombstone is put
    /// there too, in case the replica that made it could not.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        loop {
            let after = inner.watermark.applied();
            let changes = inner.store.changes_since(after, CHANGE_LOG_PAGE).await?;
            let full_page = changes.len() == CHANGE_LOG_PAGE as usize;
            for change in &changes {
                self.apply(change);
            }
            if let Some(shared) = &inner.shared
                && !changes.is_empty()
            {
                shared.tombstone(&tombstones(&changes)).await;
            }
            if !full_page {
                return Ok(());
            }
        }
    }
}

/// The tombstones that hide the cached entries older than changes: one per changed subject.
fn tombstones(changes: &[ChangeNotice]) -> Vec<(&str, Revision)> {
    changes
        .iter()
        .filter_map(|change| match &change.changed {
            Changed::Subject(subject_id) => Some((subject_id.as_str(), change.revision)),
            Changed::PolicyVersion => None,
        })
        .collect()
}
