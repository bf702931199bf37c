//! The node's query side: one query delegator per vchannel of every WAL open here, fed by the
//! WAL, and the `Query` gRPC service over them.
//!
//! **Feeding a pchannel's delegators** (one task per open WAL):
//! 1. read the flush checkpoint — the log position from which every row not yet in a committed
//!    segment can be read again — and only then list the committed delete and segment
//!    manifests (so a segment committed in between is seen twice, never missed);
//! 2. load the deletes of the delete files, then the committed segments of the pchannel's
//!    vchannels (Parquet from object storage, with their HNSW indexes — loaded from next to the
//!    segment, or built and stored there). Deletes first: a merge of delete files drops a
//!    delete only once the segments needing it were compacted, so segments listed after it
//!    never miss a delete they need. From then on the delegator forgets the deletes no row it
//!    holds is older than (after compactions);
//! 3. read the WAL from the checkpoint in timestamp order: inserts go to growing segments (those
//!    of segments already loaded sealed are skipped), deletes to the shard, schema changes and
//!    drops likewise; after each message (and each timetick) tsafe moves to its timestamp;
//! 4. when a Flush names a segment, a loader waits for its manifest, loads the Parquet file and
//!    swaps it in for the growing rows in one step.
//!
//! Until step 2 is done tsafe is 0, so reads wait (and time out with NOT_READY) rather than
//! answer without the sealed rows.
//!
//! **Query workers.** When the coordinator places a sealed segment on a query worker
//! (`{root}/query/placement/{segment}`, see `worker.proto`), the delegator keeps only the
//! segment's keys, timestamps and MVCC bounds once the worker reports it loaded, and every read
//! asks the worker for that part, naming the rows gone at the read's timestamp. A segment whose
//! placement goes (its worker lost and no other registered) is loaded here again. Until a
//! placed segment is on its worker the delegator answers from its own copy, so a hand-off or a
//! placement never leaves a moment where rows are missing or counted twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use parking_lot::{Mutex, RwLock};
use sluice_proto::v1 as pb;
use sluice_query::segment::{Pk, Segment, pks_of};
use sluice_query::shard::{Hits, Scope, SearchSpec, merge_hits};
use sluice_query::{
    AnnIndex, Delegator, Filter, IndexParams, Metric, QueryError, ReadAt, ShardData,
};
use sluice_storage::flusher::{StorageConfig, TS_COLUMN, flush_start};
use sluice_storage::rows::{decode_delete, decode_insert_bytes, encode_stream};
use sluice_storage::segments::{delete_manifests, read_file, segment_manifests};
use sluice_types::index::IndexSettings;
use sluice_types::message::pb::SegmentManifest;
use sluice_types::message::{
    CreateCollectionHeader, DeleteHeader, DropCollectionHeader, DropPartitionHeader, FlushHeader,
    InsertHeader, ManualFlushHeader, SchemaChangeHeader,
};
use sluice_types::read::ReadMessage;
use sluice_types::{
    DeliverPolicy, ErrorCode, ImmutableMessage, MessageFilter, MessageType, VChannel,
};
use sluice_types::{MessageId, Timestamp};
use sluice_wal::Wal;
use sluice_wal::scanner::ScannerOptions;
use tokio_util::sync::CancellationToken;

/// How the query side behaves.
#[derive(Clone, Copy, Debug)]
pub struct QueryConfig {
    /// The HNSW parameters of sealed segments.
    pub index: IndexParams,
    /// How long a read waits for its guarantee when the request does not say.
    pub read_timeout: Duration,
    /// How stale a BOUNDED read may be.
    pub bounded_staleness: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            index: IndexParams::default(),
            read_timeout: Duration::from_secs(10),
            bounded_staleness: Duration::from_secs(5),
        }
    }
}

/// The delegators of this node.
pub struct QueryHost {
    storage: Arc<StorageConfig>,
    config: QueryConfig,
    shards: RwLock<HashMap<String, Arc<Delegator>>>,
    wals: Mutex<HashMap<String, Arc<dyn ShardLog>>>,
    locator: std::sync::OnceLock<Arc<dyn ShardLocator>>,
    address: std::sync::OnceLock<String>,
    /// Collections released (Coordinator.ReleaseCollection): no delegator holds their rows.
    released: RwLock<std::collections::HashSet<i64>>,
    /// The index settings collections set in their properties (those setting none are absent).
    index_settings: RwLock<HashMap<i64, IndexSettings>>,
    /// The TTLs (milliseconds) collections set in their properties (those setting none are
    /// absent): reads skip rows older than that.
    ttls: RwLock<HashMap<i64, u64>>,
    /// The partitions of every collection in the catalog; `None` until the catalog was read
    /// once. A feed whose log cannot say which partitions live (a replica's) goes by it.
    partitions: tokio::sync::watch::Sender<Option<HashMap<i64, Vec<i64>>>>,
    /// Bumped when `released` changes, or `index_settings` of a collection with indexed
    /// segments: every feed starts over.
    load_gen: tokio::sync::watch::Sender<u64>,
    watching: std::sync::Once,
    /// Where sealed segments are placed on query workers (by meta key).
    placements: std::sync::OnceLock<tokio::sync::watch::Receiver<Placements>>,
    /// Replica delegators on query workers (by meta key).
    replicas: std::sync::OnceLock<tokio::sync::watch::Receiver<Replicas>>,
    /// Spreads reads over a shard's replicas.
    turn: std::sync::atomic::AtomicUsize,
    /// Reads answered for shards named by the request (forwarded by another node).
    forwarded_reads: std::sync::atomic::AtomicU64,
}

/// Replica placements by meta-store key.
type Replicas = BTreeMap<String, pb::ReplicaPlacement>;

/// Segment placements by meta-store key.
type Placements = BTreeMap<String, pb::SegmentPlacement>;

impl std::fmt::Debug for QueryHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryHost")
            .field("shards", &self.shards.read().len())
            .finish_non_exhaustive()
    }
}

/// Feeds one WAL's delegators; stopping it drops them.
#[derive(Debug)]
pub struct QueryFeed {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl QueryFeed {
    /// Stops feeding (the WAL closed or moved).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// A failed read, with its wire code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ReadError {
    /// The wire code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl ReadError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ReadError {
        ReadError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ReadError {
        ReadError::new(ErrorCode::InvalidArgument, message)
    }

    /// As a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        sluice_proto::convert::status(self.code, self.message.clone())
    }
}

impl From<QueryError> for ReadError {
    fn from(e: QueryError) -> ReadError {
        let code = match &e {
            QueryError::Invalid(_) => ErrorCode::InvalidArgument,
            QueryError::NotReady { .. } => ErrorCode::NotReady,
            QueryError::Unavailable(_) => ErrorCode::ChannelNotExist,
            QueryError::Internal(_) => ErrorCode::Inner,
        };
        ReadError::new(code, e.to_string())
    }
}

/// The most query vectors one search may carry.
pub const MAX_QUERY_VECTORS: usize = 1024;
/// The largest top_k.
pub const MAX_TOP_K: usize = 16_384;
/// The most hits one search may ask for (query vectors × top_k).
pub const MAX_HITS: usize = 1 << 20;

fn now_ts() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ms << 18
}

