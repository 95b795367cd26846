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

use super::sql::{Begin, Connection, Lease};
use super::{Access, PruneReport, Schema, ShippedSegment, StoreError, StoreTimeouts};
use crate::audit::DecisionRecord;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const READER_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    pub(super) timeouts: StoreTimeouts,
    /// Writes waiting to be committed together (`store::group`).
    pub(super) writes: std::sync::Arc<super::group::WriteQueue>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, and applies or checks the migrations.
    pub async fn open(
        path: &Path,
        timeouts: StoreTimeouts,
        schema: Schema,
    ) -> Result<SqliteStore, StoreError> {
        owner_only(path)?;
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
        super::prepare_schema(&MIGRATOR, &writer, schema).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            timeouts,
            writes: std::sync::Arc::default(),
        })
    }

    /// What an operation needs: reads from the read-only pool, writes on the writer's one
    /// connection with the write lock taken at `BEGIN IMMEDIATE`.
    pub(super) async fn connection(&self, access: Access) -> Result<Connection, StoreError> {
        let (pool, begin) = match access {
            Access::Connection => (&self.reader, Begin::Nothing),
            Access::Read => (&self.reader, Begin::Transaction),
            Access::Write => (&self.writer, Begin::TransactionWith("BEGIN IMMEDIATE")),
        };
        Ok(Connection::sqlite(Lease::new(pool.acquire().await?), begin).await?)
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
                    .push_bind(record.rule.to_string())
                    .push_bind(record.policy_version.to_string())
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

    /// Keeps a shipped segment of the decision log as one row; a segment shipped before (the
    /// same first decision) is left as it is.
    pub(super) async fn insert_decision_segment(
        &self,
        segment: &ShippedSegment<'_>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO decision_log_segments
                 (first_decision_id, first_at, last_at, records, body)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&segment.first_decision_id)
        .bind(segment.first_at)
        .bind(segment.last_at)
        .bind(segment.records)
        .bind(segment.body)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Deletes the decisions made before `cutoff_micros`: the rows in one statement (SQLite has
    /// no partitions to drop) and the segments all of whose decisions are, in one transaction.
    pub async fn prune_decision_log(&self, cutoff_micros: i64) -> Result<PruneReport, StoreError> {
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query("DELETE FROM decision_log WHERE decided_at < $1")
            .bind(cutoff_micros)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // A segment goes once all of it is before the cutoff.
        let (in_segments,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(records), 0) FROM decision_log_segments WHERE last_at < $1",
        )
        .bind(cutoff_micros)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM decision_log_segments WHERE last_at < $1")
            .bind(cutoff_micros)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(PruneReport {
            partitions_dropped: Vec::new(),
            rows_deleted: rows + in_segments as u64,
        })
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
/// Makes the database readable by its owner only: a directory created for it 0700, the file
/// and its `-wal` and `-shm` companions 0600 (created so, or narrowed if they were wider).
/// SQLite creates the companions with the database file's mode.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::DataDirectory { path, source }
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(failed(parent))?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(failed(path))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        match std::fs::metadata(&file) {
            Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(failed(&file))?;
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(&file)(error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn companion(path: &Path, suffix: &str) -> std::path::PathBuf {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        file.into()
    }

    #[tokio::test]
    async fn the_database_is_readable_by_its_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("data").join("assent.db");
        let store = SqliteStore::open(&path, StoreTimeouts::default(), Schema::Migrate)
            .await
            .unwrap();
        assert_eq!(mode(&root.path().join("data")), 0o700);
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(&companion(&path, suffix)), 0o600, "{suffix}");
        }
        store.close().await;

        // Made wider by hand (or by an earlier version), they are narrowed when opened again.
        for suffix in ["", "-wal", "-shm"] {
            let file = companion(&path, suffix);
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let store = SqliteStore::open(&path, StoreTimeouts::default(), Schema::Migrate)
            .await
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(&companion(&path, suffix)), 0o600, "{suffix}");
        }
        store.close().await;
    }
}
