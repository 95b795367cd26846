//! `Store::verify_state` on each backend: a history written through the store matches its
//! events; rows changed past the write path are reported for their subject.

use super::*;
use crate::domain::Jurisdiction;
use crate::policy::ConsentMethod;
use crate::policy::rights::RightKind;
use crate::store::state_check::Paging;

crate::store::testing::backend_tests!(
    a_history_written_through_the_store_matches_its_events,
    rows_changed_past_the_write_path_are_reported_by_subject,
);

/// Pages of three subjects and four events, so every page boundary is crossed.
const SMALL_PAGES: Paging = Paging {
    subjects: 3,
    events: 4,
};

/// Every kind of change, several subjects, policy versions and rights requests among them.
async fn write_a_history(store: &Store) {
    write(
        store,
        "u-plain",
        Command::Upsert(SubjectFields {
            plan: Some(Plan::Pro),
            jurisdiction: Some(Jurisdiction::parse("FR").unwrap()),
            gpc: Some(true),
            zero_data_retention: Some(false),
        }),
    )
    .await;
    write(store, "u-plain", upsert(Plan::Team)).await;
    write(store, "u-opted-out", upsert(Plan::Free)).await;
    write(
        store,
        "u-opted-out",
        consent(
            Purpose::ModelTraining,
            Some(Choice::Refused),
            "notice-3",
            ConsentMethod::SettingsPage,
            None,
        ),
    )
    .await;
    write(
        store,
        "u-opted-out",
        choice(Purpose::MarketingEmail, Some(Choice::Granted)),
    )
    .await;
    write(store, "u-opted-out", choice(Purpose::MarketingEmail, None)).await;
    // A choice that expires, recorded expired by the sweep, and one renewed.
    write(store, "u-cookies", upsert(Plan::Student)).await;
    for (purpose, expires_at) in [
        (Purpose::AnalyticsCookies, EXPIRES_AT),
        (Purpose::Memory, EXPIRES_AT + 10),
    ] {
        write(
            store,
            "u-cookies",
            consent(
                purpose,
                Some(Choice::Granted),
                "cookies-1",
                ConsentMethod::CookieBanner,
                Some(expires_at),
            ),
        )
        .await;
    }
    write(
        store,
        "u-cookies",
        consent(
            Purpose::Memory,
            Some(Choice::Granted),
            "cookies-2",
            ConsentMethod::CookieBanner,
            Some(EXPIRES_AT + 1_000_000),
        ),
    )
    .await;
    // An upsert after choices: its event carries the whole row, choices and provenance
    // included, and the choices' own stamps stay those of the events that stored them.
    write(
        store,
        "u-cookies",
        Command::Upsert(SubjectFields {
            gpc: Some(true),
            ..SubjectFields::default()
        }),
    )
    .await;
    let expired = store
        .expire_choices(EXPIRES_AT, &expiry_context())
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    // Feedback, flags and a restriction lifted.
    write(store, "u-talks", upsert(Plan::Enterprise)).await;
    for command in [
        Command::RecordFeedback {
            conversation_id: conversation("c-1"),
            rating: Rating::ThumbsUp,
        },
        Command::RecordFeedback {
            conversation_id: conversation("c-1"),
            rating: Rating::ThumbsDown,
        },
        Command::FlagConversation {
            conversation_id: conversation("c-1"),
            kind: FlagKind::UserReport,
        },
        Command::FlagConversation {
            conversation_id: conversation("c-2"),
            kind: FlagKind::AutomatedModeration,
        },
        Command::SetRestriction { restricted: true },
        Command::SetRestriction { restricted: false },
    ] {
        write(store, "u-talks", command).await;
    }
    // Deleted, with choices and facts erased.
    write(store, "u-gone", upsert(Plan::Pro)).await;
    write(
        store,
        "u-gone",
        choice(Purpose::Memory, Some(Choice::Granted)),
    )
    .await;
    write(
        store,
        "u-gone",
        Command::RecordFeedback {
            conversation_id: conversation("c-9"),
            rating: Rating::ThumbsUp,
        },
    )
    .await;
    write(store, "u-gone", Command::Delete).await;
    // A policy version: an event of no subject.
    store
        .apply_policy(
            &NewPolicy {
                version: "2031-01-01".to_owned(),
                effective_from_micros: EXPIRES_AT,
                description: "a later version".to_owned(),
                source: "version = \"2031-01-01\"".to_owned(),
            },
            &request("u-plain", upsert(Plan::Pro)).context,
        )
        .await
        .unwrap();
    // Rights requests and their effects: an objection refusing choices, an erasure deleting.
    for (subject_id, kind, purposes) in [
        (
            "u-objects",
            RightKind::Objection,
            vec![Purpose::ModelTraining, Purpose::Memory],
        ),
        ("u-erased", RightKind::Deletion, Vec::new()),
    ] {
        write(
            store,
            subject_id,
            Command::Upsert(SubjectFields {
                plan: Some(Plan::Free),
                jurisdiction: Some(Jurisdiction::parse("DE").unwrap()),
                ..SubjectFields::default()
            }),
        )
        .await;
        write(
            store,
            subject_id,
            choice(Purpose::Memory, Some(Choice::Granted)),
        )
        .await;
        let outcome = store
            .file_rights_request(
                &NewRightsRequest {
                    subject_id: subject(subject_id),
                    kind,
                    jurisdiction: None,
                    received_at_micros: None,
                    identity_verified: true,
                    purposes,
                },
                &request(subject_id, upsert(Plan::Free)).context,
                RightsEffects::All,
            )
            .await
            .unwrap();
        assert!(outcome.revisions.len() > 1, "{kind:?} took effect");
    }
}

