//! Compaction of committed segments against a real object store (an in-memory one, the same
//! trait the local directory and S3 implement) and a meta store: which rows go, which stay, the
//! row numbers kept across two compactions, the commit's guard, the sweep of replaced files, and
//! the merge of delete files into the deletes committed rows still need, and the garbage
//! collection of what no manifest names.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ArrowWriter;
use prost::Message as _;
use sluice_meta::Condition;
use sluice_storage::compaction::{
    Compacted, MergedDeletes, ROW_COLUMN, Removals, compact_segment, merge_deletes, sweep,
    sweep_deletes,
};
use sluice_storage::flusher::StorageConfig;
use sluice_storage::gc::collect_garbage;
use sluice_storage::segments::{delete_manifests, read_file};
use sluice_types::message::pb::segment_manifest::{PkMax, PkMin};
use sluice_types::message::pb::{DeleteManifest, SegmentManifest, StorageFile};
use sluice_types::storage;

const C: i64 = 7;
const P: i64 = 1;
const V: &str = "p_7v0";

fn config() -> StorageConfig {
    StorageConfig {
        store: Arc::new(object_store::memory::InMemory::new()),
        meta: Arc::new(sluice_meta::memory::MemoryStore::new()),
        meta_root: "/sluice".into(),
        retention: Duration::ZERO,
        truncate_interval: Duration::from_secs(1),
        checkpoint_interval: Duration::from_secs(1),
        max_body_bytes: 1 << 20,
    }
}

fn parquet(batch: &RecordBatch) -> Bytes {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    Bytes::from(out)
}

/// Segment `id` with rows (key, insert ts, tag), committed as the flusher commits it.
async fn segment(config: &StorageConfig, id: i64, rows: &[(i64, u64)]) {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("tag", ArrowType::Utf8, false),
            Field::new("_ts", ArrowType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("tag{}", r.0)),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1 as i64),
            )),
        ],
    )
    .unwrap();
    let path = storage::segment_data_path(C, P, id);
    let bytes = parquet(&batch);
    let size = bytes.len() as u64;
    config
        .store
        .put(&ObjectPath::from(path.as_str()), bytes.into())
        .await
        .unwrap();
    let manifest = SegmentManifest {
        segment_id: id,
        collection_id: C,
        partition_id: P,
        vchannel: V.into(),
        rows: rows.len() as u64,
        min_timestamp: rows.iter().map(|r| r.1).min().unwrap(),
        max_timestamp: rows.iter().map(|r| r.1).max().unwrap(),
        data: Some(StorageFile {
            path,
            rows: rows.len() as u64,
            bytes: size,
        }),
        pk_min: rows.iter().map(|r| r.0).min().map(PkMin::PkMinInt),
        pk_max: rows.iter().map(|r| r.0).max().map(PkMax::PkMaxInt),
        ..Default::default()
    };
    config
        .meta
        .put(
            &config.manifest_key(C, id),
            Bytes::from(manifest.encode_to_vec()),
            Condition::KeyAbsent,
            None,
        )
        .await
        .unwrap();
}

/// A batch of `id` (`keys`) and `_ts` (`ts`), as a delete file holds.
fn key_batch(keys: ArrayRef, ts: &[u64]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", keys.data_type().clone(), false),
            Field::new("_ts", ArrowType::Int64, false),
        ])),
        vec![
            keys,
            Arc::new(Int64Array::from_iter_values(ts.iter().map(|&t| t as i64))),
        ],
    )
    .unwrap()
}

/// A delete file of (key, delete ts) at flush point `flush_ts`, committed.
async fn deletes(config: &StorageConfig, flush_ts: u64, keys: &[(i64, u64)]) {
    let ts: Vec<u64> = keys.iter().map(|k| k.1).collect();
    let batch = key_batch(
        Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k.0))),
        &ts,
    );
    let path = storage::delete_file_path(C, V, flush_ts);
    config
        .store
        .put(&ObjectPath::from(path.as_str()), parquet(&batch).into())
        .await
        .unwrap();
    let manifest = DeleteManifest {
        collection_id: C,
        vchannel: V.into(),
        rows: keys.len() as u64,
        min_timestamp: keys.iter().map(|k| k.1).min().unwrap(),
        max_timestamp: keys.iter().map(|k| k.1).max().unwrap(),
        file: Some(StorageFile {
            path,
            rows: keys.len() as u64,
            bytes: 0,
        }),
        flush_timestamp: flush_ts,
        merged_timestamp: 0,
    };
    config
        .meta
        .put(
            &config.delete_manifest_key(C, V, flush_ts),
            Bytes::from(manifest.encode_to_vec()),
            Condition::KeyAbsent,
            None,
        )
        .await
        .unwrap();
}

