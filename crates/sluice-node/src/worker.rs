//! A query worker (`sluice querynode`): holds the sealed segments the coordinator placed on it
//! and answers delegators' reads over them (see `proto/sluice/v1/worker.proto`).
//!
//! The worker follows `{root}/query/placement/`: a segment placed on it (its node id and
//! address) is loaded from object storage — the Parquet rows and the ANN indexes stored next to
//! them (built and stored when missing) — into a shard per (vchannel, collection) with the
//! collection's schema from the catalog; a segment placed elsewhere, or no longer placed, is
//! dropped. It knows nothing of deletes or newer versions of its rows: every read names the rows
//! gone at its timestamp.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prost::Message as _;
use sluice_proto::v1 as pb;
use sluice_query::{Delegator, IndexParams, Scope, ShardData, TermStats};
use sluice_storage::flusher::StorageConfig;
use sluice_types::ErrorCode;
use sluice_types::message::pb::SegmentManifest;
use sluice_types::schema::CollectionSchema;

use crate::query::{
    QueryConfig, ReadError, check_search, hits_to_pb, keys_from_pb, load_segment, parse_filter,
    respond, search_spec,
};

/// The segments placed on this worker, and the shards holding them.
pub struct QueryWorker {
    storage: Arc<StorageConfig>,
    config: QueryConfig,
    node_id: u64,
    address: String,
    /// Per vchannel: the shard of the collection whose segments are loaded here.
    shards: RwLock<HashMap<String, Arc<Delegator>>>,
    /// The replica delegators of this process, if it runs any.
    replicas: std::sync::OnceLock<Arc<crate::query::QueryHost>>,
}

