//! Group commit: writes that arrive while another group is being committed are applied together,
//! in one transaction under one hold of the chain head, and committed once.
//!
//! Each write of a group is still its own change, audit event and revision, applied in arrival
//! order (a later write of the group sees the earlier ones), and its own outcome: a write refused
//! (its subject unknown or deleted) is refused before it writes anything, and the others go on.
//! Every write is acknowledged only after its group committed. There is no waiting for a group
//! to fill: the first write of an idle store is committed at once, alone, and the writes that
//! queue meanwhile form the next group (at most [`MAX_GROUP`]).
//!
//! When a group fails for a reason that is not the store's availability (a query the database
//! refuses), nothing of it was committed, and its writes are applied again one by one, each with
//! its own outcome, so that one write the database refuses cannot fail the others. When the
//! store is unavailable, every write of the group fails with that; when the commit's outcome is
//! unknown, so is every write's.
//!
//! A group's store spans are recorded in the trace of its first write (a write alone, the usual
//! case below saturation, in its own).
//!
//! Writers do not run a task of their own: the writer that finds no group being committed spawns
//! the one that commits groups until the queue is empty (a task, so that a caller that gives up
//! does not cut a group's transaction short). A write whose caller gave up (its deadline passed,
//! typically while another transaction held the chain head) is left out of its group, even when
//! it gives up while the group is applied (the group is rolled back and applied again without
//! it): a call answered DEADLINE_EXCEEDED writes nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::Instrument;

use crate::telemetry::layer::{self, CallTrace};

use super::{Access, Store, StoreError, WriteOutcome, WriteRequest, rows};

/// Writes of one group at most: the chain head is held for the group's statements.
const MAX_GROUP: usize = 128;

/// The writes waiting for the next group, and whether a task is committing groups.
#[derive(Debug, Default)]
pub struct WriteQueue {
    pending: Mutex<Vec<Pending>>,
    leading: AtomicBool,
    /// Groups of more than one write committed, and the writes in them.
    groups: AtomicU64,
    grouped_writes: AtomicU64,
}

/// Where a write's outcome goes: closed when its writer gave up.
type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

#[derive(Debug)]
struct Pending {
    request: WriteRequest,
    reply: Reply,
    /// The writer's span and call: a group's store spans are recorded under its first write's
    /// (a write alone, the usual case below saturation, under its own).
    trace: Trace,
}

/// Where a write's store spans go: its span, and its call's trace decision (a task-local of
/// the call, which a spawned task does not inherit).
#[derive(Clone, Debug)]
struct Trace {
    span: tracing::Span,
    call: CallTrace,
}

impl Trace {
    fn current() -> Trace {
        Trace {
            span: tracing::Span::current(),
            call: layer::current_call(),
        }
    }

    async fn around<F: Future>(self, work: F) -> F::Output {
        layer::within_call(self.call, work.instrument(self.span)).await
    }
}

impl WriteQueue {
    fn take(&self, at_most: usize) -> Vec<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let count = pending.len().min(at_most);
        pending.drain(..count).collect()
    }

    fn is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// The lead of a task committing groups. Dropped before the task `ended` only if it ends
/// abnormally (a panic): the writes waiting are told the store is unavailable, and the next
/// write starts a new task, rather than every later write waiting for a task that is gone.
struct Lead {
    queue: Arc<WriteQueue>,
    ended: bool,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.ended {
            drop(self.queue.take(usize::MAX));
            self.queue.leading.store(false, Ordering::Release);
        }
    }
}

impl Store {
    /// Groups of more than one write committed since the store was opened, and the writes in
    /// them.
    pub fn write_groups(&self) -> (u64, u64) {
        let queue = self.write_queue();
        (
            queue.groups.load(Ordering::Relaxed),
            queue.grouped_writes.load(Ordering::Relaxed),
        )
    }