impl QueryHost {
    /// A host reading committed segments from `storage`.
    pub fn new(storage: Arc<StorageConfig>, config: QueryConfig) -> Arc<QueryHost> {
        Arc::new(QueryHost {
            storage,
            config,
            shards: RwLock::new(HashMap::new()),
            wals: Mutex::new(HashMap::new()),
            locator: std::sync::OnceLock::new(),
            address: std::sync::OnceLock::new(),
            released: RwLock::new(std::collections::HashSet::new()),
            index_settings: RwLock::new(HashMap::new()),
            ttls: RwLock::new(HashMap::new()),
            partitions: tokio::sync::watch::channel(None).0,
            load_gen: tokio::sync::watch::channel(0).0,
            watching: std::sync::Once::new(),
            placements: std::sync::OnceLock::new(),
            replicas: std::sync::OnceLock::new(),
            turn: std::sync::atomic::AtomicUsize::new(0),
            forwarded_reads: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Lets this host forward the shards it does not serve to their owners, found by
    /// `locator`; `address` is this node's own (never forwarded to). Set once.
    pub fn set_locator(self: &Arc<Self>, locator: Arc<dyn ShardLocator>, address: String) {
        let _ = self.locator.set(locator);
        let _ = self.address.set(address);
        self.start_watching();
    }

    /// Starts following load states, segment placements and replicas (once).
    fn start_watching(self: &Arc<Self>) {
        self.watching.call_once(|| {
            tokio::spawn(watch_load_states(Arc::downgrade(self)));
            let placements =
                crate::mirror::mirror(self.storage.meta.clone(), self.placement_prefix(), |v| {
                    prost::Message::decode(v).ok()
                });
            let _ = self.placements.set(placements.clone());
            tokio::spawn(follow_placements(Arc::downgrade(self), placements));
            tokio::spawn(report_delegators(Arc::downgrade(self)));
            let replicas = crate::mirror::mirror(
                self.storage.meta.clone(),
                sluice_coord::keys::Keys::new(self.storage.meta_root.clone()).replica_prefix(),
                |v| prost::Message::decode(v).ok(),
            );
            let _ = self.replicas.set(replicas);
        });
    }

    /// The query workers hosting replicas of `vchannel` (of `collection`).
    fn replica_addresses(&self, vchannel: &str, collection: i64) -> Vec<String> {
        self.replicas.get().map_or_else(Vec::new, |r| {
            r.borrow()
                .values()
                .filter(|p| p.vchannel == vchannel && p.collection_id == collection)
                .map(|p| p.address.clone())
                .collect()
        })
    }

    /// Starts feeding the delegators of `wal`'s vchannels.
    pub fn serve(self: &Arc<Self>, wal: Wal) -> QueryFeed {
        self.serve_log(Arc::new(WalLog(wal)))
    }

    /// Starts feeding the delegators of `log`'s vchannels (those it [`ShardLog::wants`]).
    pub fn serve_log(self: &Arc<Self>, log: Arc<dyn ShardLog>) -> QueryFeed {
        self.start_watching();
        let cancel = CancellationToken::new();
        self.wals
            .lock()
            .insert(log.pchannel().to_owned(), log.clone());
        let task = tokio::spawn(feed(self.clone(), log, cancel.clone()));
        QueryFeed { cancel, task }
    }

    /// Loads a segment a compaction rewrote (`m`, its new manifest) in place of the older
    /// version a delegator here holds. Keys-only copies (a query worker holds the rows) keep
    /// the older version: their keys are a superset, so the rows they tell workers to hide
    /// stay right whichever version the worker holds.
    pub async fn reload_compacted(&self, m: &SegmentManifest) -> Result<(), String> {
        let Some(d) = self.shards.read().get(&m.vchannel).cloned() else {
            return Ok(());
        };
        let held = {
            let data = d.read();
            d.collection() == m.collection_id
                && data
                    .segment_version(m.segment_id)
                    .is_some_and(|v| v < m.compaction_timestamp)
                && !data.remote_segments().contains(&m.segment_id)
        };
        if held {
            load_segment(&self.storage, &d, m).await?;
        }
        Ok(())
    }

    /// Forgets the deletes the delegator of `vchannel` holds that hide none of its rows any
    /// more (after a compaction left their rows out, or a merge of delete files found them
    /// needless). Returns how many went.
    pub fn forget_deletes(&self, vchannel: &str) -> usize {
        let Some(d) = self.shards.read().get(vchannel).cloned() else {
            return 0;
        };
        let gone = d.write().forget_deletes();
        if gone > 0 {
            metrics::counter!("sluice_query_deletes_forgotten_total").increment(gone as u64);
            tracing::debug!(vchannel, deletes = gone, "deletes no row needs forgotten");
        }
        gone
    }

    fn forget(&self, pchannel: &str) {
        self.shards
            .write()
            .retain(|v, _| VChannel::new(v).map_or(true, |v| v.pchannel_str() != pchannel));
    }

    /// The segments the delegators of collection `name` hold: (vchannel, segment, sealed, rows,
    /// indexed), and their tsafe.
    pub fn segments(&self, name: &str) -> Vec<(String, i64, bool, usize, bool)> {
        let shards = self.shards.read();
        let mut out = Vec::new();
        for d in shards.values() {
            let data = d.read();
            if data.schema().name == name {
                for (id, _, sealed, rows, indexed) in data.segments() {
                    out.push((d.vchannel().to_owned(), id, sealed, rows, indexed));
                }
            }
        }
        out.sort();
        out
    }

    /// The sealed segments of collection `name` whose rows query workers hold (the delegators
    /// here keep their keys only), ascending.
    pub fn remote_segments(&self, name: &str) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .shards
            .read()
            .values()
            .filter(|d| d.read().schema().name == name)
            .flat_map(|d| d.read().remote_segments())
            .collect();
        out.sort_unstable();
        out
    }

    fn placement_prefix(&self) -> String {
        sluice_coord::keys::Keys::new(self.storage.meta_root.clone()).placement_prefix()
    }

    /// Per query worker, the part of `data` (the shard of `d`) it holds, as of `t`.
    fn worker_scopes(
        &self,
        d: &Delegator,
        data: &ShardData,
        t: u64,
        expired_before: u64,
    ) -> Result<Vec<(String, pb::SegmentScope)>, ReadError> {
        let remote = data.remote_segments();
        if remote.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = self.placement_prefix();
        let placements = self.placements.get().map(|p| p.borrow().clone());
        let mut by: BTreeMap<String, pb::SegmentScope> = BTreeMap::new();
        for s in remote {
            let placed = placements
                .as_ref()
                .and_then(|p| p.get(&format!("{prefix}{s}")))
                .map(|p| p.address.clone());
            let Some(address) = placed else {
                return Err(ReadError::new(
                    ErrorCode::NotReady,
                    format!(
                        "segment {s} of shard {} is moving between query workers; retry",
                        d.vchannel()
                    ),
                ));
            };
            let scope = by.entry(address).or_insert_with(|| pb::SegmentScope {
                collection_id: d.collection(),
                vchannel: d.vchannel().to_owned(),
                mvcc_timestamp: t,
                schema: Some(data.schema().clone()),
                expired_before,
                ..pb::SegmentScope::default()
            });
            scope.segment_ids.push(s);
            // The worker must hold at least the version whose rows the hidden set describes.
            scope
                .segment_versions
                .push(data.segment_version(s).unwrap_or(0));
            let mut rows: Vec<u32> = data.hidden_rows(s, t).into_iter().collect();
            if !rows.is_empty() {
                rows.sort_unstable();
                scope.hidden.push(pb::SegmentRows {
                    segment_id: s,
                    rows,
                });
            }
        }
        Ok(by.into_iter().collect())
    }

    /// Reads answered for shards another node named (forwarded to this node), and the
    /// vchannels of the delegators here.
    pub fn served(&self) -> (u64, Vec<String>) {
        let mut v: Vec<String> = self.shards.read().keys().cloned().collect();
        v.sort();
        (
            self.forwarded_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            v,
        )
    }

    /// Where each shard's read may run.
    fn read_at(&self, d: &Delegator, read: Option<&pb::ReadOptions>) -> ReadAt {
        let default = pb::ReadOptions::default();
        let read = read.unwrap_or(&default);
        let level = pb::ConsistencyLevel::try_from(read.consistency)
            .unwrap_or(pb::ConsistencyLevel::Bounded);
        let guarantee = match level {
            pb::ConsistencyLevel::Strong => VChannel::new(d.vchannel())
                .ok()
                .and_then(|v| {
                    self.wals
                        .lock()
                        .get(v.pchannel_str())
                        .and_then(|w| w.strong_guarantee(&v))
                })
                .unwrap_or_else(now_ts),
            pb::ConsistencyLevel::Session | pb::ConsistencyLevel::Eventually => 0,
            pb::ConsistencyLevel::Bounded | pb::ConsistencyLevel::Unspecified => {
                now_ts().saturating_sub((self.config.bounded_staleness.as_millis() as u64) << 18)
            }
        };
        ReadAt {
            guarantee: guarantee.max(read.guarantee_timestamp),
            mvcc: (read.mvcc_timestamp > 0).then_some(read.mvcc_timestamp),
            timeout: match read.timeout_ms {
                0 => self.config.read_timeout,
                ms => Duration::from_millis(ms.into()),
            },
        }
    }

    /// Which shards of collection `name` answer a request, and where: those served here, and
    /// per owning node those that are not (`only`: exactly these shards, all served here — a
    /// request another node forwarded).
    async fn plan(
        &self,
        name: &str,
        only: &[String],
        read: Option<&pb::ReadOptions>,
    ) -> Result<Vec<Part>, ReadError> {
        // Reads that are not STRONG may go to any replica of a shard (the primary is the fallback).
        let spread = read.is_none_or(|r| r.consistency != pb::ConsistencyLevel::Strong as i32);
        if !only.is_empty() {
            self.forwarded_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let shards = self.shards.read();
            return only
                .iter()
                .map(|v| {
                    shards
                        .get(v)
                        .filter(|d| self.serving(d) && d.read().schema().name == name)
                        .map(|d| Part::Local(d.clone()))
                        .ok_or_else(|| {
                            ReadError::new(
                                ErrorCode::ChannelNotExist,
                                format!("shard {v} of collection {name:?} is not served here"),
                            )
                        })
                })
                .collect();
        }
        if let Some(local) = self.local_shards(name) {
            let want = local
                .first()
                .map_or(1, |d| d.read().schema().shards.max(1) as usize);
            let replicated = spread
                && local.iter().any(|d| {
                    !self
                        .replica_addresses(d.vchannel(), d.collection())
                        .is_empty()
                });
            if local.len() >= want && !replicated {
                return Ok(local.into_iter().map(Part::Local).collect());
            }
        }
        let info = self.catalog_entry(name).await?;
        if info.load_state == pb::LoadState::Released as i32 {
            return Err(ReadError::new(
                ErrorCode::CollectionNotLoaded,
                format!("collection {name:?} is released; load it to read it"),
            ));
        }
        let mut parts = Vec::new();
        let mut remote: HashMap<(String, Option<String>), Vec<String>> = HashMap::new();
        for v in &info.vchannels {
            let here = self
                .shards
                .read()
                .get(v)
                .filter(|d| d.collection() == info.collection_id && self.serving(d))
                .cloned();
            let replicas = if spread {
                self.replica_addresses(v, info.collection_id)
            } else {
                Vec::new()
            };
            if !replicas.is_empty() {
                let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(r) = replicas.get(turn % (replicas.len() + 1)) {
                    // A replica, with the primary as the fallback while it cannot answer.
                    let primary = match &here {
                        Some(_) => self.address.get().cloned(),
                        None => self.locator.get().and_then(|l| {
                            VChannel::new(v)
                                .ok()
                                .and_then(|v| l.owner(v.pchannel_str()))
                        }),
                    };
                    remote
                        .entry((r.clone(), primary))
                        .or_default()
                        .push(v.clone());
                    continue;
                }
            }
            if let Some(d) = here {
                parts.push(Part::Local(d));
                continue;
            }
            let pchannel = VChannel::new(v)
                .map_err(|e| ReadError::new(ErrorCode::Inner, e.to_string()))?
                .pchannel_str()
                .to_owned();
            let owner = match self.locator.get() {
                Some(l) => l.owner(&pchannel),
                None => None,
            };
            match owner {
                Some(address) if Some(&address) != self.address.get() => {
                    remote.entry((address, None)).or_default().push(v.clone());
                }
                _ => {
                    return Err(ReadError::new(
                        ErrorCode::NotReady,
                        format!(
                            "shard {v} of collection {name:?} is not served anywhere yet (its \
                             WAL is being opened or moved); retry"
                        ),
                    ));
                }
            }
        }
        let mut remote: Vec<_> = remote.into_iter().collect();
        remote.sort();
        parts.extend(
            remote
                .into_iter()
                .map(|((address, fallback), vchannels)| Part::Remote {
                    address,
                    vchannels,
                    fallback,
                }),
        );
        Ok(parts)
    }

    /// The catalog's entry of the live collection `name`.
    async fn catalog_entry(&self, name: &str) -> Result<pb::CollectionInfo, ReadError> {
        use prost::Message as _;
        let meta = &self.storage.meta;
        let root = &self.storage.meta_root;
        let inner = |e: sluice_meta::MetaError| {
            ReadError::new(ErrorCode::Inner, format!("reading the catalog: {e}"))
        };
        let Some(id) = meta
            .get(&sluice_coord::catalog::name_key(root, name))
            .await
            .map_err(inner)?
        else {
            return Err(ReadError::new(
                ErrorCode::CollectionNotFound,
                format!("collection {name:?} does not exist"),
            ));
        };
        let id = String::from_utf8_lossy(&id.value).trim().to_owned();
        let key = sluice_coord::catalog::collection_key(root, &id);
        let entry = meta.get(&key).await.map_err(inner)?.ok_or_else(|| {
            ReadError::new(
                ErrorCode::NotReady,
                format!("collection {name:?} is being created or dropped; retry"),
            )
        })?;
        pb::CollectionInfo::decode(entry.value.as_ref()).map_err(|e| {
            ReadError::new(
                ErrorCode::Inner,
                format!("the catalog entry {key} does not decode: {e}"),
            )
        })
    }

    /// Whether `d`'s WAL is still open and unfenced here (a fenced owner's delegator may lag
    /// behind writes the new owner already acknowledged: it must not answer).
    fn serving(&self, d: &Delegator) -> bool {
        VChannel::new(d.vchannel()).is_ok_and(|v| {
            self.wals
                .lock()
                .get(v.pchannel_str())
                .is_some_and(|w| w.is_available())
        })
    }

    fn local_shards(&self, name: &str) -> Option<Vec<Arc<Delegator>>> {
        let shards = self.shards.read();
        let newest = shards
            .values()
            .filter(|d| self.serving(d) && !self.released.read().contains(&d.collection()))
            .filter(|d| d.read().schema().name == name)
            .map(|d| d.collection())
            .max()?;
        let mut out: Vec<Arc<Delegator>> = shards
            .values()
            .filter(|d| d.collection() == newest && self.serving(d))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.vchannel().cmp(b.vchannel()));
        Some(out)
    }

    /// Reads every part at one MVCC timestamp, so a multi-shard answer is one snapshot: the
    /// request's `mvcc_timestamp` if it names one; else the guarantee is the highest of every
    /// shard's (for STRONG: each WAL's newest timestamp), every shard waits until it reached
    /// it, and the read happens at the lowest timestamp every shard has applied (as fresh as
    /// the slowest shard allows). Remote parts answer with the timestamp they read at; one that
    /// read earlier than the others is asked again at the common timestamp.
    async fn read_parts<T, L, LF, R, RF>(
        &self,
        parts: &[Part],
        read: Option<&pb::ReadOptions>,
        local: L,
        remote: R,
    ) -> Result<(Vec<T>, u64), ReadError>
    where
        L: Fn(Arc<Delegator>, u64) -> LF,
        LF: std::future::Future<Output = Result<T, ReadError>>,
        R: Fn(String, Vec<String>, pb::ReadOptions) -> RF,
        RF: std::future::Future<Output = Result<(T, u64), ReadError>>,
    {
        let base = read.copied().unwrap_or_default();
        let explicit = base.mvcc_timestamp;
        let mut guarantee = base.guarantee_timestamp;
        let mut timeout = self.config.read_timeout;
        for part in parts {
            if let Part::Local(d) = part {
                let at = self.read_at(d, read);
                guarantee = guarantee.max(at.guarantee);
                timeout = at.timeout;
            }
        }
        let mut remote_done: Vec<Option<(T, u64)>> = parts.iter().map(|_| None).collect();
        let mut t = explicit;
        if explicit == 0 {
            for (i, part) in parts.iter().enumerate() {
                if let Part::Remote {
                    address,
                    vchannels,
                    fallback,
                } = part
                {
                    let options = pb::ReadOptions {
                        guarantee_timestamp: guarantee,
                        ..base
                    };
                    let r = with_fallback(address, fallback.as_deref(), |a| {
                        remote(a.to_owned(), vchannels.clone(), options)
                    })
                    .await?;
                    t = t.max(r.1);
                    remote_done[i] = Some(r);
                }
            }
            let need = guarantee.max(t);
            let mut lowest = None::<u64>;
            for part in parts {
                if let Part::Local(d) = part {
                    let reached = d
                        .ready(ReadAt {
                            guarantee: need,
                            mvcc: None,
                            timeout,
                        })
                        .await?;
                    lowest = Some(lowest.map_or(reached, |l| l.min(reached)));
                }
            }
            t = t.max(lowest.unwrap_or(0));
        }
        let mut out = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            match part {
                Part::Local(d) => {
                    let at = d
                        .ready(ReadAt {
                            guarantee: 0,
                            mvcc: Some(t),
                            timeout,
                        })
                        .await?;
                    out.push(local(d.clone(), at).await?);
                }
                Part::Remote {
                    address,
                    vchannels,
                    fallback,
                } => match remote_done[i].take() {
                    Some((v, at)) if at == t => out.push(v),
                    _ => {
                        let options = pb::ReadOptions {
                            mvcc_timestamp: t,
                            ..base
                        };
                        let r = with_fallback(address, fallback.as_deref(), |a| {
                            remote(a.to_owned(), vchannels.clone(), options)
                        })
                        .await?;
                        out.push(r.0);
                    }
                },
            }
        }
        Ok((out, t))
    }

