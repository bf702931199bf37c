//! Node discovery: streaming nodes register under a lease, the coordinator watches them.
//!
//! # Contract
//!
//! * A [`NodeSession`] owns `{root}/node/{id}`, a [`NodeRecord`] attached to its own lease. At
//!   most one live session per id: registering an id whose key exists fails with
//!   [`CoordError::Conflict`] and leaves the existing registration alone.
//! * The session refreshes its lease about every `ttl / 3` in a background task. While the
//!   store is unavailable (an etcd restart or pause) it keeps trying and the node keeps serving:
//!   whatever the coordinator decides meanwhile, storage fencing keeps a moved WAL's old owner
//!   from writing. When a refresh finds the lease gone (it lapsed while the store was away, or
//!   was revoked), the session registers again under a new lease: a new incarnation, which the
//!   coordinator treats like a restarted node. Only when that finds the id registered by
//!   another session is the session *lost* ([`NodeSession::lost`] resolves) for good.
//! * [`NodeSession::close`] revokes the lease, so the key disappears at once (graceful leave).
//!   Dropping the session only stops the refreshes: the key disappears when the lease lapses,
//!   which is what a crashed node looks like.
//! * A [`NodeWatcher`] mirrors the valid registrations: it scans the prefix, then watches from the
//!   snapshot's revision + 1, so no change is missed. When the watch fails (compacted history, an
//!   unavailable store) it re-scans and re-watches with backoff. A key whose value does not decode,
//!   whose id does not parse, or whose record names another id is not a valid registration: it
//!   is logged and left out (a valid node overwritten with garbage drops out too).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use sluice_meta::{Condition, KeyValue, LeaseId, MetaError, MetaStore, Revision, WatchEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use sluice_types::backoff::Backoff;

use crate::keys::Keys;
use crate::{CoordError, NodeId, NodeInfo, Nodes, Result};

/// A background task owned by a handle: cancelled when the handle drops it, awaited by
/// [`OwnedTask::stop`] on an orderly shutdown.
pub(crate) struct OwnedTask {
    cancel: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl OwnedTask {
    /// Spawns `task`, handing it the token that tells it to stop.
    pub(crate) fn spawn<F>(task: impl FnOnce(CancellationToken) -> F) -> OwnedTask
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(task(cancel.clone()));
        OwnedTask {
            cancel,
            handle: Some(handle),
        }
    }

    /// Cancels the task and waits for it to finish.
    pub(crate) async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.take()
            && let Err(e) = handle.await
        {
            tracing::warn!(error = %e, "background task failed");
        }
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The default lease TTL of a node registration.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(10);

/// The stored value of `{root}/node/{id}`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeRecord {
    /// The node's id (must match the key).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Where the node's gRPC server listens.
    #[prost(string, tag = "2")]
    pub address: String,
    /// The node is shutting down gracefully.
    #[prost(bool, tag = "3")]
    pub stopping: bool,
}

impl From<&NodeInfo> for NodeRecord {
    fn from(info: &NodeInfo) -> NodeRecord {
        NodeRecord {
            id: info.id.0,
            address: info.address.clone(),
            stopping: info.stopping,
        }
    }
}

/// Keeps `lease` alive about every `ttl / 3` until `stop` fires. Cancels `lost` (and returns)
/// when the lease is gone or no refresh succeeded for a whole `ttl`.
pub(crate) async fn keep_lease_alive(
    store: Arc<dyn MetaStore>,
    lease: LeaseId,
    ttl: Duration,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    if refresh_lease(&store, lease, ttl, &stop, true).await != Refreshes::Stopped {
        lost.cancel();
    }
}

/// Why [`refresh_lease`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refreshes {
    Stopped,
    /// The store says the lease does not exist (lapsed or revoked).
    Gone,
    /// No refresh succeeded for a whole TTL (only when giving up was asked for).
    Stale,
}

