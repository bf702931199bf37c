//! Coordinator leader election through the meta store.
//!
//! # Contract
//!
//! * The leader is whoever holds `{root}/leader`: a [`LeaderRecord`] attached to the holder's
//!   lease, written only when the key is absent. So there is at most one leader at a time, and
//!   the key vanishes when the leader resigns (revokes its lease) or its lease lapses (a crash).
//! * [`Election::campaign`] grants a lease, keeps it alive, and tries to create the key; while
//!   someone else holds it, it watches the key and tries again once it is deleted. It resolves
//!   only when this candidate holds the key.
//! * Candidate names are unique (a coordinator is named after the address it serves on). A
//!   campaign that finds the key under its own name but another lease takes it over at once:
//!   that holder is a previous incarnation of the same candidate (the same process before it
//!   lost its lease, or the process that served on this address before a restart), which does
//!   not act as leader any more. So a restarted coordinator does not wait out its own lease.
//! * A [`Leadership`] is *lost* ([`Leadership::lost`] resolves) when its lease could not be
//!   refreshed or the key was deleted or rewritten by anyone else. The holder must stop acting as
//!   leader then. [`Leadership::resign`] revokes the lease; dropping a `Leadership` only stops
//!   the refreshes (the key lapses with the lease, as after a crash).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use sluice_meta::{
    Condition, KeyValue, LeaseId, MetaError, MetaStore, Revision, TxnOp, WatchEvent,
};
use tokio_util::sync::CancellationToken;

use sluice_types::backoff::Backoff;

use crate::keys::Keys;
use crate::registry::{OwnedTask, keep_lease_alive};
use crate::{CoordError, Result};

/// The default lease TTL of the leader key.
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(10);

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The stored value of `{root}/leader`.
#[derive(Clone, PartialEq, Message)]
pub struct LeaderRecord {
    /// The leader's candidate name (e.g. its address).
    #[prost(string, tag = "1")]
    pub candidate: String,
}

fn decode_leader(kv: &KeyValue) -> Result<LeaderRecord> {
    LeaderRecord::decode(kv.value.as_ref()).map_err(|e| CoordError::Malformed {
        key: kv.key.clone(),
        reason: format!("not a leader record: {e}"),
    })
}

/// The current leader's candidate name, if any.
pub async fn current_leader(store: &dyn MetaStore, keys: &Keys) -> Result<Option<String>> {
    match store.get(&keys.leader()).await? {
        None => Ok(None),
        Some(kv) => Ok(Some(decode_leader(&kv)?.candidate)),
    }
}

/// One candidate's campaign (see the module docs).
pub struct Election {
    store: Arc<dyn MetaStore>,
    key: String,
    candidate: String,
    ttl: Duration,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("key", &self.key)
            .field("candidate", &self.candidate)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A lease being kept alive; dropping it stops the refreshes.
struct KeptLease {
    id: LeaseId,
    lost: CancellationToken,
    task: OwnedTask,
}

impl Election {
    /// A campaign for `candidate` with leases of `ttl`.
    pub fn new(
        store: Arc<dyn MetaStore>,
        keys: &Keys,
        candidate: impl Into<String>,
        ttl: Duration,
    ) -> Election {
        Election {
            store,
            key: keys.leader(),
            candidate: candidate.into(),
            ttl,
        }
    }

    async fn lease(&self) -> Result<KeptLease> {
        let id = self.store.grant(self.ttl).await?;
        let lost = CancellationToken::new();
        let (store, ttl) = (self.store.clone(), self.ttl);
        let task = OwnedTask::spawn(|stop| keep_lease_alive(store, id, ttl, stop, lost.clone()));
        Ok(KeptLease { id, lost, task })
    }

    /// Campaigns until this candidate is the leader. While the store is unavailable it keeps
    /// retrying with backoff (drop the future to give up); an error the store will not recover
    /// from ends the campaign and revokes its lease.
    pub async fn campaign(&self) -> Result<Leadership> {
        if self.ttl.is_zero() {
            return Err(CoordError::InvalidArgument(
                "leader TTL must be positive".into(),
            ));
        }
        let value = Bytes::from(
            LeaderRecord {
                candidate: self.candidate.clone(),
            }
            .encode_to_vec(),
        );
        let mut lease = self.lease().await?;
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            if lease.lost.is_cancelled() {
                lease = self.lease().await?;
            }
            let attempt = match self
                .store
                .put(
                    &self.key,
                    value.clone(),
                    Condition::KeyAbsent,
                    Some(lease.id),
                )
                .await
            {
                Ok(revision) => return Ok(self.won(lease, revision)),
                // Someone holds the key: wait for it to go, then try again.
                Err(MetaError::ConditionFailed { .. }) => {
                    self.wait_until_free(&lease, &value).await
                }
                Err(MetaError::LeaseNotFound(_)) => {
                    lease = self.lease().await?;
                    continue;
                }
                Err(e) => Err(e.into()),
            };
            match attempt {
                Ok(Some(revision)) => return Ok(self.won(lease, revision)),
                Ok(None) => backoff.reset(),
                Err(e) if e.retryable() => {
                    // The store is unavailable (a put may even have applied: the next round
                    // finds the key under our lease). Keep campaigning.
                    tracing::debug!(error = %e, "campaign step failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    self.release(lease).await;
                    return Err(e);
                }
            }
        }
    }

