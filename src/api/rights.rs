//! `assent.v1.Rights`: rights requests filed, moved through their states within their legal
//! deadlines, and listed. The rules (deadlines, states, effects) are `policy::rights`; each
//! write is one store transaction holding the step, its audit event and the subject changes it
//! causes, which are then announced like any write.

use tonic::{Request, Response, Status};

use super::{AppState, CallContext, convert, validate};
use crate::auth::{Scope, Scopes};
use crate::error::ApiError;
use crate::proto;
use crate::store::{
    Changed, RightsEffects, RightsListing, RightsOutcome, RightsQuery, RightsStep,
    StoredRightsRequest, now_micros,
};

#[derive(Clone, Debug)]
pub struct RightsService {
    state: AppState,
}

impl RightsService {
    pub fn new(state: AppState) -> RightsService {
        RightsService { state }
    }

    /// Announces every change a rights write made and answers it.
    fn answered(&self, outcome: RightsOutcome) -> Response<proto::RightsWriteResponse> {
        for revision in &outcome.revisions {
            self.state.cache.committed(
                Changed::Subject(outcome.request.subject_id.clone()),
                *revision,
            );
        }
        let last = outcome
            .revisions
            .last()
            .copied()
            .unwrap_or(outcome.request.revision);
        tracing::info!(
            revision = %last,
            kind = outcome.request.request.kind.as_str(),
            state = outcome.request.request.state.as_str(),
            "rights request written"
        );
        Response::new(proto::RightsWriteResponse {
            request: Some(request_to_proto(&outcome.request, now_micros())),
            revision: last.to_token(),
        })
    }

    /// Moves a stored request one step and answers it.
    async fn step<T>(
        &self,
        request: &Request<T>,
        (request_id, step): (String, RightsStep),
        actor: Option<&proto::Actor>,
    ) -> Result<Response<proto::RightsWriteResponse>, Status> {
        let actor = validate::actor(actor)?;
        let context = self.state.write_context(CallContext::of(request), actor);
        let outcome = self
            .state
            .store
            .step_rights_request(&request_id, &step, &context, effects_of(request))
            .await
            .map_err(ApiError::from)?;
        Ok(self.answered(outcome))
    }

    async fn list(
        &self,
        listing: RightsListing,
        page_size: u32,
        page_token: &str,
        now: i64,
    ) -> Result<proto::ListRightsResponse, ApiError> {
        let limit = validate::page_size(page_size);
        let after = validate::rights_page_token(page_token)?;
        let sort_key = |stored: &StoredRightsRequest| match listing {
            RightsListing::Subject(_) => stored.request.received_at_micros,
            RightsListing::OverdueAt(_) => stored.request.due_at_micros,
        };
        let requests = self
            .state
            .store
            .rights_requests(&RightsQuery {
                listing: listing.clone(),
                after,
                limit,
            })
            .await?;
        let next_page_token = match requests.last() {
            Some(last) if requests.len() == limit as usize => {
                format!("{}.{}", sort_key(last), last.request_id)
            }
            _ => String::new(),
        };
        Ok(proto::ListRightsResponse {
            requests: requests
                .iter()
                .map(|stored| request_to_proto(stored, now))
                .collect(),
            next_page_token,
        })
    }
}

/// The effects a rights write of this call may have: deleting or restricting a subject needs
/// `subjects:write` besides `rights:write`, as `Subjects.DeleteSubject` and `SetRestriction`
/// do. The store decides in the write's transaction, on the request as stored, whether the
/// step has such an effect, and refuses the whole write if so.
fn effects_of<T>(request: &Request<T>) -> RightsEffects {
    if Scopes::of(request).allows(Scope::SubjectsWrite) {
        RightsEffects::All
    } else {
        RightsEffects::NeitherDeleteNorRestrict
    }
}

