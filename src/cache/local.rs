//! The in-process tier: each cached subject with the facts of its conversations, so a hit
//! answers every purpose and conversation without I/O.
//!
//! A subject keeps at most `max_conversations` conversation facts (the most recently changed).
//! A subject with more is cached as incomplete: a conversation not among those kept is looked up
//! in the store once and remembered in a second, bounded cache, tied to the subject's revision.

use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::policy::{ConversationFacts, SubjectState};
use crate::revision::Revision;
use crate::store::SubjectSnapshot;

/// What the cache holds of one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedSubject {
    /// `None`: the subject was never seen (a negative entry).
    pub subject: Option<SubjectState>,
    /// The subject's revision; for a negative entry, the store's revision when it was read.
    pub revision: Revision,
    /// The kept conversation ids, sorted and concatenated: one allocation rather than one per
    /// id (memory per cached subject is a goal, docs/benchmarks.md).
    conversation_ids: Box<str>,
    /// For each kept conversation, in id order: where its id ends in `conversation_ids`, and
    /// its facts.
    conversations: Box<[(u32, ConversationFacts)]>,
    /// Whether `conversations` holds every conversation fact of the subject.
    complete: bool,
}

/// What the cached entry knows of one conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationLookup {
    Known(Option<ConversationFacts>),
    /// The subject has more conversation facts than the entry keeps, and not this one.
    NotKept,
}

impl CachedSubject {
    pub fn from_snapshot(snapshot: SubjectSnapshot) -> CachedSubject {
        let mut conversations = snapshot.conversations;
        conversations.sort_by(|left, right| left.0.cmp(&right.0));
        let mut ids = String::with_capacity(conversations.iter().map(|(id, _)| id.len()).sum());
        let mut index = Vec::with_capacity(conversations.len());
        for (id, facts) in conversations {
            ids.push_str(&id);
            index.push((u32::try_from(ids.len()).unwrap_or(u32::MAX), facts));
        }
        CachedSubject {
            subject: snapshot.subject,
            revision: snapshot.revision,
            conversation_ids: ids.into_boxed_str(),
            conversations: index.into_boxed_slice(),
            complete: snapshot.complete,
        }
    }

    fn conversation_id(&self, position: usize) -> &str {
        let start = match position {
            0 => 0,
            _ => self.conversations[position - 1].0 as usize,
        };
        let end = self.conversations[position].0 as usize;
        &self.conversation_ids[start..end]
    }

    /// The conversation facts kept, in conversation id order.
    pub fn conversations(&self) -> impl Iterator<Item = (&str, ConversationFacts)> {
        (0..self.conversations.len()).map(|position| {
            (
                self.conversation_id(position),
                self.conversations[position].1,
            )
        })
    }

    /// Whether the entry keeps every conversation fact of the subject.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn conversation(&self, conversation_id: &str) -> ConversationLookup {
        let (mut low, mut high) = (0, self.conversations.len());
        while low < high {
            let middle = (low + high) / 2;
            match self.conversation_id(middle).cmp(conversation_id) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => {
                    return ConversationLookup::Known(Some(self.conversations[middle].1));
                }
            }
        }
        if self.complete {
            ConversationLookup::Known(None)
        } else {
            ConversationLookup::NotKept
        }
    }
}

/// A value with the time it was cached, in seconds since the cache started: the time to live
/// is checked on reading, which costs the cache no expiry queue per entry.
#[derive(Clone, Debug)]
struct Stamped<V> {
    cached_at: u32,
    value: V,
}

/// A bounded map (quick_cache's CLOCK-PRO: a small slot per entry, reads under a shard's read
/// lock), keys hashed with a per-process random seed.
type Bounded<K, V> = quick_cache::sync::Cache<
    K,
    Stamped<V>,
    quick_cache::UnitWeighter,
    foldhash::quality::RandomState,
>;

fn bounded<K, V>(capacity: u64) -> Bounded<K, V>
where
    K: Eq + Hash,
    V: Clone,
{
    let capacity = capacity.max(1);
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(usize::try_from(capacity).unwrap_or(usize::MAX))
        .weight_capacity(capacity)
        .build()
        .expect("cache options are valid");
    quick_cache::sync::Cache::with_options(
        options,
        quick_cache::UnitWeighter,
        foldhash::quality::RandomState::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )
}

