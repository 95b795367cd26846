//! The audit log: one event per committed change, linked into a SHA-256 hash chain.
//!
//! This module is pure: it defines the event record, its canonical bytes, the chain arithmetic
//! and the row of a recorded decision (`crate::decision_log` writes it). The store appends
//! events inside the transaction of the change they record and feeds stored events back through
//! [`ChainVerifier`]. The encoding is specified in `docs/audit.md` so that an auditor can
//! recompute every hash from an export.

mod chain;

pub use chain::{ChainReport, ChainVerifier, GENESIS_HASH, canonical_bytes, chain_hash};

use crate::policy::{Decision, Purpose, Reason, Source};

/// The kind of change an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    SubjectUpserted,
    ChoiceSet,
    FeedbackRecorded,
    ConversationFlagged,
    RestrictionSet,
    SubjectDeleted,
    /// A policy version was stored (its subject id is empty).
    PolicyApplied,
    /// A rights request was filed; its effects on the subject, if any, are events of their own.
    RightsRequestFiled,
    /// A rights request moved to another state.
    RightsRequestAdvanced,
    /// A rights request's deadline was extended.
    RightsRequestExtended,
    /// A choice's expiry passed: the choice was removed and the default applies again.
    ConsentExpired,
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
            EventKind::PolicyApplied => "policy_applied",
            EventKind::RightsRequestFiled => "rights_request_filed",
            EventKind::RightsRequestAdvanced => "rights_request_advanced",
            EventKind::RightsRequestExtended => "rights_request_extended",
            EventKind::ConsentExpired => "consent_expired",
        }
    }

    pub const ALL: [EventKind; 11] = [
        EventKind::SubjectUpserted,
        EventKind::ChoiceSet,
        EventKind::FeedbackRecorded,
        EventKind::ConversationFlagged,
        EventKind::RestrictionSet,
        EventKind::SubjectDeleted,
        EventKind::PolicyApplied,
        EventKind::RightsRequestFiled,
        EventKind::RightsRequestAdvanced,
        EventKind::RightsRequestExtended,
        EventKind::ConsentExpired,
    ];

    /// Parses a stored kind name; `None` for a name this binary does not know.
    pub fn from_name(text: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One audit event as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// One recorded decision: the request, the answer, and who asked.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionRecord {
    pub decided_at_micros: i64,
    pub decision_id: String,
    pub subject_id: String,
    pub purpose: Purpose,
    pub conversation_id: Option<String>,
    pub source: Source,
    /// `minimize_latency`, `at_least_as_fresh` or `fully_consistent`.
    pub consistency: &'static str,
    pub decision: Decision,
    pub reason: Reason,
    /// The rule id, such as `T3`.
    pub rule: &'static str,
    pub policy_version: &'static str,
    /// The state revision the answer was computed from; `None` for a degraded answer.
    pub revision: Option<u64>,
    pub degraded: bool,
    pub caller: String,
    pub trace_id: String,
}
