//! `sluice bench`: throughput and latency measured next to a baseline taken in the same run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{DeliverPolicy, LogHandle, LogProvider, OpenOptions};
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{CollectionId, MutableMessage, PChannel, Term};
use sluice_wal::scanner::{MessageFilter, ReadMessage, ScannerOptions};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

const COLLECTION: i64 = 1;
const PARTITION: i64 = 1;

fn insert(pchannel: &PChannel, payload: &[u8], sent_ns: u64) -> anyhow::Result<MutableMessage> {
    let vc = pchannel.vchannel(CollectionId(COLLECTION), 0)?;
    Ok(MutableMessage::builder(InsertHeader {
        collection_id: COLLECTION,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: PARTITION,
            rows: 1,
            binary_size: payload.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(&vc)
    .property("sent", sent_ns.to_string())
    .payload(payload.to_vec())
    .build()?)
}

/// Runs `op` from `producers` tasks for `duration`; returns completed operations per second.
async fn closed_loop<F, Fut>(producers: usize, duration: Duration, op: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let (op, done) = (op.clone(), done.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                op().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn wal_deps() -> WalDeps {
    let oracle = LocalOracle::new();
    WalDeps {
        oracle: oracle.clone(),
        ids: oracle,
        node_growing: NodeGrowingBytes::new(),
        recovery: None,
    }
}

async fn open_wal(provider: &dyn LogProvider, pchannel: &PChannel) -> anyhow::Result<Wal> {
    let wal = Wal::open(
        provider,
        pchannel.clone(),
        Term(1),
        WalConfig::default(),
        wal_deps(),
    )
    .await?;
    let vc = pchannel.vchannel(CollectionId(COLLECTION), 0)?;
    wal.append(
        MutableMessage::builder(CreateCollectionHeader {
            collection_id: COLLECTION,
            partition_ids: vec![PARTITION],
            db_id: 1,
        })
        .vchannel(&vc)
        .build()?,
    )
    .await?;
    Ok(wal)
}

/// `sluice bench wal`: the full WAL against the raw local log it runs on, same disk, same run.
pub async fn wal(
    dir: &Path,
    producers: &[usize],
    record_size: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    let provider = LocalProvider::new(LocalConfig::new(dir))?;
    let duration = Duration::from_secs_f64(seconds);
    let payload: Arc<[u8]> = vec![0x5a; record_size].into();
    println!(
        "WAL vs raw local log: {record_size} B inserts, fsync on, {seconds} s per point, dir {}",
        dir.display()
    );
    println!(
        "{:>9} {:>14} {:>14} {:>8}",
        "producers", "raw rec/s", "wal rec/s", "wal/raw"
    );
    let mut half_rate = None;
    for (i, &n) in producers.iter().enumerate() {
        let raw_p = PChannel::new(format!("bench-raw-{i}"))?;
        let raw: Arc<dyn LogHandle> = provider
            .open(OpenOptions::read_write(raw_p.clone(), Term(1)))
            .await?;
        let (h, p, pl) = (raw.clone(), raw_p.clone(), payload.clone());
        let raw_rate = closed_loop(n, duration, move || {
            let (h, p, pl) = (h.clone(), p.clone(), pl.clone());
            async move {
                h.append(insert(&p, &pl, 0)?).await?;
                Ok(())
            }
        })
        .await?;
        raw.close().await;

        let wal_p = PChannel::new(format!("bench-wal-{i}"))?;
        let wal = open_wal(&provider, &wal_p).await?;
        let (w, p, pl) = (wal.clone(), wal_p.clone(), payload.clone());
        let wal_rate = closed_loop(n, duration, move || {
            let (w, p, pl) = (w.clone(), p.clone(), pl.clone());
            async move {
                w.append(insert(&p, &pl, 0)?).await?;
                Ok(())
            }
        })
        .await?;
        wal.close().await;
        println!(
            "{n:>9} {raw_rate:>14.0} {wal_rate:>14.0} {:>7.1}%",
            100.0 * wal_rate / raw_rate
        );
        if n == 16 || half_rate.is_none() {
            half_rate = Some((n, wal_rate / 2.0));
        }
    }
    if let Some((n, rate)) = half_rate {
        latency(&provider, n, rate, payload, duration).await?;
    }
    Ok(())
}

/// Append → tailing-reader latency at a fixed offered rate (open loop).
async fn latency(
    provider: &dyn LogProvider,
    producers: usize,
    rate: f64,
    payload: Arc<[u8]>,
    duration: Duration,
) -> anyhow::Result<()> {
    let p = PChannel::new("bench-latency")?;
    let wal = open_wal(provider, &p).await?;
    let mut scanner = wal.read(ScannerOptions {
        vchannel: Some(p.vchannel(CollectionId(COLLECTION), 0)?),
        policy: DeliverPolicy::All,
        filters: vec![MessageFilter::Types(vec![
            sluice_types::MessageType::Insert,
        ])],
        ..ScannerOptions::default()
    })?;
    let epoch = Instant::now();
    let per_producer = Duration::from_secs_f64(producers as f64 / rate.max(1.0));
    let mut tasks = tokio::task::JoinSet::new();
    let sent = Arc::new(AtomicU64::new(0));
    for _ in 0..producers {
        let (wal, p, payload, sent) = (wal.clone(), p.clone(), payload.clone(), sent.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(per_producer);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while epoch.elapsed() < duration {
                tick.tick().await;
                let now = epoch.elapsed().as_nanos() as u64;
                wal.append(insert(&p, &payload, now)?).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let mut hist = Histogram::<u64>::new(3).context("histogram")?;
    let reader = async {
        while epoch.elapsed() < duration + Duration::from_secs(1) {
            let Ok(next) = tokio::time::timeout(Duration::from_millis(200), scanner.next()).await
            else {
                continue;
            };
            let Some(m) = next else { break };
            if let ReadMessage::Message(m) = m?
                && let Some(t) = m.property("sent").and_then(|v| v.parse::<u64>().ok())
            {
                let lat = (epoch.elapsed().as_nanos() as u64).saturating_sub(t);
                hist.record(lat.max(1)).ok();
            }
        }
        anyhow::Ok(())
    };
    let writers = async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    };
    let (r, w) = tokio::join!(reader, writers);
    r?;
    w?;
    println!(
        "latency append→tailing reader at {:.0} rec/s offered ({} producers, half the WAL's closed-loop rate): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} records",
        rate,
        producers,
        hist.value_at_quantile(0.5) as f64 / 1e6,
        hist.value_at_quantile(0.99) as f64 / 1e6,
        hist.max() as f64 / 1e6,
        hist.len()
    );
    wal.close().await;
    Ok(())
}
