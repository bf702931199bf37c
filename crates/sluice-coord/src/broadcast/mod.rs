//! The broadcaster: one message to many vchannels (a DDL to every shard of a collection) as a
//! persisted task guarded by resource-key locks.
//!
//! # Life of a broadcast
//!
//! ```text
//!  broadcast(req) ─ validate ─ id ─ lock keys ─ put task (PENDING) ─┬─ send copy to vc0 ─ sent ─┐
//!     (nothing is written          (waits while                     ├─ send copy to vc1 ─ sent ─┼─ WAIT_ACK
//!      for bad input)               a key is held)                  └─ send copy to vc2 ─ sent ─┘
//!                                                                                               │
//!  ack(id, vcN) ── acked flag persisted ── every vchannel acked ── delete task (DONE) ── unlock keys
//!                                                                  └── the waiting broadcast returns
//! ```
//!
//! The contract [`Broadcaster`] keeps:
//! * Bad input (no vchannel, an invalid or repeated vchannel name, a reserved property other than
//!   the type, version, typed header and barrier timestamp, a system or self-controlled message
//!   type, a resource key with an unknown domain or named twice) is
//!   [`CoordError::InvalidArgument`] and nothing is written, no id is taken.
//! * Resource keys are readers–writer locks per `(domain, key)`: shared keys coexist, an
//!   exclusive key excludes every other holder of that `(domain, key)`. A broadcast takes all its
//!   keys at once or waits (first come, first served, so a waiting writer is not starved by later
//!   readers); [`Broadcaster::try_broadcast`] fails with [`CoordError::ResourceAcquired`] instead.
//!   Keys are held until the task is DONE, across coordinator restarts.
//! * The task is persisted at `Keys::broadcast(id)` before the first copy is sent, and every
//!   change (a vchannel sent with its append outcome, a vchannel acked, PENDING → WAIT_ACK) is
//!   persisted with compare-and-set before it is reported. DONE is the deletion of the task key.
//! * Each copy carries its vchannel (`_vc`) and the broadcast header (`_bh`: id, every vchannel,
//!   the resource keys). A failed append is retried with exponential backoff (10 ms doubling to
//!   10 s by default) until it succeeds, the vchannel is acked, or the broadcaster stops. Sends
//!   run on a pool of `workers` concurrent appends.
//! * [`Broadcaster::ack`] is idempotent; an unknown id or vchannel is `InvalidArgument` and
//!   changes nothing. Once every vchannel is acked the task key is deleted, the keys released and
//!   the waiting caller gets every vchannel's append outcome.
//! * [`Broadcaster::recover`] loads every task, re-holds its keys, re-sends the vchannels neither
//!   sent nor acked and waits for the other acks. A value it cannot decode is logged and reported
//!   as [`CoordError::Malformed`], left in place for an operator, and the other tasks continue.
//!
//! Delivery is at least once per vchannel: a copy appended just before a crash, whose outcome was
//! not yet persisted, is appended again by the next coordinator. Consumers recognise the copy by
//! its broadcast id.
//!
//! # Persisted format
//!
//! The task value is the protobuf `TaskProto` (version 1): the broadcast id, the message template
//! in the on-log record codec (framed, CRC32C), per vchannel `{name, sent, acked, outcome}`, the
//! state (PENDING = 1, WAIT_ACK = 2, DONE = 3) and the resource keys.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use sluice_meta::{Condition, KeyValue, MetaError, MetaStore, Revision};
use sluice_types::backoff::Backoff;
use sluice_types::codec;
use sluice_types::message::{self as msg, BroadcastHeader, ResourceKey, keys as prop};
use sluice_types::{Message, MessageId, MutableMessage, Timestamp, VChannel};

use crate::keys::Keys;
use crate::{CoordError, Result};

mod locks;
mod record;
mod task;
#[cfg(test)]
mod tests;
mod validate;

use locks::*;
use record::*;
use task::*;
use validate::*;

/// What the append of one copy returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Where the copy landed in its pchannel's log.
    pub id: MessageId,
    /// The timestamp the WAL gave it.
    pub timestamp: Timestamp,
}

