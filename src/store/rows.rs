//! The row-level work of a SQL store, written once for both backends.
//!
//! The SQL below runs unchanged on SQLite and PostgreSQL (`$n` parameters, `ON CONFLICT`,
//! `BOOLEAN`, 64-bit integers), on a [`Connection`] of either. What differs between backends
//! (connection setup, how a transaction begins and how the chain head is locked, the decision
//! log, change notification) stays in `sqlite.rs` and `postgres.rs`.

use std::collections::HashMap;

use sha2::Digest as _;

use crate::audit::merkle::{self, Frontier, Hash, NodeId};
use crate::audit::{
    AuditEvent, ChainReport, ChainVerifier, Decided, DecisionRecord, EventKind, chain_hash,
    leaf_data, new_payload_salt, payload_sha256,
};
use crate::domain::{ConversationId, SubjectId};
use crate::policy::rights::{Effect, Regime, RequestState, RightKind, RightsRequest};
use crate::policy::{
    Choice, ConsentMethod, ConversationFacts, Decision, PURPOSE_COUNT, Plan, Purpose, Rating,
    Reason, Source, Status, SubjectState,
};
use crate::revision::Revision;
use crate::store::arrays::{ChoiceRow, SubjectRow, choice_conflict, subject_conflict};
use crate::store::change::{Change, Command, ConsentMeta, SubjectRecord, plan_change};
use crate::store::sql::{Connection, Row};
use crate::store::{
    CandidatePage, ChangeNotice, Changed, ChoiceEntry, DecisionQuery, DecisionState, DueCandidates,
    EventQuery, ExpiredChoice, LogReport, NewPolicy, NewRightsRequest, RetentionSubject,
    RightsEffects, RightsListing, RightsOutcome, RightsQuery, RightsStep, StateGroup, StoreError,
    StoredPolicy, StoredRightsRequest, SubjectSnapshot, SubjectView, WriteContext, WriteOutcome,
    WriteRequest, now_micros,
};

const VERIFY_PAGE: i64 = 1_000;

/// Events after a sequence, with their payloads (none once erased), in sequence order.
const EVENTS_AFTER: &str = "SELECT e.*, p.salt, p.detail_json FROM audit_events AS e
    LEFT JOIN audit_payloads AS p ON p.sequence = e.sequence
    WHERE e.sequence > $1 ORDER BY e.sequence LIMIT $2";

/// Applies `requests` in order inside one open write transaction, under one hold of the chain
/// head; the caller commits. Each write is its own change and event; one refused (its subject
/// unknown or deleted: refused before it writes anything) is refused alone. Any other failure
/// fails them all (the caller rolls back).
///
/// `wanted(index)` says whether the writer of `requests[index]` still waits for it: one that
/// gave up (its deadline passed while the head was held by another transaction) is left out
/// (`None`), and one that gives up while the group is applied fails the whole group with
/// [`StoreError::Abandoned`] just before the commit, so that the caller rolls back and applies
/// the group again without it. A write answered DEADLINE_EXCEEDED is never applied (but for the
/// moment between that last look and the commit, as for any write whose caller gives up during
/// its commit).
pub(super) async fn write_group_in(
    connection: &mut Connection,
    requests: &[WriteRequest],
    wanted: &(dyn Fn(usize) -> bool + Sync),
) -> Result<Vec<Option<Result<WriteOutcome, StoreError>>>, StoreError> {
    let mut head = chain_head(&mut *connection).await?;
    // The group's statements are few: its subjects are read at once, each write then only
    // writes its rows, and its events are appended together at the end.
    head.appends = Some(Vec::new());
    let subject_ids: Vec<&str> = requests
        .iter()
        .enumerate()
        .filter(|(index, _)| wanted(*index))
        .map(|(_, request)| request.subject_id.as_str())
        .collect();
    let mut loaded = load_subjects(&mut *connection, &subject_ids).await?;
    let mut rows = RowBatch::default();
    let mut outcomes = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        if !wanted(index) {
            outcomes.push(None);
            continue;
        }
        // A subject a write of the group changed already is read again, its rows written
        // first (within the transaction, which sees them).
        let current = match loaded.remove(request.subject_id.as_str()) {
            Some(current) => current,
            None => {
                write_rows(&mut *connection, &mut rows).await?;
                load_subject(&mut *connection, request.subject_id.as_str()).await?
            }
        };
        let outcome = command_after(
            &mut *connection,
            &mut head,
            request,
            (current, Some(&mut rows)),
            None,
        )
        .await;
        match outcome {
            Ok(outcome) => outcomes.push(Some(Ok(outcome))),
            Err(refused @ (StoreError::NotFound(_) | StoreError::SubjectDeleted(_))) => {
                outcomes.push(Some(Err(refused)));
            }
            Err(error) => return Err(error),
        }
    }
    write_rows(&mut *connection, &mut rows).await?;
    write_appends(&mut *connection, &mut head).await?;
    // The last look, after the group's last statement: the commit follows.
    let applied = |(index, outcome): (usize, &Option<Result<WriteOutcome, StoreError>>)| {
        matches!(outcome, Some(Ok(done)) if done.changed) && !wanted(index)
    };
    if outcomes.iter().enumerate().any(applied) {
        return Err(StoreError::Abandoned);
    }
    Ok(outcomes)
}

/// Applies one command after the chain head `head` (taken by the caller) and moves
/// `head` to the event it appends, if any. `rights_request`: the rights request the
/// change is the effect of, named in the event's detail.
async fn command_in(
    connection: &mut Connection,
    head: &mut ChainHead,
    request: &WriteRequest,
    rights_request: Option<&str>,
) -> Result<WriteOutcome, StoreError> {
    let current = load_subject(&mut *connection, request.subject_id.as_str()).await?;
    command_after(connection, head, request, (current, None), rights_request).await
}

/// [`command_in`] with the subject as it stands (`current`, read by the caller), its subject
/// row and stored choice put in `rows` if given (a write group), to be written with the group's.
async fn command_after(
    connection: &mut Connection,
    head: &mut ChainHead,
    request: &WriteRequest,
    (current, rows): (Option<(SubjectRecord, Revision)>, Option<&mut RowBatch>),
    rights_request: Option<&str>,
) -> Result<WriteOutcome, StoreError> {
    let subject_id = request.subject_id.as_str();
    let conversation = match request.command.conversation_id() {
        Some(conversation_id) => {
            load_conversation(&mut *connection, subject_id, conversation_id).await?
        }
        None => None,
    };
    let planned = plan_change(
        current.as_ref().map(|(record, _)| record),
        conversation,
        &request.command,
    )
    .map_err(|refusal| StoreError::refused(refusal, &request.subject_id))?;
    let Some(mut change) = planned else {
        let revision = current.map(|(_, revision)| revision).unwrap_or_default();
        return Ok(WriteOutcome {
            revision,
            changed: false,
        });
    };
    if let (Some(request_id), Some(detail)) = (rights_request, change.detail.as_object_mut()) {
        detail.insert("rights_request".to_owned(), request_id.into());
    }
    let revision = head.next_revision();
    let now = now_micros();
    let caller = request.context.caller.as_str();
    let at = (revision, now);
    apply_change(&mut *connection, subject_id, &change, caller, at, rows).await?;
    let event = NewEvent {
        at_micros: now,
        subject_id,
        kind: change.kind,
        context: &request.context,
        detail: &change.detail,
        policy_version: &request.context.policy_version,
    };
    let span = crate::child_span!(
        "audit.append",
        assent.audit_sequence = revision.sequence(),
        assent.audit_kind = change.kind.as_str(),
    );
    tracing::Instrument::instrument(append_event(&mut *connection, head, event), span).await?;
    Ok(WriteOutcome {
        revision,
        changed: true,
    })
}

/// An audit event before it is sealed onto the chain.
struct NewEvent<'a> {
    at_micros: i64,
    subject_id: &'a str,
    kind: EventKind,
    context: &'a WriteContext,
    detail: &'a serde_json::Value,
    policy_version: &'a str,
}

/// The end of the chain, taken (and, where the backend needs it, locked) by a write: the last
/// sequence and hash, and the peaks of the tree over every event.
pub(super) struct ChainHead {
    sequence: u64,
    hash: String,
    frontier: Frontier,
    /// When set (a write group), the events sealed after the head taken, with the tree nodes
    /// their leaves complete, not yet written: [`write_appends`] writes them together.
    appends: Option<Vec<(AuditEvent, Vec<u8>)>>,
}

impl ChainHead {
    fn next_revision(&self) -> Revision {
        Revision::new(self.sequence).next()
    }
}

/// The event after `head`: a fresh salt for its payload, the commitment its leaf holds, and
/// its chain hash over the leaf data (so both outlive the payload).
fn sealed_event(head: &ChainHead, new: &NewEvent<'_>) -> AuditEvent {
    let detail_json = new.detail.to_string();
    let payload_salt = new_payload_salt();
    let payload_sha256 = payload_sha256(&payload_salt, &detail_json).expect("a fresh salt is hex");
    let mut event = AuditEvent {
        sequence: head.next_revision().sequence(),
        event_id: uuid::Uuid::now_v7().to_string(),
        at_micros: new.at_micros,
        subject_id: new.subject_id.to_owned(),
        kind: new.kind,
        caller: new.context.caller.clone(),
        operator_id: new.context.actor.operator_id.clone(),
        actor_reason: new.context.actor.reason.clone(),
        detail_json,
        payload_salt,
        payload_sha256,
        payload_erased: false,
        policy_version: new.policy_version.to_owned(),
        trace_id: new.context.trace_id.clone(),
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    event.hash = chain_hash(&event.prev_hash, &leaf_data(&event));
    event
}

/// Files a rights request inside an open write transaction; the caller commits.
pub(super) async fn file_rights_in(
    connection: &mut Connection,
    new: &NewRightsRequest,
    context: &WriteContext,
    effects: RightsEffects,
) -> Result<RightsOutcome, StoreError> {
    let mut head = chain_head(&mut *connection).await?;
    let subject_id = new.subject_id.as_str();
    let Some((record, _)) = load_subject(&mut *connection, subject_id).await? else {
        return Err(StoreError::NotFound(new.subject_id.clone()));
    };
    let jurisdiction = match &new.jurisdiction {
        Some(jurisdiction) => jurisdiction.as_str().to_owned(),
        None => record
            .jurisdiction
            .clone()
            .ok_or(StoreError::NoJurisdiction)?,
    };
    let now = now_micros();
    let request = RightsRequest::file(
        new.kind,
        Regime::of(&jurisdiction),
        new.received_at_micros.unwrap_or(now),
        new.identity_verified,
        new.purposes.clone(),
    )?;
    let stored = StoredRightsRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        subject_id: new.subject_id.clone(),
        jurisdiction,
        request,
        extension_reason: String::new(),
        refusal_reason: String::new(),
        created_at_micros: now,
        updated_at_micros: now,
        revision: Revision::ZERO,
    };
    rights_step_in(
        &mut *connection,
        &mut head,
        &record,
        None,
        stored,
        EventKind::RightsRequestFiled,
        (context, effects),
    )
    .await
}

