//! Compaction of committed segments against a real object store (an in-memory one, the same
//! trait the local directory and S3 implement) and a meta store: which rows go, which stay, the
//! row numbers kept across two compactions, the commit's guard, and the sweep of replaced files.

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
use sluice_storage::compaction::{ROW_COLUMN, Removals, compact_segment, sweep};
use sluice_storage::flusher::StorageConfig;
use sluice_storage::segments::read_file;
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

/// A delete file of (key, delete ts) at flush point `flush_ts`, committed.
async fn deletes(config: &StorageConfig, flush_ts: u64, keys: &[(i64, u64)]) {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("_ts", ArrowType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k.0))) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(
                keys.iter().map(|k| k.1 as i64),
            )),
        ],
    )
    .unwrap();
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
