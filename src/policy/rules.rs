//! The rules of the default policy (version `2026-01-01`) and what each one decides.
//!
//! A rule fixes its whole outcome: decision, reason, lawful basis and explanation. Evaluating a
//! request therefore only chooses a rule; everything else is a constant lookup, so a decision is
//! built without heap work.

use super::vocabulary::{Decision, LawfulBasis, Reason};

/// One row of the decision table of POLICY.md, plus the two fail-safe rows for a subject whose
/// state cannot be read (U1, U2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    G1,
    G2,
    G3,
    T1,
    T2,
    T3,
    T4,
    T5,
    T6,
    T7,
    M1,
    M2,
    S1,
    S2,
    S3,
    I1,
    I2,
    E1,
    E2,
    A1,
    A2,
    K1,
    K2,
    K3,
    R1,
    R2,
    P1,
    P2,
    D1,
    /// State unavailable: fail closed for every purpose but service delivery.
    U1,
    /// State unavailable: service delivery continues under the contract.
    U2,
}

/// What a rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    pub reason: Reason,
    pub basis: Option<LawfulBasis>,
    /// One sentence citing the policy section the rule comes from.
    pub explanation: &'static str,
}

const fn deny(reason: Reason, explanation: &'static str) -> Outcome {
    Outcome {
        decision: Decision::Deny,
        reason,
        basis: None,
        explanation,
    }
}

const fn allow(reason: Reason, basis: LawfulBasis, explanation: &'static str) -> Outcome {
    Outcome {
        decision: Decision::Allow,
        reason,
        basis: Some(basis),
        explanation,
    }
}

