//! Policy versions: applied without a restart, in force from their effective date only,
//! recorded in the audit log, kept across restarts, taken up by other replicas, compared with
//! a dry run; and checks `as_of` a past instant, under the version and the state then.

use std::time::{Duration, SystemTime};

use assent::proto::{self, Choice, Decision, Plan, Purpose};
use tonic::Code;

use crate::helpers::{TestApp, actor, assert_status, check_request, token, with_token};

/// The built-in policy file.
const BUILTIN: &str = include_str!("../../policies/2026-01-01.toml");

/// A second version, in force from `effective_from`: the free plan joins the plans never
/// trained on (rule T4).
fn free_plan_excluded(version: &str, effective_from: SystemTime) -> String {
    let source = BUILTIN
        .replacen(
            "version = \"2026-01-01\"",
            &format!("version = \"{version}\""),
            1,
        )
        .replacen(
            "effective_from = 2026-01-01",
            &format!(
                "effective_from = {}",
                humantime::format_rfc3339_micros(effective_from)
            ),
            1,
        )
        .replacen(
            "plan = [\"TEAM\", \"ENTERPRISE\", \"API_PAID\"]",
            "plan = [\"FREE\", \"TEAM\", \"ENTERPRISE\", \"API_PAID\"]",
            1,
        );
    assert_ne!(source, BUILTIN);
    source
}