/// Takes a step of a rights request inside an open write transaction; the caller
/// commits.
pub(super) async fn step_rights_in(
    connection: &mut Connection,
    request_id: &str,
    step: &RightsStep,
    context: &WriteContext,
    effects: RightsEffects,
) -> Result<RightsOutcome, StoreError> {
    let mut head = chain_head(&mut *connection).await?;
    let Some(before) = load_rights_request(&mut *connection, request_id).await? else {
        return Err(StoreError::RequestNotFound(request_id.to_owned()));
    };
    let Some((record, _)) = load_subject(&mut *connection, before.subject_id.as_str()).await?
    else {
        return Err(StoreError::Corrupt(format!(
            "rights request {request_id} names a subject not stored"
        )));
    };
    let now = now_micros();
    let mut after = before.clone();
    let kind = match step {
        RightsStep::Advance { to, verify, reason } => {
            after.request = before.request.advance(*to, *verify, now)?;
            if *to == RequestState::Refused {
                after.refusal_reason = reason.clone();
            }
            EventKind::RightsRequestAdvanced
        }
        RightsStep::Extend { reason } => {
            after.request = before.request.extend(now)?;
            after.extension_reason = reason.clone();
            EventKind::RightsRequestExtended
        }
    };
    after.updated_at_micros = now;
    rights_step_in(
        &mut *connection,
        &mut head,
        &record,
        Some(&before),
        after,
        kind,
        (context, effects),
    )
    .await
}

/// Writes a rights request after a step and the step's audit event, then the changes of
/// the subject the step makes due, each with its own event. A step whose effect is beyond
/// `effects` is refused before anything is written.
async fn rights_step_in(
    connection: &mut Connection,
    head: &mut ChainHead,
    subject: &SubjectRecord,
    before: Option<&StoredRightsRequest>,
    mut after: StoredRightsRequest,
    kind: EventKind,
    (context, effects): (&WriteContext, RightsEffects),
) -> Result<RightsOutcome, StoreError> {
    // A deleted subject is processed no more: nothing is left to take effect on.
    let effect = after
        .request
        .effect_due()
        .filter(|_| subject.state.status != Status::Deleted);
    if effects == RightsEffects::NeitherDeleteNorRestrict {
        let refused = match effect {
            Some(Effect::Delete) => Some("delete"),
            Some(Effect::Restrict) => Some("restrict"),
            Some(Effect::RefuseChoices(_)) | None => None,
        };
        if let Some(effect) = refused {
            return Err(StoreError::EffectNotAllowed { effect });
        }
    }
    if effect.is_some() {
        after.request.effect_applied = true;
    }
    let revision = head.next_revision();
    after.revision = revision;
    store_rights_request(&mut *connection, &after, before.is_none()).await?;
    let detail = serde_json::json!({
        "request_id": after.request_id,
        "before": before.map(describe_rights_request),
        "after": describe_rights_request(&after),
    });
    let event = NewEvent {
        at_micros: after.updated_at_micros,
        subject_id: after.subject_id.as_str(),
        kind,
        context,
        detail: &detail,
        policy_version: &context.policy_version,
    };
    append_event(&mut *connection, head, event).await?;
    let mut revisions = vec![revision];
    let commands = match effect {
        None => Vec::new(),
        Some(Effect::RefuseChoices(purposes)) => purposes
            .into_iter()
            .map(|purpose| Command::SetChoice {
                purpose,
                choice: Some(Choice::Refused),
                consent: ConsentMeta {
                    notice_version: context.policy_version.clone(),
                    method: ConsentMethod::RightsRequest,
                    expires_at_micros: None,
                },
            })
            .collect(),
        Some(Effect::Restrict) => vec![Command::SetRestriction { restricted: true }],
        Some(Effect::Delete) => vec![Command::Delete],
    };
    for command in commands {
        let write = WriteRequest {
            subject_id: after.subject_id.clone(),
            command,
            context: context.clone(),
        };
        let outcome = command_in(&mut *connection, head, &write, Some(&after.request_id)).await?;
        if outcome.changed {
            revisions.push(outcome.revision);
        }
    }
    Ok(RightsOutcome {
        request: after,
        revisions,
    })
}

/// What a rights request's audit event records of it.
fn describe_rights_request(stored: &StoredRightsRequest) -> serde_json::Value {
    let request = &stored.request;
    serde_json::json!({
        "kind": request.kind.as_str(),
        "jurisdiction": stored.jurisdiction,
        "regime": request.regime.as_str(),
        "state": request.state.as_str(),
        "received_at_micros": request.received_at_micros,
        "identity_verified": request.identity_verified,
        "purposes": request.purposes.iter().map(|purpose| purpose.as_str()).collect::<Vec<_>>(),
        "due_at_micros": request.due_at_micros,
        "extended": request.extended,
        "extension_reason": stored.extension_reason,
        "appealed": request.appealed,
        "effect_applied": request.effect_applied,
        "refusal_reason": stored.refusal_reason,
        "answered_at_micros": request.answered_at_micros,
    })
}

async fn store_rights_request(
    connection: &mut Connection,
    stored: &StoredRightsRequest,
    insert: bool,
) -> Result<(), StoreError> {
    let request = &stored.request;
    let purposes = request
        .purposes
        .iter()
        .map(|purpose| purpose.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let statement = if insert {
        "INSERT INTO rights_requests
             (request_id, subject_id, kind, jurisdiction, regime, state, received_at,
              identity_verified, purposes, due_at, extended, extension_reason, appealed,
              effect_applied, refusal_reason, answered_at, kept_until, created_at,
              updated_at, revision)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 $17, $18, $19, $20)"
    } else {
        "UPDATE rights_requests SET
             subject_id = $2, kind = $3, jurisdiction = $4, regime = $5, state = $6,
             received_at = $7, identity_verified = $8, purposes = $9, due_at = $10,
             extended = $11, extension_reason = $12, appealed = $13,
             effect_applied = $14, refusal_reason = $15, answered_at = $16,
             kept_until = $17, created_at = $18, updated_at = $19, revision = $20
         WHERE request_id = $1"
    };
    connection
        .query(statement)
        .bind(&stored.request_id)
        .bind(stored.subject_id.as_str())
        .bind(request.kind.as_str())
        .bind(&stored.jurisdiction)
        .bind(request.regime.as_str())
        .bind(request.state.as_str())
        .bind(request.received_at_micros)
        .bind(request.identity_verified)
        .bind(purposes)
        .bind(request.due_at_micros)
        .bind(request.extended)
        .bind(&stored.extension_reason)
        .bind(request.appealed)
        .bind(request.effect_applied)
        .bind(&stored.refusal_reason)
        .bind(request.answered_at_micros)
        .bind(request.kept_until())
        .bind(stored.created_at_micros)
        .bind(stored.updated_at_micros)
        .bind(to_i64(stored.revision.sequence()))
        .execute()
        .await?;
    Ok(())
}

