//! Server replicas whose shared cache is a Redis Cluster (`scripts/ensure-redis-cluster`: three
//! masters and three replicas on 127.0.0.1:7000-7005): entries shared and changes announced
//! across the cluster's nodes, and the failover of a master under load.
//!
//! The two tests take the cluster in turn (one of them crashes a master), and the cluster is
//! made whole again after each (the script restarts a dead node, which rejoins as a replica).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assent::cache::{RedisEntryKey, SharedCache, SharedLookup, SharedSettings};
use assent::proto::{self, Choice, Plan, Purpose, consistency::Requirement};
use assent::revision::Revision;
use assent::store::DatabaseUrl;
use assent::store::testing::{Backend, TestDatabase};

use crate::{Cluster, ENTRY_KEY, Options, email_rule, flip, percentile, process};

/// One test at a time on the Redis Cluster.
static REDIS_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the cluster, or restarts its nodes that are down, and waits until it is whole.
fn ensure_cluster() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-redis-cluster");
    let status = std::process::Command::new(script)
        .status()
        .expect("scripts/ensure-redis-cluster runs");
    assert!(status.success(), "scripts/ensure-redis-cluster failed");
}

/// Makes the cluster whole again when a test ends, even by a panic.
struct RestoreCluster;

impl Drop for RestoreCluster {
    fn drop(&mut self) {
        ensure_cluster();
    }
}

fn node_ports() -> Vec<u16> {
    let base: u16 = std::env::var("ASSENT_REDIS_CLUSTER_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(7000);
    (base..base + 6).collect()
}

/// `redis_url` with every node as a seed, `first` first (the one the announcements are
/// listened to on, until it is lost).
fn seeds(first: u16) -> String {
    std::iter::once(first)
        .chain(node_ports().into_iter().filter(|port| *port != first))
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A plain connection to one node, for the cluster's own commands.
fn node(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()
}

fn key_slot(key: &str) -> u16 {
    let mut node = node_ports().into_iter().find_map(node).unwrap();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut node)
        .unwrap()
}

/// The port of the master serving `slot`, as `CLUSTER NODES` of a node that answers says.
fn master_of(slot: u16) -> u16 {
    let mut node = node_ports().into_iter().find_map(node).unwrap();
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut node).unwrap();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let serves = fields[8..].iter().any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            match (start.parse::<u16>(), end.parse::<u16>()) {
                (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                _ => false,
            }
        });
        if serves {
            let address = fields[1].split('@').next().unwrap();
            return address.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
    panic!("no master serves slot {slot}: {nodes}");
}

/// The settings of the replicas on the cluster, under their own key prefix. Reads of the store
/// get a second (not 50 ms): these tests are about Redis, and while it fails over the misses go
/// to PostgreSQL on a loaded machine, where a read cut short would give a degraded answer.
fn cluster_options(replicas: usize, poll_interval_ms: u64, prefix: &str, first: u16) -> Options {
    Options {
        replicas,
        redis: false,
        poll_interval_ms,
        settings: vec![
            ("ASSENT_REDIS_URL", seeds(first)),
            ("ASSENT_REDIS_CLUSTER", "true".to_owned()),
            ("ASSENT_REDIS_PREFIX", prefix.to_owned()),
            ("ASSENT_STORE_READ_TIMEOUT_MS", "1000".to_owned()),
        ],
        ..Options::default()
    }
}

/// How many Checks replica `replica` answered from Redis.
async fn redis_hits(cluster: &Cluster, replica: usize) -> u64 {
    process::scrape(&cluster.replicas[replica].admin_address)
        .await
        .get("assent_cache_answers_total{tier=\"redis\"}")
        .copied()
        .unwrap_or(0.0) as u64
}

