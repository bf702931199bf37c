//! Pchannel records against real stores (embedded redb, and etcd when `SLUICE_TEST_ETCD` is set):
//! the term lifecycle, two coordinators racing, malformed values, unknown names and stale terms.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sluice_coord::pchannel::{ChannelManager, PChannelNames, PChannelState};
use sluice_coord::{CoordError, NodeId};
use sluice_meta::{Condition, WatchEvent};
use sluice_types::{PChannel, Term};

fn names(n: u32) -> Vec<PChannel> {
    PChannelNames::Count {
        prefix: "dml".into(),
        count: n,
    }
    .resolve()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_bumps_terms_and_keeps_history_until_done() {
    for b in common::backends("pchannel_lifecycle").await {
        let m = ChannelManager::init(b.store.clone(), b.keys.clone(), &names(2))
            .await
            .unwrap();
        let fresh = m.get("dml_0").unwrap();
        assert_eq!(fresh.term, Term(1), "{}", b.name);
        assert_eq!(fresh.state, PChannelState::Uninitialized);
        assert_eq!(fresh.node, None);

        // First assignment: no history (it was uninitialized), term 2.
        let a = m.assign("dml_0", NodeId(1)).await.unwrap();
        assert_eq!(
            (a.term, a.node, a.state),
            (Term(2), Some(NodeId(1)), PChannelState::Assigning)
        );
        assert!(a.history.is_empty());
        let d = m.assign_done("dml_0", Term(2)).await.unwrap();
        assert_eq!(d.state, PChannelState::Assigned);
        assert!(d.last_assigned_ms > 0);
        // Assigning to the node it is already Assigned to changes nothing.
        assert_eq!(m.assign("dml_0", NodeId(1)).await.unwrap(), d);

        // Move: the owner joins the history until the move is done.
        let a = m.assign("dml_0", NodeId(2)).await.unwrap();
        assert_eq!(a.term, Term(3));
        assert_eq!(a.history, vec![(Term(2), NodeId(1))]);
        // A retried move (still assigning) bumps again and keeps the failed target.
        let a = m.assign("dml_0", NodeId(3)).await.unwrap();
        assert_eq!(a.term, Term(4));
        assert_eq!(a.history, vec![(Term(2), NodeId(1)), (Term(3), NodeId(2))]);
        let d = m.assign_done("dml_0", Term(4)).await.unwrap();
        assert!(d.history.is_empty());
        assert_eq!(d.node, Some(NodeId(3)));

        // Error report on the current term; reassigning on the same node bumps the term.
        assert!(m.mark_unavailable("dml_0", Term(4)).await.unwrap());
        assert_eq!(m.get("dml_0").unwrap().state, PChannelState::Unavailable);
        assert!(!m.mark_unavailable("dml_0", Term(4)).await.unwrap());
        let a = m.assign("dml_0", NodeId(3)).await.unwrap();
        assert_eq!(a.term, Term(5));
        assert_eq!(a.history, vec![(Term(4), NodeId(3))]);

        // Everything is persisted: a second coordinator loads the same records.
        let other =
            ChannelManager::init(common::second_handle(&b).await, b.keys.clone(), &names(3))
                .await
                .unwrap();
        assert_eq!(other.get("dml_0").unwrap(), m.get("dml_0").unwrap());
        assert_eq!(other.get("dml_1").unwrap(), m.get("dml_1").unwrap());
        assert_eq!(other.get("dml_2").unwrap().term, Term(1), "new one created");
        assert_eq!(other.list().len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pchannel_and_stale_terms_change_nothing() {
    for b in common::backends("pchannel_stale").await {
        let m = ChannelManager::init(b.store.clone(), b.keys.clone(), &names(1))
            .await
            .unwrap();
        m.assign("dml_0", NodeId(1)).await.unwrap();
        m.assign_done("dml_0", Term(2)).await.unwrap();
        let key = b.keys.pchannel("dml_0");
        let before = b.store.get(&key).await.unwrap().unwrap();

        for r in [
            m.assign_done("dml_0", Term(1)).await.map(|_| ()),
            m.assign_done("dml_0", Term(3)).await.map(|_| ()),
            m.mark_unavailable("dml_0", Term(1)).await.map(|_| ()),
        ] {
            assert!(
                matches!(r, Err(CoordError::StaleTerm { ref pchannel, current: 2, .. }) if pchannel == "dml_0"),
                "{}: {r:?}",
                b.name
            );
        }
        for r in [
            m.assign("nope", NodeId(1)).await.map(|_| ()),
            m.assign_done("nope", Term(2)).await.map(|_| ()),
            m.mark_unavailable("nope", Term(2)).await.map(|_| ()),
            m.get("nope").map(|_| ()),
        ] {
            assert!(
                matches!(r, Err(CoordError::UnknownPChannel(ref n)) if n == "nope"),
                "{r:?}"
            );
        }
        assert_eq!(b.store.get(&key).await.unwrap().unwrap(), before);
        assert!(
            b.store
                .get(&b.keys.pchannel("nope"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(m.get("dml_0").unwrap().state, PChannelState::Assigned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_value_is_reported_and_left_alone() {
    for b in common::backends("pchannel_malformed").await {
        let m = ChannelManager::init(b.store.clone(), b.keys.clone(), &names(2))
            .await
            .unwrap();
        let key = b.keys.pchannel("dml_1");
        let garbage = Bytes::from_static(b"\xff\x01not a pchannel record");
        b.store
            .put(&key, garbage.clone(), Condition::None, None)
            .await
            .unwrap();
        let stored = b.store.get(&key).await.unwrap().unwrap();

        // A manager holding the old revision loses its compare-and-set, re-reads, and reports
        // the bad value instead of overwriting it.
        let r = m.assign("dml_1", NodeId(1)).await;
        assert!(
            matches!(r, Err(CoordError::Malformed { key: ref k, .. }) if *k == key),
            "{}: {r:?}",
            b.name
        );
        // A starting coordinator refuses to load it.
        let r = ChannelManager::init(b.store.clone(), b.keys.clone(), &names(2)).await;
        assert!(matches!(r, Err(CoordError::Malformed { key: ref k, .. }) if *k == key));
        assert_eq!(b.store.get(&key).await.unwrap().unwrap(), stored);
        assert_eq!(stored.value, garbage);
        // The healthy record is still usable.
        assert_eq!(m.assign("dml_0", NodeId(1)).await.unwrap().term, Term(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_coordinators_never_persist_a_term_twice() {
    const ROUNDS: usize = 100;
    let channels = names(3);
    for b in common::backends("pchannel_race").await {
        let first = Arc::new(
            ChannelManager::init(b.store.clone(), b.keys.clone(), &channels)
                .await
                .unwrap(),
        );
        let second = Arc::new(
            ChannelManager::init(common::second_handle(&b).await, b.keys.clone(), &channels)
                .await
                .unwrap(),
        );
        let prefix = b.keys.pchannel_prefix();
        let (_, start) = b.store.scan_prefix(&prefix).await.unwrap();
        let mut watch = b.store.watch_prefix(&prefix, start + 1).await.unwrap();

        let mut tasks = Vec::new();
        for (who, m) in [(0u64, first.clone()), (1, second.clone())] {
            let channels = channels.clone();
            tasks.push(tokio::spawn(async move {
                let (mut won, mut lost) = (BTreeMap::<String, Vec<Term>>::new(), 0usize);
                for i in 0..ROUNDS {
                    for ch in &channels {
                        // Alternate targets so every call is a real move.
                        let node = NodeId(who * 10 + (i % 2) as u64);
                        match m.assign(ch.as_str(), node).await {
                            Ok(meta) => won.entry(ch.to_string()).or_default().push(meta.term),
                            Err(CoordError::Conflict(_)) => lost += 1,
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                }
                (won, lost)
            }));
        }
        let mut won_terms: BTreeMap<String, Vec<Term>> = BTreeMap::new();
        let mut conflicts = 0;
        for t in tasks {
            let (won, lost) = t.await.unwrap();
            conflicts += lost;
            for (ch, terms) in won {
                won_terms.entry(ch).or_default().extend(terms);
            }
        }
        let wins: usize = won_terms.values().map(Vec::len).sum();
        assert_eq!(wins + conflicts, 2 * ROUNDS * channels.len());

        // Every persisted write, in revision order: per pchannel the terms go 2, 3, 4, ... with
        // no repeat and no gap, and each is a term one of the managers was told it won.
        let mut persisted: BTreeMap<String, Vec<Term>> = BTreeMap::new();
        let mut seen = 0;
        while seen < wins {
            let ev = tokio::time::timeout(Duration::from_secs(20), watch.next())
                .await
                .expect("watch delivers every write within 20 s")
                .expect("watch open")
                .unwrap();
            let WatchEvent::Put(kv) = ev else {
                panic!("unexpected delete {ev:?}")
            };
            let name = kv.key.strip_prefix(&prefix).unwrap().to_owned();
            let meta =
                sluice_coord::pchannel::PChannelMeta::decode(&kv.key, &name, &kv.value).unwrap();
            persisted.entry(name).or_default().push(meta.term);
            seen += 1;
        }
        for ch in &channels {
            let terms = &persisted[ch.as_str()];
            let expected: Vec<Term> = (2..2 + terms.len() as u64).map(Term).collect();
            assert_eq!(terms, &expected, "{}: terms of {ch}", b.name);
            let mut won = won_terms[ch.as_str()].clone();
            won.sort();
            assert_eq!(&won, terms, "{}: winners of {ch}", b.name);
            // Both managers converge on the stored record.
            let last = *terms.last().unwrap();
            assert_eq!(first.refresh(ch.as_str()).await.unwrap().term, last);
            assert_eq!(second.refresh(ch.as_str()).await.unwrap().term, last);
        }
        eprintln!(
            "{}: {wins} assignments won, {conflicts} conflicts over {} attempts",
            b.name,
            2 * ROUNDS * channels.len()
        );
    }
}
