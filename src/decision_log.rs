//! The decision log: every decision the service gives can be recorded, off the request path.
//!
//! A check hands its record to a bounded queue and returns; one writer task drains the queue in
//! batches (up to [`BATCH_SIZE`] rows, or whatever arrived within [`FLUSH_INTERVAL`] of the
//! first) and inserts each batch in one statement. When the queue is full the record is dropped
//! and counted: answering never waits on the log. A check with `require_audit` instead waits for
//! room and for its own row to be committed, and fails rather than answer without the record.
//! On shutdown the writer drains and flushes everything queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::audit::DecisionRecord;
use crate::metrics::{Scrape, Scraped};
use crate::policy::Decision;
use crate::store::Store;

/// The most rows one insert carries.
pub const BATCH_SIZE: usize = 1_000;
/// The longest a recorded decision waits in the queue before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a `require_audit` check waits for room in the queue and then for its row.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which decisions are recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogMode {
    Off,
    /// Only DENY decisions.
    DenyOnly,
    /// This fraction of decisions, chosen at random (0 < fraction ≤ 1).
    Sampled(f64),
    All,
}

impl LogMode {
    /// Parses `off`, `deny-only`, `sampled:FRACTION` or `all`.
    pub fn parse(text: &str) -> Result<LogMode, String> {
        match text {
            "off" => Ok(LogMode::Off),
            "deny-only" => Ok(LogMode::DenyOnly),
            "all" => Ok(LogMode::All),
            _ => {
                let fraction = text
                    .strip_prefix("sampled:")
                    .and_then(|fraction| fraction.parse::<f64>().ok())
                    .filter(|fraction| *fraction > 0.0 && *fraction <= 1.0)
                    .ok_or_else(|| {
                        format!(
                            "expected off, deny-only, all or sampled:FRACTION (0 < FRACTION <= 1), got {text:?}"
                        )
                    })?;
                Ok(LogMode::Sampled(fraction))
            }
        }
    }

    /// Whether a decision with this outcome and this random draw (uniform in 0..2^32) is
    /// recorded.
    pub fn records(self, decision: Decision, draw: u32) -> bool {
        match self {
            LogMode::Off => false,
            LogMode::DenyOnly => decision == Decision::Deny,
            LogMode::Sampled(fraction) => f64::from(draw) < fraction * 4_294_967_296.0,
            LogMode::All => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    #[error("the decision log did not accept the record in time")]
    QueueTimeout,
    #[error("the decision log is shut down")]
    Closed,
    #[error("the decision log could not write the record")]
    WriteFailed,
}

/// Counters of the log since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionLogStats {
    /// Records waiting in the queue now.
    pub queued: u64,
    /// Rows committed.
    pub written: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Rows whose batch failed to insert.
    pub failed: u64,
}

struct Entry {
    record: DecisionRecord,
    /// Told whether the row was committed, for a `require_audit` check.
    durable: Option<oneshot::Sender<bool>>,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The handle checks record through. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    mode: LogMode,
    sender: mpsc::Sender<Entry>,
    counters: Arc<Counters>,
    capacity: usize,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DecisionLog")
            .field("mode", &self.mode)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Waits for one `require_audit` record to be committed.
pub struct DurableReceipt {
    committed: oneshot::Receiver<bool>,
}

impl DurableReceipt {
    pub async fn committed(self) -> Result<(), DecisionLogError> {
        match tokio::time::timeout(DURABLE_TIMEOUT, self.committed).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(DecisionLogError::WriteFailed),
            Ok(Err(_)) => Err(DecisionLogError::Closed),
            Err(_) => Err(DecisionLogError::QueueTimeout),
        }
    }
}

/// The writer task; [`DecisionLogWriter::shutdown`] flushes what is queued and stops it.
pub struct DecisionLogWriter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl DecisionLog {
    /// Starts the writer task on `store` with a queue of `capacity` records.
    pub fn start(store: Store, mode: LogMode, capacity: usize) -> (DecisionLog, DecisionLogWriter) {
        let capacity = capacity.max(1);
        let (sender, receiver) = mpsc::channel(capacity);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(write_batches(store, receiver, stopped, counters.clone()));
        let log = DecisionLog {
            mode,
            sender,
            counters,
            capacity,
        };
        (log, DecisionLogWriter { stop, task })
    }

    pub fn mode(&self) -> LogMode {
        self.mode
    }

    /// Whether a decision is to be recorded, given a uniform random draw. Checked before a
    /// record is built, so an unrecorded decision costs nothing more.
    pub fn wants(&self, decision: Decision, draw: u32) -> bool {
        self.mode.records(decision, draw)
    }

