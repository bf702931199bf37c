//! Measuring code shared by the append benches (`object_append`, `backends`): closed-loop
//! appenders against any backend, raw conditional-create PUTs against an object store, and the
//! numbers reported for both.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions};
use sluice_log::{LogProvider, OpenOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MutableMessage, PChannel, Term};

/// Payload bytes per record.
pub(crate) const RECORD: usize = 1024;

/// What one case measured.
pub(crate) struct Outcome {
    /// Operations (appends, PUTs, ...) completed.
    pub ops: u64,
    /// Payload bytes they carried.
    pub bytes: u64,
    /// Wall time of the case.
    pub elapsed: Duration,
    /// Latency of each operation, in µs.
    pub latency_us: Histogram<u64>,
}

impl Outcome {
    /// Operations per second.
    pub(crate) fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload MB (10^6 bytes) per second.
    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// The latency at quantile `q`, in ms.
    pub(crate) fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Waits for the measuring tasks started at `start` and merges their latencies; each operation
/// carried `bytes_per_op` payload bytes.
pub(crate) async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
    start: Instant,
    bytes_per_op: u64,
) -> Outcome {
    let mut latency_us = histogram();
    for t in tasks {
        latency_us
            .add(t.await.expect("measuring task"))
            .expect("merge");
    }
    let elapsed = start.elapsed();
    let ops = latency_us.len();
    Outcome {
        ops,
        bytes: ops * bytes_per_op,
        elapsed,
        latency_us,
    }
}

/// An empty latency histogram (1 µs .. 10 min).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A record with a [`RECORD`]-byte payload.
pub(crate) fn message() -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(vec![0x5au8; RECORD])
        .build()
        .expect("a valid message")
}

/// Seconds per case: `SLUICE_BENCH_SECS`, else `default` (1 in a smoke run: `cargo test
/// --benches` runs benches without `--bench`).
pub(crate) fn secs_per_case(default: u64) -> (bool, u64) {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("SLUICE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 1 } else { default });
    (smoke, secs)
}

/// Creates `bucket` on an S3-compatible server that accepts an unsigned create (moto does); on
/// other servers create it beforehand (for s3s-fs: a directory named after it in its root).
pub(crate) fn ensure_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let host = endpoint
        .strip_prefix("http://")
        .expect("an http:// endpoint")
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("connect to the S3 server");
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("create bucket");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    let created = response.split_whitespace().nth(1) == Some("200")
        || response.contains("BucketAlreadyOwnedByYou");
    if !created {
        eprintln!(
            "note: unsigned create of bucket {bucket} refused; it must exist: {}",
            response.lines().next().unwrap_or("")
        );
    }
}

/// `appenders` tasks append to `pchannel` (opened read-write at term 1) for `run_for`, each with
/// up to `window` appends outstanding (1: wait for each ack).
pub(crate) async fn append_case(
    provider: &dyn LogProvider,
    pchannel: &PChannel,
    appenders: usize,
    window: usize,
    run_for: Duration,
) -> Outcome {
    let handle = provider
        .open(OpenOptions::read_write(pchannel.clone(), Term(1)))
        .await
        .expect("open");
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut outstanding = FuturesUnordered::new();
            loop {
                let more = Instant::now() < deadline;
                if more && outstanding.len() < window {
                    let t = Instant::now();
                    let ack = handle.enqueue(message()).await.expect("enqueue");
                    outstanding.push(async move { (t, ack.await) });
                    continue;
                }
                let Some((t, r)) = outstanding.next().await else {
                    break;
                };
                r.expect("append");
                h.record(t.elapsed().as_micros().max(1) as u64)
                    .expect("latency in range");
            }
            h
        }));
    }
    let outcome = gather(tasks, start, RECORD as u64).await;
    handle.close().await;
    outcome
}

/// The number and mean size of the data blocks the object backend wrote for `pchannel` under
/// `prefix`.
pub(crate) async fn object_blocks(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    pchannel: &PChannel,
) -> (usize, u64) {
    let dir = Path::from(format!("{prefix}/{pchannel}"));
    let sizes: Vec<u64> = store
        .list(Some(&dir))
        .try_filter(|m| futures::future::ready(m.location.as_ref().contains("/b/")))
        .map_ok(|m| m.size)
        .try_collect()
        .await
        .expect("list blocks");
    let mean = sizes.iter().sum::<u64>() / (sizes.len() as u64).max(1);
    (sizes.len(), mean)
}

/// `concurrency` tasks PUT (conditional create) new objects of `size` bytes for `run_for`.
pub(crate) async fn raw_put_case(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    size: u64,
    concurrency: usize,
    run_for: Duration,
) -> Outcome {
    let body = Bytes::from(vec![0xa5u8; size as usize]);
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let (store, body) = (store.clone(), body.clone());
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let path = Path::from(format!("{prefix}/raw-{size}-{concurrency}/{task}/{i:013}"));
                let t = Instant::now();
                store
                    .put_opts(
                        &path,
                        body.clone().into(),
                        PutOptions::from(PutMode::Create),
                    )
                    .await
                    .expect("raw put");
                h.record(t.elapsed().as_micros().max(1) as u64)
                    .expect("latency in range");
                i += 1;
            }
            h
        }));
    }
    gather(tasks, start, size).await
}

/// Prints the header of a results table.
pub(crate) fn print_header() {
    eprintln!(
        "\n{:<40} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "case", "ops/s", "MB/s", "p50 ms", "p99 ms", "vs raw"
    );
}

/// Prints one row; `raw` is the medium's ceiling the row is compared with (MB/s share).
pub(crate) fn print_row(name: &str, o: &Outcome, raw: Option<&Outcome>) {
    let share = raw
        .map(|r| {
            format!(
                "{:>7.0}%",
                100.0 * o.mb_per_sec() / r.mb_per_sec().max(1e-9)
            )
        })
        .unwrap_or_default();
    eprintln!(
        "{:<40} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {share}",
        name,
        o.per_sec(),
        o.mb_per_sec(),
        o.pct_ms(0.5),
        o.pct_ms(0.99),
    );
}
