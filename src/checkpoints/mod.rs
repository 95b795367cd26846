//! Signed checkpoints of the audit log, published outside the database.
//!
//! A checkpoint is a C2SP `tlog-checkpoint` (origin, tree size, root hash) signed as a C2SP
//! `signed-note` with the Ed25519 key of `audit_signing_key_file`, written once to
//! `audit_checkpoint_dir` (one file per size, never rewritten: a volume or a WORM bucket) and
//! served by `Audit.GetCheckpoint`. Whoever rewrites the database afterwards cannot make its log
//! match a checkpoint already published.
//!
//! The signer trusts nothing it did not compute: every leaf it signs over is recomputed from the
//! events as stored, beginning, after each start, with the whole log, which must reproduce the
//! last checkpoint published. If it does not (events changed, removed from the end or the
//! start), or the stored tree nodes that proofs are made of do not match the events, the signer
//! signs nothing more and says so: an error log, `assent_audit_log_consistent 0`, `/readyz`
//! unready and `DATA_LOSS` from the checkpoint calls. It never signs two checkpoints of which
//! one is not a prefix of the other.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use crate::audit::merkle::{self, Frontier};
use crate::audit::note::{self, CheckpointSigner, SignedCheckpoint};
use crate::audit::{leaf_data, payload_sha256};
use crate::store::{EventQuery, Store, StoreError};

/// The events read per page while verifying.
const PAGE: u32 = 1_000;
/// The suffix of a published checkpoint's file.
const SUFFIX: &str = ".checkpoint";

/// Where checkpoints come from and go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// The signer key, in the format of Go's `golang.org/x/mod/sumdb/note` (`PRIVATE+KEY+...`).
    pub key_file: PathBuf,
    /// Where each checkpoint is published, one file per tree size.
    pub directory: PathBuf,
    /// How often a checkpoint of the whole log is signed (if it grew); `None`: on demand only.
    pub interval: Option<Duration>,
}

/// Why no checkpoint could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the audit signing key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit signing key {path} is not a signer key: {problem}")]
    BadKey { path: PathBuf, problem: String },
    #[error("cannot publish to the checkpoint directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The log is not an extension of what was signed before: nothing more is signed.
    #[error("{0}")]
    Inconsistent(String),
    /// Not yet: the log is still being verified against the last checkpoint after start.
    #[error("the audit log is still being verified against the last checkpoint")]
    Verifying,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The signer of one server process: cheap to clone.
#[derive(Clone)]
pub struct Checkpoints {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Checkpoints")
            .field("origin", &self.inner.signer.origin())
            .field("directory", &self.inner.directory)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    signer: CheckpointSigner,
    directory: PathBuf,
    interval: Option<Duration>,
    /// The tree over the events verified so far, recomputed from them; one signer at a time.
    verified: Mutex<Verified>,
    /// The latest checkpoint published (read from the directory at start, then signed here).
    latest: RwLock<Option<SignedCheckpoint>>,
    /// Why nothing more is signed, once the log was found not to extend what was signed.
    refusal: RwLock<Option<String>>,
}

#[derive(Default)]
struct Verified {
    frontier: Frontier,
}

impl Checkpoints {
    /// Reads the key and the latest checkpoint published in the directory (whose signature
    /// must verify under the key). Nothing is signed until [`Checkpoints::run`] (or
    /// [`Checkpoints::sign_now`]) has verified the store's log against it.
    pub fn open(
        store: Store,
        settings: &CheckpointSettings,
    ) -> Result<Checkpoints, CheckpointError> {
        let text =
            std::fs::read_to_string(&settings.key_file).map_err(|source| CheckpointError::Key {
                path: settings.key_file.clone(),
                source,
            })?;
        let signer = CheckpointSigner::from_key_text(text.trim()).map_err(|problem| {
            CheckpointError::BadKey {
                path: settings.key_file.clone(),
                problem: problem.to_string(),
            }
        })?;
        let directory = settings.directory.clone();
        std::fs::create_dir_all(&directory).map_err(|source| CheckpointError::Directory {
            path: directory.clone(),
            source,
        })?;
        let checkpoints = Checkpoints {
            inner: Arc::new(Inner {
                store,
                signer,
                directory,
                interval: settings.interval,
                verified: Mutex::new(Verified::default()),
                latest: RwLock::new(None),
                refusal: RwLock::new(None),
            }),
        };
        match checkpoints.read_latest_published() {
            Ok(latest) => *write(&checkpoints.inner.latest) = latest,
            Err(problem) => checkpoints.refuse(problem),
        }
        crate::metrics::METRICS
            .audit_log_consistent
            .set(i64::from(checkpoints.refusal().is_none()));
        Ok(checkpoints)
    }

