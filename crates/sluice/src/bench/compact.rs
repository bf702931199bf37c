//! `sluice bench compact`: rows per second compaction rewrites, against the same work done by
//! hand with `parquet` and `arrow` in one run.
//!
//! One committed segment of `--rows` rows (an int64 primary key, a float vector, `_ts`) and a
//! delete file removing every row whose key is a multiple of `1 / --removed` (committed with
//! its manifest) are written once. Each round, the segment's manifest is put back as flushed
//! and compaction (`sluice_storage::compaction`: load the deletes, read the segment, filter,
//! write the new file with its row numbers, swap the manifest) is timed; the baseline reads the
//! same file with `ParquetRecordBatchReader`, filters it with a mask computed beforehand and
//! writes the kept rows with `ArrowWriter` (the flusher's settings) into the same store. Rates
//! count the segment's rows (before compaction) per second; best and median rounds compared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message as _;
use sluice_meta::{Condition, MetaStore};
use sluice_storage::compaction::{Removals, compact_segment};
use sluice_storage::flusher::{StorageConfig, writer_properties};
use sluice_types::message::pb::{DeleteManifest, SegmentManifest, StorageFile};
use sluice_types::storage;

use super::command_line;

const COLLECTION: i64 = 1;
const PARTITION: i64 = 1;
const SEGMENT: i64 = 1;
const VCHANNEL: &str = "bench_0_1v0";

/// What `bench compact` takes.
#[derive(Debug)]
pub(crate) struct CompactParams<'a> {
    /// Directory to run in (the caller creates and removes it).
    pub dir: &'a std::path::Path,
    /// Rows in the segment.
    pub rows: usize,
    /// Vector dimension.
    pub dim: usize,
    /// Share of the rows deleted (0 to 1).
    pub removed: f64,
    /// Rounds per side.
    pub rounds: usize,
}

fn parquet(batches: &[RecordBatch], pk: &str) -> anyhow::Result<Vec<u8>> {
    let first = batches.first().context("no batches")?;
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(
        &mut out,
        first.schema(),
        Some(writer_properties(&first.schema(), Some(pk))),
    )?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(out)
}

