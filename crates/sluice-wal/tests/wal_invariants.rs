//! The WAL's per-vchannel invariants, transaction rules and segment life cycle, each proven
//! against a real WAL on the memory backend.

mod common;

use std::time::Duration;

use common::*;
use sluice_log::{DeliverPolicy, OpenOptions, ReadOptions};
use sluice_types::message::{FlushHeader, ManualFlushHeader};
use sluice_types::{ErrorCode, ImmutableMessage, MessageType, MutableMessage, Term, Timestamp};
use sluice_wal::WalConfig;
use sluice_wal::scanner::{MessageFilter, ReadMessage, ScannerOptions};
use sluice_wal::shard::{SealReason, SegmentConfig};

/// Every record in the raw log, up to and including the first one `stop` accepts.
async fn raw_until(b: &Backend, stop: impl Fn(&ImmutableMessage) -> bool) -> Vec<ImmutableMessage> {
    let h = b
        .provider
        .open(OpenOptions::read_only(pchannel(), Term(0)))
        .await
        .unwrap();
    let mut s = h.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("raw read stalled")
            .expect("raw log ended")
            .unwrap();
        let done = stop(&m);
        out.push(m);
        if done {
            break;
        }
    }
    h.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_after_drop_is_rejected_and_nothing_is_written() {
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    let err = wal
        .append(insert(COLLECTION, "early", 8))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::Unrecoverable,
        "insert before create: {err}"
    );
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal.append(insert(COLLECTION, "ok", 8)).await.unwrap();
    wal.append(delete(COLLECTION)).await.unwrap();
    wal.append(drop_collection(COLLECTION)).await.unwrap();
    let err = wal.append(insert(COLLECTION, "late", 8)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    let err = wal.append(delete(COLLECTION)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    // A marker after the rejected writes: nothing but it may follow the drop.
    wal.append(create_collection(COLLECTION + 1)).await.unwrap();
    let raw = raw_until(&b, |m| {
        m.message_type().ok() == Some(MessageType::CreateCollection)
            && m.vchannel_str() == Some(vchannel(COLLECTION + 1).as_str())
    })
    .await;
    let drop_at = raw
        .iter()
        .position(|m| m.message_type().ok() == Some(MessageType::DropCollection))
        .expect("drop is in the log");
    for m in &raw[drop_at..] {
        let ty = m.message_type().unwrap();
        assert!(
            !matches!(ty, MessageType::Insert | MessageType::Delete),
            "a {ty} after the drop was written"
        );
    }
    assert_eq!(
        raw.iter()
            .filter(|m| m.property("tag") == Some("late"))
            .count(),
        0
    );
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_message_fails_open_transactions() {
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal.append(create_collection(COLLECTION + 1)).await.unwrap();
    let ctx = wal.append(begin(COLLECTION, 0)).await.unwrap().txn.unwrap();
    let other = wal
        .append(begin(COLLECTION + 1, 0))
        .await
        .unwrap()
        .txn
        .unwrap();
    wal.append(in_txn(insert(COLLECTION, "a", 8), ctx))
        .await
        .unwrap();
    // A DDL on the transaction's vchannel.
    let flush = MutableMessage::builder(ManualFlushHeader {
        collection_id: COLLECTION,
        flush_ts: 0,
        segment_ids: vec![],
    })
    .vchannel(&vchannel(COLLECTION))
    .build()
    .unwrap();
    wal.append(flush).await.unwrap();
    let err = wal
        .append(in_txn(insert(COLLECTION, "b", 8), ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TransactionExpired, "{err}");
    let err = wal.append(commit(COLLECTION, ctx)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TransactionExpired, "{err}");
    // A transaction on another vchannel is untouched.
    wal.append(in_txn(insert(COLLECTION + 1, "c", 8), other))
        .await
        .unwrap();
    wal.append(commit(COLLECTION + 1, other)).await.unwrap();
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_rules() {
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    // Expiry is measured in timestamps: 50 ms of keepalive, then 150 ms pass.
    let ctx = wal
        .append(begin(COLLECTION, 50))
        .await
        .unwrap()
        .txn
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let err = wal
        .append(in_txn(insert(COLLECTION, "x", 8), ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TransactionExpired, "{err}");
    // Wrong state: commit twice, body after commit.
    let ctx = wal.append(begin(COLLECTION, 0)).await.unwrap().txn.unwrap();
    wal.append(commit(COLLECTION, ctx)).await.unwrap();
    let err = wal.append(commit(COLLECTION, ctx)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TransactionExpired, "{err}");
    // Unknown id.
    let mut bogus = ctx;
    bogus.txn_id = 987_654;
    let err = wal
        .append(in_txn(insert(COLLECTION, "y", 8), bogus))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TransactionExpired);
    // Only Insert/Delete in a transaction.
    let ctx = wal.append(begin(COLLECTION, 0)).await.unwrap().txn.unwrap();
    let err = wal
        .append(in_txn(drop_collection(COLLECTION), ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    // Rolled back: later bodies are in the wrong state.
    wal.append(rollback(COLLECTION, ctx)).await.unwrap();
    let err = wal
        .append(in_txn(insert(COLLECTION, "z", 8), ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TransactionExpired);
    // Clients may not write what the WAL writes itself.
    let tick = MutableMessage::builder(FlushHeader::default())
        .vchannel(&vchannel(COLLECTION))
        .build()
        .unwrap();
    assert_eq!(
        wal.append(tick).await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_timestamp_is_honoured() {
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let barrier = Timestamp(Timestamp::now().0 + (100 << 18));
    let mut m = insert(COLLECTION, "b", 8);
    m.set_barrier_timestamp(barrier);
    let r = wal.append(m).await.unwrap();
    assert!(r.timestamp >= barrier);
    let r2 = wal.append(insert(COLLECTION, "after", 8)).await.unwrap();
    assert!(r2.timestamp > r.timestamp);
    wal.close().await;
}

fn segment_config(f: impl FnOnce(&mut SegmentConfig)) -> WalConfig {
    let mut segments = SegmentConfig {
        max_segment_bytes: 1000,
        size_jitter: 0.0,
        check_interval: Duration::from_millis(20),
        ..SegmentConfig::default()
    };
    f(&mut segments);
    WalConfig {
        segments,
        ..fast_config()
    }
}

/// Waits for the Flush of `segment` on a scanner of self-controlled messages; returns it.
async fn wait_flush(wal: &sluice_wal::Wal, segment: i64) -> ImmutableMessage {
    let mut s = wal
        .read(ScannerOptions {
            vchannel: Some(vchannel(COLLECTION)),
            policy: DeliverPolicy::All,
            filters: vec![MessageFilter::Types(vec![MessageType::Flush])],
            ..ScannerOptions::default()
        })
        .unwrap();
    loop {
        if let ReadMessage::Message(m) = next(&mut s).await
            && m.message_type().unwrap() == MessageType::Flush
            && m.header::<FlushHeader>().unwrap().segment_id == segment
        {
            return m;
        }
    }
}

/// The segment an acknowledged insert landed in, read back from the log.
async fn landed_segment(wal: &sluice_wal::Wal, id: sluice_types::MessageId) -> i64 {
    let mut s = wal
        .read(ScannerOptions {
            vchannel: Some(vchannel(COLLECTION)),
            policy: DeliverPolicy::StartFrom(id),
            filters: vec![],
            ..ScannerOptions::default()
        })
        .unwrap();
    loop {
        match next(&mut s).await {
            ReadMessage::Message(m) if m.id() == id => {
                return m
                    .header::<sluice_types::message::InsertHeader>()
                    .unwrap()
                    .partitions[0]
                    .segment_id;
            }
            ReadMessage::Txn(t) => {
                if let Some(b) = t.bodies().iter().find(|b| b.id() == id) {
                    return b
                        .header::<sluice_types::message::InsertHeader>()
                        .unwrap()
                        .partitions[0]
                        .segment_id;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_seals_by_size_and_flushes() {
    let b = memory();
    let wal = open(&b, 1, segment_config(|_| {})).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let a = wal.append(insert(COLLECTION, "a", 400)).await.unwrap();
    let b2 = wal.append(insert(COLLECTION, "b", 400)).await.unwrap();
    let c = wal.append(insert(COLLECTION, "c", 400)).await.unwrap();
    let (sa, sb, sc) = (
        landed_segment(&wal, a.id).await,
        landed_segment(&wal, b2.id).await,
        landed_segment(&wal, c.id).await,
    );
    assert_eq!(sa, sb, "two inserts fit one 1000-byte segment");
    assert_ne!(sa, sc, "the third went to a new segment");
    let flush = wait_flush(&wal, sa).await;
    assert!(flush.timestamp().unwrap().unwrap() > b2.timestamp);
    assert_eq!(wal.growing_segments(), vec![(sc, 400)]);
    // An insert larger than an empty segment can never succeed.
    let err = wal
        .append(insert(COLLECTION, "huge", 5000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_seals_when_idle() {
    let b = memory();
    let wal = open(
        &b,
        1,
        segment_config(|s| {
            s.max_idle = Duration::from_millis(100);
            s.min_idle_seal_bytes = 1;
        }),
    )
    .await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let a = wal.append(insert(COLLECTION, "a", 10)).await.unwrap();
    let seg = landed_segment(&wal, a.id).await;
    wait_flush(&wal, seg).await;
    assert!(wal.growing_segments().is_empty());
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_written_to_all_the_time_seals_by_age() {
    let b = memory();
    let wal = open(
        &b,
        1,
        segment_config(|s| {
            s.max_age = Duration::from_millis(300);
            // Never idle long enough, never full: only its age seals it.
            s.max_idle = Duration::from_secs(3600);
            s.max_segment_bytes = 1 << 30;
        }),
    )
    .await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let a = wal.append(insert(COLLECTION, "a", 10)).await.unwrap();
    let seg = landed_segment(&wal, a.id).await;
    let trickle = async {
        for i in 0..100 {
            wal.append(insert(COLLECTION, &format!("t{i}"), 10))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = wait_flush(&wal, seg) => {}
        _ = trickle => panic!("the segment never sealed by age"),
    }
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_seal_when_the_node_holds_too_many_growing_bytes() {
    let b = memory();
    let wal = open(
        &b,
        1,
        segment_config(|s| {
            s.max_segment_bytes = 10_000;
            s.node_growing_high = 1000;
            s.node_growing_low = 500;
        }),
    )
    .await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let a = wal.append(insert(COLLECTION, "a", 1200)).await.unwrap();
    let seg = landed_segment(&wal, a.id).await;
    wait_flush(&wal, seg).await;
    assert_eq!(wal.seal_reason(seg), None, "flushed segments are forgotten");
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_until_every_write_to_the_segment_is_done() {
    let b = memory();
    let wal = open(&b, 1, segment_config(|_| {})).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    // A transaction writes into the segment and stays open.
    let ctx = wal.append(begin(COLLECTION, 0)).await.unwrap().txn.unwrap();
    wal.append(in_txn(insert(COLLECTION, "t", 600), ctx))
        .await
        .unwrap();
    // The body is only readable once the transaction commits; its segment is the only one.
    let [(seg, 600)] = wal.growing_segments()[..] else {
        panic!(
            "expected one growing segment, got {:?}",
            wal.growing_segments()
        );
    };
    // This one does not fit: the segment seals by size.
    wal.append(insert(COLLECTION, "big", 600)).await.unwrap();
    assert_eq!(wal.seal_reason(seg), Some(SealReason::Size));
    // No Flush while the transaction is open.
    let early = tokio::time::timeout(Duration::from_millis(300), wait_flush(&wal, seg)).await;
    assert!(
        early.is_err(),
        "Flush written while a transaction still held the segment"
    );
    let c = wal.append(commit(COLLECTION, ctx)).await.unwrap();
    let flush = wait_flush(&wal, seg).await;
    assert!(flush.timestamp().unwrap().unwrap() > c.timestamp);
    assert!(flush.id() > c.id);
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_flush_seals_every_growing_segment_of_its_collection() {
    let b = memory();
    let wal = open(&b, 1, segment_config(|_| {})).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let a = wal.append(insert(COLLECTION, "a", 100)).await.unwrap();
    let seg = landed_segment(&wal, a.id).await;
    let flush = MutableMessage::builder(ManualFlushHeader {
        collection_id: COLLECTION,
        flush_ts: 0,
        segment_ids: vec![],
    })
    .vchannel(&vchannel(COLLECTION))
    .build()
    .unwrap();
    let r = wal.append(flush).await.unwrap();
    assert_eq!(r.flushed_segments, vec![seg]);
    assert!(wal.growing_segments().is_empty());
    // The next insert opens a new segment.
    let n = wal.append(insert(COLLECTION, "n", 100)).await.unwrap();
    assert_ne!(landed_segment(&wal, n.id).await, seg);
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_backend_errors_are_retried() {
    use sluice_log::memory::{MemoryConfig, MemoryProvider};
    let provider = std::sync::Arc::new(MemoryProvider::new(MemoryConfig {
        shared_name: None,
        append_error_one_in: 0,
    }));
    let b = Backend {
        provider: provider.clone(),
        _dir: None,
    };
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    // Half of all log appends now fail with a retryable error; every WAL append still succeeds.
    provider.set_append_error_one_in(2);
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            wal.append(insert(COLLECTION, &i.to_string(), 16))
                .await
                .unwrap()
                .id,
        );
    }
    provider.set_append_error_one_in(0);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    for id in [ids[0], ids[29]] {
        assert!(landed_segment(&wal, id).await > 0);
    }
    wal.close().await;
    let err = wal
        .append(insert(COLLECTION, "closed", 8))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::OnShutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_into_a_dropped_partition_is_rejected() {
    use sluice_types::message::{
        CreatePartitionHeader, DropPartitionHeader, InsertHeader, PartitionSegmentAssignment,
    };
    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let vc = vchannel(COLLECTION);
    let into = |partition: i64| {
        MutableMessage::builder(InsertHeader {
            collection_id: COLLECTION,
            partitions: vec![PartitionSegmentAssignment {
                partition_id: partition,
                rows: 1,
                binary_size: 8,
                segment_id: 0,
            }],
        })
        .vchannel(&vc)
        .build()
        .unwrap()
    };
    let err = wal.append(into(11)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "before create: {err}");
    wal.append(
        MutableMessage::builder(CreatePartitionHeader {
            collection_id: COLLECTION,
            partition_id: 11,
        })
        .vchannel(&vc)
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    wal.append(into(11)).await.unwrap();
    wal.append(
        MutableMessage::builder(DropPartitionHeader {
            collection_id: COLLECTION,
            partition_id: 11,
        })
        .vchannel(&vc)
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    let err = wal.append(into(11)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "after drop: {err}");
    // The other partition is unaffected.
    wal.append(into(PARTITION)).await.unwrap();
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_header_is_rejected_for_every_type_and_nothing_is_written() {
    use sluice_types::Message;
    use sluice_types::message::Properties;

    let b = memory();
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    // Not base64, and base64 of bytes that are no protobuf (wire type 7 does not exist).
    for garbage in ["!!not base64!!", "////"] {
        for ty in MessageType::ALL {
            let properties: Properties = [
                ("_t", ty.number().to_string()),
                ("_v", "2".to_owned()),
                ("_vc", vchannel(COLLECTION).as_str().to_owned()),
                ("_h", garbage.to_owned()),
                ("tag", "garbage".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let msg = Message::from_parts(b"rows".to_vec().into(), properties).unwrap();
            let err = wal
                .append(MutableMessage::from_message(msg))
                .await
                .expect_err("a garbage header was accepted");
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{ty}: {err}");
        }
    }
    // A marker after the rejected appends: everything before it is in the raw log.
    wal.append(create_collection(COLLECTION + 1)).await.unwrap();
    let raw = raw_until(&b, |m| {
        m.vchannel_str() == Some(vchannel(COLLECTION + 1).as_str())
    })
    .await;
    assert!(
        raw.iter().all(|m| m.property("tag") != Some("garbage")),
        "a message with a garbage header reached the log"
    );
    wal.close().await;
}

/// A collection created by a coordinator broadcast is the catalog's: its partition DDL and its
/// drop are taken only as broadcasts too — after a reopen from a snapshot and from a full
/// replay alike — while a collection a producer created itself stays its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_of_a_catalog_collection_must_be_a_broadcast() {
    use sluice_types::message::{
        BroadcastHeader, CreateCollectionHeader, CreatePartitionHeader, DropCollectionHeader,
        DropPartitionHeader,
    };
    const CATALOG: i64 = 300;
    let h = Harness::new(memory());
    let wal = h.open(1).await;
    let vc = vchannel(CATALOG);
    let broadcast = |id: u64| BroadcastHeader {
        broadcast_id: id,
        vchannels: vec![vc.as_str().to_owned()],
        resource_keys: Vec::new(),
    };
    wal.append(
        MutableMessage::builder(CreateCollectionHeader {
            collection_id: CATALOG,
            partition_ids: vec![PARTITION],
            db_id: 1,
            schema: None,
        })
        .vchannel(&vc)
        .broadcast(&broadcast(1))
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    let create_partition = |b: Option<BroadcastHeader>| {
        let m = MutableMessage::builder(CreatePartitionHeader {
            collection_id: CATALOG,
            partition_id: 11,
        })
        .vchannel(&vc);
        match b {
            Some(b) => m.broadcast(&b),
            None => m,
        }
        .build()
        .unwrap()
    };
    let drop_partition = MutableMessage::builder(DropPartitionHeader {
        collection_id: CATALOG,
        partition_id: PARTITION,
    })
    .vchannel(&vc)
    .build()
    .unwrap();
    let drop_collection = MutableMessage::builder(DropCollectionHeader {
        collection_id: CATALOG,
        db_id: 1,
    })
    .vchannel(&vc)
    .build()
    .unwrap();
    let refused = async |wal: &sluice_wal::Wal, m: MutableMessage| {
        let err = wal.append(m).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
        assert!(err.to_string().contains("through the coordinator"), "{err}");
    };
    refused(&wal, create_partition(None)).await;
    refused(&wal, drop_partition.clone()).await;
    refused(&wal, drop_collection.clone()).await;
    let schema_change = MutableMessage::builder(sluice_types::message::SchemaChangeHeader {
        collection_id: CATALOG,
        flushed_segment_ids: Vec::new(),
        schema: Some({
            use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
            let field = |id: i64, name: &str, ty: DataType| FieldSchema {
                field_id: id,
                name: name.into(),
                data_type: ty as i32,
                ..FieldSchema::default()
            };
            CollectionSchema {
                name: "catalog".into(),
                fields: vec![
                    FieldSchema {
                        is_primary_key: true,
                        ..field(1, "id", DataType::Int64)
                    },
                    FieldSchema {
                        dim: 2,
                        ..field(2, "vec", DataType::FloatVector)
                    },
                    FieldSchema {
                        nullable: true,
                        ..field(3, "note", DataType::Int64)
                    },
                ],
                shards: 1,
                version: 2,
                ..CollectionSchema::default()
            }
        }),
    })
    .vchannel(&vc)
    .build()
    .unwrap();
    refused(&wal, schema_change.clone()).await;
    wal.append(create_partition(Some(broadcast(2))))
        .await
        .unwrap();
    // A producer's own collection takes a producer's DDL.
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal.append(
        MutableMessage::builder(CreatePartitionHeader {
            collection_id: COLLECTION,
            partition_id: 12,
        })
        .vchannel(&vchannel(COLLECTION))
        .build()
        .unwrap(),
    )
    .await
    .unwrap();
    wal.close().await;
    for term in [2, 3] {
        // From the snapshot the close left, then from the whole log.
        let wal = if term == 2 {
            h.open(term).await
        } else {
            h.open_full_replay(term).await
        };
        refused(&wal, drop_collection.clone()).await;
        refused(&wal, drop_partition.clone()).await;
        refused(&wal, schema_change.clone()).await;
        wal.append(
            MutableMessage::builder(DropCollectionHeader {
                collection_id: COLLECTION,
                db_id: 1,
            })
            .vchannel(&vchannel(COLLECTION))
            .build()
            .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("term {term}: {e}"));
        wal.append(create_collection(COLLECTION)).await.unwrap();
        wal.close().await;
    }
}
