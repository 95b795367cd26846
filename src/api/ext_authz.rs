//! `envoy.service.auth.v3.Authorization`: Envoy's external authorization API (ext_authz), so
//! that a gateway built on Envoy (Envoy itself, Envoy Gateway, Envoy AI Gateway, kgateway) asks
//! assent with no code of its own. Served on the gRPC port beside `assent.v1`, with the same
//! authentication (scope `check`), limits, traces and decision log as `Decisions.Check`.
//!
//! The question is read from the request Envoy describes: the subject from a header the gateway
//! sets, or from a claim of the JWT its `jwt_authn` filter verified; the purpose (and the header
//! carrying the conversation id, if any) from the route's `context_extensions`, which Envoy
//! never forwards upstream. An ALLOW lets the request through with the answer in headers and
//! dynamic metadata; a DENY is a 403 with a small JSON body; a request assent cannot decide is a
//! 400 naming what is missing. None of them is ever an ALLOW by default (docs/gateways.md).
//!
//! Architecture Invariant: every path out of `check` that is not a decided ALLOW is a non-OK
//! status with a denied response: Envoy lets a request through only on an OK status.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use super::decisions::{DecisionsService, Verdict};
use super::{AppState, CallContext, validate};
use crate::error::ApiError;
use crate::policy::{Decision, LawfulBasis};
use crate::proto;
use crate::revision::Revision;

/// The metadata namespace Envoy's `jwt_authn` filter writes the verified payload under.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// Where the subject of a request is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectSource {
    /// A request header (lower case, as Envoy gives them), such as `x-user-id`: one the gateway
    /// sets from the identity it authenticated, and removes from what clients send.
    Header(String),
    /// A claim of the JWT that the `jwt_authn` filter verified, in the request's metadata under
    /// `payload_key` (the filter's `payload_in_metadata`); `claim` is its path (`sub`, or
    /// `user.id` for a nested one).
    Claim {
        payload_key: String,
        claim: Vec<String>,
    },
}

/// How ext_authz requests are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtAuthzSettings {
    pub subject: SubjectSource,
}

impl ExtAuthzSettings {
    /// The subject from `claim` (`PAYLOAD_KEY.CLAIM[.CLAIM…]`) when it is set, else from the
    /// header named `header`. An error names the setting at fault.
    pub fn new(
        header: &str,
        claim: Option<&str>,
    ) -> Result<ExtAuthzSettings, (&'static str, String)> {
        if let Some(claim) = claim {
            let mut path = claim.split('.').map(str::to_owned);
            let payload_key = path.next().unwrap_or_default();
            let claim: Vec<String> = path.collect();
            if payload_key.is_empty() || claim.is_empty() || claim.iter().any(String::is_empty) {
                return Err((
                    "ext_authz_subject_claim",
                    format!(
                        "expected PAYLOAD_KEY.CLAIM (the jwt_authn filter's payload_in_metadata, \
                         then the claim, such as jwt_payload.sub), got {claim:?}"
                    ),
                ));
            }
            return Ok(ExtAuthzSettings {
                subject: SubjectSource::Claim { payload_key, claim },
            });
        }
        let valid = !header.is_empty()
            && header
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !valid {
            return Err((
                "ext_authz_subject_header",
                format!("expected a header name such as x-user-id, got {header:?}"),
            ));
        }
        Ok(ExtAuthzSettings {
            subject: SubjectSource::Header(header.to_ascii_lowercase()),
        })
    }
}

impl Default for ExtAuthzSettings {
    fn default() -> ExtAuthzSettings {
        ExtAuthzSettings {
            subject: SubjectSource::Header("x-user-id".to_owned()),
        }
    }
}

/// The keys a route's `context_extensions` may hold.
mod extension {
    /// Required: the purpose asked about (`model-training` or `MODEL_TRAINING`).
    pub const PURPOSE: &str = "purpose";
    /// The request header carrying the conversation id, when the route has one.
    pub const CONVERSATION_HEADER: &str = "conversation_header";
    /// Where the data comes from (`conversation` when unset).
    pub const SOURCE: &str = "source";
    /// `true`: the request goes upstream only once the decision is durably recorded.
    pub const REQUIRE_AUDIT: &str = "require_audit";
    pub const ALL: [&str; 4] = [PURPOSE, CONVERSATION_HEADER, SOURCE, REQUIRE_AUDIT];
}

