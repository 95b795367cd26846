//! Subjects: writes, no-ops, refusals, and GetSubject.

use assent::proto::{self, Choice, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, actor, assert_status};

fn upsert(subject_id: &str) -> proto::UpsertSubjectRequest {
    proto::UpsertSubjectRequest {
        subject_id: subject_id.into(),
        actor: actor(),
        ..Default::default()
    }
}

#[tokio::test]
async fn upsert_creates_then_changes_only_the_fields_present() {
    let app = TestApp::spawn().await;
    let mut subjects = app.subjects();
    let created = subjects
        .upsert_subject(proto::UpsertSubjectRequest {
            plan: Some(Plan::Pro as i32),
            jurisdiction: Some("US-CA".into()),
            gpc: Some(true),
            ..upsert("dana")
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let changed = subjects
        .upsert_subject(proto::UpsertSubjectRequest {
            zero_data_retention: Some(true),
            ..upsert("dana")
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_ne!(created, changed);
    let subject = subjects
        .get_subject(proto::GetSubjectRequest {
            subject_id: "dana".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(subject.plan(), Plan::Pro);
    assert_eq!(subject.jurisdiction, "US-CA");
    assert!(subject.gpc && subject.zero_data_retention);
    assert_eq!(subject.status(), proto::Status::Active);
    assert_eq!(subject.revision, changed);
}

#[tokio::test]
async fn a_subject_without_a_plan_is_not_trained_on() {
    let app = TestApp::spawn().await;
    app.subjects()
        .upsert_subject(upsert("no-plan"))
        .await
        .unwrap();
    let response = app.check("no-plan", Purpose::ModelTraining).await;
    assert_eq!(
        (response.rule.as_str(), response.reason()),
        ("T7", proto::Reason::PlanUnknown)
    );
}

#[tokio::test]
async fn get_subject_shows_choices_and_every_effective_decision() {
    let app = TestApp::spawn().await;
    app.upsert("erin", Plan::Free).await;
    app.set_choice("erin", Purpose::MarketingEmail, Choice::Granted)
        .await
        .unwrap();
    let revision = app
        .set_choice("erin", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    let subject = app
        .subjects()
        .get_subject(proto::GetSubjectRequest {
            subject_id: "erin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let choices: Vec<(Purpose, Choice)> = subject
        .choices
        .iter()
        .map(|record| (record.purpose(), record.choice()))
        .collect();
    assert_eq!(
        choices,
        vec![
            (Purpose::Memory, Choice::Refused),
            (Purpose::MarketingEmail, Choice::Granted)
        ]
    );
    assert!(
        subject
            .choices
            .iter()
            .all(|record| record.updated_at.is_some())
    );
    let purposes: Vec<i32> = subject
        .effective
        .iter()
        .map(|decision| decision.purpose)
        .collect();
    assert_eq!(
        purposes,
        (1..=10).collect::<Vec<_>>(),
        "one per purpose, in enum order"
    );
    let rules: Vec<&str> = subject.effective.iter().map(|d| d.rule.as_str()).collect();
    assert_eq!(
        rules,
        ["T6", "M1", "S1", "I2", "E1", "A2", "K3", "R2", "P2", "D1"]
    );
    assert!(subject.effective.iter().all(|d| d.revision == revision));
}

#[tokio::test]
async fn writes_that_change_nothing_record_nothing() {
    let app = TestApp::spawn().await;
    let mut subjects = app.subjects();
    let revision = app.upsert("frank", Plan::Free).await;
    let events_before = app.all_events(None).await.len();
    let repeated = app.upsert("frank", Plan::Free).await;
    let cleared = app
        .set_choice("frank", Purpose::Memory, Choice::Cleared)
        .await
        .unwrap();
    let unrestricted = subjects
        .set_restriction(proto::SetRestrictionRequest {
            subject_id: "frank".into(),
            restricted: false,
            actor: actor(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!([&repeated, &cleared, &unrestricted], [&revision; 3]);
    assert_eq!(app.all_events(None).await.len(), events_before);

    let deleted = subjects
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: "frank".into(),
            actor: actor(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let deleted_again = subjects
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: "frank".into(),
            actor: actor(),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(deleted, deleted_again);
    assert_eq!(app.all_events(None).await.len(), events_before + 1);
}

#[tokio::test]
async fn writes_to_a_subject_never_seen_are_not_found() {
    let app = TestApp::spawn().await;
    let mut subjects = app.subjects();
    let ghost = || "ghost".to_string();
    assert_status(
        subjects
            .set_choice(proto::SetChoiceRequest {
                subject_id: ghost(),
                purpose: Purpose::Memory as i32,
                choice: Choice::Refused as i32,
                actor: actor(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert_status(
        subjects
            .record_feedback(proto::RecordFeedbackRequest {
                subject_id: ghost(),
                conversation_id: "c-1".into(),
                rating: proto::Rating::ThumbsUp as i32,
                actor: actor(),
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert_status(
        subjects
            .flag_conversation(proto::FlagConversationRequest {
                subject_id: ghost(),
                conversation_id: "c-1".into(),
                kind: proto::FlagKind::AutomatedModeration as i32,
                actor: actor(),
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert_status(
        subjects
            .set_restriction(proto::SetRestrictionRequest {
                subject_id: ghost(),
                restricted: true,
                actor: actor(),
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert_status(
        subjects
            .delete_subject(proto::DeleteSubjectRequest {
                subject_id: ghost(),
                actor: actor(),
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert_status(
        subjects
            .get_subject(proto::GetSubjectRequest {
                subject_id: ghost(),
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert!(app.all_events(None).await.is_empty());
}

#[tokio::test]
async fn a_deleted_subject_stays_deleted() {
    let app = TestApp::spawn().await;
    let mut subjects = app.subjects();
    app.upsert("gina", Plan::Free).await;
    app.set_choice("gina", Purpose::MarketingEmail, Choice::Granted)
        .await
        .unwrap();
    subjects
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: "gina".into(),
            actor: actor(),
        })
        .await
        .unwrap();
    let events = app.all_events(Some("gina")).await.len();
    assert_status(
        subjects
            .upsert_subject(proto::UpsertSubjectRequest {
                plan: Some(Plan::Pro as i32),
                ..upsert("gina")
            })
            .await,
        Code::FailedPrecondition,
        "subject_id",
    );
    assert_status(
        app.set_choice("gina", Purpose::Memory, Choice::Refused)
            .await,
        Code::FailedPrecondition,
        "subject_id",
    );
    assert_status(
        subjects
            .set_restriction(proto::SetRestrictionRequest {
                subject_id: "gina".into(),
                restricted: false,
                actor: actor(),
            })
            .await,
        Code::FailedPrecondition,
        "subject_id",
    );
    assert_status(
        subjects
            .record_feedback(proto::RecordFeedbackRequest {
                subject_id: "gina".into(),
                conversation_id: "c-1".into(),
                rating: proto::Rating::ThumbsUp as i32,
                actor: actor(),
            })
            .await,
        Code::FailedPrecondition,
        "subject_id",
    );
    assert_eq!(app.all_events(Some("gina")).await.len(), events);
    let subject = subjects
        .get_subject(proto::GetSubjectRequest {
            subject_id: "gina".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(subject.status(), proto::Status::Deleted);
    assert!(
        subject.choices.is_empty(),
        "a deleted account keeps no choices"
    );
    assert!(subject.effective.iter().all(|d| d.rule == "G2"));
}

#[tokio::test]
async fn a_restricted_subject_still_accepts_writes() {
    let app = TestApp::spawn().await;
    let mut subjects = app.subjects();
    app.upsert("hugo", Plan::Free).await;
    let restrict = |restricted| proto::SetRestrictionRequest {
        subject_id: "hugo".into(),
        restricted,
        actor: actor(),
    };
    subjects.set_restriction(restrict(true)).await.unwrap();
    assert_eq!(app.check("hugo", Purpose::Memory).await.rule, "G3");
    app.set_choice("hugo", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    subjects.set_restriction(restrict(false)).await.unwrap();
    assert_eq!(app.check("hugo", Purpose::Memory).await.rule, "M1");
}

#[tokio::test]
async fn invalid_writes_name_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let mut subjects = app.subjects();
    app.upsert("ivan", Plan::Free).await;
    let events = app.all_events(None).await.len();
    let choice = |purpose: i32, choice: i32| proto::SetChoiceRequest {
        subject_id: "ivan".into(),
        purpose,
        choice,
        actor: actor(),
        ..Default::default()
    };
    assert_status(
        subjects
            .set_choice(choice(
                Purpose::ServiceDelivery as i32,
                Choice::Refused as i32,
            ))
            .await,
        Code::InvalidArgument,
        "purpose",
    );
    assert_status(
        subjects
            .set_choice(choice(
                Purpose::AbuseMonitoringRetention as i32,
                Choice::Granted as i32,
            ))
            .await,
        Code::InvalidArgument,
        "purpose",
    );
    assert_status(
        subjects
            .set_choice(choice(Purpose::Unspecified as i32, Choice::Refused as i32))
            .await,
        Code::InvalidArgument,
        "purpose",
    );
    assert_status(
        subjects
            .set_choice(choice(Purpose::Memory as i32, Choice::Unspecified as i32))
            .await,
        Code::InvalidArgument,
        "choice",
    );
    assert_status(
        subjects
            .set_choice(choice(Purpose::Memory as i32, 17))
            .await,
        Code::InvalidArgument,
        "choice",
    );
    assert_status(
        subjects
            .set_choice(proto::SetChoiceRequest {
                actor: None,
                ..choice(Purpose::Memory as i32, Choice::Refused as i32)
            })
            .await,
        Code::InvalidArgument,
        "actor",
    );
    assert_status(
        subjects
            .set_choice(proto::SetChoiceRequest {
                actor: Some(proto::Actor::default()),
                ..choice(Purpose::Memory as i32, Choice::Refused as i32)
            })
            .await,
        Code::InvalidArgument,
        "actor.operator_id",
    );
    assert_status(
        subjects
            .upsert_subject(proto::UpsertSubjectRequest {
                plan: Some(Plan::Unspecified as i32),
                ..upsert("ivan")
            })
            .await,
        Code::InvalidArgument,
        "plan",
    );
    assert_status(
        subjects
            .upsert_subject(proto::UpsertSubjectRequest {
                jurisdiction: Some("France".into()),
                ..upsert("ivan")
            })
            .await,
        Code::InvalidArgument,
        "jurisdiction",
    );
    assert_status(
        subjects.upsert_subject(upsert("not valid!")).await,
        Code::InvalidArgument,
        "subject_id",
    );
    assert_status(
        subjects
            .record_feedback(proto::RecordFeedbackRequest {
                subject_id: "ivan".into(),
                conversation_id: String::new(),
                rating: proto::Rating::ThumbsUp as i32,
                actor: actor(),
            })
            .await,
        Code::InvalidArgument,
        "conversation_id",
    );
    assert_status(
        subjects
            .record_feedback(proto::RecordFeedbackRequest {
                subject_id: "ivan".into(),
                conversation_id: "c-1".into(),
                rating: proto::Rating::Unspecified as i32,
                actor: actor(),
            })
            .await,
        Code::InvalidArgument,
        "rating",
    );
    assert_status(
        subjects
            .flag_conversation(proto::FlagConversationRequest {
                subject_id: "ivan".into(),
                conversation_id: "c-1".into(),
                kind: proto::FlagKind::Unspecified as i32,
                actor: actor(),
            })
            .await,
        Code::InvalidArgument,
        "kind",
    );
    assert_eq!(
        app.all_events(None).await.len(),
        events,
        "a refused write left a trace"
    );
    let subject = subjects
        .get_subject(proto::GetSubjectRequest {
            subject_id: "ivan".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(subject.choices.is_empty());
    assert_eq!(subject.plan(), Plan::Free);
}

#[tokio::test]
async fn every_change_gets_a_later_revision() {
    let app = TestApp::spawn().await;
    let first = app.upsert("judy", Plan::Free).await;
    let second = app
        .set_choice("judy", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    let third = app.upsert("kim", Plan::Pro).await;
    let parse = |token: &str| assent::revision::Revision::parse_token(token).unwrap();
    assert!(parse(&first) < parse(&second));
    assert!(parse(&second) < parse(&third));
}
