//! `assent audit` for signed checkpoints on the command line: a key made by `keygen` signs the
//! server's checkpoints; exports, dumps and consistency proofs written by the client verify
//! with `verify-offline`, with no server, and tampered ones do not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use assent::audit::merkle::{self, Hash};
use assent::audit::note::CheckpointSigner;
use assent::store::testing::{Backend, TestDatabase};
use serde_json::Value;

use crate::helpers::TestApp;

/// Runs `assent` with `args`, calling `app` if given (otherwise no server is reachable).
async fn run(app: Option<&TestApp>, args: &[&str]) -> Output {
    // Nothing listens on the discard port of loopback: an offline command must not need it.
    let server = app.map_or("http://127.0.0.1:9".to_owned(), |app| {
        format!("http://{}", app.address)
    });
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_assent"))
            .args(&args)
            .env("ASSENT_SERVER", server)
            .env_remove("ASSENT_OPERATOR")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The standard output of a command that must succeed.
async fn stdout(app: Option<&TestApp>, args: &[&str]) -> String {
    let output = run(app, args).await;
    assert!(
        output.status.success(),
        "assent {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The exit status and both outputs of a command.
async fn outcome(app: Option<&TestApp>, args: &[&str]) -> (i32, String, String) {
    let output = run(app, args).await;
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Writes the subject and the choices the tests export: alice (created, a refusal), bob.
async fn write_history(app: &TestApp) {
    for args in [
        &["subject", "upsert", "alice", "--plan", "free"][..],
        &[
            "subject",
            "choice",
            "alice",
            "--purpose",
            "model-training",
            "--choice",
            "refused",
            "--reason",
            "settings page",
        ],
        &["subject", "upsert", "bob", "--plan", "pro"],
    ] {
        stdout(Some(app), args).await;
    }
}

/// `checkpoint --sign --json`: the fields of a checkpoint of the whole log, signed now.
async fn sign(app: &TestApp) -> Value {
    serde_json::from_str(&stdout(Some(app), &["audit", "checkpoint", "--sign", "--json"]).await)
        .unwrap()
}

fn hash_of(hex_text: &Value) -> Hash {
    Hash::try_from(hex::decode(hex_text.as_str().unwrap()).unwrap()).unwrap()
}

fn hashes_of(list: &Value) -> Vec<Hash> {
    list.as_array().unwrap().iter().map(hash_of).collect()
}

#[tokio::test]
async fn a_key_from_keygen_signs_checkpoints_and_exports_verify_offline() {
    let data = Arc::new(TestDatabase::create(Backend::from_env()).await);
    let directory = data.directory().to_owned();
    let key_file = directory.join("signer.key");

    // keygen needs no server: the signer key to a new file (owner only), the verifier key on
    // stdout.
    let printed = stdout(
        None,
        &[
            "audit",
            "keygen",
            "--name",
            "assent.test/cli",
            "--out",
            path(&key_file),
        ],
    )
    .await;
    let verifier = printed.trim().to_owned();
    assert_eq!(printed.lines().count(), 1, "{printed}");
    assert!(verifier.starts_with("assent.test/cli+"), "{verifier}");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    assert!(key_text.starts_with("PRIVATE+KEY+assent.test/cli+"));
    let signer = CheckpointSigner::from_key_text(&key_text).unwrap();
    assert_eq!(signer.verifier_key(), verifier);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An existing key is never overwritten.
    let again = [
        "audit",
        "keygen",
        "--name",
        "assent.test/other",
        "--out",
        path(&key_file),
    ];
    let (status, _, stderr) = outcome(None, &again).await;
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key_text);
    // Without --out both keys are printed, the verifier key last.
    let both = stdout(None, &["audit", "keygen", "--name", "assent.test/cli"]).await;
    let lines: Vec<&str> = both.lines().collect();
    assert_eq!(lines.len(), 2, "{both}");
    let printed_signer = CheckpointSigner::from_key_text(lines[0]).unwrap();
    assert_eq!(printed_signer.verifier_key(), lines[1]);
    assert_ne!(lines[1], verifier, "a new key each time");
    let (status, _, stderr) = outcome(None, &["audit", "keygen", "--name", "a b"]).await;
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("--name"), "{stderr}");

    let app = TestApp::spawn_signing_with(data.clone(), key_file.clone()).await;
    write_history(&app).await;

    let fields = sign(&app).await;
    assert_eq!(fields["tree_size"], 3);
    assert_eq!(fields["origin"], "assent.test/cli");
    assert_eq!(fields["verifier_key"], verifier.as_str());
    let note = fields["note"].as_str().unwrap().to_owned();
    assert!(note.starts_with("assent.test/cli\n3\n"), "{note}");
    // Text: the note, byte for byte; --out writes exactly those bytes.
    assert_eq!(stdout(Some(&app), &["audit", "checkpoint"]).await, note);
    let note_file = directory.join("size-3.checkpoint");
    let said = stdout(
        Some(&app),
        &["audit", "checkpoint", "--out", path(&note_file)],
    )
    .await;
    assert!(said.contains("size 3"), "{said}");
    assert_eq!(std::fs::read_to_string(&note_file).unwrap(), note);
    assert_eq!(
        std::fs::read_to_string(app.checkpoint_dir().join(format!("{:020}.checkpoint", 3)))
            .unwrap(),
        note
    );

    let export_file = directory.join("alice.json");
    let said = stdout(
        Some(&app),
        &["audit", "export", "alice", "--out", path(&export_file)],
    )
    .await;
    assert!(said.starts_with("exported 2 events of alice"), "{said}");
    let export: Value = serde_json::from_slice(&std::fs::read(&export_file).unwrap()).unwrap();
    assert_eq!(export["format"], "assent-subject-export/1");
    assert_eq!(export["subject_id"], "alice");
    assert_eq!(export["verifier_key"], verifier.as_str());
    assert_eq!(
        export["checkpoint"],
        note.as_str(),
        "nothing was written since"
    );
    let events = export["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["leaf_index"], index);
        assert_eq!(event["sequence"], index + 1);
        assert_eq!(event["revision"], format!("r1.{}", index + 1));
        assert!(event["detail_json"].is_string() && event["payload_salt"].is_string());
        assert!(event["at_micros"].is_i64());
        assert!(!hashes_of(&event["inclusion_proof"]).is_empty());
    }
    assert_eq!(events[1]["actor_reason"], "settings page");
    assert_eq!(events[1]["operator_id"], "cli");
    // Without --out, the same document on stdout.
    let printed: Value =
        serde_json::from_str(&stdout(Some(&app), &["audit", "export", "alice"]).await).unwrap();
    assert_eq!(printed, export);

    // Verified with no server, by the key's text or a file holding it.
    let verify = ["audit", "verify-offline", "export", path(&export_file)];
    let with_key = |key: &str| -> Vec<String> {
        verify
            .iter()
            .map(|arg| arg.to_string())
            .chain(["--key".to_owned(), key.to_owned()])
            .collect()
    };
    let args = with_key(&verifier);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let said = stdout(None, &args).await;
    assert!(said.starts_with("ok: 2 events checked"), "{said}");
    let verifier_file = directory.join("verifier.key");
    std::fs::write(&verifier_file, format!("{verifier}\n")).unwrap();
    let args = with_key(path(&verifier_file));
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--json");
    let report: Value = serde_json::from_str(&stdout(None, &args).await).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["events_checked"], 2);
    assert_eq!(report["tree_size"], 3);

    // Another key's verifier: the checkpoint's signature does not verify (a failed check, 3).
    let stranger = lines[1];
    let args = with_key(stranger);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, said, _) = outcome(None, &args).await;
    assert_eq!(status, 3, "{said}");
    assert!(said.starts_with("FAILED"), "{said}");

    // A changed detail: its payload no longer matches its commitment.
    let mut tampered = export.clone();
    let detail = tampered["events"][1]["detail_json"].as_str().unwrap();
    assert!(detail.contains("REFUSED"), "{detail}");
    tampered["events"][1]["detail_json"] = Value::from(detail.replace("REFUSED", "GRANTED"));
    let tampered_file = directory.join("tampered.json");
    std::fs::write(&tampered_file, tampered.to_string()).unwrap();
    let (status, said, stderr) = outcome(
        None,
        &[
            "audit",
            "verify-offline",
            "export",
            path(&tampered_file),
            "--key",
            &verifier,
        ],
    )
    .await;
    assert_eq!(status, 3, "{said} {stderr}");
    assert!(said.starts_with("FAILED"), "{said}");
    assert!(said.contains("event 2"), "{said}");
    assert!(stderr.contains("offline verification failed"), "{stderr}");

    // Unusable input is a usage error (1): a key that is not one, a file that is not there or
    // not an export.
    for (file, key) in [
        (path(&export_file), "not-a-key"),
        (path(&export_file), key_text.trim()),
        ("no-such-export.json", verifier.as_str()),
        (path(&note_file), verifier.as_str()),
    ] {
        let args = ["audit", "verify-offline", "export", file, "--key", key];
        let (status, _, stderr) = outcome(None, &args).await;
        assert_eq!(status, 1, "{args:?}: {stderr}");
    }
    let (status, _, _) = outcome(None, &["audit", "verify-offline", "export"]).await;
    assert_eq!(status, 1);
}

