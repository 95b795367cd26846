//! The decision log: every decision the service gives can be recorded, off the request path.
//!
//! A check appends its decision to the block in memory, as a compact binary record
//! ([`crate::audit::segment`]): a lock held for a few hundred nanoseconds, no allocation of its own, no task
//! woken. A flusher writes the block to the open segment file every [`FLUSH_INTERVAL`], and
//! seals the segment every [`SEAL_INTERVAL`] (or at [`SEGMENT_BYTES`]); a shipper moves each
//! sealed segment into the store in one transaction (one row of `decision_log_segments`,
//! the segment's blocks as written) and deletes the file only once that has committed. A segment left by a crash is
//! shipped at the next start (unless its first decision is in the store already: a crash
//! between the commit and the deletion), and a store that is down only lets the segments pile
//! up on disk. When the block holds `decision_log_queue` decisions (the flusher cannot keep up)
//! or the unshipped segments reach `decision_log_backlog_mb`, a decision is dropped and counted:
//! answering never waits on the log.
//!
//! "The store" here is the log's [`LogStore`]: the database of the store of record, or, with
//! `decision_log_database_url`, a database of the log's own, which may not have answered yet
//! (the segments then wait on disk, as for a store that is down).
//!
//! A check with `require_audit` goes the other way: its record is queued for the store
//! directly, it waits for room and for its row to be committed, and it fails rather than
//! answer without the record.
//!
//! What a crash can lose is what was not yet written to the segment file: at most one flush
//! interval of decisions that were never acknowledged as recorded (the gauge
//! `assent_decision_log_unwritten` shows how many are in memory). A segment file outlives a
//! killed process; it is flushed to disk when it is sealed, so a power loss can cost the last
//! [`SEAL_INTERVAL`] as well.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::audit::{Decided, DecisionRecord, segment};
use crate::metrics::{Scrape, Scraped};
use crate::policy::Decision;
use crate::store::{Schema, Store, StoreLocation, StoreTimeouts};

/// The most `require_audit` rows one insert carries.
pub const BATCH_SIZE: usize = 1_000;
/// How often the decisions in memory are written to the open segment file.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How often the open segment is sealed and handed to the shipper: the longest a decision
/// waits on disk before it is shipped, when the store keeps up.
pub const SEAL_INTERVAL: Duration = Duration::from_secs(1);
/// A segment is sealed early at this size (about 40,000 decisions).
pub const SEGMENT_BYTES: u64 = 2 << 20;
/// How long a `require_audit` check waits for room in the queue and then for its row.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the shipper waits before trying a segment the store refused again.
const RETRY_AT_MOST: Duration = Duration::from_secs(5);
/// A segment file's name: its sequence number, 20 digits, then this.
const SEGMENT_SUFFIX: &str = ".segment";

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

/// Why the decision log cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use the decision log directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the decision log directory {0} is in use by another assent process: give each process a \
         decision_log_dir of its own"
    )]
    InUse(PathBuf),
}

/// Counters of the log since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecisionLogStats {
    /// Decisions not yet in the store: in memory, in segment files, or waiting for
    /// `require_audit`.
    pub queued: u64,
    /// Decisions in memory, not yet written to a segment file.
    pub unwritten: u64,
    /// Rows committed.
    pub written: u64,
    /// Decisions dropped because the log could not keep up.
    pub dropped: u64,
    /// Rows whose batch or segment failed to insert (a segment is tried again).
    pub failed: u64,
    /// Bytes of segment files that could not be read (a write a crash cut short, or damage).
    pub unreadable_bytes: u64,
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
    unreadable_bytes: AtomicU64,
    /// Decisions in segment files not yet shipped.
    backlog_records: AtomicU64,
    backlog_bytes: AtomicU64,
}

/// What the request path and the flusher share.
struct Shared {
    block: Mutex<segment::BlockBuilder>,
    counters: Counters,
    /// The most decisions the block holds.
    capacity: usize,
    /// The most bytes of segments that wait to be shipped.
    backlog_limit: u64,
}

impl Shared {
    fn take_block(&self) -> Option<(Vec<u8>, u64)> {
        let mut block = self.block.lock().unwrap_or_else(PoisonError::into_inner);
        if block.is_empty() {
            return None;
        }
        let records = u64::from(block.records());
        Some((block.finish(), records))
    }
}

