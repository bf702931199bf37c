//! The metadata store contract and its backends.
//!
//! The coordinator and the nodes keep small, strongly consistent metadata (pchannel assignments
//! and terms, node registrations, checkpoints, the TSO high-water mark) in a *meta store*: a
//! revisioned key-value store shaped like etcd's. This crate defines what every backend must do
//! ([`MetaStore`]) and ships three: [`memory`] (in process, for tests), [`embedded`] (one redb
//! file, for `sluice standalone`) and `etcd` (feature `etcd`, for clusters). The conformance suite
//! (feature `testkit`, module `testkit`) runs the whole contract against a backend with one macro
//! line.
//!
//! # Data model
//!
//! Keys are non-empty UTF-8 strings (paths such as `sluice/pchannel/p1`); values are bytes. A
//! backend that finds a key that is not UTF-8 (an etcd written to by someone else) reports
//! [`MetaError::Malformed`]. The store has one revision counter. Every write (a `put`, a `delete`
//! that removed something, a committed `txn`, a lease lapse that removed keys) increments it by
//! one, and everything that write changed carries the new revision:
//!
//! ```text
//!  rev:   1          2           3            4 (txn)              5 (lease L lapses)
//!        put a=1    put b=2     put a=3      put c, delete b      delete a (a was attached to L)
//!  a:    c=1,m=1                c=1,m=3                           gone, Delete(a, 5) event
//!  b:               c=2,m=2                  gone, Delete(b, 4)
//!  c:                                        c=4,m=4
//! ```
//!
//! (`c` = `create_revision`, `m` = `mod_revision`.)
//!
//! # The contract
//!
//! A [`MetaStore`] implementation:
//! * MUST make the revision strictly increase across every write, including across reopening a
//!   persistent store; a reader never observes a revision go backwards.
//! * MUST check a [`Condition`] and apply the write atomically: a failed condition is
//!   [`MetaError::ConditionFailed`] with the key's actual mod revision and MUST NOT write
//!   anything. `Condition::None` always holds; `KeyAbsent` holds when the key does not exist;
//!   `ModRevision(r)` holds when the key exists and its mod revision is `r`.
//! * MUST apply a [`MetaStore::txn`] all-or-nothing, at one revision: when every compare holds,
//!   every op is applied; otherwise none is and the result says `committed: false`. A txn that
//!   names the same key in two ops is [`MetaError::InvalidArgument`].
//! * MUST return from [`MetaStore::scan_prefix`] a consistent snapshot together with the
//!   revision it was taken at.
//! * MUST deliver on [`MetaStore::watch_prefix`] every change to a key under the prefix with
//!   revision `>= from_revision`, in revision order (and within one revision, in op order),
//!   without gaps or duplicates. So `scan_prefix` followed by `watch_prefix(prefix, rev + 1)`
//!   observes every change after the snapshot. A watch that cannot resume because history was
//!   compacted MUST end with [`MetaError::Compacted`]; a watch whose store shuts down ends with
//!   [`MetaError::Shutdown`] (or [`MetaError::Unavailable`]). A watch ends after its first error.
//! * MUST delete every key attached to a lease when the lease is revoked or lapses (its TTL passed
//!   without a [`MetaStore::keep_alive`]), emitting a delete event for each, at one revision.
//!   `put` with a lease that does not exist is [`MetaError::LeaseNotFound`].
//! * MUST NOT panic on stored data it cannot decode: that is [`MetaError::Malformed`].
//! * MUST stop every task it started when it is dropped.
//!
//! Callers holding a lease MUST call [`MetaStore::keep_alive`] about every `ttl / 3`, so that a
//! lost or late refresh does not lapse the lease. A backend MAY keep a lease slightly longer than
//! its TTL (etcd rounds TTLs up to whole seconds and has a minimum TTL), never shorter.

pub mod embedded;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;
#[cfg(feature = "testkit")]
pub mod testkit;

mod engine;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use error::MetaError;

/// A store-wide revision (etcd's numbering: the first write is revision 1 or later, never 0).
pub type Revision = i64;

/// Result of a meta store call.
pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// A lease handed out by [`MetaStore::grant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// A key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The revision at which the key was last created (after being absent).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// What must hold for a write to apply (compare-and-set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always holds.
    None,
    /// Holds when the key does not exist.
    KeyAbsent,
    /// Holds when the key exists and its mod revision is exactly this one.
    ModRevision(Revision),
}

/// One write inside a [`MetaStore::txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Create or replace a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Bytes,
        /// The lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Delete a key (nothing happens if it is absent).
    Delete {
        /// The key.
        key: String,
    },
}

/// The outcome of a [`MetaStore::txn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held and the ops were applied.
    pub committed: bool,
    /// The revision of the txn when committed; the store's current revision otherwise.
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or replaced; the key value carries the new mod revision.
    Put(KeyValue),
    /// A key was deleted (by a delete, a txn, or its lease ending) at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The events of one watch; it ends after its first error.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// A revisioned key-value store with compare-and-set, watches and leases (see the crate docs
/// for the contract every implementation follows).
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// The key's current value and revisions, or `None` when it is absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix` (in key order), and the revision of that snapshot.
    /// An empty prefix means every key.
    async fn scan_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Writes `key = value` if `condition` holds, attached to `lease` if given; returns the
    /// revision of the write.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision>;

    /// Deletes `key` if `condition` holds; returns the revision of the delete, or `None` when
    /// the key was absent (then nothing is written).
    async fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>>;

    /// Applies every op when every compare holds, none otherwise, at one revision.
    async fn txn(&self, compares: Vec<(String, Condition)>, ops: Vec<TxnOp>) -> Result<TxnResult>;

    /// Every change to keys under `prefix` from `from_revision` on (`from_revision` must be at
    /// least 1), in revision order.
    async fn watch_prefix(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// Grants a lease that lapses `ttl` after the last grant or refresh (backends may round it up).
    async fn grant(&self, ttl: Duration) -> Result<LeaseId>;

    /// Refreshes a lease once; returns its TTL. Callers refresh about every `ttl / 3`.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Ends a lease now, deleting the keys attached to it.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(MetaError::InvalidArgument("empty key".into()));
    }
    Ok(())
}

pub(crate) fn check_condition(condition: Condition) -> Result<()> {
    if let Condition::ModRevision(r) = condition
        && r <= 0
    {
        return Err(MetaError::InvalidArgument(format!(
            "mod revision condition {r} is not a revision (revisions start at 1)"
        )));
    }
    Ok(())
}

pub(crate) fn check_txn(compares: &[(String, Condition)], ops: &[TxnOp]) -> Result<()> {
    for (key, condition) in compares {
        check_key(key)?;
        check_condition(*condition)?;
    }
    let mut seen = std::collections::HashSet::new();
    for op in ops {
        let key = match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        };
        check_key(key)?;
        if !seen.insert(key.as_str()) {
            return Err(MetaError::InvalidArgument(format!(
                "key {key:?} appears in more than one txn op"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(MetaError::InvalidArgument(
            "lease TTL must be positive".into(),
        ));
    }
    Ok(())
}
