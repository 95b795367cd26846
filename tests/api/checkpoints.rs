//! Signed checkpoints, inclusion and consistency proofs, subject exports and payload erasure,
//! over gRPC: every proof is checked against the roots the server signed, and every signed
//! root against the leaves recomputed from the events' own fields (docs/audit.md).

use assent::audit::merkle::{self, Hash, verify_consistency, verify_inclusion};
use assent::audit::note::verify_checkpoint;
use assent::proto::{self, Choice, Plan, Purpose};
use assent::revision::Revision;
use tonic::Code;

use crate::helpers::{TEST_ORIGIN, TestApp, actor, assert_status};

/// The leaf data of an event, from its fields as served: the compact JSON array of
/// docs/audit.md, with the payload's commitment in place of the detail.
pub fn leaf_data(event: &proto::AuditEvent) -> Vec<u8> {
    let at = event.at.unwrap();
    let actor = event.actor.clone().unwrap_or_default();
    let fields = serde_json::json!([
        sequence(&event.revision),
        event.event_id,
        at.seconds * 1_000_000 + i64::from(at.nanos / 1_000),
        event.subject_id,
        event.kind,
        event.caller,
        actor.operator_id,
        actor.reason,
        event.payload_sha256,
        event.policy_version,
        event.trace_id,
    ]);
    serde_json::to_vec(&fields).unwrap()
}

pub fn sequence(revision: &str) -> u64 {
    Revision::parse_token(revision).unwrap().sequence()
}

fn hashes(bytes: &[Vec<u8>]) -> Vec<Hash> {
    bytes
        .iter()
        .map(|hash| Hash::try_from(hash.as_slice()).unwrap())
        .collect()
}

fn hash(bytes: &[u8]) -> Hash {
    Hash::try_from(bytes).unwrap()
}

/// Writes two events for each of `subjects` subjects: its creation and a refusal.
async fn write_events(app: &TestApp, subjects: usize) -> Vec<String> {
    let mut revisions = Vec::new();
    for subject in 0..subjects {
        revisions.extend(write_subject(app, subject).await);
    }
    revisions
}

/// Creates subject `cp-<subject>` and records its refusal: two events; their revisions.
async fn write_subject(app: &TestApp, subject: usize) -> [String; 2] {
    let subject_id = format!("cp-{subject}");
    let created = app.upsert(&subject_id, Plan::Free).await;
    let refused = app
        .set_choice(&subject_id, Purpose::ModelTraining, Choice::Refused)
        .await
        .unwrap();
    [created, refused]
}

