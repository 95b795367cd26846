//! A subject's consent history, read from its audit events, without I/O.
//!
//! Every change to a choice is an audit event, and audit events are kept when the choice is
//! cleared, expires or is erased with the account. So the history of every purpose's consent —
//! what was chosen, under which notice, by which means, through which service, until when — is
//! the subject's `choice_set`, `consent_expired` and `subject_deleted` events, turned into one
//! record per purpose they changed. "This person's consent at date D" is the last record per
//! purpose committed by D (a GRANTED record whose `expires_at` is before D no longer counted).

use serde_json::Value;

use super::change::ConsentMeta;
use super::replay::{ReplayError, consent_meta};
use crate::audit::{AuditEvent, EventKind};
use crate::policy::{Choice, ConsentMethod, Purpose};
use crate::revision::Revision;

/// Why a consent record was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentCause {
    /// A calling service set or cleared the choice (SetChoice).
    SetByCaller,
    /// A data-subject rights request set it (a choice given with method `RIGHTS_REQUEST`).
    RightsRequest,
    /// Its expiry passed and the sweep removed it.
    Expired,
    /// The account was deleted, which erases every choice.
    ErasedByDeletion,
}

/// One change of one purpose's consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRecord {
    pub purpose: Purpose,
    /// `None`: no choice from then on (cleared, expired or erased); the default applies.
    pub choice: Option<Choice>,
    /// The notice version, method and expiry given with the choice. For an expiry, the expiry
    /// that passed; for a record older than consent records, the defaults.
    pub consent: ConsentMeta,
    /// The calling service that made the change.
    pub caller: String,
    pub operator_id: String,
    pub actor_reason: String,
    /// When the change was committed.
    pub recorded_at_micros: i64,
    /// The revision of the audit event that recorded it.
    pub revision: Revision,
    pub cause: ConsentCause,
}

/// A position in a subject's consent history: the record `index` of the audit event with
/// sequence `sequence` (an account deletion gives several records). Ordered as the history is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryCursor {
    pub sequence: u64,
    pub index: u32,
}

impl HistoryCursor {
    /// The opaque page token: `h1.<sequence hex>.<index>`.
    pub fn to_token(self) -> String {
        format!("h1.{:x}.{}", self.sequence, self.index)
    }

    /// Parses a token made by [`HistoryCursor::to_token`].
    pub fn parse_token(token: &str) -> Option<HistoryCursor> {
        let rest = token.strip_prefix("h1.")?;
        let (sequence, index) = rest.split_once('.')?;
        let digits = |text: &str, radix: u32| {
            !text.is_empty() && text.chars().all(|character| character.is_digit(radix))
        };
        if !digits(sequence, 16) || !digits(index, 10) {
            return None;
        }
        Some(HistoryCursor {
            sequence: u64::from_str_radix(sequence, 16).ok()?,
            index: index.parse().ok()?,
        })
    }
}

