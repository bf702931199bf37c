//! Fencing scenarios shared by the backends' fencing tests (`local_fencing.rs`,
//! `object_fencing.rs`, `kafka_fencing.rs`): a writer in another process fenced by a higher-term open, in-process
//! writers racing a higher-term open, and two opens racing each other. Each takes the providers
//! to use, so every backend runs the same checks.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_log::{
    DeliverPolicy, LogError, LogHandle, LogProvider, LogStream, OpenOptions, ReadOptions,
};
use sluice_types::message::InsertHeader;
use sluice_types::{ImmutableMessage, MessageId, MutableMessage, PChannel, Term};

use crate::common;

/// The pchannel every fencing test uses (each test has its own directory, prefix or topics).
pub(crate) fn pchannel() -> PChannel {
    PChannel::new("fence-pch").unwrap()
}

/// A two-worker runtime, for tests that run a scenario (or a child's part of one) themselves.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An insert whose payload is `text`.
pub(crate) fn message(text: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(text.as_bytes().to_vec())
        .build()
        .unwrap()
}

/// The payload of a record written by [`message`].
pub(crate) fn text(m: &ImmutableMessage) -> String {
    String::from_utf8(m.payload().to_vec()).unwrap()
}

/// The next record, failing the test after 30 s.
pub(crate) async fn next(stream: &mut LogStream) -> Result<ImmutableMessage, LogError> {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("read timed out")
        .expect("stream ended")
}

/// Reads everything from the start through `last`, checking that ids increase.
pub(crate) async fn read_through(
    handle: &Arc<dyn LogHandle>,
    last: MessageId,
) -> Vec<ImmutableMessage> {
    let mut stream = handle
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let mut out: Vec<ImmutableMessage> = Vec::new();
    loop {
        let m = next(&mut stream).await.expect("read failed");
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

/// No record whose text starts with `old` comes after the first one that starts with `new`.
pub(crate) fn assert_terms_in_order(records: &[ImmutableMessage], old: &str, new: &str) {
    let Some(first_new) = records.iter().position(|m| text(m).starts_with(new)) else {
        panic!("no {new} record");
    };
    if let Some(late) = records[first_new..]
        .iter()
        .find(|m| text(m).starts_with(old))
    {
        panic!(
            "{old} record {} ({}) comes after the first {new} record {}",
            late.id(),
            text(late),
            records[first_new].id()
        );
    }
}

/// Prints one line to stdout at once (the parent reads them as they come).
pub(crate) fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The child's part of [`higher_term_in_another_process_fences_the_writer`]: opens `pchannel`
/// at term 1, prints `READY`, then eight tasks append until they fail, printing `ACK {id}` for
/// every acknowledged append. Returns `FENCED` when every task (and one more append) failed
/// with `Fenced`, `ERROR ...` otherwise.
pub(crate) async fn child_fenced_appender(
    provider: Arc<dyn LogProvider>,
    pchannel: PChannel,
) -> String {
    let handle = provider
        .open(OpenOptions::read_write(pchannel, Term(1)))
        .await
        .unwrap();
    // A leading newline keeps the marker off the test harness's own line.
    print_line("\nREADY");
    let mut tasks = Vec::new();
    for writer in 0..8 {
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
    let again = handle.append(message("t1-after")).await;
    handle.close().await;
    match (errors.iter().all(LogError::is_fenced), again) {
        (true, Err(e)) if e.is_fenced() => "FENCED".to_string(),
        (_, again) => format!("ERROR {errors:?} then {again:?}"),
    }
}

/// Runs the (ignored) test `child_test` of this binary as a child with `envs`; it must run
/// [`child_fenced_appender`] on `pchannel`. Once it acknowledged 50 appends, opens term 2 with
/// `provider` and appends 20 records; then checks that the child was fenced, that everything
/// it acknowledged is readable and precedes term 2, and that no term-1 record follows a term-2
/// one.
pub(crate) async fn higher_term_in_another_process_fences_the_writer(
    provider: Arc<dyn LogProvider>,
    pchannel: PChannel,
    child_test: &str,
    envs: &[(&str, String)],
) {
    let (mut child, rx, lines) = common::spawn_child_test(child_test, envs);
    let mut collected: Vec<String> = Vec::new();
    while collected.iter().filter(|l| l.starts_with("ACK")).count() < 50 {
        collected.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the child did not start appending"),
        );
    }
    let handle = provider
        .open(OpenOptions::read_write(pchannel, Term(2)))
        .await
        .unwrap();
    let mut parent_ids = Vec::new();
    for i in 0..20 {
        parent_ids.push(handle.append(message(&format!("t2-{i}"))).await.unwrap());
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        lines.join().unwrap();
        status
    })
    .await
    .unwrap();
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
    let records = read_through(&handle, *parent_ids.last().unwrap()).await;
    let present: BTreeSet<MessageId> = records.iter().map(|m| m.id()).collect();
    for id in &child_ids {
        assert!(
            present.contains(id),
            "acknowledged term-1 record {id} is missing"
        );
    }
    assert!(child_ids.iter().all(|id| *id < parent_ids[0]));
    assert_terms_in_order(&records, "t1-", "t2-");
    handle.close().await;
}

/// `rounds` rounds: sixteen writers at an odd term append while the next term opens. Every
/// acknowledged old record is readable and precedes the new term; no append begun after the
/// open returned is acknowledged; the old handle stays fenced.
pub(crate) async fn writers_racing_a_higher_term_open_lose_nothing_and_stay_fenced(
    provider: Arc<dyn LogProvider>,
    pchannel: PChannel,
    rounds: u64,
) {
    for round in 0..rounds {
        let (old_term, new_term) = (Term(2 * round + 1), Term(2 * round + 2));
        let old = provider
            .open(OpenOptions::read_write(pchannel.clone(), old_term))
            .await
            .unwrap();
        let opened = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for writer in 0..16 {
            let (old, opened) = (old.clone(), opened.clone());
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for seq in 0.. {
                    let after_open = opened.load(Ordering::SeqCst);
                    match old.append(message(&format!("old-w{writer}-s{seq}"))).await {
                        Ok(id) => {
                            assert!(!after_open, "an append begun after the open was acked");
                            acked.push(id);
                        }
                        Err(e) => return (acked, e),
                    }
                }
                unreachable!()
            }));
        }
        tokio::time::sleep(Duration::from_millis(30 + 20 * round)).await;
        let new = provider
            .open(OpenOptions::read_write(pchannel.clone(), new_term))
            .await
            .unwrap();
        opened.store(true, Ordering::SeqCst);
        let mut new_ids = Vec::new();
        for i in 0..10 {
            new_ids.push(new.append(message(&format!("new-{i}"))).await.unwrap());
        }
        let mut old_ids = Vec::new();
        for t in tasks {
            let (acked, err) = t.await.unwrap();
            assert!(err.is_fenced(), "{err}");
            old_ids.extend(acked);
        }
        assert!(!old_ids.is_empty());
        let err = old.append(message("old-late")).await.unwrap_err();
        assert!(err.is_fenced(), "a fenced handle must stay fenced: {err}");
        let reopen = provider
            .open(OpenOptions::read_write(pchannel.clone(), old_term))
            .await;
        assert!(
            reopen.as_ref().err().is_some_and(LogError::is_fenced),
            "reopening the fenced term must fail Fenced, got {:?}",
            reopen.map(|_| "a handle")
        );
        let records = read_through(&new, *new_ids.last().unwrap()).await;
        let present: BTreeSet<MessageId> = records.iter().map(|m| m.id()).collect();
        for id in &old_ids {
            assert!(present.contains(id), "acknowledged record {id} is missing");
        }
        assert!(old_ids.iter().all(|id| *id < new_ids[0]));
        let min_old = *old_ids.iter().min().unwrap();
        let this_round: Vec<_> = records.into_iter().filter(|m| m.id() >= min_old).collect();
        assert_terms_in_order(&this_round, "old-", "new-");
        old.close().await;
        new.close().await;
    }
}

