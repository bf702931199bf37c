//! Cold catch-up reads of the `object` backend on an S3-compatible server, next to raw GETs of
//! the same blocks from the same server, in the same run.
//!
//! ```text
//! SLUICE_TEST_S3=http://127.0.0.1:PORT cargo bench -p sluice-log --features object --bench object_catchup
//! ```
//!
//! Without `SLUICE_TEST_S3` it runs against a temporary local directory instead (and says so).
//! A writer appends `SLUICE_BENCH_RECORDS` (default 50 000) 1 KiB records with 64 appends in
//! flight, so blocks fill as they do under load; then, per read-ahead setting, a fresh provider
//! (nothing cached) reads the pchannel from its oldest record to the last: records/s and MB/s.
//! The raw side lists the same blocks and GETs them all, one at a time and then with as many in
//! flight as the reader fetches ahead: what the server gives for those objects.

#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sluice_log::object::{ObjectConfig, ObjectProvider, ObjectStoreConfig, S3Config, build_store};
use sluice_log::{DeliverPolicy, LogProvider, OpenOptions, ReadOptions};
use sluice_types::{PChannel, Term};

use support::{RECORD, ensure_bucket, message};

const BUCKET: &str = "sluice-bench";

async fn fill(provider: &ObjectProvider, pchannel: &PChannel, records: usize) {
    let handle = provider
        .open(OpenOptions::read_write(pchannel.clone(), Term(1)))
        .await
        .expect("open");
    let mut outstanding: futures::stream::FuturesUnordered<sluice_log::AppendFuture> =
        futures::stream::FuturesUnordered::new();
    for _ in 0..records {
        if outstanding.len() >= 64 {
            outstanding.next().await.expect("an ack").expect("append");
        }
        outstanding.push(handle.enqueue(message()).await.expect("enqueue"));
    }
    while let Some(r) = outstanding.next().await {
        r.expect("append");
    }
    handle.close().await;
}

async fn catch_up(config: ObjectConfig, pchannel: &PChannel, records: usize) -> Duration {
    let provider = ObjectProvider::new(config).expect("provider");
    let handle = provider
        .open(OpenOptions::read_only(pchannel.clone(), Term(1)))
        .await
        .expect("open");
    let started = Instant::now();
    let mut s = handle
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .expect("read");
    for _ in 0..records {
        s.next().await.expect("a record").expect("read");
    }
    let elapsed = started.elapsed();
    handle.close().await;
    elapsed
}

async fn raw_gets(store: &Arc<dyn ObjectStore>, blocks: &[Path], concurrency: usize) -> Duration {
    let started = Instant::now();
    futures::stream::iter(blocks.iter().cloned())
        .map(|p| {
            let store = store.clone();
            async move { store.get(&p).await?.bytes().await }
        })
        .buffered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("get");
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let records: usize = std::env::var("SLUICE_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 50_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let (store_config, where_) = match std::env::var("SLUICE_TEST_S3") {
        Ok(endpoint) if !endpoint.is_empty() => {
            ensure_bucket(&endpoint, BUCKET);
            (
                ObjectStoreConfig::S3(S3Config::compatible(endpoint.clone(), BUCKET)),
                format!("the S3 server at {endpoint}"),
            )
        }
        _ => (
            ObjectStoreConfig::LocalDir(dir.path().to_path_buf()),
            "a local directory (SLUICE_TEST_S3 is not set)".to_owned(),
        ),
    };
    let prefix = format!(
        "catchup-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let config = ObjectConfig {
        prefix: prefix.clone(),
        ..ObjectConfig::new(store_config.clone())
    };
    let pchannel = PChannel::new("catchup_0").expect("pchannel");
    fill(
        &ObjectProvider::new(config.clone()).expect("provider"),
        &pchannel,
        records,
    )
    .await;

    let store = build_store(&store_config).expect("store");
    let blocks: Vec<Path> = store
        .list(Some(&Path::from(format!("{prefix}/{pchannel}"))))
        .try_filter(|m| futures::future::ready(m.location.as_ref().contains("/b/")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .expect("list blocks");
    let mut blocks = blocks;
    blocks.sort();
    let mb = (records * RECORD) as f64 / 1e6;
    println!(
        "# cold catch-up of {records} records of {RECORD} B in {} blocks on {where_}",
        blocks.len()
    );
    println!(
        "{:<28} {:>10} {:>12} {:>9}",
        "path", "ms", "records/s", "MB/s"
    );
    let row = |name: &str, d: Duration| {
        println!(
            "{name:<28} {:>10.1} {:>12.0} {:>9.1}",
            d.as_secs_f64() * 1e3,
            records as f64 / d.as_secs_f64(),
            mb / d.as_secs_f64()
        );
    };
    for ahead in [1usize, 4, 16] {
        let d = catch_up(
            ObjectConfig {
                read_ahead_blocks: ahead,
                ..config.clone()
            },
            &pchannel,
            records,
        )
        .await;
        row(&format!("reader, {ahead} blocks ahead"), d);
        let raw = raw_gets(&store, &blocks, ahead).await;
        row(&format!("raw GETs, {ahead} in flight"), raw);
    }
}
