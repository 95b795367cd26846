//! The default policy file against the built-in engine: `policies/2026-01-01.toml`, compiled,
//! gives the same rule, decision, reason, basis and explanation as `policy::evaluate` +
//! `Rule::outcome` on every scenario of the fixture, on every input of a sweep of the input
//! space, and on random ones; and a second version of the file changes exactly the answers it
//! means to change.

use std::collections::BTreeSet;

use assent::calendar::{Date, MICROS_PER_DAY};
use assent::policy::{
    self, BUILTIN_POLICY, Choice, Choices, CompiledPolicy, ConversationFacts, Decision, Plan,
    Purpose, Question, Rating, Reason, Rule, Ruling, Source, Status, SubjectState,
};
use assent::scenarios::{Expectation, ScenarioFile, run_on, run_on_policy};

const SCENARIOS: &str = include_str!("fixtures/scenarios.json");

/// Whether a ruling is the built-in engine's rule, to the letter.
fn same(ruling: &Ruling, rule: Rule) -> bool {
    let outcome = rule.outcome();
    *ruling.rule == *rule.id()
        && ruling.decision == outcome.decision
        && ruling.reason == outcome.reason
        && ruling.basis == outcome.basis
        && *ruling.explanation == *outcome.explanation
}

fn assert_same(subject: Option<&SubjectState>, question: &Question) {
    let ruling = CompiledPolicy::builtin().evaluate(subject, question);
    let rule = policy::evaluate(subject, question);
    assert!(
        same(ruling, rule),
        "{subject:?} {question:?}: the file gives {ruling:?}, the engine {rule} {:?}",
        rule.outcome()
    );
}

#[test]
fn every_scenario_gets_the_engines_answers() {
    let file = ScenarioFile::parse(SCENARIOS).unwrap();
    assert_eq!(file.policy_version, CompiledPolicy::builtin().version());
    let mut checks = 0;
    for scenario in &file.scenarios {
        let outcomes = run_on(scenario, |subject, question| {
            checks += 1;
            assert_same(subject, question);
            let ruling = CompiledPolicy::builtin().evaluate(subject, question);
            Expectation {
                decision: ruling.decision.as_str().to_owned(),
                reason: ruling.reason.as_str().to_owned(),
                rule: ruling.rule.to_string(),
            }
        })
        .unwrap();
        assert_eq!(
            outcomes,
            run_on_policy(scenario, CompiledPolicy::builtin()).unwrap()
        );
        for outcome in outcomes {
            assert!(outcome.passed(), "{outcome:?}");
        }
    }
    assert!(checks >= file.scenarios.len());
}

#[test]
fn the_fail_safe_rulings_are_the_engines() {
    for &purpose in Purpose::ALL {
        let ruling = CompiledPolicy::builtin().degraded(purpose);
        let rule = policy::degraded(purpose);
        assert!(same(ruling, rule), "{purpose}: {ruling:?}, not {rule}");
    }
}

const CHOICE_VALUES: [Option<Choice>; 3] = [None, Some(Choice::Granted), Some(Choice::Refused)];

fn plans() -> Vec<Option<Plan>> {
    std::iter::once(None)
        .chain(Plan::ALL.iter().copied().map(Some))
        .collect()
}

/// Every set of choices where at most two purposes differ from a common background (no
/// choice, all granted or all refused).
fn choice_sets() -> Vec<Choices> {
    let mut codes = BTreeSet::new();
    let count = Purpose::ALL.len();
    for background in 0..3 {
        for first in 0..count {
            for second in first + 1..count {
                for first_value in 0..3 {
                    for second_value in 0..3 {
                        let mut values = vec![background; count];
                        values[first] = first_value;
                        values[second] = second_value;
                        codes.insert(values);
                    }
                }
            }
        }
    }
    codes
        .into_iter()
        .map(|values| {
            let mut choices = Choices::default();
            for (purpose, value) in Purpose::ALL.iter().zip(values) {
                choices.set(*purpose, CHOICE_VALUES[value]);
            }
            choices
        })
        .collect()
}

/// No conversation, and every combination of a conversation's facts.
fn conversations() -> Vec<Option<ConversationFacts>> {
    let mut conversations = vec![None];
    for feedback in [None, Some(Rating::ThumbsUp), Some(Rating::ThumbsDown)] {
        for automated_moderation in [false, true] {
            for user_report in [false, true] {
                conversations.push(Some(ConversationFacts {
                    feedback,
                    automated_moderation,
                    user_report,
                }));
            }
        }
    }
    conversations
}

fn questions() -> Vec<Question> {
    let mut questions = Vec::new();
    for &purpose in Purpose::ALL {
        for &source in Source::ALL {
            for conversation in conversations() {
                questions.push(Question {
                    purpose,
                    source,
                    conversation,
                });
            }
        }
    }
    questions
}

