//! Canonical bytes and the hash chain.
//!
//! `hash = hex(SHA-256(prev_hash_hex || canonical_bytes))`, where `prev_hash_hex` is the 64
//! lower-case hex characters of the previous event's hash (64 `0` for the first event) and
//! `canonical_bytes` is the compact JSON array of the event's fields in a fixed order (see
//! [`canonical_bytes`]).

use sha2::{Digest, Sha256};

use super::AuditEvent;

/// The `prev_hash` of a chain's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event's fields in their fixed order, as a compact JSON array (serde_json's escaping):
/// `[sequence, event_id, at_micros, subject_id, kind, caller, operator_id, actor_reason,
/// detail_json, policy_version, trace_id]`. `detail_json` is included as the string it is
/// stored as, so its key order never matters.
pub fn canonical_bytes(event: &AuditEvent) -> Vec<u8> {
    let fields = (
        event.sequence,
        &event.event_id,
        event.at_micros,
        &event.subject_id,
        event.kind.as_str(),
        &event.caller,
        &event.operator_id,
        &event.actor_reason,
        &event.detail_json,
        &event.policy_version,
        &event.trace_id,
    );
    serde_json::to_vec(&fields).expect("a tuple of strings and integers always serialises")
}

/// The event's leaf data: [`canonical_bytes`] with the detail replaced by its commitment,
/// `payload_sha256`, so the leaf (and the chain hash of events written since payloads are
/// salted) outlives the erasure of the payload:
/// `[sequence, event_id, at_micros, subject_id, kind, caller, operator_id, actor_reason,
/// payload_sha256, policy_version, trace_id]`.
pub fn leaf_data(event: &AuditEvent) -> Vec<u8> {
    let fields = (
        event.sequence,
        &event.event_id,
        event.at_micros,
        &event.subject_id,
        event.kind.as_str(),
        &event.caller,
        &event.operator_id,
        &event.actor_reason,
        &event.payload_sha256,
        &event.policy_version,
        &event.trace_id,
    );
    serde_json::to_vec(&fields).expect("a tuple of strings and integers always serialises")
}

/// The commitment to a payload: hex SHA-256 of the salt's bytes (hex-decoded; none when the
/// salt is empty) followed by the detail's UTF-8. `None` if the salt is not hex.
pub fn payload_sha256(salt_hex: &str, detail_json: &str) -> Option<String> {
    let salt = hex::decode(salt_hex).ok()?;
    let mut hasher = Sha256::new();
    hasher.update(&salt);
    hasher.update(detail_json.as_bytes());
    Some(hex::encode(hasher.finalize()))
}

/// A fresh salt for a payload: 16 random bytes, as 32 hex characters. The salt keeps an
/// erased payload from being guessed back from its commitment (a detail such as
/// `{"before":"GRANTED","after":"REFUSED"}` has few possible values).
pub fn new_payload_salt() -> String {
    let mut salt = [0_u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
    hex::encode(salt)
}

/// The hash of an event whose predecessor has hash `prev_hash`.
pub fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

/// What a chain verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub ok: bool,
    pub events_checked: u64,
    /// The first event whose link, position or hash does not verify.
    pub first_bad_event_id: Option<String>,
}

