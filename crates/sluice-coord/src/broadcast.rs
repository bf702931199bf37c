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
use sluice_types::codec;
use sluice_types::message::{self as msg, BroadcastHeader, ResourceKey, keys as prop};
use sluice_types::{Message, MessageId, MessageType, MutableMessage, Timestamp, VChannel};

use crate::keys::Keys;
use crate::{CoordError, Result};

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
        let mut backoff = Backoff::new(&self.config);
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
        let mut backoff = Backoff::new(&self.config);
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

/// Per-vchannel retry delays: `initial`, doubling, capped at `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &BroadcastConfig) -> Backoff {
        Backoff {
            next: config.backoff_initial,
            max: config.backoff_max,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

// ------------------------------------------------------------------------------------------------
// Tasks

/// The immutable part of a task.
struct Spec {
    id: u64,
    key: String,
    vchannels: Vec<VChannel>,
    resource_keys: Vec<ResourceKey>,
    /// The copy for each vchannel, stamped with `_vc` and `_bh`.
    copies: Vec<MutableMessage>,
}

impl Spec {
    fn new(id: u64, key: String, checked: Checked) -> Result<Spec, String> {
        let header = BroadcastHeader {
            broadcast_id: id,
            vchannels: checked
                .vchannels
                .iter()
                .map(|v| v.as_str().to_owned())
                .collect(),
            resource_keys: checked.resource_keys.clone(),
        };
        // sluice-types owns the `_bh` encoding; take it from its builder instead of repeating it.
        let encoded_header = MutableMessage::builder(msg::ImportHeader::default())
            .broadcast(&header)
            .build()
            .map_err(|e| e.to_string())?
            .property(prop::BROADCAST_HEADER)
            .map(str::to_owned)
            .ok_or_else(|| "the broadcast header did not encode".to_owned())?;
        let mut copies = Vec::with_capacity(checked.vchannels.len());
        for vchannel in &checked.vchannels {
            let mut properties = checked.template.properties().into_owned();
            properties.insert(prop::VCHANNEL.to_owned(), vchannel.as_str().to_owned());
            properties.insert(prop::BROADCAST_HEADER.to_owned(), encoded_header.clone());
            let copy = Message::from_parts(checked.template.payload().clone(), properties)
                .map_err(|e| e.to_string())?;
            copies.push(MutableMessage::from_message(copy));
        }
        Ok(Spec {
            id,
            key,
            vchannels: checked.vchannels,
            resource_keys: checked.resource_keys,
            copies,
        })
    }
}

/// What a handle sees.
#[derive(Clone, Debug)]
struct Status {
    progress: Progress,
    result: Option<BroadcastResult>,
    /// Another writer removed the task.
    abandoned: bool,
}

/// The mutable part of a task, behind an async mutex held across the store writes so the
/// task's writes are ordered.
struct Live {
    /// What is persisted.
    proto: TaskProto,
    /// The task key's mod revision.
    revision: Revision,
    /// Sends running in this broadcaster.
    sending: usize,
    /// The task key is deleted (or was removed by someone else).
    finished: bool,
    /// The resource keys, released when the task finishes.
    guard: Option<LockGuard>,
}

struct Task {
    spec: Spec,
    live: tokio::sync::Mutex<Live>,
    status: watch::Sender<Status>,
}

impl Task {
    fn new(spec: Spec, proto: TaskProto, revision: Revision, guard: LockGuard) -> Arc<Task> {
        let live = Live {
            proto,
            revision,
            sending: 0,
            finished: false,
            guard: Some(guard),
        };
        let (status, _) = watch::channel(Status {
            progress: progress_of(&live.proto),
            result: None,
            abandoned: false,
        });
        Arc::new(Task {
            spec,
            live: tokio::sync::Mutex::new(live),
            status,
        })
    }

    fn handle(&self, cancel: CancellationToken) -> BroadcastHandle {
        BroadcastHandle {
            id: self.spec.id,
            status: self.status.subscribe(),
            cancel,
        }
    }

    fn progress(&self, live: &Live) -> Progress {
        progress_of(&live.proto)
    }

    fn result(&self, live: &Live) -> BroadcastResult {
        let appends = self
            .spec
            .vchannels
            .iter()
            .zip(&live.proto.vchannels)
            .map(|(vc, v)| (vc.clone(), v.outcome.map(AppendOutcome::from)))
            .collect();
        BroadcastResult {
            broadcast_id: self.spec.id,
            appends,
        }
    }
}

fn progress_of(proto: &TaskProto) -> Progress {
    let state = match proto.state() {
        StateProto::WaitAck => TaskState::WaitAck,
        StateProto::Done => TaskState::Done,
        StateProto::Pending | StateProto::Unspecified => TaskState::Pending,
    };
    Progress {
        state,
        total: proto.vchannels.len(),
        sent: proto.vchannels.iter().filter(|v| v.sent).count(),
        acked: proto.vchannels.iter().filter(|v| v.acked).count(),
    }
}

// ------------------------------------------------------------------------------------------------
// Validation

/// A request (or a stored task) that passed [`check`].
struct Checked {
    template: Message,
    /// The template in the on-log record codec, as persisted.
    encoded: Vec<u8>,
    vchannels: Vec<VChannel>,
    resource_keys: Vec<ResourceKey>,
}

/// Reserved properties a template may carry; every other `_` key is the broadcaster's or the WAL's.
const TEMPLATE_RESERVED: [&str; 4] = [
    prop::VERSION,
    prop::TYPE,
    prop::HEADER,
    prop::BARRIER_TIMESTAMP,
];

/// Resource key domains: collection name, database name, privilege, cluster.
const DOMAINS: std::ops::RangeInclusive<i32> = 1..=4;

fn check(
    template: &Message,
    vchannels: &[String],
    resource_keys: &[ResourceKey],
) -> Result<Checked, String> {
    let ty = template.message_type().map_err(|e| e.to_string())?;
    if ty.is_system() || ty.is_self_controlled() {
        return Err(format!("a {ty} message cannot be broadcast"));
    }
    for key in template.properties().keys() {
        if key.is_empty() || (key.starts_with('_') && !TEMPLATE_RESERVED.contains(&key.as_str())) {
            return Err(format!(
                "property key {:?} is empty or reserved",
                key.chars().take(64).collect::<String>()
            ));
        }
    }
    template.version().map_err(|e| e.to_string())?;
    template.barrier_timestamp().map_err(|e| e.to_string())?;
    check_header(template, ty).map_err(|e| e.to_string())?;
    let encoded = codec::encode_message_to_vec(template).map_err(|e| e.to_string())?;

    if vchannels.is_empty() {
        return Err("a broadcast needs at least one vchannel".into());
    }
    let mut parsed = Vec::with_capacity(vchannels.len());
    let mut seen = HashSet::new();
    for name in vchannels {
        let vc = VChannel::new(name).map_err(|e| e.to_string())?;
        if !seen.insert(vc.clone()) {
            return Err(format!("vchannel {vc} is named twice"));
        }
        parsed.push(vc);
    }

    let mut names = HashSet::new();
    for key in resource_keys {
        if !DOMAINS.contains(&key.domain) {
            return Err(format!(
                "resource key domain {} is unknown (want 1-4)",
                key.domain
            ));
        }
        if !names.insert((key.domain, key.key.as_str())) {
            return Err(format!("resource key {} is named twice", LockName::of(key)));
        }
    }
    Ok(Checked {
        template: template.clone(),
        encoded,
        vchannels: parsed,
        resource_keys: resource_keys.to_vec(),
    })
}

/// The typed header must decode as the header of the message's type.
fn check_header(m: &Message, ty: MessageType) -> Result<(), sluice_types::ParseError> {
    match ty {
        MessageType::Insert => m.header::<msg::InsertHeader>().map(drop),
        MessageType::Delete => m.header::<msg::DeleteHeader>().map(drop),
        MessageType::CreateCollection => m.header::<msg::CreateCollectionHeader>().map(drop),
        MessageType::DropCollection => m.header::<msg::DropCollectionHeader>().map(drop),
        MessageType::CreatePartition => m.header::<msg::CreatePartitionHeader>().map(drop),
        MessageType::DropPartition => m.header::<msg::DropPartitionHeader>().map(drop),
        MessageType::ManualFlush => m.header::<msg::ManualFlushHeader>().map(drop),
        MessageType::Import => m.header::<msg::ImportHeader>().map(drop),
        MessageType::SchemaChange => m.header::<msg::SchemaChangeHeader>().map(drop),
        // System and self-controlled types are refused before this.
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------
// Persisted format

const TASK_FORMAT_VERSION: u32 = 1;

/// A broadcast task as persisted at `Keys::broadcast(id)`.
#[derive(Clone, PartialEq, prost::Message)]
struct TaskProto {
    /// [`TASK_FORMAT_VERSION`].
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    id: u64,
    /// The template, framed by the on-log record codec.
    #[prost(bytes = "vec", tag = "3")]
    message: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    vchannels: Vec<VChannelProto>,
    #[prost(enumeration = "StateProto", tag = "5")]
    state: i32,
    #[prost(message, repeated, tag = "6")]
    resource_keys: Vec<ResourceKey>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VChannelProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bool, tag = "2")]
    sent: bool,
    #[prost(bool, tag = "3")]
    acked: bool,
    /// Present exactly when `sent`.
    #[prost(message, optional, tag = "4")]
    outcome: Option<OutcomeProto>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct OutcomeProto {
    #[prost(uint64, tag = "1")]
    id_hi: u64,
    #[prost(uint64, tag = "2")]
    id_lo: u64,
    #[prost(uint64, tag = "3")]
    timestamp: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Enumeration)]
#[repr(i32)]
enum StateProto {
    Unspecified = 0,
    Pending = 1,
    WaitAck = 2,
    Done = 3,
}

impl From<AppendOutcome> for OutcomeProto {
    fn from(o: AppendOutcome) -> OutcomeProto {
        OutcomeProto {
            id_hi: o.id.hi(),
            id_lo: o.id.lo(),
            timestamp: o.timestamp.0,
        }
    }
}

impl From<OutcomeProto> for AppendOutcome {
    fn from(o: OutcomeProto) -> AppendOutcome {
        AppendOutcome {
            id: MessageId::from_parts(o.id_hi, o.id_lo),
            timestamp: Timestamp(o.timestamp),
        }
    }
}

impl TaskProto {
    fn new(id: u64, checked: &Checked) -> TaskProto {
        TaskProto {
            version: TASK_FORMAT_VERSION,
            id,
            message: checked.encoded.clone(),
            vchannels: checked
                .vchannels
                .iter()
                .map(|v| VChannelProto {
                    name: v.as_str().to_owned(),
                    sent: false,
                    acked: false,
                    outcome: None,
                })
                .collect(),
            state: StateProto::Pending as i32,
            resource_keys: checked.resource_keys.clone(),
        }
    }
}

fn decode_proto(kv: &KeyValue) -> Result<TaskProto> {
    let bad = |reason: String| CoordError::Malformed {
        key: kv.key.clone(),
        reason,
    };
    let proto =
        TaskProto::decode(kv.value.as_ref()).map_err(|e| bad(format!("not a task: {e}")))?;
    if proto.version != TASK_FORMAT_VERSION {
        return Err(bad(format!(
            "task format version {} (this build reads {TASK_FORMAT_VERSION})",
            proto.version
        )));
    }
    match StateProto::try_from(proto.state) {
        Ok(StateProto::Unspecified) | Err(_) => {
            return Err(bad(format!("unknown task state {}", proto.state)));
        }
        Ok(_) => {}
    }
    if let Some(v) = proto
        .vchannels
        .iter()
        .find(|v| v.sent != v.outcome.is_some())
    {
        return Err(bad(format!(
            "vchannel {:?} has sent = {} but {} outcome",
            v.name,
            v.sent,
            if v.sent { "no" } else { "an" }
        )));
    }
    Ok(proto)
}

/// Decodes and checks one stored task: the key must be the task's canonical key, and the
/// template, vchannels and resource keys must pass the same checks as a new request.
fn decode_task(keys: &Keys, kv: &KeyValue) -> Result<(Spec, TaskProto)> {
    let bad = |reason: String| CoordError::Malformed {
        key: kv.key.clone(),
        reason,
    };
    let proto = decode_proto(kv)?;
    if keys.broadcast(proto.id) != kv.key {
        return Err(bad(format!(
            "task {} is stored under the wrong key",
            proto.id
        )));
    }
    let (template, len) =
        codec::decode_message(&proto.message).map_err(|e| bad(format!("message template: {e}")))?;
    if len != proto.message.len() {
        return Err(bad("trailing bytes after the message template".into()));
    }
    let names: Vec<String> = proto.vchannels.iter().map(|v| v.name.clone()).collect();
    let checked = check(&template, &names, &proto.resource_keys).map_err(&bad)?;
    let spec = Spec::new(proto.id, kv.key.clone(), checked).map_err(bad)?;
    Ok((spec, proto))
}

/// Our view merged with a stored one: flags and outcomes from either, the later state.
fn merge(ours: &TaskProto, theirs: &TaskProto) -> Result<TaskProto, String> {
    let same_channels = ours.vchannels.len() == theirs.vchannels.len()
        && ours
            .vchannels
            .iter()
            .zip(&theirs.vchannels)
            .all(|(a, b)| a.name == b.name);
    if ours.id != theirs.id || !same_channels {
        return Err(format!(
            "the stored task is not broadcast {} over the same vchannels",
            ours.id
        ));
    }
    let mut merged = ours.clone();
    for (m, t) in merged.vchannels.iter_mut().zip(&theirs.vchannels) {
        m.acked |= t.acked;
        if !m.sent && t.sent {
            m.sent = true;
            m.outcome = t.outcome;
        }
    }
    merged.state = merged.state.max(theirs.state);
    Ok(merged)
}

// ------------------------------------------------------------------------------------------------
// Resource-key locks

/// One lock: a resource key without its mode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockName {
    domain: i32,
    key: String,
}

