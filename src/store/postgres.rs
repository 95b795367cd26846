//! The production store: PostgreSQL.
//!
//! Every write transaction first locks the chain head row (`SELECT ... FOR UPDATE`), which puts
//! all writers — from every server process sharing the database — into one line: no lost
//! update, no fork of the audit chain, revisions in commit order. Reads run in `REPEATABLE READ
//! READ ONLY` transactions, one snapshot for the few statements a decision needs. Durability is
//! PostgreSQL's: a write is acknowledged after its commit returns.

mod replicas;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Postgres;
use sqlx::Row as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use replicas::ReadReplicas;

use super::rows::{from_i64, parse};
use super::sql::{Begin, Connection, Lease};
use super::{
    Access, PruneReport, Schema, ShippedSegment, StoreError, StoreTimeouts, SubjectSnapshot,
};
use crate::audit::{Decided, DecisionRecord};
use crate::calendar::{Date, MICROS_PER_DAY};
use crate::domain::SubjectId;
use crate::policy::{Choice, ConversationFacts, Plan, Purpose, Rating, Status, SubjectState};
use crate::revision::Revision;

/// What `snapshot_in` reads, in one statement: one round trip instead of five (a
/// transaction and three queries), and one statement sees one snapshot, so the parts agree
/// as they do in a REPEATABLE READ transaction. The conversation columns are aggregated in
/// one order (revision, then id), so their arrays line up. The chain head and whether the
/// server is a standby are read in the same snapshot: what a read replica's answer is judged by
/// (`replicas.rs`).
const SNAPSHOT_QUERY: &str = "
    SELECT s.plan, s.status, s.gpc, s.zero_data_retention, s.revision,
           c.purposes, c.choices, c.expiries,
           f.ids, f.feedback, f.moderation, f.reports, f.kept,
           (SELECT sequence FROM audit_chain_head WHERE chain_id = 0) AS head,
           pg_is_in_recovery() AS standby
    FROM (SELECT $1::TEXT AS id) AS q
    LEFT JOIN subjects AS s ON s.subject_id = q.id
    LEFT JOIN LATERAL (
        SELECT array_agg(purpose) AS purposes, array_agg(choice) AS choices,
               array_agg(expires_at) AS expiries
        FROM choices WHERE subject_id = q.id
    ) AS c ON TRUE
    LEFT JOIN LATERAL (
        SELECT array_agg(conversation_id ORDER BY revision DESC, conversation_id) AS ids,
               array_agg(feedback ORDER BY revision DESC, conversation_id) AS feedback,
               array_agg(automated_moderation ORDER BY revision DESC, conversation_id)
                   AS moderation,
               array_agg(user_report ORDER BY revision DESC, conversation_id) AS reports,
               COUNT(*) AS kept
        FROM (SELECT * FROM conversation_facts WHERE subject_id = q.id
              ORDER BY revision DESC, conversation_id LIMIT $2) AS recent
    ) AS f ON TRUE";

/// A snapshot read in one statement, with what the server it was read on had replayed.
pub(super) struct SnapshotRead {
    pub snapshot: SubjectSnapshot,
    /// The chain head in the statement's snapshot: the revision the read reflects.
    pub head: Revision,
    /// Whether the server is a standby (a read replica).
    pub standby: bool,
}

pub(super) async fn snapshot_in_one_statement(
    connection: &mut sqlx::PgConnection,
    subject_id: &SubjectId,
    max_conversations: usize,
) -> Result<SnapshotRead, StoreError> {
    let limit = i64::try_from(max_conversations)
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let row = sqlx::query(SNAPSHOT_QUERY)
        .bind(subject_id.as_str())
        .bind(limit)
        .fetch_one(&mut *connection)
        .await?;
    let head = Revision::new(from_i64(row.try_get("head")?));
    let standby: bool = row.try_get("standby")?;
    let snapshot = snapshot_of_row(&row, head, max_conversations)?;
    Ok(SnapshotRead {
        snapshot,
        head,
        standby,
    })
}

