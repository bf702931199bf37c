//! Garbage collection of the recovery storage: every object under `segments/` and `deletes/`
//! that no committed manifest names — a drop's files left by a crash between its manifests and
//! its files, files a compaction or a delete merge replaced whose sweep failed, a merged delete
//! file that lost its race, a flush's file whose manifest a crash kept from being committed —
//! is deleted once it is older than a grace period.
//!
//! Safe because names are deterministic and manifests are the commit points: a flush that
//! crashed after writing its file writes the same file again before committing its manifest;
//! a compaction or a merge writes its file, then commits. The manifests are listed before the
//! objects, so anything committed meanwhile is young and kept; the grace period outlasts any
//! write between a file and its manifest, and any reader still reading a replaced file.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use sluice_types::storage;

use crate::compaction::CompactError;
use crate::flusher::StorageConfig;
use crate::segments::{delete_manifests, segment_manifests};

/// What a collection pass found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Objects looked at.
    pub objects: usize,
    /// Objects no manifest names, old enough: deleted.
    pub deleted: usize,
    /// Bytes of the deleted objects.
    pub bytes: u64,
}

/// Deletes every object under `segments/` and `deletes/` that no committed manifest names
/// and that was last modified at least `grace` ago.
pub async fn collect_garbage(
    config: &StorageConfig,
    grace: Duration,
) -> Result<Collected, CompactError> {
    // Manifests first: what is committed after this is younger than `grace` and stays.
    // Per segment directory, the data file and compaction timestamp of its current version.
    let segments: HashMap<String, (String, u64)> = segment_manifests(config, None)
        .await?
        .into_iter()
        .filter_map(|m| {
            let data = m.data?;
            let dir = storage::segment_dir(m.collection_id, m.partition_id, m.segment_id);
            Some((dir, (data.path, m.compaction_timestamp)))
        })
        .collect();
    let deletes: HashSet<String> = delete_manifests(config, None)
        .await?
        .into_iter()
        .filter_map(|m| m.file.map(|f| f.path))
        .collect();
    let mut out = Collected::default();
    for (prefix, segment_files) in [("segments", true), ("deletes", false)] {
        for o in list_objects(config, prefix).await? {
            out.objects += 1;
            let path = o.location.as_ref();
            let named = if segment_files {
                path.rsplit_once('/').is_some_and(|(dir, name)| {
                    segments.get(dir).is_some_and(|(data, version)| {
                        storage::belongs_to_version(name, data, *version)
                    })
                })
            } else {
                deletes.contains(path)
            };
            if named || !older_than(&o, grace) {
                continue;
            }
            delete_object(config, &o.location).await?;
            out.deleted += 1;
            out.bytes += o.size;
        }
    }
    metrics::counter!("sluice_storage_gc_deleted_objects_total").increment(out.deleted as u64);
    metrics::counter!("sluice_storage_gc_deleted_bytes_total").increment(out.bytes);
    if out.deleted > 0 {
        tracing::info!(
            objects = out.objects,
            deleted = out.deleted,
            bytes = out.bytes,
            "storage garbage collected"
        );
    }
    Ok(out)
}

/// Whether `o` was last modified at least `age` ago.
pub(crate) fn older_than(o: &object_store::ObjectMeta, age: Duration) -> bool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now_ms - o.last_modified.timestamp_millis() >= age.as_millis() as i64
}

/// Deletes the object at `location`; one already gone is no error (another node or an earlier
/// attempt deleted it).
pub(crate) async fn delete_object(
    config: &StorageConfig,
    location: &ObjectPath,
) -> Result<(), object_store::Error> {
    match config.store.delete(location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every object under `dir` (a path prefix of whole segments).
pub(crate) async fn list_objects(
    config: &StorageConfig,
    dir: &str,
) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
    config
        .store
        .list(Some(&ObjectPath::from(dir)))
        .try_collect()
        .await
}
