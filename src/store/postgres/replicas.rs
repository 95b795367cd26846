//! PostgreSQL read replicas: where a Check's cache-miss read and an `at_least_as_fresh` read
//! may go instead of the primary.
//!
//! A replica's answer is used only if it carries the revision the replica had replayed, read in
//! the same statement (the chain head as the replica sees it), and that revision is at least the
//! one the read requires: for a cache miss, the highest revision this server knows committed;
//! for `at_least_as_fresh`, the demanded one. Otherwise, and whenever a replica is slow, fails,
//! is no longer a standby, or is not a copy of this primary, the read goes to the primary.
//! Writes, the chain head of a write, the change log, NOTIFY, the chain's verification and
//! `fully_consistent` reads never come here.
//!
//! Each replica is probed in the background every [`PROBE_INTERVAL`]: it must be a hot standby
//! (`pg_is_in_recovery()`) of the same cluster (`system_identifier`), and the hash of its
//! chain head must be the hash of the primary's event at that sequence, so that a replica of
//! another incarnation of the database (a restored copy, a promoted standby written to) is never
//! read. A replica that fails a read is skipped until a probe finds it well again.
//!
//! Architecture Invariant: a replica's read is used only if it has replayed at least the
//! revision required; writes and `fully_consistent` reads never go to a replica.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{SERVER_KEEPALIVE, SnapshotRead, snapshot_in_one_statement};
use crate::domain::{ConversationId, SubjectId};
use crate::revision::Revision;
use crate::store::rows::from_i64;
use crate::store::sql::Lease;
use crate::store::{DatabaseUrl, DecisionState, Store, StoreError, SubjectSnapshot};

/// How often each replica's health, identity and replay position are read.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The longest a probe may take (off the request path).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a replica's pool may take to hand out a connection, opening one included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest one statement may run on a replica, on its clock.
const STATEMENT_TIMEOUT: &str = "5s";
/// How long a replica found behind the revision a read required is assumed to still be
/// behind any later revision: reads within it go to the primary without asking the replica.
const LAG_RECHECK: Duration = Duration::from_millis(20);

/// Why a replica was not used for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// It had not replayed the revision required.
    Lag,
    /// It failed, was too slow, or its last probe did not find it a healthy standby of this
    /// primary.
    Failure,
}

/// The read replicas of one primary, with their health; cheap to clone.
#[derive(Clone, Debug)]
pub struct ReadReplicas {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    primary: PgPool,
    replicas: Vec<Replica>,
    /// Where the next read starts, so reads spread over the replicas.
    next: AtomicUsize,
    /// The reads that could have gone to a replica, by what served them.
    served_by_replica: AtomicU64,
    served_by_primary: AtomicU64,
    /// When the set was made: the origin of `Replica::lagging_since`.
    started: Instant,
    /// Set when the store closes: the probes stop.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Replica {
    /// Its position in the setting, from 0: the `replica` label of its metrics.
    label: String,
    /// Its URL without the password, for logs.
    name: String,
    options: PgConnectOptions,
    max_connections: u32,
    /// Replaced by a new one when the replica fails (see [`Replica::renew_pool`]).
    pool: Mutex<PgPool>,
    /// Whether reads may go to it: set by a probe that found it a healthy standby of this
    /// primary, cleared by a failed probe or read.
    usable: AtomicBool,
    /// The latest revision it was seen to have replayed.
    replayed: AtomicU64,
    /// How many revisions it was behind the primary at its last probe.
    lag: AtomicU64,
    /// When (µs since `Inner::started`, plus one; 0 for never) a read last found it behind.
    lagging_since: AtomicU64,
    served: AtomicU64,
    skipped_lag: AtomicU64,
    skipped_failure: AtomicU64,
}