/// Where the decision log's rows live: the store's own database, or a database of the log's
/// own (`decision_log_database_url`), opened (and migrated) in the background. A log database
/// that cannot be reached at start only delays the shipping: decisions wait in segment files
/// meanwhile, as they do while a store is down.
#[derive(Clone, Debug)]
pub struct LogStore {
    opened: watch::Receiver<Option<Store>>,
    separate: bool,
}

impl LogStore {
    /// The log in the store's database.
    pub fn main(store: Store) -> LogStore {
        let (_, opened) = watch::channel(Some(store));
        LogStore {
            opened,
            separate: false,
        }
    }

    /// The log in a database of its own at `location`: opened (and migrated, or checked) at
    /// once if it answers, which takes at most the store's connect timeout when it does not;
    /// else by the task returned, which tries again, later and later (every
    /// [`RETRY_AT_MOST`] at most), until it has it. The task is the caller's to stop.
    pub async fn open_separate(
        location: StoreLocation,
        timeouts: StoreTimeouts,
        schema: Schema,
    ) -> (LogStore, Option<JoinHandle<()>>) {
        let open = async move || match Store::open_with(&location, timeouts, schema).await {
            Ok(store) => Some(store),
            Err(error) => {
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&error),
                    "cannot open the decision log's database (decision_log_database_url); \
                     decisions wait in segment files, and it is tried again"
                );
                None
            }
        };
        if let Some(store) = open().await {
            let (_, opened) = watch::channel(Some(store));
            let store = LogStore {
                opened,
                separate: true,
            };
            return (store, None);
        }
        let (opened, receiver) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut retry = Duration::from_millis(100);
            loop {
                tokio::time::sleep(retry).await;
                if let Some(store) = open().await {
                    tracing::info!("the decision log's database is open");
                    let _ = opened.send(Some(store));
                    return;
                }
                retry = (retry * 2).min(RETRY_AT_MOST);
            }
        });
        let store = LogStore {
            opened: receiver,
            separate: true,
        };
        (store, Some(task))
    }

    /// The store the log's rows are in, once it is open.
    pub fn get(&self) -> Option<Store> {
        self.opened.borrow().clone()
    }

    /// Whether the log has a database of its own (which its owner closes).
    pub fn is_separate(&self) -> bool {
        self.separate
    }
}

/// The handle checks record through. Cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    mode: LogMode,
    store: LogStore,
    shared: Arc<Shared>,
    durable: mpsc::Sender<Entry>,
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

/// The log's tasks; [`DecisionLogWriter::shutdown`] writes and ships what is there and stops
/// them.
pub struct DecisionLogWriter {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DecisionLog {
    /// Starts the log on `store`: ships the segments a previous process left in `directory`,
    /// then keeps writing and shipping. Up to `capacity` decisions wait in memory (and as many
    /// `require_audit` records), up to `backlog_limit` bytes of segments on disk.
    pub fn start(
        store: LogStore,
        mode: LogMode,
        (capacity, backlog_limit): (usize, u64),
        directory: &Path,
    ) -> Result<(DecisionLog, DecisionLogWriter), StartError> {
        let capacity = capacity.max(1);
        let segments = Segments::open(directory)?;
        let shared = Arc::new(Shared {
            block: Mutex::new(segment::BlockBuilder::default()),
            counters: Counters::default(),
            capacity,
            backlog_limit,
        });
        let recovered_bytes = segments
            .recovered
            .iter()
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .sum();
        shared
            .counters
            .backlog_bytes
            .store(recovered_bytes, Ordering::Relaxed);
        let (durable, receiver) = mpsc::channel(capacity);
        let (stop, stopped) = watch::channel(false);
        let (sealed, to_ship) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(write_batches(
                store.clone(),
                receiver,
                stopped.clone(),
                shared.clone(),
            )),
            tokio::spawn(ship_segments(
                store.clone(),
                segments.recovered.clone(),
                to_ship,
                stopped.clone(),
                shared.clone(),
            )),
            tokio::spawn(flush_blocks(segments, sealed, stopped, shared.clone())),
        ];
        let log = DecisionLog {
            mode,
            store,
            shared,
            durable,
            capacity,
        };
        Ok((log, DecisionLogWriter { stop, tasks }))
    }

