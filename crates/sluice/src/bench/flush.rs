//! `sluice bench flush`: rows per second the flusher writes to Parquet, against `parquet`'s
//! `ArrowWriter` writing the same batches to the same store, in one run.
//!
//! The rows (an int64 primary key and a float vector) are appended through a WAL on the local
//! log first, as Arrow IPC inserts into one collection, and a MANUAL_FLUSH names the segment.
//! Then a flusher starts and is timed from its start to the last manifest committed: it reads
//! the log, decodes every insert, writes the Parquet file into a local object-store directory and
//! commits the manifest in the embedded meta store. The baseline encodes the same batches with
//! `ArrowWriter` (the flusher's writer settings) and puts the file into the same store. Each side
//! runs `--rounds` times, alternating; the best and the median round of each are compared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field};
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_meta::MetaStore;
use sluice_meta::embedded::EmbeddedStore;
use sluice_storage::flusher::{Flusher, StorageConfig, writer_properties};
use sluice_storage::rows::encode_stream;
use sluice_storage::segments::segment_manifests;
use sluice_types::message::{
    CreateCollectionHeader, InsertHeader, ManualFlushHeader, PartitionSegmentAssignment,
};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
use sluice_types::{CollectionId, MutableMessage, PChannel, Term, VChannel};
use sluice_wal::shard::{NodeGrowingBytes, SegmentConfig};
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

use super::command_line;

/// What `bench flush` takes.
#[derive(Debug)]
pub(crate) struct FlushParams<'a> {
    /// Directory to run in (the caller creates and removes it).
    pub dir: &'a std::path::Path,
    /// Rows per round.
    pub rows: usize,
    /// Rows per insert.
    pub batch_rows: usize,
    /// Vector dimension.
    pub dim: usize,
    /// Rounds per side.
    pub rounds: usize,
    /// Write the files to memory instead of a local directory (takes the disk out of both
    /// sides: what is left is the work each does around the writer).
    pub in_memory: bool,
}

fn schema(dim: usize) -> CollectionSchema {
    super::key_and_vector(
        "bench",
        FieldSchema {
            name: "vec".into(),
            data_type: DataType::FloatVector as i32,
            dim: dim as u32,
            ..Default::default()
        },
    )
}

pub(super) fn batch(first: i64, rows: usize, dim: usize) -> anyhow::Result<RecordBatch> {
    let ids = Int64Array::from_iter_values(first..first + rows as i64);
    let values = Float32Array::from_iter_values(
        (0..rows * dim).map(|i| ((i as u64).wrapping_mul(2654435761) % 10_000) as f32 / 97.0),
    );
    let vec = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", ArrowType::Float32, false)),
        dim as i32,
        Arc::new(values),
        None,
    )?;
    Ok(RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("vec", Arc::new(vec) as ArrayRef),
    ])?)
}

/// The raw side: `ArrowWriter` over the batches (with the `_ts` column the flusher adds, so
/// both write the same columns), one put.
async fn raw_round(
    store: &Arc<dyn ObjectStore>,
    batches: &[RecordBatch],
    round: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let first = batches.first().context("no batches")?;
    let with_ts: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let ts = Arc::new(Int64Array::from(vec![1i64; b.num_rows()])) as ArrayRef;
            sluice_storage::rows::with_column(b, Field::new("_ts", ArrowType::Int64, false), ts)
        })
        .collect::<Result<_, _>>()?;
    let _ = first;
    // The flusher's own settings: the comparison is of the work around the writer.
    let props = writer_properties(&with_ts[0].schema(), Some("id"));
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, with_ts[0].schema(), Some(props))?;
    for b in &with_ts {
        w.write(b)?;
    }
    w.close()?;
    store
        .put(
            &object_store::path::Path::from(format!("raw/{round}.parquet")),
            Bytes::from(out).into(),
        )
        .await?;
    Ok(started.elapsed())
}

