//! The query delegator of one shard: its data (see [`crate::shard`]) and its *tsafe* — the
//! timestamp up to which every message of the vchannel has been applied. A read waits until
//! tsafe reaches its guarantee timestamp, then reads at an MVCC timestamp no later than tsafe.

use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::QueryError;
use crate::shard::ShardData;

/// When a read may run and what it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadAt {
    /// Wait until tsafe is at least this (0: do not wait).
    pub guarantee: u64,
    /// Read as of this timestamp (`None`: as of tsafe once the guarantee is met). Must not be
    /// later than the guarantee allows: a read at `T` waits for tsafe ≥ `T`.
    pub mvcc: Option<u64>,
    /// How long to wait for tsafe before failing.
    pub timeout: Duration,
}

/// One shard's delegator.
#[derive(Debug)]
pub struct Delegator {
    vchannel: String,
    collection: i64,
    data: RwLock<ShardData>,
    tsafe: watch::Sender<u64>,
}

impl Delegator {
    /// A delegator of `collection` on `vchannel` over `data`.
    pub fn new(vchannel: impl Into<String>, collection: i64, data: ShardData) -> Delegator {
        Delegator {
            vchannel: vchannel.into(),
            collection,
            data: RwLock::new(data),
            tsafe: watch::channel(0).0,
        }
    }

    /// Its vchannel.
    pub fn vchannel(&self) -> &str {
        &self.vchannel
    }

    /// Its collection.
    pub fn collection(&self) -> i64 {
        self.collection
    }

    /// Its data, to change (ingestion, hand-off).
    pub fn write(&self) -> parking_lot::RwLockWriteGuard<'_, ShardData> {
        self.data.write()
    }

    /// Its data, to read.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, ShardData> {
        self.data.read()
    }

    /// Every message up to `t` has been applied. Tsafe never goes back.
    pub fn update_tsafe(&self, t: u64) {
        self.tsafe.send_if_modified(|cur| {
            if t > *cur {
                *cur = t;
                true
            } else {
                false
            }
        });
    }

    /// The current tsafe.
    pub fn tsafe(&self) -> u64 {
        *self.tsafe.borrow()
    }

    /// Waits until a read at `at` may run; returns the MVCC timestamp to read at.
    pub async fn ready(&self, at: ReadAt) -> Result<u64, QueryError> {
        // A delegator that applied nothing yet (tsafe 0: still loading) never answers.
        let need = at.guarantee.max(at.mvcc.unwrap_or(0)).max(1);
        let mut rx = self.tsafe.subscribe();
        let reached = tokio::time::timeout(at.timeout, rx.wait_for(|t| *t >= need)).await;
        match reached {
            Ok(Ok(t)) => Ok(at.mvcc.unwrap_or(*t)),
            Ok(Err(_)) => Err(QueryError::Unavailable(format!(
                "the delegator of {} closed",
                self.vchannel
            ))),
            Err(_) => Err(QueryError::NotReady {
                vchannel: self.vchannel.clone(),
                tsafe: self.tsafe(),
                guarantee: need,
                waited: at.timeout,
            }),
        }
    }
}
