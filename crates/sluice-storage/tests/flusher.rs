//! The flusher against real components: the local log, the embedded meta store and a local
//! object-store directory. Rows inserted through the WAL end up in Parquet segments exactly once
//! (across a restart), deletes in delete files, and the log is truncated behind them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use common::*;
use sluice_log::LogProvider;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_meta::MetaStore;
use sluice_meta::embedded::EmbeddedStore;
use sluice_storage::checkpoints::MetaCheckpointStore;
use sluice_storage::flusher::{Flusher, StorageConfig};
use sluice_storage::rows::ArrowRowCheck;
use sluice_storage::segments::{delete_manifests, read_file, segment_manifests};
use sluice_types::message::ManualFlushHeader;
use sluice_types::{CollectionId, MutableMessage, PChannel, Term, VChannel};
use sluice_wal::shard::{NodeGrowingBytes, SegmentConfig};
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

struct Rig {
    dir: tempfile::TempDir,
    meta: Arc<dyn MetaStore>,
    provider: LocalProvider,
    oracle: Arc<LocalOracle>,
    storage: Arc<StorageConfig>,
}

fn pchannel() -> PChannel {
    PChannel::new("flush-test_0").unwrap()
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let meta: Arc<dyn MetaStore> =
        Arc::new(EmbeddedStore::open(dir.path().join("meta.redb")).unwrap());
    let provider = LocalProvider::new(LocalConfig {
        segment_size: 64 << 10,
        ..LocalConfig::new(dir.path().join("wal"))
    })
    .unwrap();
    let objects = dir.path().join("storage");
    std::fs::create_dir_all(&objects).unwrap();
    let store =
        sluice_log::object::build_store(&sluice_log::object::ObjectStoreConfig::LocalDir(objects))
            .unwrap();
    let storage = Arc::new(StorageConfig {
        store,
        meta: meta.clone(),
        meta_root: "/sluice".into(),
        retention: Duration::ZERO,
        truncate_interval: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(50),
        max_body_bytes: 1 << 20,
    });
    Rig {
        dir,
        meta,
        provider,
        oracle: LocalOracle::new(),
        storage,
    }
}

impl Rig {
    async fn open(&self, term: u64) -> (Wal, Flusher) {
        let config = WalConfig {
            timetick_interval: Duration::from_millis(20),
            checkpoint_interval: Duration::from_millis(100),
            segments: SegmentConfig {
                max_segment_bytes: 8 << 10,
                size_jitter: 0.0,
                check_interval: Duration::from_millis(50),
                ..SegmentConfig::default()
            },
            ..WalConfig::default()
        };
        let wal = Wal::open(
            &self.provider,
            pchannel(),
            Term(term),
            config,
            WalDeps {
                oracle: self.oracle.clone(),
                ids: self.oracle.clone(),
                node_growing: NodeGrowingBytes::new(),
                pressure: sluice_wal::Pressure::unlimited(),
                checkpoints: Some(MetaCheckpointStore::new(self.meta.clone(), "/sluice")),
                rows: Some(Arc::new(ArrowRowCheck::default())),
            },
        )
        .await
        .unwrap();
        let flusher = Flusher::start(wal.clone(), self.storage.clone());
        (wal, flusher)
    }

    /// Every primary key in committed segments of `collection`, with how often it appears.
    async fn flushed_keys(&self, collection: i64) -> BTreeMap<i64, u32> {
        let mut out = BTreeMap::new();
        for m in segment_manifests(&self.storage, Some(collection))
            .await
            .unwrap()
        {
            let data = m.data.unwrap();
            let batches = read_file(&self.storage, &data.path).await.unwrap();
            let mut rows = 0;
            for b in batches {
                rows += b.num_rows();
                for k in b
                    .column_by_name("id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .iter()
                {
                    *out.entry(k.unwrap()).or_insert(0) += 1;
                }
                assert!(b.column_by_name("_ts").is_some());
            }
            assert_eq!(rows as u64, m.rows, "segment {}", m.segment_id);
        }
        out
    }

    fn log_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("wal").join(pchannel().as_str()))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count()
    }
}

