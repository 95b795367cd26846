//! Rights requests (privacy policy §8 "Your rights" and §9 for the United States): their kinds,
//! the states a request moves through, who must answer by when, and what a request does to the
//! subject's processing.
//!
//! Pure like the rest of `policy`: instants are arguments (microseconds since the epoch, UTC).
//!
//! Deadlines (POLICY.md "Rights requests"):
//! - under the GDPR, one month from receipt (art. 12(3)), extendable by two further months: the
//!   answer is then due three months from receipt. A period in months ends on the same day of
//!   the month it started on, or on the month's last day when it has no such day
//!   (Regulation 1182/71, art. 3(2)(c)): received 31 January, due 28 February.
//! - under US state laws, 45 days from receipt, extendable once by 45 days (CCPA
//!   §1798.130(a)(2), and the laws modelled on it).
//! - an appeal (US) is answered within 45 days of being lodged, the shortest period among the
//!   state laws that provide one (Colorado, C.R.S. 6-1-1306(3)); appeals are not extended here.
//!
//! A deadline ends with the last microsecond of its day in UTC. The regime follows the
//! jurisdiction: a `US-…` subdivision is under its state law; every other subject is under the
//! GDPR, which binds the controller (established in the EU) whatever the subject's country.

use super::Purpose;
use crate::calendar::Date;
use crate::named::named_enum;

named_enum! {
    /// The rights a request can exercise (privacy policy §8, and §9 for the US appeal).
    pub enum RightKind {
        Access => "ACCESS",
        Portability => "PORTABILITY",
        Rectification => "RECTIFICATION",
        Deletion => "DELETION",
        Objection => "OBJECTION",
        ConsentWithdrawal => "CONSENT_WITHDRAWAL",
        Restriction => "RESTRICTION",
        PostMortem => "POST_MORTEM",
        /// An appeal of a response (US state laws).
        Appeal => "APPEAL",
    }
}

named_enum! {
    /// Where a request stands.
    pub enum RequestState {
        Received => "RECEIVED",
        /// The requester's identity is being verified.
        Verifying => "VERIFYING",
        InProgress => "IN_PROGRESS",
        Completed => "COMPLETED",
        /// Refused, with a reason given to the requester.
        Refused => "REFUSED",
        /// The requester appealed the response (US state laws); answered by COMPLETED or REFUSED.
        Appealed => "APPEALED",
    }
}

named_enum! {
    /// The law whose deadlines a request is answered under.
    pub enum Regime {
        Gdpr => "GDPR",
        UsState => "US_STATE",
    }
}

impl RequestState {
    /// Whether the request has been answered (an answered request may still be appealed).
    pub const fn is_answered(self) -> bool {
        matches!(self, RequestState::Completed | RequestState::Refused)
    }
}

impl Regime {
    /// The regime of a jurisdiction (ISO 3166: `FR`, `US-CA`).
    pub fn of(jurisdiction: &str) -> Regime {
        if jurisdiction.starts_with("US-") {
            Regime::UsState
        } else {
            Regime::Gdpr
        }
    }

    /// The last instant the answer to a request received at `received_micros` may be given,
    /// with or without the extension.
    pub fn due(self, received_micros: i64, extended: bool) -> i64 {
        let received = Date::from_micros(received_micros);
        let due_day = match (self, extended) {
            (Regime::Gdpr, false) => received.add_months(1),
            (Regime::Gdpr, true) => received.add_months(3),
            (Regime::UsState, false) => add_days(received, US_RESPONSE_DAYS),
            (Regime::UsState, true) => add_days(received, 2 * US_RESPONSE_DAYS),
        };
        due_day.end_micros()
    }

    /// Where the law allows appealing a response to the controller itself.
    pub const fn allows_appeal(self) -> bool {
        matches!(self, Regime::UsState)
    }
}

/// Days to answer under US state laws, and to extend by.
const US_RESPONSE_DAYS: i64 = 45;
/// Days to answer an appeal.
const APPEAL_RESPONSE_DAYS: i64 = 45;

fn add_days(date: Date, days: i64) -> Date {
    Date::from_days(date.to_days().saturating_add(days))
}

/// What a request does to the subject's processing, applied in the transaction that makes it
/// due (see [`RightsRequest::effect_due`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Acts as a REFUSED choice for each purpose: an objection (to training unless it names
    /// other purposes), a consent withdrawal (the purposes it names).
    RefuseChoices(Vec<Purpose>),
    /// Status RESTRICTED (GDPR art. 18).
    Restrict,
    /// Status DELETED: the account is erased, as `DeleteSubject` does.
    Delete,
}