async fn manifest(config: &StorageConfig, id: i64) -> SegmentManifest {
    let kv = config
        .meta
        .get(&config.manifest_key(C, id))
        .await
        .unwrap()
        .unwrap();
    SegmentManifest::decode(kv.value.as_ref()).unwrap()
}

/// The (key, `_row`) pairs of the segment's current file, and its `_ts` values.
async fn rows(config: &StorageConfig, id: i64) -> (Vec<(i64, u32)>, Vec<i64>) {
    let m = manifest(config, id).await;
    let mut out = Vec::new();
    let mut ts = Vec::new();
    for b in read_file(config, &m.data.unwrap().path).await.unwrap() {
        let keys = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let rows = b
            .column_by_name(ROW_COLUMN)
            .unwrap()
            .as_primitive::<UInt32Type>();
        let tags = b.column_by_name("tag").unwrap().as_string::<i32>();
        for r in 0..b.num_rows() {
            // Every other column comes along with its row.
            assert_eq!(tags.value(r), format!("tag{}", keys.value(r)));
            out.push((keys.value(r), rows.value(r)));
        }
        ts.extend(
            b.column_by_name("_ts")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .iter(),
        );
    }
    (out, ts)
}

#[tokio::test]
async fn deleted_and_expired_rows_go_the_rest_keep_their_flushed_row_numbers() {
    let config = config();
    // Keys 0..10 inserted at 100 + key; key 3 again at 300 (after its delete).
    let mut inserted: Vec<(i64, u64)> = (0..10).map(|k| (k, 100 + k as u64)).collect();
    inserted.push((3, 300));
    segment(&config, 42, &inserted).await;
    // Deletes: 3 at 200 (the row at 103 goes, the one at 300 stays), 5 at 250, 7 at 400 (after
    // the first compaction's timestamp), 99 (no such row).
    deletes(&config, 260, &[(3, 200), (5, 250), (99, 210)]).await;
    deletes(&config, 410, &[(7, 400)]).await;

    // Not worth it at a ratio of 1/2: 2 of 11 rows.
    let removals = Removals::load(&config, C, V, "id", 350, 0).await.unwrap();
    assert_eq!(
        compact_segment(&config, C, 42, "id", &removals, 0.5)
            .await
            .unwrap(),
        None
    );
    assert_eq!(manifest(&config, 42).await.compaction_timestamp, 0);

    let done = compact_segment(&config, C, 42, "id", &removals, 0.0)
        .await
        .unwrap()
        .expect("two rows to remove");
    assert_eq!(done.removed, 2);
    let m = manifest(&config, 42).await;
    assert_eq!(m, done.manifest);
    assert_eq!((m.rows, m.compaction_timestamp), (9, 350));
    assert_eq!(
        m.data.as_ref().unwrap().path,
        storage::compacted_data_path(C, P, 42, 350)
    );
    let (kept, _) = rows(&config, 42).await;
    assert_eq!(
        kept,
        vec![
            (0, 0),
            (1, 1),
            (2, 2),
            (4, 4),
            (6, 6),
            (7, 7),
            (8, 8),
            (9, 9),
            (3, 10)
        ]
    );
    // Compacting again at the same timestamp does nothing.
    assert_eq!(
        compact_segment(&config, C, 42, "id", &removals, 0.0)
            .await
            .unwrap(),
        None
    );

    // Later: key 7's delete applies, and a TTL expires rows inserted before 102.
    let removals = Removals::load(&config, C, V, "id", 500, 102).await.unwrap();
    let done = compact_segment(&config, C, 42, "id", &removals, 0.0)
        .await
        .unwrap()
        .expect("three more rows to remove");
    assert_eq!(done.removed, 3);
    let (kept, ts) = rows(&config, 42).await;
    // Row numbers are still those of the flushed file.
    assert_eq!(kept, vec![(2, 2), (4, 4), (6, 6), (8, 8), (9, 9), (3, 10)]);
    let m = manifest(&config, 42).await;
    assert_eq!((m.rows, m.compaction_timestamp), (6, 500));
    assert_eq!(
        (m.min_timestamp, m.max_timestamp),
        (
            *ts.iter().min().unwrap() as u64,
            *ts.iter().max().unwrap() as u64
        )
    );
    assert_eq!(
        (m.pk_min, m.pk_max),
        (Some(PkMin::PkMinInt(2)), Some(PkMax::PkMaxInt(9)))
    );

    // The sweep deletes the replaced data files and indexes, not the current version's.
    let dir = storage::segment_dir(C, P, 42);
    for name in ["vec.hnsw", "vec.c350.hnsw", "vec.c500.hnsw"] {
        config
            .store
            .put(
                &ObjectPath::from(format!("{dir}/{name}")),
                Bytes::new().into(),
            )
            .await
            .unwrap();
    }
    assert_eq!(sweep(&config, C, 42).await.unwrap(), 4);
    let mut left: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(
        config.store.list(Some(&ObjectPath::from(dir.as_str()))),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|o| o.location.filename().unwrap().to_owned())
    .collect();
    left.sort();
    assert_eq!(left, ["data.c500.parquet", "vec.c500.hnsw"]);
}

