//! PostgreSQL read replicas (`database_replica_urls`) on the primary and streaming replica of
//! `scripts/ensure-postgres-replica` (127.0.0.1:5433 and 5434, started here when absent): a
//! cache miss read from the replica only once it has replayed every revision the server knows
//! committed; with replay paused, with the replica hung or stopped, every answer still exact, from
//! the primary, within a bounded time; each case in the metrics.
//!
//! The tests share the one replica (they pause it, hang it, stop it), so they take turns.

use std::process::Command;
use std::time::{Duration, Instant};

use assent::proto::{Choice, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use sqlx::Connection as _;

use super::{Cluster, Options, email_rule, flip, process, proxy::FaultProxy, redirect};

/// One test at a time on the replica.
static REPLICA_PAIR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/scripts/ensure-postgres-replica"
);

fn port(variable: &str, default: u16) -> u16 {
    std::env::var(variable)
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(default)
}

fn primary_port() -> u16 {
    port("ASSENT_PG_PRIMARY_PORT", 5433)
}

fn replica_port() -> u16 {
    port("ASSENT_PG_REPLICA_PORT", 5434)
}

/// The replica's superuser, for pausing and resuming its replay.
fn replica_superuser() -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", replica_port())
}

/// Runs `scripts/ensure-postgres-replica` with `arguments`: with none, it starts whatever is
/// missing and resumes a paused replay.
fn ensure_replica(arguments: &[&str]) {
    let status = Command::new(SCRIPT)
        .args(arguments)
        .status()
        .expect("cannot run scripts/ensure-postgres-replica");
    assert!(
        status.success(),
        "scripts/ensure-postgres-replica {arguments:?} failed"
    );
}

/// A database on the primary, once it has reached the replica too; and the replica's URL of it.
async fn replicated_database() -> (TestDatabase, String) {
    let admin = format!(
        "postgres://assent:assent@127.0.0.1:{}/postgres",
        primary_port()
    );
    let database = TestDatabase::create_on(Backend::Postgres, &admin).await;
    let replica = redirect(
        &database.url(),
        format!("127.0.0.1:{}", replica_port()).parse().unwrap(),
    );
    let name = database.url().rsplit('/').next().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = async {
            let mut connection = sqlx::PgConnection::connect(&replica_superuser())
                .await
                .ok()?;
            let (found,): (bool,) =
                sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut connection)
                    .await
                    .ok()?;
            Some(found)
        };
        if found.await == Some(true) {
            return (database, replica);
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one statement as the replica's superuser, from a thread of its own (so that it also
/// runs from `Drop`, outside any runtime).
fn on_replica(statement: &'static str) {
    let ran = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut connection = sqlx::PgConnection::connect(&replica_superuser()).await?;
            sqlx::query(statement).execute(&mut connection).await?;
            connection.close().await
        })
    });
    ran.join().unwrap().unwrap();
}

/// WAL replay paused on the replica until dropped, however the test ends.
struct PausedReplay;

impl PausedReplay {
    fn start() -> PausedReplay {
        on_replica("SELECT pg_wal_replay_pause()");
        PausedReplay
    }
}

impl Drop for PausedReplay {
    fn drop(&mut self) {
        on_replica("SELECT pg_wal_replay_resume()");
    }
}

/// The replica stopped until dropped, however the test ends.
struct StoppedReplica;

impl StoppedReplica {
    fn start() -> StoppedReplica {
        ensure_replica(&["stop", "replica"]);
        StoppedReplica
    }
}

impl Drop for StoppedReplica {
    fn drop(&mut self) {
        ensure_replica(&[]);
    }
}

/// A cluster of `servers` reading the replica at `replica_url`, without Redis (so that every
/// cache miss reads PostgreSQL).
async fn cluster(database: TestDatabase, replica_url: String, servers: usize) -> Cluster {
    Cluster::start(
        database,
        Options {
            replicas: servers,
            redis: false,
            settings: vec![("ASSENT_DATABASE_REPLICA_URLS", replica_url)],
            ..Options::default()
        },
    )
    .await
}

fn sequence(token: &str) -> u64 {
    u64::from_str_radix(token.strip_prefix("r1.").unwrap(), 16).unwrap()
}

/// One metric of the server's admin port (0 when absent).
async fn metric(cluster: &Cluster, server: usize, series: &str) -> f64 {
    let samples = process::scrape(&cluster.replicas[server].admin_address).await;
    samples.get(series).copied().unwrap_or(0.0)
}