fn snapshot_of_row(
    row: &sqlx::postgres::PgRow,
    head: Revision,
    max_conversations: usize,
) -> Result<SubjectSnapshot, StoreError> {
    let status: Option<String> = row.try_get("status")?;
    let Some(status) = status else {
        return Ok(SubjectSnapshot {
            subject: None,
            revision: head,
            conversations: Vec::new(),
            complete: true,
        });
    };
    let plan: Option<String> = row.try_get("plan")?;
    let mut state = SubjectState {
        plan: plan
            .as_deref()
            .map(|name| parse("plan", name, Plan::from_name))
            .transpose()?,
        status: parse("status", &status, Status::from_name)?,
        gpc: row.try_get("gpc")?,
        zero_data_retention: row.try_get("zero_data_retention")?,
        ..SubjectState::new()
    };
    let purposes: Vec<String> = row.try_get::<Option<_>, _>("purposes")?.unwrap_or_default();
    let choices: Vec<String> = row.try_get::<Option<_>, _>("choices")?.unwrap_or_default();
    let expiries: Vec<Option<i64>> = row.try_get::<Option<_>, _>("expiries")?.unwrap_or_default();
    if [choices.len(), expiries.len()] != [purposes.len(); 2] {
        return Err(StoreError::Corrupt("choices do not line up".into()));
    }
    for ((purpose, choice), expires_at) in purposes.iter().zip(&choices).zip(expiries) {
        let purpose = parse("purpose", purpose, Purpose::from_name)?;
        state
            .choices
            .set(purpose, Some(parse("choice", choice, Choice::from_name)?));
        state.expiries.set(purpose, expires_at);
    }
    let ids: Vec<String> = row.try_get::<Option<_>, _>("ids")?.unwrap_or_default();
    let feedback: Vec<Option<String>> =
        row.try_get::<Option<_>, _>("feedback")?.unwrap_or_default();
    let moderation: Vec<bool> = row
        .try_get::<Option<_>, _>("moderation")?
        .unwrap_or_default();
    let reports: Vec<bool> = row.try_get::<Option<_>, _>("reports")?.unwrap_or_default();
    let kept: i64 = row.try_get("kept")?;
    if [feedback.len(), moderation.len(), reports.len()] != [ids.len(); 3]
        || usize::try_from(kept).ok() != Some(ids.len())
    {
        return Err(StoreError::Corrupt(
            "conversation facts do not line up".into(),
        ));
    }
    let complete = ids.len() <= max_conversations;
    let mut conversations = Vec::with_capacity(ids.len().min(max_conversations));
    for (index, id) in ids.into_iter().enumerate().take(max_conversations) {
        let facts = ConversationFacts {
            feedback: feedback[index]
                .as_deref()
                .map(|name| parse("feedback", name, Rating::from_name))
                .transpose()?,
            automated_moderation: moderation[index],
            user_report: reports[index],
        };
        conversations.push((id, facts));
    }
    Ok(SubjectSnapshot {
        subject: Some(state),
        revision: Revision::new(from_i64(row.try_get("revision")?)),
        conversations,
        complete,
    })
}

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// What the server's role may do, object by object, when the schema is owned by another role
/// (docs/operations.md, "Two database roles"): the one list `assent migrate --grant-to ROLE`
/// grants from, and prints. Every table of the schema is named, a test holds the migrations to
/// it, so a table a migration adds gets its line here. The audit log is read and appended to,
/// never updated or deleted; its triggers belong to the owner; the day partitions of the
/// decision log are made by a function that runs as the owner.
pub const RUNTIME_GRANTS: &[(&str, &str)] = &[
    // What the server checks instead of migrating (`run_migrations = false`).
    ("TABLE _sqlx_migrations", "SELECT"),
    // Upserts (INSERT ... ON CONFLICT DO UPDATE); a deleted subject's row stays.
    ("TABLE subjects", "SELECT, INSERT, UPDATE"),
    // Deletion and clearing remove a subject's choices and facts.
    ("TABLE choices", "SELECT, INSERT, UPDATE, DELETE"),
    ("TABLE conversation_facts", "SELECT, INSERT, UPDATE, DELETE"),
    // Append-only: no UPDATE, DELETE or TRUNCATE, and not the owner, so no trigger changes.
    ("TABLE audit_events", "SELECT, INSERT"),
    // A payload is written once (its own trigger refuses UPDATE) and erased whole.
    ("TABLE audit_payloads", "SELECT, INSERT, DELETE"),
    // Each write locks the head (SELECT ... FOR UPDATE) and moves it.
    ("TABLE audit_chain_head", "SELECT, UPDATE"),
    ("TABLE policy_versions", "SELECT, INSERT"),
    ("TABLE rights_requests", "SELECT, INSERT, UPDATE"),
    // Rows go through the parent to the day partitions, whose privileges are not checked.
    ("TABLE decision_log", "SELECT, INSERT"),
    // A shipped segment is inserted once and deleted only by `assent audit prune`, as the owner.
    ("TABLE decision_log_segments", "SELECT, INSERT"),
    ("FUNCTION decision_log_create_partition(BIGINT)", "EXECUTE"),
];