/// Every question about a subject never seen, and about every known subject: every status,
/// plan (or none), GPC and zero data retention, with `choice_sets`.
fn sweep(mut visit: impl FnMut(Option<&SubjectState>, &Question)) -> usize {
    let questions = questions();
    let mut count = 0;
    for question in &questions {
        visit(None, question);
    }
    count += questions.len();
    for choices in choice_sets() {
        for &status in Status::ALL {
            for plan in plans() {
                for gpc in [false, true] {
                    for zero_data_retention in [false, true] {
                        let state = SubjectState {
                            plan,
                            status,
                            gpc,
                            zero_data_retention,
                            choices,
                            ..SubjectState::new()
                        };
                        for question in &questions {
                            visit(Some(&state), question);
                        }
                        count += questions.len();
                    }
                }
            }
        }
    }
    count
}

#[test]
fn a_sweep_of_the_input_space_gets_the_engines_answers() {
    let count = sweep(assert_same);
    assert!(count > 10_000_000, "{count}");
}

#[test]
fn every_combination_of_every_purposes_choice_gets_the_engines_answers() {
    let all_choices = CHOICE_VALUES.len().pow(Purpose::ALL.len() as u32);
    let questions = [
        Question::about(Purpose::ModelTraining),
        Question::about(Purpose::Memory),
        Question::about(Purpose::SensitiveMemory),
        Question::about(Purpose::IpGeolocation),
        Question::about(Purpose::MarketingEmail),
        Question::about(Purpose::AnalyticsCookies),
        Question::about(Purpose::MarketingCookies),
        Question::about(Purpose::AbuseMonitoringRetention),
        Question::about(Purpose::ProductImprovement),
        Question::about(Purpose::ServiceDelivery),
    ];
    for code in 0..all_choices {
        let mut state = SubjectState {
            plan: Some(Plan::Free),
            ..SubjectState::new()
        };
        let mut rest = code;
        for &purpose in Purpose::ALL {
            state.choices.set(purpose, CHOICE_VALUES[rest % 3]);
            rest /= 3;
        }
        for question in &questions {
            assert_same(Some(&state), question);
        }
    }
}

/// A random state or a subject never seen, and a random question, every field drawn.
fn random_input(rng: &mut fastrand::Rng) -> (Option<SubjectState>, Question) {
    let subject = (rng.u8(..8) != 0).then(|| {
        let mut state = SubjectState {
            plan: rng.choice(plans()).unwrap(),
            status: *rng.choice(Status::ALL).unwrap(),
            gpc: rng.bool(),
            zero_data_retention: rng.bool(),
            ..SubjectState::new()
        };
        for &purpose in Purpose::ALL {
            state
                .choices
                .set(purpose, *rng.choice(&CHOICE_VALUES).unwrap());
        }
        state
    });
    let question = Question {
        purpose: *rng.choice(Purpose::ALL).unwrap(),
        source: *rng.choice(Source::ALL).unwrap(),
        conversation: rng.choice(conversations()).unwrap(),
    };
    (subject, question)
}

#[test]
fn random_inputs_get_the_engines_answers() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_2026_0101);
    let mut rules = BTreeSet::new();
    for _ in 0..100_000 {
        let (subject, question) = random_input(&mut rng);
        assert_same(subject.as_ref(), &question);
        rules.insert(policy::evaluate(subject.as_ref(), &question).id());
    }
    // Every rule but the fail-safe ones was drawn.
    assert_eq!(rules.len(), Rule::ALL.len() - 2, "{rules:?}");
}

/// The default policy changed by `replacements`, each of which must apply.
fn edited(replacements: &[(&str, &str)]) -> String {
    let mut source = BUILTIN_POLICY.to_owned();
    for (old, new) in replacements {
        assert!(source.contains(old), "the default policy lost {old:?}");
        source = source.replacen(old, new, 1);
    }
    source
}

const T4_DECEMBER: &str = "training denied: free, Team, Enterprise and paid API plans are never used for training (privacy policy effective 2026-12-01, §3, training row)";
const T6_DECEMBER: &str = "training allowed: Pro, Student and free API plans are used for training unless the user opts out (terms of service exception (a))";