/// Recomputes a chain fed event by event in sequence order.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    expected_prev_hash: String,
    expected_sequence: u64,
    events_checked: u64,
    first_bad_event_id: Option<String>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new()
    }
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier {
            expected_prev_hash: GENESIS_HASH.to_owned(),
            expected_sequence: 1,
            events_checked: 0,
            first_bad_event_id: None,
        }
    }

    /// Checks the next event. After the first bad event the verifier keeps counting but
    /// remembers only that first one.
    pub fn feed(&mut self, event: &AuditEvent) {
        self.events_checked += 1;
        let recomputed = chain_hash(&event.prev_hash, &canonical_bytes(event));
        let linked = event.prev_hash == self.expected_prev_hash;
        let in_place = event.sequence == self.expected_sequence;
        if !(linked && in_place && recomputed == event.hash) && self.first_bad_event_id.is_none() {
            self.first_bad_event_id = Some(event.event_id.clone());
        }
        self.expected_prev_hash = event.hash.clone();
        self.expected_sequence = event.sequence + 1;
    }

    /// Counts an event whose stored fields are not an event at all (a kind no version writes,
    /// say): it cannot verify, and the chain goes on from the hash stored with it.
    pub fn feed_unreadable(&mut self, sequence: u64, event_id: String, hash: String) {
        self.events_checked += 1;
        self.first_bad_event_id.get_or_insert(event_id);
        self.expected_prev_hash = hash;
        self.expected_sequence = sequence + 1;
    }

    /// Ends the verification. `head` is the chain head the store recorded with the last write
    /// (sequence and hash), which catches the removal of events from the end of the chain.
    pub fn finish(mut self, head: Option<(u64, &str)>) -> ChainReport {
        let (head_sequence, head_hash) = head.unwrap_or((0, GENESIS_HASH));
        let tail_matches =
            head_sequence + 1 == self.expected_sequence && head_hash == self.expected_prev_hash;
        if !tail_matches && self.first_bad_event_id.is_none() {
            self.first_bad_event_id = Some(format!("chain head at revision {head_sequence}"));
        }
        ChainReport {
            ok: self.first_bad_event_id.is_none(),
            events_checked: self.events_checked,
            first_bad_event_id: self.first_bad_event_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(length: u64) -> Vec<AuditEvent> {
        let mut prev_hash = GENESIS_HASH.to_owned();
        (1..=length)
            .map(|sequence| {
                let mut event = AuditEvent {
                    sequence,
                    event_id: format!("event-{sequence}"),
                    at_micros: 1_700_000_000_000_000 + sequence as i64,
                    subject_id: "u-1".into(),
                    kind: crate::audit::EventKind::ChoiceSet,
                    caller: "billing".into(),
                    operator_id: "op".into(),
                    actor_reason: "ticket \"7\"".into(),
                    detail_json: r#"{"after":"REFUSED"}"#.into(),
                    payload_salt: String::new(),
                    payload_sha256: String::new(),
                    payload_erased: false,
                    policy_version: "2026-01-01".into(),
                    trace_id: String::new(),
                    prev_hash: prev_hash.clone(),
                    hash: String::new(),
                };
                event.hash = chain_hash(&event.prev_hash, &canonical_bytes(&event));
                prev_hash = event.hash.clone();
                event
            })
            .collect()
    }

    fn verify(events: &[AuditEvent], head: Option<(u64, &str)>) -> ChainReport {
        let mut verifier = ChainVerifier::new();
        events.iter().for_each(|event| verifier.feed(event));
        verifier.finish(head)
    }

    #[test]
    fn canonical_bytes_are_a_fixed_json_array() {
        let event = &chain(1)[0];
        let text = String::from_utf8(canonical_bytes(event)).unwrap();
        assert_eq!(
            text,
            r#"[1,"event-1",1700000000000001,"u-1","choice_set","billing","op","ticket \"7\"","{\"after\":\"REFUSED\"}","2026-01-01",""]"#
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        let events = chain(5);
        let head = (5, events[4].hash.as_str());
        let report = verify(&events, Some(head));
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events_checked, 5);
        assert!(verify(&[], None).ok);
    }

    #[test]
    fn an_altered_event_is_reported() {
        let mut events = chain(5);
        events[2].detail_json = r#"{"after":"GRANTED"}"#.into();
        let head = (5, events[4].hash.clone());
        let report = verify(&events, Some((head.0, &head.1)));
        assert!(!report.ok);
        assert_eq!(report.first_bad_event_id.as_deref(), Some("event-3"));
    }

    #[test]
    fn a_removed_event_is_reported() {
        let mut events = chain(5);
        events.remove(1);
        let head = (5, events[3].hash.clone());
        let report = verify(&events, Some((head.0, &head.1)));
        assert_eq!(report.first_bad_event_id.as_deref(), Some("event-3"));
    }

    #[test]
    fn a_truncated_tail_is_reported() {
        let events = chain(5);
        let head = (5, events[4].hash.clone());
        let report = verify(&events[..4], Some((head.0, &head.1)));
        assert!(!report.ok);
        assert_eq!(
            report.first_bad_event_id.as_deref(),
            Some("chain head at revision 5")
        );
    }
}
