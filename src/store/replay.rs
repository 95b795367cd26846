//! A subject's state rebuilt from its audit events, without I/O.
//!
//! Every change is recorded with what it changed before and after (see [`super::change`]), so
//! replaying a subject's events in revision order gives its state at any revision: what a check
//! `as_of` a past instant decides on, and what `Changes.Watch` compares to tell which decisions
//! a change flipped. Events of kinds that do not change a subject (a policy version applied) are
//! skipped.

use std::collections::HashMap;

use serde_json::Value;

use super::change::{ConsentMeta, SubjectRecord};
use crate::audit::{AuditEvent, EventKind};
use crate::policy::{Choice, ConsentMethod, ConversationFacts, Plan, Purpose, Rating, Status};

/// A subject's state as its events so far make it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// `None` until the subject's creation.
    pub subject: Option<SubjectRecord>,
    /// The facts of each conversation, by conversation id.
    pub conversations: HashMap<String, ConversationFacts>,
}

/// An event whose detail is not what its kind records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit event {sequence} ({kind}): {problem}")]
pub struct ReplayError {
    pub sequence: u64,
    pub kind: EventKind,
    pub problem: String,
}

impl ReplayError {
    pub fn of(event: &AuditEvent, problem: String) -> ReplayError {
        ReplayError {
            sequence: event.sequence,
            kind: event.kind,
            problem,
        }
    }
}

impl Replayed {
    /// Applies one event of this subject (events must come in revision order).
    pub fn apply(&mut self, event: &AuditEvent) -> Result<(), ReplayError> {
        if event.payload_erased {
            return Err(ReplayError::of(event, "its payload was erased".to_owned()));
        }
        let detail: Value = serde_json::from_str(&event.detail_json)
            .map_err(|error| ReplayError::of(event, format!("detail is not JSON: {error}")))?;
        self.apply_parsed(event, &detail)
    }

    /// [`Replayed::apply`] with the event's detail already parsed (`detail` is
    /// `event.detail_json` as JSON).
    pub fn apply_parsed(&mut self, event: &AuditEvent, detail: &Value) -> Result<(), ReplayError> {
        let fail = |problem: String| ReplayError::of(event, problem);
        let after = &detail["after"];
        match event.kind {
            EventKind::SubjectUpserted => {
                self.subject = Some(record(after).map_err(fail)?);
            }
            EventKind::SubjectDeleted => {
                self.subject = Some(record(after).map_err(fail)?);
                self.conversations.clear();
            }
            EventKind::ChoiceSet => {
                let purpose = name(&detail["purpose"], Purpose::from_name)
                    .map_err(|problem| fail(format!("purpose: {problem}")))?;
                let choice = optional_name(after, Choice::from_name)
                    .map_err(|problem| fail(format!("after: {problem}")))?;
                let consent = consent_meta(detail).map_err(fail)?;
                self.existing(event)?.set_choice(purpose, choice, &consent);
            }
            EventKind::ConsentExpired => {
                let purpose = name(&detail["purpose"], Purpose::from_name)
                    .map_err(|problem| fail(format!("purpose: {problem}")))?;
                self.existing(event)?
                    .set_choice(purpose, None, &ConsentMeta::default());
            }
            EventKind::RestrictionSet => {
                let status = name(&after["status"], Status::from_name)
                    .map_err(|problem| fail(format!("after.status: {problem}")))?;
                self.existing(event)?.state.status = status;
            }
            EventKind::FeedbackRecorded | EventKind::ConversationFlagged => {
                let conversation_id = detail["conversation_id"]
                    .as_str()
                    .ok_or_else(|| fail("conversation_id is missing".to_owned()))?;
                let facts = conversation(after).map_err(fail)?;
                self.existing(event)?;
                self.conversations.insert(conversation_id.to_owned(), facts);
            }
            EventKind::PolicyApplied
            | EventKind::RightsRequestFiled
            | EventKind::RightsRequestAdvanced
            | EventKind::RightsRequestExtended
            | EventKind::PayloadErased => {}
        }
        Ok(())
    }

    /// The facts of one conversation (`None` when none are recorded).
    pub fn conversation(&self, conversation_id: &str) -> Option<ConversationFacts> {
        self.conversations.get(conversation_id).copied()
    }

    fn existing(&mut self, event: &AuditEvent) -> Result<&mut SubjectRecord, ReplayError> {
        self.subject.as_mut().ok_or_else(|| {
            ReplayError::of(
                event,
                "the subject has no creation event before it".to_owned(),
            )
        })
    }
}

/// Replays the events of one subject, in revision order.
pub fn replay<'a>(
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<Replayed, ReplayError> {
    let mut replayed = Replayed::default();
    for event in events {
        replayed.apply(event)?;
    }
    Ok(replayed)
}