/// What a probe of a replica found.
enum Probe {
    /// A standby of this primary, having replayed this far; the primary's head then.
    Healthy { replayed: u64, primary_head: u64 },
    /// Its chain head is not yet on the primary as read (a probe racing the primary's commit):
    /// nothing learnt.
    Inconclusive,
    /// Not a standby of this primary, or a copy whose history differs.
    Foreign(&'static str),
}

impl ReadReplicas {
    /// Pools for `urls` (connected lazily: a replica down at start is only skipped), each probed
    /// once now, then every [`PROBE_INTERVAL`] by a task that ends when the set is dropped.
    pub async fn open(
        primary: PgPool,
        urls: &[DatabaseUrl],
        max_connections: u32,
    ) -> Result<ReadReplicas, StoreError> {
        let mut replicas = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let options = PgConnectOptions::from_str(url.expose())?
                .application_name("assent-replica-read")
                .options([("statement_timeout", STATEMENT_TIMEOUT)])
                .options(SERVER_KEEPALIVE);
            replicas.push(Replica {
                label: index.to_string(),
                name: url.redacted(),
                pool: Mutex::new(new_pool(&options, max_connections)),
                options,
                max_connections,
                usable: AtomicBool::new(false),
                replayed: AtomicU64::new(0),
                lag: AtomicU64::new(0),
                lagging_since: AtomicU64::new(0),
                served: AtomicU64::new(0),
                skipped_lag: AtomicU64::new(0),
                skipped_failure: AtomicU64::new(0),
            });
        }
        let set = ReadReplicas {
            inner: Arc::new(Inner {
                primary,
                replicas,
                next: AtomicUsize::new(0),
                served_by_replica: AtomicU64::new(0),
                served_by_primary: AtomicU64::new(0),
                started: Instant::now(),
                closed: AtomicBool::new(false),
            }),
        };
        set.probe_all().await;
        tokio::spawn(probe_forever(Arc::downgrade(&set.inner)));
        Ok(set)
    }

    /// What the cache keeps of a subject, from a replica that has replayed at least `required`
    /// within `deadline`; `None` when no replica could serve it (the caller reads the primary).
    pub(super) async fn snapshot(
        &self,
        subject_id: &SubjectId,
        max_conversations: usize,
        required: Revision,
        deadline: Duration,
    ) -> Option<SubjectSnapshot> {
        let count = self.inner.replicas.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let replica = &self.inner.replicas[(start + offset) % count];
            match self
                .try_replica(replica, subject_id, max_conversations, required, deadline)
                .await
            {
                Ok(snapshot) => {
                    replica.served.fetch_add(1, Ordering::Relaxed);
                    self.inner.served_by_replica.fetch_add(1, Ordering::Relaxed);
                    return Some(snapshot);
                }
                Err(Skip::Lag) => replica.skipped_lag.fetch_add(1, Ordering::Relaxed),
                Err(Skip::Failure) => replica.skipped_failure.fetch_add(1, Ordering::Relaxed),
            };
        }
        self.inner.served_by_primary.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// How many of the reads that may go to a replica were served by one, and by the primary,
    /// since start.
    pub fn reads_served(&self) -> (u64, u64) {
        (
            self.inner.served_by_replica.load(Ordering::Relaxed),
            self.inner.served_by_primary.load(Ordering::Relaxed),
        )
    }

    /// A read the primary served because it may not go to a replica at all (a conversation
    /// beyond what a snapshot holds): counted with those no replica could serve.
    pub(super) fn served_by_primary(&self) {
        self.inner.served_by_primary.fetch_add(1, Ordering::Relaxed);
    }