impl RightKind {
    /// Whether the kind only narrows processing and so takes effect on filing, before the
    /// identity is verified: stopping processing cannot harm the person, and an opt-out must
    /// not wait on verification (CCPA regulations §7026(d)). A deletion waits for the identity.
    pub const fn acts_before_verification(self) -> bool {
        matches!(
            self,
            RightKind::Objection | RightKind::ConsentWithdrawal | RightKind::Restriction
        )
    }

    /// Whether a request of this kind must name the purposes it is about.
    pub const fn requires_purposes(self) -> bool {
        matches!(self, RightKind::ConsentWithdrawal)
    }

    /// Whether a request of this kind may name purposes at all.
    pub const fn takes_purposes(self) -> bool {
        matches!(self, RightKind::ConsentWithdrawal | RightKind::Objection)
    }
}

/// A request as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RightsRequest {
    pub kind: RightKind,
    pub regime: Regime,
    pub state: RequestState,
    pub received_at_micros: i64,
    pub identity_verified: bool,
    /// The purposes an objection or a consent withdrawal is about.
    pub purposes: Vec<Purpose>,
    /// The last instant the current answer is due (the appeal's once appealed).
    pub due_at_micros: i64,
    /// Whether the deadline was extended.
    pub extended: bool,
    /// Whether the request was appealed (it can be only once).
    pub appealed: bool,
    /// Whether its effect on the subject has been applied.
    pub effect_applied: bool,
    /// When it was last answered (completed or refused).
    pub answered_at_micros: Option<i64>,
}

/// Why a step cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepRefusal {
    #[error("a request cannot move from {from} to {to}")]
    Transition {
        from: RequestState,
        to: RequestState,
    },
    #[error(
        "{regime} gives no appeal to the controller; the requester may complain to the \
         supervisory authority"
    )]
    NoAppeal { regime: Regime },
    #[error("the request was appealed already; an appeal is answered once")]
    AppealedAlready,
    #[error("a deletion is completed only once the identity is verified")]
    DeletionUnverified,
    #[error("an appeal to the controller is a right of US state laws; {regime} has none")]
    AppealNotProvided { regime: Regime },
    #[error("the deadline was extended already; it can be extended once")]
    ExtendedAlready,
    #[error("the request is {state}; only an open request can be extended")]
    ExtendAnswered { state: RequestState },
    #[error("an appeal's deadline is not extended")]
    ExtendAppeal,
    #[error("the deadline passed; an extension must be made within it")]
    ExtendLate,
}

impl StepRefusal {
    /// The request field the refusal is about.
    pub const fn field(&self) -> &'static str {
        match self {
            StepRefusal::Transition { .. }
            | StepRefusal::NoAppeal { .. }
            | StepRefusal::AppealedAlready => "state",
            StepRefusal::DeletionUnverified => "identity_verified",
            StepRefusal::AppealNotProvided { .. } => "kind",
            StepRefusal::ExtendedAlready
            | StepRefusal::ExtendAnswered { .. }
            | StepRefusal::ExtendAppeal
            | StepRefusal::ExtendLate => "request_id",
        }
    }
}

impl RightsRequest {
    /// A request as filed.
    pub fn file(
        kind: RightKind,
        regime: Regime,
        received_at_micros: i64,
        identity_verified: bool,
        purposes: Vec<Purpose>,
    ) -> Result<RightsRequest, StepRefusal> {
        if kind == RightKind::Appeal && !regime.allows_appeal() {
            return Err(StepRefusal::AppealNotProvided { regime });
        }
        let purposes = if kind == RightKind::Objection && purposes.is_empty() {
            vec![Purpose::ModelTraining]
        } else {
            purposes
        };
        Ok(RightsRequest {
            kind,
            regime,
            state: RequestState::Received,
            received_at_micros,
            identity_verified,
            purposes,
            due_at_micros: regime.due(received_at_micros, false),
            extended: false,
            appealed: false,
            effect_applied: false,
            answered_at_micros: None,
        })
    }

    /// Whether an answer is still owed.
    pub const fn is_open(&self) -> bool {
        !self.state.is_answered()
    }

    /// Whether the answer is owed and its deadline has passed at `now_micros`.
    pub const fn is_overdue(&self, now_micros: i64) -> bool {
        self.is_open() && now_micros > self.due_at_micros
    }

    /// The request's effect on the subject, if it is now due and not yet applied: never for a
    /// refused request, and for a deletion only once the identity is verified.
    pub fn effect_due(&self) -> Option<Effect> {
        if self.effect_applied || self.state == RequestState::Refused {
            return None;
        }
        if !self.identity_verified && !self.kind.acts_before_verification() {
            return None;
        }
        match self.kind {
            RightKind::Objection | RightKind::ConsentWithdrawal => {
                Some(Effect::RefuseChoices(self.purposes.clone()))
            }
            RightKind::Restriction => Some(Effect::Restrict),
            RightKind::Deletion => Some(Effect::Delete),
            RightKind::Access
            | RightKind::Portability
            | RightKind::Rectification
            | RightKind::PostMortem
            | RightKind::Appeal => None,
        }
    }

