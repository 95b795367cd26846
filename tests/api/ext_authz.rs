//! Envoy's ext_authz API (`envoy.service.auth.v3.Authorization/Check`) as served by assent,
//! spoken to by a client generated from the protos Envoy itself is built from (the envoy-types
//! crate), with requests shaped as Envoy's ext_authz filter sends them.

use std::collections::HashMap;

use assent::api::ext_authz::{ExtAuthzSettings, JWT_AUTHN_FILTER};
use assent::proto::{self, Choice, Plan, Purpose};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tonic::Code;

use crate::helpers::{TestApp, check_request, token, with_token};

/// What Envoy's ext_authz filter sends for a request with `headers` on a route whose
/// `context_extensions` are `extensions`.
fn envoy_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let owned = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "17".into(),
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    host: "gateway.example".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: owned(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: owned(extensions),
            ..Default::default()
        }),
    }
}

const TRAINING: (&str, &str) = ("purpose", "model-training");

/// Headers, or context extensions, by name.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn client(app: &TestApp) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::new(app.channel())
}

async fn ask(app: &TestApp, request: CheckRequest) -> CheckResponse {
    client(app).check(request).await.unwrap().into_inner()
}

fn code(response: &CheckResponse) -> Code {
    Code::from(response.status.as_ref().map_or(0, |status| status.code))
}

/// The headers an ALLOW adds upstream, by name, each checked to replace a client's own.
fn upstream_headers(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not an OK response: {response:?}");
    };
    let headers = ok
        .headers
        .iter()
        .map(|option| {
            assert_eq!(
                option.append_action,
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            );
            let header = option.header.as_ref().unwrap();
            (header.key.clone(), header.value.clone())
        })
        .collect();
    (headers, ok.headers_to_remove.clone())
}

/// A denied response's HTTP status and JSON body.
fn denial(response: &CheckResponse) -> (i32, serde_json::Value) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not a denied response: {response:?}");
    };
    let content_type = denied
        .headers
        .iter()
        .find_map(|option| {
            let header = option.header.as_ref()?;
            (header.key == "content-type").then(|| header.value.clone())
        })
        .unwrap();
    assert_eq!(content_type, "application/json");
    (
        denied.status.as_ref().unwrap().code,
        serde_json::from_str(&denied.body).unwrap(),
    )
}

fn metadata(response: &CheckResponse) -> HashMap<String, String> {
    response
        .dynamic_metadata
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .map(|(key, value)| {
            let text = match value.kind.as_ref().unwrap() {
                Kind::StringValue(text) => text.clone(),
                Kind::BoolValue(flag) => flag.to_string(),
                other => panic!("{key}: {other:?}"),
            };
            (key.clone(), text)
        })
        .collect()
}

fn text(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.into())),
    }
}

/// An ALLOW goes through with the answer of `Decisions.Check` in headers upstream (replacing any
/// a client sent) and in dynamic metadata; the decision is logged like a Check's.
#[tokio::test]
async fn an_allow_goes_through_with_its_headers_and_metadata() {
    let app = TestApp::spawn().await;
    app.upsert("alice", Plan::Free).await;
    let check = app.check("alice", Purpose::ModelTraining).await;
    assert_eq!(check.rule, "T6");
    let response = ask(
        &app,
        envoy_request(
            &[("x-user-id", "alice"), ("x-assent-decision", "forged")],
            &[TRAINING, ("require_audit", "true")],
        ),
    )
    .await;
    assert_eq!(code(&response), Code::Ok);
    let (headers, removed) = upstream_headers(&response);
    let decision_id = headers["x-assent-decision-id"].clone();
    assert!(uuid::Uuid::parse_str(&decision_id).is_ok());
    assert_eq!(
        headers,
        HashMap::from([
            ("x-assent-decision".to_owned(), "ALLOW".to_owned()),
            ("x-assent-rule".to_owned(), "T6".to_owned()),
            (
                "x-assent-policy-version".to_owned(),
                "2026-01-01".to_owned()
            ),
            ("x-assent-revision".to_owned(), check.revision.clone()),
            ("x-assent-decision-id".to_owned(), decision_id.clone()),
            ("x-assent-degraded".to_owned(), "false".to_owned()),
        ])
    );
    assert_eq!(removed, ["x-assent-valid-until"]);
    let metadata = metadata(&response);
    assert_eq!(
        metadata,
        HashMap::from([
            ("decision".to_owned(), "ALLOW".to_owned()),
            ("reason".to_owned(), "PLAN_DEFAULT".to_owned()),
            ("rule".to_owned(), "T6".to_owned()),
            (
                "lawful_basis".to_owned(),
                proto::LawfulBasis::try_from(check.basis)
                    .unwrap()
                    .as_str_name()
                    .trim_start_matches("LAWFUL_BASIS_")
                    .to_owned()
            ),
            (
                "policy_section".to_owned(),
                metadata["policy_section"].clone()
            ),
            ("policy_version".to_owned(), "2026-01-01".to_owned()),
            ("revision".to_owned(), check.revision.clone()),
            ("decision_id".to_owned(), decision_id.clone()),
            ("degraded".to_owned(), "false".to_owned()),
        ])
    );
    assert!(!metadata["policy_section"].is_empty());
    assert!(
        check
            .explanation
            .ends_with(&format!("({})", metadata["policy_section"])),
        "{metadata:?} {check:?}"
    );
    // Recorded (require_audit: before the answer) as a Check of the caller would be.
    let log = app.decision_log().await;
    let row = log.row(&decision_id).await.unwrap();
    assert_eq!(row.0, "alice");
    log.close().await;
}