    /// Answers a Search.
    pub async fn search(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse, ReadError> {
        let metric = check_search(&req)?;
        let k = req.top_k as usize;
        let parts = self
            .plan(&req.collection, &req.shards, req.read.as_ref())
            .await?;
        let nq = req.vectors.len() + req.sparse_vectors.len() + req.text_queries.len();
        let local = parts.iter().find_map(|p| match p {
            Part::Local(d) => Some(d),
            Part::Remote { .. } => None,
        });
        let spec = match local {
            Some(d) => Some(search_spec(&req, metric, d)?),
            None => None,
        };
        // Without one in the request: the metric the collection's indexes are built for.
        let used = match (metric, local) {
            (Some(m), _) => m,
            (None, Some(d)) => d.read().index_params().metric,
            (None, None) => {
                let info = self.catalog_entry(&req.collection).await?;
                self.config.index.with(&index_settings(&info)).metric
            }
        };
        let (spec, req_ref) = (&spec, &req);
        let (per_part, mvcc) = self
            .read_parts(
                &parts,
                req.read.as_ref(),
                |d, t| async move {
                    let spec = spec.as_ref().expect("a local part has a spec");
                    let expiry = self.expired_before(d.collection(), t);
                    let (hits, scopes, term_stats) = {
                        let data = d.read();
                        let scopes = self.worker_scopes(&d, &data, t, expiry)?;
                        // Query workers score text by the whole shard's term statistics.
                        let term_stats = match (scopes.is_empty(), spec.texts.is_empty()) {
                            (false, false) => {
                                Some(data.term_stats(spec.field.as_deref(), &spec.texts)?)
                            }
                            _ => None,
                        };
                        (
                            data.search_in(spec, t, &Scope::expiring(expiry))?,
                            scopes,
                            term_stats,
                        )
                    };
                    if scopes.is_empty() {
                        return Ok(hits);
                    }
                    let mut parts = vec![hits];
                    for (address, scope) in scopes {
                        let request = pb::WorkerSearchRequest {
                            scope: Some(scope),
                            search: Some(req_ref.clone()),
                            term_stats: term_stats.as_ref().map(|s| pb::TermStatistics {
                                rows: s.rows,
                                terms: s.terms,
                                rows_with_term: s.rows_with_term.clone(),
                            }),
                        };
                        let r = call_worker(&address, |mut c| async move {
                            c.search_segments(request).await
                        })
                        .await?;
                        let m = metric_of(r.metric).unwrap_or(used);
                        parts.push(
                            r.results
                                .iter()
                                .map(|h| hits_of(h, m))
                                .collect::<Result<Vec<_>, _>>()?,
                        );
                    }
                    (0..nq)
                        .map(|q| {
                            let of_q = parts.iter().filter_map(|p| p.get(q).cloned()).collect();
                            Ok(merge_hits(of_q, k)?)
                        })
                        .collect()
                },
                |address, vchannels, read| {
                    let req = pb::SearchRequest {
                        shards: vchannels,
                        read: Some(read),
                        ..req.clone()
                    };
                    async move {
                        let r =
                            forward(&address, |mut c| async move { c.search(req).await }).await?;
                        // Scores back to distances in the metric the owner used.
                        let m = metric_of(r.metric).unwrap_or(used);
                        let hits = r
                            .results
                            .iter()
                            .map(|h| hits_of(h, m))
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok((hits, r.mvcc_timestamp))
                    }
                },
            )
            .await?;
        let mut results = Vec::with_capacity(nq);
        for q in 0..nq {
            let parts: Vec<Hits> = per_part.iter().filter_map(|s| s.get(q).cloned()).collect();
            let hits = if parts.len() == 1 {
                parts.into_iter().next().expect("one part")
            } else {
                merge_hits(parts, k)?
            };
            results.push(hits_to_pb(&hits)?);
        }
        Ok(pb::SearchResponse {
            results,
            mvcc_timestamp: mvcc,
            metric: if req.text_queries.is_empty() {
                metric_to_pb(used)
            } else {
                pb::MetricType::Bm25
            } as i32,
        })
    }

    /// Answers a Query.
    pub async fn query(&self, req: pb::QueryRequest) -> Result<pb::QueryResponse, ReadError> {
        let parts = self
            .plan(&req.collection, &req.shards, req.read.as_ref())
            .await?;
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let req_ref = &req;
        let (parts_rows, mvcc) = self
            .read_parts(
                &parts,
                req.read.as_ref(),
                |d, t| async move {
                    let req = req_ref;
                    let filter = parse_filter(&req.filter, &d)?;
                    let expiry = self.expired_before(d.collection(), t);
                    let (batch, scopes) = {
                        let data = d.read();
                        let batch = data.query_in(
                            filter.as_ref(),
                            &req.partition_ids,
                            &req.output_fields,
                            limit,
                            t,
                            &Scope::expiring(expiry),
                        )?;
                        (batch, self.worker_scopes(&d, &data, t, expiry)?)
                    };
                    let mut out = vec![batch];
                    for (address, scope) in scopes {
                        let request = pb::WorkerQueryRequest {
                            scope: Some(scope),
                            query: Some(req.clone()),
                        };
                        let r = call_worker(&address, |mut c| async move {
                            c.query_segments(request).await
                        })
                        .await?;
                        out.extend(decode_rows(&r.rows)?);
                    }
                    Ok(out)
                },
                |address, vchannels, read| {
                    let req = pb::QueryRequest {
                        shards: vchannels,
                        read: Some(read),
                        ..req.clone()
                    };
                    async move {
                        let r =
                            forward(&address, |mut c| async move { c.query(req).await }).await?;
                        Ok((decode_rows(&r.rows)?, r.mvcc_timestamp))
                    }
                },
            )
            .await?;
        let batches: Vec<RecordBatch> = parts_rows.into_iter().flatten().collect();
        let batch = merge_sorted(batches, limit)?;
        respond(batch, mvcc)
    }

    /// Answers a Get.
    pub async fn get(&self, req: pb::GetRequest) -> Result<pb::QueryResponse, ReadError> {
        let parts = self
            .plan(&req.collection, &req.shards, req.read.as_ref())
            .await?;
        let keys = keys_from_pb(req.keys.as_ref())?;
        let (keys_ref, req_ref) = (&keys, &req);
        let (parts_rows, mvcc) = self
            .read_parts(
                &parts,
                req.read.as_ref(),
                |d, t| async move {
                    let expiry = self.expired_before(d.collection(), t);
                    let (batch, scopes) = {
                        let data = d.read();
                        let batch = data.get_in(
                            keys_ref,
                            &req_ref.output_fields,
                            t,
                            &Scope::expiring(expiry),
                        )?;
                        (batch, self.worker_scopes(&d, &data, t, expiry)?)
                    };
                    let mut out = vec![batch];
                    for (address, scope) in scopes {
                        let request = pb::WorkerGetRequest {
                            scope: Some(scope),
                            get: Some(req_ref.clone()),
                        };
                        let r =
                            call_worker(
                                &address,
                                |mut c| async move { c.get_segments(request).await },
                            )
                            .await?;
                        out.extend(decode_rows(&r.rows)?);
                    }
                    Ok(out)
                },
                |address, vchannels, read| {
                    let req = pb::GetRequest {
                        shards: vchannels,
                        read: Some(read),
                        ..req.clone()
                    };
                    async move {
                        let r = forward(&address, |mut c| async move { c.get(req).await }).await?;
                        Ok((decode_rows(&r.rows)?, r.mvcc_timestamp))
                    }
                },
            )
            .await?;
        let batches: Vec<RecordBatch> = parts_rows.into_iter().flatten().collect();
        // Back into the order the keys were asked in.
        let mut order: HashMap<&Pk, usize> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            order.entry(k).or_insert(i);
        }
        let mut picks = Vec::new();
        for (p, b) in batches.iter().enumerate() {
            for (i, k) in pks_of(b.column(0).as_ref())?.iter().enumerate() {
                picks.push((order.get(k).copied().unwrap_or(usize::MAX), p, i));
            }
        }
        picks.sort_unstable();
        let batch = interleave_batches(
            &batches,
            &picks.iter().map(|&(_, p, i)| (p, i)).collect::<Vec<_>>(),
        )?;
        respond(batch, mvcc)
    }
}

