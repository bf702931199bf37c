//! Fencing and robustness of the `kafka` backend on the broker named by `SLUICE_TEST_KAFKA`
//! (skipped with a note when unset, failing when unset in CI): a writer in another process fenced
//! by a higher-term open; in-process writers racing a higher-term open; two opens racing each
//! other; a stale open changes nothing; an epoch bump by an opener that never takes over does not
//! cost the owner anything it acknowledged, nor its ownership; a same-term reopen wins; foreign
//! records are errors, not panics.
//!
//! `child_fenced_appender` does nothing unless `SLUICE_KAFKA_CHILD` is set; the parent test runs
//! this binary again as a child that writes at term 1 while the parent opens at term 2.

mod common;
mod fencing_support;
mod kafka_support;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_log::kafka::{KafkaConfig, KafkaProvider};
use sluice_log::{DeliverPolicy, LogError, LogHandle, LogProvider, OpenOptions, ReadOptions};
use sluice_types::{MessageId, Term};

use fencing_support::{message, next, pchannel, print_line, read_through, runtime, text};
use kafka_support::{kafka_broker, test_config, unique_prefix};

const CHILD_ENV: &str = "SLUICE_KAFKA_CHILD";

/// Settings for these tests: a fenced writer waits 1 s for the fencer before claiming back.
fn config(broker: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        reclaim_wait: Duration::from_secs(1),
        ..test_config(broker, prefix)
    }
}

fn provider(broker: &str, prefix: &str) -> Arc<dyn LogProvider> {
    Arc::new(KafkaProvider::new(config(broker, prefix)).expect("kafka provider"))
}

/// Runs `test(broker, fresh prefix)` on a fresh runtime, or skips without a broker.
fn with_broker<F, Fut>(what: &str, test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(broker) = kafka_broker() else {
        return;
    };
    let prefix = unique_prefix(what);
    runtime().block_on(async move {
        tokio::time::timeout(Duration::from_secs(120), test(broker, prefix))
            .await
            .expect("test exceeded its time limit (a hang?)")
    });
}

/// The high watermark of `topic`.
fn high_watermark(broker: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "sluice-test-watermarks")
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

/// The terms of the term fences in `topic`, read with a plain consumer (a fence value is the
/// 22-byte header `SLKF`, version 1, kind 2, term, nonce).
fn raw_term_fences(broker: &str, topic: &str) -> Vec<u64> {
    use rdkafka::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "sluice-test-raw")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut terms = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return terms,
            Some(Err(e)) => panic!("raw read: {e}"),
            Some(Ok(m)) => {
                let v = m.payload().unwrap_or_default();
                if v.len() == 22 && v.starts_with(b"SLKF\x01\x02") {
                    terms.push(u64::from_le_bytes(v[6..14].try_into().unwrap()));
                }
            }
        }
    }
}

#[test]
fn child_fenced_appender() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (prefix, broker) = arg.split_once('@').expect("PREFIX@BROKER");
    let outcome = runtime().block_on(fencing_support::child_fenced_appender(
        provider(broker, prefix),
        pchannel(),
    ));
    print_line(&outcome);
    assert_eq!(outcome, "FENCED");
}

#[test]
fn higher_term_in_another_process_fences_the_writer() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    with_broker("fence-child", |broker, prefix| async move {
        fencing_support::higher_term_in_another_process_fences_the_writer(
            provider(&broker, &prefix),
            pchannel(),
            "child_fenced_appender",
            &[(CHILD_ENV, format!("{prefix}@{broker}"))],
        )
        .await;
    });
}

#[test]
fn writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced() {
    with_broker("fence-race", |broker, prefix| async move {
        fencing_support::writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced(
            provider(&broker, &prefix),
            pchannel(),
            4,
        )
        .await;
    });
}

#[test]
fn racing_opens_leave_only_the_higher_term_writable() {
    with_broker("fence-opens", |broker, prefix| async move {
        // Two providers, as two nodes would have.
        fencing_support::racing_opens_leave_only_the_higher_term_writable(
            provider(&broker, &prefix),
            provider(&broker, &prefix),
            pchannel(),
            6,
        )
        .await;
    });
}

#[test]
fn stale_open_changes_nothing() {
    with_broker("fence-stale", |broker, prefix| async move {
        let provider = provider(&broker, &prefix);
        let topic = format!("{prefix}{}", pchannel());
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(5)))
            .await
            .unwrap();
        let x = h.append(message("x")).await.unwrap();
        let before = high_watermark(&broker, &topic);
        let err = provider
            .open(OpenOptions::read_write(pchannel(), Term(4)))
            .await
            .err()
            .expect("stale open succeeded");
        assert!(
            matches!(
                err,
                LogError::Fenced {
                    term: Term(4),
                    current: Term(5),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            high_watermark(&broker, &topic),
            before,
            "the stale open wrote"
        );
        // The owner was not disturbed.
        let y = h
            .append(message("y"))
            .await
            .expect("owner append after a stale open");
        let records = read_through(&h, y).await;
        assert_eq!(
            records
                .iter()
                .map(|m| (m.id(), text(m)))
                .collect::<Vec<_>>(),
            [(x, "x".to_string()), (y, "y".to_string())]
        );
        h.close().await;
    });
}