/// One rights request, or `None`.
pub(super) async fn load_rights_request(
    connection: &mut Connection,
    request_id: &str,
) -> Result<Option<StoredRightsRequest>, StoreError> {
    let row = connection
        .query("SELECT * FROM rights_requests WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional()
        .await?;
    row.as_ref().map(rights_request_from_row).transpose()
}

/// A page of rights requests.
pub(super) async fn rights_requests_in(
    connection: &mut Connection,
    query: &RightsQuery,
) -> Result<Vec<StoredRightsRequest>, StoreError> {
    let (after_key, after_id) = query.after.clone().unwrap_or((i64::MIN, String::new()));
    let limit = i64::from(query.limit);
    let rows = match &query.listing {
        RightsListing::Subject(subject_id) => {
            connection
                .query(
                    "SELECT * FROM rights_requests
                 WHERE subject_id = $1
                   AND (received_at > $2 OR (received_at = $2 AND request_id > $3))
                 ORDER BY received_at, request_id LIMIT $4",
                )
                .bind(subject_id.as_str())
                .bind(after_key)
                .bind(after_id)
                .bind(limit)
                .fetch_all()
                .await?
        }
        RightsListing::OverdueAt(now) => {
            connection
                .query(
                    "SELECT * FROM rights_requests
                 WHERE state NOT IN ('COMPLETED', 'REFUSED') AND due_at < $1
                   AND (due_at > $2 OR (due_at = $2 AND request_id > $3))
                 ORDER BY due_at, request_id LIMIT $4",
                )
                .bind(*now)
                .bind(after_key)
                .bind(after_id)
                .bind(limit)
                .fetch_all()
                .await?
        }
    };
    rows.iter().map(rights_request_from_row).collect()
}

fn rights_request_from_row(row: &Row) -> Result<StoredRightsRequest, StoreError> {
    let purposes: String = row.try_get("purposes")?;
    let purposes = purposes
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| parse("purposes", name, Purpose::from_name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoredRightsRequest {
        request_id: row.try_get("request_id")?,
        subject_id: parse_column(row, "subject_id", |text| SubjectId::parse(text).ok())?,
        jurisdiction: row.try_get("jurisdiction")?,
        request: RightsRequest {
            kind: parse_column(row, "kind", RightKind::from_name)?,
            regime: parse_column(row, "regime", Regime::from_name)?,
            state: parse_column(row, "state", RequestState::from_name)?,
            received_at_micros: row.try_get("received_at")?,
            identity_verified: row.try_get("identity_verified")?,
            purposes,
            due_at_micros: row.try_get("due_at")?,
            extended: row.try_get("extended")?,
            appealed: row.try_get("appealed")?,
            effect_applied: row.try_get("effect_applied")?,
            answered_at_micros: row.try_get("answered_at")?,
        },
        extension_reason: row.try_get("extension_reason")?,
        refusal_reason: row.try_get("refusal_reason")?,
        created_at_micros: row.try_get("created_at")?,
        updated_at_micros: row.try_get("updated_at")?,
        revision: Revision::new(from_i64(row.try_get("revision")?)),
    })
}

/// Stores a policy version with its audit event (kind `policy_applied`, no subject),
/// unless this exact version is stored already.
pub(super) async fn apply_policy_in(
    connection: &mut Connection,
    policy: &NewPolicy,
    context: &WriteContext,
) -> Result<WriteOutcome, StoreError> {
    let mut head = chain_head(&mut *connection).await?;
    let stored = connection
        .query("SELECT source FROM policy_versions WHERE version = $1")
        .bind(&policy.version)
        .fetch_optional()
        .await?;
    if let Some(source) = stored
        .map(|row| row.try_get::<String>("source"))
        .transpose()?
    {
        if source == policy.source {
            return Ok(WriteOutcome {
                revision: Revision::new(head.sequence),
                changed: false,
            });
        }
        return Err(StoreError::PolicyConflict(policy.version.clone()));
    }
    let revision = head.next_revision();
    let now = now_micros();
    connection
        .query(
            "INSERT INTO policy_versions
             (version, effective_from_micros, description, source, applied_at_micros,
              revision)
         VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&policy.version)
        .bind(policy.effective_from_micros)
        .bind(&policy.description)
        .bind(&policy.source)
        .bind(now)
        .bind(to_i64(revision.sequence()))
        .execute()
        .await?;
    let detail = serde_json::json!({
        "version": policy.version,
        "effective_from_micros": policy.effective_from_micros,
        "description": policy.description,
        "source_sha256": hex::encode(sha2::Sha256::digest(policy.source.as_bytes())),
    });
    let event = NewEvent {
        at_micros: now,
        subject_id: "",
        kind: EventKind::PolicyApplied,
        context,
        detail: &detail,
        policy_version: &policy.version,
    };
    append_event(&mut *connection, &mut head, event).await?;
    Ok(WriteOutcome {
        revision,
        changed: true,
    })
}

/// Every stored policy version, by effective date.
pub(super) async fn policy_versions_in(
    connection: &mut Connection,
) -> Result<Vec<StoredPolicy>, StoreError> {
    let rows: Vec<(String, i64, String, String, i64, i64)> = connection
        .query(
            "SELECT version, effective_from_micros, description, source, applied_at_micros,
                revision
         FROM policy_versions ORDER BY effective_from_micros, version",
        )
        .fetch_all_as()
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(version, effective_from_micros, description, source, applied_at, revision)| {
                StoredPolicy {
                    policy: NewPolicy {
                        version,
                        effective_from_micros,
                        description,
                        source,
                    },
                    applied_at_micros: applied_at,
                    revision: Revision::new(from_i64(revision)),
                }
            },
        )
        .collect())
}

/// Reads what a decision needs inside an open read transaction.
pub(super) async fn decision_state_in(
    connection: &mut Connection,
    subject_id: &SubjectId,
    conversation_id: Option<&ConversationId>,
) -> Result<DecisionState, StoreError> {
    let Some((record, revision)) = load_subject(&mut *connection, subject_id.as_str()).await?
    else {
        let head = latest_sequence(&mut *connection).await?;
        return Ok(DecisionState {
            subject: None,
            conversation: None,
            revision: Revision::new(head),
        });
    };
    let conversation = match conversation_id {
        Some(conversation_id) => {
            load_conversation(&mut *connection, subject_id.as_str(), conversation_id).await?
        }
        None => None,
    };
    Ok(DecisionState {
        subject: Some(record.state),
        conversation,
        revision,
    })
}

/// Everything the cache keeps of a subject, in one read transaction: its state and up to
/// `max_conversations` conversation facts (the most recent first), or the store's
/// latest revision for a subject never seen.
// PostgreSQL reads the same in one statement instead (`postgres.rs`).
pub(super) async fn snapshot_in(
    connection: &mut Connection,
    subject_id: &SubjectId,
    max_conversations: usize,
) -> Result<SubjectSnapshot, StoreError> {
    let Some((record, revision)) = load_subject(&mut *connection, subject_id.as_str()).await?
    else {
        let head = latest_sequence(&mut *connection).await?;
        return Ok(SubjectSnapshot {
            subject: None,
            revision: Revision::new(head),
            conversations: Vec::new(),
            complete: true,
        });
    };
    let limit = i64::try_from(max_conversations)
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let rows = connection
        .query(
            "SELECT conversation_id, feedback, automated_moderation, user_report
         FROM conversation_facts WHERE subject_id = $1
         ORDER BY revision DESC LIMIT $2",
        )
        .bind(subject_id.as_str())
        .bind(limit)
        .fetch_all()
        .await?;
    let complete = rows.len() <= max_conversations;
    let mut conversations = Vec::with_capacity(rows.len().min(max_conversations));
    for row in rows.iter().take(max_conversations) {
        conversations.push((row.try_get("conversation_id")?, facts_from_row(row)?));
    }
    Ok(SubjectSnapshot {
        subject: Some(record.state),
        revision,
        conversations,
        complete,
    })
}

/// The changes committed after `after`, in revision order, at most `limit`.
pub(super) async fn changes_since_in(
    connection: &mut Connection,
    after: u64,
    limit: u32,
) -> Result<Vec<ChangeNotice>, StoreError> {
    let rows: Vec<(i64, String, i64)> = connection
        .query(
            "SELECT sequence, subject_id, at_micros FROM audit_events WHERE sequence > $1
         ORDER BY sequence LIMIT $2",
        )
        .bind(to_i64(after))
        .bind(i64::from(limit))
        .fetch_all_as()
        .await?;
    rows.into_iter().map(notice).collect()
}

/// A change-log row (sequence, subject id, commit time) as a notice.
fn notice(
    (sequence, subject_id, at_micros): (i64, String, i64),
) -> Result<ChangeNotice, StoreError> {
    Ok(ChangeNotice {
        revision: Revision::new(from_i64(sequence)),
        changed: parse("subject_id", &subject_id, Changed::parse)?,
        at_micros,
    })
}

/// Each subject changed at or after `since_micros`, with its latest revision.
pub(super) async fn subjects_changed_since_in(
    connection: &mut Connection,
    since_micros: i64,
) -> Result<Vec<ChangeNotice>, StoreError> {
    let rows: Vec<(i64, String, i64)> = connection
        .query(
            "SELECT MAX(sequence), subject_id, MAX(at_micros) FROM audit_events
         WHERE at_micros >= $1 GROUP BY subject_id",
        )
        .bind(since_micros)
        .fetch_all_as()
        .await?;
    rows.into_iter().map(notice).collect()
}

/// Subject ids after `after` in id order, at most `limit` (for paging through them all).
pub(super) async fn subject_ids_in(
    connection: &mut Connection,
    after: &str,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = connection
        .query("SELECT subject_id FROM subjects WHERE subject_id > $1 ORDER BY subject_id LIMIT $2")
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all_as()
        .await?;
    Ok(rows.into_iter().map(|(subject_id,)| subject_id).collect())
}

/// How a state group's columns spell "no plan" and "no choice".
const NONE: &str = "NONE";

/// The choice of each purpose that counts at `$1`, one column per purpose (`choice_0`, ...,
/// in purpose order, `NONE` for none), the purposes' names bound from `$first` on.
fn choice_columns(first: usize) -> String {
    Purpose::ALL
        .iter()
        .enumerate()
        .map(|(index, _)| {
            format!(
                "COALESCE(MAX(CASE WHEN c.purpose = ${} THEN c.choice END), '{NONE}') AS choice_{index}",
                first + index
            )
        })
        .collect::<Vec<_>>()
        .join(",\n       ")
}

/// The subjects grouped by their decision state at `now_micros`, the largest groups first:
/// the choices of each subject that count then are pivoted into one column per purpose, and
/// the rows grouped on every column a policy reads, by the database.
pub(super) async fn state_groups_in(
    connection: &mut Connection,
    now_micros: i64,
    limit: u32,
    with_first_subject: bool,
) -> Result<Vec<StateGroup>, StoreError> {
    let choices: Vec<String> = (0..PURPOSE_COUNT)
        .map(|index| format!("choice_{index}"))
        .collect();
    let state_columns = format!(
        "plan, status, gpc, zero_data_retention, {}",
        choices.join(", ")
    );
    let first_subject = if with_first_subject {
        ", MIN(subject_id) AS first_subject"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {state_columns}, COUNT(*) AS subject_count{first_subject}
         FROM (
             SELECT s.subject_id, COALESCE(s.plan, '{NONE}') AS plan, s.status, s.gpc,
                    s.zero_data_retention,
                    {}
             FROM subjects s
             LEFT JOIN choices c
               ON c.subject_id = s.subject_id AND (c.expires_at IS NULL OR c.expires_at > $1)
             GROUP BY s.subject_id, s.plan, s.status, s.gpc, s.zero_data_retention
         ) AS states
         GROUP BY {state_columns}
         ORDER BY subject_count DESC, {state_columns}
         LIMIT $2",
        choice_columns(3)
    );
    let mut select = connection
        .query(sqlx::AssertSqlSafe(sql))
        .bind(now_micros)
        .bind(i64::from(limit));
    for purpose in Purpose::ALL {
        select = select.bind(purpose.as_str());
    }
    select
        .fetch_all()
        .await?
        .iter()
        .map(|row| {
            let mut state = SubjectState {
                plan: parse_optional(row, "plan", Plan::from_name)?,
                status: parse_column(row, "status", Status::from_name)?,
                gpc: row.try_get("gpc")?,
                zero_data_retention: row.try_get("zero_data_retention")?,
                ..SubjectState::new()
            };
            for (index, purpose) in Purpose::ALL.iter().enumerate() {
                let choice = parse_optional(row, &format!("choice_{index}"), Choice::from_name)?;
                state.choices.set(*purpose, choice);
            }
            let subjects: i64 = row.try_get("subject_count")?;
            let first_subject = if with_first_subject {
                Some(row.try_get("first_subject")?)
            } else {
                None
            };
            Ok(StateGroup {
                state,
                subjects: from_i64(subjects),
                first_subject,
            })
        })
        .collect()
}

