//! The in-process meta store: everything in memory, gone when dropped. For tests and tools.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::{DEFAULT_HISTORY, EngineHandle};
use crate::{
    Condition, KeyValue, LeaseId, MetaStore, Result, Revision, TxnOp, TxnResult, WatchStream,
};

/// A [`MetaStore`] held in memory. Lease expiry runs on tokio time, so tests can pause the clock.
pub struct MemoryStore {
    engine: EngineHandle,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store keeping the last 10 000 watch events. Call inside a tokio runtime.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping the last `events` watch events for watches that start in the past.
    pub fn with_history(events: usize) -> Self {
        MemoryStore {
            engine: EngineHandle::start(BTreeMap::new(), 0, events, None),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

crate::engine::delegate_meta_store!(MemoryStore);

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::MetaError;

    #[tokio::test]
    async fn watch_from_compacted_revision_ends_with_error() {
        let s = MemoryStore::with_history(4);
        let mut revs = Vec::new();
        for i in 0..10 {
            revs.push(
                s.put(&format!("k{i}"), Bytes::new(), Condition::None, None)
                    .await
                    .unwrap(),
            );
        }
        let mut w = s.watch_prefix("", revs[0]).await.unwrap();
        match w.next().await {
            Some(Err(MetaError::Compacted {
                requested,
                compacted,
            })) => {
                assert_eq!(requested, revs[0]);
                assert_eq!(compacted, revs[5]);
            }
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(w.next().await.is_none(), "a watch ends after its error");
        // The kept tail still replays.
        let mut w = s.watch_prefix("", revs[6]).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().revision(), revs[6]);
    }

    #[tokio::test]
    async fn dropping_the_store_ends_watches_with_shutdown() {
        let s = MemoryStore::new();
        let mut w = s.watch_prefix("", 1).await.unwrap();
        drop(s);
        assert!(matches!(w.next().await, Some(Err(MetaError::Shutdown))));
        assert!(w.next().await.is_none());
    }
}
