//! Parsing requests at the edge: every field is checked once here and turned into the domain
//! types the rest of the service takes. Each error names its field.

use crate::domain::{Actor, ConversationId, InvalidActor, Jurisdiction, SubjectId};
use crate::error::ApiError;
use crate::policy::rights::{RequestState, RightKind};
use crate::policy::{FlagKind, Plan, Purpose, Rating, Source};
use crate::proto;
use crate::proto::consistency::Requirement;
pub use crate::revision::Freshness;
use crate::revision::Revision;
use crate::store::{Command, NewRightsRequest, RightsStep, SubjectFields};

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
    /// Decide as of this instant (microseconds since the epoch) instead of now.
    pub as_of: Option<i64>,
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
    let as_of = request.as_of.as_ref().map(timestamp_micros).transpose()?;
    if as_of.is_some() && freshness != Freshness::MinimizeLatency {
        return Err(ApiError::invalid(
            "consistency",
            "cannot be combined with as_of: a decision as of a past instant is always read \
             from the store of record",
        ));
    }
    Ok(CheckQuery {
        subject_id,
        purpose,
        conversation_id,
        source,
        freshness,
        as_of,
        require_audit: request.require_audit,
    })
}

/// An `as_of` timestamp in microseconds since the epoch.
fn timestamp_micros(timestamp: &prost_types::Timestamp) -> Result<i64, ApiError> {
    timestamp_field(timestamp, "as_of")
}

/// A timestamp field in microseconds since the epoch.
pub fn timestamp_field(timestamp: &prost_types::Timestamp, field: &str) -> Result<i64, ApiError> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(ApiError::invalid(
            format!("{field}.nanos"),
            format_args!("must be 0-999999999, got {}", timestamp.nanos),
        ));
    }
    timestamp
        .seconds
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(i64::from(timestamp.nanos / 1_000)))
        .ok_or_else(|| ApiError::invalid(format!("{field}.seconds"), "is out of range"))
}

/// Whether a check can be decided as of `as_of`: not before the first policy version took
/// effect (no policy was in force) and not after `now` (the state then is not known yet).
pub fn as_of_in_range(as_of: i64, first_effective: i64, now: i64) -> Result<(), ApiError> {
    if as_of > now {
        return Err(ApiError::invalid(
            "as_of",
            "is in the future: decisions can be asked as of now or a past instant",
        ));
    }
    if as_of < first_effective {
        return Err(ApiError::invalid(
            "as_of",
            format_args!(
                "is before the first policy version took effect ({} microseconds since the \
                 epoch): no policy was in force",
                first_effective
            ),
        ));
    }
    Ok(())
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

/// A validated WatchRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchQuery {
    pub since: Revision,
    /// Empty: every purpose, and every change.
    pub purposes: Vec<Purpose>,
    pub heartbeat: std::time::Duration,
}

/// Heartbeat intervals a watcher may ask for, in milliseconds.
const HEARTBEAT_MS: std::ops::RangeInclusive<u32> = 100..=60_000;
const DEFAULT_HEARTBEAT_MS: u32 = 5_000;