    /// Queues a record without waiting; a full queue drops it (and counts it).
    pub fn record(&self, record: DecisionRecord) {
        let entry = Entry {
            record,
            durable: None,
        };
        if self.sender.try_send(entry).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a record that must be committed, waiting for room in the queue; the receipt
    /// then waits for the commit. Queue many before waiting on any, and they share a batch.
    pub async fn record_durable(
        &self,
        record: DecisionRecord,
    ) -> Result<DurableReceipt, DecisionLogError> {
        let (durable, committed) = oneshot::channel();
        let entry = Entry {
            record,
            durable: Some(durable),
        };
        self.sender
            .send_timeout(entry, DURABLE_TIMEOUT)
            .await
            .map_err(|error| match error {
                mpsc::error::SendTimeoutError::Timeout(_) => DecisionLogError::QueueTimeout,
                mpsc::error::SendTimeoutError::Closed(_) => DecisionLogError::Closed,
            })?;
        Ok(DurableReceipt { committed })
    }

    pub fn stats(&self) -> DecisionLogStats {
        DecisionLogStats {
            queued: (self.capacity - self.sender.capacity()) as u64,
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}

impl Scraped for DecisionLog {
    fn scrape(&self, scrape: &mut Scrape<'_>) -> std::fmt::Result {
        let stats = self.stats();
        scrape.gauge(
            "decision_log_queue_depth",
            "Decisions waiting to be written to the decision log",
            stats.queued,
        )?;
        scrape.counter(
            "decision_log_written",
            "Decisions written to the decision log",
            stats.written,
        )?;
        scrape.counter(
            "decision_log_dropped",
            "Decisions not recorded because the decision log's queue was full",
            stats.dropped,
        )?;
        scrape.counter(
            "decision_log_failed",
            "Decisions whose batch could not be written",
            stats.failed,
        )
    }
}

impl DecisionLogWriter {
    /// Stops taking records, writes every queued one, and waits for the writer to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the decision log writer failed");
        }
    }
}

async fn write_batches(
    store: Store,
    mut receiver: mpsc::Receiver<Entry>,
    mut stop: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            receiver.recv().await
        } else {
            tokio::select! {
                entry = receiver.recv() => entry,
                _ = &mut stop => {
                    stopping = true;
                    receiver.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < BATCH_SIZE {
            // A waiting `require_audit` check, or a shutdown, flushes what is there now.
            let waiting = stopping || batch.iter().any(|entry| entry.durable.is_some());
            let next = if waiting {
                receiver.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, receiver.recv())
                    .await
                    .ok()
                    .flatten()
            };
            match next {
                Some(entry) => batch.push(entry),
                None => break,
            }
        }
        flush(&store, batch, &counters).await;
    }
}

async fn flush(store: &Store, batch: Vec<Entry>, counters: &Counters) {
    let (records, waiters): (Vec<DecisionRecord>, Vec<Option<oneshot::Sender<bool>>>) = batch
        .into_iter()
        .map(|entry| (entry.record, entry.durable))
        .unzip();
    let durable = waiters.iter().any(Option::is_some);
    let mut result = store.insert_decisions(&records, durable).await;
    if result.is_err() {
        // One retry covers a dropped connection; a store that stays down fails the batch.
        tokio::time::sleep(Duration::from_millis(50)).await;
        result = store.insert_decisions(&records, durable).await;
    }
    let committed = match result {
        Ok(()) => {
            counters
                .written
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            true
        }
        Err(error) => {
            counters
                .failed
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            tracing::error!(
                error = %crate::telemetry::error_chain(&error),
                rows = records.len(),
                "cannot write to the decision log"
            );
            false
        }
    };
    for waiter in waiters.into_iter().flatten() {
        let _ = waiter.send(committed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Purpose, Reason, Source};
    use crate::store::testing::{Backend, TestDatabase};

    fn record(index: usize) -> DecisionRecord {
        DecisionRecord {
            decided_at_micros: crate::store::now_micros(),
            decision_id: format!("d-{index}"),
            subject_id: "u-1".into(),
            purpose: Purpose::Memory,
            conversation_id: None,
            source: Source::Conversation,
            consistency: "minimize_latency",
            decision: Decision::Allow,
            reason: Reason::LegitimateInterestDefault,
            rule: "M2",
            policy_version: crate::policy::POLICY_VERSION,
            revision: Some(1),
            degraded: false,
            caller: "test".into(),
            trace_id: String::new(),
        }
    }

    /// Recording never waits: on a current-thread runtime the writer cannot run while the loop
    /// records, so the queue fills at its capacity and every further record is dropped and
    /// counted. Shutdown then writes the queued ones.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts() {
        let database = TestDatabase::create(Backend::Sqlite).await;
        let store = Store::open(database.location()).await.unwrap();
        let (log, writer) = DecisionLog::start(store.clone(), LogMode::All, 8);
        for index in 0..200 {
            log.record(record(index));
        }
        let stats = log.stats();
        assert_eq!((stats.queued, stats.dropped, stats.written), (8, 192, 0));
        writer.shutdown().await;
        let stats = log.stats();
        assert_eq!((stats.queued, stats.dropped, stats.written), (0, 192, 8));
        assert_eq!(store.count_decisions().await.unwrap(), 8);
        store.close().await;
    }

    #[test]
    fn modes_parse_and_filter() {
        assert_eq!(LogMode::parse("all"), Ok(LogMode::All));
        assert_eq!(LogMode::parse("deny-only"), Ok(LogMode::DenyOnly));
        assert_eq!(LogMode::parse("sampled:0.25"), Ok(LogMode::Sampled(0.25)));
        for bad in ["sampled:0", "sampled:1.5", "sampled:", "some", ""] {
            assert!(LogMode::parse(bad).is_err(), "{bad:?}");
        }
        assert!(LogMode::DenyOnly.records(Decision::Deny, 0));
        assert!(!LogMode::DenyOnly.records(Decision::Allow, 0));
        assert!(!LogMode::Off.records(Decision::Deny, 0));
        let quarter = LogMode::Sampled(0.25);
        assert!(quarter.records(Decision::Allow, 0));
        assert!(quarter.records(Decision::Allow, u32::MAX / 4 - 1));
        assert!(!quarter.records(Decision::Allow, u32::MAX / 4 + 1));
        assert!(LogMode::Sampled(1.0).records(Decision::Allow, u32::MAX));
    }
}