#[tokio::test]
async fn a_segment_every_row_of_which_goes_keeps_an_empty_file() {
    let config = config();
    segment(&config, 1, &[(1, 10), (2, 11)]).await;
    let removals = Removals::load(&config, C, V, "id", 100, 50).await.unwrap();
    let done = compact_segment(&config, C, 1, "id", &removals, 0.2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.removed, done.manifest.rows), (2, 0));
    assert_eq!(rows(&config, 1).await.0, vec![]);
    assert_eq!((done.manifest.pk_min, done.manifest.pk_max), (None, None));
}

#[tokio::test]
async fn a_segment_dropped_or_rewritten_meanwhile_is_not_overwritten() {
    let config = config();
    segment(&config, 1, &[(1, 10), (2, 11)]).await;
    deletes(&config, 30, &[(1, 20)]).await;
    let removals = Removals::load(&config, C, V, "id", 100, 0).await.unwrap();
    // Dropped: no manifest, nothing written.
    config
        .meta
        .delete(&config.manifest_key(C, 1), Condition::None)
        .await
        .unwrap();
    assert_eq!(
        compact_segment(&config, C, 1, "id", &removals, 0.0)
            .await
            .unwrap(),
        None
    );
    let compacted = storage::compacted_data_path(C, P, 1, 100);
    assert!(
        config
            .store
            .head(&ObjectPath::from(compacted.as_str()))
            .await
            .is_err()
    );
    // A file whose row column is not uint32 is refused, the manifest untouched.
    segment(&config, 2, &[(1, 10)]).await;
    let m = manifest(&config, 2).await;
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("_ts", ArrowType::Int64, false),
            Field::new(ROW_COLUMN, ArrowType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
            Arc::new(Int64Array::from(vec![10])),
            Arc::new(Int64Array::from(vec![0])),
        ],
    )
    .unwrap();
    config
        .store
        .put(
            &ObjectPath::from(m.data.as_ref().unwrap().path.as_str()),
            parquet(&bad).into(),
        )
        .await
        .unwrap();
    let err = compact_segment(&config, C, 2, "id", &removals, 0.0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not uint32"), "{err}");
    assert_eq!(manifest(&config, 2).await, m);
}

/// Compacts segment `id` at `at` (no TTL), at least one row to remove.
async fn compact(config: &StorageConfig, id: i64, at: u64) -> Compacted {
    let removals = Removals::load(config, C, V, "id", at, 0).await.unwrap();
    compact_segment(config, C, id, "id", &removals, 0.0)
        .await
        .unwrap()
        .expect("rows to remove")
}

