//! Append throughput of the `object` backend on an S3-compatible server, next to raw PUTs of the
//! same object size and concurrency to the same server, in the same run.
//!
//! ```text
//! SLUICE_TEST_S3=http://127.0.0.1:PORT cargo bench -p sluice-log --features object --bench object_append
//! ```
//!
//! Without `SLUICE_TEST_S3` it runs against a temporary local directory instead (and says so).
//! Each case appends 1 KiB records for `SLUICE_BENCH_SECS` seconds (default 5) with the default
//! [`ObjectConfig`] (`SLUICE_BENCH_FLUSH_MS` overrides the flush interval): 1 appender and 64
//! appenders that each wait for their ack, and 64 appenders with 64 appends outstanding each
//! (enough load to fill blocks and every upload slot). Then the blocks
//! the case wrote are listed to get their mean size, and raw conditional-create PUTs of that size
//! run for as long, with as many in flight as the backend could have (1 appender: 1; else
//! `max_inflight`). Closed-loop appenders cannot keep every upload slot busy (64 KiB outstanding
//! in all), so their share of that raw rate is bounded by the load, not the backend. Reported per case: records/s, MB/s of record payload, p50/p99 append latency;
//! for the raw PUTs: PUTs/s, MB/s, p50/p99; and the backend's MB/s as a share of the raw MB/s.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions};
use sluice_log::object::{ObjectConfig, ObjectProvider, ObjectStoreConfig, S3Config};
use sluice_log::{LogProvider, OpenOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MutableMessage, PChannel, Term};

/// Payload bytes per record.
const RECORD: usize = 1024;
const BUCKET: &str = "sluice-bench";

struct Outcome {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Outcome {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    fn pct_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn message() -> MutableMessage {
    MutableMessage::builder(InsertHeader::default())
        .payload(vec![0x5au8; RECORD])
        .build()
        .expect("a valid message")
}

/// Creates the bucket on an S3-compatible server that accepts an unsigned create (moto does); on
/// other servers create it beforehand (for s3s-fs: a directory named after it in its root).
fn ensure_bucket(endpoint: &str) {
    use std::io::{Read, Write};
    let host = endpoint
        .strip_prefix("http://")
        .expect("an http:// endpoint")
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("connect to the S3 server");
    write!(
        conn,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("create bucket");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    let created = response.split_whitespace().nth(1) == Some("200")
        || response.contains("BucketAlreadyOwnedByYou");
    if !created {
        eprintln!(
            "note: unsigned create of bucket {BUCKET} refused; it must exist: {}",
            response.lines().next().unwrap_or("")
        );
    }
}

/// `appenders` tasks append for `run_for`, each with up to `window` appends outstanding (1: wait
/// for each ack); returns the outcome and the mean block size written.
async fn object_case(
    provider: &ObjectProvider,
    prefix: &str,
    appenders: usize,
    window: usize,
    run_for: Duration,
) -> (Outcome, u64) {
    let pchannel = PChannel::new(format!("bench-{appenders}-{window}")).expect("pchannel");
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
    let mut latency_us = histogram();
    for t in tasks {
        latency_us.add(t.await.expect("appender")).expect("merge");
    }
    let elapsed = start.elapsed();
    handle.close().await;
    let ops = latency_us.len();
    // Mean size of the data blocks this case wrote.
    let dir = Path::from(format!("{prefix}/{pchannel}"));
    let sizes: Vec<u64> = provider
        .store()
        .list(Some(&dir))
        .try_filter(|m| futures::future::ready(m.location.as_ref().contains("/b/")))
        .map_ok(|m| m.size)
        .try_collect()
        .await
        .expect("list blocks");
    let mean = sizes.iter().sum::<u64>() / (sizes.len() as u64).max(1);
    eprintln!(
        "  {appenders} appenders x {window} outstanding: {} blocks, mean {mean} B ({:.1} records per block)",
        sizes.len(),
        ops as f64 / sizes.len().max(1) as f64
    );
    let outcome = Outcome {
        ops,
        bytes: ops * RECORD as u64,
        elapsed,
        latency_us,
    };
    (outcome, mean)
}

/// `concurrency` tasks PUT (conditional create) new objects of `size` bytes for `run_for`.
async fn raw_case(
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
    let mut latency_us = histogram();
    for t in tasks {
        latency_us.add(t.await.expect("put task")).expect("merge");
    }
    let elapsed = start.elapsed();
    let ops = latency_us.len();
    Outcome {
        ops,
        bytes: ops * size,
        elapsed,
        latency_us,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no such flag: then a
    // short smoke run keeps the bench compiling and working.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("SLUICE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 1 } else { 5 });
    let run_for = Duration::from_secs(secs);
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, medium) = match std::env::var("SLUICE_TEST_S3") {
        Ok(endpoint) if !endpoint.is_empty() => {
            ensure_bucket(&endpoint);
            let s3 = S3Config {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                ..S3Config::compatible(endpoint.clone(), BUCKET)
            };
            (ObjectStoreConfig::S3(s3), format!("S3 at {endpoint}"))
        }
        _ => {
            eprintln!("note: SLUICE_TEST_S3 is not set; benchmarking a local directory instead");
            (
                ObjectStoreConfig::LocalDir(dir.path().to_path_buf()),
                format!("local directory {}", dir.path().display()),
            )
        }
    };
    let prefix = format!("bench-{:08x}", rand::random::<u32>());
    let mut config = ObjectConfig {
        prefix: prefix.clone(),
        ..ObjectConfig::new(store)
    };
    if let Some(ms) = std::env::var("SLUICE_BENCH_FLUSH_MS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config.flush_interval = Duration::from_millis(ms);
    }
    let max_inflight = config.max_inflight;
    let provider = ObjectProvider::new(config.clone()).expect("provider");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!(
        "object_append on {medium}, {secs} s per case, {RECORD} B records, flush_interval {:?}",
        config.flush_interval
    );
    let mut rows = Vec::new();
    for (appenders, window) in [(1usize, 1usize), (64, 1), (64, 64)] {
        let (object, block) =
            rt.block_on(object_case(&provider, &prefix, appenders, window, run_for));
        let concurrency = (appenders * window).min(max_inflight);
        let raw = rt.block_on(raw_case(
            provider.store().clone(),
            &prefix,
            block,
            concurrency,
            run_for,
        ));
        rows.push((appenders, window, block, concurrency, object, raw));
    }
    eprintln!(
        "\n{:<28} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "case", "ops/s", "MB/s", "p50 ms", "p99 ms", "vs raw"
    );
    for (appenders, window, block, concurrency, object, raw) in &rows {
        let share = 100.0 * object.mb_per_sec() / raw.mb_per_sec().max(1e-9);
        eprintln!(
            "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7.0}%",
            format!("object/{appenders}_appenders_x{window}"),
            object.per_sec(),
            object.mb_per_sec(),
            object.pct_ms(0.5),
            object.pct_ms(0.99),
            share
        );
        eprintln!(
            "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            format!("raw_put/{block}B_x{concurrency}"),
            raw.per_sec(),
            raw.mb_per_sec(),
            raw.pct_ms(0.5),
            raw.pct_ms(0.99)
        );
    }
}