/// A stored request on the wire; `overdue` is judged at `now_micros`.
pub fn request_to_proto(stored: &StoredRightsRequest, now_micros: i64) -> proto::RightsRequest {
    let request = &stored.request;
    proto::RightsRequest {
        request_id: stored.request_id.clone(),
        subject_id: stored.subject_id.to_string(),
        kind: proto::RightKind::from(request.kind) as i32,
        jurisdiction: stored.jurisdiction.clone(),
        regime: proto::Regime::from(request.regime) as i32,
        state: proto::RequestState::from(request.state) as i32,
        received_at: Some(convert::timestamp(request.received_at_micros)),
        identity_verified: request.identity_verified,
        purposes: request
            .purposes
            .iter()
            .map(|purpose| proto::Purpose::from(*purpose) as i32)
            .collect(),
        due_at: Some(convert::timestamp(request.due_at_micros)),
        extended: request.extended,
        extension_reason: stored.extension_reason.clone(),
        appealed: request.appealed,
        effect_applied: request.effect_applied,
        refusal_reason: stored.refusal_reason.clone(),
        answered_at: request.answered_at_micros.map(convert::timestamp),
        kept_until: request.kept_until().map(convert::timestamp),
        overdue: request.is_overdue(now_micros),
        updated_at: Some(convert::timestamp(stored.updated_at_micros)),
        revision: stored.revision.to_token(),
    }
}

#[tonic::async_trait]
impl proto::rights_server::Rights for RightsService {
    async fn file_request(
        &self,
        request: Request<proto::FileRightsRequest>,
    ) -> Result<Response<proto::RightsWriteResponse>, Status> {
        let body = request.get_ref();
        let new = validate::file_rights(body, now_micros())?;
        let actor = validate::actor(body.actor.as_ref())?;
        let context = self.state.write_context(CallContext::of(&request), actor);
        let outcome = self
            .state
            .store
            .file_rights_request(&new, &context, effects_of(&request))
            .await
            .map_err(ApiError::from)?;
        Ok(self.answered(outcome))
    }

    async fn advance_request(
        &self,
        request: Request<proto::AdvanceRightsRequest>,
    ) -> Result<Response<proto::RightsWriteResponse>, Status> {
        let body = request.get_ref();
        let step = validate::advance_rights(body)?;
        self.step(&request, step, body.actor.as_ref()).await
    }

    async fn extend_request(
        &self,
        request: Request<proto::ExtendRightsRequest>,
    ) -> Result<Response<proto::RightsWriteResponse>, Status> {
        let body = request.get_ref();
        let step = validate::extend_rights(body)?;
        self.step(&request, step, body.actor.as_ref()).await
    }

    async fn get_request(
        &self,
        request: Request<proto::GetRightsRequest>,
    ) -> Result<Response<proto::RightsRequest>, Status> {
        let request_id = validate::request_id(&request.get_ref().request_id)?;
        let stored = self
            .state
            .store
            .rights_request(&request_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound {
                field: "request_id".into(),
                message: format!("rights request {request_id} not found"),
            })?;
        Ok(Response::new(request_to_proto(&stored, now_micros())))
    }

    async fn list_requests(
        &self,
        request: Request<proto::ListRightsRequests>,
    ) -> Result<Response<proto::ListRightsResponse>, Status> {
        let body = request.get_ref();
        let subject_id = validate::subject_id(&body.subject_id)?;
        let response = self
            .list(
                RightsListing::Subject(subject_id),
                body.page_size,
                &body.page_token,
                now_micros(),
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn list_overdue(
        &self,
        request: Request<proto::ListOverdueRights>,
    ) -> Result<Response<proto::ListRightsResponse>, Status> {
        let body = request.get_ref();
        let at = match &body.at {
            Some(timestamp) => validate::timestamp_micros(timestamp, "at")?,
            None => now_micros(),
        };
        let response = self
            .list(
                RightsListing::OverdueAt(at),
                body.page_size,
                &body.page_token,
                at,
            )
            .await?;
        Ok(Response::new(response))
    }
}
