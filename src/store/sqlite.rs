//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection and take the write lock at `BEGIN
//! IMMEDIATE`, so writers queue in the pool instead of retrying on a busy database (and writers
//! in other processes wait on the busy timeout); reads use a separate read-only pool and run in
//! read transactions, so a decision never sees half a write. `synchronous = FULL` makes every
//! acknowledged write durable.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    CandidatePage, Change, DecisionState, DueCandidates, EventQuery, ExpiredChoice, NewPolicy,
    NewRightsRequest, PruneReport, RetentionSubject, RightsOutcome, RightsQuery, RightsStep,
    StoreError, StoredPolicy, StoredRightsRequest, SubjectSnapshot, SubjectView, WriteContext,
    WriteOutcome, WriteRequest,
};
use crate::audit::DecisionRecord;
use crate::audit::{AuditEvent, ChainReport};
use crate::domain::{ConversationId, SubjectId};
use crate::revision::Revision;

mod rows {
    crate::store::rows::sql_rows!(
        sqlx::SqliteConnection,
        sqlx::sqlite::SqliteRow,
        // The write lock is already held (BEGIN IMMEDIATE); SQLite has no FOR UPDATE.
        head_query = "SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0"
    );
}

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const READER_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::DataDirectory {
                path: parent.to_owned(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        super::migrate(&MIGRATOR, &writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    pub async fn write(&self, request: &WriteRequest) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = rows::write_in(&mut tx, request).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn apply_policy(
        &self,
        policy: &NewPolicy,
        context: &WriteContext,
    ) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = rows::apply_policy_in(&mut tx, policy, context).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn file_rights_request(
        &self,
        request: &NewRightsRequest,
        context: &WriteContext,
    ) -> Result<RightsOutcome, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = rows::file_rights_in(&mut tx, request, context).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn step_rights_request(
        &self,
        request_id: &str,
        step: &RightsStep,
        context: &WriteContext,
    ) -> Result<RightsOutcome, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = rows::step_rights_in(&mut tx, request_id, step, context).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn rights_request(
        &self,
        request_id: &str,
    ) -> Result<Option<StoredRightsRequest>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::load_rights_request(&mut connection, request_id).await
    }

    pub async fn rights_requests(
        &self,
        query: &RightsQuery,
    ) -> Result<Vec<StoredRightsRequest>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::rights_requests_in(&mut connection, query).await
    }

    pub async fn policy_versions(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::policy_versions_in(&mut connection).await
    }

    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
    ) -> Result<DecisionState, StoreError> {
        let mut tx = self.reader.begin().await?;
        let state = rows::decision_state_in(&mut tx, subject_id, conversation_id).await?;
        tx.commit().await?;
        Ok(state)
    }

    pub async fn subject(&self, subject_id: &SubjectId) -> Result<Option<SubjectView>, StoreError> {
        let mut tx = self.reader.begin().await?;
        let Some((record, revision)) = rows::load_subject(&mut tx, subject_id.as_str()).await?
        else {
            return Ok(None);
        };
        let choices = rows::load_choices(&mut tx, subject_id.as_str()).await?;
        tx.commit().await?;
        Ok(Some(SubjectView {
            record,
            choices,
            revision,
        }))
    }

    pub async fn retention_subject(
        &self,
        subject_id: &SubjectId,
    ) -> Result<Option<RetentionSubject>, StoreError> {
        let mut tx = self.reader.begin().await?;
        let subject = rows::retention_subject_in(&mut tx, subject_id.as_str()).await?;
        tx.commit().await?;
        Ok(subject)
    }

    pub async fn due_candidates(&self, query: &DueCandidates) -> Result<CandidatePage, StoreError> {
        let mut tx = self.reader.begin().await?;
        let page = rows::due_candidates_in(&mut tx, query).await?;
        tx.commit().await?;
        Ok(page)
    }

    pub async fn snapshot(
        &self,
        subject_id: &SubjectId,
        max_conversations: usize,
    ) -> Result<SubjectSnapshot, StoreError> {
        let mut tx = self.reader.begin().await?;
        let snapshot = rows::snapshot_in(&mut tx, subject_id, max_conversations).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    pub async fn changes_since(
        &self,
        after: Revision,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::changes_since_in(&mut connection, after.sequence(), limit).await
    }

    pub async fn subjects_changed_since(
        &self,
        since_micros: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::subjects_changed_since_in(&mut connection, since_micros).await
    }

    pub async fn expired_choices(
        &self,
        now_micros: i64,
        limit: u32,
    ) -> Result<Vec<ExpiredChoice>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::expired_choices_in(&mut connection, now_micros, limit).await
    }

    pub async fn subject_ids(&self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::subject_ids_in(&mut connection, after, limit).await
    }

    pub async fn count_subjects(&self) -> Result<u64, StoreError> {
        let mut connection = self.reader.acquire().await?;
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM subjects")
            .fetch_one(&mut *connection)
            .await?;
        Ok(count as u64)
    }

    pub async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut connection = self.reader.acquire().await?;
        rows::events_in(&mut connection, query).await
    }

    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let mut tx = self.reader.begin().await?;
        let report = rows::verify_chain_in(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    pub async fn head_revision(&self) -> Result<Revision, StoreError> {
        let mut connection = self.reader.acquire().await?;
        Ok(Revision::new(rows::latest_sequence(&mut connection).await?))
    }

    pub async fn change_log_bounds(&self) -> Result<(Revision, Revision), StoreError> {
        let mut connection = self.reader.acquire().await?;
        let (first, head) = rows::change_log_bounds(&mut connection).await?;
        Ok((Revision::new(first), Revision::new(head)))
    }

    /// Inserts decision records, a few hundred rows per statement, in one transaction.
    pub async fn insert_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
        // 15 parameters a row; SQLite takes up to 32,766 parameters per statement.
        const ROWS_PER_STATEMENT: usize = 500;
        let mut tx = self.writer.begin().await?;
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "INSERT INTO decision_log ({}) ",
                super::DECISION_LOG_COLUMNS
            ));
            insert.push_values(chunk, |mut row, record| {
                row.push_bind(record.decided_at_micros)
                    .push_bind(record.decision_id.clone())
                    .push_bind(record.subject_id.clone())
                    .push_bind(record.purpose.as_str())
                    .push_bind(record.conversation_id.clone())
                    .push_bind(record.source.as_str())
                    .push_bind(record.consistency)
                    .push_bind(record.decision.as_str())
                    .push_bind(record.reason.as_str())
                    .push_bind(record.rule)
                    .push_bind(record.policy_version)
                    .push_bind(record.revision.map(|revision| revision as i64))
                    .push_bind(record.degraded)
                    .push_bind(record.caller.clone())
                    .push_bind(record.trace_id.clone());
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the decisions made before `cutoff_micros` in one statement (SQLite has no
    /// partitions to drop).
    pub async fn prune_decision_log(&self, cutoff_micros: i64) -> Result<PruneReport, StoreError> {
        let deleted = sqlx::query("DELETE FROM decision_log WHERE decided_at < $1")
            .bind(cutoff_micros)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(PruneReport {
            partitions_dropped: Vec::new(),
            rows_deleted: deleted,
        })
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let (version,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.reader)
                .await?;
        Ok(version)
    }

    /// The number of recorded decisions (for tests and operators).
    pub async fn count_decisions(&self) -> Result<u64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM decision_log")
            .fetch_one(&self.reader)
            .await?;
        Ok(count as u64)
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
