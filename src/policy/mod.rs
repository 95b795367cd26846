//! The decision engine: a pure function of (subject state, question) → verdict.
//!
//! The policy exists twice. [`evaluate`] and [`Rule`] are the default policy written by hand,
//! the reference for tests and benchmarks (the built-in engine). [`CompiledPolicy`] is a policy
//! file (`policies/*.toml`, parsed in `file.rs`), checked and compiled into lookup tables
//! (`compiled.rs`); [`BUILTIN_POLICY`] is the default policy as such a file, and gives the same
//! answers as the built-in engine.
//!
//! Architecture Invariant: this module does no I/O, spawns nothing, allocates nothing on the
//! decision path, and knows nothing of gRPC, SQL or time. Everything it needs is in its
//! arguments, so it cannot fail and is tested with data tables.

mod compiled;
mod file;
mod retention;
pub mod rights;
mod rules;
mod vocabulary;

pub use compiled::{CompiledPolicy, Ruling};
pub use file::PolicyError;
pub use retention::{
    Consent, DataCategory, Event, EventSource, Keep, KeepRule, LegalHold, Period, Retention,
    RetentionFacts, RetentionRule, consent_purposes, retention,
};
pub use rules::{Outcome, Rule};
pub use vocabulary::{
    Choice, ConsentMethod, Decision, FlagKind, LawfulBasis, PURPOSE_COUNT, Plan, Purpose, Rating,
    Reason, Source, Status,
};

/// The default policy, `policies/2026-01-01.toml`: the hand-written engine as data.
pub const BUILTIN_POLICY: &str = include_str!("../../policies/2026-01-01.toml");

/// The version of the built-in policy: the effective date of the privacy policy it is derived
/// from.
pub const POLICY_VERSION: &str = "2026-01-01";

/// The choices of one subject, one slot per purpose (`None`: no choice, the default applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choices([Option<Choice>; PURPOSE_COUNT]);

impl Choices {
    pub fn get(&self, purpose: Purpose) -> Option<Choice> {
        self.0[purpose.index()]
    }

    pub fn set(&mut self, purpose: Purpose, choice: Option<Choice>) {
        self.0[purpose.index()] = choice;
    }

    /// The purposes with a choice, in purpose order.
    pub fn iter(&self) -> impl Iterator<Item = (Purpose, Choice)> + '_ {
        Purpose::ALL
            .iter()
            .filter_map(|purpose| self.get(*purpose).map(|choice| (*purpose, choice)))
    }
}

/// When each purpose's choice expires, in microseconds since the epoch: from that instant on the
/// choice no longer counts and the default applies again. The engine never reads it; it is
/// carried with the state so that [`SubjectState::at`] can drop what has expired wherever a
/// decision is made. 80 bytes, inline, so the state stays `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiries([i64; PURPOSE_COUNT]);

impl Expiries {
    /// The slot value of a choice that does not expire.
    const NEVER: i64 = i64::MAX;

    /// No choice expires.
    pub const fn none() -> Expiries {
        Expiries([Expiries::NEVER; PURPOSE_COUNT])
    }

    /// The instant the purpose's choice expires, `None` when it does not.
    pub fn get(&self, purpose: Purpose) -> Option<i64> {
        let at = self.0[purpose.index()];
        (at != Expiries::NEVER).then_some(at)
    }

    pub fn set(&mut self, purpose: Purpose, expires_at_micros: Option<i64>) {
        self.0[purpose.index()] = expires_at_micros.unwrap_or(Expiries::NEVER);
    }

    /// The purposes whose choice expires, with the instant, in purpose order.
    pub fn iter(&self) -> impl Iterator<Item = (Purpose, i64)> + '_ {
        Purpose::ALL
            .iter()
            .filter_map(|purpose| self.get(*purpose).map(|at| (*purpose, at)))
    }
}

impl Default for Expiries {
    fn default() -> Expiries {
        Expiries::none()
    }
}

/// What the policy reads of a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubjectState {
    /// `None` when no plan was ever set (training fails closed, rule T7).
    pub plan: Option<Plan>,
    pub status: Status,
    /// The browser sent Global Privacy Control.
    pub gpc: bool,
    /// The API organisation has zero data retention.
    pub zero_data_retention: bool,
    pub choices: Choices,
    /// When choices expire (read by [`SubjectState::at`], never by the engine).
    pub expiries: Expiries,
}

impl SubjectState {
    /// A subject that was just created with no field set.
    pub const fn new() -> SubjectState {
        SubjectState {
            plan: None,
            status: Status::Active,
            gpc: false,
            zero_data_retention: false,
            choices: Choices([None; PURPOSE_COUNT]),
            expiries: Expiries::none(),
        }
    }