/// Waits until `series` satisfies `until`, for at most 20 s.
async fn wait_for_metric(
    cluster: &Cluster,
    server: usize,
    series: &str,
    until: impl Fn(f64) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(cluster, server, series).await;
        if until(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} stayed {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until server `server` reads the replica and has seen it replay `revision`.
async fn wait_for_replica(cluster: &Cluster, server: usize, revision: &str) {
    wait_for_metric(
        cluster,
        server,
        r#"assent_replica_usable{replica="0"}"#,
        |usable| usable == 1.0,
    )
    .await;
    let wanted = sequence(revision) as f64;
    wait_for_metric(
        cluster,
        server,
        r#"assent_replica_replayed_revision{replica="0"}"#,
        |replayed| replayed >= wanted,
    )
    .await;
}

/// `count` subjects, each with a marketing e-mail choice; the choices and the last revision.
async fn subjects(cluster: &mut Cluster, count: usize) -> (Vec<(String, Choice)>, String) {
    let mut written = Vec::new();
    let mut revision = String::new();
    for index in 0..count {
        let subject_id = format!("replicated-{index}");
        cluster.upsert(0, &subject_id, Plan::Free).await;
        let choice = if index % 2 == 0 {
            Choice::Granted
        } else {
            Choice::Refused
        };
        revision = cluster
            .set_choice(0, &subject_id, Purpose::MarketingEmail, choice)
            .await
            .unwrap()
            .revision;
        written.push((subject_id, choice));
    }
    (written, revision)
}

const SERVED: &str = r#"assent_replica_served_total{replica="0"}"#;
const SKIPPED_LAG: &str = r#"assent_replica_skipped_total{replica="0",reason="lag"}"#;
const SKIPPED_FAILURE: &str = r#"assent_replica_skipped_total{replica="0",reason="failure"}"#;
const BY_PRIMARY: &str = r#"assent_replica_reads_total{served_by="primary"}"#;
const BY_REPLICA: &str = r#"assent_replica_reads_total{served_by="replica"}"#;

/// With the replica caught up, a cache miss is read from it, and answered right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_misses_are_read_from_a_replica_that_has_caught_up() {
    let _turn = REPLICA_PAIR.lock().await;
    ensure_replica(&[]);
    let (database, replica_url) = replicated_database().await;
    let mut cluster = cluster(database, replica_url, 1).await;
    let (mut written, mut last) = subjects(&mut cluster, 20).await;
    // Twice: the second time on the replica's connections and pages the first one warmed.
    for round in 0..2 {
        if round > 0 {
            for (subject_id, choice) in &mut written {
                *choice = flip(*choice);
                last = cluster
                    .set_choice(0, subject_id, Purpose::MarketingEmail, *choice)
                    .await
                    .unwrap()
                    .revision;
            }
        }
        wait_for_replica(&cluster, 0, &last).await;
        let served_before = metric(&cluster, 0, BY_REPLICA).await;
        // Each write dropped its subject from the server's memory: every Check is a miss.
        let mut latencies = Vec::new();
        for (subject_id, choice) in &written {
            let started = Instant::now();
            let answer = cluster
                .check(0, subject_id, Purpose::MarketingEmail, None)
                .await
                .unwrap();
            latencies.push(started.elapsed());
            assert_eq!(
                answer.rule,
                email_rule(*choice),
                "round {round}: {subject_id}"
            );
        }
        report(
            &format!("a miss read from the replica, round {round}"),
            latencies,
        );
        let served = metric(&cluster, 0, BY_REPLICA).await - served_before;
        assert_eq!(
            served,
            written.len() as f64,
            "round {round}: misses the replica served"
        );
    }
    assert!(metric(&cluster, 0, SERVED).await >= 2.0 * written.len() as f64);
    wait_for_metric(
        &cluster,
        0,
        r#"assent_replica_lag_revisions{replica="0"}"#,
        |lag| lag == 0.0,
    )
    .await;
    cluster.stop();
}

/// With the replica's replay paused, writes go on: every Check (with the write's revision token
/// or without) reflects the write and carries its exact revision, read from the primary; the
/// replica serves nothing it has not replayed, and is counted as skipped for lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_skipped_and_answers_stay_exact() {
    let _turn = REPLICA_PAIR.lock().await;
    ensure_replica(&[]);
    let (database, replica_url) = replicated_database().await;
    let mut cluster = cluster(database, replica_url, 2).await;
    let (mut written, last) = subjects(&mut cluster, 10).await;
    for server in 0..2 {
        wait_for_replica(&cluster, server, &last).await;
    }
    let paused = PausedReplay::start();
    let served_before = [
        metric(&cluster, 0, SERVED).await,
        metric(&cluster, 1, SERVED).await,
    ];
    let mut latencies = Vec::new();
    for trial in 0..60 {
        let (subject_id, choice) = &mut written[trial % 10];
        *choice = flip(*choice);
        let write = cluster
            .set_choice(0, subject_id, Purpose::MarketingEmail, *choice)
            .await
            .unwrap();
        assert!(write.changed);
        // The writing server without a token, and both with it.
        for (server, token) in [
            (0, None),
            (0, Some(&write.revision)),
            (1, Some(&write.revision)),
        ] {
            let started = Instant::now();
            let answer = cluster
                .check(
                    server,
                    subject_id,
                    Purpose::MarketingEmail,
                    token.map(String::as_str),
                )
                .await
                .unwrap();
            if token.is_none() {
                latencies.push(started.elapsed());
            }
            assert_eq!(
                (answer.rule.as_str(), answer.revision.as_str()),
                (email_rule(*choice), write.revision.as_str()),
                "trial {trial}: server {server}, token {token:?}"
            );
        }
    }
    report(
        "a miss with the replica paused (read from the primary)",
        latencies,
    );
    let served_after = [
        metric(&cluster, 0, SERVED).await,
        metric(&cluster, 1, SERVED).await,
    ];
    assert_eq!(
        served_after, served_before,
        "the paused replica served a read"
    );
    assert!(metric(&cluster, 0, SKIPPED_LAG).await > 0.0);
    assert!(metric(&cluster, 0, BY_PRIMARY).await > 0.0);
    wait_for_metric(
        &cluster,
        0,
        r#"assent_replica_lag_revisions{replica="0"}"#,
        |lag| lag >= 1.0,
    )
    .await;
    drop(paused);
    cluster.stop();
}

