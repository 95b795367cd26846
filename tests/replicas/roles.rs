//! Two database roles, as docs/operations.md sets them up: an owner that migrates, and the
//! server's role, which reads and appends to the audit log but cannot change it. The owner
//! migrates and grants with `assent migrate --grant-to`; `assent serve` runs as the server's
//! role with `run_migrations = false`, writes and answers; then, connected as that role,
//! everything that would rewrite history is refused by PostgreSQL with a permission error
//! (SQLSTATE 42501), and the events stay.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use assent::proto::audit_client::AuditClient;
use assent::proto::{self, Choice, Plan, Purpose};
use assent::store::RUNTIME_GRANTS;
use sqlx::{Connection, PgConnection, Row};

use crate::database_roles::Roles;
use crate::{actor, process};

/// The privileges PostgreSQL knows on a table.
const TABLE_PRIVILEGES: [&str; 7] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// Runs `assent ARGS` with the database URL `url` and these settings, until it exits (at most
/// 30 s).
fn assent(args: &[&str], url: &str, settings: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_assent"));
    command
        .args(args)
        .env("ASSENT_DATABASE_URL", url)
        .env("ASSENT_LISTEN", "127.0.0.1:0")
        .env("ASSENT_ADMIN_LISTEN", "off")
        .env_remove("ASSENT_RUN_MIGRATIONS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in settings {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("assent {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The SQLSTATE of a failed statement.
fn sqlstate(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> String {
    match result {
        Ok(done) => panic!("allowed: {} rows affected", done.rows_affected()),
        Err(sqlx::Error::Database(error)) => error.code().unwrap_or_default().into_owned(),
        Err(other) => panic!("not a database error: {other}"),
    }
}

async fn event_count(connection: &mut PgConnection) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM audit_events")
        .fetch_one(connection)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_role_appends_to_the_audit_log_and_cannot_rewrite_it() {
    let roles = Roles::create().await;
    let owner_url = roles.url_as(&roles.owner);
    let runtime_url = roles.url_as(&roles.runtime);
    let checked = [("ASSENT_RUN_MIGRATIONS", "false")];

    // Before any migration: the server's role cannot migrate (it may create nothing), and,
    // told not to, refuses the database as older than it knows.
    let refused = assent(&["serve"], &runtime_url, &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("may not change the schema")
            && text(&refused.stderr).contains("permission denied for schema"),
        "{}",
        text(&refused.stderr)
    );
    let refused = assent(&["serve"], &runtime_url, &checked);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("the database schema is older than this binary"),
        "{}",
        text(&refused.stderr)
    );

    // The owner migrates; without --grant-to, the grants are printed for review.
    let migrated = assent(&["migrate"], &owner_url, &[]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let printed = text(&migrated.stdout);
    assert!(
        printed.contains(r#"GRANT SELECT, INSERT ON TABLE "public"."audit_events" TO "ROLE";"#),
        "{printed}"
    );
    // The owner cannot be its own server role: grants would not limit it.
    let refused = assent(&["migrate", "--grant-to", &roles.owner], &owner_url, &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("owns the schema"),
        "{}",
        text(&refused.stderr)
    );
    let granted = assent(&["migrate", "--grant-to", &roles.runtime], &owner_url, &[]);
    assert!(granted.status.success(), "{}", text(&granted.stderr));
    assert!(
        text(&granted.stdout).contains(&format!("granted role {}", roles.runtime)),
        "{}",
        text(&granted.stdout)
    );

    // The server's role has exactly RUNTIME_GRANTS on every table of the schema: a table a
    // migration adds without its line there fails here.
    let mut owner = PgConnection::connect(&owner_url).await.unwrap();
    let tables: Vec<String> = sqlx::query(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace
           AND c.relkind IN ('r', 'p') AND NOT c.relispartition
         ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert!(tables.contains(&"audit_events".to_owned()), "{tables:?}");
    for table in &tables {
        let listed = RUNTIME_GRANTS
            .iter()
            .find(|(object, _)| *object == format!("TABLE {table}"))
            .unwrap_or_else(|| {
                panic!("table {table} has no line in RUNTIME_GRANTS (src/store/postgres.rs)")
            });
        let expected: BTreeSet<&str> = listed.1.split(", ").collect();
        let mut held = BTreeSet::new();
        for privilege in TABLE_PRIVILEGES {
            let (has,): (bool,) = sqlx::query_as("SELECT has_table_privilege($1::name, $2, $3)")
                .bind(&roles.runtime)
                .bind(table)
                .bind(privilege)
                .fetch_one(&mut owner)
                .await
                .unwrap();
            if has {
                held.insert(privilege);
            }
        }
        assert_eq!(held, expected, "the server's privileges on {table}");
    }

    // The server runs as its role, checking the schema instead of migrating: a write, and a
    // Check that waits for its decision-log row (the day's partition made through the
    // owner's function).
    let server = process::ServerProcess::start(&[
        ("ASSENT_DATABASE_URL", runtime_url.clone()),
        ("ASSENT_RUN_MIGRATIONS", "false".to_owned()),
        ("ASSENT_DECISION_LOG", "all".to_owned()),
    ]);
    let channel = server.channel().await;
    let mut subjects = proto::subjects_client::SubjectsClient::new(channel.clone());
    let mut decisions = proto::decisions_client::DecisionsClient::new(channel.clone());
    subjects
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: "roles-user".into(),
            plan: Some(Plan::Pro as i32),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    subjects
        .set_choice(proto::SetChoiceRequest {
            subject_id: "roles-user".into(),
            purpose: Purpose::MarketingEmail as i32,
            choice: Choice::Granted as i32,
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = decisions
        .check(proto::CheckRequest {
            subject_id: "roles-user".into(),
            purpose: Purpose::MarketingEmail as i32,
            require_audit: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.decision, proto::Decision::Allow as i32, "{answer:?}");
    let (partitions, partition_owner): (i64, Option<String>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(pg_get_userbyid(c.relowner)::text) FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'decision_log'::regclass",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(partitions, 1);
    assert_eq!(partition_owner.as_deref(), Some(roles.owner.as_str()));

    // As the server's role: every way of rewriting the audit log is refused for want of
    // privilege (not merely by the append-only trigger, which the owner could drop).
    let mut runtime = PgConnection::connect(&runtime_url).await.unwrap();
    let before = event_count(&mut runtime).await;
    assert_eq!(before, 2);
    for statement in [
        "UPDATE audit_events SET caller = 'someone else'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DROP TRIGGER audit_events_append_only ON audit_events",
        "DROP TRIGGER audit_events_append_only_truncate ON audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DROP FUNCTION audit_events_append_only()",
        "DROP TABLE audit_events",
        "DELETE FROM audit_chain_head",
        "CREATE TABLE audit_events_copy (sequence BIGINT)",
    ] {
        let result = sqlx::query(statement).execute(&mut runtime).await;
        assert_eq!(sqlstate(result), "42501", "{statement}");
    }
    assert_eq!(event_count(&mut runtime).await, before);
    let (triggers,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM pg_trigger
         WHERE tgrelid = 'audit_events'::regclass AND tgenabled = 'O'",
    )
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(triggers, 2);

    // The chain the server wrote still verifies, and the server still writes.
    let report = AuditClient::new(channel)
        .verify_chain(proto::VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 2);
    subjects
        .set_choice(proto::SetChoiceRequest {
            subject_id: "roles-user".into(),
            purpose: Purpose::MarketingEmail as i32,
            choice: Choice::Refused as i32,
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(event_count(&mut runtime).await, before + 1);
    runtime.close().await.unwrap();
    owner.close().await.unwrap();
    server.stop();
}
