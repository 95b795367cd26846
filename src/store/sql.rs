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

/// A pooled connection lent to one operation. Unless the operation says it is done with it,
/// the connection is closed when the lease is dropped instead of going back to the pool: an
/// operation cut short by its deadline may have left it waiting on a database that will never
/// answer (and the pool would test it before reuse with a ping that waits as long, holding a
/// slot of the pool meanwhile). Closing it ends the database session too, rolling back a
/// transaction not committed.
pub(super) struct Lease<DB: Database> {
    connection: Option<PoolConnection<DB>>,
    done: bool,
}

impl<DB: Database> Lease<DB> {
    pub(super) fn new(connection: PoolConnection<DB>) -> Lease<DB> {
        Lease {
            connection: Some(connection),
            done: false,
        }
    }

    pub(super) fn connection(&mut self) -> &mut DB::Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// The operation finished with the connection in a known state: it goes back to the pool.
    pub(super) fn done(mut self) {
        self.done = true;
    }
}

impl<DB: Database> Drop for Lease<DB> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && !self.done
        {
            // Out of the pool (which may open another in its place), and closed at once.
            drop(connection.detach());
        }
    }
}

/// What an operation begins on its leased connection.
#[derive(Clone, Copy, Debug)]
pub(super) enum Begin {
    /// Nothing: its statements run on the connection as it is.
    Nothing,
    /// A transaction, begun with `BEGIN`.
    Transaction,
    /// A transaction, begun with this statement.
    TransactionWith(&'static str),
}

/// An operation's connection: a leased one, in a transaction it began or not. Transactions
/// are begun, committed and rolled back with plain statements on the lease (rather than as an
/// `sqlx::Transaction`, which would either borrow the lease or own the pool's connection and
/// send it back to the pool when dropped).
pub(super) struct Held<DB: Database> {
    lease: Lease<DB>,
    transaction: bool,
}

impl<DB: Database> Held<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    async fn begin(mut lease: Lease<DB>, begin: Begin) -> Result<Held<DB>, sqlx::Error> {
        let statement = match begin {
            Begin::Nothing => None,
            Begin::Transaction => Some("BEGIN"),
            Begin::TransactionWith(statement) => Some(statement),
        };
        if let Some(statement) = statement {
            sqlx::raw_sql(statement).execute(lease.connection()).await?;
        }
        Ok(Held {
            lease,
            transaction: statement.is_some(),
        })
    }

    fn connection(&mut self) -> &mut DB::Connection {
        self.lease.connection()
    }

    /// Ends the transaction with `statement` (`COMMIT` or `ROLLBACK`), then gives the
    /// connection back to the pool.
    async fn end(mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        if self.transaction {
            sqlx::raw_sql(statement)
                .execute(self.lease.connection())
                .await?;
        }
        self.lease.done();
        Ok(())
    }
}

/// A connection of either backend. A PostgreSQL one keeps the revision and subject of each
/// audit event appended through it, announced when it commits.
pub(super) enum Connection {
    Sqlite(Held<Sqlite>),
    Postgres(Held<Postgres>, Vec<(Revision, Changed)>),
}

impl Connection {
    /// A SQLite connection of `lease`, begun as `begin` says.
    pub(super) async fn sqlite(
        lease: Lease<Sqlite>,
        begin: Begin,
    ) -> Result<Connection, sqlx::Error> {
        Ok(Connection::Sqlite(Held::begin(lease, begin).await?))
    }

    /// A PostgreSQL connection of `lease`, begun as `begin` says.
    pub(super) async fn postgres(
        lease: Lease<Postgres>,
        begin: Begin,
    ) -> Result<Connection, sqlx::Error> {
        Ok(Connection::Postgres(
            Held::begin(lease, begin).await?,
            Vec::new(),
        ))
    }

    /// Commits the transaction, or gives the connection back.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Connection::Sqlite(held) => held.end("COMMIT").await?,
            Connection::Postgres(held, _) => held.end("COMMIT").await?,
        }
        Ok(())
    }

    /// Rolls the transaction back, or gives the connection back.
    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Connection::Sqlite(held) => held.end("ROLLBACK").await?,
            Connection::Postgres(held, _) => held.end("ROLLBACK").await?,
        }
        Ok(())
    }

    pub(super) fn query(&mut self, sql: impl sqlx::SqlSafeStr) -> Statement<'_> {
        match self {
            Connection::Sqlite(held) => Statement::Sqlite(held.connection(), sqlx::query(sql)),
            Connection::Postgres(held, _) => {
                Statement::Postgres(held.connection(), sqlx::query(sql))
            }
        }
    }

    /// The PostgreSQL connection, for what only PostgreSQL runs.
    pub(super) fn as_postgres(&mut self) -> Option<&mut sqlx::PgConnection> {
        match self {
            Connection::Sqlite(_) => None,
            Connection::Postgres(held, _) => Some(held.connection()),
        }
    }

    /// The statement that reads the chain head for a write, locking it where the backend needs
    /// a lock beyond the transaction's own.
    pub(super) fn chain_head_for_write(&self) -> &'static str {
        match self {
            // The write lock is already held (`BEGIN IMMEDIATE`); SQLite has no `FOR UPDATE`.
            Connection::Sqlite(_) => {
                "SELECT sequence, hash, frontier FROM audit_chain_head WHERE chain_id = 0"
            }
            // Every writer, in every process, waits here for the one before it to commit.
            Connection::Postgres(..) => {
                "SELECT sequence, hash, frontier FROM audit_chain_head WHERE chain_id = 0 FOR UPDATE"
            }
        }
    }

    /// Notes an audit event appended, for the change notification of the commit.
    pub(super) fn appended(&mut self, revision: Revision, changed: Changed) {
        if let Connection::Postgres(_, appended) = self {
            appended.push((revision, changed));
        }
    }

    /// Queues the announcement of every change appended, delivered if the transaction commits.
    pub(super) async fn announce_appended(&mut self) -> Result<(), StoreError> {
        if let Connection::Postgres(held, appended) = self
            && !appended.is_empty()
        {
            announce(held.connection(), std::mem::take(appended)).await?;
        }
        Ok(())
    }
}

/// Announces changes on [`super::CHANGES_CHANNEL`], in order, in one statement: delivered to
/// every listener when, and only if, the transaction commits.
async fn announce(
    connection: &mut sqlx::PgConnection,
    changes: Vec<(Revision, Changed)>,
) -> Result<(), StoreError> {
    let at_micros = super::now_micros();
    let announcements: Vec<String> = changes
        .into_iter()
        .map(|(revision, changed)| {
            ChangeNotice {
                revision,
                changed,
                at_micros,
            }
            .announcement()
        })
        .collect();
    sqlx::query("SELECT pg_notify($1, announcement) FROM unnest($2::text[]) AS announcement")
        .bind(super::CHANGES_CHANNEL)
        .bind(announcements)
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
