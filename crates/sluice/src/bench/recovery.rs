//! `sluice bench recovery`: how long a WAL takes to open as its log grows, with a recent
//! recovery snapshot and without one, in one run.
//!
//! For each message count N: a WAL on the local log with the embedded meta store (what
//! standalone runs) takes N inserts from concurrent producers; a snapshot is saved; then
//! `--tail` more inserts follow and snapshots stop (the owner "dies" with a snapshot that old).
//! The WAL is then opened at a higher term with its snapshot store, and again without one
//! (the whole retained log replayed). Each open is timed from the call to the open WAL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use sluice_log::LogProvider;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_meta::embedded::EmbeddedStore;
use sluice_storage::checkpoints::MetaCheckpointStore;
use sluice_types::{CollectionId, PChannel, Term};
use sluice_wal::checkpoint::{CheckpointStore, Snapshot};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{RecoveryStats, Wal, WalConfig, WalDeps, WalError};

use super::{command_line, create_collection, insert};

/// What `bench recovery` takes.
#[derive(Debug)]
pub(crate) struct RecoveryParams<'a> {
    /// Directory to run in (the caller creates and removes it).
    pub dir: &'a std::path::Path,
    /// Messages in the log, one point each.
    pub counts: &'a [u64],
    /// Inserts after the last snapshot.
    pub tail: u64,
    /// Payload bytes per insert.
    pub record_size: usize,
}

/// A snapshot store that stops saving when told to: the owner dies with the last snapshot
/// it saved.
struct Freezable {
    inner: Arc<MetaCheckpointStore>,
    frozen: AtomicBool,
}

#[async_trait]
impl CheckpointStore for Freezable {
    async fn load(&self, pchannel: &PChannel, term: Term) -> Result<Option<Snapshot>, WalError> {
        self.inner.load(pchannel, term).await
    }

    async fn save(&self, pchannel: &PChannel, snapshot: &Snapshot) -> Result<(), WalError> {
        if self.frozen.load(Ordering::Acquire) {
            return Ok(());
        }
        self.inner.save(pchannel, snapshot).await
    }
}

struct Point {
    count: u64,
    fill: Duration,
    with: (Duration, RecoveryStats),
    without: (Duration, RecoveryStats),
}

fn deps(oracle: &Arc<LocalOracle>, store: Option<Arc<dyn CheckpointStore>>) -> WalDeps {
    WalDeps {
        oracle: oracle.clone(),
        ids: oracle.clone(),
        node_growing: NodeGrowingBytes::new(),
        pressure: sluice_wal::Pressure::unlimited(),
        checkpoints: store,
        rows: None,
    }
}

/// Appends `n` inserts from 128 concurrent producers.
async fn fill(wal: &Wal, pchannel: &PChannel, n: u64, record_size: usize) -> anyhow::Result<()> {
    let vc = pchannel.vchannel(CollectionId(super::COLLECTION), 0)?;
    let payload = vec![0x5au8; record_size];
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..128 {
        let (wal, vc, payload, next) = (wal.clone(), vc.clone(), payload.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                wal.append(insert(&vc, &payload, 0)?).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn timed_open(
    provider: &dyn LogProvider,
    pchannel: &PChannel,
    term: u64,
    deps: WalDeps,
) -> anyhow::Result<(Duration, RecoveryStats, Wal)> {
    let started = Instant::now();
    let wal = Wal::open(
        provider,
        pchannel.clone(),
        Term(term),
        WalConfig::default(),
        deps,
    )
    .await?;
    Ok((started.elapsed(), wal.recovery_stats(), wal))
}

async fn point(params: &RecoveryParams<'_>, count: u64) -> anyhow::Result<Point> {
    let dir = params.dir.join(format!("n{count}"));
    let provider =
        LocalProvider::new(LocalConfig::new(dir.join("log"))).context("opening the local log")?;
    let meta =
        Arc::new(EmbeddedStore::open(dir.join("meta.redb")).context("opening the meta store")?);
    let pchannel = PChannel::new("bench-recovery_0")?;
    let oracle = LocalOracle::new();
    let store = Arc::new(Freezable {
        inner: MetaCheckpointStore::new(meta.clone(), "/sluice"),
        frozen: AtomicBool::new(false),
    });

    let started = Instant::now();
    let wal = Wal::open(
        &provider,
        pchannel.clone(),
        Term(1),
        WalConfig::default(),
        deps(&oracle, Some(store.clone())),
    )
    .await?;
    wal.append(create_collection(
        &pchannel.vchannel(CollectionId(super::COLLECTION), 0)?,
    )?)
    .await?;
    fill(
        &wal,
        &pchannel,
        count.saturating_sub(params.tail),
        params.record_size,
    )
    .await?;
    // Let the last timetick release everything, then save the snapshot the next owner gets.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wal.checkpoint().await?;
    store.frozen.store(true, Ordering::Release);
    fill(&wal, &pchannel, params.tail.min(count), params.record_size).await?;
    wal.close().await;
    let fill_time = started.elapsed();

    let store2: Arc<dyn CheckpointStore> = Arc::new(Freezable {
        inner: MetaCheckpointStore::new(meta.clone(), "/sluice"),
        frozen: AtomicBool::new(true),
    });
    let (t_with, s_with, wal) =
        timed_open(&provider, &pchannel, 2, deps(&oracle, Some(store2))).await?;
    wal.close().await;
    let (t_without, s_without, wal) =
        timed_open(&provider, &pchannel, 3, deps(&oracle, None)).await?;
    wal.close().await;
    if s_with.checkpoint.is_none() {
        bail!("the open with a snapshot store found no snapshot");
    }
    Ok(Point {
        count,
        fill: fill_time,
        with: (t_with, s_with),
        without: (t_without, s_without),
    })
}

/// Runs `bench recovery` and prints its table.
pub(crate) async fn run(params: RecoveryParams<'_>) -> anyhow::Result<()> {
    if params.counts.is_empty() || params.counts.contains(&0) {
        bail!("--counts needs one or more message counts, each at least 1");
    }
    if params.record_size > 1 << 20 {
        bail!("--record-size is at most 1 MiB");
    }
    println!("# {}", command_line());
    println!(
        "# local log + embedded meta store; {} B inserts; the snapshot is {} inserts old",
        params.record_size, params.tail
    );
    println!(
        "{:>10} {:>9} | {:>14} {:>9} | {:>14} {:>9}",
        "messages", "fill s", "open w/ ckpt ms", "replayed", "open w/o ms", "replayed"
    );
    let mut points = Vec::new();
    for &count in params.counts {
        let p = point(&params, count).await?;
        println!(
            "{:>10} {:>9.1} | {:>14.1} {:>9} | {:>14.1} {:>9}",
            p.count,
            p.fill.as_secs_f64(),
            p.with.0.as_secs_f64() * 1e3,
            p.with.1.replayed,
            p.without.0.as_secs_f64() * 1e3,
            p.without.1.replayed,
        );
        points.push(p);
    }
    if let (Some(first), Some(last)) = (points.first(), points.last())
        && points.len() > 1
    {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "ratio {} vs {} messages: with checkpoint {:.2}x, without {:.2}x",
            last.count,
            first.count,
            ratio(last.with.0, first.with.0),
            ratio(last.without.0, first.without.0),
        );
    }
    Ok(())
}
