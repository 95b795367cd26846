//! Offline verification: a subject's export, a full dump of the log or a consistency proof,
//! checked against a signed checkpoint and the signer's verifier key, with no server and no
//! database. The JSON formats are specified in `docs/audit.md` ("Verifying offline").
//!
//! What is checked, each failure naming the event (sequence and id) and what failed:
//! - the checkpoint's signature, by the key given (never by a key the file carries);
//! - each present payload against its commitment: `payload_sha256 = SHA-256(salt || detail)`;
//! - each erased payload is named by a later `payload_erased` event of the same subject;
//! - each event's hash (v2 over the leaf data; v1 over the canonical bytes while the payload is
//!   present);
//! - a dump: sequences 1, 2, … without gaps, each `prev_hash` the previous event's hash, and the
//!   tree over the first checkpoint-size events has the signed root (fewer events than the
//!   checkpoint's size is a truncation);
//! - an export: every event is the export's subject, at leaf `sequence - 1`, with an inclusion
//!   proof that leads from its leaf to the checkpoint's root.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

use super::chain::{GENESIS_HASH, hash_rule, leaf_data, payload_matches};
use super::merkle::{Frontier, Hash, leaf_hash, verify_consistency, verify_inclusion};
use super::note::{CheckpointVerifier, NoteError};
use super::{AuditEvent, EventKind};
use crate::revision::Revision;

/// The `format` of a subject export.
pub const SUBJECT_EXPORT_FORMAT: &str = "assent-subject-export/1";

/// One event as exported and dumped (a line of a full dump).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventObject {
    /// `r1.<hex sequence>`; checked against `sequence` when present.
    #[serde(default)]
    pub revision: Option<String>,
    pub sequence: u64,
    pub event_id: String,
    pub at_micros: i64,
    pub subject_id: String,
    pub kind: String,
    pub caller: String,
    pub operator_id: String,
    pub actor_reason: String,
    /// `None` (JSON null) once the payload is erased.
    pub detail_json: Option<String>,
    /// `None` (JSON null) once the payload is erased.
    pub payload_salt: Option<String>,
    pub payload_sha256: String,
    pub policy_version: String,
    pub trace_id: String,
    pub prev_hash: String,
    pub hash: String,
}

impl EventObject {
    /// The object of an event as the API serves it: the payload (`null` once erased), the
    /// leaf's fields and the chain link. The error names what the served event lacks.
    pub fn from_served(event: crate::proto::AuditEvent) -> Result<EventObject, String> {
        let sequence = Revision::parse_token(&event.revision)
            .map_err(|_| {
                format!(
                    "event {} with a malformed revision {:?}",
                    event.event_id, event.revision
                )
            })?
            .sequence();
        let at = event
            .at
            .ok_or_else(|| format!("event {} without a time", event.event_id))?;
        let actor = event.actor.unwrap_or_default();
        let erased = event.payload_erased;
        Ok(EventObject {
            revision: Some(event.revision),
            sequence,
            event_id: event.event_id,
            at_micros: at.seconds * 1_000_000 + i64::from(at.nanos / 1_000),
            subject_id: event.subject_id,
            kind: event.kind,
            caller: event.caller,
            operator_id: actor.operator_id,
            actor_reason: actor.reason,
            detail_json: (!erased).then_some(event.detail_json),
            payload_salt: (!erased).then_some(event.payload_salt),
            payload_sha256: event.payload_sha256,
            policy_version: event.policy_version,
            trace_id: event.trace_id,
            prev_hash: event.prev_hash,
            hash: event.hash,
        })
    }

    /// The object of a stored event (an erased payload as nulls).
    pub fn from_event(event: &AuditEvent) -> EventObject {
        let payload = |value: &str| (!event.payload_erased).then(|| value.to_owned());
        EventObject {
            revision: Some(Revision::new(event.sequence).to_token()),
            sequence: event.sequence,
            event_id: event.event_id.clone(),
            at_micros: event.at_micros,
            subject_id: event.subject_id.clone(),
            kind: event.kind.as_str().to_owned(),
            caller: event.caller.clone(),
            operator_id: event.operator_id.clone(),
            actor_reason: event.actor_reason.clone(),
            detail_json: payload(&event.detail_json),
            payload_salt: payload(&event.payload_salt),
            payload_sha256: event.payload_sha256.clone(),
            policy_version: event.policy_version.clone(),
            trace_id: event.trace_id.clone(),
            prev_hash: event.prev_hash.clone(),
            hash: event.hash.clone(),
        }
    }

