//! Several `assent serve` processes sharing PostgreSQL and Redis on loopback, as replicas run in
//! production: freshness across replicas, and what happens when Redis or PostgreSQL goes away.
//!
//! Every test has its own database and its own Redis key prefix. Outages are made with a TCP
//! proxy in front of the real server, so other tests keep their PostgreSQL and Redis. The read
//! replica tests (`read_replicas.rs`) use a primary and streaming replica of their own, started by
//! `scripts/ensure-postgres-replica`.

#[path = "../support/database_roles.rs"]
mod database_roles;
#[path = "../support/process.rs"]
mod process;
#[path = "../support/proxy.rs"]
mod proxy;

mod checkpoints;
mod forgery;
mod local_cache;
mod partition;
mod read_replicas;
mod redis_cluster;
mod redis_sentinel;
mod roles;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Choice, Plan, Purpose, consistency::Requirement};
use assent::store::testing::{Backend, TestDatabase};
use tonic::transport::Channel;

use process::ServerProcess;
use proxy::FaultProxy;

/// The Redis entry key every cluster's replicas share, as a deployment's do.
const ENTRY_KEY: &str = "the redis entry key of the replica tests (32+)";

pub(crate) fn redis_url() -> String {
    std::env::var("ASSENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `host:port` of a URL such as `postgres://u:p@127.0.0.1:5432/db` or `redis://127.0.0.1:6379`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap()
}

fn redirect(url: &str, to: SocketAddr) -> String {
    url.replacen(authority(url), &to.to_string(), 1)
}

async fn proxy_for(url: &str) -> FaultProxy {
    let target = tokio::net::lookup_host(authority(url))
        .await
        .unwrap()
        .next()
        .unwrap();
    FaultProxy::start(target).await
}

pub(crate) struct Options {
    pub(crate) replicas: usize,
    pub(crate) redis: bool,
    pub(crate) poll_interval_ms: u64,
    pub(crate) redis_through: Option<SocketAddr>,
    pub(crate) postgres_through: Option<SocketAddr>,
    /// More `ASSENT_*` settings of every replica.
    pub(crate) settings: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            replicas: 3,
            redis: true,
            poll_interval_ms: 100,
            redis_through: None,
            postgres_through: None,
            settings: Vec::new(),
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) replicas: Vec<ServerProcess>,
    pub(crate) decisions: Vec<DecisionsClient<Channel>>,
    pub(crate) subjects: Vec<SubjectsClient<Channel>>,
    pub(crate) database: TestDatabase,
    /// The Redis key prefix of this cluster.
    pub(crate) prefix: String,
    settings: Vec<(&'static str, String)>,
}

impl Cluster {
    pub(crate) async fn start(database: TestDatabase, options: Options) -> Cluster {
        let prefix = format!("assent-test-{}", uuid::Uuid::now_v7().simple());
        let database_url = match options.postgres_through {
            Some(proxy) => redirect(&database.url(), proxy),
            None => database.url(),
        };
        let mut settings = vec![
            ("ASSENT_DATABASE_URL", database_url),
            ("ASSENT_DECISION_LOG", "off".to_owned()),
            (
                "ASSENT_CHANGE_POLL_INTERVAL_MS",
                options.poll_interval_ms.to_string(),
            ),
            ("ASSENT_REDIS_PREFIX", prefix.clone()),
            ("ASSENT_REDIS_ENTRY_KEY", ENTRY_KEY.to_owned()),
        ];
        if options.redis {
            let url = match options.redis_through {
                Some(proxy) => redirect(&redis_url(), proxy),
                None => redis_url(),
            };
            settings.push(("ASSENT_REDIS_URL", url));
        }
        settings.extend(options.settings);
        let mut cluster = Cluster {
            replicas: Vec::new(),
            decisions: Vec::new(),
            subjects: Vec::new(),
            database,
            prefix,
            settings,
        };
        cluster.spawn(options.replicas).await;
        cluster
    }

    async fn spawn(&mut self, replicas: usize) {
        self.replicas = (0..replicas)
            .map(|_| ServerProcess::start(&self.settings))
            .collect();
        self.decisions.clear();
        self.subjects.clear();
        for replica in &self.replicas {
            let channel = replica.channel().await;
            self.decisions.push(DecisionsClient::new(channel.clone()));
            self.subjects.push(SubjectsClient::new(channel));
        }
    }

    /// Stops every replica (SIGTERM) and starts as many new ones with the same settings.
    pub(crate) async fn restart(&mut self) {
        let count = self.replicas.len();
        for replica in self.replicas.drain(..) {
            replica.stop();
        }
        self.spawn(count).await;
    }

    pub(crate) async fn upsert(&mut self, replica: usize, subject_id: &str, plan: Plan) -> String {
        self.subjects[replica]
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

    pub(crate) async fn set_choice(
        &mut self,
        replica: usize,
        subject_id: &str,
        purpose: Purpose,
        choice: Choice,
    ) -> Result<proto::WriteResponse, tonic::Status> {
        self.subjects[replica]
            .set_choice(proto::SetChoiceRequest {
                subject_id: subject_id.into(),
                purpose: purpose as i32,
                choice: choice as i32,
                actor: actor(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn check(
        &mut self,
        replica: usize,
        subject_id: &str,
        purpose: Purpose,
        token: Option<&str>,
    ) -> Result<proto::CheckResponse, tonic::Status> {
        let request = proto::CheckRequest {
            subject_id: subject_id.into(),
            purpose: purpose as i32,
            consistency: token.map(|token| proto::Consistency {
                requirement: Some(Requirement::AtLeastAsFresh(token.to_owned())),
            }),
            ..Default::default()
        };
        self.decisions[replica]
            .check(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) fn stop(self) {
        for replica in self.replicas {
            replica.stop();
        }
    }
}

pub(crate) fn actor() -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: "replica-tests".into(),
        reason: String::new(),
    })
}

/// The marketing e-mail rule a choice leads to.
pub(crate) fn email_rule(choice: Choice) -> &'static str {
    if choice == Choice::Granted {
        "E1"
    } else {
        "E2"
    }
}

pub(crate) fn flip(choice: Choice) -> Choice {
    if choice == Choice::Granted {
        Choice::Refused
    } else {
        Choice::Granted
    }
}

pub(crate) fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

/// A write on one replica, then a Check with the write's revision on the two others: the answer
/// reflects the write, every time (1,000 trials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_token_makes_every_replica_reflect_the_write() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let mut cluster = Cluster::start(database, Options::default()).await;
    let subjects: Vec<String> = (0..20).map(|index| format!("fresh-{index}")).collect();
    let mut current = HashMap::new();
    for subject_id in &subjects {
        cluster.upsert(0, subject_id, Plan::Free).await;
        current.insert(subject_id.clone(), Choice::Refused);
    }
    // Warm every replica's cache, so a stale entry would be there to be served.
    for replica in 0..3 {
        for subject_id in &subjects {
            cluster
                .check(replica, subject_id, Purpose::MarketingEmail, None)
                .await
                .unwrap();
        }
    }
    let mut stale = Vec::new();
    for trial in 0..1_000 {
        let subject_id = &subjects[trial % subjects.len()];
        let choice = flip(current[subject_id]);
        current.insert(subject_id.clone(), choice);
        let writer = trial % 3;
        let written = cluster
            .set_choice(writer, subject_id, Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        assert!(written.changed);
        for reader in [(writer + 1) % 3, (writer + 2) % 3] {
            let answer = cluster
                .check(
                    reader,
                    subject_id,
                    Purpose::MarketingEmail,
                    Some(&written.revision),
                )
                .await
                .unwrap();
            if answer.rule != email_rule(choice) {
                stale.push(format!(
                    "trial {trial}: replica {reader} answered {}",
                    answer.rule
                ));
            }
        }
    }
    assert!(stale.is_empty(), "{} stale answers: {stale:?}", stale.len());
    cluster.stop();
}

/// Without a token, another replica reflects a write once the announcement arrives: measured
/// from the write's acknowledgement to the first answer that reflects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reflect_a_write_without_a_token_soon_after() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let mut cluster = Cluster::start(database, Options::default()).await;
    cluster.upsert(0, "lagging", Plan::Free).await;
    let mut choice = Choice::Refused;
    let mut lags = Vec::new();
    for trial in 0..200 {
        cluster
            .check(1, "lagging", Purpose::MarketingEmail, None)
            .await
            .unwrap();
        choice = flip(choice);
        cluster
            .set_choice(trial % 2 * 2, "lagging", Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let written = Instant::now();
        loop {
            let answer = cluster
                .check(1, "lagging", Purpose::MarketingEmail, None)
                .await
                .unwrap();
            if answer.rule == email_rule(choice) {
                lags.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "trial {trial}: never reflected"
            );
        }
    }
    lags.sort();
    eprintln!(
        "replica lag without a token over {} writes: p50 {:?}, p99 {:?}, max {:?}",
        lags.len(),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().unwrap()
    );
    cluster.stop();
}

/// Without Redis, PostgreSQL's NOTIFY carries the announcements: with the change log read only
/// every 5 s, a write on one replica is still reflected on another well before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_postgres_notify_announces_changes() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        replicas: 2,
        redis: false,
        poll_interval_ms: 5_000,
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    cluster.upsert(0, "notified", Plan::Free).await;
    let mut choice = Choice::Refused;
    let mut lags = Vec::new();
    for _ in 0..20 {
        cluster
            .check(1, "notified", Purpose::MarketingEmail, None)
            .await
            .unwrap();
        choice = flip(choice);
        cluster
            .set_choice(0, "notified", Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let written = Instant::now();
        while cluster
            .check(1, "notified", Purpose::MarketingEmail, None)
            .await
            .unwrap()
            .rule
            != email_rule(choice)
        {
            assert!(written.elapsed() < Duration::from_secs(10));
        }
        lags.push(written.elapsed());
    }
    lags.sort();
    eprintln!(
        "replica lag through NOTIFY: p50 {:?}, max {:?}",
        percentile(&lags, 0.5),
        lags.last().unwrap()
    );
    assert!(
        percentile(&lags, 0.5) < Duration::from_millis(2_500),
        "announcements did not arrive; only the 5 s change-log reads did: {lags:?}"
    );
    cluster.stop();
}

/// One write, then checks on every replica, with and without the write's token.
async fn outage_round(
    cluster: &mut Cluster,
    subjects: &[String],
    current: &mut HashMap<String, Choice>,
    trial: usize,
) {
    let subject_id = &subjects[trial % subjects.len()];
    let choice = flip(current[subject_id]);
    current.insert(subject_id.clone(), choice);
    let written = cluster
        .set_choice(trial % 3, subject_id, Purpose::MarketingEmail, choice)
        .await
        .unwrap();
    for reader in 0..3 {
        let with_token = cluster
            .check(
                reader,
                subject_id,
                Purpose::MarketingEmail,
                Some(&written.revision),
            )
            .await
            .unwrap_or_else(|status| panic!("trial {trial}: a check failed: {status}"));
        assert_eq!(
            with_token.rule,
            email_rule(choice),
            "trial {trial}, replica {reader}"
        );
        assert!(!with_token.degraded);
        let without = cluster
            .check(reader, subject_id, Purpose::ModelTraining, None)
            .await
            .unwrap_or_else(|status| panic!("trial {trial}: a check failed: {status}"));
        assert_eq!(without.rule, "T6");
    }
}

/// Redis goes away mid-load and comes back. No Check fails, every answer given with a token is
/// right, writes made during the outage reach every replica (through the change log), and once
/// Redis is back the replicas use its announcements again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_no_answer() {
    let redis = proxy_for(&redis_url()).await;
    let database = TestDatabase::create(Backend::Postgres).await;
    let options = Options {
        redis_through: Some(redis.address()),
        poll_interval_ms: 2_000,
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    let subjects: Vec<String> = (0..10).map(|index| format!("outage-{index}")).collect();
    let mut current = HashMap::new();
    for subject_id in &subjects {
        cluster.upsert(0, subject_id, Plan::Free).await;
        current.insert(subject_id.clone(), Choice::Refused);
    }

    for trial in 0..50 {
        outage_round(&mut cluster, &subjects, &mut current, trial).await;
    }
    redis.cut();
    for trial in 50..100 {
        outage_round(&mut cluster, &subjects, &mut current, trial).await;
    }
    redis.restore().await;
    for trial in 100..150 {
        outage_round(&mut cluster, &subjects, &mut current, trial).await;
    }

    // Recovered: writes are announced through Redis again, far sooner than the 2 s change-log
    // reads would tell (three fast ones in a row rule out a lucky read).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fast_in_a_row = 0;
    let mut choice = current[&subjects[0]];
    while fast_in_a_row < 3 {
        assert!(
            Instant::now() < deadline,
            "announcements did not come back after the outage"
        );
        cluster
            .check(1, &subjects[0], Purpose::MarketingEmail, None)
            .await
            .unwrap();
        choice = flip(choice);
        cluster
            .set_choice(0, &subjects[0], Purpose::MarketingEmail, choice)
            .await
            .unwrap();
        let written = Instant::now();
        loop {
            let answer = cluster
                .check(1, &subjects[0], Purpose::MarketingEmail, None)
                .await
                .unwrap();
            if answer.rule == email_rule(choice) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if written.elapsed() < Duration::from_millis(200) {
            fast_in_a_row += 1;
        } else {
            fast_in_a_row = 0;
        }
    }
    cluster.stop();
}

/// PostgreSQL goes away. Subjects in the cache keep their exact answers; others get the
/// fail-safe answer (DENY / STATE_UNAVAILABLE, degraded; service delivery ALLOW, degraded);
/// writes fail UNAVAILABLE. When PostgreSQL is back, everything works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_keeps_cached_answers_and_fails_safe() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let postgres = proxy_for(&database.url()).await;
    let options = Options {
        replicas: 2,
        postgres_through: Some(postgres.address()),
        ..Options::default()
    };
    let mut cluster = Cluster::start(database, options).await;
    let purposes = [
        Purpose::ModelTraining,
        Purpose::Memory,
        Purpose::ServiceDelivery,
    ];
    let mut cached = HashMap::new();
    for index in 0..5 {
        let subject_id = format!("cached-{index}");
        let plan = [Plan::Free, Plan::Team][index % 2];
        let revision = cluster.upsert(0, &subject_id, plan).await;
        for replica in 0..2 {
            for purpose in purposes {
                // At the write's revision: without it, replica 1 may still answer (and cache)
                // the state before the write, which its announcement replaces afterwards.
                let answer = cluster
                    .check(replica, &subject_id, purpose, Some(&revision))
                    .await
                    .unwrap();
                cached.insert((replica, subject_id.clone(), purpose), answer.rule);
            }
        }
    }
    let mut last = String::new();
    for index in 0..3 {
        last = cluster
            .upsert(0, &format!("uncached-{index}"), Plan::Free)
            .await;
    }
    // Replica 1 has applied them before the cut: a subject it has not heard of yet is one it
    // may answer as unknown (DENY) without asking the store.
    let applied = assent::revision::Revision::parse_token(&last)
        .unwrap()
        .sequence() as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while process::scrape(&cluster.replicas[1].admin_address)
        .await
        .get("assent_cache_applied_revision")
        .copied()
        .unwrap_or(0.0)
        < applied
    {
        assert!(Instant::now() < deadline, "replica 1 did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    postgres.cut();
    for ((replica, subject_id, purpose), rule) in &cached {
        let answer = cluster
            .check(*replica, subject_id, *purpose, None)
            .await
            .unwrap();
        assert_eq!(
            &answer.rule, rule,
            "{subject_id} {purpose:?} on replica {replica}"
        );
        assert!(!answer.degraded);
    }
    for index in 0..3 {
        let subject_id = format!("uncached-{index}");
        let training = cluster
            .check(1, &subject_id, Purpose::ModelTraining, None)
            .await
            .unwrap();
        assert_eq!(
            (training.decision(), training.reason(), training.degraded),
            (proto::Decision::Deny, proto::Reason::StateUnavailable, true)
        );
        let delivery = cluster
            .check(1, &subject_id, Purpose::ServiceDelivery, None)
            .await
            .unwrap();
        assert_eq!(
            (delivery.decision(), delivery.reason(), delivery.degraded),
            (
                proto::Decision::Allow,
                proto::Reason::StateUnavailable,
                true
            )
        );
    }
    let refused = cluster
        .set_choice(0, "cached-0", Purpose::Memory, Choice::Refused)
        .await
        .expect_err("a write was acknowledged without the store");
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "{}",
        refused.message()
    );

    postgres.restore().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = loop {
        match cluster
            .set_choice(0, "cached-0", Purpose::Memory, Choice::Refused)
            .await
        {
            Ok(written) => break written,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(Instant::now() < deadline, "writes did not recover");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Replica 1 reconnects on its own; until it has, a read may still be cut short at the
    // read deadline (UNAVAILABLE with a token, the degraded answer without).
    let memory = loop {
        match cluster
            .check(1, "cached-0", Purpose::Memory, Some(&written.revision))
            .await
        {
            Ok(memory) => break memory,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(Instant::now() < deadline, "reads did not recover");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(memory.rule, "M1");
    let uncached = loop {
        let uncached = cluster
            .check(1, "uncached-0", Purpose::ModelTraining, None)
            .await
            .unwrap();
        if !uncached.degraded || Instant::now() > deadline {
            break uncached;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((uncached.rule.as_str(), uncached.degraded), ("T6", false));
    cluster.stop();
}

/// The Check calls answered OK so far by the server whose admin port is `admin`.
async fn checks_answered(admin: &str) -> u64 {
    let series = "assent_grpc_requests_total{method=\"assent.v1.Decisions/Check\",code=\"OK\"}";
    process::scrape(admin)
        .await
        .get(series)
        .copied()
        .unwrap_or(0.0) as u64
}

/// Three replicas behind one client-side balanced channel (`assent_client`), callers
/// retrying unanswered Checks; one replica is killed (SIGKILL) mid-load. Every Check is
/// answered, none waits longer than the retry budget allows, and before the kill the calls
/// spread over all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_callers_no_answer() {
    use assent_client::{Replicas, Retry};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let database = TestDatabase::create(Backend::Postgres).await;
    let mut cluster = Cluster::start(database, Options::default()).await;
    cluster.upsert(0, "alice", Plan::Free).await;
    let endpoints = cluster
        .replicas
        .iter()
        .map(|replica| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", replica.address))
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
        })
        .collect();
    let replicas = Replicas::connect(endpoints);
    let retry = Retry::default();
    let running = Arc::new(AtomicBool::new(true));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let decisions = DecisionsClient::new(replicas.channel());
        let running = running.clone();
        callers.push(tokio::spawn(async move {
            // (calls, calls that needed more than one try, failures, slowest call)
            let mut tally = (0_u64, 0_u64, Vec::new(), Duration::ZERO);
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut tries = 0;
                let answer = retry
                    .run(|| {
                        tries += 1;
                        let mut decisions = decisions.clone();
                        async move {
                            let mut request = tonic::Request::new(proto::CheckRequest {
                                subject_id: "alice".into(),
                                purpose: Purpose::ModelTraining as i32,
                                ..Default::default()
                            });
                            request.set_timeout(Duration::from_secs(1));
                            decisions.check(request).await
                        }
                    })
                    .await;
                tally.0 += 1;
                tally.1 += u64::from(tries > 1);
                if let Err(status) = answer {
                    tally.2.push(status);
                }
                tally.3 = tally.3.max(started.elapsed());
            }
            tally
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut before = Vec::new();
    for replica in &cluster.replicas {
        before.push(checks_answered(&replica.admin_address).await);
    }
    let killed = cluster.replicas.remove(1);
    killed.kill();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    running.store(false, Ordering::Relaxed);
    let (mut calls, mut retried, mut failures, mut slowest) = (0, 0, Vec::new(), Duration::ZERO);
    for caller in callers {
        let tally = caller.await.unwrap();
        calls += tally.0;
        retried += tally.1;
        failures.extend(tally.2);
        slowest = slowest.max(tally.3);
    }
    let mut after = Vec::new();
    for replica in &cluster.replicas {
        after.push(checks_answered(&replica.admin_address).await);
    }
    println!(
        "kill one of 3 replicas: {calls} Checks, {retried} needed a retry, {} failed, slowest \
         {slowest:?}; Checks per replica before the kill {before:?}, survivors after {after:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "unanswered after retries: {failures:?}"
    );
    assert!(
        before.iter().all(|answered| *answered > 10),
        "calls did not spread over the replicas: {before:?}"
    );
    assert!(
        after[0] > before[0] && after[1] > before[2],
        "the survivors took the load"
    );
    // Budget: 4 tries of at most the 1 s deadline, 70 ms of backoff.
    assert!(
        slowest < Duration::from_millis(4_070),
        "slowest {slowest:?}"
    );
}

/// TLS to the store and to Redis: PostgreSQL with `sslmode=require`, Redis at a `rediss://`
/// address (a redis-server that listens for TLS only, its certificate from a test CA that the
/// server trusts through `SSL_CERT_FILE`). A write and a Check go through both, and PostgreSQL
/// reports the server's connections as encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_redis_are_reached_over_tls() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use sqlx::Connection;

    let directory = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "assent test CA");
    let authority = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &authority)
        .unwrap();
    let ca = write("ca.pem", &authority.pem());
    let cert = write("redis.pem", &certificate.pem());
    let key = write("redis.key", &key.serialize_pem());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port, "--bind", "127.0.0.1"])
        .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
        .args(["--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/ensure-redis installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let database = TestDatabase::create(Backend::Postgres).await;
    let separator = if database.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let prefix = format!("assent-tls-{}", uuid::Uuid::now_v7().simple());
    let server = ServerProcess::start(&[
        (
            "ASSENT_DATABASE_URL",
            format!("{}{separator}sslmode=require", database.url()),
        ),
        ("ASSENT_REDIS_URL", format!("rediss://localhost:{port}")),
        ("ASSENT_REDIS_PREFIX", prefix.clone()),
        ("SSL_CERT_FILE", ca.clone()),
        // This test is about TLS, not latency: under CI's load a first read, on a connection
        // whose TLS handshake was just made, outlasted the default 50 ms and the Check was
        // answered degraded (U1); so could the Redis fill.
        ("ASSENT_STORE_READ_TIMEOUT_MS", "1000".to_owned()),
        ("ASSENT_REDIS_TIMEOUT_MS", "1000".to_owned()),
    ]);
    let channel = server.channel().await;
    let mut subjects = SubjectsClient::new(channel.clone());
    subjects
        .upsert_subject(proto::UpsertSubjectRequest {
            subject_id: "tls-subject".into(),
            plan: Some(Plan::Free as i32),
            actor: actor(),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = DecisionsClient::new(channel)
        .check(proto::CheckRequest {
            subject_id: "tls-subject".into(),
            purpose: Purpose::ModelTraining as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.rule, "T6");

    // The Check's miss filled Redis (in the background), which speaks TLS only.
    let deadline = Instant::now() + Duration::from_secs(5);
    let keys = loop {
        let scan = std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-h", "localhost", "-p", &port])
            .args(["--scan", "--pattern", &format!("{prefix}*")])
            .output()
            .unwrap();
        let keys = format!(
            "{}{}",
            String::from_utf8_lossy(&scan.stdout),
            String::from_utf8_lossy(&scan.stderr)
        );
        if keys.contains(&format!("{prefix}:subject:")) || Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // PostgreSQL's view of the server's connections.
    let mut admin = sqlx::PgConnection::connect(&database.url()).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let (encrypted, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    server.stop();
    redis.kill().unwrap();
    redis.wait().unwrap();
    // The key names a keyed hash of the subject id, never the id.
    assert!(
        keys.contains(&format!("{prefix}:subject:")) && !keys.contains("tls-subject"),
        "Redis keys: {keys:?}"
    );
    assert!(
        encrypted > 0 && plain == 0,
        "{encrypted} encrypted, {plain} plain"
    );
}