    /// One replica's snapshot, if it is usable and has replayed `required`.
    async fn try_replica(
        &self,
        replica: &Replica,
        subject_id: &SubjectId,
        max_conversations: usize,
        required: Revision,
        deadline: Duration,
    ) -> Result<SubjectSnapshot, Skip> {
        if !replica.usable.load(Ordering::Acquire) {
            return Err(Skip::Failure);
        }
        if required.sequence() > replica.replayed.load(Ordering::Acquire)
            && self.lagged_recently(replica)
        {
            return Err(Skip::Lag);
        }
        let read = async {
            let mut lease = lease(&replica.pool()).await?;
            let read = snapshot_in_one_statement(lease.connection(), subject_id, max_conversations)
                .await?;
            lease.done();
            Ok::<SnapshotRead, StoreError>(read)
        };
        let read = match tokio::time::timeout(deadline, read).await {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                self.failed(replica, &error.to_string());
                return Err(Skip::Failure);
            }
            Err(_) => {
                self.failed(replica, &format!("no answer within {deadline:?}"));
                return Err(Skip::Failure);
            }
        };
        if !read.standby {
            // Promoted since its last probe: its rows may be its own history from now on.
            self.failed(replica, "it is no longer a standby");
            return Err(Skip::Failure);
        }
        replica
            .replayed
            .fetch_max(read.head.sequence(), Ordering::AcqRel);
        if read.head < required {
            let since = u64::try_from(self.inner.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            replica.lagging_since.store(since + 1, Ordering::Release);
            return Err(Skip::Lag);
        }
        Ok(read.snapshot)
    }

    /// Whether a read found `replica` behind within the last [`LAG_RECHECK`].
    fn lagged_recently(&self, replica: &Replica) -> bool {
        let since = replica.lagging_since.load(Ordering::Acquire);
        if since == 0 {
            return false;
        }
        let now = u64::try_from(self.inner.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        now.saturating_sub(since - 1) < LAG_RECHECK.as_micros() as u64
    }

    /// A read of `replica` failed: no read goes to it until a probe finds it well.
    fn failed(&self, replica: &Replica, why: &str) {
        if replica.usable.swap(false, Ordering::AcqRel) {
            replica.renew_pool();
            tracing::warn!(
                replica = %replica.name,
                why,
                "a read replica failed; reading the primary until it is well again"
            );
        }
    }

    /// Probes every replica once, at the same time.
    async fn probe_all(&self) {
        let probes = self
            .inner
            .replicas
            .iter()
            .map(|replica| self.probe_and_record(replica));
        futures_util::future::join_all(probes).await;
    }

    /// Probes `replica` and records what it found.
    async fn probe_and_record(&self, replica: &Replica) {
        let probed = tokio::time::timeout(PROBE_TIMEOUT, self.probe(replica))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        match probed {
            Ok(Probe::Healthy {
                replayed,
                primary_head,
            }) => {
                replica.replayed.fetch_max(replayed, Ordering::AcqRel);
                replica
                    .lag
                    .store(primary_head.saturating_sub(replayed), Ordering::Release);
                if !replica.usable.swap(true, Ordering::AcqRel) {
                    tracing::info!(replica = %replica.name, replayed, "a read replica is in use");
                    // Its connections opened now, as the primary's are at start, so that a
                    // read rarely pays for connecting within its short deadline.
                    let pool = replica.pool();
                    let connections = replica.max_connections;
                    tokio::spawn(async move {
                        let opened = futures_util::future::join_all(
                            (0..connections).map(|_| pool.acquire()),
                        )
                        .await;
                        drop(opened);
                    });
                }
            }
            Ok(Probe::Inconclusive) => {}
            Ok(Probe::Foreign(why)) => {
                if replica.usable.swap(false, Ordering::AcqRel) {
                    tracing::error!(replica = %replica.name, why, "a read replica is not used");
                } else {
                    tracing::debug!(replica = %replica.name, why, "a read replica is not used");
                }
            }
            Err(why) => {
                replica.renew_pool();
                if replica.usable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(replica = %replica.name, why, "a read replica is unreachable");
                }
            }
        }
    }

