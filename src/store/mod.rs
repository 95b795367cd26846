//! The store of record: subjects, choices, conversation facts and the audit log.
//!
//! Architecture Invariant: every state change and its audit event are written in one
//! transaction, and the audit chain is extended by exactly one event per change. What a command
//! changes is decided by the pure [`change::plan_change`], the same for every backend; a backend
//! only loads rows, writes rows and keeps the chain.
//!
//! Backends are variants of [`Store`] (an enum rather than a trait object: the set is closed
//! and the calls stay statically dispatched).

pub mod change;
mod postgres;
pub mod replay;
mod rows;
mod sqlite;
pub mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::Instrument;

pub use change::{Command, SubjectFields, SubjectRecord};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::audit::decision_log::DecisionRecord;
use crate::audit::{AuditEvent, ChainReport};
use crate::domain::{Actor, ConversationId, SubjectId};
use crate::policy::{Choice, ConversationFacts, PURPOSE_COUNT, Purpose, Status, SubjectState};
use crate::revision::Revision;

/// Where the state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded default: one SQLite file, created with its schema on start.
    SqliteFile(PathBuf),
    /// PostgreSQL, the production store of record.
    Postgres {
        url: DatabaseUrl,
        max_connections: u32,
    },
}

/// A database or Redis URL. It may carry a password, so it never prints one.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let Some((userinfo, host)) = rest.rsplit_once('@') else {
            return self.0.clone();
        };
        match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.redacted())
    }
}

/// The context of a write, recorded in its audit event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteContext {
    /// The authenticated calling service.
    pub caller: String,
    pub actor: Actor,
    /// The W3C trace id of the request, or empty.
    pub trace_id: String,
    /// The policy version in force when the write is made.
    pub policy_version: String,
}

/// One write to one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    pub subject_id: SubjectId,
    pub command: Command,
    pub context: WriteContext,
}

/// A policy version to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPolicy {
    pub version: String,
    pub effective_from_micros: i64,
    pub description: String,
    /// The policy file.
    pub source: String,
}

/// A stored policy version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    pub policy: NewPolicy,
    pub applied_at_micros: i64,
    /// The revision of the audit event recording it.
    pub revision: Revision,
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The revision of the subject after the write: the write's own revision when it changed
    /// something, the subject's current revision when it did not.
    pub revision: Revision,
    pub changed: bool,
}

/// What a decision needs to know: the subject (if ever seen) and one conversation's facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionState {
    pub subject: Option<SubjectState>,
    pub conversation: Option<ConversationFacts>,
    /// The subject's revision, or the store's latest revision for a subject never seen.
    pub revision: Revision,
}

/// What the cache keeps of one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectSnapshot {
    /// `None` for a subject never seen.
    pub subject: Option<SubjectState>,
    /// The subject's revision, or the store's latest revision for a subject never seen.
    pub revision: Revision,
    /// Conversation facts, the most recently changed first.
    pub conversations: Vec<(String, ConversationFacts)>,
    /// Whether `conversations` holds every conversation fact of the subject.
    pub complete: bool,
}

/// One committed change, as the change log tells it: which subject changed at which revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    pub subject_id: String,
    /// When it was committed (microseconds since the epoch, the committing replica's clock);
    /// 0 when unknown.
    pub at_micros: i64,
}

impl Change {
    /// How replicas announce the change to each other (PostgreSQL NOTIFY, Redis PUBLISH):
    /// `"REVISION@MICROS SUBJECT"`.
    pub fn announcement(&self) -> String {
        format!(
            "{}@{} {}",
            self.revision.sequence(),
            self.at_micros,
            self.subject_id
        )
    }

    /// Parses an announcement; the `@MICROS` part is optional. An empty subject announces a
    /// change about no subject (a policy version applied).
    pub fn parse_announcement(message: &str) -> Option<Change> {
        let (stamp, subject_id) = message.split_once(' ')?;
        let (revision, at_micros) = match stamp.split_once('@') {
            Some((revision, at)) => (revision, at.parse().ok()?),
            None => (stamp, 0),
        };
        let revision = Revision::new(revision.parse().ok()?);
        Some(Change {
            revision,
            subject_id: subject_id.to_owned(),
            at_micros,
        })
    }
}

/// A stored choice with the time it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChoiceEntry {
    pub purpose: Purpose,
    pub choice: Choice,
    pub updated_at_micros: i64,
}

