//! Parsing requests at the edge: every field is checked once here and turned into the domain
//! types the rest of the service takes. Each error names its field.

use crate::domain::{Actor, ConversationId, InvalidActor, Jurisdiction, SubjectId};
use crate::error::ApiError;
use crate::policy::{FlagKind, Plan, Purpose, Rating, Source};
use crate::proto;
use crate::proto::consistency::Requirement;
pub use crate::revision::Freshness;
use crate::revision::Revision;
use crate::store::{Command, SubjectFields};

use super::convert;

/// The most checks one BatchCheck may carry.
pub const MAX_BATCH: usize = 1_000;

/// A validated CheckRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckQuery {
    pub subject_id: SubjectId,
    pub purpose: Purpose,
    pub conversation_id: Option<ConversationId>,
    pub source: Source,
    pub freshness: Freshness,
    pub require_audit: bool,
}

pub fn subject_id(text: &str) -> Result<SubjectId, ApiError> {
    SubjectId::parse(text).map_err(|invalid| ApiError::invalid("subject_id", invalid))
}

pub fn conversation_id(text: &str) -> Result<ConversationId, ApiError> {
    ConversationId::parse(text).map_err(|invalid| ApiError::invalid("conversation_id", invalid))
}

pub fn check(request: &proto::CheckRequest) -> Result<CheckQuery, ApiError> {
    let subject_id = subject_id(&request.subject_id)?;
    let purpose = convert::required::<proto::Purpose, Purpose>(request.purpose, "purpose")?;
    let conversation_id = request
        .conversation_id
        .as_deref()
        .map(conversation_id)
        .transpose()?;
    let source = convert::source(request.source)?;
    let freshness = freshness(request.consistency.as_ref())?;
    if request.as_of.is_some() {
        return Err(ApiError::Unimplemented {
            field: "as_of".into(),
            message: "decisions as of a past instant are not supported by this server yet".into(),
        });
    }
    Ok(CheckQuery {
        subject_id,
        purpose,
        conversation_id,
        source,
        freshness,
        require_audit: request.require_audit,
    })
}

/// Validates every check of a batch; the first invalid one fails the batch, naming its index.
pub fn batch(request: &proto::BatchCheckRequest) -> Result<Vec<CheckQuery>, ApiError> {
    if request.checks.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "checks",
            format_args!(
                "at most {MAX_BATCH} checks per batch, got {}",
                request.checks.len()
            ),
        ));
    }
    request
        .checks
        .iter()
        .enumerate()
        .map(|(index, check_request)| {
            check(check_request).map_err(|error| error.within(&format!("checks[{index}]")))
        })
        .collect()
}

fn freshness(consistency: Option<&proto::Consistency>) -> Result<Freshness, ApiError> {
    let requirement = consistency.and_then(|consistency| consistency.requirement.as_ref());
    Ok(match requirement {
        None
        | Some(Requirement::MinimizeLatency(_))
        | Some(Requirement::FullyConsistent(false)) => Freshness::MinimizeLatency,
        Some(Requirement::FullyConsistent(true)) => Freshness::FullyConsistent,
        Some(Requirement::AtLeastAsFresh(token)) => {
            Freshness::AtLeastAsFresh(Revision::parse_token(token).map_err(|malformed| {
                ApiError::invalid("consistency.at_least_as_fresh", malformed)
            })?)
        }
    })
}

pub fn actor(actor: Option<&proto::Actor>) -> Result<Actor, ApiError> {
    let Some(actor) = actor else {
        return Err(ApiError::invalid(
            "actor",
            "is required: who makes the write, on whose behalf",
        ));
    };
    Actor::parse(&actor.operator_id, &actor.reason).map_err(|invalid| match invalid {
        InvalidActor::OperatorId(value) => ApiError::invalid("actor.operator_id", value),
        InvalidActor::Reason(value) => ApiError::invalid("actor.reason", value),
    })
}

