//! Milvus's WAL-level scenario, on the memory and local backends: concurrent autocommit inserts,
//! committed transactions with 0–4 bodies, rolled-back and abandoned transactions; three readers
//! with a vchannel + Insert filter each get strictly increasing timestamps and exactly the
//! committed set; resuming from any delivered message's last-confirmed id with a timestamp
//! filter yields exactly what came after it; a fenced WAL answers CHANNEL_FENCED.

mod common;

use std::time::Duration;

use common::*;
use sluice_log::DeliverPolicy;
use sluice_types::{ErrorCode, MessageId, MessageType, Timestamp};
use sluice_wal::scanner::{MessageFilter, ReadMessage, ScannerOptions};
use sluice_wal::{Wal, WalError};
use tokio::task::JoinSet;

/// What a reader must see: a single insert, or a committed transaction (commit id + body ids).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Expected {
    Insert(MessageId),
    Txn(MessageId, Vec<MessageId>),
}

fn key(m: &ReadMessage) -> Option<Expected> {
    match m {
        ReadMessage::Message(m) if m.message_type().ok() == Some(MessageType::Insert) => {
            Some(Expected::Insert(m.id()))
        }
        ReadMessage::Message(_) => None,
        ReadMessage::Txn(t) => {
            let mut bodies: Vec<MessageId> = t.bodies().iter().map(|b| b.id()).collect();
            bodies.sort();
            Some(Expected::Txn(t.commit().id(), bodies))
        }
    }
}

fn ts_of(m: &ReadMessage) -> Timestamp {
    m.timestamp().expect("timestamp")
}

fn options(policy: DeliverPolicy, mut extra: Vec<MessageFilter>) -> ScannerOptions {
    let mut filters = vec![MessageFilter::Types(vec![MessageType::Insert])];
    filters.append(&mut extra);
    ScannerOptions {
        vchannel: Some(vchannel(COLLECTION)),
        policy,
        filters,
        ..ScannerOptions::default()
    }
}

async fn write_mix(wal: Wal, worker: usize, ops: usize) -> Vec<Expected> {
    let mut expected = Vec::new();
    for i in 0..ops {
        let tag = format!("w{worker}-{i}");
        match (worker + i) % 6 {
            0 | 1 => {
                let r = wal.append(insert(COLLECTION, &tag, 64)).await.unwrap();
                expected.push(Expected::Insert(r.id));
            }
            2 | 3 => {
                // Committed with 0..=4 bodies appended concurrently.
                let bodies = (worker + i) % 5;
                let ctx = wal.append(begin(COLLECTION, 0)).await.unwrap().txn.unwrap();
                let mut js = JoinSet::new();
                for b in 0..bodies {
                    let wal = wal.clone();
                    let m = in_txn(insert(COLLECTION, &format!("{tag}-b{b}"), 32), ctx);
                    js.spawn(async move { wal.append(m).await.unwrap().id });
                }
                let mut ids = js.join_all().await;
                ids.sort();
                let c = wal.append(commit(COLLECTION, ctx)).await.unwrap();
                expected.push(Expected::Txn(c.id, ids));
            }
            4 => {
                let ctx = wal.append(begin(COLLECTION, 0)).await.unwrap().txn.unwrap();
                wal.append(in_txn(insert(COLLECTION, &tag, 32), ctx))
                    .await
                    .unwrap();
                wal.append(rollback(COLLECTION, ctx)).await.unwrap();
            }
            _ => {
                // Abandoned: never committed; expires after 30 ms of timestamps.
                let ctx = wal
                    .append(begin(COLLECTION, 30))
                    .await
                    .unwrap()
                    .txn
                    .unwrap();
                // Under load the keepalive may already have passed: expired is a valid answer.
                match wal.append(in_txn(insert(COLLECTION, &tag, 32), ctx)).await {
                    Ok(_) | Err(WalError::TxnExpired { .. }) => {}
                    Err(e) => panic!("abandoned txn body: {e:?}"),
                }
            }
        }
    }
    expected
}