    pub fn mode(&self) -> LogMode {
        self.mode
    }

    /// The store the log's rows are in (what reads them, `Audit.ListDecisions`, reads), once
    /// it is open.
    pub fn store(&self) -> Option<Store> {
        self.store.get()
    }

    /// Whether a decision is to be recorded, given a uniform random draw. Checked before a
    /// record is built, so an unrecorded decision costs nothing more.
    pub fn wants(&self, decision: Decision, draw: u32) -> bool {
        self.mode.records(decision, draw)
    }

    /// Appends a decision to the block in memory without waiting; a full block, or a backlog
    /// on disk at its limit, drops it (and counts it).
    pub fn record(&self, decided: &Decided<'_>) {
        let counters = &self.shared.counters;
        if counters.backlog_bytes.load(Ordering::Relaxed) >= self.shared.backlog_limit {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut block = self
            .shared
            .block
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if block.records() as usize >= self.shared.capacity {
            drop(block);
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        block.push(decided);
    }

    /// Queues a record that must be committed, waiting for room in the queue; the receipt
    /// then waits for the commit. Queue many before waiting on any, and they share a batch.
    pub async fn record_durable(
        &self,
        decided: &Decided<'_>,
    ) -> Result<DurableReceipt, DecisionLogError> {
        let (durable, committed) = oneshot::channel();
        let entry = Entry {
            record: decided.to_record(),
            durable: Some(durable),
        };
        self.durable
            .send_timeout(entry, DURABLE_TIMEOUT)
            .await
            .map_err(|error| match error {
                mpsc::error::SendTimeoutError::Timeout(_) => DecisionLogError::QueueTimeout,
                mpsc::error::SendTimeoutError::Closed(_) => DecisionLogError::Closed,
            })?;
        Ok(DurableReceipt { committed })
    }

    pub fn stats(&self) -> DecisionLogStats {
        let counters = &self.shared.counters;
        let unwritten = u64::from(
            self.shared
                .block
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .records(),
        );
        let durable = (self.capacity - self.durable.capacity()) as u64;
        DecisionLogStats {
            queued: unwritten + durable + counters.backlog_records.load(Ordering::Relaxed),
            unwritten,
            written: counters.written.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            unreadable_bytes: counters.unreadable_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Scraped for DecisionLog {
    fn scrape(&self, scrape: &mut Scrape<'_>) -> std::fmt::Result {
        let stats = self.stats();
        scrape.gauge(
            "decision_log_queue_depth",
            "Decisions recorded but not yet in the store: in memory or in segment files",
            stats.queued,
        )?;
        scrape.gauge(
            "decision_log_unwritten",
            "Decisions in memory, not yet written to a segment file (what a crash would lose)",
            stats.unwritten,
        )?;
        scrape.gauge(
            "decision_log_backlog_bytes",
            "Bytes of decision log segment files not yet shipped to the store",
            self.shared.counters.backlog_bytes.load(Ordering::Relaxed),
        )?;
        scrape.counter(
            "decision_log_written",
            "Decisions written to the decision log",
            stats.written,
        )?;
        scrape.counter(
            "decision_log_dropped",
            "Decisions not recorded because the decision log could not keep up",
            stats.dropped,
        )?;
        scrape.counter(
            "decision_log_failed",
            "Decisions whose batch or segment could not be written (a segment is tried again)",
            stats.failed,
        )?;
        scrape.counter(
            "decision_log_unreadable_bytes",
            "Bytes of decision log segments that could not be read (a write cut short, or damage)",
            stats.unreadable_bytes,
        )
    }
}

impl DecisionLogWriter {
    /// Stops taking records, writes and ships every one there is (for at most the store's
    /// write deadline a segment; what is left stays on disk for the next start), and waits for
    /// the tasks to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a decision log task failed");
            }
        }
    }
}

/// The segment files of a directory, which one process holds at a time.
struct Segments {
    directory: PathBuf,
    /// Held while the process runs: another process cannot take the directory.
    _lock: File,
    /// Segments a previous process left, oldest first.
    recovered: Vec<(u64, PathBuf)>,
    /// The next segment's sequence number.
    next: u64,
    /// The open segment: its number, file, size and when it was opened.
    open: Option<(u64, File, u64, Instant)>,
}

impl Segments {
    fn open(directory: &Path) -> Result<Segments, StartError> {
        let failed = |source| StartError::Directory {
            path: directory.to_owned(),
            source,
        };
        std::fs::create_dir_all(directory).map_err(failed)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(directory.join("lock"))
            .map_err(failed)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StartError::InUse(directory.to_owned()));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(failed(error)),
        }
        let mut recovered = Vec::new();
        for entry in std::fs::read_dir(directory).map_err(failed)? {
            let path = entry.map_err(failed)?.path();
            let number = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|number| number.parse::<u64>().ok());
            if let Some(number) = number {
                recovered.push((number, path));
            }
        }
        recovered.sort();
        let next = recovered.last().map_or(0, |(number, _)| number + 1);
        Ok(Segments {
            directory: directory.to_owned(),
            _lock: lock,
            recovered,
            next,
            open: None,
        })
    }

    fn path(&self, number: u64) -> PathBuf {
        self.directory.join(format!("{number:020}{SEGMENT_SUFFIX}"))
    }

    /// Appends a block to the open segment, opening one if none is.
    fn append(&mut self, block: &[u8]) -> std::io::Result<()> {
        if self.open.is_none() {
            let number = self.next;
            let file = File::options()
                .create_new(true)
                .append(true)
                .open(self.path(number))?;
            self.next += 1;
            self.open = Some((number, file, 0, Instant::now()));
        }
        let (_, file, size, _) = self.open.as_mut().expect("a segment is open");
        file.write_all(block)?;
        *size += block.len() as u64;
        Ok(())
    }

    /// Whether the open segment is due to be sealed.
    fn due(&self) -> bool {
        self.open.as_ref().is_some_and(|(_, _, size, opened)| {
            *size >= SEGMENT_BYTES || opened.elapsed() >= SEAL_INTERVAL
        })
    }

    /// Closes the open segment and returns it, with its file for the shipper to flush to disk
    /// (off the flusher, which must not wait on the disk).
    fn seal(&mut self) -> Option<(PathBuf, File)> {
        let (number, file, _, _) = self.open.take()?;
        Some((self.path(number), file))
    }
}