pub fn upsert(request: &proto::UpsertSubjectRequest) -> Result<Command, ApiError> {
    let plan = request
        .plan
        .map(|plan| convert::required::<proto::Plan, Plan>(plan, "plan"))
        .transpose()?;
    let jurisdiction = request
        .jurisdiction
        .as_deref()
        .map(|text| {
            Jurisdiction::parse(text).map_err(|invalid| ApiError::invalid("jurisdiction", invalid))
        })
        .transpose()?;
    Ok(Command::Upsert(SubjectFields {
        plan,
        jurisdiction,
        gpc: request.gpc,
        zero_data_retention: request.zero_data_retention,
    }))
}

pub fn set_choice(request: &proto::SetChoiceRequest) -> Result<Command, ApiError> {
    let purpose = convert::required::<proto::Purpose, Purpose>(request.purpose, "purpose")?;
    let choice = convert::choice(request.choice)?;
    if !purpose.accepts_choice() {
        return Err(ApiError::invalid(
            "purpose",
            format_args!("{purpose} takes no choice: no rule of the policy reads one"),
        ));
    }
    Ok(Command::SetChoice { purpose, choice })
}

pub fn record_feedback(request: &proto::RecordFeedbackRequest) -> Result<Command, ApiError> {
    Ok(Command::RecordFeedback {
        conversation_id: conversation_id(&request.conversation_id)?,
        rating: convert::required::<proto::Rating, Rating>(request.rating, "rating")?,
    })
}

pub fn flag_conversation(request: &proto::FlagConversationRequest) -> Result<Command, ApiError> {
    Ok(Command::FlagConversation {
        conversation_id: conversation_id(&request.conversation_id)?,
        kind: convert::required::<proto::FlagKind, FlagKind>(request.kind, "kind")?,
    })
}

/// Decodes a ListEvents page token: the sequence of the last event of the previous page.
pub fn page_token(token: &str) -> Result<u64, ApiError> {
    if token.is_empty() {
        return Ok(0);
    }
    Revision::parse_token(token)
        .map(Revision::sequence)
        .map_err(|_| ApiError::invalid("page_token", "is not a token returned by ListEvents"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subject_id: &str, purpose: Purpose) -> proto::CheckRequest {
        proto::CheckRequest {
            subject_id: subject_id.into(),
            purpose: proto::Purpose::from(purpose) as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_check_names_its_bad_field() {
        let empty = check(&request("", Purpose::Memory)).unwrap_err();
        assert_eq!(empty.to_string(), "subject_id: must not be empty");
        let mut bad_conversation = request("u-1", Purpose::Memory);
        bad_conversation.conversation_id = Some("a b".into());
        assert!(
            check(&bad_conversation)
                .unwrap_err()
                .to_string()
                .starts_with("conversation_id: ")
        );
        let mut bad_token = request("u-1", Purpose::Memory);
        bad_token.consistency = Some(proto::Consistency {
            requirement: Some(Requirement::AtLeastAsFresh("yesterday".into())),
        });
        assert!(
            check(&bad_token)
                .unwrap_err()
                .to_string()
                .starts_with("consistency.at_least_as_fresh: ")
        );
    }

    #[test]
    fn a_batch_error_names_the_index() {
        let batch_request = proto::BatchCheckRequest {
            checks: vec![
                request("u-1", Purpose::Memory),
                request("u-2", Purpose::Memory),
                request("bad id", Purpose::Memory),
            ],
        };
        let error = batch(&batch_request).unwrap_err();
        assert!(
            error.to_string().starts_with("checks[2].subject_id: "),
            "{error}"
        );
        let too_many = proto::BatchCheckRequest {
            checks: vec![request("u-1", Purpose::Memory); MAX_BATCH + 1],
        };
        assert!(
            batch(&too_many)
                .unwrap_err()
                .to_string()
                .starts_with("checks: ")
        );
    }

    #[test]
    fn choices_on_purposes_without_choice_rules_are_refused() {
        let request = proto::SetChoiceRequest {
            subject_id: "u-1".into(),
            purpose: proto::Purpose::ServiceDelivery as i32,
            choice: proto::Choice::Refused as i32,
            actor: None,
        };
        let error = set_choice(&request).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("purpose: SERVICE_DELIVERY takes no choice")
        );
    }
}
