//! Resource-key locks: readers–writer locks per `(domain, key)`, first come first served.

use super::*;

/// One lock: a resource key without its mode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct LockName {
    pub(super) domain: i32,
    pub(super) key: String,
}

impl LockName {
    pub(super) fn of(key: &ResourceKey) -> LockName {
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
pub(super) fn conflicts(a: &ResourceKey, b: &ResourceKey) -> bool {
    a.domain == b.domain && a.key == b.key && !(a.shared && b.shared)
}

#[derive(Default)]
pub(super) struct Holders {
    pub(super) shared: usize,
    pub(super) exclusive: usize,
}

pub(super) struct Waiter {
    pub(super) ticket: u64,
    pub(super) keys: Vec<ResourceKey>,
    pub(super) granted: oneshot::Sender<()>,
}

#[derive(Default)]
pub(super) struct LockState {
    pub(super) held: HashMap<LockName, Holders>,
    /// Broadcasts waiting, first come first served.
    pub(super) queue: VecDeque<Waiter>,
    /// Tickets granted whose waiter has not picked up its guard yet.
    pub(super) granted: HashSet<u64>,
    pub(super) next_ticket: u64,
}

impl LockState {
    /// The first key of `keys` that a current holder excludes.
    pub(super) fn blocker<'k>(&self, keys: &'k [ResourceKey]) -> Option<&'k ResourceKey> {
        keys.iter().find(|k| {
            self.held
                .get(&LockName::of(k))
                .is_some_and(|h| h.exclusive > 0 || (!k.shared && h.shared > 0))
        })
    }

    pub(super) fn take(&mut self, keys: &[ResourceKey]) {
        for k in keys {
            let h = self.held.entry(LockName::of(k)).or_default();
            if k.shared {
                h.shared += 1;
            } else {
                h.exclusive += 1;
            }
        }
    }

    pub(super) fn release(&mut self, keys: &[ResourceKey]) {
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
    pub(super) fn grant_waiters(&mut self) {
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
pub(super) struct LockTable {
    pub(super) state: Mutex<LockState>,
}

impl LockTable {
    /// Takes every key of `keys` at once; waits (first come, first served) when one is held, or
    /// fails with `ResourceAcquired` when `wait` is false.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        keys: &[ResourceKey],
        wait: bool,
    ) -> Result<LockGuard> {
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
    pub(super) fn hold(self: &Arc<Self>, keys: &[ResourceKey]) -> LockGuard {
        let mut s = self.state.lock();
        if let Some(k) = s.blocker(keys) {
            warn!(key = %LockName::of(k), "two persisted broadcast tasks hold conflicting keys");
        }
        s.take(keys);
        self.guard(keys.to_vec())
    }

    pub(super) fn guard(self: &Arc<Self>, keys: Vec<ResourceKey>) -> LockGuard {
        LockGuard {
            table: self.clone(),
            keys,
        }
    }
}

/// A waiter in the queue; dropping it (the caller gave up) leaves the queue or, when it was
/// granted meanwhile, releases the keys.
pub(super) struct Pending {
    pub(super) table: Arc<LockTable>,
    pub(super) ticket: u64,
    pub(super) keys: Option<Vec<ResourceKey>>,
}

impl Pending {
    pub(super) fn into_guard(mut self) -> LockGuard {
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
pub(super) struct LockGuard {
    pub(super) table: Arc<LockTable>,
    pub(super) keys: Vec<ResourceKey>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut s = self.table.state.lock();
        s.release(&self.keys);
        s.grant_waiters();
    }
}
