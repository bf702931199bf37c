//! SIGKILL crash safety of the local backend.
//!
//! The parent test re-executes this test binary as a child that runs only `child_appender`
//! (which does nothing unless `SLUICE_CRASH_CHILD_DIR` is set). The child appends from several
//! tasks and prints one line per acknowledged append; the parent kills it with SIGKILL at a random
//! moment, reopens the log at a higher term and checks that every acknowledged record is there,
//! intact, in strictly increasing id order. Twenty rounds run on the same directory. While the
//! child appends, the parent tails the log read-only (a reader in another process than the
//! writer, polling the files, which end in the writer's zero runway): it must never fail and
//! never deliver anything but intact records with dense ids.

mod common;
mod payload_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rand::Rng;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{DeliverPolicy, LogProvider, OpenOptions, ReadOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MessageId, MutableMessage, PChannel, Term};

use payload_support::{check_payload, payload, tail_checked};

const DIR_ENV: &str = "SLUICE_CRASH_CHILD_DIR";
const TERM_ENV: &str = "SLUICE_CRASH_CHILD_TERM";
const ROUNDS: u64 = 20;

fn config(root: &Path) -> LocalConfig {
    LocalConfig {
        // Small segments so that rolling happens while the child is being killed.
        segment_size: 16 << 10,
        ..LocalConfig::new(root)
    }
}

fn pchannel() -> PChannel {
    PChannel::new("crash-pch").unwrap()
}

fn message(key: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(payload(key))
        .build()
        .unwrap()
}

/// Prints one whole line and flushes it (a write error means the parent is gone).
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs only in the child process.
#[test]
fn child_appender() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let term: u64 = std::env::var(TERM_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let provider = LocalProvider::new(config(Path::new(&dir))).unwrap();
        let handle = provider
            .open(OpenOptions::read_write(pchannel(), Term(term)))
            .await
            .unwrap();
        // libtest has printed "test child_appender ... " without a newline.
        print_line("\nREADY");
        for writer in 0..6 {
            let handle = handle.clone();
            tokio::spawn(async move {
                for seq in 0.. {
                    let key = format!("t{term}-w{writer}-s{seq}");
                    // Half the writers pipeline: enqueue, then await durability.
                    let id = if writer % 2 == 0 {
                        handle.append(message(&key)).await
                    } else {
                        match handle.enqueue(message(&key)).await {
                            Ok(f) => f.await,
                            Err(e) => Err(e),
                        }
                    };
                    let id = id.expect("append failed");
                    print_line(&format!("ACK {id} {key}"));
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    panic!("the child was not killed");
}

#[test]
fn sigkill_never_loses_or_garbles_acknowledged_records() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut acked: BTreeMap<MessageId, String> = BTreeMap::new();
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let child_term = 2 * round + 1;
        let (mut child, rx, lines) = common::spawn_child_test(
            "child_appender",
            &[
                (DIR_ENV, root.path().display().to_string()),
                (TERM_ENV, child_term.to_string()),
            ],
        );
        let (stop_tail, stop_rx) = tokio::sync::oneshot::channel();
        let tail = rt.spawn(tail_checked(
            config(root.path()),
            pchannel(),
            stop_rx,
            Duration::from_millis(300),
        ));
        let mut collected = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the child never became ready");
            if line == "READY" {
                break;
            }
            collected.push(line);
        }
        // Kill at a random moment once the child is acknowledging (on a loaded machine its
        // first fsync can take longer than the random pause).
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the child never acknowledged an append");
            let first_ack = line.starts_with("ACK ");
            collected.push(line);
            if first_ack {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..=400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        lines.join().unwrap();
        collected.extend(rx.try_iter());
        let _ = stop_tail.send(());
        let tailed = rt
            .block_on(tail)
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the read-only tail failed: {e}"));
        assert!(
            !tailed.is_empty(),
            "round {round}: the read-only tail saw nothing"
        );

        let mut round_acks = 0;
        for line in collected {
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (id, key) = rest.split_once(' ').expect("malformed ACK line");
            let id: MessageId = id.parse().expect("malformed id");
            if let Some(prev) = acked.insert(id, key.to_string()) {
                panic!("id {id} acknowledged twice: {prev} and {key}");
            }
            round_acks += 1;
        }
        assert!(
            round_acks > 0,
            "round {round}: the child acknowledged nothing"
        );

        rt.block_on(verify(root.path(), Term(child_term + 1), &acked));
    }
}

async fn verify(root: &Path, term: Term, acked: &BTreeMap<MessageId, String>) {
    let provider = LocalProvider::new(config(root)).unwrap();
    let handle = provider
        .open(OpenOptions::read_write(pchannel(), term))
        .await
        .unwrap();
    let marker = handle
        .append(message(&format!("t{}-marker", term.0)))
        .await
        .unwrap();
    let mut stream = handle
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    let mut prev: Option<MessageId> = None;
    loop {
        let record = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("read timed out")
            .expect("stream ended")
            .expect("read failed");
        let id = record.id();
        assert!(
            prev.is_none_or(|p| p < id),
            "ids not increasing: {prev:?} then {id}"
        );
        prev = Some(id);
        let key = check_payload(record.payload())
            .unwrap_or_else(|e| panic!("record {id} is garbled: {e}"));
        seen.insert(id, key);
        if id == marker {
            break;
        }
    }
    for (id, key) in acked {
        assert_eq!(
            seen.get(id),
            Some(key),
            "acknowledged record {id} ({key}) is missing or different"
        );
    }
    drop(stream);
    handle.close().await;
}