/// Runs `bench compact` and prints its table.
pub(crate) async fn run(params: CompactParams<'_>) -> anyhow::Result<()> {
    if params.rows == 0 || params.rounds == 0 {
        bail!("--rows and --rounds must be at least 1");
    }
    if params.dim == 0 || params.dim > 32_768 {
        bail!("--dim must be 1-32768");
    }
    if !(params.removed > 0.0 && params.removed <= 1.0) {
        bail!("--removed must be above 0 and at most 1");
    }
    let objects = params.dir.join("objects");
    std::fs::create_dir_all(&objects)?;
    let store: Arc<dyn ObjectStore> =
        sluice_log::object::build_store(&sluice_log::object::ObjectStoreConfig::LocalDir(objects))?;
    let meta: Arc<dyn MetaStore> = Arc::new(sluice_meta::embedded::EmbeddedStore::open(
        params.dir.join("meta.redb"),
    )?);
    let config = StorageConfig {
        store: store.clone(),
        meta: meta.clone(),
        meta_root: "bench".into(),
        retention: Duration::ZERO,
        truncate_interval: Duration::from_secs(60),
        checkpoint_interval: Duration::from_secs(60),
        max_body_bytes: 64 << 20,
    };
    // The segment: rows inserted at timestamps 1.., keys 0..rows.
    let rows = params.rows;
    let data = super::flush::batch(0, rows, params.dim)?;
    let ts: ArrayRef = Arc::new(Int64Array::from_iter_values(1..=rows as i64));
    let data =
        sluice_storage::rows::with_column(&data, Field::new("_ts", ArrowType::Int64, false), ts)?;
    let path = storage::segment_data_path(COLLECTION, PARTITION, SEGMENT);
    let bytes = parquet(std::slice::from_ref(&data), "id")?;
    let size = bytes.len() as u64;
    store
        .put(&ObjectPath::from(path.as_str()), Bytes::from(bytes).into())
        .await?;
    let flushed = SegmentManifest {
        segment_id: SEGMENT,
        collection_id: COLLECTION,
        partition_id: PARTITION,
        vchannel: VCHANNEL.into(),
        rows: rows as u64,
        min_timestamp: 1,
        max_timestamp: rows as u64,
        data: Some(StorageFile {
            path: path.clone(),
            rows: rows as u64,
            bytes: size,
        }),
        ..SegmentManifest::default()
    };
    // The deletes: every `step`-th key, after every insert.
    let step = (1.0 / params.removed).round().max(1.0) as i64;
    let deleted: Vec<i64> = (0..rows as i64).filter(|k| k % step == 0).collect();
    let at = rows as u64 + 1;
    let deletes = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("_ts", ArrowType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(deleted.clone())) as ArrayRef,
            Arc::new(Int64Array::from(vec![at as i64; deleted.len()])),
        ],
    )?;
    let delete_path = storage::delete_file_path(COLLECTION, VCHANNEL, at);
    store
        .put(
            &ObjectPath::from(delete_path.as_str()),
            Bytes::from(parquet(&[deletes], "id")?).into(),
        )
        .await?;
    let delete_manifest = DeleteManifest {
        collection_id: COLLECTION,
        vchannel: VCHANNEL.into(),
        rows: deleted.len() as u64,
        min_timestamp: at,
        max_timestamp: at,
        file: Some(StorageFile {
            path: delete_path,
            rows: deleted.len() as u64,
            bytes: 0,
        }),
        flush_timestamp: at,
        merged_timestamp: 0,
    };
    meta.put(
        &config.delete_manifest_key(COLLECTION, VCHANNEL, at),
        Bytes::from(delete_manifest.encode_to_vec()),
        Condition::None,
        None,
    )
    .await?;
    let keep = BooleanArray::from((0..rows as i64).map(|k| k % step != 0).collect::<Vec<_>>());

    println!("# {}", command_line());
    println!(
        "# one segment of {rows} rows (int64 id + float vector dim {} + _ts, {size} bytes), \
         {} rows deleted; files to a local object-store directory; best of {} rounds",
        params.dim,
        deleted.len(),
        params.rounds
    );
    let (mut raws, mut compactions) = (Vec::new(), Vec::new());
    let mut after = 0;
    for round in 0..params.rounds {
        // Baseline: read, filter with the mask, write, put.
        let started = Instant::now();
        let got = store
            .get(&ObjectPath::from(path.as_str()))
            .await?
            .bytes()
            .await?;
        let batches = ParquetRecordBatchReaderBuilder::try_new(got)?
            .build()?
            .collect::<Result<Vec<_>, _>>()?;
        let mut at_row = 0;
        let mut kept = Vec::new();
        for b in &batches {
            let mask = keep.slice(at_row, b.num_rows());
            at_row += b.num_rows();
            kept.push(arrow_select::filter::filter_record_batch(b, &mask)?);
        }
        let out = parquet(&kept, "id")?;
        store
            .put(
                &ObjectPath::from(format!("raw/{round}.parquet")),
                Bytes::from(out).into(),
            )
            .await?;
        let raw = started.elapsed();
        // Compaction, from the flushed manifest.
        meta.put(
            &config.manifest_key(COLLECTION, SEGMENT),
            Bytes::from(flushed.encode_to_vec()),
            Condition::None,
            None,
        )
        .await?;
        let started = Instant::now();
        let removals = Removals::load(&config, COLLECTION, VCHANNEL, "id", at, 0).await?;
        let done = compact_segment(&config, COLLECTION, SEGMENT, "id", &removals, 0.0)
            .await?
            .context("compaction rewrote nothing")?;
        let compacted = started.elapsed();
        after = done.manifest.data.as_ref().map_or(0, |f| f.bytes);
        if done.removed != deleted.len() as u64 {
            bail!(
                "compaction removed {} rows, not {}",
                done.removed,
                deleted.len()
            );
        }
        raws.push(raw);
        compactions.push(compacted);
        println!(
            "round {round}: read+filter+write {:.1} ms, compaction {:.1} ms",
            raw.as_secs_f64() * 1e3,
            compacted.as_secs_f64() * 1e3
        );
    }
    raws.sort_unstable();
    compactions.sort_unstable();
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    let (raw_best, best) = (raws[0], compactions[0]);
    let (raw_median, median) = (raws[raws.len() / 2], compactions[compactions.len() / 2]);
    println!(
        "{:>18} {:>14} {:>14}",
        "path", "best rows/s", "median rows/s"
    );
    println!(
        "{:>18} {:>14.0} {:>14.0}",
        "read+filter+write",
        rate(raw_best),
        rate(raw_median)
    );
    println!(
        "{:>18} {:>14.0} {:>14.0}",
        "compaction",
        rate(best),
        rate(median)
    );
    println!(
        "compaction / read+filter+write = {:.2} (best), {:.2} (median); file {size} -> {after} bytes",
        rate(best) / rate(raw_best),
        rate(median) / rate(raw_median)
    );
    Ok(())
}