    /// Reads, on the replica, its chain head, whether it is a standby, and its cluster; then, on
    /// the primary, its cluster, its head and the hash of its event at the replica's head.
    async fn probe(&self, replica: &Replica) -> Result<Probe, String> {
        // Leased, so that a connection a timed-out probe leaves waiting is closed, not pooled.
        let mut replica_lease = lease(&replica.pool())
            .await
            .map_err(|error| error.to_string())?;
        let on_replica = sqlx::query(
            "SELECT head.sequence, head.hash, pg_is_in_recovery() AS standby,
                    (pg_control_system()).system_identifier AS system
             FROM audit_chain_head AS head WHERE chain_id = 0",
        )
        .fetch_one(replica_lease.connection())
        .await
        .map_err(|error| error.to_string())?;
        replica_lease.done();
        let replayed: i64 = on_replica.try_get("sequence").map_err(|e| e.to_string())?;
        let hash: String = on_replica.try_get("hash").map_err(|e| e.to_string())?;
        let standby: bool = on_replica.try_get("standby").map_err(|e| e.to_string())?;
        let system: i64 = on_replica.try_get("system").map_err(|e| e.to_string())?;
        let on_primary = sqlx::query(
            "SELECT (SELECT sequence FROM audit_chain_head WHERE chain_id = 0) AS head,
                    (SELECT hash FROM audit_events WHERE sequence = $1) AS hash,
                    (pg_control_system()).system_identifier AS system",
        )
        .bind(replayed);
        let mut primary_lease = lease(&self.inner.primary)
            .await
            .map_err(|error| format!("cannot reach the primary: {error}"))?;
        let on_primary = on_primary
            .fetch_one(primary_lease.connection())
            .await
            .map_err(|error| format!("cannot read the primary: {error}"))?;
        primary_lease.done();
        let primary_head: i64 = on_primary.try_get("head").map_err(|e| e.to_string())?;
        let primary_hash: Option<String> = on_primary.try_get("hash").map_err(|e| e.to_string())?;
        let primary_system: i64 = on_primary.try_get("system").map_err(|e| e.to_string())?;
        if !standby {
            return Ok(Probe::Foreign(
                "it is not a standby (pg_is_in_recovery() is false)",
            ));
        }
        if system != primary_system {
            return Ok(Probe::Foreign(
                "it is not a copy of the primary's cluster (another system_identifier)",
            ));
        }
        let verdict = match (replayed, primary_hash) {
            // The empty chain: nothing to compare.
            (0, _) => None,
            (_, Some(primary_hash)) if primary_hash == hash => None,
            (_, Some(_)) => Some(Probe::Foreign(
                "its audit chain differs from the primary's (another incarnation of the database)",
            )),
            (_, None) if replayed > primary_head => Some(Probe::Inconclusive),
            (_, None) => Some(Probe::Foreign(
                "its chain head is an event the primary does not have",
            )),
        };
        Ok(verdict.unwrap_or(Probe::Healthy {
            replayed: from_i64(replayed),
            primary_head: from_i64(primary_head),
        }))
    }

    /// Closes the replicas' pools.
    pub(super) async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for replica in &self.inner.replicas {
            replica.pool().close().await;
        }
    }
}

/// A pool of lazily opened connections to a replica.
fn new_pool(options: &PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone())
}

impl Replica {
    fn pool(&self) -> PgPool {
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the pool with an empty one, and closes the old one in the background: after a
    /// partition, the connections it kept may wait forever on an answer that will not come,
    /// and each would cost a probe its timeout before the replica is used again.
    fn renew_pool(&self) {
        let fresh = new_pool(&self.options, self.max_connections);
        let old = std::mem::replace(
            &mut *self
                .pool
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            fresh,
        );
        tokio::spawn(async move { old.close().await });
    }
}

/// A connection of `pool`, leased (closed unless the operation says it is done with it). As on
/// the primary, it is taken by a task of its own, so that a connection being opened when the
/// caller gives up still lands in the pool, for the next read.
async fn lease(pool: &PgPool) -> Result<Lease<sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    let connection = tokio::spawn(async move { pool.acquire().await })
        .await
        .unwrap_or(Err(sqlx::Error::PoolClosed))?;
    Ok(Lease::new(connection))
}

/// Probes the replicas of `set` every [`PROBE_INTERVAL`] while the set lives.
async fn probe_forever(set: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(inner) = set
            .upgrade()
            .filter(|inner| !inner.closed.load(Ordering::Acquire))
        else {
            return;
        };
        ReadReplicas { inner }.probe_all().await;
    }
}