/// The checks of a search request; its metric (`None`: the index's).
pub(crate) fn check_search(req: &pb::SearchRequest) -> Result<Option<Metric>, ReadError> {
    let kinds = [
        req.vectors.len(),
        req.sparse_vectors.len(),
        req.text_queries.len(),
    ];
    if kinds.iter().filter(|&&n| n > 0).count() > 1 {
        return Err(ReadError::invalid(format!(
            "a search has {} float and {} sparse query vectors and {} text queries: one kind, \
             for the kind of field searched",
            kinds[0], kinds[1], kinds[2]
        )));
    }
    let nq: usize = kinds.iter().sum();
    if nq == 0 || nq > MAX_QUERY_VECTORS {
        return Err(ReadError::invalid(format!(
            "a search needs 1 to {MAX_QUERY_VECTORS} query vectors, not {nq}"
        )));
    }
    let k = req.top_k as usize;
    if k == 0 || k > MAX_TOP_K {
        return Err(ReadError::invalid(format!(
            "top_k must be 1 to {MAX_TOP_K}, not {k}"
        )));
    }
    if k * nq > MAX_HITS {
        return Err(ReadError::invalid(format!(
            "{nq} query vectors × top_k {k} asks for more than {MAX_HITS} hits; split the search"
        )));
    }
    if let Some((i, e)) = req
        .sparse_vectors
        .iter()
        .enumerate()
        .find_map(|(i, v)| sluice_types::sparse::check(v).err().map(|e| (i, e)))
    {
        return Err(ReadError::invalid(format!("query vector {i}: {e}")));
    }
    if let Some((i, _)) = req
        .vectors
        .iter()
        .enumerate()
        .find(|(_, v)| v.values.iter().any(|x| !x.is_finite()))
    {
        return Err(ReadError::invalid(format!(
            "query vector {i} has a NaN or infinite value"
        )));
    }
    if req.ef > 4096 {
        return Err(ReadError::invalid(format!(
            "ef must be at most 4096, not {}",
            req.ef
        )));
    }
    let metric = match pb::MetricType::try_from(req.metric) {
        Ok(pb::MetricType::Unspecified) => None,
        Ok(pb::MetricType::L2) => Some(Metric::L2),
        Ok(pb::MetricType::Ip) => Some(Metric::Ip),
        Ok(pb::MetricType::Cosine) => Some(Metric::Cosine),
        Ok(pb::MetricType::Jaccard) => Some(Metric::Jaccard),
        Ok(pb::MetricType::Bm25) if !req.text_queries.is_empty() => Some(Metric::Ip),
        Ok(pb::MetricType::Bm25) => {
            return Err(ReadError::invalid("the BM25 metric is for text queries"));
        }
        Err(_) => return Err(ReadError::invalid(format!("unknown metric {}", req.metric))),
    };
    if !req.text_queries.is_empty() {
        sluice_types::text::check_bm25_params(bm25_k1(req), bm25_b(req))
            .map_err(ReadError::invalid)?;
        return match metric {
            None | Some(Metric::Ip) => Ok(Some(Metric::Ip)),
            Some(m) => Err(ReadError::invalid(format!(
                "text queries are scored by BM25, not {}",
                m.name()
            ))),
        };
    }
    if req.sparse_vectors.is_empty() {
        return Ok(metric);
    }
    // Sparse vectors have one metric, whatever the collection's indexes use.
    match metric {
        None | Some(Metric::Ip) => Ok(Some(Metric::Ip)),
        Some(m) => Err(ReadError::invalid(format!(
            "sparse vectors are searched by IP, not {}",
            m.name()
        ))),
    }
}

/// A search's BM25 `k1` (0: the default).
fn bm25_k1(req: &pb::SearchRequest) -> f32 {
    if req.bm25_k1 == 0.0 {
        sluice_types::text::DEFAULT_BM25_K1
    } else {
        req.bm25_k1
    }
}

/// A search's BM25 `b` (unset: the default).
fn bm25_b(req: &pb::SearchRequest) -> f32 {
    req.bm25_b.unwrap_or(sluice_types::text::DEFAULT_BM25_B)
}

/// What a search asks of the shard `d` (its filter checked against `d`'s schema).
pub(crate) fn search_spec(
    req: &pb::SearchRequest,
    metric: Option<Metric>,
    d: &Delegator,
) -> Result<SearchSpec, ReadError> {
    Ok(SearchSpec {
        field: (!req.vector_field.is_empty()).then(|| req.vector_field.clone()),
        vectors: req.vectors.iter().map(|v| v.values.clone()).collect(),
        sparse: req.sparse_vectors.iter().map(|v| v.to_vec()).collect(),
        texts: req.text_queries.clone(),
        bm25: Some((bm25_k1(req), bm25_b(req))),
        term_stats: None,
        top_k: req.top_k as usize,
        metric,
        filter: parse_filter(&req.filter, d)?,
        partitions: req.partition_ids.clone(),
        output_fields: req.output_fields.clone(),
        exact: req.exact,
        ef: (req.ef > 0).then_some(req.ef as usize),
    })
}

/// One query's hits on the wire.
pub(crate) fn hits_to_pb(hits: &Hits) -> Result<pb::SearchHits, ReadError> {
    let rows = encode_stream(std::slice::from_ref(&hits.rows))
        .map_err(|e| ReadError::new(ErrorCode::Inner, e.to_string()))?;
    Ok(pb::SearchHits {
        keys: Some(keys_to_pb(&hits.pks)),
        scores: hits.scores.clone(),
        rows: rows.into(),
    })
}

