//! Tests of the local backend through its handles.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_types::message::InsertHeader;
use sluice_types::{ImmutableMessage, MessageId, MutableMessage, PChannel, Term};

use super::recovery::{RecoveryMode, recover};
use super::segment::{SEGMENT_HEADER_LEN, list_segments};
use super::*;
use super::{claims, seal};
use crate::{LogStream, ReadOptions};

fn msg(text: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(text.as_bytes().to_vec())
        .build()
        .unwrap()
}

fn text(m: &ImmutableMessage) -> String {
    String::from_utf8(m.payload().to_vec()).unwrap()
}

fn id(lsn: u64) -> MessageId {
    MessageId::from_parts(0, lsn)
}

fn pch() -> PChannel {
    PChannel::new("pch-1").unwrap()
}

fn config(root: &Path) -> LocalConfig {
    LocalConfig {
        segment_size: 512,
        index_interval: 128,
        poll_interval: Duration::from_millis(10),
        ..LocalConfig::new(root)
    }
}

async fn open(cfg: &LocalConfig, term: u64, rw: bool) -> Result<Arc<dyn LogHandle>, LogError> {
    let provider = LocalProvider::new(cfg.clone())?;
    let options = if rw {
        OpenOptions::read_write(pch(), Term(term))
    } else {
        OpenOptions::read_only(pch(), Term(term))
    };
    provider.open(options).await
}

async fn append_n(h: &Arc<dyn LogHandle>, prefix: &str, n: usize) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(h.append(msg(&format!("{prefix}-{i}"))).await.unwrap());
    }
    ids
}

async fn take(stream: &mut LogStream, n: usize) -> Vec<ImmutableMessage> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("read timed out")
            .expect("stream ended")
            .expect("read failed");
        out.push(next);
    }
    out
}

async fn read_all(h: &Arc<dyn LogHandle>, n: usize) -> Vec<ImmutableMessage> {
    let mut s = h.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    take(&mut s, n).await
}

fn dir_of(root: &Path) -> PathBuf {
    root.join(pch().as_str())
}

fn newest_segment(root: &Path) -> PathBuf {
    list_segments(&dir_of(root))
        .unwrap()
        .last()
        .unwrap()
        .path
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_dense_and_reads_honour_every_policy() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let h = open(&cfg, 1, true).await.unwrap();
    let ids = append_n(&h, "a", 40).await;
    assert_eq!(ids, (0..40).map(id).collect::<Vec<_>>());
    assert!(
        list_segments(&dir_of(root.path())).unwrap().len() > 3,
        "small segments roll"
    );

    let all = read_all(&h, 40).await;
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.id(), id(i as u64));
        assert_eq!(text(m), format!("a-{i}"));
    }
    for start in [0u64, 1, 7, 17, 33, 39] {
        let mut s = h
            .read(ReadOptions::new(DeliverPolicy::StartFrom(id(start))))
            .await
            .unwrap();
        assert_eq!(take(&mut s, 1).await[0].id(), id(start));
        let mut s = h
            .read(ReadOptions::new(DeliverPolicy::StartAfter(id(start))))
            .await
            .unwrap();
        if start < 39 {
            assert_eq!(take(&mut s, 1).await[0].id(), id(start + 1));
        }
    }
    let mut latest = h
        .read(ReadOptions::new(DeliverPolicy::Latest))
        .await
        .unwrap();
    let mut tail = h
        .read(ReadOptions::new(DeliverPolicy::StartFrom(id(40))))
        .await
        .unwrap();
    let new = append_n(&h, "b", 3).await;
    let got = take(&mut latest, 3).await;
    assert_eq!(got.iter().map(|m| m.id()).collect::<Vec<_>>(), new);
    assert_eq!(take(&mut tail, 3).await[0].id(), id(40));
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsns_continue_across_reopen_and_terms() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let h = open(&cfg, 1, true).await.unwrap();
    append_n(&h, "a", 25).await;
    h.close().await;
    let h = open(&cfg, 3, true).await.unwrap();
    let ids = append_n(&h, "b", 5).await;
    assert_eq!(ids[0], id(25));
    let all = read_all(&h, 30).await;
    assert_eq!(text(&all[24]), "a-24");
    assert_eq!(text(&all[25]), "b-0");
    h.close().await;
}

