//! The store of record: subjects, choices, conversation facts and the audit log.
//!
//! Architecture Invariant: every state change and its audit event are written in one
//! transaction, and the audit chain is extended by exactly one event per change. What a command
//! changes is decided by the pure [`change::plan_change`], the same for every backend; a backend
//! only loads rows, writes rows and keeps the chain.
//!
//! Backends are variants of [`Store`] (an enum rather than a trait object: the set is closed
//! and the calls stay statically dispatched).

mod arrays;
pub mod change;
mod group;
pub mod history;
mod postgres;
pub mod replay;
mod rows;
mod sql;
mod sqlite;
pub mod state_check;
pub mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::Instrument;

pub use change::{Command, ConsentMeta, Provenance, SubjectFields, SubjectRecord};
pub use history::{ConsentCause, ConsentRecord, HistoryCursor};
pub use postgres::{PostgresStore, RUNTIME_GRANTS, ReadReplicas};
pub use sqlite::SqliteStore;
pub use state_check::{StateMismatch, StateReport};

use sql::Connection;

use crate::audit::{AuditEvent, ChainReport, Decided, DecisionRecord, merkle};
use crate::domain::{Actor, ConversationId, Jurisdiction, SubjectId};
use crate::policy::rights::{RequestState, RightKind, RightsRequest, StepRefusal};
use crate::policy::{
    Choice, ConsentMethod, ConversationFacts, PURPOSE_COUNT, Purpose, Status, SubjectState,
};
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

/// What opening the store does with its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// Apply the migrations the database lacks: the role connecting owns the schema (the
    /// embedded store, a single PostgreSQL role, `assent migrate`).
    Migrate,
    /// Change nothing; refuse a database whose applied migrations are not exactly the ones this
    /// binary knows: for a role that may read and write the tables but not change them
    /// (`run_migrations = false`, docs/operations.md "Two database roles").
    Check,
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

/// How long the store may take before an operation fails [`StoreError::TimedOut`] (mapped
/// like [`StoreError::Unavailable`]). Each is a client-side deadline around the whole
/// operation — taking a connection from the pool (connecting if need be), every statement and
/// the commit — so a database that accepts connections and never answers costs no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreTimeouts {
    /// The reads a Check makes on a cache miss (`decision_state`, `snapshot`): past it, the
    /// Check gets the degraded answer.
    pub read: Duration,
    /// Each write transaction and the decision log's inserts, and the short reads that keep a
    /// replica current and ready (the change log, the head revision); also PostgreSQL's
    /// `lock_timeout`.
    pub write: Duration,
}

impl StoreTimeouts {
    /// Every other operation (listings, history, subject records, the chain, the retention
    /// scans): as long as PostgreSQL's `statement_timeout` lets one statement run.
    pub const OTHER: Duration = Duration::from_secs(30);
}

impl Default for StoreTimeouts {
    fn default() -> StoreTimeouts {
        StoreTimeouts {
            read: Duration::from_millis(50),
            write: Duration::from_millis(800),
        }
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

/// A rights request to file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRightsRequest {
    pub subject_id: SubjectId,
    pub kind: RightKind,
    /// The jurisdiction to compute deadlines in; `None`: the subject's.
    pub jurisdiction: Option<Jurisdiction>,
    /// When the request was received; `None`: now.
    pub received_at_micros: Option<i64>,
    pub identity_verified: bool,
    pub purposes: Vec<Purpose>,
}

/// A step of a rights request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RightsStep {
    /// Move to a state; `verify` records that the identity was verified; `reason` is required
    /// for a refusal.
    Advance {
        to: RequestState,
        verify: bool,
        reason: String,
    },
    /// Extend the deadline once, giving the reason told to the requester.
    Extend { reason: String },
}

/// The effects a rights write may have on its subject: what its caller may also do through
/// `Subjects`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RightsEffects {
    /// Every effect, deletion and restriction included.
    All,
    /// Only effects that neither delete nor restrict the subject (REFUSED choices): a write
    /// whose effect would is refused whole ([`StoreError::EffectNotAllowed`]).
    NeitherDeleteNorRestrict,
}

/// A stored rights request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRightsRequest {
    pub request_id: String,
    pub subject_id: SubjectId,
    pub jurisdiction: String,
    pub request: RightsRequest,
    pub extension_reason: String,
    pub refusal_reason: String,
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
    /// The revision of the request's latest audit event.
    pub revision: Revision,
}

/// What a rights write did: the request after it, and the revisions of the audit events it
/// appended (the step's own, then one per change of the subject it caused), oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RightsOutcome {
    pub request: StoredRightsRequest,
    pub revisions: Vec<Revision>,
}

/// Which rights requests to list, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RightsListing {
    /// A subject's requests, by time received.
    Subject(SubjectId),
    /// Every request still owed an answer whose deadline passed before the instant, by
    /// deadline.
    OverdueAt(i64),
}

/// A page of rights requests: after the key of the last one of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RightsQuery {
    pub listing: RightsListing,
    /// The sort key and request id of the last request already listed.
    pub after: Option<(i64, String)>,
    pub limit: u32,
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

/// What a committed change is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    Subject(SubjectId),
    /// A policy version applied: about no subject.
    PolicyVersion,
}

impl Changed {
    /// The subject id an audit event and an announcement carry: empty for a policy version.
    pub fn subject_id(&self) -> &str {
        match self {
            Changed::Subject(subject_id) => subject_id.as_str(),
            Changed::PolicyVersion => "",
        }
    }

    /// Parses what [`Changed::subject_id`] gives; `None` for an invalid subject id.
    pub fn parse(subject_id: &str) -> Option<Changed> {
        match subject_id {
            "" => Some(Changed::PolicyVersion),
            subject_id => SubjectId::parse(subject_id).ok().map(Changed::Subject),
        }
    }
}

/// One committed change, as the change log tells it: what changed at which revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeNotice {
    pub revision: Revision,
    pub changed: Changed,
    /// When it was committed (microseconds since the epoch, the committing replica's clock);
    /// 0 when unknown.
    pub at_micros: i64,
}