/// The headers an ALLOW adds upstream, each replacing any a client sent.
pub mod header {
    pub const DECISION: &str = "x-assent-decision";
    pub const RULE: &str = "x-assent-rule";
    pub const POLICY_VERSION: &str = "x-assent-policy-version";
    pub const REVISION: &str = "x-assent-revision";
    pub const DECISION_ID: &str = "x-assent-decision-id";
    pub const DEGRADED: &str = "x-assent-degraded";
    /// RFC 3339; removed from the request when the answer has no such instant.
    pub const VALID_UNTIL: &str = "x-assent-valid-until";
}

#[derive(Clone, Debug)]
pub struct ExtAuthzService {
    decisions: DecisionsService,
    settings: ExtAuthzSettings,
}

impl ExtAuthzService {
    pub fn new(state: AppState, settings: ExtAuthzSettings) -> ExtAuthzService {
        ExtAuthzService {
            decisions: DecisionsService::new(state),
            settings,
        }
    }

    /// The Check that `request` asks, or why it cannot be decided.
    fn question(&self, request: &CheckRequest) -> Result<proto::CheckRequest, Undecidable> {
        let attributes = request.attributes.as_ref();
        let extensions = attributes.map(|attributes| &attributes.context_extensions);
        let extension = |key: &str| extensions.and_then(|extensions| extensions.get(key));
        if let Some(extensions) = extensions
            && let Some(unknown) = extensions
                .keys()
                .find(|key| !extension::ALL.contains(&key.as_str()))
        {
            return Err(Undecidable(format!(
                "context_extensions: unknown key {unknown:?} (known: {})",
                extension::ALL.join(", ")
            )));
        }
        let http = attributes
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref());
        let header = |name: &str| -> Option<String> {
            let http = http?;
            if let Some(value) = http.headers.get(name) {
                return Some(value.clone());
            }
            // With `encode_raw_headers`, Envoy sends them here instead, as bytes.
            let values: Vec<String> = http
                .header_map
                .as_ref()?
                .headers
                .iter()
                .filter(|header| header.key.eq_ignore_ascii_case(name))
                .map(|header| {
                    if header.raw_value.is_empty() {
                        header.value.clone()
                    } else {
                        String::from_utf8_lossy(&header.raw_value).into_owned()
                    }
                })
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };

        let subject_id = match &self.settings.subject {
            SubjectSource::Header(name) => {
                header(name).ok_or_else(|| Undecidable(format!("the {name} header is missing")))?
            }
            SubjectSource::Claim { payload_key, claim } => {
                let metadata =
                    attributes.and_then(|attributes| attributes.metadata_context.as_ref());
                let payload = metadata
                    .and_then(|metadata| metadata.filter_metadata.get(JWT_AUTHN_FILTER))
                    .and_then(|filter| filter.fields.get(payload_key));
                claim_text(payload, claim).ok_or_else(|| {
                    Undecidable(format!(
                        "no verified JWT claim {} in the request's {JWT_AUTHN_FILTER} metadata \
                         (key {payload_key})",
                        claim.join(".")
                    ))
                })?
            }
        };
        let purpose_name = extension(extension::PURPOSE).ok_or_else(|| {
            Undecidable(
                "context_extensions: the route names no purpose (set purpose, such as \
                 model-training)"
                    .to_owned(),
            )
        })?;
        let purpose = enum_value(purpose_name, "PURPOSE_", proto::Purpose::from_str_name)
            .filter(|purpose| *purpose != proto::Purpose::Unspecified as i32)
            .ok_or_else(|| {
                Undecidable(format!(
                    "context_extensions: unknown purpose {purpose_name:?}"
                ))
            })?;
        let source = match extension(extension::SOURCE) {
            None => proto::Source::Unspecified as i32,
            Some(name) => {
                enum_value(name, "SOURCE_", proto::Source::from_str_name).ok_or_else(|| {
                    Undecidable(format!("context_extensions: unknown source {name:?}"))
                })?
            }
        };
        let conversation_id = extension(extension::CONVERSATION_HEADER)
            .and_then(|name| header(&name.to_ascii_lowercase()));
        let require_audit = match extension(extension::REQUIRE_AUDIT).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Undecidable(format!(
                    "context_extensions: require_audit must be true or false, got {other:?}"
                )));
            }
        };
        Ok(proto::CheckRequest {
            subject_id,
            purpose,
            conversation_id,
            source,
            require_audit,
            ..proto::CheckRequest::default()
        })
    }

    /// Where a field of the Check came from, for the message of a 400.
    fn origin(&self, field: &str, question: &proto::CheckRequest) -> String {
        match field {
            "subject_id" => match &self.settings.subject {
                SubjectSource::Header(name) => format!("the {name} header"),
                SubjectSource::Claim { claim, .. } => format!("the JWT claim {}", claim.join(".")),
            },
            "conversation_id" if question.conversation_id.is_some() => {
                "the conversation header".to_owned()
            }
            other => other.to_owned(),
        }
    }
}