/// The ids of the subjects whose decision state at `now_micros` is `state`, in id order: each
/// purpose's choice read through the choices' primary key, so a large group answers after a
/// few rows.
pub(super) async fn subjects_in_state_in(
    connection: &mut Connection,
    state: &SubjectState,
    now_micros: i64,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let first_purpose = 7;
    let tests: Vec<String> = Purpose::ALL
        .iter()
        .enumerate()
        .map(|(index, _)| {
            format!(
                "COALESCE((SELECT c.choice FROM choices c
                            WHERE c.subject_id = s.subject_id AND c.purpose = ${}
                              AND (c.expires_at IS NULL OR c.expires_at > $1)), '{NONE}') = ${}",
                first_purpose + 2 * index,
                first_purpose + 2 * index + 1
            )
        })
        .collect();
    let sql = format!(
        "SELECT s.subject_id FROM subjects s
         WHERE COALESCE(s.plan, '{NONE}') = $3 AND s.status = $4 AND s.gpc = $5
           AND s.zero_data_retention = $6
           AND {}
         ORDER BY s.subject_id LIMIT $2",
        tests.join("\n           AND ")
    );
    let mut select = connection
        .query(sqlx::AssertSqlSafe(sql))
        .bind(now_micros)
        .bind(i64::from(limit))
        .bind(state.plan.map_or(NONE, Plan::as_str))
        .bind(state.status.as_str())
        .bind(state.gpc)
        .bind(state.zero_data_retention);
    for purpose in Purpose::ALL {
        select = select
            .bind(purpose.as_str())
            .bind(state.choices.get(*purpose).map_or(NONE, Choice::as_str));
    }
    let ids: Vec<(String,)> = select.fetch_all_as().await?;
    Ok(ids.into_iter().map(|(subject_id,)| subject_id).collect())
}

/// A column holding a name of the vocabulary, or `NONE`.
fn parse_optional<T>(
    row: &Row,
    column: &str,
    from_name: fn(&str) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    let text: String = row.try_get(column)?;
    if text == NONE {
        return Ok(None);
    }
    parse(column, &text, from_name).map(Some)
}

pub(super) async fn load_subject(
    connection: &mut Connection,
    subject_id: &str,
) -> Result<Option<(SubjectRecord, Revision)>, StoreError> {
    let row = connection
        .query(
            "SELECT plan, jurisdiction, status, gpc, zero_data_retention, revision
         FROM subjects WHERE subject_id = $1",
        )
        .bind(subject_id)
        .fetch_optional()
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (mut record, revision) = subject_from_row(&row)?;
    for entry in load_choices(&mut *connection, subject_id).await? {
        with_choice(&mut record, entry);
    }
    Ok(Some((record, revision)))
}

/// [`load_subject`] of every subject in `subject_ids`: an id missing from the answer is a
/// subject that does not exist. Two statements, the second only if a subject exists; a single
/// subject (a write alone, the usual case below saturation) is read as [`load_subject`] reads
/// it, with statements planned once.
async fn load_subjects(
    connection: &mut Connection,
    subject_ids: &[&str],
) -> Result<HashMap<String, Option<(SubjectRecord, Revision)>>, StoreError> {
    let mut loaded: HashMap<String, Option<(SubjectRecord, Revision)>> = subject_ids
        .iter()
        .map(|subject_id| ((*subject_id).to_owned(), None))
        .collect();
    if let [subject_id] = subject_ids {
        let subject = load_subject(&mut *connection, subject_id).await?;
        loaded.insert((*subject_id).to_owned(), subject);
        return Ok(loaded);
    }
    if loaded.is_empty() {
        return Ok(loaded);
    }
    let ids: Vec<&str> = loaded.keys().map(String::as_str).collect();
    let mut found = Vec::new();
    for row in read_rows(&mut *connection, Rows::Subjects, &ids).await? {
        let subject_id: String = row.try_get("subject_id")?;
        found.push((subject_id, subject_from_row(&row)?));
    }
    let ids: Vec<&str> = found
        .iter()
        .map(|(subject_id, _)| subject_id.as_str())
        .collect();
    let choices = if ids.is_empty() {
        Vec::new()
    } else {
        read_rows(&mut *connection, Rows::Choices, &ids).await?
    };
    for (subject_id, subject) in found {
        loaded.insert(subject_id, Some(subject));
    }
    for row in choices {
        let subject_id: String = row.try_get("subject_id")?;
        let entry = choice_from_row(&row)?;
        if let Some(Some((record, _))) = loaded.get_mut(&subject_id) {
            with_choice(record, entry);
        }
    }
    Ok(loaded)
}

/// What [`read_rows`] reads.
#[derive(Clone, Copy)]
enum Rows {
    Subjects,
    Choices,
}

/// The rows of the subjects `ids` (each id once), or their stored choices (ordered by purpose
/// within a subject): on PostgreSQL from an array (`arrays::rows_by_id`); on SQLite with an `IN`
/// list, padded to a power of two with its last id again, so that a few distinct statements
/// stay prepared.
async fn read_rows(
    connection: &mut Connection,
    rows: Rows,
    ids: &[&str],
) -> Result<Vec<Row>, StoreError> {
    if let Some(postgres) = connection.as_postgres() {
        let statement = match rows {
            Rows::Subjects => super::arrays::SUBJECT_ROWS,
            Rows::Choices => super::arrays::CHOICE_ROWS,
        };
        return super::arrays::rows_by_id(postgres, statement, ids).await;
    }
    let mut ids = ids.to_vec();
    let last = ids[ids.len() - 1];
    ids.resize(ids.len().next_power_of_two(), last);
    let list = placeholders(1, ids.len());
    let sql = match rows {
        Rows::Subjects => format!(
            "SELECT subject_id, plan, jurisdiction, status, gpc, zero_data_retention, revision
             FROM subjects WHERE subject_id IN {list}"
        ),
        Rows::Choices => format!(
            "SELECT subject_id, purpose, choice, updated_at, notice_version, method, caller,
                    expires_at
             FROM choices WHERE subject_id IN {list} ORDER BY subject_id, purpose"
        ),
    };
    let mut statement = connection.query(sqlx::AssertSqlSafe(sql));
    for subject_id in ids {
        statement = statement.bind(subject_id.to_owned());
    }
    Ok(statement.fetch_all().await?)
}

/// A subject's row, its choices not yet added.
fn subject_from_row(row: &Row) -> Result<(SubjectRecord, Revision), StoreError> {
    let plan: Option<String> = row.try_get("plan")?;
    let state = SubjectState {
        plan: plan
            .as_deref()
            .map(|name| parse("plan", name, Plan::from_name))
            .transpose()?,
        status: parse_column(row, "status", Status::from_name)?,
        gpc: row.try_get("gpc")?,
        zero_data_retention: row.try_get("zero_data_retention")?,
        ..SubjectState::new()
    };
    let record = SubjectRecord {
        state,
        jurisdiction: row.try_get("jurisdiction")?,
        consent: Default::default(),
    };
    let revision = Revision::new(from_i64(row.try_get("revision")?));
    Ok((record, revision))
}

fn with_choice(record: &mut SubjectRecord, entry: ChoiceEntry) {
    let consent = ConsentMeta {
        notice_version: entry.notice_version,
        method: entry.method,
        expires_at_micros: entry.expires_at_micros,
    };
    record.set_choice(entry.purpose, Some(entry.choice), &consent);
}

/// The subject with its choices, or `None` if never seen.
pub(super) async fn subject_in(
    connection: &mut Connection,
    subject_id: &SubjectId,
) -> Result<Option<SubjectView>, StoreError> {
    let Some((record, revision)) = load_subject(&mut *connection, subject_id.as_str()).await?
    else {
        return Ok(None);
    };
    let choices = load_choices(&mut *connection, subject_id.as_str()).await?;
    Ok(Some(SubjectView {
        record,
        choices,
        revision,
    }))
}

/// What the retention schedule reads of a subject.
pub(super) async fn retention_subject_in(
    connection: &mut Connection,
    subject_id: &str,
) -> Result<Option<RetentionSubject>, StoreError> {
    let row = connection
        .query(
            "SELECT status, zero_data_retention, updated_at, revision
         FROM subjects WHERE subject_id = $1",
        )
        .bind(subject_id)
        .fetch_optional()
        .await?;
    let Some(row) = row else { return Ok(None) };
    let status = parse_column(&row, "status", Status::from_name)?;
    let updated_at: i64 = row.try_get("updated_at")?;
    Ok(Some(RetentionSubject {
        subject_id: subject_id.to_owned(),
        status,
        // A deleted subject takes no further write: its row last changed when it was
        // deleted.
        deleted_at_micros: (status == Status::Deleted).then_some(updated_at),
        zero_data_retention: row.try_get("zero_data_retention")?,
        choices: load_choices(&mut *connection, subject_id).await?,
        revision: Revision::new(from_i64(row.try_get("revision")?)),
    }))
}