    /// The event the object describes, or what makes it none.
    pub fn to_event(&self) -> Result<AuditEvent, String> {
        let kind = EventKind::from_name(&self.kind)
            .ok_or_else(|| format!("kind {:?} is not an event kind", self.kind))?;
        if let Some(revision) = &self.revision
            && *revision != Revision::new(self.sequence).to_token()
        {
            return Err(format!(
                "revision {revision:?} is not that of sequence {}",
                self.sequence
            ));
        }
        let (detail_json, payload_salt, payload_erased) =
            match (&self.detail_json, &self.payload_salt) {
                (Some(detail), Some(salt)) => (detail.clone(), salt.clone(), false),
                (None, None) => (String::new(), String::new(), true),
                _ => {
                    return Err(
                        "detail_json and payload_salt are not both present or both null".to_owned(),
                    );
                }
            };
        Ok(AuditEvent {
            sequence: self.sequence,
            event_id: self.event_id.clone(),
            at_micros: self.at_micros,
            subject_id: self.subject_id.clone(),
            kind,
            caller: self.caller.clone(),
            operator_id: self.operator_id.clone(),
            actor_reason: self.actor_reason.clone(),
            detail_json,
            payload_salt,
            payload_sha256: self.payload_sha256.clone(),
            payload_erased,
            policy_version: self.policy_version.clone(),
            trace_id: self.trace_id.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// An event of a subject export, with its inclusion proof against the export's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedEvent {
    #[serde(flatten)]
    pub event: EventObject,
    pub leaf_index: u64,
    /// Hex hashes, the leaf's sibling first (RFC 9162 2.1.3).
    pub inclusion_proof: Vec<String>,
}

/// A subject's export (`format` = [`SUBJECT_EXPORT_FORMAT`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectExport {
    pub format: String,
    pub subject_id: String,
    /// The key the exporting server signs with: where to look the key up, never trusted as
    /// the key itself (the verifier is given the key apart).
    pub verifier_key: String,
    /// The signed note every proof is against.
    pub checkpoint: String,
    pub events: Vec<ExportedEvent>,
}

impl SubjectExport {
    /// The export document of an export as the API serves it. The error names what the served
    /// export lacks.
    pub fn from_served(served: crate::proto::SubjectExport) -> Result<SubjectExport, String> {
        let checkpoint = served
            .checkpoint
            .ok_or_else(|| "an export without its checkpoint".to_owned())?;
        let mut events = Vec::with_capacity(served.events.len());
        for exported in served.events {
            let event = exported
                .event
                .ok_or_else(|| "an exported event without the event".to_owned())?;
            let proof = exported
                .proof
                .ok_or_else(|| format!("exported event {} without its proof", event.event_id))?;
            events.push(ExportedEvent {
                event: EventObject::from_served(event)?,
                leaf_index: proof.leaf_index,
                inclusion_proof: proof.hashes.iter().map(hex::encode).collect(),
            });
        }
        Ok(SubjectExport {
            format: SUBJECT_EXPORT_FORMAT.to_owned(),
            subject_id: served.subject_id,
            verifier_key: checkpoint.verifier_key,
            checkpoint: checkpoint.note,
            events,
        })
    }
}

/// A consistency proof file: the tree of `old_size` is a prefix of the tree of `new_size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProofFile {
    pub old_size: u64,
    pub new_size: u64,
    /// Hex hashes (RFC 9162 2.1.4).
    pub hashes: Vec<String>,
}

/// A file that cannot be verified at all: not the format, or a key that is not a key.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("export: {0}")]
    Export(String),
    #[error(transparent)]
    Key(#[from] NoteError),
}

/// One thing that did not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The event's sequence, when the failure is about one event.
    pub sequence: Option<u64>,
    pub event_id: Option<String>,
    /// What failed.
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.sequence, &self.event_id) {
            (Some(sequence), Some(event_id)) => {
                write!(formatter, "event {sequence} ({event_id}): {}", self.what)
            }
            (Some(sequence), None) => write!(formatter, "event {sequence}: {}", self.what),
            _ => formatter.write_str(&self.what),
        }
    }
}

/// What an offline verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Nothing failed.
    pub ok: bool,
    pub events_checked: u64,
    /// Present payloads that match their commitment.
    pub payloads_checked: u64,
    /// Erased payloads (their events' leaves and hashes still checked).
    pub payloads_erased: u64,
    /// The size of the tree of the checkpoint verified against (0 if it did not verify).
    pub tree_size: u64,
    /// How many checks failed.
    pub failures: u64,
    pub first_failure: Option<Failure>,
}

impl fmt::Display for Report {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = format!(
            "{} events checked ({} payloads checked, {} erased) against the checkpoint of {} events",
            self.events_checked, self.payloads_checked, self.payloads_erased, self.tree_size
        );
        match &self.first_failure {
            None => write!(formatter, "ok: {counts}"),
            Some(failure) => write!(
                formatter,
                "FAILED: {} failures; first: {failure}; {counts}",
                self.failures
            ),
        }
    }
}

