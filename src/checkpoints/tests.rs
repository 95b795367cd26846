//! The signer over a real store of each backend: a valid log is signed and extended; a log
//! rewritten by whoever holds the database (its tail cut and the head row rewritten, a middle
//! event rewritten with the whole chain and tree recomputed, the first event deleted) is caught
//! against the last checkpoint published, by the signer at start (which then signs nothing) and
//! by the offline verifier; an erased payload keeps its leaf.

use std::str::FromStr as _;

use sqlx::Connection as _;

use super::*;
use crate::audit::merkle::{Hash, verify_consistency, verify_inclusion};
use crate::audit::{AuditEvent, GENESIS_HASH, chain_hash, leaf_data};
use crate::domain::{Actor, SubjectId};
use crate::policy::{Choice, Plan, Purpose};
use crate::store::change::{Command, ConsentMeta, SubjectFields};
use crate::store::testing::{Backend, TestDatabase, backend_tests};
use crate::store::{WriteContext, WriteRequest};

backend_tests!(
    a_valid_log_is_signed_and_each_checkpoint_extends_the_last,
    a_truncated_tail_with_its_head_rewritten_is_caught,
    a_middle_event_rewritten_with_its_chain_and_tree_recomputed_is_caught,
    a_deleted_first_event_is_caught,
    an_erased_payload_keeps_its_leaf_and_the_erasure_is_an_event,
);

fn context() -> WriteContext {
    WriteContext {
        caller: "checkpoint-tests".into(),
        actor: Actor::parse("tester", "").unwrap(),
        trace_id: String::new(),
        policy_version: crate::policy::POLICY_VERSION.to_owned(),
    }
}

async fn write(store: &Store, subject_id: &str, command: Command) {
    let request = WriteRequest {
        subject_id: SubjectId::parse(subject_id).unwrap(),
        command,
        context: context(),
    };
    store.write(&request).await.unwrap();
}

fn upsert() -> Command {
    Command::Upsert(SubjectFields {
        plan: Some(Plan::Free),
        ..SubjectFields::default()
    })
}

fn choose(purpose: Purpose, choice: Choice) -> Command {
    Command::SetChoice {
        purpose,
        choice: Some(choice),
        consent: ConsentMeta::default(),
    }
}

/// 30 events: 10 subjects, each upserted and opted out of two purposes.
async fn thirty_events(store: &Store) {
    for n in 0..10 {
        let subject = format!("u-{n}");
        write(store, &subject, upsert()).await;
        write(
            store,
            &subject,
            choose(Purpose::ModelTraining, Choice::Refused),
        )
        .await;
        write(
            store,
            &subject,
            choose(Purpose::MarketingEmail, Choice::Refused),
        )
        .await;
    }
}

/// A signer over `store` with the key of `database`'s directory (made on first use) publishing
/// to its `checkpoints` directory: each call is a server (re)started on the same volume.
fn signer(database: &TestDatabase, store: &Store) -> Checkpoints {
    let key_file = database.directory().join("signing.key");
    if !key_file.exists() {
        let (signer_key, _verifier) = note::generate_key("audit.example.test/assent").unwrap();
        std::fs::write(&key_file, signer_key).unwrap();
    }
    let settings = CheckpointSettings {
        key_file,
        directory: database.directory().join("checkpoints"),
        interval: None,
    };
    Checkpoints::open(store.clone(), &settings).unwrap()
}

async fn all_events(store: &Store) -> Vec<AuditEvent> {
    store
        .events(&EventQuery {
            subject_id: None,
            after_sequence: 0,
            limit: 10_000,
        })
        .await
        .unwrap()
}

