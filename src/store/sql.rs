//! What the shared SQL of `rows.rs` runs on: a connection of either backend, pooled or in a
//! transaction, with the statements, rows and values both backends take.
//!
//! An enum rather than code generic over `sqlx::Database`: generic functions need the same
//! wall of higher-ranked executor, encode and decode bounds on each of them (a trait's `where`
//! clauses are not implied where it is used), while the bounds below name the two concrete
//! databases once.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Database, Decode, Encode, FromRow, Postgres, Sqlite, Type};

use super::{ChangeNotice, Changed, StoreError};
use crate::revision::Revision;

/// A value a statement binds, on either backend.
pub(super) trait Param<'q>:
    Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres>
{
}

impl<'q, T> Param<'q> for T where
    T: Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres>
{
}

/// A value a column holds, on either backend.
pub(super) trait Column:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> Column for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A row decoded whole (a tuple of columns), on either backend.
pub(super) trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>
{
}

impl<T> Record for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> {}

/// A connection taken from a pool, or a transaction begun on one.
pub(super) enum Held<DB: Database> {
    Pooled(PoolConnection<DB>),
    Transaction(sqlx::Transaction<'static, DB>),
}

impl<DB: Database> Held<DB> {
    fn connection(&mut self) -> &mut DB::Connection {
        match self {
            Held::Pooled(connection) => connection,
            Held::Transaction(transaction) => transaction,
        }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Held::Pooled(_) => Ok(()),
            Held::Transaction(transaction) => transaction.commit().await,
        }
    }
}

/// A connection of either backend. A PostgreSQL one keeps the revision and subject of each
/// audit event appended through it, announced when it commits.
pub(super) enum Connection {
    Sqlite(Held<Sqlite>),
    Postgres(Held<Postgres>, Vec<(Revision, Changed)>),
}

impl Connection {
    pub(super) fn query(&mut self, sql: impl sqlx::SqlSafeStr) -> Statement<'_> {
        match self {
            Connection::Sqlite(held) => Statement::Sqlite(held.connection(), sqlx::query(sql)),
            Connection::Postgres(held, _) => {
                Statement::Postgres(held.connection(), sqlx::query(sql))
            }
        }
    }

    /// The statement that reads the chain head for a write, locking it where the backend needs
    /// a lock beyond the transaction's own.
    pub(super) fn chain_head_for_write(&self) -> &'static str {
        match self {
            // The write lock is already held (`BEGIN IMMEDIATE`); SQLite has no `FOR UPDATE`.
            Connection::Sqlite(_) => {
                "SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0"
            }
            // Every writer, in every process, waits here for the one before it to commit.
            Connection::Postgres(..) => {
                "SELECT sequence, hash FROM audit_chain_head WHERE chain_id = 0 FOR UPDATE"
            }
        }
    }

    /// Notes an audit event appended, for the change notification of the commit.
    pub(super) fn appended(&mut self, revision: Revision, changed: Changed) {
        if let Connection::Postgres(_, appended) = self {
            appended.push((revision, changed));
        }
    }

    /// Commits a transaction (announcing the changes it appended) or returns a pooled
    /// connection.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Connection::Sqlite(held) => held.commit().await?,
            Connection::Postgres(mut held, appended) => {
                for (revision, changed) in appended {
                    announce(held.connection(), revision, changed).await?;
                }
                held.commit().await?;
            }
        }
        Ok(())
    }
}

/// Announces a change on [`super::CHANGES_CHANNEL`]: delivered to every listener when, and
/// only if, the transaction commits.
async fn announce(
    connection: &mut sqlx::PgConnection,
    revision: Revision,
    changed: Changed,
) -> Result<(), StoreError> {
    let announcement = ChangeNotice {
        revision,
        changed,
        at_micros: super::now_micros(),
    }
    .announcement();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::CHANGES_CHANNEL)
        .bind(announcement)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// A statement with its parameters, bound to the connection it runs on.
pub(super) enum Statement<'c> {
    Sqlite(
        &'c mut sqlx::SqliteConnection,
        sqlx::query::Query<'c, Sqlite, SqliteArguments>,
    ),
    Postgres(
        &'c mut sqlx::PgConnection,
        sqlx::query::Query<'c, Postgres, PgArguments>,
    ),
}

impl Statement<'_> {
    pub(super) fn bind<'q>(self, value: impl Param<'q>) -> Self {
        match self {
            Statement::Sqlite(connection, query) => {
                Statement::Sqlite(connection, query.bind(value))
            }
            Statement::Postgres(connection, query) => {
                Statement::Postgres(connection, query.bind(value))
            }
        }
    }

    pub(super) async fn execute(self) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Statement::Sqlite(connection, query) => {
                query.execute(connection).await?.rows_affected()
            }
            Statement::Postgres(connection, query) => {
                query.execute(connection).await?.rows_affected()
            }
        })
    }

    pub(super) async fn fetch_all(self) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Statement::Sqlite(connection, query) => query
                .fetch_all(connection)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Statement::Postgres(connection, query) => query
                .fetch_all(connection)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    pub(super) async fn fetch_optional(self) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Statement::Sqlite(connection, query) => {
                query.fetch_optional(connection).await?.map(Row::Sqlite)
            }
            Statement::Postgres(connection, query) => {
                query.fetch_optional(connection).await?.map(Row::Postgres)
            }
        })
    }

    pub(super) async fn fetch_one(self) -> Result<Row, sqlx::Error> {
        Ok(match self {
            Statement::Sqlite(connection, query) => Row::Sqlite(query.fetch_one(connection).await?),
            Statement::Postgres(connection, query) => {
                Row::Postgres(query.fetch_one(connection).await?)
            }
        })
    }

    /// Every row, each decoded whole.
    pub(super) async fn fetch_all_as<T: Record>(self) -> Result<Vec<T>, sqlx::Error> {
        self.fetch_all().await?.iter().map(Row::decode).collect()
    }

    /// The one row, decoded whole.
    pub(super) async fn fetch_one_as<T: Record>(self) -> Result<T, sqlx::Error> {
        self.fetch_one().await?.decode()
    }
}

/// A row of either backend.
pub(super) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    pub(super) fn try_get<T: Column>(&self, column: &str) -> Result<T, sqlx::Error> {
        match self {
            Row::Sqlite(row) => sqlx::Row::try_get(row, column),
            Row::Postgres(row) => sqlx::Row::try_get(row, column),
        }
    }

    pub(super) fn decode<T: Record>(&self) -> Result<T, sqlx::Error> {
        match self {
            Row::Sqlite(row) => T::from_row(row),
            Row::Postgres(row) => T::from_row(row),
        }
    }
}
