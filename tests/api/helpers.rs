//! A real server per test: bound to port 0 on loopback, with its own data directory, and typed
//! clients for every service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use assent::auth::TokenSettings;
use assent::cache::CacheSettings;
use assent::checkpoints::CheckpointSettings;
use assent::config::Settings;
use assent::decision_log::LogMode;
use assent::proto;
use assent::proto::audit_client::AuditClient;
use assent::proto::changes_client::ChangesClient;
use assent::proto::decisions_client::DecisionsClient;
use assent::proto::policies_client::PoliciesClient;
use assent::proto::retention_client::RetentionClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::startup::Application;
use assent::store::DatabaseUrl;
use assent::store::testing::{Backend, TestDatabase};
use assent::telemetry::LogFormat;
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestApp {
    pub address: SocketAddr,
    /// The console's address, when the settings serve it.
    pub console: Option<SocketAddr>,
    pub data: Arc<TestDatabase>,
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Numbers the servers the tests start.
static SERVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TestApp {
    /// A server on a fresh, empty database of the backend `ASSENT_TEST_STORE` names.
    pub async fn spawn() -> TestApp {
        let database = TestDatabase::create(Backend::from_env()).await;
        TestApp::spawn_on(Arc::new(database)).await
    }

    /// A server on an existing database (to test a restart).
    pub async fn spawn_on(data: Arc<TestDatabase>) -> TestApp {
        TestApp::spawn_with(data, |_| {}).await
    }

    /// A server on a fresh database, with settings adjusted by `adjust`.
    pub async fn spawn_adjusted(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let database = TestDatabase::create(Backend::from_env()).await;
        TestApp::spawn_with(Arc::new(database), adjust).await
    }

    pub async fn spawn_with(
        data: Arc<TestDatabase>,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.directory().to_owned(),
            database_url: Some(DatabaseUrl::new(data.url())),
            database_max_connections: 4,
            database_replica_urls: Vec::new(),
            schema: assent::store::Schema::Migrate,
            // The suite checks answers, not deadlines, on a machine that may be busy: a Check's
            // read gets more than the default 50 ms before it is answered degraded (the
            // default is what tests/replicas/partition.rs holds to).
            store_timeouts: assent::store::StoreTimeouts {
                read: Duration::from_secs(2),
                ..Default::default()
            },
            decision_log: LogMode::All,
            decision_log_queue: 10_000,
            // Each server its own: two may run on one database at once.
            decision_log_dir: data.directory().join(format!(
                "decision-log-{}",
                SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
            decision_log_backlog_bytes: 1 << 30,
            decision_log_retention_days: 400,
            decision_log_database_url: None,
            cache: CacheSettings::default(),
            consent_expiry_sweep: Some(Duration::from_millis(250)),
            checkpoints: None,
            state_check_interval: None,
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            console: None,
            traces: None,
            subject_hash_key: None,
            tls: None,
            tokens: None,
            client_scopes: Default::default(),
            ext_authz: Default::default(),
            limits: Default::default(),
        };
        adjust(&mut settings);
        let application = Application::build(settings).await.unwrap();
        let address = application.local_addr();
        let console = application.console_addr();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async {
            let _ = signal.await;
        }));
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestApp {
            address,
            console,
            data,
            channel,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// A server on a fresh database that signs checkpoints with a new key (named
    /// [`TEST_ORIGIN`]), written to `audit-signer.key` in its data directory.
    pub async fn spawn_signing() -> TestApp {
        let database = TestDatabase::create(Backend::from_env()).await;
        let key_file = write_signer_key(database.directory());
        TestApp::spawn_signing_with(Arc::new(database), key_file).await
    }

    /// A server on `data` that signs checkpoints with the signer key in `key_file`, on demand
    /// only (SignCheckpoint, ExportSubject, and once at start), publishing them to
    /// [`TestApp::checkpoint_dir`].
    pub async fn spawn_signing_with(data: Arc<TestDatabase>, key_file: PathBuf) -> TestApp {
        let directory = checkpoint_dir(&data);
        TestApp::spawn_with(data, |settings| {
            settings.checkpoints = Some(CheckpointSettings {
                key_file,
                directory,
                interval: None,
            });
        })
        .await
    }

    /// Where a [`TestApp::spawn_signing`] server publishes its checkpoints.
    pub fn checkpoint_dir(&self) -> PathBuf {
        checkpoint_dir(&self.data)
    }

    /// A server on a fresh database that authenticates every call by a bearer token (HS256,
    /// the development key of [`token`]).
    pub async fn spawn_with_tokens() -> TestApp {
        TestApp::spawn_adjusted(|settings| settings.tokens = Some(token_settings())).await
    }

    /// A server on a fresh database serving the console on loopback, open (no authentication)
    /// or, with `tokens`, to bearer tokens in the `authorization` header; other settings
    /// adjusted by `adjust`.
    pub async fn spawn_console(tokens: bool, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        TestApp::spawn_adjusted(|settings| {
            adjust(settings);
            settings.console = Some(assent::console::ConsoleSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                token_header: http::header::AUTHORIZATION,
            });
            if tokens {
                settings.tokens = Some(token_settings());
            }
        })
        .await
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn decisions(&self) -> DecisionsClient<Channel> {
        DecisionsClient::new(self.channel())
    }

    pub fn subjects(&self) -> SubjectsClient<Channel> {
        SubjectsClient::new(self.channel())
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel())
    }

    pub fn changes(&self) -> ChangesClient<Channel> {
        ChangesClient::new(self.channel())
    }

    pub fn policies(&self) -> PoliciesClient<Channel> {
        PoliciesClient::new(self.channel())
    }

    pub fn retention(&self) -> RetentionClient<Channel> {
        RetentionClient::new(self.channel())
    }

    pub fn backend(&self) -> Backend {
        self.data.backend
    }

    /// A connection of its own to the server's database, as another process would have.
    pub async fn direct_connection(&self) -> DirectConnection {
        DirectConnection::open(&self.data).await
    }

    /// The decision log as the server reads it.
    pub async fn decision_log(&self) -> DecisionLogReader {
        DecisionLogReader::open(&self.data).await
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts the server down gracefully, waits until its store is closed, and hands back the
    /// data directory.
    pub async fn stop(mut self) -> Arc<TestDatabase> {
        self.begin_shutdown();
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server did not stop within 20 s")
            .unwrap()
            .unwrap();
        self.data.clone()
    }

    /// A Watch from now, heartbeats every 100 ms, once its first heartbeat came: open, holding
    /// its admission slot and its place among its caller's streams.
    pub async fn open_watch(&self) -> tonic::Streaming<proto::WatchResponse> {
        let mut watch = self
            .changes()
            .watch(watch_request())
            .await
            .unwrap()
            .into_inner();
        watch.message().await.unwrap().unwrap();
        watch
    }

    /// Creates (or updates) a subject with a plan; returns the revision.
    pub async fn upsert(&self, subject_id: &str, plan: proto::Plan) -> String {
        self.subjects()
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id: subject_id.into(),
                plan: Some(plan as i32),
                actor: actor(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .revision
    }

    pub async fn set_choice(
        &self,
        subject_id: &str,
        purpose: proto::Purpose,
        choice: proto::Choice,
    ) -> Result<String, tonic::Status> {
        self.subjects()
            .set_choice(proto::SetChoiceRequest {
                subject_id: subject_id.into(),
                purpose: purpose as i32,
                choice: choice as i32,
                actor: actor(),
                ..Default::default()
            })
            .await
            .map(|response| response.into_inner().revision)
    }

    /// Records the subject's rating of a conversation (feedback), as support would.
    pub async fn rate(&self, subject_id: &str, conversation_id: &str, rating: proto::Rating) {
        self.subjects()
            .record_feedback(proto::RecordFeedbackRequest {
                subject_id: subject_id.into(),
                conversation_id: conversation_id.into(),
                rating: rating as i32,
                actor: actor(),
            })
            .await
            .unwrap();
    }

    pub async fn check(&self, subject_id: &str, purpose: proto::Purpose) -> proto::CheckResponse {
        self.decisions()
            .check(check_request(subject_id, purpose))
            .await
            .unwrap()
            .into_inner()
    }

    /// A Check with `require_audit`: answered once its decision is committed to the log.
    pub async fn audited_check(
        &self,
        subject_id: &str,
        purpose: proto::Purpose,
    ) -> proto::CheckResponse {
        self.decisions()
            .check(proto::CheckRequest {
                require_audit: true,
                ..check_request(subject_id, purpose)
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn all_events(&self, subject_id: Option<&str>) -> Vec<proto::AuditEvent> {
        all_events(self.channel(), subject_id).await
    }

    pub async fn verify_chain(&self) -> proto::VerifyChainResponse {
        self.audit()
            .verify_chain(proto::VerifyChainRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

/// The origin (signer key name) of the checkpoints of a [`TestApp::spawn_signing`] server.
pub const TEST_ORIGIN: &str = "assent.test/audit";

/// Writes a new signer key named [`TEST_ORIGIN`] to `audit-signer.key` in `directory`; returns
/// the file.
pub fn write_signer_key(directory: &Path) -> PathBuf {
    let (signer, _) = assent::audit::note::generate_key(TEST_ORIGIN).unwrap();
    let key_file = directory.join("audit-signer.key");
    std::fs::write(&key_file, format!("{signer}\n")).unwrap();
    key_file
}

fn checkpoint_dir(data: &TestDatabase) -> PathBuf {
    data.directory().join("checkpoints")
}

/// Every audit event (of one subject, or all), following the pages to the end.
pub async fn all_events(channel: Channel, subject_id: Option<&str>) -> Vec<proto::AuditEvent> {
    let mut audit = AuditClient::new(channel);
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_events(proto::ListEventsRequest {
                subject_id: subject_id.map(str::to_owned),
                page_size: 1_000,
                page_token,
                newest_first: false,
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            return events;
        }
    }
}

pub type DecisionRow = (String, String, String, Option<i64>, String, String);

fn decision_row(record: assent::audit::DecisionRecord) -> DecisionRow {
    (
        record.subject_id,
        record.purpose.as_str().to_owned(),
        record.rule.into_owned(),
        record.revision.map(|revision| revision as i64),
        record.caller,
        record.trace_id,
    )
}

/// The decision log of a test database as the server reads it (the rows of `decision_log`
/// and, on SQLite, the shipped segments), through a store of the test's own.
pub struct DecisionLogReader(assent::store::Store);

impl DecisionLogReader {
    pub async fn open(database: &TestDatabase) -> DecisionLogReader {
        DecisionLogReader(
            assent::store::Store::open(database.location())
                .await
                .unwrap(),
        )
    }

    /// Subject, purpose, rule, revision, caller and trace id of a recorded decision.
    pub async fn row(&self, decision_id: &str) -> Option<DecisionRow> {
        let query = assent::store::DecisionQuery {
            decision_id: Some(decision_id.to_owned()),
            ..assent::store::DecisionQuery::all(2)
        };
        let mut found = self.0.decisions(&query).await.unwrap();
        assert!(
            found.len() < 2,
            "the decision {decision_id} is recorded twice"
        );
        found.pop().map(decision_row)
    }

    /// Every recorded decision about `subject_id`, oldest first, as [`DecisionLogReader::row`]
    /// has it.
    pub async fn rows_of(&self, subject_id: &str) -> Vec<DecisionRow> {
        let query = assent::store::DecisionQuery {
            subject_id: Some(assent::domain::SubjectId::parse(subject_id).unwrap()),
            ..assent::store::DecisionQuery::all(u32::MAX)
        };
        let found = self.0.decisions(&query).await.unwrap();
        found.into_iter().map(decision_row).collect()
    }

    pub async fn count(&self) -> u64 {
        self.0.count_decisions().await.unwrap()
    }

    /// Every recorded decision.
    pub async fn all(&self) -> Vec<assent::audit::DecisionRecord> {
        self.0
            .decisions(&assent::store::DecisionQuery::all(u32::MAX))
            .await
            .unwrap()
    }

    /// Inserts `record` as a `require_audit` decision is (in its day's partition).
    pub async fn insert(&self, record: &assent::audit::DecisionRecord) {
        self.0
            .insert_decisions(std::slice::from_ref(record), true)
            .await
            .unwrap();
    }

    pub async fn close(self) {
        self.0.close().await;
    }
}

/// A connection to a test database that bypasses the server.
pub enum DirectConnection {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl DirectConnection {
    /// A connection of the test's own to `database`, past the server.
    pub async fn open(database: &TestDatabase) -> DirectConnection {
        let url = database.url();
        match database.backend {
            Backend::Sqlite => {
                DirectConnection::Sqlite(sqlx::SqliteConnection::connect(&url).await.unwrap())
            }
            Backend::Postgres => {
                DirectConnection::Postgres(sqlx::PgConnection::connect(&url).await.unwrap())
            }
        }
    }

    pub async fn execute(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            DirectConnection::Sqlite(connection) => sqlx::query(sql)
                .execute(connection)
                .await
                .map(|done| done.rows_affected()),
            DirectConnection::Postgres(connection) => sqlx::query(sql)
                .execute(connection)
                .await
                .map(|done| done.rows_affected()),
        }
    }

    /// Drops the triggers that make `audit_events` append-only, as someone with write access to
    /// the database could.
    pub async fn drop_audit_guards(&mut self) {
        let statements: &[&str] = match self {
            DirectConnection::Sqlite(_) => &[
                "DROP TRIGGER audit_events_append_only_update",
                "DROP TRIGGER audit_events_append_only_delete",
                "DROP TRIGGER audit_payloads_no_update",
            ],
            DirectConnection::Postgres(_) => &[
                "DROP TRIGGER audit_events_append_only ON audit_events",
                "DROP TRIGGER audit_payloads_no_update ON audit_payloads",
            ],
        };
        for statement in statements {
            self.execute(statement).await.unwrap();
        }
    }

    /// Takes the lock every write to `table` needs and keeps it until `release` (on SQLite,
    /// the lock of the whole database).
    pub async fn hold_write_lock(&mut self, table: &str) {
        match self {
            DirectConnection::Sqlite(_) => {
                self.execute("BEGIN IMMEDIATE").await.unwrap();
            }
            DirectConnection::Postgres(_) => {
                self.execute("BEGIN").await.unwrap();
                self.execute(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn count(&mut self, table: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
        let (count,): (i64,) = match self {
            DirectConnection::Sqlite(connection) => {
                sqlx::query_as(sql).fetch_one(connection).await.unwrap()
            }
            DirectConnection::Postgres(connection) => {
                sqlx::query_as(sql).fetch_one(connection).await.unwrap()
            }
        };
        count
    }

    pub async fn release(mut self) {
        self.execute("ROLLBACK").await.unwrap();
        match self {
            DirectConnection::Sqlite(connection) => connection.close().await.unwrap(),
            DirectConnection::Postgres(connection) => connection.close().await.unwrap(),
        }
    }

    pub async fn close(self) {
        match self {
            DirectConnection::Sqlite(connection) => connection.close().await.unwrap(),
            DirectConnection::Postgres(connection) => connection.close().await.unwrap(),
        }
    }
}

const TOKEN_ISSUER: &str = "https://auth.test";
const TOKEN_AUDIENCE: &str = "assent";
const TOKEN_SECRET: &str = "a-development-secret-of-at-least-32-bytes";

fn token_settings() -> TokenSettings {
    TokenSettings {
        jwks_file: None,
        hs256_secret: Some(TOKEN_SECRET.to_owned()),
        issuer: TOKEN_ISSUER.to_owned(),
        audience: TOKEN_AUDIENCE.to_owned(),
        leeway_seconds: 30,
    }
}

/// A token a [`TestApp::spawn_with_tokens`] server accepts, naming `caller` with `scopes`
/// (space-separated), valid for five minutes.
pub fn token(caller: &str, scopes: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "sub": caller,
        "scope": scopes,
        "iat": now,
        "exp": now + 300,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .unwrap()
}

/// `message` as a request carrying the bearer `token`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn actor() -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: "support:tester".into(),
        reason: "integration test".into(),
    })
}

/// An UpsertSubject of `subject_id` on the Free plan, by the test's operator.
pub fn upsert_request(subject_id: &str) -> proto::UpsertSubjectRequest {
    proto::UpsertSubjectRequest {
        subject_id: subject_id.into(),
        plan: Some(proto::Plan::Free as i32),
        actor: actor(),
        ..Default::default()
    }
}

/// A Watch from now, with a heartbeat every 100 ms.
pub fn watch_request() -> proto::WatchRequest {
    proto::WatchRequest {
        heartbeat_interval_ms: 100,
        ..Default::default()
    }
}

pub fn check_request(subject_id: &str, purpose: proto::Purpose) -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: subject_id.into(),
        purpose: purpose as i32,
        ..Default::default()
    }
}

/// Asserts a call failed with `code` and a message starting with `field`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    field: &str,
) {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "message: {}", status.message());
    assert!(
        status.message().starts_with(field),
        "the message {:?} does not start with {field:?}",
        status.message()
    );
}
