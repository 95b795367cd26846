//! The audit log: one event per committed change, linked into a SHA-256 hash chain and the
//! leaves of an RFC 6962 Merkle tree whose signed checkpoints are published outside the
//! database.
//!
//! This module is pure: it defines the event record, its canonical bytes and leaf data, the
//! chain arithmetic, the tree ([`merkle`]), checkpoints and their signatures ([`note`]), the
//! export formats and their offline verification ([`offline`]), and the row of a recorded
//! decision (`crate::decision_log` writes it). The store appends events inside the transaction
//! of the change they record and feeds stored events back through [`ChainVerifier`]. The
//! encoding is specified in `docs/audit.md` so that an auditor can recompute every hash from an
//! export.

mod chain;
pub mod merkle;
pub mod note;
pub mod offline;
pub mod segment;

pub use chain::{
    ChainReport, ChainVerifier, GENESIS_HASH, HashRule, canonical_bytes, chain_hash, hash_rule,
    leaf_data, new_payload_salt, payload_matches, payload_sha256,
};
pub use merkle::{
    EMPTY_ROOT, Frontier, Hash, NodeId, consistency_ranges, inclusion_ranges, leaf_hash, node_hash,
    range_hash, range_nodes, root_of, verify_consistency, verify_inclusion,
};

use std::borrow::Cow;

use crate::named::named_enum;
use crate::policy::{Decision, Purpose, Reason, Source};

named_enum! {
    /// The kind of change an event records, by the name stored and hashed.
    pub enum EventKind {
        SubjectUpserted => "subject_upserted",
        ChoiceSet => "choice_set",
        FeedbackRecorded => "feedback_recorded",
        ConversationFlagged => "conversation_flagged",
        RestrictionSet => "restriction_set",
        SubjectDeleted => "subject_deleted",
        /// A policy version was stored (its subject id is empty).
        PolicyApplied => "policy_applied",
        /// A rights request was filed; its effects on the subject, if any, are events of their
        /// own.
        RightsRequestFiled => "rights_request_filed",
        /// A rights request moved to another state.
        RightsRequestAdvanced => "rights_request_advanced",
        /// A rights request's deadline was extended.
        RightsRequestExtended => "rights_request_extended",
        /// A choice's expiry passed: the choice was removed and the default applies again.
        ConsentExpired => "consent_expired",
        /// The payloads (details) of a subject's events were erased from the store; the detail
        /// lists their sequences. The events and their leaves stay.
        PayloadErased => "payload_erased",
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
    pub kind: EventKind,
    /// The authenticated calling service.
    pub caller: String,
    pub operator_id: String,
    pub actor_reason: String,
    /// `{"before": ..., "after": ...}` of the change, as written: the event's payload, stored
    /// apart from the event so it can be erased. Empty once erased.
    pub detail_json: String,
    /// Hex of the 16 random bytes hashed before the detail (empty for events written before
    /// payloads were salted, and once erased).
    pub payload_salt: String,
    /// Hex SHA-256 of the salt and the detail ([`payload_sha256`]): what the leaf commits to,
    /// so the leaf outlives the payload.
    pub payload_sha256: String,
    /// The payload was erased from the store (a `payload_erased` event says when and why).
    pub payload_erased: bool,
    pub policy_version: String,
    pub trace_id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// A decision as the request path knows it, borrowed: what the decision log records of it
/// without copying a string.
#[derive(Clone, Copy, Debug)]
pub struct Decided<'a> {
    pub decided_at_micros: i64,
    pub decision_id: uuid::Uuid,
    pub subject_id: &'a str,
    pub purpose: Purpose,
    pub conversation_id: Option<&'a str>,
    pub source: Source,
    /// `minimize_latency`, `at_least_as_fresh`, `fully_consistent` or `as_of`.
    pub consistency: &'static str,
    pub decision: Decision,
    pub reason: Reason,
    pub rule: &'a str,
    pub policy_version: &'a str,
    pub revision: Option<u64>,
    pub degraded: bool,
    pub caller: &'a str,
    pub trace_id: &'a str,
}

#[cfg(test)]
impl<'a> Decided<'a> {
    /// A memory ALLOW (M2) of `subject_id` at `decided_at_micros`, for tests.
    pub fn example(decision_id: uuid::Uuid, subject_id: &'a str, decided_at_micros: i64) -> Self {
        Decided {
            decided_at_micros,
            decision_id,
            subject_id,
            purpose: Purpose::Memory,
            conversation_id: None,
            source: Source::Conversation,
            consistency: "minimize_latency",
            decision: Decision::Allow,
            reason: Reason::LegitimateInterestDefault,
            rule: "M2",
            policy_version: crate::policy::POLICY_VERSION,
            revision: Some(1),
            degraded: false,
            caller: "test",
            trace_id: "",
        }
    }
}

impl Decided<'_> {
    /// The row this decision becomes.
    pub fn to_record(&self) -> DecisionRecord {
        DecisionRecord {
            decided_at_micros: self.decided_at_micros,
            decision_id: self.decision_id.to_string(),
            subject_id: self.subject_id.to_owned(),
            purpose: self.purpose,
            conversation_id: self.conversation_id.map(str::to_owned),
            source: self.source,
            consistency: self.consistency,
            decision: self.decision,
            reason: self.reason,
            rule: Cow::Owned(self.rule.to_owned()),
            policy_version: Cow::Owned(self.policy_version.to_owned()),
            revision: self.revision,
            degraded: self.degraded,
            caller: self.caller.to_owned(),
            trace_id: self.trace_id.to_owned(),
        }
    }
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
    pub rule: Cow<'static, str>,
    pub policy_version: Cow<'static, str>,
    /// The state revision the answer was computed from; `None` for a degraded answer.
    pub revision: Option<u64>,
    pub degraded: bool,
    pub caller: String,
    pub trace_id: String,
}
