//! Query placement: which query worker (`sluice querynode`) serves each sealed segment.
//!
//! # Contract
//!
//! * The leader keeps `{root}/query/placement/{segment}` ([`SegmentPlacement`]) equal to a plan
//!   over the committed segment manifests of every *loaded* collection (created, not released)
//!   and the live query workers (`{root}/query/node/{id}`, leased like streaming nodes).
//! * A placement stays where it is while its worker is registered (no segment moves for balance
//!   alone: a move makes reads of the segment wait while the new worker loads it). A segment
//!   without a live worker goes to the worker with the fewest placed rows (ties: lowest id), the
//!   largest segments first, so a lost worker's segments spread over the others.
//! * Segments of released or dropped collections, and segments whose manifest is gone, lose their
//!   placement; with no query worker registered nothing is placed, and every delegator holds its
//!   sealed segments itself.
//! * Replicas: a loaded collection with `replicas` N > 1 gets, per shard, replicas 1..N-1 at
//!   `{root}/query/replica/{vchannel}/{r}` ([`ReplicaPlacement`]) on query workers, at most one
//!   replica of a shard per worker, each on the worker hosting the fewest replicas (ties:
//!   lowest id); a replica stays on its worker while the worker is registered. With fewer
//!   workers than replicas some replicas wait unplaced.
//! * The loop runs every [`PlacementConfig::interval`] and whenever the worker set changes; a
//!   failed round is logged and retried at the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_meta::{Condition, MetaStore};
use sluice_proto::v1::{
    CollectionInfo, CollectionState, LoadState, ReplicaPlacement, SegmentPlacement,
};
use sluice_types::message::pb::SegmentManifest;
use tokio::sync::watch;

use crate::keys::Keys;
use crate::registry::{NodeWatcher, OwnedTask};
use crate::{NodeId, Nodes, Result};

/// How the placement loop runs.
#[derive(Clone, Debug)]
pub struct PlacementConfig {
    /// How often the plan is compared with the stored placements. Default 500 ms.
    pub interval: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            interval: Duration::from_millis(500),
        }
    }
}

/// A sealed segment that needs a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedSegment {
    /// Its manifest's identity and size.
    pub segment_id: i64,
    /// Its collection.
    pub collection_id: i64,
    /// Its partition.
    pub partition_id: i64,
    /// Its vchannel.
    pub vchannel: String,
    /// Its rows.
    pub rows: u64,
    /// Its manifest's compaction timestamp (0: as flushed).
    pub version: u64,
}

/// The changes that make `current` follow the plan for `segments` over `workers`: placements
/// to write, and segments whose placement goes.
pub fn plan(
    segments: &[PlacedSegment],
    workers: &Nodes,
    current: &HashMap<i64, SegmentPlacement>,
) -> (Vec<SegmentPlacement>, Vec<i64>) {
    let live: BTreeMap<NodeId, &str> = workers
        .values()
        .filter(|w| !w.stopping)
        .map(|w| (w.id, w.address.as_str()))
        .collect();
    let wanted: HashMap<i64, &PlacedSegment> = segments.iter().map(|s| (s.segment_id, s)).collect();
    let mut gone: Vec<i64> = current
        .keys()
        .copied()
        .filter(|id| !wanted.contains_key(id) || live.is_empty())
        .collect();
    gone.sort_unstable();
    if live.is_empty() {
        return (Vec::new(), gone);
    }
    let mut load: BTreeMap<NodeId, u64> = live.keys().map(|&id| (id, 0)).collect();
    let mut homeless: Vec<&PlacedSegment> = Vec::new();
    let mut puts = Vec::new();
    for s in segments {
        let kept = current.get(&s.segment_id).filter(|p| {
            live.get(&NodeId(p.node_id))
                .is_some_and(|&address| address == p.address)
        });
        match kept {
            Some(p) => {
                *load.entry(NodeId(p.node_id)).or_default() += s.rows;
                if p.version != s.version || p.rows != s.rows {
                    // Compacted: the worker loads the new version where it is.
                    puts.push(SegmentPlacement {
                        rows: s.rows,
                        version: s.version,
                        ..p.clone()
                    });
                }
            }
            None => homeless.push(s),
        }
    }
    homeless.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.segment_id.cmp(&b.segment_id)));
    for s in homeless {
        let (&node, _) = load
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .expect("at least one live worker");
        *load.get_mut(&node).expect("a live worker") += s.rows;
        puts.push(SegmentPlacement {
            segment_id: s.segment_id,
            collection_id: s.collection_id,
            partition_id: s.partition_id,
            vchannel: s.vchannel.clone(),
            rows: s.rows,
            node_id: node.0,
            address: live[&node].to_owned(),
            version: s.version,
        });
    }
    (puts, gone)
}