/// The offset after the last valid record of the newest segment (the file may go on with the
/// writer's zero runway).
fn data_end(root: &Path) -> u64 {
    let segments = list_segments(&dir_of(root)).unwrap();
    let scanned = recover(
        &segments[segments.len() - 1..],
        RecoveryMode::ReadOnly,
        64 << 10,
        None,
    )
    .unwrap();
    scanned[0].end_offset
}

/// Writes 12 records through a handle and returns the end of the newest segment's data.
async fn write_and_close(cfg: &LocalConfig) -> u64 {
    let h = open(cfg, 1, true).await.unwrap();
    append_n(&h, "r", 12).await;
    h.close().await;
    data_end(&cfg.root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_on_read_write_open() {
    let full = {
        let mut out = Vec::new();
        sluice_types::codec::encode_message(&msg("torn").into_message(), &mut out).unwrap();
        out
    };
    let mut bad_crc = full.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x55;
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x13\x37 this is not a record".to_vec()),
        ("half record", full[..full.len() / 2].to_vec()),
        ("bad crc", bad_crc),
    ];
    for (name, tail) in tails {
        let root = tempfile::tempdir().unwrap();
        let cfg = LocalConfig {
            segment_size: 1 << 20,
            ..config(root.path())
        };
        let good_len = write_and_close(&cfg).await;
        let seg = newest_segment(root.path());
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&tail, good_len).unwrap();
        drop(f);
        let file_len = std::fs::metadata(&seg).unwrap().len();
        assert!(file_len > good_len + tail.len() as u64, "a runway follows");

        // Read-only: stops before the tail, leaves the file alone.
        let ro = open(&cfg, 0, false).await.unwrap();
        let got = read_all(&ro, 12).await;
        assert_eq!(text(&got[11]), "r-11", "{name}");
        ro.close().await;
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), file_len);

        let h = open(&cfg, 2, true).await.unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len, "{name}");
        assert_eq!(h.append(msg("next")).await.unwrap(), id(12), "{name}");
        let got = read_all(&h, 13).await;
        assert_eq!(text(&got[12]), "next", "{name}");
        h.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_a_sealed_segment_fails_open_and_reads() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let h = open(&cfg, 1, true).await.unwrap();
    append_n(&h, "a", 40).await;
    let segments = list_segments(&dir_of(root.path())).unwrap();
    assert!(segments.len() > 2);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[1].path)
        .unwrap();
    f.write_all_at(b"XX", SEGMENT_HEADER_LEN + 20).unwrap();

    // A reader delivers what precedes the damage, then one error, then ends.
    let mut s = h.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    let mut ok = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .unwrap()
        {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => break e,
            None => panic!("stream ended without an error"),
        }
    };
    assert!(matches!(err, LogError::Corrupted { .. }), "{err}");
    assert_eq!(ok as u64, segments[1].base);
    assert!(s.next().await.is_none(), "one error, then the end");
    h.close().await;

    // An open trusts the sidecar the writer left when the segment sealed, so it does not read
    // every record of every sealed segment; reads still report the damage where it is.
    for rw in [true, false] {
        let h = open(&cfg, 2, rw).await.unwrap();
        let mut s = h.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
        let err = loop {
            match s.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("read past the damage"),
            }
        };
        match err {
            LogError::Corrupted { location, .. } => {
                assert!(location.contains(".log:"), "{location}")
            }
            e => panic!("unexpected error {e}"),
        }
        h.close().await;
    }

    // Without its sidecar the segment is scanned, and the open refuses the damage.
    std::fs::remove_file(segments[1].path.with_extension("idx")).unwrap();
    for rw in [true, false] {
        match open(&cfg, 3, rw).await {
            Err(LogError::Corrupted { location, .. }) => {
                assert!(location.contains(".log:"), "{location}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened a corrupted log"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_get_sidecars_and_an_open_reads_those_instead_of_the_records() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let h = open(&cfg, 1, true).await.unwrap();
    append_n(&h, "a", 60).await;
    h.close().await;
    let dir = dir_of(root.path());
    let segments = list_segments(&dir).unwrap();
    assert!(segments.len() > 3);
    let sealed = &segments[..segments.len() - 1];
    for seg in sealed {
        assert!(
            seg.path.with_extension("idx").exists(),
            "{}",
            seg.path.display()
        );
    }
    assert!(!segments.last().unwrap().path.with_extension("idx").exists());

    // The sidecars give what a scan would: the same recovery result either way.
    let with = recover(&segments, RecoveryMode::ReadOnly, cfg.index_interval, None).unwrap();
    for seg in sealed {
        std::fs::remove_file(seg.path.with_extension("idx")).unwrap();
    }
    let scanned = recover(&segments, RecoveryMode::ReadOnly, cfg.index_interval, None).unwrap();
    assert_eq!(with.len(), scanned.len());
    for (a, b) in with.iter().zip(&scanned) {
        assert_eq!(
            (a.base, a.end_offset, a.next_lsn),
            (b.base, b.end_offset, b.next_lsn)
        );
    }
    // A read-write open writes the sidecars that were missing; every record still reads.
    let h = open(&cfg, 2, true).await.unwrap();
    for seg in sealed {
        assert!(seg.path.with_extension("idx").exists());
    }
    let mut s = h
        .read(ReadOptions::new(DeliverPolicy::StartFrom(id(segments[2]
            .base
            + 1))))
        .await
        .unwrap();
    assert_eq!(take(&mut s, 1).await[0].id(), id(segments[2].base + 1));
    // Truncation takes a segment's sidecar with it.
    h.truncate(id(segments[2].base)).await.unwrap();
    assert!(!segments[0].path.with_extension("idx").exists());
    assert!(!segments[1].path.with_extension("idx").exists());
    assert!(segments[2].path.with_extension("idx").exists());
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_removes_whole_old_segments_only() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let h = open(&cfg, 1, true).await.unwrap();
    append_n(&h, "a", 60).await;
    let before = list_segments(&dir_of(root.path())).unwrap();
    let cut = before[2].base + 1; // inside the third segment
    h.truncate(id(cut)).await.unwrap();
    let after = list_segments(&dir_of(root.path())).unwrap();
    assert_eq!(after[0].base, before[2].base, "first two segments removed");

    // Reading from a truncated id starts at the oldest retained record.
    let mut s = h
        .read(ReadOptions::new(DeliverPolicy::StartFrom(id(0))))
        .await
        .unwrap();
    assert_eq!(take(&mut s, 1).await[0].id(), id(before[2].base));

    // Truncating everything keeps the newest segment, and appends continue.
    h.truncate(id(1_000)).await.unwrap();
    let after = list_segments(&dir_of(root.path())).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(h.append(msg("more")).await.unwrap(), id(60));
    h.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_closed_handles_refuse_writes() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let ro = open(&cfg, 1, false).await.unwrap();
    assert!(matches!(
        ro.append(msg("x")).await,
        Err(LogError::ReadOnly(_))
    ));
    assert!(matches!(
        ro.truncate(id(0)).await,
        Err(LogError::ReadOnly(_))
    ));
    let rw = open(&cfg, 1, true).await.unwrap();
    rw.close().await;
    rw.close().await;
    assert!(matches!(rw.append(msg("x")).await, Err(LogError::Closed)));
    assert!(matches!(
        rw.read(ReadOptions::new(DeliverPolicy::All)).await,
        Err(LogError::Closed)
    ));
    ro.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_term_open_fences_lower_term_handles() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let old = open(&cfg, 1, true).await.unwrap();
    let acked = append_n(&old, "old", 5).await;
    let new = open(&cfg, 2, true).await.unwrap();
    let err = old.append(msg("late")).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(old.append(msg("later")).await.unwrap_err().is_fenced());
    assert!(old.truncate(id(0)).await.unwrap_err().is_fenced());
    assert!(open(&cfg, 1, true).await.err().unwrap().is_fenced());
    let first_new = new.append(msg("new")).await.unwrap();
    assert!(acked.iter().all(|a| *a < first_new));
    let all = read_all(&new, 6).await;
    assert_eq!(text(&all[5]), "new");
    old.close().await;
    new.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_term_handles_resync_instead_of_overwriting() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let a = open(&cfg, 1, true).await.unwrap();
    let b = open(&cfg, 1, true).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        let h = if i % 3 == 0 { &a } else { &b };
        ids.push(h.append(msg(&format!("x-{i}"))).await.unwrap());
    }
    assert_eq!(ids, (0..30).map(id).collect::<Vec<_>>());
    let all = read_all(&a, 30).await;
    for (i, m) in all.iter().enumerate() {
        assert_eq!(text(m), format!("x-{i}"));
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_readers_tail_and_see_only_committed_records() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let rw = open(&cfg, 1, true).await.unwrap();
    let ro = open(&cfg, 1, false).await.unwrap();
    let mut s = ro.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    let writer = {
        let rw = rw.clone();
        tokio::spawn(async move { append_n(&rw, "t", 50).await })
    };
    let got = take(&mut s, 50).await;
    let ids = writer.await.unwrap();
    assert_eq!(got.iter().map(|m| m.id()).collect::<Vec<_>>(), ids);

    // Hold the term's lock so the writer cannot sync: nothing is delivered meanwhile.
    let lock = std::fs::File::open(claims::claim_path(&dir_of(root.path()), Term(1))).unwrap();
    lock.lock().unwrap();
    let pending = rw.enqueue(msg("pending")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(150), s.next())
            .await
            .is_err(),
        "an uncommitted record was delivered"
    );
    lock.unlock().unwrap();
    let id = pending.await.unwrap();
    assert_eq!(take(&mut s, 1).await[0].id(), id);
    ro.close().await;
    rw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_waits_while_the_queue_is_full() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        queue_records: 4,
        ..config(root.path())
    };
    let rw = open(&cfg, 1, true).await.unwrap();
    rw.append(msg("warm")).await.unwrap();
    let lock = std::fs::File::open(claims::claim_path(&dir_of(root.path()), Term(1))).unwrap();
    lock.lock().unwrap();
    let mut futures = Vec::new();
    // The writer takes the first record and blocks on the lock; it keeps its slot until it is
    // written, so three more fill the queue.
    for i in 0..4 {
        futures.push(rw.enqueue(msg(&format!("q-{i}"))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let blocked = tokio::time::timeout(Duration::from_millis(200), rw.enqueue(msg("over"))).await;
    assert!(
        blocked.is_err(),
        "enqueue returned while the queue was full"
    );
    lock.unlock().unwrap();
    let over = tokio::time::timeout(Duration::from_secs(10), rw.enqueue(msg("over")))
        .await
        .unwrap()
        .unwrap();
    for f in futures {
        f.await.unwrap();
    }
    over.await.unwrap();
    rw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_queued_appends_and_stops_tasks() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let rw = open(&cfg, 1, true).await.unwrap();
    let s1 = rw.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    let _s2 = rw
        .read(ReadOptions::new(DeliverPolicy::Latest))
        .await
        .unwrap();
    drop(s1);
    let lock = std::fs::File::open(claims::claim_path(&dir_of(root.path()), Term(1))).unwrap();
    lock.lock().unwrap();
    let first = rw.enqueue(msg("in flight")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let queued = rw.enqueue(msg("queued")).await.unwrap();
    let closing = {
        let rw = rw.clone();
        tokio::spawn(async move { rw.close().await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    lock.unlock().unwrap();
    tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .unwrap()
        .unwrap();
    // The batch being written completes; the one still queued fails.
    assert!(first.await.is_ok());
    assert!(matches!(queued.await, Err(LogError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_stops_its_reader() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let rw = open(&cfg, 1, true).await.unwrap();
    append_n(&rw, "d", 20).await;
    let provider = LocalProvider::new(cfg.clone()).unwrap();
    let handle = provider
        .open_local(OpenOptions::read_only(pch(), Term(1)))
        .await
        .unwrap();
    let mut s = handle
        .read(ReadOptions {
            policy: DeliverPolicy::All,
            read_ahead: 2,
        })
        .await
        .unwrap();
    take(&mut s, 1).await;
    drop(s);
    // The handle's task tracker empties once the reader noticed.
    for _ in 0..100 {
        if handle.tasks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.tasks.is_empty(), "reader still running");
    rw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_durability_modes_append_and_read() {
    for durability in [
        Durability::None,
        Durability::Interval(Duration::from_millis(5)),
    ] {
        let root = tempfile::tempdir().unwrap();
        let cfg = LocalConfig {
            durability,
            ..config(root.path())
        };
        let h = open(&cfg, 1, true).await.unwrap();
        append_n(&h, "n", 30).await;
        let all = read_all(&h, 30).await;
        assert_eq!(text(&all[29]), "n-29");
        h.close().await;
        let h = open(&cfg, 2, true).await.unwrap();
        assert_eq!(h.append(msg("after")).await.unwrap(), id(30));
        h.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_distinct_increasing_ids() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        segment_size: 4096,
        ..config(root.path())
    };
    let h = open(&cfg, 1, true).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                ids.push((h.append(msg(&format!("{w}-{i}"))).await.unwrap(), i));
            }
            ids
        }));
    }
    let mut all_ids = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(ids.windows(2).all(|p| p[0].0 < p[1].0), "per-writer order");
        all_ids.extend(ids.into_iter().map(|(id, _)| id));
    }
    all_ids.sort();
    assert_eq!(all_ids, (0..640).map(id).collect::<Vec<_>>());
    let got = read_all(&h, 640).await;
    assert!(got.windows(2).all(|p| p[0].id() < p[1].id()));
    h.close().await;
}

/// Whether the file's last byte is zero (an empty file has none).
fn ends_in_zero(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.last() == Some(&0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_runway_is_recovered_and_continued() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        segment_size: 1 << 20,
        runway: 64 << 10,
        ..config(root.path())
    };
    let h = open(&cfg, 1, true).await.unwrap();
    append_n(&h, "a", 10).await;
    // Dropped without close, like a crash of the process: the runway stays.
    drop(h);
    let seg = newest_segment(root.path());
    let end = data_end(root.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(len > end + 4096, "runway of {} bytes", len - end);
    assert!(ends_in_zero(&seg));

    // Read-only: everything, nothing more, and the file untouched.
    let ro = open(&cfg, 0, false).await.unwrap();
    let got = read_all(&ro, 10).await;
    assert_eq!(text(&got[9]), "a-9");
    let mut stream = ro.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    take(&mut stream, 10).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err(),
        "the runway is not a record"
    );
    let mut latest = ro
        .read(ReadOptions::new(DeliverPolicy::Latest))
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);

    // Read-write: continues at lsn 10, right after the last record.
    let h = open(&cfg, 2, true).await.unwrap();
    assert_eq!(h.append(msg("b")).await.unwrap(), id(10));
    let got = read_all(&h, 11).await;
    assert_eq!(text(&got[10]), "b");
    // The read-only handle's Latest stream sees the new record (and nothing of the runway).
    let next = tokio::time::timeout(Duration::from_secs(5), latest.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.id(), id(10));
    h.close().await;
    ro.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_handle_reader_tails_past_the_runway_and_sealed_segments_have_none() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        segment_size: 2048,
        runway: 1 << 20,
        ..config(root.path())
    };
    // A read-only provider of its own (a separate `SharedDir` is not possible in one process,
    // but with no in-process writer registered at the start it reads by polling the files, as
    // another process would).
    let ro = open(&cfg, 0, false).await.unwrap();
    let mut stream = ro.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    let h = open(&cfg, 1, true).await.unwrap();
    let n = 300;
    let ids = append_n(&h, "t", n).await;
    assert_eq!(ids.last().copied(), Some(id(n as u64 - 1)));
    let got = tokio::time::timeout(Duration::from_secs(10), take(&mut stream, n))
        .await
        .unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.id(), id(i as u64));
        assert_eq!(text(m), format!("t-{i}"));
    }
    let segments = list_segments(&dir_of(root.path())).unwrap();
    assert!(segments.len() > 3, "rolled {} times", segments.len() - 1);
    let scanned = recover(&segments, RecoveryMode::ReadOnly, 64 << 10, None).unwrap();
    for s in &scanned[..scanned.len() - 1] {
        let len = std::fs::metadata(&s.path).unwrap().len();
        assert_eq!(
            len,
            s.end_offset,
            "{} ends after its data",
            s.path.display()
        );
    }
    // The newest one is bounded by segment_size (the runway is capped by it) plus a batch.
    let newest = &segments[segments.len() - 1].path;
    assert!(std::fs::metadata(newest).unwrap().len() <= 2 * 2048 + 4096);
    h.close().await;
    // No in-process writer now: the reader polls the files and must not choke on the runway.
    let h2 = open(&cfg, 2, true).await.unwrap();
    append_n(&h2, "u", 1).await;
    drop(h2);
    let more = tokio::time::timeout(Duration::from_secs(10), take(&mut stream, 1))
        .await
        .unwrap();
    assert_eq!(more[0].id(), id(n as u64));
    ro.close().await;
}

/// The frame of a record with payload `text`.
fn frame(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    sluice_types::codec::encode_message(&msg(text).into_message(), &mut out).unwrap();
    out
}

fn append_to(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_before_term_claims_opens_reads_and_continues() {
    let root = tempfile::tempdir().unwrap();
    let cfg = config(root.path());
    let dir = dir_of(root.path());
    std::fs::create_dir_all(&dir).unwrap();
    // What a version before claims left: segments named by base only, a TERM file, a LOCK file.
    for (base, count) in [(0u64, 4u64), (4, 3)] {
        let path = dir.join(segment::segment_name(base, None));
        let mut bytes = segment::encode_segment_header(base, Term(3)).to_vec();
        for i in base..base + count {
            bytes.extend(frame(&format!("old-{i}")));
        }
        if base == 4 {
            bytes.extend(vec![0u8; 1000]); // its writer's runway
        }
        std::fs::write(&path, bytes).unwrap();
    }
    let term_path = dir.join(segment::TERM_FILE);
    let term_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&term_path)
        .unwrap();
    let stored = segment::read_term(&term_file, &term_path).unwrap();
    segment::write_term(&term_file, &term_path, stored, Term(5)).unwrap();
    std::fs::write(dir.join("LOCK"), b"").unwrap();

    let ro = open(&cfg, 0, false).await.unwrap();
    let got = read_all(&ro, 7).await;
    assert_eq!(
        got.iter().map(text).collect::<Vec<_>>(),
        (0..7).map(|i| format!("old-{i}")).collect::<Vec<_>>()
    );
    // The stored term still refuses a lower one.
    assert!(open(&cfg, 4, true).await.err().unwrap().is_fenced());
    // A higher term continues the lsns in a segment of its own; the reader follows.
    let mut tail = ro
        .read(ReadOptions::new(DeliverPolicy::StartFrom(id(7))))
        .await
        .unwrap();
    let h = open(&cfg, 6, true).await.unwrap();
    assert_eq!(append_n(&h, "new", 3).await, vec![id(7), id(8), id(9)]);
    assert_eq!(text(&take(&mut tail, 1).await[0]), "new-0");
    let all = read_all(&h, 10).await;
    assert_eq!(text(&all[6]), "old-6");
    assert_eq!(text(&all[9]), "new-2");
    let newest = list_segments(&dir).unwrap().pop().unwrap();
    assert_eq!((newest.base, newest.term), (7, Some(6)));
    h.close().await;
    ro.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_writers_late_records_after_the_seal_are_never_read() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        segment_size: 1 << 20,
        ..config(root.path())
    };
    let dir = dir_of(root.path());
    let old = open(&cfg, 1, true).await.unwrap();
    append_n(&old, "old", 5).await;
    let old_segment = newest_segment(root.path());
    // The old writer is stopped; a new term opens, seals the old segment and appends.
    let new = open(&cfg, 2, true).await.unwrap();
    append_n(&new, "new", 2).await;
    let sealed = seal::read(&old_segment, 0).unwrap().unwrap();
    assert_eq!(sealed.next_lsn, 5);
    // The old writer, continued, had checked its term before the open and writes after the
    // seal (what `write_locked` would do without its check after the sync).
    append_to(&old_segment, &frame("late-1"));
    append_to(&old_segment, &frame("late-2"));
    // The old handle itself is fenced.
    assert!(old.append(msg("late-3")).await.unwrap_err().is_fenced());

    // Readers — in process (with the writer of term 2) and, below, without any writer — and
    // recovery see the log up to the seal, then the new term.
    let expect: Vec<String> = (0..5)
        .map(|i| format!("old-{i}"))
        .chain((0..2).map(|i| format!("new-{i}")))
        .collect();
    let all = read_all(&new, 7).await;
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), expect);
    new.close().await;
    old.close().await;
    let ro = open(&cfg, 0, false).await.unwrap();
    let all = read_all(&ro, 7).await;
    assert_eq!(all.iter().map(text).collect::<Vec<_>>(), expect);
    let mut s = ro.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    take(&mut s, 7).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(150), s.next())
            .await
            .is_err(),
        "something after the log's end was delivered"
    );
    ro.close().await;
    let h = open(&cfg, 3, true).await.unwrap();
    assert_eq!(h.append(msg("three")).await.unwrap(), id(7));
    h.close().await;
    assert!(list_segments(&dir).unwrap().len() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_delivers_nothing_new_from_a_segment_a_newer_term_is_sealing() {
    let root = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        segment_size: 1 << 20,
        ..config(root.path())
    };
    let dir = dir_of(root.path());
    let w = open(&cfg, 1, true).await.unwrap();
    append_n(&w, "a", 3).await;
    w.close().await;
    let segment = newest_segment(root.path());
    let data_end = data_end(root.path());
    // Cut the runway, so that records appended below land right after the data.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(data_end)
        .unwrap();
    let ro = open(&cfg, 0, false).await.unwrap();
    let mut s = ro.read(ReadOptions::new(DeliverPolicy::All)).await.unwrap();
    take(&mut s, 3).await;
    // Term 2 has claimed the log but not sealed the segment yet: records that appear in the
    // segment now may end up after its seal, so none is delivered.
    let claim = claims::Claim::acquire(&dir, Term(2)).unwrap();
    append_to(&segment, &frame("written-while-sealing"));
    assert!(
        tokio::time::timeout(Duration::from_millis(150), s.next())
            .await
            .is_err(),
        "a record of a segment being sealed was delivered"
    );
    // Term 2's open found the record, so the seal keeps it; the reader goes on.
    drop(claim);
    let h = open(&cfg, 2, true).await.unwrap();
    h.append(msg("b")).await.unwrap();
    let got = take(&mut s, 2).await;
    assert_eq!(text(&got[0]), "written-while-sealing");
    assert_eq!((got[1].id(), text(&got[1])), (id(4), "b".to_string()));
    h.close().await;
    ro.close().await;
}
