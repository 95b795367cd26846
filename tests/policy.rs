//! The decision engine alone: the policy scenarios as data, properties over arbitrary states,
//! and an exhaustive sweep showing every rule of the table is reachable.

use std::collections::HashSet;

use assent::policy::{
    self, Choice, ConversationFacts, Decision, POLICY_VERSION, Plan, Purpose, Question, Rating,
    Rule, Source, Status, SubjectState,
};
use assent::scenarios::{ScenarioFile, run_on_engine};
use proptest::prelude::*;

const SCENARIOS: &str = include_str!("fixtures/scenarios.json");

#[test]
fn every_scenario_passes_on_the_engine() {
    let file = ScenarioFile::parse(SCENARIOS).unwrap();
    assert_eq!(file.policy_version, POLICY_VERSION);
    assert!(file.scenarios.len() >= 20, "the fixture lost scenarios");
    let mut failures = Vec::new();
    let mut checks = 0;
    for scenario in &file.scenarios {
        for outcome in run_on_engine(scenario).unwrap() {
            checks += 1;
            if !outcome.passed() {
                failures.push(format!(
                    "{} / check {}: expected {:?}, got {:?}",
                    outcome.scenario, outcome.check_index, outcome.expected, outcome.actual
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checks >= file.scenarios.len());
}

fn any_plan() -> impl Strategy<Value = Option<Plan>> {
    prop::option::of(prop::sample::select(Plan::ALL.to_vec()))
}

fn any_choice() -> impl Strategy<Value = Option<Choice>> {
    prop::option::of(prop::sample::select(Choice::ALL.to_vec()))
}

fn any_state() -> impl Strategy<Value = SubjectState> {
    (
        any_plan(),
        prop::sample::select(Status::ALL.to_vec()),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(any_choice(), Purpose::ALL.len()),
    )
        .prop_map(|(plan, status, gpc, zero_data_retention, choices)| {
            let mut state = SubjectState {
                plan,
                status,
                gpc,
                zero_data_retention,
                ..SubjectState::new()
            };
            for (purpose, choice) in Purpose::ALL.iter().zip(choices) {
                state.choices.set(*purpose, choice);
            }
            state
        })
}

fn any_question() -> impl Strategy<Value = Question> {
    let facts = (
        prop::option::of(prop::sample::select(Rating::ALL.to_vec())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(feedback, automated_moderation, user_report)| ConversationFacts {
                feedback,
                automated_moderation,
                user_report,
            },
        );
    (
        prop::sample::select(Purpose::ALL.to_vec()),
        prop::sample::select(Source::ALL.to_vec()),
        prop::option::of(facts),
    )
        .prop_map(|(purpose, source, conversation)| Question {
            purpose,
            source,
            conversation,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn deleted_and_restricted_subjects_are_never_processed(
        state in any_state(),
        question in any_question(),
    ) {
        let rule = policy::evaluate(Some(&state), &question);
        if state.status != Status::Active {
            prop_assert_eq!(rule.outcome().decision, Decision::Deny);
            prop_assert!(matches!(rule, Rule::G2 | Rule::G3));
        }
    }

    #[test]
    fn connector_data_never_trains(state in any_state(), question in any_question()) {
        let question = Question { purpose: Purpose::ModelTraining, source: Source::Connector, ..question };
        prop_assert_eq!(policy::evaluate(Some(&state), &question).outcome().decision, Decision::Deny);
    }

    #[test]
    fn a_deny_never_claims_a_basis_and_an_allow_always_does(
        state in prop::option::of(any_state()),
        question in any_question(),
    ) {
        let outcome = policy::evaluate(state.as_ref(), &question).outcome();
        match outcome.decision {
            Decision::Deny => prop_assert_eq!(outcome.basis, None),
            Decision::Allow => prop_assert!(outcome.basis.is_some()),
        }
    }

    #[test]
    fn every_decision_names_its_rule_and_explains_itself(
        state in prop::option::of(any_state()),
        question in any_question(),
    ) {
        let rule = policy::evaluate(state.as_ref(), &question);
        prop_assert!(!rule.id().is_empty());
        let explanation = rule.outcome().explanation;
        prop_assert!(!explanation.is_empty());
        prop_assert!(
            explanation.contains('§') || explanation.contains("terms of service") || explanation.contains("fail closed"),
            "{} cites no source: {}", rule, explanation
        );
    }

    #[test]
    fn an_opt_out_holds_unless_the_user_gave_feedback_or_was_flagged(
        state in any_state(),
        question in any_question(),
    ) {
        let mut state = state;
        state.choices.set(Purpose::ModelTraining, Some(Choice::Refused));
        let question = Question { purpose: Purpose::ModelTraining, ..question };
        let exception = question.conversation.is_some_and(|facts| !facts.is_empty());
        let decision = policy::evaluate(Some(&state), &question).outcome().decision;
        if !exception {
            prop_assert_eq!(decision, Decision::Deny);
        }
    }

    #[test]
    fn unknown_subjects_are_always_denied(question in any_question()) {
        prop_assert_eq!(policy::evaluate(None, &question), Rule::G1);
    }
}

/// Sweeps plans, statuses, signals, the choices the rules read, sources and conversation facts
/// for every purpose: every rule of the table is reached, and nothing else.
#[test]
fn every_rule_of_the_table_is_reachable() {
    let mut reached = HashSet::new();
    let choices = [None, Some(Choice::Granted), Some(Choice::Refused)];
    let conversations = [
        None,
        Some(ConversationFacts {
            feedback: Some(Rating::ThumbsUp),
            ..Default::default()
        }),
        Some(ConversationFacts {
            user_report: true,
            ..Default::default()
        }),
    ];
    let plans = std::iter::once(None).chain(Plan::ALL.iter().copied().map(Some));
    for plan in plans {
        for status in Status::ALL {
            for (gpc, zero_data_retention) in [(false, false), (true, true)] {
                for purpose in Purpose::ALL {
                    for own_choice in choices {
                        for memory_choice in choices {
                            for source in Source::ALL {
                                for conversation in conversations {
                                    let mut state = SubjectState {
                                        plan,
                                        status: *status,
                                        gpc,
                                        zero_data_retention,
                                        ..SubjectState::new()
                                    };
                                    state.choices.set(Purpose::Memory, memory_choice);
                                    state.choices.set(*purpose, own_choice);
                                    let question = Question {
                                        purpose: *purpose,
                                        source: *source,
                                        conversation,
                                    };
                                    reached.insert(policy::evaluate(Some(&state), &question));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    reached.insert(policy::evaluate(None, &Question::about(Purpose::Memory)));
    for purpose in Purpose::ALL {
        reached.insert(policy::degraded(*purpose));
    }
    let missing: Vec<&str> = Rule::ALL
        .iter()
        .filter(|rule| !reached.contains(rule))
        .map(|rule| rule.id())
        .collect();
    assert!(missing.is_empty(), "unreachable rules: {missing:?}");
}

#[test]
fn the_degraded_answer_fails_closed_except_for_service_delivery() {
    for purpose in Purpose::ALL {
        let outcome = policy::degraded(*purpose).outcome();
        assert_eq!(outcome.reason, policy::Reason::StateUnavailable);
        let expected = if *purpose == Purpose::ServiceDelivery {
            Decision::Allow
        } else {
            Decision::Deny
        };
        assert_eq!(outcome.decision, expected, "{purpose}");
    }
}

#[test]
fn rule_ids_are_unique() {
    let ids: HashSet<&str> = Rule::ALL.iter().map(|rule| rule.id()).collect();
    assert_eq!(ids.len(), Rule::ALL.len());
}