/// The subjects [`DueCandidates`] selects, after its `after`, in id order (the
/// database's order, as `after` compares in it): the union of one query per criterion,
/// each bounded by the page size, so that every one reads from its index only what the
/// page can hold.
pub(super) async fn due_candidates_in(
    connection: &mut Connection,
    query: &DueCandidates,
) -> Result<CandidatePage, StoreError> {
    let limit = i64::from(query.limit.max(1));
    // Parameters: $1 after, $2 limit, then each criterion's own.
    let mut branches: Vec<String> = Vec::new();
    let mut next = 3;
    let mut placeholder = || {
        let name = format!("${next}");
        next += 1;
        name
    };
    if query.deleted_through.is_some() {
        branches.push(format!(
            "SELECT subject_id FROM subjects
             WHERE status = 'DELETED' AND updated_at <= {} AND subject_id > $1
             ORDER BY subject_id LIMIT $2",
            placeholder()
        ));
    }
    if query.zero_data_retention {
        branches.push(
            "SELECT subject_id FROM subjects
             WHERE zero_data_retention AND subject_id > $1
             ORDER BY subject_id LIMIT $2"
                .to_owned(),
        );
    }
    if !query.refused.is_empty() {
        let through = placeholder();
        let purposes: Vec<String> = query.refused.iter().map(|_| placeholder()).collect();
        branches.push(format!(
            "SELECT DISTINCT subject_id FROM choices
             WHERE purpose IN ({}) AND choice = 'REFUSED' AND updated_at <= {through}
               AND subject_id > $1
             ORDER BY subject_id LIMIT $2",
            purposes.join(", ")
        ));
    }
    let revision = Revision::new(latest_sequence(&mut *connection).await?);
    if branches.is_empty() {
        return Ok(CandidatePage {
            subjects: Vec::new(),
            full: false,
            revision,
        });
    }
    let union: Vec<String> = branches
        .iter()
        .enumerate()
        .map(|(index, branch)| format!("SELECT subject_id FROM ({branch}) AS criterion_{index}"))
        .collect();
    let sql = format!(
        "SELECT subject_id FROM ({}) AS candidates ORDER BY subject_id LIMIT $2",
        union.join(" UNION ")
    );
    let mut select = connection
        .query(sqlx::AssertSqlSafe(sql))
        .bind(query.after.as_str())
        .bind(limit);
    if let Some(through) = query.deleted_through {
        select = select.bind(through);
    }
    if !query.refused.is_empty() {
        select = select.bind(query.refused_through);
        for purpose in &query.refused {
            select = select.bind(purpose.as_str());
        }
    }
    let ids: Vec<(String,)> = select.fetch_all_as().await?;
    let full = ids.len() as i64 == limit;
    let mut subjects = Vec::with_capacity(ids.len());
    for (subject_id,) in &ids {
        if let Some(subject) = retention_subject_in(&mut *connection, subject_id).await? {
            subjects.push(subject);
        }
    }
    Ok(CandidatePage {
        subjects,
        full,
        revision,
    })
}

/// The subject's choices, in purpose order.
pub(super) async fn load_choices(
    connection: &mut Connection,
    subject_id: &str,
) -> Result<Vec<ChoiceEntry>, StoreError> {
    let rows = connection
        .query(
            "SELECT purpose, choice, updated_at, notice_version, method, caller, expires_at
         FROM choices WHERE subject_id = $1",
        )
        .bind(subject_id)
        .fetch_all()
        .await?;
    let mut entries = rows
        .iter()
        .map(choice_from_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
    entries.sort_by_key(|entry| entry.purpose);
    Ok(entries)
}

fn choice_from_row(row: &Row) -> Result<ChoiceEntry, StoreError> {
    Ok(ChoiceEntry {
        purpose: parse_column(row, "purpose", Purpose::from_name)?,
        choice: parse_column(row, "choice", Choice::from_name)?,
        updated_at_micros: row.try_get("updated_at")?,
        notice_version: row.try_get("notice_version")?,
        method: parse_column(row, "method", ConsentMethod::from_name)?,
        caller: row.try_get("caller")?,
        expires_at_micros: row.try_get("expires_at")?,
    })
}

async fn load_conversation(
    connection: &mut Connection,
    subject_id: &str,
    conversation_id: &ConversationId,
) -> Result<Option<ConversationFacts>, StoreError> {
    let row = connection
        .query(
            "SELECT feedback, automated_moderation, user_report FROM conversation_facts
         WHERE subject_id = $1 AND conversation_id = $2",
        )
        .bind(subject_id)
        .bind(conversation_id.as_str())
        .fetch_optional()
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(facts_from_row(&row)?))
}

fn facts_from_row(row: &Row) -> Result<ConversationFacts, StoreError> {
    let feedback: Option<String> = row.try_get("feedback")?;
    Ok(ConversationFacts {
        feedback: feedback
            .as_deref()
            .map(|name| parse("feedback", name, Rating::from_name))
            .transpose()?,
        automated_moderation: row.try_get("automated_moderation")?,
        user_report: row.try_get("user_report")?,
    })
}

/// The latest committed sequence, read without locking.
pub(super) async fn latest_sequence(connection: &mut Connection) -> Result<u64, StoreError> {
    let (sequence,): (i64,) = connection
        .query("SELECT sequence FROM audit_chain_head WHERE chain_id = 0")
        .fetch_one_as()
        .await?;
    Ok(from_i64(sequence))
}

/// The oldest revision the change log can be read from (the one before its first
/// event still kept) and the latest committed one.
pub(super) async fn change_log_bounds(
    connection: &mut Connection,
) -> Result<(Revision, Revision), StoreError> {
    let (first, head): (Option<i64>, i64) = connection
        .query(
            "SELECT (SELECT MIN(sequence) FROM audit_events),
                (SELECT sequence FROM audit_chain_head WHERE chain_id = 0)",
        )
        .fetch_one_as()
        .await?;
    let head = from_i64(head);
    let first = first.map_or(head, |first| from_i64(first) - 1);
    Ok((Revision::new(first), Revision::new(head)))
}

/// The latest committed revision, read without locking.
pub(super) async fn head_revision(connection: &mut Connection) -> Result<Revision, StoreError> {
    Ok(Revision::new(latest_sequence(connection).await?))
}

/// How many subjects the store holds (deleted ones included).
pub(super) async fn count_subjects(connection: &mut Connection) -> Result<u64, StoreError> {
    count_rows(connection, "SELECT COUNT(*) FROM subjects").await
}

/// The number of recorded decisions: the rows of `decision_log` and the decisions of the
/// shipped segments.
pub(super) async fn count_decisions(connection: &mut Connection) -> Result<u64, StoreError> {
    count_rows(
        connection,
        // PostgreSQL sums BIGINTs as NUMERIC.
        "SELECT CAST((SELECT COUNT(*) FROM decision_log)
              + (SELECT COALESCE(SUM(records), 0) FROM decision_log_segments) AS BIGINT)",
    )
    .await
}

/// Whether the decision log holds the segment whose first decision is `first`: a shipped
/// segment of that first decision, or that decision's row (looked up by its instant and id, so
/// that on PostgreSQL one day's partition is read), as segments were shipped before migration
/// 0011 on PostgreSQL.
pub(super) async fn has_decision_segment(
    connection: &mut Connection,
    first: &Decided<'_>,
) -> Result<bool, StoreError> {
    let row = connection
        .query(
            "SELECT 1 FROM decision_log WHERE decided_at = $1 AND decision_id = $2
             UNION ALL SELECT 1 FROM decision_log_segments WHERE first_decision_id = $2",
        )
        .bind(first.decided_at_micros)
        .bind(first.decision_id.to_string())
        .fetch_optional()
        .await?;
    Ok(row.is_some())
}

/// The decisions of the shipped segments that `query` asks for, in order: the segments whose
/// instants overlap the query's (on PostgreSQL, of those, the ones that list its subject) are
/// read in the order of their first instant, until no later segment can hold a decision before
/// the last one found.
pub(super) async fn segment_decisions(
    connection: &mut Connection,
    query: &DecisionQuery,
) -> Result<Vec<DecisionRecord>, StoreError> {
    const SEGMENTS_PER_READ: i64 = 16;
    const SEGMENTS: &str = "SELECT first_decision_id, first_at, body FROM decision_log_segments
         WHERE last_at >= $1 AND first_at < $2
           AND (first_at > $3 OR (first_at = $3 AND first_decision_id > $4))";
    // SQLite's segments do not list their subjects: there every segment is read and filtered.
    let subject = match connection {
        Connection::Postgres(..) => query.subject_id.as_ref(),
        Connection::Sqlite(..) => None,
    };
    let statement = match subject {
        Some(_) => format!(
            "{SEGMENTS} AND subjects @> ARRAY[$6::TEXT] ORDER BY first_at, first_decision_id LIMIT $5"
        ),
        None => format!("{SEGMENTS} ORDER BY first_at, first_decision_id LIMIT $5"),
    };
    let from = query
        .after
        .as_ref()
        .map_or(query.from_micros, |(at, _)| query.from_micros.max(*at));
    let limit = query.limit as usize;
    let mut found: Vec<DecisionRecord> = Vec::new();
    let mut cursor = (i64::MIN, String::new());
    loop {
        let mut read = connection
            .query(sqlx::AssertSqlSafe(statement.as_str()))
            .bind(from)
            .bind(query.until_micros)
            .bind(cursor.0)
            .bind(cursor.1.clone())
            .bind(SEGMENTS_PER_READ);
        if let Some(subject) = subject {
            read = read.bind(subject.as_str().to_owned());
        }
        let segments: Vec<(String, i64, Vec<u8>)> = read.fetch_all_as().await?;
        let Some((first_id, first_at, _)) = segments.last() else {
            return Ok(found);
        };
        cursor = (*first_at, first_id.clone());
        let more = segments.len() as i64 == SEGMENTS_PER_READ;
        for (_, _, body) in &segments {
            let segment = crate::audit::segment::read(body);
            if segment.unreadable_bytes > 0 {
                return Err(StoreError::Corrupt(
                    "a stored decision log segment does not read".into(),
                ));
            }
            found.extend(
                segment
                    .records
                    .into_iter()
                    .filter(|record| query.matches(record)),
            );
        }
        found.sort_by(|a, b| {
            (a.decided_at_micros, &a.decision_id).cmp(&(b.decided_at_micros, &b.decision_id))
        });
        found.truncate(limit);
        // A later segment's decisions are all at or after its first instant.
        let full = found.len() == limit
            && found
                .last()
                .is_some_and(|last| last.decided_at_micros < cursor.0);
        if !more || full {
            return Ok(found);
        }
    }
}

