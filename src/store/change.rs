//! What a write changes, decided without I/O.
//!
//! Every backend loads the current rows of the subject inside its write transaction, asks
//! [`plan_change`] what the command changes, and writes exactly that plus one audit event. The
//! rules of the write path (a no-op records nothing, a deleted subject stays deleted, only an
//! upsert creates a subject) therefore live here once, for every backend.

use serde_json::{Value, json};

use crate::audit::EventKind;
use crate::domain::{ConversationId, Jurisdiction};
use crate::policy::{
    Choice, ConsentMethod, ConversationFacts, FlagKind, PURPOSE_COUNT, Plan, Purpose, Rating,
    Status, SubjectState,
};

/// A write to one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create the subject, or change only the fields that are `Some`.
    Upsert(SubjectFields),
    /// `None` clears the choice: the default applies again. `consent` is how and under what
    /// the choice was given; the calling service is the write's `WriteContext::caller`.
    SetChoice {
        purpose: Purpose,
        choice: Option<Choice>,
        consent: ConsentMeta,
    },
    /// Removes a choice whose expiry has passed (the expiry sweep), only if the stored choice
    /// still carries this expiry: a renewal committed first wins, and a second sweep of the
    /// same expiry changes nothing.
    ExpireChoice {
        purpose: Purpose,
        expires_at_micros: i64,
    },
    RecordFeedback {
        conversation_id: ConversationId,
        rating: Rating,
    },
    FlagConversation {
        conversation_id: ConversationId,
        kind: FlagKind,
    },
    SetRestriction {
        restricted: bool,
    },
    Delete,
}

impl Command {
    /// The conversation whose facts the command reads and writes, if any.
    pub fn conversation_id(&self) -> Option<&ConversationId> {
        match self {
            Command::RecordFeedback {
                conversation_id, ..
            }
            | Command::FlagConversation {
                conversation_id, ..
            } => Some(conversation_id),
            _ => None,
        }
    }
}

/// How and under what a choice was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentMeta {
    /// The notice or policy version shown to the user; empty means the policy version in force
    /// at the write (`Store::write` fills it in from the write's context).
    pub notice_version: String,
    pub method: ConsentMethod,
    /// The instant (microseconds since the epoch) from which the choice no longer counts and
    /// the default applies again; `None`: it does not expire. Only for GRANTED or REFUSED.
    pub expires_at_micros: Option<i64>,
}

/// Where a stored choice came from (its expiry is in `SubjectState::expiries`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    pub notice_version: String,
    pub method: ConsentMethod,
}

/// The fields an upsert may set; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectFields {
    pub plan: Option<Plan>,
    pub jurisdiction: Option<Jurisdiction>,
    pub gpc: Option<bool>,
    pub zero_data_retention: Option<bool>,
}

/// A subject's row as the write path sees it: the policy state and the other stored fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectRecord {
    pub state: SubjectState,
    pub jurisdiction: Option<String>,
    /// The provenance of each purpose's current choice (the default where there is none).
    pub consent: [Provenance; PURPOSE_COUNT],
}

impl SubjectRecord {
    pub fn provenance(&self, purpose: Purpose) -> &Provenance {
        &self.consent[purpose.index()]
    }

    /// Stores a purpose's choice with its provenance and expiry (all reset when `None`).
    pub fn set_choice(&mut self, purpose: Purpose, choice: Option<Choice>, consent: &ConsentMeta) {
        self.state.choices.set(purpose, choice);
        let (provenance, expiry) = match choice {
            Some(_) => (
                Provenance {
                    notice_version: consent.notice_version.clone(),
                    method: consent.method,
                },
                consent.expires_at_micros,
            ),
            None => (Provenance::default(), None),
        };
        self.state.expiries.set(purpose, expiry);
        self.consent[purpose.index()] = provenance;
    }
}

/// Why a command cannot be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Only an upsert may name a subject never seen.
    NotFound,
    /// A deleted account stays deleted.
    Deleted,
}

/// Everything a backend writes for one command, besides the audit event's bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: EventKind,
    /// The subject row after the change (always rewritten: it carries the new revision).
    pub subject: SubjectRecord,
    /// Whether the subject row is new.
    pub created: bool,
    /// A choice to store (`Some`) or remove (`None`).
    pub choice: Option<(Purpose, Option<Choice>)>,
    /// The facts of one conversation after the change.
    pub conversation: Option<(ConversationId, ConversationFacts)>,
    /// Remove every choice and conversation fact of the subject (account deletion).
    pub erase_personal_data: bool,
    /// The audit detail: what the change was, before and after.
    pub detail: Value,
}

