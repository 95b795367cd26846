//! Decisions.Check, BatchCheck and StreamCheck.

use std::collections::{HashMap, HashSet};

use assent::proto::{self, Plan, Purpose, consistency::Requirement};
use prost::Message;
use tonic::Code;

use crate::helpers::{TestApp, actor, assert_status, check_request};

#[tokio::test]
async fn check_answers_with_every_field() {
    let app = TestApp::spawn().await;
    let revision = app.upsert("alice", Plan::Free).await;
    let response = app.check("alice", Purpose::ModelTraining).await;
    assert_eq!(response.subject_id, "alice");
    assert_eq!(response.purpose(), Purpose::ModelTraining);
    assert_eq!(response.conversation_id, "");
    assert_eq!(response.decision(), proto::Decision::Allow);
    assert_eq!(response.reason(), proto::Reason::PlanDefault);
    assert_eq!(response.basis(), proto::LawfulBasis::LegitimateInterest);
    assert_eq!(response.rule, "T6");
    assert_eq!(response.policy_version, "2026-01-01");
    assert_eq!(response.revision, revision);
    assert!(
        response
            .explanation
            .contains("terms of service exception (a)")
    );
    assert!(!response.degraded);
    let again = app.check("alice", Purpose::ModelTraining).await;
    assert_ne!(response.decision_id, again.decision_id);
    assert!(!response.decision_id.is_empty());
}

#[tokio::test]
async fn an_unknown_subject_is_denied_not_an_error() {
    let app = TestApp::spawn().await;
    for purpose in [Purpose::ModelTraining, Purpose::ServiceDelivery] {
        let response = app.check("never-seen", purpose).await;
        assert_eq!(response.decision(), proto::Decision::Deny);
        assert_eq!(response.reason(), proto::Reason::UnknownSubject);
        assert_eq!(response.rule, "G1");
        assert_eq!(response.basis(), proto::LawfulBasis::Unspecified);
    }
}

#[tokio::test]
async fn a_check_names_its_conversation_and_source() {
    let app = TestApp::spawn().await;
    app.upsert("bob", Plan::Team).await;
    app.subjects()
        .flag_conversation(proto::FlagConversationRequest {
            subject_id: "bob".into(),
            conversation_id: "c-9".into(),
            kind: proto::FlagKind::UserReport as i32,
            actor: actor(),
        })
        .await
        .unwrap();
    let mut request = check_request("bob", Purpose::ModelTraining);
    request.conversation_id = Some("c-9".into());
    let flagged = app
        .decisions()
        .check(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (flagged.rule.as_str(), flagged.conversation_id.as_str()),
        ("T2", "c-9")
    );
    request.source = proto::Source::Connector as i32;
    let connector = app.decisions().check(request).await.unwrap().into_inner();
    assert_eq!(connector.rule, "T1");
    assert_eq!(app.check("bob", Purpose::ModelTraining).await.rule, "T4");
}

#[tokio::test]
async fn malformed_checks_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut decisions = app.decisions();
    let cases: Vec<(proto::CheckRequest, &str)> = vec![
        (check_request("", Purpose::Memory), "subject_id"),
        (check_request("has space", Purpose::Memory), "subject_id"),
        (
            check_request(&"x".repeat(129), Purpose::Memory),
            "subject_id",
        ),
        (check_request("u", Purpose::Unspecified), "purpose"),
        (
            proto::CheckRequest {
                purpose: 42,
                ..check_request("u", Purpose::Memory)
            },
            "purpose",
        ),
        (
            proto::CheckRequest {
                conversation_id: Some(String::new()),
                ..check_request("u", Purpose::Memory)
            },
            "conversation_id",
        ),
        (
            proto::CheckRequest {
                conversation_id: Some("c/1".into()),
                ..check_request("u", Purpose::Memory)
            },
            "conversation_id",
        ),
        (
            proto::CheckRequest {
                source: 9,
                ..check_request("u", Purpose::Memory)
            },
            "source",
        ),
        (
            proto::CheckRequest {
                consistency: Some(proto::Consistency {
                    requirement: Some(Requirement::AtLeastAsFresh("not-a-token".into())),
                }),
                ..check_request("u", Purpose::Memory)
            },
            "consistency.at_least_as_fresh",
        ),
    ];
    for (request, field) in cases {
        assert_status(decisions.check(request).await, Code::InvalidArgument, field);
    }
}

