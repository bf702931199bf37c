//! Node discovery against real meta stores (embedded redb, etcd).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use sluice_coord::registry::{NodeRecord, NodeSession, NodeWatcher};
use sluice_coord::{CoordError, NodeId, NodeInfo};
use sluice_meta::Condition;

/// Generous bound for events that should be prompt (a loaded 2-core box).
const PROMPT: Duration = Duration::from_secs(10);
/// A TTL long enough that nothing in a test lapses by itself.
const LONG_TTL: Duration = Duration::from_secs(60);

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId(id),
        address: format!("127.0.0.1:{}", 7000 + id),
        stopping: false,
        incarnation: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_are_seen_and_a_closed_one_is_gone_at_once() {
    for b in common::backends("reg_three").await {
        let watcher = NodeWatcher::start(b.store.clone(), &b.keys).await.unwrap();
        let mut rx = watcher.subscribe();
        assert!(watcher.nodes().is_empty());
        let mut sessions = Vec::new();
        for id in 1..=3 {
            sessions.push(
                NodeSession::register(b.store.clone(), &b.keys, node(id), LONG_TTL)
                    .await
                    .unwrap(),
            );
        }
        let nodes = common::wait_until(&mut rx, PROMPT, "three nodes seen", |n| n.len() == 3).await;
        for (id, session) in (1..=3).zip(&sessions) {
            // What the watcher sees is what was registered, with the store's incarnation.
            assert_eq!(nodes[&NodeId(id)], session.info(), "{}", b.name);
            assert!(session.info().incarnation > 0, "{}", b.name);
        }
        // A watcher started now finds them by its initial scan.
        let late = NodeWatcher::start(common::second_handle(&b).await, &b.keys)
            .await
            .unwrap();
        assert_eq!(late.nodes(), nodes, "{}", b.name);

        // Graceful leave: gone long before the (60 s) TTL could lapse.
        let started = Instant::now();
        sessions.remove(1).close().await.unwrap();
        let nodes = common::wait_until(&mut rx, PROMPT, "closed node gone", |n| {
            !n.contains_key(&NodeId(2))
        })
        .await;
        eprintln!(
            "{}: closed node vanished after {:?}",
            b.name,
            started.elapsed()
        );
        assert_eq!(
            nodes.keys().copied().collect::<Vec<_>>(),
            [NodeId(1), NodeId(3)]
        );
        assert!(
            b.store
                .get(&b.keys.node(NodeId(2)))
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_vanishes_after_its_ttl() {
    for b in common::backends("reg_crash").await {
        let ttl = common::short_ttl(&b);
        let watcher = NodeWatcher::start(b.store.clone(), &b.keys).await.unwrap();
        let mut rx = watcher.subscribe();
        let survivor = NodeSession::register(b.store.clone(), &b.keys, node(1), ttl)
            .await
            .unwrap();
        let crashing = NodeSession::register(b.store.clone(), &b.keys, node(2), ttl)
            .await
            .unwrap();
        common::wait_until(&mut rx, PROMPT, "both nodes seen", |n| n.len() == 2).await;
        // Both stay registered over several TTLs: the keep-alive works.
        tokio::time::sleep(ttl * 3).await;
        assert_eq!(
            rx.borrow().len(),
            2,
            "{}: a kept-alive node vanished",
            b.name
        );
        assert!(!survivor.is_lost() && !crashing.is_lost());

        let dropped = Instant::now();
        drop(crashing);
        assert!(
            b.store
                .get(&b.keys.node(NodeId(2)))
                .await
                .unwrap()
                .is_some(),
            "{}: a crash does not revoke: the key stays until the lease lapses",
            b.name
        );
        common::wait_until(&mut rx, ttl * 4 + PROMPT, "crashed node gone", |n| {
            !n.contains_key(&NodeId(2))
        })
        .await;
        let took = dropped.elapsed();
        eprintln!(
            "{}: crashed node vanished {took:?} after the drop (TTL {ttl:?})",
            b.name
        );
        assert!(
            rx.borrow().contains_key(&NodeId(1)),
            "{}: survivor kept",
            b.name
        );
        survivor.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_flag_is_visible() {
    for b in common::backends("reg_stopping").await {
        let watcher = NodeWatcher::start(b.store.clone(), &b.keys).await.unwrap();
        let mut rx = watcher.subscribe();
        let s = NodeSession::register(b.store.clone(), &b.keys, node(4), LONG_TTL)
            .await
            .unwrap();
        common::wait_until(&mut rx, PROMPT, "node seen", |n| n.contains_key(&NodeId(4))).await;
        s.set_stopping().await.unwrap();
        let nodes = common::wait_until(&mut rx, PROMPT, "stopping seen", |n| {
            n.get(&NodeId(4)).is_some_and(|i| i.stopping)
        })
        .await;
        assert_eq!(nodes[&NodeId(4)].address, node(4).address);
        assert!(s.info().stopping);
        // Still attached to the session's lease: closing removes it.
        s.close().await.unwrap();
        common::wait_until(&mut rx, PROMPT, "node gone", |n| n.is_empty()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_is_rejected_and_the_first_registration_kept() {
    for b in common::backends("reg_dup").await {
        let first = NodeSession::register(b.store.clone(), &b.keys, node(5), LONG_TTL)
            .await
            .unwrap();
        let before = b.store.get(&b.keys.node(NodeId(5))).await.unwrap().unwrap();
        let mut other = node(5);
        other.address = "127.0.0.1:9999".into();
        let err = NodeSession::register(common::second_handle(&b).await, &b.keys, other, LONG_TTL)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CoordError::Conflict(_)),
            "{}: {err:?}",
            b.name
        );
        let after = b.store.get(&b.keys.node(NodeId(5))).await.unwrap().unwrap();
        assert_eq!(
            after, before,
            "{}: the first registration is untouched",
            b.name
        );
        // Once it leaves, the id is free again.
        first.close().await.unwrap();
        let again = NodeSession::register(b.store.clone(), &b.keys, node(5), LONG_TTL)
            .await
            .unwrap();
        again.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_registrations_are_ignored() {
    for b in common::backends("reg_malformed").await {
        let prefix = b.keys.node_prefix();
        let put = |key: String, value: Bytes| {
            let store = b.store.clone();
            async move { store.put(&key, value, Condition::None, None).await.unwrap() }
        };
        put(
            format!("{prefix}7"),
            Bytes::from_static(b"\xff\xff garbage"),
        )
        .await;
        put(
            format!("{prefix}not-a-number"),
            Bytes::from(NodeRecord::from(&node(8)).encode_to_vec()),
        )
        .await;
        // A record that names another id than its key.
        put(
            format!("{prefix}9"),
            Bytes::from(NodeRecord::from(&node(10)).encode_to_vec()),
        )
        .await;
        let valid = NodeSession::register(b.store.clone(), &b.keys, node(1), LONG_TTL)
            .await
            .unwrap();

        let watcher = NodeWatcher::start(b.store.clone(), &b.keys).await.unwrap();
        let mut rx = watcher.subscribe();
        assert_eq!(
            watcher.nodes().keys().copied().collect::<Vec<_>>(),
            [NodeId(1)],
            "{}: only the valid node from the scan",
            b.name
        );
        // Garbage arriving through the watch is ignored too, and later valid nodes are seen.
        put(format!("{prefix}11"), Bytes::from_static(b"\x0a\xff")).await;
        let second = NodeSession::register(b.store.clone(), &b.keys, node(2), LONG_TTL)
            .await
            .unwrap();
        let nodes = common::wait_until(&mut rx, PROMPT, "valid nodes seen", |n| n.len() == 2).await;
        assert_eq!(
            nodes.keys().copied().collect::<Vec<_>>(),
            [NodeId(1), NodeId(2)]
        );
        // A valid registration overwritten with garbage is no longer a valid node.
        put(b.keys.node(NodeId(1)), Bytes::from_static(b"\xff")).await;
        let nodes = common::wait_until(&mut rx, PROMPT, "garbage drops node 1", |n| {
            !n.contains_key(&NodeId(1))
        })
        .await;
        assert_eq!(nodes.keys().copied().collect::<Vec<_>>(), [NodeId(2)]);
        drop(valid);
        second.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_lease_is_lost_registers_again_unless_its_id_was_taken() {
    for b in common::backends("reg_lost").await {
        let ttl = common::short_ttl(&b);
        let s = NodeSession::register(b.store.clone(), &b.keys, node(3), ttl)
            .await
            .unwrap();
        let (first_lease, first) = (s.lease(), s.info().incarnation);
        // Someone (an operator, a lease that lapsed while the store was away) ends the lease
        // under the session: it registers again, as a new incarnation.
        b.store.revoke(first_lease).await.unwrap();
        let deadline = Instant::now() + ttl + PROMPT;
        let kv = loop {
            // The key is written before the session records its new lease.
            if let Some(kv) = b.store.get(&b.keys.node(NodeId(3))).await.unwrap()
                && s.lease() != first_lease
            {
                break kv;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not registered again",
                b.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!s.is_lost(), "{}", b.name);
        assert_ne!(kv.lease, Some(first_lease), "{}", b.name);
        assert_eq!(kv.lease, Some(s.lease()), "{}", b.name);
        assert!(s.info().incarnation > first, "{}", b.name);
        s.set_stopping().await.unwrap();
        let record = NodeRecord::decode(
            b.store
                .get(&b.keys.node(NodeId(3)))
                .await
                .unwrap()
                .unwrap()
                .value
                .as_ref(),
        )
        .unwrap();
        assert!(record.stopping, "{}", b.name);

        // Lost again, and another process takes the id before the session registers again:
        // the session is lost for good and leaves the other registration alone.
        b.store.revoke(s.lease()).await.unwrap();
        let other = NodeSession::register(common::second_handle(&b).await, &b.keys, node(3), ttl)
            .await
            .unwrap();
        tokio::time::timeout(ttl + PROMPT, s.lost())
            .await
            .unwrap_or_else(|_| panic!("{}: lost() did not resolve", b.name));
        assert!(s.is_lost());
        let err = s.set_stopping().await.unwrap_err();
        assert!(
            matches!(err, CoordError::Conflict(_)),
            "{}: {err:?}",
            b.name
        );
        let kv = b.store.get(&b.keys.node(NodeId(3))).await.unwrap().unwrap();
        assert_eq!(kv.lease, Some(other.lease()), "{}", b.name);
        other.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_rescans_after_a_broken_watch() {
    for b in common::backends("reg_rewatch").await {
        let flaky = common::FaultyStore::new(b.store.clone());
        let watcher = NodeWatcher::start(flaky.clone(), &b.keys).await.unwrap();
        let mut rx = watcher.subscribe();
        let one = NodeSession::register(b.store.clone(), &b.keys, node(1), LONG_TTL)
            .await
            .unwrap();
        common::wait_until(&mut rx, PROMPT, "node 1 seen", |n| {
            n.contains_key(&NodeId(1))
        })
        .await;
        assert_eq!(flaky.watch_calls(), 1);

        // The watch breaks and the next two attempts are refused; meanwhile the set changes.
        flaky.break_watches(2);
        let two = NodeSession::register(b.store.clone(), &b.keys, node(2), LONG_TTL)
            .await
            .unwrap();
        one.close().await.unwrap();
        let nodes = common::wait_until(&mut rx, PROMPT, "changes made while broken seen", |n| {
            n.keys().copied().collect::<Vec<_>>() == [NodeId(2)]
        })
        .await;
        assert_eq!(nodes[&NodeId(2)], two.info());
        common::wait_for_watch_calls(&flaky, 4, "re-watch after two refusals").await;

        // Watching again: later changes arrive too.
        let three = NodeSession::register(b.store.clone(), &b.keys, node(3), LONG_TTL)
            .await
            .unwrap();
        common::wait_until(&mut rx, PROMPT, "node 3 seen", |n| n.len() == 2).await;
        eprintln!(
            "{}: watcher recovered after {} watch calls",
            b.name,
            flaky.watch_calls()
        );
        two.close().await.unwrap();
        three.close().await.unwrap();
        common::wait_until(&mut rx, PROMPT, "all gone", |n| n.is_empty()).await;
    }
}
