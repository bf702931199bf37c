//! Append locks.
//!
//! Exclusive messages (DDL, ManualFlush, SchemaChange) must not overlap with any other append on
//! their vchannel, so that their timestamp order and log order agree with everything around
//! them. They take the vchannel's lock exclusively (or the whole pchannel's when they name no
//! vchannel); every other message takes shared locks on both.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Held while one message is appended.
pub(crate) enum AppendLock {
    /// DML or system message: shared on the pchannel and the vchannel.
    Shared {
        _pchannel: OwnedRwLockReadGuard<()>,
        _vchannel: Option<OwnedRwLockReadGuard<()>>,
    },
    /// Exclusive on one vchannel (shared on the pchannel).
    Vchannel {
        _pchannel: OwnedRwLockReadGuard<()>,
        _vchannel: OwnedRwLockWriteGuard<()>,
    },
    /// Exclusive on the whole pchannel.
    Pchannel {
        _pchannel: OwnedRwLockWriteGuard<()>,
    },
}

/// The locks of one WAL.
#[derive(Default)]
pub(crate) struct LockManager {
    pchannel: Arc<RwLock<()>>,
    vchannels: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

impl LockManager {
    fn vchannel(&self, name: &str) -> Arc<RwLock<()>> {
        let mut map = self.vchannels.lock();
        if let Some(l) = map.get(name) {
            return l.clone();
        }
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Takes the locks for a message on `vchannel` (`None` = the whole pchannel).
    pub(crate) async fn acquire(&self, vchannel: Option<&str>, exclusive: bool) -> AppendLock {
        match (vchannel, exclusive) {
            (None, true) => AppendLock::Pchannel {
                _pchannel: self.pchannel.clone().write_owned().await,
            },
            (Some(v), true) => {
                let p = self.pchannel.clone().read_owned().await;
                AppendLock::Vchannel {
                    _pchannel: p,
                    _vchannel: self.vchannel(v).write_owned().await,
                }
            }
            (v, false) => {
                let p = self.pchannel.clone().read_owned().await;
                let v = match v {
                    Some(v) => Some(self.vchannel(v).read_owned().await),
                    None => None,
                };
                AppendLock::Shared {
                    _pchannel: p,
                    _vchannel: v,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_waits_for_shared_on_its_vchannel_only() {
        let m = Arc::new(LockManager::default());
        let shared = m.acquire(Some("p_1v0"), false).await;
        let m2 = m.clone();
        let excl = tokio::spawn(async move { m2.acquire(Some("p_1v0"), true).await });
        // Another vchannel is not blocked.
        let other = tokio::time::timeout(Duration::from_secs(1), m.acquire(Some("p_2v0"), true))
            .await
            .expect("other vchannel blocked");
        drop(other);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!excl.is_finished());
        drop(shared);
        let _excl = tokio::time::timeout(Duration::from_secs(1), excl)
            .await
            .expect("exclusive never acquired")
            .unwrap();
    }

    #[tokio::test]
    async fn pchannel_exclusive_blocks_everything() {
        let m = Arc::new(LockManager::default());
        let all = m.acquire(None, true).await;
        let m2 = m.clone();
        let dml = tokio::spawn(async move { m2.acquire(Some("p_1v0"), false).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!dml.is_finished());
        drop(all);
        let _ = tokio::time::timeout(Duration::from_secs(1), dml)
            .await
            .unwrap()
            .unwrap();
    }
}