/// The rows of `decision_log` that `query` asks for, in order.
pub(super) async fn decisions(
    connection: &mut Connection,
    query: &DecisionQuery,
) -> Result<Vec<DecisionRecord>, StoreError> {
    let mut sql = format!(
        "SELECT {} FROM decision_log WHERE decided_at >= $1 AND decided_at < $2",
        super::DECISION_LOG_COLUMNS
    );
    let mut next = 3;
    if query.subject_id.is_some() {
        sql.push_str(&format!(" AND subject_id = ${next}"));
        next += 1;
    }
    if query.decision_id.is_some() {
        sql.push_str(&format!(" AND decision_id = ${next}"));
        next += 1;
    }
    if query.after.is_some() {
        // Row values would do on both, but PostgreSQL then uses the index on decided_at too.
        sql.push_str(&format!(
            " AND decided_at >= ${next} AND (decided_at > ${next} OR decision_id > ${})",
            next + 1
        ));
        next += 2;
    }
    sql.push_str(&format!(" ORDER BY decided_at, decision_id LIMIT ${next}"));
    let mut statement = connection
        .query(sqlx::AssertSqlSafe(sql))
        .bind(query.from_micros)
        .bind(query.until_micros);
    if let Some(subject_id) = &query.subject_id {
        statement = statement.bind(subject_id.as_str().to_owned());
    }
    if let Some(decision_id) = &query.decision_id {
        statement = statement.bind(decision_id.clone());
    }
    if let Some((at, id)) = &query.after {
        statement = statement.bind(*at).bind(id.clone());
    }
    let rows = statement.bind(i64::from(query.limit)).fetch_all().await?;
    rows.iter().map(decision_from_row).collect()
}

fn decision_from_row(row: &Row) -> Result<DecisionRecord, StoreError> {
    let consistency: String = row.try_get("consistency")?;
    Ok(DecisionRecord {
        decided_at_micros: row.try_get("decided_at")?,
        decision_id: row.try_get("decision_id")?,
        subject_id: row.try_get("subject_id")?,
        purpose: parse_column(row, "purpose", Purpose::from_name)?,
        conversation_id: row.try_get("conversation_id")?,
        source: parse_column(row, "source", Source::from_name)?,
        consistency: crate::audit::segment::consistency_name(&consistency)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown consistency {consistency:?}")))?,
        decision: parse_column(row, "decision", Decision::from_name)?,
        reason: parse_column(row, "reason", Reason::from_name)?,
        rule: std::borrow::Cow::Owned(row.try_get("rule")?),
        policy_version: std::borrow::Cow::Owned(row.try_get("policy_version")?),
        revision: row
            .try_get::<Option<i64>>("revision")?
            .map(|revision| revision as u64),
        degraded: row.try_get("degraded")?,
        caller: row.try_get("caller")?,
        trace_id: row.try_get("trace_id")?,
    })
}

async fn count_rows(
    connection: &mut Connection,
    statement: &'static str,
) -> Result<u64, StoreError> {
    let (count,): (i64,) = connection.query(statement).fetch_one_as().await?;
    Ok(count as u64)
}

/// The latest migration applied.
pub(super) async fn schema_version(connection: &mut Connection) -> Result<i64, StoreError> {
    let (version,): (i64,) = connection
        .query("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
        .fetch_one_as()
        .await?;
    Ok(version)
}

/// The last sequence and hash of the chain, locked for a write where the backend needs
/// it.
async fn chain_head(connection: &mut Connection) -> Result<ChainHead, StoreError> {
    let head_query = connection.chain_head_for_write();
    let (sequence, hash, frontier): (i64, String, Option<Vec<u8>>) =
        connection.query(head_query).fetch_one_as().await?;
    let sequence = from_i64(sequence);
    let frontier = match frontier {
        Some(bytes) => Frontier::from_bytes(sequence, &bytes).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the audit tree's peaks do not fit a tree of {sequence} events"
            ))
        })?,
        None => return Err(StoreError::TreeNotBuilt),
    };
    Ok(ChainHead {
        sequence,
        hash,
        frontier,
        appends: None,
    })
}

/// The subject rows and stored choices of a write group's writes, written together by
/// [`write_rows`]: a row put again under the same key takes the place of the earlier one (each
/// is the whole row, as the later write left it).
#[derive(Default)]
pub(super) struct RowBatch {
    pub(super) subjects: Vec<SubjectRow>,
    pub(super) choices: Vec<ChoiceRow>,
    subject_at: HashMap<String, usize>,
    choice_at: HashMap<(String, &'static str), usize>,
}

impl RowBatch {
    fn put_subject(&mut self, row: SubjectRow) {
        match self.subject_at.get(&row.subject_id) {
            Some(&index) => self.subjects[index] = row,
            None => {
                self.subject_at
                    .insert(row.subject_id.clone(), self.subjects.len());
                self.subjects.push(row);
            }
        }
    }

    fn put_choice(&mut self, row: ChoiceRow) {
        let key = (row.subject_id.clone(), row.purpose);
        match self.choice_at.get(&key) {
            Some(&index) => self.choices[index] = row,
            None => {
                self.choice_at.insert(key, self.choices.len());
                self.choices.push(row);
            }
        }
    }
}

/// The most rows one statement of [`write_rows`] writes (each well under 200 bytes: a
/// statement stays within a TLS record, see `arrays::INSERT_BYTES`).
const ROWS_PER_STATEMENT: usize = 64;

/// Writes the rows put in `rows` (the subjects first: a choice refers to its subject), and
/// empties it.
async fn write_rows(connection: &mut Connection, rows: &mut RowBatch) -> Result<(), StoreError> {
    let batch = std::mem::take(rows);
    for subjects in batch.subjects.chunks(ROWS_PER_STATEMENT) {
        if let Some(postgres) = connection.as_postgres() {
            super::arrays::upsert_subjects(postgres, subjects).await?;
            continue;
        }
        let mut statement = connection.query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO subjects
             (subject_id, plan, jurisdiction, status, gpc, zero_data_retention,
              created_at, updated_at, revision)
             VALUES {} {}",
            placeholders(subjects.len(), 9),
            subject_conflict!()
        )));
        for row in subjects {
            statement = statement
                .bind(row.subject_id.clone())
                .bind(row.plan)
                .bind(row.jurisdiction.clone())
                .bind(row.status)
                .bind(row.gpc)
                .bind(row.zero_data_retention)
                .bind(row.now)
                .bind(row.now)
                .bind(row.sequence);
        }
        statement.execute().await?;
    }
    for choices in batch.choices.chunks(ROWS_PER_STATEMENT) {
        if let Some(postgres) = connection.as_postgres() {
            super::arrays::upsert_choices(postgres, choices).await?;
            continue;
        }
        let mut statement = connection.query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO choices
             (subject_id, purpose, choice, updated_at, revision, notice_version,
              method, caller, expires_at)
             VALUES {} {}",
            placeholders(choices.len(), 9),
            choice_conflict!()
        )));
        for row in choices {
            statement = statement
                .bind(row.subject_id.clone())
                .bind(row.purpose)
                .bind(row.choice)
                .bind(row.now)
                .bind(row.sequence)
                .bind(row.notice_version.clone())
                .bind(row.method)
                .bind(row.caller.clone())
                .bind(row.expires_at);
        }
        statement.execute().await?;
    }
    Ok(())
}

/// Writes a change's rows; `caller` is recorded with a stored choice. Its subject row and a
/// choice stored go through a [`RowBatch`]: `rows`, a write group's, written with the group's
/// (at once if the change writes more), else one of its own, written at once. What else the
/// change writes is written after the rows put before it.
async fn apply_change(
    connection: &mut Connection,
    subject_id: &str,
    change: &Change,
    caller: &str,
    (revision, now): (Revision, i64),
    rows: Option<&mut RowBatch>,
) -> Result<(), StoreError> {
    let sequence = to_i64(revision.sequence());
    let state = &change.subject.state;
    let grouped = rows.is_some();
    let mut own = RowBatch::default();
    let rows = rows.unwrap_or(&mut own);
    rows.put_subject(SubjectRow {
        subject_id: subject_id.to_owned(),
        plan: state.plan.map(Plan::as_str),
        jurisdiction: change.subject.jurisdiction.clone(),
        status: state.status.as_str(),
        gpc: state.gpc,
        zero_data_retention: state.zero_data_retention,
        now,
        sequence,
    });
    if let Some((purpose, Some(choice))) = change.choice {
        let provenance = change.subject.provenance(purpose);
        rows.put_choice(ChoiceRow {
            subject_id: subject_id.to_owned(),
            purpose: purpose.as_str(),
            choice: choice.as_str(),
            now,
            sequence,
            notice_version: provenance.notice_version.clone(),
            method: provenance.method.as_str(),
            caller: caller.to_owned(),
            expires_at: state.expiries.get(purpose),
        });
    }
    let more = matches!(change.choice, Some((_, None)))
        || change.conversation.is_some()
        || change.erase_personal_data;
    if grouped && !more {
        return Ok(());
    }
    write_rows(&mut *connection, rows).await?;
    apply_rest(connection, subject_id, change, sequence, now).await
}

/// What a change writes besides its subject row and a choice stored: a choice removed, a
/// conversation's facts, the erasure of a deleted subject's personal data.
async fn apply_rest(
    connection: &mut Connection,
    subject_id: &str,
    change: &Change,
    sequence: i64,
    now: i64,
) -> Result<(), StoreError> {
    if let Some((purpose, None)) = change.choice {
        connection
            .query("DELETE FROM choices WHERE subject_id = $1 AND purpose = $2")
            .bind(subject_id)
            .bind(purpose.as_str())
            .execute()
            .await?;
    }

    if let Some((conversation_id, facts)) = &change.conversation {
        connection
            .query(
                "INSERT INTO conversation_facts
                 (subject_id, conversation_id, feedback, automated_moderation,
                  user_report, updated_at, revision)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (subject_id, conversation_id) DO UPDATE SET
                 feedback = excluded.feedback,
                 automated_moderation = excluded.automated_moderation,
                 user_report = excluded.user_report,
                 updated_at = excluded.updated_at,
                 revision = excluded.revision",
            )
            .bind(subject_id)
            .bind(conversation_id.as_str())
            .bind(facts.feedback.map(Rating::as_str))
            .bind(facts.automated_moderation)
            .bind(facts.user_report)
            .bind(now)
            .bind(sequence)
            .execute()
            .await?;
    }

    if change.erase_personal_data {
        connection
            .query("DELETE FROM choices WHERE subject_id = $1")
            .bind(subject_id)
            .execute()
            .await?;
        connection
            .query("DELETE FROM conversation_facts WHERE subject_id = $1")
            .bind(subject_id)
            .execute()
            .await?;
    }
    Ok(())
}

