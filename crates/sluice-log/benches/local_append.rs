//! Append throughput of the local backend with fsync on, next to a raw `write` + `fdatasync`
//! baseline on the same disk (same directory), in the same run.
//!
//! ```text
//! cargo bench -p sluice-log --bench local_append
//! ```
//!
//! Criterion reports records/s (`Throughput::Elements`, one element per 1 KiB record); at the end
//! a summary table prints records/s and MiB/s for every case, and local's share of the raw
//! 64-records-per-sync rate.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::Mutex;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{LogProvider, OpenOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MutableMessage, PChannel, Term};

/// Payload bytes per record.
const RECORD: usize = 1024;

/// Records and time measured per case, for the summary.
type Totals = Arc<Mutex<BTreeMap<String, (u64, Duration)>>>;

fn bench_dir() -> PathBuf {
    // Same filesystem for both: the target directory's scratch space.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Appends `iters` records in batches of `per_sync` with one write and one fdatasync per batch
/// to a new file.
fn raw_append(dir: &Path, per_sync: usize, iters: u64) -> Duration {
    let path = dir.join(format!("raw-{per_sync}.dat"));
    let mut file = File::create(&path).expect("create the raw file");
    let batch = vec![0xa5u8; RECORD * per_sync];
    let syncs = iters.div_ceil(per_sync as u64).max(1);
    let start = Instant::now();
    for _ in 0..syncs {
        file.write_all(&batch).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    // Time per record actually written, scaled to the requested count.
    elapsed.mul_f64(iters as f64 / (syncs * per_sync as u64) as f64)
}

fn message() -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(vec![0x5au8; RECORD])
        .build()
        .expect("a valid message")
}

/// Appends `iters` records from `appenders` concurrent tasks through a fresh local log.
async fn local_append(root: &Path, appenders: usize, iters: u64) -> Duration {
    let root = tempfile::tempdir_in(root).expect("bench directory");
    let provider = LocalProvider::new(LocalConfig::new(root.path())).expect("provider");
    let handle = provider
        .open(OpenOptions::read_write(
            PChannel::new("bench").expect("pchannel"),
            Term(1),
        ))
        .await
        .expect("open");
    let per_task = iters / appenders as u64;
    let extra = iters % appenders as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(appenders);
    for t in 0..appenders as u64 {
        let handle = handle.clone();
        let n = per_task + u64::from(t < extra);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                handle.append(message()).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("appender task");
    }
    let elapsed = start.elapsed();
    handle.close().await;
    elapsed
}

fn record(totals: &Totals, name: &str, iters: u64, elapsed: Duration) {
    let mut totals = totals.lock();
    let entry = totals.entry(name.to_owned()).or_default();
    entry.0 += iters;
    entry.1 += elapsed;
}

fn benches(c: &mut Criterion) {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).expect("bench directory");
    let totals: Totals = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("append_1KiB_fsync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));

    for per_sync in [1usize, 8, 64] {
        let name = format!("raw_write_fdatasync/{per_sync}_per_sync");
        group.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let elapsed = raw_append(&dir, per_sync, iters);
                record(&totals, &name, iters, elapsed);
                elapsed
            })
        });
    }
    for appenders in [1usize, 8, 64, 256] {
        let name = format!("local/{appenders}_appenders");
        group.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let elapsed = rt.block_on(local_append(&dir, appenders, iters));
                record(&totals, &name, iters, elapsed);
                elapsed
            })
        });
    }
    group.finish();

    let totals = totals.lock();
    let rate = |name: &str| {
        totals
            .get(name)
            .map(|&(n, d)| n as f64 / d.as_secs_f64().max(1e-9))
    };
    let raw64 = rate("raw_write_fdatasync/64_per_sync");
    eprintln!("\nsummary (records of {RECORD} B, all samples incl. warm-up):");
    eprintln!(
        "{:<36} {:>12} {:>10} {:>10}",
        "case", "records/s", "MiB/s", "vs raw64"
    );
    for name in totals.keys() {
        let Some(r) = rate(name) else { continue };
        let share = raw64.map_or(String::new(), |raw| format!("{:.0}%", 100.0 * r / raw));
        eprintln!(
            "{name:<36} {r:>12.0} {:>10.1} {share:>10}",
            r * RECORD as f64 / (1 << 20) as f64
        );
    }
}

criterion_group!(append_benches, benches);
criterion_main!(append_benches);