    /// Queues `request` for the next group and waits for its outcome.
    pub(super) async fn write_grouped(
        &self,
        request: WriteRequest,
    ) -> Result<WriteOutcome, StoreError> {
        let queue = self.write_queue();
        let (reply, outcome) = oneshot::channel();
        queue
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Pending {
                request,
                reply,
                trace: Trace::current(),
            });
        if !queue.leading.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::spawn(async move { store.commit_groups(queue).await });
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::GroupUnavailable(
                "the task committing it stopped".into(),
            ))
        })
    }

    /// Commits groups until no write waits.
    async fn commit_groups(&self, queue: Arc<WriteQueue>) {
        let mut lead = Lead {
            queue,
            ended: false,
        };
        loop {
            let group = lead.queue.take(MAX_GROUP);
            if group.is_empty() {
                lead.queue.leading.store(false, Ordering::Release);
                // A write queued after the take above whose writer still saw this task leading:
                // take the lead again, unless another writer took it.
                if lead.queue.is_empty() || lead.queue.leading.swap(true, Ordering::AcqRel) {
                    lead.ended = true;
                    return;
                }
                continue;
            }
            self.commit_group(group).await;
        }
    }

    async fn commit_group(&self, group: Vec<Pending>) {
        // A writer that gave up while it waited (its deadline passed) is not applied.
        let group: Vec<Pending> = group
            .into_iter()
            .filter(|pending| !pending.reply.is_closed())
            .collect();
        let Some(trace) = group.first().map(|pending| pending.trace.clone()) else {
            return;
        };
        let (requests, replies_and_traces): (Vec<WriteRequest>, Vec<_>) = group
            .into_iter()
            .map(|pending| (pending.request, (pending.reply, pending.trace)))
            .unzip();
        let (replies, traces): (Vec<_>, Vec<_>) = replies_and_traces.into_iter().unzip();
        let committed = trace.around(self.apply(&requests, &replies)).await;
        match committed {
            Ok(outcomes) => {
                if requests.len() > 1 {
                    let queue = self.write_queue();
                    queue.groups.fetch_add(1, Ordering::Relaxed);
                    queue
                        .grouped_writes
                        .fetch_add(requests.len() as u64, Ordering::Relaxed);
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    if let Some(outcome) = outcome {
                        let _ = reply.send(outcome);
                    }
                }
            }
            Err(error) if replies.len() == 1 => {
                let _ = replies
                    .into_iter()
                    .next()
                    .map(|reply| reply.send(Err(error)));
            }
            Err(error) if error.is_unavailable() => {
                let commit_unknown = matches!(error, StoreError::CommitUnknown { .. });
                let cause = crate::telemetry::error_chain(&error);
                for reply in replies {
                    let unavailable = StoreError::GroupUnavailable(cause.clone());
                    let _ = reply.send(Err(if commit_unknown {
                        StoreError::CommitUnknown {
                            operation: "write",
                            cause: Box::new(unavailable),
                        }
                    } else {
                        unavailable
                    }));
                }
            }
            Err(error) => {
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&error),
                    writes = requests.len(),
                    "a write group failed; applying its writes one by one"
                );
                for (index, (reply, trace)) in replies.into_iter().zip(traces).enumerate() {
                    let one = std::slice::from_ref(&reply);
                    let outcome = trace
                        .around(self.apply(&requests[index..=index], one))
                        .await;
                    let outcome = match outcome {
                        Ok(mut outcomes) => match outcomes.pop().flatten() {
                            Some(outcome) => outcome,
                            None => continue,
                        },
                        Err(error) => Err(error),
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
    }

    /// Applies `requests` in one transaction and commits it, leaving out every write whose
    /// writer gave up before the commit (`rows::write_group_in`): such a write's outcome is
    /// `None`, and no trace of it is written.
    async fn apply(
        &self,
        requests: &[WriteRequest],
        replies: &[Reply],
    ) -> Result<Vec<Option<Result<WriteOutcome, StoreError>>>, StoreError> {
        let wanted = |index: usize| !replies[index].is_closed();
        loop {
            let applied = self
                .run("write", Access::Write, async |connection| {
                    rows::write_group_in(connection, requests, &wanted).await
                })
                .await;
            // Each round leaves out at least one more write, whose writer is gone for good.
            if !matches!(applied, Err(StoreError::Abandoned)) {
                return applied;
            }
        }
    }
}
