//! Which subjects exist: a Bloom filter of every subject id, so that a flood of ids nobody ever
//! created is answered (DENY / UNKNOWN_SUBJECT) without a store query per id.
//!
//! The filter is filled from the store at start and then from the announcements of changes
//! (a subject's first change creates it). It never forgets, and subjects are never removed (a
//! deleted account stays as a tombstone), so "not in the filter" means "never created, as of
//! the watermark". A false positive (about 1 in 1,000 at the sized capacity) costs one store
//! read, whose negative answer the local cache then keeps.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct KnownSubjects {
    bits: Box<[AtomicU64]>,
    bit_count: u64,
    hash_count: u32,
    capacity: u64,
    inserted: AtomicU64,
}

impl std::fmt::Debug for KnownSubjects {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KnownSubjects")
            .field("capacity", &self.capacity)
            .field("inserted", &self.inserted.load(Ordering::Relaxed))
            .finish()
    }
}

/// The false-positive rate the filter is sized for.
const FALSE_POSITIVE_RATE: f64 = 0.001;

impl KnownSubjects {
    /// A filter sized for `capacity` subjects.
    pub fn with_capacity(capacity: u64) -> KnownSubjects {
        let capacity = capacity.max(1_024);
        let ln2 = std::f64::consts::LN_2;
        let bits = (-(capacity as f64) * FALSE_POSITIVE_RATE.ln() / (ln2 * ln2)).ceil() as u64;
        let words = bits.div_ceil(64);
        let hash_count = ((bits as f64 / capacity as f64) * ln2).round().max(1.0) as u32;
        KnownSubjects {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            bit_count: words * 64,
            hash_count,
            capacity,
            inserted: AtomicU64::new(0),
        }
    }

    /// The positions of a subject id: double hashing over two SipHash values.
    fn positions(&self, subject_id: &str) -> impl Iterator<Item = u64> + use<> {
        let hash = |seed: u8| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            seed.hash(&mut hasher);
            subject_id.hash(&mut hasher);
            hasher.finish()
        };
        let (first, second) = (hash(0), hash(1) | 1);
        let bit_count = self.bit_count;
        (0..u64::from(self.hash_count))
            .map(move |index| first.wrapping_add(index.wrapping_mul(second)) % bit_count)
    }

    pub fn insert(&self, subject_id: &str) {
        let mut added = false;
        for position in self.positions(subject_id) {
            let mask = 1_u64 << (position % 64);
            let before = self.bits[(position / 64) as usize].fetch_or(mask, Ordering::Relaxed);
            added |= before & mask == 0;
        }
        if added && self.inserted.fetch_add(1, Ordering::Relaxed) + 1 == self.capacity {
            tracing::warn!(
                capacity = self.capacity,
                "more subjects than the known-subjects filter was sized for: unknown ids will \
                 reach the store more often until the next restart"
            );
        }
    }

    /// `false`: the subject was never created. `true`: it probably was.
    pub fn may_contain(&self, subject_id: &str) -> bool {
        self.positions(subject_id).all(|position| {
            let mask = 1_u64 << (position % 64);
            self.bits[(position / 64) as usize].load(Ordering::Relaxed) & mask != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_ids_are_always_found_and_others_rarely() {
        let known = KnownSubjects::with_capacity(10_000);
        for index in 0..10_000 {
            known.insert(&format!("user-{index}"));
        }
        assert!((0..10_000).all(|index| known.may_contain(&format!("user-{index}"))));
        let false_positives = (0..100_000)
            .filter(|index| known.may_contain(&format!("stranger-{index}")))
            .count();
        assert!(
            false_positives < 400,
            "{false_positives} false positives in 100,000"
        );
    }
}