#[tokio::test]
async fn consistency_requirements_are_honoured() {
    let app = TestApp::spawn().await;
    app.upsert("carol", Plan::Pro).await;
    let revision = app
        .set_choice("carol", Purpose::ModelTraining, proto::Choice::Refused)
        .await
        .unwrap();
    for requirement in [
        Requirement::AtLeastAsFresh(revision.clone()),
        Requirement::FullyConsistent(true),
        Requirement::MinimizeLatency(true),
    ] {
        let request = proto::CheckRequest {
            consistency: Some(proto::Consistency {
                requirement: Some(requirement),
            }),
            ..check_request("carol", Purpose::ModelTraining)
        };
        let response = app.decisions().check(request).await.unwrap().into_inner();
        assert_eq!(response.rule, "T5");
        assert_eq!(response.revision, revision);
    }
}

/// `checks` as one BatchCheck, each result checked to stand in its check's place, paired with
/// the answer to the same check asked alone afterwards.
async fn batch_and_singles(
    app: &TestApp,
    checks: &[proto::CheckRequest],
) -> Vec<(proto::CheckResponse, proto::CheckResponse)> {
    let results = app
        .decisions()
        .batch_check(proto::BatchCheckRequest {
            checks: checks.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), checks.len());
    let mut pairs = Vec::new();
    for (check, result) in checks.iter().zip(results) {
        assert_eq!(
            (&result.subject_id, result.purpose),
            (&check.subject_id, check.purpose)
        );
        let single = app.check(&check.subject_id, check.purpose()).await;
        pairs.push((result, single));
    }
    pairs
}

#[tokio::test]
async fn batch_check_answers_in_request_order() {
    let app = TestApp::spawn().await;
    app.upsert("free", Plan::Free).await;
    app.upsert("enterprise", Plan::Enterprise).await;
    let subjects = ["free", "enterprise", "ghost"];
    let checks: Vec<proto::CheckRequest> = (0..300)
        .map(|index| {
            let purpose = Purpose::try_from(1 + (index % 10) as i32).unwrap();
            check_request(subjects[index % subjects.len()], purpose)
        })
        .collect();
    let answers = batch_and_singles(&app, &checks).await;
    for (result, single) in &answers {
        assert_eq!(
            (&result.rule, result.decision),
            (&single.rule, single.decision)
        );
    }
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(result, _)| result.decision_id.as_str())
        .collect();
    assert_eq!(ids.len(), answers.len(), "decision ids repeat");
}

/// Checks that wait on the store (subjects not yet cached, fully consistent reads, a
/// `require_audit` check) overlap with each other and with answers from memory, and the batch
/// still answers each check in its place.
#[tokio::test]
async fn batch_check_keeps_order_when_reads_overlap() {
    let app = TestApp::spawn().await;
    let plans = [Plan::Free, Plan::Enterprise, Plan::Pro, Plan::Team];
    for index in 0..60 {
        app.upsert(&format!("cold-{index}"), plans[index % plans.len()])
            .await;
    }
    let checks: Vec<proto::CheckRequest> = (0..240)
        .map(|index| {
            let purpose = Purpose::try_from(1 + index % 10).unwrap();
            let mut check = check_request(&format!("cold-{}", index % 60), purpose);
            if index % 7 == 0 {
                check.consistency = Some(proto::Consistency {
                    requirement: Some(Requirement::FullyConsistent(true)),
                });
            }
            check.require_audit = index == 100;
            check
        })
        .collect();
    for (result, single) in batch_and_singles(&app, &checks).await {
        assert_eq!(
            (&result.rule, result.decision, &result.revision),
            (&single.rule, single.decision, &single.revision),
            "{}",
            result.subject_id
        );
    }
}

