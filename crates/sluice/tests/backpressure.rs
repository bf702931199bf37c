//! Back-pressure against a real full disk: `sluice standalone` on a 64 MiB tmpfs with a
//! 16 MiB free-space watermark. A producer writes until appends are refused; the refusal is
//! RESOURCE_EXHAUSTED naming the disk, comes before the file system is full (no append fails
//! with an I/O error), and the process keeps serving reads. Space is freed, appends are
//! accepted again, and after a SIGKILL + restart every acknowledged message is there once.
//!
//! Needs root for `mount -t tmpfs` (CI runs as root); elsewhere the test is skipped with a note.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_client::{Client, ReadRequest};
use sluice_types::message::CreateCollectionHeader;
use sluice_types::{ErrorCode, MutableMessage, VChannel};
use support::Proc;

const RECORD: usize = 32 << 10;

/// A tmpfs of a fixed size, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but a tmpfs cannot be mounted (the test needs root): {why}");
            }
            eprintln!("note: cannot mount a tmpfs ({why}); skipping the disk-full test");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn start(data: &Path, logs: &Path) -> Proc {
    Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("SLUICE_NODE__MIN_FREE_DISK_BYTES", "16777216"),
            // Small segment files, so the log's files track what was written.
            ("SLUICE_LOG__LOCAL_SEGMENT_BYTES", "1048576"),
            // Keep everything in the log (no Parquet, no truncation): only the test frees space.
            ("SLUICE_STORAGE__ENABLED", "false"),
        ],
        logs,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn client(server: &Proc) -> Client {
    // Short, so a refused append comes back to the test instead of being retried on.
    support::client(&server.endpoint(), Duration::from_secs(2))
}

fn insert(v: &VChannel, tag: &str) -> MutableMessage {
    support::tagged_insert(v, "tag", tag, vec![0x42u8; RECORD])
}

fn filler(dir: &Path, mib: usize) -> PathBuf {
    let path = dir.join("filler");
    std::fs::write(&path, vec![0u8; mib << 20]).expect("writing the filler");
    path
}