impl std::fmt::Debug for QueryWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryWorker")
            .field("node_id", &self.node_id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl QueryWorker {
    /// A worker registered as `node_id` at `address`, following the placements under `keys`'s
    /// root until dropped.
    pub fn start(
        storage: Arc<StorageConfig>,
        config: QueryConfig,
        node_id: u64,
        address: String,
    ) -> Arc<QueryWorker> {
        let worker = Arc::new(QueryWorker {
            storage,
            config,
            node_id,
            address,
            shards: RwLock::new(HashMap::new()),
            replicas: std::sync::OnceLock::new(),
        });
        tokio::spawn(follow(Arc::downgrade(&worker)));
        worker
    }

    /// Reports the replica delegators of `host` in `Status`.
    pub fn set_replicas(&self, host: Arc<crate::query::QueryHost>) {
        let _ = self.replicas.set(host);
    }

    /// The segments loaded here, ascending.
    pub fn loaded(&self) -> Vec<i64> {
        self.loaded_versions().into_keys().collect()
    }

    /// The segments loaded here and the version (compaction timestamp) each is held at.
    fn loaded_versions(&self) -> BTreeMap<i64, u64> {
        let mut out = BTreeMap::new();
        for d in self.shards.read().values() {
            let data = d.read();
            for s in data.segments().into_iter().filter(|s| s.2) {
                out.insert(s.0, data.segment_version(s.0).unwrap_or(0));
            }
        }
        out
    }

    /// The gRPC service.
    pub fn server(self: &Arc<Self>) -> pb::query_worker_server::QueryWorkerServer<WorkerService> {
        pb::query_worker_server::QueryWorkerServer::new(WorkerService {
            worker: self.clone(),
        })
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
    }

    /// The shard a read names, its segments all loaded, and the read's scope.
    fn scoped(
        &self,
        scope: Option<&pb::SegmentScope>,
    ) -> Result<(Arc<Delegator>, Scope, u64), ReadError> {
        let scope = scope.ok_or_else(|| ReadError::invalid("a worker read needs a scope"))?;
        let d = self
            .shards
            .read()
            .get(&scope.vchannel)
            .filter(|d| d.collection() == scope.collection_id)
            .cloned();
        let ids: HashMap<i64, u64> = scope
            .segment_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, scope.segment_versions.get(i).copied().unwrap_or(0)))
            .collect();
        let missing = match &d {
            Some(d) => d.read().missing(&ids),
            None => {
                let mut all: Vec<i64> = ids.keys().copied().collect();
                all.sort_unstable();
                all
            }
        };
        if !missing.is_empty() {
            return Err(ReadError::new(
                ErrorCode::NotReady,
                format!(
                    "query worker {} does not hold segments {missing:?} (being loaded, moved or reloaded after a compaction); retry",
                    self.address
                ),
            ));
        }
        let d = d.expect("no missing segments, so the shard exists");
        let hidden = scope
            .hidden
            .iter()
            .map(|h| (h.segment_id, h.rows.iter().copied().collect()))
            .collect();
        Ok((
            d,
            Scope::of(ids.into_keys(), hidden).with_expiry(scope.expired_before),
            scope.mvcc_timestamp,
        ))
    }

    /// The catalog's schema of `collection` and its HNSW parameters.
    async fn schema(&self, collection: i64) -> Result<(CollectionSchema, IndexParams), String> {
        let key =
            sluice_coord::catalog::collection_key(&self.storage.meta_root, &collection.to_string());
        let info = self
            .storage
            .meta
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the collection is gone")?;
        let info = pb::CollectionInfo::decode(info.value.as_ref()).map_err(|e| e.to_string())?;
        let params = self.config.index.with(&crate::query::index_settings(&info));
        let schema = info
            .schema
            .ok_or_else(|| "the collection has no schema".to_owned())?;
        Ok((schema, params))
    }

    /// Takes the schema a read comes with when it is newer than the shard's.
    fn refresh_schema(&self, scope: Option<&pb::SegmentScope>) -> Result<(), ReadError> {
        let Some((scope, schema)) = scope.and_then(|s| Some((s, s.schema.as_ref()?))) else {
            return Ok(());
        };
        let d = self
            .shards
            .read()
            .get(&scope.vchannel)
            .filter(|d| d.collection() == scope.collection_id)
            .cloned();
        if let Some(d) = d
            && schema.version > d.read().schema().version
        {
            d.write()
                .set_schema(schema.clone())
                .map_err(|e| ReadError::invalid(format!("the read's schema: {e}")))?;
        }
        Ok(())
    }

    /// Answers a read over `scope` (its schema taken first when newer) with `read`.
    fn answer<T>(
        &self,
        scope: Option<&pb::SegmentScope>,
        read: impl FnOnce(&Delegator, &Scope, u64) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        self.refresh_schema(scope)?;
        let (d, scope, t) = self.scoped(scope)?;
        read(&d, &scope, t)
    }

    async fn load(&self, p: &pb::SegmentPlacement) -> Result<(), String> {
        let storage = &self.storage;
        let manifest = storage
            .meta
            .get(&storage.manifest_key(p.collection_id, p.segment_id))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("its manifest is gone")?;
        let manifest =
            SegmentManifest::decode(manifest.value.as_ref()).map_err(|e| e.to_string())?;
        let (schema, params) = self.schema(p.collection_id).await?;
        let d = {
            let mut shards = self.shards.write();
            let d = shards
                .get(&p.vchannel)
                .filter(|d| d.collection() == p.collection_id);
            match d {
                Some(d) => d.clone(),
                None => {
                    let data = ShardData::new(schema.clone(), params).map_err(|e| e.to_string())?;
                    let d = Arc::new(Delegator::new(&p.vchannel, p.collection_id, data));
                    shards.insert(p.vchannel.clone(), d.clone());
                    d
                }
            }
        };
        if d.read().schema().version < schema.version {
            d.write().set_schema(schema).map_err(|e| e.to_string())?;
        }
        if d.read().index_params() != params {
            d.write().set_index_params(params);
        }
        load_segment(storage, &d, &manifest).await
    }

    fn unload(&self, segment: i64) {
        let mut shards = self.shards.write();
        for d in shards.values() {
            d.write().remove_sealed(segment);
        }
        shards.retain(|_, d| !d.read().segments().is_empty());
    }
}

