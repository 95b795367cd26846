//! `assent.v1.Audit`: reading and verifying the audit log.

use tonic::{Request, Response, Status};

use super::{AppState, convert, validate};
use crate::audit::AuditEvent;
use crate::error::ApiError;
use crate::proto;
use crate::revision::Revision;
use crate::store::{EventQuery, StateReport, Store, StoreError};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1_000;

#[derive(Clone, Debug)]
pub struct AuditService {
    state: AppState,
}

impl AuditService {
    pub fn new(state: AppState) -> AuditService {
        AuditService { state }
    }
}

fn event_to_proto(event: AuditEvent) -> proto::AuditEvent {
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
        ..Default::default()
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
        let after_sequence = validate::page_token(&body.page_token)?;
        // Page sizes above the maximum are lowered to it rather than refused (AIP-158).
        let page_size = match body.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        // One event more than the page tells whether another page follows.
        let query = EventQuery {
            subject_id,
            after_sequence,
            limit: page_size + 1,
        };
        let mut events = self
            .state
            .store
            .events(&query)
            .await
            .map_err(ApiError::from)?;
        let more = events.len() > page_size as usize;
        events.truncate(page_size as usize);
        let next_page_token = match events.last() {
            Some(last) if more => Revision::new(last.sequence).to_token(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
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
        let result = if report.ok { "ok" } else { "broken" };
        crate::metrics::METRICS
            .chain_verifications
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
        if !report.ok {
            tracing::error!(
                first_bad_event_id = report.first_bad_event_id.as_deref().unwrap_or_default(),
                events_checked = report.events_checked,
                "audit chain verification failed"
            );
        }
        Ok(Response::new(proto::VerifyChainResponse {
            ok: report.ok,
            events_checked: report.events_checked,
            first_bad_event_id: report.first_bad_event_id.unwrap_or_default(),
            root_hash: String::new(),
        }))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        Err(Status::unimplemented("not yet"))
    }

    async fn sign_checkpoint(
        &self,
        _request: Request<proto::SignCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        Err(Status::unimplemented("not yet"))
    }

    async fn get_inclusion_proof(
        &self,
        _request: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProof>, Status> {
        Err(Status::unimplemented("not yet"))
    }

    async fn get_consistency_proof(
        &self,
        _request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProof>, Status> {
        Err(Status::unimplemented("not yet"))
    }

    async fn export_subject(
        &self,
        _request: Request<proto::ExportSubjectRequest>,
    ) -> Result<Response<proto::SubjectExport>, Status> {
        Err(Status::unimplemented("not yet"))
    }

    async fn erase_payloads(
        &self,
        _request: Request<proto::ErasePayloadsRequest>,
    ) -> Result<Response<proto::ErasePayloadsResponse>, Status> {
        Err(Status::unimplemented("not yet"))
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
