//! What a WAL knows after it is reopened: the shard state it rebuilds from the log must be the
//! state the previous term left, and memory must never run ahead of the log.

mod common;

use std::time::Duration;

use common::*;
use sluice_log::OpenOptions;
use sluice_types::message::CreatePartitionHeader;
use sluice_types::{CollectionId, ErrorCode, MutableMessage, Term, VChannel};
use sluice_wal::shard::{NodeGrowingBytes, SegmentConfig};
use sluice_wal::{Wal, WalConfig};

/// A WAL at `term` whose node growing bytes the test can see.
async fn open_counted(
    b: &Backend,
    term: u64,
    config: WalConfig,
) -> (Wal, std::sync::Arc<NodeGrowingBytes>) {
    let node = NodeGrowingBytes::new();
    let mut d = deps();
    d.node_growing = node.clone();
    let wal = Wal::open(&*b.provider, pchannel(), Term(term), config, d)
        .await
        .unwrap();
    (wal, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_a_manual_flush_sealed_stay_flushed_after_a_reopen() {
    for b in [memory(), local()] {
        let wal = open(&b, 1, fast_config()).await;
        wal.append(create_collection(COLLECTION)).await.unwrap();
        wal.append(insert(COLLECTION, "a", 100)).await.unwrap();
        let growing: Vec<i64> = wal.growing_segments().iter().map(|(id, _)| *id).collect();
        assert_eq!(growing.len(), 1);
        let flushed = wal
            .append(manual_flush(&vchannel(COLLECTION)))
            .await
            .unwrap()
            .flushed_segments;
        assert_eq!(flushed, growing);
        assert!(wal.growing_segments().is_empty());
        wal.close().await;

        let wal = open(&b, 2, fast_config()).await;
        assert!(
            wal.growing_segments().is_empty(),
            "a flushed segment came back growing: {:?}",
            wal.growing_segments()
        );
        wal.append(insert(COLLECTION, "b", 100)).await.unwrap();
        // A fresh segment (CreateSegment) holds just the new insert; the flushed one would
        // already have held 100 bytes. (Segment ids repeat here: each test open has its own
        // id allocator.)
        assert_eq!(
            wal.growing_segments()
                .iter()
                .map(|(_, b)| *b)
                .collect::<Vec<_>>(),
            [100]
        );
        wal.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_segments_keep_their_rows_and_bytes_and_still_seal() {
    let b = memory();
    let (wal, node) = open_counted(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    for tag in ["a", "b", "c"] {
        wal.append(insert(COLLECTION, tag, 1000)).await.unwrap();
    }
    let before = wal.growing_segments();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].1, 3000);
    assert_eq!(node.get(), 3000);
    wal.close().await;

    // Reopened with an idle policy that seals anything idle for 100 ms.
    let config = WalConfig {
        segments: SegmentConfig {
            min_idle_seal_bytes: 1,
            max_idle: Duration::from_millis(100),
            check_interval: Duration::from_millis(20),
            ..SegmentConfig::default()
        },
        ..fast_config()
    };
    let (wal, node) = open_counted(&b, 2, config).await;
    let after = wal.growing_segments();
    // Sealing may already have started; the bytes are back either way.
    assert!(
        after == before || after.is_empty(),
        "recovered {after:?}, had {before:?}"
    );
    assert!(
        node.get() == 3000 || after.is_empty(),
        "node growing bytes not restored: {}",
        node.get()
    );
    // The recovered segment gets no new data and still seals and flushes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !wal.growing_segments().is_empty() || node.get() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a recovered segment never sealed: {:?}, node bytes {}",
            wal.growing_segments(),
            node.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wal.close().await;
}

/// Re-addresses a helper-built message (shard 0) to another shard of the same collection.
fn on(m: MutableMessage, v: &VChannel) -> MutableMessage {
    let msg = m.into_message();
    let mut props = msg.properties().into_owned();
    props.insert("_vc".into(), v.as_str().to_owned());
    MutableMessage::from_message(
        sluice_types::Message::from_parts(msg.payload().clone(), props).unwrap(),
    )
}

/// Shard 0 of the collection was dropped, shard 1 was not.
async fn check_per_vchannel(wal: Wal, v0: &VChannel, v1: &VChannel) {
    // The drop on shard 0 left shard 1 alone.
    wal.append(on(insert(COLLECTION, "v1", 10), v1))
        .await
        .unwrap();
    let err = wal
        .append(on(insert(COLLECTION, "v0", 10), v0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    // Dropping the dropped shard again is a no-op (broadcasts are at least once).
    wal.append(on(drop_collection(COLLECTION), v0))
        .await
        .unwrap();
    // DDL for a collection never created on its vchannel is refused.
    let never = pchannel().vchannel(CollectionId(999), 0).unwrap();
    let partition = MutableMessage::builder(CreatePartitionHeader {
        collection_id: 999,
        partition_id: 5,
    })
    .vchannel(&never)
    .build()
    .unwrap();
    let err = wal.append(partition).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    let err = wal.append(drop_collection(999)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    let err = wal.append(manual_flush(&never)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_are_kept_per_vchannel_and_survive_a_reopen() {
    let b = memory();
    let shard = |s: u32| pchannel().vchannel(CollectionId(COLLECTION), s).unwrap();
    let (v0, v1) = (shard(0), shard(1));
    let create = |v: &VChannel| {
        MutableMessage::builder(sluice_types::message::CreateCollectionHeader {
            collection_id: COLLECTION,
            partition_ids: vec![PARTITION],
            db_id: 1,
            schema: None,
        })
        .vchannel(v)
        .build()
        .unwrap()
    };
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create(&v0)).await.unwrap();
    wal.append(create(&v1)).await.unwrap();
    wal.append(on(drop_collection(COLLECTION), &v0))
        .await
        .unwrap();
    check_per_vchannel(wal, &v0, &v1).await;
    // The same after the state is rebuilt from the log.
    check_per_vchannel(open(&b, 2, fast_config()).await, &v0, &v1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_flush_that_fails_to_append_changes_nothing() {
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal.append(insert(COLLECTION, "a", 100)).await.unwrap();
    let before = wal.growing_segments();
    assert_eq!(before.len(), 1);
    // A newer term takes the log over: the flush cannot be appended.
    let fence = b
        .provider
        .open(OpenOptions::read_write(pchannel(), Term(2)))
        .await
        .unwrap();
    let err = wal
        .append(manual_flush(&vchannel(COLLECTION)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChannelFenced, "{err}");
    assert_eq!(
        wal.growing_segments(),
        before,
        "memory sealed segments the log never recorded as flushed"
    );
    fence.close().await;
    wal.close().await;
}

fn schema_field(
    id: i64,
    name: &str,
    ty: sluice_types::schema::DataType,
) -> sluice_types::schema::FieldSchema {
    sluice_types::schema::FieldSchema {
        field_id: id,
        name: name.into(),
        data_type: ty as i32,
        ..Default::default()
    }
}

fn docs_schema() -> sluice_types::schema::CollectionSchema {
    use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
    CollectionSchema {
        name: "docs".into(),
        fields: vec![
            FieldSchema {
                is_primary_key: true,
                ..schema_field(1, "id", DataType::Int64)
            },
            FieldSchema {
                dim: 8,
                ..schema_field(2, "vec", DataType::FloatVector)
            },
        ],
        shards: 1,
        version: 1,
        ..Default::default()
    }
}

fn create_with(schema: sluice_types::schema::CollectionSchema) -> MutableMessage {
    MutableMessage::builder(sluice_types::message::CreateCollectionHeader {
        collection_id: COLLECTION,
        partition_ids: vec![PARTITION],
        db_id: 1,
        schema: Some(schema),
    })
    .vchannel(&vchannel(COLLECTION))
    .build()
    .unwrap()
}

fn schema_change(schema: sluice_types::schema::CollectionSchema) -> MutableMessage {
    MutableMessage::builder(sluice_types::message::SchemaChangeHeader {
        collection_id: COLLECTION,
        flushed_segment_ids: Vec::new(),
        schema: Some(schema),
    })
    .vchannel(&vchannel(COLLECTION))
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_checked_applied_and_recovered() {
    use sluice_types::schema::{DataType, FieldSchema};
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    // A schema that breaks a rule (no primary key) is bad input and creates nothing.
    let mut broken = docs_schema();
    broken.fields[0].is_primary_key = false;
    let err = wal.append(create_with(broken)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert_eq!(wal.schema(&vchannel(COLLECTION)), None);
    let err = wal.append(insert(COLLECTION, "x", 10)).await.unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::Unrecoverable,
        "nothing was created: {err}"
    );

    wal.append(create_with(docs_schema())).await.unwrap();
    assert_eq!(wal.schema(&vchannel(COLLECTION)), Some(docs_schema()));
    wal.append(insert(COLLECTION, "a", 10)).await.unwrap();

    // A schema change adds one nullable field (or renames, below); anything else is refused.
    let mut not_nullable = docs_schema();
    not_nullable
        .fields
        .push(schema_field(3, "score", DataType::Float));
    not_nullable.version = 2;
    let err = wal.append(schema_change(not_nullable)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    let mut renamed = docs_schema();
    renamed.name = "other".into();
    renamed.fields.push(FieldSchema {
        nullable: true,
        ..schema_field(3, "score", DataType::Float)
    });
    renamed.version = 2;
    let err = wal.append(schema_change(renamed)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    let mut v2 = docs_schema();
    v2.fields.push(FieldSchema {
        nullable: true,
        ..schema_field(3, "score", DataType::Float)
    });
    v2.version = 2;
    let flushed = wal
        .append(schema_change(v2.clone()))
        .await
        .unwrap()
        .flushed_segments;
    assert_eq!(flushed.len(), 1, "a schema change is a flush point");
    assert_eq!(wal.schema(&vchannel(COLLECTION)), Some(v2.clone()));
    // The same change again (a catalog completing it) is no change; an older schema is refused.
    wal.append(schema_change(v2.clone())).await.unwrap();
    assert_eq!(wal.schema(&vchannel(COLLECTION)), Some(v2.clone()));
    let err = wal.append(schema_change(docs_schema())).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert_eq!(wal.schema(&vchannel(COLLECTION)), Some(v2.clone()));
    // A rename (the fields as they are, the next version) is a change too.
    let mut v3 = v2.clone();
    v3.name = "other".into();
    v3.version = 3;
    wal.append(schema_change(v3.clone())).await.unwrap();
    assert_eq!(wal.schema(&vchannel(COLLECTION)), Some(v3.clone()));
    wal.close().await;

    // Rebuilt from the log: the schema in force is version 3, renamed.
    let wal = open(&b, 2, fast_config()).await;
    assert_eq!(wal.schema(&vchannel(COLLECTION)), Some(v3));
    assert!(wal.growing_segments().is_empty());
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_wal_gives_its_growing_bytes_back_to_the_node() {
    let b = memory();
    let node = NodeGrowingBytes::new();
    for term in 1..=3 {
        let mut d = deps();
        d.node_growing = node.clone();
        let wal = Wal::open(&*b.provider, pchannel(), Term(term), fast_config(), d)
            .await
            .unwrap();
        if term == 1 {
            wal.append(create_collection(COLLECTION)).await.unwrap();
            wal.append(insert(COLLECTION, "a", 1000)).await.unwrap();
        }
        // Counted once, whether appended here or recovered from the log.
        assert_eq!(node.get(), 1000, "term {term}");
        wal.close().await;
        drop(wal);
        assert_eq!(
            node.get(),
            0,
            "term {term}: a closed WAL still counts its segments"
        );
    }
}
