//! Reading what the flusher committed: segment and delete manifests from the meta store, and
//! their Parquet files from object storage.

use arrow_array::RecordBatch;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message as _;
use sluice_types::message::pb::{DeleteManifest, SegmentManifest};

use crate::flusher::StorageConfig;

/// Why committed data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The meta store failed.
    #[error("meta store: {0}")]
    Meta(#[from] sluice_meta::MetaError),
    /// The object store failed.
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    /// A file is not Parquet.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A manifest does not decode.
    #[error("manifest {key} does not decode: {reason}")]
    Manifest {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Every committed segment manifest (of `collection` when given), by collection then segment.
pub async fn segment_manifests(
    config: &StorageConfig,
    collection: Option<i64>,
) -> Result<Vec<SegmentManifest>, ReadError> {
    let prefix = match collection {
        Some(c) => sluice_types::storage::collection_segments_prefix(&config.meta_root, c),
        None => config.manifests_prefix(),
    };
    let (kvs, _) = config.meta.scan_prefix(&prefix).await?;
    let mut out = kvs
        .iter()
        .map(|kv| {
            SegmentManifest::decode(kv.value.as_ref()).map_err(|e| ReadError::Manifest {
                key: kv.key.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|m| (m.collection_id, m.segment_id));
    Ok(out)
}

/// Every committed delete manifest (of `collection` when given).
pub async fn delete_manifests(
    config: &StorageConfig,
    collection: Option<i64>,
) -> Result<Vec<DeleteManifest>, ReadError> {
    let prefix = match collection {
        Some(c) => sluice_types::storage::collection_deletes_prefix(&config.meta_root, c),
        None => config.delete_manifests_prefix(),
    };
    let (kvs, _) = config.meta.scan_prefix(&prefix).await?;
    let mut out = kvs
        .iter()
        .map(|kv| {
            DeleteManifest::decode(kv.value.as_ref()).map_err(|e| ReadError::Manifest {
                key: kv.key.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|m| (m.collection_id, m.flush_timestamp));
    Ok(out)
}

/// The batches of the Parquet file at `path` (relative to the storage root).
pub async fn read_file(config: &StorageConfig, path: &str) -> Result<Vec<RecordBatch>, ReadError> {
    read_parquet(config, path, None).await
}

/// The batches of the Parquet file at `path` with only its columns named in `names` (the
/// others are not decoded).
pub async fn read_columns(
    config: &StorageConfig,
    path: &str,
    names: &[&str],
) -> Result<Vec<RecordBatch>, ReadError> {
    read_parquet(config, path, Some(names)).await
}

async fn read_parquet(
    config: &StorageConfig,
    path: &str,
    names: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, ReadError> {
    let bytes: Bytes = config
        .store
        .get(&ObjectPath::from(path))
        .await?
        .bytes()
        .await?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    if let Some(names) = names {
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| names.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    Ok(builder
        .build()?
        .collect::<Result<Vec<_>, _>>()
        .map_err(parquet::errors::ParquetError::from)?)
}