/// `name` as a quoted SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statements that give `role` exactly [`RUNTIME_GRANTS`] on the objects of `schema`: each
/// object's privileges revoked first, so that running them again takes away what was granted
/// beyond the list.
pub fn runtime_grant_statements(schema: &str, role: &str) -> Vec<String> {
    let (schema, role) = (quoted(schema), quoted(role));
    let mut statements = vec![format!("GRANT USAGE ON SCHEMA {schema} TO {role}")];
    for (object, privileges) in RUNTIME_GRANTS {
        let (kind, name) = object.split_once(' ').expect("KIND NAME");
        let (name, arguments) = match name.split_once('(') {
            Some((name, arguments)) => (name, format!("({arguments}")),
            None => (name, String::new()),
        };
        let object = format!("{kind} {schema}.{}{arguments}", quoted(name));
        statements.push(format!("REVOKE ALL ON {object} FROM {role}"));
        statements.push(format!("GRANT {privileges} ON {object} TO {role}"));
    }
    statements
}

/// The longest a single statement may run, on the server's clock (each operation's deadline
/// on this side is [`StoreTimeouts`]'s).
const STATEMENT_TIMEOUT: &str = "30s";
/// How long the server keeps a session idle inside a transaction: one whose client vanished
/// (a partition, a crash) releases its locks — the chain head among them — after this.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";
/// TCP keepalive on the server's side of each connection (sqlx offers none on ours): the
/// server drops a session whose client stopped answering within about 10 s of silence.
const SERVER_KEEPALIVE: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "1"),
    ("tcp_keepalives_count", "5"),
    // Milliseconds: data the server sent and the client never acknowledged.
    ("tcp_user_timeout", "10000"),
];
const READ_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
/// How long the pool may take to hand out a connection, opening one included: the bound of
/// opening the store, and of a connection still being opened after its caller gave up (see
/// `PostgresStore::acquire`). A caller itself waits no longer than its own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the pool's connections now, all at once, so that a Check's read rarely pays for
/// connecting within its short deadline. Best effort: a connection that cannot be opened now is
/// opened when needed. (Not the pool's `min_connections`: its background task would keep
/// reconnecting through a partition, each attempt holding a slot of the pool until it gives
/// up minutes later, where a connection opened on demand is abandoned at its caller's deadline.)
async fn warm_up(pool: &PgPool, connections: u32) {
    let opened = futures_util::future::join_all((0..connections).map(|_| pool.acquire())).await;
    drop(opened);
}

