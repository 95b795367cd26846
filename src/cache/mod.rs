//! The read path's memory: subject state cached in-process, kept fresh by the change log.
//!
//! A Check asks [`SubjectCache::decision_state`]. A cached subject answers every purpose and
//! conversation without I/O; a miss reads the store once and caches what it read. Every
//! committed change is announced — directly by the replica that made it, and to every replica by
//! reading the store's change log (the audit events, which carry gap-free revisions) — and an
//! announcement drops the subject's entry. The [`Watermark`] says up to which revision this
//! replica has applied every announcement, which is what decides whether an
//! `at_least_as_fresh` check may be answered from memory.
//!
//! Architecture Invariant: an answer from memory reflects every change up to the watermark; a
//! check that needs more (a later revision than the watermark, or `fully_consistent`) reads the
//! store.

pub mod local;
pub mod watermark;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use local::{CachedSubject, ConversationLookup, LocalCache};
pub use watermark::Watermark;

use crate::domain::{ConversationId, SubjectId};
use crate::revision::{Freshness, Revision};
use crate::store::{DecisionState, Store, StoreError};

/// The most changes read from the change log in one query.
const CHANGE_LOG_PAGE: u32 = 10_000;

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
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            max_subjects: 1_000_000,
            time_to_live: Duration::from_secs(600),
            max_conversations: 64,
            poll_interval: Duration::from_millis(100),
            freshness_wait: Duration::from_millis(50),
        }
    }
}

/// Which tier answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Local,
    Store,
}

impl Tier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Store => "store",
        }
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
    watermark: Watermark,
    settings: CacheSettings,
    /// Wakes the change-log reader before its next tick.
    read_change_log: Notify,
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

impl SubjectCache {
    /// Starts with an empty cache at the store's latest revision, and the change-log reader.
    pub async fn start(
        store: Store,
        settings: CacheSettings,
    ) -> Result<(SubjectCache, CacheTasks), StoreError> {
        let head = store.head_revision().await?;
        let cache = SubjectCache {
            inner: Arc::new(Inner {
                local: LocalCache::new(settings.max_subjects, settings.time_to_live),
                watermark: Watermark::new(head),
                store,
                settings,
                read_change_log: Notify::new(),
            }),
        };
        let (stop, stopped) = watch::channel(false);
        let reader = tokio::spawn(cache.clone().read_change_log(stopped));
        Ok((
            cache,
            CacheTasks {
                stop,
                handles: vec![reader],
            },
        ))
    }

    /// The revision up to which every change has been applied to this replica's cache.
    pub fn applied_revision(&self) -> Revision {
        self.inner.watermark.applied()
    }

    /// The state a decision needs, from the fastest tier the freshness allows.
    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        freshness: Freshness,
    ) -> Result<(DecisionState, Tier), StoreError> {
        let inner = &self.inner;
        match freshness {
            Freshness::FullyConsistent => {
                let state = inner.store.decision_state(subject_id, conversation_id).await?;
                return Ok((state, Tier::Store));
            }
            Freshness::AtLeastAsFresh(revision) if inner.watermark.applied() < revision => {
                inner.read_change_log.notify_one();
                let caught_up = inner
                    .watermark
                    .wait_for(revision, inner.settings.freshness_wait)
                    .await;
                if !caught_up {
                    let state = inner.store.decision_state(subject_id, conversation_id).await?;
                    return Ok((state, Tier::Store));
                }
            }
            Freshness::AtLeastAsFresh(_) | Freshness::MinimizeLatency => {}
        }

        let (entry, tier) = match inner.local.get(subject_id.as_str()) {
            Some(entry) => (entry, Tier::Local),
            None => {
                let snapshot = inner
                    .store
                    .snapshot(subject_id, inner.settings.max_conversations)
                    .await?;
                let entry = Arc::new(CachedSubject::from_snapshot(snapshot));
                inner.local.insert(subject_id.as_str(), entry.clone());
                (entry, Tier::Store)
            }
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
        if state.revision == entry.revision {
            inner
                .local
                .remember_overflow(subject, conversation, state.revision, state.conversation);
        }
        Ok((state, Tier::Store))
    }

    /// A change this replica committed: drop the subject's entry at once (so this replica reads
    /// its own writes) and count the revision as applied.
    pub fn committed(&self, subject_id: &str, revision: Revision) {
        self.announce(subject_id, revision);
    }

    fn announce(&self, subject_id: &str, revision: Revision) {
        self.inner.local.invalidate(subject_id, revision);
        self.inner.watermark.record(revision);
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
            if let Err(error) = self.catch_up().await {
                tracing::debug!(%error, "cannot read the change log; retrying");
            }
        }
    }

    /// Applies every change after the watermark, page by page, up to the store's head.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        loop {
            let after = inner.watermark.applied();
            let changes = inner.store.changes_since(after, CHANGE_LOG_PAGE).await?;
            let full_page = changes.len() == CHANGE_LOG_PAGE as usize;
            for change in &changes {
                self.announce(&change.subject_id, change.revision);
            }
            if !full_page {
                return Ok(());
            }
        }
    }
}
