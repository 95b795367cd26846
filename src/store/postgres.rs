//! The production store: PostgreSQL.
//!
//! Every write transaction first locks the chain head row (`SELECT ... FOR UPDATE`), which puts
//! all writers — from every server process sharing the database — into one line: no lost
//! update, no fork of the audit chain, revisions in commit order. Reads run in `REPEATABLE READ
//! READ ONLY` transactions, one snapshot for the few statements a decision needs. Durability is
//! PostgreSQL's: a write is acknowledged after its commit returns.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{DecisionState, EventQuery, StoreError, SubjectView, WriteOutcome, WriteRequest};
use crate::audit::{AuditEvent, ChainReport};
use crate::domain::{ConversationId, SubjectId};
use crate::revision::Revision;

mod rows {
    crate::store::rows::sql_rows!(
        sqlx::PgConnection,
        sqlx::postgres::PgRow,
        head_query = "SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0 FOR UPDATE"
    );
}

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a statement may wait for a lock before the write fails UNAVAILABLE.
const LOCK_TIMEOUT: &str = "5s";
/// The longest a single statement may run.
const STATEMENT_TIMEOUT: &str = "30s";
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const READ_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects and applies the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("assent")
            .options([
                ("lock_timeout", LOCK_TIMEOUT),
                ("statement_timeout", STATEMENT_TIMEOUT),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        super::migrate(&MIGRATOR, &pool).await?;
        Ok(PostgresStore { pool })
    }

    pub async fn write(&self, request: &WriteRequest) -> Result<WriteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let outcome = rows::write_in(&mut tx, request).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
    ) -> Result<DecisionState, StoreError> {
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let state = rows::decision_state_in(&mut tx, subject_id, conversation_id).await?;
        tx.commit().await?;
        Ok(state)
    }

    pub async fn subject(&self, subject_id: &SubjectId) -> Result<Option<SubjectView>, StoreError> {
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
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

    pub async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        rows::events_in(&mut connection, query).await
    }

    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let report = rows::verify_chain_in(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    pub async fn head_revision(&self) -> Result<Revision, StoreError> {
        let mut connection = self.pool.acquire().await?;
        Ok(Revision::new(rows::latest_sequence(&mut connection).await?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