/// Where a request's shards are answered.
enum Part {
    /// By a delegator here.
    Local(Arc<Delegator>),
    /// By the node at `address`, for these shards (a replica's host: `fallback` is the
    /// primary's node, asked when the replica cannot answer).
    Remote {
        address: String,
        vchannels: Vec<String>,
        fallback: Option<String>,
    },
}

/// `call` at `address`, and at `fallback` when that fails in a way another node may not (a
/// replica still loading, or gone).
async fn with_fallback<T, F, Fut>(
    address: &str,
    fallback: Option<&str>,
    call: F,
) -> Result<T, ReadError>
where
    F: Fn(&str) -> Fut,
    Fut: std::future::Future<Output = Result<T, ReadError>>,
{
    match call(address).await {
        Err(e)
            if fallback.is_some()
                && !matches!(
                    e.code,
                    ErrorCode::InvalidArgument
                        | ErrorCode::CollectionNotFound
                        | ErrorCode::CollectionNotLoaded
                ) =>
        {
            tracing::debug!(replica = address, error = %e, "a replica could not answer; asking the primary");
            call(fallback.expect("checked")).await
        }
        r => r,
    }
}

/// A channel to `address`, made once per process (a channel multiplexes every call).
fn channel(address: &str) -> Result<sluice_proto::Channel, ReadError> {
    static CHANNELS: std::sync::OnceLock<Mutex<HashMap<String, sluice_proto::Channel>>> =
        std::sync::OnceLock::new();
    let mut channels = CHANNELS.get_or_init(Default::default).lock();
    if let Some(c) = channels.get(address) {
        return Ok(c.clone());
    }
    let c = sluice_proto::lazy_channel(address).map_err(|e| ReadError::new(ErrorCode::Inner, e))?;
    channels.insert(address.to_owned(), c.clone());
    Ok(c)
}

/// How long a delegator waits for a query worker's answer before the read fails (retryably).
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls the `QueryWorker` service at `address` once. A worker that cannot be reached or does
/// not answer in [`WORKER_TIMEOUT`] is NOT_READY: its segments move to another worker once its
/// registration lapses.
async fn call_worker<T, F, Fut>(address: &str, call: F) -> Result<T, ReadError>
where
    F: FnOnce(pb::query_worker_client::QueryWorkerClient<sluice_proto::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let client = pb::query_worker_client::QueryWorkerClient::new(channel(address)?)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let unreachable = |why: String| {
        ReadError::new(
            ErrorCode::NotReady,
            format!("query worker {address} is unreachable ({why}); retry"),
        )
    };
    match tokio::time::timeout(WORKER_TIMEOUT, call(client)).await {
        Err(_) => Err(unreachable(format!("no answer in {WORKER_TIMEOUT:?}"))),
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => match sluice_proto::convert::error_of(&s) {
            (ErrorCode::Unknown, message) => Err(unreachable(message)),
            (code, message) => Err(ReadError::new(
                code,
                format!("query worker {address}: {message}"),
            )),
        },
    }
}

/// Follows segment placements: a segment held here whose worker reports it loaded keeps only its
/// keys here; a segment whose rows a worker held and that is no longer placed is loaded here
/// again. Runs at every placement change and every second (workers load in the background).
/// Ends with the host.
async fn follow_placements(
    host: std::sync::Weak<QueryHost>,
    mut placements: tokio::sync::watch::Receiver<Placements>,
) {
    loop {
        let Some(h) = host.upgrade() else { return };
        let placed = placements.borrow_and_update().clone();
        let prefix = h.placement_prefix();
        let delegators: Vec<Arc<Delegator>> = h.shards.read().values().cloned().collect();
        let mut status: HashMap<String, std::collections::HashSet<i64>> = HashMap::new();
        for d in delegators {
            let (full, stubs): (Vec<i64>, Vec<i64>) = {
                let data = d.read();
                let stubs = data.remote_segments();
                let full = data
                    .segments()
                    .into_iter()
                    .filter(|s| s.2 && !stubs.contains(&s.0))
                    .map(|s| s.0)
                    .collect();
                (full, stubs)
            };
            for id in full {
                let Some(p) = placed.get(&format!("{prefix}{id}")) else {
                    continue;
                };
                if !status.contains_key(&p.address) {
                    let loaded = tokio::time::timeout(
                        Duration::from_secs(2),
                        call_worker(&p.address, |mut c| async move {
                            c.status(pb::WorkerStatusRequest {}).await
                        }),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|r| r.segment_ids.into_iter().collect())
                    .unwrap_or_default();
                    status.insert(p.address.clone(), loaded);
                }
                if status[&p.address].contains(&id) && d.write().demote(id) {
                    tracing::info!(segment = id, worker = %p.address, "a query worker serves a sealed segment; keeping its keys only");
                }
            }
            for id in stubs {
                if placed.contains_key(&format!("{prefix}{id}")) {
                    continue;
                }
                let key = h.storage.manifest_key(d.collection(), id);
                let manifest = match h.storage.meta.get(&key).await {
                    Ok(Some(kv)) => {
                        use prost::Message as _;
                        SegmentManifest::decode(kv.value.as_ref()).ok()
                    }
                    _ => None,
                };
                let Some(m) = manifest else { continue };
                match load_segment(&h.storage, &d, &m).await {
                    Ok(()) => tracing::info!(
                        segment = id,
                        "a segment no query worker holds is served here again"
                    ),
                    Err(e) => {
                        tracing::warn!(segment = id, error = %e, "loading a segment back failed; retrying")
                    }
                }
            }
        }
        drop(h);
        tokio::select! {
            r = placements.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Every second, per delegator (vchannel): its segments by state, the rows and deletes it
/// holds in memory, and how far its tsafe is behind now. A delegator that went reads zeros.
/// Ends with the host.
async fn report_delegators(host: std::sync::Weak<QueryHost>) {
    let mut shown: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let Some(h) = host.upgrade() else { return };
        let delegators: Vec<Arc<Delegator>> = h.shards.read().values().cloned().collect();
        drop(h);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut seen = std::collections::HashSet::new();
        for d in delegators {
            let v = d.vchannel().to_owned();
            let ((growing, sealed, remote), rows, deletes) = {
                let data = d.read();
                (data.segment_counts(), data.rows_held(), data.deletes_held())
            };
            let tsafe_ms = d.tsafe() >> sluice_types::ids::LOGICAL_BITS;
            let lag = if tsafe_ms == 0 {
                0.0
            } else {
                now_ms.saturating_sub(tsafe_ms) as f64 / 1e3
            };
            delegator_gauges(&v, [growing, sealed, remote], rows, deletes, lag);
            seen.insert(v);
        }
        for gone in shown.difference(&seen) {
            delegator_gauges(gone, [0, 0, 0], 0, 0, 0.0);
        }
        shown = seen;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn delegator_gauges(vchannel: &str, segments: [usize; 3], rows: usize, deletes: usize, lag: f64) {
    for (state, n) in ["growing", "sealed", "remote"].into_iter().zip(segments) {
        metrics::gauge!("sluice_query_segments", "vchannel" => vchannel.to_owned(), "state" => state)
            .set(n as f64);
    }
    metrics::gauge!("sluice_query_rows", "vchannel" => vchannel.to_owned()).set(rows as f64);
    metrics::gauge!("sluice_query_deletes_held", "vchannel" => vchannel.to_owned())
        .set(deletes as f64);
    metrics::gauge!("sluice_query_tsafe_lag_seconds", "vchannel" => vchannel.to_owned()).set(lag);
}

/// Messages a host's delegators are fed, in timestamp order (timeticks included).
pub type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ReadMessage, String>> + Send>>;

/// The log the delegators of one pchannel are fed from: the WAL open on this node, or (a
/// replica) the owner's, read remotely.
pub trait ShardLog: Send + Sync + 'static {
    /// The pchannel.
    fn pchannel(&self) -> &str;
    /// Whether this host keeps a delegator for `vchannel` (all of the pchannel's by default).
    fn wants(&self, _vchannel: &str) -> bool {
        true
    }
    /// The collections the log knows, with their schemas: (vchannel, collection, schema).
    fn schemas(&self) -> Vec<(String, i64, sluice_types::schema::CollectionSchema)>;
    /// The schema of `vchannel`'s collection.
    fn schema(&self, vchannel: &VChannel) -> Option<sluice_types::schema::CollectionSchema>;
    /// The partitions `vchannel`'s collection has now, when the log knows them: sealed segments
    /// of other (dropped) partitions are not loaded. `None` (the default): the catalog's
    /// partitions decide (a DropPartition behind the flush checkpoint is no longer in the log).
    fn partitions(&self, _vchannel: &VChannel) -> Option<Vec<i64>> {
        None
    }
    /// Reads from a flush checkpoint (the message id to start from and the timestamp already
    /// reflected), or from the start of the log.
    fn read(&self, start: Option<(MessageId, Timestamp)>) -> Result<LogStream, String>;
    /// Whether the delegators fed from it may answer (the WAL is open and not fenced).
    fn is_available(&self) -> bool;
    /// The guarantee of a STRONG read of `vchannel` (`None`: the current time).
    fn strong_guarantee(&self, vchannel: &VChannel) -> Option<u64>;
}

/// The WAL open on this node.
struct WalLog(Wal);

impl ShardLog for WalLog {
    fn pchannel(&self) -> &str {
        self.0.pchannel().as_str()
    }

    fn schemas(&self) -> Vec<(String, i64, sluice_types::schema::CollectionSchema)> {
        self.0.schemas()
    }

    fn schema(&self, vchannel: &VChannel) -> Option<sluice_types::schema::CollectionSchema> {
        self.0.schema(vchannel)
    }

    fn partitions(&self, vchannel: &VChannel) -> Option<Vec<i64>> {
        self.0.partitions(vchannel)
    }

    fn read(&self, start: Option<(MessageId, Timestamp)>) -> Result<LogStream, String> {
        let options = match start {
            Some((id, after)) => ScannerOptions {
                policy: DeliverPolicy::StartFrom(id),
                filters: vec![MessageFilter::TimeTickGt(after)],
                ..ScannerOptions::default()
            },
            None => ScannerOptions::default(),
        };
        let scanner = self.0.read(options).map_err(|e| e.to_string())?;
        Ok(Box::pin(futures::stream::unfold(
            scanner,
            |mut s| async move {
                let m = s.next().await?;
                Some((m.map_err(|e| e.to_string()), s))
            },
        )))
    }

    fn is_available(&self) -> bool {
        self.0.is_available()
    }

    fn strong_guarantee(&self, vchannel: &VChannel) -> Option<u64> {
        Some(self.0.last_write(vchannel).0)
    }
}

/// Finds the node that owns a pchannel now (the coordinator's topology).
pub trait ShardLocator: Send + Sync + 'static {
    /// The gRPC address (`host:port`) of `pchannel`'s owner, if it has one.
    fn owner(&self, pchannel: &str) -> Option<String>;
}

/// Calls the `Query` service of the node at `address` once (the caller's client retries).
async fn forward<T, F, Fut>(address: &str, call: F) -> Result<T, ReadError>
where
    F: FnOnce(pb::query_client::QueryClient<sluice_proto::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let client = pb::query_client::QueryClient::new(channel(address)?)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20);
    call(client)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| {
            let (code, message) = sluice_proto::convert::error_of(&s);
            ReadError::new(code, format!("node {address}: {message}"))
        })
}