/// What the retention schedule reads of a subject (`Retention.Query`, `Retention.Due`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionSubject {
    pub subject_id: String,
    pub status: Status,
    /// When the account was deleted, `None` while it is not. A deleted subject takes no
    /// further write, so this is its row's `updated_at`.
    pub deleted_at_micros: Option<i64>,
    pub zero_data_retention: bool,
    /// Its choices with when each was made, in purpose order.
    pub choices: Vec<ChoiceEntry>,
    /// The subject's revision (for one rebuilt as of an instant, that of the last event
    /// applied).
    pub revision: Revision,
}

/// Which subjects [`Store::due_candidates`] lists: every subject that any of the set criteria
/// selects, in subject id order, after `after`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueCandidates {
    /// Subjects deleted at or before this instant.
    pub deleted_through: Option<i64>,
    /// Subjects with zero data retention.
    pub zero_data_retention: bool,
    /// Subjects who refused one of these purposes at or before `refused_through`.
    pub refused: Vec<Purpose>,
    pub refused_through: i64,
    /// Only subject ids after this one (empty: from the first).
    pub after: String,
    pub limit: u32,
}

/// One page of [`Store::due_candidates`], read in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidatePage {
    pub subjects: Vec<RetentionSubject>,
    /// The page is full: more candidates may follow its last subject.
    pub full: bool,
    /// The store's latest revision when the page was read.
    pub revision: Revision,
}

/// A subject as `GetSubject` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectView {
    pub record: SubjectRecord,
    /// In purpose order.
    pub choices: Vec<ChoiceEntry>,
    pub revision: Revision,
}

/// The PostgreSQL NOTIFY channel every committed change is announced on
/// ([`Change::announcement`]).
pub const CHANGES_CHANNEL: &str = "assent_changes";

/// What `prune_decision_log` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The day partitions dropped (PostgreSQL).
    pub partitions_dropped: Vec<String>,
    /// The rows deleted (SQLite, which has no partitions).
    pub rows_deleted: u64,
}

/// The columns of a decision record, in the order every backend writes them.
const DECISION_LOG_COLUMNS: &str = "decided_at, decision_id, subject_id, purpose, \
     conversation_id, source, consistency, decision, reason, rule, policy_version, revision, \
     degraded, caller, trace_id";

/// Which audit events to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    pub subject_id: Option<SubjectId>,
    /// List events with a sequence strictly greater than this.
    pub after_sequence: u64,
    pub limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("subject not found")]
    NotFound,
    #[error("subject is deleted")]
    SubjectDeleted,
    #[error("the store is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    #[error("store schema migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is newer than this binary: migration {version} is applied but \
         unknown here; run a newer assent (or restore the database of this version)"
    )]
    SchemaTooNew { version: i64 },
    #[error("cannot prepare the data directory {path}")]
    DataDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy version {0} is stored already, with another text")]
    PolicyConflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        let unavailable = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(database) => {
                database.code().is_some_and(|code| code_is_transient(&code))
            }
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(error)
        } else {
            StoreError::Query(error)
        }
    }
}

/// Whether a database error code says the store cannot serve right now, rather than that the
/// query is wrong.
///
/// SQLite reports numeric (extended) result codes: BUSY and LOCKED (another writer held the file
/// past the busy timeout), IOERR, FULL and CANTOPEN (the disk). PostgreSQL reports SQLSTATEs:
/// class 08 (connection), 53 (insufficient resources), 57P (shutdown, cannot connect now), and
/// 55P03 (a lock not obtained within `lock_timeout`).
fn code_is_transient(code: &str) -> bool {
    match code.parse::<i32>() {
        Ok(extended_code) => matches!(extended_code & 0xff, 5 | 6 | 10 | 13 | 14),
        Err(_) => {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "55P03"
        }
    }
}

impl From<change::Refusal> for StoreError {
    fn from(refusal: change::Refusal) -> StoreError {
        match refusal {
            change::Refusal::NotFound => StoreError::NotFound,
            change::Refusal::Deleted => StoreError::SubjectDeleted,
        }
    }
}

