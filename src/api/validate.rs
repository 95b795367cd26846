//! Parsing requests at the edge: every field is checked once here and turned into the domain
//! types the rest of the service takes. Each error names its field.

use crate::domain::{Actor, ConversationId, InvalidActor, Jurisdiction, SubjectId};
use crate::error::ApiError;
use crate::policy::rights::{RequestState, RightKind};
use crate::policy::{DataCategory, FlagKind, Plan, Purpose, Rating, Source};
use crate::proto;
use crate::proto::consistency::Requirement;
pub use crate::revision::Freshness;
use crate::revision::Revision;
use crate::store::{
    Command, ConsentMeta, HistoryCursor, NewRightsRequest, RightsStep, SubjectFields,
};

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
    /// Answer with the decision alone (the decision log records it in full either way).
    pub bare: bool,
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
    let as_of = request
        .as_of
        .as_ref()
        .map(|as_of| timestamp_micros(as_of, "as_of"))
        .transpose()?;
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
        bare: request.bare,
    })
}

/// A timestamp field in microseconds since the epoch, `None` when unset.
fn optional_timestamp(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, ApiError> {
    timestamp
        .map(|timestamp| timestamp_micros(timestamp, field))
        .transpose()
}

/// A timestamp field in microseconds since the epoch (sub-microsecond nanos are dropped).
pub fn timestamp_micros(timestamp: &prost_types::Timestamp, field: &str) -> Result<i64, ApiError> {
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
    /// `None`: from the latest revision (`from_latest`).
    pub since: Option<Revision>,
    /// Empty: every purpose, and every change.
    pub purposes: Vec<Purpose>,
    pub heartbeat: std::time::Duration,
}

/// Heartbeat intervals a watcher may ask for, in milliseconds.
const HEARTBEAT_MS: std::ops::RangeInclusive<u32> = 100..=60_000;
const DEFAULT_HEARTBEAT_MS: u32 = 5_000;

pub fn watch(request: &proto::WatchRequest) -> Result<WatchQuery, ApiError> {
    let since = match (request.since_revision.as_str(), request.from_latest) {
        ("", true) => None,
        ("", false) => Some(Revision::ZERO),
        (_, true) => {
            return Err(ApiError::invalid(
                "from_latest",
                "cannot be set with since_revision: a watch starts at one or the other",
            ));
        }
        (token, false) => Some(
            Revision::parse_token(token)
                .map_err(|malformed| ApiError::invalid("since_revision", malformed))?,
        ),
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

/// The longest notice version accepted, in characters.
pub const NOTICE_VERSION_MAX_LEN: usize = 128;

/// A SetChoice, received at `now_micros` (an expiry must be later).
pub fn set_choice(request: &proto::SetChoiceRequest, now_micros: i64) -> Result<Command, ApiError> {
    let purpose = convert::required::<proto::Purpose, Purpose>(request.purpose, "purpose")?;
    let choice = convert::choice(request.choice)?;
    if !purpose.accepts_choice() {
        return Err(ApiError::invalid(
            "purpose",
            format_args!("{purpose} takes no choice: no rule of the policy reads one"),
        ));
    }
    let notice_version = &request.notice_version;
    if notice_version.chars().count() > NOTICE_VERSION_MAX_LEN {
        return Err(ApiError::invalid(
            "notice_version",
            format_args!("must be at most {NOTICE_VERSION_MAX_LEN} characters"),
        ));
    }
    if notice_version.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "notice_version",
            "must be printable characters",
        ));
    }
    let method = convert::consent_method(request.method)?;
    let expires_at_micros = match &request.expires_at {
        None => None,
        Some(_) if choice.is_none() => {
            return Err(ApiError::invalid(
                "expires_at",
                "is not allowed with CHOICE_CLEARED: a cleared choice has nothing to expire",
            ));
        }
        Some(expires_at) => {
            let micros = timestamp_micros(expires_at, "expires_at")?;
            if micros <= now_micros {
                return Err(ApiError::invalid(
                    "expires_at",
                    "must be in the future: a choice that has already expired would not count",
                ));
            }
            Some(micros)
        }
    };
    Ok(Command::SetChoice {
        purpose,
        choice,
        consent: ConsentMeta {
            notice_version: notice_version.clone(),
            method,
            expires_at_micros,
        },
    })
}

