//! `assent.v1.Audit`: reading and verifying the audit log.

use tonic::{Request, Response, Status};

use super::{AppState, CallContext, convert, validate};
use crate::audit::merkle;
use crate::audit::note::SignedCheckpoint;
use crate::audit::{AuditEvent, DecisionRecord};
use crate::checkpoints::{CheckpointError, Checkpoints};
use crate::error::ApiError;
use crate::proto;
use crate::revision::Revision;
use crate::store::{Changed, EventQuery, StateReport, Store, StoreError};

#[derive(Clone, Debug)]
pub struct AuditService {
    state: AppState,
}

impl AuditService {
    pub fn new(state: AppState) -> AuditService {
        AuditService { state }
    }
}

/// Cuts a listing read with one item more than `page_size` down to the page, and returns the
/// token of the next page: `token` of the page's last item, or empty when none follows.
fn next_page<T>(items: &mut Vec<T>, page_size: u32, token: impl Fn(&T) -> String) -> String {
    let more = items.len() > page_size as usize;
    items.truncate(page_size as usize);
    match items.last() {
        Some(last) if more => token(last),
        _ => String::new(),
    }
}

fn decision_to_proto(record: DecisionRecord) -> proto::RecordedDecision {
    proto::RecordedDecision {
        decision_id: record.decision_id,
        decided_at: Some(convert::timestamp(record.decided_at_micros)),
        subject_id: record.subject_id,
        purpose: proto::Purpose::from(record.purpose) as i32,
        conversation_id: record.conversation_id.unwrap_or_default(),
        source: proto::Source::from(record.source) as i32,
        consistency: record.consistency.to_owned(),
        decision: proto::Decision::from(record.decision) as i32,
        reason: proto::Reason::from(record.reason) as i32,
        rule: record.rule.into_owned(),
        policy_version: record.policy_version.into_owned(),
        revision: record
            .revision
            .map(|sequence| Revision::new(sequence).to_token())
            .unwrap_or_default(),
        degraded: record.degraded,
        caller: record.caller,
        trace_id: record.trace_id,
    }
}

fn event_to_proto(event: AuditEvent) -> proto::AuditEvent {
    let leaf_hash = merkle::leaf_hash(&crate::audit::leaf_data(&event));
    proto::AuditEvent {
        revision: Revision::new(event.sequence).to_token(),
        event_id: event.event_id,
        at: Some(convert::timestamp(event.at_micros)),
        subject_id: event.subject_id,
        kind: event.kind.as_str().to_owned(),
        caller: event.caller,
        actor: Some(proto::Actor {
            operator_id: event.operator_id,
            reason: event.actor_reason,
        }),
        detail_json: event.detail_json,
        policy_version: event.policy_version,
        trace_id: event.trace_id,
        prev_hash: event.prev_hash,
        hash: event.hash,
        payload_sha256: event.payload_sha256,
        payload_salt: event.payload_salt,
        payload_erased: event.payload_erased,
        leaf_hash: hex::encode(leaf_hash),
    }
}