    /// The state as it counts at `now_micros`: every choice whose expiry is at or before that
    /// instant is dropped (with its expiry), so the default applies to it again. Every
    /// decision is made on the state at the decision's instant, whatever tier it was read
    /// from and whether or not the expiry has been recorded yet.
    #[must_use]
    pub fn at(&self, now_micros: i64) -> SubjectState {
        let mut state = *self;
        for purpose in Purpose::ALL {
            if state
                .expiries
                .get(*purpose)
                .is_some_and(|expires_at| expires_at <= now_micros)
            {
                state.set_choice(*purpose, None, None);
            }
        }
        state
    }

    /// The first instant after `now_micros` at which one of the subject's choices expires: until
    /// then no decision on this state changes by time alone. Every purpose's expiry counts, not
    /// only the purpose asked about: an answer may hold for less than it could, never more.
    #[must_use]
    pub fn next_expiry_after(&self, now_micros: i64) -> Option<i64> {
        self.expiries
            .iter()
            .map(|(_, expires_at)| expires_at)
            .filter(|expires_at| *expires_at > now_micros)
            .min()
    }

    /// Sets a purpose's choice and the instant it expires (`None`: it does not).
    pub fn set_choice(
        &mut self,
        purpose: Purpose,
        choice: Option<Choice>,
        expires_at: Option<i64>,
    ) {
        self.choices.set(purpose, choice);
        self.expiries.set(purpose, expires_at);
    }
}

impl Default for SubjectState {
    fn default() -> Self {
        SubjectState::new()
    }
}

/// What is known of one conversation of a subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversationFacts {
    /// The latest rating the user gave; either rating counts as feedback.
    pub feedback: Option<Rating>,
    /// Flagged by automated moderation.
    pub automated_moderation: bool,
    /// Reported as prohibited content.
    pub user_report: bool,
}

impl ConversationFacts {
    pub const fn has_feedback(&self) -> bool {
        self.feedback.is_some()
    }

    pub const fn has_moderation_flag(&self) -> bool {
        self.automated_moderation || self.user_report
    }

    pub const fn has_flag(&self, kind: FlagKind) -> bool {
        match kind {
            FlagKind::AutomatedModeration => self.automated_moderation,
            FlagKind::UserReport => self.user_report,
        }
    }

    pub fn set_flag(&mut self, kind: FlagKind) {
        match kind {
            FlagKind::AutomatedModeration => self.automated_moderation = true,
            FlagKind::UserReport => self.user_report = true,
        }
    }

    pub const fn is_empty(&self) -> bool {
        !self.has_feedback() && !self.has_moderation_flag()
    }
}

/// The question asked of the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    pub purpose: Purpose,
    pub source: Source,
    /// The facts of the conversation the request names; `None` when it names none, or names one
    /// with no facts recorded (the two are decided alike).
    pub conversation: Option<ConversationFacts>,
}

impl Question {
    /// A question about a purpose in general: no conversation, data from conversations.
    pub const fn about(purpose: Purpose) -> Question {
        Question {
            purpose,
            source: Source::Conversation,
            conversation: None,
        }
    }
}

/// Decides one question. `subject` is `None` for a subject never seen.
pub fn evaluate(subject: Option<&SubjectState>, question: &Question) -> Rule {
    let Some(subject) = subject else {
        return Rule::G1;
    };
    match subject.status {
        Status::Deleted => return Rule::G2,
        Status::Restricted => return Rule::G3,
        Status::Active => {}
    }
    let choice = subject.choices.get(question.purpose);
    match question.purpose {
        Purpose::ModelTraining => model_training(subject, question),
        Purpose::Memory => match choice {
            Some(Choice::Refused) => Rule::M1,
            _ => Rule::M2,
        },
        Purpose::SensitiveMemory => {
            if subject.choices.get(Purpose::Memory) == Some(Choice::Refused) {
                Rule::S1
            } else if choice == Some(Choice::Granted) {
                Rule::S2
            } else {
                Rule::S3
            }
        }
        Purpose::IpGeolocation => match choice {
            Some(Choice::Refused) => Rule::I1,
            _ => Rule::I2,
        },
        Purpose::MarketingEmail => match choice {
            Some(Choice::Granted) => Rule::E1,
            _ => Rule::E2,
        },
        Purpose::AnalyticsCookies => match choice {
            Some(Choice::Granted) => Rule::A1,
            _ => Rule::A2,
        },
        Purpose::MarketingCookies => {
            if subject.gpc {
                Rule::K1
            } else if choice == Some(Choice::Granted) {
                Rule::K2
            } else {
                Rule::K3
            }
        }
        Purpose::AbuseMonitoringRetention => {
            if subject.zero_data_retention {
                Rule::R1
            } else {
                Rule::R2
            }
        }
        Purpose::ProductImprovement => match choice {
            Some(Choice::Refused) => Rule::P1,
            _ => Rule::P2,
        },
        Purpose::ServiceDelivery => Rule::D1,
    }
}

