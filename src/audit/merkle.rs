//! The Merkle tree over the audit events: RFC 6962 / RFC 9162 hashing, the frontier kept as
//! events are appended, and the proofs, as ranges of leaves whose hashes the store reads.
//!
//! Leaf hash = SHA-256(0x00 || leaf data), node hash = SHA-256(0x01 || left || right); the hash
//! of a tree (MTH) splits its leaves at the largest power of two below their number. Every
//! range a proof needs is a run of perfect subtrees ([`range_nodes`]), and each perfect subtree
//! is stored once, with the event that completes it ([`NodeId::stored_at`]), so a proof is a
//! handful of point reads whatever the size of the log.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf, a node, a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of no bytes (RFC 9162 2.1.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The hash of a leaf: SHA-256(0x00 || leaf data).
pub fn leaf_hash(leaf_data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf_data);
    hasher.finalize().into()
}

/// The hash of an inner node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// A perfect subtree: 2^level leaves starting at index << level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

impl NodeId {
    /// The sequence of the event whose `tree` column holds it, and its position there: the
    /// event of its last leaf (sequence = leaf index + 1), at position `level`.
    pub fn stored_at(self) -> (u64, usize) {
        ((self.index + 1) << self.level, self.level as usize)
    }

    /// The leaves it covers, `[start, end)`.
    pub fn leaves(self) -> (u64, u64) {
        (self.index << self.level, (self.index + 1) << self.level)
    }
}

/// The peaks of the tree of `size` leaves, largest first (the compact range [0, size)): all a
/// writer needs to hash the next leaf into the tree and to know the root.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hashes of the perfect subtrees of the binary decomposition of the size, largest
    /// (leftmost) first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends a leaf; returns the hashes of the subtrees it completes, level 0 (the leaf)
    /// first: exactly what the event's `tree` column stores.
    pub fn push(&mut self, leaf: Hash) -> Vec<Hash> {
        let mut completed = vec![leaf];
        let mut hash = leaf;
        // Each trailing one bit of the old size is a peak of the same height as the subtree
        // being built: merge them, smallest first.
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self
                .peaks
                .pop()
                .expect("a frontier has one peak per one bit of its size");
            hash = node_hash(&left, &hash);
            completed.push(hash);
            size >>= 1;
        }
        self.peaks.push(hash);
        self.size += 1;
        completed
    }

    /// The root of the tree: the peaks hashed together from the right; [`EMPTY_ROOT`] when
    /// empty.
    pub fn root(&self) -> Hash {
        range_hash(&self.peaks)
    }

    /// The peaks concatenated (32 bytes each), as `audit_chain_head.frontier` stores them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    /// The frontier of a tree of `size` leaves from its stored peaks; `None` unless there are
    /// exactly 32 bytes per one bit of `size`.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Frontier> {
        if bytes.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let peaks = bytes
            .chunks_exact(32)
            .map(|chunk| Hash::try_from(chunk).expect("chunks of 32 bytes"))
            .collect();
        Some(Frontier { size, peaks })
    }
}

/// The perfect subtrees that make up leaves [start, end), left to right; `start` must be a
/// multiple of the largest power of two not above end-start (true of every range in RFC 6962
/// proofs), which makes their sizes strictly decreasing. Empty when `start >= end`.
pub fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut nodes = Vec::new();
    let mut start = start;
    while start < end {
        // The largest aligned block that starts at `start` and fits before `end`.
        let fits = 63 - (end - start).leading_zeros();
        let level = if start == 0 {
            fits
        } else {
            fits.min(start.trailing_zeros())
        };
        nodes.push(NodeId {
            level,
            index: start >> level,
        });
        start += 1 << level;
    }
    nodes
}

/// The hash (MTH) of leaves [start, end) from the hashes of its [`range_nodes`], left to
/// right: folded from the right, as the tree splits a range at its largest power of two.
/// [`EMPTY_ROOT`] for no nodes.
pub fn range_hash(nodes: &[Hash]) -> Hash {
    let Some((last, rest)) = nodes.split_last() else {
        return EMPTY_ROOT;
    };
    rest.iter()
        .rev()
        .fold(*last, |right, left| node_hash(left, &right))
}

/// The largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The ranges whose MTH, in order, form the inclusion proof of `leaf_index` in a tree of
/// `size` (RFC 9162 2.1.3.1 PATH), the leaf's sibling first. Empty when `leaf_index >= size`
/// (and for the one-leaf tree, whose proof is empty).
pub fn inclusion_ranges(leaf_index: u64, size: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    if leaf_index >= size {
        return ranges;
    }
    let (mut low, mut high) = (0, size);
    while high - low > 1 {
        let middle = low + split_point(high - low);
        if leaf_index < middle {
            ranges.push((middle, high));
            high = middle;
        } else {
            ranges.push((low, middle));
            low = middle;
        }
    }
    ranges.reverse();
    ranges
}