/// Appends one decision as a line of COPY's text format: tab-separated, `\N` for NULL.
fn copy_row(out: &mut Vec<u8>, row: &DecisionRecord) {
    /// A text field: copied as it is up to each byte COPY would read as a delimiter or an
    /// escape (rare: ids and names have none), which is escaped.
    fn text(out: &mut Vec<u8>, value: &str) {
        let mut rest = value.as_bytes();
        while let Some(at) = rest
            .iter()
            .position(|byte| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r'))
        {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(match rest[at] {
                b'\\' => b"\\\\",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                _ => b"\\r",
            });
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
        out.push(b'\t');
    }
    fn integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        out.push(b'\t');
    }
    let null = b"\\N\t";
    integer(out, row.decided_at_micros);
    text(out, &row.decision_id);
    text(out, &row.subject_id);
    text(out, row.purpose.as_str());
    match &row.conversation_id {
        Some(conversation_id) => text(out, conversation_id),
        None => out.extend_from_slice(null),
    }
    text(out, row.source.as_str());
    text(out, row.consistency);
    text(out, row.decision.as_str());
    text(out, row.reason.as_str());
    text(out, &row.rule);
    text(out, &row.policy_version);
    match row.revision {
        Some(revision) => integer(out, revision),
        None => out.extend_from_slice(null),
    }
    text(out, if row.degraded { "t" } else { "f" });
    text(out, &row.caller);
    text(out, &row.trace_id);
    // The last field ends the line instead of a tab.
    *out.last_mut().expect("a row has fields") = b'\n';
}

#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    pub(super) timeouts: StoreTimeouts,
    /// The days whose decision_log partition is known to exist.
    decision_partitions: Arc<Mutex<HashSet<i64>>>,
    /// Writes waiting to be committed together (`store::group`).
    pub(super) writes: Arc<super::group::WriteQueue>,
    /// Where a Check's reads may go instead (`ReadReplicas`), if any are configured.
    pub(super) replicas: Option<ReadReplicas>,
}

const PARTITION_PREFIX: &str = "decision_log_";

impl PostgresStore {
    /// Connects, and applies or checks the migrations. Opening a connection (the TCP
    /// connection, TLS and PostgreSQL's start-up) is bounded by `CONNECT_TIMEOUT`; a lock is
    /// waited for no longer than the write timeout.
    pub async fn open(
        url: &str,
        max_connections: u32,
        timeouts: StoreTimeouts,
        schema: Schema,
    ) -> Result<PostgresStore, StoreError> {
        let lock_timeout = format!("{}ms", timeouts.write.as_millis());
        let options = PgConnectOptions::from_str(url)?
            .application_name("assent")
            .options([
                ("lock_timeout", lock_timeout.as_str()),
                ("statement_timeout", STATEMENT_TIMEOUT),
                (
                    "idle_in_transaction_session_timeout",
                    IDLE_IN_TRANSACTION_TIMEOUT,
                ),
            ])
            .options(SERVER_KEEPALIVE);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        super::prepare_schema(&MIGRATOR, &pool, schema).await?;
        warm_up(&pool, max_connections).await;
        Ok(PostgresStore {
            pool,
            timeouts,
            decision_partitions: Arc::default(),
            writes: Arc::default(),
            replicas: None,
        })
    }

    /// What an operation needs: reads in `REPEATABLE READ, READ ONLY` transactions, one
    /// snapshot for the few statements a decision needs.
    pub(super) async fn connection(&self, access: Access) -> Result<Connection, StoreError> {
        let begin = match access {
            Access::Connection => Begin::Nothing,
            Access::Read => Begin::TransactionWith(READ_SNAPSHOT),
            Access::Write => Begin::Transaction,
        };
        Ok(Connection::postgres(Lease::new(self.acquire().await?), begin).await?)
    }

