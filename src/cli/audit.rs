//! The `audit` subcommands of signed checkpoints: signer keys, checkpoints, inclusion and
//! consistency proofs, subject exports, the full dump, payload erasure, and verification
//! without a server. Exports and dumps are written in the formats of docs/audit.md ("Export and
//! dump formats"), which `verify-offline` and scripts/verify-audit-offline.py read.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, anyhow};
use serde_json::json;

use super::client::{actor, call_failed, connect};
use super::exit::CliError;
use super::output::{self, Output, out};
use super::{ActorArgs, AuditCommand, ClientArgs, EventArgs, VerifyOfflineCommand};
use crate::audit::note;
use crate::audit::note::CheckpointVerifier;
use crate::audit::offline::{self, ConsistencyProofFile, EventObject, Report, SubjectExport};
use crate::proto;
use crate::proto::audit_client::AuditClient;
use crate::revision::Revision;

/// The events asked for per page of a dump (the server's maximum).
const DUMP_PAGE_SIZE: u32 = 1_000;

pub async fn audit(command: AuditCommand, output: Output) -> anyhow::Result<()> {
    match command {
        command @ (AuditCommand::List { .. }
        | AuditCommand::Decisions { .. }
        | AuditCommand::Verify { .. }
        | AuditCommand::VerifyState { .. }) => super::client::audit(command, output).await,
        AuditCommand::Prune { .. } => unreachable!("prune opens the store itself"),
        AuditCommand::Keygen { name, out } => keygen(&name, out.as_deref(), output),
        AuditCommand::Checkpoint { sign, out, client } => {
            checkpoint(sign, out.as_deref(), &client, output).await
        }
        AuditCommand::Proof {
            event,
            tree_size,
            client,
        } => inclusion_proof(event, tree_size, &client, output).await,
        AuditCommand::Consistency {
            old_size,
            new_size,
            client,
        } => consistency_proof(old_size, new_size, &client, output).await,
        AuditCommand::Export {
            subject,
            out,
            client,
        } => export(subject, out.as_deref(), &client, output).await,
        AuditCommand::Dump { out, client } => dump(out.as_deref(), &client, output).await,
        AuditCommand::Erase {
            subject,
            actor,
            client,
        } => erase(subject, &actor, &client, output).await,
        AuditCommand::VerifyOffline(command) => verify_offline(command, output),
    }
}

/// A new signer key, written to `out` (created, never overwritten, readable by its owner only)
/// or printed; then the verifier key, always printed, last.
fn keygen(name: &str, out: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let (signer, verifier) =
        note::generate_key(name).map_err(|error| CliError::Usage(format!("--name: {error}")))?;
    if let Some(path) = out {
        write_secret(path, &signer)?;
    }
    if output.json {
        let printed_signer = out.is_none().then_some(&signer);
        out!(
            "{}",
            json!({
                "name": name,
                "verifier_key": verifier,
                "signer_key_file": out,
                "signer_key": printed_signer,
            })
        );
        return Ok(());
    }
    match out {
        Some(path) => eprintln!(
            "wrote the signer key to {} (keep it secret: it is the server's \
             audit_signing_key_file); the verifier key follows",
            path.display()
        ),
        None => out!("{signer}"),
    }
    out!("{verifier}");
    Ok(())
}

