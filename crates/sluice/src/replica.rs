//! Replica delegators on a query worker: the shards the coordinator placed here
//! (`{root}/query/replica/`) get delegators fed from their WAL's owner over the network
//! (`Consume`, through the client, which follows the WAL when it moves and resumes without a
//! gap), with the collection's schema from the catalog. Which partitions a collection has comes
//! from the catalog too (mirrored), so a replica that starts or restarts does not load the sealed
//! segments of a partition dropped before its flush checkpoint (the log it replays no longer
//! holds the DropPartition).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message as _;
use sluice_client::{Client, ReadRequest};
use sluice_coord::catalog::{collection_key, collections_prefix};
use sluice_coord::keys::Keys;
use sluice_node::query::{LogStream, QueryFeed, QueryHost, ShardLog};
use sluice_proto::v1;
use sluice_storage::flusher::StorageConfig;
use sluice_types::schema::CollectionSchema;
use sluice_types::{DeliverPolicy, MessageFilter, MessageId, PChannel, Timestamp, VChannel};
use tokio::sync::watch;

/// The catalog's collections by key, as the meta store holds them now.
type CatalogMirror = watch::Receiver<BTreeMap<String, v1::CollectionInfo>>;

/// A pchannel's log as a replica reads it: remotely, only the vchannels placed here.
struct RemoteLog {
    client: Client,
    pchannel: PChannel,
    /// (vchannel, collection, schema) of every replica placed here on this pchannel.
    shards: Vec<(String, i64, CollectionSchema)>,
    catalog: CatalogMirror,
    meta_root: String,
}

impl ShardLog for RemoteLog {
    fn pchannel(&self) -> &str {
        self.pchannel.as_str()
    }

    fn wants(&self, vchannel: &str) -> bool {
        self.shards.iter().any(|(v, _, _)| v == vchannel)
    }

    fn schemas(&self) -> Vec<(String, i64, CollectionSchema)> {
        self.shards.clone()
    }

    fn schema(&self, vchannel: &VChannel) -> Option<CollectionSchema> {
        self.shards
            .iter()
            .find(|(v, _, _)| v == vchannel.as_str())
            .map(|(_, _, s)| s.clone())
    }

    fn partitions(&self, vchannel: &VChannel) -> Option<Vec<i64>> {
        let (_, collection, _) = self
            .shards
            .iter()
            .find(|(v, _, _)| v == vchannel.as_str())?;
        let key = collection_key(&self.meta_root, &collection.to_string());
        // Not mirrored (yet): load every segment and rely on the log, as before the mirror.
        let catalog = self.catalog.borrow();
        let info = catalog.get(&key)?;
        Some(info.partitions.iter().map(|p| p.partition_id).collect())
    }

    fn read(&self, start: Option<(MessageId, Timestamp)>) -> Result<LogStream, String> {
        let (policy, filters) = match start {
            Some((id, after)) => (
                DeliverPolicy::StartFrom(id),
                vec![MessageFilter::TimeTickGt(after)],
            ),
            None => (DeliverPolicy::All, Vec::new()),
        };
        // One vchannel: only its messages (and the pchannel's timeticks) cross the network.
        let vchannel = match self.shards.as_slice() {
            [(v, _, _)] => Some(VChannel::new(v).map_err(|e| e.to_string())?),
            _ => None,
        };
        let reader = self.client.read(ReadRequest {
            pchannel: self.pchannel.clone(),
            vchannel,
            policy,
            filters,
        });
        Ok(Box::pin(futures::stream::unfold(
            reader,
            |mut r| async move {
                let m = r.next().await?;
                Some((m.map_err(|e| e.to_string()), r))
            },
        )))
    }

    fn is_available(&self) -> bool {
        true
    }

    fn strong_guarantee(&self, _vchannel: &VChannel) -> Option<u64> {
        // Not the owner: a STRONG read waits for the current time (reads spread to replicas
        // are not STRONG; a forwarded one may be).
        None
    }
}

