//! Canonical bytes, leaf data and the hash chain.
//!
//! `hash = hex(SHA-256(prev_hash_hex || leaf_data))` ("v2", events written since payloads are
//! stored apart), or `hex(SHA-256(prev_hash_hex || canonical_bytes))` ("v1", events written
//! before), where `prev_hash_hex` is the 64 lower-case hex characters of the previous event's
//! hash (64 `0` for the first event), `canonical_bytes` the compact JSON array of the event's
//! fields in a fixed order (see [`canonical_bytes`]) and `leaf_data` the same with the detail
//! replaced by its commitment (see [`leaf_data`]). A v2 hash outlives the payload's erasure; a
//! v1 hash needs the payload.

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

/// Which rule an event's hash was computed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashRule {
    /// `SHA-256(prev_hash_hex || canonical_bytes)`: events written before payloads were stored
    /// apart; verifiable only while the payload is present.
    V1,
    /// `SHA-256(prev_hash_hex || leaf_data)`: the detail enters through its commitment.
    V2,
}

/// The rule under which the event's `hash` is the hash of its `prev_hash` and its fields: v2,
/// else v1 when the payload is present; `None` when neither gives the stored hash. The link to
/// the previous event and the payload's commitment are checked apart.
pub fn hash_rule(event: &AuditEvent) -> Option<HashRule> {
    if chain_hash(&event.prev_hash, &leaf_data(event)) == event.hash {
        Some(HashRule::V2)
    } else if !event.payload_erased
        && chain_hash(&event.prev_hash, &canonical_bytes(event)) == event.hash
    {
        Some(HashRule::V1)
    } else {
        None
    }
}

/// Whether the event's payload (salt and detail) hashes to its `payload_sha256`. False once
/// the payload is erased.
pub fn payload_matches(event: &AuditEvent) -> bool {
    !event.payload_erased
        && payload_sha256(&event.payload_salt, &event.detail_json).as_deref()
            == Some(event.payload_sha256.as_str())
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

    /// Checks the next event: its link, its position, its hash (v2, or v1 while the payload
    /// is present) and, when the payload is present, that it matches its commitment (a v1
    /// event written before commitments were recorded has none, and its hash covers the
    /// detail itself). After the first bad event the verifier keeps counting but remembers
    /// only that first one.
    pub fn feed(&mut self, event: &AuditEvent) {
        self.events_checked += 1;
        let hash_verifies = match hash_rule(event) {
            Some(HashRule::V2) => event.payload_erased || payload_matches(event),
            Some(HashRule::V1) => event.payload_sha256.is_empty() || payload_matches(event),
            None => false,
        };
        let linked = event.prev_hash == self.expected_prev_hash;
        let in_place = event.sequence == self.expected_sequence;
        if !(linked && in_place && hash_verifies) && self.first_bad_event_id.is_none() {
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

    /// A chain written since payloads are stored apart: salted payloads, v2 hashes.
    fn chain_v2(length: u64) -> Vec<AuditEvent> {
        let mut events = chain(length);
        let mut prev_hash = GENESIS_HASH.to_owned();
        for event in &mut events {
            event.payload_salt = new_payload_salt();
            event.payload_sha256 = payload_sha256(&event.payload_salt, &event.detail_json).unwrap();
            event.prev_hash = prev_hash;
            event.hash = chain_hash(&event.prev_hash, &leaf_data(event));
            prev_hash = event.hash.clone();
        }
        events
    }

    fn erase(event: &mut AuditEvent) {
        event.detail_json = String::new();
        event.payload_salt = String::new();
        event.payload_erased = true;
    }

    fn verify_all(events: &[AuditEvent]) -> ChainReport {
        let head = events
            .last()
            .map(|event| (event.sequence, event.hash.as_str()));
        verify(events, head)
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

    #[test]
    fn a_v2_chain_verifies_and_its_events_say_so() {
        let events = chain_v2(5);
        assert_eq!(hash_rule(&events[2]), Some(HashRule::V2));
        assert!(payload_matches(&events[2]));
        let report = verify_all(&events);
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events_checked, 5);
    }

    #[test]
    fn a_v1_chain_then_v2_events_verify() {
        let mut events = chain(3);
        // Commitments recorded afterwards for the old events do not change their hashes.
        for event in &mut events[1..] {
            event.payload_sha256 = payload_sha256("", &event.detail_json).unwrap();
        }
        let mut prev_hash = events[2].hash.clone();
        for mut event in chain_v2(5).into_iter().skip(3) {
            event.prev_hash = prev_hash;
            event.hash = chain_hash(&event.prev_hash, &leaf_data(&event));
            prev_hash = event.hash.clone();
            events.push(event);
        }
        assert_eq!(hash_rule(&events[1]), Some(HashRule::V1));
        assert_eq!(hash_rule(&events[4]), Some(HashRule::V2));
        let report = verify_all(&events);
        assert!(report.ok, "{report:?}");
    }

    #[test]
    fn a_changed_v2_payload_is_reported_though_its_commitment_was_kept() {
        let mut events = chain_v2(5);
        events[2].detail_json = r#"{"after":"GRANTED"}"#.into();
        assert_eq!(hash_rule(&events[2]), Some(HashRule::V2));
        assert!(!payload_matches(&events[2]));
        let report = verify_all(&events);
        assert_eq!(report.first_bad_event_id.as_deref(), Some("event-3"));
    }

    #[test]
    fn a_changed_commitment_is_reported() {
        let mut events = chain_v2(5);
        let detail = r#"{"after":"GRANTED"}"#;
        events[2].detail_json = detail.into();
        events[2].payload_sha256 = payload_sha256(&events[2].payload_salt, detail).unwrap();
        assert_eq!(hash_rule(&events[2]), None);
        assert_eq!(
            verify_all(&events).first_bad_event_id.as_deref(),
            Some("event-3")
        );
        // A v1 event's recorded commitment must match too, though its hash covers the detail.
        let mut events = chain(3);
        events[1].payload_sha256 = payload_sha256("", r#"{"after":"GRANTED"}"#).unwrap();
        assert_eq!(hash_rule(&events[1]), Some(HashRule::V1));
        assert_eq!(
            verify_all(&events).first_bad_event_id.as_deref(),
            Some("event-2")
        );
    }

    #[test]
    fn an_erased_v2_payload_still_verifies_and_an_erased_v1_one_cannot() {
        let mut events = chain_v2(5);
        erase(&mut events[1]);
        assert_eq!(hash_rule(&events[1]), Some(HashRule::V2));
        assert!(!payload_matches(&events[1]));
        let report = verify_all(&events);
        assert!(report.ok, "{report:?}");
        // An erased event's other fields are still covered by its hash.
        events[1].actor_reason = "rewritten".into();
        assert_eq!(
            verify_all(&events).first_bad_event_id.as_deref(),
            Some("event-2")
        );

        // A v1 hash covers the detail itself: without it, the hash cannot be recomputed.
        let mut events = chain(3);
        events[1].payload_sha256 = payload_sha256("", &events[1].detail_json).unwrap();
        erase(&mut events[1]);
        assert_eq!(hash_rule(&events[1]), None);
        assert_eq!(
            verify_all(&events).first_bad_event_id.as_deref(),
            Some("event-2")
        );
    }
}