async fn a_history_written_through_the_store_matches_its_events(backend: Backend) {
    let (_database, store) = fresh(backend).await;
    let empty = store.verify_state(100, |_| {}).await.unwrap();
    assert_eq!(empty, StateReport::default());
    write_a_history(&store).await;
    for paging in [Paging::default(), SMALL_PAGES] {
        let mut found = Vec::new();
        let report = store
            .verify_state_paged(100, paging, |mismatch| found.push(mismatch.clone()))
            .await
            .unwrap();
        assert!(report.ok(), "{paging:?}: {:#?}", report.mismatches);
        assert!(found.is_empty());
        assert_eq!(report.subjects_checked, 7, "{paging:?}");
        assert_eq!(report.unverifiable, 0);
        assert!(!report.truncated);
    }
    store.close().await;
}

async fn rows_changed_past_the_write_path_are_reported_by_subject(backend: Backend) {
    let (database, store) = fresh(backend).await;
    write_a_history(&store).await;
    write(&store, "u-untouched", upsert(Plan::Pro)).await;
    write(
        &store,
        "u-untouched",
        choice(Purpose::ModelTraining, Some(Choice::Refused)),
    )
    .await;
    let mut connection = outside_the_store(&database, None).await;
    for statement in [
        // The opted-out subject's training choice turned into a grant.
        "UPDATE choices SET choice = 'GRANTED'
         WHERE subject_id = 'u-opted-out' AND purpose = 'MODEL_TRAINING'",
        // A choice removed: the objection's refusal of memory.
        "DELETE FROM choices WHERE subject_id = 'u-objects' AND purpose = 'MEMORY'",
        // A subject no event created.
        "INSERT INTO subjects (subject_id, plan, jurisdiction, status, gpc, zero_data_retention,
                               created_at, updated_at, revision)
         VALUES ('u-ghost', 'ENTERPRISE', NULL, 'ACTIVE', FALSE, FALSE, 1, 1, 1)",
        // A plan changed.
        "UPDATE subjects SET plan = 'ENTERPRISE' WHERE subject_id = 'u-plain'",
    ] {
        connection
            .query(sqlx::AssertSqlSafe(statement))
            .execute()
            .await
            .unwrap();
    }
    drop(connection);
    // The hash chain covers the events only: it still verifies.
    assert!(store.verify_chain().await.unwrap().chain.ok);

    let mut found = Vec::new();
    for paging in [Paging::default(), SMALL_PAGES] {
        found.clear();
        let report = store
            .verify_state_paged(100, paging, |mismatch| found.push(mismatch.clone()))
            .await
            .unwrap();
        assert!(!report.ok());
        assert_eq!(report.subjects_checked, 9, "{paging:?}");
        assert_eq!(report.mismatched, 4);
        assert!(!report.truncated);
        let by_subject: Vec<(&str, Vec<&str>)> = report
            .mismatches
            .iter()
            .map(|mismatch| {
                (
                    mismatch.subject_id.as_str(),
                    mismatch.differences.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            by_subject,
            vec![
                ("u-ghost", vec!["subject: stored ACTIVE, events none"]),
                (
                    "u-objects",
                    vec!["choices.MEMORY: stored none, events REFUSED"]
                ),
                (
                    "u-opted-out",
                    vec!["choices.MODEL_TRAINING: stored GRANTED, events REFUSED"]
                ),
                ("u-plain", vec!["plan: stored ENTERPRISE, events TEAM"]),
            ],
            "{paging:?}"
        );
        assert_eq!(found, report.mismatches);
    }

    // Listing fewer than found: the rest are counted, and still handed over one by one.
    found.clear();
    let report = store
        .verify_state(2, |mismatch| found.push(mismatch.clone()))
        .await
        .unwrap();
    assert_eq!(report.mismatched, 4);
    assert_eq!(report.mismatches.len(), 2);
    assert!(report.truncated);
    assert_eq!(found.len(), 4);
    store.close().await;
}