/// Verifies a subject's export (JSON, [`SubjectExport`]) against `verifier_key`. An error
/// means the file is not an export or the key is not a verifier key; everything else is in
/// the report.
pub fn verify_export(export_json: &str, verifier_key: &str) -> Result<Report, OfflineError> {
    let verifier = CheckpointVerifier::from_key_text(verifier_key)?;
    let export: SubjectExport = serde_json::from_str(export_json)
        .map_err(|error| OfflineError::Export(format!("is not a subject export: {error}")))?;
    if export.format != SUBJECT_EXPORT_FORMAT {
        return Err(OfflineError::Export(format!(
            "format {:?} is not {SUBJECT_EXPORT_FORMAT:?}",
            export.format
        )));
    }
    let mut findings = Findings::default();
    let checkpoint = findings.checkpoint(&verifier, &export.checkpoint);
    let mut erasures = Erasures::default();
    let mut previous_sequence = 0;
    for exported in &export.events {
        findings.report.events_checked += 1;
        let object = &exported.event;
        let Some(event) = findings.event(object) else {
            continue;
        };
        let fail = |findings: &mut Findings, what: String| findings.fail_event(&event, what);
        if event.subject_id != export.subject_id {
            fail(
                &mut findings,
                "is not an event of the export's subject".to_owned(),
            );
        }
        if event.sequence <= previous_sequence {
            fail(
                &mut findings,
                format!("comes after event {previous_sequence}: events are not in sequence order"),
            );
        }
        previous_sequence = event.sequence;
        findings.payload_and_hash(&event, &mut erasures);
        if event.sequence == 0 || exported.leaf_index != event.sequence - 1 {
            fail(
                &mut findings,
                format!("leaf_index {} is not sequence - 1", exported.leaf_index),
            );
            continue;
        }
        let Some((size, root)) = checkpoint else {
            continue;
        };
        if exported.leaf_index >= size {
            fail(
                &mut findings,
                format!("is not in the checkpoint's tree of {size} events"),
            );
            continue;
        }
        let Some(proof) = parse_hashes(&exported.inclusion_proof) else {
            fail(
                &mut findings,
                "inclusion_proof is not a list of 64-character hex hashes".to_owned(),
            );
            continue;
        };
        let leaf = leaf_hash(&leaf_data(&event));
        if !verify_inclusion(exported.leaf_index, size, &leaf, &proof, &root) {
            fail(
                &mut findings,
                format!(
                    "its leaf and inclusion proof do not lead to the root of the checkpoint of {size} events"
                ),
            );
        }
    }
    erasures.finish(&mut findings);
    Ok(findings.finish())
}

/// Verifies a full dump (JSON lines, one [`EventObject`] per line, sequence 1 first) against a
/// signed checkpoint and `verifier_key`: the chain from the first event, and the tree over the
/// first checkpoint-size events against the signed root. Events past the checkpoint's size
/// are checked as a chain only. A bad key or checkpoint is a failure of the report.
pub fn verify_dump(lines: impl BufRead, checkpoint_note: &str, verifier_key: &str) -> Report {
    let mut findings = Findings::default();
    let checkpoint = match CheckpointVerifier::from_key_text(verifier_key) {
        Ok(verifier) => findings.checkpoint(&verifier, checkpoint_note),
        Err(error) => {
            findings.fail(None, None, error.to_string());
            None
        }
    };
    let mut erasures = Erasures::default();
    let mut frontier = Frontier::new();
    let mut expected_sequence = 1;
    let mut expected_prev_hash = GENESIS_HASH.to_owned();
    let compare_root = |findings: &mut Findings, frontier: &Frontier| {
        if let Some((size, root)) = checkpoint
            && frontier.size() == size
            && frontier.root() != root
        {
            findings.fail(
                None,
                None,
                format!(
                    "tree: the root of events 1 to {size} is {}, not the checkpoint's {}",
                    hex::encode(frontier.root()),
                    hex::encode(root)
                ),
            );
        }
    };
    compare_root(&mut findings, &frontier);
    for (line_index, line) in lines.lines().enumerate() {
        let line_number = line_index + 1;
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                findings.fail(
                    None,
                    None,
                    format!("line {line_number}: cannot be read: {error}"),
                );
                break;
            }
        };
        if line.is_empty() {
            continue;
        }
        findings.report.events_checked += 1;
        let object: EventObject = match serde_json::from_str(&line) {
            Ok(object) => object,
            Err(error) => {
                findings.fail(
                    None,
                    None,
                    format!("line {line_number}: is not an event object: {error}"),
                );
                continue;
            }
        };
        let Some(event) = findings.event(&object) else {
            expected_sequence = object.sequence.saturating_add(1);
            expected_prev_hash = object.hash.clone();
            continue;
        };
        if event.sequence != expected_sequence {
            findings.fail_event(
                &event,
                format!(
                    "comes where event {expected_sequence} should (an event is missing or out of place)"
                ),
            );
        }
        if event.prev_hash != expected_prev_hash {
            findings.fail_event(
                &event,
                "prev_hash is not the hash of the event before it".to_owned(),
            );
        }
        findings.payload_and_hash(&event, &mut erasures);
        frontier.push(leaf_hash(&leaf_data(&event)));
        compare_root(&mut findings, &frontier);
        expected_sequence = event.sequence.saturating_add(1);
        expected_prev_hash = event.hash;
    }
    if let Some((size, _)) = checkpoint
        && frontier.size() < size
    {
        findings.fail(
            None,
            None,
            format!(
                "truncated: the dump holds {} events, the checkpoint covers {size}",
                frontier.size()
            ),
        );
    }
    erasures.finish(&mut findings);
    findings.finish()
}