/// The whole log as JSON lines, the full dump an auditor is given.
fn dump(events: &[AuditEvent]) -> String {
    events
        .iter()
        .map(|event| {
            let erased = event.payload_erased;
            serde_json::json!({
                "revision": crate::revision::Revision::new(event.sequence).to_token(),
                "sequence": event.sequence,
                "event_id": event.event_id,
                "at_micros": event.at_micros,
                "subject_id": event.subject_id,
                "kind": event.kind.as_str(),
                "caller": event.caller,
                "operator_id": event.operator_id,
                "actor_reason": event.actor_reason,
                "detail_json": (!erased).then_some(&event.detail_json),
                "payload_salt": (!erased).then_some(&event.payload_salt),
                "payload_sha256": event.payload_sha256,
                "policy_version": event.policy_version,
                "trace_id": event.trace_id,
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// Whether the offline verifiers accept the store's whole log against `checkpoint`: assent's
/// own, and the independent one in Python (`scripts/verify-audit-offline.py`, written from the
/// C2SP and RFC texts), which must agree.
async fn verifies_offline(store: &Store, checkpoint: &SignedCheckpoint, key: &str) -> bool {
    let dump = dump(&all_events(store).await);
    let ours = crate::audit::offline::verify_dump(dump.as_bytes(), &checkpoint.note, key).ok;
    let files = tempfile::tempdir().unwrap();
    let (dump_file, note_file) = (files.path().join("dump.jsonl"), files.path().join("note"));
    std::fs::write(&dump_file, &dump).unwrap();
    std::fs::write(&note_file, &checkpoint.note).unwrap();
    let python = std::process::Command::new("python3")
        .arg("scripts/verify-audit-offline.py")
        .arg("dump")
        .arg(&dump_file)
        .arg("--checkpoint")
        .arg(&note_file)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    let theirs = match python.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("{}", String::from_utf8_lossy(&python.stderr)),
    };
    assert_eq!(
        ours,
        theirs,
        "the verifiers disagree: {}",
        String::from_utf8_lossy(&python.stdout)
    );
    ours
}

/// Go's `golang.org/x/mod/sumdb/note` and `sumdb/tlog` (`scripts/interop-check`) verify both
/// notes and the consistency proof, where Go and those packages are installed.
fn go_verifies(old: &SignedCheckpoint, new: &SignedCheckpoint, proof: &[Hash], key: &str) {
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str| files.path().join(name);
    std::fs::write(path("old"), &old.note).unwrap();
    std::fs::write(path("new"), &new.note).unwrap();
    let hashes: Vec<String> = proof.iter().map(hex::encode).collect();
    let proof = serde_json::json!({
        "old_size": old.size, "new_size": new.size, "hashes": hashes,
    });
    std::fs::write(path("proof.json"), proof.to_string()).unwrap();
    let go = std::process::Command::new("scripts/interop-check")
        .arg(path("new"))
        .arg(key)
        .arg("--consistency")
        .arg(path("old"))
        .arg(path("proof.json"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&go.stdout).into_owned() + &String::from_utf8_lossy(&go.stderr);
    match go.status.code() {
        Some(0) => assert!(said.contains("ok"), "{said}"),
        // Go or its packages are not installed here.
        Some(2) if said.contains("not found") || said.contains("not under") => {
            eprintln!("skipping Go's verification: {said}");
        }
        _ => panic!("Go's sumdb packages refuse assent's checkpoints: {said}"),
    }
}

/// A connection to the database that bypasses the store, as its owner has.
enum Owner {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Owner {
    async fn connect(database: &TestDatabase) -> Owner {
        let url = database.url();
        match database.backend {
            Backend::Sqlite => Owner::Sqlite(
                sqlx::SqliteConnection::connect_with(
                    &sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap(),
                )
                .await
                .unwrap(),
            ),
            Backend::Postgres => Owner::Postgres(sqlx::PgConnection::connect(&url).await.unwrap()),
        }
    }

    async fn execute(&mut self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Owner::Sqlite(connection) => {
                sqlx::query(sql).execute(connection).await.unwrap();
            }
            Owner::Postgres(connection) => {
                sqlx::query(sql).execute(connection).await.unwrap();
            }
        }
    }

    async fn drop_guards(&mut self) {
        let statements: &[&str] = match self {
            Owner::Sqlite(_) => &[
                "DROP TRIGGER audit_events_append_only_update",
                "DROP TRIGGER audit_events_append_only_delete",
                "DROP TRIGGER audit_payloads_no_update",
            ],
            Owner::Postgres(_) => &[
                "DROP TRIGGER audit_events_append_only ON audit_events",
                "DROP TRIGGER audit_payloads_no_update ON audit_payloads",
            ],
        };
        for statement in statements {
            self.execute(statement).await;
        }
    }

    /// Replaces the whole log with `events`, resealed as a careful forger would: each payload
    /// committed to, the chain hashed again from the first event, every tree node and the head
    /// (sequence, hash, peaks) recomputed. Only a checkpoint published before can tell.
    async fn rewrite_log(&mut self, mut events: Vec<AuditEvent>) {
        self.drop_guards().await;
        self.execute("DELETE FROM audit_events").await;
        self.execute("DELETE FROM audit_payloads").await;
        let mut prev_hash = GENESIS_HASH.to_owned();
        let mut frontier = Frontier::new();
        for event in &mut events {
            event.payload_sha256 = payload_sha256(&event.payload_salt, &event.detail_json).unwrap();
            event.prev_hash = prev_hash.clone();
            event.hash = chain_hash(&event.prev_hash, &leaf_data(event));
            prev_hash = event.hash.clone();
            let tree = hex::encode(frontier.push(merkle::leaf_hash(&leaf_data(event))).concat());
            let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
            let blob = match self {
                Owner::Sqlite(_) => format!("X'{tree}'"),
                Owner::Postgres(_) => format!("'\\x{tree}'::BYTEA"),
            };
            self.execute(&format!(
                "INSERT INTO audit_events (sequence, event_id, at_micros, subject_id, kind,
                    caller, operator_id, actor_reason, payload_sha256, policy_version, trace_id,
                    prev_hash, hash, tree)
                 VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {blob})",
                event.sequence,
                quote(&event.event_id),
                event.at_micros,
                quote(&event.subject_id),
                quote(event.kind.as_str()),
                quote(&event.caller),
                quote(&event.operator_id),
                quote(&event.actor_reason),
                quote(&event.payload_sha256),
                quote(&event.policy_version),
                quote(&event.trace_id),
                quote(&event.prev_hash),
                quote(&event.hash),
            ))
            .await;
            self.execute(&format!(
                "INSERT INTO audit_payloads (sequence, salt, detail_json) VALUES ({}, {}, {})",
                event.sequence,
                quote(&event.payload_salt),
                quote(&event.detail_json),
            ))
            .await;
        }
        let last = events.last().map_or(0, |event| event.sequence);
        let peaks = hex::encode(frontier.to_bytes());
        let peaks = match self {
            Owner::Sqlite(_) => format!("X'{peaks}'"),
            Owner::Postgres(_) => format!("'\\x{peaks}'::BYTEA"),
        };
        self.execute(&format!(
            "UPDATE audit_chain_head SET sequence = {last}, hash = '{prev_hash}',
                frontier = {peaks} WHERE chain_id = 0"
        ))
        .await;
    }
}

/// The forged log is one the store itself finds whole: only the checkpoint tells.
async fn chain_and_tree_verify(store: &Store) -> bool {
    store.verify_chain().await.unwrap().chain.ok
}

async fn a_valid_log_is_signed_and_each_checkpoint_extends_the_last(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    let checkpoints = signer(&database, &store);
    let empty = checkpoints.sign_now().await.unwrap();
    assert_eq!((empty.size, empty.root), (0, merkle::EMPTY_ROOT));
    thirty_events(&store).await;
    let first = checkpoints.sign_now().await.unwrap();
    assert_eq!(first.size, 30);
    let key = checkpoints.verifier_key();
    assert_eq!(
        note::verify_checkpoint(&first.note, &key).unwrap(),
        ("audit.example.test/assent".to_owned(), 30, first.root)
    );
    assert_eq!(checkpoints.sign_now().await.unwrap(), first, "nothing new");
    write(&store, "u-0", choose(Purpose::Memory, Choice::Granted)).await;
    // A server restarted on the same volume verifies the log against what it published.
    let restarted = signer(&database, &store);
    assert_eq!(restarted.latest(), Some(first.clone()));
    let second = restarted.sign_now().await.unwrap();
    assert_eq!(second.size, 31);
    assert!(restarted.refusal().is_none());
    let proof = store.consistency_proof(30, 31).await.unwrap();
    assert!(verify_consistency(
        30,
        31,
        &first.root,
        &second.root,
        &proof
    ));
    go_verifies(&first, &second, &proof, &key);
    for event in all_events(&store).await {
        let index = event.sequence - 1;
        let proof = store.inclusion_proof(index, 31).await.unwrap();
        let leaf = merkle::leaf_hash(&leaf_data(&event));
        assert!(verify_inclusion(index, 31, &leaf, &proof, &second.root));
    }
    let published: Vec<_> = std::fs::read_dir(database.directory().join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(published.len(), 3, "{published:?}");
    assert!(published.iter().all(|name| name.ends_with(".checkpoint")));
    assert!(verifies_offline(&store, &second, &key).await);
    assert!(chain_and_tree_verify(&store).await);
    // Two replicas signing the same sizes at the same moments publish the same files.
    let (one, other) = (signer(&database, &store), signer(&database, &store));
    for n in 0..20 {
        write(&store, "u-1", choose(Purpose::Memory, Choice::Granted)).await;
        write(&store, "u-1", choose(Purpose::Memory, Choice::Refused)).await;
        let (a, b) = tokio::join!(one.sign_now(), other.sign_now());
        assert_eq!(a.unwrap(), b.unwrap(), "round {n}");
    }
    assert!(one.refusal().is_none() && other.refusal().is_none());
    store.close().await;
}

async fn a_truncated_tail_with_its_head_rewritten_is_caught(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    thirty_events(&store).await;
    let checkpoints = signer(&database, &store);
    let published = checkpoints.sign_now().await.unwrap();
    let key = checkpoints.verifier_key();
    let mut events = all_events(&store).await;
    events.truncate(25);
    let mut owner = Owner::connect(&database).await;
    owner.rewrite_log(events).await;
    assert!(
        chain_and_tree_verify(&store).await,
        "the store sees a whole log"
    );
    assert!(!verifies_offline(&store, &published, &key).await);
    let restarted = signer(&database, &store);
    let refused = restarted.sign_now().await.unwrap_err();
    assert!(
        matches!(&refused, CheckpointError::Inconsistent(problem) if problem.contains("fewer")),
        "{refused}"
    );
    assert!(restarted.refusal().is_some());
    // And it stays refused: a new event does not make the log an extension again.
    write(&store, "u-1", choose(Purpose::Memory, Choice::Granted)).await;
    assert!(restarted.sign_now().await.is_err());
    store.close().await;
}

async fn a_middle_event_rewritten_with_its_chain_and_tree_recomputed_is_caught(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    thirty_events(&store).await;
    let checkpoints = signer(&database, &store);
    let published = checkpoints.sign_now().await.unwrap();
    let key = checkpoints.verifier_key();
    let mut events = all_events(&store).await;
    // u-4's opt-out of training turned into a grant.
    let target = &mut events[13];
    assert!(target.detail_json.contains("\"after\":\"REFUSED\""));
    target.detail_json = target.detail_json.replace("REFUSED", "GRANTED");
    let mut owner = Owner::connect(&database).await;
    owner.rewrite_log(events).await;
    assert!(
        chain_and_tree_verify(&store).await,
        "the store sees a whole log"
    );
    assert!(!verifies_offline(&store, &published, &key).await);
    // The signer that published keeps its verified tree: it notices nothing missing, but the
    // one started on the rewritten log does.
    let restarted = signer(&database, &store);
    let refused = restarted.sign_now().await.unwrap_err();
    assert!(
        matches!(&refused, CheckpointError::Inconsistent(problem) if problem.contains("another root")),
        "{refused}"
    );
    store.close().await;
}

async fn a_deleted_first_event_is_caught(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    thirty_events(&store).await;
    let checkpoints = signer(&database, &store);
    let published = checkpoints.sign_now().await.unwrap();
    let key = checkpoints.verifier_key();
    let mut owner = Owner::connect(&database).await;
    owner.drop_guards().await;
    owner
        .execute("DELETE FROM audit_events WHERE sequence = 1")
        .await;
    owner
        .execute("DELETE FROM audit_payloads WHERE sequence = 1")
        .await;
    assert!(!verifies_offline(&store, &published, &key).await);
    let restarted = signer(&database, &store);
    let refused = restarted.sign_now().await.unwrap_err();
    assert!(
        matches!(&refused, CheckpointError::Inconsistent(problem) if problem.contains("event 1 is missing")),
        "{refused}"
    );
    store.close().await;
}

async fn an_erased_payload_keeps_its_leaf_and_the_erasure_is_an_event(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(database.location()).await.unwrap();
    thirty_events(&store).await;
    let checkpoints = signer(&database, &store);
    let before = checkpoints.sign_now().await.unwrap();
    let u3 = SubjectId::parse("u-3").unwrap();
    let refused = store.erase_payloads(&u3, &context()).await.unwrap_err();
    assert!(matches!(refused, StoreError::NotDeleted(_)), "{refused}");
    write(&store, "u-3", Command::Delete).await;
    let (erased, revision) = store.erase_payloads(&u3, &context()).await.unwrap();
    assert_eq!(erased, 4, "upsert, two choices, deletion");
    assert_eq!(revision.unwrap().sequence(), 32);
    assert_eq!(
        store.erase_payloads(&u3, &context()).await.unwrap(),
        (0, None)
    );
    let events = all_events(&store).await;
    let of_u3: Vec<&AuditEvent> = events.iter().filter(|e| e.subject_id == "u-3").collect();
    assert_eq!(of_u3.len(), 5);
    for event in &of_u3[..4] {
        assert!(
            event.payload_erased && event.detail_json.is_empty(),
            "{event:?}"
        );
        assert!(event.payload_salt.is_empty());
    }
    let erasure = of_u3[4];
    assert_eq!(erasure.kind, crate::audit::EventKind::PayloadErased);
    assert_eq!(erasure.detail_json, r#"{"erased":[10,11,12,31]}"#);
    let after = checkpoints.sign_now().await.unwrap();
    assert_eq!(after.size, 32);
    let proof = store
        .consistency_proof(before.size, after.size)
        .await
        .unwrap();
    assert!(verify_consistency(
        before.size,
        after.size,
        &before.root,
        &after.root,
        &proof
    ));
    for event in &of_u3 {
        let index = event.sequence - 1;
        let proof = store.inclusion_proof(index, after.size).await.unwrap();
        let leaf = merkle::leaf_hash(&leaf_data(event));
        assert!(verify_inclusion(
            index,
            after.size,
            &leaf,
            &proof,
            &after.root
        ));
    }
    assert!(chain_and_tree_verify(&store).await);
    assert!(verifies_offline(&store, &after, &checkpoints.verifier_key()).await);
    // Its state can no longer be rebuilt from its events: not compared, and said so.
    let state = store.verify_state(10, |_| {}).await.unwrap();
    assert!(state.ok(), "{state:?}");
    assert_eq!((state.subjects_checked, state.unverifiable), (9, 1));
    // A payload deleted without an erasure event naming it is not an erasure.
    let mut owner = Owner::connect(&database).await;
    owner
        .execute("DELETE FROM audit_payloads WHERE sequence = 2")
        .await;
    assert!(!chain_and_tree_verify(&store).await);
    assert!(!verifies_offline(&store, &after, &checkpoints.verifier_key()).await);
    store.close().await;
}