/// Why a request cannot be decided: answered 400, never let through.
struct Undecidable(String);

/// A claim of a verified JWT payload, as text (a string, or a whole number).
fn claim_text(payload: Option<&Value>, path: &[String]) -> Option<String> {
    let mut value = payload?;
    for key in path {
        let Some(Kind::StructValue(fields)) = &value.kind else {
            return None;
        };
        value = fields.fields.get(key)?;
    }
    match value.kind.as_ref()? {
        Kind::StringValue(text) => Some(text.clone()),
        Kind::NumberValue(number) if number.fract() == 0.0 && number.abs() < 2f64.powi(53) => {
            Some(format!("{number:.0}"))
        }
        _ => None,
    }
}

/// The value of an `assent.v1` enum named `name` as the CLI spells it (`model-training`) or as
/// the proto does, with or without its prefix (`MODEL_TRAINING`, `PURPOSE_MODEL_TRAINING`).
fn enum_value<E: Into<i32>>(
    name: &str,
    prefix: &str,
    from_name: fn(&str) -> Option<E>,
) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with(prefix) {
        upper
    } else {
        format!("{prefix}{upper}")
    };
    from_name(&full).map(Into::into)
}

/// The policy section an explanation cites: the parenthesis that ends it, when it names a
/// document (a section `§`, an article, the terms of service), such as `privacy policy §8, right
/// to deletion` or `terms of service exception (a)`; `None` for a remark such as `(fail closed)`.
pub fn policy_section(explanation: &str) -> Option<&str> {
    let inside = explanation.trim_end().strip_suffix(')')?;
    let mut depth = 1;
    let open = inside.char_indices().rev().find_map(|(at, character)| {
        match character {
            ')' => depth += 1,
            '(' => depth -= 1,
            _ => {}
        }
        (depth == 0).then_some(at)
    })?;
    let cited = &inside[open + 1..];
    ["§", "art.", "terms of service"]
        .iter()
        .any(|document| cited.contains(document))
        .then_some(cited)
}

fn string(text: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.into())),
    }
}

/// What a verdict says, as the headers and metadata put it.
struct Said {
    decision: &'static str,
    revision: String,
    decision_id: String,
    valid_until: Option<String>,
}

impl Said {
    fn of(verdict: &Verdict) -> Said {
        Said {
            decision: verdict.ruling.decision.as_str(),
            revision: verdict.revision.map(Revision::to_token).unwrap_or_default(),
            decision_id: verdict.decision_id.to_string(),
            valid_until: verdict.valid_until.map(|micros| {
                let at = std::time::UNIX_EPOCH
                    + std::time::Duration::from_micros(micros.max(0).unsigned_abs());
                humantime::format_rfc3339_micros(at).to_string()
            }),
        }
    }
}

