//! Consent records: how and under what each choice was given, its expiry on the decision path
//! and as a recorded change, and Subjects.ConsentHistory.

use std::time::{Duration, SystemTime};

use assent::proto::{self, Choice, ConsentEventReason, ConsentMethod, Decision, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, actor, assert_status, check_request};

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

fn micros(stamp: &prost_types::Timestamp) -> i64 {
    stamp.seconds * 1_000_000 + i64::from(stamp.nanos / 1_000)
}

/// A choice with its provenance.
fn consent(
    subject_id: &str,
    purpose: Purpose,
    choice: Choice,
    method: ConsentMethod,
    notice_version: &str,
    expires_at: Option<SystemTime>,
) -> proto::SetChoiceRequest {
    proto::SetChoiceRequest {
        subject_id: subject_id.into(),
        purpose: purpose as i32,
        choice: choice as i32,
        actor: actor(),
        notice_version: notice_version.into(),
        method: method as i32,
        expires_at: expires_at.map(timestamp),
    }
}

/// Grants `purpose` through the cookie banner until `expires_at`.
async fn grant_until(app: &TestApp, subject_id: &str, purpose: Purpose, expires_at: SystemTime) {
    app.subjects()
        .set_choice(consent(
            subject_id,
            purpose,
            Choice::Granted,
            ConsentMethod::CookieBanner,
            "cookies-2026-03",
            Some(expires_at),
        ))
        .await
        .unwrap();
}

async fn get_subject(app: &TestApp, subject_id: &str) -> proto::Subject {
    app.subjects()
        .get_subject(proto::GetSubjectRequest {
            subject_id: subject_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn history(app: &TestApp, subject_id: &str, as_of: Option<i64>) -> Vec<proto::ConsentEvent> {
    let mut records = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .subjects()
            .consent_history(proto::ConsentHistoryRequest {
                subject_id: subject_id.into(),
                as_of: as_of.map(|at| prost_types::Timestamp {
                    seconds: at.div_euclid(1_000_000),
                    nanos: (at.rem_euclid(1_000_000) * 1_000) as i32,
                }),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        records.extend(page.records);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            return records;
        }
    }
}

async fn check_as_of(
    app: &TestApp,
    subject_id: &str,
    purpose: Purpose,
    at: i64,
) -> (Decision, proto::Reason) {
    let response = app
        .decisions()
        .check(proto::CheckRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: at.div_euclid(1_000_000),
                nanos: (at.rem_euclid(1_000_000) * 1_000) as i32,
            }),
            ..check_request(subject_id, purpose)
        })
        .await
        .unwrap()
        .into_inner();
    (response.decision(), response.reason())
}

async fn answer(
    app: &TestApp,
    subject_id: &str,
    purpose: Purpose,
) -> (Decision, proto::Reason, String) {
    let response = app.check(subject_id, purpose).await;
    (response.decision(), response.reason(), response.rule)
}

