//! PostgreSQL statements over arrays (`unnest`): what a write group reads together (its subjects
//! and their stored choices) and writes together (its events and their payloads, its subject
//! rows and stored choices), each in statements whose text is the same whatever the number of
//! rows, so that they stay prepared. `rows.rs` calls them on PostgreSQL; SQLite takes `IN`
//! lists and multi-row `VALUES` there.

use super::StoreError;
use super::sql::Row;
use crate::audit::AuditEvent;

/// `rows::read_rows` of subjects on PostgreSQL: the rows of the subjects in `$1` (each id once).
pub(super) const SUBJECT_ROWS: &str = "SELECT subject.* FROM unnest($1::TEXT[]) AS id (subject_id)
     CROSS JOIN LATERAL (
         SELECT subject_id, plan, jurisdiction, status, gpc, zero_data_retention, revision
         FROM subjects WHERE subjects.subject_id = id.subject_id
         OFFSET 0
     ) AS subject";

/// `rows::read_rows` of stored choices on PostgreSQL: the choices of the subjects in `$1` (each
/// id once), ordered by purpose within a subject.
pub(super) const CHOICE_ROWS: &str = "SELECT choice.* FROM unnest($1::TEXT[]) AS id (subject_id)
     CROSS JOIN LATERAL (
         SELECT subject_id, purpose, choice, updated_at, notice_version, method, caller,
                expires_at
         FROM choices WHERE choices.subject_id = id.subject_id
         ORDER BY purpose OFFSET 0
     ) AS choice";

/// Runs [`SUBJECT_ROWS`] or [`CHOICE_ROWS`] for the subjects `ids`.
///
/// Both read id by id, a lateral join on the primary key (`OFFSET 0` keeps the planner from
/// flattening it), which probes the index whatever the tables' statistics. Read with
/// `subject_id IN (...)` or `= ANY($1)`, subjects and choices were scanned whole while the
/// tables had no statistics (a new database, until autovacuum's first ANALYZE): PostgreSQL then
/// guesses a third of the choices for 64 ids, and a plan made while the tables were empty is
/// kept. Measured in a new database at 15,000 choices and 30,000 subjects: 2 to 5 ms a read, a
/// group's two reads taking more than all its writes together; read by probes, 0.1 ms.
pub(super) async fn rows_by_id(
    connection: &mut sqlx::PgConnection,
    statement: &'static str,
    ids: &[&str],
) -> Result<Vec<Row>, StoreError> {
    let rows = sqlx::query(statement)
        .bind(ids)
        .fetch_all(&mut *connection)
        .await?;
    Ok(rows.into_iter().map(Row::Postgres).collect())
}

/// The `ON CONFLICT` clause of a subject row's upsert: every column but the row's creation time.
macro_rules! subject_conflict {
    () => {
        "ON CONFLICT (subject_id) DO UPDATE SET
             plan = excluded.plan,
             jurisdiction = excluded.jurisdiction,
             status = excluded.status,
             gpc = excluded.gpc,
             zero_data_retention = excluded.zero_data_retention,
             updated_at = excluded.updated_at,
             revision = excluded.revision"
    };
}
pub(super) use subject_conflict;

/// The `ON CONFLICT` clause of a stored choice's upsert: every column.
macro_rules! choice_conflict {
    () => {
        "ON CONFLICT (subject_id, purpose) DO UPDATE SET
             choice = excluded.choice,
             updated_at = excluded.updated_at,
             revision = excluded.revision,
             notice_version = excluded.notice_version,
             method = excluded.method,
             caller = excluded.caller,
             expires_at = excluded.expires_at"
    };
}
pub(super) use choice_conflict;

/// A subject's row as a write group writes it.
pub(super) struct SubjectRow {
    pub(super) subject_id: String,
    pub(super) plan: Option<&'static str>,
    pub(super) jurisdiction: Option<String>,
    pub(super) status: &'static str,
    pub(super) gpc: bool,
    pub(super) zero_data_retention: bool,
    pub(super) now: i64,
    pub(super) sequence: i64,
}

/// A stored choice as a write group writes it.
pub(super) struct ChoiceRow {
    pub(super) subject_id: String,
    pub(super) purpose: &'static str,
    pub(super) choice: &'static str,
    pub(super) now: i64,
    pub(super) sequence: i64,
    pub(super) notice_version: String,
    pub(super) method: &'static str,
    pub(super) caller: String,
    pub(super) expires_at: Option<i64>,
}