impl LockName {
    fn of(key: &ResourceKey) -> LockName {
        LockName {
            domain: key.domain,
            key: key.key.clone(),
        }
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = match self.domain {
            1 => "collection",
            2 => "database",
            3 => "privilege",
            4 => "cluster",
            _ => "domain?",
        };
        write!(f, "{domain}:{:?}", self.key)
    }
}

/// Whether two keys cannot be held at once.
fn conflicts(a: &ResourceKey, b: &ResourceKey) -> bool {
    a.domain == b.domain && a.key == b.key && !(a.shared && b.shared)
}

#[derive(Default)]
struct Holders {
    shared: usize,
    exclusive: usize,
}

struct Waiter {
    ticket: u64,
    keys: Vec<ResourceKey>,
    granted: oneshot::Sender<()>,
}

#[derive(Default)]
struct LockState {
    held: HashMap<LockName, Holders>,
    /// Broadcasts waiting, first come first served.
    queue: VecDeque<Waiter>,
    /// Tickets granted whose waiter has not picked up its guard yet.
    granted: HashSet<u64>,
    next_ticket: u64,
}

impl LockState {
    /// The first key of `keys` that a current holder excludes.
    fn blocker<'k>(&self, keys: &'k [ResourceKey]) -> Option<&'k ResourceKey> {
        keys.iter().find(|k| {
            self.held
                .get(&LockName::of(k))
                .is_some_and(|h| h.exclusive > 0 || (!k.shared && h.shared > 0))
        })
    }

    fn take(&mut self, keys: &[ResourceKey]) {
        for k in keys {
            let h = self.held.entry(LockName::of(k)).or_default();
            if k.shared {
                h.shared += 1;
            } else {
                h.exclusive += 1;
            }
        }
    }

    fn release(&mut self, keys: &[ResourceKey]) {
        for k in keys {
            let name = LockName::of(k);
            if let Some(h) = self.held.get_mut(&name) {
                let count = if k.shared {
                    &mut h.shared
                } else {
                    &mut h.exclusive
                };
                *count = count.saturating_sub(1);
                if h.shared == 0 && h.exclusive == 0 {
                    self.held.remove(&name);
                }
            }
        }
    }

    /// Grants, in queue order, every waiter whose keys are free and that conflicts with no
    /// earlier waiter.
    fn grant_waiters(&mut self) {
        let mut ahead: Vec<ResourceKey> = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            let keys = &self.queue[i].keys;
            let behind = keys.iter().any(|k| ahead.iter().any(|a| conflicts(k, a)));
            if behind || self.blocker(keys).is_some() {
                ahead.extend(keys.iter().cloned());
                i += 1;
                continue;
            }
            if let Some(w) = self.queue.remove(i) {
                self.take(&w.keys);
                self.granted.insert(w.ticket);
                // A waiter that went away is cleaned up by its `Pending` guard.
                let _ = w.granted.send(());
            }
        }
    }
}

