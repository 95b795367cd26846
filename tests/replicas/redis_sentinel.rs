//! Server replicas whose Redis is a primary and its replica watched by three sentinels
//! (`redis+sentinel://` URL): the primary is killed, the sentinels promote the replica, and the
//! server replicas go on, answer right throughout, and use Redis again on the new primary.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assent::cache::{RedisEntryKey, SharedCache, SharedSettings};
use assent::proto::{Choice, Plan, Purpose};
use assent::revision::Revision;
use assent::store::DatabaseUrl;
use assent::store::testing::{Backend, TestDatabase};

use crate::{Cluster, ENTRY_KEY, Options, email_rule, flip, process};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()
}

/// The Redis processes of a test, killed when it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server(directory: &Path, arguments: &[String]) -> Child {
    Command::new("redis-server")
        .args(arguments)
        .current_dir(directory)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/ensure-redis installs it)")
}

fn data_node(directory: &Path, port: u16, replica_of: Option<u16>) -> Child {
    let directory = directory.join(port.to_string());
    std::fs::create_dir_all(&directory).unwrap();
    let mut arguments: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(primary) = replica_of {
        arguments.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned()]);
        arguments.push(primary.to_string());
    }
    redis_server(&directory, &arguments)
}

fn sentinel(directory: &Path, port: u16, primary: u16) -> Child {
    let directory = directory.join(port.to_string());
    std::fs::create_dir_all(&directory).unwrap();
    let config = directory.join("sentinel.conf");
    std::fs::write(
        &config,
        format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor assent 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds assent 1000\n\
             sentinel failover-timeout assent 5000\n"
        ),
    )
    .unwrap();
    redis_server(
        &directory,
        &[config.to_str().unwrap().to_owned(), "--sentinel".to_owned()],
    )
}

/// What `command` answers on `port`, if the node answers.
fn ask(port: u16, command: &redis::Cmd) -> Option<redis::Value> {
    command.query(&mut node(port)?).ok()
}

/// The primary's port the sentinel on `port` names.
fn named_primary(port: u16) -> Option<u16> {
    let value = ask(
        port,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("assent"),
    )?;
    let (_, primary): (String, String) = redis::from_redis_value(value).ok()?;
    primary.parse().ok()
}