impl crate::metrics::Scraped for ReadReplicas {
    fn scrape(&self, scrape: &mut crate::metrics::Scrape<'_>) -> std::fmt::Result {
        let inner = &self.inner;
        scrape.labelled_counters(
            "replica_reads",
            "Reads that may go to a read replica (cache misses, at_least_as_fresh), by what \
             served them (replica, primary)",
            [
                (
                    vec![("served_by", "replica".to_owned())],
                    inner.served_by_replica.load(Ordering::Relaxed),
                ),
                (
                    vec![("served_by", "primary".to_owned())],
                    inner.served_by_primary.load(Ordering::Relaxed),
                ),
            ]
            .into_iter(),
        )?;
        scrape.labelled_counters(
            "replica_served",
            "Reads served by each read replica",
            inner.replicas.iter().map(|replica| {
                (
                    vec![("replica", replica.label.clone())],
                    replica.served.load(Ordering::Relaxed),
                )
            }),
        )?;
        scrape.labelled_counters(
            "replica_skipped",
            "Reads that did not use a read replica, by replica and reason (lag: it had not \
             replayed the revision required; failure: it failed, was slow, or is not a healthy \
             standby of this primary)",
            inner.replicas.iter().flat_map(|replica| {
                [
                    (
                        vec![
                            ("replica", replica.label.clone()),
                            ("reason", "lag".to_owned()),
                        ],
                        replica.skipped_lag.load(Ordering::Relaxed),
                    ),
                    (
                        vec![
                            ("replica", replica.label.clone()),
                            ("reason", "failure".to_owned()),
                        ],
                        replica.skipped_failure.load(Ordering::Relaxed),
                    ),
                ]
            }),
        )?;
        scrape.labelled_gauges(
            "replica_lag_revisions",
            "How many revisions each read replica was behind the primary at its last probe",
            inner.replicas.iter().map(|replica| {
                (
                    vec![("replica", replica.label.clone())],
                    replica.lag.load(Ordering::Relaxed),
                )
            }),
        )?;
        scrape.labelled_gauges(
            "replica_replayed_revision",
            "The latest revision each read replica was seen to have replayed",
            inner.replicas.iter().map(|replica| {
                (
                    vec![("replica", replica.label.clone())],
                    replica.replayed.load(Ordering::Relaxed),
                )
            }),
        )?;
        scrape.labelled_gauges(
            "replica_usable",
            "Whether reads may go to each read replica (1) or it is skipped (0)",
            inner.replicas.iter().map(|replica| {
                (
                    vec![("replica", replica.label.clone())],
                    u64::from(replica.usable.load(Ordering::Relaxed)),
                )
            }),
        )
    }
}

/// How long a read may wait for a replica before it goes to the primary: half the read
/// deadline, so that a replica that hangs costs a read at most that, once (it is then skipped
/// until a probe finds it well), and the primary still has its whole deadline.
fn replica_deadline(read: Duration) -> Duration {
    (read / 2).max(Duration::from_millis(1))
}

impl Store {
    /// This store with read replicas at `urls` (PostgreSQL only: on SQLite the setting is
    /// refused by `config`, and ignored here with an error).
    pub async fn with_read_replicas(self, urls: &[DatabaseUrl]) -> Result<Store, StoreError> {
        if urls.is_empty() {
            return Ok(self);
        }
        match self {
            Store::Postgres(mut store) => {
                let max_connections = store.pool().options().get_max_connections();
                store.replicas =
                    Some(ReadReplicas::open(store.pool().clone(), urls, max_connections).await?);
                Ok(Store::Postgres(store))
            }
            Store::Sqlite(store) => {
                tracing::error!(
                    "read replicas are for PostgreSQL; ignored with the embedded store"
                );
                Ok(Store::Sqlite(store))
            }
        }
    }

    /// The read replicas, if any.
    pub fn read_replicas(&self) -> Option<&ReadReplicas> {
        match self {
            Store::Postgres(store) => store.replicas.as_ref(),
            Store::Sqlite(_) => None,
        }
    }