#[derive(Default)]
struct LockTable {
    state: Mutex<LockState>,
}

impl LockTable {
    /// Takes every key of `keys` at once; waits (first come, first served) when one is held, or
    /// fails with `ResourceAcquired` when `wait` is false.
    async fn acquire(self: &Arc<Self>, keys: &[ResourceKey], wait: bool) -> Result<LockGuard> {
        let (ticket, granted) = {
            let mut s = self.state.lock();
            let queued = s
                .queue
                .iter()
                .find_map(|w| w.keys.iter().find(|a| keys.iter().any(|k| conflicts(k, a))));
            let blocker = s.blocker(keys).map(LockName::of);
            let blocker = blocker.or_else(|| queued.map(LockName::of));
            match blocker {
                None => {
                    s.take(keys);
                    return Ok(self.guard(keys.to_vec()));
                }
                Some(name) if !wait => {
                    return Err(CoordError::ResourceAcquired(name.to_string()));
                }
                Some(_) => {}
            }
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            let (tx, rx) = oneshot::channel();
            s.queue.push_back(Waiter {
                ticket,
                keys: keys.to_vec(),
                granted: tx,
            });
            (ticket, rx)
        };
        let pending = Pending {
            table: self.clone(),
            ticket,
            keys: Some(keys.to_vec()),
        };
        // The sender lives in the queue until it is used, and the queue outlives `pending`.
        granted.await.map_err(|_| CoordError::Shutdown)?;
        Ok(pending.into_guard())
    }