/// Choices whose expiry is at or before `now_micros`, the earliest first, at most
/// `limit`.
pub(super) async fn expired_choices_in(
    connection: &mut Connection,
    now_micros: i64,
    limit: u32,
) -> Result<Vec<ExpiredChoice>, StoreError> {
    let rows = connection
        .query(
            "SELECT subject_id, purpose, expires_at FROM choices
         WHERE expires_at IS NOT NULL AND expires_at <= $1
         ORDER BY expires_at, subject_id, purpose LIMIT $2",
        )
        .bind(now_micros)
        .bind(i64::from(limit))
        .fetch_all()
        .await?;
    rows.iter()
        .map(|row| {
            let subject_id: String = row.try_get("subject_id")?;
            Ok(ExpiredChoice {
                subject_id: SubjectId::parse(&subject_id).map_err(|invalid| {
                    StoreError::Corrupt(format!("subject_id {subject_id:?}: {invalid}"))
                })?,
                purpose: parse_column(row, "purpose", Purpose::from_name)?,
                expires_at_micros: row.try_get("expires_at")?,
            })
        })
        .collect()
}

/// Seals an event after `head`, appends it with the tree nodes its leaf completes and its
/// payload, and moves `head` (sequence, hash and the tree's peaks) to it.
async fn append_event(
    connection: &mut Connection,
    head: &mut ChainHead,
    new: NewEvent<'_>,
) -> Result<AuditEvent, StoreError> {
    let event = sealed_event(head, &new);
    let tree = head
        .frontier
        .push(merkle::leaf_hash(&leaf_data(&event)))
        .concat();
    head.sequence = event.sequence;
    head.hash.clone_from(&event.hash);
    match &mut head.appends {
        Some(appends) => appends.push((event.clone(), tree)),
        None => {
            insert_events(&mut *connection, &[(event.clone(), tree)]).await?;
            write_head(&mut *connection, head).await?;
        }
    }
    if let Some(changed) = Changed::parse(&event.subject_id) {
        connection.appended(Revision::new(event.sequence), changed);
    }
    Ok(event)
}

/// Writes the events a write group sealed ([`ChainHead::appends`]) and moves the stored head
/// to the last, in three statements.
async fn write_appends(
    connection: &mut Connection,
    head: &mut ChainHead,
) -> Result<(), StoreError> {
    let appends = head.appends.take().unwrap_or_default();
    if appends.is_empty() {
        return Ok(());
    }
    insert_events(&mut *connection, &appends).await?;
    write_head(&mut *connection, head).await
}

/// Inserts `events` (each with the tree nodes its leaf completes) and their payloads, in two
/// statements (on PostgreSQL over arrays, so that the statements are the same whatever the
/// number of events, and stay prepared).
async fn insert_events(
    connection: &mut Connection,
    events: &[(AuditEvent, Vec<u8>)],
) -> Result<(), StoreError> {
    if let Some(postgres) = connection.as_postgres() {
        return super::arrays::insert_events(postgres, events).await;
    }
    const COLUMNS: usize = 14;
    let mut statement = connection.query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_events
         (sequence, event_id, at_micros, subject_id, kind, caller, operator_id,
          actor_reason, payload_sha256, policy_version, trace_id, prev_hash, hash, tree)
         VALUES {}",
        placeholders(events.len(), COLUMNS)
    )));
    for (event, tree) in events {
        statement = statement
            .bind(to_i64(event.sequence))
            .bind(event.event_id.clone())
            .bind(event.at_micros)
            .bind(event.subject_id.clone())
            .bind(event.kind.as_str())
            .bind(event.caller.clone())
            .bind(event.operator_id.clone())
            .bind(event.actor_reason.clone())
            .bind(event.payload_sha256.clone())
            .bind(event.policy_version.clone())
            .bind(event.trace_id.clone())
            .bind(event.prev_hash.clone())
            .bind(event.hash.clone())
            .bind(tree.clone());
    }
    statement.execute().await?;
    let mut statement = connection.query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_payloads (sequence, salt, detail_json) VALUES {}",
        placeholders(events.len(), 3)
    )));
    for (event, _) in events {
        statement = statement
            .bind(to_i64(event.sequence))
            .bind(event.payload_salt.clone())
            .bind(event.detail_json.clone());
    }
    statement.execute().await?;
    Ok(())
}

/// Moves the stored chain head to `head`.
async fn write_head(connection: &mut Connection, head: &ChainHead) -> Result<(), StoreError> {
    connection
        .query(
            "UPDATE audit_chain_head SET sequence = $1, hash = $2, frontier = $3
             WHERE chain_id = 0",
        )
        .bind(to_i64(head.sequence))
        .bind(head.hash.clone())
        .bind(head.frontier.to_bytes())
        .execute()
        .await?;
    Ok(())
}

/// `($1, ..., $columns), ...` for `rows` rows.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = |index: usize| {
        let numbers: Vec<String> = (1..=columns)
            .map(|column| format!("${}", index * columns + column))
            .collect();
        format!("({})", numbers.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// Fills, once, the payload commitment and the tree nodes of the events written before the
/// tree was kept, in sequence order, then the head's peaks: inside an open write transaction,
/// the caller commits. Returns how many events it filled (0 when the tree is built already).
pub(super) async fn build_tree_in(connection: &mut Connection) -> Result<u64, StoreError> {
    let head_query = connection.chain_head_for_write();
    let (head_sequence, built): (i64, Option<Vec<u8>>) = {
        let (sequence, _hash, frontier): (i64, String, Option<Vec<u8>>) =
            connection.query(head_query).fetch_one_as().await?;
        (sequence, frontier)
    };
    if built.is_some() {
        return Ok(0);
    }
    let mut frontier = Frontier::new();
    let mut after = 0_i64;
    loop {
        let rows = connection
            .query(EVENTS_AFTER)
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all()
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("sequence")?;
        for row in &rows {
            let mut event = event_from_row(row)?;
            if event.sequence != frontier.size() + 1 {
                return Err(StoreError::Corrupt(format!(
                    "audit event {} follows {}: the chain has a gap",
                    event.sequence,
                    frontier.size()
                )));
            }
            if event.payload_erased {
                return Err(StoreError::Corrupt(format!(
                    "audit event {} has no payload to commit to",
                    event.sequence
                )));
            }
            event.payload_sha256 = payload_sha256(&event.payload_salt, &event.detail_json)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("audit event {}: salt", event.sequence))
                })?;
            let completed = frontier.push(merkle::leaf_hash(&leaf_data(&event)));
            connection
                .query("UPDATE audit_events SET payload_sha256 = $1, tree = $2 WHERE sequence = $3")
                .bind(&event.payload_sha256)
                .bind(completed.concat())
                .bind(to_i64(event.sequence))
                .execute()
                .await?;
        }
    }
    if frontier.size() != from_i64(head_sequence) {
        return Err(StoreError::Corrupt(format!(
            "the chain head is at {} but the events end at {}",
            from_i64(head_sequence),
            frontier.size()
        )));
    }
    connection
        .query("UPDATE audit_chain_head SET frontier = $1 WHERE chain_id = 0")
        .bind(frontier.to_bytes())
        .execute()
        .await?;
    Ok(frontier.size())
}

/// Erases the payloads of a deleted subject's events (all but earlier erasures, and those
/// written before payloads were salted, whose chain hash covers the detail itself) and records
/// the erasure as a `payload_erased` event naming them, inside an open write transaction; the
/// caller commits. Returns how many were erased and the event's revision (none if nothing was
/// left to erase).
pub(super) async fn erase_payloads_in(
    connection: &mut Connection,
    subject_id: &SubjectId,
    context: &WriteContext,
) -> Result<(u64, Option<Revision>), StoreError> {
    let mut head = chain_head(&mut *connection).await?;
    match load_subject(&mut *connection, subject_id.as_str()).await? {
        None => return Err(StoreError::NotFound(subject_id.clone())),
        Some((record, _)) if record.state.status != Status::Deleted => {
            return Err(StoreError::NotDeleted(subject_id.clone()));
        }
        Some(_) => {}
    }
    let erased: Vec<(i64,)> = connection
        .query(
            "SELECT p.sequence FROM audit_payloads AS p
             JOIN audit_events AS e ON e.sequence = p.sequence
             WHERE e.subject_id = $1 AND e.kind <> $2 AND p.salt <> '' ORDER BY p.sequence",
        )
        .bind(subject_id.as_str())
        .bind(EventKind::PayloadErased.as_str())
        .fetch_all_as()
        .await?;
    if erased.is_empty() {
        return Ok((0, None));
    }
    let sequences: Vec<i64> = erased.into_iter().map(|(sequence,)| sequence).collect();
    for chunk in sequences.chunks(SEQUENCES_PER_STATEMENT) {
        let sql = sequences_in("DELETE FROM audit_payloads", chunk.len());
        let mut statement = connection.query(sqlx::AssertSqlSafe(sql));
        for sequence in chunk {
            statement = statement.bind(*sequence);
        }
        statement.execute().await?;
    }
    let detail = serde_json::json!({ "erased": sequences });
    let event = NewEvent {
        at_micros: now_micros(),
        subject_id: subject_id.as_str(),
        kind: EventKind::PayloadErased,
        context,
        detail: &detail,
        policy_version: &context.policy_version,
    };
    let event = append_event(&mut *connection, &mut head, event).await?;
    Ok((sequences.len() as u64, Some(Revision::new(event.sequence))))
}

