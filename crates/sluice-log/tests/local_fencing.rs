//! Fencing of the local backend between processes and between handles of one process.
//!
//! `child_fenced_appender` does nothing unless `SLUICE_FENCE_CHILD_DIR` is set; the parent test
//! runs this binary again as a child that writes at term 1 while the parent opens at term 2.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{
    DeliverPolicy, LogError, LogHandle, LogProvider, LogStream, OpenOptions, ReadOptions,
};
use sluice_types::message::InsertHeader;
use sluice_types::{ImmutableMessage, MessageId, MutableMessage, PChannel, Term};

const DIR_ENV: &str = "SLUICE_FENCE_CHILD_DIR";

fn config(root: &Path) -> LocalConfig {
    LocalConfig {
        segment_size: 32 << 10,
        ..LocalConfig::new(root)
    }
}

fn pchannel() -> PChannel {
    PChannel::new("fence-pch").unwrap()
}

fn message(text: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(text.as_bytes().to_vec())
        .build()
        .unwrap()
}

fn text(m: &ImmutableMessage) -> String {
    String::from_utf8(m.payload().to_vec()).unwrap()
}

async fn next(stream: &mut LogStream) -> ImmutableMessage {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("read timed out")
        .expect("stream ended")
        .expect("read failed")
}

/// Reads everything up to and including `last`; checks ids increase.
async fn read_through(handle: &Arc<dyn LogHandle>, last: MessageId) -> Vec<ImmutableMessage> {
    let mut stream = handle
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let mut out: Vec<ImmutableMessage> = Vec::new();
    loop {
        let m = next(&mut stream).await;
        if let Some(prev) = out.last() {
            assert!(prev.id() < m.id(), "ids not increasing");
        }
        let done = m.id() == last;
        out.push(m);
        if done {
            return out;
        }
    }
}

/// Checks that no term-1 record follows the first term-2 record.
fn assert_terms_in_order(records: &[ImmutableMessage]) {
    let first_new = records
        .iter()
        .position(|m| text(m).starts_with("t2-"))
        .expect("no term-2 record");
    if let Some(late) = records[first_new..]
        .iter()
        .find(|m| text(m).starts_with("t1-"))
    {
        panic!(
            "term-1 record {} ({}) comes after the first term-2 record {}",
            late.id(),
            text(late),
            records[first_new].id()
        );
    }
}

/// Prints one whole line and flushes it (a write error means the parent is gone).
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs only in the child process: appends at term 1 until fenced.
#[test]
fn child_fenced_appender() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async move {
        let provider = LocalProvider::new(config(Path::new(&dir))).unwrap();
        let handle = provider
            .open(OpenOptions::read_write(pchannel(), Term(1)))
            .await
            .unwrap();
        // libtest has printed "test child_fenced_appender ... " without a newline.
        print_line("\nREADY");
        let mut tasks = Vec::new();
        for writer in 0..4 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0.. {
                    match handle
                        .append(message(&format!("t1-w{writer}-s{seq}")))
                        .await
                    {
                        Ok(id) => print_line(&format!("ACK {id}")),
                        Err(e) => return e,
                    }
                }
                unreachable!()
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(Ok(e)) => errors.push(e),
                Ok(Err(e)) => return format!("ERROR task failed: {e}"),
                Err(_) => return "ERROR never fenced".to_string(),
            }
        }
        // Fenced stays fenced.
        let again = handle.append(message("t1-after")).await;
        handle.close().await;
        match (errors.iter().all(LogError::is_fenced), again) {
            (true, Err(e)) if e.is_fenced() => "FENCED".to_string(),
            (_, again) => format!("ERROR {errors:?} then {again:?}"),
        }
    });
    print_line(&outcome);
    assert_eq!(outcome, "FENCED");
}

#[test]
fn higher_term_in_another_process_fences_the_writer() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (mut child, rx, lines) = common::spawn_child_test(
        "child_fenced_appender",
        &[(DIR_ENV, root.path().display().to_string())],
    );
    let mut collected = Vec::new();
    // Let the child get going: wait for a few acknowledged appends.
    while collected
        .iter()
        .filter(|l: &&String| l.starts_with("ACK"))
        .count()
        < 50
    {
        collected.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the child did not start appending"),
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let provider = LocalProvider::new(config(root.path())).unwrap();
    let (handle, parent_ids) = rt.block_on(async {
        let handle = provider
            .open(OpenOptions::read_write(pchannel(), Term(2)))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(handle.append(message(&format!("t2-{i}"))).await.unwrap());
        }
        (handle, ids)
    });

    let status = child.wait().unwrap();
    lines.join().unwrap();
    collected.extend(rx.try_iter());
    assert!(status.success(), "child failed: {collected:?}");
    assert!(
        collected.iter().any(|l| l == "FENCED"),
        "the child was not fenced: {collected:?}"
    );
    let child_ids: BTreeSet<MessageId> = collected
        .iter()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(|id| id.parse().unwrap())
        .collect();

    rt.block_on(async {
        let records = read_through(&handle, *parent_ids.last().unwrap()).await;
        let present: BTreeSet<MessageId> = records.iter().map(|m| m.id()).collect();
        for id in &child_ids {
            assert!(
                present.contains(id),
                "acknowledged term-1 record {id} is missing"
            );
        }
        assert!(child_ids.iter().all(|id| *id < parent_ids[0]));
        assert_terms_in_order(&records);
        handle.close().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_term_writer_racing_a_higher_term_open_is_fenced() {
    let root = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(config(root.path())).unwrap();
    for round in 0..5u64 {
        let (old_term, new_term) = (Term(2 * round + 1), Term(2 * round + 2));
        let old = provider
            .open(OpenOptions::read_write(pchannel(), old_term))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for writer in 0..8 {
            let old = old.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for seq in 0.. {
                    match old.append(message(&format!("t1-w{writer}-s{seq}"))).await {
                        Ok(id) => acked.push(id),
                        Err(e) => return (acked, e),
                    }
                }
                unreachable!()
            }));
        }
        tokio::time::sleep(Duration::from_millis(20 + 10 * round)).await;
        let new = provider
            .open(OpenOptions::read_write(pchannel(), new_term))
            .await
            .unwrap();
        let mut new_ids = Vec::new();
        for i in 0..10 {
            new_ids.push(new.append(message(&format!("t2-{i}"))).await.unwrap());
        }
        let mut old_ids = Vec::new();
        for t in tasks {
            let (acked, err) = t.await.unwrap();
            assert!(err.is_fenced(), "{err}");
            old_ids.extend(acked);
        }
        assert!(!old_ids.is_empty());
        assert!(
            provider
                .open(OpenOptions::read_write(pchannel(), old_term))
                .await
                .err()
                .is_some_and(|e| e.is_fenced())
        );
        let records = read_through(&new, *new_ids.last().unwrap()).await;
        let present: BTreeSet<MessageId> = records.iter().map(|m| m.id()).collect();
        for id in &old_ids {
            assert!(present.contains(id), "acknowledged record {id} is missing");
        }
        assert!(old_ids.iter().all(|id| *id < new_ids[0]));
        // Earlier rounds' records are there too, so look only at this round's.
        let this_round: Vec<_> = records
            .into_iter()
            .filter(|m| m.id() >= *old_ids.iter().min().unwrap())
            .collect();
        assert_terms_in_order(&this_round);
        old.close().await;
        new.close().await;
    }
}