/// Appends one copy of a broadcast to one vchannel (the real one goes through the streaming
/// client).
///
/// An implementation MUST return `Ok` only once the copy is durably appended; an error means the
/// copy may or may not have been appended (the broadcaster retries, so a copy can land twice).
#[async_trait]
pub trait BroadcastAppender: Send + Sync + 'static {
    /// Appends `message` (already stamped with `_vc` and `_bh`) to `vchannel`.
    async fn append(&self, vchannel: &VChannel, message: MutableMessage) -> Result<AppendOutcome>;
}

/// Hands out broadcast ids.
///
/// An implementation MUST never hand out the same id twice, across restarts too (the
/// coordinator's persisted id allocator does this).
#[async_trait]
pub trait BroadcastIds: Send + Sync + 'static {
    /// A fresh id.
    async fn next_id(&self) -> Result<u64>;
}

/// One message to many vchannels.
#[derive(Clone, Debug)]
pub struct BroadcastRequest {
    /// The template every copy is made from: payload, type, typed header and user properties.
    /// It must not carry `_vc` or `_bh` (the broadcaster sets them) nor anything the WAL stamps.
    pub message: MutableMessage,
    /// The vchannels, each named once.
    pub vchannels: Vec<String>,
    /// The locks held until every vchannel has acked.
    pub resource_keys: Vec<ResourceKey>,
}

/// A completed broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastResult {
    /// The broadcast id.
    pub broadcast_id: u64,
    /// Per vchannel, what its append returned. `None` only when the vchannel was acked before
    /// the coordinator that appended it recorded the outcome, and that coordinator is gone.
    pub appends: BTreeMap<VChannel, Option<AppendOutcome>>,
}

/// Where a broadcast task is; states only move forward (`Pending < WaitAck < Done`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    /// Some vchannel has neither been sent nor acked.
    Pending,
    /// Every vchannel has been sent (or acked); waiting for the remaining acks.
    WaitAck,
    /// Every vchannel acked; the task is deleted and its keys released.
    Done,
}

/// A snapshot of one broadcast's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The state.
    pub state: TaskState,
    /// Vchannels in the broadcast.
    pub total: usize,
    /// Vchannels whose append outcome is recorded.
    pub sent: usize,
    /// Vchannels acked.
    pub acked: usize,
}

/// Tuning of a [`Broadcaster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastConfig {
    /// Concurrent appends across all broadcasts (default: the number of CPUs).
    pub workers: usize,
    /// First delay before re-sending a failed vchannel (default 10 ms); doubles after each failure.
    pub backoff_initial: Duration,
    /// Longest delay between two attempts (default 10 s).
    pub backoff_max: Duration,
}

impl Default for BroadcastConfig {
    fn default() -> BroadcastConfig {
        BroadcastConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl BroadcastConfig {
    fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(CoordError::InvalidArgument(
                "broadcast workers must be at least 1".into(),
            ));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(CoordError::InvalidArgument(format!(
                "broadcast backoff must satisfy 0 < initial ({:?}) <= max ({:?})",
                self.backoff_initial, self.backoff_max
            )));
        }
        Ok(())
    }
}

/// What [`Broadcaster::recover`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every task resumed, in id order.
    pub tasks: Vec<RecoveredTask>,
    /// Every task value that could not be decoded ([`CoordError::Malformed`], naming the key);
    /// those keys are left untouched.
    pub malformed: Vec<CoordError>,
}

/// One resumed task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredTask {
    /// The broadcast id.
    pub id: u64,
    /// Vchannels neither sent nor acked: sent again.
    pub resending: Vec<VChannel>,
    /// Vchannels sent but not yet acked.
    pub awaiting_ack: Vec<VChannel>,
}

/// A running broadcast: its id, its progress, and its result once every vchannel acked.
#[derive(Debug)]
pub struct BroadcastHandle {
    id: u64,
    status: watch::Receiver<Status>,
    cancel: CancellationToken,
}

impl BroadcastHandle {
    /// The broadcast id (also in every copy's `_bh`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The progress now.
    pub fn progress(&self) -> Progress {
        self.status.borrow().progress
    }