/// How many sequences one statement names (`sequences_in`), well under either backend's limit
/// on parameters.
const SEQUENCES_PER_STATEMENT: usize = 500;

/// `statement` restricted to `count` sequences bound as `$1 .. $count`.
fn sequences_in(statement: &str, count: usize) -> String {
    let placeholders: Vec<String> = (1..=count).map(|n| format!("${n}")).collect();
    format!(
        "{statement} WHERE sequence IN ({})",
        placeholders.join(", ")
    )
}

/// The stored hashes of perfect subtrees, in the order asked: one query, whatever the
/// number (a proof asks O(log n)). A node beyond the tree, or missing, is an error.
pub(super) async fn tree_nodes_in(
    connection: &mut Connection,
    nodes: &[NodeId],
) -> Result<Vec<Hash>, StoreError> {
    let mut sequences: Vec<u64> = nodes.iter().map(|node| node.stored_at().0).collect();
    sequences.sort_unstable();
    sequences.dedup();
    let mut stored = std::collections::HashMap::with_capacity(sequences.len());
    for chunk in sequences.chunks(SEQUENCES_PER_STATEMENT) {
        let sql = sequences_in("SELECT sequence, tree FROM audit_events", chunk.len());
        let mut statement = connection.query(sqlx::AssertSqlSafe(sql));
        for sequence in chunk {
            statement = statement.bind(to_i64(*sequence));
        }
        let rows: Vec<(i64, Option<Vec<u8>>)> = statement.fetch_all_as().await?;
        for (sequence, tree) in rows {
            stored.insert(from_i64(sequence), tree.unwrap_or_default());
        }
    }
    nodes
        .iter()
        .map(|node| {
            let (sequence, position) = node.stored_at();
            let tree = stored
                .get(&sequence)
                .ok_or_else(|| StoreError::Corrupt(format!("audit event {sequence} is missing")))?;
            tree.get(position * 32..(position + 1) * 32)
                .and_then(|bytes| Hash::try_from(bytes).ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "audit event {sequence} holds no tree node at level {position}"
                    ))
                })
        })
        .collect()
}

/// Audit events in sequence order.
pub(super) async fn events_in(
    connection: &mut Connection,
    query: &EventQuery,
) -> Result<Vec<AuditEvent>, StoreError> {
    let after = to_i64(query.after_sequence);
    let limit = i64::from(query.limit);
    let rows = match &query.subject_id {
        Some(subject_id) => {
            connection
                .query(
                    "SELECT e.*, p.salt, p.detail_json FROM audit_events AS e
                 LEFT JOIN audit_payloads AS p ON p.sequence = e.sequence
                 WHERE e.subject_id = $1 AND e.sequence > $2
                 ORDER BY e.sequence LIMIT $3",
                )
                .bind(subject_id.as_str())
                .bind(after)
                .bind(limit)
                .fetch_all()
                .await?
        }
        None => {
            connection
                .query(EVENTS_AFTER)
                .bind(after)
                .bind(limit)
                .fetch_all()
                .await?
        }
    };
    rows.iter().map(event_from_row).collect()
}

/// The events (of one subject, or all) with a sequence below `before`, newest first, at most
/// `limit`.
pub(super) async fn events_before_in(
    connection: &mut Connection,
    subject_id: Option<&str>,
    before: u64,
    limit: u32,
) -> Result<Vec<AuditEvent>, StoreError> {
    let before = i64::try_from(before).unwrap_or(i64::MAX);
    let limit = i64::from(limit);
    let rows = match subject_id {
        Some(subject_id) => {
            connection
                .query(
                    "SELECT e.*, p.salt, p.detail_json FROM audit_events AS e
                 LEFT JOIN audit_payloads AS p ON p.sequence = e.sequence
                 WHERE e.subject_id = $1 AND e.sequence < $2
                 ORDER BY e.sequence DESC LIMIT $3",
                )
                .bind(subject_id)
                .bind(before)
                .bind(limit)
                .fetch_all()
                .await?
        }
        None => {
            connection
                .query(
                    "SELECT e.*, p.salt, p.detail_json FROM audit_events AS e
                 LEFT JOIN audit_payloads AS p ON p.sequence = e.sequence
                 WHERE e.sequence < $1 ORDER BY e.sequence DESC LIMIT $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all()
                .await?
        }
    };
    rows.iter().map(event_from_row).collect()
}

/// Recomputes the chain, each payload's commitment, each leaf and the stored tree nodes inside
/// an open read transaction (one snapshot of events and head, even while writes continue).
pub(super) async fn verify_chain_in(connection: &mut Connection) -> Result<LogReport, StoreError> {
    let head: Option<(i64, String)> = connection
        .query("SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0")
        .fetch_optional()
        .await?
        .map(|row| row.decode())
        .transpose()?;
    let mut verifier = ChainVerifier::new();
    let mut tree = TreeCheck::default();
    let mut after = 0_i64;
    loop {
        let rows = connection
            .query(EVENTS_AFTER)
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all()
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("sequence")?;
        for row in &rows {
            match event_from_row(row) {
                Ok(event) => {
                    verifier.feed(&event);
                    let stored: Option<Vec<u8>> = row.try_get("tree")?;
                    tree.feed(&event, stored.as_deref().unwrap_or_default());
                }
                // Rewritten beyond what this binary reads: reported, not an error.
                Err(StoreError::Corrupt(_)) => {
                    let sequence = from_i64(row.try_get("sequence")?);
                    let event_id: String = row.try_get("event_id")?;
                    verifier.feed_unreadable(sequence, event_id.clone(), row.try_get("hash")?);
                    tree.unreadable(sequence, event_id);
                }
                Err(error) => return Err(error),
            }
        }
    }
    let head = head.map(|(sequence, hash)| (from_i64(sequence), hash));
    let chain = verifier.finish(
        head.as_ref()
            .map(|(sequence, hash)| (*sequence, hash.as_str())),
    );
    Ok(tree.finish(chain))
}

/// What the chain verification checks beyond the chain: each present payload against its
/// commitment, each erased payload named by a later `payload_erased` event, each leaf and the
/// stored nodes it completes, recomputed.
#[derive(Default)]
struct TreeCheck {
    frontier: Frontier,
    /// The first problem found: its sequence and event id.
    first_problem: Option<(u64, String)>,
    erased: Vec<(u64, String)>,
    erasures_named: std::collections::HashSet<u64>,
}

impl TreeCheck {
    fn feed(&mut self, event: &AuditEvent, stored_tree: &[u8]) {
        let problem = if event.payload_erased {
            self.erased.push((event.sequence, event.event_id.clone()));
            false
        } else {
            if event.kind == EventKind::PayloadErased {
                let named = serde_json::from_str::<serde_json::Value>(&event.detail_json)
                    .ok()
                    .and_then(|detail| detail["erased"].as_array().cloned())
                    .unwrap_or_default();
                self.erasures_named
                    .extend(named.iter().filter_map(serde_json::Value::as_u64));
            }
            payload_sha256(&event.payload_salt, &event.detail_json).as_deref()
                != Some(event.payload_sha256.as_str())
        };
        let completed = self.frontier.push(merkle::leaf_hash(&leaf_data(event)));
        if problem || completed.concat() != stored_tree {
            self.problem(event.sequence, &event.event_id);
        }
    }

    /// An event this binary cannot read: its leaf cannot be recomputed, and the tree goes on
    /// from a leaf that matches nothing.
    fn unreadable(&mut self, sequence: u64, event_id: String) {
        self.frontier.push([0; 32]);
        self.problem(sequence, &event_id);
    }

    fn problem(&mut self, sequence: u64, event_id: &str) {
        self.first_problem
            .get_or_insert_with(|| (sequence, event_id.to_owned()));
    }

    fn finish(mut self, mut chain: ChainReport) -> LogReport {
        let unnamed = self
            .erased
            .iter()
            .find(|(sequence, _)| !self.erasures_named.contains(sequence))
            .cloned();
        if let Some((sequence, event_id)) = unnamed {
            self.problem(sequence, &event_id);
        }
        if chain.first_bad_event_id.is_none()
            && let Some((_, event_id)) = self.first_problem
        {
            chain.first_bad_event_id = Some(event_id);
            chain.ok = false;
        }
        LogReport {
            chain,
            tree_size: self.frontier.size(),
            root: self.frontier.root(),
        }
    }
}

pub(super) fn parse<T>(
    column: &str,
    text: &str,
    from_name: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    from_name(text).ok_or_else(|| StoreError::Corrupt(format!("{column} {text:?}")))
}

fn parse_column<T>(
    row: &Row,
    column: &str,
    from_name: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    parse(column, &text, from_name)
}

/// An event read with its payload (`salt`, `detail_json`: NULL once erased).
pub(super) fn event_from_row(row: &Row) -> Result<AuditEvent, StoreError> {
    let detail_json: Option<String> = row.try_get("detail_json")?;
    let payload_salt: Option<String> = row.try_get("salt")?;
    let payload_erased = detail_json.is_none();
    Ok(AuditEvent {
        sequence: from_i64(row.try_get("sequence")?),
        event_id: row.try_get("event_id")?,
        at_micros: row.try_get("at_micros")?,
        subject_id: row.try_get("subject_id")?,
        kind: parse_column(row, "kind", EventKind::from_name)?,
        caller: row.try_get("caller")?,
        operator_id: row.try_get("operator_id")?,
        actor_reason: row.try_get("actor_reason")?,
        detail_json: detail_json.unwrap_or_default(),
        payload_salt: payload_salt.unwrap_or_default(),
        // Filled for every event once the tree is built (`build_tree`).
        payload_sha256: row
            .try_get::<Option<String>>("payload_sha256")?
            .unwrap_or_default(),
        payload_erased,
        policy_version: row.try_get("policy_version")?,
        trace_id: row.try_get("trace_id")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Sequences are stored as signed 64-bit integers; they start at 1 and never approach
/// `i64::MAX`.
fn to_i64(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

pub(super) fn from_i64(sequence: i64) -> u64 {
    u64::try_from(sequence).unwrap_or_default()
}