/// Decides what `command` changes, given the subject's current row (`None`: never seen) and the
/// current facts of the conversation the command names (`None`: none recorded).
/// `Ok(None)` means the command changes nothing: it succeeds and records no event.
pub fn plan_change(
    subject: Option<&SubjectRecord>,
    conversation: Option<ConversationFacts>,
    command: &Command,
) -> Result<Option<Change>, Refusal> {
    let current = match (subject, command) {
        (None, Command::Upsert(fields)) => return Ok(Some(create(fields))),
        (None, _) => return Err(Refusal::NotFound),
        (Some(current), Command::Delete | Command::ExpireChoice { .. })
            if current.state.status == Status::Deleted =>
        {
            // Deletion erased every choice: nothing is left to expire.
            return Ok(None);
        }
        (Some(current), _) if current.state.status == Status::Deleted => {
            return Err(Refusal::Deleted);
        }
        (Some(current), _) => current,
    };
    let mut after = current.clone();
    match command {
        Command::Upsert(fields) => {
            apply_fields(&mut after, fields);
            if after == *current {
                return Ok(None);
            }
            let detail = json!({"before": describe(current), "after": describe(&after)});
            Ok(Some(Change::new(EventKind::SubjectUpserted, after, detail)))
        }
        Command::SetChoice {
            purpose,
            choice,
            consent,
        } => {
            let before = current.state.choices.get(*purpose);
            after.set_choice(*purpose, *choice, consent);
            // The same choice with the same notice, method and expiry is a repeat; a renewal
            // (a new expiry or notice) is a change, and a new consent record.
            if after == *current {
                return Ok(None);
            }
            let detail = json!({
                "purpose": purpose.as_str(),
                "before": before.map(Choice::as_str),
                "after": choice.map(Choice::as_str),
                "notice_version": consent.notice_version,
                "method": consent.method.as_str(),
                "expires_at_micros": choice.and(consent.expires_at_micros),
            });
            let mut change = Change::new(EventKind::ChoiceSet, after, detail);
            change.choice = Some((*purpose, *choice));
            Ok(Some(change))
        }
        Command::ExpireChoice {
            purpose,
            expires_at_micros,
        } => {
            let before = current.state.choices.get(*purpose);
            if before.is_none() || current.state.expiries.get(*purpose) != Some(*expires_at_micros)
            {
                return Ok(None);
            }
            after.set_choice(*purpose, None, &ConsentMeta::default());
            let detail = json!({
                "purpose": purpose.as_str(),
                "before": before.map(Choice::as_str),
                "after": Value::Null,
                "expires_at_micros": expires_at_micros,
            });
            let mut change = Change::new(EventKind::ConsentExpired, after, detail);
            change.choice = Some((*purpose, None));
            Ok(Some(change))
        }
        Command::RecordFeedback {
            conversation_id,
            rating,
        } => {
            let before = conversation.unwrap_or_default();
            if before.feedback == Some(*rating) {
                return Ok(None);
            }
            let facts = ConversationFacts {
                feedback: Some(*rating),
                ..before
            };
            let detail = json!({
                "conversation_id": conversation_id.as_str(),
                "before": describe_conversation(&before),
                "after": describe_conversation(&facts),
            });
            let mut change = Change::new(EventKind::FeedbackRecorded, after, detail);
            change.conversation = Some((conversation_id.clone(), facts));
            Ok(Some(change))
        }
        Command::FlagConversation {
            conversation_id,
            kind,
        } => {
            let before = conversation.unwrap_or_default();
            if before.has_flag(*kind) {
                return Ok(None);
            }
            let mut facts = before;
            facts.set_flag(*kind);
            let detail = json!({
                "conversation_id": conversation_id.as_str(),
                "before": describe_conversation(&before),
                "after": describe_conversation(&facts),
            });
            let mut change = Change::new(EventKind::ConversationFlagged, after, detail);
            change.conversation = Some((conversation_id.clone(), facts));
            Ok(Some(change))
        }
        Command::SetRestriction { restricted } => {
            let status = if *restricted {
                Status::Restricted
            } else {
                Status::Active
            };
            if current.state.status == status {
                return Ok(None);
            }
            after.state.status = status;
            let detail = json!({
                "before": {"status": current.state.status.as_str()},
                "after": {"status": status.as_str()},
            });
            Ok(Some(Change::new(EventKind::RestrictionSet, after, detail)))
        }
        Command::Delete => {
            after.state.status = Status::Deleted;
            after.state.choices = Default::default();
            after.state.expiries = Default::default();
            after.consent = Default::default();
            let detail = json!({
                "before": describe(current),
                "after": describe(&after),
                "erased": ["choices", "conversation_facts"],
            });
            let mut change = Change::new(EventKind::SubjectDeleted, after, detail);
            change.erase_personal_data = true;
            Ok(Some(change))
        }
    }
}