    /// Holds `keys` without waiting, even when they conflict: a recovered task held them
    /// already before the restart.
    fn hold(self: &Arc<Self>, keys: &[ResourceKey]) -> LockGuard {
        let mut s = self.state.lock();
        if let Some(k) = s.blocker(keys) {
            warn!(key = %LockName::of(k), "two persisted broadcast tasks hold conflicting keys");
        }
        s.take(keys);
        self.guard(keys.to_vec())
    }

    fn guard(self: &Arc<Self>, keys: Vec<ResourceKey>) -> LockGuard {
        LockGuard {
            table: self.clone(),
            keys,
        }
    }
}

/// A waiter in the queue; dropping it (the caller gave up) leaves the queue or, when it was
/// granted meanwhile, releases the keys.
struct Pending {
    table: Arc<LockTable>,
    ticket: u64,
    keys: Option<Vec<ResourceKey>>,
}

impl Pending {
    fn into_guard(mut self) -> LockGuard {
        let keys = self.keys.take().unwrap_or_default();
        self.table.state.lock().granted.remove(&self.ticket);
        self.table.guard(keys)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(keys) = self.keys.take() else {
            return;
        };
        let mut s = self.table.state.lock();
        if let Some(pos) = s.queue.iter().position(|w| w.ticket == self.ticket) {
            s.queue.remove(pos);
        } else if s.granted.remove(&self.ticket) {
            s.release(&keys);
        }
        s.grant_waiters();
    }
}

