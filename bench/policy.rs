//! The policy engine alone: one decision, no I/O (criterion).
//!
//!     cargo bench --bench policy
//!
//! Subjects of each kind the request path meets (a consumer plan with choices, an opted-out
//! user, a rated conversation, an enterprise plan, a deleted account, an unknown subject), each
//! asked about model training and about every purpose, and the explanation a decision carries.

use std::hint::black_box;

use assent::policy::{
    self, Choice, ConversationFacts, Plan, Purpose, Question, Rating, Source, Status, SubjectState,
};
use criterion::{Criterion, criterion_group, criterion_main};

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

fn decisions(criterion: &mut Criterion) {
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
        group.bench_function(name, |bencher| {
            bencher.iter(|| policy::evaluate(black_box(state), black_box(question)))
        });
    }
    group.finish();
    criterion.bench_function("evaluate every purpose (10 decisions)", |bencher| {
        bencher.iter(|| {
            for &purpose in Purpose::ALL {
                black_box(policy::evaluate(
                    black_box(Some(&consumer)),
                    &Question::about(purpose),
                ));
            }
        })
    });
    criterion.bench_function("decision with its outcome and explanation", |bencher| {
        bencher.iter(|| {
            let rule = policy::evaluate(black_box(Some(&consumer)), black_box(&training));
            let outcome = rule.outcome();
            black_box((
                outcome.decision,
                outcome.reason,
                outcome.explanation,
                rule.id(),
            ))
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
