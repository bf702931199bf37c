//! `sluice bench`: throughput and latency measured next to a baseline taken in the same run.
//!
//! * `wal`: the full WAL against the raw local log it runs on.
//! * `flush`: the flusher writing Parquet against `ArrowWriter` (see [`flush`]).
//! * `compact`: compaction rewriting a segment against reading, filtering and writing it by
//!   hand (see [`compact`]).
//! * `recovery`: opening a WAL as its log grows, with a recent snapshot and without (see
//!   [`recovery`]).
//! * `grpc`: a [`Client`] appending over loopback gRPC to a standalone server started in this
//!   process, against the same kind of client reaching that server's WAL in process.
//!
//! Every point is a closed loop: N producer tasks each append, wait for the acknowledgement
//! (durable: fsync stays on) and append again, for a fixed time. Rates count acknowledged
//! appends; MB/s counts payload bytes (10^6 B); latencies are of single appends, from call to
//! acknowledgement. CPU is the whole process's (client and server alike, all threads) over the
//! point: per record, and as cores kept busy on average — on a small box it explains the ratio.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig};
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{DeliverPolicy, LogHandle, LogProvider, OpenOptions};
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{CollectionId, MutableMessage, PChannel, Term, VChannel};
use sluice_wal::scanner::{MessageFilter, ReadMessage, ScannerMode, ScannerOptions};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

use crate::config::Config;
use crate::local_access::RoutedAccess;
use crate::server::Standalone;

pub(crate) mod compact;
pub(crate) mod flush;
pub(crate) mod handover;
pub(crate) mod recovery;
pub(crate) mod search;

const COLLECTION: i64 = 1;
const PARTITION: i64 = 1;
/// A one-shard collection `name` of an INT64 primary key `id` (field 1) and `vector` (field 2):
/// the schema the flush and sparse search benchmarks write.
pub(crate) fn key_and_vector(
    name: &str,
    vector: sluice_types::schema::FieldSchema,
) -> sluice_types::schema::CollectionSchema {
    use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
    CollectionSchema {
        name: name.into(),
        fields: vec![
            FieldSchema {
                field_id: 1,
                name: "id".into(),
                data_type: DataType::Int64 as i32,
                is_primary_key: true,
                ..FieldSchema::default()
            },
            FieldSchema {
                field_id: 2,
                ..vector
            },
        ],
        shards: 1,
        version: 1,
        ..CollectionSchema::default()
    }
}

/// The one pchannel `bench grpc`'s standalone server manages.
const GRPC_PCHANNEL: &str = "bench_0";

/// What every benchmark takes: where, how many producers, how big, how long.
pub(crate) struct BenchParams<'a> {
    /// Directory to run in (the caller creates and removes it).
    pub dir: &'a Path,
    /// Producer counts, one measurement point each.
    pub producers: &'a [usize],
    /// Payload bytes per insert.
    pub record_size: usize,
    /// Seconds per measurement point.
    pub seconds: f64,
}

impl BenchParams<'_> {
    /// The time per point; bad settings are errors, not panics.
    fn duration(&self) -> anyhow::Result<Duration> {
        if self.producers.is_empty() || self.producers.contains(&0) {
            bail!("--producers needs one or more counts, each at least 1");
        }
        if self.record_size > 16 << 20 {
            bail!("--record-size is at most 16 MiB");
        }
        match Duration::try_from_secs_f64(self.seconds) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Ok(d),
            _ => bail!(
                "--seconds must be above 0 and at most 3600, not {}",
                self.seconds
            ),
        }
    }
}

/// The command line, as the table's caption.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn insert(vc: &VChannel, payload: &[u8], sent_ns: u64) -> anyhow::Result<MutableMessage> {
    Ok(MutableMessage::builder(InsertHeader {
        collection_id: COLLECTION,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: PARTITION,
            rows: 1,
            binary_size: payload.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(vc)
    .property("sent", sent_ns.to_string())
    .payload(payload.to_vec())
    .build()?)
}

fn create_collection(vc: &VChannel) -> anyhow::Result<MutableMessage> {
    Ok(MutableMessage::builder(CreateCollectionHeader {
        collection_id: COLLECTION,
        partition_ids: vec![PARTITION],
        db_id: 1,
        schema: None,
    })
    .vchannel(vc)
    .build()?)
}

/// One closed-loop measurement.
struct Measured {
    /// Completed operations.
    done: u64,
    /// Wall time.
    elapsed: Duration,
    /// Process CPU time.
    cpu: Duration,
    /// Completed operations per second.
    rate: f64,
    /// Nanoseconds per operation.
    latency: Histogram<u64>,
    /// Process CPU time per operation, in microseconds.
    cpu_us: f64,
    /// Process CPU time over wall time: cores kept busy.
    cores: f64,
}

impl Measured {
    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e6
    }
}