pub(crate) fn metric_of(m: i32) -> Option<Metric> {
    match pb::MetricType::try_from(m) {
        Ok(pb::MetricType::L2) => Some(Metric::L2),
        Ok(pb::MetricType::Ip) => Some(Metric::Ip),
        Ok(pb::MetricType::Cosine) => Some(Metric::Cosine),
        Ok(pb::MetricType::Jaccard) => Some(Metric::Jaccard),
        // BM25 scores, like inner products, grow with relevance.
        Ok(pb::MetricType::Bm25) => Some(Metric::Ip),
        _ => None,
    }
}

pub(crate) fn metric_to_pb(m: Metric) -> pb::MetricType {
    match m {
        Metric::L2 => pb::MetricType::L2,
        Metric::Ip => pb::MetricType::Ip,
        Metric::Cosine => pb::MetricType::Cosine,
        Metric::Jaccard => pb::MetricType::Jaccard,
    }
}

/// A remote node's hits for one query, with distances back from its scores.
pub(crate) fn hits_of(h: &pb::SearchHits, metric: Metric) -> Result<Hits, ReadError> {
    let pks = keys_from_pb(h.keys.as_ref()).unwrap_or_default();
    let rows = decode_rows(&h.rows)?;
    let rows = match rows.len() {
        0 => {
            return Err(ReadError::new(
                ErrorCode::Inner,
                "a remote search answered no rows",
            ));
        }
        1 => rows.into_iter().next().expect("one batch"),
        _ => arrow_select::concat::concat_batches(&rows[0].schema(), &rows)
            .map_err(|e| ReadError::new(ErrorCode::Inner, e.to_string()))?,
    };
    let distances = h
        .scores
        .iter()
        .map(|&s| match metric {
            Metric::L2 | Metric::Jaccard => s,
            Metric::Ip | Metric::Cosine => -s,
        })
        .collect();
    Ok(Hits {
        pks,
        distances,
        scores: h.scores.clone(),
        rows,
    })
}

/// The batches of an Arrow IPC stream another node answered.
pub(crate) fn decode_rows(bytes: &bytes::Bytes) -> Result<Vec<RecordBatch>, ReadError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    sluice_storage::rows::read_stream_bytes(bytes, usize::MAX).map_err(|e| {
        ReadError::new(
            ErrorCode::Inner,
            format!("a node answered rows that do not decode: {e}"),
        )
    })
}

pub(crate) fn parse_filter(text: &str, shard: &Delegator) -> Result<Option<Filter>, ReadError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Filter::parse(text, shard.read().schema())
        .map(Some)
        .map_err(|e| ReadError::invalid(e.to_string()))
}

pub(crate) fn respond(batch: RecordBatch, mvcc: u64) -> Result<pb::QueryResponse, ReadError> {
    let rows = encode_stream(std::slice::from_ref(&batch))
        .map_err(|e| ReadError::new(ErrorCode::Inner, e.to_string()))?;
    Ok(pb::QueryResponse {
        rows: rows.into(),
        row_count: batch.num_rows() as u64,
        mvcc_timestamp: mvcc,
    })
}

/// Rows `picks` (part, row) of `parts`, in that order.
fn interleave_batches(
    parts: &[RecordBatch],
    picks: &[(usize, usize)],
) -> Result<RecordBatch, ReadError> {
    let internal = |e: arrow_schema::ArrowError| ReadError::new(ErrorCode::Inner, e.to_string());
    let schema = parts[0].schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for c in 0..schema.fields().len() {
        let arrays: Vec<&dyn Array> = parts.iter().map(|b| b.column(c).as_ref()).collect();
        columns.push(arrow_select::interleave::interleave(&arrays, picks).map_err(internal)?);
    }
    RecordBatch::try_new(schema, columns).map_err(internal)
}

/// Key-ordered rows of every part, at most `limit` (0: all).
fn merge_sorted(parts: Vec<RecordBatch>, limit: usize) -> Result<RecordBatch, ReadError> {
    let mut picks: Vec<(Pk, usize, usize)> = Vec::new();
    for (p, b) in parts.iter().enumerate() {
        for (i, k) in pks_of(b.column(0).as_ref())?.into_iter().enumerate() {
            picks.push((k, p, i));
        }
    }
    picks.sort_unstable();
    if limit > 0 {
        picks.truncate(limit);
    }
    interleave_batches(
        &parts,
        &picks.iter().map(|(_, p, i)| (*p, *i)).collect::<Vec<_>>(),
    )
}

pub(crate) fn keys_to_pb(pks: &[Pk]) -> pb::PrimaryKeys {
    let keys = if pks.iter().all(|k| matches!(k, Pk::Int(_))) {
        pb::primary_keys::Keys::IntKeys(pb::Int64List {
            values: pks
                .iter()
                .map(|k| if let Pk::Int(v) = k { *v } else { 0 })
                .collect(),
        })
    } else {
        pb::primary_keys::Keys::StrKeys(pb::StringList {
            values: pks
                .iter()
                .map(|k| match k {
                    Pk::Int(v) => v.to_string(),
                    Pk::Str(s) => s.to_string(),
                })
                .collect(),
        })
    };
    pb::PrimaryKeys { keys: Some(keys) }
}

pub(crate) fn keys_from_pb(keys: Option<&pb::PrimaryKeys>) -> Result<Vec<Pk>, ReadError> {
    match keys.and_then(|k| k.keys.as_ref()) {
        Some(pb::primary_keys::Keys::IntKeys(l)) => {
            Ok(l.values.iter().map(|v| Pk::Int(*v)).collect())
        }
        Some(pb::primary_keys::Keys::StrKeys(l)) => Ok(l
            .values
            .iter()
            .map(|v| Pk::Str(Arc::from(v.as_str())))
            .collect()),
        None => Err(ReadError::invalid("a Get needs primary keys")),
    }
}

/// Feeds `wal`'s delegators until cancelled or the WAL ends; starts over (from the storage) on
/// a failure.
async fn feed(host: Arc<QueryHost>, wal: Arc<dyn ShardLog>, cancel: CancellationToken) {
    let pchannel = wal.pchannel().to_owned();
    let mut backoff =
        sluice_types::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut generation = host.load_gen.subscribe();
    loop {
        generation.mark_unchanged();
        let result = tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            r = feed_once(&host, wal.as_ref(), &cancel) => r,
            _ = generation.changed() => {
                // A collection was loaded or released: build this pchannel's shards again.
                host.forget(&pchannel);
                continue;
            }
        };
        host.forget(&pchannel);
        match result {
            Ok(()) => break,
            Err(e) => {
                if cancel.is_cancelled() || !wal.is_available() {
                    break;
                }
                let delay = backoff.next_delay();
                tracing::warn!(%pchannel, error = %e, ?delay, "feeding the query delegators failed; starting over");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let mut wals = host.wals.lock();
    if wals.get(&pchannel).is_some_and(|w| Arc::ptr_eq(w, &wal)) {
        wals.remove(&pchannel);
    }
}

/// The delegator of (`vchannel`, `collection`), made on first sight with the schema the WAL
/// knows (`None` for a collection without a schema: nothing to search).
/// `loaded`: made while the log is replayed, after the committed segments were loaded (every
/// row it will hold comes from the log).
fn delegator(
    host: &QueryHost,
    wal: &dyn ShardLog,
    vchannel: &str,
    collection: i64,
    schema: Option<sluice_types::schema::CollectionSchema>,
    loaded: bool,
) -> Option<Arc<Delegator>> {
    if let Some(d) = host.shards.read().get(vchannel)
        && d.collection() == collection
    {
        return Some(d.clone());
    }
    if host.released.read().contains(&collection) || !wal.wants(vchannel) {
        return None;
    }
    let schema = schema.or_else(|| VChannel::new(vchannel).ok().and_then(|v| wal.schema(&v)))?;
    let mut data = match ShardData::new(schema, host.index_params(collection)) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(vchannel, error = %e, "no query delegator for this shard");
            return None;
        }
    };
    if loaded {
        data.mark_loaded();
    }
    let d = Arc::new(Delegator::new(vchannel, collection, data));
    host.shards.write().insert(vchannel.to_owned(), d.clone());
    Some(d)
}

