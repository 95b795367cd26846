//! The production store: PostgreSQL.
//!
//! Every write transaction first locks the chain head row (`SELECT ... FOR UPDATE`), which puts
//! all writers — from every server process sharing the database — into one line: no lost
//! update, no fork of the audit chain, revisions in commit order. Reads run in `REPEATABLE READ
//! READ ONLY` transactions, one snapshot for the few statements a decision needs. Durability is
//! PostgreSQL's: a write is acknowledged after its commit returns.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{
    DecisionState, EventQuery, PruneReport, StoreError, SubjectView, WriteOutcome, WriteRequest,
};
use crate::audit::decision_log::DecisionRecord;
use crate::audit::{AuditEvent, ChainReport};
use crate::calendar::{Date, MICROS_PER_DAY};
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
    /// The days whose decision_log partition is known to exist.
    decision_partitions: Arc<Mutex<HashSet<i64>>>,
}

const PARTITION_PREFIX: &str = "decision_log_";

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
        Ok(PostgresStore {
            pool,
            decision_partitions: Arc::default(),
        })
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

    /// Inserts decision records in one statement (arrays unnested server-side), creating the
    /// day partitions they fall in first.
    pub async fn insert_decisions(&self, records: &[DecisionRecord]) -> Result<(), StoreError> {
        let days: HashSet<i64> = records
            .iter()
            .map(|record| record.decided_at_micros.div_euclid(MICROS_PER_DAY))
            .collect();
        for day in days {
            self.ensure_partition(day).await?;
        }
        let texts = |field: fn(&DecisionRecord) -> &str| -> Vec<String> {
            records
                .iter()
                .map(|record| field(record).to_owned())
                .collect()
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[],
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                 $11::text[], $12::bigint[], $13::boolean[], $14::text[], $15::text[])",
            super::DECISION_LOG_INSERT
        )))
        .bind(
            records
                .iter()
                .map(|r| r.decided_at_micros)
                .collect::<Vec<i64>>(),
        )
        .bind(texts(|r| &r.decision_id))
        .bind(texts(|r| &r.subject_id))
        .bind(texts(|r| r.purpose.as_str()))
        .bind(
            records
                .iter()
                .map(|r| r.conversation_id.clone())
                .collect::<Vec<Option<String>>>(),
        )
        .bind(texts(|r| r.source.as_str()))
        .bind(texts(|r| r.consistency))
        .bind(texts(|r| r.decision.as_str()))
        .bind(texts(|r| r.reason.as_str()))
        .bind(texts(|r| r.rule.id()))
        .bind(texts(|r| r.policy_version))
        .bind(
            records
                .iter()
                .map(|r| r.revision.map(|revision| revision as i64))
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(records.iter().map(|r| r.degraded).collect::<Vec<bool>>())
        .bind(texts(|r| &r.caller))
        .bind(texts(|r| &r.trace_id))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates the partition of `day` (days since the epoch) unless it exists.
    async fn ensure_partition(&self, day: i64) -> Result<(), StoreError> {
        if self.known_partition(day) {
            return Ok(());
        }
        let name = format!("{PARTITION_PREFIX}{}", Date::from_days(day).compact());
        let create = sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF decision_log FOR VALUES FROM ({}) TO ({})",
            day * MICROS_PER_DAY,
            (day + 1) * MICROS_PER_DAY
        )))
        .execute(&self.pool)
        .await;
        if let Err(error) = create {
            // Another server process may have created it at the same moment.
            let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
                .bind(&name)
                .fetch_one(&self.pool)
                .await?;
            if !exists {
                return Err(error.into());
            }
        }
        self.decision_partitions
            .lock()
            .expect("the partition set is never poisoned")
            .insert(day);
        Ok(())
    }

    fn known_partition(&self, day: i64) -> bool {
        self.decision_partitions
            .lock()
            .expect("the partition set is never poisoned")
            .contains(&day)
    }

    /// Drops every day partition that ends at or before `cutoff_micros`: whole tables, never
    /// rows.
    pub async fn prune_decision_log(&self, cutoff_micros: i64) -> Result<PruneReport, StoreError> {
        let partitions: Vec<(String,)> = sqlx::query_as(
            "SELECT child.relname::text FROM pg_inherits
             JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
             JOIN pg_class child ON child.oid = pg_inherits.inhrelid
             WHERE parent.relname = 'decision_log'
             ORDER BY child.relname",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut dropped = Vec::new();
        for (name,) in partitions {
            let Some(date) = name
                .strip_prefix(PARTITION_PREFIX)
                .and_then(Date::parse_compact)
            else {
                continue;
            };
            let end = (date.to_days() + 1) * MICROS_PER_DAY;
            if end <= cutoff_micros {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                    .execute(&self.pool)
                    .await?;
                self.decision_partitions
                    .lock()
                    .expect("the partition set is never poisoned")
                    .remove(&date.to_days());
                dropped.push(name);
            }
        }
        Ok(PruneReport {
            partitions_dropped: dropped,
            rows_deleted: 0,
        })
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let (version,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(version)
    }

    /// The number of recorded decisions (for tests and operators).
    pub async fn count_decisions(&self) -> Result<u64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM decision_log")
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