/// Verifies a consistency proof file ([`ConsistencyProofFile`]) between two signed
/// checkpoints: both verify with `verifier_key`, the file's sizes are theirs, and the proof
/// shows the old tree is a prefix of the new one.
pub fn verify_consistency_file(
    old_note: &str,
    new_note: &str,
    proof_json: &str,
    verifier_key: &str,
) -> Report {
    let mut findings = Findings::default();
    let verifier = match CheckpointVerifier::from_key_text(verifier_key) {
        Ok(verifier) => verifier,
        Err(error) => {
            findings.fail(None, None, error.to_string());
            return findings.finish();
        }
    };
    let old = findings.checkpoint(&verifier, old_note);
    let new = findings.checkpoint(&verifier, new_note);
    let proof: ConsistencyProofFile = match serde_json::from_str(proof_json) {
        Ok(proof) => proof,
        Err(error) => {
            findings.fail(
                None,
                None,
                format!("consistency proof: is not a proof file: {error}"),
            );
            return findings.finish();
        }
    };
    let (Some((old_size, old_root)), Some((new_size, new_root))) = (old, new) else {
        return findings.finish();
    };
    if (proof.old_size, proof.new_size) != (old_size, new_size) {
        findings.fail(
            None,
            None,
            format!(
                "consistency proof: is from {} to {}, the checkpoints are of {old_size} and {new_size}",
                proof.old_size, proof.new_size
            ),
        );
        return findings.finish();
    }
    let Some(hashes) = parse_hashes(&proof.hashes) else {
        findings.fail(
            None,
            None,
            "consistency proof: hashes are not 64-character hex hashes".to_owned(),
        );
        return findings.finish();
    };
    if !verify_consistency(old_size, new_size, &old_root, &new_root, &hashes) {
        findings.fail(
            None,
            None,
            format!(
                "consistency proof: does not show the tree of {old_size} events is a prefix of the tree of {new_size}"
            ),
        );
    }
    findings.finish()
}

/// The report being built.
#[derive(Default)]
struct Findings {
    report: Report,
}

impl Findings {
    fn fail(&mut self, sequence: Option<u64>, event_id: Option<&str>, what: String) {
        self.report.failures += 1;
        self.report.first_failure.get_or_insert_with(|| Failure {
            sequence,
            event_id: event_id.map(str::to_owned),
            what,
        });
    }

    fn fail_event(&mut self, event: &AuditEvent, what: String) {
        self.fail(Some(event.sequence), Some(&event.event_id), what);
    }

    /// The checkpoint's size and root, or a failure.
    fn checkpoint(&mut self, verifier: &CheckpointVerifier, note: &str) -> Option<(u64, Hash)> {
        match verifier.verify(note) {
            Ok((_, size, root)) => {
                self.report.tree_size = self.report.tree_size.max(size);
                Some((size, root))
            }
            Err(error) => {
                self.fail(None, None, error.to_string());
                None
            }
        }
    }

    /// The event an object describes, or a failure.
    fn event(&mut self, object: &EventObject) -> Option<AuditEvent> {
        match object.to_event() {
            Ok(event) => Some(event),
            Err(what) => {
                self.fail(Some(object.sequence), Some(&object.event_id), what);
                None
            }
        }
    }

    /// The event's payload against its commitment, and its hash.
    fn payload_and_hash(&mut self, event: &AuditEvent, erasures: &mut Erasures) {
        if event.payload_erased {
            self.report.payloads_erased += 1;
            erasures.erased(event);
        } else if payload_matches(event) {
            self.report.payloads_checked += 1;
        } else {
            self.fail_event(
                event,
                "payload: SHA-256(salt || detail_json) is not its payload_sha256".to_owned(),
            );
        }
        if event.kind == EventKind::PayloadErased
            && !event.payload_erased
            && let Err(what) = erasures.erasure(event)
        {
            self.fail_event(event, what);
        }
        if hash_rule(event).is_none() {
            let what = if event.payload_erased {
                "hash is not SHA-256(prev_hash || leaf data), the only rule an erased payload allows"
            } else {
                "hash is neither SHA-256(prev_hash || leaf data) nor SHA-256(prev_hash || canonical bytes)"
            };
            self.fail_event(event, what.to_owned());
        }
    }

    fn finish(mut self) -> Report {
        self.report.ok = self.report.failures == 0;
        self.report
    }
}

/// The erased payloads seen, and the erasures recorded.
#[derive(Default)]
struct Erasures {
    /// Erased events: sequence → (event id, subject).
    erased: BTreeMap<u64, (String, String)>,
    /// Sequences named by `payload_erased` events → (the erasure's sequence, its subject).
    recorded: BTreeMap<u64, (u64, String)>,
}

impl Erasures {
    fn erased(&mut self, event: &AuditEvent) {
        self.erased.insert(
            event.sequence,
            (event.event_id.clone(), event.subject_id.clone()),
        );
    }

    /// Records the sequences a `payload_erased` event names: its detail `{"erased": [...]}`.
    fn erasure(&mut self, event: &AuditEvent) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Detail {
            erased: Vec<u64>,
        }
        let detail: Detail = serde_json::from_str(&event.detail_json).map_err(|error| {
            format!(
                "detail of a payload_erased event is not {{\"erased\": [sequence, ...]}}: {error}"
            )
        })?;
        for sequence in detail.erased {
            self.recorded
                .entry(sequence)
                .or_insert_with(|| (event.sequence, event.subject_id.clone()));
        }
        Ok(())
    }

    /// Every erased payload must be named by a later erasure of its subject.
    fn finish(self, findings: &mut Findings) {
        for (sequence, (event_id, subject_id)) in self.erased {
            let recorded = self
                .recorded
                .get(&sequence)
                .is_some_and(|(erasure, subject)| *erasure > sequence && *subject == subject_id);
            if !recorded {
                findings.fail(
                    Some(sequence),
                    Some(&event_id),
                    "payload is erased, but no later payload_erased event of its subject names it"
                        .to_owned(),
                );
            }
        }
    }
}

