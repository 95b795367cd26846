//! Parsing requests at the edge: every field is checked once here and turned into the domain
//! types the rest of the service takes. Each error names its field.

use crate::domain::{Actor, ConversationId, InvalidActor, Jurisdiction, SubjectId};
use crate::error::ApiError;
use crate::policy::{DataCategory, FlagKind, Plan, Purpose, Rating, Source};
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
    let as_of = optional_timestamp("as_of", request.as_of.as_ref())?;
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

/// A timestamp field in microseconds since the epoch, `None` when unset.
fn optional_timestamp(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, ApiError> {
    let Some(timestamp) = timestamp else {
        return Ok(None);
    };
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
        .map(Some)
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

/// A validated RetentionQueryRequest. Which of the optional fields the category's row reads
/// depends on the policy version, so the handler checks that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionQuery {
    pub category: DataCategory,
    /// `None` when the request names none.
    pub subject_id: Option<SubjectId>,
    pub event_micros: Option<i64>,
    pub data_deleted_micros: Option<i64>,
    pub as_of: Option<i64>,
}

pub fn retention_query(request: &proto::RetentionQueryRequest) -> Result<RetentionQuery, ApiError> {
    Ok(RetentionQuery {
        category: convert::required::<proto::DataCategory, DataCategory>(
            request.category,
            "category",
        )?,
        subject_id: match request.subject_id.as_str() {
            "" => None,
            text => Some(subject_id(text)?),
        },
        event_micros: optional_timestamp("event_time", request.event_time.as_ref())?,
        data_deleted_micros: optional_timestamp(
            "data_deleted_at",
            request.data_deleted_at.as_ref(),
        )?,
        as_of: optional_timestamp("as_of", request.as_of.as_ref())?,
    })
}

/// A validated RetentionDueRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionDue {
    pub category: DataCategory,
    pub before: Option<i64>,
    pub page_size: u32,
    /// Where the page token says to go on from, `None` for a first page.
    pub next: Option<DuePosition>,
}

/// Where a Due page ended: the instant all its pages answer for, and its last subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuePosition {
    pub before: i64,
    pub after: String,
}

/// Subjects per Due page.
pub const DEFAULT_DUE_PAGE: u32 = 100;
pub const MAX_DUE_PAGE: u32 = 1_000;

/// How a Due page token starts.
const DUE_TOKEN_PREFIX: &str = "d1.";

pub fn retention_due(request: &proto::RetentionDueRequest) -> Result<RetentionDue, ApiError> {
    let category =
        convert::required::<proto::DataCategory, DataCategory>(request.category, "category")?;
    let page_size = match request.page_size {
        0 => DEFAULT_DUE_PAGE,
        size if size <= MAX_DUE_PAGE => size,
        size => {
            return Err(ApiError::invalid(
                "page_size",
                format_args!("must be 0-{MAX_DUE_PAGE}, got {size}"),
            ));
        }
    };
    let next = match request.page_token.as_str() {
        "" => None,
        token => Some(
            due_position(token)
                .ok_or_else(|| ApiError::invalid("page_token", "is not a token returned by Due"))?,
        ),
    };
    Ok(RetentionDue {
        category,
        before: optional_timestamp("before", request.before.as_ref())?,
        page_size,
        next,
    })
}

/// The token of the page after one that ended with `subject_id`, answering for `before`:
/// `d1.<before>.<subject id in hex>`.
pub fn due_page_token(position: &DuePosition) -> String {
    format!(
        "{DUE_TOKEN_PREFIX}{}.{}",
        position.before,
        hex::encode(&position.after)
    )
}

fn due_position(token: &str) -> Option<DuePosition> {
    let (before, subject) = token.strip_prefix(DUE_TOKEN_PREFIX)?.split_once('.')?;
    let text = String::from_utf8(hex::decode(subject).ok()?).ok()?;
    SubjectId::parse(&text).ok()?;
    Some(DuePosition {
        before: before.parse().ok()?,
        after: text,
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
    fn retention_requests_name_their_bad_field() {
        let query = proto::RetentionQueryRequest {
            category: proto::DataCategory::ApiIo as i32,
            subject_id: "org-1".into(),
            ..Default::default()
        };
        assert_eq!(
            retention_query(&query)
                .unwrap()
                .subject_id
                .unwrap()
                .as_str(),
            "org-1"
        );
        let cases = [
            (
                proto::RetentionQueryRequest {
                    category: 0,
                    ..query.clone()
                },
                "category: must be set (not DATA_CATEGORY_UNSPECIFIED)",
            ),
            (
                proto::RetentionQueryRequest {
                    category: 99,
                    ..query.clone()
                },
                "category: unknown DataCategory value 99",
            ),
            (
                proto::RetentionQueryRequest {
                    subject_id: "a b".into(),
                    ..query.clone()
                },
                "subject_id: ",
            ),
            (
                proto::RetentionQueryRequest {
                    event_time: Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                    ..query.clone()
                },
                "event_time.nanos: must be 0-999999999",
            ),
            (
                proto::RetentionQueryRequest {
                    data_deleted_at: Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                    ..query.clone()
                },
                "data_deleted_at.seconds: is out of range",
            ),
        ];
        for (request, expected) in cases {
            let error = retention_query(&request).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error:?} vs {expected:?}");
        }

        let due = proto::RetentionDueRequest {
            category: proto::DataCategory::AccountData as i32,
            ..Default::default()
        };
        assert_eq!(retention_due(&due).unwrap().page_size, DEFAULT_DUE_PAGE);
        let position = DuePosition {
            before: -5,
            after: "user@example.com".into(),
        };
        let next = retention_due(&proto::RetentionDueRequest {
            page_token: due_page_token(&position),
            ..due.clone()
        })
        .unwrap();
        assert_eq!(next.next, Some(position));
        for (request, expected) in [
            (
                proto::RetentionDueRequest {
                    page_size: 1_001,
                    ..due.clone()
                },
                "page_size: must be 0-1000, got 1001",
            ),
            (
                proto::RetentionDueRequest {
                    page_token: "r1.10".into(),
                    ..due.clone()
                },
                "page_token: is not a token returned by Due",
            ),
            (
                proto::RetentionDueRequest {
                    page_token: due_page_token(&DuePosition {
                        before: 0,
                        after: "a b".into(),
                    }),
                    ..due.clone()
                },
                "page_token: is not a token returned by Due",
            ),
        ] {
            let error = retention_due(&request).unwrap_err().to_string();
            assert_eq!(error, expected);
        }
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
