//! The in-process state machine shared by the `memory` and `embedded` backends: the key map,
//! the revision counter, watch history and watchers, and leases with their reaper task.
//!
//! A persistent backend plugs in a [`Persist`]: every write is committed there first, under the
//! state lock, and applied in memory only once that succeeded, so memory never runs ahead of disk.
//! The lock is a `parking_lot` mutex held across that synchronous commit (one redb transaction,
//! one fsync): it serialises writers, which a revisioned store needs anyway, and is never held
//! across an `.await`.
//!
//! Watchers get an unbounded channel each: a watch that is not polled buffers its events in
//! memory. Metadata traffic is small; callers that stop reading must drop the stream.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    Condition, KeyValue, LeaseId, MetaError, Result, Revision, TxnOp, TxnResult, WatchEvent,
    WatchStream, check_condition, check_key, check_ttl, check_txn,
};

/// Watch events kept for watches that start in the past; older ones are compacted.
pub(crate) const DEFAULT_HISTORY: usize = 10_000;

/// Where a persistent backend writes each change before it becomes visible.
pub(crate) trait Persist: Send + 'static {
    /// Atomically records `revision` as the store revision, the `puts` and the `deletes`.
    fn commit(&mut self, revision: Revision, puts: &[KeyValue], deletes: &[String]) -> Result<()>;
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

struct State {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    /// Events at or below this revision are no longer in `history`.
    compacted: Revision,
    history: VecDeque<WatchEvent>,
    history_limit: usize,
    watchers: Vec<Watcher>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: i64,
    persist: Option<Box<dyn Persist>>,
}

enum Change {
    Put {
        key: String,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

/// The shared core; backends wrap it in an [`EngineHandle`].
pub(crate) struct Engine {
    state: Mutex<State>,
    /// Wakes the reaper when a lease is granted or refreshed.
    lease_changed: Notify,
}

/// Owns the engine and its reaper task; dropping it stops the task and ends every watch.
pub(crate) struct EngineHandle {
    engine: Arc<Engine>,
    _reaper: DropGuard,
}

impl EngineHandle {
    /// Starts an engine over `kvs` at `revision` (history starts empty: watches from at or
    /// below `revision` get [`MetaError::Compacted`], except from `revision + 1` on).
    /// Must be called inside a tokio runtime (it spawns the lease reaper).
    pub(crate) fn start(
        kvs: BTreeMap<String, KeyValue>,
        revision: Revision,
        history_limit: usize,
        persist: Option<Box<dyn Persist>>,
    ) -> Self {
        let engine = Arc::new(Engine {
            state: Mutex::new(State {
                kvs,
                revision,
                compacted: revision,
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                watchers: Vec::new(),
                leases: HashMap::new(),
                next_lease: 1,
                persist,
            }),
            lease_changed: Notify::new(),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(reap_leases(Arc::downgrade(&engine), cancel.clone()));
        EngineHandle {
            engine,
            _reaper: cancel.drop_guard(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        Ok(self.engine.state.lock().kvs.get(key).cloned())
    }

    pub(crate) fn scan_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let st = self.engine.state.lock();
        let kvs = st
            .kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, st.revision))
    }

    pub(crate) fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        check_key(key)?;
        check_condition(condition)?;
        let mut st = self.engine.state.lock();
        st.check(key, condition)?;
        let change = Change::Put {
            key: key.to_owned(),
            value,
            lease,
        };
        st.apply(vec![change])
    }

    pub(crate) fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>> {
        check_key(key)?;
        check_condition(condition)?;
        let mut st = self.engine.state.lock();
        st.check(key, condition)?;
        if !st.kvs.contains_key(key) {
            return Ok(None);
        }
        st.apply(vec![Change::Delete {
            key: key.to_owned(),
        }])
        .map(Some)
    }

    pub(crate) fn txn(
        &self,
        compares: Vec<(String, Condition)>,
        ops: Vec<TxnOp>,
    ) -> Result<TxnResult> {
        check_txn(&compares, &ops)?;
        let mut st = self.engine.state.lock();
        if compares.iter().any(|(k, c)| st.check(k, *c).is_err()) {
            return Ok(TxnResult {
                committed: false,
                revision: st.revision,
            });
        }
        let changes = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => Change::Put { key, value, lease },
                TxnOp::Delete { key } => Change::Delete { key },
            })
            .collect();
        let revision = st.apply(changes)?;
        Ok(TxnResult {
            committed: true,
            revision,
        })
    }

