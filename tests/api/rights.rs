//! Rights requests: each kind filed with its deadline and its effect on decisions, deadlines in
//! an EU and a US-CA jurisdiction with their extension, the states a request moves through
//! (each an audit event), the overdue listing at a simulated clock, and bad input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use assent::calendar::Date;
use assent::proto::{
    self, Decision, Plan, Purpose, Reason, RequestState, RightKind, rights_client::RightsClient,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, actor, assert_status, token, with_token};

fn rights(app: &TestApp) -> RightsClient<Channel> {
    RightsClient::new(app.channel())
}

async fn subject_in(app: &TestApp, subject_id: &str, jurisdiction: &str) {
    app.subjects()
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: subject_id.into(),
            plan: Some(Plan::Free as i32),
            jurisdiction: Some(jurisdiction.into()),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn filing(subject_id: &str, kind: RightKind) -> proto::FileRightsRequest {
    proto::FileRightsRequest {
        subject_id: subject_id.into(),
        kind: kind as i32,
        actor: actor(),
        ..Default::default()
    }
}

async fn file(
    app: &TestApp,
    request: proto::FileRightsRequest,
) -> Result<proto::RightsWriteResponse, tonic::Status> {
    rights(app)
        .file_request(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn advance(
    app: &TestApp,
    request_id: &str,
    state: RequestState,
    identity_verified: bool,
    reason: &str,
) -> Result<proto::RightsRequest, tonic::Status> {
    rights(app)
        .advance_request(proto::AdvanceRightsRequest {
            request_id: request_id.into(),
            state: state as i32,
            identity_verified,
            reason: reason.into(),
            actor: actor(),
        })
        .await
        .map(|response| response.into_inner().request.unwrap())
}

async fn overdue_at(app: &TestApp, at: &str, page_size: u32) -> Vec<proto::RightsRequest> {
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = rights(app)
            .list_overdue(proto::ListOverdueRights {
                at: Some(timestamp(at)),
                page_size,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        found.extend(page.requests);
        if page.next_page_token.is_empty() {
            return found;
        }
        page_token = page.next_page_token;
    }
}

fn timestamp(rfc3339: &str) -> prost_types::Timestamp {
    prost_types::Timestamp::from(humantime::parse_rfc3339(rfc3339).unwrap())
}

fn micros(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    let timestamp = timestamp.as_ref().expect("a timestamp");
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The decision for a purpose, read fully consistent (a rights write's effect is visible at once).
async fn decision(app: &TestApp, subject_id: &str, purpose: Purpose) -> (Decision, Reason) {
    let response = app
        .decisions()
        .check(proto::CheckRequest {
            subject_id: subject_id.into(),
            purpose: purpose as i32,
            consistency: Some(proto::Consistency {
                requirement: Some(proto::consistency::Requirement::FullyConsistent(true)),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (response.decision(), response.reason())
}

/// Kind, jurisdiction, purposes named, identity verified on filing, and the MODEL_TRAINING and
/// MARKETING_EMAIL decisions after filing.
type KindCase = (
    RightKind,
    &'static str,
    &'static [Purpose],
    bool,
    (Decision, Reason),
    (Decision, Reason),
);

#[tokio::test]
async fn each_kind_is_filed_with_its_effect_on_decisions() {
    let app = TestApp::spawn().await;
    let training_allowed = (Decision::Allow, Reason::PlanDefault);
    let table: &[KindCase] = &[
        (
            RightKind::Access,
            "FR",
            &[],
            true,
            training_allowed,
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::Portability,
            "DE",
            &[],
            true,
            training_allowed,
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::Rectification,
            "US-CA",
            &[],
            false,
            training_allowed,
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::PostMortem,
            "FR",
            &[],
            false,
            training_allowed,
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::Appeal,
            "US-CA",
            &[],
            true,
            training_allowed,
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::Objection,
            "FR",
            &[],
            false,
            (Decision::Deny, Reason::ChoiceRefused),
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::ConsentWithdrawal,
            "US-CA",
            &[Purpose::MarketingEmail],
            false,
            training_allowed,
            (Decision::Deny, Reason::ConsentRequired),
        ),
        (
            RightKind::Restriction,
            "FR",
            &[],
            false,
            (Decision::Deny, Reason::ProcessingRestricted),
            (Decision::Deny, Reason::ProcessingRestricted),
        ),
        // Deletion without a verified identity changes nothing.
        (
            RightKind::Deletion,
            "FR",
            &[],
            false,
            training_allowed,
            (Decision::Allow, Reason::ConsentGranted),
        ),
        (
            RightKind::Deletion,
            "US-CA",
            &[],
            true,
            (Decision::Deny, Reason::SubjectDeleted),
            (Decision::Deny, Reason::SubjectDeleted),
        ),
    ];
    for (index, (kind, jurisdiction, purposes, verified, training, marketing)) in
        table.iter().enumerate()
    {
        let subject_id = format!("rights-kind-{index}");
        subject_in(&app, &subject_id, jurisdiction).await;
        app.set_choice(&subject_id, Purpose::MarketingEmail, proto::Choice::Granted)
            .await
            .unwrap();
        assert_eq!(
            decision(&app, &subject_id, Purpose::ModelTraining).await,
            training_allowed
        );
        let events_before = app.all_events(Some(&subject_id)).await.len();
        let filed = file(
            &app,
            proto::FileRightsRequest {
                purposes: purposes.iter().map(|purpose| *purpose as i32).collect(),
                identity_verified: *verified,
                jurisdiction: String::new(),
                ..filing(&subject_id, *kind)
            },
        )
        .await
        .unwrap_or_else(|status| panic!("{kind:?}: {status:?}"));
        let request = filed.request.unwrap();
        assert_eq!(request.kind(), *kind);
        assert_eq!(request.state(), RequestState::Received);
        assert_eq!(request.jurisdiction, *jurisdiction, "{kind:?}");
        assert!(!request.overdue);
        assert_eq!(
            decision(&app, &subject_id, Purpose::ModelTraining).await,
            *training,
            "{kind:?} in {jurisdiction}: training"
        );
        assert_eq!(
            decision(&app, &subject_id, Purpose::MarketingEmail).await,
            *marketing,
            "{kind:?} in {jurisdiction}: marketing e-mail"
        );
        // The filing is one audit event; each change it made to the subject is one more.
        let events = app.all_events(Some(&subject_id)).await;
        let added: Vec<&str> = events[events_before..]
            .iter()
            .map(|event| event.kind.as_str())
            .collect();
        let expected_effect: &[&str] = match (kind, verified) {
            (RightKind::Objection, _) | (RightKind::ConsentWithdrawal, _) => &["choice_set"],
            (RightKind::Restriction, _) => &["restriction_set"],
            (RightKind::Deletion, true) => &["subject_deleted"],
            _ => &[],
        };
        assert_eq!(added[0], "rights_request_filed", "{kind:?}");
        assert_eq!(&added[1..], expected_effect, "{kind:?}");
        assert_eq!(
            request.effect_applied,
            !expected_effect.is_empty(),
            "{kind:?}"
        );
        // The write answers the revision of its last event.
        assert_eq!(filed.revision, events.last().unwrap().revision);
        if *kind == RightKind::ConsentWithdrawal {
            let subject = app
                .subjects()
                .get_subject(proto::GetSubjectRequest {
                    subject_id: subject_id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            let choice = subject
                .choices
                .iter()
                .find(|record| record.purpose() == Purpose::MarketingEmail)
                .unwrap();
            assert_eq!(choice.choice(), proto::Choice::Refused);
            assert_eq!(choice.method(), proto::ConsentMethod::RightsRequest);
        }
        for effect in &events[events_before + 1..] {
            let detail: serde_json::Value = serde_json::from_str(&effect.detail_json).unwrap();
            assert_eq!(detail["rights_request"], request.request_id.as_str());
        }
    }
    assert!(app.verify_chain().await.ok);
}

#[tokio::test]
async fn a_deletion_takes_effect_once_the_identity_is_verified() {
    let app = TestApp::spawn().await;
    subject_in(&app, "rights-delete", "FR").await;
    let request = file(&app, filing("rights-delete", RightKind::Deletion))
        .await
        .unwrap()
        .request
        .unwrap();
    assert!(!request.effect_applied);
    let verifying = advance(
        &app,
        &request.request_id,
        RequestState::Verifying,
        false,
        "",
    )
    .await
    .unwrap();
    assert!(!verifying.effect_applied);
    assert_eq!(
        decision(&app, "rights-delete", Purpose::Memory).await.1,
        Reason::LegitimateInterestDefault
    );
    // Completing an unverified deletion is refused, and changes nothing.
    let in_progress = advance(
        &app,
        &request.request_id,
        RequestState::InProgress,
        false,
        "",
    )
    .await
    .unwrap();
    let events = app.all_events(None).await.len();
    assert_status(
        advance(
            &app,
            &request.request_id,
            RequestState::Completed,
            false,
            "",
        )
        .await,
        Code::FailedPrecondition,
        "identity_verified",
    );
    assert_eq!(app.all_events(None).await.len(), events);
    assert!(!in_progress.effect_applied);
    let completed = advance(&app, &request.request_id, RequestState::Completed, true, "")
        .await
        .unwrap();
    assert!(completed.effect_applied && completed.identity_verified);
    assert_eq!(
        decision(&app, "rights-delete", Purpose::Memory).await,
        (Decision::Deny, Reason::SubjectDeleted)
    );
    let subject = app
        .subjects()
        .get_subject(proto::GetSubjectRequest {
            subject_id: "rights-delete".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(subject.status(), proto::Status::Deleted);
    // The request's record outlives the account: kept six years after its answer.
    let kept = rights(&app)
        .get_request(proto::GetRightsRequest {
            request_id: request.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let answered = micros(&kept.answered_at);
    let answered_date = Date::from_micros(answered);
    let six_years_later = Date {
        year: answered_date.year + 6,
        ..answered_date
    };
    assert_eq!(
        micros(&kept.kept_until),
        six_years_later.start_micros() + answered.rem_euclid(86_400_000_000)
    );
}

#[tokio::test]
async fn deadlines_are_those_of_the_subjects_jurisdiction() {
    let app = TestApp::spawn().await;
    subject_in(&app, "rights-eu", "FR").await;
    subject_in(&app, "rights-ca", "US-CA").await;
    let received = "2026-03-15T10:00:00Z";
    for (subject_id, due, regime) in [
        (
            "rights-eu",
            "2026-04-15T23:59:59.999999Z",
            proto::Regime::Gdpr,
        ),
        (
            "rights-ca",
            "2026-04-29T23:59:59.999999Z",
            proto::Regime::UsState,
        ),
    ] {
        let request = file(
            &app,
            proto::FileRightsRequest {
                received_at: Some(timestamp(received)),
                ..filing(subject_id, RightKind::Access)
            },
        )
        .await
        .unwrap()
        .request
        .unwrap();
        assert_eq!(request.regime(), regime, "{subject_id}");
        assert_eq!(
            micros(&request.due_at),
            micros(&Some(timestamp(due))),
            "{subject_id}"
        );
        // Long past: it is overdue, and too late to extend.
        assert!(request.overdue);
        assert_status(
            rights(&app)
                .extend_request(proto::ExtendRightsRequest {
                    request_id: request.request_id.clone(),
                    reason: "complex request".into(),
                    actor: actor(),
                })
                .await,
            Code::FailedPrecondition,
            "request_id",
        );
    }
    // The request's own jurisdiction wins over the subject's: 31 January + one month is the
    // last day of February.
    let request = file(
        &app,
        proto::FileRightsRequest {
            jurisdiction: "IE".into(),
            received_at: Some(timestamp("2026-01-31T08:00:00Z")),
            ..filing("rights-ca", RightKind::Access)
        },
    )
    .await
    .unwrap()
    .request
    .unwrap();
    assert_eq!(request.regime(), proto::Regime::Gdpr);
    assert_eq!(
        micros(&request.due_at),
        micros(&Some(timestamp("2026-02-28T23:59:59.999999Z")))
    );

    // Received ten days ago: extended once, by two months (GDPR) or 45 days (US).
    let received = now_micros() - 10 * 86_400_000_000;
    let received_date = Date::from_micros(received);
    for (subject_id, due, extended) in [
        (
            "rights-eu",
            received_date.add_months(1),
            received_date.add_months(3),
        ),
        (
            "rights-ca",
            Date::from_days(received_date.to_days() + 45),
            Date::from_days(received_date.to_days() + 90),
        ),
    ] {
        let request = file(
            &app,
            proto::FileRightsRequest {
                received_at: Some(prost_types::Timestamp::from(
                    UNIX_EPOCH + Duration::from_micros(received as u64),
                )),
                ..filing(subject_id, RightKind::Portability)
            },
        )
        .await
        .unwrap()
        .request
        .unwrap();
        assert_eq!(micros(&request.due_at), due.end_micros(), "{subject_id}");
        let extend = || proto::ExtendRightsRequest {
            request_id: request.request_id.clone(),
            reason: "the export spans several systems".into(),
            actor: actor(),
        };
        let after = rights(&app)
            .extend_request(extend())
            .await
            .unwrap()
            .into_inner()
            .request
            .unwrap();
        assert!(after.extended);
        assert_eq!(after.extension_reason, "the export spans several systems");
        assert_eq!(micros(&after.due_at), extended.end_micros(), "{subject_id}");
        assert_status(
            rights(&app).extend_request(extend()).await,
            Code::FailedPrecondition,
            "request_id",
        );
        let kinds: Vec<String> = app
            .all_events(Some(subject_id))
            .await
            .into_iter()
            .map(|event| event.kind)
            .collect();
        assert!(kinds.contains(&"rights_request_extended".to_owned()));
    }
}

#[tokio::test]
async fn overdue_requests_are_listed_at_a_simulated_clock() {
    let app = TestApp::spawn().await;
    subject_in(&app, "overdue-eu", "FR").await;
    subject_in(&app, "overdue-ca", "US-CA").await;
    let received = Some(timestamp("2026-01-10T09:00:00Z"));
    let eu = file(
        &app,
        proto::FileRightsRequest {
            received_at: received,
            ..filing("overdue-eu", RightKind::Access)
        },
    )
    .await
    .unwrap()
    .request
    .unwrap();
    let ca = file(
        &app,
        proto::FileRightsRequest {
            received_at: received,
            ..filing("overdue-ca", RightKind::Access)
        },
    )
    .await
    .unwrap()
    .request
    .unwrap();
    // Answered in time: never overdue.
    let answered = file(
        &app,
        proto::FileRightsRequest {
            received_at: received,
            ..filing("overdue-eu", RightKind::Rectification)
        },
    )
    .await
    .unwrap()
    .request
    .unwrap();
    advance(
        &app,
        &answered.request_id,
        RequestState::Refused,
        false,
        "not our data",
    )
    .await
    .unwrap();

    let ids = |requests: Vec<proto::RightsRequest>| {
        requests
            .into_iter()
            .map(|request| {
                assert!(request.overdue);
                request.request_id
            })
            .collect::<Vec<_>>()
    };
    // The EU answer is due by the end of 10 February, the US one by the end of 24 February.
    assert!(
        overdue_at(&app, "2026-02-10T23:59:59Z", 100)
            .await
            .is_empty()
    );
    assert_eq!(
        ids(overdue_at(&app, "2026-02-11T00:00:00Z", 100).await),
        vec![eu.request_id.clone()]
    );
    assert_eq!(
        ids(overdue_at(&app, "2026-02-25T00:00:00Z", 1).await),
        [eu.request_id.clone(), ca.request_id.clone()]
    );
    // Answered, it is no longer overdue.
    advance(&app, &eu.request_id, RequestState::InProgress, true, "")
        .await
        .unwrap();
    advance(&app, &eu.request_id, RequestState::Completed, false, "")
        .await
        .unwrap();
    assert_eq!(
        ids(overdue_at(&app, "2026-02-25T00:00:00Z", 100).await),
        vec![ca.request_id.clone()]
    );
    // The subject's listing holds all of its requests, oldest received first.
    let listed = rights(&app)
        .list_requests(proto::ListRightsRequests {
            subject_id: "overdue-eu".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.requests.len(), 2);
    assert!(listed.next_page_token.is_empty());
    // An oversize page is lowered to the maximum, as in every listing, not refused.
    let oversize = rights(&app)
        .list_requests(proto::ListRightsRequests {
            subject_id: "overdue-eu".into(),
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(oversize.requests.len(), 2);
}

#[tokio::test]
async fn a_us_request_moves_through_every_state_and_each_step_is_audited() {
    let app = TestApp::spawn().await;
    subject_in(&app, "states-ca", "US-CA").await;
    subject_in(&app, "states-eu", "FR").await;
    let request = file(&app, filing("states-ca", RightKind::Access))
        .await
        .unwrap()
        .request
        .unwrap();
    let id = request.request_id.as_str();
    assert_status(
        advance(&app, id, RequestState::Completed, false, "").await,
        Code::FailedPrecondition,
        "state",
    );
    assert_status(
        advance(&app, id, RequestState::Refused, false, "").await,
        Code::InvalidArgument,
        "reason",
    );
    advance(&app, id, RequestState::Verifying, false, "")
        .await
        .unwrap();
    advance(&app, id, RequestState::InProgress, true, "")
        .await
        .unwrap();
    let refused = advance(
        &app,
        id,
        RequestState::Refused,
        false,
        "manifestly unfounded",
    )
    .await
    .unwrap();
    assert_eq!(refused.refusal_reason, "manifestly unfounded");
    assert!(refused.kept_until.is_some());
    let appealed = advance(&app, id, RequestState::Appealed, false, "")
        .await
        .unwrap();
    assert!(appealed.appealed && appealed.kept_until.is_none());
    let appeal_day = Date::from_micros(micros(&appealed.updated_at));
    assert_eq!(
        micros(&appealed.due_at),
        Date::from_days(appeal_day.to_days() + 45).end_micros()
    );
    let answered = advance(&app, id, RequestState::Completed, false, "")
        .await
        .unwrap();
    assert_status(
        advance(&app, id, RequestState::Appealed, false, "").await,
        Code::FailedPrecondition,
        "state",
    );
    assert_eq!(answered.state(), RequestState::Completed);

    let steps: Vec<(String, String)> = app
        .all_events(Some("states-ca"))
        .await
        .into_iter()
        .filter(|event| event.kind.starts_with("rights_request"))
        .map(|event| {
            let detail: serde_json::Value = serde_json::from_str(&event.detail_json).unwrap();
            assert_eq!(detail["request_id"], id);
            (
                event.kind,
                detail["after"]["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("rights_request_filed", "RECEIVED"),
        ("rights_request_advanced", "VERIFYING"),
        ("rights_request_advanced", "IN_PROGRESS"),
        ("rights_request_advanced", "REFUSED"),
        ("rights_request_advanced", "APPEALED"),
        ("rights_request_advanced", "COMPLETED"),
    ];
    assert_eq!(
        steps,
        expected.map(|(kind, state)| (kind.to_owned(), state.to_owned()))
    );

    // The GDPR gives no appeal to the controller.
    let eu = file(&app, filing("states-eu", RightKind::Access))
        .await
        .unwrap()
        .request
        .unwrap();
    advance(
        &app,
        &eu.request_id,
        RequestState::Refused,
        false,
        "excessive",
    )
    .await
    .unwrap();
    assert_status(
        advance(&app, &eu.request_id, RequestState::Appealed, false, "").await,
        Code::FailedPrecondition,
        "state",
    );
    assert_status(
        file(&app, filing("states-eu", RightKind::Appeal)).await,
        Code::FailedPrecondition,
        "kind",
    );
}

#[tokio::test]
async fn bad_requests_name_their_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    subject_in(&app, "bad-rights", "FR").await;
    app.subjects()
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: "nowhere".into(),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    let events = app.all_events(None).await.len();
    let cases: Vec<(proto::FileRightsRequest, Code, &str)> = vec![
        (
            filing("", RightKind::Access),
            Code::InvalidArgument,
            "subject_id",
        ),
        (
            filing("never-seen", RightKind::Access),
            Code::NotFound,
            "subject_id",
        ),
        (
            filing("bad-rights", RightKind::Unspecified),
            Code::InvalidArgument,
            "kind",
        ),
        (
            proto::FileRightsRequest {
                kind: 99,
                ..filing("bad-rights", RightKind::Access)
            },
            Code::InvalidArgument,
            "kind",
        ),
        (
            proto::FileRightsRequest {
                jurisdiction: "France".into(),
                ..filing("bad-rights", RightKind::Access)
            },
            Code::InvalidArgument,
            "jurisdiction",
        ),
        (
            filing("nowhere", RightKind::Access),
            Code::FailedPrecondition,
            "jurisdiction",
        ),
        (
            proto::FileRightsRequest {
                purposes: vec![Purpose::MarketingEmail as i32],
                ..filing("bad-rights", RightKind::Access)
            },
            Code::InvalidArgument,
            "purposes",
        ),
        (
            filing("bad-rights", RightKind::ConsentWithdrawal),
            Code::InvalidArgument,
            "purposes",
        ),
        (
            proto::FileRightsRequest {
                purposes: vec![Purpose::ServiceDelivery as i32],
                ..filing("bad-rights", RightKind::ConsentWithdrawal)
            },
            Code::InvalidArgument,
            "purposes[0]",
        ),
        (
            proto::FileRightsRequest {
                received_at: Some(prost_types::Timestamp::from(
                    SystemTime::now() + Duration::from_secs(3_600),
                )),
                ..filing("bad-rights", RightKind::Access)
            },
            Code::InvalidArgument,
            "received_at",
        ),
        (
            proto::FileRightsRequest {
                actor: None,
                ..filing("bad-rights", RightKind::Access)
            },
            Code::InvalidArgument,
            "actor",
        ),
    ];
    for (request, code, field) in cases {
        assert_status(file(&app, request).await, code, field);
    }
    assert_status(
        advance(&app, "not-a-uuid", RequestState::Verifying, false, "").await,
        Code::InvalidArgument,
        "request_id",
    );
    assert_status(
        advance(
            &app,
            "0190b6d2-0000-7000-8000-000000000000",
            RequestState::Verifying,
            false,
            "",
        )
        .await,
        Code::NotFound,
        "request_id",
    );
    let filed = file(&app, filing("bad-rights", RightKind::Access))
        .await
        .unwrap()
        .request
        .unwrap();
    assert_status(
        advance(
            &app,
            &filed.request_id,
            RequestState::Unspecified,
            false,
            "",
        )
        .await,
        Code::InvalidArgument,
        "state",
    );
    assert_status(
        advance(&app, &filed.request_id, RequestState::Received, false, "").await,
        Code::InvalidArgument,
        "state",
    );
    assert_status(
        rights(&app)
            .list_requests(proto::ListRightsRequests {
                subject_id: "bad-rights".into(),
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    // Only the one valid filing was recorded.
    assert_eq!(app.all_events(None).await.len(), events + 1);
}

#[tokio::test]
async fn watchers_see_the_step_and_the_decision_it_flipped() {
    let app = TestApp::spawn().await;
    subject_in(&app, "watched", "FR").await;
    let since = app.all_events(None).await.last().unwrap().revision.clone();
    let filed = file(&app, filing("watched", RightKind::Objection))
        .await
        .unwrap();
    let mut stream = app
        .changes()
        .watch(proto::WatchRequest {
            since_revision: since,
            heartbeat_interval_ms: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no change within 10 s")
            .unwrap()
            .expect("the watch stream ended");
        if let Some(proto::watch_response::Event::Change(change)) = message.event {
            seen.push(change);
        }
    }
    // The filing flips nothing; the refusal it caused flips training, in the same transaction.
    assert_eq!(seen[0].kind, "rights_request_filed");
    assert!(seen[0].flipped.is_empty());
    assert_eq!(seen[1].kind, "choice_set");
    assert_eq!(seen[1].revision, filed.revision);
    let flips: Vec<(Purpose, Decision, Decision, String)> = seen[1]
        .flipped
        .iter()
        .map(|flip| {
            (
                flip.purpose(),
                flip.before(),
                flip.after(),
                flip.after_rule.clone(),
            )
        })
        .collect();
    assert_eq!(
        flips,
        [(
            Purpose::ModelTraining,
            Decision::Allow,
            Decision::Deny,
            "T5".to_owned()
        )]
    );
}

/// What a rights write left in the store: audit events and rights requests, counted on a
/// connection of the test's own.
async fn written(app: &TestApp) -> (i64, i64) {
    let mut connection = app.direct_connection().await;
    let counts = (
        connection.count("audit_events").await,
        connection.count("rights_requests").await,
    );
    connection.close().await;
    counts
}

#[tokio::test]
async fn deleting_or_restricting_through_a_request_needs_subjects_write() {
    let app = TestApp::spawn_with_tokens().await;
    let admin = token("operator", "admin");
    let intake = token("intake-form", "rights:write rights:read");
    let privacy = token("privacy-team", "rights:write subjects:write");
    for subject_id in ["ann", "ben"] {
        app.subjects()
            .upsert_subject(with_token(
                proto::UpsertSubjectRequest {
                    subject_id: subject_id.into(),
                    plan: Some(Plan::Free as i32),
                    jurisdiction: Some("FR".into()),
                    actor: actor(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap();
    }
    let status = async |subject_id: &str| {
        app.subjects()
            .get_subject(with_token(
                proto::GetSubjectRequest {
                    subject_id: subject_id.into(),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    let file_as = async |token: &str, request: proto::FileRightsRequest| {
        rights(&app)
            .file_request(with_token(request, token))
            .await
            .map(|response| response.into_inner().request.unwrap())
    };
    let advance_as = async |token: &str, request_id: &str, state: RequestState, verified: bool| {
        rights(&app)
            .advance_request(with_token(
                proto::AdvanceRightsRequest {
                    request_id: request_id.into(),
                    state: state as i32,
                    identity_verified: verified,
                    reason: String::new(),
                    actor: actor(),
                },
                token,
            ))
            .await
            .map(|response| response.into_inner().request.unwrap())
    };
    let refused = |result: Result<proto::RightsRequest, tonic::Status>, effect: &str| {
        let status = result.expect_err("the step should be refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().starts_with("authorization:")
                && status.message().contains("subjects:write")
                && status.message().contains(effect),
            "{status:?}"
        );
    };

    // `rights:write` alone: a verified deletion and a restriction are refused on filing, and
    // nothing is written.
    let before = written(&app).await;
    let verified_deletion = proto::FileRightsRequest {
        identity_verified: true,
        ..filing("ann", RightKind::Deletion)
    };
    refused(file_as(&intake, verified_deletion.clone()).await, "delete");
    refused(
        file_as(&intake, filing("ben", RightKind::Restriction)).await,
        "restrict",
    );
    assert_eq!(written(&app).await, before);
    assert_eq!(status("ann").await, proto::Status::Active);
    assert_eq!(status("ben").await, proto::Status::Active);

    // It may file a deletion and work it up to the step that verifies the identity, which it
    // may not take.
    let deletion = file_as(&intake, filing("ann", RightKind::Deletion))
        .await
        .unwrap();
    let verifying = advance_as(
        &intake,
        &deletion.request_id,
        RequestState::Verifying,
        false,
    )
    .await
    .unwrap();
    assert!(!verifying.effect_applied);
    let before = written(&app).await;
    refused(
        advance_as(
            &intake,
            &deletion.request_id,
            RequestState::InProgress,
            true,
        )
        .await,
        "delete",
    );
    assert_eq!(written(&app).await, before);
    let unchanged = rights(&app)
        .get_request(with_token(
            proto::GetRightsRequest {
                request_id: deletion.request_id.clone(),
            },
            &intake,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.state(), RequestState::Verifying);
    assert!(!unchanged.identity_verified);
    assert_eq!(status("ann").await, proto::Status::Active);

    // An objection only refuses choices: `rights:write` is enough.
    let objection = file_as(&intake, filing("ben", RightKind::Objection))
        .await
        .unwrap();
    assert!(objection.effect_applied);

    // With `subjects:write` as well, the same steps take effect ...
    let verified = advance_as(
        &privacy,
        &deletion.request_id,
        RequestState::InProgress,
        true,
    )
    .await
    .unwrap();
    assert!(verified.effect_applied);
    assert_eq!(status("ann").await, proto::Status::Deleted);
    let restriction = file_as(&privacy, filing("ben", RightKind::Restriction))
        .await
        .unwrap();
    assert!(restriction.effect_applied);
    assert_eq!(status("ben").await, proto::Status::Restricted);
    // ... and once the effect is applied, completing the request changes no subject: the
    // intake may.
    let completed = advance_as(
        &intake,
        &deletion.request_id,
        RequestState::Completed,
        false,
    )
    .await
    .unwrap();
    assert_eq!(completed.state(), RequestState::Completed);
    app.stop().await;
}
