//! A SIGSTOPped owner of a local log does not keep a new owner out (issue 16).
//!
//! Each round re-executes this test binary as a child that runs only `child_stoppable_appender`
//! (which does nothing unless `SLUICE_STOP_CHILD_DIR` is set): it opens the pchannel at an odd
//! term and appends from four tasks with fsync, printing one line per acknowledged append. The
//! parent SIGSTOPs it at a random moment, opens the pchannel at the next term (timed: the open
//! must not wait for the stopped process), appends as the new owner, SIGCONTs the old owner and
//! lets it run into the fence. Every other round the child pauses between a batch's term check
//! and its write (`local::testkit::pause_before_write`), so that stops often land in that window
//! — the one where a stopped writer has checked its term but not written yet.
//!
//! Checked after every round, on the log the new owner reads: ids are dense from 0 and terms
//! never go back; every record acknowledged by any owner of any round is there with its payload
//! (self-checking), in order; the new owner's records are intact; the old owner acknowledged no
//! append it made after it was continued, and ended fenced. A reader in the parent tails the log
//! through all rounds; everything it delivered is what the final log holds at those ids.

mod common;
mod fencing_support;
mod payload_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rustix::process::{Pid, Signal, kill_process};
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{DeliverPolicy, LogHandle, LogProvider, OpenOptions, ReadOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MessageId, MutableMessage, PChannel, Term};

use fencing_support::{print_line, runtime};
use payload_support::{check_payload, payload, tail_checked};

const DIR_ENV: &str = "SLUICE_STOP_CHILD_DIR";
const TERM_ENV: &str = "SLUICE_STOP_CHILD_TERM";
const PAUSE_ENV: &str = "SLUICE_STOP_CHILD_PAUSE_US";
const ROUNDS: u64 = 32;
const WRITERS: u64 = 4;
/// The longest a higher-term open may take while the old owner is stopped.
const OPEN_BOUND: Duration = Duration::from_secs(1);

fn config(root: &Path) -> LocalConfig {
    LocalConfig {
        // Small segments: stops also land in the middle of rolls.
        segment_size: 64 << 10,
        ..LocalConfig::new(root)
    }
}

fn pchannel() -> PChannel {
    PChannel::new("stop-pch").unwrap()
}

/// The term a key was written at (`t{term}-...`).
fn term_of(key: &str) -> u64 {
    key.strip_prefix('t')
        .and_then(|k| k.split_once('-'))
        .and_then(|(t, _)| t.parse().ok())
        .unwrap_or_else(|| panic!("malformed key {key}"))
}

fn message(key: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(payload(key))
        .build()
        .unwrap()
}

/// Runs only in the child process: appends until fenced, then prints `FENCED` (or `ERROR ...`).
#[test]
fn child_stoppable_appender() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let term: u64 = std::env::var(TERM_ENV).unwrap().parse().unwrap();
    let pause: u64 = std::env::var(PAUSE_ENV).unwrap().parse().unwrap();
    sluice_log::local::testkit::pause_before_write(Duration::from_micros(pause));
    let outcome = runtime().block_on(async move {
        let provider = LocalProvider::new(config(Path::new(&dir))).unwrap();
        let handle = provider
            .open(OpenOptions::read_write(pchannel(), Term(term)))
            .await
            .unwrap();
        // libtest has printed "test child_stoppable_appender ... " without a newline.
        print_line("\nREADY");
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0.. {
                    let key = format!("t{term}-w{writer}-s{seq}");
                    // Half the writers pipeline: enqueue, then await durability.
                    let result = if writer % 2 == 0 {
                        handle.append(message(&key)).await
                    } else {
                        match handle.enqueue(message(&key)).await {
                            Ok(f) => f.await,
                            Err(e) => Err(e),
                        }
                    };
                    match result {
                        Ok(id) => print_line(&format!("ACK {id} {key}")),
                        Err(e) => return e,
                    }
                }
                unreachable!()
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(120), t).await {
                Ok(Ok(e)) => errors.push(e),
                Ok(Err(e)) => return format!("ERROR task failed: {e}"),
                Err(_) => return "ERROR never fenced".to_string(),
            }
        }
        let again = handle.append(message(&format!("t{term}-late"))).await;
        handle.close().await;
        match (errors.iter().all(|e| e.is_fenced()), again) {
            (true, Err(e)) if e.is_fenced() => "FENCED".to_string(),
            (_, again) => format!("ERROR {errors:?} then {again:?}"),
        }
    });
    print_line(&outcome);
}