fn model_training(subject: &SubjectState, question: &Question) -> Rule {
    if question.source == Source::Connector {
        return Rule::T1;
    }
    if let Some(conversation) = &question.conversation {
        if conversation.has_moderation_flag() {
            return Rule::T2;
        }
        if conversation.has_feedback() {
            return Rule::T3;
        }
    }
    match subject.plan {
        Some(Plan::Team | Plan::Enterprise | Plan::ApiPaid) => Rule::T4,
        _ if subject.choices.get(Purpose::ModelTraining) == Some(Choice::Refused) => Rule::T5,
        Some(Plan::Free | Plan::Pro | Plan::Student | Plan::ApiFree) => Rule::T6,
        None => Rule::T7,
    }
}

/// The fail-safe answer when the subject's state cannot be read (store down, nothing cached):
/// never a guessed ALLOW for a purpose that needs consent or allows an opt-out.
pub const fn degraded(purpose: Purpose) -> Rule {
    match purpose {
        Purpose::ServiceDelivery => Rule::U2,
        _ => Rule::U1,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A free user who granted analytics cookies until `expires_at` and refused training for
    /// good.
    pub(crate) fn granted_until(expires_at: i64) -> SubjectState {
        let mut state = SubjectState {
            plan: Some(Plan::Free),
            ..SubjectState::new()
        };
        state.set_choice(
            Purpose::AnalyticsCookies,
            Some(Choice::Granted),
            Some(expires_at),
        );
        state.set_choice(Purpose::ModelTraining, Some(Choice::Refused), None);
        state
    }

    #[test]
    fn a_choice_counts_until_its_expiry_and_not_from_it() {
        let expires_at = 1_800_000_000_000_000;
        let state = granted_until(expires_at);
        let cookies = Question::about(Purpose::AnalyticsCookies);
        let training = Question::about(Purpose::ModelTraining);
        // (instant, the analytics rule, the analytics choice left)
        let table = [
            (i64::MIN, Rule::A1, Some(Choice::Granted)),
            (expires_at - 1_000_000, Rule::A1, Some(Choice::Granted)),
            (expires_at - 1, Rule::A1, Some(Choice::Granted)),
            (expires_at, Rule::A2, None),
            (expires_at + 1, Rule::A2, None),
            (i64::MAX, Rule::A2, None),
        ];
        for (now, rule, choice) in table {
            let at = state.at(now);
            assert_eq!(evaluate(Some(&at), &cookies), rule, "at {now}");
            assert_eq!(
                at.choices.get(Purpose::AnalyticsCookies),
                choice,
                "at {now}"
            );
            // The choice without an expiry is never dropped.
            assert_eq!(evaluate(Some(&at), &training), Rule::T5, "at {now}");
            assert_eq!(
                at.expiries.get(Purpose::AnalyticsCookies),
                choice.map(|_| expires_at),
                "at {now}"
            );
        }
    }

    #[test]
    fn expiries_drop_only_their_own_purpose_and_leave_the_rest() {
        let mut state = granted_until(2_000);
        state.set_choice(Purpose::MarketingEmail, Some(Choice::Granted), Some(1_000));
        let at = state.at(1_500);
        assert_eq!(at.choices.get(Purpose::MarketingEmail), None);
        assert_eq!(
            at.choices.get(Purpose::AnalyticsCookies),
            Some(Choice::Granted)
        );
        assert_eq!(
            at.expiries.iter().collect::<Vec<_>>(),
            [(Purpose::AnalyticsCookies, 2_000)]
        );
        assert_eq!(
            (at.plan, at.status, at.gpc),
            (state.plan, state.status, state.gpc)
        );
        assert_eq!(state.next_expiry_after(0), Some(1_000));
        assert_eq!(state.next_expiry_after(999), Some(1_000));
        assert_eq!(state.next_expiry_after(1_000), Some(2_000));
        assert_eq!(state.next_expiry_after(2_000), None);
        assert_eq!(SubjectState::new().next_expiry_after(0), None);
        // Nothing expires: the same state.
        let unexpired = granted_until(2_000);
        assert_eq!(unexpired.at(1_999), unexpired);
        assert_eq!(SubjectState::new().at(i64::MAX), SubjectState::new());
    }
}