    fn won(&self, lease: KeptLease, revision: Revision) -> Leadership {
        tracing::info!(candidate = %self.candidate, lease = lease.id.0, revision, "became leader");
        let lost = lease.lost.clone();
        let (store, key) = (self.store.clone(), self.key.clone());
        let watch = OwnedTask::spawn(|stop| {
            watch_leadership(store, key, revision, lease.id, lost.clone(), stop)
        });
        Leadership {
            store: self.store.clone(),
            candidate: self.candidate.clone(),
            lease: lease.id,
            lost,
            keep_alive: lease.task,
            watch,
        }
    }

    async fn release(&self, lease: KeptLease) {
        let KeptLease { id, task, .. } = lease;
        task.stop().await;
        if let Err(e) = self.store.revoke(id).await {
            tracing::debug!(lease = id.0, error = %e, "could not revoke a campaign lease");
        }
    }

    /// Waits until the leader key is absent. `Some(revision)` when the key turns out to be ours
    /// already (an earlier put that reported failure had applied), or was taken over from a
    /// previous incarnation of this candidate (see the module docs).
    async fn wait_until_free(&self, lease: &KeptLease, value: &Bytes) -> Result<Option<Revision>> {
        let (kvs, snapshot) = self.store.scan_prefix(&self.key).await?;
        let Some(kv) = kvs.into_iter().find(|kv| kv.key == self.key) else {
            return Ok(None);
        };
        if kv.lease == Some(lease.id) {
            return Ok(Some(kv.mod_revision));
        }
        if decode_leader(&kv).is_ok_and(|r| r.candidate == self.candidate) {
            // Our own name under another lease: a previous incarnation of this candidate (this
            // process before it lost its lease, or a process at the same address before a
            // restart), which no longer acts as leader. Take over now instead of waiting out
            // its lease: candidates' names are unique (each names the address it serves on).
            // One transaction, so no other candidate slips in between.
            let taken = self
                .store
                .txn(
                    vec![(self.key.clone(), Condition::ModRevision(kv.mod_revision))],
                    vec![TxnOp::Put {
                        key: self.key.clone(),
                        value: value.clone(),
                        lease: Some(lease.id),
                    }],
                )
                .await?;
            if !taken.committed {
                return Ok(None);
            }
            tracing::info!(candidate = %self.candidate, "took the leader key over from a previous incarnation");
            if let Some(old) = kv.lease
                && let Err(e) = self.store.revoke(old).await
            {
                tracing::debug!(lease = old.0, error = %e, "could not revoke the previous incarnation's lease");
            }
            return Ok(Some(taken.revision));
        }
        let mut events = match self.store.watch_prefix(&self.key, snapshot + 1).await {
            Ok(s) => s,
            Err(MetaError::Compacted { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        loop {
            let event = tokio::select! {
                () = lease.lost.cancelled() => return Ok(None),
                e = events.next() => e,
            };
            match event {
                Some(Ok(WatchEvent::Delete { key, .. })) if key == self.key => return Ok(None),
                Some(Ok(_)) => {}
                // The watch broke: look again from a fresh snapshot.
                Some(Err(MetaError::Compacted { .. })) | None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// Held leadership (see the module docs).
pub struct Leadership {
    store: Arc<dyn MetaStore>,
    candidate: String,
    lease: LeaseId,
    lost: CancellationToken,
    keep_alive: OwnedTask,
    watch: OwnedTask,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("candidate", &self.candidate)
            .field("lease", &self.lease)
            .field("lost", &self.lost.is_cancelled())
            .finish()
    }
}

impl Leadership {
    /// This leader's candidate name.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// The lease the leader key is attached to.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Resolves when the leadership is lost: stop acting as leader.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Whether the leadership is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Steps down: revokes the lease, deleting the leader key so a standby takes over.
    pub async fn resign(self) -> Result<()> {
        let Leadership {
            store,
            lease,
            lost,
            keep_alive,
            watch,
            ..
        } = self;
        lost.cancel();
        keep_alive.stop().await;
        watch.stop().await;
        match store.revoke(lease).await {
            Ok(()) | Err(MetaError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Cancels `lost` once the leader key (written at `revision` under `lease`) is deleted or
/// rewritten by someone else. A broken watch is resumed from a fresh snapshot after checking the
/// key is still ours.
async fn watch_leadership(
    store: Arc<dyn MetaStore>,
    key: String,
    revision: Revision,
    lease: LeaseId,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut from = revision + 1;
    loop {
        let events = tokio::select! {
            () = stop.cancelled() => return,
            () = lost.cancelled() => return,
            s = store.watch_prefix(&key, from) => s,
        };
        if let Ok(mut events) = events {
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    () = lost.cancelled() => return,
                    e = events.next() => e,
                };
                match event {
                    Some(Ok(e)) if e.key() != key => {}
                    Some(Ok(WatchEvent::Put(kv))) if kv.lease == Some(lease) => {}
                    Some(Ok(e)) => {
                        tracing::warn!(key = %key, revision = e.revision(), "leader key changed: leadership lost");
                        lost.cancel();
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "leader watch failed; resuming");
                        break;
                    }
                    None => break,
                }
            }
        }
        // Resume: check the key is still ours at a snapshot, then watch from it.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        match store.scan_prefix(&key).await {
            Ok((kvs, snapshot)) => {
                let ours = kvs
                    .iter()
                    .any(|kv| kv.key == key && kv.lease == Some(lease));
                if !ours {
                    tracing::warn!(key = %key, "leader key is no longer ours: leadership lost");
                    lost.cancel();
                    return;
                }
                from = snapshot + 1;
            }
            Err(e) => tracing::debug!(error = %e, "leader key check failed; retrying"),
        }
    }
}