/// Waits until the wall clock is past `at`.
async fn sleep_past(at: SystemTime) {
    if let Ok(left) = at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

/// An answer holds until the nearest expiry of one of the subject's choices (whichever purpose
/// it is of), and says nothing of one when no choice of the subject expires.
#[tokio::test]
async fn an_answer_holds_until_the_nearest_expiry() {
    let app = TestApp::spawn().await;
    app.upsert("omar", Plan::Free).await;
    assert_eq!(
        app.check("omar", Purpose::ModelTraining).await.valid_until,
        None
    );
    let soon = SystemTime::UNIX_EPOCH
        + Duration::from_micros(
            u64::try_from(micros(&timestamp(
                SystemTime::now() + Duration::from_secs(3_600),
            )))
            .unwrap(),
        );
    let later = soon + Duration::from_secs(24 * 3_600);
    for (purpose, expires_at) in [
        (Purpose::AnalyticsCookies, later),
        (Purpose::MarketingEmail, soon),
    ] {
        grant_until(&app, "omar", purpose, expires_at).await;
    }
    for purpose in [Purpose::AnalyticsCookies, Purpose::ModelTraining] {
        let answer = app.check("omar", purpose).await;
        assert_eq!(answer.valid_until, Some(timestamp(soon)), "{purpose:?}");
    }
    let bare = app
        .decisions()
        .check(proto::CheckRequest {
            bare: true,
            ..check_request("omar", Purpose::MarketingEmail)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bare.valid_until, Some(timestamp(soon)));
}

#[tokio::test]
async fn a_choice_keeps_how_and_under_what_it_was_given() {
    let app = TestApp::spawn().await;
    app.upsert("nina", Plan::Free).await;
    let expires_at = SystemTime::now() + Duration::from_secs(396 * 24 * 3600);
    let granted = app
        .subjects()
        .set_choice(consent(
            "nina",
            Purpose::AnalyticsCookies,
            Choice::Granted,
            ConsentMethod::CookieBanner,
            "cookies-2026-03",
            Some(expires_at),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(granted.changed);
    // An existing caller: no notice version (the policy version in force), no method.
    app.set_choice("nina", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    let subject = get_subject(&app, "nina").await;
    let choices: Vec<_> = subject
        .choices
        .iter()
        .map(|record| {
            (
                record.purpose(),
                record.choice(),
                record.notice_version.as_str(),
                record.method(),
                record.caller.as_str(),
                record.expires_at.as_ref().map(micros),
            )
        })
        .collect();
    assert_eq!(
        choices,
        [
            (
                Purpose::Memory,
                Choice::Refused,
                "2026-01-01",
                ConsentMethod::Unspecified,
                "anonymous",
                None
            ),
            (
                Purpose::AnalyticsCookies,
                Choice::Granted,
                "cookies-2026-03",
                ConsentMethod::CookieBanner,
                "anonymous",
                Some(micros(&timestamp(expires_at)))
            ),
        ]
    );
    let analytics = &subject.effective[Purpose::AnalyticsCookies as usize - 1];
    assert_eq!(
        (analytics.decision(), analytics.reason()),
        (Decision::Allow, proto::Reason::ConsentGranted)
    );
    // The same choice, notice, method and expiry again records nothing; a renewal does.
    let repeated = app
        .subjects()
        .set_choice(consent(
            "nina",
            Purpose::AnalyticsCookies,
            Choice::Granted,
            ConsentMethod::CookieBanner,
            "cookies-2026-03",
            Some(expires_at),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!repeated.changed);
    assert_eq!(repeated.revision, get_subject(&app, "nina").await.revision);
    let renewed = app
        .subjects()
        .set_choice(consent(
            "nina",
            Purpose::AnalyticsCookies,
            Choice::Granted,
            ConsentMethod::CookieBanner,
            "cookies-2026-03",
            Some(expires_at + Duration::from_secs(60)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.changed);
    // The audit event tells the provenance.
    let events = app.all_events(Some("nina")).await;
    let detail: serde_json::Value = serde_json::from_str(&events[1].detail_json).unwrap();
    assert_eq!(detail["notice_version"], "cookies-2026-03");
    assert_eq!(detail["method"], "COOKIE_BANNER");
    assert_eq!(detail["expires_at_micros"], micros(&timestamp(expires_at)));
}

#[tokio::test]
async fn a_bad_expiry_method_or_notice_is_named_and_records_nothing() {
    let app = TestApp::spawn().await;
    app.upsert("oscar", Plan::Free).await;
    let events_before = app.all_events(None).await.len();
    let mut subjects = app.subjects();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let next_year = SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    let cases = [
        (
            consent(
                "oscar",
                Purpose::AnalyticsCookies,
                Choice::Granted,
                ConsentMethod::CookieBanner,
                "",
                Some(an_hour_ago),
            ),
            "expires_at",
        ),
        (
            consent(
                "oscar",
                Purpose::AnalyticsCookies,
                Choice::Cleared,
                ConsentMethod::CookieBanner,
                "",
                Some(next_year),
            ),
            "expires_at",
        ),
        (
            proto::SetChoiceRequest {
                method: 42,
                ..consent(
                    "oscar",
                    Purpose::AnalyticsCookies,
                    Choice::Granted,
                    ConsentMethod::Unspecified,
                    "",
                    None,
                )
            },
            "method",
        ),
        (
            consent(
                "oscar",
                Purpose::AnalyticsCookies,
                Choice::Granted,
                ConsentMethod::CookieBanner,
                &"v".repeat(129),
                None,
            ),
            "notice_version",
        ),
    ];
    for (request, field) in cases {
        assert_status(
            subjects.set_choice(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_eq!(app.all_events(None).await.len(), events_before);
}

#[tokio::test]
async fn the_consent_history_is_oldest_first_paged_and_as_of_a_date() {
    let app = TestApp::spawn().await;
    app.upsert("petra", Plan::Free).await;
    let mut subjects = app.subjects();
    subjects
        .set_choice(consent(
            "petra",
            Purpose::MarketingEmail,
            Choice::Granted,
            ConsentMethod::SettingsPage,
            "privacy-2026-01",
            None,
        ))
        .await
        .unwrap();
    subjects
        .set_choice(consent(
            "petra",
            Purpose::ModelTraining,
            Choice::Refused,
            ConsentMethod::RightsRequest,
            "",
            None,
        ))
        .await
        .unwrap();
    let after_two = history(&app, "petra", None).await;
    let as_of_two = micros(after_two[1].recorded_at.as_ref().unwrap());
    subjects
        .set_choice(consent(
            "petra",
            Purpose::MarketingEmail,
            Choice::Cleared,
            ConsentMethod::SettingsPage,
            "privacy-2026-01",
            None,
        ))
        .await
        .unwrap();
    subjects
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: "petra".into(),
            actor: actor(),
        })
        .await
        .unwrap();

    // Kept after the account is gone, in the order it happened.
    let records = history(&app, "petra", None).await;
    let summary: Vec<(Purpose, Choice, ConsentEventReason, ConsentMethod)> = records
        .iter()
        .map(|record| {
            (
                record.purpose(),
                record.choice(),
                record.why(),
                record.method(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                Purpose::MarketingEmail,
                Choice::Granted,
                ConsentEventReason::SetByCaller,
                ConsentMethod::SettingsPage
            ),
            (
                Purpose::ModelTraining,
                Choice::Refused,
                ConsentEventReason::RightsRequest,
                ConsentMethod::RightsRequest
            ),
            (
                Purpose::MarketingEmail,
                Choice::Cleared,
                ConsentEventReason::SetByCaller,
                ConsentMethod::SettingsPage
            ),
            (
                Purpose::ModelTraining,
                Choice::Cleared,
                ConsentEventReason::ErasedByDeletion,
                ConsentMethod::Unspecified
            ),
        ]
    );
    let revisions: Vec<&str> = records
        .iter()
        .map(|record| record.revision.as_str())
        .collect();
    let mut sorted = revisions.clone();
    sorted.sort_by_key(|token| assent::revision::Revision::parse_token(token).unwrap());
    assert_eq!(revisions, sorted, "oldest first");
    assert_eq!(records[0].notice_version, "privacy-2026-01");
    assert_eq!(
        records[1].notice_version, "2026-01-01",
        "the policy version in force"
    );
    assert_eq!(records[0].caller, "anonymous");
    assert_eq!(
        records[0].actor.as_ref().unwrap().operator_id,
        "support:tester"
    );
    // "Her consent at date D": the records committed by then.
    assert_eq!(history(&app, "petra", Some(as_of_two)).await, records[..2]);
    assert_eq!(
        history(&app, "petra", Some(as_of_two - 1)).await,
        records[..1]
    );

    assert_status(
        subjects
            .consent_history(proto::ConsentHistoryRequest {
                subject_id: "nobody".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "subject_id",
    );
    assert_status(
        subjects
            .consent_history(proto::ConsentHistoryRequest {
                subject_id: "petra".into(),
                page_token: "r1.5".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    // A subject with no consent record yet has an empty history.
    app.upsert("quentin", Plan::Pro).await;
    assert!(history(&app, "quentin", None).await.is_empty());
}

/// The acceptance test: a GRANTED choice with an expiry answers CONSENT_GRANTED before it and
/// the default after it, and Watch shows the expiry with the decision it flipped.
#[tokio::test]
async fn an_expiring_grant_counts_until_its_expiry_and_watch_shows_the_flip() {
    let app = TestApp::spawn().await;
    let mut watch = app
        .changes()
        .watch(proto::WatchRequest {
            purposes: vec![Purpose::AnalyticsCookies as i32],
            heartbeat_interval_ms: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.upsert("rosa", Plan::Free).await;
    let expires_at = SystemTime::now() + Duration::from_secs(2);
    grant_until(&app, "rosa", Purpose::AnalyticsCookies, expires_at).await;
    let granted = (
        Decision::Allow,
        proto::Reason::ConsentGranted,
        "A1".to_owned(),
    );
    let default = (
        Decision::Deny,
        proto::Reason::ConsentRequired,
        "A2".to_owned(),
    );
    assert_eq!(
        answer(&app, "rosa", Purpose::AnalyticsCookies).await,
        granted
    );
    let granted_at = micros(app.all_events(Some("rosa")).await[1].at.as_ref().unwrap());

    sleep_past(expires_at).await;
    assert_eq!(
        answer(&app, "rosa", Purpose::AnalyticsCookies).await,
        default
    );
    // Decided as of an instant between the grant and its expiry: granted then.
    assert_eq!(
        check_as_of(&app, "rosa", Purpose::AnalyticsCookies, granted_at + 1_000).await,
        (Decision::Allow, proto::Reason::ConsentGranted)
    );
    // And as of after the expiry: the default, whether or not the sweep had recorded it.
    let after = micros(&timestamp(expires_at)) + 1;
    assert_eq!(
        check_as_of(&app, "rosa", Purpose::AnalyticsCookies, after).await,
        (Decision::Deny, proto::Reason::ConsentRequired)
    );

    // The watcher sees the grant, then the recorded expiry with its flip.
    let mut changes = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while changes.len() < 2 {
            let message = watch.message().await.unwrap().expect("the watch ended");
            if let Some(proto::watch_response::Event::Change(change)) = message.event {
                changes.push(change);
            }
        }
    })
    .await
    .expect("the expiry was not streamed within 15 s");
    assert_eq!(changes[0].kind, "choice_set");
    let expiry = &changes[1];
    assert_eq!(
        (expiry.kind.as_str(), expiry.subject_id.as_str()),
        ("consent_expired", "rosa")
    );
    assert_eq!(expiry.before_json, "\"GRANTED\"");
    assert_eq!(expiry.after_json, "null");
    let flips: Vec<(
        Purpose,
        Decision,
        Decision,
        &str,
        &str,
        proto::Reason,
        proto::Reason,
    )> = expiry
        .flipped
        .iter()
        .map(|flip| {
            (
                flip.purpose(),
                flip.before(),
                flip.after(),
                flip.before_rule.as_str(),
                flip.after_rule.as_str(),
                flip.before_reason(),
                flip.after_reason(),
            )
        })
        .collect();
    assert_eq!(
        flips,
        [(
            Purpose::AnalyticsCookies,
            Decision::Allow,
            Decision::Deny,
            "A1",
            "A2",
            proto::Reason::ConsentGranted,
            proto::Reason::ConsentRequired
        )]
    );

    // Recorded: the choice is gone, the history tells why, and the answers stay the default.
    let subject = get_subject(&app, "rosa").await;
    assert!(subject.choices.is_empty());
    let records = history(&app, "rosa", None).await;
    let whys: Vec<(Choice, ConsentEventReason)> = records
        .iter()
        .map(|record| (record.choice(), record.why()))
        .collect();
    assert_eq!(
        whys,
        [
            (Choice::Granted, ConsentEventReason::SetByCaller),
            (Choice::Cleared, ConsentEventReason::Expired)
        ]
    );
    assert_eq!(
        records[1].expires_at.as_ref().map(micros),
        Some(micros(&timestamp(expires_at)))
    );
    assert_eq!(records[1].caller, "assent");
    assert_eq!(
        answer(&app, "rosa", Purpose::AnalyticsCookies).await,
        default
    );
    assert_eq!(
        check_as_of(&app, "rosa", Purpose::AnalyticsCookies, granted_at + 1_000).await,
        (Decision::Allow, proto::Reason::ConsentGranted)
    );
    assert!(app.verify_chain().await.ok);
}

/// Without the sweep (nothing recorded, nothing invalidated), the answer from memory is the
/// default as soon as the expiry passes.
#[tokio::test]
async fn an_expired_choice_is_not_answered_from_the_cache() {
    let app = TestApp::spawn_adjusted(|settings| settings.consent_expiry_sweep = None).await;
    app.upsert("sven", Plan::Free).await;
    let expires_at = SystemTime::now() + Duration::from_secs(3);
    app.subjects()
        .set_choice(consent(
            "sven",
            Purpose::AnalyticsCookies,
            Choice::Granted,
            ConsentMethod::CookieBanner,
            "",
            Some(expires_at),
        ))
        .await
        .unwrap();
    // The first check caches the subject; the second is answered from memory.
    for _ in 0..2 {
        assert_eq!(
            answer(&app, "sven", Purpose::AnalyticsCookies).await.0,
            Decision::Allow
        );
    }
    let events = app.all_events(None).await.len();
    sleep_past(expires_at).await;
    let (decision, reason, rule) = answer(&app, "sven", Purpose::AnalyticsCookies).await;
    assert_eq!(
        (decision, reason, rule.as_str()),
        (Decision::Deny, proto::Reason::ConsentRequired, "A2")
    );
    let batch = app
        .decisions()
        .batch_check(proto::BatchCheckRequest {
            checks: vec![check_request("sven", Purpose::AnalyticsCookies)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results[0].decision(), Decision::Deny);
    // Nothing was written meanwhile: the entry in memory was not replaced.
    assert_eq!(app.all_events(None).await.len(), events);
    // GetSubject neither lists nor counts it, though the store still holds it.
    let subject = get_subject(&app, "sven").await;
    assert!(subject.choices.is_empty());
    assert_eq!(
        subject.effective[Purpose::AnalyticsCookies as usize - 1].decision(),
        Decision::Deny
    );
}

#[tokio::test]
async fn a_batch_as_of_many_instants_answers_as_each_check_alone() {
    let app = TestApp::spawn().await;
    let mut instants = vec![assent::store::now_micros()];
    app.upsert("vera", Plan::Free).await;
    instants.push(assent::store::now_micros());
    for (purpose, choice) in [
        (Purpose::ModelTraining, Choice::Refused),
        (Purpose::MarketingEmail, Choice::Granted),
        (Purpose::ModelTraining, Choice::Granted),
        (Purpose::MarketingEmail, Choice::Refused),
    ] {
        app.set_choice("vera", purpose, choice).await.unwrap();
        instants.push(assent::store::now_micros());
    }
    // Out of order on purpose: the batch answers in request order whatever the instants'.
    instants.reverse();
    let purposes = [
        Purpose::ModelTraining,
        Purpose::MarketingEmail,
        Purpose::Memory,
    ];
    let checks: Vec<proto::CheckRequest> = instants
        .iter()
        .flat_map(|at| {
            purposes.iter().map(move |purpose| proto::CheckRequest {
                as_of: Some(assent::api::convert::timestamp(*at)),
                ..check_request("vera", *purpose)
            })
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
    assert_eq!(batch.len(), checks.len());
    let mut seen = std::collections::BTreeSet::new();
    for (check, answered) in checks.into_iter().zip(&batch) {
        let alone = app.decisions().check(check).await.unwrap().into_inner();
        assert_eq!(
            (
                answered.decision(),
                answered.reason(),
                &answered.rule,
                &answered.revision
            ),
            (
                alone.decision(),
                alone.reason(),
                &alone.rule,
                &alone.revision
            )
        );
        seen.insert((answered.purpose, answered.decision));
    }
    // The instants span the changes: training was both allowed and denied, so was e-mail.
    assert!(seen.contains(&(Purpose::ModelTraining as i32, Decision::Allow as i32)));
    assert!(seen.contains(&(Purpose::ModelTraining as i32, Decision::Deny as i32)));
    assert!(seen.contains(&(Purpose::MarketingEmail as i32, Decision::Allow as i32)));
    app.stop().await;
}