    /// Waits until `f` holds for the progress and returns that progress; [`CoordError::Shutdown`]
    /// when the broadcaster stops first. `f` should accept [`TaskState::Done`] (states are
    /// ordered, so `p.state >= TaskState::WaitAck` does): a done task changes no more.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&Progress) -> bool) -> Result<Progress> {
        let cancel = self.cancel.clone();
        tokio::select! {
            biased;
            s = self.status.wait_for(|s| f(&s.progress) || s.abandoned) => match s {
                Ok(s) if !s.abandoned => Ok(s.progress),
                Ok(_) => Err(abandoned(self.id)),
                Err(_) => Err(CoordError::Shutdown),
            },
            _ = cancel.cancelled() => Err(CoordError::Shutdown),
        }
    }

    /// Waits until every vchannel acked and returns each vchannel's append outcome;
    /// [`CoordError::Shutdown`] when the broadcaster stops first (the task stays persisted and
    /// the next coordinator completes it).
    pub async fn wait(mut self) -> Result<BroadcastResult> {
        let cancel = self.cancel.clone();
        tokio::select! {
            biased;
            s = self.status.wait_for(|s| s.result.is_some() || s.abandoned) => match s {
                Ok(s) => s.result.clone().ok_or_else(|| abandoned(self.id)),
                Err(_) => Err(CoordError::Shutdown),
            },
            _ = cancel.cancelled() => Err(CoordError::Shutdown),
        }
    }
}

fn abandoned(id: u64) -> CoordError {
    CoordError::Conflict(format!(
        "broadcast {id} was removed from the meta store by another coordinator"
    ))
}

/// The broadcaster. Dropping it stops every send and wait (a coordinator stopping or losing
/// leadership); the persisted tasks are completed by the next [`Broadcaster::recover`].
pub struct Broadcaster {
    inner: Arc<Inner>,
}

impl fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcaster")
            .field("root", &self.inner.keys.root())
            .field("tasks", &self.inner.tasks.lock().len())
            .finish()
    }
}