    /// The request after moving to `to` at `now_micros`; `verify` records that the identity
    /// was verified.
    pub fn advance(
        &self,
        to: RequestState,
        verify: bool,
        now_micros: i64,
    ) -> Result<RightsRequest, StepRefusal> {
        use RequestState as State;
        let allowed = match (self.state, to) {
            (State::Received, State::Verifying | State::InProgress | State::Refused) => true,
            (State::Verifying, State::InProgress | State::Refused) => true,
            (State::InProgress, State::Completed | State::Refused) => true,
            (State::Completed | State::Refused, State::Appealed) => {
                if !self.regime.allows_appeal() {
                    return Err(StepRefusal::NoAppeal {
                        regime: self.regime,
                    });
                }
                if self.appealed {
                    return Err(StepRefusal::AppealedAlready);
                }
                true
            }
            (State::Appealed, State::Completed | State::Refused) => true,
            _ => false,
        };
        if !allowed {
            return Err(StepRefusal::Transition {
                from: self.state,
                to,
            });
        }
        let mut next = self.clone();
        next.identity_verified |= verify;
        next.state = to;
        if to == State::Completed && self.kind == RightKind::Deletion && !next.identity_verified {
            return Err(StepRefusal::DeletionUnverified);
        }
        if to.is_answered() {
            next.answered_at_micros = Some(now_micros);
        }
        if to == State::Appealed {
            next.appealed = true;
            next.due_at_micros =
                add_days(Date::from_micros(now_micros), APPEAL_RESPONSE_DAYS).end_micros();
        }
        Ok(next)
    }

    /// The request with its deadline extended, at `now_micros` (within the first deadline).
    pub fn extend(&self, now_micros: i64) -> Result<RightsRequest, StepRefusal> {
        if !self.is_open() {
            return Err(StepRefusal::ExtendAnswered { state: self.state });
        }
        if self.appealed {
            return Err(StepRefusal::ExtendAppeal);
        }
        if self.extended {
            return Err(StepRefusal::ExtendedAlready);
        }
        if now_micros > self.due_at_micros {
            return Err(StepRefusal::ExtendLate);
        }
        let mut next = self.clone();
        next.extended = true;
        next.due_at_micros = self.regime.due(self.received_at_micros, true);
        Ok(next)
    }