/// CPU time of the whole process so far (every thread, exited ones included).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A latency histogram in nanoseconds: 1 µs to an hour, 2 significant digits (1%). Fixed
/// bounds keep it at ~28 KiB; an auto-resizing 3-digit one grows to ~160 KiB per producer,
/// and faulting that in for 256 producers cost the measured appends ~0.3 µs each.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 2).context("latency histogram")
}

/// Runs `op` from `producers` tasks for `duration`, each task starting the next operation when
/// the last one completed.
async fn closed_loop<F, Fut>(
    producers: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let cpu_started = process_cpu();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let (op, done) = (op.clone(), done.clone());
        tasks.spawn(async move {
            let mut latency = latency_histogram()?;
            while Instant::now() < deadline {
                let t = Instant::now();
                op().await?;
                latency.saturating_record(t.elapsed().as_nanos() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latency)
        });
    }
    let mut latency = latency_histogram()?;
    while let Some(r) = tasks.join_next().await {
        latency.add(r??).context("merging latency histograms")?;
    }
    let (elapsed, cpu) = (started.elapsed(), process_cpu().saturating_sub(cpu_started));
    let done = done.load(Ordering::Relaxed);
    Ok(Measured {
        done,
        elapsed,
        cpu,
        rate: done as f64 / elapsed.as_secs_f64(),
        latency,
        cpu_us: cpu.as_secs_f64() * 1e6 / done.max(1) as f64,
        cores: cpu.as_secs_f64() / elapsed.as_secs_f64(),
    })
}

fn wal_deps() -> WalDeps {
    let oracle = LocalOracle::new();
    WalDeps {
        oracle: oracle.clone(),
        ids: oracle,
        node_growing: NodeGrowingBytes::new(),
        pressure: sluice_wal::Pressure::unlimited(),
        checkpoints: None,
        rows: None,
    }
}

/// The WAL of `pchannel` at `term`, with default settings and a local oracle.
async fn wal_at(
    provider: &dyn LogProvider,
    pchannel: &PChannel,
    term: Term,
) -> anyhow::Result<Wal> {
    Ok(Wal::open(
        provider,
        pchannel.clone(),
        term,
        WalConfig::default(),
        wal_deps(),
    )
    .await?)
}

/// A new WAL of `pchannel` with the benchmark collection created.
async fn open_wal(provider: &dyn LogProvider, pchannel: &PChannel) -> anyhow::Result<Wal> {
    let wal = wal_at(provider, pchannel, Term(1)).await?;
    wal.append(create_collection(
        &pchannel.vchannel(CollectionId(COLLECTION), 0)?,
    )?)
    .await?;
    Ok(wal)
}

/// Where `bench wal` appends: the raw log or the WAL on top of it.
#[derive(Clone)]
enum Sink {
    Raw(Arc<dyn LogHandle>),
    Wal(Wal),
}

impl Sink {
    async fn append(&self, msg: MutableMessage) -> anyhow::Result<()> {
        match self {
            Sink::Raw(log) => {
                log.append(msg).await?;
            }
            Sink::Wal(wal) => {
                wal.append(msg).await?;
            }
        }
        Ok(())
    }
}

/// Longest round of `bench wal` and `bench grpc`. The two sides of a comparison alternate
/// (one first, then the other first, ...) so that whatever the machine goes through falls on
/// both sides alike. On the development VM that changes within seconds: the raw log appended
/// ~300k records/s for the first ~8 s of load and ~180k after, at 50% more CPU per append.
/// Short rounds split such phases evenly.
const ROUND_MAX: Duration = Duration::from_secs(1);

/// Fewest measured rounds per side.
const MIN_ROUNDS: u32 = 3;

/// Measured rounds per side for `duration` per side, and their length.
fn rounds_of(duration: Duration) -> (u32, Duration) {
    let rounds = (duration.as_secs_f64() / ROUND_MAX.as_secs_f64()).ceil() as u32;
    let rounds = rounds.max(MIN_ROUNDS);
    (rounds, duration / rounds)
}