/// Held resource keys; dropping releases them and wakes the waiters they blocked.
struct LockGuard {
    table: Arc<LockTable>,
    keys: Vec<ResourceKey>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut s = self.table.state.lock();
        s.release(&self.keys);
        s.grant_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, shared: bool) -> ResourceKey {
        ResourceKey {
            domain: 1,
            key: k.into(),
            shared,
        }
    }

    #[tokio::test]
    async fn readers_share_writers_exclude_and_waiters_go_in_order() {
        let table = Arc::new(LockTable::default());
        let r1 = table.acquire(&[key("a", true)], false).await.unwrap();
        let r2 = table.acquire(&[key("a", true)], false).await.unwrap();
        assert!(matches!(
            table.acquire(&[key("a", false)], false).await,
            Err(CoordError::ResourceAcquired(_))
        ));
        // A writer queues; a later reader queues behind it instead of starving it.
        let t = table.clone();
        let writer = tokio::spawn(async move { t.acquire(&[key("a", false)], true).await });
        while table.state.lock().queue.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            table.acquire(&[key("a", true)], false).await,
            Err(CoordError::ResourceAcquired(_))
        ));
        // Another key is independent.
        let other = table.acquire(&[key("b", false)], false).await.unwrap();
        drop((r1, r2));
        let w = writer.await.unwrap().unwrap();
        assert!(table.state.lock().queue.is_empty());
        drop((w, other));
        assert!(table.state.lock().held.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let table = Arc::new(LockTable::default());
        let held = table.acquire(&[key("a", false)], false).await.unwrap();
        let t = table.clone();
        let waiter = tokio::spawn(async move { t.acquire(&[key("a", false)], true).await });
        while table.state.lock().queue.is_empty() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
        assert!(table.state.lock().queue.is_empty());
        drop(held);
        assert!(table.state.lock().held.is_empty());
        assert!(table.acquire(&[key("a", false)], false).await.is_ok());
    }

    #[test]
    fn merge_takes_flags_from_both_sides() {
        let v = |name: &str, sent, acked| VChannelProto {
            name: name.into(),
            sent,
            acked,
            outcome: sent.then_some(OutcomeProto {
                id_hi: 0,
                id_lo: 1,
                timestamp: 2,
            }),
        };
        let base = TaskProto {
            version: TASK_FORMAT_VERSION,
            id: 7,
            message: vec![],
            vchannels: vec![v("a_1v0", true, false), v("b_1v0", false, false)],
            state: StateProto::Pending as i32,
            resource_keys: vec![],
        };
        let mut theirs = base.clone();
        theirs.vchannels = vec![v("a_1v0", false, true), v("b_1v0", true, false)];
        theirs.state = StateProto::WaitAck as i32;
        let merged = merge(&base, &theirs).unwrap();
        assert_eq!(
            merged.vchannels,
            vec![v("a_1v0", true, true), v("b_1v0", true, false)]
        );
        assert_eq!(merged.state(), StateProto::WaitAck);
        theirs.id = 8;
        assert!(merge(&base, &theirs).is_err());
    }

    #[test]
    fn outcome_round_trips_through_the_proto() {
        let o = AppendOutcome {
            id: MessageId(u128::MAX - 5),
            timestamp: Timestamp(42),
        };
        assert_eq!(AppendOutcome::from(OutcomeProto::from(o)), o);
    }
}