impl ChangeNotice {
    /// How replicas announce the change to each other (PostgreSQL NOTIFY, Redis PUBLISH):
    /// `"REVISION@MICROS SUBJECT"`, the subject empty for a policy version.
    pub fn announcement(&self) -> String {
        format!(
            "{}@{} {}",
            self.revision.sequence(),
            self.at_micros,
            self.changed.subject_id()
        )
    }

    /// Parses an announcement; the `@MICROS` part is optional.
    pub fn parse_announcement(message: &str) -> Option<ChangeNotice> {
        let (stamp, subject_id) = message.split_once(' ')?;
        let (revision, at_micros) = match stamp.split_once('@') {
            Some((revision, at)) => (revision, at.parse().ok()?),
            None => (stamp, 0),
        };
        Some(ChangeNotice {
            revision: Revision::new(revision.parse().ok()?),
            changed: Changed::parse(subject_id)?,
            at_micros,
        })
    }
}

/// A stored choice with the time it was made and how and under what it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChoiceEntry {
    pub purpose: Purpose,
    pub choice: Choice,
    pub updated_at_micros: i64,
    /// The notice or policy version shown (empty for choices stored before it was recorded).
    pub notice_version: String,
    pub method: ConsentMethod,
    /// The calling service that wrote it (empty for choices stored before it was recorded
    /// whose event is gone).
    pub caller: String,
    /// When it stops counting; `None`: never.
    pub expires_at_micros: Option<i64>,
}

/// A stored choice whose expiry has passed, as the expiry sweep finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredChoice {
    pub subject_id: SubjectId,
    pub purpose: Purpose,
    pub expires_at_micros: i64,
}

/// A page of a subject's consent history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// Oldest first.
    pub records: Vec<ConsentRecord>,
    /// Where the next page starts; `None` when this one is the last.
    pub next: Option<HistoryCursor>,
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

/// Subjects that share one decision state: everything a policy reads of a subject when the
/// question names no conversation (plan, status, GPC, zero data retention, the choice of
/// every purpose as it counts at the instant asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateGroup {
    /// The state, with no expiries: the choices expired at the instant are left out.
    pub state: SubjectState,
    /// How many subjects have it.
    pub subjects: u64,
    /// The first of them in id order, when asked for.
    pub first_subject: Option<String>,
}

/// A subject as `GetSubject` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectView {
    pub record: SubjectRecord,
    /// In purpose order.
    pub choices: Vec<ChoiceEntry>,
    pub revision: Revision,
}

/// The calling service recorded in the audit events of the expiry sweep: assent itself.
pub const EXPIRY_CALLER: &str = "assent";
/// The actor recorded in the audit events of the expiry sweep.
pub const EXPIRY_OPERATOR: &str = "assent:consent-expiry";

/// The PostgreSQL NOTIFY channel every committed change is announced on
/// ([`ChangeNotice::announcement`]).
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

/// The longest shipping a decision log segment may take.
const SHIP_DEADLINE: Duration = Duration::from_secs(10);

/// Which recorded decisions to list, in the order of (decided_at, decision_id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionQuery {
    pub subject_id: Option<SubjectId>,
    pub decision_id: Option<String>,
    /// Decisions at or after this instant (µs since the epoch).
    pub from_micros: i64,
    /// Decisions before this instant.
    pub until_micros: i64,
    /// Decisions after this one (the last of the previous page): its instant and id.
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

impl DecisionQuery {
    /// Every decision, `limit` at a time.
    pub fn all(limit: u32) -> DecisionQuery {
        DecisionQuery {
            subject_id: None,
            decision_id: None,
            from_micros: i64::MIN,
            until_micros: i64::MAX,
            after: None,
            limit,
        }
    }

    /// Whether a decision matches (for decisions read from a segment).
    pub fn matches(&self, record: &DecisionRecord) -> bool {
        self.subject_id
            .as_ref()
            .is_none_or(|subject| subject.as_str() == record.subject_id)
            && self
                .decision_id
                .as_ref()
                .is_none_or(|id| *id == record.decision_id)
            && (self.from_micros..self.until_micros).contains(&record.decided_at_micros)
            && self.after.as_ref().is_none_or(|(at, id)| {
                (record.decided_at_micros, record.decision_id.as_str()) > (*at, id.as_str())
            })
    }
}

/// A shipped segment of the decision log as a row of `decision_log_segments` holds it.
pub(crate) struct ShippedSegment<'a> {
    /// Its first decision's id, which makes shipping it again a no-op.
    pub first_decision_id: String,
    /// The instants of its first and last decisions (µs since the epoch).
    pub first_at: i64,
    pub last_at: i64,
    pub records: i64,
    /// Its intact blocks, as written.
    pub body: &'a [u8],
}

