//! The staff console: HTML pages for the people who answer users (a subject's decisions, why,
//! and history; the rights-request queue; the audit log; the policy versions), served on a
//! listen address of its own, off unless configured.
//!
//! The console holds no access of its own. Every page reads, and every action writes, through
//! the gRPC services of this process, through the same layers as a call on the gRPC port
//! (telemetry, limits, authentication and scopes), with the token of the person viewing it: it
//! can show or do nothing that person's token could not ask the API for. Its own check of the
//! token only decides which buttons to draw.
//!
//! Forms are protected from cross-site requests by a token in a `SameSite=Strict` cookie that
//! each form repeats (double submit): a page of another site can neither read the cookie nor
//! make the browser send it. A subject's id is the only subject data in a URL.

mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, Scope, Scopes};
use crate::proto;

/// Where the console listens, and where it finds its viewer's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    /// The header carrying the viewer's token: `authorization` (`Bearer TOKEN`), or the header an
    /// authenticating proxy forwards it in (oauth2-proxy's `x-forwarded-access-token`).
    pub token_header: HeaderName,
}

/// The gRPC services of this process behind the layers of the gRPC port, as a client calls them.
pub type Grpc = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    CallFailed,
>;

/// A call through [`Grpc`] that failed below gRPC (its layers answer errors as statuses).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallFailed(pub String);

/// How long a page waits for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The cookie holding the token that forms repeat.
const CSRF_COOKIE: &str = "assent_csrf";

/// What the pages share.
#[derive(Clone)]
pub struct Console {
    grpc: Grpc,
    authenticator: Arc<Authenticator>,
    token_header: HeaderName,
}

impl Console {
    pub fn new(grpc: Grpc, authenticator: Arc<Authenticator>, token_header: HeaderName) -> Console {
        Console {
            grpc,
            authenticator,
            token_header,
        }
    }
}

/// Serves the console until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    console: Console,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(console))
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/subjects") }))
        .route("/style.css", get(style))
        .route("/subjects", get(subject_page))
        .route("/rights", get(rights_page))
        .route("/rights/{request_id}", get(rights_request_page))
        .route("/rights/{request_id}/advance", post(advance_rights_request))
        .route("/rights/{request_id}/extend", post(extend_rights_request))
        .route("/audit", get(audit_page))
        .route("/audit/export", get(export_subject))
        .route("/policies", get(policies_page))
        .route("/policies/diff", post(diff_policy))
        .with_state(console)
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("style.css"),
    )
}

/// Who is looking: the token to call with, and what it allows.
#[derive(Clone, Debug)]
pub(crate) struct Viewer {
    token: Option<String>,
    /// The token's subject; `anonymous` when no authentication is configured.
    pub(crate) name: String,
    /// `None`: no authentication is configured (loopback), everything is allowed.
    scopes: Option<Scopes>,
    /// The token forms repeat, and whether it must be set as a cookie with this page.
    csrf: String,
    new_csrf: bool,
}

impl Viewer {
    /// Whether the viewer's token allows `scope` (whether to draw an action's button: the call
    /// itself is authorized by the gRPC layers).
    pub(crate) fn may(&self, scope: Scope) -> bool {
        self.scopes.is_none_or(|scopes| scopes.allows(scope))
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// `message` as a call of the viewer: their token, and the console's deadline.
    fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// The actor of a write the viewer makes: who, and why.
    fn actor(&self, reason: &str) -> Option<proto::Actor> {
        Some(proto::Actor {
            operator_id: self.name.clone(),
            reason: reason.trim().to_owned(),
        })
    }
}

/// A page that could not be made: its status and what to tell the viewer.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Refusal {
        let code = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(code, status.message().to_owned())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let page = pages::refusal(self.status, &self.message);
        (self.status, Html(page.into_string())).into_response()
    }
}

/// A page for `viewer`, with the CSRF cookie when it is new.
fn page(viewer: &Viewer, markup: maud::Markup) -> Response {
    let mut response = Html(markup.into_string()).into_response();
    let headers = response.headers_mut();
    if viewer.new_csrf
        && let Ok(cookie) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            viewer.csrf
        ))
    {
        headers.insert(header::SET_COOKIE, cookie);
    }
    // Pages show personal data: not kept by a shared cache, not framed by another site.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