/// Subjects written on replica 0 and read there (which shares them through Redis), then read on
/// replica 1 once it has applied the writes: how many replica 1 found in Redis.
async fn shared_between_replicas(
    cluster: &mut Cluster,
    shared: &SharedCache,
    subjects: &[String],
) -> u64 {
    let mut last = String::new();
    for subject_id in subjects {
        last = cluster.upsert(0, subject_id, Plan::Free).await;
    }
    // Each write's tombstone reaches its master first: a fill after it is then not replaced by
    // it (a tombstone at the same revision wins).
    let client = redis::cluster::ClusterClient::new(
        node_ports()
            .into_iter()
            .map(|port| format!("redis://127.0.0.1:{port}")),
    )
    .unwrap();
    let mut connection = client.get_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for subject_id in subjects {
        while !raw_value(&mut connection, &shared.key(subject_id))
            .await
            .ends_with(" -")
        {
            assert!(Instant::now() < deadline, "no tombstone for {subject_id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for subject_id in subjects {
        let answer = cluster
            .check(0, subject_id, Purpose::MarketingEmail, Some(&last))
            .await
            .unwrap();
        assert_eq!(answer.rule, email_rule(Choice::Refused));
    }
    for subject_id in subjects {
        while !matches!(
            shared.get(subject_id, Revision::new(u64::MAX)).await,
            SharedLookup::Hit(_)
        ) {
            assert!(
                Instant::now() < deadline,
                "{subject_id} never reached redis"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Replica 1 has applied every write, so none of the entries is beyond what it has seen.
    let admin = cluster.replicas[1].admin_address.clone();
    while process::scrape(&admin)
        .await
        .get("assent_cache_applied_revision")
        .copied()
        .unwrap_or(0.0)
        < sequence(&last) as f64
    {
        assert!(Instant::now() < deadline, "replica 1 did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = redis_hits(cluster, 1).await;
    for subject_id in subjects {
        let answer = cluster
            .check(1, subject_id, Purpose::MarketingEmail, None)
            .await
            .unwrap();
        assert_eq!(answer.rule, email_rule(Choice::Refused));
    }
    redis_hits(cluster, 1).await - before
}

/// The shared tier as the replicas see it: the same prefix and entry key.
fn shared(prefix: &str) -> SharedCache {
    SharedCache::new(SharedSettings {
        url: DatabaseUrl::new(seeds(node_ports()[0])),
        cluster: true,
        prefix: prefix.to_owned(),
        time_to_live: Duration::from_secs(600),
        timeout: Duration::from_millis(500),
        entry_key: RedisEntryKey::new(ENTRY_KEY),
    })
    .unwrap()
}

fn prefix() -> String {
    format!("assent-cluster-{}", uuid::Uuid::now_v7().simple())
}

fn sequence(token: &str) -> u64 {
    Revision::parse_token(token).unwrap().sequence()
}

/// The value under a subject's key, read through a cluster connection.
async fn raw_value(connection: &mut redis::cluster_async::ClusterConnection, key: &str) -> String {
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<String>>(connection)
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Entries read by one replica are Redis hits on another, whichever master holds them, and a
/// write on one replica reaches another through the cluster's pub/sub long before its
/// change-log read (every 5 s here) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_redis_cluster_share_entries_and_announcements() {
    let _cluster = REDIS_CLUSTER.lock().await;
    ensure_cluster();
    let prefix = prefix();
    let shared = shared(&prefix);
    let subjects: Vec<String> = (0..24).map(|index| format!("spread-{index}")).collect();
    let mut masters: Vec<u16> = subjects
        .iter()
        .map(|subject_id| master_of(key_slot(&shared.key(subject_id))))
        .collect();
    masters.sort_unstable();
    masters.dedup();
    assert_eq!(masters.len(), 3, "the subjects' keys are on every master");

    let database = TestDatabase::create(Backend::Postgres).await;
    let mut options = cluster_options(2, 5_000, &prefix, node_ports()[0]);
    // Every entry must reach Redis: a fill that fails is not tried again (the replica answers
    // from memory after it), and a call that outlasts the default 50 ms fails on a loaded
    // machine (as in CI, tests running side by side) and leaves Redis alone for a moment.
    options
        .settings
        .push(("ASSENT_REDIS_TIMEOUT_MS", "1000".to_owned()));
    let mut cluster = Cluster::start(database, options).await;
    // Replica 1 reads from Redis once it listens to its announcements: until then, one subject
    // at a time.
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 0.. {
        let warm_up = [format!("warm-up-{attempt}")];
        if shared_between_replicas(&mut cluster, &shared, &warm_up).await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "replica 1 never read from redis");
    }
    let hits = shared_between_replicas(&mut cluster, &shared, &subjects).await;
    assert_eq!(
        hits,
        subjects.len() as u64,
        "answers from redis on replica 1"
    );

    // Announcements: a write on replica 0, answered on replica 1 without a token.
    let mut lags = Vec::new();
    for subject_id in subjects.iter().take(12) {
        let choice = flip(Choice::Refused);
        cluster
            .set_choice(0, subject_id, Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let written = Instant::now();
        while cluster
            .check(1, subject_id, Purpose::MarketingEmail, None)
            .await
            .unwrap()
            .rule
            != email_rule(choice)
        {
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "{subject_id} never reflected"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lags.push(written.elapsed());
    }
    lags.sort();
    eprintln!(
        "replica lag through a Redis Cluster's pub/sub: p50 {:?}, max {:?}",
        percentile(&lags, 0.5),
        lags.last().unwrap()
    );
    assert!(
        percentile(&lags, 0.5) < Duration::from_millis(1_000),
        "announcements did not arrive; only the 5 s change-log reads did: {lags:?}"
    );
    cluster.stop();
}

/// A write as acknowledged: its revision, the choice it set (`None`: the subject's creation),
/// and when the acknowledgement arrived.
#[derive(Clone)]
struct Write {
    revision: u64,
    token: String,
    choice: Option<Choice>,
    acknowledged: Instant,
}

/// A Check as answered.
struct Observation {
    replica: usize,
    subject_id: String,
    started: Instant,
    /// The revision demanded.
    token: Option<u64>,
    answer: Result<proto::CheckResponse, tonic::Status>,
}

/// How stale an answer without a token may be: the change-log read interval of these
/// replicas (1 s: every replica reads the store's changes at least that often, whatever
/// Redis does) and a margin for a loaded machine.
const STALENESS_BOUND: Duration = Duration::from_secs(3);

/// Three replicas on the cluster, each listening for announcements on the master that serves
/// the channel's slot; writes on replica 0, Checks without a revision token on replica 1 and
/// with one on replica 2. That master crashes (`DEBUG SEGFAULT`) mid-load, with some of the
/// subjects' keys: no Check is answered wrong or too stale, none fails, writes go on, and
/// afterwards the other replicas reflect new writes. Prints how long the cluster took to serve
/// the slot again, replica 1 to reflect a write made after the crash, and the replicas to hear
/// announcements again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_failover_under_load_costs_no_answer() {
    let _cluster = REDIS_CLUSTER.lock().await;
    ensure_cluster();
    let _restore = RestoreCluster;
    let prefix = prefix();
    let channel = format!("{prefix}:changes");
    let victim = master_of(key_slot(&channel));
    let shared = shared(&prefix);
    // Half the subjects on the master that dies, half elsewhere.
    let (mut on_victim, mut elsewhere) = (Vec::new(), Vec::new());
    for index in 0.. {
        let subject_id = format!("failover-{index}");
        let list = if master_of(key_slot(&shared.key(&subject_id))) == victim {
            &mut on_victim
        } else {
            &mut elsewhere
        };
        if list.len() < 4 {
            list.push(subject_id);
        }
        if on_victim.len() == 4 && elsewhere.len() == 4 {
            break;
        }
    }
    let subjects: Vec<String> = on_victim.iter().chain(&elsewhere).cloned().collect();

    let database = TestDatabase::create(Backend::Postgres).await;
    let mut cluster = Cluster::start(database, cluster_options(3, 1_000, &prefix, victim)).await;
    let history: Arc<Mutex<HashMap<String, Vec<Write>>>> = Arc::default();
    for subject_id in &subjects {
        let token = cluster.upsert(0, subject_id, Plan::Free).await;
        let created = Write {
            revision: sequence(&token),
            token,
            choice: None,
            acknowledged: Instant::now(),
        };
        let written = cluster
            .set_choice(0, subject_id, Purpose::MarketingEmail, Choice::Refused)
            .await
            .unwrap();
        let refused = Write {
            revision: sequence(&written.revision),
            token: written.revision,
            choice: Some(Choice::Refused),
            acknowledged: Instant::now(),
        };
        history
            .lock()
            .unwrap()
            .insert(subject_id.clone(), vec![created, refused]);
    }

    cluster.upsert(0, "announced", Plan::Free).await;
    let running = Arc::new(AtomicBool::new(true));
    let load_started = Instant::now();
    let write_failures = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (mut subjects_client, history, running, failures, subjects) = (
            cluster.subjects[0].clone(),
            history.clone(),
            running.clone(),
            write_failures.clone(),
            subjects.clone(),
        );
        tokio::spawn(async move {
            let mut turn = 0;
            while running.load(Ordering::Relaxed) {
                let subject_id = &subjects[turn % subjects.len()];
                turn += 1;
                let current = history.lock().unwrap()[subject_id]
                    .last()
                    .and_then(|write| write.choice)
                    .unwrap_or(Choice::Refused);
                let choice = flip(current);
                let written = subjects_client
                    .set_choice(proto::SetChoiceRequest {
                        subject_id: subject_id.clone(),
                        purpose: Purpose::MarketingEmail as i32,
                        choice: choice as i32,
                        actor: crate::actor(),
                        ..Default::default()
                    })
                    .await;
                match written {
                    Ok(written) => {
                        let token = written.into_inner().revision;
                        let write = Write {
                            revision: sequence(&token),
                            token,
                            choice: Some(choice),
                            acknowledged: Instant::now(),
                        };
                        history
                            .lock()
                            .unwrap()
                            .get_mut(subject_id)
                            .unwrap()
                            .push(write);
                    }
                    Err(status) => {
                        failures.lock().unwrap().push(status);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut checkers = Vec::new();
    for replica in [1, 2] {
        let (mut decisions, history, running, subjects) = (
            cluster.decisions[replica].clone(),
            history.clone(),
            running.clone(),
            subjects.clone(),
        );
        checkers.push(tokio::spawn(async move {
            let mut observations = Vec::new();
            let mut turn = replica;
            while running.load(Ordering::Relaxed) {
                let subject_id = subjects[turn % subjects.len()].clone();
                // Replica 2's Checks demand the subject's latest acknowledged write; replica
                // 1's none, so that it learns of changes only from announcements and its
                // change-log reads (a Check with a later token wakes the reader at once).
                let token = (replica == 2).then(|| {
                    let history = history.lock().unwrap();
                    let latest = history[&subject_id].last().unwrap();
                    (latest.revision, latest.token.clone())
                });
                turn += 1;
                let started = Instant::now();
                let answer = decisions
                    .check(proto::CheckRequest {
                        subject_id: subject_id.clone(),
                        purpose: Purpose::MarketingEmail as i32,
                        consistency: token.as_ref().map(|(_, token)| proto::Consistency {
                            requirement: Some(Requirement::AtLeastAsFresh(token.clone())),
                        }),
                        ..Default::default()
                    })
                    .await
                    .map(tonic::Response::into_inner);
                observations.push(Observation {
                    replica,
                    subject_id,
                    started,
                    token: token.map(|(revision, _)| revision),
                    answer,
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            observations
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let output = std::process::Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &victim.to_string(),
            "DEBUG",
            "SEGFAULT",
        ])
        .output()
        .expect("redis-cli runs");
    let killed = Instant::now();
    // From the crash on: when the replicas listen to the cluster's announcements again, on
    // another node (not only the change log, read every second): three writes in a row
    // reflected on replica 1 within 200 ms (by the change log alone, one in 125 would be).
    let announced = {
        let (mut subjects_client, decisions) =
            (cluster.subjects[0].clone(), cluster.decisions[1].clone());
        tokio::spawn(async move {
            let check = move || {
                let request = proto::CheckRequest {
                    subject_id: "announced".into(),
                    purpose: Purpose::MarketingEmail as i32,
                    ..Default::default()
                };
                let mut decisions = decisions.clone();
                async move { decisions.check(request).await.unwrap().into_inner().rule }
            };
            let mut choice = Choice::Refused;
            let mut fast_in_a_row = 0;
            while fast_in_a_row < 3 {
                assert!(
                    killed.elapsed() < Duration::from_secs(40),
                    "announcements did not come back after the failover"
                );
                check().await;
                choice = flip(choice);
                subjects_client
                    .set_choice(proto::SetChoiceRequest {
                        subject_id: "announced".into(),
                        purpose: Purpose::MarketingEmail as i32,
                        choice: choice as i32,
                        actor: crate::actor(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let written = Instant::now();
                while check().await != email_rule(choice) {
                    assert!(written.elapsed() < STALENESS_BOUND, "a write not reflected");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if written.elapsed() < Duration::from_millis(200) {
                    fast_in_a_row += 1;
                } else {
                    fast_in_a_row = 0;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            killed.elapsed()
        })
    };
    while node(victim).is_some_and(|mut node| redis::cmd("PING").query::<String>(&mut node).is_ok())
    {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the master on {victim} did not crash: {output:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Until the cluster serves the channel's slot again (a replica promoted), as a client sees it.
    let survivors = redis::cluster::ClusterClient::new(
        node_ports()
            .into_iter()
            .filter(|port| *port != victim)
            .map(|port| format!("redis://127.0.0.1:{port}")),
    )
    .unwrap();
    let mut probe = None;
    let served_again = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the cluster did not fail over within 30 s"
        );
        if probe.is_none() {
            probe = survivors.get_async_connection().await.ok();
        }
        if let Some(connection) = probe.as_mut() {
            let mut command = redis::cmd("SET");
            command.arg(&channel).arg("probe").arg("EX").arg(60);
            let set = command.query_async::<()>(connection);
            match tokio::time::timeout(Duration::from_millis(500), set).await {
                Ok(Ok(())) => break killed.elapsed(),
                Ok(Err(_)) | Err(_) => probe = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The load goes on through and past the failover.
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.store(false, Ordering::Relaxed);
    let load_lasted = load_started.elapsed();
    writer.await.unwrap();
    let mut observations = Vec::new();
    for checker in checkers {
        observations.extend(checker.await.unwrap());
    }
    let write_failures = write_failures.lock().unwrap().clone();
    assert!(
        write_failures.is_empty(),
        "writes failed: {write_failures:?}"
    );

    // Every answer against what was written.
    let history = history.lock().unwrap().clone();
    let mut wrong = Vec::new();
    let mut failed = Vec::new();
    // The first write acknowledged after the crash, per subject, and when a Check without a
    // token on another replica first reflected it (or a later write).
    let mut first_after: HashMap<&str, &Write> = HashMap::new();
    for (subject_id, writes) in &history {
        if let Some(write) = writes.iter().find(|write| write.acknowledged > killed) {
            first_after.insert(subject_id, write);
        }
    }
    let mut reflected_after_crash: Option<Duration> = None;
    for observation in &observations {
        let answer = match &observation.answer {
            Ok(answer) => answer,
            Err(status) => {
                failed.push(format!("replica {}: {status}", observation.replica));
                continue;
            }
        };
        let writes = &history[&observation.subject_id];
        let revision = match Revision::parse_token(&answer.revision) {
            Ok(revision) => revision.sequence(),
            Err(_) => {
                wrong.push(format!("no revision: {answer:?}"));
                continue;
            }
        };
        let describe = || {
            format!(
                "replica {} {} at {:?} after the crash (token {:?}): {} at revision {revision}, \
                 degraded {}",
                observation.replica,
                observation.subject_id,
                observation.started.checked_duration_since(killed),
                observation.token,
                answer.rule,
                answer.degraded
            )
        };
        if answer.degraded {
            wrong.push(format!("degraded: {}", describe()));
            continue;
        }
        // The answer is the state of the write it names.
        match writes.iter().find(|write| write.revision == revision) {
            Some(write) => {
                if let Some(choice) = write.choice
                    && answer.rule != email_rule(choice)
                {
                    wrong.push(format!("not the state it names: {}", describe()));
                }
            }
            None => wrong.push(format!("a revision never written: {}", describe())),
        }
        match observation.token {
            Some(token) if revision < token => {
                wrong.push(format!("older than its token: {}", describe()));
            }
            Some(_) => {}
            None => {
                // No write acknowledged longer than the bound before the Check is newer.
                let due = writes.iter().rev().find(|write| {
                    observation
                        .started
                        .checked_duration_since(write.acknowledged)
                        .is_some_and(|age| age > STALENESS_BOUND)
                });
                if let Some(due) = due
                    && revision < due.revision
                {
                    wrong.push(format!("staler than the bound: {}", describe()));
                }
                if let Some(write) = first_after.get(observation.subject_id.as_str())
                    && observation.started > write.acknowledged
                    && revision >= write.revision
                {
                    let since = observation.started.duration_since(killed);
                    reflected_after_crash =
                        Some(reflected_after_crash.map_or(since, |seen| seen.min(since)));
                }
            }
        }
    }
    let announcing_again = announced.await.unwrap();
    let with_token = observations.iter().filter(|o| o.token.is_some()).count();
    let writes: usize = history.values().map(Vec::len).sum();
    println!(
        "redis cluster failover under load: {} Checks ({with_token} with a token), {writes} \
         writes in {load_lasted:.1?}; {} wrong, {} failed; the master of the channel's slot and of {} of {} \
         subjects crashed: slot served again after {served_again:?}, a write made after the \
         crash reflected without a token on another replica {:?} after it, announcements \
         heard again by {announcing_again:.1?}",
        observations.len(),
        wrong.len(),
        failed.len(),
        on_victim.len(),
        subjects.len(),
        reflected_after_crash,
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {wrong:#?}",
        wrong.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed Checks: {failed:#?}",
        failed.len()
    );
    assert!(
        observations.len() > 200,
        "too few Checks to say anything: {}",
        observations.len()
    );

    // After the failover, writes on replica 0 reach the others, on every subject: at once with
    // the write's token, and without one soon after (announcements or the change log).
    for (index, subject_id) in subjects.iter().enumerate() {
        let current = history[subject_id].last().unwrap().choice.unwrap();
        let choice = flip(current);
        let written = cluster
            .set_choice(0, subject_id, Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let acknowledged = Instant::now();
        for replica in [1, 2] {
            let answer = cluster
                .check(
                    replica,
                    subject_id,
                    Purpose::MarketingEmail,
                    Some(&written.revision),
                )
                .await
                .unwrap();
            assert_eq!(answer.rule, email_rule(choice), "{subject_id} on {replica}");
        }
        let other = index % 2 + 1;
        while cluster
            .check(other, subject_id, Purpose::MarketingEmail, None)
            .await
            .unwrap()
            .rule
            != email_rule(choice)
        {
            assert!(
                acknowledged.elapsed() < STALENESS_BOUND,
                "{subject_id} not reflected on replica {other}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    cluster.stop();
}
