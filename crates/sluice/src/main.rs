//! The `sluice` command.
//!
//! Until the streaming node and coordinator exist, the binary offers `log-smoke`: it runs the
//! local log end to end on a data directory (open at the next term, which fences any earlier
//! writer; concurrent appends; read everything back and verify it), so each run proves that what
//! earlier runs acknowledged is still there.

mod bench;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::{DeliverPolicy, LogError, LogHandle, LogProvider, OpenOptions, ReadOptions};
use sluice_types::message::InsertHeader;
use sluice_types::{MutableMessage, PChannel, Term};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a WAL-centred streaming service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure throughput and latency next to a baseline taken in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Exercise the local log end to end: append records concurrently at the next term, read the
    /// whole log back and verify every record, including those earlier runs wrote.
    LogSmoke {
        /// Data directory (created if missing); one subdirectory per pchannel.
        #[arg(long, default_value = "./sluice-data")]
        data_dir: PathBuf,
        /// Pchannel to write.
        #[arg(long, default_value = "sluice-dml_0")]
        pchannel: String,
        /// Records to append in this run.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Payload bytes per record.
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The full WAL (interceptors, timeticks, write-ahead buffer) against the raw local log it
    /// runs on: 1 KiB inserts, fsync on, closed loop at each producer count; then
    /// append→tailing-reader latency at half the WAL's rate.
    Wal {
        /// Directory to benchmark in (a temporary subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Concurrent producers, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        producers: Vec<usize>,
        /// Payload bytes per insert.
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Bench {
            what:
                BenchCommand::Wal {
                    dir,
                    producers,
                    record_size,
                    seconds,
                },
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let tmp = tempfile::Builder::new()
                .prefix("sluice-bench-")
                .tempdir_in(&dir)
                .context("creating the benchmark directory")?;
            rt.block_on(bench::wal(tmp.path(), &producers, record_size, seconds))
        }
        Command::LogSmoke {
            data_dir,
            pchannel,
            records,
            concurrency,
            record_size,
        } => rt.block_on(log_smoke(
            data_dir,
            &pchannel,
            records,
            concurrency.max(1),
            record_size,
        )),
    }
}

/// The payload of record `seq` written at `term`: its own description repeated to `size` bytes,
/// so reading it back verifies every byte.
fn payload(term: Term, seq: usize, size: usize) -> Vec<u8> {
    let tag = format!("term={term} seq={seq};");
    tag.bytes().cycle().take(size.max(tag.len())).collect()
}

/// Opens read-write at a term above every earlier run's: one more than the highest term found
/// in the log (or than the term an earlier writer fenced with, if it wrote nothing).
async fn open_next_term(
    provider: &dyn LogProvider,
    pchannel: &PChannel,
) -> anyhow::Result<Arc<dyn LogHandle>> {
    let ro = provider
        .open(OpenOptions::read_only(pchannel.clone(), Term(0)))
        .await
        .context("opening the local log read-only")?;
    let mut stream = ro.read(ReadOptions::new(DeliverPolicy::All)).await?;
    let mut highest = Term(0);
    // The log holds only what earlier runs wrote; it is read to its end, which is where no
    // record arrives for a moment.
    while let Ok(Some(m)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await
    {
        let m = m?;
        if let Some(t) = m.property("term").or(m.property("marker"))
            && let Ok(t) = t.parse::<u64>()
        {
            highest = highest.max(Term(t));
        }
    }
    drop(stream);
    ro.close().await;
    let mut term = highest.next();
    for _ in 0..3 {
        match provider
            .open(OpenOptions::read_write(pchannel.clone(), term))
            .await
        {
            Ok(h) => return Ok(h),
            Err(LogError::Fenced { current, .. }) => term = current.next(),
            Err(e) => return Err(e).context("opening the local log"),
        }
    }
    bail!("could not find a free term for {pchannel}")
}

async fn log_smoke(
    data_dir: PathBuf,
    pchannel: &str,
    records: usize,
    concurrency: usize,
    record_size: usize,
) -> anyhow::Result<()> {
    let pchannel = PChannel::new(pchannel)?;
    let provider = LocalProvider::new(LocalConfig::new(&data_dir))?;
    let handle = open_next_term(&provider, &pchannel).await?;
    let term = handle.term();
    println!("opened {pchannel} in {} at term {term}", data_dir.display());

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let handle = handle.clone();
        tasks.spawn(async move {
            for seq in (w..records).step_by(concurrency) {
                let msg = MutableMessage::builder(InsertHeader::default())
                    .property("term", term.0.to_string())
                    .property("seq", seq.to_string())
                    .payload(payload(term, seq, record_size))
                    .build()?;
                handle.append(msg).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    println!(
        "appended {records} records of {record_size} B with {concurrency} appenders in {elapsed:.2?}: {:.0} records/s (fsync on)",
        records as f64 / elapsed.as_secs_f64()
    );

    // A marker record tells the reader where this run's log ends.
    let end_marker = MutableMessage::builder(InsertHeader::default())
        .property("marker", term.0.to_string())
        .build()?;
    let end_id = handle.append(end_marker).await?;

    // Read everything back, every term, and check each record against its own description.
    let mut stream = handle.read(ReadOptions::new(DeliverPolicy::All)).await?;
    let (mut total, mut this_run, mut last_id) = (0usize, 0usize, None);
    loop {
        let Some(m) = stream.next().await else {
            bail!("log ended after {total} records, before this run's end marker");
        };
        let m = m?;
        if last_id.is_some_and(|l| l >= m.id()) {
            bail!("ids out of order at {}", m.id());
        }
        last_id = Some(m.id());
        if m.id() == end_id {
            break;
        }
        if m.property("marker").is_some() {
            continue;
        }
        let t: u64 = m.property("term").context("record without term")?.parse()?;
        let seq: usize = m.property("seq").context("record without seq")?.parse()?;
        if m.payload().as_ref() != payload(Term(t), seq, m.payload().len()).as_slice() {
            bail!("record {} (term {t}, seq {seq}) is garbled", m.id());
        }
        if Term(t) == term {
            this_run += 1;
        }
        total += 1;
    }
    if this_run != records {
        bail!("read back {this_run} of the {records} records appended in this run");
    }
    println!(
        "read back and verified {total} records ({this_run} from this run, {} from earlier runs)",
        total - this_run
    );
    handle.close().await;
    Ok(())
}
