//! Fuzzing of what hostile callers control: request bytes (decoding, then validation) and
//! bearer tokens. Property-based (proptest) rather than `cargo fuzz`, which needs a nightly
//! compiler: arbitrary bytes, arbitrary field values, and mutations of valid inputs.
//!
//! In the test suite each target runs a fixed number of cases. `scripts/fuzz SECONDS` runs each
//! for that long instead (ASSENT_FUZZ_SECONDS) and prints the executions.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assent::api::validate;
use assent::auth::{TokenSettings, TokenVerifier};
use assent::error::ApiError;
use assent::proto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;

/// Runs `property` on values of `strategy`: a fixed number of cases, or for
/// ASSENT_FUZZ_SECONDS when set. Prints the executions; panics with the smallest failing input.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let seconds: Option<u64> = std::env::var("ASSENT_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok());
    let cases = 512;
    let deadline = seconds.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let mut executions = 0_u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(failure) = runner.run(&strategy, &property) {
            panic!("{name}: finding after {executions} executions: {failure}");
        }
        executions += u64::from(cases);
        if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
            break;
        }
    }
    eprintln!("fuzz {name}: {executions} executions, no findings");
}

/// A validation failure must be a clear client error that names its field.
fn named_client_error(error: ApiError) -> Result<(), TestCaseError> {
    let status = tonic::Status::from(error);
    prop_assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::Unimplemented
        ),
        "{status:?}"
    );
    let field = status.message().split(':').next().unwrap_or_default();
    prop_assert!(
        !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c)),
        "the message does not start with a field: {:?}",
        status.message()
    );
    Ok(())
}

/// Bytes: arbitrary ones, and valid encodings with some bytes changed.
fn hostile_bytes(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        Just(valid),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    )
        .prop_map(|(mut bytes, changes)| {
            for (index, byte) in changes {
                let position = index.index(bytes.len());
                bytes[position] = byte;
            }
            bytes
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), mutated]
}

fn valid_check() -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: "user-1".into(),
        purpose: proto::Purpose::ModelTraining as i32,
        conversation_id: Some("conversation-1".into()),
        consistency: Some(proto::Consistency {
            requirement: Some(proto::consistency::Requirement::AtLeastAsFresh("r1".into())),
        }),
        require_audit: true,
        ..Default::default()
    }
}

#[test]
fn check_requests_from_hostile_bytes() {
    fuzz(
        "CheckRequest",
        hostile_bytes(valid_check().encode_to_vec()),
        |bytes| {
            let Ok(request) = proto::CheckRequest::decode(bytes.as_slice()) else {
                return Ok(());
            };
            match validate::check(&request) {
                Ok(query) => {
                    prop_assert_eq!(query.subject_id.as_str(), request.subject_id.as_str());
                    Ok(())
                }
                Err(error) => named_client_error(error),
            }
        },
    );
}

#[test]
fn check_requests_with_hostile_fields() {
    let text = prop_oneof![
        ".*",
        "[a-z0-9@._-]{0,140}",
        Just(String::new()),
        Just("\u{0}".repeat(3)),
        Just("a".repeat(129)),
    ];
    let strategy = (
        text.clone(),
        any::<i32>(),
        proptest::option::of(text),
        any::<i32>(),
        any::<bool>(),
    );
    fuzz(
        "CheckRequest fields",
        strategy,
        |(subject_id, purpose, conversation_id, source, require_audit)| {
            let request = proto::CheckRequest {
                subject_id,
                purpose,
                conversation_id,
                source,
                require_audit,
                ..Default::default()
            };
            match validate::check(&request) {
                Ok(_) => Ok(()),
                Err(error) => named_client_error(error),
            }
        },
    );
}

#[test]
fn batch_requests_from_hostile_bytes() {
    let valid = proto::BatchCheckRequest {
        checks: vec![valid_check(); 3],
    };
    fuzz(
        "BatchCheckRequest",
        hostile_bytes(valid.encode_to_vec()),
        |bytes| {
            let Ok(request) = proto::BatchCheckRequest::decode(bytes.as_slice()) else {
                return Ok(());
            };
            match validate::batch(&request) {
                Ok(queries) => {
                    prop_assert_eq!(queries.len(), request.checks.len());
                    Ok(())
                }
                Err(error) => named_client_error(error),
            }
        },
    );
}