/// The flusher side: a log holding the round's inserts and a MANUAL_FLUSH; timed from the
/// flusher's start to its manifest.
async fn flusher_round(
    params: &FlushParams<'_>,
    store: &Arc<dyn ObjectStore>,
    bodies: &[Vec<u8>],
    round: usize,
) -> anyhow::Result<Duration> {
    let dir = params.dir.join(format!("flush-{round}"));
    let provider = LocalProvider::new(LocalConfig::new(dir.join("wal")))?;
    let meta: Arc<dyn MetaStore> = Arc::new(EmbeddedStore::open(dir.join("meta.redb"))?);
    let pchannel = PChannel::new("bench-flush_0")?;
    let v: VChannel = pchannel.vchannel(CollectionId(1), 0)?;
    let oracle = LocalOracle::new();
    let config = WalConfig {
        segments: SegmentConfig {
            // One segment per round: the flush is what is measured, not sealing.
            max_segment_bytes: 4 << 30,
            ..SegmentConfig::default()
        },
        ..WalConfig::default()
    };
    let wal = Wal::open(
        &provider,
        pchannel.clone(),
        Term(1),
        config,
        WalDeps {
            oracle: oracle.clone(),
            ids: oracle,
            node_growing: NodeGrowingBytes::new(),
            pressure: sluice_wal::Pressure::unlimited(),
            checkpoints: None,
            rows: None,
        },
    )
    .await?;
    wal.append(
        MutableMessage::builder(CreateCollectionHeader {
            collection_id: 1,
            partition_ids: vec![1],
            db_id: 1,
            schema: Some(schema(params.dim)),
        })
        .vchannel(&v)
        .build()?,
    )
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    let bodies = Arc::new(bodies.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let (wal, v, bodies, next) = (wal.clone(), v.clone(), bodies.clone(), next.clone());
        let rows = params.batch_rows as u64;
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return anyhow::Ok(());
                };
                wal.append(
                    MutableMessage::builder(InsertHeader {
                        collection_id: 1,
                        partitions: vec![PartitionSegmentAssignment {
                            partition_id: 1,
                            rows,
                            binary_size: body.len() as u64,
                            segment_id: 0,
                        }],
                    })
                    .vchannel(&v)
                    .payload(body.clone())
                    .build()?,
                )
                .await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    wal.append(
        MutableMessage::builder(ManualFlushHeader {
            collection_id: 1,
            flush_ts: 0,
            segment_ids: Vec::new(),
        })
        .vchannel(&v)
        .build()?,
    )
    .await?;
    let storage = Arc::new(StorageConfig {
        store: Arc::new(object_store::prefix::PrefixStore::new(
            store.clone(),
            format!("flusher-{round}"),
        )),
        meta,
        meta_root: "bench".into(),
        retention: Duration::from_secs(3600),
        truncate_interval: Duration::from_secs(3600),
        checkpoint_interval: Duration::from_secs(3600),
        max_body_bytes: 1 << 30,
    });
    let started = Instant::now();
    let flusher = Flusher::start(wal.clone(), storage.clone());
    let total = params.rows as u64;
    let elapsed = loop {
        let rows: u64 = segment_manifests(&storage, Some(1))
            .await?
            .iter()
            .map(|m| m.rows)
            .sum();
        if rows >= total {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the flusher wrote {rows} of {total} rows in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    flusher.stop().await;
    wal.close().await;
    Ok(elapsed)
}

/// Runs `bench flush` and prints its table.
pub(crate) async fn run(params: FlushParams<'_>) -> anyhow::Result<()> {
    if params.rows == 0 || params.batch_rows == 0 || params.rounds == 0 {
        bail!("--rows, --batch-rows and --rounds must be at least 1");
    }
    if params.dim == 0 || params.dim > 32_768 {
        bail!("--dim must be 1-32768");
    }
    let store: Arc<dyn ObjectStore> = if params.in_memory {
        Arc::new(object_store::memory::InMemory::new())
    } else {
        let objects = params.dir.join("objects");
        std::fs::create_dir_all(&objects)?;
        sluice_log::object::build_store(&sluice_log::object::ObjectStoreConfig::LocalDir(objects))?
    };
    let mut batches = Vec::new();
    let mut first = 0i64;
    while (first as usize) < params.rows {
        let n = params.batch_rows.min(params.rows - first as usize);
        batches.push(batch(first, n, params.dim)?);
        first += n as i64;
    }
    let bodies: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| encode_stream(std::slice::from_ref(b)))
        .collect::<Result<_, _>>()?;
    println!("# {}", command_line());
    println!(
        "# {} rows (int64 id + float vector dim {}) in inserts of {}; files to {}; best of {} rounds",
        params.rows,
        params.dim,
        params.batch_rows,
        if params.in_memory {
            "memory"
        } else {
            "a local object-store directory"
        },
        params.rounds
    );
    let (mut raws, mut flushes) = (Vec::new(), Vec::new());
    for round in 0..params.rounds {
        let raw = raw_round(&store, &batches, round).await?;
        let flushed = flusher_round(&params, &store, &bodies, round).await?;
        raws.push(raw);
        flushes.push(flushed);
        println!(
            "round {round}: ArrowWriter {:.1} ms, flusher {:.1} ms",
            raw.as_secs_f64() * 1e3,
            flushed.as_secs_f64() * 1e3
        );
    }
    raws.sort_unstable();
    flushes.sort_unstable();
    let rate = |d: Duration| params.rows as f64 / d.as_secs_f64();
    let (raw_best, flusher_best) = (raws[0], flushes[0]);
    let (raw_median, flusher_median) = (raws[raws.len() / 2], flushes[flushes.len() / 2]);
    println!(
        "{:>12} {:>14} {:>14}",
        "path", "best rows/s", "median rows/s"
    );
    println!(
        "{:>12} {:>14.0} {:>14.0}",
        "ArrowWriter",
        rate(raw_best),
        rate(raw_median)
    );
    println!(
        "{:>12} {:>14.0} {:>14.0}",
        "flusher",
        rate(flusher_best),
        rate(flusher_median)
    );
    println!(
        "flusher / ArrowWriter = {:.2} (best), {:.2} (median)",
        rate(flusher_best) / rate(raw_best),
        rate(flusher_median) / rate(raw_median)
    );
    Ok(())
}