async fn collect(
    mut s: sluice_wal::scanner::Scanner,
    want: usize,
    quiet_check: bool,
) -> Vec<ReadMessage> {
    let mut out = Vec::new();
    let mut last_data_ts = Timestamp::MIN;
    let mut last_ts = Timestamp::MIN;
    // Timeticks keep coming, so a reader that lost a message never goes silent: bound the
    // whole collection, not only each wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader got {} of {want} messages in 20 s",
            out.len()
        );
        let m = next(&mut s).await;
        let ts = ts_of(&m);
        assert!(
            ts >= last_ts,
            "timestamps went backwards: {ts} after {last_ts}"
        );
        last_ts = ts;
        if key(&m).is_some() {
            assert!(ts > last_data_ts, "data timestamps not strictly increasing");
            last_data_ts = ts;
            out.push(m);
        }
    }
    if !quiet_check {
        return out;
    }
    // Nothing else (no rolled-back or abandoned transaction) may follow.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let m = next(&mut s).await;
            if key(&m).is_some() {
                return m;
            }
        }
    })
    .await;
    assert!(
        extra.is_err(),
        "unexpected extra message {:?}",
        extra.ok().map(|m| key(&m))
    );
    out
}

async fn scenario(b: Backend) {
    let wal = open(&b, 1, fast_config()).await;
    wal.append(create_collection(COLLECTION)).await.unwrap();
    let readers: Vec<_> = (0..3)
        .map(|_| wal.read(options(DeliverPolicy::All, vec![])).unwrap())
        .collect();
    let mut writers = JoinSet::new();
    for w in 0..6 {
        writers.spawn(write_mix(wal.clone(), w, 12));
    }
    // MVCC time only moves forward while writing.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (wal, done) = (wal.clone(), done.clone());
        tokio::spawn(async move {
            // Samples until the writers are done, and once more after (the first sample may
            // come only then, on a busy machine).
            let mut last = Timestamp::MIN;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let now = wal.latest_mvcc(&vchannel(COLLECTION));
                assert!(now >= last, "MVCC went backwards: {now} after {last}");
                last = now;
                if finished {
                    break last;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut expected: Vec<Expected> = writers.join_all().await.into_iter().flatten().collect();
    expected.sort();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let last_mvcc = watcher.await.unwrap();
    let final_mvcc = wal.latest_mvcc(&vchannel(COLLECTION));
    assert!(final_mvcc >= last_mvcc && last_mvcc > Timestamp::MIN);

    for r in readers {
        let got = collect(r, expected.len(), true).await;
        let mut keys: Vec<Expected> = got.iter().filter_map(key).collect();
        keys.sort();
        assert_eq!(keys, expected, "a reader saw a different committed set");
    }

    // Resume property: StartFrom(LC(m)) + TT > TT(m) yields exactly what followed m.
    let s = wal.read(options(DeliverPolicy::All, vec![])).unwrap();
    let list = collect(s, expected.len(), false).await;
    for (k, m) in list.iter().enumerate() {
        let lc = m
            .last_confirmed()
            .expect("lc")
            .expect("every message has an LC");
        let s = wal
            .read(options(
                DeliverPolicy::StartFrom(lc),
                vec![MessageFilter::TimeTickGt(ts_of(m))],
            ))
            .unwrap();
        let after = collect(s, list.len() - k - 1, k + 1 == list.len()).await;
        let want: Vec<_> = list[k + 1..].iter().filter_map(key).collect();
        let got: Vec<_> = after.iter().filter_map(key).collect();
        assert_eq!(got, want, "resume after message {k} ({:?})", key(m));
    }
    wal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_wal_scenario_on_memory() {
    scenario(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_wal_scenario_on_local() {
    scenario(local()).await;
}

async fn fenced(b: Backend) {
    let old = open(&b, 1, fast_config()).await;
    old.append(create_collection(COLLECTION)).await.unwrap();
    let new = open(&b, 2, fast_config()).await;
    let err = old
        .append(insert(COLLECTION, "late", 8))
        .await
        .expect_err("fenced WAL accepted an append");
    assert_eq!(err.code(), ErrorCode::ChannelFenced, "{err:?}");
    assert!(!old.is_available());
    // Stays fenced.
    let err = old
        .append(insert(COLLECTION, "later", 8))
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::Fenced { .. }));
    // The new term replayed the log on open: it knows collection 100 exists, and that
    // collection 101 does not (the invariant holds on the new owner too).
    new.append(insert(COLLECTION, "new", 8)).await.unwrap();
    let err = new
        .append(insert(COLLECTION + 1, "never-created", 8))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unrecoverable);
    old.close().await;
    new.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_wal_returns_channel_fenced_on_memory() {
    fenced(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_wal_returns_channel_fenced_on_local() {
    fenced(local()).await;
}
