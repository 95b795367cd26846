//! The retention schedule served: Query for each kind of row against the subjects in the store
//! (deletion, zero data retention, consent, a record's own event), as of a past instant and
//! under a later policy version; Due listing the subjects whose data is due, page by page, and
//! the cut-off for records; bad input refused naming the field.

use std::time::{Duration, SystemTime};

use assent::api::convert::timestamp;
use assent::calendar::{Date, MICROS_PER_DAY};
use assent::policy::Period;
use assent::proto::retention_query_response::Keep;
use assent::proto::{self, Choice, DataCategory, Plan, Purpose, RetentionEvent};
use tonic::Code;

use crate::helpers::{TestApp, actor, assert_status};

const BUILTIN: &str = include_str!("../../policies/2026-01-01.toml");

fn micros(stamp: &prost_types::Timestamp) -> i64 {
    stamp.seconds * 1_000_000 + i64::from(stamp.nanos) / 1_000
}

/// Midnight UTC of a `YYYYMMDD` date.
fn day(compact: &str) -> i64 {
    Date::parse_compact(compact).unwrap().to_days() * MICROS_PER_DAY
}

fn now_micros() -> i64 {
    assent::store::now_micros()
}

fn query_request(category: DataCategory, subject_id: &str) -> proto::RetentionQueryRequest {
    proto::RetentionQueryRequest {
        category: category as i32,
        subject_id: subject_id.into(),
        ..Default::default()
    }
}