/// Lines until none arrives for `quiet` (the child is stopped: whatever it wrote before is in
/// the pipe).
fn drain(rx: &std::sync::mpsc::Receiver<String>, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(line) = rx.recv_timeout(quiet) {
        out.push(line);
    }
    out
}

/// `(id, key)` of every `ACK` line.
fn acks(lines: &[String]) -> Vec<(MessageId, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(|rest| {
            let (id, key) = rest.split_once(' ').expect("malformed ACK line");
            (id.parse().expect("malformed id"), key.to_string())
        })
        .collect()
}

/// `(writer, seq)` of a child's key.
fn writer_seq(key: &str) -> (u64, u64) {
    let mut parts = key.split('-').skip(1);
    let w = parts.next().and_then(|w| w.strip_prefix('w'));
    let s = parts.next().and_then(|s| s.strip_prefix('s'));
    match (
        w.and_then(|w| w.parse().ok()),
        s.and_then(|s| s.parse().ok()),
    ) {
        (Some(w), Some(s)) => (w, s),
        _ => panic!("malformed child key {key}"),
    }
}

#[test]
fn sigstopped_owner_never_keeps_a_higher_term_out() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let rt = runtime();
    let provider: Arc<dyn LogProvider> = Arc::new(LocalProvider::new(config(root.path())).unwrap());
    let (stop_tail, stop_rx) = tokio::sync::oneshot::channel();
    let tail = rt.spawn(tail_checked(
        config(root.path()),
        pchannel(),
        stop_rx,
        Duration::from_millis(500),
    ));
    // Every acknowledged record of every owner so far.
    let mut acked: BTreeMap<MessageId, String> = BTreeMap::new();
    let mut opens = Vec::new();
    let mut paused_rounds = 0;
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let (old_term, new_term) = (2 * round + 1, 2 * round + 2);
        let pause_us = if round % 2 == 1 { 400 } else { 0 };
        let (mut child, rx, lines) = common::spawn_child_test(
            "child_stoppable_appender",
            &[
                (DIR_ENV, root.path().display().to_string()),
                (TERM_ENV, old_term.to_string()),
                (PAUSE_ENV, pause_us.to_string()),
            ],
        );
        let pid = Pid::from_child(&child);
        let mut before = Vec::new();
        // Stop at a random moment once the child acknowledges appends.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the child never acknowledged an append");
            let ack = line.starts_with("ACK ");
            before.push(line);
            if ack {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(5..=150)));
        kill_process(pid, Signal::STOP).unwrap();
        before.extend(drain(&rx, Duration::from_millis(200)));

        // The new owner's open, while the old owner is stopped wherever it was.
        let started = Instant::now();
        let open = {
            let provider = provider.clone();
            rt.spawn(async move {
                provider
                    .open(OpenOptions::read_write(pchannel(), Term(new_term)))
                    .await
            })
        };
        let opened =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), open).await });
        let took = started.elapsed();
        let new: Arc<dyn LogHandle> = match opened {
            Ok(joined) => joined.unwrap().expect("the higher term opens"),
            Err(_) => {
                // Let the stopped process go, so that the test fails instead of hanging.
                let _ = kill_process(pid, Signal::CONT);
                panic!("round {round}: the open at term {new_term} waited for the stopped owner");
            }
        };
        opens.push(took);
        let mut new_ids = Vec::new();
        rt.block_on(async {
            for i in 0..20 {
                let key = format!("t{new_term}-n{i}");
                let id = new.append(message(&key)).await.unwrap();
                new_ids.push((id, key));
            }
        });

        // The old owner goes on and must run into the fence.
        kill_process(pid, Signal::CONT).unwrap();
        let status = child.wait().unwrap();
        lines.join().unwrap();
        let after: Vec<String> = rx.try_iter().collect();
        assert!(
            status.success() && after.iter().any(|l| l == "FENCED"),
            "round {round}: the old owner did not end fenced: {:?}",
            after
                .iter()
                .filter(|l| !l.starts_with("ACK"))
                .collect::<Vec<_>>()
        );
        // An append it began after it was continued must not be acknowledged. (Of each
        // writer's appends, only the one in flight at the stop may be acknowledged late: the
        // acknowledgement can be made before the stop and printed after it.)
        let mut last_seen: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, key) in acks(&before) {
            let (w, s) = writer_seq(&key);
            let e = last_seen.entry(w).or_default();
            *e = (*e).max(s);
        }
        for (id, key) in acks(&after) {
            let (w, s) = writer_seq(&key);
            let allowed = last_seen.get(&w).map_or(0, |&l| l + 1);
            assert!(
                s <= allowed,
                "round {round}: the old owner acknowledged {key} ({id}), an append it made \
                 after the new term opened"
            );
        }
        for (id, key) in acks(&before).into_iter().chain(acks(&after)) {
            if let Some(prev) = acked.insert(id, key.clone()) {
                panic!("round {round}: id {id} acknowledged twice: {prev} and {key}");
            }
        }
        for (id, key) in &new_ids {
            if let Some(old) = acked.insert(*id, key.clone()) {
                panic!(
                    "round {round}: id {id} was acknowledged to the old owner ({old}) and to the \
                     new one ({key}): an acknowledged record is lost"
                );
            }
        }

        let last = new_ids.last().unwrap().0;
        let log = rt.block_on(read_log(&new, last));
        verify(round, &log, &acked, &new_ids, old_term);
        rt.block_on(new.close());
        if pause_us > 0 {
            paused_rounds += 1;
        }
    }
    let _ = stop_tail.send(());
    let tailed = rt
        .block_on(tail)
        .unwrap()
        .unwrap_or_else(|e| panic!("the tailing reader failed: {e}"));
    // What the tail delivered is what the log holds.
    let final_log = rt.block_on(async {
        let h = provider
            .open(OpenOptions::read_only(pchannel(), Term(0)))
            .await
            .unwrap();
        let last = *acked.keys().last().unwrap();
        let log = read_log(&h, last).await;
        h.close().await;
        log
    });
    assert!(tailed.len() > 100, "the tail saw {} records", tailed.len());
    for (i, (id, key)) in tailed.iter().enumerate() {
        assert_eq!(
            final_log.get(i).map(|(i, k)| (i, k)),
            Some((id, key)),
            "the tail delivered {key} at {id}, the log holds something else"
        );
    }
    let max = opens.iter().max().copied().unwrap_or_default();
    println!(
        "{ROUNDS} rounds ({paused_rounds} with a pause before writes): higher-term open while \
         the owner was stopped took at most {max:?} (median {:?}); {} records acknowledged, \
         {} read by the tail",
        {
            let mut sorted = opens.clone();
            sorted.sort();
            sorted[sorted.len() / 2]
        },
        acked.len(),
        tailed.len()
    );
    assert!(
        max < OPEN_BOUND,
        "a higher-term open took {max:?} while the old owner was stopped (bound {OPEN_BOUND:?})"
    );
}