/// The answer as dynamic metadata, for access logs and later filters.
fn metadata(verdict: &Verdict, said: &Said) -> Struct {
    let ruling = verdict.ruling;
    let mut fields = HashMap::with_capacity(10);
    let mut put = |key: &str, value: Value| {
        fields.insert(key.to_owned(), value);
    };
    put("decision", string(said.decision));
    put("reason", string(ruling.reason.as_str()));
    put("rule", string(&*ruling.rule));
    // Empty on a DENY: no basis is claimed.
    put(
        "lawful_basis",
        string(ruling.basis.map_or("", LawfulBasis::as_str)),
    );
    put(
        "policy_section",
        string(policy_section(&ruling.explanation).unwrap_or_default()),
    );
    put("policy_version", string(verdict.policy.version()));
    put("revision", string(said.revision.clone()));
    put("decision_id", string(said.decision_id.clone()));
    put(
        "degraded",
        Value {
            kind: Some(Kind::BoolValue(verdict.revision.is_none())),
        },
    );
    if let Some(valid_until) = &said.valid_until {
        put("valid_until", string(valid_until.clone()));
    }
    Struct { fields }
}

fn replacing(key: &str, value: impl Into<String>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

fn status(code: Code, message: impl Into<String>) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    })
}

/// A decided ALLOW: through, with the answer in headers upstream and in metadata.
fn allowed(verdict: &Verdict) -> CheckResponse {
    let said = Said::of(verdict);
    let dynamic_metadata = metadata(verdict, &said);
    let mut headers_to_remove = Vec::new();
    // An empty value would drop the header, and let a client's own through: removed instead.
    if said.revision.is_empty() {
        headers_to_remove.push(header::REVISION.to_owned());
    }
    if said.valid_until.is_none() {
        headers_to_remove.push(header::VALID_UNTIL.to_owned());
    }
    let mut headers = Vec::with_capacity(7);
    headers.push(replacing(header::DECISION, said.decision));
    headers.push(replacing(header::RULE, &*verdict.ruling.rule));
    headers.push(replacing(header::POLICY_VERSION, verdict.policy.version()));
    headers.push(replacing(
        header::DEGRADED,
        if verdict.revision.is_none() {
            "true"
        } else {
            "false"
        },
    ));
    if !said.revision.is_empty() {
        headers.push(replacing(header::REVISION, said.revision));
    }
    headers.push(replacing(header::DECISION_ID, said.decision_id));
    if let Some(valid_until) = said.valid_until {
        headers.push(replacing(header::VALID_UNTIL, valid_until));
    }
    CheckResponse {
        status: status(Code::Ok, ""),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..OkHttpResponse::default()
        })),
        dynamic_metadata: Some(dynamic_metadata),
    }
}

/// A denied request: `http_status` with a JSON body, and the gRPC `code` Envoy reads.
fn refused(
    code: Code,
    http_status: HttpStatusCode,
    body: &serde_json::Value,
    dynamic_metadata: Option<Struct>,
) -> CheckResponse {
    let message = body["message"]
        .as_str()
        .or_else(|| body["explanation"].as_str())
        .unwrap_or_default()
        .to_owned();
    CheckResponse {
        status: status(code, message),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status as i32,
            }),
            headers: vec![replacing("content-type", "application/json")],
            body: body.to_string(),
        })),
        dynamic_metadata,
    }
}

/// A decided DENY: 403, with the reason, rule and explanation.
fn denied(verdict: &Verdict) -> CheckResponse {
    let said = Said::of(verdict);
    let ruling = verdict.ruling;
    let body = serde_json::json!({
        "decision": said.decision,
        "reason": ruling.reason.as_str(),
        "rule": &*ruling.rule,
        "explanation": &*ruling.explanation,
        "decision_id": said.decision_id,
    });
    refused(
        Code::PermissionDenied,
        HttpStatusCode::Forbidden,
        &body,
        Some(metadata(verdict, &said)),
    )
}

/// A request that cannot be decided: 400, naming what is missing or wrong.
fn undecidable(message: String) -> CheckResponse {
    let body = serde_json::json!({ "error": "undecidable", "message": message });
    refused(
        Code::InvalidArgument,
        HttpStatusCode::BadRequest,
        &body,
        None,
    )
}