/// 32-byte hashes from their hex; `None` if any is not 64 hex characters.
fn parse_hashes(hexes: &[String]) -> Option<Vec<Hash>> {
    hexes
        .iter()
        .map(|text| {
            let mut hash = [0_u8; 32];
            hex::decode_to_slice(text, &mut hash).ok()?;
            Some(hash)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{canonical_bytes, chain_hash, new_payload_salt, payload_sha256};
    use crate::audit::merkle::{consistency_ranges, inclusion_ranges, root_of};
    use crate::audit::note::{CheckpointSigner, generate_key};

    const ORIGIN: &str = "consent.example.com/audit";

    struct Log {
        events: Vec<AuditEvent>,
        signer: CheckpointSigner,
        verifier_key: String,
    }

    /// An event of `subject` with a salted payload (or, `legacy`, as written before payloads
    /// were salted: empty salt, v1 hash), chained after `previous`.
    fn event(sequence: u64, subject: &str, previous: &str, legacy: bool) -> AuditEvent {
        let mut event = AuditEvent {
            sequence,
            event_id: format!("event-{sequence}"),
            at_micros: 1_750_000_000_000_000 + sequence as i64,
            subject_id: subject.to_owned(),
            kind: EventKind::ChoiceSet,
            caller: "billing".into(),
            operator_id: "op-7".into(),
            actor_reason: "ticket \"12\" — é".into(),
            detail_json: format!(
                r#"{{"purpose":"MODEL_TRAINING","after":"REFUSED","n":{sequence}}}"#
            ),
            payload_salt: if legacy {
                String::new()
            } else {
                new_payload_salt()
            },
            payload_sha256: String::new(),
            payload_erased: false,
            policy_version: "2026-01-01".into(),
            trace_id: String::new(),
            prev_hash: previous.to_owned(),
            hash: String::new(),
        };
        event.payload_sha256 = payload_sha256(&event.payload_salt, &event.detail_json).unwrap();
        event.hash = if legacy {
            chain_hash(&event.prev_hash, &canonical_bytes(&event))
        } else {
            chain_hash(&event.prev_hash, &leaf_data(&event))
        };
        event
    }

    /// Three legacy events of `u-0`, then `count - 3` events alternating `u-1` and `u-2`.
    fn log(count: u64) -> Log {
        let mut events: Vec<AuditEvent> = Vec::new();
        for sequence in 1..=count {
            let previous = events
                .last()
                .map_or(GENESIS_HASH, |event| event.hash.as_str());
            let (subject, legacy) = match sequence {
                1..=3 => ("u-0", true),
                _ if sequence % 2 == 0 => ("u-1", false),
                _ => ("u-2", false),
            };
            events.push(event(sequence, subject, previous, legacy));
        }
        let (signer_text, verifier_key) = generate_key(ORIGIN).unwrap();
        Log {
            events,
            signer: CheckpointSigner::from_key_text(&signer_text).unwrap(),
            verifier_key,
        }
    }

    impl Log {
        fn leaves(&self) -> Vec<Hash> {
            self.events
                .iter()
                .map(|event| leaf_hash(&leaf_data(event)))
                .collect()
        }

        fn checkpoint(&self, size: u64) -> String {
            self.signer
                .sign(size, &root_of(&self.leaves()[..size as usize]))
                .note
        }

        fn dump(&self) -> String {
            self.events
                .iter()
                .map(|event| serde_json::to_string(&EventObject::from_event(event)).unwrap() + "\n")
                .collect()
        }

        fn verify_dump(&self, checkpoint: &str) -> Report {
            verify_dump(self.dump().as_bytes(), checkpoint, &self.verifier_key)
        }

        /// Recomputes the v2 hashes from the event at `index` on, as someone rewriting the
        /// chain would.
        fn rechain_from(&mut self, index: usize) {
            for index in index..self.events.len() {
                let previous = if index == 0 {
                    GENESIS_HASH.to_owned()
                } else {
                    self.events[index - 1].hash.clone()
                };
                let event = &mut self.events[index];
                event.prev_hash = previous;
                event.hash = chain_hash(&event.prev_hash, &leaf_data(event));
            }
        }

        /// Erases the payloads of `subject` and appends the `payload_erased` event.
        fn erase(&mut self, subject: &str) -> Vec<u64> {
            let mut erased = Vec::new();
            for event in &mut self.events {
                if event.subject_id == subject {
                    event.detail_json = String::new();
                    event.payload_salt = String::new();
                    event.payload_erased = true;
                    erased.push(event.sequence);
                }
            }
            let last = self.events.last().unwrap();
            let mut erasure = event(last.sequence + 1, subject, &last.hash.clone(), false);
            erasure.kind = EventKind::PayloadErased;
            erasure.detail_json = serde_json::json!({ "erased": erased }).to_string();
            erasure.payload_sha256 =
                payload_sha256(&erasure.payload_salt, &erasure.detail_json).unwrap();
            erasure.hash = chain_hash(&erasure.prev_hash, &leaf_data(&erasure));
            self.events.push(erasure);
            erased
        }

        fn export(&self, subject: &str, size: u64) -> SubjectExport {
            let leaves = self.leaves();
            let events = self
                .events
                .iter()
                .filter(|event| event.subject_id == subject && event.sequence <= size)
                .map(|event| ExportedEvent {
                    event: EventObject::from_event(event),
                    leaf_index: event.sequence - 1,
                    inclusion_proof: inclusion_ranges(event.sequence - 1, size)
                        .into_iter()
                        .map(|(start, end)| {
                            hex::encode(root_of(&leaves[start as usize..end as usize]))
                        })
                        .collect(),
                })
                .collect();
            SubjectExport {
                format: SUBJECT_EXPORT_FORMAT.to_owned(),
                subject_id: subject.to_owned(),
                verifier_key: self.verifier_key.clone(),
                checkpoint: self.checkpoint(size),
                events,
            }
        }

        fn verify_export(&self, export: &SubjectExport) -> Report {
            verify_export(&serde_json::to_string(export).unwrap(), &self.verifier_key).unwrap()
        }
    }

    fn first_failure(report: &Report) -> (Option<u64>, String) {
        let failure = report.first_failure.as_ref().expect("a failure");
        (failure.sequence, failure.what.clone())
    }

    #[test]
    fn a_valid_dump_verifies() {
        let log = log(30);
        let report = log.verify_dump(&log.checkpoint(30));
        assert!(report.ok, "{report}");
        assert_eq!(
            (
                report.events_checked,
                report.payloads_checked,
                report.tree_size
            ),
            (30, 30, 30)
        );
        assert_eq!(report.failures, 0);
        // Events past an older checkpoint are checked as a chain.
        let report = log.verify_dump(&log.checkpoint(17));
        assert!(report.ok, "{report}");
        assert_eq!((report.events_checked, report.tree_size), (30, 17));
        // The lines as the store's dump writes them: the same objects.
        let line = log.dump().lines().nth(4).unwrap().to_owned();
        let object: EventObject = serde_json::from_str(&line).unwrap();
        assert_eq!(object.to_event().unwrap(), log.events[4]);
        assert_eq!(object.revision.as_deref(), Some("r1.5"));
    }

    #[test]
    fn a_rewritten_middle_event_with_a_recomputed_chain_fails_against_the_checkpoint() {
        let mut log = log(30);
        let checkpoint = log.checkpoint(30);
        let event = &mut log.events[14];
        event.detail_json = r#"{"purpose":"MODEL_TRAINING","after":"GRANTED"}"#.into();
        event.payload_sha256 = payload_sha256(&event.payload_salt, &event.detail_json).unwrap();
        log.rechain_from(14);
        let report = log.verify_dump(&checkpoint);
        assert!(!report.ok);
        let (sequence, what) = first_failure(&report);
        assert_eq!(sequence, None);
        assert!(
            what.starts_with("tree: the root of events 1 to 30 is "),
            "{what}"
        );
        assert_eq!(report.failures, 1);
        // The chain alone would not have told.
        let mut chain = crate::audit::ChainVerifier::new();
        log.events.iter().for_each(|event| chain.feed(event));
        assert!(chain.finish(Some((30, &log.events[29].hash))).ok);
    }

    #[test]
    fn a_deleted_first_event_fails() {
        let mut log = log(30);
        let checkpoint = log.checkpoint(30);
        log.events.remove(0);
        let report = log.verify_dump(&checkpoint);
        assert!(!report.ok);
        let failure = report.first_failure.clone().unwrap();
        assert_eq!(failure.sequence, Some(2));
        assert_eq!(failure.event_id.as_deref(), Some("event-2"));
        assert!(failure.what.contains("where event 1 should"), "{failure}");
        assert!(report.to_string().contains("event 2 (event-2)"), "{report}");
        // And the tree is one leaf short.
        assert!(report.failures >= 3, "{report:?}");
    }

    #[test]
    fn a_truncated_tail_fails_against_the_checkpoint() {
        let mut log = log(30);
        let checkpoint = log.checkpoint(30);
        log.events.truncate(25);
        let report = log.verify_dump(&checkpoint);
        assert!(!report.ok);
        assert_eq!(
            first_failure(&report),
            (
                None,
                "truncated: the dump holds 25 events, the checkpoint covers 30".to_owned()
            )
        );
        // The same dump against the checkpoint it does extend is fine.
        assert!(log.verify_dump(&log.checkpoint(25)).ok);
    }

    #[test]
    fn an_erased_payload_still_verifies() {
        let mut log = log(30);
        let before_erasure = log.checkpoint(30);
        let erased = log.erase("u-1");
        assert_eq!(erased.len(), 14);
        // The leaves did not change: the checkpoint signed before the erasure still holds.
        let report = log.verify_dump(&before_erasure);
        assert!(report.ok, "{report}");
        assert_eq!((report.payloads_erased, report.payloads_checked), (14, 17));
        let report = log.verify_dump(&log.checkpoint(31));
        assert!(report.ok, "{report}");
        // The export shows the erased events with their leaves, and the erasure.
        let export = log.export("u-1", 31);
        assert!(export.events[0].event.detail_json.is_none());
        assert_eq!(export.events.last().unwrap().event.kind, "payload_erased");
        let report = log.verify_export(&export);
        assert!(report.ok, "{report}");
        assert_eq!(report.payloads_erased, 14);
    }

    #[test]
    fn an_erasure_nobody_recorded_fails() {
        let mut log = log(30);
        log.erase("u-1");
        let checkpoint = log.checkpoint(30);
        log.events.pop();
        let report = log.verify_dump(&checkpoint);
        assert!(!report.ok);
        assert_eq!(report.failures, 14);
        let failure = report.first_failure.clone().unwrap();
        assert_eq!(failure.sequence, Some(4));
        assert!(
            failure.what.contains("no later payload_erased event"),
            "{failure}"
        );
        // An erasure by another subject does not count.
        let mut log = self::log(30);
        log.erase("u-1");
        log.events.last_mut().unwrap().subject_id = "u-2".into();
        log.rechain_from(30);
        assert_eq!(log.verify_dump(&log.checkpoint(31)).failures, 14);
    }

    #[test]
    fn a_tampered_payload_fails_though_its_commitment_was_kept() {
        let mut log = log(30);
        let checkpoint = log.checkpoint(30);
        let original = log.events[9].clone();
        log.events[9].detail_json = r#"{"purpose":"MODEL_TRAINING","after":"GRANTED"}"#.into();
        let report = log.verify_dump(&checkpoint);
        assert!(!report.ok);
        assert_eq!(
            first_failure(&report),
            (
                Some(10),
                "payload: SHA-256(salt || detail_json) is not its payload_sha256".to_owned()
            )
        );
        assert_eq!(report.failures, 1);
        // A legacy (v1) event's payload is covered by its hash as well as its commitment.
        log.events[9] = original;
        log.events[1].detail_json = "{}".into();
        let report = log.verify_dump(&checkpoint);
        assert_eq!(report.first_failure.unwrap().sequence, Some(2));
        assert_eq!(report.failures, 2);
    }

    #[test]
    fn a_bad_line_key_or_checkpoint_fails() {
        let log = log(10);
        let checkpoint = log.checkpoint(10);
        let mut dump = log.dump();
        dump.insert_str(0, "not json\n");
        let report = verify_dump(dump.as_bytes(), &checkpoint, &log.verifier_key);
        assert!(
            first_failure(&report)
                .1
                .starts_with("line 1: is not an event object")
        );

        let (_, other_key) = generate_key(ORIGIN).unwrap();
        let report = log_report(&log, &checkpoint, &other_key);
        assert_eq!(
            first_failure(&report).1,
            format!(
                "note: has no signature by key {}",
                other_key
                    .splitn(3, '+')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("+")
            )
        );
        let report = log_report(&log, &checkpoint, "not a key");
        assert!(first_failure(&report).1.starts_with("verifier key:"));
        let resized = checkpoint.replacen("\n10\n", "\n9\n", 1);
        let report = log_report(&log, &resized, &log.verifier_key);
        assert!(first_failure(&report).1.starts_with("note: the signature"));
        // A dump with an unknown kind, or half an erasure.
        let mut object = EventObject::from_event(&log.events[0]);
        object.kind = "choice_forged".into();
        assert_eq!(
            object.to_event().unwrap_err(),
            "kind \"choice_forged\" is not an event kind"
        );
        object = EventObject::from_event(&log.events[0]);
        object.payload_salt = None;
        assert!(object.to_event().is_err());
        object = EventObject::from_event(&log.events[0]);
        object.revision = Some("r1.2".into());
        assert!(object.to_event().is_err());
    }

    fn log_report(log: &Log, checkpoint: &str, key: &str) -> Report {
        verify_dump(log.dump().as_bytes(), checkpoint, key)
    }

    #[test]
    fn a_valid_export_verifies_and_a_changed_one_does_not() {
        let log = log(30);
        let export = log.export("u-2", 30);
        assert_eq!(export.events.len(), 13);
        let report = log.verify_export(&export);
        assert!(report.ok, "{report}");
        assert_eq!((report.events_checked, report.tree_size), (13, 30));

        // Another subject's event slipped in (with a valid proof).
        let mut mixed = export.clone();
        mixed
            .events
            .insert(1, log.export("u-1", 30).events[1].clone());
        let report = log.verify_export(&mixed);
        assert_eq!(
            first_failure(&report),
            (
                Some(6),
                "is not an event of the export's subject".to_owned()
            )
        );

        // A flipped byte of a proof.
        let mut flipped = export.clone();
        let hash = &mut flipped.events[3].inclusion_proof[2];
        let replacement = if hash.starts_with('0') { "1" } else { "0" };
        hash.replace_range(0..1, replacement);
        let report = log.verify_export(&flipped);
        let (sequence, what) = first_failure(&report);
        assert_eq!(sequence, Some(flipped.events[3].event.sequence));
        assert!(what.contains("do not lead to the root"), "{what}");

        // A truncated proof, a wrong leaf index, a changed event.
        let mut truncated = export.clone();
        truncated.events[0].inclusion_proof.pop();
        assert!(!log.verify_export(&truncated).ok);
        let mut moved = export.clone();
        moved.events[0].leaf_index += 1;
        assert!(
            first_failure(&log.verify_export(&moved))
                .1
                .contains("leaf_index")
        );
        let mut changed = export.clone();
        changed.events[2].event.at_micros += 1;
        assert!(!log.verify_export(&changed).ok);
        let mut tampered = export.clone();
        tampered.events[2].event.detail_json = Some("{}".into());
        assert!(
            first_failure(&log.verify_export(&tampered))
                .1
                .starts_with("payload:")
        );

        // Against another key, or not an export at all.
        let (_, other_key) = generate_key(ORIGIN).unwrap();
        let text = serde_json::to_string(&export).unwrap();
        let report = verify_export(&text, &other_key).unwrap();
        assert!(
            first_failure(&report)
                .1
                .starts_with("note: has no signature")
        );
        assert!(matches!(
            verify_export("[]", &log.verifier_key),
            Err(OfflineError::Export(_))
        ));
        let mut other_format = export.clone();
        other_format.format = "assent-subject-export/2".into();
        assert!(matches!(
            verify_export(
                &serde_json::to_string(&other_format).unwrap(),
                &log.verifier_key
            ),
            Err(OfflineError::Export(_))
        ));
        assert!(matches!(
            verify_export(&text, "PRIVATE+KEY+x"),
            Err(OfflineError::Key(_))
        ));
    }

    #[test]
    fn a_consistency_file_verifies_between_two_checkpoints() {
        let log = log(30);
        let leaves = log.leaves();
        let proof = |old: u64, new: u64| ConsistencyProofFile {
            old_size: old,
            new_size: new,
            hashes: consistency_ranges(old, new)
                .into_iter()
                .map(|(start, end)| hex::encode(root_of(&leaves[start as usize..end as usize])))
                .collect(),
        };
        let verify = |old: u64, new: u64, file: &ConsistencyProofFile| {
            verify_consistency_file(
                &log.checkpoint(old),
                &log.checkpoint(new),
                &serde_json::to_string(file).unwrap(),
                &log.verifier_key,
            )
        };
        let report = verify(13, 30, &proof(13, 30));
        assert!(report.ok, "{report}");
        assert!(verify(16, 30, &proof(16, 30)).ok);
        assert!(verify(30, 30, &proof(30, 30)).ok);
        // Another pair of sizes than the checkpoints'.
        assert!(
            first_failure(&verify(13, 30, &proof(12, 30)))
                .1
                .contains("is from 12 to 30")
        );
        // A flipped hash.
        let mut flipped = proof(13, 30);
        flipped.hashes[1] = hex::encode([7_u8; 32]);
        assert!(
            first_failure(&verify(13, 30, &flipped))
                .1
                .contains("is a prefix")
        );
        // A rewritten history: the new checkpoint's tree does not extend the old one.
        let mut rewritten = self::log(30);
        rewritten.signer = log.signer.clone();
        rewritten.verifier_key = log.verifier_key.clone();
        let report = verify_consistency_file(
            &log.checkpoint(13),
            &rewritten.checkpoint(30),
            &serde_json::to_string(&proof(13, 30)).unwrap(),
            &log.verifier_key,
        );
        assert!(!report.ok);
        let report = verify_consistency_file(
            &log.checkpoint(13),
            &log.checkpoint(30),
            "{}",
            &log.verifier_key,
        );
        assert!(
            first_failure(&report)
                .1
                .starts_with("consistency proof: is not a proof file")
        );
    }

    /// The figures of the example in docs/audit.md ("The Merkle tree").
    #[test]
    fn the_worked_example_of_the_documentation() {
        let detail = r#"{"purpose":"MODEL_TRAINING","before":null,"after":"REFUSED","notice_version":"2026-01-01","method":"SETTINGS_PAGE","expires_at_micros":null}"#;
        let mut event = event(7, "u-42", &"a".repeat(64), false);
        event.event_id = "0190f0c2-7e1a-7b3c-9d4e-5f6a7b8c9d0e".into();
        event.at_micros = 1_767_225_600_000_000;
        event.operator_id = "op-3".into();
        event.actor_reason = "ticket 881".into();
        event.detail_json = detail.into();
        event.payload_salt = "00112233445566778899aabbccddeeff".into();
        event.payload_sha256 = payload_sha256(&event.payload_salt, detail).unwrap();
        assert_eq!(
            event.payload_sha256,
            "1c14a50609bf4dc50a26ecf7826e13b40d20d84f37c86127a876f46bfdce27ea"
        );
        assert_eq!(
            String::from_utf8(leaf_data(&event)).unwrap(),
            r#"[7,"0190f0c2-7e1a-7b3c-9d4e-5f6a7b8c9d0e",1767225600000000,"u-42","choice_set","billing","op-3","ticket 881","1c14a50609bf4dc50a26ecf7826e13b40d20d84f37c86127a876f46bfdce27ea","2026-01-01",""]"#
        );
        assert_eq!(
            hex::encode(leaf_hash(&leaf_data(&event))),
            "623632a9872ae8195834d3242de3c95d78a1989e05d452a12e51837a8aee6536"
        );
        assert_eq!(
            chain_hash(&event.prev_hash, &leaf_data(&event)),
            "ef59f1069f1ba64caea7955f9b1167cf755b81aba246eaad8430cc236a48e557"
        );
    }
}