/// Every record from the start through `last`, as (id, key); ids must be dense from 0 and every
/// payload intact.
async fn read_log(handle: &Arc<dyn LogHandle>, last: MessageId) -> Vec<(MessageId, String)> {
    let mut stream = handle
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let record = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("read timed out")
            .expect("stream ended")
            .expect("read failed");
        let id = record.id();
        assert_eq!(
            id,
            MessageId::from_parts(0, out.len() as u64),
            "ids are not dense"
        );
        let key = check_payload(record.payload())
            .unwrap_or_else(|e| panic!("record {id} is garbled: {e}"));
        out.push((id, key));
        if id == last {
            return out;
        }
    }
}

fn verify(
    round: u64,
    log: &[(MessageId, String)],
    acked: &BTreeMap<MessageId, String>,
    new_ids: &[(MessageId, String)],
    old_term: u64,
) {
    let present: BTreeMap<MessageId, &String> = log.iter().map(|(i, k)| (*i, k)).collect();
    for (id, key) in acked {
        assert_eq!(
            present.get(id).copied(),
            Some(key),
            "round {round}: acknowledged record {id} ({key}) is missing or different"
        );
    }
    // Terms never go back: nothing of the old owner after the new owner's first record.
    let mut term = 0;
    for (id, key) in log {
        let t = term_of(key);
        assert!(
            t >= term,
            "round {round}: {key} at {id} follows a record of term {term}"
        );
        term = t;
    }
    let first_new = new_ids[0].0;
    assert!(
        log.iter()
            .filter(|(_, k)| term_of(k) == old_term)
            .all(|(id, _)| *id < first_new)
    );
    // The new owner's records are exactly where it was told they are, one after another.
    for w in new_ids.windows(2) {
        assert_eq!(
            w[1].0.lo(),
            w[0].0.lo() + 1,
            "round {round}: new owner's ids"
        );
    }
}
