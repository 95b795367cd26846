//! Every policy scenario of the fixture, through gRPC against a running server.

use assent::proto;
use assent::scenarios::{ScenarioFile, Step};

use crate::helpers::{TestApp, actor};

const SCENARIOS: &str = include_str!("../fixtures/scenarios.json");

fn wire<T: Into<i32>>(name: &str, from_str_name: fn(&str) -> Option<T>) -> i32 {
    from_str_name(name)
        .unwrap_or_else(|| panic!("unknown enum value {name}"))
        .into()
}

async fn apply(app: &TestApp, subject_id: &str, step: &Step) {
    let mut subjects = app.subjects();
    let subject_id = subject_id.to_owned();
    let result = match step {
        Step::Upsert {
            plan,
            jurisdiction,
            gpc,
            zero_data_retention,
        } => {
            subjects
                .upsert_subject(proto::UpsertSubjectRequest {
                    subject_id,
                    plan: plan.as_ref().map(|plan| {
                        wire::<proto::Plan>(&format!("PLAN_{plan}"), proto::Plan::from_str_name)
                    }),
                    jurisdiction: jurisdiction.clone(),
                    gpc: *gpc,
                    zero_data_retention: *zero_data_retention,
                    actor: actor(),
                })
                .await
        }
        Step::Choice { purpose, choice } => {
            subjects
                .set_choice(proto::SetChoiceRequest {
                    subject_id,
                    purpose: wire(&format!("PURPOSE_{purpose}"), proto::Purpose::from_str_name),
                    choice: wire(&format!("CHOICE_{choice}"), proto::Choice::from_str_name),
                    actor: actor(),
                    ..Default::default()
                })
                .await
        }
        Step::Feedback {
            conversation_id,
            rating,
        } => {
            subjects
                .record_feedback(proto::RecordFeedbackRequest {
                    subject_id,
                    conversation_id: conversation_id.clone(),
                    rating: wire(&format!("RATING_{rating}"), proto::Rating::from_str_name),
                    actor: actor(),
                })
                .await
        }
        Step::Flag {
            conversation_id,
            kind,
        } => {
            subjects
                .flag_conversation(proto::FlagConversationRequest {
                    subject_id,
                    conversation_id: conversation_id.clone(),
                    kind: wire(&format!("FLAG_KIND_{kind}"), proto::FlagKind::from_str_name),
                    actor: actor(),
                })
                .await
        }
        Step::Restrict { restricted } => {
            subjects
                .set_restriction(proto::SetRestrictionRequest {
                    subject_id,
                    restricted: *restricted,
                    actor: actor(),
                })
                .await
        }
        Step::Delete => {
            subjects
                .delete_subject(proto::DeleteSubjectRequest {
                    subject_id,
                    actor: actor(),
                })
                .await
        }
    };
    result.unwrap_or_else(|status| panic!("step {step:?} failed: {status}"));
}

#[tokio::test]
async fn every_scenario_passes_through_grpc() {
    let file = ScenarioFile::parse(SCENARIOS).unwrap();
    let app = TestApp::spawn().await;
    let mut failures = Vec::new();
    for (index, scenario) in file.scenarios.iter().enumerate() {
        let subject_id = format!("scenario-{index}");
        for step in &scenario.steps {
            apply(&app, &subject_id, step).await;
        }
        for (check_index, check) in scenario.checks.iter().enumerate() {
            let request = proto::CheckRequest {
                subject_id: subject_id.clone(),
                purpose: wire(
                    &format!("PURPOSE_{}", check.purpose),
                    proto::Purpose::from_str_name,
                ),
                conversation_id: check.conversation_id.clone(),
                source: check.source.as_ref().map_or(0, |source| {
                    wire(&format!("SOURCE_{source}"), proto::Source::from_str_name)
                }),
                ..Default::default()
            };
            let response = app.decisions().check(request).await.unwrap().into_inner();
            let actual = (
                response
                    .decision()
                    .as_str_name()
                    .trim_start_matches("DECISION_")
                    .to_owned(),
                response
                    .reason()
                    .as_str_name()
                    .trim_start_matches("REASON_")
                    .to_owned(),
                response.rule.clone(),
            );
            let expected = (
                check.expect.decision.clone(),
                check.expect.reason.clone(),
                check.expect.rule.clone(),
            );
            if actual != expected {
                failures.push(format!(
                    "{} / check {check_index}: expected {expected:?}, got {actual:?}",
                    scenario.name
                ));
            }
            assert!(!response.explanation.is_empty());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