/// How long an applied change is remembered at least: longer than any read takes. With Redis,
/// as long as a value there may be used ([`LocalCache::remember_changes_for`]).
const INVALIDATION_MEMORY: Duration = Duration::from_secs(120);

const STRIPES: usize = 64;

/// The subjects cache, the overflow conversations, and the recent invalidations that keep a
/// slow read from putting back a state older than a change already announced.
pub struct LocalCache {
    subjects: Bounded<Box<str>, Arc<CachedSubject>>,
    started: std::time::Instant,
    time_to_live: Duration,
    overflow: Bounded<(String, String), (Revision, Option<ConversationFacts>)>,
    /// Subject → the latest revision applied for it, kept long enough to outlive any read.
    invalidated: Bounded<Box<str>, Revision>,
    /// How long `invalidated` remembers.
    invalidation_memory: Duration,
    /// Makes "check the invalidations, then insert" atomic against "record, then invalidate".
    stripes: Box<[Mutex<()>]>,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalCache")
            .field("subjects", &self.subjects.len())
            .finish()
    }
}

impl LocalCache {
    pub fn new(max_subjects: u64, time_to_live: Duration) -> LocalCache {
        LocalCache {
            subjects: bounded(max_subjects),
            started: std::time::Instant::now(),
            time_to_live,
            overflow: bounded(max_subjects.clamp(1_024, 1 << 20)),
            invalidated: bounded(1 << 20),
            invalidation_memory: INVALIDATION_MEMORY,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Remembers each applied change at least `memory`: as long as a value read from Redis may
    /// be used, so that a genuine but older value put back there is refused.
    pub fn remember_changes_for(mut self, memory: Duration) -> LocalCache {
        self.invalidation_memory = self.invalidation_memory.max(memory);
        self
    }

    fn stripe(&self, subject_id: &str) -> std::sync::MutexGuard<'_, ()> {
        let index = (foldhash::fast::FixedState::default().hash_one(subject_id) as usize) % STRIPES;
        self.stripes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn stamp<V>(&self, value: V) -> Stamped<V> {
        Stamped {
            cached_at: self.now(),
            value,
        }
    }

    /// The value, unless it is older than `time_to_live`.
    fn fresh<V>(&self, stamped: Option<Stamped<V>>, time_to_live: Duration) -> Option<V> {
        let stamped = stamped?;
        let age = u64::from(self.now().saturating_sub(stamped.cached_at));
        (age < time_to_live.as_secs()).then_some(stamped.value)
    }

    pub fn get(&self, subject_id: &str) -> Option<Arc<CachedSubject>> {
        let found = self.subjects.get(subject_id)?;
        let fresh = self.fresh(Some(found), self.time_to_live);
        if fresh.is_none() {
            self.subjects.remove(subject_id);
        }
        fresh
    }

    /// Caches an entry read from a slower tier, unless a later change of the subject was
    /// announced meanwhile. Returns whether it was cached.
    pub fn insert(&self, subject_id: &str, entry: Arc<CachedSubject>) -> bool {
        let _guard = self.stripe(subject_id);
        if self
            .fresh(self.invalidated.get(subject_id), self.invalidation_memory)
            .is_some_and(|announced| announced > entry.revision)
        {
            return false;
        }
        self.subjects.insert(subject_id.into(), self.stamp(entry));
        true
    }

    /// A change of the subject at `revision` was announced: drop what is cached of it, unless
    /// the entry was read at that revision or later (it reflects the change already: the
    /// announcement of a write arriving after a read that saw it).
    pub fn invalidate(&self, subject_id: &str, revision: Revision) {
        let _guard = self.stripe(subject_id);
        let latest = self
            .fresh(self.invalidated.get(subject_id), self.invalidation_memory)
            .map_or(revision, |announced| announced.max(revision));
        self.invalidated
            .insert(subject_id.into(), self.stamp(latest));
        self.subjects
            .remove_if(subject_id, |cached| cached.value.revision < revision);
    }

    /// The facts of a conversation not kept in its subject's entry, if looked up at the entry's
    /// revision.
    pub fn overflow(
        &self,
        subject_id: &str,
        conversation_id: &str,
        revision: Revision,
    ) -> Option<Option<ConversationFacts>> {
        let key = (subject_id.to_owned(), conversation_id.to_owned());
        self.fresh(self.overflow.get(&key), self.time_to_live)
            .filter(|(at, _)| *at == revision)
            .map(|(_, facts)| facts)
    }

    pub fn remember_overflow(
        &self,
        subject_id: &str,
        conversation_id: &str,
        revision: Revision,
        facts: Option<ConversationFacts>,
    ) {
        let key = (subject_id.to_owned(), conversation_id.to_owned());
        self.overflow.insert(key, self.stamp((revision, facts)));
    }

    /// How many subjects are cached.
    pub fn entry_count(&self) -> u64 {
        self.subjects.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Plan, Rating};

    fn snapshot(revision: u64, conversations: &[&str], complete: bool) -> SubjectSnapshot {
        SubjectSnapshot {
            subject: Some(SubjectState {
                plan: Some(Plan::Free),
                ..SubjectState::new()
            }),
            revision: Revision::new(revision),
            conversations: conversations
                .iter()
                .map(|id| {
                    let facts = ConversationFacts {
                        feedback: Some(Rating::ThumbsUp),
                        ..Default::default()
                    };
                    (id.to_string(), facts)
                })
                .collect(),
            complete,
        }
    }

    #[test]
    fn conversations_are_found_or_known_absent() {
        let complete = CachedSubject::from_snapshot(snapshot(3, &["c-9", "c-1", "c-5"], true));
        assert!(matches!(
            complete.conversation("c-5"),
            ConversationLookup::Known(Some(_))
        ));
        assert_eq!(
            complete.conversation("c-2"),
            ConversationLookup::Known(None)
        );
        let partial = CachedSubject::from_snapshot(snapshot(3, &["c-1"], false));
        assert_eq!(partial.conversation("c-2"), ConversationLookup::NotKept);
    }

    #[test]
    fn an_announced_change_beats_an_older_read() {
        let cache = LocalCache::new(100, Duration::from_secs(60));
        let old = Arc::new(CachedSubject::from_snapshot(snapshot(3, &[], true)));
        assert!(cache.insert("u-1", old.clone()));
        cache.invalidate("u-1", Revision::new(7));
        assert!(cache.get("u-1").is_none());
        // A read that started before revision 7 must not put its state back...
        assert!(!cache.insert("u-1", old));
        assert!(cache.get("u-1").is_none());
        // ...one at or after it may.
        let fresh = Arc::new(CachedSubject::from_snapshot(snapshot(7, &[], true)));
        assert!(cache.insert("u-1", fresh));
        assert_eq!(cache.get("u-1").unwrap().revision, Revision::new(7));
        // The announcement of revision 7 arriving again (or late, after the read that saw it)
        // keeps the entry; a later change drops it.
        cache.invalidate("u-1", Revision::new(7));
        assert_eq!(cache.get("u-1").unwrap().revision, Revision::new(7));
        cache.invalidate("u-1", Revision::new(8));
        assert!(cache.get("u-1").is_none());
    }

    #[test]
    fn entries_expire_after_their_time_to_live() {
        let cache = LocalCache::new(100, Duration::ZERO);
        let entry = Arc::new(CachedSubject::from_snapshot(snapshot(3, &[], true)));
        assert!(cache.insert("u-1", entry));
        assert!(cache.get("u-1").is_none());
        let cache = LocalCache::new(100, Duration::from_secs(60));
        let entry = Arc::new(CachedSubject::from_snapshot(snapshot(
            3,
            &["c-2", "c-10"],
            true,
        )));
        assert!(cache.insert("u-1", entry));
        let kept = cache.get("u-1").unwrap();
        let ids: Vec<&str> = kept.conversations().map(|(id, _)| id).collect();
        assert_eq!(ids, ["c-10", "c-2"]);
    }

    #[test]
    fn overflow_facts_are_tied_to_the_revision() {
        let cache = LocalCache::new(100, Duration::from_secs(60));
        cache.remember_overflow("u-1", "c-77", Revision::new(4), None);
        assert_eq!(cache.overflow("u-1", "c-77", Revision::new(4)), Some(None));
        assert_eq!(cache.overflow("u-1", "c-77", Revision::new(5)), None);
    }
}