async fn apply(app: &TestApp, source: &str) -> Result<proto::ApplyPolicyResponse, tonic::Status> {
    app.policies()
        .apply_policy(proto::ApplyPolicyRequest {
            source: source.to_owned(),
            actor: actor(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn check_as_of(
    app: &TestApp,
    subject_id: &str,
    as_of: Option<SystemTime>,
) -> proto::CheckResponse {
    app.decisions()
        .check(proto::CheckRequest {
            as_of: as_of.map(prost_types::Timestamp::from),
            ..check_request(subject_id, Purpose::ModelTraining)
        })
        .await
        .unwrap()
        .into_inner()
}

fn answer(response: &proto::CheckResponse) -> (i32, &str, &str) {
    (
        response.decision,
        response.rule.as_str(),
        response.policy_version.as_str(),
    )
}

/// Waits out a short, fixed interval so that two instants of the test are distinct.
async fn tick() -> SystemTime {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    now
}

async fn sleep_until(instant: SystemTime) {
    if let Ok(wait) = instant.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
    }
}

const ALLOW: i32 = Decision::Allow as i32;
const DENY: i32 = Decision::Deny as i32;

/// The acceptance test: two versions and an opt-out in between.
#[tokio::test]
async fn a_version_decides_from_its_effective_date_and_as_of_answers_under_the_old() {
    let app = TestApp::spawn().await;
    app.upsert("ada", Plan::Free).await;
    app.upsert("bob", Plan::Free).await;
    let before_opt_out = tick().await;
    app.set_choice("ada", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    let after_opt_out = tick().await;

    let effective = SystemTime::now() + Duration::from_secs(2);
    let v2 = free_plan_excluded("2026-11-test", effective);
    let applied = apply(&app, &v2).await.unwrap();
    assert!(applied.changed);
    assert_eq!(applied.version, "2026-11-test");
    // Stored, not in force yet: decisions now are still the old version's, and hold until it
    // takes effect.
    let before = check_as_of(&app, "bob", None).await;
    assert_eq!(answer(&before), (ALLOW, "T6", "2026-01-01"));
    // (The version's file gives its instant to the microsecond.)
    let effective_at = prost_types::Timestamp::from(effective);
    assert_eq!(
        before.valid_until,
        Some(prost_types::Timestamp {
            nanos: effective_at.nanos / 1_000 * 1_000,
            ..effective_at
        })
    );
    // GetSubject's effective decisions say the same.
    let subject = app
        .subjects()
        .get_subject(proto::GetSubjectRequest {
            subject_id: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        subject
            .effective
            .iter()
            .all(|decision| decision.valid_until == before.valid_until)
    );

    sleep_until(effective).await;
    let after = check_as_of(&app, "bob", None).await;
    assert_eq!(answer(&after), (DENY, "T4", "2026-11-test"));
    // No later version: nothing changes it by time alone.
    assert_eq!(after.valid_until, None);
    // An answer as of a past instant says nothing of it.
    assert_eq!(
        check_as_of(&app, "bob", Some(before_opt_out))
            .await
            .valid_until,
        None
    );
    assert_eq!(
        answer(&check_as_of(&app, "ada", None).await),
        (DENY, "T4", "2026-11-test")
    );
    // As of past instants: the old version, on the state then.
    assert_eq!(
        answer(&check_as_of(&app, "ada", Some(before_opt_out)).await),
        (ALLOW, "T6", "2026-01-01")
    );
    assert_eq!(
        answer(&check_as_of(&app, "ada", Some(after_opt_out)).await),
        (DENY, "T5", "2026-01-01")
    );
    assert_eq!(
        answer(&check_as_of(&app, "bob", Some(after_opt_out)).await),
        (ALLOW, "T6", "2026-01-01")
    );
    assert_eq!(
        answer(&check_as_of(&app, "ada", Some(SystemTime::now())).await),
        (DENY, "T4", "2026-11-test")
    );
    // Before the subject existed, it was unknown.
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 60);
    assert_eq!(
        answer(&check_as_of(&app, "ada", Some(long_ago)).await),
        (DENY, "G1", "2026-01-01")
    );

    // The version is recorded in the audit log, in the chain.
    let events = app.all_events(None).await;
    let recorded = events
        .iter()
        .find(|event| event.kind == "policy_applied")
        .expect("the version is in the audit log");
    assert_eq!(recorded.subject_id, "");
    assert_eq!(recorded.policy_version, "2026-11-test");
    assert_eq!(recorded.revision, applied.revision);
    let detail: serde_json::Value = serde_json::from_str(&recorded.detail_json).unwrap();
    assert_eq!(detail["version"], "2026-11-test");
    assert!(app.verify_chain().await.ok);
    // Writes after it name the version in force when they were made.
    app.set_choice("bob", Purpose::Memory, Choice::Refused)
        .await
        .unwrap();
    let last = app.all_events(Some("bob")).await.pop().unwrap();
    assert_eq!(last.policy_version, "2026-11-test");

    // It survives a restart.
    let data = app.stop().await;
    let app = TestApp::spawn_on(data).await;
    let listed = app
        .policies()
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .versions
        .iter()
        .map(|version| version.version.as_str())
        .collect();
    assert_eq!(names, ["2026-01-01", "2026-11-test"]);
    assert!(listed.versions[0].builtin);
    assert!(listed.versions[1].applied_at.is_some());
    assert_eq!(listed.in_force, "2026-11-test");
    assert_eq!(
        answer(&check_as_of(&app, "bob", None).await),
        (DENY, "T4", "2026-11-test")
    );
    let stored = app
        .policies()
        .get_policy(proto::GetPolicyRequest {
            version: "2026-11-test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.source, v2);
    app.stop().await;
}

#[tokio::test]
async fn bad_versions_are_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let future = SystemTime::now() + Duration::from_secs(3_600);
    let v2 = free_plan_excluded("2026-12-test", future);
    let first = apply(&app, &v2).await.unwrap();
    assert!(first.changed);
    let again = apply(&app, &v2).await.unwrap();
    assert!(!again.changed, "the same text again changes nothing");
    assert_eq!(again.revision, first.revision);

    let other_text = v2.replacen("description = \"\"\"", "description = \"\"\"Edited. ", 1);
    assert_status(
        apply(&app, &other_text).await,
        Code::AlreadyExists,
        "source",
    );
    let builtin_renamed_text = BUILTIN.replacen("description = \"\"\"", "description = \"\"\"x", 1);
    assert_status(
        apply(&app, &builtin_renamed_text).await,
        Code::AlreadyExists,
        "source",
    );
    let past = free_plan_excluded("2026-past", SystemTime::now() - Duration::from_secs(60));
    assert_status(apply(&app, &past).await, Code::FailedPrecondition, "source");
    let same_instant = free_plan_excluded("2026-twin", future);
    assert_status(
        apply(&app, &same_instant).await,
        Code::FailedPrecondition,
        "source",
    );
    assert_status(apply(&app, "").await, Code::InvalidArgument, "source");
    assert_status(
        apply(&app, "version = \"x\"\n").await,
        Code::InvalidArgument,
        "source",
    );
    let no_actor = app
        .policies()
        .apply_policy(proto::ApplyPolicyRequest {
            source: free_plan_excluded("2027-test", future + Duration::from_secs(60)),
            actor: None,
        })
        .await;
    assert_status(no_actor, Code::InvalidArgument, "actor");
    let events = app.all_events(None).await;
    let applied: Vec<_> = events
        .iter()
        .filter(|event| event.kind == "policy_applied")
        .collect();
    assert_eq!(applied.len(), 1, "only the first version was stored");

    // as_of out of range.
    let future_check = app
        .decisions()
        .check(proto::CheckRequest {
            as_of: Some(prost_types::Timestamp::from(future)),
            ..check_request("ada", Purpose::ModelTraining)
        })
        .await;
    assert_status(future_check, Code::InvalidArgument, "as_of");
    let before_every_policy = app
        .decisions()
        .check(proto::CheckRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
            ..check_request("ada", Purpose::ModelTraining)
        })
        .await;
    assert_status(before_every_policy, Code::InvalidArgument, "as_of");
    let bad_nanos = app
        .decisions()
        .check(proto::CheckRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: -1,
            }),
            ..check_request("ada", Purpose::ModelTraining)
        })
        .await;
    assert_status(bad_nanos, Code::InvalidArgument, "as_of.nanos");
    let mixed = app
        .decisions()
        .check(proto::CheckRequest {
            as_of: Some(prost_types::Timestamp::from(SystemTime::now())),
            consistency: Some(proto::Consistency {
                requirement: Some(proto::consistency::Requirement::FullyConsistent(true)),
            }),
            ..check_request("ada", Purpose::ModelTraining)
        })
        .await;
    assert_status(mixed, Code::InvalidArgument, "consistency");
    let unknown = app
        .policies()
        .get_policy(proto::GetPolicyRequest {
            version: "nope".into(),
        })
        .await;
    assert_status(unknown, Code::NotFound, "version");
    app.stop().await;
}

#[tokio::test]
async fn another_replica_takes_a_version_up_without_a_restart() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(first.data.clone()).await;
    first.upsert("bob", Plan::Free).await;
    let effective = SystemTime::now() + Duration::from_secs(1);
    apply(&first, &free_plan_excluded("2026-11-replica", effective))
        .await
        .unwrap();
    sleep_until(effective).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = second
            .decisions()
            .check(proto::CheckRequest {
                consistency: Some(proto::Consistency {
                    requirement: Some(proto::consistency::Requirement::FullyConsistent(true)),
                }),
                ..check_request("bob", Purpose::ModelTraining)
            })
            .await
            .unwrap()
            .into_inner();
        if response.policy_version == "2026-11-replica" {
            assert_eq!((response.decision, response.rule.as_str()), (DENY, "T4"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second replica did not take the version up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn a_diff_counts_the_answers_a_version_would_change() {
    let app = TestApp::spawn().await;
    app.upsert("ada", Plan::Free).await;
    app.set_choice("ada", Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    app.upsert("bob", Plan::Free).await;
    app.upsert("carol", Plan::Pro).await;
    let v2 = free_plan_excluded("2027-01-01", SystemTime::now() + Duration::from_secs(3_600));
    let diff = app
        .policies()
        .diff_policy(proto::DiffPolicyRequest {
            new_source: v2.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(diff.old_version, "2026-01-01");
    assert_eq!(diff.new_version, "2027-01-01");
    assert_eq!(diff.subjects_scanned, 3);
    let training = &diff.purposes[0];
    assert_eq!(training.purpose, Purpose::ModelTraining as i32);
    // ada: DENY T5 → DENY T4 (another rule); bob: ALLOW T6 → DENY T4; carol unchanged.
    assert_eq!(
        (
            training.changed,
            training.allow_to_deny,
            training.deny_to_allow
        ),
        (2, 1, 0)
    );
    let mut examples: Vec<(&str, &str, &str)> = training
        .examples
        .iter()
        .map(|example| {
            (
                example.subject_id.as_str(),
                example.old_rule.as_str(),
                example.new_rule.as_str(),
            )
        })
        .collect();
    examples.sort();
    assert_eq!(examples, [("ada", "T5", "T4"), ("bob", "T6", "T4")]);
    assert!(diff.purposes[1..].iter().all(|other| other.changed == 0));
    // Nothing was stored.
    assert!(
        app.all_events(None)
            .await
            .iter()
            .all(|event| event.kind != "policy_applied")
    );
    let same = app
        .policies()
        .diff_policy(proto::DiffPolicyRequest {
            old_source: BUILTIN.to_owned(),
            new_source: BUILTIN.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(same.purposes.iter().all(|purpose| purpose.changed == 0));
    assert!(diff.retention.is_empty(), "{:?}", diff.retention);
    assert!(same.retention.is_empty());
    // A version that keeps technical data two years instead of one: its row is listed, as
    // written in each file.
    let v3 = v2.replacen(
        "event = \"CONNECTION\"\nperiod = \"1y\"",
        "event = \"CONNECTION\"\nperiod = \"2y\"",
        1,
    );
    assert_ne!(v3, v2);
    let schedule = app
        .policies()
        .diff_policy(proto::DiffPolicyRequest {
            old_source: v2.clone(),
            new_source: v3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(schedule.purposes.iter().all(|purpose| purpose.changed == 0));
    let rows: Vec<(i32, &str, &str)> = schedule
        .retention
        .iter()
        .map(|row| (row.category, row.old_row.as_str(), row.new_row.as_str()))
        .collect();
    let row = |period: &str| {
        format!(
            "keep = \"AFTER_EVENT\", event = \"CONNECTION\", period = \"{period}\", \
             legal_hold = \"ALWAYS\", section = \"privacy policy §5, Technical data\""
        )
    };
    assert_eq!(
        rows,
        [(
            proto::DataCategory::TechnicalData as i32,
            row("1y").as_str(),
            row("2y").as_str()
        )]
    );
    let bad = app
        .policies()
        .diff_policy(proto::DiffPolicyRequest {
            new_source: v2,
            max_examples: 1_000,
            ..Default::default()
        })
        .await;
    assert_status(bad, Code::InvalidArgument, "max_examples");
    app.stop().await;
}

#[tokio::test]
async fn a_diff_names_subjects_only_to_a_caller_that_may_read_them() {
    let app = TestApp::spawn_with_tokens().await;
    let admin = token("operator", "admin");
    for (subject_id, plan) in [
        ("ada", Plan::Free),
        ("bob", Plan::Free),
        ("carol", Plan::Pro),
    ] {
        app.subjects()
            .upsert_subject(with_token(
                proto::UpsertSubjectRequest {
                    subject_id: subject_id.into(),
                    plan: Some(plan as i32),
                    actor: actor(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap();
    }
    let v2 = free_plan_excluded("2027-01-01", SystemTime::now() + Duration::from_secs(3_600));
    let diff = async |scopes: &str| {
        app.policies()
            .diff_policy(with_token(
                proto::DiffPolicyRequest {
                    new_source: v2.clone(),
                    ..Default::default()
                },
                &token("policy-author", scopes),
            ))
            .await
            .map(tonic::Response::into_inner)
    };
    let training_ids = |diff: &proto::DiffPolicyResponse| {
        let mut ids: Vec<(String, String, String)> = diff.purposes[0]
            .examples
            .iter()
            .map(|example| {
                (
                    example.subject_id.clone(),
                    example.old_rule.clone(),
                    example.new_rule.clone(),
                )
            })
            .collect();
        ids.sort();
        ids
    };
    // `policies:read` alone: the counts, and no subject id anywhere.
    let counts = diff("policies:read").await.unwrap();
    assert!(counts.examples_withheld);
    assert!(!counts.truncated);
    assert_eq!(
        (counts.subjects_scanned, counts.distinct_states),
        (3, 2),
        "ada and bob share a state"
    );
    let training = &counts.purposes[0];
    assert_eq!(training.purpose, Purpose::ModelTraining as i32);
    assert_eq!((training.changed, training.allow_to_deny), (2, 2));
    assert!(
        counts
            .purposes
            .iter()
            .all(|purpose| purpose.examples.is_empty())
    );
    // With `subjects:read` (or `admin`) as well: the examples.
    for scopes in ["policies:read subjects:read", "admin"] {
        let full = diff(scopes).await.unwrap();
        assert!(!full.examples_withheld, "{scopes}");
        assert_eq!(full.purposes[0].changed, 2);
        let expected = [("ada", "T6", "T4"), ("bob", "T6", "T4")]
            .map(|(id, old, new)| (id.to_owned(), old.to_owned(), new.to_owned()));
        assert_eq!(training_ids(&full), expected, "{scopes}");
    }
    // `subjects:read` alone does not reach DiffPolicy.
    let refused = diff("subjects:read").await;
    assert_status(refused, Code::PermissionDenied, "authorization:");
    app.stop().await;
}

#[tokio::test]
async fn a_version_stored_before_allows_were_declared_still_loads() {
    use std::sync::Arc;

    use assent::domain::Actor;
    use assent::policy::CompiledPolicy;
    use assent::store::testing::{Backend, TestDatabase};
    use assent::store::{NewPolicy, Store, WriteContext};

    let declaration = "allow = [\"SERVICE_DELIVERY\"]\n";
    let effective = SystemTime::now() + Duration::from_secs(3_600);
    let undeclared = free_plan_excluded("2027-02-01", effective).replacen(declaration, "", 1);
    let effective_from_micros = CompiledPolicy::compile_stored(&undeclared)
        .unwrap()
        .effective_from_micros();
    // Stored as an earlier release stored it: the store takes the text as given.
    let database = Arc::new(TestDatabase::create(Backend::from_env()).await);
    let store = Store::open(database.location()).await.unwrap();
    store
        .apply_policy(
            &NewPolicy {
                version: "2027-02-01".into(),
                effective_from_micros,
                description: String::new(),
                source: undeclared.clone(),
            },
            &WriteContext {
                caller: "an-earlier-release".into(),
                actor: Actor::parse("operator", "applied before declarations").unwrap(),
                trace_id: String::new(),
                policy_version: "2026-01-01".into(),
            },
        )
        .await
        .unwrap();
    store.close().await;

    // The server starts with it, and applying the same text again changes nothing.
    let app = TestApp::spawn_on(database).await;
    let listed = app
        .policies()
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .versions
            .iter()
            .any(|version| version.version == "2027-02-01"),
        "{listed:?}"
    );
    let again = apply(&app, &undeclared).await.unwrap();
    assert_eq!(
        (again.version.as_str(), again.changed),
        ("2027-02-01", false)
    );
    // A new version must declare its degraded ALLOW.
    let next = undeclared.replacen("version = \"2027-02-01\"", "version = \"2027-03-01\"", 1);
    let next = next.replacen(
        &format!(
            "effective_from = {}",
            humantime::format_rfc3339_micros(effective)
        ),
        &format!(
            "effective_from = {}",
            humantime::format_rfc3339_micros(effective + Duration::from_secs(60))
        ),
        1,
    );
    assert_status(
        apply(&app, &next).await,
        Code::InvalidArgument,
        "source: degraded.purposes.SERVICE_DELIVERY: rule `U2` allows SERVICE_DELIVERY",
    );
    let declared = next.replacen(
        "purposes = { SERVICE_DELIVERY = \"U2\" }\n",
        &format!("purposes = {{ SERVICE_DELIVERY = \"U2\" }}\n{declaration}"),
        1,
    );
    assert!(apply(&app, &declared).await.unwrap().changed);
    app.stop().await;
}