    /// What the cache keeps of a subject, as [`Store::snapshot`], reflecting at least
    /// `required`: from a read replica that has replayed it, else from the primary. A Check's
    /// read: a replica is waited for at most half the read deadline, the primary the whole.
    pub async fn snapshot_at_least(
        &self,
        subject_id: &SubjectId,
        max_conversations: usize,
        required: Revision,
    ) -> Result<SubjectSnapshot, StoreError> {
        if let Some(replicas) = self.read_replicas() {
            let deadline = replica_deadline(self.timeouts().read);
            let read = crate::store::observed(self, "replica_snapshot", async {
                Ok(replicas
                    .snapshot(subject_id, max_conversations, required, deadline)
                    .await)
            })
            .await?;
            if let Some(snapshot) = read {
                return Ok(snapshot);
            }
        }
        self.snapshot(subject_id, max_conversations).await
    }

    /// What a decision needs, as [`Store::decision_state`], reflecting at least `required` (an
    /// `at_least_as_fresh` check's revision): from a read replica that has replayed it, when the
    /// subject's snapshot there holds the conversation asked about; else from the primary.
    pub async fn decision_state_at_least(
        &self,
        subject_id: &SubjectId,
        conversation_id: Option<&ConversationId>,
        required: Revision,
        max_conversations: usize,
    ) -> Result<DecisionState, StoreError> {
        if let Some(replicas) = self.read_replicas() {
            let deadline = replica_deadline(self.timeouts().read);
            let read = crate::store::observed(self, "replica_snapshot", async {
                Ok(replicas
                    .snapshot(subject_id, max_conversations, required, deadline)
                    .await)
            })
            .await?;
            if let Some(snapshot) = read {
                match decision_state_of(snapshot, conversation_id) {
                    Some(state) => return Ok(state),
                    None => replicas.served_by_primary(),
                }
            }
        }
        self.decision_state(subject_id, conversation_id).await
    }
}

/// The state a decision needs, from a subject's snapshot; `None` when the conversation asked
/// about may lie beyond the facts the snapshot holds.
fn decision_state_of(
    snapshot: SubjectSnapshot,
    conversation_id: Option<&ConversationId>,
) -> Option<DecisionState> {
    let conversation = match conversation_id {
        None => None,
        Some(conversation_id) => {
            let found = snapshot
                .conversations
                .iter()
                .find(|(id, _)| id == conversation_id.as_str())
                .map(|(_, facts)| *facts);
            if found.is_none() && !snapshot.complete {
                return None;
            }
            found
        }
    };
    Some(DecisionState {
        subject: snapshot.subject,
        conversation,
        revision: snapshot.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ConversationFacts, SubjectState};

    #[test]
    fn a_snapshot_answers_for_a_conversation_only_when_it_holds_all_that_may_be_asked() {
        let facts = ConversationFacts {
            user_report: true,
            ..ConversationFacts::default()
        };
        let snapshot = |complete| SubjectSnapshot {
            subject: Some(SubjectState::new()),
            revision: Revision::new(7),
            conversations: vec![("kept".to_owned(), facts)],
            complete,
        };
        let kept = ConversationId::parse("kept").unwrap();
        let other = ConversationId::parse("other").unwrap();
        for complete in [true, false] {
            let state = decision_state_of(snapshot(complete), Some(&kept)).unwrap();
            assert_eq!(state.conversation, Some(facts));
            assert_eq!(state.revision, Revision::new(7));
            let state = decision_state_of(snapshot(complete), None).unwrap();
            assert_eq!(state.conversation, None);
        }
        // Every fact held: a conversation not among them has none.
        let state = decision_state_of(snapshot(true), Some(&other)).unwrap();
        assert_eq!(state.conversation, None);
        // Beyond what the snapshot holds: the primary is asked instead.
        assert_eq!(decision_state_of(snapshot(false), Some(&other)), None);
    }
}