/// Every tag read back from the beginning of `v` (each at most once).
async fn read_tags(client: &Client, v: &VChannel, want: usize) -> BTreeSet<String> {
    let mut reader = client.read(ReadRequest::vchannel(v));
    let mut tags = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tags.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, reader.next())
            .await
            .unwrap_or_else(|_| panic!("read {} of {want} acknowledged messages", tags.len()))
            .expect("reader open")
            .expect("read");
        if let Some(tag) = next.as_message().and_then(|m| m.property("tag")) {
            assert!(tags.insert(tag.to_owned()), "{tag} read twice");
        }
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_clearly_loses_nothing_and_recovers() {
    let Some(fs) = Tmpfs::mount(64) else {
        return;
    };
    let logs = tempfile::tempdir().expect("logs dir");
    let data = fs.path().join("data");
    let mut server = start(&data, logs.path());
    let client = client(&server);
    let v = VChannel::new("sluice-dml_0_100v0").unwrap();
    client
        .append(
            MutableMessage::builder(CreateCollectionHeader {
                collection_id: 100,
                partition_ids: vec![1],
                db_id: 1,
                schema: None,
            })
            .vchannel(&v)
            .build()
            .unwrap(),
        )
        .await
        .expect("create collection");
    // 30 MiB of other data on the same file system: about 34 MiB free.
    let filler = filler(fs.path(), 30);

    let mut acked = BTreeSet::new();
    let mut refused = None;
    for i in 0..4000 {
        let tag = format!("m{i}");
        match client.append(insert(&v, &tag)).await {
            Ok(_) => {
                acked.insert(tag);
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("appends were never refused on a filling disk");
    assert_eq!(refused.code, ErrorCode::ResourceExhausted, "{refused}");
    assert!(
        refused.message.contains("node.min_free_disk_bytes") && refused.message.contains("free"),
        "the refusal names the disk watermark: {refused}"
    );
    let free = sluice_node::pressure::free_bytes(fs.path()).unwrap();
    eprintln!(
        "refused after {} acknowledged appends of {RECORD} B with {free} bytes free: {refused}",
        acked.len()
    );
    assert!(
        acked.len() > 100,
        "only {} appends before refusing",
        acked.len()
    );
    assert!(
        // The disk budget stops writers within a few records of the watermark.
        free > 12 << 20,
        "the watermark kept the disk from filling ({free} bytes free)"
    );
    // Still refused a moment later, and reads go on meanwhile.
    let again = client.append(insert(&v, "refused")).await.unwrap_err();
    assert_eq!(again.code, ErrorCode::ResourceExhausted);
    assert_eq!(read_tags(&client, &v, acked.len()).await, acked);

    // Space returns: appends are accepted again.
    std::fs::remove_file(filler).unwrap();
    let back = Instant::now();
    let mut accepted = None;
    while back.elapsed() < Duration::from_secs(20) {
        let tag = format!("after-{}", acked.len());
        if client.append(insert(&v, &tag)).await.is_ok() {
            acked.insert(tag);
            accepted = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = accepted.expect("appends were not accepted again after space returned");
    for i in 0..50 {
        let tag = format!("later-{i}");
        client.append(insert(&v, &tag)).await.expect("append");
        acked.insert(tag);
    }
    eprintln!("accepted again {accepted:?} after space returned");

    // Nothing torn or lost: after a SIGKILL and a restart on the same data, every acknowledged
    // message is read back once (and the refused ones are not there).
    server.kill();
    let server = start(&data, logs.path());
    let client = self::client(&server);
    let tags = read_tags(&client, &v, acked.len()).await;
    assert_eq!(tags, acked);
    assert!(!tags.contains("refused"));
}

/// The peak and current resident set of process `pid` (bytes), from `/proc`.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

const MEMORY_CAP: u64 = 96 << 20;
const IN_FLIGHT_CAP: u64 = 32 << 20;
/// What the process may hold beyond its idle size and the two caps: allocator slack, gRPC and
/// HTTP/2 buffers, the flusher's Parquet writer, the client connections' read buffers.
const MARGIN: u64 = 160 << 20;

/// Sustained overload: 48 producers append 64 KiB inserts as fast as they can to two pchannels of
/// a standalone with a 96 MiB memory cap and 32 MiB in flight. Appends are taken or refused with
/// RESOURCE_EXHAUSTED (nothing else), the process's peak resident set stays within its idle size
/// + both caps + [`MARGIN`], and every acknowledged insert is read back exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_overload_stays_within_the_memory_caps_and_loses_nothing() {
    const PAYLOAD: usize = 64 << 10;
    let dir = tempfile::tempdir().expect("temp dir");
    let memory_cap = MEMORY_CAP.to_string();
    let in_flight_cap = IN_FLIGHT_CAP.to_string();
    let server = Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            dir.path().join("data").to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("SLUICE_NODE__MEMORY_CAP_BYTES", &memory_cap),
            ("SLUICE_NODE__MAX_IN_FLIGHT_BYTES", &in_flight_cap),
        ],
        dir.path(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let client = client(&server);
    let vchannels = [
        VChannel::new("sluice-dml_0_100v0").unwrap(),
        VChannel::new("sluice-dml_1_101v0").unwrap(),
    ];
    for v in &vchannels {
        client
            .append(
                MutableMessage::builder(CreateCollectionHeader {
                    collection_id: v.collection().0,
                    partition_ids: vec![1],
                    db_id: 1,
                    schema: None,
                })
                .vchannel(v)
                .build()
                .unwrap(),
            )
            .await
            .expect("create the collection");
    }
    let (_, idle) = rss(server.pid());
    let stop = Instant::now() + Duration::from_secs(8);
    let tasks: Vec<_> = (0..48)
        .map(|p| {
            let (client, v) = (client.clone(), vchannels[p % 2].clone());
            tokio::spawn(async move {
                let (mut acked, mut refused) = (Vec::new(), 0u64);
                for i in 0.. {
                    if Instant::now() >= stop {
                        break;
                    }
                    let tag = format!("p{p}-{i}");
                    let msg = support::tagged_insert(&v, "tag", &tag, vec![p as u8; PAYLOAD]);
                    match client.append(msg).await {
                        Ok(_) => acked.push(tag),
                        Err(e) if e.code == ErrorCode::ResourceExhausted => refused += 1,
                        Err(e) => panic!("append {tag}: {e}"),
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    let mut acked: [Vec<String>; 2] = Default::default();
    let mut refused = 0;
    for (p, t) in tasks.into_iter().enumerate() {
        let (a, r) = t.await.expect("producer");
        acked[p % 2].extend(a);
        refused += r;
    }
    let (peak, now) = rss(server.pid());
    let n: usize = acked.iter().map(Vec::len).sum();
    eprintln!(
        "overload: {n} inserts of {PAYLOAD} B acknowledged in 8 s ({:.0} MB/s), {refused} \
         refused; resident set idle {} MiB, peak {} MiB, after {} MiB; caps {} + {} MiB, margin \
         {} MiB",
        (n * PAYLOAD) as f64 / 8e6,
        idle >> 20,
        peak >> 20,
        now >> 20,
        MEMORY_CAP >> 20,
        IN_FLIGHT_CAP >> 20,
        MARGIN >> 20
    );
    assert!(n > 0, "nothing was acknowledged");
    assert!(
        peak <= idle + MEMORY_CAP + IN_FLIGHT_CAP + MARGIN,
        "peak resident set {} MiB: over idle {} MiB + caps {} + {} MiB + margin {} MiB",
        peak >> 20,
        idle >> 20,
        MEMORY_CAP >> 20,
        IN_FLIGHT_CAP >> 20,
        MARGIN >> 20
    );
    for (v, tags) in vchannels.iter().zip(&acked) {
        let read = read_tags(&client, v, tags.len()).await;
        for tag in tags {
            assert!(read.contains(tag), "acknowledged {tag} missing on {v}");
        }
    }
}