    /// A connection from the pool. Taken by a task of its own, which the caller's deadline does
    /// not cut short: when the pool has to connect (or test an idle connection) and the caller
    /// gives up first, the connection still lands in the pool for the next caller, instead of
    /// every short read abandoning its connecting half-way. The pool's acquire timeout bounds
    /// the task.
    async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let pool = self.pool.clone();
        tokio::spawn(async move { pool.acquire().await })
            .await
            .unwrap_or(Err(sqlx::Error::PoolClosed))
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts decision records with one COPY, creating the day partitions they fall in
    /// first. Unless `durable`, the transaction commits without waiting for the WAL flush
    /// (`synchronous_commit = off`): ordinary records are best-effort anyway (a full queue drops
    /// them), while a batch carrying a `require_audit` record is committed durably.
    pub async fn insert_decisions(
        &self,
        records: &[DecisionRecord],
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(records.len() * 256);
        for record in records {
            copy_row(&mut rows, record);
        }
        let instants = records.iter().map(|record| record.decided_at_micros);
        self.copy_decisions(instants, rows, durable).await
    }

    /// Keeps a shipped segment of the decision log as one row, with the distinct subjects of
    /// its `decided`; a segment shipped before (the same first decision) is left as it is.
    /// Committed durably: its file is deleted once this returns.
    pub(super) async fn insert_decision_segment(
        &self,
        segment: &ShippedSegment<'_>,
        decided: &[Decided<'_>],
    ) -> Result<(), StoreError> {
        let subjects: HashSet<&str> = decided.iter().map(|decided| decided.subject_id).collect();
        let subjects: Vec<&str> = subjects.into_iter().collect();
        let mut lease = Lease::new(self.acquire().await?);
        sqlx::query(
            "INSERT INTO decision_log_segments
                 (first_decision_id, first_at, last_at, records, subjects, body)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (first_decision_id) DO NOTHING",
        )
        .bind(&segment.first_decision_id)
        .bind(segment.first_at)
        .bind(segment.last_at)
        .bind(segment.records)
        .bind(subjects)
        .bind(segment.body)
        .execute(lease.connection())
        .await?;
        lease.done();
        Ok(())
    }

    /// COPYs `rows` (COPY's text format) in one transaction, creating the day partitions of
    /// their `instants` first.
    async fn copy_decisions(
        &self,
        instants: impl Iterator<Item = i64>,
        rows: Vec<u8>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let days: HashSet<i64> = instants
            .map(|micros| micros.div_euclid(MICROS_PER_DAY))
            .collect();
        let mut lease = Lease::new(self.acquire().await?);
        for day in days {
            self.ensure_partition(lease.connection(), day).await?;
        }
        let mut tx = sqlx::Connection::begin(lease.connection()).await?;
        if !durable {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let statement = format!(
            "COPY decision_log ({}) FROM STDIN",
            super::DECISION_LOG_COLUMNS
        );
        let mut copy = tx.copy_in_raw(&statement).await?;
        copy.send(rows).await?;
        copy.finish().await?;
        tx.commit().await?;
        lease.done();
        Ok(())
    }

    /// Creates the partition of `day` (days since the epoch) unless it exists, through the
    /// function that does it as the owner of `decision_log` (migration 0009), so that a server
    /// role owning nothing can do it.
    async fn ensure_partition(
        &self,
        connection: &mut sqlx::PgConnection,
        day: i64,
    ) -> Result<(), StoreError> {
        if self.known_partition(day) {
            return Ok(());
        }
        let name = format!("{PARTITION_PREFIX}{}", Date::from_days(day).compact());
        let create = sqlx::query("SELECT decision_log_create_partition($1)")
            .bind(day)
            .execute(&mut *connection)
            .await;
        if let Err(error) = create {
            // Another server process may have created it at the same moment.
            let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
                .bind(&name)
                .fetch_one(&mut *connection)
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

    /// Drops every day partition that ends at or before `cutoff_micros` (whole tables, never
    /// rows) and deletes the shipped segments all of whose decisions are before it.
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
        // A segment goes once all of it is before the cutoff.
        let (in_segments,): (i64,) = sqlx::query_as(
            "WITH gone AS (
                 DELETE FROM decision_log_segments WHERE last_at < $1 RETURNING records
             )
             SELECT COALESCE(SUM(records), 0)::BIGINT FROM gone",
        )
        .bind(cutoff_micros)
        .fetch_one(&self.pool)
        .await?;
        Ok(PruneReport {
            partitions_dropped: dropped,
            rows_deleted: in_segments as u64,
        })
    }

    pub async fn close(&self) {
        if let Some(replicas) = &self.replicas {
            replicas.close().await;
        }
        self.pool.close().await;
    }

    /// The statements that give `role` the server's privileges on this database's schema
    /// (the migrations' schema: the current one).
    pub async fn runtime_grants(&self, role: &str) -> Result<Vec<String>, StoreError> {
        let (schema,): (String,) = sqlx::query_as("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await?;
        Ok(runtime_grant_statements(&schema, role))
    }

    /// Gives `role` exactly the server's privileges, in one transaction, and returns the
    /// statements run. Refused for a role that does not exist, is a superuser, or is (or is a
    /// member of) the role connected, which owns the schema: its privileges would not be
    /// limited by any grant.
    pub async fn grant_runtime(&self, role: &str) -> Result<Vec<String>, StoreError> {
        let refused = |reason| StoreError::GrantRefused {
            role: role.to_owned(),
            reason,
        };
        let found: Option<(bool, bool)> = sqlx::query_as(
            "SELECT rolsuper, pg_has_role($1::name, current_user, 'MEMBER')
             FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_optional(&self.pool)
        .await?;
        match found {
            None => return Err(refused("no such role")),
            Some((true, _)) => return Err(refused("it is a superuser")),
            Some((_, true)) => {
                return Err(refused(
                    "it is the role migrating (or a member of it), which owns the schema",
                ));
            }
            Some((false, false)) => {}
        }
        let statements = self.runtime_grants(role).await?;
        let mut transaction = self.pool.begin().await?;
        for statement in &statements {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(statements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, POLICY_VERSION, Purpose, Reason, Source};

    #[test]
    fn grants_name_every_listed_object_with_quoted_names() {
        let statements = runtime_grant_statements("my schema", "odd\"role");
        assert_eq!(statements.len(), 1 + 2 * RUNTIME_GRANTS.len());
        assert_eq!(
            statements[0],
            r#"GRANT USAGE ON SCHEMA "my schema" TO "odd""role""#
        );
        assert!(
            statements.contains(
                &r#"GRANT SELECT, INSERT ON TABLE "my schema"."audit_events" TO "odd""role""#
                    .to_owned()
            )
        );
        assert!(statements.contains(
            &r#"REVOKE ALL ON FUNCTION "my schema"."decision_log_create_partition"(BIGINT) FROM "odd""role""#
                .to_owned()
        ));
        // Nothing that could rewrite the audit log.
        let audit = RUNTIME_GRANTS
            .iter()
            .find(|(object, _)| *object == "TABLE audit_events")
            .unwrap();
        for forbidden in ["UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "ALL"] {
            assert!(!audit.1.contains(forbidden), "{forbidden}");
        }
    }

    #[test]
    fn copy_rows_escape_text_and_mark_nulls() {
        let record = DecisionRecord {
            decided_at_micros: 1_700_000_000_000_000,
            decision_id: "d-1".into(),
            subject_id: "u-1".into(),
            purpose: Purpose::Memory,
            conversation_id: None,
            source: Source::Conversation,
            consistency: "minimize_latency",
            decision: Decision::Deny,
            reason: Reason::ChoiceRefused,
            rule: "M1".into(),
            policy_version: POLICY_VERSION.into(),
            revision: Some(42),
            degraded: true,
            caller: "tab\there\\back\nline\rend".into(),
            trace_id: String::new(),
        };
        let mut out = Vec::new();
        copy_row(&mut out, &record);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1700000000000000\td-1\tu-1\tMEMORY\t\\N\tCONVERSATION\tminimize_latency\tDENY\t\
             CHOICE_REFUSED\tM1\t2026-01-01\t42\tt\ttab\\there\\\\back\\nline\\rend\t\n"
        );
    }
}