/// A DENY is a 403 with a small JSON body and the same metadata; an unknown subject is denied
/// by G1.
#[tokio::test]
async fn a_deny_is_a_403_with_reason_rule_and_explanation() {
    let app = TestApp::spawn().await;
    app.upsert("alice", Plan::Free).await;
    app.set_choice("alice", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    let check = app.check("alice", Purpose::ModelTraining).await;
    let response = ask(&app, envoy_request(&[("x-user-id", "alice")], &[TRAINING])).await;
    assert_eq!(code(&response), Code::PermissionDenied);
    let (status, body) = denial(&response);
    assert_eq!(status, 403);
    let decision_id = body["decision_id"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        serde_json::json!({
            "decision": "DENY",
            "reason": "CHOICE_REFUSED",
            "rule": "T5",
            "explanation": check.explanation,
            "decision_id": decision_id,
        })
    );
    let metadata = metadata(&response);
    assert_eq!(
        (
            metadata["decision"].as_str(),
            metadata["rule"].as_str(),
            metadata["lawful_basis"].as_str()
        ),
        ("DENY", "T5", "")
    );

    let unknown = ask(&app, envoy_request(&[("x-user-id", "nobody")], &[TRAINING])).await;
    assert_eq!(code(&unknown), Code::PermissionDenied);
    let (status, body) = denial(&unknown);
    assert_eq!((status, &body["rule"]), (403, &serde_json::json!("G1")));
    assert_eq!(body["reason"], "UNKNOWN_SUBJECT");
}

/// A request assent cannot decide is denied with 400 and a message naming what is missing or
/// wrong, never let through.
#[tokio::test]
async fn an_undecidable_request_is_a_400_naming_what_is_wrong() {
    let app = TestApp::spawn().await;
    app.upsert("alice", Plan::Free).await;
    let cases: &[(Pairs, Pairs, &str)] = &[
        (&[], &[TRAINING], "the x-user-id header is missing"),
        (
            &[("x-user-id", "alice")],
            &[],
            "context_extensions: the route names no purpose",
        ),
        (
            &[("x-user-id", "alice")],
            &[("purpose", "training")],
            "context_extensions: unknown purpose \"training\"",
        ),
        (
            &[("x-user-id", "alice")],
            &[TRAINING, ("purpse", "memory")],
            "context_extensions: unknown key \"purpse\"",
        ),
        (
            &[("x-user-id", "alice")],
            &[TRAINING, ("source", "email")],
            "context_extensions: unknown source \"email\"",
        ),
        (
            &[("x-user-id", "alice bob")],
            &[TRAINING],
            "the x-user-id header: ",
        ),
        // A client's header and the gateway's, as Envoy joins them: neither is taken.
        (
            &[("x-user-id", "alice,mallory")],
            &[TRAINING],
            "the x-user-id header: ",
        ),
        (
            &[("x-user-id", "alice"), ("x-conversation-id", "c 1")],
            &[TRAINING, ("conversation_header", "x-conversation-id")],
            "the conversation header: ",
        ),
    ];
    for (headers, extensions, message) in cases {
        let response = ask(&app, envoy_request(headers, extensions)).await;
        assert_eq!(code(&response), Code::InvalidArgument, "{message}");
        let (status, body) = denial(&response);
        assert_eq!(status, 400);
        assert_eq!(body["error"], "undecidable");
        let said = body["message"].as_str().unwrap();
        assert!(said.starts_with(message), "{said:?} is not {message:?}…");
        assert_eq!(response.status.as_ref().unwrap().message, said);
        assert!(response.dynamic_metadata.is_none());
    }
}

/// The route names the header of the conversation: its feedback grant turns a training DENY
/// (the subject opted out) into an ALLOW for that conversation only.
#[tokio::test]
async fn a_conversation_header_asks_about_that_conversation() {
    let app = TestApp::spawn().await;
    app.upsert("alice", Plan::Free).await;
    app.set_choice("alice", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    app.rate("alice", "c-1", proto::Rating::ThumbsDown).await;
    let route = [TRAINING, ("conversation_header", "X-Conversation-Id")];
    let on = |conversation| {
        envoy_request(
            &[("x-user-id", "alice"), ("x-conversation-id", conversation)],
            &route,
        )
    };
    let granted = ask(&app, on("c-1")).await;
    assert_eq!(code(&granted), Code::Ok);
    let expected = app
        .decisions()
        .check(proto::CheckRequest {
            conversation_id: Some("c-1".into()),
            ..check_request("alice", Purpose::ModelTraining)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upstream_headers(&granted).0["x-assent-rule"], expected.rule);
    assert_eq!(expected.rule, "T3");
    let other = ask(&app, on("c-2")).await;
    assert_eq!(code(&other), Code::PermissionDenied);
    assert_eq!(denial(&other).1["rule"], "T5");
    let none = ask(&app, envoy_request(&[("x-user-id", "alice")], &route)).await;
    assert_eq!(denial(&none).1["rule"], "T5");
}

/// With `ext_authz_subject_claim`, the subject is the claim of the JWT Envoy's jwt_authn filter
/// verified; a header naming someone else changes nothing, and no verified claim is a 400.
#[tokio::test]
async fn the_subject_can_come_from_a_verified_jwt_claim() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.ext_authz = ExtAuthzSettings::new("x-user-id", Some("jwt_payload.sub")).unwrap();
    })
    .await;
    app.upsert("alice", Plan::Free).await;
    app.upsert("bob", Plan::Free).await;
    app.set_choice("bob", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    let mut request = envoy_request(&[("x-user-id", "alice")], &[TRAINING]);
    let payload = Struct {
        fields: HashMap::from([
            ("sub".to_owned(), text("bob")),
            ("iss".to_owned(), text("https://issuer.example")),
        ]),
    };
    request.attributes.as_mut().unwrap().metadata_context = Some(Metadata {
        filter_metadata: HashMap::from([(
            JWT_AUTHN_FILTER.to_owned(),
            Struct {
                fields: HashMap::from([(
                    "jwt_payload".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(payload)),
                    },
                )]),
            },
        )]),
        ..Default::default()
    });
    let response = ask(&app, request).await;
    assert_eq!(code(&response), Code::PermissionDenied);
    assert_eq!(denial(&response).1["rule"], "T5");

    let unverified = ask(&app, envoy_request(&[("x-user-id", "alice")], &[TRAINING])).await;
    assert_eq!(code(&unverified), Code::InvalidArgument);
    assert!(
        denial(&unverified).1["message"]
            .as_str()
            .unwrap()
            .starts_with("no verified JWT claim sub in the request's envoy.filters.http.jwt_authn")
    );
}