/// A check that failed (a fresh read or the durable record could not be had): 503.
fn failed(error: &ApiError) -> CheckResponse {
    let body = serde_json::json!({ "error": "unavailable", "message": error.to_string() });
    refused(
        error.code(),
        HttpStatusCode::ServiceUnavailable,
        &body,
        None,
    )
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let context = CallContext::of(&request);
        let question = match self.question(request.get_ref()) {
            Ok(question) => question,
            Err(Undecidable(message)) => return Ok(Response::new(undecidable(message))),
        };
        let query = match validate::check(&question) {
            Ok(query) => query,
            Err(ApiError::InvalidArgument { field, message }) => {
                let origin = self.origin(&field, &question);
                return Ok(Response::new(undecidable(format!("{origin}: {message}"))));
            }
            Err(error) => return Ok(Response::new(undecidable(error.to_string()))),
        };
        let verdict = match self.decisions.verdict(&query, &context).await {
            Ok(verdict) => verdict,
            Err(error) => return Ok(Response::new(failed(&error))),
        };
        Ok(Response::new(match verdict.ruling.decision {
            Decision::Allow => allowed(&verdict),
            Decision::Deny => denied(&verdict),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_setting_at_fault() {
        assert_eq!(
            ExtAuthzSettings::new("X-User-Id", None).unwrap().subject,
            SubjectSource::Header("x-user-id".into())
        );
        assert_eq!(
            ExtAuthzSettings::new("x-user-id", Some("jwt_payload.user.id"))
                .unwrap()
                .subject,
            SubjectSource::Claim {
                payload_key: "jwt_payload".into(),
                claim: vec!["user".into(), "id".into()]
            }
        );
        for claim in ["sub", ".sub", "jwt_payload.", "a..b", ""] {
            assert_eq!(
                ExtAuthzSettings::new("x-user-id", Some(claim))
                    .unwrap_err()
                    .0,
                "ext_authz_subject_claim",
                "{claim:?}"
            );
        }
        for header in ["", "x user", "x-user:id"] {
            assert_eq!(
                ExtAuthzSettings::new(header, None).unwrap_err().0,
                "ext_authz_subject_header"
            );
        }
    }

    #[test]
    fn enum_names_are_read_as_the_cli_and_the_proto_spell_them() {
        let purpose = |name| enum_value(name, "PURPOSE_", proto::Purpose::from_str_name);
        let training = Some(proto::Purpose::ModelTraining as i32);
        assert_eq!(purpose("model-training"), training);
        assert_eq!(purpose("MODEL_TRAINING"), training);
        assert_eq!(purpose("PURPOSE_MODEL_TRAINING"), training);
        assert_eq!(purpose("training"), None);
    }

    #[test]
    fn the_cited_section_is_the_last_parenthesis_that_names_one() {
        assert_eq!(
            policy_section(
                "denied: the account was deleted (privacy policy §8, right to deletion)"
            ),
            Some("privacy policy §8, right to deletion")
        );
        assert_eq!(
            policy_section("denied: never seen, so nothing may be processed (fail closed)"),
            None
        );
        assert_eq!(policy_section("no citation"), None);
        assert_eq!(
            policy_section("allowed: under the plan (terms of service exception (a))"),
            Some("terms of service exception (a)")
        );
        assert_eq!(
            policy_section(
                "allowed (feedback grant, terms of service exception (b); privacy \
                 policy §2.1 Feedback)"
            ),
            Some("feedback grant, terms of service exception (b); privacy policy §2.1 Feedback")
        );
        assert_eq!(policy_section("unbalanced a)"), None);
    }

    #[test]
    fn claims_are_read_as_text_from_nested_payloads() {
        let payload = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: HashMap::from([
                    ("sub".to_owned(), string("u-1")),
                    (
                        "user".to_owned(),
                        Value {
                            kind: Some(Kind::StructValue(Struct {
                                fields: HashMap::from([(
                                    "id".to_owned(),
                                    Value {
                                        kind: Some(Kind::NumberValue(42.0)),
                                    },
                                )]),
                            })),
                        },
                    ),
                    (
                        "flag".to_owned(),
                        Value {
                            kind: Some(Kind::BoolValue(true)),
                        },
                    ),
                ]),
            })),
        };
        let read = |path: &[&str]| {
            let path: Vec<String> = path.iter().map(|key| key.to_string()).collect();
            claim_text(Some(&payload), &path)
        };
        assert_eq!(read(&["sub"]).as_deref(), Some("u-1"));
        assert_eq!(read(&["user", "id"]).as_deref(), Some("42"));
        assert_eq!(read(&["flag"]), None);
        assert_eq!(read(&["missing"]), None);
        assert_eq!(read(&["sub", "deeper"]), None);
    }
}