    /// The signer's verifier key: `<name>+<key id>+<public key>`.
    pub fn verifier_key(&self) -> String {
        self.inner.signer.verifier_key()
    }

    /// The latest checkpoint published.
    pub fn latest(&self) -> Option<SignedCheckpoint> {
        read(&self.inner.latest).clone()
    }

    /// Why nothing more is signed, if the log was found not to extend what was signed.
    pub fn refusal(&self) -> Option<String> {
        read(&self.inner.refusal).clone()
    }

    /// Verifies the whole log against the last checkpoint, then signs one every interval, until
    /// `stopped`.
    pub async fn run(self, mut stopped: watch::Receiver<bool>) {
        loop {
            match self.sign_now().await {
                Ok(checkpoint) => tracing::debug!(size = checkpoint.size, "audit checkpoint"),
                Err(CheckpointError::Inconsistent(_)) => {}
                Err(error) => tracing::warn!(
                    error = crate::telemetry::error_chain(&error),
                    "cannot sign an audit checkpoint now; retrying"
                ),
            }
            let wait = self.inner.interval.unwrap_or(Duration::MAX);
            tokio::select! {
                _ = stopped.changed() => return,
                () = tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))) => {}
            }
        }
    }

    /// Signs and publishes a checkpoint of the whole log as committed now (the latest one if the
    /// log has not grown), after recomputing every leaf added since the last one.
    pub async fn sign_now(&self) -> Result<SignedCheckpoint, CheckpointError> {
        let mut verified = self.inner.verified.lock().await;
        if let Some(refusal) = self.refusal() {
            return Err(CheckpointError::Inconsistent(refusal));
        }
        let result = self.extend(&mut verified).await;
        let outcome = match result {
            Ok(()) => self.sign_verified(&verified).await,
            Err(error) => Err(error),
        };
        let counted = match &outcome {
            Ok(_) => "signed",
            Err(CheckpointError::Inconsistent(_)) => "refused",
            Err(_) => "failed",
        };
        crate::metrics::METRICS
            .audit_checkpoints
            .get_or_create(&crate::metrics::ResultLabels { result: counted })
            .inc();
        outcome
    }

    /// Recomputes the leaves of the events after those verified, up to the store's head,
    /// checking on the way that the log reproduces the latest published checkpoint.
    async fn extend(&self, verified: &mut Verified) -> Result<(), CheckpointError> {
        let latest = self.latest();
        loop {
            let events = self
                .inner
                .store
                .events(&EventQuery {
                    subject_id: None,
                    after_sequence: verified.frontier.size(),
                    limit: PAGE,
                })
                .await?;
            for event in &events {
                let expected = verified.frontier.size() + 1;
                if event.sequence != expected {
                    return Err(self.inconsistent(format!(
                        "audit event {expected} is missing (the next stored is {})",
                        event.sequence
                    )));
                }
                let committed = event.payload_erased
                    || payload_sha256(&event.payload_salt, &event.detail_json).as_deref()
                        == Some(event.payload_sha256.as_str());
                if !committed {
                    return Err(self.inconsistent(format!(
                        "the payload of audit event {} ({}) does not match its commitment",
                        event.sequence, event.event_id
                    )));
                }
                verified.frontier.push(merkle::leaf_hash(&leaf_data(event)));
                if let Some(latest) = &latest
                    && latest.size == verified.frontier.size()
                    && latest.root != verified.frontier.root()
                {
                    return Err(self.inconsistent(format!(
                        "the store's audit log is not an extension of the checkpoint of size {} \
                         published: the first {} events hash to another root",
                        latest.size, latest.size
                    )));
                }
            }
            if events.len() < PAGE as usize {
                break;
            }
        }
        if let Some(latest) = &latest
            && verified.frontier.size() < latest.size
        {
            return Err(self.inconsistent(format!(
                "the store's audit log holds {} events, fewer than the {} of the checkpoint \
                 published: events were removed",
                verified.frontier.size(),
                latest.size
            )));
        }
        Ok(())
    }

    /// Signs the tree verified, once the stored nodes that proofs are made of are seen to hash
    /// to the same root, and publishes it.
    async fn sign_verified(
        &self,
        verified: &Verified,
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let size = verified.frontier.size();
        let root = verified.frontier.root();
        if let Some(latest) = self.latest()
            && latest.size == size
        {
            return Ok(latest);
        }
        if size > 0 {
            let stored = self.inner.store.range_hashes(&[(0, size)]).await?;
            if stored.first() != Some(&root) {
                return Err(self.inconsistent(format!(
                    "the audit tree's stored nodes for the first {size} events do not hash to \
                     the root of the events themselves"
                )));
            }
        }
        let checkpoint = self.inner.signer.sign(size, &root);
        self.publish(&checkpoint)?;
        crate::metrics::METRICS
            .audit_checkpoint_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        *write(&self.inner.latest) = Some(checkpoint.clone());
        Ok(checkpoint)
    }

    /// Writes the checkpoint's file, once: a file of that size already there must hold the
    /// same note (Ed25519 is deterministic: the same tree gives the same bytes). The note is
    /// written whole to a file of its own first, then linked under its name (which fails if the
    /// name exists), so a replica signing the same size at the same moment never reads half a
    /// file.
    fn publish(&self, checkpoint: &SignedCheckpoint) -> Result<(), CheckpointError> {
        let path = self.inner.directory.join(file_name(checkpoint.size));
        let failed = |source| CheckpointError::Directory {
            path: path.clone(),
            source,
        };
        let draft = self
            .inner
            .directory
            .join(format!(".{}.draft", uuid::Uuid::now_v7().simple()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&draft)?;
            file.write_all(checkpoint.note.as_bytes())?;
            file.sync_all()?;
            std::fs::hard_link(&draft, &path)
        })();
        let _ = std::fs::remove_file(&draft);
        match written {
            Ok(()) => {
                if let Ok(directory) = std::fs::File::open(&self.inner.directory) {
                    // The name is durable too (best effort: not every system allows it).
                    let _ = directory.sync_all();
                }
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let there = std::fs::read_to_string(&path).map_err(failed)?;
                if there == checkpoint.note {
                    Ok(())
                } else {
                    Err(self.inconsistent(format!(
                        "{} holds another checkpoint of size {}",
                        path.display(),
                        checkpoint.size
                    )))
                }
            }
            Err(error) => Err(failed(error)),
        }
    }

    /// The largest checkpoint in the directory, verified under this signer's key.
    fn read_latest_published(&self) -> Result<Option<SignedCheckpoint>, String> {
        let Some((size, path)) = largest(&self.inner.directory)
            .map_err(|error| format!("cannot list {}: {error}", self.inner.directory.display()))?
        else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let (origin, signed_size, root) = note::verify_checkpoint(&text, &self.verifier_key())
            .map_err(|error| {
                format!(
                    "{} does not verify under the audit signing key: {error}",
                    path.display()
                )
            })?;
        if origin != self.inner.signer.origin() || signed_size != size {
            return Err(format!(
                "{} is a checkpoint of {origin} at size {signed_size}, not of this log at its \
                 file's size",
                path.display()
            ));
        }
        Ok(Some(SignedCheckpoint {
            note: text,
            size,
            root,
        }))
    }

    /// Records the refusal (once, loudly) and returns it as the error.
    fn inconsistent(&self, problem: String) -> CheckpointError {
        self.refuse(problem.clone());
        CheckpointError::Inconsistent(problem)
    }

    fn refuse(&self, problem: String) {
        let mut refusal = write(&self.inner.refusal);
        if refusal.is_none() {
            tracing::error!(
                problem = problem.as_str(),
                "the audit log is not an extension of its last signed checkpoint: no checkpoint \
                 will be signed"
            );
            crate::metrics::METRICS.audit_log_consistent.set(0);
            *refusal = Some(problem);
        }
    }
}

/// The file of the checkpoint of `size` events: the size in 20 digits, so names sort as sizes.
fn file_name(size: u64) -> String {
    format!("{size:020}{SUFFIX}")
}

/// The checkpoint file of the largest size in `directory`, if any.
fn largest(directory: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let mut largest = None;
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(size) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SUFFIX))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        if largest.as_ref().is_none_or(|(known, _)| size > *known) {
            largest = Some((size, entry.path()));
        }
    }
    Ok(largest)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