/// With authentication configured, ext_authz needs the `decisions:check` scope like a Check:
/// Envoy's call without a token, or with a token of other scopes, is refused (and Envoy, with
/// `failure_mode_allow: false`, denies the request).
#[tokio::test]
async fn authentication_is_required_when_configured() {
    let app = TestApp::spawn_with_tokens().await;
    let request = || envoy_request(&[("x-user-id", "nobody")], &[TRAINING]);
    let status = client(&app).check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let reader = token("envoy", "subjects:read");
    let status = client(&app)
        .check(with_token(request(), &reader))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let gateway = token("envoy", "decisions:check");
    let response = client(&app)
        .check(with_token(request(), &gateway))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&response), Code::PermissionDenied);
    assert_eq!(denial(&response).1["rule"], "G1");
}

/// With `encode_raw_headers`, Envoy sends the headers as bytes in `header_map` instead of the
/// `headers` map: read there the same way, a header given twice joined (and so refused).
#[tokio::test]
async fn raw_headers_are_read_as_well() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let app = TestApp::spawn().await;
    app.upsert("alice", Plan::Free).await;
    let raw = |pairs: &[(&str, &str)]| {
        let mut request = envoy_request(&[], &[TRAINING]);
        let http = request
            .attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap();
        http.header_map = Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(key, value)| HeaderValue {
                    key: key.to_string(),
                    value: String::new(),
                    raw_value: value.as_bytes().to_vec(),
                })
                .collect(),
        });
        request
    };
    let response = ask(&app, raw(&[("x-user-id", "alice")])).await;
    assert_eq!(code(&response), Code::Ok);
    assert_eq!(upstream_headers(&response).0["x-assent-rule"], "T6");
    let twice = ask(
        &app,
        raw(&[("x-user-id", "alice"), ("x-user-id", "mallory")]),
    )
    .await;
    assert_eq!(code(&twice), Code::InvalidArgument);
    assert!(
        denial(&twice).1["message"]
            .as_str()
            .unwrap()
            .starts_with("the x-user-id header: ")
    );
}