impl Change {
    fn new(kind: EventKind, subject: SubjectRecord, detail: Value) -> Change {
        Change {
            kind,
            subject,
            created: false,
            choice: None,
            conversation: None,
            erase_personal_data: false,
            detail,
        }
    }
}

fn create(fields: &SubjectFields) -> Change {
    let mut subject = SubjectRecord::default();
    apply_fields(&mut subject, fields);
    let detail = json!({"before": Value::Null, "after": describe(&subject)});
    let mut change = Change::new(EventKind::SubjectUpserted, subject, detail);
    change.created = true;
    change
}

fn apply_fields(record: &mut SubjectRecord, fields: &SubjectFields) {
    if let Some(plan) = fields.plan {
        record.state.plan = Some(plan);
    }
    if let Some(jurisdiction) = &fields.jurisdiction {
        record.jurisdiction = Some(jurisdiction.as_str().to_owned());
    }
    if let Some(gpc) = fields.gpc {
        record.state.gpc = gpc;
    }
    if let Some(zero_data_retention) = fields.zero_data_retention {
        record.state.zero_data_retention = zero_data_retention;
    }
}

fn describe(record: &SubjectRecord) -> Value {
    let choices: serde_json::Map<String, Value> = record
        .state
        .choices
        .iter()
        .map(|(purpose, choice)| (purpose.as_str().to_owned(), choice.as_str().into()))
        .collect();
    let consent: serde_json::Map<String, Value> = record
        .state
        .choices
        .iter()
        .map(|(purpose, _)| {
            let provenance = record.provenance(purpose);
            let described = json!({
                "notice_version": provenance.notice_version,
                "method": provenance.method.as_str(),
                "expires_at_micros": record.state.expiries.get(purpose),
            });
            (purpose.as_str().to_owned(), described)
        })
        .collect();
    json!({
        "plan": record.state.plan.map(Plan::as_str),
        "jurisdiction": record.jurisdiction,
        "status": record.state.status.as_str(),
        "gpc": record.state.gpc,
        "zero_data_retention": record.state.zero_data_retention,
        "choices": choices,
        "consent": consent,
    })
}