/// A whole subject row as `change::describe` writes it.
fn record(value: &Value) -> Result<SubjectRecord, String> {
    let mut record = SubjectRecord::default();
    record.state.plan = optional_name(&value["plan"], Plan::from_name)
        .map_err(|problem| format!("plan: {problem}"))?;
    record.state.status = name(&value["status"], Status::from_name)
        .map_err(|problem| format!("status: {problem}"))?;
    record.state.gpc = flag(&value["gpc"]).map_err(|problem| format!("gpc: {problem}"))?;
    record.state.zero_data_retention = flag(&value["zero_data_retention"])
        .map_err(|problem| format!("zero_data_retention: {problem}"))?;
    record.jurisdiction = value["jurisdiction"].as_str().map(str::to_owned);
    if let Some(choices) = value["choices"].as_object() {
        for (purpose, choice) in choices {
            let purpose = Purpose::from_name(purpose)
                .ok_or_else(|| format!("choices: unknown purpose {purpose:?}"))?;
            let choice = name(choice, Choice::from_name)
                .map_err(|problem| format!("choices.{purpose}: {problem}"))?;
            // Events written before consent records were kept have no `consent`: the defaults.
            let consent = consent_meta(&value["consent"][purpose.as_str()])
                .map_err(|problem| format!("consent.{purpose}.{problem}"))?;
            record.set_choice(purpose, Some(choice), &consent);
        }
    }
    Ok(record)
}

/// A choice's provenance as `change` writes it (`notice_version`, `method`,
/// `expires_at_micros`), each absent in events older than consent records: the defaults then.
pub(crate) fn consent_meta(value: &Value) -> Result<ConsentMeta, String> {
    let notice_version = match &value["notice_version"] {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        _ => return Err("notice_version: not a string".to_owned()),
    };
    let method = match &value["method"] {
        Value::Null => ConsentMethod::Unspecified,
        method => name(method, ConsentMethod::from_name)
            .map_err(|problem| format!("method: {problem}"))?,
    };
    let expires_at_micros = match &value["expires_at_micros"] {
        Value::Null => None,
        at => Some(
            at.as_i64()
                .ok_or_else(|| "expires_at_micros: not an integer".to_owned())?,
        ),
    };
    Ok(ConsentMeta {
        notice_version,
        method,
        expires_at_micros,
    })
}

/// A conversation's facts as `change::describe_conversation` writes them.
fn conversation(value: &Value) -> Result<ConversationFacts, String> {
    Ok(ConversationFacts {
        feedback: optional_name(&value["feedback"], Rating::from_name)
            .map_err(|problem| format!("feedback: {problem}"))?,
        automated_moderation: flag(&value["automated_moderation"])
            .map_err(|problem| format!("automated_moderation: {problem}"))?,
        user_report: flag(&value["user_report"])
            .map_err(|problem| format!("user_report: {problem}"))?,
    })
}

fn name<T>(value: &Value, parse: fn(&str) -> Option<T>) -> Result<T, String> {
    let text = value.as_str().ok_or("missing")?;
    parse(text).ok_or_else(|| format!("unknown name {text:?}"))
}

fn optional_name<T>(value: &Value, parse: fn(&str) -> Option<T>) -> Result<Option<T>, String> {
    match value {
        Value::Null => Ok(None),
        _ => name(value, parse).map(Some),
    }
}