async fn query(
    app: &TestApp,
    request: proto::RetentionQueryRequest,
) -> Result<proto::RetentionQueryResponse, tonic::Status> {
    app.retention()
        .query(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn ask(
    app: &TestApp,
    category: DataCategory,
    subject_id: &str,
) -> proto::RetentionQueryResponse {
    query(app, query_request(category, subject_id))
        .await
        .unwrap()
}

fn due_request(category: DataCategory, before: Option<i64>) -> proto::RetentionDueRequest {
    proto::RetentionDueRequest {
        category: category as i32,
        before: before.map(timestamp),
        ..Default::default()
    }
}

async fn due(
    app: &TestApp,
    request: proto::RetentionDueRequest,
) -> Result<proto::RetentionDueResponse, tonic::Status> {
    app.retention()
        .due(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Every subject Due lists, following the pages; and the pages' sizes.
async fn all_due(
    app: &TestApp,
    mut request: proto::RetentionDueRequest,
) -> (Vec<proto::DueSubject>, Vec<usize>) {
    let mut subjects = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = due(app, request.clone()).await.unwrap();
        sizes.push(page.subjects.len());
        subjects.extend(page.subjects);
        if page.next_page_token.is_empty() {
            return (subjects, sizes);
        }
        request.page_token = page.next_page_token;
    }
}

async fn delete(app: &TestApp, subject_id: &str) -> i64 {
    app.subjects()
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: subject_id.into(),
            actor: actor(),
        })
        .await
        .unwrap();
    last_change(app, subject_id).await
}

/// When the subject's last change was committed.
async fn last_change(app: &TestApp, subject_id: &str) -> i64 {
    let event = app.all_events(Some(subject_id)).await.pop().unwrap();
    micros(event.at.as_ref().unwrap())
}

async fn zero_data_retention(app: &TestApp, subject_id: &str) {
    app.subjects()
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: subject_id.into(),
            plan: Some(Plan::ApiPaid as i32),
            zero_data_retention: Some(true),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn refuse(app: &TestApp, subject_id: &str, purpose: Purpose) -> i64 {
    app.set_choice(subject_id, purpose, Choice::Refused)
        .await
        .unwrap();
    last_change(app, subject_id).await
}

fn keep_until(response: &proto::RetentionQueryResponse) -> i64 {
    match &response.keep {
        Some(Keep::KeepUntil(until)) => micros(until),
        other => panic!("not kept until an instant: {other:?}"),
    }
}

#[tokio::test]
async fn query_answers_from_the_subjects_state() {
    let app = TestApp::spawn().await;

    // An account: kept until a year after a deletion still to come, then on legal hold.
    app.upsert("ada", Plan::Pro).await;
    let open = ask(&app, DataCategory::AccountData, "ada").await;
    assert_eq!(
        open.keep,
        Some(Keep::AfterEvent(proto::AfterEvent {
            event: RetentionEvent::AccountTermination as i32,
            period: Some(proto::RetentionPeriod {
                length: Some(proto::retention_period::Length::Years(1)),
            }),
        }))
    );
    assert!(!open.legal_hold && !open.due);
    assert_eq!(open.section, "privacy policy §5, Account Data");
    assert_eq!(open.policy_version, "2026-01-01");
    let deleted_at = delete(&app, "ada").await;
    let account = ask(&app, DataCategory::AccountData, "ada").await;
    assert_eq!(keep_until(&account), Period::Years(1).end(deleted_at));
    let kept_for = keep_until(&account) - deleted_at;
    assert!((365 * MICROS_PER_DAY..=366 * MICROS_PER_DAY).contains(&kept_for));
    assert!(account.legal_hold && !account.due);
    assert!(account.revision.starts_with("r1."));
    let civil = ask(&app, DataCategory::CivilIdentity, "ada").await;
    assert_eq!(keep_until(&civil), Period::Years(5).end(deleted_at));
    assert!(civil.legal_hold);
    // Conversations go with the account.
    let chat = ask(&app, DataCategory::ChatConversation, "ada").await;
    assert_eq!(keep_until(&chat), deleted_at);
    assert!(chat.due && !chat.legal_hold);

    // API Input and Output: 30 rolling days from generation, not kept with zero data retention.
    app.upsert("org-1", Plan::ApiPaid).await;
    zero_data_retention(&app, "org-2").await;
    let generated = now_micros() - 10 * MICROS_PER_DAY;
    let api = |subject_id: &str| proto::RetentionQueryRequest {
        event_time: Some(timestamp(generated)),
        ..query_request(DataCategory::ApiIo, subject_id)
    };
    let kept = query(&app, api("org-1")).await.unwrap();
    assert_eq!(keep_until(&kept), generated + 30 * MICROS_PER_DAY);
    assert!(!kept.due);
    let zero = query(&app, api("org-2")).await.unwrap();
    assert_eq!(zero.keep, Some(Keep::NotKept(true)));
    assert!(zero.due && !zero.legal_hold);
    let not_generated = ask(&app, DataCategory::ApiIo, "org-1").await;
    assert!(matches!(not_generated.keep, Some(Keep::AfterEvent(_))));

    // Cookies: while the consent lasts; withdrawing either cookie consent makes them due.
    app.upsert("bob", Plan::Free).await;
    let never = ask(&app, DataCategory::NonEssentialCookies, "bob").await;
    assert_eq!(never.keep, Some(Keep::NotKept(true)));
    app.set_choice("bob", Purpose::AnalyticsCookies, Choice::Granted)
        .await
        .unwrap();
    let granted = ask(&app, DataCategory::NonEssentialCookies, "bob").await;
    assert_eq!(
        granted.keep,
        Some(Keep::UntilEvent(RetentionEvent::ConsentWithdrawal as i32))
    );
    assert!(!granted.due);
    let withdrawn_at = refuse(&app, "bob", Purpose::MarketingCookies).await;
    let withdrawn = ask(&app, DataCategory::NonEssentialCookies, "bob").await;
    assert_eq!(keep_until(&withdrawn), withdrawn_at);
    assert!(withdrawn.due);
    // The newsletter is another consent.
    let newsletter = ask(&app, DataCategory::MarketingContact, "bob").await;
    assert_eq!(newsletter.keep, Some(Keep::NotKept(true)));
    app.set_choice("bob", Purpose::MarketingEmail, Choice::Granted)
        .await
        .unwrap();
    let subscribed = ask(&app, DataCategory::MarketingContact, "bob").await;
    assert_eq!(
        subscribed.keep,
        Some(Keep::UntilEvent(RetentionEvent::Unsubscribe as i32))
    );

    // Fine-tuning data the user deleted before terminating the account.
    let removed = now_micros() - MICROS_PER_DAY;
    let fine_tuning = query(
        &app,
        proto::RetentionQueryRequest {
            data_deleted_at: Some(timestamp(removed)),
            ..query_request(DataCategory::FineTuningData, "bob")
        },
    )
    .await
    .unwrap();
    assert_eq!(keep_until(&fine_tuning), removed);
    assert!(fine_tuning.due);
    app.stop().await;
}

/// Rows of the schedule that run from an event of each record, asked through the service:
/// (category, the record's event, kept until, legal hold).
fn record_rows() -> Vec<(DataCategory, i64, i64, bool)> {
    let noon = day("20260315") + 12 * 3_600_000_000;
    vec![
        (
            DataCategory::LeadContact,
            noon,
            day("20290315") + 12 * 3_600_000_000,
            false,
        ),
        (
            DataCategory::TechnicalData,
            noon,
            day("20270315") + 12 * 3_600_000_000,
            true,
        ),
        (
            DataCategory::Invoices,
            day("20260315"),
            day("20370101"),
            true,
        ),
        (
            DataCategory::Invoices,
            day("20270101") - 1,
            day("20370101"),
            true,
        ),
        (
            DataCategory::Contracts,
            day("20260630"),
            day("20310630"),
            true,
        ),
        (DataCategory::DisputeResolution, noon, noon, true),
        (
            DataCategory::PrivacyRequests,
            noon,
            day("20320315") + 12 * 3_600_000_000,
            true,
        ),
        (
            DataCategory::SupportTickets,
            noon,
            day("20310315") + 12 * 3_600_000_000,
            true,
        ),
    ]
}

#[tokio::test]
async fn query_answers_a_records_own_event_without_a_subject() {
    let app = TestApp::spawn().await;
    for (category, event, until, legal_hold) in record_rows() {
        let answer = query(
            &app,
            proto::RetentionQueryRequest {
                event_time: Some(timestamp(event)),
                ..query_request(category, "")
            },
        )
        .await
        .unwrap();
        assert_eq!(keep_until(&answer), until, "{category:?}");
        assert_eq!(answer.legal_hold, legal_hold, "{category:?}");
        assert_eq!(answer.due, until <= micros(answer.as_of.as_ref().unwrap()));
        assert!(answer.revision.is_empty(), "nothing of the store was read");
    }
    // A lead is in no store: its id is not looked up.
    let lead = query(
        &app,
        proto::RetentionQueryRequest {
            event_time: Some(timestamp(day("20260101"))),
            ..query_request(DataCategory::LeadContact, "lead-77")
        },
    )
    .await
    .unwrap();
    assert_eq!(lead.subject_id, "lead-77");
    // An invoice dated 2026-03-15 is due from 2037-01-01 on, not before.
    let invoice = |as_of: i64| proto::RetentionQueryRequest {
        event_time: Some(timestamp(day("20260315"))),
        as_of: Some(timestamp(as_of)),
        ..query_request(DataCategory::Invoices, "")
    };
    assert!(!query(&app, invoice(day("20370101") - 1)).await.unwrap().due);
    assert!(query(&app, invoice(day("20370101"))).await.unwrap().due);
    // A contract still running: kept five years after an end to come, not on hold yet.
    let running = ask(&app, DataCategory::Contracts, "").await;
    assert!(matches!(running.keep, Some(Keep::AfterEvent(_))));
    assert!(!running.legal_hold);
    app.stop().await;
}

#[tokio::test]
async fn query_as_of_a_past_instant_reads_the_state_then() {
    let app = TestApp::spawn().await;
    app.upsert("cleo", Plan::Free).await;
    app.set_choice("cleo", Purpose::AnalyticsCookies, Choice::Granted)
        .await
        .unwrap();
    let granted_at = last_change(&app, "cleo").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused_at = refuse(&app, "cleo", Purpose::AnalyticsCookies).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let deleted_at = delete(&app, "cleo").await;

    let as_of = |category: DataCategory, at: i64| proto::RetentionQueryRequest {
        as_of: Some(timestamp(at)),
        ..query_request(category, "cleo")
    };
    let then = query(&app, as_of(DataCategory::NonEssentialCookies, granted_at))
        .await
        .unwrap();
    assert_eq!(
        then.keep,
        Some(Keep::UntilEvent(RetentionEvent::ConsentWithdrawal as i32))
    );
    assert!(!then.due);
    assert_eq!(micros(then.as_of.as_ref().unwrap()), granted_at);
    let after_refusal = query(&app, as_of(DataCategory::NonEssentialCookies, refused_at))
        .await
        .unwrap();
    assert_eq!(keep_until(&after_refusal), refused_at);
    assert!(after_refusal.due);
    // Now the account is deleted, and its choices with it.
    let now = ask(&app, DataCategory::NonEssentialCookies, "cleo").await;
    assert_eq!(now.keep, Some(Keep::NotKept(true)));
    let account_before = query(&app, as_of(DataCategory::AccountData, deleted_at - 1))
        .await
        .unwrap();
    assert!(matches!(account_before.keep, Some(Keep::AfterEvent(_))));
    assert!(!account_before.legal_hold);
    let account_after = query(&app, as_of(DataCategory::AccountData, deleted_at))
        .await
        .unwrap();
    assert_eq!(keep_until(&account_after), Period::Years(1).end(deleted_at));
    assert!(account_after.legal_hold);
    // Before the subject existed.
    assert_status(
        query(
            &app,
            as_of(DataCategory::AccountData, granted_at - 3_600_000_000),
        )
        .await,
        Code::NotFound,
        "subject_id",
    );
    // Before any policy was in force.
    assert_status(
        query(&app, as_of(DataCategory::AccountData, day("20250101"))).await,
        Code::InvalidArgument,
        "as_of: is before the first policy version",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_later_policy_version_changes_the_schedule_from_its_effective_date() {
    let app = TestApp::spawn().await;
    let effective = SystemTime::now() + Duration::from_secs(3_600);
    let api_io =
        "[retention.API_IO]\nkeep = \"AFTER_EVENT\"\nevent = \"GENERATION\"\nperiod = \"30d\"";
    assert!(BUILTIN.contains(api_io));
    let source = BUILTIN
        .replacen(
            "version = \"2026-01-01\"",
            "version = \"2026-retention-test\"",
            1,
        )
        .replacen(
            "effective_from = 2026-01-01",
            &format!(
                "effective_from = {}",
                humantime::format_rfc3339_micros(effective)
            ),
            1,
        )
        .replacen(api_io, &api_io.replace("30d", "45d"), 1);
    app.policies()
        .apply_policy(proto::ApplyPolicyRequest {
            source,
            actor: actor(),
        })
        .await
        .unwrap();
    app.upsert("org-1", Plan::ApiPaid).await;
    let generated = now_micros();
    let at = |as_of: Option<SystemTime>| proto::RetentionQueryRequest {
        event_time: Some(timestamp(generated)),
        as_of: as_of.map(prost_types::Timestamp::from),
        ..query_request(DataCategory::ApiIo, "org-1")
    };
    let today = query(&app, at(None)).await.unwrap();
    assert_eq!(today.policy_version, "2026-01-01");
    assert_eq!(keep_until(&today), generated + 30 * MICROS_PER_DAY);
    let later = query(&app, at(Some(effective))).await.unwrap();
    assert_eq!(later.policy_version, "2026-retention-test");
    assert_eq!(keep_until(&later), generated + 45 * MICROS_PER_DAY);
    // Due after that date answers under it too.
    let cutoff = due(
        &app,
        due_request(DataCategory::ApiIo, Some(micros(&effective.into()))),
    )
    .await
    .unwrap();
    assert_eq!(cutoff.policy_version, "2026-retention-test");
    assert_eq!(
        micros(cutoff.record_cutoff.unwrap().due_through.as_ref().unwrap()),
        micros(&effective.into()) - 45 * MICROS_PER_DAY
    );
    app.stop().await;
}

#[tokio::test]
async fn query_refuses_bad_input_naming_the_field() {
    let app = TestApp::spawn().await;
    app.upsert("ada", Plan::Pro).await;
    let cases = [
        (
            query_request(DataCategory::Unspecified, "ada"),
            Code::InvalidArgument,
            "category: must be set",
        ),
        (
            proto::RetentionQueryRequest {
                category: 42,
                ..query_request(DataCategory::AccountData, "ada")
            },
            Code::InvalidArgument,
            "category: unknown DataCategory value 42",
        ),
        (
            query_request(DataCategory::AccountData, ""),
            Code::InvalidArgument,
            "subject_id: is required",
        ),
        (
            query_request(DataCategory::AccountData, "not a subject"),
            Code::InvalidArgument,
            "subject_id: ",
        ),
        (
            query_request(DataCategory::AccountData, "nobody"),
            Code::NotFound,
            "subject_id: subject nobody not found",
        ),
        (
            proto::RetentionQueryRequest {
                event_time: Some(timestamp(day("20260101"))),
                ..query_request(DataCategory::AccountData, "ada")
            },
            Code::InvalidArgument,
            "event_time: ACCOUNT_DATA under policy 2026-01-01 reads no event of its own",
        ),
        (
            proto::RetentionQueryRequest {
                data_deleted_at: Some(timestamp(day("20260101"))),
                ..query_request(DataCategory::ApiIo, "ada")
            },
            Code::InvalidArgument,
            "data_deleted_at: API_IO under policy 2026-01-01 reads no deletion",
        ),
        (
            proto::RetentionQueryRequest {
                as_of: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 1_000_000_000,
                }),
                ..query_request(DataCategory::AccountData, "ada")
            },
            Code::InvalidArgument,
            "as_of.nanos: ",
        ),
    ];
    for (request, code, field) in cases {
        assert_status(query(&app, request).await, code, field);
    }
    app.stop().await;
}

#[tokio::test]
async fn due_lists_the_subjects_whose_data_is_due_page_by_page() {
    let app = TestApp::spawn().await;
    let mut deleted = Vec::new();
    for index in 0..5 {
        let id = format!("gone-{index}");
        app.upsert(&id, Plan::Free).await;
        deleted.push((id.clone(), delete(&app, &id).await));
    }
    app.upsert("active-1", Plan::Free).await;
    app.upsert("active-2", Plan::Pro).await;

    // Conversations are due with the account, at once; pages of two.
    let (listed, sizes) = all_due(
        &app,
        proto::RetentionDueRequest {
            page_size: 2,
            ..due_request(DataCategory::ChatConversation, None)
        },
    )
    .await;
    let ids: Vec<&str> = listed.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["gone-0", "gone-1", "gone-2", "gone-3", "gone-4"]);
    assert_eq!(sizes, [2, 2, 1]);
    for (subject, (_, deleted_at)) in listed.iter().zip(&deleted) {
        assert_eq!(micros(subject.keep_until.as_ref().unwrap()), *deleted_at);
        assert!(!subject.legal_hold);
    }
    // The pages after the first answer for its instant, which the token keeps.
    let two = due(
        &app,
        proto::RetentionDueRequest {
            page_size: 2,
            ..due_request(DataCategory::ChatConversation, None)
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let next = due(
        &app,
        proto::RetentionDueRequest {
            page_size: 2,
            page_token: two.next_page_token.clone(),
            ..due_request(DataCategory::ChatConversation, None)
        },
    )
    .await
    .unwrap();
    assert_eq!(next.before, two.before);
    assert_status(
        due(
            &app,
            proto::RetentionDueRequest {
                page_token: two.next_page_token,
                ..due_request(
                    DataCategory::ChatConversation,
                    Some(now_micros() + MICROS_PER_DAY),
                )
            },
        )
        .await,
        Code::InvalidArgument,
        "before: differs",
    );
    let first = due(&app, due_request(DataCategory::ChatConversation, None))
        .await
        .unwrap();
    assert!(first.reads_subjects);
    assert!(first.revision.starts_with("r1."));
    let cutoff = first.record_cutoff.unwrap();
    assert_eq!(
        cutoff.event,
        RetentionEvent::ConversationOrAccountDeletion as i32
    );
    assert_eq!(
        micros(cutoff.due_through.as_ref().unwrap()),
        micros(first.before.as_ref().unwrap())
    );

    // Account data a year after the deletion, on legal hold: not yet, then all of it.
    let last_deleted = deleted.last().unwrap().1;
    let half_a_year = due(
        &app,
        due_request(
            DataCategory::AccountData,
            Some(now_micros() + 180 * MICROS_PER_DAY),
        ),
    )
    .await
    .unwrap();
    assert!(half_a_year.subjects.is_empty() && half_a_year.reads_subjects);
    assert!(half_a_year.record_cutoff.is_none());
    let first_deleted = deleted[0].1;
    let between = Period::Years(1).end(first_deleted + (last_deleted - first_deleted) / 2);
    let (some, _) = all_due(&app, due_request(DataCategory::AccountData, Some(between))).await;
    assert!(!some.is_empty() && some.len() < deleted.len(), "{some:?}");
    let year_later = Period::Years(1).end(last_deleted);
    let (all, _) = all_due(
        &app,
        due_request(DataCategory::AccountData, Some(year_later)),
    )
    .await;
    assert_eq!(all.len(), deleted.len());
    for (subject, (id, deleted_at)) in all.iter().zip(&deleted) {
        assert_eq!(&subject.subject_id, id);
        assert_eq!(
            micros(subject.keep_until.as_ref().unwrap()),
            Period::Years(1).end(*deleted_at)
        );
        assert!(subject.legal_hold);
    }
    app.stop().await;
}

#[tokio::test]
async fn due_lists_withdrawn_consents_and_zero_data_retention() {
    let app = TestApp::spawn().await;
    app.upsert("granted", Plan::Free).await;
    app.set_choice("granted", Purpose::MarketingCookies, Choice::Granted)
        .await
        .unwrap();
    app.upsert("never", Plan::Free).await;
    app.upsert("refused", Plan::Free).await;
    let refused_at = refuse(&app, "refused", Purpose::AnalyticsCookies).await;
    app.upsert("unsubscribed", Plan::Free).await;
    refuse(&app, "unsubscribed", Purpose::MarketingEmail).await;
    app.upsert("gone", Plan::Free).await;
    app.set_choice("gone", Purpose::AnalyticsCookies, Choice::Granted)
        .await
        .unwrap();
    delete(&app, "gone").await;
    zero_data_retention(&app, "zero").await;

    let (cookies, _) = all_due(&app, due_request(DataCategory::NonEssentialCookies, None)).await;
    let ids: Vec<&str> = cookies.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["gone", "refused"], "a deletion erases the consent");
    assert_eq!(cookies[0].keep_until, None, "not kept at all");
    assert_eq!(micros(cookies[1].keep_until.as_ref().unwrap()), refused_at);
    let (newsletter, _) = all_due(&app, due_request(DataCategory::MarketingContact, None)).await;
    let ids: Vec<&str> = newsletter.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["gone", "unsubscribed"]);

    let api = due(&app, due_request(DataCategory::ApiIo, None))
        .await
        .unwrap();
    let ids: Vec<&str> = api.subjects.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["zero"]);
    let cutoff = api.record_cutoff.unwrap();
    assert_eq!(cutoff.event, RetentionEvent::Generation as i32);
    assert_eq!(
        micros(cutoff.due_through.as_ref().unwrap()),
        micros(api.before.as_ref().unwrap()) - 30 * MICROS_PER_DAY
    );

    // Invoices are not in the store: only the cut-off, the last instant of 2026 on 2037-01-01.
    let invoices = due(
        &app,
        due_request(DataCategory::Invoices, Some(day("20370101"))),
    )
    .await
    .unwrap();
    assert!(!invoices.reads_subjects && invoices.subjects.is_empty());
    assert!(invoices.next_page_token.is_empty());
    let cutoff = invoices.record_cutoff.unwrap();
    assert_eq!(cutoff.event, RetentionEvent::InvoiceIssued as i32);
    assert_eq!(
        micros(cutoff.due_through.as_ref().unwrap()),
        day("20270101") - 1
    );

    // Bad input names the field.
    assert_status(
        due(
            &app,
            due_request(DataCategory::Invoices, Some(now_micros() - 60_000_000)),
        )
        .await,
        Code::InvalidArgument,
        "before: is in the past",
    );
    assert_status(
        due(&app, due_request(DataCategory::Unspecified, None)).await,
        Code::InvalidArgument,
        "category: must be set",
    );
    assert_status(
        due(
            &app,
            proto::RetentionDueRequest {
                page_token: "nonsense".into(),
                ..due_request(DataCategory::ChatConversation, None)
            },
        )
        .await,
        Code::InvalidArgument,
        "page_token: ",
    );
    // An oversize page is lowered to the maximum, as in every listing.
    assert!(
        due(
            &app,
            proto::RetentionDueRequest {
                page_size: 5_000,
                ..due_request(DataCategory::ChatConversation, None)
            },
        )
        .await
        .is_ok()
    );
    app.stop().await;
}