/// A stale opener that got as far as bumping the epoch and then died (or failed) fences the
/// owner's producer; the owner sees that no higher term took over and claims the pchannel back.
#[test]
fn an_epoch_bump_by_an_opener_that_never_takes_over_is_survived() {
    with_broker("fence-bump", |broker, prefix| async move {
        let provider = provider(&broker, &prefix);
        let topic = format!("{prefix}{}", pchannel());
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(3)))
            .await
            .unwrap();
        let mut acked = vec![h.append(message("before")).await.unwrap()];
        // The stale opener: same transactional id, init_transactions, then nothing.
        let t = topic.clone();
        let b = broker.clone();
        tokio::task::spawn_blocking(move || {
            let stale: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("transactional.id", &t)
                .create()
                .unwrap();
            stale.init_transactions(Duration::from_secs(20)).unwrap();
        })
        .await
        .unwrap();
        // The owner notices at its next transaction, waits for a winner that never shows,
        // claims the pchannel back and writes the batch again: no append fails.
        for seq in 0..5 {
            acked.push(
                h.append(message(&format!("after-{seq}")))
                    .await
                    .expect("append after an epoch bump by a stale opener"),
            );
        }
        assert_eq!(
            raw_term_fences(&broker, &topic),
            [3, 3],
            "the owner's open and its claim back each write a term fence"
        );
        let records = read_through(&h, *acked.last().unwrap()).await;
        for id in &acked {
            assert!(
                records.iter().any(|m| m.id() == *id),
                "acknowledged {id} missing"
            );
        }
        // A higher term still fences the owner for good.
        let new = provider
            .open(OpenOptions::read_write(pchannel(), Term(4)))
            .await
            .unwrap();
        let err = h.append(message("late")).await.unwrap_err();
        assert!(err.is_fenced(), "{err:?}");
        new.close().await;
        h.close().await;
    });
}

#[test]
fn a_same_term_reopen_wins() {
    with_broker("fence-same", |broker, prefix| async move {
        let provider = provider(&broker, &prefix);
        let first = provider
            .open(OpenOptions::read_write(pchannel(), Term(2)))
            .await
            .unwrap();
        let a = first.append(message("first")).await.unwrap();
        let second = provider
            .open(OpenOptions::read_write(pchannel(), Term(2)))
            .await
            .unwrap();
        let b = second.append(message("second")).await.unwrap();
        let err = first.append(message("first-late")).await.unwrap_err();
        assert!(err.is_fenced(), "{err:?}");
        let err = first.append(message("first-later")).await.unwrap_err();
        assert!(err.is_fenced(), "a fenced handle must stay fenced: {err:?}");
        let records = read_through(&second, b).await;
        assert_eq!(records.iter().map(|m| m.id()).collect::<Vec<_>>(), [a, b]);
        first.close().await;
        second.close().await;
    });
}

#[test]
fn foreign_records_are_errors_not_panics() {
    with_broker("fence-foreign", |broker, prefix| async move {
        let provider = provider(&broker, &prefix);
        let topic = format!("{prefix}{}", pchannel());
        let h = provider
            .open(OpenOptions::read_write(pchannel(), Term(1)))
            .await
            .unwrap();
        let id = h.append(message("good")).await.unwrap();
        let (b, t) = (broker.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .create()
                .unwrap();
            p.send(
                BaseRecord::<(), [u8]>::to(&t)
                    .partition(0)
                    .payload(&b"SLKF\x01 torn"[..]),
            )
            .map_err(|(e, _)| e)
            .unwrap();
            p.flush(Duration::from_secs(20)).unwrap();
        })
        .await
        .unwrap();
        let mut s = h.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
        assert_eq!(next(&mut s).await.unwrap().id(), id);
        let err = next(&mut s)
            .await
            .expect_err("a foreign record read as a message");
        assert!(matches!(err, LogError::Corrupted { .. }), "{err:?}");
        // The stream ends after its error.
        let end = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("the stream did not end after its error");
        assert!(end.is_none());
        // A read-write open reads the newest record back: a foreign one is an error too.
        let err = provider
            .open(OpenOptions::read_write(pchannel(), Term(2)))
            .await
            .err()
            .expect("open over a foreign newest record");
        assert!(matches!(err, LogError::Corrupted { .. }), "{err:?}");
        // Reads starting after it are fine.
        let ro = provider
            .open(OpenOptions::read_only(pchannel(), Term(1)))
            .await
            .unwrap();
        let _: &dyn LogHandle = &*ro;
        let mut s = ro
            .read(ReadOptions::new(DeliverPolicy::StartFrom(
                MessageId::from_parts(0, 0),
            )))
            .await
            .unwrap();
        assert_eq!(next(&mut s).await.unwrap().id(), id);
        ro.close().await;
        h.close().await;
    });
}
