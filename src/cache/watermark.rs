//! How far this replica has applied the change log.
//!
//! Revisions are gap-free, so the replica knows exactly which announcements it has seen: the
//! watermark is the highest revision up to which every change has been applied to the cache.
//! Announcements may arrive out of order (two writers publish in the other order than they
//! committed) or not at all (a dropped connection); the ones past a gap wait in `pending` until
//! the gap is filled by reading the store's change log. Only the change log and this replica's
//! own commits are recorded here (announcements are hints, which anyone on the channel can
//! send), and at most [`MAX_PENDING`] revisions wait: beyond, the farthest are dropped, and the
//! change log, read in order, records them again when the gap before them is filled.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::revision::Revision;

/// The most revisions past a gap that wait for it to be filled.
pub const MAX_PENDING: usize = 4_096;

#[derive(Debug)]
pub struct Watermark {
    applied: AtomicU64,
    pending: Mutex<BTreeSet<u64>>,
    advanced: Notify,
}

impl Watermark {
    /// Starts at `start`: everything up to it is already reflected (the cache starts empty).
    pub fn new(start: Revision) -> Watermark {
        Watermark {
            applied: AtomicU64::new(start.sequence()),
            pending: Mutex::new(BTreeSet::new()),
            advanced: Notify::new(),
        }
    }

    pub fn applied(&self) -> Revision {
        Revision::new(self.applied.load(Ordering::Acquire))
    }

    /// Records that the change at `revision` has been applied to the cache.
    pub fn record(&self, revision: Revision) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut applied = self.applied.load(Ordering::Acquire);
        let sequence = revision.sequence();
        if sequence <= applied {
            return;
        }
        if sequence != applied + 1 {
            pending.insert(sequence);
            if pending.len() > MAX_PENDING {
                pending.pop_last();
            }
            return;
        }
        applied = sequence;
        while pending.first() == Some(&(applied + 1)) {
            pending.pop_first();
            applied += 1;
        }
        self.applied.store(applied, Ordering::Release);
        drop(pending);
        self.advanced.notify_waiters();
    }

    /// The revision after which a change is missing, if announcements past a gap are waiting.
    pub fn gap(&self) -> Option<Revision> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (!pending.is_empty()).then(|| self.applied())
    }

    /// Waits until the watermark reaches `revision`, for at most `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let advanced = self.advanced.notified();
            if self.applied() >= revision {
                return true;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return self.applied() >= revision;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_gaps() {
        let watermark = Watermark::new(Revision::new(10));
        watermark.record(Revision::new(12));
        watermark.record(Revision::new(13));
        assert_eq!(watermark.applied(), Revision::new(10));
        assert_eq!(watermark.gap(), Some(Revision::new(10)));
        watermark.record(Revision::new(11));
        assert_eq!(watermark.applied(), Revision::new(13));
        assert_eq!(watermark.gap(), None);
        watermark.record(Revision::new(9));
        watermark.record(Revision::new(13));
        assert_eq!(watermark.applied(), Revision::new(13));
    }

    #[test]
    fn revisions_waiting_past_a_gap_are_bounded() {
        let watermark = Watermark::new(Revision::new(0));
        for sequence in (2..=MAX_PENDING as u64 + 1_000).rev() {
            watermark.record(Revision::new(sequence));
        }
        watermark.record(Revision::new(u64::MAX));
        assert_eq!(watermark.pending.lock().unwrap().len(), MAX_PENDING);
        // The nearest are kept; the change log, read in order, brings the rest.
        watermark.record(Revision::new(1));
        assert_eq!(watermark.applied(), Revision::new(MAX_PENDING as u64 + 1));
        assert_eq!(watermark.gap(), None);
        for sequence in MAX_PENDING as u64 + 2..=MAX_PENDING as u64 + 1_000 {
            watermark.record(Revision::new(sequence));
        }
        assert_eq!(
            watermark.applied(),
            Revision::new(MAX_PENDING as u64 + 1_000)
        );
    }

    #[tokio::test]
    async fn waiting_ends_when_the_watermark_arrives() {
        let watermark = std::sync::Arc::new(Watermark::new(Revision::new(1)));
        assert!(watermark.wait_for(Revision::new(1), Duration::ZERO).await);
        assert!(
            !watermark
                .wait_for(Revision::new(2), Duration::from_millis(5))
                .await
        );
        let advancing = watermark.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            advancing.record(Revision::new(2));
        });
        assert!(
            watermark
                .wait_for(Revision::new(2), Duration::from_secs(5))
                .await
        );
    }
}