/// A shard that needs `replicas` delegators (the WAL owner's is replica 0).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicatedShard {
    /// Its collection.
    pub collection_id: i64,
    /// Its vchannel.
    pub vchannel: String,
    /// Delegators wanted, the owner's included.
    pub replicas: u32,
}

/// The changes that make `current` (by (vchannel, replica)) follow the plan for `shards` over
/// `workers`: replica placements to write and (vchannel, replica) whose placement goes.
pub fn plan_replicas(
    shards: &[ReplicatedShard],
    workers: &Nodes,
    current: &HashMap<(String, u32), ReplicaPlacement>,
) -> (Vec<ReplicaPlacement>, Vec<(String, u32)>) {
    let live: BTreeMap<NodeId, &str> = workers
        .values()
        .filter(|w| !w.stopping)
        .map(|w| (w.id, w.address.as_str()))
        .collect();
    let wanted: HashMap<(&str, u32), &ReplicatedShard> = shards
        .iter()
        .flat_map(|s| (1..s.replicas).map(move |r| ((s.vchannel.as_str(), r), s)))
        .collect();
    let is_live = |p: &ReplicaPlacement| {
        live.get(&NodeId(p.node_id))
            .is_some_and(|&a| a == p.address)
    };
    let mut gone: Vec<(String, u32)> = current
        .iter()
        .filter(|((v, r), p)| {
            wanted
                .get(&(v.as_str(), *r))
                .is_none_or(|s| s.collection_id != p.collection_id)
                || !is_live(p)
        })
        .map(|(k, _)| k.clone())
        .collect();
    gone.sort();
    let mut hosted: BTreeMap<NodeId, usize> = live.keys().map(|&id| (id, 0)).collect();
    let mut on: HashMap<&str, Vec<NodeId>> = HashMap::new();
    for ((v, r), p) in current {
        if !gone.contains(&(v.clone(), *r)) {
            *hosted.entry(NodeId(p.node_id)).or_default() += 1;
            on.entry(v.as_str()).or_default().push(NodeId(p.node_id));
        }
    }
    let mut keys: Vec<(&str, u32)> = wanted.keys().copied().collect();
    keys.sort();
    let mut puts = Vec::new();
    for (v, r) in keys {
        if current.contains_key(&(v.to_owned(), r)) && !gone.contains(&(v.to_owned(), r)) {
            continue;
        }
        let taken = on.get(v).cloned().unwrap_or_default();
        let Some((&node, _)) = hosted
            .iter()
            .filter(|(id, _)| !taken.contains(id))
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
        else {
            continue;
        };
        *hosted.get_mut(&node).expect("a live worker") += 1;
        on.entry(v).or_default().push(node);
        puts.push(ReplicaPlacement {
            collection_id: wanted[&(v, r)].collection_id,
            vchannel: v.to_owned(),
            replica: r,
            node_id: node.0,
            address: live[&node].to_owned(),
        });
    }
    (puts, gone)
}

/// The placement loop of a leader; stops when dropped or [`Placement::shutdown`].
pub struct Placement {
    workers: NodeWatcher,
    task: OwnedTask,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement").finish_non_exhaustive()
    }
}