/// A replica that hangs (a partition), then one that is stopped: every Check is answered right
/// from the primary within a bounded time, and the metrics say the replica was skipped; once it
/// is back, reads go to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_stopped_replica_falls_back_to_the_primary() {
    const BOUND: Duration = Duration::from_secs(1);
    let _turn = REPLICA_PAIR.lock().await;
    ensure_replica(&[]);
    let (database, replica_url) = replicated_database().await;
    let proxy = super::proxy_for(&replica_url).await;
    let through_proxy = redirect(&replica_url, proxy.address());
    let mut cluster = cluster(database, through_proxy, 1).await;
    let (mut written, last) = subjects(&mut cluster, 10).await;
    wait_for_replica(&cluster, 0, &last).await;

    let mut slowest = Duration::ZERO;
    let mut write_and_check = async |cluster: &mut Cluster, written: &mut [(String, Choice)]| {
        for (subject_id, choice) in written.iter_mut() {
            *choice = flip(*choice);
            cluster
                .set_choice(0, subject_id, Purpose::MarketingEmail, *choice)
                .await
                .unwrap();
            let started = Instant::now();
            let answer = cluster
                .check(0, subject_id, Purpose::MarketingEmail, None)
                .await
                .unwrap();
            slowest = slowest.max(started.elapsed());
            assert_eq!(answer.rule, email_rule(*choice), "{subject_id}");
        }
    };

    // Hung: connections accepted, nothing answered.
    hang(&proxy).await;
    let failures = metric(&cluster, 0, SKIPPED_FAILURE).await;
    write_and_check(&mut cluster, &mut written).await;
    assert!(metric(&cluster, 0, SKIPPED_FAILURE).await > failures);
    assert_eq!(
        metric(&cluster, 0, r#"assent_replica_usable{replica="0"}"#).await,
        0.0
    );

    // Back: used again once a probe finds it well.
    proxy.restore().await;
    let (_, revision) = subjects(&mut cluster, 1).await;
    wait_for_replica(&cluster, 0, &revision).await;

    // Stopped.
    let stopped = StoppedReplica::start();
    let failures = metric(&cluster, 0, SKIPPED_FAILURE).await;
    write_and_check(&mut cluster, &mut written).await;
    assert!(metric(&cluster, 0, SKIPPED_FAILURE).await > failures);
    eprintln!("slowest Check with the replica hung or stopped: {slowest:?}");
    assert!(slowest < BOUND, "a Check took {slowest:?}");
    drop(stopped);
    cluster.stop();
}