/// The consent records an audit event makes, in purpose order (none for events of other
/// kinds).
pub fn consent_records(event: &AuditEvent) -> Result<Vec<ConsentRecord>, ReplayError> {
    let fail = |problem: String| ReplayError::of(event, problem);
    if !matches!(
        event.kind,
        EventKind::ChoiceSet | EventKind::ConsentExpired | EventKind::SubjectDeleted
    ) || event.payload_erased
    {
        return Ok(Vec::new());
    }
    let detail: Value = serde_json::from_str(&event.detail_json)
        .map_err(|error| fail(format!("detail is not JSON: {error}")))?;
    let record =
        |purpose: Purpose, choice: Option<Choice>, consent: ConsentMeta, cause| ConsentRecord {
            purpose,
            choice,
            consent,
            caller: event.caller.clone(),
            operator_id: event.operator_id.clone(),
            actor_reason: event.actor_reason.clone(),
            recorded_at_micros: event.at_micros,
            revision: Revision::new(event.sequence),
            cause,
        };
    let purpose_of = |value: &Value| {
        value
            .as_str()
            .and_then(Purpose::from_name)
            .ok_or_else(|| fail(format!("purpose: not a purpose: {value}")))
    };
    match event.kind {
        EventKind::ChoiceSet => {
            let purpose = purpose_of(&detail["purpose"])?;
            let choice = match &detail["after"] {
                Value::Null => None,
                value => Some(
                    value
                        .as_str()
                        .and_then(Choice::from_name)
                        .ok_or_else(|| fail(format!("after: not a choice: {value}")))?,
                ),
            };
            let consent = consent_meta(&detail).map_err(fail)?;
            let cause = match consent.method {
                ConsentMethod::RightsRequest => ConsentCause::RightsRequest,
                _ => ConsentCause::SetByCaller,
            };
            Ok(vec![record(purpose, choice, consent, cause)])
        }
        EventKind::ConsentExpired => {
            let purpose = purpose_of(&detail["purpose"])?;
            let consent = ConsentMeta {
                expires_at_micros: detail["expires_at_micros"].as_i64(),
                ..ConsentMeta::default()
            };
            Ok(vec![record(purpose, None, consent, ConsentCause::Expired)])
        }
        _ => {
            let Some(erased) = detail["before"]["choices"].as_object() else {
                return Ok(Vec::new());
            };
            let mut purposes = erased
                .keys()
                .map(|name| {
                    Purpose::from_name(name)
                        .ok_or_else(|| fail(format!("before.choices: unknown purpose {name:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            purposes.sort();
            Ok(purposes
                .into_iter()
                .map(|purpose| {
                    record(
                        purpose,
                        None,
                        ConsentMeta::default(),
                        ConsentCause::ErasedByDeletion,
                    )
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change::{Command, SubjectFields, SubjectRecord, plan_change};
    use crate::store::replay::tests::event;

    /// Applies commands as the store does and records each change as an audit event.
    fn events(commands: &[Command]) -> Vec<AuditEvent> {
        let mut stored: Option<SubjectRecord> = None;
        let mut events = Vec::new();
        for command in commands {
            let Some(change) = plan_change(stored.as_ref(), None, command).unwrap() else {
                continue;
            };
            stored = Some(change.subject);
            events.push(AuditEvent {
                at_micros: 1_000 * (events.len() as i64 + 1),
                caller: "billing".to_owned(),
                operator_id: "user:1".to_owned(),
                ..event(
                    events.len() as u64 + 1,
                    change.kind,
                    &change.detail.to_string(),
                )
            });
        }
        events
    }

    fn given(purpose: Purpose, choice: Option<Choice>, method: ConsentMethod) -> Command {
        Command::SetChoice {
            purpose,
            choice,
            consent: ConsentMeta {
                notice_version: "n-7".into(),
                method,
                expires_at_micros: choice.map(|_| 90_000),
            },
        }
    }

    #[test]
    fn every_change_of_consent_is_a_record_and_nothing_else_is() {
        let history = events(&[
            Command::Upsert(SubjectFields::default()),
            given(
                Purpose::AnalyticsCookies,
                Some(Choice::Granted),
                ConsentMethod::CookieBanner,
            ),
            given(
                Purpose::ModelTraining,
                Some(Choice::Refused),
                ConsentMethod::RightsRequest,
            ),
            Command::SetRestriction { restricted: true },
            Command::ExpireChoice {
                purpose: Purpose::AnalyticsCookies,
                expires_at_micros: 90_000,
            },
            given(
                Purpose::Memory,
                Some(Choice::Refused),
                ConsentMethod::SettingsPage,
            ),
            given(Purpose::Memory, None, ConsentMethod::SettingsPage),
            given(
                Purpose::MarketingEmail,
                Some(Choice::Granted),
                ConsentMethod::ApiImport,
            ),
            Command::Delete,
        ]);
        let records: Vec<ConsentRecord> = history
            .iter()
            .flat_map(|event| consent_records(event).unwrap())
            .collect();
        let summary: Vec<(Purpose, Option<Choice>, ConsentCause, u64)> = records
            .iter()
            .map(|record| {
                (
                    record.purpose,
                    record.choice,
                    record.cause,
                    record.revision.sequence(),
                )
            })
            .collect();
        use ConsentCause::*;
        use Purpose::*;
        assert_eq!(
            summary,
            [
                (AnalyticsCookies, Some(Choice::Granted), SetByCaller, 2),
                (ModelTraining, Some(Choice::Refused), RightsRequest, 3),
                (AnalyticsCookies, None, Expired, 5),
                (Memory, Some(Choice::Refused), SetByCaller, 6),
                (Memory, None, SetByCaller, 7),
                (MarketingEmail, Some(Choice::Granted), SetByCaller, 8),
                (ModelTraining, None, ErasedByDeletion, 9),
                (MarketingEmail, None, ErasedByDeletion, 9),
            ]
        );
        let granted = &records[0];
        assert_eq!(granted.consent.notice_version, "n-7");
        assert_eq!(granted.consent.method, ConsentMethod::CookieBanner);
        assert_eq!(granted.consent.expires_at_micros, Some(90_000));
        assert_eq!(
            (granted.caller.as_str(), granted.operator_id.as_str()),
            ("billing", "user:1")
        );
        assert_eq!(granted.recorded_at_micros, 2_000);
        assert_eq!(records[2].consent.expires_at_micros, Some(90_000));
        // A cleared choice keeps how it was cleared, and has no expiry.
        assert_eq!(records[4].consent.method, ConsentMethod::SettingsPage);
        assert_eq!(records[4].consent.expires_at_micros, None);
    }

    #[test]
    fn cursors_round_trip_and_order_as_the_history() {
        let cursor = HistoryCursor {
            sequence: 0x1f,
            index: 3,
        };
        assert_eq!(cursor.to_token(), "h1.1f.3");
        assert_eq!(HistoryCursor::parse_token("h1.1f.3"), Some(cursor));
        for bad in [
            "", "h1.", "h1.1f", "h1.1f.", "h1.zz.1", "h2.1.1", "r1.1f", "h1.1f.-1",
        ] {
            assert_eq!(HistoryCursor::parse_token(bad), None, "{bad}");
        }
        assert!(
            HistoryCursor {
                sequence: 4,
                index: 9
            } < HistoryCursor {
                sequence: 5,
                index: 0
            }
        );
    }
}