/// Merges the delete files of `V` (primary key `id`) at `at`, the flush checkpoint at
/// `through`.
async fn merge(
    config: &StorageConfig,
    at: u64,
    through: u64,
    force: bool,
) -> Option<MergedDeletes> {
    merge_deletes(config, C, V, "id", at, through, force)
        .await
        .unwrap()
}

/// The (key, delete ts) pairs of a delete manifest's file (none without a file).
async fn deleted(config: &StorageConfig, m: &DeleteManifest) -> Vec<(i64, i64)> {
    let Some(file) = &m.file else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in read_file(config, &file.path).await.unwrap() {
        let keys = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let ts = b.column_by_name("_ts").unwrap().as_primitive::<Int64Type>();
        out.extend((0..b.num_rows()).map(|r| (keys.value(r), ts.value(r))));
    }
    out.sort_unstable();
    out
}

async fn delete_files(config: &StorageConfig) -> Vec<String> {
    let dir = storage::delete_dir(C, V);
    let mut out: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(
        config.store.list(Some(&ObjectPath::from(dir.as_str()))),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|o| o.location.filename().unwrap().to_owned())
    .collect();
    out.sort();
    out
}

#[tokio::test]
async fn delete_files_merge_into_the_deletes_committed_rows_still_need() {
    let config = config();
    segment(
        &config,
        42,
        &(0..10).map(|k| (k, 100 + k as u64)).collect::<Vec<_>>(),
    )
    .await;
    segment(&config, 43, &[(20, 150), (21, 151)]).await;
    // 99 matches no row; 8 is deleted before its row was inserted (the row stays); 5 twice.
    deletes(&config, 260, &[(3, 200), (5, 220), (99, 210), (8, 90)]).await;
    deletes(&config, 410, &[(7, 400), (21, 405), (5, 250)]).await;
    // Past the flush checkpoint: not merged yet.
    deletes(&config, 600, &[(9, 590)]).await;

    // Up to a checkpoint at 300, the first file alone: 99 and 8 go.
    let merged = merge(&config, 1000, 300, false)
        .await
        .expect("two needless deletes");
    assert_eq!(
        merged,
        MergedDeletes {
            files: 1,
            rows_before: 4,
            rows_after: 2
        }
    );
    let all = delete_manifests(&config, Some(C)).await.unwrap();
    assert_eq!(deleted(&config, &all[0]).await, [(3, 200), (5, 220)]);
    // A merged file alone, nothing compacted since: left alone.
    assert_eq!(merge(&config, 1000, 300, false).await, None);
    let merged = merge(&config, 1000, 500, false)
        .await
        .expect("two files to merge");
    assert_eq!(
        merged,
        MergedDeletes {
            files: 2,
            rows_before: 5,
            rows_after: 4
        }
    );
    let all = delete_manifests(&config, Some(C)).await.unwrap();
    let flush_points: Vec<(u64, u64)> = all
        .iter()
        .map(|m| (m.flush_timestamp, m.merged_timestamp))
        .collect();
    assert_eq!(flush_points, [(410, 1000), (600, 0)]);
    assert_eq!(
        all[0].file.as_ref().unwrap().path,
        storage::merged_delete_file_path(C, V, 410, 1000)
    );
    // The latest delete of each key with a row older than it; 99 and 8 went.
    assert_eq!(
        deleted(&config, &all[0]).await,
        [(3, 200), (5, 250), (7, 400), (21, 405)]
    );
    assert_eq!(
        (all[0].rows, all[0].min_timestamp, all[0].max_timestamp),
        (4, 200, 405)
    );

    // Compaction reads the merged file as it read the two: the same rows go.
    let done = compact(&config, 42, 500).await;
    assert_eq!(done.removed, 3);
    let (kept, _) = rows(&config, 42).await;
    let keys: Vec<i64> = kept.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, [0, 1, 2, 4, 6, 8, 9]);

    // After the compaction only 21's delete hides a committed row; without `force` a single
    // file is left alone.
    assert_eq!(merge(&config, 1100, 500, false).await, None);
    let merged = merge(&config, 1100, 500, true)
        .await
        .expect("deletes no row needs");
    assert_eq!(
        merged,
        MergedDeletes {
            files: 1,
            rows_before: 4,
            rows_after: 1
        }
    );
    let all = delete_manifests(&config, Some(C)).await.unwrap();
    assert_eq!(deleted(&config, &all[0]).await, [(21, 405)]);
    // Nothing more to drop: forced or not, nothing is written.
    assert_eq!(merge(&config, 1200, 500, true).await, None);

    // The sweep deletes the files no manifest names up to the checkpoint, once old enough.
    let orphan = storage::delete_file_path(C, V, 700);
    config
        .store
        .put(&ObjectPath::from(orphan.as_str()), Bytes::new().into())
        .await
        .unwrap();
    assert_eq!(
        delete_files(&config).await,
        [
            "260.m1000.parquet",
            "260.parquet",
            "410.m1000.parquet",
            "410.m1100.parquet",
            "410.parquet",
            "600.parquet",
            "700.parquet"
        ]
    );
    assert_eq!(
        sweep_deletes(&config, C, V, 500, Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "every file is younger than an hour"
    );
    assert_eq!(
        sweep_deletes(&config, C, V, 500, Duration::ZERO)
            .await
            .unwrap(),
        4
    );
    // 700 is past the checkpoint: its flush may be about to commit its manifest.
    assert_eq!(
        delete_files(&config).await,
        ["410.m1100.parquet", "600.parquet", "700.parquet"]
    );
}

