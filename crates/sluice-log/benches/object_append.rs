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

mod support;

use std::time::Duration;

use sluice_log::object::{ObjectConfig, ObjectProvider, ObjectStoreConfig, S3Config};
use sluice_types::PChannel;

use support::{
    Outcome, RECORD, append_case, ensure_bucket, object_blocks, print_header, print_row,
    raw_put_case, secs_per_case,
};

const BUCKET: &str = "sluice-bench";

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
    let outcome = append_case(provider, &pchannel, appenders, window, run_for).await;
    let (blocks, mean) = object_blocks(provider.store(), prefix, &pchannel).await;
    eprintln!(
        "  {appenders} appenders x {window} outstanding: {blocks} blocks, mean {mean} B ({:.1} records per block)",
        outcome.ops as f64 / blocks.max(1) as f64
    );
    (outcome, mean)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no such flag: then a
    // short smoke run keeps the bench compiling and working.
    let (_smoke, secs) = secs_per_case(5);
    let run_for = Duration::from_secs(secs);
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, medium) = match std::env::var("SLUICE_TEST_S3") {
        Ok(endpoint) if !endpoint.is_empty() => {
            ensure_bucket(&endpoint, BUCKET);
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
        let raw = rt.block_on(raw_put_case(
            provider.store().clone(),
            &prefix,
            block,
            concurrency,
            run_for,
        ));
        rows.push((appenders, window, block, concurrency, object, raw));
    }
    print_header();
    for (appenders, window, block, concurrency, object, raw) in &rows {
        print_row(
            &format!("object/{appenders}_appenders_x{window}"),
            object,
            Some(raw),
        );
        print_row(&format!("raw_put/{block}B_x{concurrency}"), raw, None);
    }
}
