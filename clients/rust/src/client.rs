//! A typed client: every call over one channel (one server, or the replicas balanced by
//! [`Replicas`]), with the caller's bearer token, and the calls that change nothing retried
//! when no replica answered them ([`Retry`]). A write is never retried here: its answer may
//! have been lost after it was applied.

use std::sync::Arc;

use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::proto;
use crate::proto::audit_client::AuditClient;
use crate::proto::changes_client::ChangesClient;
use crate::proto::decisions_client::DecisionsClient;
use crate::proto::policies_client::PoliciesClient;
use crate::proto::retention_client::RetentionClient;
use crate::proto::rights_client::RightsClient;
use crate::proto::subjects_client::SubjectsClient;
use crate::replicas::{Replicas, Retry};

/// Puts `authorization: Bearer <token>` on every call, when there is a token.
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

/// A token that cannot be sent as a header value (a control character, a non-ASCII one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("the bearer token is not a valid header value")
    }
}

impl std::error::Error for InvalidToken {}

impl BearerToken {
    pub fn new(token: &str) -> Result<BearerToken, InvalidToken> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| InvalidToken)?;
        Ok(BearerToken(Some(value)))
    }

    /// Calls without credentials (a server without authentication).
    pub fn none() -> BearerToken {
        BearerToken(None)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every generated client of a [`Client`] is built on.
pub type Connection = InterceptedService<Channel, BearerToken>;

/// Typed calls to assent. Clones share the channel (and the replicas' health watches).
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    token: BearerToken,
    retry: Retry,
    /// Keeps the replicas' health watches running while a clone is alive.
    _replicas: Option<Arc<Replicas>>,
}

impl Client {
    /// Calls over `channel` (one server, connected by the caller).
    pub fn new(channel: Channel) -> Client {
        Client {
            channel,
            token: BearerToken::none(),
            retry: Retry::default(),
            _replicas: None,
        }
    }

    /// Calls spread over the replicas that serve (see [`Replicas`]).
    pub fn connect(endpoints: Vec<Endpoint>) -> Client {
        Client::over(Replicas::connect(endpoints))
    }

    pub fn over(replicas: Replicas) -> Client {
        let mut client = Client::new(replicas.channel());
        client._replicas = Some(Arc::new(replicas));
        client
    }

    pub fn with_token(mut self, token: BearerToken) -> Client {
        self.token = token;
        self
    }

    /// How the calls that change nothing are retried ([`Retry::default`] unless set).
    pub fn with_retry(mut self, retry: Retry) -> Client {
        self.retry = retry;
        self
    }

    /// The channel with the token on every call: for any generated client.
    pub fn connection(&self) -> Connection {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    pub fn decisions(&self) -> DecisionsClient<Connection> {
        DecisionsClient::new(self.connection())
    }

    pub fn subjects(&self) -> SubjectsClient<Connection> {
        SubjectsClient::new(self.connection())
    }

    pub fn changes(&self) -> ChangesClient<Connection> {
        ChangesClient::new(self.connection())
    }

    pub fn policies(&self) -> PoliciesClient<Connection> {
        PoliciesClient::new(self.connection())
    }

    pub fn audit(&self) -> AuditClient<Connection> {
        AuditClient::new(self.connection())
    }

    pub fn rights(&self) -> RightsClient<Connection> {
        RightsClient::new(self.connection())
    }

    pub fn retention(&self) -> RetentionClient<Connection> {
        RetentionClient::new(self.connection())
    }

    /// `Decisions.Check`, retried when no replica answered.
    pub async fn check(
        &self,
        request: proto::CheckRequest,
    ) -> Result<proto::CheckResponse, Status> {
        let decisions = self.decisions();
        self.retry
            .run(|| {
                let (mut decisions, request) = (decisions.clone(), request.clone());
                async move { decisions.check(request).await }
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `Decisions.BatchCheck`: the answers in the order of `checks`, retried when no replica
    /// answered.
    pub async fn batch_check(
        &self,
        checks: Vec<proto::CheckRequest>,
    ) -> Result<Vec<proto::CheckResponse>, Status> {
        let decisions = self.decisions();
        let request = proto::BatchCheckRequest { checks };
        self.retry
            .run(|| {
                let (mut decisions, request) = (decisions.clone(), request.clone());
                async move { decisions.batch_check(request).await }
            })
            .await
            .map(|response| response.into_inner().results)
    }

    /// `Subjects.GetSubject`, retried when no replica answered.
    pub async fn get_subject(&self, subject_id: &str) -> Result<proto::Subject, Status> {
        let subjects = self.subjects();
        let request = proto::GetSubjectRequest {
            subject_id: subject_id.to_owned(),
        };
        self.retry
            .run(|| {
                let (mut subjects, request) = (subjects.clone(), request.clone());
                async move { subjects.get_subject(request).await }
            })
            .await
            .map(tonic::Response::into_inner)
    }
}