fn describe_conversation(facts: &ConversationFacts) -> Value {
    json!({
        "feedback": facts.feedback.map(Rating::as_str),
        "automated_moderation": facts.automated_moderation,
        "user_report": facts.user_report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(plan: Plan) -> SubjectRecord {
        SubjectRecord {
            state: SubjectState {
                plan: Some(plan),
                ..SubjectState::new()
            },
            jurisdiction: None,
            consent: Default::default(),
        }
    }

    fn conversation(id: &str) -> ConversationId {
        ConversationId::parse(id).unwrap()
    }

    #[test]
    fn only_an_upsert_creates_a_subject() {
        let upsert = Command::Upsert(SubjectFields {
            plan: Some(Plan::Free),
            ..Default::default()
        });
        let change = plan_change(None, None, &upsert).unwrap().unwrap();
        assert!(change.created);
        assert_eq!(change.subject.state.plan, Some(Plan::Free));
        assert_eq!(change.detail["before"], Value::Null);
        let refuse = Command::SetChoice {
            purpose: Purpose::Memory,
            choice: Some(Choice::Refused),
            consent: ConsentMeta::default(),
        };
        assert_eq!(plan_change(None, None, &refuse), Err(Refusal::NotFound));
        assert_eq!(
            plan_change(None, None, &Command::Delete),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn repeating_the_current_values_changes_nothing() {
        let current = subject(Plan::Pro);
        let same_plan = Command::Upsert(SubjectFields {
            plan: Some(Plan::Pro),
            gpc: Some(false),
            ..Default::default()
        });
        assert_eq!(plan_change(Some(&current), None, &same_plan), Ok(None));
        let clear_nothing = Command::SetChoice {
            purpose: Purpose::Memory,
            choice: None,
            consent: ConsentMeta {
                notice_version: "v1".into(),
                method: ConsentMethod::SettingsPage,
                expires_at_micros: None,
            },
        };
        assert_eq!(plan_change(Some(&current), None, &clear_nothing), Ok(None));
        let lift = Command::SetRestriction { restricted: false };
        assert_eq!(plan_change(Some(&current), None, &lift), Ok(None));
        let thumbs_up = ConversationFacts {
            feedback: Some(Rating::ThumbsUp),
            ..Default::default()
        };
        let again = Command::RecordFeedback {
            conversation_id: conversation("c-1"),
            rating: Rating::ThumbsUp,
        };
        assert_eq!(
            plan_change(Some(&current), Some(thumbs_up), &again),
            Ok(None)
        );
    }

    #[test]
    fn an_upsert_changes_only_the_fields_present() {
        let mut current = subject(Plan::Pro);
        current.state.gpc = true;
        current.jurisdiction = Some("FR".into());
        let command = Command::Upsert(SubjectFields {
            zero_data_retention: Some(true),
            ..Default::default()
        });
        let change = plan_change(Some(&current), None, &command)
            .unwrap()
            .unwrap();
        assert_eq!(change.subject.state.plan, Some(Plan::Pro));
        assert!(change.subject.state.gpc);
        assert!(change.subject.state.zero_data_retention);
        assert_eq!(change.subject.jurisdiction.as_deref(), Some("FR"));
        assert_eq!(change.detail["before"]["zero_data_retention"], false);
        assert_eq!(change.detail["after"]["zero_data_retention"], true);
    }

    #[test]
    fn a_deleted_subject_stays_deleted() {
        let mut current = subject(Plan::Free);
        current.state.status = Status::Deleted;
        assert_eq!(
            plan_change(Some(&current), None, &Command::Delete),
            Ok(None)
        );
        let upsert = Command::Upsert(SubjectFields {
            plan: Some(Plan::Free),
            ..Default::default()
        });
        assert_eq!(
            plan_change(Some(&current), None, &upsert),
            Err(Refusal::Deleted)
        );
        let lift = Command::SetRestriction { restricted: false };
        assert_eq!(
            plan_change(Some(&current), None, &lift),
            Err(Refusal::Deleted)
        );
    }

    #[test]
    fn deletion_erases_choices_and_conversations() {
        let mut current = subject(Plan::Free);
        current
            .state
            .choices
            .set(Purpose::ModelTraining, Some(Choice::Refused));
        let change = plan_change(Some(&current), None, &Command::Delete)
            .unwrap()
            .unwrap();
        assert_eq!(change.subject.state.status, Status::Deleted);
        assert_eq!(change.subject.state.choices.iter().count(), 0);
        assert!(change.erase_personal_data);
        assert_eq!(
            change.detail["before"]["choices"]["MODEL_TRAINING"],
            "REFUSED"
        );
    }

    #[test]
    fn flags_accumulate_and_keep_feedback() {
        let current = subject(Plan::Team);
        let before = ConversationFacts {
            feedback: Some(Rating::ThumbsDown),
            ..Default::default()
        };
        let command = Command::FlagConversation {
            conversation_id: conversation("c-9"),
            kind: FlagKind::UserReport,
        };
        let change = plan_change(Some(&current), Some(before), &command)
            .unwrap()
            .unwrap();
        let (id, facts) = change.conversation.unwrap();
        assert_eq!(id.as_str(), "c-9");
        assert_eq!(facts.feedback, Some(Rating::ThumbsDown));
        assert!(facts.user_report && !facts.automated_moderation);
    }

    fn set(choice: Option<Choice>, notice: &str, expires_at: Option<i64>) -> Command {
        Command::SetChoice {
            purpose: Purpose::AnalyticsCookies,
            choice,
            consent: ConsentMeta {
                notice_version: notice.into(),
                method: ConsentMethod::CookieBanner,
                expires_at_micros: expires_at,
            },
        }
    }

    /// Applies a command that changes something; returns the record after it.
    fn applied(current: &SubjectRecord, command: &Command) -> (SubjectRecord, Change) {
        let change = plan_change(Some(current), None, command)
            .unwrap()
            .expect("the command changes something");
        (change.subject.clone(), change)
    }

    #[test]
    fn a_choice_keeps_its_provenance_and_a_repeat_changes_nothing() {
        let (granted, change) = applied(
            &subject(Plan::Free),
            &set(Some(Choice::Granted), "cookies-3", Some(5_000)),
        );
        let purpose = Purpose::AnalyticsCookies;
        assert_eq!(granted.state.choices.get(purpose), Some(Choice::Granted));
        assert_eq!(granted.state.expiries.get(purpose), Some(5_000));
        assert_eq!(
            granted.provenance(purpose),
            &Provenance {
                notice_version: "cookies-3".into(),
                method: ConsentMethod::CookieBanner,
            }
        );
        assert_eq!(change.kind, EventKind::ChoiceSet);
        assert_eq!(change.detail["notice_version"], "cookies-3");
        assert_eq!(change.detail["method"], "COOKIE_BANNER");
        assert_eq!(change.detail["expires_at_micros"], 5_000);
        assert_eq!(change.choice, Some((purpose, Some(Choice::Granted))));
        let repeat = set(Some(Choice::Granted), "cookies-3", Some(5_000));
        assert_eq!(plan_change(Some(&granted), None, &repeat), Ok(None));
        // Another method for the same choice is a new record too.
        let mut by_settings = repeat.clone();
        if let Command::SetChoice { consent, .. } = &mut by_settings {
            consent.method = ConsentMethod::SettingsPage;
        }
        assert!(
            plan_change(Some(&granted), None, &by_settings)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_renewal_is_a_change_and_clearing_resets_the_provenance() {
        let (granted, _) = applied(
            &subject(Plan::Free),
            &set(Some(Choice::Granted), "cookies-3", Some(5_000)),
        );
        let purpose = Purpose::AnalyticsCookies;
        let (renewed, change) = applied(
            &granted,
            &set(Some(Choice::Granted), "cookies-3", Some(9_000)),
        );
        assert_eq!(renewed.state.expiries.get(purpose), Some(9_000));
        assert_eq!(
            (&change.detail["before"], &change.detail["after"]),
            (&json!("GRANTED"), &json!("GRANTED"))
        );
        let (new_notice, _) = applied(
            &renewed,
            &set(Some(Choice::Granted), "cookies-4", Some(9_000)),
        );
        assert_eq!(new_notice.provenance(purpose).notice_version, "cookies-4");
        let (no_expiry, _) = applied(&new_notice, &set(Some(Choice::Granted), "cookies-4", None));
        assert_eq!(no_expiry.state.expiries.get(purpose), None);
        let (cleared, change) = applied(&renewed, &set(None, "cookies-4", None));
        assert_eq!(cleared.state.choices.get(purpose), None);
        assert_eq!(cleared.state.expiries.get(purpose), None);
        assert_eq!(cleared.provenance(purpose), &Provenance::default());
        assert_eq!(change.detail["after"], Value::Null);
        assert_eq!(change.detail["expires_at_micros"], Value::Null);
        // Clearing what is not there changes nothing, whatever the provenance.
        assert_eq!(
            plan_change(Some(&cleared), None, &set(None, "x", None)),
            Ok(None)
        );
    }

    #[test]
    fn an_expiry_removes_only_the_choice_that_still_carries_it() {
        let purpose = Purpose::AnalyticsCookies;
        let (granted, _) = applied(
            &subject(Plan::Free),
            &set(Some(Choice::Granted), "cookies-3", Some(5_000)),
        );
        let expire = |at| Command::ExpireChoice {
            purpose,
            expires_at_micros: at,
        };
        let (expired, change) = applied(&granted, &expire(5_000));
        assert_eq!(change.kind, EventKind::ConsentExpired);
        assert_eq!(change.choice, Some((purpose, None)));
        assert_eq!(change.detail["before"], "GRANTED");
        assert_eq!(change.detail["expires_at_micros"], 5_000);
        assert_eq!(expired.state.choices.get(purpose), None);
        assert_eq!(expired.state.expiries.get(purpose), None);
        assert_eq!(expired.provenance(purpose), &Provenance::default());
        // A second sweep of the same expiry, or one racing a renewal, changes nothing.
        assert_eq!(plan_change(Some(&expired), None, &expire(5_000)), Ok(None));
        let (renewed, _) = applied(
            &granted,
            &set(Some(Choice::Granted), "cookies-3", Some(9_000)),
        );
        assert_eq!(plan_change(Some(&renewed), None, &expire(5_000)), Ok(None));
        let mut deleted = granted.clone();
        deleted.state.status = Status::Deleted;
        assert_eq!(plan_change(Some(&deleted), None, &expire(5_000)), Ok(None));
        assert_eq!(
            plan_change(None, None, &expire(5_000)),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn deletion_erases_expiries_and_provenance_and_tells_them() {
        let (granted, _) = applied(
            &subject(Plan::Free),
            &set(Some(Choice::Granted), "cookies-3", Some(5_000)),
        );
        let (deleted, change) = applied(&granted, &Command::Delete);
        assert_eq!(deleted.state.expiries, Default::default());
        assert_eq!(deleted.consent, <[Provenance; PURPOSE_COUNT]>::default());
        assert_eq!(
            change.detail["before"]["consent"]["ANALYTICS_COOKIES"],
            json!({"notice_version": "cookies-3", "method": "COOKIE_BANNER", "expires_at_micros": 5_000})
        );
    }
}
