//! Replica delegators on a query worker: the shards the coordinator placed here
//! (`{root}/query/replica/`) get delegators fed from their WAL's owner over the network
//! (`Consume`, through the client, which follows the WAL when it moves and resumes without a
//! gap), with the collection's schema from the catalog. Which partitions live comes from the
//! host's view of the catalog (`QueryHost`), so a replica that starts or restarts does not load
//! the sealed segments of a partition dropped before its flush checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message as _;
use sluice_client::{Client, ReadRequest};
use sluice_coord::keys::Keys;
use sluice_node::query::{LogStream, QueryFeed, QueryHost, ShardLog};
use sluice_proto::v1;
use sluice_storage::flusher::StorageConfig;
use sluice_types::schema::CollectionSchema;
use sluice_types::{DeliverPolicy, MessageFilter, MessageId, PChannel, Timestamp, VChannel};

/// A pchannel's log as a replica reads it: remotely, only the vchannels placed here.
struct RemoteLog {
    client: Client,
    pchannel: PChannel,
    /// (vchannel, collection, schema) of every replica placed here on this pchannel.
    shards: Vec<(String, i64, CollectionSchema)>,
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
            match start(&host, &client, &storage, &p, &set).await {
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
    pchannel: &str,
    set: &BTreeSet<(String, i64)>,
) -> Result<QueryFeed, String> {
    let mut shards = Vec::new();
    for (vchannel, collection) in set {
        let key =
            sluice_coord::catalog::collection_key(&storage.meta_root, &collection.to_string());
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
    };
    Ok(host.serve_log(Arc::new(log)))
}