    pub(crate) fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<WatchStream> {
        if from_revision <= 0 {
            return Err(MetaError::InvalidArgument(format!(
                "watch from revision {from_revision}: revisions start at 1"
            )));
        }
        let mut st = self.engine.state.lock();
        if from_revision <= st.compacted {
            let err = MetaError::Compacted {
                requested: from_revision,
                compacted: st.compacted,
            };
            return Ok(Box::pin(futures::stream::once(async move { Err(err) })));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for ev in &st.history {
            if ev.revision() >= from_revision && ev.key().starts_with(prefix) {
                // The receiver is alive: we hold it.
                let _ = tx.send(ev.clone());
            }
        }
        st.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
        });
        drop(st);
        Ok(watch_stream(rx, from_revision))
    }

    pub(crate) fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        check_ttl(ttl)?;
        let id = {
            let mut st = self.engine.state.lock();
            let id = LeaseId(st.next_lease);
            st.next_lease += 1;
            st.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        self.engine.lease_changed.notify_one();
        Ok(id)
    }

    pub(crate) fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let now = Instant::now();
        let mut st = self.engine.state.lock();
        match st.leases.get_mut(&lease) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(l.ttl)
            }
            _ => Err(MetaError::LeaseNotFound(lease)),
        }
    }

    pub(crate) fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.engine.state.lock();
        let Some(l) = st.leases.remove(&lease) else {
            return Err(MetaError::LeaseNotFound(lease));
        };
        st.drop_lease_keys(l)
    }
}

impl State {
    fn check(&self, key: &str, condition: Condition) -> Result<()> {
        let actual = self.kvs.get(key).map(|kv| kv.mod_revision);
        let holds = match condition {
            Condition::None => true,
            Condition::KeyAbsent => actual.is_none(),
            Condition::ModRevision(r) => actual == Some(r),
        };
        if holds {
            Ok(())
        } else {
            Err(MetaError::ConditionFailed {
                key: key.to_owned(),
                actual_revision: actual,
            })
        }
    }

    /// Applies `changes` at one new revision; returns it (or the current one if nothing changed).
    fn apply(&mut self, changes: Vec<Change>) -> Result<Revision> {
        let now = Instant::now();
        for c in &changes {
            if let Change::Put {
                lease: Some(id), ..
            } = c
            {
                match self.leases.get(id) {
                    Some(l) if l.deadline > now => {}
                    _ => return Err(MetaError::LeaseNotFound(*id)),
                }
            }
        }
        let revision = self.revision + 1;
        // Kept in op order: watchers see a txn's changes in the order it listed them.
        let mut applied: Vec<WatchEvent> = Vec::with_capacity(changes.len());
        for c in changes {
            match c {
                Change::Put { key, value, lease } => {
                    let create_revision =
                        self.kvs.get(&key).map_or(revision, |kv| kv.create_revision);
                    applied.push(WatchEvent::Put(KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: revision,
                        lease,
                    }));
                }
                Change::Delete { key } => {
                    if self.kvs.contains_key(&key) {
                        applied.push(WatchEvent::Delete { key, revision });
                    }
                }
            }
        }
        if applied.is_empty() {
            return Ok(self.revision);
        }
        if let Some(p) = self.persist.as_mut() {
            let mut puts = Vec::new();
            let mut deletes = Vec::new();
            for ev in &applied {
                match ev {
                    WatchEvent::Put(kv) => puts.push(kv.clone()),
                    WatchEvent::Delete { key, .. } => deletes.push(key.clone()),
                }
            }
            p.commit(revision, &puts, &deletes)?;
        }
        self.revision = revision;
        for ev in &applied {
            match ev {
                WatchEvent::Put(kv) => {
                    let old = self.kvs.insert(kv.key.clone(), kv.clone());
                    self.detach(old.as_ref());
                    if let Some(l) = kv.lease.and_then(|id| self.leases.get_mut(&id)) {
                        l.keys.insert(kv.key.clone());
                    }
                }
                WatchEvent::Delete { key, .. } => {
                    let old = self.kvs.remove(key);
                    self.detach(old.as_ref());
                }
            }
        }
        let events = applied;
        self.publish(events);
        Ok(revision)
    }

    fn detach(&mut self, old: Option<&KeyValue>) {
        if let Some(kv) = old
            && let Some(l) = kv.lease.and_then(|id| self.leases.get_mut(&id))
        {
            l.keys.remove(&kv.key);
        }
    }

    fn drop_lease_keys(&mut self, lease: Lease) -> Result<()> {
        let changes = lease
            .keys
            .into_iter()
            .map(|key| Change::Delete { key })
            .collect();
        self.apply(changes).map(|_| ())
    }

    fn publish(&mut self, events: Vec<WatchEvent>) {
        self.watchers.retain(|w| {
            events
                .iter()
                .filter(|ev| ev.key().starts_with(&w.prefix))
                .all(|ev| w.tx.send(ev.clone()).is_ok())
        });
        self.history.extend(events);
        while self.history.len() > self.history_limit {
            let Some(ev) = self.history.pop_front() else {
                break;
            };
            self.compacted = ev.revision();
        }
        // Never keep half a revision: a watch from it would miss the compacted part.
        while self
            .history
            .front()
            .is_some_and(|ev| ev.revision() <= self.compacted)
        {
            self.history.pop_front();
        }
    }
}

