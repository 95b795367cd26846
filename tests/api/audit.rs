//! Audit: what events record, paging, and the hash chain (including tampering with the file).

use assent::proto::{self, Choice, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, assert_status};

#[tokio::test]
async fn events_record_who_what_and_why() {
    let app = TestApp::spawn().await;
    app.upsert("lena", Plan::Free).await;
    let mut request = tonic::Request::new(proto::SetChoiceRequest {
        subject_id: "lena".into(),
        purpose: Purpose::ModelTraining as i32,
        choice: Choice::Refused as i32,
        actor: Some(proto::Actor {
            operator_id: "user:lena".into(),
            reason: "settings page".into(),
        }),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let revision = app
        .subjects()
        .set_choice(request)
        .await
        .unwrap()
        .into_inner()
        .revision;
    let events = app.all_events(Some("lena")).await;
    assert_eq!(events.len(), 2);
    let (created, choice) = (&events[0], &events[1]);
    assert_eq!(created.kind, "subject_upserted");
    assert_eq!(choice.kind, "choice_set");
    assert_eq!(choice.revision, revision);
    assert_eq!(choice.caller, "anonymous");
    let choice_actor = choice.actor.clone().unwrap();
    assert_eq!(
        (
            choice_actor.operator_id.as_str(),
            choice_actor.reason.as_str()
        ),
        ("user:lena", "settings page")
    );
    assert_eq!(choice.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(choice.policy_version, "2026-01-01");
    let detail: serde_json::Value = serde_json::from_str(&choice.detail_json).unwrap();
    assert_eq!(
        detail,
        serde_json::json!({
            "purpose": "MODEL_TRAINING",
            "before": null,
            "after": "REFUSED",
            // Sent without a notice version or method: the policy version in force, and said
            // to be unspecified.
            "notice_version": "2026-01-01",
            "method": "UNSPECIFIED",
            "expires_at_micros": null,
        })
    );
    assert_eq!(created.prev_hash, "0".repeat(64));
    assert_eq!(choice.prev_hash, created.hash);
    assert_eq!(choice.hash.len(), 64);
    assert!(choice.at.is_some());
}

#[tokio::test]
async fn events_page_oldest_first_or_newest_first() {
    let app = TestApp::spawn().await;
    for subject in 0..5 {
        let subject_id = format!("p-{subject}");
        app.upsert(&subject_id, Plan::Free).await;
        for purpose in [
            Purpose::Memory,
            Purpose::MarketingEmail,
            Purpose::AnalyticsCookies,
            Purpose::MarketingCookies,
        ] {
            app.set_choice(&subject_id, purpose, Choice::Granted)
                .await
                .unwrap();
        }
    }
    let mut audit = app.audit();
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_events(proto::ListEventsRequest {
                subject_id: None,
                page_size: 10,
                page_token,
                newest_first: false,
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(page.events.len());
        let revisions: Vec<u64> = page
            .events
            .iter()
            .map(|event| {
                assent::revision::Revision::parse_token(&event.revision)
                    .unwrap()
                    .sequence()
            })
            .collect();
        let expected_start = 1 + 10 * (pages.len() as u64 - 1);
        assert_eq!(
            revisions,
            (expected_start..expected_start + revisions.len() as u64).collect::<Vec<_>>()
        );
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [10, 10, 5]);

    // Newest first: the same 25 events backwards, in pages that continue backwards; one
    // subject's too.
    for (subject_id, total) in [(None, 25u64), (Some("p-3".to_owned()), 5)] {
        let mut listed = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = audit
                .list_events(proto::ListEventsRequest {
                    subject_id: subject_id.clone(),
                    page_size: 10,
                    page_token,
                    newest_first: true,
                })
                .await
                .unwrap()
                .into_inner();
            listed.extend(page.events.iter().map(|event| {
                assent::revision::Revision::parse_token(&event.revision)
                    .unwrap()
                    .sequence()
            }));
            page_token = page.next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
        assert_eq!(listed.len() as u64, total, "{subject_id:?}");
        assert!(
            listed.windows(2).all(|pair| pair[0] > pair[1]),
            "{listed:?}"
        );
        if subject_id.is_none() {
            assert_eq!(listed, (1..=25).rev().collect::<Vec<_>>());
        }
    }

    let one_subject = app.all_events(Some("p-3")).await;
    assert_eq!(one_subject.len(), 5);
    assert!(one_subject.iter().all(|event| event.subject_id == "p-3"));

    let default_page = audit
        .list_events(proto::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.events.len(), 25);
    assert!(default_page.next_page_token.is_empty());

    assert_status(
        audit
            .list_events(proto::ListEventsRequest {
                page_token: "page two".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        audit
            .list_events(proto::ListEventsRequest {
                subject_id: Some(String::new()),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "subject_id",
    );
}

#[tokio::test]
async fn the_chain_verifies_and_reports_a_tampered_row() {
    let app = TestApp::spawn().await;
    app.upsert("mia", Plan::Pro).await;
    app.set_choice("mia", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    app.set_choice("mia", Purpose::MarketingEmail, Choice::Granted)
        .await
        .unwrap();
    app.upsert("noah", Plan::Free).await;
    let intact = app.verify_chain().await;
    assert!(intact.ok);
    assert_eq!(intact.events_checked, 4);
    assert!(intact.first_bad_event_id.is_empty());

    let events = app.all_events(None).await;
    let target = &events[1];
    let mut connection = app.direct_connection().await;
    // The log is append-only through SQL...
    let blocked = connection
        .execute("UPDATE audit_payloads SET detail_json = '{}' WHERE sequence = 2")
        .await;
    assert!(blocked.unwrap_err().to_string().contains("append-only"));
    // ...but whoever holds the database can drop the trigger: the chain still tells.
    connection.drop_audit_guards().await;
    let altered = connection
        .execute(
            "UPDATE audit_payloads SET detail_json = '{\"after\":\"GRANTED\",\"before\":null,\"purpose\":\"MODEL_TRAINING\"}' WHERE sequence = 2",
        )
        .await
        .unwrap();
    assert_eq!(altered, 1);
    connection.close().await;

    let tampered = app.verify_chain().await;
    assert!(!tampered.ok);
    assert_eq!(tampered.events_checked, 4);
    assert_eq!(tampered.first_bad_event_id, target.event_id);
}

#[tokio::test]
async fn a_row_rewritten_into_no_known_event_is_reported_not_an_error() {
    let app = TestApp::spawn().await;
    app.upsert("ivo", Plan::Free).await;
    app.set_choice("ivo", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    app.upsert("jan", Plan::Pro).await;
    let target = app.all_events(None).await[1].clone();
    let mut connection = app.direct_connection().await;
    connection.drop_audit_guards().await;
    let altered = connection
        .execute("UPDATE audit_events SET kind = 'choice_forgotten' WHERE sequence = 2")
        .await
        .unwrap();
    assert_eq!(altered, 1);
    connection.close().await;
    let report = app.verify_chain().await;
    assert!(!report.ok);
    assert_eq!(report.events_checked, 3);
    assert_eq!(report.first_bad_event_id, target.event_id);
}

#[tokio::test]
async fn removing_the_newest_event_breaks_the_chain() {
    let app = TestApp::spawn().await;
    app.upsert("olga", Plan::Free).await;
    app.set_choice("olga", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    let mut connection = app.direct_connection().await;
    connection.drop_audit_guards().await;
    let removed = connection
        .execute("DELETE FROM audit_events WHERE sequence = 2")
        .await
        .unwrap();
    assert_eq!(removed, 1);
    connection.close().await;
    let report = app.verify_chain().await;
    assert!(!report.ok);
    assert_eq!(report.events_checked, 1);
    assert!(!report.first_bad_event_id.is_empty());
}

#[tokio::test]
async fn reads_add_no_events() {
    let app = TestApp::spawn().await;
    app.upsert("pia", Plan::Free).await;
    app.check("pia", Purpose::ModelTraining).await;
    app.subjects()
        .get_subject(proto::GetSubjectRequest {
            subject_id: "pia".into(),
        })
        .await
        .unwrap();
    app.verify_chain().await;
    assert_eq!(app.all_events(None).await.len(), 1);
}

/// The value of an unlabelled metric, or of one label set, in the scraped text.
fn metric(name_and_labels: &str) -> Option<f64> {
    assent::metrics::METRICS.encode().lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == name_and_labels).then(|| value.parse().ok())?
    })
}

/// Waits (up to 10 s) until `condition` holds of the metrics.
async fn until_metrics(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: not within 10 s:\n{}",
        assent::metrics::METRICS.encode()
    );
}

/// A choice rewritten in the state table, past the write path: the chain still verifies, the
/// periodic check and VerifyState both report the subject. (The only test of this binary that
/// runs state checks, so the state-check metrics are its own.)
#[tokio::test]
async fn a_choice_rewritten_in_the_table_is_reported_by_verify_state() {
    let app = TestApp::spawn_adjusted(|settings| {
        settings.state_check_interval = Some(std::time::Duration::from_millis(100));
    })
    .await;
    app.upsert("lena", Plan::Free).await;
    app.set_choice("lena", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    app.upsert("otto", Plan::Pro).await;
    app.set_choice("otto", Purpose::ModelTraining, Choice::Granted)
        .await
        .unwrap();
    let response = app
        .audit()
        .verify_state(proto::VerifyStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response,
        proto::VerifyStateResponse {
            ok: true,
            subjects_checked: 2,
            mismatches: Vec::new(),
            truncated: false,
            subjects_unverifiable: 0,
        }
    );
    until_metrics("a periodic check that passes", || {
        metric("assent_state_checks_total{result=\"ok\"}").is_some_and(|ok| ok >= 2.0)
            && metric("assent_state_mismatches") == Some(0.0)
    })
    .await;

    let mut database = app.direct_connection().await;
    let updated = database
        .execute(
            "UPDATE choices SET choice = 'GRANTED'
             WHERE subject_id = 'lena' AND purpose = 'MODEL_TRAINING'",
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    database.close().await;
    assert!(app.verify_chain().await.ok);

    until_metrics("the periodic check reporting one subject", || {
        metric("assent_state_mismatches") == Some(1.0)
            && metric("assent_state_checks_total{result=\"mismatch\"}").is_some()
    })
    .await;
    let response = app
        .audit()
        .verify_state(proto::VerifyStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!response.ok);
    assert_eq!(response.subjects_checked, 2);
    assert!(!response.truncated);
    assert_eq!(
        response.mismatches,
        vec![proto::StateMismatch {
            subject_id: "lena".into(),
            differences: vec!["choices.MODEL_TRAINING: stored GRANTED, events REFUSED".into()],
        }]
    );
}