impl Broadcaster {
    /// Starts a broadcaster on `store` (a new coordinator or a restart): loads every persisted
    /// task, re-holds its resource keys, re-sends what was not sent and waits for the rest of
    /// the acks. Fails only when the store cannot be read or `config` is invalid; malformed
    /// tasks are in the returned [`Recovery`].
    pub async fn recover(
        store: Arc<dyn MetaStore>,
        keys: Keys,
        appender: Arc<dyn BroadcastAppender>,
        ids: Arc<dyn BroadcastIds>,
        config: BroadcastConfig,
    ) -> Result<(Broadcaster, Recovery)> {
        config.validate()?;
        // Built first so that giving up on `recover` halfway (dropping it) stops what it started.
        let broadcaster = Broadcaster {
            inner: Arc::new(Inner {
                workers: Semaphore::new(config.workers),
                store,
                keys,
                appender,
                ids,
                config,
                locks: Arc::new(LockTable::default()),
                tasks: Mutex::new(BTreeMap::new()),
                tracker: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        };
        let inner = &broadcaster.inner;
        let (kvs, _) = inner
            .store
            .scan_prefix(&inner.keys.broadcast_prefix())
            .await?;
        let mut report = Recovery::default();
        for kv in kvs {
            let (spec, proto) = match decode_task(&inner.keys, &kv) {
                Ok(decoded) => decoded,
                Err(e) => {
                    error!(key = %kv.key, error = %e, "broadcast task is malformed; left in place");
                    report.malformed.push(e);
                    continue;
                }
            };
            let pick = |f: fn(&VChannelProto) -> bool| -> Vec<usize> {
                (0..proto.vchannels.len())
                    .filter(|&i| f(&proto.vchannels[i]))
                    .collect()
            };
            let resend = pick(|v| !v.sent && !v.acked);
            let awaiting = pick(|v| v.sent && !v.acked);
            let names = |idx: &[usize]| idx.iter().map(|&i| spec.vchannels[i].clone()).collect();
            report.tasks.push(RecoveredTask {
                id: spec.id,
                resending: names(&resend),
                awaiting_ack: names(&awaiting),
            });
            info!(
                broadcast_id = spec.id,
                resend = resend.len(),
                awaiting_ack = awaiting.len(),
                "broadcast task recovered"
            );
            let guard = inner.locks.hold(&spec.resource_keys);
            let task = Task::new(spec, proto, kv.mod_revision, guard);
            inner.tasks.lock().insert(task.spec.id, task.clone());
            inner.start(task, resend).await;
        }
        Ok((broadcaster, report))
    }

    /// Broadcasts `request`, waiting while a resource key is held, and returns once every
    /// vchannel acked.
    pub async fn broadcast(&self, request: BroadcastRequest) -> Result<BroadcastResult> {
        self.submit(request).await?.wait().await
    }

    /// Like [`Broadcaster::broadcast`] but fails with [`CoordError::ResourceAcquired`] at once
    /// when a resource key is held (nothing is persisted then).
    pub async fn try_broadcast(&self, request: BroadcastRequest) -> Result<BroadcastResult> {
        self.try_submit(request).await?.wait().await
    }

    /// Starts a broadcast, waiting while a resource key is held, and returns once the task is
    /// persisted and its sends started. Dropping the returned future while it waits for a key
    /// gives up (nothing was written); once the keys are taken the broadcast goes ahead.
    pub async fn submit(&self, request: BroadcastRequest) -> Result<BroadcastHandle> {
        self.inner.submit(request, true).await
    }

    /// Like [`Broadcaster::submit`] but fails with [`CoordError::ResourceAcquired`] at once when
    /// a resource key is held.
    pub async fn try_submit(&self, request: BroadcastRequest) -> Result<BroadcastHandle> {
        self.inner.submit(request, false).await
    }

    /// Records that the consumer of `vchannel` applied broadcast `broadcast_id`. Idempotent.
    /// An id this broadcaster does not run (never started, or already done) or a vchannel not in
    /// the broadcast is [`CoordError::InvalidArgument`] and changes nothing.
    pub async fn ack(&self, broadcast_id: u64, vchannel: &str) -> Result<()> {
        let task = self
            .inner
            .tasks
            .lock()
            .get(&broadcast_id)
            .cloned()
            .ok_or_else(|| {
                CoordError::InvalidArgument(format!(
                    "no running broadcast {broadcast_id} (never started, or already done)"
                ))
            })?;
        let idx = task
            .spec
            .vchannels
            .iter()
            .position(|v| v.as_str() == vchannel)
            .ok_or_else(|| {
                CoordError::InvalidArgument(format!(
                    "vchannel {:?} is not part of broadcast {broadcast_id}",
                    vchannel.chars().take(64).collect::<String>()
                ))
            })?;
        let inner = self.inner.clone();
        self.inner
            .run(async move {
                let mut live = task.live.lock().await;
                if live.finished {
                    return Ok(());
                }
                inner
                    .persist(&task, &mut live, |p| p.vchannels[idx].acked = true)
                    .await?;
                debug!(broadcast_id, vchannel = %task.spec.vchannels[idx], "broadcast acked");
                // The ack is durable; finishing the task must not hang on the caller retrying.
                if let Err(e) = inner.settle(&task, &mut live).await {
                    warn!(broadcast_id, error = %e, "finishing a broadcast failed; retrying");
                    drop(live);
                    let job = inner.clone();
                    inner.spawn(async move {
                        let mut live = task.live.lock().await;
                        job.settle_retrying(&task, &mut live).await;
                    });
                }
                Ok(())
            })
            .await
    }

    /// A handle on a running broadcast (e.g. one resumed by [`Broadcaster::recover`]).
    pub fn handle(&self, broadcast_id: u64) -> Option<BroadcastHandle> {
        let task = self.inner.tasks.lock().get(&broadcast_id).cloned()?;
        Some(task.handle(self.inner.cancel.clone()))
    }

    /// The ids of every running broadcast, in order.
    pub fn running(&self) -> Vec<u64> {
        self.inner.tasks.lock().keys().copied().collect()
    }

    /// How many broadcasts wait for a resource key.
    pub fn waiting(&self) -> usize {
        self.inner.locks.state.lock().queue.len()
    }

    /// Stops every send and wait and waits until the broadcaster's tasks have ended.
    pub async fn shutdown(self) {
        let tracker = self.inner.tracker.clone();
        drop(self);
        tracker.wait().await;
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tasks.lock().clear();
    }
}

struct Inner {
    store: Arc<dyn MetaStore>,
    keys: Keys,
    appender: Arc<dyn BroadcastAppender>,
    ids: Arc<dyn BroadcastIds>,
    config: BroadcastConfig,
    locks: Arc<LockTable>,
    workers: Semaphore,
    tasks: Mutex<BTreeMap<u64, Arc<Task>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// How often a compare-and-set write re-reads and merges before giving up with `Conflict`.
const MAX_CAS_ROUNDS: usize = 8;

impl Inner {
    /// Runs `fut` as a tracked task that outlives the caller's future (so a caller giving up
    /// cannot leave a half-done step behind) and stops when the broadcaster stops.
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let cancel = self.cancel.clone();
        let job = self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => Err(CoordError::Shutdown),
                r = fut => r,
            }
        });
        job.await.unwrap_or(Err(CoordError::Shutdown))
    }

    /// Spawns a tracked background job that ends when the broadcaster stops.
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                () = fut => {}
            }
        });
    }

    async fn submit(
        self: &Arc<Self>,
        request: BroadcastRequest,
        wait: bool,
    ) -> Result<BroadcastHandle> {
        let checked = check(&request.message, &request.vchannels, &request.resource_keys)
            .map_err(CoordError::InvalidArgument)?;
        // Until the keys are held the caller may give up (its waiter leaves the queue); from
        // then on the task is written and started in the background whatever the caller does.
        let id = self.ids.next_id().await?;
        let guard = tokio::select! {
            _ = self.cancel.cancelled() => return Err(CoordError::Shutdown),
            guard = self.locks.acquire(&checked.resource_keys, wait) => guard?,
        };
        let inner = self.clone();
        self.run(async move {
            let key = inner.keys.broadcast(id);
            let proto = TaskProto::new(id, &checked);
            let spec = Spec::new(id, key, checked).map_err(CoordError::InvalidArgument)?;
            let revision = inner
                .store
                .put(
                    &spec.key,
                    Bytes::from(proto.encode_to_vec()),
                    Condition::KeyAbsent,
                    None,
                )
                .await
                .map_err(|e| match e {
                    MetaError::ConditionFailed { key, .. } => CoordError::Conflict(format!(
                        "broadcast id {id} is already taken by the task at {key:?}"
                    )),
                    e => e.into(),
                })?;
            info!(
                broadcast_id = id,
                vchannels = spec.vchannels.len(),
                "broadcast task persisted"
            );
            let task = Task::new(spec, proto, revision, guard);
            inner.tasks.lock().insert(id, task.clone());
            let handle = task.handle(inner.cancel.clone());
            let all = (0..task.spec.vchannels.len()).collect();
            inner.start(task, all).await;
            Ok(handle)
        })
        .await
    }

    /// Starts sending the vchannels `resend` of `task`, or settles it when there is nothing to send.
    async fn start(self: &Arc<Self>, task: Arc<Task>, resend: Vec<usize>) {
        task.live.lock().await.sending = resend.len();
        if resend.is_empty() {
            let inner = self.clone();
            self.spawn(async move {
                let mut live = task.live.lock().await;
                inner.settle_retrying(&task, &mut live).await;
            });
            return;
        }
        for idx in resend {
            let (inner, task) = (self.clone(), task.clone());
            self.spawn(async move { inner.send(task, idx).await });
        }
    }

    /// Sends one vchannel's copy until it is appended or acked, then records it.
    async fn send(self: Arc<Self>, task: Arc<Task>, idx: usize) {
        let id = task.spec.id;
        let vchannel = &task.spec.vchannels[idx];
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let outcome = loop {
            if task.live.lock().await.proto.vchannels[idx].acked {
                break None;
            }
            let attempt = {
                let Ok(_permit) = self.workers.acquire().await else {
                    return;
                };
                self.appender
                    .append(vchannel, task.spec.copies[idx].clone())
                    .await
            };
            match attempt {
                Ok(outcome) => break Some(outcome),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(broadcast_id = id, %vchannel, error = %e, ?delay, "broadcast append failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let mut live = task.live.lock().await;
        if let Some(outcome) = outcome {
            let record = OutcomeProto::from(outcome);
            loop {
                let done = self
                    .persist(&task, &mut live, |p| {
                        let v = &mut p.vchannels[idx];
                        if !v.sent {
                            v.sent = true;
                            v.outcome = Some(record);
                        }
                    })
                    .await;
                match done {
                    Ok(()) => break,
                    Err(_) if live.finished => return,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(broadcast_id = id, %vchannel, error = %e, ?delay, "recording a broadcast send failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            debug!(broadcast_id = id, %vchannel, "broadcast copy sent");
        }
        live.sending -= 1;
        self.settle_retrying(&task, &mut live).await;
    }

    /// [`Inner::settle`] until it succeeds (the store may be briefly unavailable).
    async fn settle_retrying(&self, task: &Task, live: &mut Live) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        while let Err(e) = self.settle(task, live).await {
            if live.finished {
                return;
            }
            let delay = backoff.next_delay();
            warn!(broadcast_id = task.spec.id, error = %e, ?delay, "advancing a broadcast task failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Moves the task on: DONE (delete, unlock, report) when every vchannel is acked and no send
    /// is running, WAIT_ACK when every vchannel is sent or acked.
    async fn settle(&self, task: &Task, live: &mut Live) -> Result<()> {
        if live.finished {
            return Ok(());
        }
        let vchannels = &live.proto.vchannels;
        if live.sending == 0 && vchannels.iter().all(|v| v.acked) {
            // Acked flags never go back, so no compare is needed to delete a fully acked task.
            self.store.delete(&task.spec.key, Condition::None).await?;
            live.finished = true;
            live.guard = None;
            self.tasks.lock().remove(&task.spec.id);
            let result = task.result(live);
            let progress = Progress {
                state: TaskState::Done,
                ..task.progress(live)
            };
            task.status.send_replace(Status {
                progress,
                result: Some(result),
                abandoned: false,
            });
            info!(broadcast_id = task.spec.id, "broadcast done");
            return Ok(());
        }
        if live.proto.state() == StateProto::Pending && vchannels.iter().all(|v| v.sent || v.acked)
        {
            self.persist(task, live, |p| p.set_state(StateProto::WaitAck))
                .await?;
            debug!(broadcast_id = task.spec.id, "broadcast waits for acks");
        }
        Ok(())
    }

    /// Persists `change` applied to the task with compare-and-set; when another writer got there
    /// first, re-reads, merges (flags only ever go from false to true) and tries again. Memory
    /// only ever holds what the store holds. A change that changes nothing writes nothing.
    async fn persist(
        &self,
        task: &Task,
        live: &mut Live,
        change: impl Fn(&mut TaskProto),
    ) -> Result<()> {
        for _ in 0..MAX_CAS_ROUNDS {
            let mut next = live.proto.clone();
            change(&mut next);
            if next == live.proto {
                return Ok(());
            }
            let written = self
                .store
                .put(
                    &task.spec.key,
                    Bytes::from(next.encode_to_vec()),
                    Condition::ModRevision(live.revision),
                    None,
                )
                .await;
            match written {
                Ok(revision) => {
                    live.proto = next;
                    live.revision = revision;
                    task.status.send_replace(Status {
                        progress: task.progress(live),
                        result: None,
                        abandoned: false,
                    });
                    return Ok(());
                }
                Err(MetaError::ConditionFailed { .. }) => self.reload(task, live).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordError::Conflict(format!(
            "broadcast task {:?} keeps changing under this coordinator",
            task.spec.key
        )))
    }

    /// Merges the stored task into `live` after a lost compare-and-set.
    async fn reload(&self, task: &Task, live: &mut Live) -> Result<()> {
        let Some(kv) = self.store.get(&task.spec.key).await? else {
            warn!(
                broadcast_id = task.spec.id,
                "broadcast task removed by another writer; dropping it"
            );
            live.finished = true;
            live.guard = None;
            self.tasks.lock().remove(&task.spec.id);
            task.status.send_modify(|s| s.abandoned = true);
            return Err(abandoned(task.spec.id));
        };
        let theirs = decode_proto(&kv)?;
        live.proto = merge(&live.proto, &theirs).map_err(|reason| CoordError::Malformed {
            key: kv.key.clone(),
            reason,
        })?;
        live.revision = kv.mod_revision;
        Ok(())
    }
}