/// Refreshes `lease` about every `ttl / 3` until `stop` fires or the lease is gone; with
/// `give_up`, also when no refresh succeeded for a whole `ttl` (the lease may have lapsed
/// unseen). Without it, an unavailable store is retried for as long as it takes.
async fn refresh_lease(
    store: &Arc<dyn MetaStore>,
    lease: LeaseId,
    ttl: Duration,
    stop: &CancellationToken,
    give_up: bool,
) -> Refreshes {
    let period = (ttl / 3).max(Duration::from_millis(10));
    let mut last_ok = Instant::now();
    let mut next = Instant::now() + period;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Refreshes::Stopped,
            () = tokio::time::sleep_until(next) => {}
        }
        let refreshed = tokio::select! {
            () = stop.cancelled() => return Refreshes::Stopped,
            r = tokio::time::timeout(ttl, store.keep_alive(lease)) => r.unwrap_or_else(|_| {
                Err(MetaError::Unavailable("lease refresh timed out".into()))
            }),
        };
        match refreshed {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(lease = lease.0, failures, "lease refreshed again");
                }
                failures = 0;
                last_ok = Instant::now();
                next = last_ok + period;
            }
            Err(MetaError::LeaseNotFound(_)) => {
                tracing::warn!(lease = lease.0, "lease is gone");
                return Refreshes::Gone;
            }
            Err(e) if give_up && last_ok.elapsed() >= ttl => {
                tracing::warn!(lease = lease.0, error = %e, "no lease refresh for a whole TTL");
                return Refreshes::Stale;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(lease = lease.0, error = %e, "lease refresh failed; retrying");
                } else {
                    tracing::debug!(lease = lease.0, error = %e, "lease refresh failed; retrying");
                }
                next = Instant::now() + (period / 4).max(Duration::from_millis(10));
            }
        }
    }
}

/// A node's registration (see the module docs).
pub struct NodeSession {
    shared: Arc<Registration>,
    keep_alive: OwnedTask,
}

/// What a [`NodeSession`] and its background task share.
struct Registration {
    store: Arc<dyn MetaStore>,
    key: String,
    ttl: Duration,
    /// The current lease, the registered info and the mod revision of the key's last write.
    state: Mutex<(LeaseId, NodeInfo, Revision)>,
    /// Serialises writes of the key (each is a compare-and-set on the last one's revision).
    write: tokio::sync::Mutex<()>,
    lost: CancellationToken,
}

impl std::fmt::Debug for NodeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSession")
            .field("key", &self.shared.key)
            .field("lease", &self.lease())
            .finish()
    }
}

/// Grants a lease of `ttl` and writes `info` at `key` under it, only if the key is absent
/// ([`CoordError::Conflict`] otherwise). Returns the lease and the key's create revision.
async fn put_registration(
    store: &Arc<dyn MetaStore>,
    key: &str,
    info: &NodeInfo,
    ttl: Duration,
) -> Result<(LeaseId, Revision)> {
    let lease = store.grant(ttl).await?;
    let value = Bytes::from(NodeRecord::from(info).encode_to_vec());
    match store
        .put(key, value, Condition::KeyAbsent, Some(lease))
        .await
    {
        Ok(revision) => Ok((lease, revision)),
        Err(e) => {
            if let Err(revoke) = store.revoke(lease).await {
                tracing::debug!(lease = lease.0, error = %revoke, "could not revoke an unused lease");
            }
            Err(match e {
                MetaError::ConditionFailed { .. } => {
                    CoordError::Conflict(format!("{} is already registered", info.id))
                }
                e => e.into(),
            })
        }
    }
}