/// Writes the block in memory to the open segment every flush interval, and hands each sealed
/// segment to the shipper. On stop, writes the last block and seals.
async fn flush_blocks(
    mut segments: Segments,
    sealed: mpsc::UnboundedSender<(PathBuf, File)>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        if let Some((block, records)) = shared.take_block() {
            let counters = &shared.counters;
            match segments.append(&block) {
                Ok(()) => {
                    counters
                        .backlog_records
                        .fetch_add(records, Ordering::Relaxed);
                    counters
                        .backlog_bytes
                        .fetch_add(block.len() as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    counters.dropped.fetch_add(records, Ordering::Relaxed);
                    tracing::error!(%error, records, "cannot write to the decision log's segment");
                    // A file that failed a write may hold part of the block: seal it there.
                    if let Some(segment) = segments.seal() {
                        let _ = sealed.send(segment);
                    }
                }
            }
        }
        if (stopping || segments.due())
            && let Some(segment) = segments.seal()
        {
            let _ = sealed.send(segment);
        }
        if stopping {
            return;
        }
    }
}

/// Ships the recovered segments, then each one sealed, in order; a segment the store refuses
/// is tried again, later and later, and the ones after it wait. On stop, ships what is sealed
/// once more and leaves what fails on disk.
async fn ship_segments(
    store: LogStore,
    recovered: Vec<(u64, PathBuf)>,
    mut to_ship: mpsc::UnboundedReceiver<(PathBuf, File)>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let mut waiting: VecDeque<(PathBuf, bool)> = recovered
        .into_iter()
        .map(|(_, path)| (path, true))
        .collect();
    let mut retry = Duration::from_millis(100);
    loop {
        while let Some((path, recovered)) = waiting.front() {
            if ship(&store, path, *recovered, &shared).await {
                waiting.pop_front();
                retry = Duration::from_millis(100);
            } else if *stop.borrow() {
                // The store refuses: what is left waits for the next start.
                return;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
                retry = (retry * 2).min(RETRY_AT_MOST);
            }
        }
        match to_ship.recv().await {
            Some((path, file)) => {
                // On disk before it is shipped and deleted, so that a power loss loses at most
                // the segment being written.
                let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
                if let Ok(Err(error)) = synced {
                    tracing::warn!(%error, "cannot flush a decision log segment to disk");
                }
                waiting.push_back((path, false));
            }
            // The flusher has stopped, and everything it sealed is shipped.
            None => return,
        }
    }
}

