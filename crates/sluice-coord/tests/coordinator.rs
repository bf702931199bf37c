//! The whole coordinator (election, oracle, node registry, assignment loop, broadcaster as wired
//! by `leader::Coordinator`) against real stores: a node whose lease lapses has its pchannels
//! reassigned at a higher term (the time from lease loss to reassignment is printed), and a
//! standby coordinator takes over without handing out a timestamp or term twice.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_coord::assign::{AssignConfig, NodeCallError, NodeClient, Topology};
use sluice_coord::broadcast::{AppendOutcome, BroadcastAppender};
use sluice_coord::leader::{Coordinator, CoordinatorConfig};
use sluice_coord::pchannel::PChannelNames;
use sluice_coord::registry::NodeSession;
use sluice_coord::{CoordError, NodeId, NodeInfo};
use sluice_types::{MessageId, MutableMessage, PChannel, Term, Timestamp, VChannel};

const WAIT: Duration = Duration::from_secs(30);

/// Nodes that accept every call and remember what they serve.
#[derive(Default)]
struct Nodes {
    serving: Mutex<BTreeMap<String, (NodeId, Term)>>,
}

#[async_trait]
impl NodeClient for Nodes {
    async fn assign(&self, node: &NodeInfo, p: &PChannel, term: Term) -> Result<(), NodeCallError> {
        self.serving
            .lock()
            .insert(p.as_str().to_owned(), (node.id, term));
        Ok(())
    }

    async fn remove(&self, _: &NodeInfo, _: &PChannel, _: Term) -> Result<(), NodeCallError> {
        Ok(())
    }
}

/// Broadcast appends that only count.
struct NoAppends;

#[async_trait]
impl BroadcastAppender for NoAppends {
    async fn append(&self, _: &VChannel, _: MutableMessage) -> Result<AppendOutcome, CoordError> {
        Ok(AppendOutcome {
            id: MessageId::MIN,
            timestamp: Timestamp(1),
        })
    }
}

fn config(b: &common::Backend, candidate: &str) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(
        candidate,
        PChannelNames::Count {
            prefix: "fo".into(),
            count: 6,
        },
    );
    c.keys = b.keys.clone();
    c.election_ttl = common::short_ttl(b);
    c.assign = AssignConfig {
        call_timeout: Duration::from_millis(500),
        ..AssignConfig::default()
    };
    c
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        address: format!("127.0.0.1:{}", 40000 + id),
        stopping: false,
        incarnation: 0,
    }
}

fn on_node(t: &Topology, id: u64) -> Vec<(String, Term)> {
    t.channels
        .iter()
        .filter(|(_, (_, n))| n.id == NodeId(id))
        .map(|(p, (term, _))| (p.clone(), *term))
        .collect()
}

async fn lease_loss_moves_pchannels(b: common::Backend) {
    let ttl = common::short_ttl(&b);
    let nodes = Arc::new(Nodes::default());
    // The nodes are up before the coordinator, so its first placement spreads the pchannels
    // (a node joining later gets pchannels only through rebalancing, which waits until
    // assignments are a few minutes old).
    let mut sessions = Vec::new();
    for id in 1..=3 {
        sessions.push(
            NodeSession::register(b.store.clone(), &b.keys, node(id), ttl)
                .await
                .unwrap(),
        );
    }
    let coordinator = Coordinator::start(
        b.store.clone(),
        config(&b, "c1"),
        nodes.clone(),
        Arc::new(NoAppends),
    )
    .unwrap();
    let leader = coordinator.leader(WAIT).await.unwrap();
    let mut topology = leader.assigner.subscribe();
    let before = common::wait_until(&mut topology, WAIT, "6 pchannels over 3 nodes", |t| {
        t.channels.len() == 6 && (1..=3).all(|n| on_node(t, n).len() == 2)
    })
    .await;
    let victims = on_node(&before, 3);

    // Node 3 crashes: its session stops refreshing; the lease lapses after the TTL.
    let crashed = Instant::now();
    drop(sessions.pop());
    let after = common::wait_until(&mut topology, WAIT, "node 3's pchannels moved", |t| {
        victims.iter().all(|(p, old)| {
            t.channels
                .get(p)
                .is_some_and(|(term, n)| *term > *old && n.id != NodeId(3))
        })
    })
    .await;
    let moved_after = crashed.elapsed();
    eprintln!(
        "[{}] lease TTL {ttl:?}: node 3's {} pchannels reassigned {moved_after:?} after its last keep-alive stopped",
        b.name,
        victims.len()
    );
    // The move came from the lease lapsing: node 3's registration is gone.
    assert!(
        b.store
            .get(&b.keys.node(NodeId(3)))
            .await
            .unwrap()
            .is_none(),
        "node 3 is still registered"
    );
    // The others did not move, and the nodes really were told.
    for n in 1..=2 {
        for (p, term) in on_node(&before, n) {
            assert_eq!(
                after.channels[&p].0, term,
                "{p} on a live node must keep its term"
            );
        }
    }
    let serving = nodes.serving.lock().clone();
    for (p, (term, n)) in &after.channels {
        assert_eq!(
            serving[p],
            (n.id, *term),
            "{p}: node told about its assignment"
        );
    }
    coordinator.shutdown().await;
}

async fn standby_takes_over(b: common::Backend) {
    let ttl = common::short_ttl(&b);
    let nodes = Arc::new(Nodes::default());
    let _session =
        NodeSession::register(b.store.clone(), &b.keys, node(1), Duration::from_secs(10))
            .await
            .unwrap();
    let first = Coordinator::start(
        b.store.clone(),
        config(&b, "c1"),
        nodes.clone(),
        Arc::new(NoAppends),
    )
    .unwrap();
    let leader = first.leader(WAIT).await.unwrap();
    let mut topology = leader.assigner.subscribe();
    let t1 = common::wait_until(&mut topology, WAIT, "all assigned", |t| {
        t.channels.len() == 6
    })
    .await;
    let ts1 = leader.tso.allocate(10).await.unwrap();
    drop(leader);

    let second_store = common::second_handle(&b).await;
    let second = Coordinator::start(
        second_store,
        config(&b, "c2"),
        nodes.clone(),
        Arc::new(NoAppends),
    )
    .unwrap();
    assert!(second.leader_now().is_none(), "one leader at a time");
    // The leader stops (as if its process died: leadership lapses after the TTL).
    let stopped = Instant::now();
    first.shutdown().await;
    let leader2 = second.leader(WAIT + ttl).await.unwrap();
    eprintln!(
        "[{}] standby took over {:?} after the leader stopped",
        b.name,
        stopped.elapsed()
    );
    let ts2 = leader2.tso.allocate(1).await.unwrap();
    assert!(
        ts2 > ts1,
        "the new leader's timestamps are above the old one's"
    );
    // Healthy assignments are kept; nothing is handed out twice.
    let mut topology = leader2.assigner.subscribe();
    let t2 = common::wait_until(&mut topology, WAIT, "topology republished", |t| {
        t.channels.len() == 6
    })
    .await;
    for (p, (term, _)) in &t1.channels {
        assert_eq!(
            t2.channels[p].0, *term,
            "{p} keeps its term under the new leader"
        );
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_loss_moves_pchannels_on_every_backend() {
    for b in common::backends("coord-lease-loss").await {
        lease_loss_moves_pchannels(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_on_every_backend() {
    for b in common::backends("coord-standby").await {
        standby_takes_over(b).await;
    }
}