    /// Until when the record of the request is kept: six years after it was last answered
    /// (privacy policy §5, data relating to privacy requests), `None` while it is open.
    pub fn kept_until(&self) -> Option<i64> {
        let answered = self.answered_at_micros.filter(|_| !self.is_open())?;
        match super::retention(
            super::DataCategory::PrivacyRequests,
            &super::RetentionFacts::at(answered),
        )
        .keep
        {
            super::Keep::Until(until) => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(year: i32, month: u32, day: u32, hour: i64) -> i64 {
        Date { year, month, day }.start_micros() + hour * 3_600_000_000
    }

    fn end_of(year: i32, month: u32, day: u32) -> i64 {
        Date { year, month, day }.end_micros()
    }

    #[test]
    fn deadlines_follow_the_regime_of_the_jurisdiction() {
        assert_eq!(Regime::of("FR"), Regime::Gdpr);
        assert_eq!(Regime::of("DE"), Regime::Gdpr);
        assert_eq!(Regime::of("US-CA"), Regime::UsState);
        let received = at(2026, 3, 15, 10);
        assert_eq!(Regime::Gdpr.due(received, false), end_of(2026, 4, 15));
        assert_eq!(Regime::Gdpr.due(received, true), end_of(2026, 6, 15));
        assert_eq!(Regime::UsState.due(received, false), end_of(2026, 4, 29));
        assert_eq!(Regime::UsState.due(received, true), end_of(2026, 6, 13));
        // A month from 31 January ends on the last day of February.
        assert_eq!(
            Regime::Gdpr.due(at(2026, 1, 31, 23), false),
            end_of(2026, 2, 28)
        );
        assert_eq!(
            Regime::Gdpr.due(at(2026, 1, 31, 23), true),
            end_of(2026, 4, 30)
        );
    }

    #[test]
    fn a_request_moves_only_along_its_states() {
        use RequestState as State;
        let filed = RightsRequest::file(RightKind::Access, Regime::Gdpr, 0, false, vec![]).unwrap();
        let verifying = filed.advance(State::Verifying, false, 1).unwrap();
        let in_progress = verifying.advance(State::InProgress, true, 2).unwrap();
        assert!(in_progress.identity_verified);
        let completed = in_progress.advance(State::Completed, false, 3).unwrap();
        assert_eq!(completed.answered_at_micros, Some(3));
        assert!(!completed.is_open());
        for (from, to) in [
            (&filed, State::Completed),
            (&filed, State::Appealed),
            (&verifying, State::Completed),
            (&completed, State::InProgress),
            (&completed, State::Completed),
        ] {
            assert_eq!(
                from.advance(to, false, 4),
                Err(StepRefusal::Transition {
                    from: from.state,
                    to
                })
            );
        }
        assert_eq!(
            completed.advance(State::Appealed, false, 4),
            Err(StepRefusal::NoAppeal {
                regime: Regime::Gdpr
            })
        );
    }

    #[test]
    fn a_us_response_can_be_appealed_once() {
        use RequestState as State;
        let received = at(2026, 3, 15, 10);
        let refused =
            RightsRequest::file(RightKind::Access, Regime::UsState, received, true, vec![])
                .unwrap()
                .advance(State::Refused, false, received)
                .unwrap();
        let appealed = refused
            .advance(State::Appealed, false, at(2026, 4, 1, 9))
            .unwrap();
        assert!(appealed.is_open());
        assert_eq!(appealed.due_at_micros, end_of(2026, 5, 16));
        assert_eq!(
            appealed.extend(at(2026, 4, 2, 0)),
            Err(StepRefusal::ExtendAppeal)
        );
        let answered = appealed
            .advance(State::Refused, false, at(2026, 4, 20, 0))
            .unwrap();
        assert_eq!(
            answered.advance(State::Appealed, false, at(2026, 4, 21, 0)),
            Err(StepRefusal::AppealedAlready)
        );
    }

    #[test]
    fn a_deadline_is_extended_once_and_within_it() {
        let received = at(2026, 3, 15, 10);
        let filed =
            RightsRequest::file(RightKind::Access, Regime::Gdpr, received, true, vec![]).unwrap();
        assert_eq!(
            filed.extend(end_of(2026, 4, 15) + 1),
            Err(StepRefusal::ExtendLate)
        );
        let extended = filed.extend(end_of(2026, 4, 15)).unwrap();
        assert_eq!(extended.due_at_micros, end_of(2026, 6, 15));
        assert_eq!(
            extended.extend(at(2026, 4, 16, 0)),
            Err(StepRefusal::ExtendedAlready)
        );
        assert!(!extended.is_overdue(end_of(2026, 6, 15)));
        assert!(extended.is_overdue(end_of(2026, 6, 15) + 1));
    }

    #[test]
    fn effects_wait_for_what_they_need() {
        let deletion =
            RightsRequest::file(RightKind::Deletion, Regime::Gdpr, 0, false, vec![]).unwrap();
        assert_eq!(deletion.effect_due(), None);
        let verified = deletion.advance(RequestState::InProgress, true, 1).unwrap();
        assert_eq!(verified.effect_due(), Some(Effect::Delete));
        assert_eq!(
            deletion
                .advance(RequestState::Verifying, false, 1)
                .unwrap()
                .advance(RequestState::InProgress, false, 2)
                .unwrap()
                .advance(RequestState::Completed, false, 3),
            Err(StepRefusal::DeletionUnverified)
        );
        let objection =
            RightsRequest::file(RightKind::Objection, Regime::Gdpr, 0, false, vec![]).unwrap();
        assert_eq!(
            objection.effect_due(),
            Some(Effect::RefuseChoices(vec![Purpose::ModelTraining]))
        );
        let restriction =
            RightsRequest::file(RightKind::Restriction, Regime::UsState, 0, false, vec![]).unwrap();
        assert_eq!(restriction.effect_due(), Some(Effect::Restrict));
        let refused = RightsRequest::file(RightKind::Deletion, Regime::Gdpr, 0, true, vec![])
            .unwrap()
            .advance(RequestState::Refused, false, 1)
            .unwrap();
        assert_eq!(refused.effect_due(), None);
        let access = RightsRequest::file(RightKind::Access, Regime::Gdpr, 0, true, vec![]).unwrap();
        assert_eq!(access.effect_due(), None);
    }

    #[test]
    fn records_are_kept_six_years_after_the_answer() {
        let filed = RightsRequest::file(RightKind::Access, Regime::Gdpr, 0, true, vec![]).unwrap();
        assert_eq!(filed.kept_until(), None);
        let answered_at = at(2026, 5, 2, 12);
        let completed = filed
            .advance(RequestState::InProgress, false, 1)
            .unwrap()
            .advance(RequestState::Completed, false, answered_at)
            .unwrap();
        assert_eq!(completed.kept_until(), Some(at(2032, 5, 2, 12)));
    }
}
