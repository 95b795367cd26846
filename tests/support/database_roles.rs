//! A test database with two roles of its own, as docs/operations.md's "Two database roles"
//! sets them up: an owner, which may create tables in the schema, and a role for the server.
#![allow(dead_code)] // Shared by several test binaries, each using part of it.

use assent::store::testing::{Backend, TestDatabase, admin_url};
use sqlx::{Connection, PgConnection};

/// A test database with an owner role and a server role of its own; the database is dropped
/// first, then the roles (a role that owns objects cannot be dropped).
pub struct Roles {
    database: Option<TestDatabase>,
    /// The role that owns the schema and migrates.
    pub owner: String,
    /// The server's role.
    pub runtime: String,
}

pub const PASSWORD: &str = "roles-test-password";

impl Roles {
    pub async fn create() -> Roles {
        let database = TestDatabase::create(Backend::Postgres).await;
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let roles = Roles {
            database: Some(database),
            owner: format!("assent_owner_{unique}"),
            runtime: format!("assent_server_{unique}"),
        };
        // The test role owns the database (and so its public schema): it lets the owner role
        // create the tables, as a database administrator would.
        let mut admin = PgConnection::connect(&roles.database().url())
            .await
            .unwrap();
        for statement in [
            format!("CREATE ROLE {} LOGIN PASSWORD '{PASSWORD}'", roles.owner),
            format!("CREATE ROLE {} LOGIN PASSWORD '{PASSWORD}'", roles.runtime),
            format!("GRANT USAGE, CREATE ON SCHEMA public TO {}", roles.owner),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .expect("cannot set up the roles: the test role needs CREATEROLE (scripts/ensure-postgres)");
        }
        admin.close().await.unwrap();
        roles
    }

    pub fn database(&self) -> &TestDatabase {
        self.database.as_ref().unwrap()
    }

    /// The test database's URL, connecting as `role`.
    pub fn url_as(&self, role: &str) -> String {
        let url = self.database().url();
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{role}:{PASSWORD}@{host}")
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        drop(self.database.take());
        let names = [self.owner.clone(), self.runtime.clone()];
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&admin_url()).await.ok()?;
                for name in names {
                    let statement = format!("DROP ROLE IF EXISTS {name}");
                    sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&mut connection)
                        .await
                        .ok()?;
                }
                connection.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}