/// The store of record, whichever backend holds it.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the store and brings its schema up to date.
    pub async fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::SqliteFile(path) => Ok(Store::Sqlite(SqliteStore::open(path).await?)),
            StoreLocation::Postgres {
                url,
                max_connections,
            } => Ok(Store::Postgres(
                PostgresStore::open(url.expose(), *max_connections).await?,
            )),
        }
    }

    /// Applies one write and its audit event in one transaction.
    pub async fn write(&self, request: &WriteRequest) -> Result<WriteOutcome, StoreError> {
        observed(self, "write", async {
            match self {
                Store::Sqlite(store) => store.write(request).await,
                Store::Postgres(store) => store.write(request).await,
            }
        })
        .await
    }

    /// Stores a policy version and its audit event in one transaction; unchanged when this
    /// exact version is stored, [`StoreError::PolicyConflict`] when another text is.
    pub async fn apply_policy(
        &self,
        policy: &NewPolicy,
        context: &WriteContext,
    ) -> Result<WriteOutcome, StoreError> {
        observed(self, "apply_policy", async {
            match self {
                Store::Sqlite(store) => store.apply_policy(policy, context).await,
                Store::Postgres(store) => store.apply_policy(policy, context).await,
            }
        })
        .await
    }

    /// Every stored policy version, by effective date.
    pub async fn policy_versions(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        observed(self, "policy_versions", async {
            match self {
                Store::Sqlite(store) => store.policy_versions().await,
                Store::Postgres(store) => store.policy_versions().await,
            }
        })
        .await
    }

    /// The state a decision about `subject_id` (and optionally one conversation) needs.
    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
    ) -> Result<DecisionState, StoreError> {
        observed(self, "decision_state", async {
            match self {
                Store::Sqlite(store) => store.decision_state(subject_id, conversation_id).await,
                Store::Postgres(store) => store.decision_state(subject_id, conversation_id).await,
            }
        })
        .await
    }

    /// What the cache keeps of a subject, read in one snapshot.
    pub async fn snapshot(
        &self,
        subject_id: &SubjectId,
        max_conversations: usize,
    ) -> Result<SubjectSnapshot, StoreError> {
        observed(self, "snapshot", async {
            match self {
                Store::Sqlite(store) => store.snapshot(subject_id, max_conversations).await,
                Store::Postgres(store) => store.snapshot(subject_id, max_conversations).await,
            }
        })
        .await
    }

    /// The changes committed after revision `after`, oldest first, at most `limit`.
    pub async fn changes_since(
        &self,
        after: Revision,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        observed(self, "changes_since", async {
            match self {
                Store::Sqlite(store) => store.changes_since(after, limit).await,
                Store::Postgres(store) => store.changes_since(after, limit).await,
            }
        })
        .await
    }

    /// Every subject changed at or after `since_micros`, with its latest revision.
    pub async fn subjects_changed_since(
        &self,
        since_micros: i64,
    ) -> Result<Vec<Change>, StoreError> {
        observed(self, "subjects_changed_since", async {
            match self {
                Store::Sqlite(store) => store.subjects_changed_since(since_micros).await,
                Store::Postgres(store) => store.subjects_changed_since(since_micros).await,
            }
        })
        .await
    }

    /// Subject ids after `after`, in id order, at most `limit`.
    pub async fn subject_ids(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        observed(self, "subject_ids", async {
            match self {
                Store::Sqlite(store) => store.subject_ids(after, limit).await,
                Store::Postgres(store) => store.subject_ids(after, limit).await,
            }
        })
        .await
    }

    /// How many subjects the store holds (deleted ones included).
    pub async fn count_subjects(&self) -> Result<u64, StoreError> {
        observed(self, "count_subjects", async {
            match self {
                Store::Sqlite(store) => store.count_subjects().await,
                Store::Postgres(store) => store.count_subjects().await,
            }
        })
        .await
    }

    /// The subject with its choices, or `None` if never seen.
    pub async fn subject(&self, subject_id: &SubjectId) -> Result<Option<SubjectView>, StoreError> {
        observed(self, "subject", async {
            match self {
                Store::Sqlite(store) => store.subject(subject_id).await,
                Store::Postgres(store) => store.subject(subject_id).await,
            }
        })
        .await
    }

    /// What a decision about `subject_id` needed as of `at_micros`, rebuilt from the subject's
    /// audit events committed by then (in revision order, up to the first committed later).
    /// The revision is that of the last event applied (zero when there was none).
    pub async fn state_as_of(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        at_micros: i64,
    ) -> Result<DecisionState, StoreError> {
        let mut replayed = replay::Replayed::default();
        let revision = self
            .replay_until(subject_id, at_micros, |event| {
                replayed
                    .apply(event)
                    .map_err(|error| StoreError::Corrupt(error.to_string()))
            })
            .await?;
        Ok(DecisionState {
            conversation: conversation_id.and_then(|id| replayed.conversation(id.as_str())),
            subject: replayed.subject.map(|record| record.state),
            revision,
        })
    }

    /// Feeds `apply` the subject's audit events committed by `at_micros`, in revision order
    /// (up to the first committed later); the revision of the last one (zero for none).
    async fn replay_until(
        &self,
        subject_id: &SubjectId,
        at_micros: i64,
        mut apply: impl FnMut(&AuditEvent) -> Result<(), StoreError>,
    ) -> Result<Revision, StoreError> {
        const HISTORY_PAGE: u32 = 1_000;
        let mut revision = Revision::ZERO;
        loop {
            let events = self
                .events(&EventQuery {
                    subject_id: Some(subject_id.clone()),
                    after_sequence: revision.sequence(),
                    limit: HISTORY_PAGE,
                })
                .await?;
            for event in &events {
                if event.at_micros > at_micros {
                    return Ok(revision);
                }
                apply(event)?;
                revision = Revision::new(event.sequence);
            }
            if events.len() < HISTORY_PAGE as usize {
                return Ok(revision);
            }
        }
    }

    /// What the retention schedule reads of a subject now, or `None` if never seen.
    pub async fn retention_subject(
        &self,
        subject_id: &SubjectId,
    ) -> Result<Option<RetentionSubject>, StoreError> {
        observed(self, "retention_subject", async {
            match self {
                Store::Sqlite(store) => store.retention_subject(subject_id).await,
                Store::Postgres(store) => store.retention_subject(subject_id).await,
            }
        })
        .await
    }

    /// What the retention schedule read of a subject as of `at_micros`, rebuilt from its audit
    /// events committed by then: the deletion and each choice dated by the event that made it.
    /// `None` if the subject did not exist then.
    pub async fn retention_subject_as_of(
        &self,
        subject_id: &SubjectId,
        at_micros: i64,
    ) -> Result<Option<RetentionSubject>, StoreError> {
        let mut replayed = replay::Replayed::default();
        let mut deleted_at = None;
        let mut chosen_at = [0_i64; PURPOSE_COUNT];
        let revision = self
            .replay_until(subject_id, at_micros, |event| {
                let before = replayed.subject.as_ref().map(|record| record.state);
                replayed
                    .apply(event)
                    .map_err(|error| StoreError::Corrupt(error.to_string()))?;
                let Some(after) = replayed.subject.as_ref().map(|record| record.state) else {
                    return Ok(());
                };
                let before = before.unwrap_or_default();
                if after.status == Status::Deleted && before.status != Status::Deleted {
                    deleted_at = Some(event.at_micros);
                }
                for purpose in Purpose::ALL {
                    if after.choices.get(*purpose) != before.choices.get(*purpose) {
                        chosen_at[purpose.index()] = event.at_micros;
                    }
                }
                Ok(())
            })
            .await?;
        let Some(record) = replayed.subject else {
            return Ok(None);
        };
        let state = record.state;
        Ok(Some(RetentionSubject {
            subject_id: subject_id.as_str().to_owned(),
            status: state.status,
            deleted_at_micros: deleted_at.filter(|_| state.status == Status::Deleted),
            zero_data_retention: state.zero_data_retention,
            choices: state
                .choices
                .iter()
                .map(|(purpose, choice)| ChoiceEntry {
                    purpose,
                    choice,
                    updated_at_micros: chosen_at[purpose.index()],
                })
                .collect(),
            revision,
        }))
    }

    /// Subjects whose state may make data due under the retention schedule (see
    /// [`DueCandidates`]), one page in one snapshot, with what the schedule reads of each.
    pub async fn due_candidates(&self, query: &DueCandidates) -> Result<CandidatePage, StoreError> {
        observed(self, "due_candidates", async {
            match self {
                Store::Sqlite(store) => store.due_candidates(query).await,
                Store::Postgres(store) => store.due_candidates(query).await,
            }
        })
        .await
    }

    /// Audit events in sequence order.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        observed(self, "events", async {
            match self {
                Store::Sqlite(store) => store.events(query).await,
                Store::Postgres(store) => store.events(query).await,
            }
        })
        .await
    }

    /// Recomputes the whole audit chain.
    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        observed(self, "verify_chain", async {
            match self {
                Store::Sqlite(store) => store.verify_chain().await,
                Store::Postgres(store) => store.verify_chain().await,
            }
        })
        .await
    }

    /// The latest committed revision.
    pub async fn head_revision(&self) -> Result<Revision, StoreError> {
        observed(self, "head_revision", async {
            match self {
                Store::Sqlite(store) => store.head_revision().await,
                Store::Postgres(store) => store.head_revision().await,
            }
        })
        .await
    }

    /// The oldest revision the change log can be read from (everything after it is kept) and
    /// the latest committed revision.
    pub async fn change_log_bounds(&self) -> Result<(Revision, Revision), StoreError> {
        observed(self, "change_log_bounds", async {
            match self {
                Store::Sqlite(store) => store.change_log_bounds().await,
                Store::Postgres(store) => store.change_log_bounds().await,
            }
        })
        .await
    }

    /// Records a batch of decisions in the decision log. `durable`: the batch carries a
    /// record someone waits on, and must be on disk when this returns.
    pub async fn insert_decisions(
        &self,
        records: &[DecisionRecord],
        durable: bool,
    ) -> Result<(), StoreError> {
        observed(self, "insert_decisions", async {
            match self {
                Store::Sqlite(store) => store.insert_decisions(records).await,
                Store::Postgres(store) => store.insert_decisions(records, durable).await,
            }
        })
        .await
    }

    /// Removes the decisions older than `cutoff_micros` (whole day partitions on PostgreSQL).
    pub async fn prune_decision_log(&self, cutoff_micros: i64) -> Result<PruneReport, StoreError> {
        observed(self, "prune_decision_log", async {
            match self {
                Store::Sqlite(store) => store.prune_decision_log(cutoff_micros).await,
                Store::Postgres(store) => store.prune_decision_log(cutoff_micros).await,
            }
        })
        .await
    }

    /// The number of recorded decisions.
    pub async fn count_decisions(&self) -> Result<u64, StoreError> {
        observed(self, "count_decisions", async {
            match self {
                Store::Sqlite(store) => store.count_decisions().await,
                Store::Postgres(store) => store.count_decisions().await,
            }
        })
        .await
    }

    /// The latest migration applied to the store.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        observed(self, "schema_version", async {
            match self {
                Store::Sqlite(store) => store.schema_version().await,
                Store::Postgres(store) => store.schema_version().await,
            }
        })
        .await
    }

    /// The database system, as OpenTelemetry names it.
    pub fn system(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgresql",
        }
    }

    /// Waits for open connections to finish and closes them.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }
}