/// The store's own reads, without a server: `at_least_as_fresh` (`decision_state_at_least`) and
/// a cache miss (`snapshot_at_least`) read the paused replica for a revision it has replayed,
/// and the primary, with the write, for one it has not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reads_a_replica_only_for_revisions_it_has_replayed() {
    use assent::domain::{Actor, SubjectId};
    use assent::policy::{Choice as StoredChoice, Plan as StoredPlan, Purpose as StoredPurpose};
    use assent::store::{
        Command, ConsentMeta, Store, StoreTimeouts, SubjectFields, WriteContext, WriteRequest,
    };

    let _turn = REPLICA_PAIR.lock().await;
    ensure_replica(&[]);
    let (database, replica_url) = replicated_database().await;
    let timeouts = StoreTimeouts {
        // A busy machine: the test is about which server answers, not how fast.
        read: Duration::from_secs(2),
        ..StoreTimeouts::default()
    };
    let store = Store::open_with(
        database.location(),
        timeouts,
        assent::store::Schema::Migrate,
    )
    .await
    .unwrap()
    .with_read_replicas(&[assent::store::DatabaseUrl::new(replica_url)])
    .await
    .unwrap();
    let subject_id = SubjectId::parse("store-read").unwrap();
    let write = async |command| {
        let request = WriteRequest {
            subject_id: subject_id.clone(),
            command,
            context: WriteContext {
                caller: "replica-tests".into(),
                actor: Actor::parse("tester", "").unwrap(),
                trace_id: String::new(),
                policy_version: assent::policy::POLICY_VERSION.to_owned(),
            },
        };
        store.write(&request).await.unwrap().revision
    };
    let set = |choice| Command::SetChoice {
        purpose: StoredPurpose::MarketingEmail,
        choice: Some(choice),
        consent: ConsentMeta::default(),
    };
    write(Command::Upsert(SubjectFields {
        plan: Some(StoredPlan::Free),
        ..SubjectFields::default()
    }))
    .await;
    let granted = write(set(StoredChoice::Granted)).await;
    let served = || store.read_replicas().unwrap().reads_served();
    // Until a probe has found the replica with the schema and the write.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = served().0;
        store
            .decision_state_at_least(&subject_id, None, granted, 64)
            .await
            .unwrap();
        if served().0 > before {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never served a read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let paused = PausedReplay::start();
    let refused = write(set(StoredChoice::Refused)).await;
    let choice_in = |state: Option<assent::policy::SubjectState>| {
        state.unwrap().choices.get(StoredPurpose::MarketingEmail)
    };
    // Demanding the new revision: the primary, with the write.
    let before = served();
    let state = store
        .decision_state_at_least(&subject_id, None, refused, 64)
        .await
        .unwrap();
    assert_eq!(
        (state.revision, choice_in(state.subject)),
        (refused, Some(StoredChoice::Refused))
    );
    let snapshot = store
        .snapshot_at_least(&subject_id, 64, refused)
        .await
        .unwrap();
    assert_eq!(
        (snapshot.revision, choice_in(snapshot.subject)),
        (refused, Some(StoredChoice::Refused))
    );
    assert_eq!(served(), (before.0, before.1 + 2), "(replica, primary)");
    // Demanding the older one: the replica may answer, as of what it replayed.
    let state = store
        .decision_state_at_least(&subject_id, None, granted, 64)
        .await
        .unwrap();
    assert_eq!(
        (state.revision, choice_in(state.subject)),
        (granted, Some(StoredChoice::Granted))
    );
    assert_eq!(served(), (before.0 + 1, before.1 + 2), "(replica, primary)");
    drop(paused);
    store.close().await;
}

/// Prints the median and the slowest of `latencies`.
fn report(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    eprintln!(
        "Checks on {what}: median {:?}, slowest {:?}",
        super::percentile(&latencies, 0.5),
        latencies[latencies.len() - 1]
    );
}

/// Makes the proxy swallow what it is sent: the replica hangs.
async fn hang(proxy: &FaultProxy) {
    proxy.swallow().await;
}
