//! The audit log: one event per committed change, linked into a SHA-256 hash chain.
//!
//! This module is pure: it defines the event record, its canonical bytes and the chain
//! arithmetic. The store appends events inside the transaction of the change they record and
//! feeds stored events back through [`ChainVerifier`]. The encoding is specified in
//! `docs/audit.md` so that an auditor can recompute every hash from an export.

mod chain;
pub mod decision_log;

pub use chain::{ChainReport, ChainVerifier, GENESIS_HASH, canonical_bytes, chain_hash};

/// The kind of change an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    SubjectUpserted,
    ChoiceSet,
    FeedbackRecorded,
    ConversationFlagged,
    RestrictionSet,
    SubjectDeleted,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::SubjectUpserted => "subject_upserted",
            EventKind::ChoiceSet => "choice_set",
            EventKind::FeedbackRecorded => "feedback_recorded",
            EventKind::ConversationFlagged => "conversation_flagged",
            EventKind::RestrictionSet => "restriction_set",
            EventKind::SubjectDeleted => "subject_deleted",
        }
    }
}

/// One audit event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The revision this event produced: its position in the chain, from 1.
    pub sequence: u64,
    pub event_id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub at_micros: i64,
    pub subject_id: String,
    pub kind: String,
    /// The authenticated calling service.
    pub caller: String,
    pub operator_id: String,
    pub actor_reason: String,
    /// `{"before": ..., "after": ...}` of the change, as written.
    pub detail_json: String,
    pub policy_version: String,
    pub trace_id: String,
    pub prev_hash: String,
    pub hash: String,
}
