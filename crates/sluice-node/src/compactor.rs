//! The compactor: one per open WAL, it rewrites the sealed segments of the WAL's vchannels
//! without the rows deletes and TTLs removed (`sluice_storage::compaction`).
//!
//! * **On its own**, every [`CompactionConfig::interval`]: at the timestamp
//!   [`CompactionConfig::retention`] ago (reads pinned to a snapshot younger than that keep
//!   seeing every row they saw), segments with at least
//!   [`CompactionConfig::min_removed_ratio`] of their rows removable. A vchannel with no new
//!   delete file since its last round and no TTL is skipped without reading anything.
//! * **When asked** (`Coordinator.Compact` writes `{root}/compaction/{id}`): at the request's
//!   timestamp, every segment with a removable row, then `{root}/compaction-done/{id}/{vchannel}`
//!   for each of the request's vchannels on this WAL. A WAL opened later (moved here) does the
//!   vchannels not done yet.
//!
//! A compacted segment held by this node's delegators is loaded again at once (the memory of
//! the removed rows goes); query workers load it when its placement's version changes. The
//! files it replaced are deleted [`CompactionConfig::sweep_after`] later.
//!
//! After the segments, the vchannel's delete files up to the compaction's timestamp (and the
//! flush checkpoint) are merged into one holding only the deletes still removing a committed
//! row (`sluice_storage::compaction::merge_deletes`); the files merged go
//! [`CompactionConfig::sweep_after`] later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use sluice_meta::Condition;
use sluice_proto::v1 as pb;
use sluice_storage::compaction::{Removals, compact_segment, merge_deletes, sweep, sweep_deletes};
use sluice_storage::flusher::{StorageConfig, flush_start};
use sluice_storage::rows::primary_key;
use sluice_storage::segments::{delete_manifests, segment_manifests};
use sluice_types::schema::CollectionSchema;
use sluice_wal::Wal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::query::QueryHost;

/// How compaction runs.
#[derive(Clone, Debug)]
pub struct CompactionConfig {
    /// How often a WAL's vchannels are looked at (0: never on its own; asked-for compactions
    /// still run). Default 60 s.
    pub interval: Duration,
    /// The smallest share of a segment's rows worth a rewrite on its own. Default 0.2.
    pub min_removed_ratio: f64,
    /// How far behind now compaction on its own stays. Default 10 minutes.
    pub retention: Duration,
    /// How long a replaced file stays for readers still reading it. Default 60 s.
    pub sweep_after: Duration,
    /// How often the node deletes the objects of the storage no manifest names (0: never).
    /// Default 1 hour.
    pub gc_interval: Duration,
    /// How old such an object must be to go. Default 1 hour.
    pub gc_grace: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            interval: Duration::from_secs(60),
            min_removed_ratio: 0.2,
            retention: Duration::from_secs(600),
            sweep_after: Duration::from_secs(60),
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
        }
    }
}

/// The storage's garbage collection on one node (`sluice_storage::gc`), every
/// [`CompactionConfig::gc_interval`]; stops when dropped. Nodes sharing a storage each run
/// one: deleting what another already deleted is harmless.
#[derive(Debug)]
pub(crate) struct Gc {
    cancel: CancellationToken,
}

impl Drop for Gc {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Gc {
    pub(crate) fn start(storage: Arc<StorageConfig>, config: &CompactionConfig) -> Gc {
        let cancel = CancellationToken::new();
        let (interval, grace) = (config.gc_interval, config.gc_grace);
        if !interval.is_zero() {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Err(e) = sluice_storage::gc::collect_garbage(&storage, grace).await {
                        tracing::warn!(error = %e, "collecting the storage's garbage failed; trying again later");
                    }
                }
            });
        }
        Gc { cancel }
    }
}

/// Compactions asked for, as the meta store holds them.
pub(crate) type Requests = watch::Receiver<BTreeMap<String, pb::CompactionInfo>>;

/// Follows the compactions asked for under `storage`'s root.
pub(crate) fn requests(storage: &StorageConfig) -> Requests {
    crate::mirror::mirror(
        storage.meta.clone(),
        sluice_coord::keys::Keys::new(storage.meta_root.clone()).compaction_prefix(),
        |v| pb::CompactionInfo::decode(v).ok(),
    )
}

/// A running compactor.
#[derive(Debug)]
pub struct Compactor {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Compactor {
    /// Starts compacting `wal`'s vchannels.
    pub(crate) fn start(
        wal: Wal,
        storage: Arc<StorageConfig>,
        query: Option<Arc<QueryHost>>,
        config: CompactionConfig,
        requests: Requests,
    ) -> Compactor {
        let cancel = CancellationToken::new();
        let run = Run {
            wal,
            storage,
            query,
            config,
            seen_deletes: HashMap::new(),
            done: HashSet::new(),
        };
        let task = tokio::spawn(run.run(requests, cancel.clone()));
        Compactor { cancel, task }
    }

