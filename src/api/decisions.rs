//! `assent.v1.Decisions`: the read-only request path.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::validate::{self, CheckQuery, Freshness};
use crate::error::ApiError;
use crate::policy::{self, POLICY_VERSION, Purpose, Question, Rule};
use crate::proto;
use crate::revision::Revision;
use crate::store::StoreError;

/// How many answers of a StreamCheck may wait for the client to read them.
const STREAM_BUFFER: usize = 256;

#[derive(Clone, Debug)]
pub struct DecisionsService {
    state: AppState,
}

impl DecisionsService {
    pub fn new(state: AppState) -> DecisionsService {
        DecisionsService { state }
    }

    /// Answers one validated check.
    async fn decide(&self, query: &CheckQuery) -> Result<proto::CheckResponse, ApiError> {
        let conversation_id = query.conversation_id.as_ref();
        let loaded = self
            .state
            .store
            .decision_state(&query.subject_id, conversation_id)
            .await;
        let state = match loaded {
            Ok(state) => state,
            // The fail-safe answer of POLICY.md, only when the caller asked for no particular
            // freshness: an answer that cannot honour a demanded revision is an error instead.
            Err(StoreError::Unavailable(_)) if query.freshness == Freshness::MinimizeLatency => {
                return Ok(decision_response(
                    query,
                    policy::degraded(query.purpose),
                    None,
                ));
            }
            Err(error) => return Err(ApiError::from_store(error, query.subject_id.as_str())),
        };
        let question = Question {
            purpose: query.purpose,
            source: query.source,
            conversation: state.conversation,
        };
        let rule = policy::evaluate(state.subject.as_ref(), &question);
        Ok(decision_response(query, rule, Some(state.revision)))
    }
}

/// The answer of `rule` to `query`. `revision` is `None` for a degraded answer, made without
/// reading any state.
pub fn decision_response(
    query: &CheckQuery,
    rule: Rule,
    revision: Option<Revision>,
) -> proto::CheckResponse {
    let conversation_id = query
        .conversation_id
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    response(
        query.subject_id.as_str(),
        query.purpose,
        conversation_id,
        rule,
        revision,
    )
}

/// Builds a CheckResponse; shared by Check and by GetSubject's effective decisions.
pub fn response(
    subject_id: &str,
    purpose: Purpose,
    conversation_id: String,
    rule: Rule,
    revision: Option<Revision>,
) -> proto::CheckResponse {
    let outcome = rule.outcome();
    proto::CheckResponse {
        subject_id: subject_id.to_owned(),
        purpose: proto::Purpose::from(purpose) as i32,
        conversation_id,
        decision: proto::Decision::from(outcome.decision) as i32,
        reason: proto::Reason::from(outcome.reason) as i32,
        basis: outcome
            .basis
            .map_or(proto::LawfulBasis::Unspecified, proto::LawfulBasis::from)
            as i32,
        rule: rule.id().to_owned(),
        policy_version: POLICY_VERSION.to_owned(),
        revision: revision.map(Revision::to_token).unwrap_or_default(),
        explanation: outcome.explanation.to_owned(),
        decision_id: uuid::Uuid::now_v7().to_string(),
        degraded: revision.is_none(),
    }
}

#[tonic::async_trait]
impl proto::decisions_server::Decisions for DecisionsService {
    #[tracing::instrument(name = "Decisions/Check", skip_all)]
    async fn check(
        &self,
        request: Request<proto::CheckRequest>,
    ) -> Result<Response<proto::CheckResponse>, Status> {
        let query = validate::check(request.get_ref())?;
        Ok(Response::new(self.decide(&query).await?))
    }

    #[tracing::instrument(name = "Decisions/BatchCheck", skip_all)]
    async fn batch_check(
        &self,
        request: Request<proto::BatchCheckRequest>,
    ) -> Result<Response<proto::BatchCheckResponse>, Status> {
        let queries = validate::batch(request.get_ref())?;
        let mut results = Vec::with_capacity(queries.len());
        for query in &queries {
            results.push(self.decide(query).await?);
        }
        Ok(Response::new(proto::BatchCheckResponse { results }))
    }

    type StreamCheckStream = ReceiverStream<Result<proto::CheckResponse, Status>>;

    #[tracing::instrument(name = "Decisions/StreamCheck", skip_all)]
    async fn stream_check(
        &self,
        request: Request<Streaming<proto::CheckRequest>>,
    ) -> Result<Response<Self::StreamCheckStream>, Status> {
        let mut requests = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            let mut position = 0_usize;
            loop {
                let result = match requests.message().await {
                    Ok(Some(check_request)) => match validate::check(&check_request) {
                        Ok(query) => service.decide(&query).await.map_err(Status::from),
                        Err(error) => Err(error.within(&format!("stream[{position}]")).into()),
                    },
                    Ok(None) => break,
                    Err(status) => Err(status),
                };
                position += 1;
                let failed = result.is_err();
                // Answers go out in request order; the stream ends at the first error or when
                // the client stops listening.
                if sender.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