/// The ranges whose MTH, in order, form the consistency proof from the tree of `old_size` to
/// the tree of `new_size` (RFC 9162 2.1.4.1 SUBPROOF). Empty when `old_size == 0` or
/// `old_size >= new_size`.
pub fn consistency_ranges(old_size: u64, new_size: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    if old_size == 0 || old_size >= new_size {
        return ranges;
    }
    let (mut low, mut high) = (0, new_size);
    // Whether the subtree being descended is still the old tree's own root (whose hash the
    // verifier has and the proof leaves out).
    let mut whole_old_tree = true;
    loop {
        let (old, new) = (old_size - low, high - low);
        if old == new {
            if !whole_old_tree {
                ranges.push((low, high));
            }
            break;
        }
        let middle = low + split_point(new);
        if old <= middle - low {
            ranges.push((middle, high));
            high = middle;
        } else {
            ranges.push((low, middle));
            low = middle;
            whole_old_tree = false;
        }
    }
    ranges.reverse();
    ranges
}

/// Whether `proof` proves that `leaf` is leaf `leaf_index` of the tree of `size` leaves whose
/// root is `root` (RFC 9162 2.1.3.2).
pub fn verify_inclusion(
    leaf_index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if leaf_index >= size {
        return false;
    }
    let (mut index, mut last) = (leaf_index, size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if last == 0 {
            return false;
        }
        if index & 1 == 1 || index == last {
            hash = node_hash(sibling, &hash);
            while index & 1 == 0 && index != 0 {
                index >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        index >>= 1;
        last >>= 1;
    }
    last == 0 && hash == *root
}

/// Whether `proof` proves that the tree of `old_size` leaves with root `old_root` is a prefix
/// of the tree of `new_size` leaves with root `new_root` (RFC 9162 2.1.4.2). Equal sizes need
/// an empty proof and equal roots; the empty tree is a prefix of every tree (empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == EMPTY_ROOT;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof);
    let (mut old_index, mut new_index) = (old_size - 1, new_size - 1);
    while old_index & 1 == 1 {
        old_index >>= 1;
        new_index >>= 1;
    }
    let (mut old_hash, mut new_hash) = (*path[0], *path[0]);
    for sibling in &path[1..] {
        if new_index == 0 {
            return false;
        }
        if old_index & 1 == 1 || old_index == new_index {
            old_hash = node_hash(sibling, &old_hash);
            new_hash = node_hash(sibling, &new_hash);
            while old_index & 1 == 0 && old_index != 0 {
                old_index >>= 1;
                new_index >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, sibling);
        }
        old_index >>= 1;
        new_index >>= 1;
    }
    new_index == 0 && old_hash == *old_root && new_hash == *new_root
}

/// The reference MTH over all leaves, by the recursive definition (tests, and the offline
/// check of a small log; a long one goes through a [`Frontier`]).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let middle = split_point(n as u64) as usize;
            node_hash(&root_of(&leaves[..middle]), &root_of(&leaves[middle..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ct_merkle::mem_backed_tree::MemoryBackedTree;

    use super::*;

    const MAX_SIZE: u64 = 70;

    fn leaf_datas(count: u64) -> Vec<Vec<u8>> {
        (0..count)
            .map(|index| format!("[{index},\"event-{index}\"]").into_bytes())
            .collect()
    }

    /// The independent implementation, grown to `size` leaves.
    fn reference(size: u64) -> MemoryBackedTree<Sha256, Vec<u8>> {
        let mut tree = MemoryBackedTree::new();
        for data in leaf_datas(size) {
            tree.push(data);
        }
        tree
    }

    fn hashes_of(bytes: &[u8]) -> Vec<Hash> {
        bytes
            .chunks_exact(32)
            .map(|chunk| Hash::try_from(chunk).unwrap())
            .collect()
    }

    /// What the store holds after `MAX_SIZE` appends: each event's `tree` column, by
    /// (sequence, position), as `Frontier::push` returned it.
    struct StoredTree {
        nodes: HashMap<(u64, usize), Hash>,
        leaves: Vec<Hash>,
    }

    impl StoredTree {
        fn build() -> StoredTree {
            let mut frontier = Frontier::new();
            let mut nodes = HashMap::new();
            let mut leaves = Vec::new();
            for (index, data) in leaf_datas(MAX_SIZE).iter().enumerate() {
                let leaf = leaf_hash(data);
                leaves.push(leaf);
                let sequence = index as u64 + 1;
                let column = frontier.push(leaf);
                assert_eq!(column.len(), sequence.trailing_zeros() as usize + 1);
                for (position, hash) in column.into_iter().enumerate() {
                    nodes.insert((sequence, position), hash);
                }
            }
            StoredTree { nodes, leaves }
        }

        /// The MTH of a range, read as the store reads it: only rows of the tree of `size`.
        fn range(&self, (start, end): (u64, u64), size: u64) -> Hash {
            let nodes = range_nodes(start, end);
            let mut previous_level = u32::MAX;
            let hashes: Vec<Hash> = nodes
                .iter()
                .map(|node| {
                    assert!(
                        node.level < previous_level,
                        "sizes decrease in {start}..{end}"
                    );
                    previous_level = node.level;
                    let (sequence, position) = node.stored_at();
                    assert!(
                        sequence <= size,
                        "{node:?} is not yet stored at size {size}"
                    );
                    self.nodes[&(sequence, position)]
                })
                .collect();
            let expected = root_of(&self.leaves[start as usize..end as usize]);
            assert_eq!(range_hash(&hashes), expected, "range {start}..{end}");
            expected
        }

        fn inclusion_proof(&self, leaf_index: u64, size: u64) -> Vec<Hash> {
            let ranges = inclusion_ranges(leaf_index, size);
            assert_few_reads(&ranges, size);
            ranges
                .into_iter()
                .map(|range| self.range(range, size))
                .collect()
        }

        fn consistency_proof(&self, old_size: u64, new_size: u64) -> Vec<Hash> {
            let ranges = consistency_ranges(old_size, new_size);
            assert_few_reads(&ranges, new_size);
            ranges
                .into_iter()
                .map(|range| self.range(range, new_size))
                .collect()
        }
    }

    /// A proof reads at most 2·log2(size) + 1 stored nodes: every range is one node but at
    /// most one, which ends at the tree's right edge.
    fn assert_few_reads(ranges: &[(u64, u64)], size: u64) {
        let split: Vec<usize> = ranges
            .iter()
            .map(|&(start, end)| range_nodes(start, end).len())
            .filter(|&nodes| nodes > 1)
            .collect();
        assert!(split.len() <= 1, "{ranges:?} of {size}");
        let reads: usize = ranges
            .iter()
            .map(|&(start, end)| range_nodes(start, end).len())
            .sum();
        let log2 = 63 - size.leading_zeros() as usize;
        assert!(
            reads <= 2 * log2 + 1,
            "{reads} reads for {ranges:?} of {size}"
        );
    }

    #[test]
    fn the_empty_root_is_the_hash_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(root_of(&[]), EMPTY_ROOT);
        assert_eq!(Frontier::new().root(), EMPTY_ROOT);
        assert_eq!(
            <[u8; 32]>::from(*reference(0).root().as_bytes()),
            EMPTY_ROOT
        );
    }

    #[test]
    fn roots_match_the_reference_implementation_at_every_size() {
        let stored = StoredTree::build();
        let mut frontier = Frontier::new();
        for size in 1..=MAX_SIZE {
            frontier.push(stored.leaves[size as usize - 1]);
            let expected = reference(size).root();
            let expected: Hash = (*expected.as_bytes()).into();
            assert_eq!(frontier.root(), expected, "size {size}");
            assert_eq!(root_of(&stored.leaves[..size as usize]), expected);
            assert_eq!(frontier.size(), size);
            // The peaks are the compact range [0, size), read back from the stored nodes.
            assert_eq!(frontier.peaks().len(), size.count_ones() as usize);
            let peaks: Vec<Hash> = range_nodes(0, size)
                .into_iter()
                .map(|node| stored.nodes[&node.stored_at()])
                .collect();
            assert_eq!(frontier.peaks(), peaks.as_slice());
            assert_eq!(range_hash(&peaks), expected);
        }
    }

    #[test]
    fn a_pushed_column_holds_the_subtrees_the_leaf_completes() {
        let stored = StoredTree::build();
        for ((sequence, position), hash) in &stored.nodes {
            let node = NodeId {
                level: *position as u32,
                index: (sequence >> position) - 1,
            };
            assert_eq!(node.stored_at(), (*sequence, *position));
            let (start, end) = node.leaves();
            assert_eq!(end, *sequence);
            assert_eq!(*hash, root_of(&stored.leaves[start as usize..end as usize]));
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_for_every_leaf_and_size() {
        let stored = StoredTree::build();
        for size in 1..=MAX_SIZE {
            let tree = reference(size);
            let root: Hash = (*tree.root().as_bytes()).into();
            for leaf_index in 0..size {
                let proof = stored.inclusion_proof(leaf_index, size);
                let expected = tree.prove_inclusion(leaf_index as usize);
                assert_eq!(
                    proof,
                    hashes_of(expected.as_bytes()),
                    "leaf {leaf_index} of {size}"
                );
                let leaf = stored.leaves[leaf_index as usize];
                assert!(verify_inclusion(leaf_index, size, &leaf, &proof, &root));
                // The reference accepts ours too.
                tree.root()
                    .verify_inclusion(
                        &leaf_datas(size)[leaf_index as usize],
                        leaf_index,
                        &ct_merkle::InclusionProof::try_from_bytes(proof.concat()).unwrap(),
                    )
                    .unwrap();
            }
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_for_every_pair_of_sizes() {
        let stored = StoredTree::build();
        for new_size in 1..=MAX_SIZE {
            let tree = reference(new_size);
            let new_root: Hash = (*tree.root().as_bytes()).into();
            for old_size in 1..=new_size {
                let old_root = root_of(&stored.leaves[..old_size as usize]);
                let proof = stored.consistency_proof(old_size, new_size);
                let expected = tree.prove_consistency((new_size - old_size) as usize);
                assert_eq!(
                    proof,
                    hashes_of(expected.as_bytes()),
                    "{old_size} -> {new_size}"
                );
                assert!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &proof),
                    "{old_size} -> {new_size}"
                );
            }
            assert!(consistency_ranges(0, new_size).is_empty());
            assert!(verify_consistency(0, new_size, &EMPTY_ROOT, &new_root, &[]));
        }
    }

    #[test]
    fn a_wrong_inclusion_proof_is_refused() {
        let stored = StoredTree::build();
        for size in 1..=MAX_SIZE {
            let root = root_of(&stored.leaves[..size as usize]);
            for leaf_index in 0..size {
                let leaf = stored.leaves[leaf_index as usize];
                let proof = stored.inclusion_proof(leaf_index, size);
                let mut flipped_leaf = leaf;
                flipped_leaf[31] ^= 1;
                assert!(!verify_inclusion(
                    leaf_index,
                    size,
                    &flipped_leaf,
                    &proof,
                    &root
                ));
                let mut flipped_root = root;
                flipped_root[0] ^= 0x80;
                assert!(!verify_inclusion(
                    leaf_index,
                    size,
                    &leaf,
                    &proof,
                    &flipped_root
                ));
                for position in 0..proof.len() {
                    let mut flipped = proof.clone();
                    flipped[position][7] ^= 4;
                    assert!(!verify_inclusion(leaf_index, size, &leaf, &flipped, &root));
                }
                if !proof.is_empty() {
                    let truncated = &proof[..proof.len() - 1];
                    assert!(!verify_inclusion(leaf_index, size, &leaf, truncated, &root));
                }
                let mut extended = proof.clone();
                extended.push(root);
                assert!(!verify_inclusion(leaf_index, size, &leaf, &extended, &root));
                if size > 1 {
                    let other = (leaf_index + 1) % size;
                    assert!(!verify_inclusion(other, size, &leaf, &proof, &root));
                }
                assert!(!verify_inclusion(size, size, &leaf, &proof, &root));
                // A size other than the proof's, with that size's own root. (The same root
                // under another size may verify: the checkpoint binds the size to the root.)
                for other_size in [size - 1, size + 1] {
                    if leaf_index < other_size && other_size <= MAX_SIZE {
                        let other_root = root_of(&stored.leaves[..other_size as usize]);
                        assert!(
                            !verify_inclusion(leaf_index, other_size, &leaf, &proof, &other_root),
                            "leaf {leaf_index} of {size} as of {other_size}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_wrong_consistency_proof_is_refused() {
        let stored = StoredTree::build();
        for new_size in 2..=MAX_SIZE {
            let new_root = root_of(&stored.leaves[..new_size as usize]);
            for old_size in 1..new_size {
                let old_root = root_of(&stored.leaves[..old_size as usize]);
                let proof = stored.consistency_proof(old_size, new_size);
                let verify =
                    |old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]| {
                        verify_consistency(old, new, old_root, new_root, proof)
                    };
                for position in 0..proof.len() {
                    let mut flipped = proof.clone();
                    flipped[position][0] ^= 1;
                    assert!(!verify(old_size, new_size, &old_root, &new_root, &flipped));
                }
                let mut flipped_old = old_root;
                flipped_old[5] ^= 1;
                assert!(!verify(old_size, new_size, &flipped_old, &new_root, &proof));
                let mut flipped_new = new_root;
                flipped_new[5] ^= 1;
                assert!(!verify(old_size, new_size, &old_root, &flipped_new, &proof));
                assert!(!verify(
                    old_size,
                    new_size,
                    &old_root,
                    &new_root,
                    &proof[..proof.len() - 1]
                ));
                // Other sizes, with their own roots.
                let root = |size: u64| root_of(&stored.leaves[..size as usize]);
                if new_size < MAX_SIZE {
                    let other = root(new_size + 1);
                    assert!(!verify(old_size, new_size + 1, &old_root, &other, &proof));
                }
                let other = root(old_size + 1);
                assert!(!verify(old_size + 1, new_size, &other, &new_root, &proof));
                if old_size > 1 {
                    let other = root(old_size - 1);
                    assert!(!verify(old_size - 1, new_size, &other, &new_root, &proof));
                }
                assert!(!verify(new_size, old_size, &new_root, &old_root, &proof));
            }
        }
        let root = root_of(&stored.leaves[..5]);
        assert!(verify_consistency(5, 5, &root, &root, &[]));
        assert!(!verify_consistency(5, 5, &root, &root, &[root]));
        assert!(!verify_consistency(0, 5, &root, &root, &[]));
    }

    #[test]
    fn proofs_of_a_large_log_read_few_nodes_all_stored_by_then() {
        for size in [10_000_000_u64, 10_000_001, (1 << 40) + 12_345, 1 << 50] {
            for leaf_index in [0, 1, size / 3, size / 2, size - 2, size - 1] {
                let ranges = inclusion_ranges(leaf_index, size);
                assert_few_reads(&ranges, size);
                for (start, end) in ranges {
                    // The nodes tile the range, left to right, each stored by then.
                    let mut next = start;
                    for node in range_nodes(start, end) {
                        assert_eq!(node.leaves().0, next);
                        next = node.leaves().1;
                        assert!(node.stored_at().0 <= size);
                    }
                    assert_eq!(next, end);
                }
                if leaf_index > 0 {
                    assert_few_reads(&consistency_ranges(leaf_index, size), size);
                }
            }
        }
    }

    #[test]
    fn range_nodes_split_a_range_into_aligned_subtrees() {
        assert_eq!(range_nodes(3, 3), Vec::new());
        assert_eq!(
            range_nodes(0, 13),
            vec![
                NodeId { level: 3, index: 0 },
                NodeId { level: 2, index: 2 },
                NodeId {
                    level: 0,
                    index: 12
                },
            ]
        );
        assert_eq!(
            range_nodes(8, 11),
            vec![
                NodeId { level: 1, index: 4 },
                NodeId {
                    level: 0,
                    index: 10
                }
            ]
        );
        assert_eq!(NodeId { level: 2, index: 2 }.stored_at(), (12, 2));
        assert_eq!(NodeId { level: 0, index: 0 }.stored_at(), (1, 0));
    }

    #[test]
    fn a_frontier_round_trips_through_its_bytes() {
        let stored = StoredTree::build();
        let mut frontier = Frontier::new();
        assert_eq!(Frontier::from_bytes(0, &[]), Some(Frontier::new()));
        for size in 1..=MAX_SIZE {
            frontier.push(stored.leaves[size as usize - 1]);
            let bytes = frontier.to_bytes();
            assert_eq!(bytes.len(), 32 * size.count_ones() as usize);
            let restored = Frontier::from_bytes(size, &bytes).unwrap();
            assert_eq!(restored, frontier);
            assert_eq!(Frontier::from_bytes(size, &bytes[..bytes.len() - 1]), None);
            assert_eq!(
                Frontier::from_bytes(size, &[bytes.as_slice(), &[0]].concat()),
                None
            );
            assert_eq!(
                Frontier::from_bytes(size, &[bytes.as_slice(), &[0; 32]].concat()),
                None
            );
            // A restored frontier goes on growing like the original.
            if size < MAX_SIZE {
                let mut grown = restored;
                let mut original = frontier.clone();
                let next = stored.leaves[size as usize];
                assert_eq!(grown.push(next), original.push(next));
                assert_eq!(grown, original);
            }
        }
        assert_eq!(Frontier::from_bytes(0, &[0; 32]), None);
    }
}