async fn sign(app: &TestApp) -> proto::Checkpoint {
    app.audit()
        .sign_checkpoint(proto::SignCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn inclusion(
    app: &TestApp,
    event: proto::get_inclusion_proof_request::Event,
    tree_size: u64,
) -> Result<proto::InclusionProof, tonic::Status> {
    app.audit()
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            event: Some(event),
            tree_size,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn consistency(
    app: &TestApp,
    old_size: u64,
    new_size: u64,
) -> Result<proto::ConsistencyProof, tonic::Status> {
    app.audit()
        .get_consistency_proof(proto::GetConsistencyProofRequest { old_size, new_size })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn proofs_verify_against_the_signed_roots_at_every_size() {
    use proto::get_inclusion_proof_request::Event;

    let app = TestApp::spawn_signing().await;
    // Signed as the log grows: sizes around powers of two, and the whole log.
    let sizes = [1_u64, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40];
    let mut signed: Vec<proto::Checkpoint> = Vec::new();
    for subject in 0..20 {
        let subject_id = format!("cp-{subject}");
        let created = app.upsert(&subject_id, Plan::Free).await;
        if sizes.contains(&sequence(&created)) {
            signed.push(sign(&app).await);
        }
        let refused = app
            .set_choice(&subject_id, Purpose::ModelTraining, Choice::Refused)
            .await
            .unwrap();
        if sizes.contains(&sequence(&refused)) {
            signed.push(sign(&app).await);
        }
    }
    let events = app.all_events(None).await;
    assert_eq!(events.len(), 40);
    assert_eq!(
        signed.iter().map(|c| c.tree_size).collect::<Vec<_>>(),
        sizes
    );

    // The leaves recomputed from the events' fields are the ones served, and their tree has
    // the signed root at every size.
    let leaves: Vec<Hash> = events
        .iter()
        .map(|event| merkle::leaf_hash(&leaf_data(event)))
        .collect();
    for (event, leaf) in events.iter().zip(&leaves) {
        assert_eq!(event.leaf_hash, hex::encode(leaf), "{}", event.revision);
    }
    for checkpoint in &signed {
        let (origin, size, root) =
            verify_checkpoint(&checkpoint.note, &checkpoint.verifier_key).unwrap();
        assert_eq!((origin.as_str(), size), (TEST_ORIGIN, checkpoint.tree_size));
        assert_eq!(checkpoint.origin, TEST_ORIGIN);
        assert_eq!(root.as_slice(), checkpoint.root_hash.as_slice());
        assert_eq!(
            root,
            merkle::root_of(&leaves[..size as usize]),
            "size {size}"
        );
    }

    for checkpoint in &signed {
        let size = checkpoint.tree_size;
        let root = hash(&checkpoint.root_hash);
        for (index, event) in events.iter().enumerate().take(size as usize) {
            // By revision, and by event id for every other one.
            let asked = if index % 2 == 0 {
                Event::Revision(event.revision.clone())
            } else {
                Event::EventId(event.event_id.clone())
            };
            let proof = inclusion(&app, asked, size).await.unwrap();
            assert_eq!((proof.leaf_index, proof.tree_size), (index as u64, size));
            assert_eq!(hash(&proof.leaf_hash), leaves[index]);
            let path = hashes(&proof.hashes);
            assert!(
                verify_inclusion(proof.leaf_index, size, &leaves[index], &path, &root),
                "leaf {index} in the tree of {size}"
            );
            // The same path does not prove another leaf, nor lead to another size's root.
            let other = leaves[(index + 1) % leaves.len()];
            assert!(!verify_inclusion(
                proof.leaf_index,
                size,
                &other,
                &path,
                &root
            ));
        }
        for old in signed.iter().filter(|old| old.tree_size <= size) {
            let proof = consistency(&app, old.tree_size, size).await.unwrap();
            assert_eq!((proof.old_size, proof.new_size), (old.tree_size, size));
            let path = hashes(&proof.hashes);
            let old_root = hash(&old.root_hash);
            assert!(
                verify_consistency(old.tree_size, size, &old_root, &root, &path),
                "{} -> {size}",
                old.tree_size
            );
            if old.tree_size < size {
                let wrong = merkle::leaf_hash(b"not the old root");
                assert!(!verify_consistency(
                    old.tree_size,
                    size,
                    &wrong,
                    &root,
                    &path
                ));
            }
        }
    }

    // Size 0 means the latest signed checkpoint's.
    let latest = signed.last().unwrap();
    let proof = inclusion(&app, Event::Revision(events[9].revision.clone()), 0)
        .await
        .unwrap();
    assert_eq!(proof.tree_size, latest.tree_size);
    assert!(verify_inclusion(
        9,
        latest.tree_size,
        &leaves[9],
        &hashes(&proof.hashes),
        &hash(&latest.root_hash)
    ));
    let proof = consistency(&app, 5, 0).await.unwrap();
    assert_eq!(proof.new_size, latest.tree_size);
    let got = app
        .audit()
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got, latest);
    // Published in the directory, byte for byte.
    let published = std::fs::read_to_string(
        app.checkpoint_dir()
            .join(format!("{:020}.checkpoint", latest.tree_size)),
    )
    .unwrap();
    assert_eq!(published, latest.note);
}

#[tokio::test]
async fn bad_proof_arguments_name_the_field() {
    use proto::get_inclusion_proof_request::Event;

    let app = TestApp::spawn_signing().await;
    let revisions = write_events(&app, 3).await;
    sign(&app).await;
    let first = Event::Revision(revisions[0].clone());

    let beyond = inclusion(&app, first.clone(), 7).await;
    assert_status(beyond, Code::InvalidArgument, "tree_size");
    let no_event = app
        .audit()
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            event: None,
            tree_size: 6,
        })
        .await;
    assert_status(no_event, Code::InvalidArgument, "event");
    let malformed = inclusion(&app, Event::Revision("seven".into()), 6).await;
    assert_status(malformed, Code::InvalidArgument, "revision");
    let unknown = inclusion(&app, Event::EventId("no-such-event".into()), 6).await;
    assert_status(unknown, Code::NotFound, "event_id");
    // An event after the tree asked for is not in it.
    let later = inclusion(&app, Event::Revision(revisions[5].clone()), 3).await;
    assert_status(later, Code::InvalidArgument, "tree_size");
    // Well-formed revisions that name no event: before the first, after the last.
    let zero = inclusion(&app, Event::Revision("r1.0".into()), 6).await;
    assert_status(zero, Code::NotFound, "revision");
    let beyond_the_log = inclusion(&app, Event::Revision("r1.ff".into()), 6).await;
    assert_status(beyond_the_log, Code::NotFound, "revision");

    assert_status(
        consistency(&app, 0, 6).await,
        Code::InvalidArgument,
        "old_size",
    );
    assert_status(
        consistency(&app, 4, 3).await,
        Code::InvalidArgument,
        "old_size",
    );
    assert_status(
        consistency(&app, 1, 7).await,
        Code::InvalidArgument,
        "new_size",
    );
    assert_status(
        consistency(&app, 7, 0).await,
        Code::InvalidArgument,
        "old_size",
    );
    // The valid neighbours of those answer.
    inclusion(&app, first, 6).await.unwrap();
    consistency(&app, 6, 6).await.unwrap();
    consistency(&app, 1, 6).await.unwrap();
}

#[tokio::test]
async fn a_server_without_a_signing_key_signs_nothing() {
    use proto::get_inclusion_proof_request::Event;

    let app = TestApp::spawn().await;
    let revisions = write_events(&app, 2).await;
    let mut audit = app.audit();
    let get = audit.get_checkpoint(proto::GetCheckpointRequest {}).await;
    assert_status(get, Code::FailedPrecondition, "checkpoint");
    let signed = audit.sign_checkpoint(proto::SignCheckpointRequest {}).await;
    assert_status(signed, Code::FailedPrecondition, "checkpoint");
    let export = audit
        .export_subject(proto::ExportSubjectRequest {
            subject_id: "cp-0".into(),
        })
        .await;
    assert_status(export, Code::FailedPrecondition, "checkpoint");
    // Without a checkpoint, a proof needs its size given.
    let latest = inclusion(&app, Event::Revision(revisions[0].clone()), 0).await;
    assert_status(latest, Code::InvalidArgument, "tree_size");
    assert_status(
        consistency(&app, 1, 0).await,
        Code::InvalidArgument,
        "new_size",
    );
    // Given, the proofs are those of the tree the events make.
    let events = app.all_events(None).await;
    let leaves: Vec<Hash> = events
        .iter()
        .map(|event| merkle::leaf_hash(&leaf_data(event)))
        .collect();
    let root = merkle::root_of(&leaves);
    let proof = inclusion(&app, Event::Revision(revisions[2].clone()), 4)
        .await
        .unwrap();
    assert!(verify_inclusion(
        2,
        4,
        &leaves[2],
        &hashes(&proof.hashes),
        &root
    ));
}

#[tokio::test]
async fn erased_payloads_leave_their_leaves_proofs_and_chain_intact() {
    let app = TestApp::spawn_signing().await;
    write_events(&app, 2).await;
    let mut audit = app.audit();
    let erase = |subject: &str| proto::ErasePayloadsRequest {
        subject_id: subject.into(),
        actor: actor(),
    };

    let alive = audit.erase_payloads(erase("cp-0")).await;
    assert_status(alive, Code::FailedPrecondition, "subject_id");
    let unknown = audit.erase_payloads(erase("nobody")).await;
    assert_status(unknown, Code::NotFound, "subject_id");
    let anonymous = audit
        .erase_payloads(proto::ErasePayloadsRequest {
            subject_id: "cp-0".into(),
            actor: None,
        })
        .await;
    assert_status(anonymous, Code::InvalidArgument, "actor");

    app.subjects()
        .delete_subject(proto::DeleteSubjectRequest {
            subject_id: "cp-0".into(),
            actor: actor(),
        })
        .await
        .unwrap();
    let before = app.all_events(Some("cp-0")).await;
    assert_eq!(before.len(), 3);
    let old_checkpoint = sign(&app).await;

    let answer = audit
        .erase_payloads(erase("cp-0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.erased, 3);
    let erasure_sequence = sequence(&answer.revision);

    let after = app.all_events(Some("cp-0")).await;
    assert_eq!(after.len(), 4);
    for (old, new) in before.iter().zip(&after) {
        assert!(new.payload_erased, "{}", new.revision);
        assert_eq!(
            (new.detail_json.as_str(), new.payload_salt.as_str()),
            ("", "")
        );
        assert!(!old.payload_erased && !old.detail_json.is_empty());
        // The commitment, the leaf and the chain are those of before.
        assert_eq!(new.payload_sha256, old.payload_sha256);
        assert_eq!(new.leaf_hash, old.leaf_hash);
        assert_eq!((&new.prev_hash, &new.hash), (&old.prev_hash, &old.hash));
        assert_eq!(
            new.leaf_hash,
            hex::encode(merkle::leaf_hash(&leaf_data(new)))
        );
    }
    let erasure = &after[3];
    assert_eq!(
        (erasure.kind.as_str(), erasure.revision.as_str()),
        ("payload_erased", answer.revision.as_str())
    );
    assert!(!erasure.payload_erased);
    let detail: serde_json::Value = serde_json::from_str(&erasure.detail_json).unwrap();
    let erased: Vec<u64> = before
        .iter()
        .map(|event| sequence(&event.revision))
        .collect();
    assert_eq!(detail, serde_json::json!({ "erased": erased }));
    // The other subject keeps its payloads.
    assert!(
        app.all_events(Some("cp-1"))
            .await
            .iter()
            .all(|event| !event.payload_erased && !event.detail_json.is_empty())
    );
    // Gone from the store, not only hidden.
    let mut database = app.direct_connection().await;
    let sequences: Vec<String> = erased.iter().map(u64::to_string).collect();
    let left = format!(
        "audit_payloads WHERE sequence IN ({})",
        sequences.join(", ")
    );
    assert_eq!(database.count(&left).await, 0);
    database.close().await;

    let chain = app.verify_chain().await;
    assert!(chain.ok, "{chain:?}");
    assert_eq!(chain.events_checked, erasure_sequence);

    // A second erasure has nothing left to erase.
    let again = audit
        .erase_payloads(erase("cp-0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.erased, again.revision.as_str()), (0, ""));

    // The export holds the erased events, whose leaves still verify against its checkpoint,
    // and the erasure; the new checkpoint extends the one signed before the erasure.
    let export = audit
        .export_subject(proto::ExportSubjectRequest {
            subject_id: "cp-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let checkpoint = export.checkpoint.unwrap();
    let (_, size, root) = verify_checkpoint(&checkpoint.note, &checkpoint.verifier_key).unwrap();
    assert_eq!(size, erasure_sequence);
    assert_eq!(export.events.len(), 4);
    for exported in &export.events {
        let event = exported.event.as_ref().unwrap();
        let proof = exported.proof.as_ref().unwrap();
        let leaf = merkle::leaf_hash(&leaf_data(event));
        assert_eq!(proof.leaf_index, sequence(&event.revision) - 1);
        assert_eq!(proof.tree_size, size);
        assert_eq!(hash(&proof.leaf_hash), leaf);
        let path = hashes(&proof.hashes);
        assert!(verify_inclusion(
            proof.leaf_index,
            size,
            &leaf,
            &path,
            &root
        ));
    }
    let erased_in_export: Vec<bool> = export
        .events
        .iter()
        .map(|exported| exported.event.as_ref().unwrap().payload_erased)
        .collect();
    assert_eq!(erased_in_export, [true, true, true, false]);
    let proof = consistency(&app, old_checkpoint.tree_size, size)
        .await
        .unwrap();
    assert!(verify_consistency(
        old_checkpoint.tree_size,
        size,
        &hash(&old_checkpoint.root_hash),
        &root,
        &hashes(&proof.hashes)
    ));
}
