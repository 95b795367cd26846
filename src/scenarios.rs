//! Policy scenarios: steps applied to one fresh subject, then checks with their expected
//! decision, reason and rule. The format is that of `tests/fixtures/scenarios.json`; it is what
//! policy authors write, and the tests run every scenario against the engine alone and against a
//! running server.
//!
//! [`run_on`] applies the steps with the same pure change logic as the store
//! ([`crate::store::change::plan_change`]) and answers the checks with a decision function, with
//! no I/O: [`run_on_engine`] asks the built-in engine ([`crate::policy::evaluate`]),
//! [`run_on_policy`] a compiled policy file.

use std::collections::HashMap;

use serde::Deserialize;

use crate::domain::{ConversationId, Jurisdiction};
use crate::policy::{
    self, Choice, CompiledPolicy, ConversationFacts, Decision, FlagKind, Plan, Purpose, Question,
    Rating, Reason, Source, SubjectState,
};
use crate::store::change::{Command, SubjectFields, SubjectRecord, plan_change};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub policy_version: String,
    pub scenarios: Vec<Scenario>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub steps: Vec<Step>,
    pub checks: Vec<ScenarioCheck>,
}

/// One write, with enum values by their POLICY.md names.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Upsert {
        plan: Option<String>,
        jurisdiction: Option<String>,
        gpc: Option<bool>,
        zero_data_retention: Option<bool>,
    },
    Choice {
        purpose: String,
        choice: String,
    },
    Feedback {
        conversation_id: String,
        rating: String,
    },
    Flag {
        conversation_id: String,
        kind: String,
    },
    Restrict {
        restricted: bool,
    },
    Delete,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioCheck {
    pub purpose: String,
    pub conversation_id: Option<String>,
    pub source: Option<String>,
    pub expect: Expectation,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub decision: String,
    pub reason: String,
    pub rule: String,
}

impl ScenarioFile {
    pub fn parse(json: &str) -> Result<ScenarioFile, String> {
        serde_json::from_str(json).map_err(|error| format!("invalid scenario file: {error}"))
    }
}

fn name<T>(field: &str, text: &str, parse: fn(&str) -> Option<T>) -> Result<T, String> {
    parse(text).ok_or_else(|| format!("{field}: unknown value {text:?}"))
}

impl Step {
    /// The write this step stands for.
    pub fn command(&self) -> Result<Command, String> {
        let conversation = |text: &str| {
            ConversationId::parse(text).map_err(|error| format!("conversation_id: {error}"))
        };
        Ok(match self {
            Step::Upsert {
                plan,
                jurisdiction,
                gpc,
                zero_data_retention,
            } => Command::Upsert(SubjectFields {
                plan: plan
                    .as_deref()
                    .map(|text| name("plan", text, Plan::from_name))
                    .transpose()?,
                jurisdiction: jurisdiction
                    .as_deref()
                    .map(|text| {
                        Jurisdiction::parse(text).map_err(|error| format!("jurisdiction: {error}"))
                    })
                    .transpose()?,
                gpc: *gpc,
                zero_data_retention: *zero_data_retention,
            }),
            Step::Choice { purpose, choice } => Command::SetChoice {
                consent: Default::default(),
                purpose: name("purpose", purpose, Purpose::from_name)?,
                choice: match choice.as_str() {
                    "CLEARED" => None,
                    other => Some(name("choice", other, Choice::from_name)?),
                },
            },
            Step::Feedback {
                conversation_id,
                rating,
            } => Command::RecordFeedback {
                conversation_id: conversation(conversation_id)?,
                rating: name("rating", rating, Rating::from_name)?,
            },
            Step::Flag {
                conversation_id,
                kind,
            } => Command::FlagConversation {
                conversation_id: conversation(conversation_id)?,
                kind: name("kind", kind, FlagKind::from_name)?,
            },
            Step::Restrict { restricted } => Command::SetRestriction {
                restricted: *restricted,
            },
            Step::Delete => Command::Delete,
        })
    }
}

impl ScenarioCheck {
    pub fn purpose(&self) -> Result<Purpose, String> {
        name("purpose", &self.purpose, Purpose::from_name)
    }

    pub fn source(&self) -> Result<Source, String> {
        match &self.source {
            Some(text) => name("source", text, Source::from_name),
            None => Ok(Source::Conversation),
        }
    }
}

impl Expectation {
    /// Whether an answer matches, comparing canonical names.
    pub fn matches(&self, decision: Decision, reason: Reason, rule: &str) -> bool {
        self.decision == decision.as_str() && self.reason == reason.as_str() && self.rule == rule
    }
}

/// The answer to one check of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub scenario: String,
    pub check_index: usize,
    pub expected: Expectation,
    pub actual: Expectation,
}

impl CheckOutcome {
    pub fn passed(&self) -> bool {
        self.expected == self.actual
    }
}

/// Applies a scenario's steps in memory and answers its checks with the built-in engine.
pub fn run_on_engine(scenario: &Scenario) -> Result<Vec<CheckOutcome>, String> {
    run_on(scenario, |subject, question| {
        let rule = policy::evaluate(subject, question);
        let outcome = rule.outcome();
        Expectation {
            decision: outcome.decision.as_str().to_owned(),
            reason: outcome.reason.as_str().to_owned(),
            rule: rule.id().to_owned(),
        }
    })
}

/// Applies a scenario's steps in memory and answers its checks with a compiled policy.
pub fn run_on_policy(
    scenario: &Scenario,
    policy: &CompiledPolicy,
) -> Result<Vec<CheckOutcome>, String> {
    run_on(scenario, |subject, question| {
        let ruling = policy.evaluate(subject, question);
        Expectation {
            decision: ruling.decision.as_str().to_owned(),
            reason: ruling.reason.as_str().to_owned(),
            rule: ruling.rule.to_string(),
        }
    })
}

/// Applies a scenario's steps in memory, then answers each check with `decide`, given the
/// subject's state (`None` if no step created it) and the check's question.
pub fn run_on(
    scenario: &Scenario,
    mut decide: impl FnMut(Option<&SubjectState>, &Question) -> Expectation,
) -> Result<Vec<CheckOutcome>, String> {
    let mut subject: Option<SubjectRecord> = None;
    let mut conversations: HashMap<ConversationId, ConversationFacts> = HashMap::new();
    for (index, step) in scenario.steps.iter().enumerate() {
        let command = step
            .command()
            .map_err(|error| format!("step {index}: {error}"))?;
        let facts = command
            .conversation_id()
            .and_then(|id| conversations.get(id).copied());
        let change = plan_change(subject.as_ref(), facts, &command)
            .map_err(|refusal| format!("step {index}: refused ({refusal:?})"))?;
        if let Some(change) = change {
            if change.erase_personal_data {
                conversations.clear();
            }
            if let Some((id, facts)) = change.conversation {
                conversations.insert(id, facts);
            }
            subject = Some(change.subject);
        }
    }
    scenario
        .checks
        .iter()
        .enumerate()
        .map(|(check_index, check)| {
            let conversation = match &check.conversation_id {
                Some(text) => {
                    let id = ConversationId::parse(text)
                        .map_err(|error| format!("check {check_index}: {error}"))?;
                    conversations.get(&id).copied()
                }
                None => None,
            };
            let question = Question {
                purpose: check.purpose()?,
                source: check.source()?,
                conversation,
            };
            Ok(CheckOutcome {
                scenario: scenario.name.clone(),
                check_index,
                expected: check.expect.clone(),
                actual: decide(subject.as_ref().map(|record| &record.state), &question),
            })
        })
        .collect()
}