/// Closed-loop totals of several rounds.
#[derive(Default)]
struct Totals {
    done: u64,
    elapsed: Duration,
    cpu: Duration,
    latency: Option<Histogram<u64>>,
}

impl Totals {
    fn add(&mut self, m: &Measured) -> anyhow::Result<()> {
        self.done += m.done;
        self.elapsed += m.elapsed;
        self.cpu += m.cpu;
        match &mut self.latency {
            None => self.latency = Some(m.latency.clone()),
            Some(h) => h.add(&m.latency).context("merging latency histograms")?,
        }
        Ok(())
    }

    /// The rounds as one measurement.
    fn measured(self) -> anyhow::Result<Measured> {
        let secs = self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        Ok(Measured {
            done: self.done,
            elapsed: self.elapsed,
            cpu: self.cpu,
            rate: self.done as f64 / secs,
            latency: match self.latency {
                Some(h) => h,
                None => latency_histogram()?,
            },
            cpu_us: self.cpu.as_secs_f64() * 1e6 / self.done.max(1) as f64,
            cores: self.cpu.as_secs_f64() / secs,
        })
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.done.max(1) as f64
    }
}

/// `sluice bench wal`: the full WAL against the raw local log it runs on, same disk, same run.
/// At each producer count, raw and WAL each run one warm-up round (not counted: the first
/// seconds of load find the disk and caches fresh, and the WAL's buffer empty), then
/// alternating rounds of at most [`ROUND_MAX`] adding up to `seconds` per side; the table
/// shows records/s over the measured rounds and process CPU per append. Then, for each
/// producer count, append → tailing-reader latency at half the WAL's rate there.
pub(crate) async fn wal(params: BenchParams<'_>) -> anyhow::Result<()> {
    let duration = params.duration()?;
    let (rounds, round) = rounds_of(duration);
    let (dir, record_size, seconds) = (params.dir, params.record_size, params.seconds);
    let provider = LocalProvider::new(LocalConfig::new(dir))?;
    let payload: Arc<[u8]> = vec![0x5a; record_size].into();
    println!("$ {}", command_line());
    println!(
        "WAL vs raw local log: {record_size} B inserts, fsync on, {seconds} s per side and point \
         in {rounds} alternating rounds of {:.2} s after a warm-up round each, dir {}",
        round.as_secs_f64(),
        dir.display()
    );
    println!(
        "{:>9} {:>12} {:>12} {:>8} {:>13} {:>13}",
        "producers", "raw rec/s", "wal rec/s", "wal/raw", "raw cpu us/op", "wal cpu us/op"
    );
    let mut half_rates = Vec::new();
    // The WAL pchannel with the most records, for the catch-up read at the end.
    let mut largest: Option<(u64, PChannel)> = None;
    for (i, &n) in params.producers.iter().enumerate() {
        let raw_p = PChannel::new(format!("bench-raw-{i}"))?;
        let raw: Arc<dyn LogHandle> = provider
            .open(OpenOptions::read_write(raw_p.clone(), Term(1)))
            .await?;
        let wal_p = PChannel::new(format!("bench-wal-{i}"))?;
        let wal = open_wal(&provider, &wal_p).await?;
        let (mut raw_total, mut wal_total) = (Totals::default(), Totals::default());
        // Round 0 is the warm-up.
        for r in 0..=rounds {
            for wal_side in [r % 2 == 1, r % 2 == 0] {
                let (sink, pchannel) = if wal_side {
                    (Sink::Wal(wal.clone()), &wal_p)
                } else {
                    (Sink::Raw(raw.clone()), &raw_p)
                };
                let (vc, pl) = (
                    pchannel.vchannel(CollectionId(COLLECTION), 0)?,
                    payload.clone(),
                );
                let m = closed_loop(n, round, move || {
                    let (sink, vc, pl) = (sink.clone(), vc.clone(), pl.clone());
                    async move { sink.append(insert(&vc, &pl, 0)?).await }
                })
                .await?;
                match (r, wal_side) {
                    (0, _) => {}
                    (_, true) => wal_total.add(&m)?,
                    (_, false) => raw_total.add(&m)?,
                }
            }
        }
        raw.close().await;
        wal.close().await;
        let (raw_rate, wal_rate) = (raw_total.rate(), wal_total.rate());
        println!(
            "{n:>9} {raw_rate:>12.0} {wal_rate:>12.0} {:>7.1}% {:>13.1} {:>13.1}",
            100.0 * wal_rate / raw_rate,
            raw_total.cpu_us(),
            wal_total.cpu_us(),
        );
        half_rates.push((n, wal_rate / 2.0));
        if largest
            .as_ref()
            .is_none_or(|(most, _)| wal_total.done > *most)
        {
            largest = Some((wal_total.done, wal_p));
        }
    }
    for (n, rate) in half_rates {
        latency(&provider, n, rate, payload.clone(), duration).await?;
    }
    if let Some((_, pchannel)) = largest {
        catch_up(&provider, &pchannel).await?;
    }
    Ok(())
}