/// Creates `path` with mode 0600 (on Unix) holding `key` and a newline; an existing file is
/// refused, never replaced.
fn write_secret(path: &Path, key: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(CliError::Usage(format!(
                "--out: {} already exists; a signer key file is never overwritten",
                path.display()
            )))
        } else {
            anyhow!(error).context(format!("--out: cannot create {}", path.display()))
        }
    })?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` to `path`, replacing what it held.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

async fn checkpoint(
    sign: bool,
    out: Option<&Path>,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(client).await?);
    let answer = if sign {
        audit.sign_checkpoint(proto::SignCheckpointRequest {}).await
    } else {
        audit.get_checkpoint(proto::GetCheckpointRequest {}).await
    };
    let checkpoint = answer.map_err(call_failed)?.into_inner();
    if let Some(path) = out {
        write_file(path, checkpoint.note.as_bytes())?;
    }
    if output.json {
        out!("{}", checkpoint_json(&checkpoint));
    } else if let Some(path) = out {
        out!(
            "{}, written to {}",
            checkpoint_label(&checkpoint),
            path.display()
        );
    } else {
        // The note ends with its newline: printed byte for byte.
        output::write_out(format_args!("{}", checkpoint.note));
    }
    Ok(())
}

/// `checkpoint <origin> size <n> root <hex>`.
fn checkpoint_label(checkpoint: &proto::Checkpoint) -> String {
    format!(
        "checkpoint {} size {} root {}",
        checkpoint.origin,
        checkpoint.tree_size,
        hex::encode(&checkpoint.root_hash)
    )
}

fn checkpoint_json(checkpoint: &proto::Checkpoint) -> serde_json::Value {
    json!({
        "origin": checkpoint.origin,
        "tree_size": checkpoint.tree_size,
        "root_hash": hex::encode(&checkpoint.root_hash),
        "verifier_key": checkpoint.verifier_key,
        "note": checkpoint.note,
    })
}

async fn inclusion_proof(
    event: EventArgs,
    tree_size: Option<u64>,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    use proto::get_inclusion_proof_request::Event;
    let event = match (event.event_id, event.revision) {
        (Some(event_id), _) => Event::EventId(event_id),
        (None, Some(revision)) => Event::Revision(revision),
        (None, None) => unreachable!("clap requires --event-id or --revision"),
    };
    let mut audit = AuditClient::new(connect(client).await?);
    let proof = audit
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            event: Some(event),
            tree_size: tree_size.unwrap_or(0),
        })
        .await
        .map_err(call_failed)?
        .into_inner();
    let hashes = hex_list(&proof.hashes);
    let json = json!({
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf_hash": hex::encode(&proof.leaf_hash),
        "hashes": hashes,
    });
    let mut text = format!(
        "leaf {} (revision {}) in the tree of size {}\nleaf hash  {}",
        proof.leaf_index,
        Revision::new(proof.leaf_index + 1).to_token(),
        proof.tree_size,
        hex::encode(&proof.leaf_hash),
    );
    append_hashes(&mut text, "audit path", &hashes);
    output.value(json, &text);
    Ok(())
}

async fn consistency_proof(
    old_size: u64,
    new_size: Option<u64>,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(client).await?);
    let proof = audit
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size,
            new_size: new_size.unwrap_or(0),
        })
        .await
        .map_err(call_failed)?
        .into_inner();
    let hashes = hex_list(&proof.hashes);
    let json = serde_json::to_value(ConsistencyProofFile {
        old_size: proof.old_size,
        new_size: proof.new_size,
        hashes: hashes.clone(),
    })?;
    let mut text = format!(
        "the tree of size {} extends the tree of size {}",
        proof.new_size, proof.old_size
    );
    append_hashes(&mut text, "proof", &hashes);
    output.value(json, &text);
    Ok(())
}

/// Lines `<label>  <hash>`, the label on the first only; `(none)` when there are none.
fn append_hashes(text: &mut String, label: &str, hashes: &[String]) {
    if hashes.is_empty() {
        text.push_str(&format!("\n{label:<10} (none)"));
    }
    for (index, hash) in hashes.iter().enumerate() {
        let label = if index == 0 { label } else { "" };
        text.push_str(&format!("\n{label:<10} {hash}"));
    }
}

fn hex_list(hashes: &[Vec<u8>]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// One event as docs/audit.md's exports and dumps hold it, from its form on the wire.
fn event_object(event: proto::AuditEvent) -> anyhow::Result<EventObject> {
    EventObject::from_served(event).map_err(|problem| anyhow!("the server sent {problem}"))
}

async fn export(
    subject_id: String,
    out: Option<&Path>,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(client).await?);
    let answer = audit
        .export_subject(proto::ExportSubjectRequest { subject_id })
        .await
        .map_err(call_failed)?
        .into_inner();
    let checkpoint = answer
        .checkpoint
        .clone()
        .context("the server sent an export without its checkpoint")?;
    let document = SubjectExport::from_served(answer)
        .map_err(|problem| anyhow!("the server sent {problem}"))?;
    let count = document.events.len();
    let mut bytes = serde_json::to_vec_pretty(&document)?;
    bytes.push(b'\n');
    let Some(path) = out else {
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    };
    write_file(path, &bytes)?;
    let json = json!({
        "subject_id": document.subject_id,
        "events": count,
        "checkpoint": checkpoint_json(&checkpoint),
        "out": path,
    });
    let text = format!(
        "exported {count} events of {}, proved against {}, to {}",
        document.subject_id,
        checkpoint_label(&checkpoint),
        path.display()
    );
    output.value(json, &text);
    Ok(())
}

/// Every event, oldest first, one JSON object per line, written page by page.
async fn dump(out: Option<&Path>, client: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(client).await?);
    let mut writer: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("--out: cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut count: u64 = 0;
    let mut last = None;
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_events(proto::ListEventsRequest {
                subject_id: None,
                page_size: DUMP_PAGE_SIZE,
                page_token,
                newest_first: false,
            })
            .await
            .map_err(call_failed)?
            .into_inner();
        for event in page.events {
            let event = event_object(event)?;
            last.clone_from(&event.revision);
            serde_json::to_writer(&mut writer, &event)?;
            writer.write_all(b"\n")?;
            count += 1;
        }
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    writer.flush().context("cannot write the dump")?;
    drop(writer);
    if let Some(path) = out {
        let last = last.unwrap_or_default();
        output.value(
            json!({"events": count, "last_revision": last, "out": path}),
            &format!(
                "dumped {count} events (to revision {last}) to {}",
                path.display()
            ),
        );
    }
    Ok(())
}

async fn erase(
    subject_id: String,
    actor_args: &ActorArgs,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(client).await?);
    let answer = audit
        .erase_payloads(proto::ErasePayloadsRequest {
            subject_id: subject_id.clone(),
            actor: actor(actor_args),
        })
        .await
        .map_err(call_failed)?
        .into_inner();
    output.message(&answer, |answer| {
        if answer.erased == 0 {
            format!("ok, nothing to erase: no payload of {subject_id} is left")
        } else {
            format!(
                "ok, erased the payloads of {} events of {subject_id}, revision {}",
                answer.erased, answer.revision
            )
        }
    })
}

/// Verifies a file with no server (`crate::audit::offline`): prints the report, and fails (exit
/// status 3) when a check failed; unreadable files and a malformed key are usage errors (1).
fn verify_offline(command: VerifyOfflineCommand, output: Output) -> anyhow::Result<()> {
    let (report, summary) = match command {
        VerifyOfflineCommand::Export { file, key } => {
            let key = verifier_key(&key)?;
            let text = read_text(&file, "FILE")?;
            let report = offline::verify_export(&text, &key)
                .map_err(|error| CliError::Usage(format!("{}: {error}", file.display())))?;
            (report, None)
        }
        VerifyOfflineCommand::Dump {
            file,
            checkpoint,
            key,
        } => {
            let key = verifier_key(&key)?;
            let note = read_text(&checkpoint, "--checkpoint")?;
            let dump = std::fs::File::open(&file).map_err(|error| {
                CliError::Usage(format!("FILE: cannot read {}: {error}", file.display()))
            })?;
            let report = offline::verify_dump(std::io::BufReader::new(dump), &note, &key);
            (report, None)
        }
        VerifyOfflineCommand::Consistency {
            old,
            new,
            proof,
            key,
        } => {
            let key = verifier_key(&key)?;
            let old_note = read_text(&old, "OLD")?;
            let new_note = read_text(&new, "NEW")?;
            let proof = read_text(&proof, "PROOF")?;
            let report = offline::verify_consistency_file(&old_note, &new_note, &proof, &key);
            // Verified, the file holds the two checkpoints' sizes.
            let summary = serde_json::from_str::<ConsistencyProofFile>(&proof)
                .ok()
                .filter(|_| report.ok)
                .map(|proof| {
                    format!(
                        "ok: the checkpoint of {} events extends the checkpoint of {} events",
                        proof.new_size, proof.old_size
                    )
                });
            (report, summary)
        }
    };
    let text = summary.unwrap_or_else(|| report.to_string());
    output.value(report_json(&report), &text);
    if report.ok {
        Ok(())
    } else {
        let message = "offline verification failed".to_owned();
        Err(CliError::CheckFailed(message).into())
    }
}

fn report_json(report: &Report) -> serde_json::Value {
    json!({
        "ok": report.ok,
        "events_checked": report.events_checked,
        "payloads_checked": report.payloads_checked,
        "payloads_erased": report.payloads_erased,
        "tree_size": report.tree_size,
        "failures": report.failures,
        "first_failure": report.first_failure.as_ref().map(ToString::to_string),
    })
}

/// The text of a file named on the command line (`what` names the argument).
fn read_text(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|error| {
        CliError::Usage(format!("{what}: cannot read {}: {error}", path.display()))
    })
}

/// A verifier key given on the command line: the key's text, or a file holding it; checked to
/// be a verifier key before anything is verified with it.
fn verifier_key(argument: &str) -> Result<String, CliError> {
    let path = Path::new(argument);
    let key = if path.is_file() {
        read_text(path, "--key")?.trim().to_owned()
    } else {
        argument.trim().to_owned()
    };
    CheckpointVerifier::from_key_text(&key)
        .map_err(|error| CliError::Usage(format!("--key: {error}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(erased: bool) -> proto::AuditEvent {
        proto::AuditEvent {
            event_id: "e-1".into(),
            // One microsecond before the epoch: the time's fraction is positive.
            at: Some(prost_types::Timestamp {
                seconds: -1,
                nanos: 999_999_000,
            }),
            subject_id: "alice".into(),
            kind: "choice_set".into(),
            caller: "billing".into(),
            actor: Some(proto::Actor {
                operator_id: "user:alice".into(),
                reason: "settings page".into(),
            }),
            detail_json: if erased {
                ""
            } else {
                "{\"after\":\"REFUSED\"}"
            }
            .into(),
            policy_version: "2026-01-01".into(),
            trace_id: String::new(),
            prev_hash: "0".repeat(64),
            hash: "a".repeat(64),
            revision: "r1.1f".into(),
            payload_sha256: "b".repeat(64),
            payload_salt: if erased { "" } else { "00ff" }.into(),
            payload_erased: erased,
            leaf_hash: "c".repeat(64),
        }
    }

    #[test]
    fn a_served_event_becomes_the_event_object_of_exports_and_dumps() {
        let object = event_object(served(false)).unwrap();
        assert_eq!(
            serde_json::to_value(&object).unwrap(),
            json!({
                "revision": "r1.1f",
                "sequence": 31,
                "event_id": "e-1",
                "at_micros": -1,
                "subject_id": "alice",
                "kind": "choice_set",
                "caller": "billing",
                "operator_id": "user:alice",
                "actor_reason": "settings page",
                "detail_json": "{\"after\":\"REFUSED\"}",
                "payload_salt": "00ff",
                "payload_sha256": "b".repeat(64),
                "policy_version": "2026-01-01",
                "trace_id": "",
                "prev_hash": "0".repeat(64),
                "hash": "a".repeat(64),
            })
        );
    }

    #[test]
    fn an_erased_payload_is_null_and_its_commitment_stays() {
        let object = event_object(served(true)).unwrap();
        assert_eq!((object.detail_json, object.payload_salt), (None, None));
        assert_eq!(object.payload_sha256, "b".repeat(64));
    }

    #[test]
    fn an_event_without_a_revision_or_a_time_is_refused() {
        let mut event = served(false);
        event.revision = "31".into();
        let error = event_object(event).unwrap_err().to_string();
        assert!(error.contains("malformed revision"), "{error}");
        let mut event = served(false);
        event.at = None;
        assert!(event_object(event).is_err());
    }
}
