//! The WAL on the coordinator's timestamp oracle and id allocator: the adapters that join the
//! two live in this crate (the coordinator knows nothing of the WAL), so their tests do too.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_coord::CoordError;
use sluice_coord::keys::Keys;
use sluice_coord::tso::{Clock, Ids, IdsConfig, ManualClock, SystemClock, Tso, TsoConfig};
use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_meta::MetaStore;
use sluice_meta::embedded::EmbeddedStore;
use sluice_node::coord_link::coord_to_wal_error;
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{CollectionId, MutableMessage, PChannel, Term, Timestamp};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::{IdAllocator, TimestampOracle};
use sluice_wal::{Wal, WalConfig, WalDeps, WalError};

/// The coordinator's oracle as the WAL sees it, through the node's error mapping.
struct TsoLink(Arc<Tso>);

#[async_trait]
impl TimestampOracle for TsoLink {
    async fn allocate(&self, count: u32) -> Result<Timestamp, WalError> {
        self.0.allocate(count).await.map_err(coord_to_wal_error)
    }
}

struct IdsLink(Ids);

#[async_trait]
impl IdAllocator for IdsLink {
    async fn allocate_id(&self) -> Result<i64, WalError> {
        self.0.allocate_id().await.map_err(coord_to_wal_error)
    }
}

fn store() -> (Arc<dyn MetaStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("meta.redb")).unwrap();
    (Arc::new(store), dir)
}

#[test]
fn coordinator_errors_keep_their_class_for_the_wal() {
    let bad = coord_to_wal_error(CoordError::InvalidArgument("count 0".into()));
    assert!(matches!(bad, WalError::InvalidArgument(_)), "{bad:?}");
    let gone = coord_to_wal_error(CoordError::Shutdown);
    assert!(matches!(gone, WalError::Shutdown), "{gone:?}");
    let retry = coord_to_wal_error(CoordError::NotLeader);
    assert!(retry.retryable(), "{retry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_oracle_serves_the_wal_traits() {
    let (store, _dir) = store();
    let keys = Keys::new("oracle-traits");
    let tso = TsoLink(Arc::new(
        Tso::open(store, &keys, TsoConfig::default(), Arc::new(SystemClock))
            .await
            .unwrap(),
    ));
    let mut last = Timestamp::MIN;
    for _ in 0..50 {
        let t = tso.allocate(1000).await.unwrap();
        assert!(t > last);
        last = Timestamp(t.0 + 999);
    }
    // Physical time follows the wall clock.
    let now = Timestamp::now().physical_ms();
    assert!(last.physical_ms().abs_diff(now) < 60_000);
    // Bad input stays bad input through the mapping.
    let err = tso.allocate(0).await.unwrap_err();
    assert!(matches!(err, WalError::InvalidArgument(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_runs_on_the_coordinators_oracle_across_a_coordinator_restart() {
    let (store, _dir) = store();
    let keys = Keys::new("oracle-wal");
    let provider = MemoryProvider::new(MemoryConfig::default());
    let pchannel = PChannel::new("coord-tso-dml_0").unwrap();
    let mut last = Timestamp::MIN;
    for term in 1..=2u64 {
        // The second coordinator's clock is an hour behind: the WAL must not notice.
        let clock: Arc<dyn Clock> = if term == 1 {
            Arc::new(SystemClock)
        } else {
            ManualClock::new(SystemClock.now_ms() - 3_600_000)
        };
        let tso = Arc::new(
            Tso::open(store.clone(), &keys, TsoConfig::default(), clock)
                .await
                .unwrap(),
        );
        let ids = Ids::open(store.clone(), &keys, IdsConfig::default())
            .await
            .unwrap();
        let deps = WalDeps {
            oracle: Arc::new(TsoLink(tso.clone())),
            ids: Arc::new(IdsLink(ids)),
            node_growing: NodeGrowingBytes::new(),
            pressure: sluice_wal::Pressure::unlimited(),
            checkpoints: None,
            rows: None,
        };
        let wal = Wal::open(
            &provider,
            pchannel.clone(),
            Term(term),
            WalConfig::default(),
            deps,
        )
        .await
        .unwrap();
        // A fresh collection per term: this WAL replays nothing from the previous one.
        let collection = 100 + term as i64;
        let vchannel = pchannel.vchannel(CollectionId(collection), 0).unwrap();
        let create = MutableMessage::builder(CreateCollectionHeader {
            collection_id: collection,
            partition_ids: vec![10],
            db_id: 1,
            schema: None,
        })
        .vchannel(&vchannel)
        .build()
        .unwrap();
        let mut appended = vec![wal.append(create).await.unwrap()];
        for _ in 0..50 {
            let insert = MutableMessage::builder(InsertHeader {
                collection_id: collection,
                partitions: vec![PartitionSegmentAssignment {
                    partition_id: 10,
                    rows: 1,
                    binary_size: 16,
                    segment_id: 0,
                }],
            })
            .vchannel(&vchannel)
            .payload(vec![7u8; 16])
            .build()
            .unwrap();
            appended.push(wal.append(insert).await.unwrap());
        }
        for r in &appended {
            assert!(
                r.timestamp > last,
                "term {term}: {:?} <= {last:?}",
                r.timestamp
            );
            assert!(r.timestamp.physical_ms() < tso.window_end_ms());
            last = r.timestamp;
        }
        wal.close().await;
        tso.close().await;
    }
}