/// The version of 2026-12-01: the free plan is no longer used for training.
fn december() -> CompiledPolicy {
    let source = edited(&[
        (r#"version = "2026-01-01""#, r#"version = "2026-12-01""#),
        ("effective_from = 2026-01-01", "effective_from = 2026-12-01"),
        (
            r#"plan = ["TEAM", "ENTERPRISE", "API_PAID"]"#,
            r#"plan = ["FREE", "TEAM", "ENTERPRISE", "API_PAID"]"#,
        ),
        (
            r#"plan = ["FREE", "PRO", "STUDENT", "API_FREE"]"#,
            r#"plan = ["PRO", "STUDENT", "API_FREE"]"#,
        ),
        (
            "training denied: Team, Enterprise and paid API plans are never used for training (privacy policy §3, training row)",
            "training denied: free, Team, Enterprise and paid API plans are never used for training (privacy policy effective {version}, §3, training row)",
        ),
        (
            "training allowed: free, Pro, Student and free API plans",
            "training allowed: Pro, Student and free API plans",
        ),
    ]);
    CompiledPolicy::compile(&source).unwrap()
}

#[test]
fn a_second_version_changes_exactly_what_it_says() {
    let december = december();
    assert_eq!(december.version(), "2026-12-01");
    let first_of_december = Date {
        year: 2026,
        month: 12,
        day: 1,
    };
    assert_eq!(
        december.effective_from_micros(),
        first_of_december.to_days() * MICROS_PER_DAY
    );
    let january = CompiledPolicy::builtin();
    let mut free_plan_denied = 0;
    sweep(|subject, question| {
        let before = january.evaluate(subject, question);
        let after = december.evaluate(subject, question);
        let free_plan_trains_by_default = question.purpose == Purpose::ModelTraining
            && subject.is_some_and(|state| {
                state.status == Status::Active && state.plan == Some(Plan::Free)
            })
            && question.source == Source::Conversation
            && !question
                .conversation
                .is_some_and(|facts| facts.has_feedback() || facts.has_moderation_flag());
        let expected = if free_plan_trains_by_default {
            free_plan_denied += 1;
            assert!(matches!(&*before.rule, "T5" | "T6"), "{before:?}");
            Ruling {
                rule: "T4".into(),
                decision: Decision::Deny,
                reason: Reason::PlanExcluded,
                basis: None,
                explanation: T4_DECEMBER.into(),
            }
        } else {
            let explanation = match &*before.rule {
                "T4" => T4_DECEMBER,
                "T6" => T6_DECEMBER,
                _ => &*before.explanation,
            };
            Ruling {
                rule: before.rule.clone(),
                decision: before.decision,
                reason: before.reason,
                basis: before.basis,
                explanation: explanation.into(),
            }
        };
        assert_eq!(after, &expected, "{subject:?} {question:?}");
    });
    assert!(free_plan_denied > 0);
    for &purpose in Purpose::ALL {
        assert_eq!(december.degraded(purpose), january.degraded(purpose));
    }
}

#[test]
fn a_version_allows_only_what_it_declares_where_the_state_says_stop() {
    let declaration = "allow = [\"SERVICE_DELIVERY\"]\n";
    let undeclared = edited(&[
        (r#"version = "2026-01-01""#, r#"version = "2026-12-01""#),
        ("effective_from = 2026-01-01", "effective_from = 2026-12-01"),
        (declaration, ""),
    ]);
    let error = CompiledPolicy::compile(&undeclared).unwrap_err();
    assert!(error.is_undeclared_allow());
    assert!(
        error
            .to_string()
            .starts_with("degraded.purposes.SERVICE_DELIVERY: rule `U2` allows SERVICE_DELIVERY"),
        "{error}"
    );
    // Stored before declarations were required, the same text loads and answers as the
    // declared one does, input for input.
    let stored = CompiledPolicy::compile_stored(&undeclared).unwrap();
    let declared = CompiledPolicy::compile(&undeclared.replacen(
        "purposes = { SERVICE_DELIVERY = \"U2\" }\n",
        &format!("purposes = {{ SERVICE_DELIVERY = \"U2\" }}\n{declaration}"),
        1,
    ))
    .unwrap();
    let visited = sweep(|subject, question| {
        assert_eq!(
            stored.evaluate(subject, question),
            declared.evaluate(subject, question)
        );
    });
    assert!(visited > 0);
    for &purpose in Purpose::ALL {
        assert_eq!(stored.degraded(purpose), declared.degraded(purpose));
    }
    // The default policy allows nothing to a deleted or restricted subject, and degrades to
    // an ALLOW for SERVICE_DELIVERY alone.
    let builtin = CompiledPolicy::builtin();
    sweep(|subject, question| {
        if subject.is_some_and(|state| state.status != Status::Active) {
            assert_eq!(builtin.evaluate(subject, question).decision, Decision::Deny);
        }
    });
    let degraded_allows: Vec<Purpose> = Purpose::ALL
        .iter()
        .copied()
        .filter(|purpose| builtin.degraded(*purpose).decision == Decision::Allow)
        .collect();
    assert_eq!(degraded_allows, [Purpose::ServiceDelivery]);
}