/// A full dump and a checkpoint, written by the client, verify offline; a dump with an event
/// removed does not.
#[tokio::test]
async fn a_dump_verifies_against_a_checkpoint_offline() {
    let app = TestApp::spawn_signing().await;
    write_history(&app).await;
    let directory = app.data.directory().to_owned();
    let note_file = directory.join("checkpoint");
    let key = sign(&app).await["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    stdout(
        Some(&app),
        &["audit", "checkpoint", "--out", path(&note_file)],
    )
    .await;
    // An event after the checkpoint: in the dump, checked as a chain only.
    stdout(
        Some(&app),
        &["subject", "upsert", "carol", "--plan", "team"],
    )
    .await;

    let dump_file = directory.join("dump.jsonl");
    let said = stdout(Some(&app), &["audit", "dump", "--out", path(&dump_file)]).await;
    assert!(
        said.starts_with("dumped 4 events (to revision r1.4)"),
        "{said}"
    );
    let dump = std::fs::read_to_string(&dump_file).unwrap();
    assert_eq!(stdout(Some(&app), &["audit", "dump"]).await, dump);
    let lines: Vec<Value> = dump
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let sequences: Vec<u64> = lines
        .iter()
        .map(|event| event["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
    let served = app.all_events(None).await;
    for (line, event) in lines.iter().zip(&served) {
        assert_eq!(line["event_id"], event.event_id.as_str());
        assert_eq!(line["hash"], event.hash.as_str());
        assert_eq!(line["prev_hash"], event.prev_hash.as_str());
        assert_eq!(line["payload_sha256"], event.payload_sha256.as_str());
        assert_eq!(line["detail_json"], event.detail_json.as_str());
        let leaf = merkle::leaf_hash(&crate::checkpoints::leaf_data(event));
        assert_eq!(event.leaf_hash, hex::encode(leaf));
    }

    let verify = |dump: &Path| -> Vec<String> {
        [
            "audit",
            "verify-offline",
            "dump",
            path(dump),
            "--checkpoint",
            path(&note_file),
            "--key",
            &key,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    };
    let args = verify(&dump_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let said = stdout(None, &args).await;
    assert!(said.starts_with("ok: 4 events checked"), "{said}");

    // The second event removed (the chain relinked or not, the tree breaks).
    let removed: String = dump
        .lines()
        .enumerate()
        .filter(|(index, _)| *index != 1)
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    let removed_file = directory.join("removed.jsonl");
    std::fs::write(&removed_file, removed).unwrap();
    let args = verify(&removed_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, said, _) = outcome(None, &args).await;
    assert_eq!(status, 3, "{said}");
    assert!(said.starts_with("FAILED"), "{said}");
}

/// Two checkpoints and the proof `assent audit consistency --json` prints verify offline;
/// the same proof does not pass for the notes swapped. `proof` answers an audit path that
/// leads to the signed root.
#[tokio::test]
async fn consistency_and_inclusion_proofs_from_the_command_line_verify() {
    let app = TestApp::spawn_signing().await;
    let directory = app.data.directory().to_owned();
    write_history(&app).await;
    let old = sign(&app).await;
    let old_file = directory.join("old.checkpoint");
    std::fs::write(&old_file, old["note"].as_str().unwrap()).unwrap();
    for subject in ["carol", "dave", "erin", "frank"] {
        stdout(
            Some(&app),
            &["subject", "upsert", subject, "--plan", "free"],
        )
        .await;
    }
    let new = sign(&app).await;
    let new_file = directory.join("new.checkpoint");
    stdout(
        Some(&app),
        &["audit", "checkpoint", "--out", path(&new_file)],
    )
    .await;
    assert_eq!(
        (old["tree_size"].as_u64(), new["tree_size"].as_u64()),
        (Some(3), Some(7))
    );
    let key = new["verifier_key"].as_str().unwrap().to_owned();

    let printed = stdout(
        Some(&app),
        &["audit", "consistency", "--old-size", "3", "--json"],
    )
    .await;
    let proof: Value = serde_json::from_str(&printed).unwrap();
    let mut keys: Vec<&String> = proof.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["hashes", "new_size", "old_size"]);
    assert_eq!(
        (proof["old_size"].as_u64(), proof["new_size"].as_u64()),
        (Some(3), Some(7))
    );
    assert!(merkle::verify_consistency(
        3,
        7,
        &hash_of(&old["root_hash"]),
        &hash_of(&new["root_hash"]),
        &hashes_of(&proof["hashes"])
    ));
    let text = stdout(Some(&app), &["audit", "consistency", "--old-size", "3"]).await;
    assert!(
        text.starts_with("the tree of size 7 extends the tree of size 3"),
        "{text}"
    );
    let proof_file = directory.join("proof.json");
    std::fs::write(&proof_file, &printed).unwrap();
    let consistency = |first: &PathBuf, second: &PathBuf| -> Vec<String> {
        [
            "audit",
            "verify-offline",
            "consistency",
            path(first),
            path(second),
            path(&proof_file),
            "--key",
            &key,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    };
    let args = consistency(&old_file, &new_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let said = stdout(None, &args).await;
    assert_eq!(
        said,
        "ok: the checkpoint of 7 events extends the checkpoint of 3 events\n"
    );
    let args = consistency(&new_file, &old_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, said, _) = outcome(None, &args).await;
    assert_eq!(status, 3, "{said}");

    let printed = stdout(
        Some(&app),
        &["audit", "proof", "--revision", "r1.2", "--json"],
    )
    .await;
    let inclusion: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        (
            inclusion["leaf_index"].as_u64(),
            inclusion["tree_size"].as_u64()
        ),
        (Some(1), Some(7))
    );
    assert!(merkle::verify_inclusion(
        1,
        7,
        &hash_of(&inclusion["leaf_hash"]),
        &hashes_of(&inclusion["hashes"]),
        &hash_of(&new["root_hash"])
    ));
    let text = stdout(
        Some(&app),
        &["audit", "proof", "--revision", "r1.2", "--tree-size", "3"],
    )
    .await;
    assert!(
        text.starts_with("leaf 1 (revision r1.2) in the tree of size 3"),
        "{text}"
    );
    let (status, _, stderr) = outcome(Some(&app), &["audit", "proof", "--tree-size", "3"]).await;
    assert_eq!(status, 1, "{stderr}");
    let both = ["audit", "proof", "--revision", "r1.2", "--event-id", "x"];
    assert_eq!(outcome(Some(&app), &both).await.0, 1);
    let (status, _, stderr) = outcome(
        Some(&app),
        &["audit", "proof", "--revision", "r1.2", "--tree-size", "99"],
    )
    .await;
    assert_eq!(status, 4);
    assert!(stderr.contains("INVALID_ARGUMENT: tree_size"), "{stderr}");
}

/// `erase` refuses a subject that is not deleted, then erases a deleted one's payloads; the
/// export shows them as null and still verifies offline, and so does the dump.
#[tokio::test]
async fn erased_payloads_are_null_in_exports_that_still_verify() {
    let app = TestApp::spawn_signing().await;
    let directory = app.data.directory().to_owned();
    write_history(&app).await;
    let erase = [
        "audit",
        "erase",
        "alice",
        "--operator",
        "dpo:ana",
        "--reason",
        "verified deletion request",
    ];
    let (status, _, stderr) = outcome(Some(&app), &erase).await;
    assert_eq!(status, 4);
    assert!(
        stderr.contains("FAILED_PRECONDITION: subject_id"),
        "{stderr}"
    );
    stdout(Some(&app), &["subject", "delete", "alice"]).await;
    let said = stdout(Some(&app), &erase).await;
    assert!(
        said.starts_with("ok, erased the payloads of 3 events of alice, revision r1.5"),
        "{said}"
    );
    let mut json_erase = erase.to_vec();
    json_erase.push("--json");
    let again: Value = serde_json::from_str(&stdout(Some(&app), &json_erase).await).unwrap();
    assert_eq!(again, serde_json::json!({"erased": "0", "revision": ""}));

    // Listed: the erasure shows, the commitment and the leaf stay.
    let listed = stdout(
        Some(&app),
        &["audit", "list", "--subject", "alice", "--json"],
    )
    .await;
    // One ListEventsResponse, its events in order.
    let page: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(page["nextPageToken"], "");
    let listed = page["events"].as_array().unwrap();
    let erased: Vec<&Value> = listed.iter().map(|event| &event["payloadErased"]).collect();
    assert_eq!(erased, [true, true, true, false]);
    assert_eq!(listed[0]["detailJson"], "");
    assert_eq!(listed[0]["leafHash"].as_str().unwrap().len(), 64);
    let text = stdout(Some(&app), &["audit", "list", "--subject", "alice"]).await;
    assert_eq!(text.matches("(payload erased)").count(), 3, "{text}");

    let export_file = directory.join("alice.json");
    stdout(
        Some(&app),
        &["audit", "export", "alice", "--out", path(&export_file)],
    )
    .await;
    let export: Value = serde_json::from_slice(&std::fs::read(&export_file).unwrap()).unwrap();
    let events = export["events"].as_array().unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "subject_upserted",
            "choice_set",
            "subject_deleted",
            "payload_erased"
        ]
    );
    for event in &events[..3] {
        assert!(event["detail_json"].is_null() && event["payload_salt"].is_null());
        assert_eq!(event["payload_sha256"].as_str().unwrap().len(), 64);
    }
    assert_eq!(events[3]["detail_json"], r#"{"erased":[1,2,4]}"#);
    assert_eq!(events[3]["operator_id"], "dpo:ana");
    let key = export["verifier_key"].as_str().unwrap();
    let said = stdout(
        None,
        &[
            "audit",
            "verify-offline",
            "export",
            path(&export_file),
            "--key",
            key,
        ],
    )
    .await;
    assert!(said.starts_with("ok: 4 events checked"), "{said}");

    let note_file = directory.join("checkpoint");
    let dump_file = directory.join("dump.jsonl");
    stdout(
        Some(&app),
        &["audit", "checkpoint", "--out", path(&note_file)],
    )
    .await;
    stdout(Some(&app), &["audit", "dump", "--out", path(&dump_file)]).await;
    let said = stdout(
        None,
        &[
            "audit",
            "verify-offline",
            "dump",
            path(&dump_file),
            "--checkpoint",
            path(&note_file),
            "--key",
            key,
        ],
    )
    .await;
    assert!(said.starts_with("ok: 5 events checked"), "{said}");
}
