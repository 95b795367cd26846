//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection and take the write lock at `BEGIN
//! IMMEDIATE`, so writers queue in the pool instead of retrying on a busy database; reads use a
//! separate pool and run in read transactions, so a decision never sees half a write.
//! `synchronous = FULL` makes every acknowledged write durable.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

use super::change::{SubjectRecord, plan_change};
use super::{
    ChoiceEntry, DecisionState, EventQuery, StoreError, SubjectView, WriteOutcome, WriteRequest,
    now_micros,
};
use crate::audit::{AuditEvent, ChainReport, ChainVerifier, canonical_bytes, chain_hash};
use crate::domain::{ConversationId, SubjectId};
use crate::policy::{
    Choice, ConversationFacts, POLICY_VERSION, Plan, Purpose, Rating, Status, SubjectState,
};
use crate::revision::Revision;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const READER_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const VERIFY_PAGE: i64 = 1_000;

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
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    pub async fn write(&self, request: &WriteRequest) -> Result<WriteOutcome, StoreError> {
        let subject_id = request.subject_id.as_str();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let current = load_subject(&mut tx, subject_id).await?;
        let conversation = match request.command.conversation_id() {
            Some(conversation_id) => {
                load_conversation(&mut tx, subject_id, conversation_id).await?
            }
            None => None,
        };
        let planned = plan_change(
            current.as_ref().map(|(record, _)| record),
            conversation,
            &request.command,
        )?;
        let Some(change) = planned else {
            tx.rollback().await?;
            let revision = current.map(|(_, revision)| revision).unwrap_or_default();
            return Ok(WriteOutcome {
                revision,
                changed: false,
            });
        };

        let (head_sequence, head_hash) = load_chain_head(&mut tx).await?;
        let revision = Revision::new(head_sequence).next();
        let sequence = to_i64(revision.sequence());
        let now = now_micros();
        let state = &change.subject.state;
        sqlx::query(
            "INSERT INTO subjects
                 (subject_id, plan, jurisdiction, status, gpc, zero_data_retention,
                  created_at, updated_at, revision)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
             ON CONFLICT (subject_id) DO UPDATE SET
                 plan = excluded.plan,
                 jurisdiction = excluded.jurisdiction,
                 status = excluded.status,
                 gpc = excluded.gpc,
                 zero_data_retention = excluded.zero_data_retention,
                 updated_at = excluded.updated_at,
                 revision = excluded.revision",
        )
        .bind(subject_id)
        .bind(state.plan.map(Plan::as_str))
        .bind(change.subject.jurisdiction.as_deref())
        .bind(state.status.as_str())
        .bind(state.gpc)
        .bind(state.zero_data_retention)
        .bind(now)
        .bind(sequence)
        .execute(&mut *tx)
        .await?;

        match change.choice {
            Some((purpose, Some(choice))) => {
                sqlx::query(
                    "INSERT INTO choices (subject_id, purpose, choice, updated_at, revision)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (subject_id, purpose) DO UPDATE SET
                         choice = excluded.choice,
                         updated_at = excluded.updated_at,
                         revision = excluded.revision",
                )
                .bind(subject_id)
                .bind(purpose.as_str())
                .bind(choice.as_str())
                .bind(now)
                .bind(sequence)
                .execute(&mut *tx)
                .await?;
            }
            Some((purpose, None)) => {
                sqlx::query("DELETE FROM choices WHERE subject_id = $1 AND purpose = $2")
                    .bind(subject_id)
                    .bind(purpose.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            None => {}
        }

        if let Some((conversation_id, facts)) = &change.conversation {
            sqlx::query(
                "INSERT INTO conversation_facts
                     (subject_id, conversation_id, feedback, automated_moderation, user_report,
                      updated_at, revision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (subject_id, conversation_id) DO UPDATE SET
                     feedback = excluded.feedback,
                     automated_moderation = excluded.automated_moderation,
                     user_report = excluded.user_report,
                     updated_at = excluded.updated_at,
                     revision = excluded.revision",
            )
            .bind(subject_id)
            .bind(conversation_id.as_str())
            .bind(facts.feedback.map(Rating::as_str))
            .bind(facts.automated_moderation)
            .bind(facts.user_report)
            .bind(now)
            .bind(sequence)
            .execute(&mut *tx)
            .await?;
        }

        if change.erase_personal_data {
            sqlx::query("DELETE FROM choices WHERE subject_id = $1")
                .bind(subject_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM conversation_facts WHERE subject_id = $1")
                .bind(subject_id)
                .execute(&mut *tx)
                .await?;
        }

        let mut event = AuditEvent {
            sequence: revision.sequence(),
            event_id: uuid::Uuid::now_v7().to_string(),
            at_micros: now,
            subject_id: subject_id.to_owned(),
            kind: change.kind.as_str().to_owned(),
            caller: request.context.caller.clone(),
            operator_id: request.context.actor.operator_id.clone(),
            actor_reason: request.context.actor.reason.clone(),
            detail_json: change.detail.to_string(),
            policy_version: POLICY_VERSION.to_owned(),
            trace_id: request.context.trace_id.clone(),
            prev_hash: head_hash,
            hash: String::new(),
        };
        event.hash = chain_hash(&event.prev_hash, &canonical_bytes(&event));
        sqlx::query(
            "INSERT INTO audit_events
                 (sequence, event_id, at_micros, subject_id, kind, caller, operator_id,
                  actor_reason, detail_json, policy_version, trace_id, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(sequence)
        .bind(&event.event_id)
        .bind(event.at_micros)
        .bind(&event.subject_id)
        .bind(&event.kind)
        .bind(&event.caller)
        .bind(&event.operator_id)
        .bind(&event.actor_reason)
        .bind(&event.detail_json)
        .bind(&event.policy_version)
        .bind(&event.trace_id)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE audit_chain_head SET sequence = $1, hash = $2 WHERE chain_id = 0")
            .bind(sequence)
            .bind(&event.hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(WriteOutcome {
            revision,
            changed: true,
        })
    }

    pub async fn decision_state(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
    ) -> Result<DecisionState, StoreError> {
        let mut tx = self.reader.begin().await?;
        let Some((record, revision)) = load_subject(&mut tx, subject_id.as_str()).await? else {
            let (head, _) = load_chain_head(&mut tx).await?;
            tx.commit().await?;
            return Ok(DecisionState {
                subject: None,
                conversation: None,
                revision: Revision::new(head),
            });
        };
        let conversation = match conversation_id {
            Some(conversation_id) => {
                load_conversation(&mut tx, subject_id.as_str(), conversation_id).await?
            }
            None => None,
        };
        tx.commit().await?;
        Ok(DecisionState {
            subject: Some(record.state),
            conversation,
            revision,
        })
    }

    pub async fn subject(&self, subject_id: &SubjectId) -> Result<Option<SubjectView>, StoreError> {
        let mut tx = self.reader.begin().await?;
        let Some((record, revision)) = load_subject(&mut tx, subject_id.as_str()).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let rows =
            sqlx::query("SELECT purpose, choice, updated_at FROM choices WHERE subject_id = $1")
                .bind(subject_id.as_str())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut choices = rows
            .iter()
            .map(|row| {
                Ok(ChoiceEntry {
                    purpose: parse_name(row, "purpose", Purpose::from_name)?,
                    choice: parse_name(row, "choice", Choice::from_name)?,
                    updated_at_micros: row.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        choices.sort_by_key(|entry| entry.purpose);
        Ok(Some(SubjectView {
            record,
            choices,
            revision,
        }))
    }

    pub async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let after = to_i64(query.after_sequence);
        let limit = i64::from(query.limit);
        let rows = match &query.subject_id {
            Some(subject_id) => {
                sqlx::query(
                    "SELECT * FROM audit_events WHERE subject_id = $1 AND sequence > $2
                     ORDER BY sequence LIMIT $3",
                )
                .bind(subject_id.as_str())
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT * FROM audit_events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.iter().map(event_from_row).collect()
    }

    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        // One read transaction: the events and the head are one consistent snapshot even while
        // writes continue.
        let mut tx = self.reader.begin().await?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0")
                .fetch_optional(&mut *tx)
                .await?;
        let mut verifier = ChainVerifier::new();
        let mut after = 0_i64;
        loop {
            let rows = sqlx::query(
                "SELECT * FROM audit_events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            )
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("sequence")?;
            for row in &rows {
                verifier.feed(&event_from_row(row)?);
            }
        }
        tx.commit().await?;
        let head = head.map(|(sequence, hash)| (from_i64(sequence), hash));
        Ok(verifier.finish(
            head.as_ref()
                .map(|(sequence, hash)| (*sequence, hash.as_str())),
        ))
    }

    pub async fn head_revision(&self) -> Result<Revision, StoreError> {
        let mut connection = self.reader.acquire().await?;
        let (sequence, _) = load_chain_head(&mut connection).await?;
        Ok(Revision::new(sequence))
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

async fn load_subject(
    connection: &mut SqliteConnection,
    subject_id: &str,
) -> Result<Option<(SubjectRecord, Revision)>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT plan, jurisdiction, status, gpc, zero_data_retention, revision
         FROM subjects WHERE subject_id = $1",
    )
    .bind(subject_id)
    .fetch_optional(&mut *connection)
    .await?
    else {
        return Ok(None);
    };
    let plan: Option<String> = row.try_get("plan")?;
    let plan = match plan {
        Some(name) => Some(
            Plan::from_name(&name).ok_or_else(|| StoreError::Corrupt(format!("plan {name:?}")))?,
        ),
        None => None,
    };
    let mut state = SubjectState {
        plan,
        status: parse_name(&row, "status", Status::from_name)?,
        gpc: row.try_get("gpc")?,
        zero_data_retention: row.try_get("zero_data_retention")?,
        ..SubjectState::new()
    };
    let choice_rows = sqlx::query("SELECT purpose, choice FROM choices WHERE subject_id = $1")
        .bind(subject_id)
        .fetch_all(&mut *connection)
        .await?;
    for choice_row in &choice_rows {
        let purpose = parse_name(choice_row, "purpose", Purpose::from_name)?;
        let choice = parse_name(choice_row, "choice", Choice::from_name)?;
        state.choices.set(purpose, Some(choice));
    }
    let record = SubjectRecord {
        state,
        jurisdiction: row.try_get("jurisdiction")?,
    };
    let revision = Revision::new(from_i64(row.try_get("revision")?));
    Ok(Some((record, revision)))
}

async fn load_conversation(
    connection: &mut SqliteConnection,
    subject_id: &str,
    conversation_id: &ConversationId,
) -> Result<Option<ConversationFacts>, StoreError> {
    let row = sqlx::query(
        "SELECT feedback, automated_moderation, user_report FROM conversation_facts
         WHERE subject_id = $1 AND conversation_id = $2",
    )
    .bind(subject_id)
    .bind(conversation_id.as_str())
    .fetch_optional(&mut *connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let feedback: Option<String> = row.try_get("feedback")?;
    let feedback = match feedback {
        Some(name) => Some(
            Rating::from_name(&name)
                .ok_or_else(|| StoreError::Corrupt(format!("feedback {name:?}")))?,
        ),
        None => None,
    };
    Ok(Some(ConversationFacts {
        feedback,
        automated_moderation: row.try_get("automated_moderation")?,
        user_report: row.try_get("user_report")?,
    }))
}

async fn load_chain_head(connection: &mut SqliteConnection) -> Result<(u64, String), StoreError> {
    let (sequence, hash): (i64, String) =
        sqlx::query_as("SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0")
            .fetch_one(&mut *connection)
            .await?;
    Ok((from_i64(sequence), hash))
}

fn parse_name<T>(
    row: &SqliteRow,
    column: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{column} {text:?}")))
}

fn event_from_row(row: &SqliteRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        sequence: from_i64(row.try_get("sequence")?),
        event_id: row.try_get("event_id")?,
        at_micros: row.try_get("at_micros")?,
        subject_id: row.try_get("subject_id")?,
        kind: row.try_get("kind")?,
        caller: row.try_get("caller")?,
        operator_id: row.try_get("operator_id")?,
        actor_reason: row.try_get("actor_reason")?,
        detail_json: row.try_get("detail_json")?,
        policy_version: row.try_get("policy_version")?,
        trace_id: row.try_get("trace_id")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Sequences are stored as SQL `INTEGER`; they start at 1 and never approach `i64::MAX`.
fn to_i64(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

fn from_i64(sequence: i64) -> u64 {
    u64::try_from(sequence).unwrap_or_default()
}