fn manual_flush(v: &VChannel) -> MutableMessage {
    MutableMessage::builder(ManualFlushHeader {
        collection_id: v.collection().0,
        flush_ts: 0,
        segment_ids: Vec::new(),
    })
    .vchannel(v)
    .build()
    .unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserted_rows_land_in_parquet_exactly_once_and_the_log_is_truncated_behind_them() {
    let r = rig();
    let v = pchannel().vchannel(CollectionId(100), 0).unwrap();
    let (wal, flusher) = r.open(1).await;
    wal.append(create(&v, Some(schema()))).await.unwrap();
    let mut next = 0i64;
    // ~400 KB of rows: dozens of segments sealed by size, several log files.
    for _ in 0..200 {
        let ids: Vec<i64> = (next..next + 20).collect();
        next += 20;
        wal.append(insert(&v, 20, body(&batch(&ids))))
            .await
            .unwrap();
    }
    wal.append(delete(&v, 3, delete_body(&[0, 1, 2])))
        .await
        .unwrap();
    let files_before = r.log_files();
    assert!(files_before > 3, "{files_before} log files");

    // Half way: stop as a crash would (no flush of what is growing), start again at term 2.
    flusher.stop().await;
    drop(wal);
    let (wal, flusher) = r.open(2).await;
    for _ in 0..100 {
        let ids: Vec<i64> = (next..next + 20).collect();
        next += 20;
        wal.append(insert(&v, 20, body(&batch(&ids))))
            .await
            .unwrap();
    }
    wal.append(manual_flush(&v)).await.unwrap();

    wait_for("every row flushed", || async {
        r.flushed_keys(100).await.len() as i64 == next
    })
    .await;
    let keys = r.flushed_keys(100).await;
    assert!(keys.values().all(|n| *n == 1), "a row flushed twice");
    assert_eq!(
        keys.keys().copied().collect::<Vec<_>>(),
        (0..next).collect::<Vec<_>>()
    );

    // The delete is in a delete file.
    let deletes = delete_manifests(&r.storage, Some(100)).await.unwrap();
    let deleted: Vec<i64> = {
        let mut out = Vec::new();
        for d in &deletes {
            for b in read_file(&r.storage, &d.file.as_ref().unwrap().path)
                .await
                .unwrap()
            {
                out.extend(b.column(0).as_primitive::<Int64Type>().iter().flatten());
            }
        }
        out
    };
    assert_eq!(deleted, [0, 1, 2]);

    // Everything is flushed and checkpointed: the log shrinks to its newest file or two.
    wait_for("the log truncated", || async { r.log_files() <= 2 }).await;
    flusher.stop().await;
    wal.close().await;

    // A third owner replays nothing into Parquet twice.
    let (wal, flusher) = r.open(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = r.flushed_keys(100).await;
    assert_eq!(again, keys);
    flusher.stop().await;
    wal.close().await;
    let _: &dyn LogProvider = &r.provider;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_collection_without_a_schema_are_kept_as_payloads() {
    let r = rig();
    let v = pchannel().vchannel(CollectionId(7), 0).unwrap();
    let (wal, flusher) = r.open(1).await;
    wal.append(create(&v, None)).await.unwrap();
    for i in 0..5u8 {
        wal.append(insert(&v, 1, vec![i; 10])).await.unwrap();
    }
    wal.append(manual_flush(&v)).await.unwrap();
    wait_for("the segment", || async {
        !segment_manifests(&r.storage, Some(7))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let m = segment_manifests(&r.storage, Some(7)).await.unwrap();
    let batches = read_file(&r.storage, &m[0].data.as_ref().unwrap().path)
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("_payload")
                .unwrap()
                .as_binary::<i32>()
                .iter()
                .map(|v| v.unwrap().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(payloads, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    assert_eq!(m[0].schema_version, 0);
    flusher.stop().await;
    wal.close().await;
}

/// Every file under `dir` (relative to the rig's storage directory).
fn files_under(r: &Rig, dir: &str) -> Vec<String> {
    fn walk(p: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path().display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&r.dir.path().join("storage").join(dir), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_partition_or_a_collection_removes_its_stored_data() {
    use sluice_types::message::{CreatePartitionHeader, DropCollectionHeader, DropPartitionHeader};
    let r = rig();
    let v = pchannel().vchannel(CollectionId(300), 0).unwrap();
    let other = pchannel().vchannel(CollectionId(301), 0).unwrap();
    let (wal, flusher) = r.open(1).await;
    wal.append(create(&v, Some(schema()))).await.unwrap();
    wal.append(create(&other, Some(schema()))).await.unwrap();
    wal.append(
        MutableMessage::builder(CreatePartitionHeader {
            collection_id: 300,
            partition_id: 77,
        })
        .vchannel(&v)
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    let into = |v: &VChannel, partition: i64, ids: &[i64]| {
        let b = body(&batch(ids));
        MutableMessage::builder(sluice_types::message::InsertHeader {
            collection_id: v.collection().0,
            partitions: vec![sluice_types::message::PartitionSegmentAssignment {
                partition_id: partition,
                rows: ids.len() as u64,
                binary_size: b.len() as u64,
                segment_id: 0,
            }],
        })
        .vchannel(v)
        .payload(b)
        .build()
        .unwrap()
    };
    for (vc, partition, ids) in [
        (&v, PARTITION, vec![1, 2, 3]),
        (&v, 77, vec![4, 5]),
        (&other, PARTITION, vec![6, 7]),
    ] {
        wal.append(into(vc, partition, &ids)).await.unwrap();
    }
    wal.append(delete(&v, 1, delete_body(&[1]))).await.unwrap();
    wal.append(manual_flush(&v)).await.unwrap();
    wal.append(manual_flush(&other)).await.unwrap();
    wait_for("both collections flushed", || async {
        r.flushed_keys(300).await.len() == 5 && r.flushed_keys(301).await.len() == 2
    })
    .await;
    let storage = r.storage.clone();
    let partitions = move |c: i64| {
        let storage = storage.clone();
        async move {
            let mut p: Vec<i64> = segment_manifests(&storage, Some(c))
                .await
                .unwrap()
                .iter()
                .map(|m| m.partition_id)
                .collect();
            p.sort_unstable();
            p
        }
    };
    assert_eq!(partitions(300).await, [PARTITION, 77]);
    assert!(!files_under(&r, "segments/300/77").is_empty());
    assert_eq!(
        delete_manifests(&r.storage, Some(300)).await.unwrap().len(),
        1
    );

    wal.append(
        MutableMessage::builder(DropPartitionHeader {
            collection_id: 300,
            partition_id: 77,
        })
        .vchannel(&v)
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    wait_for("the partition's segments removed", || async {
        partitions(300).await == [PARTITION]
    })
    .await;
    wait_for("the partition's files removed", || async {
        files_under(&r, "segments/300/77").is_empty()
    })
    .await;
    assert!(!files_under(&r, &format!("segments/300/{PARTITION}")).is_empty());

    wal.append(
        MutableMessage::builder(DropCollectionHeader {
            collection_id: 300,
            db_id: 1,
        })
        .vchannel(&v)
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    wait_for("the collection's segments and deletes removed", || async {
        segment_manifests(&r.storage, Some(300))
            .await
            .unwrap()
            .is_empty()
            && delete_manifests(&r.storage, Some(300))
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    wait_for("the collection's files removed", || async {
        files_under(&r, "segments/300").is_empty() && files_under(&r, "deletes/300").is_empty()
    })
    .await;
    // The other collection keeps everything.
    assert_eq!(r.flushed_keys(301).await.len(), 2);
    flusher.stop().await;
    wal.close().await;
}