fn watch_stream(rx: mpsc::UnboundedReceiver<WatchEvent>, _from: Revision) -> WatchStream {
    Box::pin(futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(ev) => Some((Ok(ev), Some(rx))),
            None => Some((Err(MetaError::Shutdown), None)),
        }
    }))
}

/// Ends lapsed leases until the engine is dropped or `cancel` fires.
async fn reap_leases(engine: Weak<Engine>, cancel: CancellationToken) {
    const IDLE_CHECK: Duration = Duration::from_secs(1);
    loop {
        let next = {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut st = engine.state.lock();
            let lapsed: Vec<LeaseId> = st
                .leases
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in lapsed {
                if let Some(l) = st.leases.remove(&id)
                    && let Err(e) = st.drop_lease_keys(l)
                {
                    tracing::warn!(lease = id.0, error = %e, "could not delete the keys of a lapsed lease");
                }
            }
            let next = st
                .leases
                .values()
                .map(|l| l.deadline)
                .min()
                .unwrap_or(now + IDLE_CHECK)
                .min(now + IDLE_CHECK);
            drop(st);
            (next, notified_owned(engine.clone()))
        };
        let (deadline, wake) = next;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
            () = wake => {}
        }
    }
}

/// Waits for a lease change without borrowing the engine across the await in the caller.
async fn notified_owned(engine: Arc<Engine>) {
    engine.lease_changed.notified().await;
}

/// Implements [`MetaStore`](crate::MetaStore) for a store whose `engine` field is an
/// [`EngineHandle`]: the in-process backends differ only in how they persist.
macro_rules! delegate_meta_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl MetaStore for $ty {
            async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
                self.engine.get(key)
            }

            async fn scan_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
                self.engine.scan_prefix(prefix)
            }

            async fn put(
                &self,
                key: &str,
                value: Bytes,
                condition: Condition,
                lease: Option<LeaseId>,
            ) -> Result<Revision> {
                self.engine.put(key, value, condition, lease)
            }

            async fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>> {
                self.engine.delete(key, condition)
            }

            async fn txn(
                &self,
                compares: Vec<(String, Condition)>,
                ops: Vec<TxnOp>,
            ) -> Result<TxnResult> {
                self.engine.txn(compares, ops)
            }

            async fn watch_prefix(
                &self,
                prefix: &str,
                from_revision: Revision,
            ) -> Result<WatchStream> {
                self.engine.watch_prefix(prefix, from_revision)
            }

            async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
                self.engine.grant(ttl)
            }

            async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
                self.engine.keep_alive(lease)
            }

            async fn revoke(&self, lease: LeaseId) -> Result<()> {
                self.engine.revoke(lease)
            }
        }
    };
}
pub(crate) use delegate_meta_store;
