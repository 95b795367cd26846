//! The policy engine alone: one decision, no I/O (criterion).
//!
//!     cargo bench --bench policy
//!
//! Subjects of each kind the request path meets (a consumer plan with choices, an opted-out
//! user, a rated conversation, an enterprise plan, a deleted account, an unknown subject), each
//! asked about model training and about every purpose, and the explanation a decision carries;
//! then 4,096 random questions in a row, where the branches of the built-in engine cannot all be
//! predicted. Each case runs on the built-in engine (`policy::evaluate`) and on the default
//! policy file compiled (`CompiledPolicy::builtin`).

use std::hint::black_box;
use std::time::Duration;

use assent::policy::{
    self, Choice, CompiledPolicy, ConversationFacts, Plan, Purpose, Question, Rating, Source,
    Status, SubjectState,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn subject(plan: Plan, training: Option<Choice>) -> SubjectState {
    let mut state = SubjectState::new();
    state.plan = Some(plan);
    state.choices.set(Purpose::ModelTraining, training);
    state.choices.set(Purpose::Memory, Some(Choice::Granted));
    state
        .choices
        .set(Purpose::MarketingEmail, Some(Choice::Refused));
    state
}

const BUILT_IN: &str = "built-in";
const COMPILED: &str = "compiled";

fn decisions(criterion: &mut Criterion) {
    let compiled = CompiledPolicy::builtin();
    let consumer = subject(Plan::Pro, None);
    let opted_out = subject(Plan::Free, Some(Choice::Refused));
    let enterprise = subject(Plan::Enterprise, None);
    let mut deleted = subject(Plan::Pro, None);
    deleted.status = Status::Deleted;
    let rated = Question {
        purpose: Purpose::ModelTraining,
        source: Source::Conversation,
        conversation: Some(ConversationFacts {
            feedback: Some(Rating::ThumbsUp),
            ..ConversationFacts::default()
        }),
    };
    let training = Question::about(Purpose::ModelTraining);
    let cases: [(&str, Option<&SubjectState>, &Question); 6] = [
        ("consumer plan, training", Some(&consumer), &training),
        ("opted out, training", Some(&opted_out), &training),
        ("opted out, rated conversation", Some(&opted_out), &rated),
        ("enterprise plan, training", Some(&enterprise), &training),
        ("deleted account", Some(&deleted), &training),
        ("unknown subject", None, &training),
    ];
    let mut group = criterion.benchmark_group("evaluate");
    for (name, state, question) in cases {
        group.bench_function(BenchmarkId::new(BUILT_IN, name), |bencher| {
            bencher.iter(|| policy::evaluate(black_box(state), black_box(question)))
        });
        group.bench_function(BenchmarkId::new(COMPILED, name), |bencher| {
            bencher.iter(|| compiled.evaluate(black_box(state), black_box(question)))
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("evaluate every purpose (10 decisions)");
    group.bench_function(BUILT_IN, |bencher| {
        bencher.iter(|| {
            for &purpose in Purpose::ALL {
                black_box(policy::evaluate(
                    black_box(Some(&consumer)),
                    &Question::about(purpose),
                ));
            }
        })
    });
    group.bench_function(COMPILED, |bencher| {
        bencher.iter(|| {
            for &purpose in Purpose::ALL {
                black_box(compiled.evaluate(black_box(Some(&consumer)), &Question::about(purpose)));
            }
        })
    });
    group.finish();

    let mut group = criterion.benchmark_group("decision with its outcome and explanation");
    group.bench_function(BUILT_IN, |bencher| {
        bencher.iter(|| {
            let rule = policy::evaluate(black_box(Some(&consumer)), black_box(&training));
            let outcome = rule.outcome();
            black_box((
                outcome.decision,
                outcome.reason,
                outcome.explanation,
                rule.id(),
            ));
        })
    });
    group.bench_function(COMPILED, |bencher| {
        bencher.iter(|| {
            let ruling = compiled.evaluate(black_box(Some(&consumer)), black_box(&training));
            black_box((
                ruling.decision,
                ruling.reason,
                &*ruling.explanation,
                &*ruling.rule,
            ));
        })
    });
    group.finish();

    let inputs = random_inputs(4_096);
    let mut group = criterion.benchmark_group("4096 random decisions with their outcome");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function(BUILT_IN, |bencher| {
        bencher.iter(|| {
            for (state, question) in black_box(&inputs) {
                let rule = policy::evaluate(state.as_ref(), question);
                let outcome = rule.outcome();
                black_box((outcome.decision, outcome.reason, outcome.explanation));
            }
        })
    });
    group.bench_function(COMPILED, |bencher| {
        bencher.iter(|| {
            for (state, question) in black_box(&inputs) {
                let ruling = compiled.evaluate(state.as_ref(), question);
                black_box((ruling.decision, ruling.reason, &*ruling.explanation));
            }
        })
    });
    group.finish();
}

/// Random questions about random subjects, every field drawn: one subject in eight never seen,
/// one known subject in eight deleted or restricted.
fn random_inputs(count: usize) -> Vec<(Option<SubjectState>, Question)> {
    let mut rng = fastrand::Rng::with_seed(4_096);
    let choices = [None, Some(Choice::Granted), Some(Choice::Refused)];
    let mut plans = vec![None];
    plans.extend(Plan::ALL.iter().copied().map(Some));
    (0..count)
        .map(|_| {
            let subject = (rng.u8(..8) != 0).then(|| {
                let mut state = SubjectState {
                    plan: *rng.choice(&plans).unwrap(),
                    status: match rng.u8(..16) {
                        0 => Status::Deleted,
                        1 => Status::Restricted,
                        _ => Status::Active,
                    },
                    gpc: rng.bool(),
                    zero_data_retention: rng.bool(),
                    ..SubjectState::new()
                };
                for &purpose in Purpose::ALL {
                    state.choices.set(purpose, *rng.choice(&choices).unwrap());
                }
                state
            });
            let conversation = rng.bool().then(|| ConversationFacts {
                feedback: *rng
                    .choice(&[None, Some(Rating::ThumbsUp), Some(Rating::ThumbsDown)])
                    .unwrap(),
                automated_moderation: rng.u8(..8) == 0,
                user_report: rng.u8(..8) == 0,
            });
            let question = Question {
                purpose: *rng.choice(Purpose::ALL).unwrap(),
                source: *rng.choice(Source::ALL).unwrap(),
                conversation,
            };
            (subject, question)
        })
        .collect()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decisions
}
criterion_main!(benches);
