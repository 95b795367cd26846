//! `assent.v1.Subjects`: the write path, and GetSubject.

use tonic::{Request, Response, Status};

use super::decisions::{response, valid_until};
use super::{AppState, CallContext, convert, validate};
use crate::error::ApiError;
use crate::policy::{Purpose, Question};
use crate::proto;
use crate::store::{Changed, Command, ConsentRecord, HistoryCursor, WriteRequest, now_micros};

#[derive(Clone, Debug)]
pub struct SubjectsService {
    state: AppState,
}

impl SubjectsService {
    pub fn new(state: AppState) -> SubjectsService {
        SubjectsService { state }
    }

    /// Validates the common fields of a write, applies `command` and answers its revision.
    async fn write<T>(
        &self,
        request: &Request<T>,
        subject_id: &str,
        actor: Option<&proto::Actor>,
        command: Result<Command, ApiError>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let subject_id = validate::subject_id(subject_id)?;
        let command = command?;
        let actor = validate::actor(actor)?;
        let write = WriteRequest {
            subject_id,
            command,
            context: self.state.write_context(CallContext::of(request), actor),
        };
        let outcome = self
            .state
            .store
            .write(&write)
            .await
            .map_err(ApiError::from)?;
        if outcome.changed {
            self.state
                .cache
                .committed(Changed::Subject(write.subject_id.clone()), outcome.revision);
            tracing::info!(revision = %outcome.revision, "subject changed");
        }
        Ok(Response::new(proto::WriteResponse {
            revision: outcome.revision.to_token(),
            changed: outcome.changed,
        }))
    }
}

#[tonic::async_trait]
impl proto::subjects_server::Subjects for SubjectsService {
    async fn upsert_subject(
        &self,
        request: Request<proto::UpsertSubjectRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let body = request.get_ref();
        let command = validate::upsert(body);
        self.write(&request, &body.subject_id, body.actor.as_ref(), command)
            .await
    }

    async fn set_choice(
        &self,
        request: Request<proto::SetChoiceRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let body = request.get_ref();
        let command = validate::set_choice(body, now_micros());
        self.write(&request, &body.subject_id, body.actor.as_ref(), command)
            .await
    }

    async fn record_feedback(
        &self,
        request: Request<proto::RecordFeedbackRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let body = request.get_ref();
        let command = validate::record_feedback(body);
        self.write(&request, &body.subject_id, body.actor.as_ref(), command)
            .await
    }

    async fn flag_conversation(
        &self,
        request: Request<proto::FlagConversationRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let body = request.get_ref();
        let command = validate::flag_conversation(body);
        self.write(&request, &body.subject_id, body.actor.as_ref(), command)
            .await
    }

    async fn set_restriction(
        &self,
        request: Request<proto::SetRestrictionRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let body = request.get_ref();
        let command = Ok(Command::SetRestriction {
            restricted: body.restricted,
        });
        self.write(&request, &body.subject_id, body.actor.as_ref(), command)
            .await
    }

    async fn delete_subject(
        &self,
        request: Request<proto::DeleteSubjectRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let body = request.get_ref();
        self.write(
            &request,
            &body.subject_id,
            body.actor.as_ref(),
            Ok(Command::Delete),
        )
        .await
    }

    async fn get_subject(
        &self,
        request: Request<proto::GetSubjectRequest>,
    ) -> Result<Response<proto::Subject>, Status> {
        let subject_id = validate::subject_id(&request.get_ref().subject_id)?;
        let view = self
            .state
            .store
            .subject(&subject_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::SubjectNotFound(subject_id.clone()))?;
        let now = now_micros();
        // The state as it counts now: a choice whose expiry has passed is neither effective
        // nor listed, even before the sweep records its expiry.
        let state = &view.record.state.at(now);
        let policy = self.state.policies.in_force(now);
        let valid_until = valid_until(Some(state), &self.state.policies, now);
        let effective = Purpose::ALL
            .iter()
            .map(|purpose| {
                let ruling = policy.evaluate(Some(state), &Question::about(*purpose));
                response(
                    subject_id.as_str(),
                    *purpose,
                    String::new(),
                    (policy, ruling),
                    Some(view.revision),
                    uuid::Uuid::now_v7(),
                    valid_until,
                )
            })
            .collect();
        let choices = view
            .choices
            .iter()
            .filter(|entry| state.choices.get(entry.purpose).is_some())
            .map(|entry| proto::ChoiceRecord {
                purpose: proto::Purpose::from(entry.purpose) as i32,
                choice: convert::choice_to_proto(entry.choice) as i32,
                updated_at: Some(convert::timestamp(entry.updated_at_micros)),
                notice_version: entry.notice_version.clone(),
                method: proto::ConsentMethod::from(entry.method) as i32,
                caller: entry.caller.clone(),
                expires_at: entry.expires_at_micros.map(convert::timestamp),
            })
            .collect();
        Ok(Response::new(proto::Subject {
            subject_id: subject_id.as_str().to_owned(),
            plan: state
                .plan
                .map_or(proto::Plan::Unspecified, proto::Plan::from) as i32,
            jurisdiction: view.record.jurisdiction.clone().unwrap_or_default(),
            status: proto::Status::from(state.status) as i32,
            gpc: state.gpc,
            zero_data_retention: state.zero_data_retention,
            choices,
            effective,
            revision: view.revision.to_token(),
        }))
    }

    async fn consent_history(
        &self,
        request: Request<proto::ConsentHistoryRequest>,
    ) -> Result<Response<proto::ConsentHistoryResponse>, Status> {
        let query = validate::consent_history(request.get_ref())?;
        let page = self
            .state
            .store
            .consent_history(&query.subject_id, query.as_of, query.from, query.page_size)
            .await
            .map_err(ApiError::from)?;
        if page.records.is_empty()
            && query.from == HistoryCursor::default()
            && self
                .state
                .store
                .subject(&query.subject_id)
                .await
                .map_err(ApiError::from)?
                .is_none()
        {
            return Err(ApiError::SubjectNotFound(query.subject_id.clone()).into());
        }
        let records = page.records.into_iter().map(consent_event).collect();
        Ok(Response::new(proto::ConsentHistoryResponse {
            records,
            next_page_token: page.next.map(HistoryCursor::to_token).unwrap_or_default(),
        }))
    }
}

/// A consent record on the wire.
fn consent_event(record: ConsentRecord) -> proto::ConsentEvent {
    let choice = record
        .choice
        .map_or(proto::Choice::Cleared, convert::choice_to_proto);
    proto::ConsentEvent {
        purpose: proto::Purpose::from(record.purpose) as i32,
        choice: choice as i32,
        notice_version: record.consent.notice_version,
        method: proto::ConsentMethod::from(record.consent.method) as i32,
        caller: record.caller,
        actor: Some(proto::Actor {
            operator_id: record.operator_id,
            reason: record.actor_reason,
        }),
        expires_at: record.consent.expires_at_micros.map(convert::timestamp),
        recorded_at: Some(convert::timestamp(record.recorded_at_micros)),
        revision: record.revision.to_token(),
        why: convert::consent_cause_to_proto(record.cause) as i32,
    }
}