/// Bound on waiting for the standalone server to place the pchannel, and on any one append.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `sluice bench grpc`: starts a standalone server in this process (data under `params.dir`,
/// gRPC on `127.0.0.1:0`), then at each producer count measures a [`Client`] reaching its WAL
/// in process (no network hop) and a [`Client`] going through loopback gRPC (topology from the
/// coordinator service, every append on the node's `Produce` stream). Both append 1 KiB (or
/// `record_size`) inserts to the same vchannel, each a warm-up round (not counted), then in
/// alternating rounds of at most [`ROUND_MAX`] adding up to `seconds` per side, as `bench
/// wal` does; the server is stopped at the end, also on error.
pub(crate) async fn grpc(params: BenchParams<'_>) -> anyhow::Result<()> {
    let duration = params.duration()?;
    let mut config = Config {
        data_dir: params.dir.join("standalone"),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.pchannels.names = vec![GRPC_PCHANNEL.into()];
    config.validate()?;
    let server = Standalone::start(&config)
        .await
        .context("starting the standalone server")?;
    let measured = grpc_points(&server, &params, duration).await;
    let stopped = server
        .stop()
        .await
        .context("stopping the standalone server");
    measured?;
    stopped
}

async fn grpc_points(
    server: &Standalone,
    params: &BenchParams<'_>,
    duration: Duration,
) -> anyhow::Result<()> {
    let client_config = ClientConfig {
        timeout: Some(CLIENT_TIMEOUT),
        ..ClientConfig::default()
    };
    let in_process = Client::new(
        server.topology.clone(),
        Arc::new(RoutedAccess::new(Some((
            server.node_id,
            server.manager.clone(),
        )))),
        client_config.clone(),
    );
    let coordinator = Arc::new(
        CoordinatorTopology::connect(&format!("http://{}", server.addr))
            .context("connecting to the coordinator service")?,
    );
    let remote = Client::new(
        coordinator,
        Arc::new(RoutedAccess::new(None)),
        client_config,
    );

    let vc = PChannel::new(GRPC_PCHANNEL)?.vchannel(CollectionId(COLLECTION), 0)?;
    let payload: Arc<[u8]> = vec![0x5a; params.record_size].into();
    // The first append waits for the coordinator to place the pchannel; the first gRPC one
    // also connects and opens the producer stream. Neither belongs in the measurement.
    in_process
        .append(create_collection(&vc)?)
        .await
        .context("creating the benchmark collection")?;
    in_process
        .append(insert(&vc, &payload, 0)?)
        .await
        .context("warming up the in-process client")?;
    remote
        .append(insert(&vc, &payload, 0)?)
        .await
        .context("warming up the gRPC client")?;

    let (rounds, round) = rounds_of(duration);
    println!("$ {}", command_line());
    println!(
        "gRPC (loopback, standalone on {}) vs in-process WAL: {} B inserts to {vc}, fsync on, {} s per side and point in {rounds} alternating rounds of {:.2} s after a warm-up round each",
        server.addr,
        params.record_size,
        params.seconds,
        round.as_secs_f64()
    );
    println!(
        "{:>9}  {:<10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>6} {:>14}",
        "producers",
        "path",
        "rec/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "CPU us/rec",
        "cores",
        "vs in-process"
    );
    for &n in params.producers {
        let (mut local, mut grpc) = (Totals::default(), Totals::default());
        // Round 0 is the warm-up.
        for r in 0..=rounds {
            for grpc_side in [r % 2 == 1, r % 2 == 0] {
                let client = if grpc_side { &remote } else { &in_process };
                let m = measure(client, &vc, &payload, n, round).await?;
                match (r, grpc_side) {
                    (0, _) => {}
                    (_, true) => grpc.add(&m)?,
                    (_, false) => local.add(&m)?,
                }
            }
        }
        let local = local.measured()?;
        row(n, "in-process", &local, params.record_size, None);
        let grpc = grpc.measured()?;
        row(n, "grpc", &grpc, params.record_size, Some(local.rate));
    }
    Ok(())
}

/// A closed loop of `producers` tasks appending inserts through `client`.
async fn measure(
    client: &Client,
    vc: &VChannel,
    payload: &Arc<[u8]>,
    producers: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let (c, vc, pl) = (client.clone(), vc.clone(), payload.clone());
    closed_loop(producers, duration, move || {
        let (c, vc, pl) = (c.clone(), vc.clone(), pl.clone());
        async move {
            c.append(insert(&vc, &pl, 0)?).await?;
            Ok(())
        }
    })
    .await
}

fn row(producers: usize, path: &str, m: &Measured, record_size: usize, baseline: Option<f64>) {
    let ratio = baseline.map_or_else(String::new, |b| format!("{:.1}%", 100.0 * m.rate / b));
    println!(
        "{producers:>9}  {path:<10} {:>10.0} {:>8.2} {:>8.3} {:>8.3} {:>10.1} {:>6.2} {ratio:>14}",
        m.rate,
        m.rate * record_size as f64 / 1e6,
        m.ms(0.5),
        m.ms(0.99),
        m.cpu_us,
        m.cores,
    );
}

/// How fast a scanner reads a WAL's log from the start (catch-up, as after a restart or for a
/// consumer far behind) until it switches to the write-ahead buffer. Reopens `pchannel`'s WAL
/// at the next term, like a new owner.
async fn catch_up(provider: &dyn LogProvider, pchannel: &PChannel) -> anyhow::Result<()> {
    let wal = wal_at(provider, pchannel, Term(2)).await?;
    let mut scanner = wal.read(ScannerOptions::new(DeliverPolicy::All))?;
    let started = Instant::now();
    let mut records = 0u64;
    let elapsed = loop {
        let next = tokio::time::timeout(CLIENT_TIMEOUT, scanner.next())
            .await
            .context("catch-up read stalled")?;
        let tick = match next {
            Some(Ok(m)) => m.is_timetick(),
            Some(Err(e)) => return Err(e).context("catch-up read"),
            None => bail!("the catch-up scanner ended"),
        };
        if !tick {
            records += 1;
        }
        // Checked now and then: the stats take a lock.
        if (tick || records.is_multiple_of(1024)) && scanner.stats().mode == ScannerMode::Tailing {
            break started.elapsed();
        }
    };
    let stats = scanner.stats();
    println!(
        "catch-up read of {pchannel} from its log: {records} data messages ({} read upstream) in \
         {:.2} s, {:.0} messages/s, then on to the write-ahead buffer",
        stats.source.upstream_messages,
        elapsed.as_secs_f64(),
        stats.source.upstream_messages as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
    );
    scanner.close().await;
    wal.close().await;
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
    let p = PChannel::new(format!("bench-latency-{producers}"))?;
    let vc = p.vchannel(CollectionId(COLLECTION), 0)?;
    let wal = open_wal(provider, &p).await?;
    let mut scanner = wal.read(ScannerOptions {
        vchannel: Some(vc.clone()),
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
        let (wal, vc, payload, sent) = (wal.clone(), vc.clone(), payload.clone(), sent.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(per_producer);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while epoch.elapsed() < duration {
                tick.tick().await;
                let now = epoch.elapsed().as_nanos() as u64;
                wal.append(insert(&vc, &payload, now)?).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let mut hist = latency_histogram()?;
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
                hist.saturating_record(lat);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::rounds_of;

    #[test]
    fn rounds_last_at_most_a_second_and_are_at_least_three() {
        let s = Duration::from_secs_f64;
        assert_eq!(rounds_of(s(3.0)), (3, s(1.0)));
        assert_eq!(rounds_of(s(15.0)), (15, s(1.0)));
        assert_eq!(rounds_of(s(7.5)), (8, s(7.5) / 8));
        assert_eq!(rounds_of(s(0.3)), (3, s(0.1)));
    }
}
