//! Shared helpers for WAL integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use sluice_log::LogProvider;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_types::message::{
    BeginTxnHeader, CommitTxnHeader, CreateCollectionHeader, DeleteHeader, DropCollectionHeader,
    InsertHeader, ManualFlushHeader, PartitionSegmentAssignment, RollbackTxnHeader, TxnContext,
};
use sluice_types::{CollectionId, MutableMessage, PChannel, Term, VChannel};
use sluice_wal::scanner::{ReadMessage, Scanner};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

pub(crate) const COLLECTION: i64 = 100;
pub(crate) const PARTITION: i64 = 10;

/// A backend for a test, with whatever must outlive it.
pub(crate) struct Backend {
    pub provider: Arc<dyn LogProvider>,
    pub _dir: Option<tempfile::TempDir>,
}

pub(crate) fn memory() -> Backend {
    Backend {
        provider: Arc::new(MemoryProvider::new(MemoryConfig::default())),
        _dir: None,
    }
}

pub(crate) fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(LocalConfig::new(dir.path())).unwrap();
    Backend {
        provider: Arc::new(provider),
        _dir: Some(dir),
    }
}

pub(crate) fn pchannel() -> PChannel {
    PChannel::new("wal-test-dml_0").unwrap()
}

pub(crate) fn vchannel(collection: i64) -> VChannel {
    pchannel().vchannel(CollectionId(collection), 0).unwrap()
}

pub(crate) fn deps() -> WalDeps {
    let oracle = LocalOracle::new();
    WalDeps {
        oracle: oracle.clone(),
        ids: oracle,
        node_growing: NodeGrowingBytes::new(),
        pressure: sluice_wal::Pressure::unlimited(),
        checkpoints: None,
        rows: None,
    }
}

pub(crate) fn fast_config() -> WalConfig {
    WalConfig {
        timetick_interval: Duration::from_millis(20),
        ..WalConfig::default()
    }
}

pub(crate) async fn open(b: &Backend, term: u64, config: WalConfig) -> Wal {
    Wal::open(&*b.provider, pchannel(), Term(term), config, deps())
        .await
        .unwrap()
}

pub(crate) fn create_collection(collection: i64) -> MutableMessage {
    MutableMessage::builder(CreateCollectionHeader {
        collection_id: collection,
        partition_ids: vec![PARTITION],
        db_id: 1,
        schema: None,
    })
    .vchannel(&vchannel(collection))
    .build()
    .unwrap()
}

pub(crate) fn manual_flush(v: &VChannel) -> MutableMessage {
    MutableMessage::builder(ManualFlushHeader {
        collection_id: v.collection().0,
        flush_ts: 0,
        segment_ids: Vec::new(),
    })
    .vchannel(v)
    .build()
    .unwrap()
}

pub(crate) fn drop_collection(collection: i64) -> MutableMessage {
    MutableMessage::builder(DropCollectionHeader {
        collection_id: collection,
        db_id: 1,
    })
    .vchannel(&vchannel(collection))
    .build()
    .unwrap()
}

pub(crate) fn insert(collection: i64, tag: &str, bytes: usize) -> MutableMessage {
    MutableMessage::builder(InsertHeader {
        collection_id: collection,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: PARTITION,
            rows: 1,
            binary_size: bytes as u64,
            segment_id: 0,
        }],
    })
    .vchannel(&vchannel(collection))
    .property("tag", tag)
    .payload(vec![7u8; bytes])
    .build()
    .unwrap()
}

pub(crate) fn delete(collection: i64) -> MutableMessage {
    MutableMessage::builder(DeleteHeader {
        collection_id: collection,
        rows: 1,
    })
    .vchannel(&vchannel(collection))
    .build()
    .unwrap()
}

pub(crate) fn begin(collection: i64, keepalive_ms: i64) -> MutableMessage {
    MutableMessage::builder(BeginTxnHeader {
        keepalive_milliseconds: keepalive_ms,
    })
    .vchannel(&vchannel(collection))
    .build()
    .unwrap()
}

pub(crate) fn in_txn(mut m: MutableMessage, ctx: TxnContext) -> MutableMessage {
    m.set_txn_context(ctx);
    m
}

pub(crate) fn commit(collection: i64, ctx: TxnContext) -> MutableMessage {
    in_txn(
        MutableMessage::builder(CommitTxnHeader::default())
            .vchannel(&vchannel(collection))
            .build()
            .unwrap(),
        ctx,
    )
}

pub(crate) fn rollback(collection: i64, ctx: TxnContext) -> MutableMessage {
    in_txn(
        MutableMessage::builder(RollbackTxnHeader::default())
            .vchannel(&vchannel(collection))
            .build()
            .unwrap(),
        ctx,
    )
}

/// Next item, failing the test after 10 s of silence.
pub(crate) async fn next(s: &mut Scanner) -> ReadMessage {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("scanner silent for 10 s")
        .expect("scanner ended")
        .expect("scanner error")
}

/// Opens with one oracle for every term (segment ids stay unique across terms, as the
/// coordinator's allocator keeps them) and `store` for snapshots.
pub(crate) struct Harness {
    pub backend: Backend,
    pub oracle: Arc<LocalOracle>,
    pub store: Arc<sluice_wal::checkpoint::MemoryCheckpointStore>,
}

impl Harness {
    pub(crate) fn new(backend: Backend) -> Harness {
        Harness {
            backend,
            oracle: LocalOracle::new(),
            store: sluice_wal::checkpoint::MemoryCheckpointStore::new(),
        }
    }

    pub(crate) fn deps(&self, with_store: bool) -> WalDeps {
        let mut d = deps();
        d.oracle = self.oracle.clone();
        d.ids = self.oracle.clone();
        if with_store {
            d.checkpoints = Some(self.store.clone());
        }
        d
    }

    /// Opens at `term` with `config`, saving and loading snapshots when `snapshots`.
    pub(crate) async fn open_with(
        &self,
        term: u64,
        config: WalConfig,
        snapshots: bool,
    ) -> Result<Wal, sluice_wal::WalError> {
        Wal::open(
            &*self.backend.provider,
            pchannel(),
            Term(term),
            config,
            self.deps(snapshots),
        )
        .await
    }

    pub(crate) async fn try_open(
        &self,
        term: u64,
        config: WalConfig,
    ) -> Result<Wal, sluice_wal::WalError> {
        self.open_with(term, config, true).await
    }

    pub(crate) async fn open(&self, term: u64) -> Wal {
        self.try_open(term, fast_config()).await.unwrap()
    }

    /// A WAL that replays the whole log, to compare with.
    pub(crate) async fn open_full_replay(&self, term: u64) -> Wal {
        self.open_with(term, fast_config(), false).await.unwrap()
    }
}