async fn feed_once(
    host: &Arc<QueryHost>,
    wal: &dyn ShardLog,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let pchannel = wal.pchannel().to_owned();
    let storage = &host.storage;
    let start = flush_start(storage, &pchannel).await?;
    let on_this = |v: &str| VChannel::new(v).is_ok_and(|v| v.pchannel_str() == pchannel);
    // Every collection the WAL knows gets its delegator now: reads wait on its tsafe (0 until
    // the segments below are loaded) instead of finding no collection.
    for (vchannel, collection, schema) in wal.schemas() {
        delegator(host, wal, &vchannel, collection, Some(schema), false);
    }
    // Deletes before segments: a merge (`sluice_storage::compaction::merge_deletes`) drops a
    // delete only after the segments needing it were compacted, so segments listed after the
    // deletes never miss one they need.
    for m in delete_manifests(storage, None)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| on_this(&m.vchannel))
    {
        let Some(d) = delegator(host, wal, &m.vchannel, m.collection_id, None, false) else {
            continue;
        };
        let Some(file) = &m.file else { continue };
        for b in read_file(storage, &file.path)
            .await
            .map_err(|e| e.to_string())?
        {
            let (keys, ts) = split_ts(&b)?;
            d.write()
                .delete_each(keys.column(0).as_ref(), &ts)
                .map_err(|e| e.to_string())?;
        }
    }
    let manifests = segment_manifests(storage, None)
        .await
        .map_err(|e| e.to_string())?;
    let from_log = |m: &SegmentManifest| {
        VChannel::new(&m.vchannel)
            .ok()
            .and_then(|v| wal.partitions(&v))
    };
    // Only a log that cannot say (a replica's) waits for the catalog.
    let catalog = if manifests
        .iter()
        .any(|m| on_this(&m.vchannel) && from_log(m).is_none())
    {
        host.catalog_partitions().await
    } else {
        None
    };
    let dropped = |m: &SegmentManifest| {
        from_log(m)
            .or_else(|| catalog.as_ref()?.get(&m.collection_id).cloned())
            .is_some_and(|live| !live.contains(&m.partition_id))
    };
    for m in manifests
        .into_iter()
        .filter(|m| on_this(&m.vchannel) && !dropped(m))
    {
        if let Some(d) = delegator(host, wal, &m.vchannel, m.collection_id, None, false) {
            load_segment(&host.storage, &d, &m).await?;
        }
    }
    // Every shard here holds its committed segments and deletes now: what it forgets of the
    // deletes from here on is what no held row needs.
    for d in host.shards.read().values() {
        if on_this(d.vchannel()) {
            d.write().mark_loaded();
        }
    }
    let mut scanner = wal.read(start)?;
    loop {
        let m = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = futures::StreamExt::next(&mut scanner) => match m {
                None => return Ok(()),
                Some(m) => m?,
            },
        };
        let ts = match &m {
            ReadMessage::Message(m) => {
                apply(host, wal, m)?;
                m.timestamp().ok().flatten()
            }
            ReadMessage::Txn(t) => {
                for b in t.bodies() {
                    apply(host, wal, b)?;
                }
                t.commit().timestamp().ok().flatten()
            }
        };
        if let Some(ts) = ts {
            for d in host.shards.read().values() {
                if on_this(d.vchannel()) {
                    d.update_tsafe(ts.0);
                }
            }
        }
    }
}

/// A file's rows without `_ts`, and `_ts` as timestamps.
fn split_ts(b: &RecordBatch) -> Result<(RecordBatch, Vec<u64>), String> {
    let i = b
        .schema()
        .index_of(TS_COLUMN)
        .map_err(|_| format!("a segment file without its {TS_COLUMN} column"))?;
    let ts = b
        .column(i)
        .as_primitive_opt::<arrow_array::types::Int64Type>()
        .ok_or("the timestamp column is not INT64")?
        .values()
        .iter()
        .map(|&t| t as u64)
        .collect();
    let keep: Vec<usize> = (0..b.num_columns()).filter(|&c| c != i).collect();
    Ok((b.project(&keep).map_err(|e| e.to_string())?, ts))
}

/// A compacted file's rows without `_row`, and `_row` (empty for a file without it).
fn split_origin(b: &RecordBatch) -> Result<(RecordBatch, Vec<u32>), String> {
    use sluice_storage::compaction::ROW_COLUMN;
    let Ok(i) = b.schema().index_of(ROW_COLUMN) else {
        return Ok((b.clone(), Vec::new()));
    };
    let rows = b
        .column(i)
        .as_primitive_opt::<arrow_array::types::UInt32Type>()
        .ok_or("the row column is not UINT32")?
        .values()
        .to_vec();
    let keep: Vec<usize> = (0..b.num_columns()).filter(|&c| c != i).collect();
    Ok((b.project(&keep).map_err(|e| e.to_string())?, rows))
}

/// Loads a committed segment into `d` (with its indexes) in place of its growing rows, or of
/// an older version of it.
pub(crate) async fn load_segment(
    storage: &StorageConfig,
    d: &Delegator,
    m: &SegmentManifest,
) -> Result<(), String> {
    let Some(file) = &m.data else {
        return Ok(());
    };
    let mut batches = Vec::new();
    let mut ts = Vec::new();
    let mut origin = Vec::new();
    for b in read_file(storage, &file.path)
        .await
        .map_err(|e| e.to_string())?
    {
        let (rows, t) = split_ts(&b)?;
        let (rows, o) = split_origin(&rows)?;
        batches.push(rows);
        ts.extend(t);
        origin.extend(o);
    }
    let (mut seg, fields, params) = {
        let data = d.read();
        (
            data.prepare_sealed(m.segment_id, m.partition_id, batches, ts)
                .map_err(|e| e.to_string())?,
            data.vector_fields().to_vec(),
            data.index_params(),
        )
    };
    if m.compaction_timestamp > 0 {
        seg.set_origin(m.compaction_timestamp, origin)
            .map_err(|e| format!("segment {}: {e}", m.segment_id))?;
    }
    if seg.len() >= params.min_rows {
        for (f, name) in fields.iter().enumerate() {
            if seg.vectors(f).is_some_and(|c| c.is_sparse()) {
                // Sparse vectors are searched row by row: there is no graph to build.
                continue;
            }
            let path = sluice_types::storage::segment_index_path(
                m.collection_id,
                m.partition_id,
                m.segment_id,
                name,
                m.compaction_timestamp,
            );
            let index = index_for(storage, &path, &seg, f, params).await?;
            seg.set_index(f, index);
        }
    }
    let rows = seg.len();
    d.write().install_sealed(seg).map_err(|e| e.to_string())?;
    tracing::debug!(segment = m.segment_id, rows, "sealed segment loaded");
    Ok(())
}

/// The index stored at `path` if it fits the segment, else one built now (and stored).
async fn index_for(
    storage: &StorageConfig,
    path: &str,
    seg: &Segment,
    f: usize,
    params: IndexParams,
) -> Result<AnnIndex, String> {
    use object_store::ObjectStoreExt;
    let col = seg.vectors(f).ok_or("no such vector field")?;
    let object = object_store::path::Path::from(path);
    if let Ok(got) = storage.store.get(&object).await
        && let Ok(bytes) = got.bytes().await
    {
        match AnnIndex::from_bytes(&bytes, col.dim, seg.len(), params) {
            Ok(i) => return Ok(i),
            Err(e) => {
                tracing::warn!(path, error = %e, "the stored index does not fit; building it again")
            }
        }
    }
    let (data, dim) = (col.data.clone(), col.dim);
    let index = tokio::task::spawn_blocking(move || AnnIndex::build(&data, dim, params))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    match index.to_bytes() {
        Ok(bytes) => {
            if let Err(e) = storage.store.put(&object, bytes.into()).await {
                tracing::warn!(path, error = %e, "storing the index failed (it is built again on the next load)");
            }
        }
        Err(e) => tracing::warn!(path, error = %e, "serialising the index failed"),
    }
    Ok(index)
}