/// Loads what is placed here and drops what is not, at every placement change (and every few
/// seconds, to retry failed loads). Ends with the worker.
async fn follow(worker: std::sync::Weak<QueryWorker>) {
    let Some(w) = worker.upgrade() else { return };
    let mut placements = crate::mirror::mirror(
        w.storage.meta.clone(),
        sluice_coord::keys::Keys::new(w.storage.meta_root.clone()).placement_prefix(),
        |v| pb::SegmentPlacement::decode(v).ok(),
    );
    drop(w);
    let mut failed: HashMap<i64, u32> = HashMap::new();
    loop {
        let Some(w) = worker.upgrade() else { return };
        let mine: BTreeMap<i64, pb::SegmentPlacement> = placements
            .borrow_and_update()
            .values()
            .filter(|p| p.node_id == w.node_id && p.address == w.address)
            .map(|p| (p.segment_id, p.clone()))
            .collect();
        let loaded = w.loaded_versions();
        for id in loaded.keys().filter(|id| !mine.contains_key(id)) {
            tracing::info!(segment = id, "dropping a segment no longer placed here");
            w.unload(*id);
        }
        // New placements, and segments a compaction rewrote since they were loaded.
        let stale =
            |id: &i64, p: &pb::SegmentPlacement| loaded.get(id).is_none_or(|&v| v < p.version);
        for (id, p) in mine.iter().filter(|(id, p)| stale(id, p)) {
            match w.load(p).await {
                Ok(()) => {
                    failed.remove(id);
                    tracing::info!(segment = id, rows = p.rows, "loaded a placed segment");
                }
                Err(e) => {
                    let n = failed.entry(*id).or_default();
                    *n += 1;
                    tracing::warn!(segment = id, attempt = *n, error = %e, "loading a placed segment failed; retrying");
                }
            }
        }
        drop(w);
        let retry = if failed.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            r = placements.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// A read's answer as the handlers return it (tonic's own `Result`, large `Status` and all).
#[allow(clippy::result_large_err)]
fn reply<T>(answer: Result<T, ReadError>) -> Result<tonic::Response<T>, tonic::Status> {
    answer.map(tonic::Response::new).map_err(|e| e.to_status())
}

/// The `QueryWorker` gRPC service.
#[derive(Debug)]
pub struct WorkerService {
    worker: Arc<QueryWorker>,
}

#[tonic::async_trait]
impl pb::query_worker_server::QueryWorker for WorkerService {
    async fn search_segments(
        &self,
        request: tonic::Request<pb::WorkerSearchRequest>,
    ) -> Result<tonic::Response<pb::SearchResponse>, tonic::Status> {
        let req = request.into_inner();
        let search = req.search.unwrap_or_default();
        reply(self.worker.answer(req.scope.as_ref(), |d, scope, t| {
            let metric = check_search(&search)?;
            let mut spec = search_spec(&search, metric, d)?;
            spec.term_stats = req.term_stats.as_ref().map(|s| TermStats {
                rows: s.rows,
                terms: s.terms,
                rows_with_term: s.rows_with_term.clone(),
            });
            let used = metric.unwrap_or(self.worker.config.index.metric);
            let hits = d.read().search_in(&spec, t, scope)?;
            Ok(pb::SearchResponse {
                results: hits
                    .iter()
                    .map(hits_to_pb)
                    .collect::<Result<Vec<_>, ReadError>>()?,
                mvcc_timestamp: t,
                metric: crate::query::metric_to_pb(used) as i32,
            })
        }))
    }

    async fn query_segments(
        &self,
        request: tonic::Request<pb::WorkerQueryRequest>,
    ) -> Result<tonic::Response<pb::QueryResponse>, tonic::Status> {
        let req = request.into_inner();
        let query = req.query.unwrap_or_default();
        reply(self.worker.answer(req.scope.as_ref(), |d, scope, t| {
            let filter = parse_filter(&query.filter, d)?;
            let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
            let batch = d.read().query_in(
                filter.as_ref(),
                &query.partition_ids,
                &query.output_fields,
                limit,
                t,
                scope,
            )?;
            respond(batch, t)
        }))
    }

    async fn get_segments(
        &self,
        request: tonic::Request<pb::WorkerGetRequest>,
    ) -> Result<tonic::Response<pb::QueryResponse>, tonic::Status> {
        let req = request.into_inner();
        let get = req.get.unwrap_or_default();
        reply(self.worker.answer(req.scope.as_ref(), |d, scope, t| {
            let keys = keys_from_pb(get.keys.as_ref())?;
            respond(d.read().get_in(&keys, &get.output_fields, t, scope)?, t)
        }))
    }

    async fn status(
        &self,
        _request: tonic::Request<pb::WorkerStatusRequest>,
    ) -> Result<tonic::Response<pb::WorkerStatusResponse>, tonic::Status> {
        let (replica_reads, replica_vchannels) = self
            .worker
            .replicas
            .get()
            .map(|h| h.served())
            .unwrap_or_default();
        Ok(tonic::Response::new(pb::WorkerStatusResponse {
            segment_ids: self.worker.loaded(),
            replica_vchannels,
            replica_reads,
        }))
    }
}
