//! The assignment loop against real stores (embedded redb, and etcd when `SLUICE_TEST_ETCD` is
//! set) with a fake node client that records every call and can be made to fail or hang per node.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_coord::assign::{AssignConfig, Assigner, NodeCallError, NodeClient, Topology};
use sluice_coord::balancer::BalanceConfig;
use sluice_coord::pchannel::{ChannelManager, PChannelNames, PChannelState};
use sluice_coord::{CoordError, NodeId, NodeInfo, Nodes};
use sluice_types::{PChannel, Term};
use tokio::sync::watch;

/// How long a test waits for the loop to reach a state before failing.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Assign(NodeId, String, Term),
    Remove(NodeId, String, Term),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fail,
    Hang,
}

/// A fake cluster of nodes: remembers which node serves which pchannel at which term.
#[derive(Default)]
struct FakeNodes {
    calls: Mutex<Vec<Call>>,
    modes: Mutex<BTreeMap<NodeId, Mode>>,
    serving: Mutex<BTreeMap<NodeId, BTreeSet<(String, Term)>>>,
}

impl FakeNodes {
    fn set_mode(&self, node: u64, mode: Option<Mode>) {
        let mut modes = self.modes.lock();
        match mode {
            Some(m) => modes.insert(NodeId(node), m),
            None => modes.remove(&NodeId(node)),
        };
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    fn serving(&self, node: u64) -> BTreeSet<(String, Term)> {
        self.serving
            .lock()
            .get(&NodeId(node))
            .cloned()
            .unwrap_or_default()
    }

    async fn act(&self, node: NodeId, call: Call) -> Result<(), NodeCallError> {
        self.calls.lock().push(call);
        let mode = self.modes.lock().get(&node).copied();
        match mode {
            Some(Mode::Hang) => std::future::pending().await,
            Some(Mode::Fail) => Err(NodeCallError::Failed(format!("{node} is failing"))),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl NodeClient for FakeNodes {
    async fn assign(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError> {
        let name = pchannel.to_string();
        self.act(node.id, Call::Assign(node.id, name.clone(), term))
            .await?;
        self.serving
            .lock()
            .entry(node.id)
            .or_default()
            .insert((name, term));
        Ok(())
    }

    async fn remove(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError> {
        let name = pchannel.to_string();
        self.act(node.id, Call::Remove(node.id, name.clone(), term))
            .await?;
        let mut serving = self.serving.lock();
        let held = serving.entry(node.id).or_default();
        if held.remove(&(name, term)) {
            Ok(())
        } else {
            Err(NodeCallError::Gone(format!("{pchannel}@{term} not here")))
        }
    }
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        address: format!("127.0.0.1:{}", 20000 + id),
        stopping: false,
        incarnation: 0,
    }
}

fn node_set(ids: &[u64]) -> Nodes {
    ids.iter().map(|&i| (NodeId(i), node(i))).collect()
}

fn config() -> AssignConfig {
    AssignConfig {
        call_timeout: Duration::from_secs(60),
        assign_timeout: Duration::from_secs(60),
        backoff_max: Duration::from_millis(200),
        balance: BalanceConfig {
            min_rebalance_interval: Duration::ZERO,
            ..BalanceConfig::default()
        },
        ..AssignConfig::default()
    }
}

async fn manager(b: &common::Backend, n: u32) -> Arc<ChannelManager> {
    let names = PChannelNames::Count {
        prefix: "p".into(),
        count: n,
    }
    .resolve()
    .unwrap();
    Arc::new(
        ChannelManager::init(b.store.clone(), b.keys.clone(), &names)
            .await
            .unwrap(),
    )
}

async fn wait_for(
    rx: &mut watch::Receiver<Topology>,
    what: &str,
    mut pred: impl FnMut(&Topology) -> bool,
) -> Topology {
    let result = match tokio::time::timeout(WAIT, rx.wait_for(|t| pred(t))).await {
        Ok(Ok(t)) => Ok(t.clone()),
        Ok(Err(_)) => panic!("topology stream closed while waiting for {what}"),
        Err(_) => Err(()),
    };
    match result {
        Ok(t) => t,
        Err(()) => panic!(
            "no topology with {what} within {WAIT:?}; last: {:?}",
            rx.borrow()
        ),
    }
}

/// The pchannels the topology places on node `id`.
fn channels_on(t: &Topology, id: u64) -> Vec<String> {
    t.channels
        .iter()
        .filter(|(_, (_, info))| info.id == NodeId(id))
        .map(|(n, _)| n.clone())
        .collect()
}

fn per_node(t: &Topology) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for (_, info) in t.channels.values() {
        *counts.entry(info.id).or_default() += 1;
    }
    counts
}

fn all_on(t: &Topology, n: usize, nodes: &[u64]) -> bool {
    t.channels.len() == n
        && t.channels
            .values()
            .all(|(_, info)| nodes.contains(&info.id.0))
}

/// Every channel in the topology is served by its node at its term, per the fake.
fn check_served(t: &Topology, fake: &FakeNodes) {
    for (name, (term, info)) in &t.channels {
        assert!(
            fake.serving(info.id.0).contains(&(name.clone(), *term)),
            "{name}@{term} is listed on {} but not served there",
            info.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_placement_is_balanced_and_versions_increase() {
    for b in common::backends("assign_initial").await {
        let m = manager(&b, 7).await;
        let fake = Arc::new(FakeNodes::default());
        let (_nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2, 3]));
        let assigner = Assigner::start(m.clone(), nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();

        // Watch every published version.
        let mut versions_rx = assigner.subscribe();
        let versions = tokio::spawn(async move {
            let mut seen = vec![versions_rx.borrow_and_update().clone()];
            while versions_rx.changed().await.is_ok() {
                seen.push(versions_rx.borrow_and_update().clone());
            }
            seen
        });

        let t = wait_for(&mut rx, "7 channels placed", |t| t.channels.len() == 7).await;
        let counts: Vec<usize> = per_node(&t).into_values().collect();
        assert_eq!(counts, [3, 2, 2], "{}: {t:?}", b.name);
        assert!(t.channels.values().all(|(term, _)| *term == Term(2)));
        check_served(&t, &fake);
        // One assign call per channel, nothing removed (nothing was assigned before).
        let calls = fake.calls();
        assert_eq!(calls.len(), 7, "{calls:?}");
        assert!(calls.iter().all(|c| matches!(c, Call::Assign(..))));
        for meta in m.list() {
            assert_eq!(meta.state, PChannelState::Assigned);
        }

        assigner.shutdown().await;
        drop(assigner);
        let seen = versions.await.unwrap();
        for pair in seen.windows(2) {
            assert!(pair[1].version > pair[0].version, "{seen:?}");
            assert_ne!(pair[1].channels, pair[0].channels);
        }
        assert_eq!(seen.last().unwrap().channels.len(), 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_channels_move_at_the_next_term_without_calling_it() {
    for b in common::backends("assign_dead_node").await {
        let m = manager(&b, 6).await;
        let fake = Arc::new(FakeNodes::default());
        let (nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2, 3]));
        let assigner = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "6 channels placed", |t| t.channels.len() == 6).await;
        let on_3: Vec<String> = channels_on(&before, 3);
        assert_eq!(on_3.len(), 2, "{}: {before:?}", b.name);

        // Node 3 dies: its lease is gone. Were it called it would hang past the wait (call
        // timeout 60 s), so the move finishing proves it was not waited on.
        fake.set_mode(3, Some(Mode::Hang));
        let calls_before = fake.calls().len();
        nodes_tx.send(node_set(&[1, 2])).unwrap();
        let after = wait_for(&mut rx, "every channel on nodes 1 and 2", |t| {
            all_on(t, 6, &[1, 2])
        })
        .await;
        assert!(after.version > before.version);
        for (name, (term, info)) in &after.channels {
            let (old_term, old) = &before.channels[name];
            if on_3.contains(name) {
                assert_eq!(*term, old_term.next(), "{name} moved at the next term");
            } else {
                assert_eq!((term, info), (old_term, old), "{name} stayed put");
            }
        }
        let counts: Vec<usize> = per_node(&after).into_values().collect();
        assert_eq!(counts, [3, 3]);
        check_served(&after, &fake);
        assert!(
            fake.calls()[calls_before..]
                .iter()
                .all(|c| !matches!(c, Call::Remove(NodeId(3), ..) | Call::Assign(NodeId(3), ..))),
            "dead node was called"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_gets_its_pchannels_back_at_a_higher_term() {
    for b in common::backends("assign_restarted_node").await {
        let m = manager(&b, 4).await;
        let fake = Arc::new(FakeNodes::default());
        let mut first = node_set(&[1]);
        first.get_mut(&NodeId(1)).unwrap().incarnation = 7;
        let (nodes_tx, nodes_rx) = watch::channel(first);
        let assigner = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "4 channels placed", |t| t.channels.len() == 4).await;

        // The process restarts with the same id and address: it holds nothing, and its new
        // registration has a larger incarnation. The watcher may merge the old key's delete and
        // the new key's put into one change, so the node set changes only in the incarnation.
        fake.serving.lock().clear();
        let mut restarted = node_set(&[1]);
        restarted.get_mut(&NodeId(1)).unwrap().incarnation = 9;
        nodes_tx.send(restarted).unwrap();
        let after = wait_for(&mut rx, "every channel re-opened at a higher term", |t| {
            t.channels.len() == 4
                && t.channels
                    .iter()
                    .all(|(name, (term, _))| *term > before.channels[name].0)
        })
        .await;
        for (term, info) in after.channels.values() {
            assert_eq!((info.id, info.incarnation), (NodeId(1), 9), "{}", b.name);
            assert!(term.0 >= 2, "{}", b.name);
        }
        // Every listed WAL is open on the node process that now answers.
        check_served(&after, &fake);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_old_owner_does_not_hold_a_move_past_the_call_timeout() {
    for b in common::backends("assign_hanging").await {
        let m = manager(&b, 6).await;
        let fake = Arc::new(FakeNodes::default());
        let (nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2, 3]));
        let cfg = AssignConfig {
            call_timeout: Duration::from_millis(200),
            ..config()
        };
        let assigner = Assigner::start(m.clone(), nodes_rx, fake.clone(), cfg).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "6 channels placed", |t| t.channels.len() == 6).await;
        let on_1: Vec<String> = channels_on(&before, 1);
        assert_eq!(on_1.len(), 2, "{}", b.name);

        // Node 1 is shutting down (still live, its lease held) and stops answering.
        fake.set_mode(1, Some(Mode::Hang));
        let mut stopping = node_set(&[1, 2, 3]);
        stopping.get_mut(&NodeId(1)).unwrap().stopping = true;
        let asked = tokio::time::Instant::now();
        nodes_tx.send(stopping).unwrap();

        // Its channels move on once the remove has timed out: the new owners' opens at higher
        // terms fence it in storage. Node 1 never answered meanwhile.
        let after = wait_for(&mut rx, "every channel on nodes 2 and 3", |t| {
            all_on(t, 6, &[2, 3])
        })
        .await;
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{}: the move waited {took:?} for a hung owner",
            b.name
        );
        for name in &on_1 {
            assert!(
                after.channels[name].0 > before.channels[name].0,
                "{}",
                b.name
            );
        }
        for (name, entry) in &before.channels {
            if !on_1.contains(name) {
                assert_eq!(after.channels.get(name), Some(entry), "{}", b.name);
            }
        }
        check_served(&after, &fake);
        assert_eq!(
            fake.serving(1).len(),
            2,
            "{}: node 1 has confirmed nothing yet",
            b.name
        );

        // Node 1 answers again: it is told, in the background, to close the WALs it still holds.
        fake.set_mode(1, None);
        let deadline = tokio::time::Instant::now() + WAIT;
        while !fake.serving(1).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: node 1 still serves {:?}",
                b.name,
                fake.serving(1)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(assigner.topology().channels, after.channels, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_error_reassigns_at_a_higher_term() {
    for b in common::backends("assign_report_error").await {
        let m = manager(&b, 2).await;
        let fake = Arc::new(FakeNodes::default());
        let (_nodes_tx, nodes_rx) = watch::channel(node_set(&[1]));
        let assigner = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "2 channels placed", |t| t.channels.len() == 2).await;
        assert_eq!(before.channels["p_0"].0, Term(2), "{}", b.name);

        assigner.report_error("p_0", Term(2)).await.unwrap();
        let after = wait_for(&mut rx, "p_0 at term 3", |t| {
            t.channels
                .get("p_0")
                .is_some_and(|(term, _)| *term == Term(3))
        })
        .await;
        // The only healthy node gets it back; the other channel is untouched.
        assert_eq!(after.channels["p_0"].1.id, NodeId(1));
        assert_eq!(after.channels["p_1"], before.channels["p_1"]);
        assert!(
            fake.calls()
                .contains(&Call::Remove(NodeId(1), "p_0".into(), Term(2)))
        );
        check_served(&after, &fake);

        // Stale and unknown reports change nothing.
        let r = assigner.report_error("p_0", Term(2)).await;
        assert!(
            matches!(r, Err(CoordError::StaleTerm { current: 3, .. })),
            "{r:?}"
        );
        let r = assigner.report_error("nope", Term(2)).await;
        assert!(matches!(r, Err(CoordError::UnknownPChannel(_))), "{r:?}");
        assert_eq!(assigner.topology(), after);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_receives_channels() {
    for b in common::backends("assign_new_node").await {
        let m = manager(&b, 6).await;
        let fake = Arc::new(FakeNodes::default());
        let (nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2]));
        let assigner = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "6 channels on 2 nodes", |t| all_on(t, 6, &[1, 2])).await;

        nodes_tx.send(node_set(&[1, 2, 3])).unwrap();
        let after = wait_for(&mut rx, "2 channels on each of 3 nodes", |t| {
            t.channels.len() == 6 && per_node(t).values().all(|n| *n == 2) && per_node(t).len() == 3
        })
        .await;
        for (name, (term, info)) in &after.channels {
            let (old_term, old) = &before.channels[name];
            if info.id == NodeId(3) {
                assert_eq!(*term, old_term.next());
                // Moved off a live node: it was removed there at its old term first.
                assert!(
                    fake.calls()
                        .contains(&Call::Remove(old.id, name.clone(), *old_term))
                );
            } else {
                assert_eq!((term, info), (old_term, old), "{}: {name} stayed", b.name);
            }
        }
        check_served(&after, &fake);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_assigner_keeps_healthy_assignments_and_terms() {
    for b in common::backends("assign_restart").await {
        let (_nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2, 3]));
        let first = Assigner::start(
            manager(&b, 6).await,
            nodes_rx.clone(),
            Arc::new(FakeNodes::default()),
            config(),
        )
        .unwrap();
        let mut rx = first.subscribe();
        let before = wait_for(&mut rx, "6 channels placed", |t| t.channels.len() == 6).await;
        first.shutdown().await;
        drop(first);

        // A new coordinator: new connection, new manager, new assigner, fresh node client.
        let store = common::second_handle(&b).await;
        let names: Vec<PChannel> = before
            .channels
            .keys()
            .map(|n| PChannel::new(n).unwrap())
            .collect();
        let m = Arc::new(
            ChannelManager::init(store, b.keys.clone(), &names)
                .await
                .unwrap(),
        );
        let fake = Arc::new(FakeNodes::default());
        let second = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut settled = second.settled();
        tokio::time::timeout(WAIT, settled.wait_for(|n| *n >= 1))
            .await
            .expect("a round settles")
            .unwrap();
        assert_eq!(second.topology().channels, before.channels, "{}", b.name);
        assert!(fake.calls().is_empty(), "nothing moved: {:?}", fake.calls());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_new_node_is_retried_until_it_recovers() {
    for b in common::backends("assign_failing").await {
        let m = manager(&b, 2).await;
        let fake = Arc::new(FakeNodes::default());
        fake.set_mode(1, Some(Mode::Fail));
        let (_nodes_tx, nodes_rx) = watch::channel(node_set(&[1]));
        let assigner = Assigner::start(m.clone(), nodes_rx, fake.clone(), config()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while fake.calls().len() < 6 {
            assert!(tokio::time::Instant::now() < deadline, "assign not retried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(assigner.topology().channels.is_empty());
        fake.set_mode(1, None);
        let mut rx = assigner.subscribe();
        let t = wait_for(&mut rx, "2 channels placed", |t| t.channels.len() == 2).await;
        // Every retry was a new term; the final one is above the first attempt's.
        assert!(
            t.channels.values().all(|(term, _)| *term > Term(2)),
            "{}: {t:?}",
            b.name
        );
        check_served(&t, &fake);
        assert!(m.list().iter().all(|meta| meta.history.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_record_is_retried_without_stopping_the_loop() {
    use sluice_coord::pchannel::PChannelMeta;
    use sluice_meta::Condition;

    for b in common::backends("assign_malformed").await {
        let m = manager(&b, 4).await;
        let fake = Arc::new(FakeNodes::default());
        let (nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2]));
        let assigner = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "4 channels placed", |t| t.channels.len() == 4).await;
        let on_2: Vec<String> = channels_on(&before, 2);
        assert_eq!(on_2.len(), 2, "{}", b.name);
        let (bad, good) = (&on_2[0], &on_2[1]);

        // Someone writes garbage over one record, then node 2 dies.
        let key = b.keys.pchannel(bad);
        b.store
            .put(
                &key,
                bytes::Bytes::from_static(b"\x08garbage"),
                Condition::None,
                None,
            )
            .await
            .unwrap();
        nodes_tx.send(node_set(&[1])).unwrap();

        // The healthy record moves; the bad one is retried, never overwritten.
        wait_for(&mut rx, "the healthy channel on node 1", |t| {
            t.channels
                .get(good)
                .is_some_and(|(_, info)| info.id == NodeId(1))
        })
        .await;
        assert_eq!(
            &b.store.get(&key).await.unwrap().unwrap().value[..],
            b"\x08garbage"
        );
        assert!(!assigner.topology().channels.contains_key(bad));

        // An operator repairs the record: the loop picks it up and moves it past that term.
        let repaired = PChannelMeta {
            name: PChannel::new(bad).unwrap(),
            term: Term(10),
            node: Some(NodeId(2)),
            state: PChannelState::Assigned,
            history: Vec::new(),
            last_assigned_ms: 1,
            incarnation: 0,
        };
        b.store
            .put(&key, repaired.encode(), Condition::None, None)
            .await
            .unwrap();
        let after = wait_for(&mut rx, "the repaired channel on node 1", |t| {
            t.channels
                .get(bad)
                .is_some_and(|(term, info)| info.id == NodeId(1) && *term == Term(11))
        })
        .await;
        check_served(&after, &fake);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_assigner_stops_the_loop() {
    let b = common::embedded("assign_drop");
    let (nodes_tx, nodes_rx) = watch::channel(node_set(&[1]));
    let fake = Arc::new(FakeNodes::default());
    let assigner = Assigner::start(manager(&b, 2).await, nodes_rx, fake.clone(), config()).unwrap();
    let mut rx = assigner.subscribe();
    wait_for(&mut rx, "2 channels placed", |t| t.channels.len() == 2).await;
    drop(assigner);
    // The topology stream closes once the loop's task has ended and released it.
    let closed = tokio::time::timeout(WAIT, async { while rx.changed().await.is_ok() {} }).await;
    assert!(closed.is_ok(), "the loop did not stop within {WAIT:?}");
    // With the loop gone, a node set change moves nothing.
    let calls = fake.calls().len();
    assert!(
        nodes_tx.send(node_set(&[2])).is_err(),
        "no one watches the node set any more"
    );
    assert_eq!(fake.calls().len(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vchannel_counts_spread_heavy_pchannels() {
    for b in common::backends("assign_vchannels").await {
        let m = manager(&b, 4).await;
        let fake = Arc::new(FakeNodes::default());
        let (_nodes_tx, nodes_rx) = watch::channel(node_set(&[1, 2]));
        let assigner = Assigner::start(m, nodes_rx, fake.clone(), config()).unwrap();
        let mut rx = assigner.subscribe();
        let before = wait_for(&mut rx, "4 channels placed", |t| t.channels.len() == 4).await;
        // Both channels of node 1 turn out to carry many vchannels.
        let heavy: Vec<String> = channels_on(&before, 1);
        assert_eq!(heavy.len(), 2, "{}", b.name);
        assigner.set_vchannel_counts(heavy.iter().map(|n| (n.clone(), 50)).collect());

        let after = wait_for(&mut rx, "one heavy channel per node", |t| {
            t.channels.len() == 4
                && t.channels[&heavy[0]].1.id != t.channels[&heavy[1]].1.id
                && per_node(t).values().all(|n| *n == 2)
        })
        .await;
        let moved: Vec<&String> = after
            .channels
            .iter()
            .filter(|(name, entry)| before.channels[*name] != **entry)
            .map(|(name, _)| name)
            .collect();
        assert_eq!(moved.len(), 2, "a swap moves two channels: {after:?}");
        for name in moved {
            assert_eq!(after.channels[name].0, before.channels[name].0.next());
        }
        check_served(&after, &fake);
    }
}