impl Rule {
    pub const ALL: &'static [Rule] = &[
        Rule::G1,
        Rule::G2,
        Rule::G3,
        Rule::T1,
        Rule::T2,
        Rule::T3,
        Rule::T4,
        Rule::T5,
        Rule::T6,
        Rule::T7,
        Rule::M1,
        Rule::M2,
        Rule::S1,
        Rule::S2,
        Rule::S3,
        Rule::I1,
        Rule::I2,
        Rule::E1,
        Rule::E2,
        Rule::A1,
        Rule::A2,
        Rule::K1,
        Rule::K2,
        Rule::K3,
        Rule::R1,
        Rule::R2,
        Rule::P1,
        Rule::P2,
        Rule::D1,
        Rule::U1,
        Rule::U2,
    ];

    /// The rule id of POLICY.md, such as `"T3"`.
    pub const fn id(self) -> &'static str {
        match self {
            Rule::G1 => "G1",
            Rule::G2 => "G2",
            Rule::G3 => "G3",
            Rule::T1 => "T1",
            Rule::T2 => "T2",
            Rule::T3 => "T3",
            Rule::T4 => "T4",
            Rule::T5 => "T5",
            Rule::T6 => "T6",
            Rule::T7 => "T7",
            Rule::M1 => "M1",
            Rule::M2 => "M2",
            Rule::S1 => "S1",
            Rule::S2 => "S2",
            Rule::S3 => "S3",
            Rule::I1 => "I1",
            Rule::I2 => "I2",
            Rule::E1 => "E1",
            Rule::E2 => "E2",
            Rule::A1 => "A1",
            Rule::A2 => "A2",
            Rule::K1 => "K1",
            Rule::K2 => "K2",
            Rule::K3 => "K3",
            Rule::R1 => "R1",
            Rule::R2 => "R2",
            Rule::P1 => "P1",
            Rule::P2 => "P2",
            Rule::D1 => "D1",
            Rule::U1 => "U1",
            Rule::U2 => "U2",
        }
    }

    /// The decision, reason, basis and explanation this rule gives.
    pub const fn outcome(self) -> Outcome {
        use LawfulBasis::{Consent, Contract, LegitimateInterest};
        use Reason::*;
        match self {
            Rule::G1 => deny(
                UnknownSubject,
                "denied: this subject has never been seen, so nothing may be processed (fail closed)",
            ),
            Rule::G2 => deny(
                SubjectDeleted,
                "denied: the account was deleted (privacy policy §8, right to deletion)",
            ),
            Rule::G3 => deny(
                ProcessingRestricted,
                "denied: the user asked to restrict the processing of their data (privacy policy §8, right to limitation of processing; GDPR art. 18)",
            ),
            Rule::T1 => deny(
                ConnectorDataExcluded,
                "training denied: content from a connected third-party service is never used for training (privacy policy §3, training row)",
            ),
            Rule::T2 => allow(
                ModerationFlag,
                LegitimateInterest,
                "training allowed: this conversation was flagged by moderation or reported as prohibited content (terms of service exception (c))",
            ),
            Rule::T3 => allow(
                FeedbackGrant,
                LegitimateInterest,
                "training allowed: the user rated this conversation (feedback grant, terms of service exception (b); privacy policy §2.1 Feedback)",
            ),
            Rule::T4 => deny(
                PlanExcluded,
                "training denied: Team, Enterprise and paid API plans are never used for training (privacy policy §3, training row)",
            ),
            Rule::T5 => deny(
                ChoiceRefused,
                "training denied: the user opted out of model training (privacy policy §8, right to object)",
            ),
            Rule::T6 => allow(
                PlanDefault,
                LegitimateInterest,
                "training allowed: free, Pro, Student and free API plans are used for training unless the user opts out (terms of service exception (a))",
            ),
            Rule::T7 => deny(
                PlanUnknown,
                "training denied: the subject's plan is unknown (fail closed)",
            ),
            Rule::M1 => deny(
                ChoiceRefused,
                "memory denied: the user turned Memories off (privacy policy §3, Memory row)",
            ),
            Rule::M2 => allow(
                LegitimateInterestDefault,
                LegitimateInterest,
                "memory allowed: Memories are on by default on legitimate interest until the user turns them off (privacy policy §3, Memory row)",
            ),
            Rule::S1 => deny(
                ChoiceRefused,
                "sensitive memory denied: the user turned Memories off (privacy policy §3, Memory row)",
            ),
            Rule::S2 => allow(
                ConsentGranted,
                Consent,
                "sensitive memory allowed: the user gave explicit consent to keep sensitive data as Memories (privacy policy §3, Memory row)",
            ),
            Rule::S3 => deny(
                ConsentRequired,
                "sensitive memory denied: it needs the user's explicit consent, which was not given (privacy policy §3, Memory row)",
            ),
            Rule::I1 => deny(
                ChoiceRefused,
                "IP geolocation denied: the user opted out in their preferences (privacy policy §3, first row)",
            ),
            Rule::I2 => allow(
                ContractDefault,
                Contract,
                "IP geolocation allowed: part of providing the products under the contract until the user opts out (privacy policy §3, first row)",
            ),
            Rule::E1 => allow(
                ConsentGranted,
                Consent,
                "marketing e-mail allowed: the user consented to marketing communications (privacy policy §3, communications row)",
            ),
            Rule::E2 => deny(
                ConsentRequired,
                "marketing e-mail denied: it needs the user's consent, which was not given (privacy policy §3, communications row)",
            ),
            Rule::A1 => allow(
                ConsentGranted,
                Consent,
                "analytics cookies allowed: the user consented to them (cookie policy §2-3)",
            ),
            Rule::A2 => deny(
                ConsentRequired,
                "analytics cookies denied: non-essential cookies need the user's consent, which was not given (cookie policy §2-3)",
            ),
            Rule::K1 => deny(
                GpcSignal,
                "marketing cookies denied: the browser sent a Global Privacy Control signal, an opt-out of sharing (privacy policy §9, US state rights)",
            ),
            Rule::K2 => allow(
                ConsentGranted,
                Consent,
                "marketing cookies allowed: the user consented to them (cookie policy §2-3)",
            ),
            Rule::K3 => deny(
                ConsentRequired,
                "marketing cookies denied: non-essential cookies need the user's consent, which was not given (cookie policy §2-3)",
            ),
            Rule::R1 => deny(
                ZeroDataRetention,
                "abuse-monitoring retention denied: zero data retention is activated (privacy policy §5, APIs)",
            ),
            Rule::R2 => allow(
                ContractDefault,
                Contract,
                "abuse-monitoring retention allowed: API inputs and outputs are kept thirty rolling days to monitor abuse (privacy policy §5, APIs)",
            ),
            Rule::P1 => deny(
                ChoiceRefused,
                "product improvement denied: the user objected to it (privacy policy §8, right to object)",
            ),
            Rule::P2 => allow(
                LegitimateInterestDefault,
                LegitimateInterest,
                "product improvement allowed on legitimate interest until the user objects (privacy policy §3, improvement row)",
            ),
            Rule::D1 => allow(
                ContractDefault,
                Contract,
                "service delivery allowed: needed to provide the products under the contract (privacy policy §3, first row)",
            ),
            Rule::U1 => deny(
                StateUnavailable,
                "denied: the subject's state cannot be read right now, so the fail-safe answer is given (fail closed)",
            ),
            Rule::U2 => allow(
                StateUnavailable,
                Contract,
                "service delivery allowed: the subject's state cannot be read right now, and delivering the service needs no consent (privacy policy §3, first row)",
            ),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.id())
    }
}