/// A validated ConsentHistoryRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    pub subject_id: SubjectId,
    pub as_of: Option<i64>,
    pub from: HistoryCursor,
    pub page_size: u32,
}

pub fn consent_history(request: &proto::ConsentHistoryRequest) -> Result<HistoryQuery, ApiError> {
    let subject_id = subject_id(&request.subject_id)?;
    let as_of = request
        .as_of
        .as_ref()
        .map(|as_of| timestamp_micros(as_of, "as_of"))
        .transpose()?;
    let from = match request.page_token.as_str() {
        "" => HistoryCursor::default(),
        token => HistoryCursor::parse_token(token).ok_or_else(|| {
            ApiError::invalid("page_token", "is not a token returned by ConsentHistory")
        })?,
    };
    let page_size = page_size(request.page_size);
    Ok(HistoryQuery {
        subject_id,
        as_of,
        from,
        page_size,
    })
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

/// How a Due page token starts.
const DUE_TOKEN_PREFIX: &str = "d1.";

pub fn retention_due(request: &proto::RetentionDueRequest) -> Result<RetentionDue, ApiError> {
    let category =
        convert::required::<proto::DataCategory, DataCategory>(request.category, "category")?;
    let page_size = page_size(request.page_size);
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

/// Every listing's page size: 0 means 100, and a size above 1,000 is lowered to it rather than
/// refused (AIP-158), whichever listing it is.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 100,
        size => size.min(MAX_PAGE_SIZE),
    }
}

/// The largest page a listing returns.
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// A ListDecisions page token: the instant and id of the last decision of the previous page.
const DECISIONS_TOKEN_PREFIX: &str = "d1.";

/// The page token that continues a ListDecisions listing after this decision.
pub fn decisions_page_token(decided_at_micros: i64, decision_id: &str) -> String {
    format!(
        "{DECISIONS_TOKEN_PREFIX}{decided_at_micros}.{}",
        hex::encode(decision_id)
    )
}

/// Validates a ListDecisions request into a store query (the limit one more than the page, to
/// tell whether another page follows).
pub fn list_decisions(
    request: &proto::ListDecisionsRequest,
) -> Result<(crate::store::DecisionQuery, u32), ApiError> {
    let subject_id = request.subject_id.as_deref().map(subject_id).transpose()?;
    let decision_id = request
        .decision_id
        .as_deref()
        .map(|id| {
            uuid::Uuid::try_parse(id)
                .ok()
                .filter(|id| id.get_version_num() == 7)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "decision_id",
                        "must be the decision_id of an answer (a UUIDv7)",
                    )
                })
        })
        .transpose()?;
    let mut from_micros =
        optional_timestamp("start_time", request.start_time.as_ref())?.unwrap_or(i64::MIN);
    let mut until_micros =
        optional_timestamp("end_time", request.end_time.as_ref())?.unwrap_or(i64::MAX);
    if until_micros < from_micros {
        return Err(ApiError::invalid("end_time", "is before start_time"));
    }
    if let Some(id) = &decision_id {
        // The id's timestamp is its decision's instant, to the millisecond: the store reads that
        // instant's decisions only (with a second's margin either side), never scans for the id.
        let (start, end) = decided_within(id);
        from_micros = from_micros.max(start);
        until_micros = until_micros.min(end).max(from_micros);
    }
    let after = if request.page_token.is_empty() {
        None
    } else {
        Some(decisions_position(&request.page_token).ok_or_else(|| {
            ApiError::invalid("page_token", "is not a token returned by ListDecisions")
        })?)
    };
    let page_size = page_size(request.page_size);
    let query = crate::store::DecisionQuery {
        subject_id,
        decision_id: decision_id.map(|id| id.to_string()),
        from_micros,
        until_micros,
        after,
        limit: page_size + 1,
    };
    Ok((query, page_size))
}