#[tokio::test]
async fn deletes_of_rows_all_compacted_away_leave_a_manifest_without_a_file() {
    let config = config();
    segment(&config, 1, &[(1, 10), (2, 11)]).await;
    deletes(&config, 30, &[(1, 20)]).await;
    deletes(&config, 40, &[(2, 35)]).await;
    compact(&config, 1, 100).await;
    let merged = merge(&config, 100, 100, true).await.unwrap();
    assert_eq!((merged.files, merged.rows_after), (2, 0));
    let all = delete_manifests(&config, Some(C)).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].flush_timestamp, all[0].rows, all[0].file.is_none()),
        (40, 0, true)
    );
    assert_eq!(
        sweep_deletes(&config, C, V, 100, Duration::ZERO)
            .await
            .unwrap(),
        2
    );
    assert!(delete_files(&config).await.is_empty());
}

#[tokio::test]
async fn garbage_collection_deletes_what_no_manifest_names_once_old_enough() {
    let config = config();
    segment(&config, 42, &[(1, 10), (2, 11)]).await;
    segment(&config, 43, &[(3, 12)]).await;
    deletes(&config, 30, &[(1, 20)]).await;
    compact(&config, 42, 100).await;
    let put = |path: String| {
        let store = config.store.clone();
        async move {
            store
                .put(
                    &ObjectPath::from(path.as_str()),
                    Bytes::from_static(b"x").into(),
                )
                .await
                .unwrap();
        }
    };
    // Indexes: of 42's current version and its replaced one, of 43.
    put(format!("{}/vec.c100.hnsw", storage::segment_dir(C, P, 42))).await;
    put(format!("{}/vec.hnsw", storage::segment_dir(C, P, 42))).await;
    put(format!("{}/vec.hnsw", storage::segment_dir(C, P, 43))).await;
    // Left by crashes: a segment whose manifest a drop deleted, a dropped collection's
    // segment and delete file, an unnamed delete file; and an object outside the layout.
    put(storage::segment_data_path(C, P, 99)).await;
    put(storage::segment_data_path(8, 2, 5)).await;
    put(storage::delete_file_path(8, "p_8v0", 1)).await;
    put(storage::delete_file_path(C, V, 55)).await;
    put("other/keep.parquet".into()).await;
    let all = || async {
        let mut out: Vec<String> =
            futures::TryStreamExt::try_collect::<Vec<_>>(config.store.list(None))
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.location.to_string())
                .collect();
        out.sort();
        out
    };
    let before = all().await;
    assert_eq!(before.len(), 12, "{before:?}");

    let young = collect_garbage(&config, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((young.objects, young.deleted), (11, 0));
    assert_eq!(all().await, before);

    let done = collect_garbage(&config, Duration::ZERO).await.unwrap();
    assert_eq!((done.objects, done.deleted), (11, 6));
    assert_eq!(
        all().await,
        [
            "deletes/7/p_7v0/30.parquet",
            "other/keep.parquet",
            "segments/7/1/42/data.c100.parquet",
            "segments/7/1/42/vec.c100.hnsw",
            "segments/7/1/43/data.parquet",
            "segments/7/1/43/vec.hnsw",
        ]
    );
    // What is committed reads as before.
    assert_eq!(rows(&config, 42).await.0, [(2, 1)]);
    let removals = Removals::load(&config, C, V, "id", 100, 0).await.unwrap();
    assert_eq!(
        compact_segment(&config, C, 43, "id", &removals, 0.0)
            .await
            .unwrap(),
        None
    );
}