/// How long a worker waits for its first view of the catalog before starting replicas.
const CATALOG_FIRST_SCAN: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the replicas placed on query worker `node_id` at `address` until the process ends.
pub(crate) async fn follow(
    host: Arc<QueryHost>,
    client: Client,
    storage: Arc<StorageConfig>,
    node_id: u64,
    address: String,
) {
    let mut placements = sluice_node::mirror::mirror(
        storage.meta.clone(),
        Keys::new(storage.meta_root.clone()).replica_prefix(),
        |v| v1::ReplicaPlacement::decode(v).ok(),
    );
    let catalog = sluice_node::mirror::mirror(
        storage.meta.clone(),
        collections_prefix(&storage.meta_root),
        |v| v1::CollectionInfo::decode(v).ok(),
    );
    // The first feed reads which partitions are live: wait (bounded) for the mirror's first
    // scan, so it does not start from an empty catalog.
    let mut scanned = catalog.clone();
    if tokio::time::timeout(CATALOG_FIRST_SCAN, scanned.changed())
        .await
        .is_err()
    {
        tracing::warn!("the catalog is not mirrored yet; replicas load every sealed segment");
    }
    // Per pchannel: the (vchannel, collection) fed, and the feed.
    let mut running: BTreeMap<String, (BTreeSet<(String, i64)>, QueryFeed)> = BTreeMap::new();
    loop {
        let mut wanted: BTreeMap<String, BTreeSet<(String, i64)>> = BTreeMap::new();
        for p in placements.borrow_and_update().values() {
            if p.node_id == node_id && p.address == address {
                match VChannel::new(&p.vchannel) {
                    Ok(v) => {
                        wanted
                            .entry(v.pchannel_str().to_owned())
                            .or_default()
                            .insert((p.vchannel.clone(), p.collection_id));
                    }
                    Err(e) => {
                        tracing::warn!(vchannel = %p.vchannel, error = %e, "a replica of a malformed vchannel")
                    }
                }
            }
        }
        let stale: Vec<String> = running
            .iter()
            .filter(|(p, (set, _))| wanted.get(*p) != Some(set))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            if let Some((_, feed)) = running.remove(&p) {
                feed.stop().await;
            }
        }
        for (p, set) in wanted {
            if running.contains_key(&p) {
                continue;
            }
            match start(&host, &client, &storage, &catalog, &p, &set).await {
                Ok(feed) => {
                    tracing::info!(pchannel = %p, shards = set.len(), "serving replica delegators");
                    running.insert(p, (set, feed));
                }
                Err(e) => {
                    tracing::warn!(pchannel = %p, error = %e, "starting replica delegators failed; retrying")
                }
            }
        }
        tokio::select! {
            r = placements.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

async fn start(
    host: &Arc<QueryHost>,
    client: &Client,
    storage: &StorageConfig,
    catalog: &CatalogMirror,
    pchannel: &str,
    set: &BTreeSet<(String, i64)>,
) -> Result<QueryFeed, String> {
    let mut shards = Vec::new();
    for (vchannel, collection) in set {
        let key = collection_key(&storage.meta_root, &collection.to_string());
        let kv = storage
            .meta
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("collection {collection} is gone"))?;
        let info = v1::CollectionInfo::decode(kv.value.as_ref()).map_err(|e| e.to_string())?;
        let schema = info
            .schema
            .ok_or_else(|| format!("collection {collection} has no schema"))?;
        shards.push((vchannel.clone(), *collection, schema));
    }
    let log = RemoteLog {
        client: client.clone(),
        pchannel: PChannel::new(pchannel).map_err(|e| e.to_string())?,
        shards,
        catalog: catalog.clone(),
        meta_root: storage.meta_root.clone(),
    };
    Ok(host.serve_log(Arc::new(log)))
}