fn apply(host: &Arc<QueryHost>, wal: &dyn ShardLog, m: &ImmutableMessage) -> Result<(), String> {
    let Ok(ty) = m.message_type() else {
        return Ok(());
    };
    let vchannel = m.vchannel_str().unwrap_or_default().to_owned();
    let ts = m.timestamp().ok().flatten().map_or(0, |t| t.0);
    let max = host.storage.max_body_bytes;
    match ty {
        MessageType::CreateCollection => {
            if let Ok(h) = m.header::<CreateCollectionHeader>()
                && h.schema.is_some()
            {
                delegator(host, wal, &vchannel, h.collection_id, h.schema, true);
            }
        }
        MessageType::Insert => {
            let Ok(h) = m.header::<InsertHeader>() else {
                return Ok(());
            };
            let Some(part) = h.partitions.first() else {
                return Ok(());
            };
            let Some(d) = delegator(host, wal, &vchannel, h.collection_id, None, true) else {
                return Ok(());
            };
            let schema = d.read().schema().clone();
            match decode_insert_bytes(&schema, m.payload(), part.rows, max) {
                Ok(batch) => d
                    .write()
                    .insert(part.segment_id, part.partition_id, batch, ts)
                    .map_err(|e| e.to_string())?,
                Err(e) => {
                    tracing::error!(id = %m.id(), error = %e, "an insert in the log does not decode; its rows are not searchable")
                }
            }
        }
        MessageType::Delete => {
            let Ok(h) = m.header::<DeleteHeader>() else {
                return Ok(());
            };
            let Some(d) = delegator(host, wal, &vchannel, h.collection_id, None, true) else {
                return Ok(());
            };
            let schema = d.read().schema().clone();
            match decode_delete(&schema, m.payload(), h.rows, max) {
                Ok(keys) => d
                    .write()
                    .delete(keys.as_ref(), ts)
                    .map_err(|e| e.to_string())?,
                Err(e) => {
                    tracing::error!(id = %m.id(), error = %e, "a delete in the log does not decode; skipped")
                }
            }
        }
        MessageType::SchemaChange => {
            if let Ok(h) = m.header::<SchemaChangeHeader>() {
                if let Some(schema) = h.schema
                    && let Some(d) = delegator(host, wal, &vchannel, h.collection_id, None, true)
                {
                    d.write().set_schema(schema).map_err(|e| e.to_string())?;
                }
                hand_off(host, &vchannel, h.collection_id, &h.flushed_segment_ids);
            }
        }
        MessageType::Flush => {
            if let Ok(h) = m.header::<FlushHeader>() {
                hand_off(host, &vchannel, h.collection_id, &[h.segment_id]);
            }
        }
        MessageType::ManualFlush => {
            if let Ok(h) = m.header::<ManualFlushHeader>() {
                hand_off(host, &vchannel, h.collection_id, &h.segment_ids);
            }
        }
        MessageType::DropCollection => {
            if let Ok(h) = m.header::<DropCollectionHeader>() {
                host.shards.write().retain(|v, d| {
                    !(d.collection() == h.collection_id && (vchannel.is_empty() || *v == vchannel))
                });
            }
        }
        MessageType::DropPartition => {
            if let Ok(h) = m.header::<DropPartitionHeader>()
                && let Some(d) = host.shards.read().get(&vchannel)
                && d.collection() == h.collection_id
            {
                d.write().drop_partition(h.partition_id);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Waits (in the background) for the manifests of `segments` and swaps each in for its
/// growing rows.
fn hand_off(host: &Arc<QueryHost>, vchannel: &str, collection: i64, segments: &[i64]) {
    let Some(d) = host.shards.read().get(vchannel).cloned() else {
        return;
    };
    if d.collection() != collection {
        return;
    }
    for &segment in segments {
        let (host, d) = (host.clone(), d.clone());
        tokio::spawn(async move {
            let key = host.storage.manifest_key(collection, segment);
            let mut delay = Duration::from_millis(50);
            loop {
                if !host
                    .shards
                    .read()
                    .get(d.vchannel())
                    .is_some_and(|x| Arc::ptr_eq(x, &d))
                {
                    return; // the shard went (dropped, or the WAL moved)
                }
                match host.storage.meta.get(&key).await {
                    Ok(Some(kv)) => {
                        use prost::Message as _;
                        match SegmentManifest::decode(kv.value.as_ref()) {
                            Ok(m) => {
                                if let Err(e) = load_segment(&host.storage, &d, &m).await {
                                    tracing::warn!(segment, error = %e, "loading a sealed segment failed; its rows stay growing");
                                }
                            }
                            Err(e) => tracing::warn!(key, error = %e, "a manifest does not decode"),
                        }
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(key, error = %e, "reading a manifest failed"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        });
    }
}

/// The index settings in a collection's properties; unreadable ones (the coordinator refuses
/// them, so only an older or foreign writer leaves them) are the node's defaults.
pub(crate) fn index_settings(info: &pb::CollectionInfo) -> IndexSettings {
    IndexSettings::from_properties(&info.properties).unwrap_or_else(|e| {
        tracing::warn!(collection = info.collection_id, error = %e, "ignoring the collection's index settings");
        IndexSettings::default()
    })
}

/// What a host keeps of one collection's catalog record.
#[derive(Clone, Debug, PartialEq)]
struct CatalogView {
    id: i64,
    released: bool,
    settings: IndexSettings,
    ttl_ms: Option<u64>,
    partitions: Vec<i64>,
}

impl CatalogView {
    fn of(c: &pb::CollectionInfo) -> CatalogView {
        CatalogView {
            id: c.collection_id,
            released: c.load_state == pb::LoadState::Released as i32,
            settings: index_settings(c),
            ttl_ms: sluice_types::ttl::ttl_ms(&c.properties).unwrap_or_else(|e| {
                tracing::warn!(collection = c.collection_id, error = %e, "ignoring the collection's TTL");
                None
            }),
            partitions: c.partitions.iter().map(|p| p.partition_id).collect(),
        }
    }
}

/// Keeps `released`, `index_settings`, `ttls` and `partitions` equal to the catalog's. Ends
/// with the host.
async fn watch_load_states(host: std::sync::Weak<QueryHost>) {
    use prost::Message as _;
    let Some(h) = host.upgrade() else { return };
    let mut states = crate::mirror::mirror(
        h.storage.meta.clone(),
        sluice_coord::catalog::collections_prefix(&h.storage.meta_root),
        |value| {
            pb::CollectionInfo::decode(value)
                .ok()
                .map(|c| CatalogView::of(&c))
        },
    );
    drop(h);
    // The mirror starts empty: its partitions count once it has read the catalog (a value
    // after the first).
    let mut scanned = states.has_changed().unwrap_or(false);
    loop {
        let (released, settings, ttls) = {
            let states = states.borrow_and_update();
            if scanned && let Some(h) = host.upgrade() {
                let partitions = states
                    .values()
                    .map(|c| (c.id, c.partitions.clone()))
                    .collect();
                h.partitions.send_replace(Some(partitions));
            }
            let released = states
                .values()
                .filter(|c| c.released)
                .map(|c| c.id)
                .collect();
            let settings = states
                .values()
                .filter(|c| c.settings != IndexSettings::default())
                .map(|c| (c.id, c.settings))
                .collect();
            let ttls = states
                .values()
                .filter_map(|c| Some((c.id, c.ttl_ms?)))
                .collect();
            (released, settings, ttls)
        };
        let Some(h) = host.upgrade() else { return };
        h.set_catalog(released, settings, ttls);
        drop(h);
        if states.changed().await.is_err() {
            return;
        }
        scanned = true;
    }
}

/// How long a feed waits for the host's first read of the catalog.
const CATALOG_FIRST_READ: Duration = Duration::from_secs(30);

impl QueryHost {
    /// The partitions of every collection in the catalog, once the host has read it (waits,
    /// bounded, for the first read; `None` after that: every sealed segment is loaded).
    async fn catalog_partitions(&self) -> Option<HashMap<i64, Vec<i64>>> {
        let mut rx = self.partitions.subscribe();
        match tokio::time::timeout(CATALOG_FIRST_READ, rx.wait_for(Option::is_some)).await {
            Ok(Ok(p)) => p.clone(),
            _ => {
                tracing::warn!("the catalog was not read yet; loading every sealed segment");
                None
            }
        }
    }

    /// Takes the catalog's released collections, index settings and TTLs.
    fn set_catalog(
        &self,
        released: std::collections::HashSet<i64>,
        settings: HashMap<i64, IndexSettings>,
        ttls: HashMap<i64, u64>,
    ) {
        // Reads take a TTL change at once; nothing is rebuilt.
        *self.ttls.write() = ttls;
        let mut rebuild = false;
        {
            let mut cur = self.released.write();
            if *cur != released {
                *cur = released;
                rebuild = true;
            }
        }
        let changed: std::collections::BTreeSet<i64> = {
            let mut cur = self.index_settings.write();
            let changed = cur
                .keys()
                .chain(settings.keys())
                .filter(|c| cur.get(c) != settings.get(c))
                .copied()
                .collect();
            *cur = settings;
            changed
        };
        // A collection whose shards hold no index yet (the usual case: an index made right
        // after the collection) takes its settings in place; one with indexed segments is
        // rebuilt so that they are indexed again with them.
        for collection in changed {
            let params = self.index_params(collection);
            for d in self.shards.read().values() {
                if d.collection() != collection {
                    continue;
                }
                let mut data = d.write();
                if data.segments().iter().any(|&(.., indexed)| indexed) {
                    rebuild = true;
                } else {
                    data.set_index_params(params);
                }
            }
        }
        if rebuild {
            self.load_gen.send_modify(|g| *g += 1);
        }
    }

    /// The oldest insert timestamp a read of `collection` at `t` sees (its TTL; 0: every row).
    fn expired_before(&self, collection: i64, t: u64) -> u64 {
        sluice_types::ttl::expired_before(t, self.ttls.read().get(&collection).copied())
    }

    /// The HNSW parameters of `collection`'s sealed segments: the node's, with what the
    /// collection sets in their place.
    pub fn index_params(&self, collection: i64) -> IndexParams {
        let settings = self.index_settings.read().get(&collection).copied();
        self.config.index.with(&settings.unwrap_or_default())
    }
}

/// The `Query` gRPC service.
#[derive(Clone, Debug)]
pub struct QueryService {
    host: Arc<QueryHost>,
}

impl QueryService {
    /// The service over `host`.
    pub fn new(host: Arc<QueryHost>) -> QueryService {
        QueryService { host }
    }

    /// As a tonic server.
    pub fn server(self) -> pb::query_server::QueryServer<QueryService> {
        pb::query_server::QueryServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

#[tonic::async_trait]
impl pb::query_server::Query for QueryService {
    async fn search(
        &self,
        request: tonic::Request<pb::SearchRequest>,
    ) -> Result<tonic::Response<pb::SearchResponse>, tonic::Status> {
        measured("search", self.host.search(request.into_inner())).await
    }

    async fn query(
        &self,
        request: tonic::Request<pb::QueryRequest>,
    ) -> Result<tonic::Response<pb::QueryResponse>, tonic::Status> {
        measured("query", self.host.query(request.into_inner())).await
    }

    async fn get(
        &self,
        request: tonic::Request<pb::GetRequest>,
    ) -> Result<tonic::Response<pb::QueryResponse>, tonic::Status> {
        measured("get", self.host.get(request.into_inner())).await
    }
}

/// Runs a read, counting it (`sluice_query_requests_total{kind, code}`) and timing it
/// (`sluice_query_request_seconds{kind}`).
async fn measured<T>(
    kind: &'static str,
    read: impl std::future::Future<Output = Result<T, ReadError>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let started = std::time::Instant::now();
    let r = read.await;
    let code = match &r {
        Ok(_) => "OK",
        Err(e) => e.code.name(),
    };
    metrics::counter!("sluice_query_requests_total", "kind" => kind, "code" => code).increment(1);
    metrics::histogram!("sluice_query_request_seconds", "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    r.map(tonic::Response::new).map_err(|e| e.to_status())
}
