//! Coordinator leader election against real meta stores (embedded redb, etcd).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_coord::CoordError;
use sluice_coord::election::{Election, current_leader};
use sluice_meta::Condition;

/// Generous bound for events that should be prompt (a loaded 2-core box).
const PROMPT: Duration = Duration::from_secs(10);
/// A TTL long enough that nothing in a test lapses by itself.
const LONG_TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_candidates_take_turns_one_leader_at_a_time() {
    for b in common::backends("elect_turns").await {
        let holders = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for name in ["c1", "c2", "c3"] {
            let store = common::second_handle(&b).await;
            let (keys, holders, order) = (b.keys.clone(), holders.clone(), order.clone());
            let observer = b.store.clone();
            tasks.spawn(async move {
                let election = Election::new(store, &keys, name, LONG_TTL);
                let leadership = election.campaign().await.unwrap();
                // The campaign resolved: nobody else may be leader now.
                assert_eq!(
                    holders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "{name} became leader while another one was"
                );
                assert_eq!(
                    current_leader(observer.as_ref(), &keys)
                        .await
                        .unwrap()
                        .as_deref(),
                    Some(name)
                );
                order.lock().push(name);
                // Hold for a while so the others really wait on a live leader.
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(
                    current_leader(observer.as_ref(), &keys)
                        .await
                        .unwrap()
                        .as_deref(),
                    Some(name)
                );
                assert!(!leadership.is_lost());
                holders.fetch_sub(1, Ordering::SeqCst);
                leadership.resign().await.unwrap();
            });
        }
        let all = tokio::time::timeout(PROMPT * 3, async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        })
        .await;
        assert!(
            all.is_ok(),
            "{}: the candidates did not all get a turn",
            b.name
        );
        let order = order.lock().clone();
        eprintln!("{}: leaders in turn: {order:?}", b.name);
        assert_eq!(order.len(), 3, "{}", b.name);
        assert_eq!(
            current_leader(b.store.as_ref(), &b.keys).await.unwrap(),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_promptly_when_the_leader_resigns() {
    for b in common::backends("elect_resign").await {
        let leader = Election::new(b.store.clone(), &b.keys, "leader", LONG_TTL)
            .campaign()
            .await
            .unwrap();
        let standby = Election::new(
            common::second_handle(&b).await,
            &b.keys,
            "standby",
            LONG_TTL,
        );
        let campaign = tokio::spawn(async move { standby.campaign().await });
        // The standby waits while the leader holds the key.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !campaign.is_finished(),
            "{}: the standby won while the leader held",
            b.name
        );
        assert_eq!(
            current_leader(b.store.as_ref(), &b.keys)
                .await
                .unwrap()
                .as_deref(),
            Some("leader")
        );
        let resigned = Instant::now();
        leader.resign().await.unwrap();
        // Well within the 60 s TTL: the takeover follows the resignation, not a lapse.
        let new_leader = tokio::time::timeout(PROMPT, campaign)
            .await
            .expect("standby did not take over")
            .unwrap()
            .unwrap();
        eprintln!("{}: takeover {:?} after resign", b.name, resigned.elapsed());
        assert_eq!(new_leader.candidate(), "standby");
        assert_eq!(
            current_leader(b.store.as_ref(), &b.keys)
                .await
                .unwrap()
                .as_deref(),
            Some("standby")
        );
        new_leader.resign().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_ttl_when_the_leader_crashes() {
    for b in common::backends("elect_crash").await {
        let ttl = common::short_ttl(&b);
        let leader = Election::new(b.store.clone(), &b.keys, "leader", ttl)
            .campaign()
            .await
            .unwrap();
        let standby = Election::new(common::second_handle(&b).await, &b.keys, "standby", ttl);
        let campaign = tokio::spawn(async move { standby.campaign().await });
        // Over several TTLs the leader's keep-alive holds the key and the standby waits.
        tokio::time::sleep(ttl * 3).await;
        assert!(
            !campaign.is_finished(),
            "{}: standby won from a live leader",
            b.name
        );
        assert!(!leader.is_lost(), "{}: live leader lost its lease", b.name);

        let crashed = Instant::now();
        drop(leader);
        let new_leader = tokio::time::timeout(ttl * 4 + PROMPT, campaign)
            .await
            .expect("standby did not take over")
            .unwrap()
            .unwrap();
        eprintln!(
            "{}: takeover {:?} after the leader crashed (TTL {ttl:?})",
            b.name,
            crashed.elapsed()
        );
        assert_eq!(
            current_leader(b.store.as_ref(), &b.keys)
                .await
                .unwrap()
                .as_deref(),
            Some("standby")
        );
        new_leader.resign().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_candidate_takes_its_own_key_over_without_waiting_out_the_lease() {
    for b in common::backends("elect_restart").await {
        let before = Election::new(b.store.clone(), &b.keys, "coord-10.0.0.1:7731", LONG_TTL)
            .campaign()
            .await
            .unwrap();
        let old_lease = b.store.get(&b.keys.leader()).await.unwrap().unwrap().lease;
        // The process dies (its lease stays for LONG_TTL) and starts again at the same address;
        // another candidate waits meanwhile.
        drop(before);
        let standby = Election::new(
            common::second_handle(&b).await,
            &b.keys,
            "coord-other",
            LONG_TTL,
        );
        let standby = tokio::spawn(async move { standby.campaign().await });
        let again = Election::new(
            common::second_handle(&b).await,
            &b.keys,
            "coord-10.0.0.1:7731",
            LONG_TTL,
        );
        let started = Instant::now();
        let leader = tokio::time::timeout(PROMPT, again.campaign())
            .await
            .unwrap_or_else(|_| panic!("{}: the restarted candidate waited", b.name))
            .unwrap();
        assert!(started.elapsed() < LONG_TTL / 4, "{}", b.name);
        let kv = b.store.get(&b.keys.leader()).await.unwrap().unwrap();
        assert_ne!(kv.lease, old_lease, "{}", b.name);
        assert_eq!(
            current_leader(b.store.as_ref(), &b.keys)
                .await
                .unwrap()
                .as_deref(),
            Some("coord-10.0.0.1:7731")
        );
        // The old lease was revoked with the key taken over, and the standby did not win.
        assert!(!standby.is_finished(), "{}: the standby won too", b.name);
        assert!(!leader.is_lost(), "{}", b.name);
        leader.resign().await.unwrap();
        tokio::time::timeout(PROMPT, standby)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .resign()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_lost_when_the_key_or_the_lease_goes() {
    for b in common::backends("elect_lost").await {
        // Someone deletes the key (an operator): the leader must step down.
        let leader = Election::new(b.store.clone(), &b.keys, "a", LONG_TTL)
            .campaign()
            .await
            .unwrap();
        b.store
            .delete(&b.keys.leader(), Condition::None)
            .await
            .unwrap();
        tokio::time::timeout(PROMPT, leader.lost())
            .await
            .unwrap_or_else(|_| panic!("{}: lost() did not resolve on delete", b.name));
        drop(leader);

        // The lease ends under the leader.
        let ttl = common::short_ttl(&b);
        let leader = Election::new(b.store.clone(), &b.keys, "b", ttl)
            .campaign()
            .await
            .unwrap();
        b.store.revoke(leader.lease()).await.unwrap();
        tokio::time::timeout(ttl + PROMPT, leader.lost())
            .await
            .unwrap_or_else(|_| panic!("{}: lost() did not resolve on revoke", b.name));
        assert_eq!(
            current_leader(b.store.as_ref(), &b.keys).await.unwrap(),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_leader_value_is_reported() {
    for b in common::backends("elect_malformed").await {
        b.store
            .put(
                &b.keys.leader(),
                Bytes::from_static(b"\xff\xff"),
                Condition::None,
                None,
            )
            .await
            .unwrap();
        let err = current_leader(b.store.as_ref(), &b.keys).await.unwrap_err();
        match err {
            CoordError::Malformed { key, .. } => assert_eq!(key, b.keys.leader()),
            other => panic!("{}: expected Malformed, got {other:?}", b.name),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_watches_neither_lose_leadership_nor_stall_a_standby() {
    for b in common::backends("elect_rewatch").await {
        let flaky = common::FaultyStore::new(b.store.clone());
        let leader = Election::new(flaky.clone(), &b.keys, "leader", LONG_TTL)
            .campaign()
            .await
            .unwrap();
        let standby = Election::new(flaky.clone(), &b.keys, "standby", LONG_TTL);
        let campaign = tokio::spawn(async move { standby.campaign().await });
        // The leader watches its key, the standby waits on a watch too.
        common::wait_for_watch_calls(&flaky, 2, "leader and standby watching").await;

        // Both watches break and the next attempt is refused; both must resume watching.
        flaky.break_watches(1);
        common::wait_for_watch_calls(&flaky, 5, "both re-watching").await;
        assert!(
            !leader.is_lost(),
            "{}: a broken watch is not a lost key",
            b.name
        );
        assert!(
            !campaign.is_finished(),
            "{}: standby won from a live leader",
            b.name
        );

        // The resumed watches still work: the standby takes over on resign...
        let calls = flaky.watch_calls();
        leader.resign().await.unwrap();
        let new_leader = tokio::time::timeout(PROMPT, campaign)
            .await
            .expect("standby did not take over")
            .unwrap()
            .unwrap();
        assert_eq!(new_leader.candidate(), "standby");
        // ...and a leader whose watch broke still notices its key going.
        common::wait_for_watch_calls(&flaky, calls + 1, "new leader watching").await;
        flaky.break_watches(0);
        common::wait_for_watch_calls(&flaky, calls + 2, "new leader re-watching").await;
        b.store
            .delete(&b.keys.leader(), Condition::None)
            .await
            .unwrap();
        tokio::time::timeout(PROMPT, new_leader.lost())
            .await
            .unwrap_or_else(|_| panic!("{}: lost() did not resolve after a re-watch", b.name));
    }
}
