//! Recovery snapshots in a real meta store (embedded redb), and a WAL recovering from them.

use std::sync::Arc;

use sluice_log::LogProvider;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_meta::MetaStore;
use sluice_meta::embedded::EmbeddedStore;
use sluice_storage::checkpoints::{MAX_OPS, MetaCheckpointStore};
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{CollectionId, ErrorCode, MessageId, MutableMessage, PChannel, Term, Timestamp};
use sluice_wal::checkpoint::{Checkpoint, CheckpointStore, CollectionMeta, SegmentMeta, Snapshot};
use sluice_wal::producer::{ProducedAppend, ProducerMeta};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

fn pchannel() -> PChannel {
    PChannel::new("storage-test-dml_0").unwrap()
}

fn embedded(dir: &tempfile::TempDir) -> Arc<dyn MetaStore> {
    Arc::new(EmbeddedStore::open(dir.path().join("meta.redb")).unwrap())
}

fn snapshot(term: u64, ts: u64, segments: std::ops::Range<i64>, bytes: u64) -> Snapshot {
    Snapshot {
        checkpoint: Checkpoint::new(MessageId::from_parts(0, ts), Timestamp(ts), Term(term)),
        collections: vec![CollectionMeta {
            vchannel: "storage-test-dml_0_100v0".into(),
            collection_id: 100,
            partition_ids: vec![10],
            schema: None,
            dropped: false,
            as_of: ts,
            managed: false,
        }],
        segments: segments
            .map(|id| SegmentMeta {
                segment_id: id,
                collection_id: 100,
                partition_id: 10,
                vchannel: "storage-test-dml_0_100v0".into(),
                max_bytes: 1 << 20,
                bytes,
                rows: bytes / 10,
                as_of: ts,
            })
            .collect(),
        // Idempotent producers: one whose window moves with the timestamp.
        producers: vec![ProducerMeta {
            producer_id: 0xabc,
            appends: (ts..ts + 2)
                .map(|seq| ProducedAppend {
                    sequence: seq,
                    message_id: MessageId::from_parts(0, seq).to_bytes().to_vec(),
                    timestamp: seq,
                    last_confirmed: MessageId::from_parts(0, seq).to_bytes().to_vec(),
                    flushed_segments: Vec::new(),
                })
                .collect(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_loads_back_and_only_changed_records_are_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let meta = embedded(&dir);
    let store = MetaCheckpointStore::new(meta.clone(), "/sluice");
    assert_eq!(store.load(&pchannel(), Term(1)).await.unwrap(), None);

    // More records than one transaction carries.
    let n = (MAX_OPS * 2 + 5) as i64;
    let first = snapshot(1, 100, 0..n, 500);
    store.save(&pchannel(), &first).await.unwrap();
    let seg0 = format!("{}segment/0", store.prefix(&pchannel()));
    let rev0 = meta.get(&seg0).await.unwrap().unwrap().mod_revision;

    // Segment 1 grew, 0 did not, the last one was flushed.
    let mut second = snapshot(1, 200, 0..n - 1, 500);
    second.segments[1].bytes = 900;
    store.save(&pchannel(), &second).await.unwrap();
    assert_eq!(
        meta.get(&seg0).await.unwrap().unwrap().mod_revision,
        rev0,
        "an unchanged record is not rewritten"
    );

    // A new owner (another process) loads exactly that state, each record with the timestamp
    // it was last written as of.
    let other = MetaCheckpointStore::new(meta.clone(), "/sluice");
    let loaded = other.load(&pchannel(), Term(2)).await.unwrap().unwrap();
    assert_eq!(loaded.checkpoint, second.checkpoint);
    assert_eq!(loaded.segments.len(), second.segments.len());
    let by_id = |id: i64| loaded.segments.iter().find(|s| s.segment_id == id).unwrap();
    assert_eq!((by_id(0).bytes, by_id(0).as_of), (500, 100));
    assert_eq!((by_id(1).bytes, by_id(1).as_of), (900, 200));
    assert!(loaded.segments.iter().all(|s| s.segment_id != n - 1));
    assert_eq!(
        loaded.collections, first.collections,
        "unchanged: as of 100"
    );
    assert_eq!(loaded.producers, second.producers);
    assert_ne!(loaded.producers, first.producers);

    // The replaced owner can no longer write anything.
    let before = meta
        .scan_prefix(&store.prefix(&pchannel()))
        .await
        .unwrap()
        .0;
    let err = store
        .save(&pchannel(), &snapshot(1, 300, 0..3, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChannelFenced, "{err}");
    let after = meta
        .scan_prefix(&store.prefix(&pchannel()))
        .await
        .unwrap()
        .0;
    assert_eq!(before, after);
    // Nor claim it back.
    let err = MetaCheckpointStore::new(meta.clone(), "/sluice")
        .load(&pchannel(), Term(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChannelFenced, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_record_is_a_clear_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let meta = embedded(&dir);
    let store = MetaCheckpointStore::new(meta.clone(), "/sluice");
    store.load(&pchannel(), Term(1)).await.unwrap();
    store
        .save(&pchannel(), &snapshot(1, 100, 0..2, 10))
        .await
        .unwrap();
    let key = format!("{}segment/1", store.prefix(&pchannel()));
    meta.put(
        &key,
        bytes::Bytes::from_static(b"\xff\xff\xff not protobuf"),
        sluice_meta::Condition::None,
        None,
    )
    .await
    .unwrap();
    let err = MetaCheckpointStore::new(meta.clone(), "/sluice")
        .load(&pchannel(), Term(2))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{text}");
    assert!(text.contains(&key), "{text}");
    assert!(text.contains("Delete the keys under"), "{text}");
}

fn wal_deps(oracle: &Arc<LocalOracle>, store: Arc<MetaCheckpointStore>) -> WalDeps {
    WalDeps {
        oracle: oracle.clone(),
        ids: oracle.clone(),
        node_growing: NodeGrowingBytes::new(),
        pressure: sluice_wal::Pressure::unlimited(),
        checkpoints: Some(store),
        rows: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_on_a_local_log_reopens_from_its_checkpoint_in_the_meta_store() {
    let dir = tempfile::tempdir().unwrap();
    let meta = embedded(&dir);
    let provider = LocalProvider::new(LocalConfig::new(dir.path().join("log"))).unwrap();
    let oracle = LocalOracle::new();
    let v = pchannel().vchannel(CollectionId(100), 0).unwrap();
    let config = WalConfig {
        timetick_interval: std::time::Duration::from_millis(20),
        ..WalConfig::default()
    };
    let store = MetaCheckpointStore::new(meta.clone(), "/sluice");
    let wal = Wal::open(
        &provider,
        pchannel(),
        Term(1),
        config.clone(),
        wal_deps(&oracle, store.clone()),
    )
    .await
    .unwrap();
    wal.append(
        MutableMessage::builder(CreateCollectionHeader {
            collection_id: 100,
            partition_ids: vec![10],
            db_id: 1,
            schema: None,
        })
        .vchannel(&v)
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    let insert = || {
        MutableMessage::builder(InsertHeader {
            collection_id: 100,
            partitions: vec![PartitionSegmentAssignment {
                partition_id: 10,
                rows: 1,
                binary_size: 64,
                segment_id: 0,
            }],
        })
        .vchannel(&v)
        .payload(vec![1u8; 64])
        .build()
        .unwrap()
    };
    for _ in 0..500 {
        wal.append(insert()).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    wal.checkpoint().await.unwrap();
    for _ in 0..3 {
        wal.append(insert()).await.unwrap();
    }
    let growing = wal.growing_segments();
    // A crash: no close. A new process (new store instance) takes over at term 2.
    let store2 = MetaCheckpointStore::new(meta.clone(), "/sluice");
    let two = Wal::open(
        &provider,
        pchannel(),
        Term(2),
        config,
        wal_deps(&oracle, store2),
    )
    .await
    .unwrap();
    let stats = two.recovery_stats();
    assert!(stats.checkpoint.is_some(), "{stats:?}");
    assert!(stats.replayed < 20, "{stats:?}");
    assert_eq!(two.growing_segments(), growing);
    two.close().await;
    drop(wal);
    let _: &dyn LogProvider = &provider;
}