fn flag(value: &Value) -> Result<bool, String> {
    value.as_bool().ok_or_else(|| "missing".to_owned())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::{ConversationId, Jurisdiction};
    use crate::policy::FlagKind;
    use crate::store::change::{Command, SubjectFields, plan_change};

    /// An event of `kind` recording `detail_json`, its other fields empty.
    pub(in crate::store) fn event(sequence: u64, kind: EventKind, detail_json: &str) -> AuditEvent {
        AuditEvent {
            sequence,
            event_id: String::new(),
            at_micros: 0,
            subject_id: String::new(),
            kind,
            caller: String::new(),
            operator_id: String::new(),
            actor_reason: String::new(),
            detail_json: detail_json.to_owned(),
            payload_salt: String::new(),
            payload_sha256: String::new(),
            payload_erased: false,
            policy_version: String::new(),
            trace_id: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn set_choice(purpose: Purpose, choice: Option<Choice>) -> Command {
        Command::SetChoice {
            purpose,
            choice,
            consent: ConsentMeta::default(),
        }
    }

    fn cookie_banner(notice: &str, expires_at: i64) -> Command {
        Command::SetChoice {
            purpose: Purpose::AnalyticsCookies,
            choice: Some(Choice::Granted),
            consent: ConsentMeta {
                notice_version: notice.to_owned(),
                method: ConsentMethod::CookieBanner,
                expires_at_micros: Some(expires_at),
            },
        }
    }

    /// Applies commands the way the store does, recording each change as an audit event, and
    /// checks after every step that replaying the events gives the state the store keeps.
    #[test]
    fn replaying_the_events_gives_the_stored_state() {
        let commands = [
            Command::Upsert(SubjectFields {
                plan: Some(Plan::Pro),
                jurisdiction: Some(Jurisdiction::parse("FR").unwrap()),
                ..SubjectFields::default()
            }),
            set_choice(Purpose::ModelTraining, Some(Choice::Refused)),
            set_choice(Purpose::MarketingEmail, Some(Choice::Granted)),
            cookie_banner("cookies-1", 5_000),
            cookie_banner("cookies-1", 9_000),
            Command::RecordFeedback {
                conversation_id: ConversationId::parse("c1").unwrap(),
                rating: Rating::ThumbsDown,
            },
            Command::FlagConversation {
                conversation_id: ConversationId::parse("c1").unwrap(),
                kind: FlagKind::UserReport,
            },
            Command::SetRestriction { restricted: true },
            Command::Upsert(SubjectFields {
                gpc: Some(true),
                zero_data_retention: Some(true),
                ..SubjectFields::default()
            }),
            set_choice(Purpose::ModelTraining, None),
            Command::SetRestriction { restricted: false },
            Command::ExpireChoice {
                purpose: Purpose::AnalyticsCookies,
                expires_at_micros: 9_000,
            },
            cookie_banner("cookies-2", 20_000),
            Command::Delete,
        ];
        let mut stored: Option<SubjectRecord> = None;
        let mut conversations = HashMap::new();
        let mut events = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            let facts = command
                .conversation_id()
                .and_then(|id| conversations.get(id.as_str()).copied());
            let change = plan_change(stored.as_ref(), facts, command)
                .unwrap()
                .expect("every command changes something");
            if change.erase_personal_data {
                conversations.clear();
            }
            if let Some((id, facts)) = change.conversation {
                conversations.insert(id.as_str().to_owned(), facts);
            }
            stored = Some(change.subject);
            events.push(event(
                index as u64 + 1,
                change.kind,
                &change.detail.to_string(),
            ));
            let replayed = replay(&events).unwrap();
            assert_eq!(replayed.subject, stored, "after {command:?}");
            assert_eq!(replayed.conversations, conversations, "after {command:?}");
        }
        assert_eq!(stored.unwrap().state.status, Status::Deleted);
    }

    #[test]
    fn events_older_than_consent_records_replay_with_default_provenance() {
        let created = event(
            1,
            EventKind::SubjectUpserted,
            r#"{"before": null, "after": {"plan": "FREE", "jurisdiction": null,
                "status": "ACTIVE", "gpc": false, "zero_data_retention": false,
                "choices": {"MEMORY": "REFUSED"}}}"#,
        );
        let choice = event(
            2,
            EventKind::ChoiceSet,
            r#"{"purpose": "MARKETING_EMAIL", "before": null, "after": "GRANTED"}"#,
        );
        let record = replay([&created, &choice]).unwrap().subject.unwrap();
        assert_eq!(
            record.state.choices.get(Purpose::Memory),
            Some(Choice::Refused)
        );
        assert_eq!(
            record.state.choices.get(Purpose::MarketingEmail),
            Some(Choice::Granted)
        );
        assert_eq!(record.state.expiries, Default::default());
        assert_eq!(record, {
            let mut expected = record.clone();
            expected.consent = Default::default();
            expected
        });
        let bad = event(
            3,
            EventKind::ChoiceSet,
            r#"{"purpose": "MEMORY", "before": null, "after": "GRANTED",
                "method": "CARRIER_PIGEON"}"#,
        );
        let error = replay([&created, &bad]).unwrap_err();
        assert!(error.problem.contains("method"), "{error}");
    }

    #[test]
    fn a_malformed_detail_names_the_event_and_field() {
        let malformed = event(
            7,
            EventKind::SubjectUpserted,
            r#"{"before": null, "after": {"plan": "GOLD", "status": "ACTIVE"}}"#,
        );
        let error = replay([&malformed]).unwrap_err();
        assert_eq!(error.sequence, 7);
        assert!(error.problem.contains("plan"), "{error}");
        let orphan = event(
            8,
            EventKind::ChoiceSet,
            r#"{"purpose": "MEMORY", "before": null, "after": "REFUSED"}"#,
        );
        assert!(replay([&orphan]).unwrap_err().problem.contains("creation"));
    }

    #[test]
    fn events_that_change_no_subject_are_skipped() {
        let applied = event(1, EventKind::PolicyApplied, r#"{"version": "2027-01-01"}"#);
        assert_eq!(replay([&applied]).unwrap(), Replayed::default());
    }
}