#[tokio::test]
async fn batch_check_limits_and_errors() {
    let app = TestApp::spawn().await;
    let mut decisions = app.decisions();
    let empty = decisions
        .batch_check(proto::BatchCheckRequest { checks: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.results.is_empty());
    let full = vec![check_request("u", Purpose::Memory); 1_000];
    let answered = decisions
        .batch_check(proto::BatchCheckRequest { checks: full })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.results.len(), 1_000);
    let too_many = vec![check_request("u", Purpose::Memory); 1_001];
    assert_status(
        decisions
            .batch_check(proto::BatchCheckRequest { checks: too_many })
            .await,
        Code::InvalidArgument,
        "checks:",
    );
    let mut one_bad = vec![check_request("u", Purpose::Memory); 10];
    one_bad[7].purpose = 0;
    assert_status(
        decisions
            .batch_check(proto::BatchCheckRequest { checks: one_bad })
            .await,
        Code::InvalidArgument,
        "checks[7].purpose",
    );
}

/// 2,000 checks over one stream, answered in order, each equal to the unary answer.
#[tokio::test]
async fn stream_check_answers_two_thousand_checks_in_order() {
    let app = TestApp::spawn().await;
    let plans = [
        Plan::Free,
        Plan::Pro,
        Plan::Team,
        Plan::ApiPaid,
        Plan::Student,
    ];
    for (index, plan) in plans.iter().enumerate() {
        app.upsert(&format!("s-{index}"), *plan).await;
    }
    app.set_choice("s-1", Purpose::ModelTraining, proto::Choice::Refused)
        .await
        .unwrap();
    app.rate("s-1", "c-1", proto::Rating::ThumbsDown).await;
    let requests: Vec<proto::CheckRequest> = (0..2_000)
        .map(|index| proto::CheckRequest {
            subject_id: format!("s-{}", (index / 10) % 6),
            purpose: 1 + (index % 10),
            conversation_id: Some(format!("c-{}", (index / 60) % 3)),
            ..Default::default()
        })
        .collect();
    let mut expected: HashMap<(String, i32, String), (String, i32)> = HashMap::new();
    for request in &requests {
        let key = (
            request.subject_id.clone(),
            request.purpose,
            request.conversation_id.clone().unwrap(),
        );
        if let std::collections::hash_map::Entry::Vacant(entry) = expected.entry(key) {
            let single = app
                .decisions()
                .check(request.clone())
                .await
                .unwrap()
                .into_inner();
            entry.insert((single.rule, single.decision));
        }
    }
    let outbound = tokio_stream::iter(requests.clone());
    let mut answers = app
        .decisions()
        .stream_check(outbound)
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(answer) = answers.message().await.unwrap() {
        let request = &requests[received];
        assert_eq!(answer.subject_id, request.subject_id, "answer {received}");
        assert_eq!(answer.purpose, request.purpose, "answer {received}");
        assert_eq!(
            Some(&answer.conversation_id),
            request.conversation_id.as_ref()
        );
        let key = (
            request.subject_id.clone(),
            request.purpose,
            answer.conversation_id.clone(),
        );
        assert_eq!(expected[&key], (answer.rule.clone(), answer.decision));
        received += 1;
    }
    assert_eq!(received, 2_000);
    // The feedback on c-1 beat the opt-out of s-1.
    let s1_training_c1 = (
        String::from("s-1"),
        Purpose::ModelTraining as i32,
        String::from("c-1"),
    );
    assert_eq!(expected[&s1_training_c1].0, "T3");
}

#[tokio::test]
async fn an_invalid_streamed_check_ends_the_stream() {
    let app = TestApp::spawn().await;
    let mut requests = vec![check_request("u", Purpose::Memory); 5];
    requests[3].subject_id = String::new();
    let mut answers = app
        .decisions()
        .stream_check(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        assert!(answers.message().await.unwrap().is_some());
    }
    assert_status(
        answers.message().await,
        Code::InvalidArgument,
        "stream[3].subject_id",
    );
}

/// Asserts `bare` answers what `full` does, with nothing else.
#[track_caller]
fn assert_bare_answer(bare: &proto::CheckResponse, full: &proto::CheckResponse) {
    assert_eq!(
        (
            bare.decision(),
            bare.reason(),
            bare.basis(),
            &bare.rule,
            &bare.revision,
            bare.degraded,
        ),
        (
            full.decision(),
            full.reason(),
            full.basis(),
            &full.rule,
            &full.revision,
            full.degraded,
        ),
        "{}",
        full.subject_id
    );
    assert_eq!(
        proto::CheckResponse {
            decision: bare.decision,
            reason: bare.reason,
            basis: bare.basis,
            rule: bare.rule.clone(),
            revision: bare.revision.clone(),
            degraded: bare.degraded,
            ..Default::default()
        },
        *bare,
        "a bare answer carries the decision alone"
    );
    assert!(!full.decision_id.is_empty());
}

