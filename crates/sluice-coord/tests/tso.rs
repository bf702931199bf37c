//! The timestamp oracle and the id allocator against real meta stores (embedded redb, etcd).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use sluice_coord::CoordError;
use sluice_coord::tso::{
    Clock, HighWater, Ids, IdsConfig, MAX_TIMESTAMPS_PER_CALL, ManualClock, SystemClock, Tso,
    TsoConfig,
};
use sluice_meta::Condition;
use sluice_types::Timestamp;

/// A realistic wall-clock reading for the manual clock.
const T0: u64 = 1_780_000_000_000;

fn config(window: Duration) -> TsoConfig {
    TsoConfig {
        window,
        ..TsoConfig::default()
    }
}

/// Allocates `calls` batches of `count`; checks each batch starts above the previous batch's
/// last timestamp and returns the highest timestamp handed out.
async fn allocate_increasing(tso: &Tso, calls: usize, count: u32, above: Timestamp) -> Timestamp {
    let mut last = above;
    for _ in 0..calls {
        let first = tso.allocate(count).await.unwrap();
        assert!(
            first > last,
            "timestamp {first:?} is not above {last:?} handed out before"
        );
        last = Timestamp(first.0 + u64::from(count) - 1);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_oracle_never_goes_back_even_when_the_clock_steps_back() {
    for b in common::backends("tso_restart").await {
        let clock = ManualClock::new(T0);
        let tso = Tso::open(
            b.store.clone(),
            &b.keys,
            TsoConfig::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        let mut high = allocate_increasing(&tso, 100, 1000, Timestamp::MIN).await;
        clock.advance(Duration::from_millis(5));
        high = allocate_increasing(&tso, 10, 7, high).await;
        // The clock steps back while the oracle runs: it keeps going up.
        clock.step_back(Duration::from_secs(60));
        high = allocate_increasing(&tso, 10, 7, high).await;
        tso.close().await;

        // A restart on another handle, same clock.
        let tso = Tso::open(
            common::second_handle(&b).await,
            &b.keys,
            TsoConfig::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        high = allocate_increasing(&tso, 10, 100, high).await;
        tso.close().await;

        // A restart after the clock stepped back by an hour.
        clock.step_back(Duration::from_secs(3600));
        let tso = Tso::open(
            b.store.clone(),
            &b.keys,
            TsoConfig::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        let first = tso.allocate(1).await.unwrap();
        assert!(
            first > high,
            "{}: {first:?} after restart is not above {high:?}",
            b.name
        );
        assert!(
            first.physical_ms() > clock.now_ms() + 3600 * 1000 - 1000,
            "{}: the oracle must stay ahead of the stepped-back clock",
            b.name
        );
        eprintln!("{}: restarts never went back (last {high:?})", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_overflow_moves_to_the_next_millisecond_and_extends_the_window() {
    for b in common::backends("tso_overflow").await {
        // A frozen clock and a 5 ms window: whole-millisecond batches march the physical part
        // past the window, so the oracle must extend it (synchronously) several times.
        let clock = ManualClock::new(T0);
        let tso = Tso::open(
            b.store.clone(),
            &b.keys,
            config(Duration::from_millis(5)),
            clock.clone(),
        )
        .await
        .unwrap();
        let first_end = tso.window_end_ms();
        let mut last = Timestamp::MIN;
        for i in 0..20u64 {
            let first = tso.allocate(MAX_TIMESTAMPS_PER_CALL).await.unwrap();
            assert_eq!(
                first.logical(),
                0,
                "{}: a full batch starts a millisecond",
                b.name
            );
            assert_eq!(
                first.physical_ms(),
                T0 + i,
                "{}: one millisecond per full batch",
                b.name
            );
            assert!(first > last);
            last = Timestamp(first.0 + u64::from(MAX_TIMESTAMPS_PER_CALL) - 1);
            assert!(
                last.physical_ms() < tso.window_end_ms(),
                "{}: handed out past the window",
                b.name
            );
        }
        assert!(
            tso.window_end_ms() > first_end + 14,
            "{}: window was extended",
            b.name
        );
        // The persisted end covers everything handed out, so a restart starts above it.
        tso.close().await;
        let tso = Tso::open(
            b.store.clone(),
            &b.keys,
            config(Duration::from_millis(5)),
            clock,
        )
        .await
        .unwrap();
        assert!(tso.allocate(1).await.unwrap() > last, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_are_unique_and_increasing() {
    for b in common::backends("tso_concurrent").await {
        // A short window so background and synchronous extensions both happen under load.
        let tso = Arc::new(
            Tso::open(
                b.store.clone(),
                &b.keys,
                config(Duration::from_millis(30)),
                Arc::new(SystemClock),
            )
            .await
            .unwrap(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8u32 {
            let tso = tso.clone();
            tasks.spawn(async move {
                let mut ranges = Vec::new();
                for i in 0..300u32 {
                    let count = 1 + (task * 31 + i * 17) % 500;
                    let first = tso.allocate(count).await.unwrap();
                    if let Some(&(prev, prev_count)) = ranges.last() {
                        let prev: Timestamp = prev;
                        assert!(
                            first.0 >= prev.0 + u64::from(prev_count),
                            "one caller's batches must increase"
                        );
                    }
                    ranges.push((first, count));
                }
                ranges
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        all.sort();
        for w in all.windows(2) {
            let ((a, n), (c, _)) = (w[0], w[1]);
            assert!(
                a.0 + u64::from(n) <= c.0,
                "{}: batches {a:?}+{n} and {c:?} overlap",
                b.name
            );
        }
        let total: u64 = all.iter().map(|(_, n)| u64::from(*n)).sum();
        eprintln!(
            "{}: {} batches, {total} timestamps, no overlap",
            b.name,
            all.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_oracle_fences_the_first() {
    for b in common::backends("tso_fence").await {
        let clock = ManualClock::new(T0);
        let a = Tso::open(
            b.store.clone(),
            &b.keys,
            TsoConfig::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        let a_high = allocate_increasing(&a, 5, 10, Timestamp::MIN).await;
        let b_oracle = Tso::open(
            common::second_handle(&b).await,
            &b.keys,
            TsoConfig::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        let b_first = b_oracle.allocate(1).await.unwrap();
        assert!(
            b_first > a_high,
            "{}: the newer oracle starts above the older one's window",
            b.name
        );
        // The old oracle's window runs out: it must extend, loses the compare-and-set, and hands
        // nothing out from then on.
        clock.advance(Duration::from_secs(4));
        let err = a.allocate(1).await.unwrap_err();
        assert!(matches!(err, CoordError::NotLeader), "{}: {err:?}", b.name);
        let err = a.allocate(1).await.unwrap_err();
        assert!(
            matches!(err, CoordError::NotLeader),
            "{}: stays fenced: {err:?}",
            b.name
        );
        assert!(b_oracle.allocate(1).await.unwrap() > b_first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_oracles_never_hand_out_the_same_timestamp() {
    for b in common::backends("tso_race").await {
        let stores = [b.store.clone(), common::second_handle(&b).await];
        let mut tasks = tokio::task::JoinSet::new();
        for (who, store) in stores.into_iter().enumerate() {
            let keys = b.keys.clone();
            tasks.spawn(async move {
                // A 20 ms window: each racer must re-persist it often, so the loser finds out.
                let tso = match Tso::open(
                    store,
                    &keys,
                    config(Duration::from_millis(20)),
                    Arc::new(SystemClock),
                )
                .await
                {
                    Ok(t) => t,
                    Err(e) => return (who, Vec::new(), Some(e)),
                };
                let mut got = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
                while tokio::time::Instant::now() < deadline {
                    match tso.allocate(50).await {
                        Ok(t) => got.push(t),
                        Err(e) => return (who, got, Some(e)),
                    }
                    tokio::task::yield_now().await;
                }
                (who, got, None)
            });
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (who, got, err) = r.unwrap();
            eprintln!(
                "{}: racer {who} handed out {} batches, error {err:?}",
                b.name,
                got.len()
            );
            all.extend(got);
            errors.extend(err);
        }
        all.sort();
        for w in all.windows(2) {
            assert!(
                w[0].0 + 50 <= w[1].0,
                "{}: batches {:?} and {:?} overlap",
                b.name,
                w[0],
                w[1]
            );
        }
        assert_eq!(
            errors.len(),
            1,
            "{}: exactly one racer loses: {errors:?}",
            b.name
        );
        assert!(
            matches!(errors[0], CoordError::NotLeader | CoordError::Conflict(_)),
            "{}: {:?}",
            b.name,
            errors[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_never_repeat_across_restarts() {
    for b in common::backends("ids_restart").await {
        let mut seen = HashSet::new();
        let mut high = 0;
        for round in 0..4u64 {
            let store = if round % 2 == 0 {
                b.store.clone()
            } else {
                common::second_handle(&b).await
            };
            let ids = Ids::open(store, &b.keys, IdsConfig { block: 100 })
                .await
                .unwrap();
            for count in [1u64, 1, 7, 99, 250, 1, 3] {
                let first = ids.allocate(count).await.unwrap();
                assert!(first > high, "{}: id {first} not above {high}", b.name);
                assert!(first >= 1);
                for id in first..first + count {
                    assert!(seen.insert(id), "{}: id {id} handed out twice", b.name);
                }
                high = first + count - 1;
            }
            let wal_id = ids.allocate_id().await.unwrap();
            assert!(u64::try_from(wal_id).unwrap() > high);
            high = u64::try_from(wal_id).unwrap();
        }
        eprintln!(
            "{}: {} ids over 4 restarts, none repeated",
            b.name,
            seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_marks_are_reported_and_left_alone() {
    for b in common::backends("tso_malformed").await {
        let garbage = Bytes::from_static(b"not a protobuf");
        let wrong_format = Bytes::from(
            HighWater {
                format: 9,
                value: 1,
                owner: 1,
            }
            .encode_to_vec(),
        );
        let out_of_range = Bytes::from(
            HighWater {
                format: 1,
                value: u64::MAX,
                owner: 1,
            }
            .encode_to_vec(),
        );
        for bad in [garbage, wrong_format, out_of_range] {
            for key in [b.keys.tso(), b.keys.id()] {
                let rev = b
                    .store
                    .put(&key, bad.clone(), Condition::None, None)
                    .await
                    .unwrap();
                let err = if key == b.keys.tso() {
                    Tso::open(
                        b.store.clone(),
                        &b.keys,
                        TsoConfig::default(),
                        Arc::new(SystemClock),
                    )
                    .await
                    .unwrap_err()
                } else {
                    Ids::open(b.store.clone(), &b.keys, IdsConfig::default())
                        .await
                        .unwrap_err()
                };
                match err {
                    CoordError::Malformed { key: k, .. } => assert_eq!(k, key, "{}", b.name),
                    other => panic!("{}: expected Malformed for {key}, got {other:?}", b.name),
                }
                let kv = b.store.get(&key).await.unwrap().unwrap();
                assert_eq!(
                    kv.value, bad,
                    "{}: the bad value must stay as it was",
                    b.name
                );
                assert_eq!(kv.mod_revision, rev, "{}: nothing may be written", b.name);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_counts_are_invalid_arguments_and_change_nothing() {
    for b in common::backends("tso_bad_count").await {
        let clock = ManualClock::new(T0);
        let tso = Tso::open(b.store.clone(), &b.keys, TsoConfig::default(), clock)
            .await
            .unwrap();
        let before = tso.allocate(1).await.unwrap();
        for bad in [0, MAX_TIMESTAMPS_PER_CALL + 1, u32::MAX] {
            let err = tso.allocate(bad).await.unwrap_err();
            assert!(
                matches!(err, CoordError::InvalidArgument(_)),
                "{}: {err:?}",
                b.name
            );
        }
        // The frozen clock shows nothing was consumed: the next timestamp follows at once.
        assert_eq!(
            tso.allocate(1).await.unwrap(),
            Timestamp(before.0 + 1),
            "{}",
            b.name
        );

        let ids = Ids::open(b.store.clone(), &b.keys, IdsConfig::default())
            .await
            .unwrap();
        let err = ids.allocate(0).await.unwrap_err();
        assert!(
            matches!(err, CoordError::InvalidArgument(_)),
            "{}: {err:?}",
            b.name
        );
        let err = ids.allocate(u64::MAX).await.unwrap_err();
        assert!(
            matches!(err, CoordError::InvalidArgument(_)),
            "{}: {err:?}",
            b.name
        );
        assert_eq!(
            ids.allocate(1).await.unwrap(),
            1,
            "{}: nothing was consumed",
            b.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_write_acknowledgement_is_not_taken_for_a_takeover() {
    for b in common::backends("tso_lost_ack").await {
        let faulty = common::FaultyStore::new(b.store.clone());
        let clock = ManualClock::new(T0);
        let tso = Tso::open(faulty.clone(), &b.keys, TsoConfig::default(), clock.clone())
            .await
            .unwrap();
        let before = tso.allocate(1).await.unwrap();
        // The window runs out; its extension is applied but the answer is lost.
        clock.advance(Duration::from_secs(10));
        faulty.lose_next_put_acks(1);
        let err = tso.allocate(1).await.unwrap_err();
        assert!(err.retryable(), "{}: {err:?}", b.name);
        // The retry finds its own write (by its nonce) and carries on: not fenced.
        let after = tso.allocate(1).await.unwrap();
        assert!(after > before, "{}", b.name);
        let mark =
            HighWater::decode(b.store.get(&b.keys.tso()).await.unwrap().unwrap().value).unwrap();
        assert!(
            after.physical_ms() < mark.value,
            "{}: handed out past the stored mark",
            b.name
        );

        // The same for ids.
        let ids = Ids::open(faulty.clone(), &b.keys, IdsConfig { block: 10 })
            .await
            .unwrap();
        let first = ids.allocate(1).await.unwrap();
        faulty.lose_next_put_acks(1);
        let err = ids.allocate(10).await.unwrap_err();
        assert!(err.retryable(), "{}: {err:?}", b.name);
        let next = ids.allocate(10).await.unwrap();
        assert!(next > first, "{}", b.name);
        let reopened = Ids::open(b.store.clone(), &b.keys, IdsConfig { block: 10 })
            .await
            .unwrap();
        assert!(
            reopened.allocate(1).await.unwrap() >= next + 10,
            "{}",
            b.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_extended_ahead_of_the_clock_while_idle() {
    for b in common::backends("tso_idle").await {
        let tso = Tso::open(
            b.store.clone(),
            &b.keys,
            config(Duration::from_millis(300)),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let opened_end = tso.window_end_ms();
        // No allocation at all: the background task alone keeps the window ahead of the clock.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tso.window_end_ms() < opened_end + 600 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: the idle window was not extended",
                b.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tso.close().await;
        let stored =
            HighWater::decode(b.store.get(&b.keys.tso()).await.unwrap().unwrap().value).unwrap();
        assert_eq!(
            stored.value,
            tso.window_end_ms(),
            "{}: the window in memory is the stored one",
            b.name
        );
        let t = tso.allocate(1).await.unwrap();
        assert!(t.physical_ms() < stored.value, "{}", b.name);
        eprintln!(
            "{}: idle window moved from {opened_end} to {}",
            b.name, stored.value
        );
    }
}