/// Runs one store operation in a span of its own (when the call is traced) and times it.
async fn observed<T>(
    store: &Store,
    operation: &'static str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = crate::child_span!(
        "store.query",
        db.system = store.system(),
        db.operation = operation,
        otel.status_code = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    crate::metrics::record_store_query(operation, started.elapsed());
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// Runs the migrations a binary knows, refusing a database that has applied one it does not know
/// (written by a newer binary).
async fn migrate<DB>(
    migrator: &sqlx::migrate::Migrator,
    pool: &sqlx::Pool<DB>,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    match migrator.run(pool).await {
        Err(sqlx::migrate::MigrateError::VersionMissing(version)) => {
            Err(StoreError::SchemaTooNew { version })
        }
        other => Ok(other?),
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod announcement_tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        let change = Change {
            revision: Revision::new(17),
            subject_id: "user@example.com x".to_owned(),
            at_micros: 1_700_000_000_000_000,
        };
        assert_eq!(
            change.announcement(),
            "17@1700000000000000 user@example.com x"
        );
        assert_eq!(
            Change::parse_announcement(&change.announcement()),
            Some(change)
        );
        assert_eq!(
            Change::parse_announcement("17 u"),
            Some(Change {
                revision: Revision::new(17),
                subject_id: "u".to_owned(),
                at_micros: 0,
            })
        );
        assert_eq!(
            Change::parse_announcement("18@5 "),
            Some(Change {
                revision: Revision::new(18),
                subject_id: String::new(),
                at_micros: 5,
            })
        );
        for invalid in ["x u", "17@x u", "17", ""] {
            assert_eq!(Change::parse_announcement(invalid), None, "{invalid}");
        }
    }
}