#[test]
fn write_requests_from_hostile_bytes() {
    let actor = Some(proto::Actor {
        operator_id: "support:1".into(),
        reason: "ticket 7".into(),
    });
    let upsert = proto::UpsertSubjectRequest {
        subject_id: "user-1".into(),
        plan: Some(proto::Plan::Pro as i32),
        actor: actor.clone(),
        ..Default::default()
    };
    fuzz(
        "UpsertSubjectRequest",
        hostile_bytes(upsert.encode_to_vec()),
        |bytes| {
            let Ok(request) = proto::UpsertSubjectRequest::decode(bytes.as_slice()) else {
                return Ok(());
            };
            if let Err(error) = validate::upsert(&request) {
                named_client_error(error)?;
            }
            if let Err(error) = validate::actor(request.actor.as_ref()) {
                named_client_error(error)?;
            }
            if let Err(error) = validate::subject_id(&request.subject_id) {
                named_client_error(error)?;
            }
            Ok(())
        },
    );
    let choice = proto::SetChoiceRequest {
        subject_id: "user-1".into(),
        purpose: proto::Purpose::Memory as i32,
        choice: proto::Choice::Refused as i32,
        actor,
        notice_version: "privacy-2026-01".into(),
        method: proto::ConsentMethod::SettingsPage as i32,
        expires_at: Some(prost_types::Timestamp {
            seconds: 2_000_000_000,
            nanos: 0,
        }),
    };
    fuzz(
        "SetChoiceRequest",
        hostile_bytes(choice.encode_to_vec()),
        |bytes| {
            let Ok(request) = proto::SetChoiceRequest::decode(bytes.as_slice()) else {
                return Ok(());
            };
            match validate::set_choice(&request, 1_900_000_000_000_000) {
                Ok(_) => Ok(()),
                Err(error) => named_client_error(error),
            }
        },
    );
    let history = proto::ConsentHistoryRequest {
        subject_id: "user-1".into(),
        as_of: Some(prost_types::Timestamp {
            seconds: 1_900_000_000,
            nanos: 5,
        }),
        page_size: 10,
        page_token: "h1.1f.2".into(),
    };
    fuzz(
        "ConsentHistoryRequest",
        hostile_bytes(history.encode_to_vec()),
        |bytes| {
            let Ok(request) = proto::ConsentHistoryRequest::decode(bytes.as_slice()) else {
                return Ok(());
            };
            match validate::consent_history(&request) {
                Ok(_) => Ok(()),
                Err(error) => named_client_error(error),
            }
        },
    );
    fuzz("page tokens", ".*", |token| {
        match validate::page_token(&token) {
            Ok(_) => Ok(()),
            Err(error) => named_client_error(error),
        }
    });
}

const SECRET: &str = "a-development-secret-of-at-least-32-bytes";

fn verifier() -> TokenVerifier {
    TokenVerifier::new(&TokenSettings {
        jwks_file: None,
        hs256_secret: Some(SECRET.into()),
        issuer: "https://auth.test".into(),
        audience: "assent".into(),
        leeway_seconds: 30,
    })
    .unwrap()
}

fn valid_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://auth.test", "aud": "assent", "sub": "gateway",
        "scope": "decisions:check", "exp": now + 3_600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn tokens_from_hostile_text() {
    let verifier = verifier();
    let token = valid_token();
    let original = verifier.verify(&token).unwrap();
    fuzz("token text", ".*", |text| {
        prop_assert!(verifier.verify(&text).is_err());
        Ok(())
    });
    let mutated = (proptest::collection::vec(
        (any::<prop::sample::Index>(), any::<char>()),
        1..4,
    ),)
        .prop_map(move |(changes,)| {
            let mut characters: Vec<char> = token.chars().collect();
            for (index, character) in changes {
                let position = index.index(characters.len());
                characters[position] = character;
            }
            characters.into_iter().collect::<String>()
        });
    fuzz("token mutations", mutated, |text| {
        // A change can only leave the token as it was (base64 has spare bits in a segment's
        // last character); it can never make another valid token.
        if let Ok(identity) = verifier.verify(&text) {
            prop_assert_eq!(identity, original.clone());
        }
        Ok(())
    });
    let segments = (
        "[A-Za-z0-9_-]{0,80}",
        "[A-Za-z0-9_-]{0,200}",
        "[A-Za-z0-9_-]{0,90}",
    );
    fuzz("token segments", segments, |(header, claims, signature)| {
        let token = format!("{header}.{claims}.{signature}");
        prop_assert!(verifier.verify(&token).is_err());
        Ok(())
    });
}
