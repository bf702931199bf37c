//! Compactions asked for through `Coordinator.Compact`: their records in the meta store and
//! their progress (the streaming nodes do the work, see `sluice_node::compactor`).
//!
//! `{root}/compaction/{id}` holds the request (a `CompactionInfo` without state); the node
//! owning each of its vchannels writes `{root}/compaction-done/{id}/{vchannel}` when done. At
//! most [`KEPT`] records are kept, and none longer than [`KEPT_FOR`] once finished or older.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use sluice_meta::{Condition, MetaStore};
use sluice_proto::v1::{CollectionState, CompactionInfo, CompactionState, VChannelCompaction};

use crate::catalog::Catalog;
use crate::keys::Keys;
use crate::{CoordError, Result};

/// The most compaction records kept.
pub const KEPT: usize = 256;
/// How long a compaction record is kept.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// Now in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn decode(key: &str, value: &[u8]) -> Result<CompactionInfo> {
    CompactionInfo::decode(value).map_err(|e| CoordError::Malformed {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Compaction `id` with its progress and state.
pub async fn read(
    store: &dyn MetaStore,
    keys: &Keys,
    id: i64,
    catalog: &Catalog,
) -> Result<CompactionInfo> {
    let key = keys.compaction(id);
    let kv = store
        .get(&key)
        .await?
        .ok_or_else(|| CoordError::InvalidArgument(format!("no compaction {id}")))?;
    with_progress(store, keys, decode(&key, &kv.value)?, catalog).await
}

/// The compactions of collection `collection_id` (every collection's with 0) still kept, each
/// with its progress and state, oldest first.
pub async fn list(
    store: &dyn MetaStore,
    keys: &Keys,
    collection_id: i64,
    catalog: &Catalog,
) -> Result<Vec<CompactionInfo>> {
    let (kvs, _) = store.scan_prefix(&keys.compaction_prefix()).await?;
    let mut records = Vec::new();
    for kv in kvs {
        // A record that does not decode is left out and logged (GetCompaction of its id
        // answers the error) rather than hiding every other one.
        match decode(&kv.key, &kv.value) {
            Ok(info) if collection_id == 0 || info.collection_id == collection_id => {
                records.push(info)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "a compaction record left out of a listing"),
        }
    }
    records.sort_unstable_by_key(|info| info.compaction_id);
    let mut listed = Vec::with_capacity(records.len());
    for info in records {
        listed.push(with_progress(store, keys, info, catalog).await?);
    }
    Ok(listed)
}

/// `info` (a record as the coordinator wrote it) with the vchannels done so far and its state.
async fn with_progress(
    store: &dyn MetaStore,
    keys: &Keys,
    mut info: CompactionInfo,
    catalog: &Catalog,
) -> Result<CompactionInfo> {
    let (done, _) = store
        .scan_prefix(&keys.compaction_done_prefix(info.compaction_id))
        .await?;
    for kv in done {
        let d =
            VChannelCompaction::decode(kv.value.as_ref()).map_err(|e| CoordError::Malformed {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
        info.done.push(d);
    }
    let finished = info
        .vchannels
        .iter()
        .all(|v| info.done.iter().any(|d| &d.vchannel == v));
    let gone = match catalog.by_id(info.collection_id).await {
        Ok(c) => c.state != CollectionState::Created as i32,
        Err(CoordError::InvalidArgument(_)) => true,
        Err(e) => return Err(e),
    };
    info.state = if finished || gone {
        CompactionState::Completed
    } else {
        CompactionState::Executing
    } as i32;
    Ok(info)
}

/// Deletes the records beyond the newest [`KEPT`] - 1 and those older than [`KEPT_FOR`] (with
/// their progress), making room for one more.
pub async fn forget_old(store: &dyn MetaStore, keys: &Keys) -> Result<()> {
    let (kvs, _) = store.scan_prefix(&keys.compaction_prefix()).await?;
    let mut all: Vec<(i64, u64)> = kvs
        .iter()
        .filter_map(|kv| {
            let info = CompactionInfo::decode(kv.value.as_ref()).ok()?;
            Some((info.compaction_id, info.started_unix_ms))
        })
        .collect();
    all.sort_unstable();
    let too_many = all.len().saturating_sub(KEPT - 1);
    let cutoff = now_ms().saturating_sub(KEPT_FOR.as_millis() as u64);
    for (i, (id, started)) in all.into_iter().enumerate() {
        if i < too_many || started < cutoff {
            store.delete(&keys.compaction(id), Condition::None).await?;
            let (done, _) = store.scan_prefix(&keys.compaction_done_prefix(id)).await?;
            for kv in done {
                store.delete(&kv.key, Condition::None).await?;
            }
        }
    }
    Ok(())
}