fn value_at(port: u16, key: &str) -> String {
    ask(port, redis::cmd("GET").arg(key))
        .and_then(|value| redis::from_redis_value::<Option<String>>(value).ok())
        .flatten()
        .unwrap_or_default()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn redis_hits(admin: &str) -> u64 {
    process::scrape(admin)
        .await
        .get("assent_cache_answers_total{tier=\"redis\"}")
        .copied()
        .unwrap_or(0.0) as u64
}

/// A subject written on replica 0, read there (which shares it through Redis, on `primary`),
/// then read on replica 1: whether replica 1 found it in Redis.
async fn shared_through(cluster: &mut Cluster, primary: u16, subject_id: &str) -> bool {
    let shared = SharedCache::new(SharedSettings {
        url: DatabaseUrl::new(format!("redis://127.0.0.1:{primary}")),
        cluster: false,
        prefix: cluster.prefix.clone(),
        time_to_live: Duration::from_secs(600),
        timeout: Duration::from_millis(500),
        entry_key: RedisEntryKey::new(ENTRY_KEY),
    })
    .unwrap();
    let key = shared.key(subject_id);
    let token = cluster.upsert(0, subject_id, Plan::Free).await;
    // The write's tombstone first: a fill after it is then not replaced by it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !value_at(primary, &key).ends_with(" -") {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster
        .check(0, subject_id, Purpose::MarketingEmail, Some(&token))
        .await
        .unwrap();
    while value_at(primary, &key).ends_with(" -") || value_at(primary, &key).is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin = cluster.replicas[1].admin_address.clone();
    let sequence = Revision::parse_token(&token).unwrap().sequence() as f64;
    while process::scrape(&admin)
        .await
        .get("assent_cache_applied_revision")
        .copied()
        .unwrap_or(0.0)
        < sequence
    {
        assert!(
            Instant::now() < deadline,
            "replica 1 did not apply the write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = redis_hits(&admin).await;
    let answer = cluster
        .check(1, subject_id, Purpose::MarketingEmail, None)
        .await
        .unwrap();
    assert_eq!(answer.rule, email_rule(Choice::Refused));
    redis_hits(&admin).await > before
}

/// A primary, its replica and three sentinels; two server replicas on a `redis+sentinel://`
/// URL share entries through the primary. The primary is killed: Checks stay right (with a
/// token, and without one soon after each write), and once the sentinels have promoted the
/// replica the server replicas share entries through it. Prints both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinels_a_failover_moves_the_cache_to_the_new_primary() {
    let directory = tempfile::tempdir().unwrap();
    let (primary, replica) = (free_port(), free_port());
    let sentinels = [free_port(), free_port(), free_port()];
    let mut processes = Processes(vec![
        data_node(directory.path(), primary, None),
        data_node(directory.path(), replica, Some(primary)),
    ]);
    wait_until("the replica did not sync", Duration::from_secs(20), || {
        ask(replica, redis::cmd("INFO").arg("replication"))
            .and_then(|value| redis::from_redis_value::<String>(value).ok())
            .is_some_and(|info| info.contains("master_link_status:up"))
    });
    for port in sentinels {
        processes.0.push(sentinel(directory.path(), port, primary));
    }
    // Each sentinel knows the replica and the two other sentinels: a failover can happen.
    wait_until(
        "the sentinels did not find each other",
        Duration::from_secs(30),
        || {
            sentinels.iter().all(|port| {
                let count = |subcommand: &str| {
                    ask(*port, redis::cmd("SENTINEL").arg(subcommand).arg("assent"))
                        .and_then(|value| redis::from_redis_value::<Vec<redis::Value>>(value).ok())
                        .map_or(0, |entries| entries.len())
                };
                count("REPLICAS") == 1 && count("SENTINELS") == 2
            })
        },
    );

    let url = format!(
        "redis+sentinel://{}/assent",
        sentinels
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        redis: false,
        poll_interval_ms: 1_000,
        // A second for a read of the store, as in redis_cluster.rs: misses go there while
        // Redis fails over.
        settings: vec![
            ("ASSENT_REDIS_URL", url),
            ("ASSENT_STORE_READ_TIMEOUT_MS", "1000".to_owned()),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    while !shared_through(&mut cluster, primary, &format!("before-{attempt}")).await {
        assert!(
            Instant::now() < deadline,
            "entries never shared through the primary"
        );
        attempt += 1;
    }

    cluster.upsert(0, "flipped", Plan::Free).await;
    let mut choice = Choice::Refused;
    processes.0.remove(0).kill().unwrap();
    let killed = Instant::now();
    let mut promoted = None;
    let mut shared_again = None;
    let mut round = 0;
    while promoted.is_none() || shared_again.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no failover within a minute: promoted {promoted:?}, shared again {shared_again:?}"
        );
        // A write, reflected at once with its token, and soon without.
        choice = flip(choice);
        let written = cluster
            .set_choice(0, "flipped", Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let answer = cluster
            .check(
                1,
                "flipped",
                Purpose::MarketingEmail,
                Some(&written.revision),
            )
            .await
            .unwrap();
        assert_eq!(answer.rule, email_rule(choice));
        assert!(!answer.degraded);
        let acknowledged = Instant::now();
        while cluster
            .check(1, "flipped", Purpose::MarketingEmail, None)
            .await
            .unwrap()
            .rule
            != email_rule(choice)
        {
            assert!(
                acknowledged.elapsed() < Duration::from_secs(3),
                "a write not reflected without a token"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if promoted.is_none()
            && sentinels
                .iter()
                .filter(|port| named_primary(**port) == Some(replica))
                .count()
                >= 2
        {
            promoted = Some(killed.elapsed());
        }
        if promoted.is_some()
            && shared_again.is_none()
            && shared_through(&mut cluster, replica, &format!("after-{round}")).await
        {
            shared_again = Some(killed.elapsed());
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "sentinel failover: the replica promoted {promoted:?} after the primary was killed; \
         entries shared through it {shared_again:?} after; {round} writes meanwhile, each \
         reflected on the other replica"
    );
    cluster.stop();
}
