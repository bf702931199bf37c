//! Exactly-once appends: a message numbered by an idempotent producer is in the log once, however
//! often it is appended — concurrently, after it was acknowledged, and after the WAL reopened at a
//! higher term from its log or from a recovery snapshot — and every copy answers the original's
//! result.

mod common;

use std::time::Duration;

use common::*;
use sluice_types::read::ReadMessage;
use sluice_types::{AppendResult, ErrorCode, MessageType, MutableMessage};
use sluice_wal::producer::ProducerConfig;
use sluice_wal::scanner::{MessageFilter, ScannerOptions};
use sluice_wal::{Wal, WalConfig};

const PRODUCER: u64 = 0x5eed;

fn numbered(tag: &str, sequence: u64) -> MutableMessage {
    let mut m = insert(COLLECTION, tag, 10);
    m.set_producer(PRODUCER, sequence);
    m
}

fn same(a: &AppendResult, b: &AppendResult) {
    assert_eq!(
        (a.id, a.timestamp, a.last_confirmed),
        (b.id, b.timestamp, b.last_confirmed)
    );
}

/// The WAL of `h` opened at term 1 (`snapshots`: with recovery snapshots), holding the
/// collection the numbered inserts go to.
async fn with_collection(h: &Harness, config: WalConfig, snapshots: bool) -> Wal {
    let wal = h.open_with(1, config, snapshots).await.unwrap();
    wal.append(create_collection(COLLECTION)).await.unwrap();
    wal
}

/// The tags of every insert in the log, in order: read up to a marker insert appended now.
async fn tags(wal: &Wal) -> Vec<String> {
    static MARKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mark = format!(
        "marker-{}",
        MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    wal.append(insert(COLLECTION, &mark, 1)).await.unwrap();
    let mut s = wal
        .read(ScannerOptions {
            filters: vec![MessageFilter::Types(vec![MessageType::Insert])],
            ..ScannerOptions::default()
        })
        .unwrap();
    let mut out = Vec::new();
    loop {
        let ReadMessage::Message(m) = next(&mut s).await else {
            continue;
        };
        if m.message_type().unwrap() != MessageType::Insert {
            continue;
        }
        let tag = m.property("tag").unwrap_or_default().to_owned();
        if tag == mark {
            return out;
        }
        if !tag.starts_with("marker-") {
            out.push(tag);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_append_is_written_once_however_often_and_concurrently_it_is_sent() {
    for backend in [memory(), local()] {
        let h = Harness::new(backend);
        let wal = with_collection(&h, fast_config(), false).await;
        let first = wal.append(numbered("a", 1)).await.unwrap();
        let again = wal.append(numbered("a", 1)).await.unwrap();
        same(&first, &again);
        // Eight copies at once: one is appended, the others wait for it.
        let copies: Vec<_> = (0..8)
            .map(|_| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(numbered("b", 2)).await.unwrap() })
            })
            .collect();
        let mut results = Vec::new();
        for c in copies {
            results.push(c.await.unwrap());
        }
        for r in &results[1..] {
            same(&results[0], r);
        }
        // Another sequence is another message; an unnumbered one is appended every time.
        wal.append(numbered("c", 3)).await.unwrap();
        wal.append(insert(COLLECTION, "plain", 10)).await.unwrap();
        wal.append(insert(COLLECTION, "plain", 10)).await.unwrap();
        assert_eq!(tags(&wal).await, ["a", "b", "c", "plain", "plain"]);
        wal.close().await;
    }
}

/// A caller that stops waiting (a timeout, a client gone) does not leave its append half done:
/// the append runs to its end on its own, is in the log once, and a retry answers its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_append_whose_caller_gave_up_still_runs_to_its_end() {
    for backend in [memory(), local()] {
        let h = Harness::new(backend);
        let wal = with_collection(&h, fast_config(), false).await;
        for sequence in 1..=20u64 {
            let tag = format!("gave-up-{sequence}");
            // Polled once, then dropped: with the local backend it waits on its fsync then.
            let mut first = Box::pin(wal.append(numbered(&tag, sequence)));
            let polled = futures::poll!(first.as_mut());
            drop(first);
            let retry = tokio::time::timeout(
                Duration::from_secs(10),
                wal.append(numbered(&tag, sequence)),
            )
            .await
            .expect("the retry waits for the abandoned append, which finishes")
            .unwrap();
            if let std::task::Poll::Ready(Ok(r)) = polled {
                same(&r, &retry);
            }
        }
        let expected: Vec<String> = (1..=20).map(|s| format!("gave-up-{s}")).collect();
        assert_eq!(tags(&wal).await, expected);
        wal.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_wal_remembers_from_its_log_and_from_its_snapshot() {
    for backend in [memory(), local()] {
        let h = Harness::new(backend);
        let wal = with_collection(&h, fast_config(), true).await;
        let mut acked = Vec::new();
        for seq in 1..=3 {
            acked.push(wal.append(numbered(&format!("s{seq}"), seq)).await.unwrap());
        }
        // A snapshot holds 1..=3; 4 and 5 are only in the log after it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        wal.checkpoint().await.unwrap();
        for seq in 4..=5 {
            acked.push(wal.append(numbered(&format!("s{seq}"), seq)).await.unwrap());
        }
        // A crash: term 1 never closes; term 2 reopens from the snapshot and the log after it.
        let two = h.open_with(2, fast_config(), true).await.unwrap();
        assert!(two.recovery_stats().checkpoint.is_some());
        for (i, seq) in (1..=5).enumerate() {
            let retry = two.append(numbered("retried", seq)).await.unwrap();
            same(&acked[i], &retry);
        }
        assert_eq!(tags(&two).await, ["s1", "s2", "s3", "s4", "s5"]);
        two.close().await;
        // Term 3 replays the whole log (no snapshot store): the same.
        let three = h.open_with(3, fast_config(), false).await.unwrap();
        for (i, seq) in (1..=5).enumerate() {
            let retry = three.append(numbered("retried", seq)).await.unwrap();
            same(&acked[i], &retry);
        }
        three.append(numbered("s6", 6)).await.unwrap();
        assert_eq!(tags(&three).await, ["s1", "s2", "s3", "s4", "s5", "s6"]);
        three.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_older_than_the_window_is_refused_and_transactions_are_not_numbered() {
    let h = Harness::new(memory());
    let config = WalConfig {
        producers: ProducerConfig {
            window: 4,
            ..ProducerConfig::default()
        },
        ..fast_config()
    };
    let wal = with_collection(&h, config, false).await;
    let mut acked = Vec::new();
    for seq in 1..=6 {
        acked.push(wal.append(numbered(&format!("s{seq}"), seq)).await.unwrap());
    }
    // 3..=6 are remembered; 1 and 2 may have been appended: refused, not appended again.
    same(&acked[2], &wal.append(numbered("x", 3)).await.unwrap());
    let err = wal.append(numbered("x", 1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("older than"), "{err}");
    // A new sequence above the window is fine, even out of order below the newest.
    wal.append(numbered("s8", 8)).await.unwrap();
    wal.append(numbered("s7", 7)).await.unwrap();

    let mut begin = begin(COLLECTION, 0);
    begin.set_producer(PRODUCER, 100);
    let err = wal.append(begin).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert_eq!(
        tags(&wal).await,
        ["s1", "s2", "s3", "s4", "s5", "s6", "s8", "s7"]
    );
    wal.close().await;
}