/// Ships one segment in one transaction and deletes it; false if the store refused it, or is
/// not open yet.
async fn ship(store: &LogStore, path: &Path, recovered: bool, shared: &Shared) -> bool {
    let Some(store) = store.get() else {
        return false;
    };
    let counters = &shared.counters;
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot read a decision log segment");
            return false;
        }
    };
    let (decided, unreadable_bytes) = segment::decode(&bytes);
    if unreadable_bytes > 0 {
        counters
            .unreadable_bytes
            .fetch_add(unreadable_bytes, Ordering::Relaxed);
        tracing::warn!(
            path = %path.display(),
            bytes = unreadable_bytes,
            records = decided.len(),
            "a decision log segment ends in bytes that cannot be read: a write cut short by a \
             crash, or damage; the decisions before them are shipped"
        );
    }
    let records = decided.len() as u64;
    let intact = &bytes[..bytes.len() - unreadable_bytes as usize];
    let shipped = match decided.first() {
        None => Ok(()),
        // A crash between the commit and the deletion leaves a segment that is in the store.
        Some(first) if recovered => match store.has_decision_segment(first).await {
            Ok(true) => Ok(()),
            Ok(false) => store.ship_decision_segment(intact, &decided).await,
            Err(error) => Err(error),
        },
        Some(_) => store.ship_decision_segment(intact, &decided).await,
    };
    if let Err(error) = shipped {
        counters.failed.fetch_add(records, Ordering::Relaxed);
        tracing::error!(
            error = %crate::telemetry::error_chain(&error),
            records,
            "cannot ship a decision log segment to the store; it is tried again"
        );
        return false;
    }
    counters.written.fetch_add(records, Ordering::Relaxed);
    if !recovered {
        release(&counters.backlog_records, records);
    }
    release(&counters.backlog_bytes, bytes.len() as u64);
    if let Err(error) = tokio::fs::remove_file(path).await {
        tracing::error!(%error, path = %path.display(), "cannot delete a shipped decision log segment");
    }
    true
}

/// Takes `amount` off a gauge, never below zero.
fn release(gauge: &AtomicU64, amount: u64) {
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
        Some(value.saturating_sub(amount))
    });
}