impl Placement {
    /// Starts watching query workers and placing segments.
    pub async fn start(
        store: Arc<dyn MetaStore>,
        keys: Keys,
        config: PlacementConfig,
    ) -> Result<Placement> {
        let workers = NodeWatcher::start(store.clone(), &keys.query_workers()).await?;
        let rx = workers.subscribe();
        let task = OwnedTask::spawn(move |cancel| async move {
            let mut rx = rx;
            loop {
                let workers = rx.borrow_and_update().clone();
                if let Err(e) = round(&store, &keys, &workers).await {
                    tracing::warn!(error = %e, "a query placement round failed; retrying");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(config.interval) => {}
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(Placement { workers, task })
    }

    /// The live query workers.
    pub fn workers(&self) -> watch::Receiver<Nodes> {
        self.workers.subscribe()
    }

    /// Stops the loop and the worker watch.
    pub async fn shutdown(self) {
        self.task.stop().await;
        self.workers.close().await;
    }
}

/// The segments of loaded collections (from the catalog and the manifests) and their shards
/// that want replicas.
async fn segments(
    store: &Arc<dyn MetaStore>,
    root: &str,
) -> Result<(Vec<PlacedSegment>, Vec<ReplicatedShard>)> {
    let (collections, _) = store
        .scan_prefix(&crate::catalog::collection_key(root, ""))
        .await?;
    let mut loaded: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut replicated = Vec::new();
    for kv in &collections {
        let Ok(info) = CollectionInfo::decode(kv.value.as_ref()) else {
            continue;
        };
        if info.state == CollectionState::Created as i32
            && info.load_state != LoadState::Released as i32
        {
            let partitions = info.partitions.iter().map(|p| p.partition_id).collect();
            loaded.insert(info.collection_id, partitions);
            if info.replicas > 1 {
                replicated.extend(info.vchannels.iter().map(|v| ReplicatedShard {
                    collection_id: info.collection_id,
                    vchannel: v.clone(),
                    replicas: info.replicas,
                }));
            }
        }
    }
    let (manifests, _) = store
        .scan_prefix(&sluice_types::storage::segment_manifests_prefix(root))
        .await?;
    let mut out = Vec::new();
    for kv in &manifests {
        let Ok(m) = SegmentManifest::decode(kv.value.as_ref()) else {
            tracing::warn!(key = %kv.key, "a segment manifest does not decode; not placed");
            continue;
        };
        let Some(partitions) = loaded.get(&m.collection_id) else {
            continue;
        };
        if m.data.is_none() || (!partitions.is_empty() && !partitions.contains(&m.partition_id)) {
            continue;
        }
        out.push(PlacedSegment {
            segment_id: m.segment_id,
            collection_id: m.collection_id,
            partition_id: m.partition_id,
            vchannel: m.vchannel,
            rows: m.rows,
            version: m.compaction_timestamp,
        });
    }
    out.sort_by_key(|s| s.segment_id);
    Ok((out, replicated))
}

async fn round(store: &Arc<dyn MetaStore>, keys: &Keys, workers: &Nodes) -> Result<()> {
    let (segs, replicated) = segments(store, keys.root()).await?;
    replicas(store, keys, workers, &replicated).await?;
    let (kvs, _) = store.scan_prefix(&keys.placement_prefix()).await?;
    let mut current = HashMap::new();
    for kv in kvs {
        match SegmentPlacement::decode(kv.value.as_ref()) {
            Ok(p) if keys.placement(p.segment_id) == kv.key => {
                current.insert(p.segment_id, p);
            }
            _ => {
                tracing::warn!(key = %kv.key, "removing a placement that does not decode");
                store.delete(&kv.key, Condition::None).await?;
            }
        }
    }
    let (puts, gone) = plan(&segs, workers, &current);
    for p in puts {
        tracing::info!(
            segment = p.segment_id,
            worker = p.node_id,
            rows = p.rows,
            "placing a sealed segment on a query worker"
        );
        store
            .put(
                &keys.placement(p.segment_id),
                Bytes::from(p.encode_to_vec()),
                Condition::None,
                None,
            )
            .await?;
    }
    for id in gone {
        store.delete(&keys.placement(id), Condition::None).await?;
    }
    Ok(())
}

async fn replicas(
    store: &Arc<dyn MetaStore>,
    keys: &Keys,
    workers: &Nodes,
    shards: &[ReplicatedShard],
) -> Result<()> {
    let (kvs, _) = store.scan_prefix(&keys.replica_prefix()).await?;
    let mut current = HashMap::new();
    for kv in kvs {
        match ReplicaPlacement::decode(kv.value.as_ref()) {
            Ok(p) if keys.replica(&p.vchannel, p.replica) == kv.key => {
                current.insert((p.vchannel.clone(), p.replica), p);
            }
            _ => {
                tracing::warn!(key = %kv.key, "removing a replica placement that does not decode");
                store.delete(&kv.key, Condition::None).await?;
            }
        }
    }
    let (puts, gone) = plan_replicas(shards, workers, &current);
    for (v, r) in gone {
        store.delete(&keys.replica(&v, r), Condition::None).await?;
    }
    for p in puts {
        tracing::info!(vchannel = %p.vchannel, replica = p.replica, worker = p.node_id, "placing a replica delegator on a query worker");
        store
            .put(
                &keys.replica(&p.vchannel, p.replica),
                Bytes::from(p.encode_to_vec()),
                Condition::None,
                None,
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeInfo;

    fn workers(ids: &[u64]) -> Nodes {
        ids.iter()
            .map(|&id| {
                (
                    NodeId(id),
                    NodeInfo {
                        id: NodeId(id),
                        address: format!("w{id}:1"),
                        stopping: false,
                        incarnation: 1,
                    },
                )
            })
            .collect()
    }

    fn seg(id: i64, rows: u64) -> PlacedSegment {
        PlacedSegment {
            segment_id: id,
            collection_id: 1,
            partition_id: 2,
            vchannel: "p0_1v0".into(),
            rows,
            version: 0,
        }
    }

    fn load(placements: &HashMap<i64, SegmentPlacement>) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for p in placements.values() {
            *out.entry(p.node_id).or_default() += p.rows;
        }
        out
    }

    fn apply(
        current: &mut HashMap<i64, SegmentPlacement>,
        change: (Vec<SegmentPlacement>, Vec<i64>),
    ) {
        for id in change.1 {
            current.remove(&id);
        }
        for p in change.0 {
            current.insert(p.segment_id, p);
        }
    }

    #[test]
    fn segments_spread_by_rows_stay_put_and_leave_a_lost_worker() {
        let segs: Vec<PlacedSegment> = (1..=9).map(|i| seg(i, 100 * (i as u64 % 3 + 1))).collect();
        let mut current = HashMap::new();
        let change = plan(&segs, &workers(&[1, 2, 3]), &current);
        apply(&mut current, change);
        assert_eq!(current.len(), 9);
        // 1800 rows over three workers: 600 each.
        assert_eq!(
            load(&current).values().copied().collect::<Vec<_>>(),
            [600, 600, 600]
        );
        // Nothing changes while the workers stay.
        let again = plan(&segs, &workers(&[1, 2, 3]), &current);
        assert!(again.0.is_empty() && again.1.is_empty(), "{again:?}");
        // A fourth worker takes nothing that is placed (no moves for balance)...
        assert!(plan(&segs, &workers(&[1, 2, 3, 4]), &current).0.is_empty());
        // ...but a lost worker's segments go to the least loaded of the others.
        let before = current.clone();
        let change = plan(&segs, &workers(&[1, 3, 4]), &current);
        apply(&mut current, change);
        for (id, p) in &current {
            assert_ne!(p.node_id, 2);
            if before[id].node_id != 2 {
                assert_eq!(p, &before[id], "segment {id} moved without a reason");
            }
        }
        assert_eq!(load(&current)[&4], 600, "{:?}", load(&current));
        // A compacted segment stays on its worker, at its new version and size.
        let mut compacted = segs.clone();
        compacted[4].version = 77;
        compacted[4].rows -= 50;
        let change = plan(&compacted, &workers(&[1, 3, 4]), &current);
        assert!(change.1.is_empty(), "{change:?}");
        assert_eq!(
            change.0,
            vec![SegmentPlacement {
                version: 77,
                rows: compacted[4].rows,
                ..current[&5].clone()
            }]
        );
        apply(&mut current, change);
        assert!(
            plan(&compacted, &workers(&[1, 3, 4]), &current)
                .0
                .is_empty()
        );
        let segs = compacted;
        // A segment gone from the plan loses its placement; no workers, no placements.
        let change = plan(&segs[1..], &workers(&[1, 3, 4]), &current);
        assert_eq!(change, (Vec::new(), vec![1]));
        let change = plan(&segs, &workers(&[]), &current);
        assert!(change.0.is_empty());
        assert_eq!(change.1.len(), 9);
    }

    #[test]
    fn replicas_go_one_per_worker_and_follow_lost_workers_and_counts() {
        let shards = |n: u32| -> Vec<ReplicatedShard> {
            ["a", "b"]
                .iter()
                .map(|v| ReplicatedShard {
                    collection_id: 1,
                    vchannel: v.to_string(),
                    replicas: n,
                })
                .collect()
        };
        let mut current: HashMap<(String, u32), ReplicaPlacement> = HashMap::new();
        let apply =
            |current: &mut HashMap<(String, u32), ReplicaPlacement>,
             (puts, gone): (Vec<ReplicaPlacement>, Vec<(String, u32)>)| {
                for k in gone {
                    current.remove(&k);
                }
                for p in puts {
                    current.insert((p.vchannel.clone(), p.replica), p);
                }
            };
        // 3 replicas of 2 shards over 3 workers: 4 placements, no worker with two of a shard.
        let change = plan_replicas(&shards(3), &workers(&[1, 2, 3]), &current);
        apply(&mut current, change);
        assert_eq!(current.len(), 4);
        for v in ["a", "b"] {
            let mut on: Vec<u64> = current
                .values()
                .filter(|p| p.vchannel == v)
                .map(|p| p.node_id)
                .collect();
            on.sort();
            on.dedup();
            assert_eq!(on.len(), 2, "{v}: {current:?}");
        }
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for p in current.values() {
            *per.entry(p.node_id).or_default() += 1;
        }
        assert!(per.values().all(|&n| n <= 2), "{per:?}");
        // Stable while nothing changes.
        let again = plan_replicas(&shards(3), &workers(&[1, 2, 3]), &current);
        assert!(again.0.is_empty() && again.1.is_empty());
        // A lost worker's replicas move to one that hosts no replica of the same shard.
        let change = plan_replicas(&shards(3), &workers(&[1, 3, 4]), &current);
        apply(&mut current, change);
        assert_eq!(current.len(), 4);
        assert!(current.values().all(|p| p.node_id != 2));
        // Two workers for three replicas of a shard: still at most one replica per worker.
        let change = plan_replicas(&shards(4), &workers(&[1, 3]), &current);
        apply(&mut current, change);
        for v in ["a", "b"] {
            let n = current.values().filter(|p| p.vchannel == v).count();
            assert_eq!(n, 2, "{v}: {current:?}");
        }
        // Fewer replicas wanted: the extra placements go; none wanted: all go.
        let change = plan_replicas(&shards(2), &workers(&[1, 3]), &current);
        apply(&mut current, change);
        assert_eq!(current.len(), 2);
        assert!(current.keys().all(|(_, r)| *r == 1));
        let (puts, gone) = plan_replicas(&shards(1), &workers(&[1, 3]), &current);
        assert!(puts.is_empty());
        assert_eq!(gone.len(), 2);
    }

    #[test]
    fn a_worker_back_at_another_address_or_stopping_gets_its_segments_replaced() {
        let segs = vec![seg(1, 10)];
        let mut current = HashMap::new();
        let change = plan(&segs, &workers(&[1]), &current);
        apply(&mut current, change);
        let mut moved = workers(&[1, 2]);
        moved.get_mut(&NodeId(1)).unwrap().address = "elsewhere:1".into();
        let (puts, _) = plan(&segs, &moved, &current);
        assert_eq!(puts.len(), 1);
        let mut stopping = workers(&[1, 2]);
        stopping.get_mut(&NodeId(1)).unwrap().stopping = true;
        let (puts, _) = plan(&segs, &stopping, &current);
        assert_eq!(puts[0].node_id, 2);
    }
}
