//! Compaction: rewriting a sealed segment without the rows no read can see any more.
//!
//! A row is *removed at* timestamp `at` when a committed delete (one in a delete file) of its
//! primary key came after it and no later than `at`, or when the collection's TTL expired it
//! at `at`. Every read at or after `at` hides those rows anyway (deletes stay in their files
//! and keep applying), so a segment rewritten without them reads the same from `at` on; only
//! a read pinned to an older snapshot sees a difference. The rewrite:
//!
//! 1. reads the manifest (and its revision) and the data file;
//! 2. writes `data.c{at}.parquet` with the rows kept and a `_row` column: each row's position
//!    in the file the flush wrote (kept from an earlier compaction's file), so the row numbers
//!    delegators and query workers exchange mean the same rows in every version;
//! 3. replaces the manifest only if it did not change meanwhile (a flush replay never rewrites
//!    an existing manifest; a drop deletes it): the commit point. A lost race deletes the new
//!    file again.
//!
//! The replaced files stay until [`sweep`] (run a while later, when no reader still reads
//! them) deletes every file of the segment's directory the manifest no longer names.
//!
//! **Deletes.** Delete files would otherwise grow with every delete ever made (and every
//! delegator would hold them all in memory). [`merge_deletes`] rewrites a vchannel's delete
//! files of the flush points every row older than them was flushed by (the saved flush
//! checkpoint) into one, keeping only the deletes that still remove a row of a committed
//! segment: those whose rows compactions left out, and those that matched no row, go. The
//! manifest of the newest flush point merged is replaced and the others deleted in one
//! meta-store transaction, guarded by their revisions; [`sweep_deletes`] deletes the files no
//! manifest names a while later.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{DataType as ArrowType, Field};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use prost::Message as _;
use sluice_meta::{Condition, TxnOp};
use sluice_types::message::pb::segment_manifest::{PkMax, PkMin};
use sluice_types::message::pb::{DeleteManifest, SegmentManifest, StorageFile};
use sluice_types::storage;

use crate::flusher::{StorageConfig, TS_COLUMN, parquet_bytes};
use crate::segments::{ReadError, read_columns, read_file, segment_manifests};

/// The column of a compacted file holding each row's position in the flushed file.
pub const ROW_COLUMN: &str = "_row";

/// Why a compaction failed (nothing was committed).
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// Reading the manifest, the deletes or the data failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The meta store failed.
    #[error("meta store: {0}")]
    Meta(#[from] sluice_meta::MetaError),
    /// The object store failed.
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A file does not look like what the flusher writes.
    #[error("{0}")]
    Corrupt(String),
}

/// A primary key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Str(String),
}

/// The keys of one column (`None` for a null or a type that is no key type).
fn keys(col: &dyn Array) -> Result<Vec<Option<Key>>, CompactError> {
    if let Some(c) = col.as_primitive_opt::<Int64Type>() {
        Ok(c.iter().map(|v| v.map(Key::Int)).collect())
    } else if let Some(c) = col.as_string_opt::<i32>() {
        Ok(c.iter()
            .map(|v| v.map(|s| Key::Str(s.to_owned())))
            .collect())
    } else {
        Err(CompactError::Corrupt(format!(
            "a primary key column of type {}",
            col.data_type()
        )))
    }
}

fn timestamps(b: &RecordBatch) -> Result<&[i64], CompactError> {
    Ok(b.column_by_name(TS_COLUMN)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| CompactError::Corrupt(format!("a file without an int64 {TS_COLUMN}")))?
        .values())
}

/// What is removed at one timestamp on one vchannel: per primary key the latest committed
/// delete no later than it, and the TTL's bound.
#[derive(Debug, Default)]
pub struct Removals {
    at: u64,
    deletes: HashMap<Key, u64>,
    expired_before: u64,
}