/// Keeps the registration alive until `stop` fires: refreshes its lease while the store is
/// unavailable for as long as it takes, and registers again under a new lease when the lease is
/// found gone. Ends the session (cancels `lost`) only when the id is registered by someone else.
async fn keep_registered(reg: Arc<Registration>, stop: CancellationToken) {
    loop {
        let lease = reg.state.lock().0;
        if refresh_lease(&reg.store, lease, reg.ttl, &stop, false).await == Refreshes::Stopped {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let write = tokio::select! {
                () = stop.cancelled() => return,
                w = reg.write.lock() => w,
            };
            let mut info = reg.state.lock().1.clone();
            match put_registration(&reg.store, &reg.key, &info, reg.ttl).await {
                Ok((lease, revision)) => {
                    info.incarnation = revision;
                    tracing::info!(node = %info.id, lease = lease.0, incarnation = revision, "node registered again after its lease was lost");
                    *reg.state.lock() = (lease, info, revision);
                    break;
                }
                Err(CoordError::Conflict(e)) => {
                    tracing::error!(node = %info.id, error = %e, "the lease was lost and another process registered this node id");
                    reg.lost.cancel();
                    return;
                }
                Err(e) => {
                    drop(write);
                    tracing::warn!(node = %info.id, error = %e, "registering again failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
}

impl NodeSession {
    /// Grants a lease of `ttl`, writes `{root}/node/{id}` under it (only if absent) and starts
    /// keeping it alive (see the module docs).
    pub async fn register(
        store: Arc<dyn MetaStore>,
        keys: &Keys,
        mut info: NodeInfo,
        ttl: Duration,
    ) -> Result<NodeSession> {
        if ttl.is_zero() {
            return Err(CoordError::InvalidArgument(
                "node TTL must be positive".into(),
            ));
        }
        let key = keys.node(info.id);
        let (lease, revision) = put_registration(&store, &key, &info, ttl).await?;
        // Created just now (the key was absent), so this is the registration's create revision:
        // what every watcher reads as the node's incarnation.
        info.incarnation = revision;
        tracing::info!(node = %info.id, address = %info.address, "node registered");
        let shared = Arc::new(Registration {
            store,
            key,
            ttl,
            state: Mutex::new((lease, info, revision)),
            write: tokio::sync::Mutex::new(()),
            lost: CancellationToken::new(),
        });
        let keep_alive = OwnedTask::spawn(|stop| keep_registered(shared.clone(), stop));
        Ok(NodeSession { shared, keep_alive })
    }

    /// The registered info (its incarnation changes when the session registers again).
    pub fn info(&self) -> NodeInfo {
        self.shared.state.lock().1.clone()
    }

    /// The session's current lease.
    pub fn lease(&self) -> LeaseId {
        self.shared.state.lock().0
    }

    /// Marks the node as stopping (it gets nothing new). Fails with [`CoordError::Conflict`]
    /// when the key is not this session's at the moment (its lease is gone).
    pub async fn set_stopping(&self) -> Result<()> {
        let reg = &self.shared;
        let _write = reg.write.lock().await;
        let (lease, mut info, revision) = reg.state.lock().clone();
        info.stopping = true;
        let value = Bytes::from(NodeRecord::from(&info).encode_to_vec());
        let rev = reg
            .store
            .put(
                &reg.key,
                value,
                Condition::ModRevision(revision),
                Some(lease),
            )
            .await
            .map_err(|e| match e {
                MetaError::ConditionFailed { .. } | MetaError::LeaseNotFound(_) => {
                    CoordError::Conflict(format!(
                        "{} is no longer registered by this session",
                        info.id
                    ))
                }
                e => e.into(),
            })?;
        *reg.state.lock() = (lease, info, rev);
        Ok(())
    }

    /// Resolves when the session is lost for good: its lease was lost and another process
    /// registered the same id (see the module docs).
    pub async fn lost(&self) {
        self.shared.lost.cancelled().await;
    }

    /// Whether the session is lost for good.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.is_cancelled()
    }

    /// Leaves gracefully: stops the refreshes and revokes the lease, deleting the key.
    pub async fn close(self) -> Result<()> {
        let NodeSession { shared, keep_alive } = self;
        keep_alive.stop().await;
        let lease = shared.state.lock().0;
        match shared.store.revoke(lease).await {
            Ok(()) | Err(MetaError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Watches the node registrations and publishes the live set (see the module docs).
pub struct NodeWatcher {
    rx: watch::Receiver<Nodes>,
    task: OwnedTask,
}

impl std::fmt::Debug for NodeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeWatcher")
            .field("nodes", &*self.rx.borrow())
            .finish()
    }
}

/// Parses one registration; `None` (with a warning) when it is not a valid one.
fn parse_node(prefix: &str, kv: &KeyValue) -> Option<NodeInfo> {
    let id = kv.key.strip_prefix(prefix)?;
    let Ok(id) = id.parse::<u64>() else {
        tracing::warn!(key = %kv.key, "ignoring a node key whose id is not a number");
        return None;
    };
    let record = match NodeRecord::decode(kv.value.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring a malformed node registration");
            return None;
        }
    };
    if record.id != id {
        tracing::warn!(key = %kv.key, record_id = record.id, "ignoring a node registration naming another id");
        return None;
    }
    Some(NodeInfo {
        id: NodeId(id),
        address: record.address,
        stopping: record.stopping,
        incarnation: kv.create_revision,
    })
}

fn node_id_of(prefix: &str, key: &str) -> Option<NodeId> {
    key.strip_prefix(prefix)?.parse().ok().map(NodeId)
}

/// Scans the prefix into a node set; returns it with the snapshot revision.
async fn scan_nodes(store: &dyn MetaStore, prefix: &str) -> Result<(Nodes, Revision)> {
    let (kvs, revision) = store.scan_prefix(prefix).await?;
    let nodes = kvs
        .iter()
        .filter_map(|kv| parse_node(prefix, kv))
        .map(|n| (n.id, n))
        .collect();
    Ok((nodes, revision))
}

impl NodeWatcher {
    /// Scans the current registrations (an error here is returned) and starts watching.
    pub async fn start(store: Arc<dyn MetaStore>, keys: &Keys) -> Result<NodeWatcher> {
        let prefix = keys.node_prefix();
        let (nodes, revision) = scan_nodes(store.as_ref(), &prefix).await?;
        let (tx, rx) = watch::channel(nodes);
        let task = OwnedTask::spawn(|stop| watch_nodes(store, prefix, revision, tx, stop));
        Ok(NodeWatcher { rx, task })
    }

    /// A receiver of the live node set; it changes on every registration, update and leave.
    pub fn subscribe(&self) -> watch::Receiver<Nodes> {
        self.rx.clone()
    }

    /// The live node set now.
    pub fn nodes(&self) -> Nodes {
        self.rx.borrow().clone()
    }

    /// Stops watching and waits for the task to end (dropping the watcher also stops it).
    /// Receivers keep the last set.
    pub async fn close(self) {
        self.task.stop().await;
    }
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn watch_nodes(
    store: Arc<dyn MetaStore>,
    prefix: String,
    mut revision: Revision,
    tx: watch::Sender<Nodes>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
    loop {
        match follow(store.as_ref(), &prefix, revision, &tx, &stop).await {
            Follow::Stopped => return,
            Follow::Failed(e) => {
                tracing::warn!(prefix = %prefix, error = %e, "node watch failed; re-scanning");
            }
        }
        // Re-scan (with backoff) until it works, then watch again from the new snapshot.
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            match scan_nodes(store.as_ref(), &prefix).await {
                Ok((nodes, rev)) => {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != nodes;
                        *cur = nodes;
                        changed
                    });
                    revision = rev;
                    break;
                }
                Err(e) => tracing::warn!(prefix = %prefix, error = %e, "node re-scan failed"),
            }
        }
        backoff.reset();
    }
}

enum Follow {
    Stopped,
    Failed(CoordError),
}

/// Applies watch events from `revision + 1` until the watch fails or `stop` fires.
async fn follow(
    store: &dyn MetaStore,
    prefix: &str,
    revision: Revision,
    tx: &watch::Sender<Nodes>,
    stop: &CancellationToken,
) -> Follow {
    let mut stream = match store.watch_prefix(prefix, revision + 1).await {
        Ok(s) => s,
        Err(e) => return Follow::Failed(e.into()),
    };
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return Follow::Stopped,
            e = stream.next() => e,
        };
        match event {
            None => {
                return Follow::Failed(CoordError::Meta(MetaError::Unavailable(
                    "node watch ended".into(),
                )));
            }
            Some(Err(e)) => return Follow::Failed(e.into()),
            Some(Ok(WatchEvent::Put(kv))) => {
                let Some(id) = node_id_of(prefix, &kv.key) else {
                    tracing::warn!(key = %kv.key, "ignoring a node key whose id is not a number");
                    continue;
                };
                let node = parse_node(prefix, &kv);
                tx.send_if_modified(|nodes| match node {
                    Some(node) => nodes.insert(id, node.clone()) != Some(node),
                    None => nodes.remove(&id).is_some(),
                });
            }
            Some(Ok(WatchEvent::Delete { key, .. })) => {
                if let Some(id) = node_id_of(prefix, &key) {
                    tx.send_if_modified(|nodes| nodes.remove(&id).is_some());
                }
            }
        }
    }
}