pub fn watch(request: &proto::WatchRequest) -> Result<WatchQuery, ApiError> {
    let since = match request.since_revision.as_str() {
        "" => Revision::ZERO,
        token => Revision::parse_token(token)
            .map_err(|malformed| ApiError::invalid("since_revision", malformed))?,
    };
    let mut purposes = request
        .purposes
        .iter()
        .enumerate()
        .map(|(index, value)| {
            convert::required::<proto::Purpose, Purpose>(*value, &format!("purposes[{index}]"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    purposes.sort();
    purposes.dedup();
    let heartbeat_ms = match request.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT_MS,
        ms if HEARTBEAT_MS.contains(&ms) => ms,
        ms => {
            return Err(ApiError::invalid(
                "heartbeat_interval_ms",
                format_args!(
                    "must be 0 (the default, {DEFAULT_HEARTBEAT_MS}) or {}-{}, got {ms}",
                    HEARTBEAT_MS.start(),
                    HEARTBEAT_MS.end()
                ),
            ));
        }
    };
    Ok(WatchQuery {
        since,
        purposes,
        heartbeat: std::time::Duration::from_millis(u64::from(heartbeat_ms)),
    })
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

/// How far in the future a `received_at` may lie (clock skew between services).
const RECEIVED_AT_SKEW_MICROS: i64 = 60_000_000;

/// The longest reason accepted for a refusal or an extension.
const MAX_REASON_CHARS: usize = 2_000;

pub fn file_rights(
    request: &proto::FileRightsRequest,
    now_micros: i64,
) -> Result<NewRightsRequest, ApiError> {
    let subject_id = subject_id(&request.subject_id)?;
    let kind = convert::required::<proto::RightKind, RightKind>(request.kind, "kind")?;
    let jurisdiction = if request.jurisdiction.is_empty() {
        None
    } else {
        Some(
            Jurisdiction::parse(&request.jurisdiction)
                .map_err(|error| ApiError::invalid("jurisdiction", error))?,
        )
    };
    let received_at_micros = request
        .received_at
        .as_ref()
        .map(|timestamp| timestamp_field(timestamp, "received_at"))
        .transpose()?;
    if received_at_micros.is_some_and(|received| received > now_micros + RECEIVED_AT_SKEW_MICROS) {
        return Err(ApiError::invalid(
            "received_at",
            "is in the future: a request is filed once received",
        ));
    }
    let mut purposes = Vec::with_capacity(request.purposes.len());
    for (index, value) in request.purposes.iter().enumerate() {
        let field = format!("purposes[{index}]");
        let purpose = convert::required::<proto::Purpose, Purpose>(*value, &field)?;
        if !purpose.accepts_choice() {
            return Err(ApiError::invalid(
                field,
                format_args!("{purpose} takes no choice: no rule of the policy reads one"),
            ));
        }
        if !purposes.contains(&purpose) {
            purposes.push(purpose);
        }
    }
    if !kind.takes_purposes() && !purposes.is_empty() {
        return Err(ApiError::invalid(
            "purposes",
            format_args!("a {kind} request names no purposes"),
        ));
    }
    if kind.requires_purposes() && purposes.is_empty() {
        return Err(ApiError::invalid(
            "purposes",
            format_args!("a {kind} request names the purposes it is about"),
        ));
    }
    Ok(NewRightsRequest {
        subject_id,
        kind,
        jurisdiction,
        received_at_micros,
        identity_verified: request.identity_verified,
        purposes,
    })
}

pub fn advance_rights(
    request: &proto::AdvanceRightsRequest,
) -> Result<(String, RightsStep), ApiError> {
    let request_id = request_id(&request.request_id)?;
    let to = convert::required::<proto::RequestState, RequestState>(request.state, "state")?;
    if to == RequestState::Received {
        return Err(ApiError::invalid(
            "state",
            "a request is RECEIVED only when filed",
        ));
    }
    let reason = reason(&request.reason, "reason")?;
    if to == RequestState::Refused && reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "is required when refusing: the reason told to the requester",
        ));
    }
    Ok((
        request_id,
        RightsStep::Advance {
            to,
            verify: request.identity_verified,
            reason,
        },
    ))
}

pub fn extend_rights(
    request: &proto::ExtendRightsRequest,
) -> Result<(String, RightsStep), ApiError> {
    let request_id = request_id(&request.request_id)?;
    let reason = reason(&request.reason, "reason")?;
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "is required: the reason for the delay, told to the requester",
        ));
    }
    Ok((request_id, RightsStep::Extend { reason }))
}

/// A rights request id: the UUID it was filed under.
pub fn request_id(text: &str) -> Result<String, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid("request_id", "must not be empty"));
    }
    uuid::Uuid::parse_str(text)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::invalid("request_id", "is not a request id (a UUID)"))
}

fn reason(text: &str, field: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            field,
            format_args!("may have at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(text.to_owned())
}

/// The page size of a rights listing: 1–1000, 0 meaning 100.
pub fn rights_page_size(page_size: u32) -> Result<u32, ApiError> {
    match page_size {
        0 => Ok(100),
        1..=1_000 => Ok(page_size),
        _ => Err(ApiError::invalid("page_size", "must be at most 1000")),
    }
}

/// Decodes a rights listing page token: `KEY.REQUEST_ID`, the sort key and id of the last
/// request of the previous page.
pub fn rights_page_token(token: &str) -> Result<Option<(i64, String)>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || ApiError::invalid("page_token", "is not a token returned by this listing");
    let (key, id) = token.split_once('.').ok_or_else(invalid)?;
    let key = key.parse().map_err(|_| invalid())?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((key, id.to_string())))
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