impl Removals {
    /// The committed deletes of `vchannel` (of `collection`, primary key `pk`) up to `at`, and
    /// rows inserted before `expired_before` (0: no TTL).
    pub async fn load(
        config: &StorageConfig,
        collection: i64,
        vchannel: &str,
        pk: &str,
        at: u64,
        expired_before: u64,
    ) -> Result<Removals, CompactError> {
        let mut out = Removals {
            at,
            deletes: HashMap::new(),
            expired_before: expired_before.min(at),
        };
        let manifests = crate::segments::delete_manifests(config, Some(collection)).await?;
        for m in manifests.iter().filter(|m| m.vchannel == vchannel) {
            if m.min_timestamp > at {
                continue;
            }
            let Some(file) = &m.file else { continue };
            for b in read_file(config, &file.path).await? {
                let col = b.column_by_name(pk).ok_or_else(|| {
                    CompactError::Corrupt(format!("the delete file {} has no {pk}", file.path))
                })?;
                for (key, &ts) in keys(col.as_ref())?.into_iter().zip(timestamps(&b)?) {
                    let (Some(key), ts) = (key, ts as u64) else {
                        continue;
                    };
                    if ts <= at {
                        let d = out.deletes.entry(key).or_default();
                        *d = (*d).max(ts);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The timestamp rows are removed at.
    pub fn at(&self) -> u64 {
        self.at
    }

    fn removes(&self, key: Option<&Key>, ts: u64) -> bool {
        ts < self.expired_before
            || key
                .and_then(|k| self.deletes.get(k))
                .is_some_and(|&d| ts < d)
    }

    /// Whether a segment described by `m` may hold a removed row (cheap: from the manifest
    /// alone; false means surely not).
    fn may_remove(&self, m: &SegmentManifest) -> bool {
        if m.min_timestamp < self.expired_before {
            return true;
        }
        let in_range = |k: &Key| match (k, &m.pk_min, &m.pk_max) {
            (Key::Int(v), Some(PkMin::PkMinInt(lo)), Some(PkMax::PkMaxInt(hi))) => {
                lo <= v && v <= hi
            }
            (Key::Str(v), Some(PkMin::PkMinStr(lo)), Some(PkMax::PkMaxStr(hi))) => {
                lo <= v && v <= hi
            }
            (_, None, _) | (_, _, None) => true,
            _ => false,
        };
        self.deletes
            .iter()
            .any(|(k, &d)| d > m.min_timestamp && in_range(k))
    }
}

/// What a compaction of one segment did.
#[derive(Clone, Debug, PartialEq)]
pub struct Compacted {
    /// The new manifest (committed).
    pub manifest: SegmentManifest,
    /// Rows left out.
    pub removed: u64,
    /// Bytes of the data file before.
    pub bytes_before: u64,
}

/// Rewrites segment `segment` of `collection` (primary key `pk`) without the rows removed at
/// `removals.at()`, if at least `min_ratio` of its rows (and at least one) are. `None` when
/// nothing was rewritten: too few rows to remove, already compacted at or after that
/// timestamp, no manifest, or the manifest changed meanwhile.
pub async fn compact_segment(
    config: &StorageConfig,
    collection: i64,
    segment: i64,
    pk: &str,
    removals: &Removals,
    min_ratio: f64,
) -> Result<Option<Compacted>, CompactError> {
    let key = config.manifest_key(collection, segment);
    let Some(kv) = config.meta.get(&key).await? else {
        return Ok(None);
    };
    let m = SegmentManifest::decode(kv.value.as_ref()).map_err(|e| ReadError::Manifest {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    let Some(old) = &m.data else { return Ok(None) };
    if m.compaction_timestamp >= removals.at || m.rows == 0 || !removals.may_remove(&m) {
        return Ok(None);
    }
    let batches = read_file(config, &old.path).await?;
    let (mut kept, mut removed, mut next_row) = (Vec::new(), 0u64, 0u32);
    let (mut min_ts, mut max_ts) = (u64::MAX, 0u64);
    for b in &batches {
        let col = b
            .column_by_name(pk)
            .ok_or_else(|| CompactError::Corrupt(format!("{} has no column {pk}", old.path)))?;
        let ts = timestamps(b)?;
        let keep: BooleanArray = keys(col.as_ref())?
            .iter()
            .zip(ts)
            .map(|(k, &t)| Some(!removals.removes(k.as_ref(), t as u64)))
            .collect();
        let with_rows = match b.column_by_name(ROW_COLUMN) {
            Some(rows) if rows.as_primitive_opt::<UInt32Type>().is_some() => b.clone(),
            Some(_) => {
                return Err(CompactError::Corrupt(format!(
                    "{} has a {ROW_COLUMN} column that is not uint32",
                    old.path
                )));
            }
            None => {
                let n = b.num_rows() as u32;
                let rows: ArrayRef =
                    Arc::new(UInt32Array::from_iter_values(next_row..next_row + n));
                next_row += n;
                crate::rows::with_column(b, Field::new(ROW_COLUMN, ArrowType::UInt32, false), rows)?
            }
        };
        removed += keep.false_count() as u64;
        let kept_batch = arrow_select::filter::filter_record_batch(&with_rows, &keep)?;
        for &t in timestamps(&kept_batch)? {
            min_ts = min_ts.min(t as u64);
            max_ts = max_ts.max(t as u64);
        }
        kept.push(kept_batch);
    }
    if removed == 0 || (removed as f64) < min_ratio * m.rows as f64 {
        return Ok(None);
    }
    let rows = m.rows.saturating_sub(removed);
    let schema = kept
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| CompactError::Corrupt(format!("{} holds no batch", old.path)))?;
    let kept: Vec<RecordBatch> = match kept.iter().filter(|b| b.num_rows() > 0).count() {
        0 => vec![RecordBatch::new_empty(schema)],
        _ => kept.into_iter().filter(|b| b.num_rows() > 0).collect(),
    };
    let (pk_min, pk_max) = key_bounds(&kept, pk)?;
    let path = storage::compacted_data_path(m.collection_id, m.partition_id, segment, removals.at);
    let bytes = parquet_bytes(&kept, Some(pk)).map_err(|e| CompactError::Corrupt(e.to_string()))?;
    let size = bytes.len() as u64;
    let object = ObjectPath::from(path.as_str());
    config.store.put(&object, Bytes::from(bytes).into()).await?;
    let manifest = SegmentManifest {
        rows,
        min_timestamp: if rows == 0 { m.min_timestamp } else { min_ts },
        max_timestamp: if rows == 0 { m.max_timestamp } else { max_ts },
        data: Some(StorageFile {
            path,
            rows,
            bytes: size,
        }),
        pk_min,
        pk_max,
        compaction_timestamp: removals.at,
        ..m.clone()
    };
    let put = config
        .meta
        .put(
            &key,
            Bytes::from(manifest.encode_to_vec()),
            Condition::ModRevision(kv.mod_revision),
            None,
        )
        .await;
    match put {
        Ok(_) => {}
        Err(e) => {
            // Lost to a drop or another compaction (or the store failed): the file is no one's.
            if let Err(del) = config.store.delete(&object).await {
                tracing::debug!(error = %del, "deleting an uncommitted compacted file failed");
            }
            return match e {
                sluice_meta::MetaError::ConditionFailed { .. } => Ok(None),
                e => Err(e.into()),
            };
        }
    }
    metrics::counter!("sluice_storage_segments_compacted_total").increment(1);
    metrics::counter!("sluice_storage_compacted_rows_removed_total").increment(removed);
    tracing::info!(
        segment,
        removed,
        rows,
        bytes_before = old.bytes,
        bytes_after = size,
        "segment compacted"
    );
    Ok(Some(Compacted {
        manifest,
        removed,
        bytes_before: old.bytes,
    }))
}

/// The smallest and largest key of `batches`' column `pk`.
fn key_bounds(
    batches: &[RecordBatch],
    pk: &str,
) -> Result<(Option<PkMin>, Option<PkMax>), CompactError> {
    let mut all = Vec::new();
    for b in batches {
        if let Some(c) = b.column_by_name(pk) {
            all.extend(keys(c.as_ref())?.into_iter().flatten());
        }
    }
    let (lo, hi) = (all.iter().min_by(cmp), all.iter().max_by(cmp));
    fn cmp(a: &&Key, b: &&Key) -> std::cmp::Ordering {
        match (a, b) {
            (Key::Int(a), Key::Int(b)) => a.cmp(b),
            (Key::Str(a), Key::Str(b)) => a.cmp(b),
            (Key::Int(_), Key::Str(_)) => std::cmp::Ordering::Less,
            (Key::Str(_), Key::Int(_)) => std::cmp::Ordering::Greater,
        }
    }
    Ok((
        lo.map(|k| match k {
            Key::Int(v) => PkMin::PkMinInt(*v),
            Key::Str(s) => PkMin::PkMinStr(s.clone()),
        }),
        hi.map(|k| match k {
            Key::Int(v) => PkMax::PkMaxInt(*v),
            Key::Str(s) => PkMax::PkMaxStr(s.clone()),
        }),
    ))
}

/// Deletes every file in segment `segment`'s directory that its manifest no longer names (the
/// files compactions replaced, and their indexes): run it once no reader can still be reading
/// them. Returns how many files it deleted. A segment without a manifest is left alone (a drop
/// removes its files).
pub async fn sweep(
    config: &StorageConfig,
    collection: i64,
    segment: i64,
) -> Result<usize, CompactError> {
    let key = config.manifest_key(collection, segment);
    let Some(kv) = config.meta.get(&key).await? else {
        return Ok(0);
    };
    let m = SegmentManifest::decode(kv.value.as_ref()).map_err(|e| ReadError::Manifest {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    let Some(data) = &m.data else { return Ok(0) };
    let dir = storage::segment_dir(m.collection_id, m.partition_id, segment);
    let mut deleted = 0;
    for o in crate::gc::list_objects(config, &dir).await? {
        let name = o.location.filename().unwrap_or_default();
        if !storage::belongs_to_version(name, &data.path, m.compaction_timestamp) {
            config.store.delete(&o.location).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// What merging a vchannel's delete files did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedDeletes {
    /// Delete files merged (a merged one among them counts once).
    pub files: usize,
    /// Deletes they held.
    pub rows_before: u64,
    /// Deletes kept: those that still remove a row of a committed segment.
    pub rows_after: u64,
}

/// One delete manifest as the meta store holds it.
struct Held {
    key: String,
    revision: i64,
    manifest: DeleteManifest,
}

/// Merges `vchannel`'s delete files (of `collection`, primary key `pk`) whose flush point is
/// at most `at` and at most `flushed_through` — the saved flush checkpoint's timestamp, below
/// which every row is in a committed segment — into one that keeps only the deletes removing a
/// row of a committed segment of the vchannel (any partition). Runs when there are two such
/// files or more, when the one there is is a flush's (not merged yet), or when `force`
/// (segments were just compacted: a merged file may hold deletes they no longer need); writes
/// only when it has something to drop or files to join. `None`: nothing done (nothing to
/// gain, or a flush, drop or other merge changed a manifest meanwhile — the next round tries
/// again). The merged files stay for [`sweep_deletes`].
///
/// Safe for every read at or after the newest delete left out: a delete goes only when no
/// committed row older than it has its key, and no row inserted later can be older than it.
/// Readers that list delete manifests before segment manifests (as delegators do) never pair
/// a segment version that needs a delete with a delete list that lost it.
pub async fn merge_deletes(
    config: &StorageConfig,
    collection: i64,
    vchannel: &str,
    pk: &str,
    at: u64,
    flushed_through: u64,
    force: bool,
) -> Result<Option<MergedDeletes>, CompactError> {
    let limit = at.min(flushed_through);
    let prefix = storage::collection_deletes_prefix(&config.meta_root, collection);
    let (kvs, _) = config.meta.scan_prefix(&prefix).await?;
    let mut held = Vec::new();
    for kv in kvs {
        let manifest =
            DeleteManifest::decode(kv.value.as_ref()).map_err(|e| ReadError::Manifest {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
        if manifest.vchannel == vchannel && manifest.flush_timestamp <= limit {
            held.push(Held {
                key: kv.key,
                revision: kv.mod_revision,
                manifest,
            });
        }
    }
    held.sort_by_key(|h| h.manifest.flush_timestamp);
    let Some(newest) = held.last() else {
        return Ok(None);
    };
    if held.len() < 2 && !force && newest.manifest.merged_timestamp != 0 {
        return Ok(None);
    }
    // Every delete, the latest per key (it removes every older row of the key).
    let mut deletes: HashMap<Key, u64> = HashMap::new();
    let mut key_type = None;
    let mut rows_before = 0;
    for h in &held {
        rows_before += h.manifest.rows;
        let Some(file) = &h.manifest.file else {
            continue;
        };
        for b in read_file(config, &file.path).await? {
            let col = b.column_by_name(pk).ok_or_else(|| {
                CompactError::Corrupt(format!("the delete file {} has no {pk}", file.path))
            })?;
            key_type.get_or_insert_with(|| col.data_type().clone());
            for (key, &ts) in keys(col.as_ref())?.into_iter().zip(timestamps(&b)?) {
                if let Some(key) = key {
                    let d = deletes.entry(key).or_default();
                    *d = (*d).max(ts as u64);
                }
            }
        }
    }
    // Which of them still remove a committed row.
    let removals = Removals {
        at: limit,
        deletes,
        expired_before: 0,
    };
    let mut needed: HashSet<Key> = HashSet::new();
    for m in segment_manifests(config, Some(collection))
        .await?
        .iter()
        .filter(|m| m.vchannel == vchannel && m.rows > 0)
    {
        if needed.len() == removals.deletes.len() {
            break;
        }
        let Some(file) = &m.data else { continue };
        if !removals.may_remove(m) {
            continue;
        }
        for b in read_columns(config, &file.path, &[pk, TS_COLUMN]).await? {
            let col = b.column_by_name(pk).ok_or_else(|| {
                CompactError::Corrupt(format!("{} has no column {pk}", file.path))
            })?;
            for (key, &ts) in keys(col.as_ref())?.into_iter().zip(timestamps(&b)?) {
                if let Some(key) = key
                    && removals.removes(Some(&key), ts as u64)
                {
                    needed.insert(key);
                }
            }
        }
    }
    let mut kept: Vec<(Key, u64)> = removals
        .deletes
        .into_iter()
        .filter(|(k, _)| needed.contains(k))
        .collect();
    kept.sort_unstable();
    let rows_after = kept.len() as u64;
    if held.len() < 2 && rows_after == rows_before {
        return Ok(None);
    }
    let flush_ts = newest.manifest.flush_timestamp;
    let file = match (kept.is_empty(), key_type) {
        (false, Some(key_type)) => {
            let path = storage::merged_delete_file_path(collection, vchannel, flush_ts, at);
            let keys: ArrayRef = match key_type {
                ArrowType::Int64 => {
                    Arc::new(Int64Array::from_iter(kept.iter().map(|(k, _)| match k {
                        Key::Int(v) => Some(*v),
                        Key::Str(_) => None,
                    })))
                }
                _ => Arc::new(StringArray::from_iter(kept.iter().map(|(k, _)| match k {
                    Key::Str(s) => Some(s.as_str()),
                    Key::Int(_) => None,
                }))),
            };
            let ts: ArrayRef = Arc::new(Int64Array::from_iter_values(
                kept.iter().map(|(_, t)| *t as i64),
            ));
            let batch = RecordBatch::try_new(
                Arc::new(arrow_schema::Schema::new(vec![
                    Field::new(pk, keys.data_type().clone(), false),
                    Field::new(TS_COLUMN, ArrowType::Int64, false),
                ])),
                vec![keys, ts],
            )?;
            let bytes = parquet_bytes(&[batch], Some(pk))
                .map_err(|e| CompactError::Corrupt(e.to_string()))?;
            let size = bytes.len() as u64;
            config
                .store
                .put(&ObjectPath::from(path.as_str()), Bytes::from(bytes).into())
                .await?;
            Some(StorageFile {
                path,
                rows: rows_after,
                bytes: size,
            })
        }
        _ => None,
    };
    let manifest = DeleteManifest {
        collection_id: collection,
        vchannel: vchannel.to_owned(),
        rows: rows_after,
        min_timestamp: kept.iter().map(|(_, t)| *t).min().unwrap_or(0),
        max_timestamp: kept.iter().map(|(_, t)| *t).max().unwrap_or(0),
        file,
        flush_timestamp: flush_ts,
        merged_timestamp: at,
    };
    let compares = held
        .iter()
        .map(|h| (h.key.clone(), Condition::ModRevision(h.revision)))
        .collect();
    let mut ops = vec![TxnOp::Put {
        key: newest.key.clone(),
        value: Bytes::from(manifest.encode_to_vec()),
        lease: None,
    }];
    ops.extend(
        held[..held.len() - 1]
            .iter()
            .map(|h| TxnOp::Delete { key: h.key.clone() }),
    );
    // A lost race leaves the new file to `sweep_deletes` (a retry may have written the same).
    if !config.meta.txn(compares, ops).await?.committed {
        return Ok(None);
    }
    metrics::counter!("sluice_storage_delete_files_merged_total").increment(held.len() as u64);
    metrics::counter!("sluice_storage_deletes_dropped_total")
        .increment(rows_before.saturating_sub(rows_after));
    tracing::info!(
        vchannel,
        files = held.len(),
        rows_before,
        rows_after,
        "delete files merged"
    );
    Ok(Some(MergedDeletes {
        files: held.len(),
        rows_before,
        rows_after,
    }))
}

/// Deletes the files of `vchannel`'s delete directory that no delete manifest names: those a
/// merge replaced, and any a crash or a lost race left. Only files of flush points at most
/// `flushed_through` (a later flush may be between writing its file and its manifest) and
/// last modified at least `min_age` ago (a reader may still be reading one; a merge may be
/// between writing its file and committing) go. Returns how many files it deleted.
pub async fn sweep_deletes(
    config: &StorageConfig,
    collection: i64,
    vchannel: &str,
    flushed_through: u64,
    min_age: Duration,
) -> Result<usize, CompactError> {
    let named: HashSet<String> = crate::segments::delete_manifests(config, Some(collection))
        .await?
        .into_iter()
        .filter(|m| m.vchannel == vchannel)
        .filter_map(|m| m.file.map(|f| f.path))
        .collect();
    let dir = storage::delete_dir(collection, vchannel);
    let mut deleted = 0;
    for o in crate::gc::list_objects(config, &dir).await? {
        let old_enough = crate::gc::older_than(&o, min_age);
        let flushed = o
            .location
            .filename()
            .and_then(storage::delete_file_flush_ts)
            .is_some_and(|ts| ts <= flushed_through);
        if flushed && old_enough && !named.contains(o.location.as_ref()) {
            crate::gc::delete_object(config, &o.location).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