impl Console {
    /// The viewer of a request: their token verified (when authentication is configured), and
    /// the CSRF token of their browser.
    fn viewer(&self, headers: &HeaderMap) -> Result<Viewer, Refusal> {
        let (csrf, new_csrf) = match cookie(headers, CSRF_COOKIE).filter(|value| is_token(value)) {
            Some(value) => (value.to_owned(), false),
            None => (new_token(), true),
        };
        if !self.authenticator.enabled() {
            return Ok(Viewer {
                token: None,
                name: crate::rpc::ANONYMOUS_CALLER.to_owned(),
                scopes: None,
                csrf,
                new_csrf,
            });
        }
        let header_name = self.token_header.as_str();
        let value = headers
            .get(&self.token_header)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "{header_name}: a bearer token is required (sign in through the proxy)"
                    ),
                )
            })?;
        let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
        let verifier = self.authenticator.tokens.as_ref().ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the console takes bearer tokens, and none are accepted here (configure jwt_*)",
            )
        })?;
        let identity = verifier.verify(token).map_err(|error| {
            Refusal::new(StatusCode::UNAUTHORIZED, format!("{header_name}: {error}"))
        })?;
        Ok(Viewer {
            token: Some(token.to_owned()),
            name: identity.name,
            scopes: Some(identity.scopes),
            csrf,
            new_csrf,
        })
    }

    /// The viewer of a form sent: as [`Console::viewer`], and the form's CSRF token must be the
    /// cookie's, sent by a page of this site.
    fn poster(&self, headers: &HeaderMap, form_csrf: &str) -> Result<Viewer, Refusal> {
        let viewer = self.viewer(headers)?;
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|site| site != "same-origin" && site != "none");
        if viewer.new_csrf || cross_site || !same_token(&viewer.csrf, form_csrf) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "csrf: the form was not sent by a page of this console; reload the page and try again",
            ));
        }
        Ok(viewer)
    }

    fn subjects(&self) -> proto::subjects_client::SubjectsClient<Grpc> {
        proto::subjects_client::SubjectsClient::new(self.grpc.clone())
    }

    fn decisions(&self) -> proto::decisions_client::DecisionsClient<Grpc> {
        proto::decisions_client::DecisionsClient::new(self.grpc.clone())
    }

    fn audit(&self) -> proto::audit_client::AuditClient<Grpc> {
        proto::audit_client::AuditClient::new(self.grpc.clone())
    }

    fn rights(&self) -> proto::rights_client::RightsClient<Grpc> {
        proto::rights_client::RightsClient::new(self.grpc.clone())
    }

    fn policies(&self) -> proto::policies_client::PoliciesClient<Grpc> {
        proto::policies_client::PoliciesClient::new(self.grpc.clone())
    }
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// 32 random bytes, in hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Whether two tokens are equal, in a time that does not depend on where they differ.
fn same_token(expected: &str, given: &str) -> bool {
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

// ---------------------------------------------------------------------------------------------
// Subjects

#[derive(Debug, Default, Deserialize)]
struct SubjectQuery {
    #[serde(default)]
    id: String,
    /// An instant (`YYYY-MM-DD`, or with `THH:MM[:SS]`, UTC): the decisions as of then.
    #[serde(default)]
    as_of: String,
    /// The timeline's page.
    #[serde(default)]
    page: String,
    /// Show the decisions each change of the page flipped (one as-of check per purpose at
    /// each change and just before it: asked for, not on every view).
    #[serde(default)]
    flips: Option<String>,
}

/// Events of the timeline per page.
const TIMELINE_PAGE: u32 = 25;

async fn subject_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<SubjectQuery>,
) -> Result<Response, Refusal> {
    let viewer = console.viewer(&headers)?;
    let subject_id = query.id.trim();
    if subject_id.is_empty() {
        return Ok(page(&viewer, pages::subject_search(&viewer)));
    }
    let as_of = match query.as_of.trim() {
        "" => None,
        text => Some((
            text.to_owned(),
            pages::parse_as_of(text).ok_or_else(|| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "as_of: expected a date and time such as 2026-01-31T09:30:00, got {text:?}"
                    ),
                )
            })?,
        )),
    };
    let subject = console
        .subjects()
        .get_subject(viewer.call(proto::GetSubjectRequest {
            subject_id: subject_id.to_owned(),
        }))
        .await?
        .into_inner();
    let decisions = match &as_of {
        None => subject.effective.clone(),
        Some((_, at_micros)) => {
            let at = crate::api::convert::timestamp(*at_micros);
            let checks = pages::PURPOSES
                .iter()
                .map(|purpose| proto::CheckRequest {
                    subject_id: subject_id.to_owned(),
                    purpose: *purpose as i32,
                    as_of: Some(at),
                    ..Default::default()
                })
                .collect();
            console
                .decisions()
                .batch_check(viewer.call(proto::BatchCheckRequest { checks }))
                .await?
                .into_inner()
                .results
        }
    };
    let timeline = console
        .audit()
        .list_events(viewer.call(proto::ListEventsRequest {
            subject_id: Some(subject_id.to_owned()),
            page_size: TIMELINE_PAGE,
            page_token: query.page.clone(),
            newest_first: true,
        }))
        .await?
        .into_inner();
    let flips = match query.flips {
        Some(_) => Some(flipped(&console, &viewer, subject_id, &timeline.events).await),
        None => None,
    };
    let requests = if viewer.may(Scope::RightsRead) {
        console
            .rights()
            .list_requests(viewer.call(proto::ListRightsRequests {
                subject_id: subject_id.to_owned(),
                page_size: 100,
                page_token: String::new(),
            }))
            .await
            .map(|response| response.into_inner().requests)
            .ok()
    } else {
        None
    };
    let view = pages::SubjectView {
        subject: &subject,
        decisions: &decisions,
        as_of: as_of.map(|(text, _)| text),
        timeline: &timeline,
        flips: flips
            .as_ref()
            .map(|flips| flips.as_deref().map_err(|refusal| refusal.message.as_str())),
        page: &query.page,
        requests: requests.as_deref(),
        now_micros: crate::store::now_micros(),
    };
    Ok(page(&viewer, pages::subject(&viewer, &view)))
}

