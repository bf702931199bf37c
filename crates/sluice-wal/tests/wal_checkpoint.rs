//! Recovery from a snapshot: a WAL that saved one reopens from its checkpoint, replays only
//! what follows it, and ends up in the state a full replay of the log gives.

mod common;

use common::*;
use sluice_log::{DeliverPolicy, OpenOptions, ReadOptions};
use sluice_types::{ErrorCode, MessageId, Term};
use sluice_wal::{Wal, WalConfig};

/// Waits until the replica has applied everything acknowledged so far (a timetick released
/// it), then saves a snapshot.
async fn checkpoint_now(wal: &Wal) {
    let before = wal.latest_mvcc(&vchannel(COLLECTION));
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if wal.latest_mvcc(&vchannel(COLLECTION)) > before {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    wal.checkpoint().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_replays_only_what_follows_the_checkpoint_and_matches_a_full_replay() {
    for backend in [memory(), local()] {
        let h = Harness::new(backend);
        let wal = h.open(1).await;
        wal.append(create_collection(COLLECTION)).await.unwrap();
        wal.append(create_collection(COLLECTION + 1)).await.unwrap();
        for i in 0..300 {
            wal.append(insert(COLLECTION, &format!("a{i}"), 100))
                .await
                .unwrap();
        }
        wal.append(manual_flush(&vchannel(COLLECTION)))
            .await
            .unwrap();
        wal.append(drop_collection(COLLECTION + 1)).await.unwrap();
        checkpoint_now(&wal).await;
        for i in 0..7 {
            wal.append(insert(COLLECTION, &format!("b{i}"), 100))
                .await
                .unwrap();
        }
        // A crash: term 1 never closes (no last snapshot); term 2 fences it.
        let growing_before = wal.growing_segments();
        assert_eq!(growing_before.iter().map(|(_, b)| b).sum::<u64>(), 700);

        let two = h.open(2).await;
        let stats = two.recovery_stats();
        assert!(stats.checkpoint.is_some(), "{stats:?}");
        // The 7 inserts after the checkpoint (and perhaps a timetick or two), not 300+.
        assert!(
            stats.replayed >= 7 && stats.replayed < 20,
            "replayed {} records",
            stats.replayed
        );
        assert_eq!(two.growing_segments(), growing_before);
        let err = two
            .append(insert(COLLECTION + 1, "dropped", 10))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unrecoverable, "{err}");
        two.close().await;
        drop(wal);

        // The same state as a replay of the whole log.
        let full = h.open_full_replay(3).await;
        assert_eq!(full.recovery_stats().checkpoint, None);
        assert!(full.recovery_stats().replayed > 300);
        assert_eq!(full.growing_segments(), growing_before);
        full.close().await;

        // Term 2 closed gracefully and saved a last snapshot at its first timetick or later:
        // term 4 replays (almost) nothing.
        let four = h.open(4).await;
        assert!(
            four.recovery_stats().replayed <= 3,
            "{:?}",
            four.recovery_stats()
        );
        assert_eq!(four.growing_segments(), growing_before);
        four.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_saved_after_the_checkpoint_are_not_applied_twice() {
    // A store that wrote its segment records and then crashed before the checkpoint: the
    // records are newer than the checkpoint. Replay must not add those inserts again.
    let h = Harness::new(memory());
    let wal = h.open(1).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    for i in 0..10 {
        wal.append(insert(COLLECTION, &format!("a{i}"), 100))
            .await
            .unwrap();
    }
    checkpoint_now(&wal).await;
    let old = h.store.get(&pchannel()).unwrap();
    for i in 0..5 {
        wal.append(insert(COLLECTION, &format!("b{i}"), 100))
            .await
            .unwrap();
    }
    checkpoint_now(&wal).await;
    for i in 0..3 {
        wal.append(insert(COLLECTION, &format!("c{i}"), 100))
            .await
            .unwrap();
    }
    let mut torn = h.store.get(&pchannel()).unwrap();
    assert_ne!(torn.checkpoint, old.checkpoint);
    assert_eq!(torn.segments[0].bytes, 1500);
    torn.checkpoint = old.checkpoint.clone();
    h.store.put(&pchannel(), torn);

    let two = h.open(2).await;
    assert_eq!(
        two.recovery_stats().checkpoint.unwrap().1.0,
        old.checkpoint.timestamp
    );
    let bytes: u64 = two.growing_segments().iter().map(|(_, b)| b).sum();
    assert_eq!(bytes, 1800, "every insert counted once");
    two.close().await;
    drop(wal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_the_log_no_longer_holds_is_a_clear_error_with_a_way_out() {
    let h = Harness::new(memory());
    let wal = h.open(1).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal.append(insert(COLLECTION, "a", 100)).await.unwrap();
    checkpoint_now(&wal).await;
    wal.append(insert(COLLECTION, "after", 100)).await.unwrap();
    let snap = h.store.get(&pchannel()).unwrap();

    // Someone truncates the log past the checkpoint.
    let log = h
        .backend
        .provider
        .open(OpenOptions::read_write(pchannel(), Term(2)))
        .await
        .unwrap();
    log.truncate(snap.checkpoint.id().unwrap()).await.unwrap();
    let mut s = log
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let oldest = s.next().await.unwrap().unwrap().id();
    assert!(oldest > snap.checkpoint.id().unwrap());
    log.close().await;
    // Term 1 learns it was replaced (and stops saving snapshots); the stored one is `snap`.
    let fenced = wal.append(insert(COLLECTION, "late", 1)).await.unwrap_err();
    assert_eq!(fenced.code(), ErrorCode::ChannelFenced, "{fenced}");
    wal.close().await;
    h.store.put(&pchannel(), snap.clone());

    let err = h.try_open(3, fast_config()).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.code(), ErrorCode::Unrecoverable, "{text}");
    assert!(text.contains("no longer holds"), "{text}");
    assert!(
        text.contains("wal.replay_past_missing_checkpoint"),
        "{text}"
    );

    // The documented way out opens it, with the snapshot's state.
    let config = WalConfig {
        replay_past_missing_checkpoint: true,
        ..fast_config()
    };
    let wal = h.try_open(4, config).await.unwrap();
    assert_eq!(
        wal.growing_segments().iter().map(|(_, b)| b).sum::<u64>(),
        200,
        "the snapshot's 100 bytes and the retained insert after the checkpoint"
    );
    wal.append(insert(COLLECTION, "b", 100)).await.unwrap();
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_garbled_checkpoint_is_an_error_not_a_panic() {
    let h = Harness::new(memory());
    let wal = h.open(1).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal.close().await;
    let mut snap = h.store.get(&pchannel()).unwrap();
    snap.checkpoint.message_id = vec![1, 2, 3];
    h.store.put(&pchannel(), snap.clone());
    let err = h.try_open(2, fast_config()).await.unwrap_err();
    assert!(err.to_string().contains("3 bytes"), "{err}");

    // A checkpoint id beyond the log's end: nothing to replay from, reported as missing.
    snap.checkpoint.message_id = MessageId::from_parts(u64::MAX, 0).to_bytes().to_vec();
    h.store.put(&pchannel(), snap);
    let err = h.try_open(3, fast_config()).await.unwrap_err();
    assert!(err.to_string().contains("past the end of its log"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_was_replaced_cannot_put_an_older_snapshot_back() {
    let h = Harness::new(memory());
    let one = h.open(1).await;
    one.append(create_collection(COLLECTION)).await.unwrap();
    // The first snapshot is saved at open; the next change waits for the next interval.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    one.append(create_collection(COLLECTION + 1)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let two = h.open(2).await;
    two.append(insert(COLLECTION, "a", 100)).await.unwrap();
    checkpoint_now(&two).await;
    let saved = h.store.get(&pchannel()).unwrap();
    assert_eq!(saved.checkpoint.term, 2);

    let err = one.checkpoint().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChannelFenced, "{err}");
    assert_eq!(h.store.get(&pchannel()).unwrap(), saved);
    two.close().await;
    drop(one);
}