/// The most bytes of parameters one statement of [`insert_events`] carries. A message longer
/// than a TLS record (16 KiB) leaves the client in more than one write, and sqlx does not set
/// TCP_NODELAY: the last write then waits for the server's delayed acknowledgement, some 40 ms
/// on Linux, while the chain head is held. Measured: a group of 58 events in one statement
/// waited 42 ms before it was sent.
const INSERT_BYTES: usize = 12 * 1024;

/// `rows::insert_events`: the events and their payloads inserted from arrays, in
/// statements of at most [`INSERT_BYTES`] of parameters each.
pub(super) async fn insert_events(
    connection: &mut sqlx::PgConnection,
    events: &[(AuditEvent, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len() && (end == start || bytes < INSERT_BYTES) {
            let (event, tree) = &events[end];
            bytes += 160
                + event.event_id.len()
                + event.subject_id.len()
                + event.caller.len()
                + event.operator_id.len()
                + event.actor_reason.len()
                + event.payload_sha256.len()
                + event.policy_version.len()
                + event.trace_id.len()
                + event.prev_hash.len()
                + event.hash.len()
                + tree.len()
                + event.payload_salt.len()
                + event.detail_json.len();
            end += 1;
        }
        insert_event_rows(&mut *connection, &events[start..end]).await?;
        start = end;
    }
    Ok(())
}

async fn insert_event_rows(
    connection: &mut sqlx::PgConnection,
    events: &[(AuditEvent, Vec<u8>)],
) -> Result<(), StoreError> {
    let column = |field: fn(&AuditEvent) -> &str| -> Vec<&str> {
        events.iter().map(|(event, _)| field(event)).collect()
    };
    let sequences: Vec<i64> = events.iter().map(|(event, _)| sequence_of(event)).collect();
    let at_micros: Vec<i64> = events.iter().map(|(event, _)| event.at_micros).collect();
    let trees: Vec<&[u8]> = events.iter().map(|(_, tree)| tree.as_slice()).collect();
    sqlx::query(
        "INSERT INTO audit_events
         (sequence, event_id, at_micros, subject_id, kind, caller, operator_id, actor_reason,
          payload_sha256, policy_version, trace_id, prev_hash, hash, tree)
         SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[],
                              $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[],
                              $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::BYTEA[])",
    )
    .bind(&sequences)
    .bind(column(|event| &event.event_id))
    .bind(&at_micros)
    .bind(column(|event| &event.subject_id))
    .bind(column(|event| event.kind.as_str()))
    .bind(column(|event| &event.caller))
    .bind(column(|event| &event.operator_id))
    .bind(column(|event| &event.actor_reason))
    .bind(column(|event| &event.payload_sha256))
    .bind(column(|event| &event.policy_version))
    .bind(column(|event| &event.trace_id))
    .bind(column(|event| &event.prev_hash))
    .bind(column(|event| &event.hash))
    .bind(trees)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "INSERT INTO audit_payloads (sequence, salt, detail_json)
         SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[])",
    )
    .bind(&sequences)
    .bind(column(|event| &event.payload_salt))
    .bind(column(|event| &event.detail_json))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// `rows::write_rows`' subjects, from arrays.
pub(super) async fn upsert_subjects(
    connection: &mut sqlx::PgConnection,
    rows: &[SubjectRow],
) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO subjects
         (subject_id, plan, jurisdiction, status, gpc, zero_data_retention,
          created_at, updated_at, revision)
         SELECT id, plan, jurisdiction, status, gpc, zdr, at, at, revision
         FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[],
                     $6::BOOLEAN[], $7::BIGINT[], $8::BIGINT[])
              AS row (id, plan, jurisdiction, status, gpc, zdr, at, revision) ",
        subject_conflict!()
    ))
    .bind(
        rows.iter()
            .map(|row| row.subject_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.plan).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| row.jurisdiction.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.status).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.gpc).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| row.zero_data_retention)
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.now).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.sequence).collect::<Vec<_>>())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// `rows::write_rows`' stored choices, from arrays.
pub(super) async fn upsert_choices(
    connection: &mut sqlx::PgConnection,
    rows: &[ChoiceRow],
) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO choices
         (subject_id, purpose, choice, updated_at, revision, notice_version, method, caller,
          expires_at)
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[],
                              $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::BIGINT[]) ",
        choice_conflict!()
    ))
    .bind(
        rows.iter()
            .map(|row| row.subject_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.purpose).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.choice).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.now).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.sequence).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| row.notice_version.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.method).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| row.caller.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.expires_at).collect::<Vec<_>>())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// An event's sequence as stored (as `rows::to_i64`).
fn sequence_of(event: &AuditEvent) -> i64 {
    i64::try_from(event.sequence).unwrap_or(i64::MAX)
}