/// A Parquet file of `id` (VARCHAR) and `_ts` at `path`.
async fn string_keys(config: &StorageConfig, path: &str, rows: &[(&str, u64)]) {
    let keys: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0)));
    let ts: Vec<u64> = rows.iter().map(|r| r.1).collect();
    config
        .store
        .put(
            &ObjectPath::from(path),
            parquet(&key_batch(keys, &ts)).into(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn varchar_deletes_merge_too() {
    let config = config();
    let data = storage::segment_data_path(C, P, 5);
    string_keys(&config, &data, &[("a", 10), ("b", 11), ("c", 12)]).await;
    let segment = SegmentManifest {
        segment_id: 5,
        collection_id: C,
        partition_id: P,
        vchannel: V.into(),
        rows: 3,
        min_timestamp: 10,
        max_timestamp: 12,
        data: Some(StorageFile {
            path: data,
            rows: 3,
            bytes: 0,
        }),
        pk_min: Some(PkMin::PkMinStr("a".into())),
        pk_max: Some(PkMax::PkMaxStr("c".into())),
        ..Default::default()
    };
    config
        .meta
        .put(
            &config.manifest_key(C, 5),
            Bytes::from(segment.encode_to_vec()),
            Condition::KeyAbsent,
            None,
        )
        .await
        .unwrap();
    for (flush_ts, keys) in [
        (30, vec![("b", 20), ("zz", 21)]),
        (40, vec![("a", 5), ("c", 35)]),
    ] {
        let path = storage::delete_file_path(C, V, flush_ts);
        string_keys(&config, &path, &keys).await;
        let manifest = DeleteManifest {
            collection_id: C,
            vchannel: V.into(),
            rows: 2,
            file: Some(StorageFile {
                path,
                rows: 2,
                bytes: 0,
            }),
            flush_timestamp: flush_ts,
            ..Default::default()
        };
        config
            .meta
            .put(
                &config.delete_manifest_key(C, V, flush_ts),
                Bytes::from(manifest.encode_to_vec()),
                Condition::KeyAbsent,
                None,
            )
            .await
            .unwrap();
    }
    // "zz" matches no row, "a"'s delete came before its row: both go.
    let merged = merge(&config, 100, 100, false).await.unwrap();
    assert_eq!(
        (merged.files, merged.rows_before, merged.rows_after),
        (2, 4, 2)
    );
    let all = delete_manifests(&config, Some(C)).await.unwrap();
    assert_eq!(all.len(), 1);
    let mut kept = Vec::new();
    for b in read_file(&config, &all[0].file.as_ref().unwrap().path)
        .await
        .unwrap()
    {
        let keys = b.column_by_name("id").unwrap().as_string::<i32>();
        let ts = b.column_by_name("_ts").unwrap().as_primitive::<Int64Type>();
        kept.extend((0..b.num_rows()).map(|r| (keys.value(r).to_owned(), ts.value(r))));
    }
    assert_eq!(kept, [("b".to_owned(), 20), ("c".to_owned(), 35)]);
    // Compaction removes the same rows from it.
    let done = compact(&config, 5, 100).await;
    assert_eq!((done.removed, done.manifest.rows), (2, 1));
}