/// For each event of `events`, the decisions it flipped: each purpose whose decision or rule
/// as of the event differs from the one just before it, as `purpose: BEFORE → AFTER`.
async fn flipped(
    console: &Console,
    viewer: &Viewer,
    subject_id: &str,
    events: &[proto::AuditEvent],
) -> Result<Vec<Vec<String>>, Refusal> {
    let instants: Vec<i64> = events
        .iter()
        .filter_map(|event| event.at.as_ref().map(pages::micros))
        .flat_map(|micros| [micros - 1, micros])
        .collect();
    if instants.len() != 2 * events.len() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "an event of the history has no time",
        ));
    }
    let checks = instants
        .iter()
        .flat_map(|micros| {
            pages::PURPOSES
                .iter()
                .map(move |purpose| proto::CheckRequest {
                    subject_id: subject_id.to_owned(),
                    purpose: *purpose as i32,
                    as_of: Some(crate::api::convert::timestamp(*micros)),
                    ..Default::default()
                })
        })
        .collect();
    let results = console
        .decisions()
        .batch_check(viewer.call(proto::BatchCheckRequest { checks }))
        .await?
        .into_inner()
        .results;
    let per_instant: Vec<&[proto::CheckResponse]> = results.chunks(pages::PURPOSES.len()).collect();
    Ok(per_instant
        .chunks(2)
        .map(|pair| match pair {
            [before, after] => pages::flips(before, after),
            _ => Vec::new(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Rights requests

#[derive(Debug, Default, Deserialize)]
struct RightsFilter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    regime: String,
}

/// The queue reads at most this many open requests.
const QUEUE_LIMIT: u32 = 1000;

async fn rights_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(filter): Query<RightsFilter>,
) -> Result<Response, Refusal> {
    let viewer = console.viewer(&headers)?;
    // Every request still owed an answer, by deadline: those due before a date far ahead.
    let horizon = crate::store::now_micros() + 20 * 366 * 86_400 * 1_000_000;
    let open = console
        .rights()
        .list_overdue(viewer.call(proto::ListOverdueRights {
            at: Some(crate::api::convert::timestamp(horizon)),
            page_size: QUEUE_LIMIT,
            page_token: String::new(),
        }))
        .await?
        .into_inner();
    let keep = |request: &&proto::RightsRequest| {
        pages::matches(&filter.state, request.state().as_str_name())
            && pages::matches(&filter.kind, request.kind().as_str_name())
            && pages::matches(&filter.regime, request.regime().as_str_name())
    };
    let requests: Vec<&proto::RightsRequest> = open.requests.iter().filter(keep).collect();
    let view = pages::QueueView {
        requests: &requests,
        state: &filter.state,
        kind: &filter.kind,
        regime: &filter.regime,
        more: !open.next_page_token.is_empty(),
        now_micros: crate::store::now_micros(),
    };
    Ok(page(&viewer, pages::queue(&viewer, &view)))
}

async fn rights_request_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, Refusal> {
    let viewer = console.viewer(&headers)?;
    let request = console
        .rights()
        .get_request(viewer.call(proto::GetRightsRequest {
            request_id: request_id.clone(),
        }))
        .await?
        .into_inner();
    let steps = rights_steps(&console, &viewer, &request).await?;
    let view = pages::RequestView {
        request: &request,
        steps: &steps,
        now_micros: crate::store::now_micros(),
        done: None,
    };
    Ok(page(&viewer, pages::rights_request(&viewer, &view)))
}

/// The audit events of a rights request: its subject's events that name it.
async fn rights_steps(
    console: &Console,
    viewer: &Viewer,
    request: &proto::RightsRequest,
) -> Result<Vec<proto::AuditEvent>, Refusal> {
    if !viewer.may(Scope::AuditRead) {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    let mut page_token = String::new();
    // A subject's requests are few; its events may be many: read at most ten pages.
    for _ in 0..10 {
        let page = console
            .audit()
            .list_events(viewer.call(proto::ListEventsRequest {
                subject_id: Some(request.subject_id.clone()),
                page_size: 1000,
                page_token,
                newest_first: false,
            }))
            .await?
            .into_inner();
        steps.extend(
            page.events
                .into_iter()
                .filter(|event| pages::names_request(event, &request.request_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(steps)
}

#[derive(Debug, Deserialize)]
struct AdvanceForm {
    csrf: String,
    state: String,
    #[serde(default)]
    identity_verified: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn advance_rights_request(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    Form(form): Form<AdvanceForm>,
) -> Result<Response, Refusal> {
    let viewer = console.poster(&headers, &form.csrf)?;
    let state = proto::RequestState::from_str_name(&form.state)
        .filter(|state| *state != proto::RequestState::Unspecified)
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("state: no such request state {:?}", form.state),
            )
        })?;
    let written = console
        .rights()
        .advance_request(viewer.call(proto::AdvanceRightsRequest {
            request_id: request_id.clone(),
            state: state as i32,
            identity_verified: form.identity_verified.is_some(),
            reason: form.reason.trim().to_owned(),
            actor: viewer.actor(&form.reason),
        }))
        .await?
        .into_inner();
    written_page(&console, &viewer, written, "advanced").await
}

#[derive(Debug, Deserialize)]
struct ExtendForm {
    csrf: String,
    reason: String,
}

async fn extend_rights_request(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    Form(form): Form<ExtendForm>,
) -> Result<Response, Refusal> {
    let viewer = console.poster(&headers, &form.csrf)?;
    let written = console
        .rights()
        .extend_request(viewer.call(proto::ExtendRightsRequest {
            request_id,
            reason: form.reason.trim().to_owned(),
            actor: viewer.actor(&form.reason),
        }))
        .await?
        .into_inner();
    written_page(&console, &viewer, written, "extended").await
}

/// The request's page after a write: its new state, and the audit event the write appended.
async fn written_page(
    console: &Console,
    viewer: &Viewer,
    written: proto::RightsWriteResponse,
    what: &str,
) -> Result<Response, Refusal> {
    let request = written.request.ok_or_else(|| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the write answered no request",
        )
    })?;
    let steps = rights_steps(console, viewer, &request).await?;
    let done = format!("Request {what}: revision {}.", written.revision);
    let view = pages::RequestView {
        request: &request,
        steps: &steps,
        now_micros: crate::store::now_micros(),
        done: Some(&done),
    };
    Ok(page(viewer, pages::rights_request(viewer, &view)))
}

// ---------------------------------------------------------------------------------------------
// Audit

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    page: String,
    /// Verify the whole chain (a read of every event: on demand, not on every view).
    #[serde(default)]
    verify: Option<String>,
}

async fn audit_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Response, Refusal> {
    let viewer = console.viewer(&headers)?;
    let events = console
        .audit()
        .list_events(viewer.call(proto::ListEventsRequest {
            subject_id: None,
            page_size: 50,
            page_token: query.page.clone(),
            newest_first: true,
        }))
        .await?
        .into_inner();
    let chain = match query.verify {
        Some(_) => Some(
            console
                .audit()
                .verify_chain(viewer.call(proto::VerifyChainRequest {}))
                .await
                .map(tonic::Response::into_inner)
                .map_err(Refusal::from),
        ),
        None => None,
    };
    // No checkpoint is signed unless a signing key is configured: not an error of the page.
    let checkpoint = console
        .audit()
        .get_checkpoint(viewer.call(proto::GetCheckpointRequest {}))
        .await
        .map(tonic::Response::into_inner)
        .ok();
    let view = pages::AuditView {
        events: &events,
        page: &query.page,
        chain: chain
            .as_ref()
            .map(|chain| chain.as_ref().map_err(|refusal| refusal.message.as_str())),
        checkpoint: checkpoint.as_ref(),
    };
    Ok(page(&viewer, pages::audit(&viewer, &view)))
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    subject: String,
}

/// A subject's audit events as the API exports them (JSON), to download.
async fn export_subject(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(query): Query<ExportQuery>,
) -> Result<Response, Refusal> {
    let viewer = console.viewer(&headers)?;
    let export = console
        .audit()
        .export_subject(viewer.call(proto::ExportSubjectRequest {
            subject_id: query.subject.trim().to_owned(),
        }))
        .await?
        .into_inner();
    let body = pages::export_json(export)
        .map_err(|problem| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, problem))?;
    let disposition = format!(
        "attachment; filename=\"assent-export-{}.json\"",
        query.subject.trim()
    );
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Policies

async fn policies_page(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let viewer = console.viewer(&headers)?;
    let versions = console
        .policies()
        .list_policies(viewer.call(proto::ListPoliciesRequest {}))
        .await?
        .into_inner();
    Ok(page(&viewer, pages::policies(&viewer, &versions, None)))
}

#[derive(Debug, Deserialize)]
struct DiffForm {
    csrf: String,
    policy_toml: String,
}

/// The answers a policy file would change against the version in force. A read, but its input
/// is a file: a form sent by POST, with the CSRF token like every form.
async fn diff_policy(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<DiffForm>,
) -> Result<Response, Refusal> {
    let viewer = console.poster(&headers, &form.csrf)?;
    let versions = console
        .policies()
        .list_policies(viewer.call(proto::ListPoliciesRequest {}))
        .await?
        .into_inner();
    let diff = console
        .policies()
        .diff_policy(viewer.call(proto::DiffPolicyRequest {
            new_source: form.policy_toml,
            ..Default::default()
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(Refusal::from);
    let diff = diff.as_ref().map_err(|refusal| refusal.message.as_str());
    Ok(page(
        &viewer,
        pages::policies(&viewer, &versions, Some(diff)),
    ))
}