/// `rounds` rounds: opens at two terms race, through two providers (as two nodes would have).
/// The higher one opens; the lower one either fails `Fenced` or is fenced by the time the
/// higher one has opened. Only the higher terms' records are in the log.
pub(crate) async fn racing_opens_leave_only_the_higher_term_writable(
    a: Arc<dyn LogProvider>,
    b: Arc<dyn LogProvider>,
    pchannel: PChannel,
    rounds: u64,
) {
    for round in 0..rounds {
        let (low, high) = (Term(2 * round + 1), Term(2 * round + 2));
        let (pa, pb) = (a.clone(), b.clone());
        let (ca, cb) = (pchannel.clone(), pchannel.clone());
        let open_low = tokio::spawn(async move { pa.open(OpenOptions::read_write(ca, low)).await });
        let open_high =
            tokio::spawn(async move { pb.open(OpenOptions::read_write(cb, high)).await });
        let high_h = open_high.await.unwrap().expect("the higher term opens");
        let low_r = open_low.await.unwrap();
        let id = high_h
            .append(message(&format!("high-{round}")))
            .await
            .unwrap();
        match low_r {
            Ok(low_h) => {
                let err = low_h.append(message("low")).await.unwrap_err();
                assert!(err.is_fenced(), "lower term wrote after both opens: {err}");
                low_h.close().await;
            }
            Err(e) => assert!(e.is_fenced(), "{e}"),
        }
        let records = read_through(&high_h, id).await;
        assert!(records.iter().all(|m| text(m).starts_with("high-")));
        assert_eq!(records.len() as u64, round + 1);
        high_h.close().await;
    }
}