/// The instants (µs since the epoch, from and until) between which the decision a UUIDv7 names
/// was made: the millisecond of its timestamp, and a second either side.
fn decided_within(id: &uuid::Uuid) -> (i64, i64) {
    const MARGIN_MICROS: i64 = 1_000_000;
    let (seconds, nanos) = id
        .get_timestamp()
        .map_or((0, 0), |timestamp| timestamp.to_unix());
    let millisecond = i64::try_from(seconds)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(nanos / 1_000_000) * 1_000);
    (
        millisecond.saturating_sub(MARGIN_MICROS),
        millisecond.saturating_add(1_000 + MARGIN_MICROS),
    )
}

fn decisions_position(token: &str) -> Option<(i64, String)> {
    let (at, id) = token
        .strip_prefix(DECISIONS_TOKEN_PREFIX)?
        .split_once('.')?;
    let id = String::from_utf8(hex::decode(id).ok()?).ok()?;
    Some((at.parse().ok()?, id))
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
        .map(|timestamp| timestamp_micros(timestamp, "received_at"))
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
    fn a_decision_id_narrows_the_listing_to_its_instant() {
        let decided_at: i64 = 1_765_000_123_456_789;
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (decided_at / 1_000_000) as u64,
            (decided_at % 1_000_000 * 1_000) as u32,
        ));
        let listing = |id: String, start: Option<i64>| proto::ListDecisionsRequest {
            decision_id: Some(id),
            start_time: start.map(|micros| prost_types::Timestamp {
                seconds: micros / 1_000_000,
                nanos: (micros % 1_000_000 * 1_000) as i32,
            }),
            ..Default::default()
        };
        // Upper case, as anyone may copy it: the stored form is asked for.
        let (query, _) = list_decisions(&listing(id.to_string().to_uppercase(), None)).unwrap();
        assert_eq!(query.decision_id, Some(id.to_string()));
        assert!(query.from_micros <= decided_at && decided_at < query.until_micros);
        assert!(
            query.until_micros - query.from_micros <= 2_001_000,
            "{query:?}"
        );
        // A start after the instant: an empty range, not an error.
        let (late, _) =
            list_decisions(&listing(id.to_string(), Some(decided_at + 5_000_000))).unwrap();
        assert_eq!(late.from_micros, late.until_micros);
        // Another version of UUID is no decision's id.
        let v4 = "6f0c1c1e-2b7a-4c8e-9d3f-0a1b2c3d4e5f".to_owned();
        let refused = list_decisions(&listing(v4, None)).unwrap_err();
        assert!(
            refused.to_string().starts_with("decision_id: "),
            "{refused}"
        );
    }

    #[test]
    fn a_check_asks_for_a_bare_answer_or_the_full_one() {
        assert!(!check(&request("u-1", Purpose::Memory)).unwrap().bare);
        let bare = proto::CheckRequest {
            bare: true,
            ..request("u-1", Purpose::Memory)
        };
        assert!(check(&bare).unwrap().bare);
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
        assert_eq!(retention_due(&due).unwrap().page_size, 100);
        let oversize = proto::RetentionDueRequest {
            page_size: 1_001,
            ..due.clone()
        };
        assert_eq!(retention_due(&oversize).unwrap().page_size, MAX_PAGE_SIZE);
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
            ..Default::default()
        };
        let error = set_choice(&request, 0).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("purpose: SERVICE_DELIVERY takes no choice")
        );
    }

    fn cookies(choice: proto::Choice) -> proto::SetChoiceRequest {
        proto::SetChoiceRequest {
            subject_id: "u-1".into(),
            purpose: proto::Purpose::AnalyticsCookies as i32,
            choice: choice as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_choice_takes_its_provenance_and_a_future_expiry() {
        let now = 1_800_000_000_000_000;
        let request = proto::SetChoiceRequest {
            notice_version: "cookies-2026-03".into(),
            method: proto::ConsentMethod::CookieBanner as i32,
            expires_at: Some(convert::timestamp(now + 1)),
            ..cookies(proto::Choice::Granted)
        };
        assert_eq!(
            set_choice(&request, now).unwrap(),
            Command::SetChoice {
                purpose: Purpose::AnalyticsCookies,
                choice: Some(crate::policy::Choice::Granted),
                consent: ConsentMeta {
                    notice_version: "cookies-2026-03".into(),
                    method: crate::policy::ConsentMethod::CookieBanner,
                    expires_at_micros: Some(now + 1),
                },
            }
        );
        // Existing callers send neither: accepted, recorded as not said.
        let Command::SetChoice { consent, .. } =
            set_choice(&cookies(proto::Choice::Refused), now).unwrap()
        else {
            panic!("a SetChoice")
        };
        assert_eq!(consent, ConsentMeta::default());
    }

    #[test]
    fn a_bad_provenance_names_its_field() {
        let now = 1_800_000_000_000_000;
        let cases = [
            (
                proto::SetChoiceRequest {
                    expires_at: Some(convert::timestamp(now)),
                    ..cookies(proto::Choice::Granted)
                },
                "expires_at: must be in the future",
            ),
            (
                proto::SetChoiceRequest {
                    expires_at: Some(convert::timestamp(now + 60_000_000)),
                    ..cookies(proto::Choice::Cleared)
                },
                "expires_at: is not allowed with CHOICE_CLEARED",
            ),
            (
                proto::SetChoiceRequest {
                    expires_at: Some(prost_types::Timestamp {
                        seconds: 2_000_000_000,
                        nanos: -1,
                    }),
                    ..cookies(proto::Choice::Granted)
                },
                "expires_at.nanos: ",
            ),
            (
                proto::SetChoiceRequest {
                    method: 17,
                    ..cookies(proto::Choice::Granted)
                },
                "method: unknown ConsentMethod value 17",
            ),
            (
                proto::SetChoiceRequest {
                    notice_version: "x".repeat(NOTICE_VERSION_MAX_LEN + 1),
                    ..cookies(proto::Choice::Granted)
                },
                "notice_version: must be at most 128",
            ),
            (
                proto::SetChoiceRequest {
                    notice_version: "v1\n".into(),
                    ..cookies(proto::Choice::Granted)
                },
                "notice_version: must be printable",
            ),
        ];
        for (request, expected) in cases {
            let error = set_choice(&request, now).unwrap_err();
            assert!(error.to_string().starts_with(expected), "{error}");
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn history_requests_are_checked_and_paged() {
        let request = proto::ConsentHistoryRequest {
            subject_id: "u-1".into(),
            page_size: 5_000,
            page_token: "h1.a.2".into(),
            ..Default::default()
        };
        let query = consent_history(&request).unwrap();
        assert_eq!(query.page_size, MAX_PAGE_SIZE);
        assert_eq!(
            query.from,
            HistoryCursor {
                sequence: 10,
                index: 2
            }
        );
        let bad_token = proto::ConsentHistoryRequest {
            page_token: "r1.a".into(),
            ..request.clone()
        };
        assert!(
            consent_history(&bad_token)
                .unwrap_err()
                .to_string()
                .starts_with("page_token: ")
        );
        let bad_as_of = proto::ConsentHistoryRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 1_000_000_000,
            }),
            ..request
        };
        assert!(
            consent_history(&bad_as_of)
                .unwrap_err()
                .to_string()
                .starts_with("as_of.nanos: ")
        );
    }
}