impl<'a> ShippedSegment<'a> {
    /// The row of a segment's `body` and its decisions; `None` when it holds none.
    fn of(body: &'a [u8], decided: &[Decided<'_>]) -> Option<ShippedSegment<'a>> {
        let first = decided.first()?;
        let instants = decided.iter().map(|decided| decided.decided_at_micros);
        Some(ShippedSegment {
            first_decision_id: first.decision_id.to_string(),
            first_at: instants.clone().min()?,
            last_at: instants.max()?,
            records: decided.len() as i64,
            body,
        })
    }
}

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
    NotFound(SubjectId),
    #[error("subject is deleted")]
    SubjectDeleted(SubjectId),
    #[error("the store is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("the store did not answer {operation} within {after:?}")]
    TimedOut {
        operation: &'static str,
        after: Duration,
    },
    /// The write group a write was committed in failed because the store is unavailable (each
    /// write of the group is told so, with the group's error).
    #[error("the store is unavailable: {0}")]
    GroupUnavailable(String),
    /// A write's caller gave up (its deadline passed) while its group was applied: the group is
    /// rolled back and applied again without it (never seen by a caller).
    #[error("the writer gave up before its write was committed")]
    Abandoned,
    /// A write whose commit was sent but never confirmed: it may or may not be applied.
    #[error("the store did not confirm the commit of {operation}: it may or may not be applied")]
    CommitUnknown {
        operation: &'static str,
        #[source]
        cause: Box<StoreError>,
    },
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    #[error("store schema migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the role connected may not change the schema: run `assent migrate` as the role that \
         owns it, and set run_migrations = false for this one"
    )]
    MigrationNotPermitted(#[source] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is newer than this binary: migration {version} is applied but \
         unknown here; run a newer assent (or restore the database of this version)"
    )]
    SchemaTooNew { version: i64 },
    #[error(
        "the database schema is older than this binary: migration {version} is not applied, and \
         run_migrations is false; run `assent migrate` as the role that owns the schema first"
    )]
    SchemaTooOld { version: i64 },
    #[error("cannot grant the server's privileges to role {role:?}: {reason}")]
    GrantRefused { role: String, reason: &'static str },
    #[error("cannot prepare {path} for the embedded store (owner-only: directory 0700, file 0600)")]
    DataDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy version {0} is stored already, with another text")]
    PolicyConflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The events written before the audit tree was kept have no tree nodes yet: the owner of
    /// the database builds them once (`assent migrate`).
    #[error(
        "the audit tree of the events written before it was kept is not built; run `assent \
         migrate` as the database's owner"
    )]
    TreeNotBuilt,
    /// Payloads are erased only of a deleted subject.
    #[error("subject is not deleted")]
    NotDeleted(SubjectId),
    #[error("stored data is invalid")]
    Replay(#[from] replay::ReplayError),
    #[error("rights request {0} not found")]
    RequestNotFound(String),
    #[error("{0}")]
    RightsStep(#[from] StepRefusal),
    #[error("the subject has no jurisdiction on record; give the request's jurisdiction")]
    NoJurisdiction,
    /// A rights write whose effect its caller may not have (see [`RightsEffects`]).
    #[error("the rights step would {effect} its subject")]
    EffectNotAllowed {
        /// `delete` or `restrict`.
        effect: &'static str,
    },
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

impl StoreError {
    /// Whether the store could not serve (down, unreachable, or too slow), rather than
    /// refusing or failing the operation.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::GroupUnavailable(_)
                | StoreError::TimedOut { .. }
                | StoreError::CommitUnknown { .. }
        )
    }

    /// A write to `subject_id` that [`change::plan_change`] refused.
    pub fn refused(refusal: change::Refusal, subject_id: &SubjectId) -> StoreError {
        match refusal {
            change::Refusal::NotFound => StoreError::NotFound(subject_id.clone()),
            change::Refusal::Deleted => StoreError::SubjectDeleted(subject_id.clone()),
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
    /// Opens the store with the default timeouts and brings its schema up to date.
    pub async fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        Store::open_with(location, StoreTimeouts::default(), Schema::Migrate).await
    }

    /// Opens the store, and migrates or checks its schema as `schema` says.
    pub async fn open_with(
        location: &StoreLocation,
        timeouts: StoreTimeouts,
        schema: Schema,
    ) -> Result<Store, StoreError> {
        let store = match location {
            StoreLocation::SqliteFile(path) => {
                Store::Sqlite(SqliteStore::open(path, timeouts, schema).await?)
            }
            StoreLocation::Postgres {
                url,
                max_connections,
            } => Store::Postgres(
                PostgresStore::open(url.expose(), *max_connections, timeouts, schema).await?,
            ),
        };
        // Filling the tree of earlier events updates them: the owner's work, like migrating. A
        // server that only checks the schema finds it built (or its writes say who must build it).
        let built = match schema {
            Schema::Migrate => store.build_tree().await?,
            Schema::Check => 0,
        };
        if built > 0 {
            tracing::info!(
                events = built,
                "built the audit tree of the events written before it"
            );
        }
        Ok(store)
    }

    /// The deadlines of its operations.
    pub fn timeouts(&self) -> StoreTimeouts {
        match self {
            Store::Sqlite(store) => store.timeouts,
            Store::Postgres(store) => store.timeouts,
        }
    }

    /// Applies one write and its audit event in one transaction. A choice given without a
    /// notice version is recorded under the policy version of the write's context.
    pub async fn write(&self, request: &WriteRequest) -> Result<WriteOutcome, StoreError> {
        let filled;
        let request = match &request.command {
            Command::SetChoice {
                purpose,
                choice,
                consent,
            } if consent.notice_version.is_empty() => {
                filled = WriteRequest {
                    command: Command::SetChoice {
                        purpose: *purpose,
                        choice: *choice,
                        consent: ConsentMeta {
                            notice_version: request.context.policy_version.clone(),
                            ..consent.clone()
                        },
                    },
                    ..request.clone()
                };
                &filled
            }
            _ => request,
        };
        self.write_grouped(request.clone()).await
    }

    /// The writes waiting to be committed together ([`group`]).
    fn write_queue(&self) -> std::sync::Arc<group::WriteQueue> {
        match self {
            Store::Sqlite(store) => store.writes.clone(),
            Store::Postgres(store) => store.writes.clone(),
        }
    }

    /// The stored choices whose expiry is at or before `now_micros`, the earliest first, at
    /// most `limit`.
    pub async fn expired_choices(
        &self,
        now_micros: i64,
        limit: u32,
    ) -> Result<Vec<ExpiredChoice>, StoreError> {
        self.run("expired_choices", Access::Connection, async |connection| {
            rows::expired_choices_in(connection, now_micros, limit).await
        })
        .await
    }

    /// The expiry sweep: records, through the write path, a `consent_expired` event for every
    /// stored choice whose expiry is at or before `now_micros` (which removes the choice), one
    /// write each. A choice renewed meanwhile, or whose expiry another replica recorded first,
    /// is left as it is (`Command::ExpireChoice` applies only to the expiry it names). Returns
    /// the expiries recorded, with the revision of each.
    pub async fn expire_choices(
        &self,
        now_micros: i64,
        context: &WriteContext,
    ) -> Result<Vec<(ExpiredChoice, Revision)>, StoreError> {
        const PAGE: u32 = 500;
        let mut recorded = Vec::new();
        loop {
            let expired = self.expired_choices(now_micros, PAGE).await?;
            let mut changed_any = false;
            for choice in &expired {
                let request = WriteRequest {
                    subject_id: choice.subject_id.clone(),
                    command: Command::ExpireChoice {
                        purpose: choice.purpose,
                        expires_at_micros: choice.expires_at_micros,
                    },
                    context: context.clone(),
                };
                let outcome = self.write(&request).await?;
                if outcome.changed {
                    changed_any = true;
                    recorded.push((choice.clone(), outcome.revision));
                }
            }
            // A full page with nothing left to record would only be read again.
            if expired.len() < PAGE as usize || !changed_any {
                return Ok(recorded);
            }
        }
    }

    /// A page of the subject's consent history, oldest first: every choice given, cleared,
    /// expired or erased, read from its audit events (kept after the choice itself is gone),
    /// from `from` on, at most `limit` records. With `as_of`, only the records committed by
    /// then (events in revision order, up to the first committed later, as a check `as_of`
    /// reads them).
    pub async fn consent_history(
        &self,
        subject_id: &SubjectId,
        as_of: Option<i64>,
        from: HistoryCursor,
        limit: u32,
    ) -> Result<HistoryPage, StoreError> {
        const EVENTS_PAGE: u32 = 1_000;
        let wanted = limit as usize + 1;
        let mut records: Vec<(HistoryCursor, ConsentRecord)> = Vec::new();
        let mut after_sequence = from.sequence.saturating_sub(1);
        'pages: loop {
            let events = self
                .events(&EventQuery {
                    subject_id: Some(subject_id.clone()),
                    after_sequence,
                    limit: EVENTS_PAGE,
                })
                .await?;
            let full_page = events.len() == EVENTS_PAGE as usize;
            for event in &events {
                if as_of.is_some_and(|as_of| event.at_micros > as_of) {
                    break 'pages;
                }
                let event_records = history::consent_records(event)?;
                for (index, record) in event_records.into_iter().enumerate() {
                    let position = HistoryCursor {
                        sequence: event.sequence,
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                    };
                    if position < from {
                        continue;
                    }
                    records.push((position, record));
                    if records.len() == wanted {
                        break 'pages;
                    }
                }
                after_sequence = event.sequence;
            }
            if !full_page {
                break;
            }
        }
        let next = (records.len() == wanted).then(|| records[limit as usize].0);
        records.truncate(limit as usize);
        Ok(HistoryPage {
            records: records.into_iter().map(|(_, record)| record).collect(),
            next,
        })
    }

    /// Stores a policy version and its audit event in one transaction; unchanged when this
    /// exact version is stored, [`StoreError::PolicyConflict`] when another text is.
    pub async fn apply_policy(
        &self,
        policy: &NewPolicy,
        context: &WriteContext,
    ) -> Result<WriteOutcome, StoreError> {
        self.run("apply_policy", Access::Write, async |connection| {
            rows::apply_policy_in(connection, policy, context).await
        })
        .await
    }

    /// Files a rights request: the request, its audit event and any effect it has at once on
    /// the subject (with their own events), in one transaction. An effect beyond `effects`
    /// refuses the whole write.
    pub async fn file_rights_request(
        &self,
        request: &NewRightsRequest,
        context: &WriteContext,
        effects: RightsEffects,
    ) -> Result<RightsOutcome, StoreError> {
        self.run("file_rights_request", Access::Write, async |connection| {
            rows::file_rights_in(connection, request, context, effects).await
        })
        .await
    }

    /// Takes a step of a rights request, with its audit event and any effect it makes due, in
    /// one transaction. An effect beyond `effects` refuses the whole write.
    pub async fn step_rights_request(
        &self,
        request_id: &str,
        step: &RightsStep,
        context: &WriteContext,
        effects: RightsEffects,
    ) -> Result<RightsOutcome, StoreError> {
        self.run("step_rights_request", Access::Write, async |connection| {
            rows::step_rights_in(connection, request_id, step, context, effects).await
        })
        .await
    }

    /// One rights request, or `None`.
    pub async fn rights_request(
        &self,
        request_id: &str,
    ) -> Result<Option<StoredRightsRequest>, StoreError> {
        self.run("rights_request", Access::Connection, async |connection| {
            rows::load_rights_request(connection, request_id).await
        })
        .await
    }

    /// A page of rights requests.
    pub async fn rights_requests(
        &self,
        query: &RightsQuery,
    ) -> Result<Vec<StoredRightsRequest>, StoreError> {
        self.run("rights_requests", Access::Connection, async |connection| {
            rows::rights_requests_in(connection, query).await
        })
        .await
    }

    /// Every stored policy version, by effective date.
    pub async fn policy_versions(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        self.run("policy_versions", Access::Connection, async |connection| {
            rows::policy_versions_in(connection).await
        })
        .await
    }

    /// The state a decision about `subject_id` (and optionally one conversation) needs; a
    /// Check's read, within the read timeout.
    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
    ) -> Result<DecisionState, StoreError> {
        let deadline = self.timeouts().read;
        self.run_within(
            "decision_state",
            Access::Read,
            deadline,
            async |connection| {
                rows::decision_state_in(connection, subject_id, conversation_id).await
            },
        )
        .await
    }

    /// What the cache keeps of a subject, read in one snapshot (on PostgreSQL, one statement);
    /// a Check's read, within the read timeout.
    pub async fn snapshot(
        &self,
        subject_id: &SubjectId,
        max_conversations: usize,
    ) -> Result<SubjectSnapshot, StoreError> {
        let access = match self {
            Store::Sqlite(_) => Access::Read,
            Store::Postgres(_) => Access::Connection,
        };
        let deadline = self.timeouts().read;
        self.run_within(
            "snapshot",
            access,
            deadline,
            async |connection| match connection.as_postgres() {
                Some(postgres) => {
                    postgres::snapshot_in_one_statement(postgres, subject_id, max_conversations)
                        .await
                        .map(|read| read.snapshot)
                }
                None => rows::snapshot_in(connection, subject_id, max_conversations).await,
            },
        )
        .await
    }

    /// The changes committed after revision `after`, oldest first, at most `limit`.
    pub async fn changes_since(
        &self,
        after: Revision,
        limit: u32,
    ) -> Result<Vec<ChangeNotice>, StoreError> {
        let deadline = self.timeouts().write;
        self.run_within(
            "changes_since",
            Access::Connection,
            deadline,
            async |connection| rows::changes_since_in(connection, after.sequence(), limit).await,
        )
        .await
    }

    /// Every subject changed at or after `since_micros`, with its latest revision.
    pub async fn subjects_changed_since(
        &self,
        since_micros: i64,
    ) -> Result<Vec<ChangeNotice>, StoreError> {
        self.run(
            "subjects_changed_since",
            Access::Connection,
            async |connection| rows::subjects_changed_since_in(connection, since_micros).await,
        )
        .await
    }

    /// Subject ids after `after`, in id order, at most `limit`.
    pub async fn subject_ids(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        self.run("subject_ids", Access::Connection, async |connection| {
            rows::subject_ids_in(connection, after, limit).await
        })
        .await
    }

    /// The stored subjects grouped by their decision state at `now_micros`, the largest
    /// groups first, at most `limit` groups: one statement, whatever the number of subjects.
    /// `with_first_subject`: each group names its first subject.
    pub async fn state_groups(
        &self,
        now_micros: i64,
        limit: u32,
        with_first_subject: bool,
    ) -> Result<Vec<StateGroup>, StoreError> {
        self.run("state_groups", Access::Read, async |connection| {
            rows::state_groups_in(connection, now_micros, limit, with_first_subject).await
        })
        .await
    }

    /// The ids of subjects whose decision state at `now_micros` is `state`, in id order, at
    /// most `limit`.
    pub async fn subjects_in_state(
        &self,
        state: &SubjectState,
        now_micros: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.run("subjects_in_state", Access::Read, async |connection| {
            rows::subjects_in_state_in(connection, state, now_micros, limit).await
        })
        .await
    }

    /// How many subjects the store holds (deleted ones included).
    pub async fn count_subjects(&self) -> Result<u64, StoreError> {
        self.run("count_subjects", Access::Connection, async |connection| {
            rows::count_subjects(connection).await
        })
        .await
    }

    /// The subject with its choices, or `None` if never seen.
    pub async fn subject(&self, subject_id: &SubjectId) -> Result<Option<SubjectView>, StoreError> {
        self.run("subject", Access::Read, async |connection| {
            rows::subject_in(connection, subject_id).await
        })
        .await
    }

    /// What a decision about `subject_id` needed as of `at_micros`, rebuilt from the subject's
    /// audit events committed by then (in revision order, up to the first committed later),
    /// without the choices expired by then.
    /// The revision is that of the last event applied (zero when there was none).
    pub async fn state_as_of(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        at_micros: i64,
    ) -> Result<DecisionState, StoreError> {
        let states = self
            .states_as_of(subject_id, conversation_id, &[at_micros])
            .await?;
        Ok(states[0])
    }

    /// [`Store::state_as_of`] at each of `instants` (ascending), in one pass over the subject's
    /// audit events: one state per instant, in their order.
    pub async fn states_as_of(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        instants: &[i64],
    ) -> Result<Vec<DecisionState>, StoreError> {
        let Some(&last) = instants.last() else {
            return Ok(Vec::new());
        };
        // As the state counted at each instant: the choices expired by then no longer count,
        // whether or not their expiry was recorded by then.
        let state_at =
            |replayed: &replay::Replayed, at_micros: i64, revision: Revision| DecisionState {
                conversation: conversation_id.and_then(|id| replayed.conversation(id.as_str())),
                subject: replayed
                    .subject
                    .as_ref()
                    .map(|record| record.state.at(at_micros)),
                revision,
            };
        let mut replayed = replay::Replayed::default();
        let mut states = Vec::with_capacity(instants.len());
        let mut applied = Revision::ZERO;
        let revision = self
            .replay_until(subject_id, last, |event| {
                while let Some(&at_micros) = instants.get(states.len())
                    && event.at_micros > at_micros
                {
                    states.push(state_at(&replayed, at_micros, applied));
                }
                replayed.apply(event).map_err(StoreError::from)?;
                applied = Revision::new(event.sequence);
                Ok(())
            })
            .await?;
        while let Some(&at_micros) = instants.get(states.len()) {
            states.push(state_at(&replayed, at_micros, revision));
        }
        Ok(states)
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
        self.run("retention_subject", Access::Read, async |connection| {
            rows::retention_subject_in(connection, subject_id.as_str()).await
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
        let mut chosen_by: [String; PURPOSE_COUNT] = Default::default();
        let revision = self
            .replay_until(subject_id, at_micros, |event| {
                let before = replayed.subject.as_ref().map(|record| record.state);
                replayed.apply(event)?;
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
                        chosen_by[purpose.index()] = event.caller.clone();
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
                    notice_version: record.provenance(purpose).notice_version.clone(),
                    method: record.provenance(purpose).method,
                    caller: chosen_by[purpose.index()].clone(),
                    expires_at_micros: state.expiries.get(purpose),
                })
                .collect(),
            revision,
        }))
    }

    /// Subjects whose state may make data due under the retention schedule (see
    /// [`DueCandidates`]), one page in one snapshot, with what the schedule reads of each.
    pub async fn due_candidates(&self, query: &DueCandidates) -> Result<CandidatePage, StoreError> {
        self.run("due_candidates", Access::Read, async |connection| {
            rows::due_candidates_in(connection, query).await
        })
        .await
    }

    /// Audit events in sequence order.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        self.run("events", Access::Connection, async |connection| {
            rows::events_in(connection, query).await
        })
        .await
    }

    /// The events (of `subject_id`, or all) with a sequence below `before_sequence`, newest
    /// first, at most `limit`.
    pub async fn events_before(
        &self,
        subject_id: Option<&SubjectId>,
        before_sequence: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.run("events", Access::Connection, async |connection| {
            rows::events_before_in(
                connection,
                subject_id.map(SubjectId::as_str),
                before_sequence,
                limit,
            )
            .await
        })
        .await
    }

    /// The sequence of the audit event with this id, if there is one.
    pub async fn event_sequence(&self, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.run("event_sequence", Access::Connection, async |connection| {
            let found: Option<(i64,)> = connection
                .query("SELECT sequence FROM audit_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional()
                .await?
                .map(|row| row.decode())
                .transpose()?;
            Ok(found.map(|(sequence,)| rows::from_i64(sequence)))
        })
        .await
    }

    /// Recomputes the whole audit chain.
    pub async fn verify_chain(&self) -> Result<LogReport, StoreError> {
        self.run("verify_chain", Access::Read, async |connection| {
            rows::verify_chain_in(connection).await
        })
        .await
    }

    /// Fills, once, the tree nodes of the events written before the tree was kept (see
    /// `migrations/*/0008_audit_tree.sql`); how many. Needs UPDATE on `audit_events`, which
    /// only the database's owner has where roles are split.
    pub async fn build_tree(&self) -> Result<u64, StoreError> {
        // One transaction over every earlier event: bounded by the log's size, not a request.
        const BUILD_DEADLINE: Duration = Duration::from_secs(3_600);
        self.run_within(
            "build_tree",
            Access::Write,
            BUILD_DEADLINE,
            async |connection| rows::build_tree_in(connection).await,
        )
        .await
    }

    /// Erases the payloads (details) of a deleted subject's events and records the erasure as
    /// a `payload_erased` event; how many were erased and the event's revision (none when
    /// every payload was erased already). The events and their leaves stay.
    pub async fn erase_payloads(
        &self,
        subject_id: &SubjectId,
        context: &WriteContext,
    ) -> Result<(u64, Option<Revision>), StoreError> {
        self.run_within(
            "erase_payloads",
            Access::Write,
            StoreTimeouts::OTHER,
            async |connection| rows::erase_payloads_in(connection, subject_id, context).await,
        )
        .await
    }

    /// The stored hashes of perfect subtrees of the audit tree, in the order asked.
    pub async fn tree_nodes(
        &self,
        nodes: &[merkle::NodeId],
    ) -> Result<Vec<merkle::Hash>, StoreError> {
        // A stored node never changes once its event is committed, and a proof asks only for
        // nodes of committed events: no snapshot (a read transaction's two round trips) needed.
        self.run("tree_nodes", Access::Connection, async |connection| {
            rows::tree_nodes_in(connection, nodes).await
        })
        .await
    }

    /// The hashes (MTH) of leaf ranges, each from the stored nodes that make it up: what a
    /// proof is made of, read in one query.
    pub async fn range_hashes(
        &self,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<merkle::Hash>, StoreError> {
        let nodes: Vec<Vec<merkle::NodeId>> = ranges
            .iter()
            .map(|&(start, end)| merkle::range_nodes(start, end))
            .collect();
        let all: Vec<merkle::NodeId> = nodes.iter().flatten().copied().collect();
        let hashes = self.tree_nodes(&all).await?;
        let mut hashes = hashes.as_slice();
        Ok(nodes
            .iter()
            .map(|range| {
                let (these, rest) = hashes.split_at(range.len());
                hashes = rest;
                merkle::range_hash(these)
            })
            .collect())
    }

    /// The audit path of the event at `leaf_index` in the tree of `size` events, from stored
    /// nodes (RFC 9162 2.1.3). The caller checks `leaf_index < size <= ` the head.
    pub async fn inclusion_proof(
        &self,
        leaf_index: u64,
        size: u64,
    ) -> Result<Vec<merkle::Hash>, StoreError> {
        self.range_hashes(&merkle::inclusion_ranges(leaf_index, size))
            .await
    }

    /// The proof that the tree of `old_size` events is a prefix of that of `new_size`, from
    /// stored nodes (RFC 9162 2.1.4). The caller checks `0 < old_size <= new_size <=` the head.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<merkle::Hash>, StoreError> {
        self.range_hashes(&merkle::consistency_ranges(old_size, new_size))
            .await
    }

    /// Compares every subject's rows in the state tables with the rows its audit events make
    /// (see [`state_check`]), a page of subjects at a time, each page in one read transaction.
    /// Lists the first `listed` mismatches in subject id order, and hands every one, listed or
    /// not, to `each` as it is found. Never changes a row.
    pub async fn verify_state(
        &self,
        listed: usize,
        each: impl FnMut(&StateMismatch),
    ) -> Result<StateReport, StoreError> {
        self.verify_state_paged(listed, state_check::Paging::default(), each)
            .await
    }

    /// [`Store::verify_state`] in pages of the given sizes.
    async fn verify_state_paged(
        &self,
        listed: usize,
        paging: state_check::Paging,
        mut each: impl FnMut(&StateMismatch),
    ) -> Result<StateReport, StoreError> {
        let mut report = StateReport::default();
        let mut after = String::new();
        loop {
            let page = self
                .run("verify_state", Access::Read, async |connection| {
                    state_check::page_in(connection, &after, paging).await
                })
                .await?;
            for (subject_id, verdict) in page.verdicts {
                match verdict {
                    state_check::Verdict::Matches => report.subjects_checked += 1,
                    state_check::Verdict::Unverifiable => report.unverifiable += 1,
                    state_check::Verdict::Differs(differences) => {
                        report.subjects_checked += 1;
                        report.mismatched += 1;
                        let mismatch = StateMismatch {
                            subject_id,
                            differences,
                        };
                        each(&mismatch);
                        if report.mismatches.len() < listed {
                            report.mismatches.push(mismatch);
                        } else {
                            report.truncated = true;
                        }
                    }
                }
            }
            match page.last {
                Some(last) if page.full => after = last,
                _ => return Ok(report),
            }
        }
    }

    /// The latest committed revision.
    pub async fn head_revision(&self) -> Result<Revision, StoreError> {
        let deadline = self.timeouts().write;
        self.run_within(
            "head_revision",
            Access::Connection,
            deadline,
            async |connection| rows::head_revision(connection).await,
        )
        .await
    }

    /// The oldest revision the change log can be read from (everything after it is kept) and
    /// the latest committed revision.
    pub async fn change_log_bounds(&self) -> Result<(Revision, Revision), StoreError> {
        let deadline = self.timeouts().write;
        self.run_within(
            "change_log_bounds",
            Access::Connection,
            deadline,
            async |connection| rows::change_log_bounds(connection).await,
        )
        .await
    }

    /// Records a batch of decisions in the decision log. `durable`: the batch carries a
    /// record someone waits on, and must be on disk when this returns.
    pub async fn insert_decisions(
        &self,
        records: &[DecisionRecord],
        durable: bool,
    ) -> Result<(), StoreError> {
        let insert = async {
            match self {
                Store::Sqlite(store) => store.insert_decisions(records).await,
                Store::Postgres(store) => store.insert_decisions(records, durable).await,
            }
        };
        self.observed_within("insert_decisions", self.timeouts().write, insert)
            .await
    }

    /// Runs one store operation (observed as `operation`) for at most `deadline`.
    async fn observed_within<T>(
        &self,
        operation: &'static str,
        deadline: Duration,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        observed(self, operation, async {
            tokio::time::timeout(deadline, work)
                .await
                .unwrap_or(Err(StoreError::TimedOut {
                    operation,
                    after: deadline,
                }))
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

    /// Ships one segment of the decision log (its intact blocks, `body`, and its decisions,
    /// `decided`) as one row of `decision_log_segments`, ignored if it is there already.
    pub async fn ship_decision_segment(
        &self,
        body: &[u8],
        decided: &[Decided<'_>],
    ) -> Result<(), StoreError> {
        let Some(segment) = ShippedSegment::of(body, decided) else {
            return Ok(());
        };
        let ship = async {
            match self {
                Store::Postgres(store) => store.insert_decision_segment(&segment, decided).await,
                Store::Sqlite(store) => store.insert_decision_segment(&segment).await,
            }
        };
        // Off the request path, and up to 2 MiB: more than a write's time.
        let deadline = self.timeouts().write.max(SHIP_DEADLINE);
        self.observed_within("ship_decision_segment", deadline, ship)
            .await
    }

    /// Whether the decision log holds a segment whose first decision is `first` (a segment a
    /// crash left after it was shipped).
    pub async fn has_decision_segment(&self, first: &Decided<'_>) -> Result<bool, StoreError> {
        self.run(
            "has_decision_segment",
            Access::Connection,
            async |connection| rows::has_decision_segment(connection, first).await,
        )
        .await
    }

    /// The recorded decisions `query` asks for, in order: from the rows of `decision_log` and
    /// from the shipped segments.
    pub async fn decisions(
        &self,
        query: &DecisionQuery,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        let mut found = self
            .run("decisions", Access::Connection, async |connection| {
                let mut found = rows::decisions(connection, query).await?;
                found.extend(rows::segment_decisions(connection, query).await?);
                Ok(found)
            })
            .await?;
        found.sort_by(|a, b| {
            (a.decided_at_micros, &a.decision_id).cmp(&(b.decided_at_micros, &b.decision_id))
        });
        found.truncate(query.limit as usize);
        Ok(found)
    }

    /// The number of recorded decisions.
    pub async fn count_decisions(&self) -> Result<u64, StoreError> {
        self.run("count_decisions", Access::Connection, async |connection| {
            rows::count_decisions(connection).await
        })
        .await
    }

    /// The latest migration applied to the store.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run("schema_version", Access::Connection, async |connection| {
            rows::schema_version(connection).await
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

    /// Waits for open connections to finish and closes them, for at most the write deadline:
    /// one still out then (waiting on a database that stopped answering, say) is left behind,
    /// so that a process can exit.
    pub async fn close(&self) {
        let closing = async {
            match self {
                Store::Sqlite(store) => store.close().await,
                Store::Postgres(store) => store.close().await,
            }
        };
        if tokio::time::timeout(self.timeouts().write, closing)
            .await
            .is_err()
        {
            tracing::warn!("closed the store with connections still waiting on it");
        }
    }

    /// Runs `work`, the shared SQL of one operation, on what it needs of the backend, commits,
    /// and observes it, within the deadline of its kind: a write's, or that of every other
    /// operation ([`StoreTimeouts::OTHER`]).
    async fn run<T>(
        &self,
        operation: &'static str,
        access: Access,
        work: impl AsyncFnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = match access {
            Access::Write => self.timeouts().write,
            Access::Read | Access::Connection => StoreTimeouts::OTHER,
        };
        self.run_within(operation, access, deadline, work).await
    }

    /// [`Store::run`] within `deadline`. Past it the operation is dropped where it stands: its
    /// connection is closed rather than returned to the pool (see `sql::Lease`), which rolls
    /// back a transaction not committed. A write whose commit was sent and not confirmed in
    /// time (or lost its connection) fails [`StoreError::CommitUnknown`]: it may be applied.
    async fn run_within<T>(
        &self,
        operation: &'static str,
        access: Access,
        deadline: Duration,
        work: impl AsyncFnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let committing = AtomicBool::new(false);
        let attempt = async {
            let mut connection = match self {
                Store::Sqlite(store) => store.connection(access).await?,
                Store::Postgres(store) => store.connection(access).await?,
            };
            match work(&mut connection).await {
                Ok(output) => {
                    connection.announce_appended().await?;
                    committing.store(matches!(access, Access::Write), Ordering::Release);
                    connection.commit().await?;
                    Ok(output)
                }
                Err(error) => {
                    // A refused write is an answer, not a broken connection: it goes back to
                    // the pool once rolled back (a failed rollback closes it).
                    let _ = connection.rollback().await;
                    Err(error)
                }
            }
        };
        observed(self, operation, async {
            let result = tokio::time::timeout(deadline, attempt).await.unwrap_or(Err(
                StoreError::TimedOut {
                    operation,
                    after: deadline,
                },
            ));
            match result {
                Err(error) if error.is_unavailable() && committing.load(Ordering::Acquire) => {
                    Err(StoreError::CommitUnknown {
                        operation,
                        cause: Box::new(error),
                    })
                }
                result => result,
            }
        })
        .await
    }
}

/// What an operation needs of the database.
#[derive(Clone, Copy, Debug)]
enum Access {
    /// A pooled connection: one statement, or several that need no common snapshot.
    Connection,
    /// A read transaction: one snapshot (a decision never sees half a write).
    Read,
    /// A write transaction, holding the chain head from its start.
    Write,
}

/// Runs one store operation in a span of its own (when the call is traced) and times it. The
/// span is a database client span of the OpenTelemetry semantic conventions, with their current
/// names (`db.system.name`, `db.operation.name`; `db.system` and `db.operation` are deprecated);
/// the operation is the store's, which may run several statements.
async fn observed<T>(
    store: &Store,
    operation: &'static str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = crate::child_span!(
        "store.query",
        otel.kind = "client",
        db.system.name = store.system(),
        db.operation.name = operation,
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
    use sqlx::migrate::MigrateError;
    match migrator.run(pool).await {
        Err(MigrateError::VersionMissing(version)) => Err(StoreError::SchemaTooNew { version }),
        Err(error) if is_permission_denied(&error) => Err(StoreError::MigrationNotPermitted(error)),
        other => Ok(other?),
    }
}

/// What a verification of the whole audit log found: the chain (links, hashes, head), each
/// payload against its commitment, each leaf and stored tree node recomputed; and the root of
/// the tree over the events read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReport {
    pub chain: ChainReport,
    pub tree_size: u64,
    pub root: crate::audit::merkle::Hash,
}

/// The table in which the migrator records what it applied.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Opens the store with `schema`: migrates, or checks without changing anything.
async fn prepare_schema<DB>(
    migrator: &sqlx::migrate::Migrator,
    pool: &sqlx::Pool<DB>,
    schema: Schema,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    match schema {
        Schema::Migrate => migrate(migrator, pool).await,
        Schema::Check => check_schema(migrator, pool).await,
    }
}

/// Refuses a database whose applied migrations are not exactly the ones `migrator` knows, with
/// the same checksums, reading only the migrations table: what a role that may not change the
/// schema can do instead of migrating.
async fn check_schema<DB>(
    migrator: &sqlx::migrate::Migrator,
    pool: &sqlx::Pool<DB>,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    use sqlx::migrate::{Migrate as _, MigrateError};

    let first_known = || StoreError::SchemaTooOld {
        version: migrator
            .iter()
            .next()
            .map_or(0, |migration| migration.version),
    };
    let mut connection = pool.acquire().await?;
    let dirty = match connection.dirty_version(MIGRATIONS_TABLE).await {
        Err(MigrateError::Execute(error)) if is_undefined_table(&error) => {
            return Err(first_known());
        }
        other => other?,
    };
    if let Some(version) = dirty {
        return Err(MigrateError::Dirty(version).into());
    }
    let applied = connection.list_applied_migrations(MIGRATIONS_TABLE).await?;
    for migration in &applied {
        if !migrator.version_exists(migration.version) {
            return Err(StoreError::SchemaTooNew {
                version: migration.version,
            });
        }
    }
    for known in migrator.iter() {
        match applied
            .iter()
            .find(|migration| migration.version == known.version)
        {
            None => {
                return Err(StoreError::SchemaTooOld {
                    version: known.version,
                });
            }
            Some(migration) if migration.checksum != known.checksum => {
                return Err(MigrateError::VersionMismatch(known.version).into());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether a migration failed for want of a privilege (PostgreSQL's
/// `insufficient_privilege`): a role that does not own the schema.
fn is_permission_denied(error: &sqlx::migrate::MigrateError) -> bool {
    match error {
        sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(database))
        | sqlx::migrate::MigrateError::ExecuteMigration(sqlx::Error::Database(database), _) => {
            database.code().as_deref() == Some("42501")
        }
        _ => false,
    }
}

/// Whether `error` says a table does not exist (PostgreSQL's `undefined_table`, SQLite's "no
/// such table"): the migrations table of a database never migrated.
fn is_undefined_table(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => {
            database.code().as_deref() == Some("42P01")
                || database.message().starts_with("no such table")
        }
        _ => false,
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
        let change = ChangeNotice {
            revision: Revision::new(17),
            changed: Changed::Subject(SubjectId::parse("user@example.com").unwrap()),
            at_micros: 1_700_000_000_000_000,
        };
        assert_eq!(
            change.announcement(),
            "17@1700000000000000 user@example.com"
        );
        assert_eq!(
            ChangeNotice::parse_announcement(&change.announcement()),
            Some(change)
        );
        assert_eq!(
            ChangeNotice::parse_announcement("17 u"),
            Some(ChangeNotice {
                revision: Revision::new(17),
                changed: Changed::Subject(SubjectId::parse("u").unwrap()),
                at_micros: 0,
            })
        );
        let policy = ChangeNotice::parse_announcement("18@5 ").unwrap();
        assert_eq!(policy.changed, Changed::PolicyVersion);
        assert_eq!(policy.announcement(), "18@5 ");
        for invalid in ["x u", "17@x u", "17", "", "17 user x"] {
            assert_eq!(ChangeNotice::parse_announcement(invalid), None, "{invalid}");
        }
    }
}
