//! Test support: a fresh, empty database per test, of either backend, removed afterwards.
//!
//! The backend is chosen by `ASSENT_TEST_STORE` (`sqlite`, the default, or `postgres`);
//! PostgreSQL tests create their database on the server named by `ASSENT_TEST_DATABASE_URL`
//! (default `postgres://assent:assent@127.0.0.1:5432/postgres`, the role `scripts/test` sets
//! up) and drop it when done.

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::Connection;

use super::{DatabaseUrl, StoreLocation};

pub const DEFAULT_ADMIN_URL: &str = "postgres://assent:assent@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend named by `ASSENT_TEST_STORE`.
    pub fn from_env() -> Backend {
        match std::env::var("ASSENT_TEST_STORE").as_deref() {
            Ok("postgres") => Backend::Postgres,
            Ok("sqlite") | Ok("") | Err(_) => Backend::Sqlite,
            Ok(other) => panic!("ASSENT_TEST_STORE={other:?}: expected sqlite or postgres"),
        }
    }
}

/// The PostgreSQL server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("ASSENT_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub backend: Backend,
    location: StoreLocation,
    directory: PathBuf,
    postgres_name: Option<String>,
    /// The PostgreSQL server it was created on (and is dropped from).
    admin: String,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        TestDatabase::create_on(backend, &admin_url()).await
    }

    /// A database on the PostgreSQL server of `admin` (a role that may create databases), such
    /// as a primary with a read replica; of `backend` SQLite, a file as [`TestDatabase::create`].
    pub async fn create_on(backend: Backend, admin: &str) -> TestDatabase {
        let admin = admin.to_owned();
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let directory = std::env::temp_dir().join(format!("assent-test-{unique}"));
        std::fs::create_dir_all(&directory).expect("cannot create a test directory");
        match backend {
            Backend::Sqlite => TestDatabase {
                backend,
                location: StoreLocation::SqliteFile(directory.join("assent.db")),
                directory,
                postgres_name: None,
                admin,
            },
            Backend::Postgres => {
                let name = format!("assent_test_{unique}");
                let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(
                    |error| {
                        panic!(
                            "PostgreSQL is not reachable at {}: {error}; scripts/test starts it",
                            DatabaseUrl::new(admin.clone())
                        )
                    },
                );
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut connection)
                    .await
                    .expect("cannot create a test database");
                let _ = connection.close().await;
                TestDatabase {
                    backend,
                    location: StoreLocation::Postgres {
                        url: DatabaseUrl::new(with_database(&admin, &name)),
                        max_connections: 4,
                    },
                    directory,
                    postgres_name: Some(name),
                    admin,
                }
            }
        }
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// A directory that lives as long as the database (for a server's other files).
    pub fn directory(&self) -> &std::path::Path {
        &self.directory
    }

    /// The URL a server or a test connection uses.
    pub fn url(&self) -> String {
        match &self.location {
            StoreLocation::SqliteFile(path) => format!("sqlite://{}", path.display()),
            StoreLocation::Postgres { url, .. } => url.expose().to_owned(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        let admin = std::mem::take(&mut self.admin);
        // Drop runs outside any async context we can borrow: a thread with its own small
        // runtime drops the database, forcing out connections a failed test left open.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await
                .ok()?;
                connection.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).ok();
    debug_assert!(options.is_some(), "not a PostgreSQL URL");
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, after) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    let query = after.find('?').map(|at| &after[at..]).unwrap_or("");
    format!("{scheme}://{authority}/{database}{query}")
}

/// Declares each async test `name(backend: Backend)` once per backend, as `sqlite::name` and
/// `postgres::name`.
#[cfg(test)]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::store::testing::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::store::testing::Backend::Postgres).await
                }
            )+
        }
    };
}

#[cfg(test)]
pub(crate) use backend_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://a:b@h:5432/postgres", "x"),
            "postgres://a:b@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://a@h/postgres?sslmode=disable", "x"),
            "postgres://a@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
