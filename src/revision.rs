//! Revision tokens (the type lives in the client crate, which reads them too) and how fresh
//! the state behind a decision must be.

pub use assent_client::revision::{MalformedRevision, Revision};

/// How fresh the state behind a decision must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Whatever answers fastest (a cache).
    MinimizeLatency,
    /// Reflect at least the write that returned this revision.
    AtLeastAsFresh(Revision),
    /// Read the store of record.
    FullyConsistent,
}