/// Writes the `require_audit` records, in batches.
async fn write_batches(
    store: LogStore,
    mut receiver: mpsc::Receiver<Entry>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            receiver.recv().await
        } else {
            tokio::select! {
                entry = receiver.recv() => entry,
                _ = stop.wait_for(|stop| *stop) => {
                    stopping = true;
                    receiver.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        // Whatever else is waiting joins the batch.
        while batch.len() < BATCH_SIZE {
            match receiver.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        flush(&store, batch, &shared.counters).await;
    }
}

async fn flush(store: &LogStore, batch: Vec<Entry>, counters: &Counters) {
    let (records, waiters): (Vec<DecisionRecord>, Vec<Option<oneshot::Sender<bool>>>) = batch
        .into_iter()
        .map(|entry| (entry.record, entry.durable))
        .unzip();
    let durable = waiters.iter().any(Option::is_some);
    let Some(store) = store.get() else {
        counters
            .failed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        tracing::error!(
            rows = records.len(),
            "cannot write to the decision log: its database is not open yet"
        );
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(false);
        }
        return;
    };
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
    use crate::store::DecisionQuery;
    use crate::store::testing::{Backend, TestDatabase};

    fn decided(id: uuid::Uuid) -> Decided<'static> {
        Decided::example(id, "u-1", crate::store::now_micros())
    }

    /// Recording never waits: on a current-thread runtime the flusher cannot run while the
    /// loop records, so the block fills at its capacity and every further record is dropped
    /// and counted. Shutdown then writes and ships the ones in memory.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_block_drops_and_counts_and_shutdown_ships_the_rest() {
        let database = TestDatabase::create(Backend::Sqlite).await;
        let store = Store::open(database.location()).await.unwrap();
        let directory = database.directory().join("decision-log");
        let (log, writer) = DecisionLog::start(
            LogStore::main(store.clone()),
            LogMode::All,
            (8, 1 << 30),
            &directory,
        )
        .unwrap();
        for _ in 0..200 {
            log.record(&decided(uuid::Uuid::now_v7()));
        }
        let stats = log.stats();
        assert_eq!((stats.unwritten, stats.dropped, stats.written), (8, 192, 0));
        writer.shutdown().await;
        let stats = log.stats();
        assert_eq!((stats.queued, stats.dropped, stats.written), (0, 192, 8));
        assert_eq!(store.count_decisions().await.unwrap(), 8);
        assert_eq!(segment_files(&directory), 0, "a shipped segment is deleted");
        store.close().await;
    }

    fn segment_files(directory: &Path) -> usize {
        std::fs::read_dir(directory)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(SEGMENT_SUFFIX)
            })
            .count()
    }

    /// A process that dies leaves its segments; the next start ships them, once: a segment
    /// whose first decision is in the store already (a crash between the commit and the
    /// deletion) is deleted, not shipped again. A directory is one process's at a time.
    async fn segments_left_by_a_crash_are_shipped_once(backend: Backend) {
        let database = TestDatabase::create(backend).await;
        let store = Store::open(database.location()).await.unwrap();
        let directory = database.directory().join("decision-log");
        let (log, writer) = DecisionLog::start(
            LogStore::main(store.clone()),
            LogMode::All,
            (64, 1 << 30),
            &directory,
        )
        .unwrap();
        assert!(matches!(
            DecisionLog::start(
                LogStore::main(store.clone()),
                LogMode::All,
                (64, 1 << 30),
                &directory
            ),
            Err(StartError::InUse(_))
        ));
        writer.shutdown().await;
        drop(log);
        // Two segments as a killed process leaves them: one shipped before the crash, one not,
        // the second ending in a block the crash cut short.
        let mut builder = segment::BlockBuilder::default();
        for _ in 0..3 {
            builder.push(&decided(uuid::Uuid::now_v7()));
        }
        let first = builder.finish();
        store
            .ship_decision_segment(&first, &segment::decode(&first).0)
            .await
            .unwrap();
        let shipped = segment::read(&first).records;
        std::fs::write(directory.join(format!("{:020}{SEGMENT_SUFFIX}", 7)), &first).unwrap();
        for _ in 0..5 {
            builder.push(&decided(uuid::Uuid::now_v7()));
        }
        let mut second = builder.finish();
        let unshipped = segment::read(&second).records;
        builder.push(&decided(uuid::Uuid::now_v7()));
        let torn = builder.finish();
        second.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(
            directory.join(format!("{:020}{SEGMENT_SUFFIX}", 8)),
            &second,
        )
        .unwrap();

        let (log, writer) = DecisionLog::start(
            LogStore::main(store.clone()),
            LogMode::All,
            (64, 1 << 30),
            &directory,
        )
        .unwrap();
        log.record(&decided(uuid::Uuid::now_v7()));
        writer.shutdown().await;
        let mut listed = store.decisions(&DecisionQuery::all(100)).await.unwrap();
        assert_eq!(listed.len(), 3 + 5 + 1, "{listed:#?}");
        let mut wanted: Vec<DecisionRecord> = shipped.into_iter().chain(unshipped).collect();
        let last = listed
            .iter()
            .find(|record| !wanted.contains(record))
            .unwrap();
        wanted.push(last.clone());
        for list in [&mut listed, &mut wanted] {
            list.sort_by(|a, b| a.decision_id.cmp(&b.decision_id));
        }
        assert_eq!(listed, wanted);
        assert_eq!(store.count_decisions().await.unwrap(), 9);
        let stats = log.stats();
        assert_eq!(stats.unreadable_bytes, (torn.len() - 3) as u64);
        assert_eq!(segment_files(&directory), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn segments_left_by_a_crash_are_shipped_once_on_sqlite() {
        segments_left_by_a_crash_are_shipped_once(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn segments_left_by_a_crash_are_shipped_once_on_postgres() {
        segments_left_by_a_crash_are_shipped_once(Backend::Postgres).await;
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
