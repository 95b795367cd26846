//! A server whose audit log was cut behind its back, with the chain head rewritten so that the
//! chain still verifies, notices at start against the checkpoint it published before: it signs
//! nothing more, and says so in its metrics, its readiness and the checkpoint calls, while it
//! goes on answering checks.

use std::time::{Duration, Instant};

use assent::audit::merkle::{self, Frontier};
use assent::audit::{leaf_data, note};
use assent::proto::audit_client::AuditClient;
use assent::proto::{self, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use assent::store::{EventQuery, Store};
use sqlx::Connection as _;

use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;

use crate::process::{self, ServerProcess};

fn actor() -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: "tests".into(),
        reason: "checkpoint test".into(),
    })
}

/// Two events: the subject, and its grant of marketing e-mail.
async fn grant(channel: &tonic::transport::Channel, subject_id: &str) {
    let mut subjects = SubjectsClient::new(channel.clone());
    subjects
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: subject_id.into(),
            plan: Some(Plan::Free as i32),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    subjects
        .set_choice(proto::SetChoiceRequest {
            subject_id: subject_id.into(),
            purpose: Purpose::MarketingEmail as i32,
            choice: proto::Choice::Granted as i32,
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn email_rule(channel: &tonic::transport::Channel, subject_id: &str) -> String {
    DecisionsClient::new(channel.clone())
        .check(proto::CheckRequest {
            subject_id: subject_id.into(),
            purpose: Purpose::MarketingEmail as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rule
}

fn server(database: &TestDatabase, files: &std::path::Path) -> ServerProcess {
    ServerProcess::start(&[
        ("ASSENT_DATABASE_URL", database.url()),
        (
            "ASSENT_AUDIT_SIGNING_KEY_FILE",
            files.join("signing.key").display().to_string(),
        ),
        (
            "ASSENT_AUDIT_CHECKPOINT_DIR",
            files.join("checkpoints").display().to_string(),
        ),
        ("ASSENT_AUDIT_CHECKPOINT_INTERVAL_MS", "100".to_owned()),
    ])
}

/// The latest checkpoint the server publishes, once it covers `size` events.
async fn checkpoint_of(
    audit: &mut AuditClient<tonic::transport::Channel>,
    size: u64,
) -> proto::Checkpoint {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(checkpoint) = audit.get_checkpoint(proto::GetCheckpointRequest {}).await
            && checkpoint.get_ref().tree_size == size
        {
            return checkpoint.into_inner();
        }
        assert!(Instant::now() < deadline, "no checkpoint of {size} events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_behind_the_servers_back_stops_its_signing_and_its_readiness() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let files = tempfile::tempdir().unwrap();
    let (signer, verifier) = note::generate_key("audit.example.test/assent").unwrap();
    std::fs::write(files.path().join("signing.key"), signer).unwrap();

    let first = server(&database, files.path());
    let channel = first.channel().await;
    for n in 0..10 {
        grant(&channel, &format!("u-{n}")).await;
    }
    let mut audit = AuditClient::new(channel.clone());
    let published = checkpoint_of(&mut audit, 20).await;
    assert_eq!(published.verifier_key, verifier);
    assert_eq!(
        note::verify_checkpoint(&published.note, &verifier)
            .unwrap()
            .1,
        20
    );
    let (status, _) = process::http_get(&first.admin_address, "/readyz").await;
    assert_eq!(status, 200);
    first.stop();

    // The owner of the database removes the last three events and points the head, with its
    // tree peaks, at the new last one: the chain verifies.
    let store = Store::open(database.location()).await.unwrap();
    let events = store
        .events(&EventQuery {
            subject_id: None,
            after_sequence: 0,
            limit: 100,
        })
        .await
        .unwrap();
    store.close().await;
    let kept = &events[..17];
    let mut frontier = Frontier::new();
    for event in kept {
        frontier.push(merkle::leaf_hash(&leaf_data(event)));
    }
    let mut owner = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    for statement in [
        "DROP TRIGGER audit_events_append_only ON audit_events".to_owned(),
        "DELETE FROM audit_events WHERE sequence > 17".to_owned(),
        "DELETE FROM audit_payloads WHERE sequence > 17".to_owned(),
        format!(
            "UPDATE audit_chain_head SET sequence = 17, hash = '{}', frontier = '\\x{}'::BYTEA",
            kept[16].hash,
            hex::encode(frontier.to_bytes())
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut owner)
            .await
            .unwrap();
    }
    owner.close().await.unwrap();

    let second = server(&database, files.path());
    let channel = second.channel().await;
    let mut audit = AuditClient::new(channel.clone());
    let verified = audit
        .verify_chain(proto::VerifyChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "the chain alone cannot tell: {verified:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = process::http_get(&second.admin_address, "/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("audit log inconsistent"), "{body}");
    assert!(body.contains("17 events, fewer than the 20"), "{body}");
    let metrics = process::scrape(&second.admin_address).await;
    assert_eq!(metrics.get("assent_audit_log_consistent"), Some(&0.0));
    assert!(
        metrics
            .get("assent_audit_checkpoints_total{result=\"refused\"}")
            .is_some_and(|refused| *refused >= 1.0),
        "{metrics:?}"
    );
    for status in [
        audit
            .get_checkpoint(proto::GetCheckpointRequest {})
            .await
            .unwrap_err(),
        audit
            .sign_checkpoint(proto::SignCheckpointRequest {})
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::DataLoss, "{}", status.message());
    }
    // Nothing more was published.
    let published: Vec<_> = std::fs::read_dir(files.path().join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        published
            .iter()
            .all(|name| name.as_str() <= "00000000000000000020.checkpoint"),
        "{published:?}"
    );
    // Checks are still answered, from the store as it is.
    assert_eq!(email_rule(&channel, "u-0").await, "E1");
    second.stop();
}