    /// Stops it (a segment being rewritten is left as it was or fully rewritten).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

struct Run {
    wal: Wal,
    storage: Arc<StorageConfig>,
    query: Option<Arc<QueryHost>>,
    config: CompactionConfig,
    /// Per vchannel, the newest delete file's flush timestamp when it was last compacted on its
    /// own and its delete files merged (as far as the flush checkpoint allowed).
    seen_deletes: HashMap<String, u64>,
    /// (compaction id, vchannel) done.
    done: HashSet<(i64, String)>,
}

fn now_ts() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ms << sluice_types::ids::LOGICAL_BITS
}

impl Run {
    async fn run(mut self, mut requests: Requests, cancel: CancellationToken) {
        let auto = !self.config.interval.is_zero();
        let mut next_auto = tokio::time::Instant::now() + self.config.interval;
        loop {
            let asked: Vec<pb::CompactionInfo> =
                requests.borrow_and_update().values().cloned().collect();
            for req in asked {
                if cancel.is_cancelled() {
                    return;
                }
                self.asked(&req).await;
            }
            if auto && tokio::time::Instant::now() >= next_auto {
                self.on_its_own(&cancel).await;
                next_auto = tokio::time::Instant::now() + self.config.interval;
            }
            let wake = if auto {
                next_auto
            } else {
                tokio::time::Instant::now() + Duration::from_secs(3600)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = requests.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The vchannels of this WAL with their collection and schema.
    fn vchannels(&self) -> Vec<(String, i64, CollectionSchema)> {
        self.wal.schemas()
    }

    async fn asked(&mut self, req: &pb::CompactionInfo) {
        let keys = sluice_coord::keys::Keys::new(self.storage.meta_root.clone());
        let mine: Vec<(String, i64, CollectionSchema)> = self
            .vchannels()
            .into_iter()
            .filter(|(v, c, _)| {
                *c == req.collection_id
                    && req.vchannels.contains(v)
                    && !self.done.contains(&(req.compaction_id, v.clone()))
            })
            .collect();
        for (vchannel, collection, schema) in mine {
            let key = keys.compaction_done(req.compaction_id, &vchannel);
            match self.storage.meta.get(&key).await {
                Ok(Some(_)) => {
                    self.done.insert((req.compaction_id, vchannel));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading a compaction's progress failed; retrying later");
                    continue;
                }
            }
            match self
                .compact(&vchannel, collection, &schema, req.timestamp, 0.0)
                .await
            {
                Ok((report, _)) => {
                    let put = self
                        .storage
                        .meta
                        .put(
                            &key,
                            Bytes::from(report.encode_to_vec()),
                            Condition::None,
                            None,
                        )
                        .await;
                    match put {
                        Ok(_) => {
                            tracing::info!(
                                compaction = req.compaction_id,
                                vchannel,
                                segments = report.segments,
                                rows_removed = report.rows_removed,
                                "compaction of a vchannel done"
                            );
                            self.done.insert((req.compaction_id, vchannel));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "recording a compaction's progress failed")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(compaction = req.compaction_id, vchannel, error = %e, "compacting a vchannel failed; retrying later")
                }
            }
        }
    }

    async fn on_its_own(&mut self, cancel: &CancellationToken) {
        let at = now_ts().saturating_sub(
            (self.config.retention.as_millis() as u64) << sluice_types::ids::LOGICAL_BITS,
        );
        let vchannels = self.vchannels();
        let collections: std::collections::BTreeSet<i64> =
            vchannels.iter().map(|(_, c, _)| *c).collect();
        // Per vchannel, the newest delete file that counts at `at`.
        let mut newest_deletes: HashMap<String, u64> = HashMap::new();
        for collection in collections {
            match delete_manifests(&self.storage, Some(collection)).await {
                Ok(all) => {
                    for m in all.iter().filter(|m| m.min_timestamp <= at) {
                        let e = newest_deletes.entry(m.vchannel.clone()).or_default();
                        *e = (*e).max(m.flush_timestamp);
                    }
                }
                Err(e) => {
                    tracing::warn!(collection, error = %e, "listing delete files failed; compacting later");
                    return;
                }
            }
        }
        for (vchannel, collection, schema) in vchannels {
            if cancel.is_cancelled() {
                return;
            }
            let newest = newest_deletes.get(&vchannel).copied().unwrap_or(0);
            let has_ttl = self.ttl_ms(collection).await.is_some();
            if !has_ttl && self.seen_deletes.get(&vchannel).copied().unwrap_or(0) >= newest {
                continue;
            }
            match self
                .compact(
                    &vchannel,
                    collection,
                    &schema,
                    at,
                    self.config.min_removed_ratio,
                )
                .await
            {
                Ok((_, flushed_through)) => {
                    // Files the checkpoint kept from merging are looked at again next round.
                    self.seen_deletes
                        .insert(vchannel, newest.min(flushed_through.unwrap_or(0)));
                }
                Err(e) => {
                    tracing::warn!(vchannel, error = %e, "compacting a vchannel failed; retrying later")
                }
            }
        }
    }

    /// The collection's TTL from its catalog record (none when it has no record: a collection
    /// created through the log alone).
    async fn ttl_ms(&self, collection: i64) -> Option<u64> {
        let key =
            sluice_coord::catalog::collection_key(&self.storage.meta_root, &collection.to_string());
        let kv = self.storage.meta.get(&key).await.ok()??;
        let info = pb::CollectionInfo::decode(kv.value.as_ref()).ok()?;
        sluice_types::ttl::ttl_ms(&info.properties).ok()?
    }

    /// Compacts `vchannel`'s segments at `at`, then merges its delete files. Also returns the
    /// flush checkpoint's timestamp read first (`None`: none saved yet).
    async fn compact(
        &self,
        vchannel: &str,
        collection: i64,
        schema: &CollectionSchema,
        at: u64,
        min_ratio: f64,
    ) -> Result<(pb::VChannelCompaction, Option<u64>), String> {
        let mut report = pb::VChannelCompaction {
            vchannel: vchannel.to_owned(),
            ..pb::VChannelCompaction::default()
        };
        // Read before any segment manifest: every row older than it is in one of those.
        let flushed_through = flush_start(&self.storage, self.wal.pchannel().as_str())
            .await?
            .map(|(_, t)| t.0);
        let Ok(pk) = primary_key(schema) else {
            // No schema, no keys: nothing a delete names.
            return Ok((report, flushed_through));
        };
        let expired_before = sluice_types::ttl::expired_before(at, self.ttl_ms(collection).await);
        let removals = Removals::load(
            &self.storage,
            collection,
            vchannel,
            &pk.name,
            at,
            expired_before,
        )
        .await
        .map_err(|e| e.to_string())?;
        let segments = segment_manifests(&self.storage, Some(collection))
            .await
            .map_err(|e| e.to_string())?;
        for m in segments.iter().filter(|m| m.vchannel == vchannel) {
            let Some(done) = compact_segment(
                &self.storage,
                collection,
                m.segment_id,
                &pk.name,
                &removals,
                min_ratio,
            )
            .await
            .map_err(|e| format!("segment {}: {e}", m.segment_id))?
            else {
                continue;
            };
            report.segments += 1;
            report.segment_ids.push(m.segment_id);
            report.rows_removed += done.removed;
            report.bytes_before += done.bytes_before;
            report.bytes_after += done.manifest.data.as_ref().map_or(0, |f| f.bytes);
            if let Some(q) = &self.query
                && let Err(e) = q.reload_compacted(&done.manifest).await
            {
                tracing::warn!(segment = m.segment_id, error = %e, "loading a compacted segment failed; the older version stays loaded");
            }
            let (storage, grace, segment) =
                (self.storage.clone(), self.config.sweep_after, m.segment_id);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                match sweep(&storage, collection, segment).await {
                    Ok(n) => tracing::debug!(segment, files = n, "replaced files deleted"),
                    Err(e) => {
                        tracing::warn!(segment, error = %e, "deleting replaced files failed (the next compaction of the segment tries again)")
                    }
                }
            });
        }
        if let Some(through) = flushed_through {
            self.merge(vchannel, collection, &pk.name, at, through, &mut report)
                .await;
        }
        if let Some(q) = &self.query
            && report.segments > 0
        {
            // The rows compactions left out are gone from the delegator here: so are the
            // deletes that hid only them.
            q.forget_deletes(vchannel);
        }
        Ok((report, flushed_through))
    }

    /// Merges `vchannel`'s delete files (a failure is logged: the files stay as they are and
    /// the next compaction tries again), then sweeps the merged ones a while later.
    async fn merge(
        &self,
        vchannel: &str,
        collection: i64,
        pk: &str,
        at: u64,
        flushed_through: u64,
        report: &mut pb::VChannelCompaction,
    ) {
        let merged = merge_deletes(
            &self.storage,
            collection,
            vchannel,
            pk,
            at,
            flushed_through,
            report.segments > 0,
        )
        .await;
        match merged {
            Ok(Some(m)) => {
                report.delete_files_merged = m.files as u32;
                report.deletes_before = m.rows_before;
                report.deletes_after = m.rows_after;
                let (storage, grace, vchannel) = (
                    self.storage.clone(),
                    self.config.sweep_after,
                    vchannel.to_owned(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    match sweep_deletes(&storage, collection, &vchannel, flushed_through, grace)
                        .await
                    {
                        Ok(n) => {
                            tracing::debug!(vchannel, files = n, "merged delete files deleted")
                        }
                        Err(e) => {
                            tracing::warn!(vchannel, error = %e, "deleting merged delete files failed (the next merge tries again)")
                        }
                    }
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(vchannel, error = %e, "merging delete files failed; they stay as they are")
            }
        }
    }
}