#[tonic::async_trait]
impl proto::audit_server::Audit for AuditService {
    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Result<Response<proto::ListEventsResponse>, Status> {
        let body = request.get_ref();
        let subject_id = body
            .subject_id
            .as_deref()
            .map(validate::subject_id)
            .transpose()?;
        let from_sequence = validate::page_token(&body.page_token)?;
        let page_size = validate::page_size(body.page_size);
        // One event more than the page tells whether another page follows.
        let store = &self.state.store;
        let mut events = if body.newest_first {
            // The first page starts at the newest; a token names the oldest event listed.
            let before = if body.page_token.is_empty() {
                u64::MAX
            } else {
                from_sequence
            };
            store
                .events_before(subject_id.as_ref(), before, page_size + 1)
                .await
        } else {
            let query = EventQuery {
                subject_id,
                after_sequence: from_sequence,
                limit: page_size + 1,
            };
            store.events(&query).await
        }
        .map_err(ApiError::from)?;
        let next_page_token = next_page(&mut events, page_size, |last| {
            Revision::new(last.sequence).to_token()
        });
        Ok(Response::new(proto::ListEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_decisions(
        &self,
        request: Request<proto::ListDecisionsRequest>,
    ) -> Result<Response<proto::ListDecisionsResponse>, Status> {
        let (query, page_size) = validate::list_decisions(request.get_ref())?;
        // The log's own database when it has one (`decision_log_database_url`).
        let store = self
            .state
            .decision_log
            .store()
            .ok_or(ApiError::DecisionLogUnavailable)?;
        let mut decisions = store.decisions(&query).await.map_err(ApiError::from)?;
        let next_page_token = next_page(&mut decisions, page_size, |last| {
            validate::decisions_page_token(last.decided_at_micros, &last.decision_id)
        });
        Ok(Response::new(proto::ListDecisionsResponse {
            decisions: decisions.into_iter().map(decision_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn verify_chain(
        &self,
        _request: Request<proto::VerifyChainRequest>,
    ) -> Result<Response<proto::VerifyChainResponse>, Status> {
        let report = self
            .state
            .store
            .verify_chain()
            .await
            .map_err(ApiError::from)?;
        let chain = report.chain;
        let result = if chain.ok { "ok" } else { "broken" };
        crate::metrics::METRICS
            .chain_verifications
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
        if !chain.ok {
            tracing::error!(
                first_bad_event_id = chain.first_bad_event_id.as_deref().unwrap_or_default(),
                events_checked = chain.events_checked,
                "audit chain verification failed"
            );
        }
        Ok(Response::new(proto::VerifyChainResponse {
            ok: chain.ok,
            events_checked: chain.events_checked,
            first_bad_event_id: chain.first_bad_event_id.unwrap_or_default(),
            root_hash: hex::encode(report.root),
        }))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        let checkpoints = self.checkpoints()?;
        if let Some(refusal) = checkpoints.refusal() {
            return Err(ApiError::AuditLogInconsistent(refusal).into());
        }
        let latest = checkpoints
            .latest()
            .ok_or_else(|| ApiError::FailedPrecondition {
                field: "checkpoint".into(),
                message: "none is signed yet; SignCheckpoint signs one now".into(),
            })?;
        Ok(Response::new(checkpoint_to_proto(checkpoints, latest)))
    }

    async fn sign_checkpoint(
        &self,
        _request: Request<proto::SignCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        let checkpoints = self.checkpoints()?;
        let signed = checkpoints.sign_now().await.map_err(checkpoint_error)?;
        Ok(Response::new(checkpoint_to_proto(checkpoints, signed)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProof>, Status> {
        use proto::get_inclusion_proof_request::Event;
        let body = request.get_ref();
        let sequence = match &body.event {
            Some(Event::EventId(event_id)) => self
                .state
                .store
                .event_sequence(event_id)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::NotFound {
                    field: "event_id".into(),
                    message: format!("no audit event {event_id}"),
                })?,
            Some(Event::Revision(token)) => Revision::parse_token(token)
                .map_err(|malformed| ApiError::invalid("revision", malformed))?
                .sequence(),
            None => {
                return Err(
                    ApiError::invalid("event", "is required: an event_id or a revision").into(),
                );
            }
        };
        let field = match &body.event {
            Some(Event::EventId(_)) => "event_id",
            _ => "revision",
        };
        let head = self
            .state
            .store
            .head_revision()
            .await
            .map_err(ApiError::from)?
            .sequence();
        if sequence == 0 || sequence > head {
            return Err(ApiError::NotFound {
                field: field.into(),
                message: format!(
                    "no audit event at revision {}: the log holds {head} events",
                    Revision::new(sequence).to_token()
                ),
            }
            .into());
        }
        let size = self.tree_size(body.tree_size, "tree_size").await?;
        if sequence > size {
            return Err(ApiError::invalid(
                "tree_size",
                format!(
                    "a tree of {size} events does not include the event at revision {} (the \
                     event numbered {sequence})",
                    Revision::new(sequence).to_token()
                ),
            )
            .into());
        }
        let leaf_index = sequence - 1;
        let leaf = self
            .state
            .store
            .tree_nodes(&[merkle::NodeId {
                level: 0,
                index: leaf_index,
            }])
            .await
            .map_err(ApiError::from)?;
        let hashes = self
            .state
            .store
            .inclusion_proof(leaf_index, size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::InclusionProof {
            leaf_index,
            tree_size: size,
            leaf_hash: leaf[0].to_vec(),
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProof>, Status> {
        let body = request.get_ref();
        let new_size = self.tree_size(body.new_size, "new_size").await?;
        if body.old_size == 0 || body.old_size > new_size {
            return Err(ApiError::invalid(
                "old_size",
                format!("must be from 1 to the new size, {new_size}"),
            )
            .into());
        }
        let hashes = self
            .state
            .store
            .consistency_proof(body.old_size, new_size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::ConsistencyProof {
            old_size: body.old_size,
            new_size,
            hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
        }))
    }

    async fn export_subject(
        &self,
        request: Request<proto::ExportSubjectRequest>,
    ) -> Result<Response<proto::SubjectExport>, Status> {
        let subject_id = validate::subject_id(&request.get_ref().subject_id)?;
        let checkpoints = self.checkpoints()?;
        // Signed now, so that it covers every event of the subject committed before.
        let checkpoint = checkpoints.sign_now().await.map_err(checkpoint_error)?;
        let mut events = Vec::new();
        let mut after_sequence = 0;
        loop {
            let page = self
                .state
                .store
                .events(&EventQuery {
                    subject_id: Some(subject_id.clone()),
                    after_sequence,
                    limit: validate::MAX_PAGE_SIZE,
                })
                .await
                .map_err(ApiError::from)?;
            let full = page.len() == validate::MAX_PAGE_SIZE as usize;
            for event in page {
                after_sequence = event.sequence;
                // Committed after the checkpoint was signed: in the next export.
                if event.sequence > checkpoint.size {
                    continue;
                }
                let leaf_index = event.sequence - 1;
                let hashes = self
                    .state
                    .store
                    .inclusion_proof(leaf_index, checkpoint.size)
                    .await
                    .map_err(ApiError::from)?;
                let leaf_hash = merkle::leaf_hash(&crate::audit::leaf_data(&event));
                events.push(proto::ExportedEvent {
                    proof: Some(proto::InclusionProof {
                        leaf_index,
                        tree_size: checkpoint.size,
                        leaf_hash: leaf_hash.to_vec(),
                        hashes: hashes.iter().map(|hash| hash.to_vec()).collect(),
                    }),
                    event: Some(event_to_proto(event)),
                });
            }
            if !full {
                break;
            }
        }
        if events.is_empty() && after_sequence == 0 {
            return Err(ApiError::NotFound {
                field: "subject_id".into(),
                message: format!("no audit event names subject {}", subject_id.as_str()),
            }
            .into());
        }
        Ok(Response::new(proto::SubjectExport {
            subject_id: subject_id.as_str().to_owned(),
            checkpoint: Some(checkpoint_to_proto(checkpoints, checkpoint)),
            events,
        }))
    }

    async fn erase_payloads(
        &self,
        request: Request<proto::ErasePayloadsRequest>,
    ) -> Result<Response<proto::ErasePayloadsResponse>, Status> {
        let body = request.get_ref();
        let subject_id = validate::subject_id(&body.subject_id)?;
        let actor = validate::actor(body.actor.as_ref())?;
        let context = self.state.write_context(CallContext::of(&request), actor);
        let (erased, revision) = self
            .state
            .store
            .erase_payloads(&subject_id, &context)
            .await
            .map_err(ApiError::from)?;
        if let Some(revision) = revision {
            self.state
                .cache
                .committed(Changed::Subject(subject_id), revision);
            tracing::info!(%revision, erased, "audit payloads erased");
        }
        Ok(Response::new(proto::ErasePayloadsResponse {
            erased,
            revision: revision.map(Revision::to_token).unwrap_or_default(),
        }))
    }

    async fn verify_state(
        &self,
        _request: Request<proto::VerifyStateRequest>,
    ) -> Result<Response<proto::VerifyStateResponse>, Status> {
        let report = check_state(&self.state.store)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::VerifyStateResponse {
            ok: report.ok(),
            subjects_checked: report.subjects_checked,
            subjects_unverifiable: report.unverifiable,
            truncated: report.truncated,
            mismatches: report
                .mismatches
                .into_iter()
                .map(|mismatch| proto::StateMismatch {
                    subject_id: mismatch.subject_id,
                    differences: mismatch.differences,
                })
                .collect(),
        }))
    }
}

impl AuditService {
    fn checkpoints(&self) -> Result<&Checkpoints, ApiError> {
        self.state
            .checkpoints
            .as_ref()
            .ok_or_else(|| ApiError::FailedPrecondition {
                field: "checkpoint".into(),
                message: "this server signs no checkpoints: audit_signing_key_file is not set"
                    .into(),
            })
    }

    /// The tree size a proof is asked for: `asked`, or the latest checkpoint's when 0; never
    /// beyond the log's head.
    async fn tree_size(&self, asked: u64, field: &str) -> Result<u64, ApiError> {
        let size = if asked == 0 {
            let checkpoints = self.checkpoints().map_err(|_| {
                ApiError::invalid(field, "is required: this server signs no checkpoints")
            })?;
            checkpoints
                .latest()
                .map(|latest| latest.size)
                .ok_or_else(|| ApiError::FailedPrecondition {
                    field: field.into(),
                    message: "no checkpoint is signed yet; give a size".into(),
                })?
        } else {
            asked
        };
        let head = self.state.store.head_revision().await?.sequence();
        if size > head {
            return Err(ApiError::invalid(
                field,
                format!("{size} is beyond the log, which holds {head} events"),
            ));
        }
        Ok(size)
    }
}

fn checkpoint_to_proto(checkpoints: &Checkpoints, signed: SignedCheckpoint) -> proto::Checkpoint {
    proto::Checkpoint {
        origin: signed.note.lines().next().unwrap_or_default().to_owned(),
        tree_size: signed.size,
        root_hash: signed.root.to_vec(),
        verifier_key: checkpoints.verifier_key(),
        note: signed.note,
    }
}

fn checkpoint_error(error: CheckpointError) -> ApiError {
    match error {
        CheckpointError::Inconsistent(problem) => ApiError::AuditLogInconsistent(problem),
        CheckpointError::Store(error) => error.into(),
        other => ApiError::Internal(crate::error::InternalError::Checkpoint(other)),
    }
}

/// How many differing subjects a state check lists; the rest are counted (and logged).
pub const STATE_MISMATCHES_LISTED: usize = 100;

/// Compares the state tables with the audit events (`Store::verify_state`), as `VerifyState`
/// and the periodic check both do: each differing subject is logged by its hash with what
/// differs, and the outcome goes to the state-check metrics. Never changes a row.
pub async fn check_state(store: &Store) -> Result<StateReport, StoreError> {
    let started = std::time::Instant::now();
    let checked = store
        .verify_state(STATE_MISMATCHES_LISTED, |mismatch| {
            tracing::error!(
                subject_hash = %crate::telemetry::subject_hash(&mismatch.subject_id),
                differences = %mismatch.differences.join("; "),
                "a subject's stored state differs from its audit events"
            );
        })
        .await;
    match &checked {
        Ok(report) => {
            crate::metrics::record_state_check(Some((report.mismatched, report.unverifiable)));
            if report.ok() {
                tracing::info!(
                    subjects_checked = report.subjects_checked,
                    unverifiable = report.unverifiable,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "the state tables match the audit events"
                );
            } else {
                tracing::error!(
                    subjects_checked = report.subjects_checked,
                    mismatched = report.mismatched,
                    unverifiable = report.unverifiable,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "the state tables differ from the audit events"
                );
            }
        }
        Err(error) => {
            crate::metrics::record_state_check(None);
            tracing::warn!(
                error = %crate::telemetry::error_chain(error),
                "cannot compare the state tables with the audit events"
            );
        }
    }
    checked
}