fn bare(request: proto::CheckRequest) -> proto::CheckRequest {
    proto::CheckRequest {
        bare: true,
        ..request
    }
}

#[tokio::test]
async fn a_bare_check_answers_the_decision_alone() {
    let app = TestApp::spawn().await;
    app.upsert("free", Plan::Free).await;
    app.upsert("enterprise", Plan::Enterprise).await;
    app.upsert("pro", Plan::Pro).await;
    app.set_choice("pro", Purpose::ModelTraining, proto::Choice::Refused)
        .await
        .unwrap();
    let mut decisions = HashSet::new();
    for subject in ["free", "enterprise", "pro", "ghost"] {
        for purpose in [
            Purpose::ModelTraining,
            Purpose::ServiceDelivery,
            Purpose::Memory,
            Purpose::MarketingEmail,
        ] {
            for conversation in [None, Some("c-1")] {
                let mut request = check_request(subject, purpose);
                request.conversation_id = conversation.map(str::to_owned);
                let mut decisions_client = app.decisions();
                let full = decisions_client
                    .check(request.clone())
                    .await
                    .unwrap()
                    .into_inner();
                let answer = decisions_client
                    .check(bare(request))
                    .await
                    .unwrap()
                    .into_inner();
                assert_bare_answer(&answer, &full);
                assert!(answer.encoded_len() < 40, "{answer:?}");
                assert!(full.encoded_len() > 150, "{full:?}");
                decisions.insert(answer.decision());
            }
        }
    }
    assert_eq!(
        decisions,
        HashSet::from([proto::Decision::Allow, proto::Decision::Deny])
    );

    // As of an instant, and waiting for the decision log.
    let as_of = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
    for (subject, purpose) in [
        ("free", Purpose::ModelTraining),
        ("pro", Purpose::ModelTraining),
    ] {
        let request = proto::CheckRequest {
            as_of,
            require_audit: true,
            ..check_request(subject, purpose)
        };
        let full = app
            .decisions()
            .check(request.clone())
            .await
            .unwrap()
            .into_inner();
        let answer = app
            .decisions()
            .check(bare(request))
            .await
            .unwrap()
            .into_inner();
        assert_bare_answer(&answer, &full);
    }
}

#[tokio::test]
async fn batch_and_stream_checks_answer_bare_or_full_as_each_asks() {
    let app = TestApp::spawn().await;
    app.upsert("free", Plan::Free).await;
    app.upsert("enterprise", Plan::Enterprise).await;
    let subjects = ["free", "enterprise", "ghost"];
    let checks: Vec<proto::CheckRequest> = (0..60)
        .map(|index| {
            let purpose = Purpose::try_from(1 + (index % 10) as i32).unwrap();
            proto::CheckRequest {
                bare: index % 3 != 0,
                require_audit: index == 31,
                ..check_request(subjects[index % subjects.len()], purpose)
            }
        })
        .collect();
    let batch = app
        .decisions()
        .batch_check(proto::BatchCheckRequest {
            checks: checks.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let mut streamed = Vec::new();
    let mut answers = app
        .decisions()
        .stream_check(tokio_stream::iter(checks.clone()))
        .await
        .unwrap()
        .into_inner();
    while let Some(answer) = answers.message().await.unwrap() {
        streamed.push(answer);
    }
    assert_eq!((batch.len(), streamed.len()), (checks.len(), checks.len()));
    for (check, (batched, streamed)) in checks.iter().zip(batch.iter().zip(&streamed)) {
        let full = app
            .decisions()
            .check(proto::CheckRequest {
                bare: false,
                ..check.clone()
            })
            .await
            .unwrap()
            .into_inner();
        for answer in [batched, streamed] {
            if check.bare {
                assert_bare_answer(answer, &full);
            } else {
                assert_eq!(
                    (&answer.subject_id, answer.purpose, &answer.rule),
                    (&check.subject_id, check.purpose, &full.rule)
                );
                assert_eq!(answer.policy_version, full.policy_version);
                assert!(!answer.decision_id.is_empty());
            }
        }
    }
}
