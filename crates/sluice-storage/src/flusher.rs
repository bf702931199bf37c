//! The flusher: turns a WAL's growing segments into Parquet segments in object storage, and
//! truncates the log below what is no longer needed.
//!
//! One flusher runs per open WAL. It reads the WAL in timestamp order (a scanner: the log, then
//! the write-ahead buffer), keeps every growing segment's rows in memory as Arrow batches and the
//! deletes of each vchannel, and at each flush point the WAL writes — FLUSH for a sealed segment,
//! MANUAL_FLUSH and SCHEMA_CHANGE for the segments they name — writes them out:
//!
//! 1. the segment's Parquet file and the vchannel's delete file, under names that depend only on
//!    the segment (or the flush point), so a retry after a crash writes the same objects;
//! 2. the manifest in the meta store — the commit point. A segment that already has one is not
//!    written again (its rows are all there);
//! 3. then, now and then, the **flush checkpoint**: the log position from which the rows not yet
//!    in Parquet can be read again (the first message of the oldest unflushed data), saved in the
//!    meta store. A flusher that starts reads from there.
//!
//! A crash at any point of this loses nothing and writes nothing twice: rows are in the log until
//! their manifest is committed, a segment with a manifest is skipped, and rows belong to exactly
//! the segment the WAL assigned them to.
//!
//! **Truncation.** Every `truncate_interval` the flusher notes the oldest position still needed
//! — the lower of the saved flush checkpoint and the WAL's saved recovery checkpoint — and
//! truncates the log below the one it noted `retention` ago. See `sluice_log` for what each
//! backend removes (whole files on `local`, whole blocks on `object`, nothing on `kafka`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, cast::AsArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use prost::Message as _;
use sluice_meta::{Condition, MetaStore};
use sluice_types::backoff::Backoff;
use sluice_types::message::pb::{
    DeleteManifest, SegmentManifest, StorageFile,
    segment_manifest::{PkMax, PkMin},
};
use sluice_types::message::{
    CreateCollectionHeader, DeleteHeader, DropCollectionHeader, DropPartitionHeader, FlushHeader,
    InsertHeader, ManualFlushHeader, SchemaChangeHeader,
};
use sluice_types::schema::{CollectionSchema, DataType};
use sluice_types::storage;
use sluice_types::{
    DeliverPolicy, ImmutableMessage, MessageFilter, MessageId, MessageType, Timestamp, VChannel,
};
use sluice_wal::checkpoint::Checkpoint;
use sluice_wal::scanner::{ReadMessage, ScannerOptions};
use sluice_wal::{Wal, WalError};
use tokio_util::sync::CancellationToken;

use crate::rows::{decode_delete, decode_insert_bytes, primary_key};

/// The system column holding each row's timestamp.
pub const TS_COLUMN: &str = "_ts";
/// The body column of rows of a collection without a schema.
pub const PAYLOAD_COLUMN: &str = "_payload";

/// What the flusher needs: where segments go and where their manifests go.
#[derive(Clone)]
pub struct StorageConfig {
    /// The storage root (a local directory in standalone, a bucket in a cluster).
    pub store: Arc<dyn ObjectStore>,
    /// The meta store manifests and flush checkpoints are kept in.
    pub meta: Arc<dyn MetaStore>,
    /// The meta store's root prefix.
    pub meta_root: String,
    /// How long a log record is kept after nothing needs it any more.
    pub retention: Duration,
    /// How often truncation runs.
    pub truncate_interval: Duration,
    /// How often the flush checkpoint is saved (when it moved).
    pub checkpoint_interval: Duration,
    /// The largest body decoded, in bytes.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("meta_root", &self.meta_root)
            .field("retention", &self.retention)
            .field("truncate_interval", &self.truncate_interval)
            .finish_non_exhaustive()
    }
}

impl StorageConfig {
    pub(crate) fn root(&self) -> &str {
        self.meta_root.trim_end_matches('/')
    }

    /// The meta-store key of a segment's manifest.
    pub fn manifest_key(&self, collection: i64, segment: i64) -> String {
        storage::segment_manifest_key(self.root(), collection, segment)
    }

    /// The prefix of every segment manifest.
    pub fn manifests_prefix(&self) -> String {
        storage::segment_manifests_prefix(self.root())
    }

    /// The meta-store key of a delete manifest.
    pub fn delete_manifest_key(&self, collection: i64, vchannel: &str, ts: u64) -> String {
        storage::delete_manifest_key(self.root(), collection, vchannel, ts)
    }

    /// The prefix of every delete manifest.
    pub fn delete_manifests_prefix(&self) -> String {
        storage::delete_manifests_prefix(self.root())
    }

    fn flush_checkpoint_key(&self, pchannel: &str) -> String {
        format!("{}/flush/{pchannel}", self.root())
    }
}

/// A running flusher.
#[derive(Debug)]
pub struct Flusher {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    /// Starts flushing `wal`.
    pub fn start(wal: Wal, config: Arc<StorageConfig>) -> Flusher {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(wal, config, cancel.clone()));
        Flusher { cancel, task }
    }

    /// Stops it (what is not flushed stays in the log for the next owner).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Where a piece of unflushed data starts in the log: reading from `id` with timestamps above
/// `after` finds it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    id: MessageId,
    after: Timestamp,
}

fn position_of(m: &ImmutableMessage) -> Option<Position> {
    let ts = m.timestamp().ok().flatten()?;
    let lc = m.last_confirmed().ok().flatten().unwrap_or(m.id());
    Some(Position {
        id: lc,
        after: Timestamp(ts.0.saturating_sub(1)),
    })
}

/// A segment's rows arrive one insert at a time; every this many rows, or this many bytes,
/// those not merged yet become one batch. A batch per insert costs its own schema and buffers,
/// and handing a Parquet writer thousands of one-row batches costs far more than one batch of
/// the same rows. The byte bound keeps what merging copies (memory the node's cap does not see)
/// small whatever the row size.
const COALESCE_ROWS: usize = 4096;
const COALESCE_BYTES: usize = 1 << 20;

struct SegmentBuf {
    collection: i64,
    partition: i64,
    vchannel: String,
    schema: Option<CollectionSchema>,
    /// Merged batches: one per merge (see [`COALESCE_ROWS`]) and schema.
    batches: Vec<RecordBatch>,
    /// Decoded batches as they arrived, not merged yet.
    recent: Vec<RecordBatch>,
    /// Bodies of a collection without a schema, not made a batch yet: copied once, end to end,
    /// into a block of [`COALESCE_BYTES`] (or one body, if larger) that becomes the batch's
    /// value buffer as it is. Blocks of one size are what the allocator reuses best; a slice of
    /// the write-ahead buffer would keep its memory from being reused, and a buffer growing by
    /// doubling would churn through blocks of every size.
    body_values: Vec<u8>,
    /// Where each pending body ends in `body_values` (after a leading 0), and its timestamp.
    body_offsets: Vec<i32>,
    body_ts: Vec<i64>,
    /// Rows and bytes in `recent` and the pending bodies.
    recent_rows: usize,
    recent_bytes: usize,
    rows: u64,
    start: Position,
    first_id: MessageId,
    last_id: MessageId,
    min_ts: u64,
    max_ts: u64,
}

impl SegmentBuf {
    /// An empty segment of no collection whose first row is at `start` (message `id`, `ts`).
    fn starting(start: Position, id: MessageId, ts: u64) -> SegmentBuf {
        SegmentBuf {
            collection: 0,
            partition: 0,
            vchannel: String::new(),
            schema: None,
            batches: Vec::new(),
            recent: Vec::new(),
            body_values: Vec::new(),
            body_offsets: Vec::new(),
            body_ts: Vec::new(),
            recent_rows: 0,
            recent_bytes: 0,
            rows: 0,
            start,
            first_id: id,
            last_id: id,
            min_ts: ts,
            max_ts: ts,
        }
    }

    fn push(&mut self, batch: RecordBatch) {
        // Rows stay in log order: bodies before this batch become a batch first.
        self.bodies_to_batch();
        self.rows += batch.num_rows() as u64;
        self.recent_rows += batch.num_rows();
        self.recent_bytes += batch.get_array_memory_size();
        self.recent.push(batch);
        self.maybe_coalesce();
    }

    /// One row of a collection without a schema.
    fn push_body(&mut self, body: &[u8], ts: u64) {
        if !self.body_ts.is_empty()
            && self.body_values.len() + body.len() > self.body_values.capacity()
        {
            // The block is full: its bodies become a batch, and the next block starts.
            self.coalesce();
        }
        if self.body_ts.is_empty() {
            self.body_values = Vec::with_capacity(COALESCE_BYTES.max(body.len()));
            self.body_offsets = Vec::with_capacity(COALESCE_ROWS + 1);
            self.body_offsets.push(0);
            self.body_ts = Vec::with_capacity(COALESCE_ROWS);
        }
        self.body_values.extend_from_slice(body);
        // Bodies are at most `MAX_BODY_LEN` (64 MiB), and a block holds one body past
        // `COALESCE_BYTES` at most: the end fits an `i32`.
        self.body_offsets
            .push(i32::try_from(self.body_values.len()).unwrap_or(i32::MAX));
        self.body_ts.push(ts as i64);
        self.rows += 1;
        self.recent_rows += 1;
        self.recent_bytes += body.len();
        self.maybe_coalesce();
    }

    fn maybe_coalesce(&mut self) {
        if self.recent_rows >= COALESCE_ROWS || self.recent_bytes >= COALESCE_BYTES {
            self.coalesce();
        }
    }

    fn bodies_to_batch(&mut self) {
        if self.body_ts.is_empty() {
            return;
        }
        // Kept until the segment is flushed: a block cut short (a batch came between, or the
        // segment is being flushed) gives back what it does not use; the offsets and
        // timestamps, reserved for a full block of small rows, always do.
        let mut values = std::mem::take(&mut self.body_values);
        if values.capacity() - values.len() > values.capacity() / 8 {
            values.shrink_to_fit();
        }
        let mut offsets = std::mem::take(&mut self.body_offsets);
        offsets.shrink_to_fit();
        let mut ts = std::mem::take(&mut self.body_ts);
        ts.shrink_to_fit();
        // `OffsetBuffer::new` wants a first offset of 0 and no decrease: pushed that way.
        let bodies = BinaryArray::try_new(OffsetBuffer::new(offsets.into()), values.into(), None);
        let batch = bodies.and_then(|bodies| {
            let columns: Vec<ArrayRef> = vec![Arc::new(bodies), Arc::new(Int64Array::from(ts))];
            RecordBatch::try_new(payload_schema(), columns)
        });
        match batch {
            Ok(b) => self.recent.push(b),
            // Offsets that start at 0 and grow with every body, one per timestamp: cannot fail.
            Err(e) => tracing::error!(error = %e, "could not buffer rows without a schema"),
        }
    }

    /// Merges what is recent: each run of one schema becomes one batch (a run that does not
    /// merge stays as it is: merging only saves work).
    fn coalesce(&mut self) {
        self.bodies_to_batch();
        self.recent_rows = 0;
        self.recent_bytes = 0;
        let mut run: Vec<RecordBatch> = Vec::new();
        for b in std::mem::take(&mut self.recent) {
            if run.first().is_some_and(|f| f.schema() != b.schema()) {
                self.merge(std::mem::take(&mut run));
            }
            run.push(b);
        }
        self.merge(run);
    }

    fn merge(&mut self, run: Vec<RecordBatch>) {
        match run.as_slice() {
            [] => {}
            [_] => self.batches.extend(run),
            [first, ..] => match arrow_select::concat::concat_batches(&first.schema(), &run) {
                Ok(b) => self.batches.push(b),
                Err(_) => self.batches.extend(run),
            },
        }
    }

    /// Every row, merged.
    fn all_batches(&mut self) -> &[RecordBatch] {
        self.coalesce();
        &self.batches
    }
}

/// The rows of a collection without a schema: its bodies and their timestamps (one schema for
/// all of them, so their batches merge without comparing fields).
fn payload_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(PAYLOAD_COLUMN, ArrowType::Binary, false),
            Field::new(TS_COLUMN, ArrowType::Int64, false),
        ]))
    });
    SCHEMA.clone()
}

struct DeleteBuf {
    keys: Vec<ArrayRef>,
    ts: Vec<i64>,
    start: Position,
}

#[derive(Default)]
struct State {
    /// Per (vchannel, collection): the schema in force (`None`: created without one).
    schemas: HashMap<(String, i64), Option<CollectionSchema>>,
    segments: HashMap<i64, SegmentBuf>,
    deletes: HashMap<(String, i64), DeleteBuf>,
    /// Where reading stands when nothing is pending.
    current: Option<Position>,
}

impl State {
    /// The schema of `collection` on `vchannel`: as its CreateCollection / SchemaChange read
    /// here set it, else (created before where this flusher started reading) as the WAL
    /// recovered it.
    fn schema(&mut self, wal: &Wal, vchannel: &str, collection: i64) -> Option<CollectionSchema> {
        if let Some(s) = self
            .schemas
            .get(&(vchannel.to_owned(), collection))
            .or_else(|| self.schemas.get(&(String::new(), collection)))
        {
            return s.clone();
        }
        let s = VChannel::new(vchannel).ok().and_then(|v| wal.schema(&v));
        self.schemas
            .insert((vchannel.to_owned(), collection), s.clone());
        s
    }

    /// The flush checkpoint: the oldest start of pending data, else where reading stands.
    fn checkpoint(&self) -> Option<Position> {
        let pending = self
            .segments
            .values()
            .map(|s| s.start)
            .chain(self.deletes.values().map(|d| d.start));
        let mut out: Option<Position> = None;
        for p in pending {
            out = Some(match out {
                None => p,
                Some(o) => Position {
                    id: o.id.min(p.id),
                    after: o.after.min(p.after),
                },
            });
        }
        out.or(self.current)
    }
}

/// Ends with the WAL (its scanner ends) or when cancelled.
async fn run(wal: Wal, config: Arc<StorageConfig>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match flush_loop(&wal, &config, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                if cancel.is_cancelled() || !wal.is_available() {
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(pchannel = %wal.pchannel(), error = %e, ?delay, "the flusher failed; starting again from its checkpoint");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    #[error("meta store: {0}")]
    Meta(#[from] sluice_meta::MetaError),
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("{0}")]
    Corrupt(String),
}

/// Where reading the log must start to find every row of `pchannel` not yet in a committed
/// segment: the flush checkpoint as (first id to read, timestamps above which to take). `None`:
/// from the log's oldest record. A reader that first calls this and then lists the committed
/// manifests misses nothing: what was committed in between is read twice, and the segment
/// manifest tells it apart.
pub async fn flush_start(
    config: &StorageConfig,
    pchannel: &str,
) -> Result<Option<(MessageId, Timestamp)>, String> {
    load_checkpoint(config, pchannel)
        .await
        .map(|p| p.map(|p| (p.id, p.after)))
        .map_err(|e| e.to_string())
}

async fn load_checkpoint(
    config: &StorageConfig,
    pchannel: &str,
) -> Result<Option<Position>, FlushError> {
    let key = config.flush_checkpoint_key(pchannel);
    let Some(kv) = config.meta.get(&key).await? else {
        return Ok(None);
    };
    let c = Checkpoint::decode(kv.value.as_ref()).map_err(|e| {
        FlushError::Corrupt(format!(
            "the flush checkpoint {key} does not decode ({e}); delete it to flush again from \
             the log's oldest retained record"
        ))
    })?;
    let id = c.id().map_err(|e| FlushError::Corrupt(e.to_string()))?;
    Ok(Some(Position {
        id,
        after: Timestamp(c.timestamp),
    }))
}

async fn flush_loop(
    wal: &Wal,
    config: &StorageConfig,
    cancel: &CancellationToken,
) -> Result<(), FlushError> {
    let pchannel = wal.pchannel().as_str().to_owned();
    let start = load_checkpoint(config, &pchannel).await?;
    let options = match start {
        Some(p) => ScannerOptions {
            policy: DeliverPolicy::StartFrom(p.id),
            filters: vec![MessageFilter::TimeTickGt(p.after)],
            ..ScannerOptions::default()
        },
        None => ScannerOptions::default(),
    };
    let mut scanner = wal.read(options)?;
    let mut state = State {
        current: start,
        ..State::default()
    };
    let mut saved = start;
    let mut last_save = Instant::now();
    let mut truncation = Truncation::default();
    let mut tick = tokio::time::interval(config.truncate_interval.min(config.checkpoint_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => None,
            m = scanner.next() => match m {
                None => return Ok(()),
                Some(m) => Some(m?),
            },
        };
        let mut flushed = false;
        if let Some(m) = next {
            match m {
                ReadMessage::Message(m) => {
                    flushed |= apply(&mut state, wal, config, &m).await?;
                    if let Some(p) = position_of(&m) {
                        state.current = Some(Position {
                            id: p.id,
                            after: Timestamp(p.after.0 + 1),
                        });
                    }
                }
                ReadMessage::Txn(t) => {
                    for m in t.bodies() {
                        flushed |= apply(&mut state, wal, config, m).await?;
                    }
                    if let Some(p) = position_of(t.commit()) {
                        state.current = Some(Position {
                            id: p.id,
                            after: Timestamp(p.after.0 + 1),
                        });
                    }
                }
            }
        }
        let due = last_save.elapsed() >= config.checkpoint_interval;
        if (flushed || due)
            && let Some(c) = state.checkpoint()
            && Some(c) != saved
        {
            save_checkpoint(config, &pchannel, wal, c).await?;
            saved = Some(c);
            last_save = Instant::now();
        }
        if let Some(s) = saved {
            truncation.maybe_truncate(wal, config, s.id).await;
        }
    }
}

async fn save_checkpoint(
    config: &StorageConfig,
    pchannel: &str,
    wal: &Wal,
    c: Position,
) -> Result<(), FlushError> {
    let value = Checkpoint::new(c.id, c.after, wal.term()).encode_to_vec();
    config
        .meta
        .put(
            &config.flush_checkpoint_key(pchannel),
            Bytes::from(value),
            Condition::None,
            None,
        )
        .await?;
    Ok(())
}

/// Positions noted for truncation, oldest first.
#[derive(Default)]
struct Truncation {
    noted: VecDeque<(Instant, MessageId)>,
    last_run: Option<Instant>,
    done: Option<MessageId>,
}

impl Truncation {
    async fn maybe_truncate(&mut self, wal: &Wal, config: &StorageConfig, flush: MessageId) {
        if self
            .last_run
            .is_some_and(|t| t.elapsed() < config.truncate_interval)
        {
            return;
        }
        self.last_run = Some(Instant::now());
        // Without a saved recovery checkpoint the WAL replays the whole log: keep it all.
        let Some(recovery) = wal.saved_checkpoint() else {
            return;
        };
        let needed = flush.min(recovery);
        if self.noted.back().is_none_or(|(_, id)| *id != needed) {
            self.noted.push_back((Instant::now(), needed));
        }
        // The newest position noted at least `retention` ago.
        let mut target = None;
        while let Some((at, id)) = self.noted.front().copied() {
            if at.elapsed() < config.retention {
                break;
            }
            target = Some(id);
            if self.noted.len() == 1 {
                break;
            }
            self.noted.pop_front();
        }
        let Some(target) = target else {
            return;
        };
        if self.done.is_some_and(|d| d >= target) || target.0 == 0 {
            return;
        }
        // Records at `target` are still needed: truncate strictly below it.
        match wal.truncate(MessageId(target.0 - 1)).await {
            Ok(()) => {
                self.done = Some(target);
                tracing::debug!(pchannel = %wal.pchannel(), below = %target, "log truncated");
            }
            Err(e) => {
                tracing::warn!(pchannel = %wal.pchannel(), error = %e, "truncating the log failed")
            }
        }
    }
}

/// Applies one message; returns whether something was flushed.
async fn apply(
    state: &mut State,
    wal: &Wal,
    config: &StorageConfig,
    m: &ImmutableMessage,
) -> Result<bool, FlushError> {
    let Ok(ty) = m.message_type() else {
        return Ok(false);
    };
    let vchannel = m.vchannel_str().unwrap_or_default().to_owned();
    let ts = m.timestamp().ok().flatten().map_or(0, |t| t.0);
    match ty {
        MessageType::CreateCollection => {
            if let Ok(h) = m.header::<CreateCollectionHeader>() {
                state.schemas.insert((vchannel, h.collection_id), h.schema);
            }
            Ok(false)
        }
        MessageType::Insert => {
            let Ok(h) = m.header::<InsertHeader>() else {
                return Ok(false);
            };
            let Some(part) = h.partitions.first() else {
                return Ok(false);
            };
            let schema = state.schema(wal, &vchannel, h.collection_id);
            let batch = match &schema {
                None => None,
                Some(s) => match rows_of(s, m, part.rows, ts, config.max_body_bytes) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        tracing::error!(id = %m.id(), error = %e, "an insert in the log does not decode; its rows are not flushed");
                        return Ok(false);
                    }
                },
            };
            let start = position_of(m).unwrap_or(Position {
                id: m.id(),
                after: Timestamp(ts.saturating_sub(1)),
            });
            let seg = state
                .segments
                .entry(part.segment_id)
                .or_insert_with(|| SegmentBuf {
                    collection: h.collection_id,
                    partition: part.partition_id,
                    vchannel: vchannel.clone(),
                    schema: schema.clone(),
                    ..SegmentBuf::starting(start, m.id(), ts)
                });
            match batch {
                Some(b) => seg.push(b),
                None => seg.push_body(m.payload(), ts),
            }
            seg.last_id = m.id();
            seg.min_ts = seg.min_ts.min(ts);
            seg.max_ts = seg.max_ts.max(ts);
            Ok(false)
        }
        MessageType::Delete => {
            let Ok(h) = m.header::<DeleteHeader>() else {
                return Ok(false);
            };
            let Some(schema) = state.schema(wal, &vchannel, h.collection_id) else {
                return Ok(false);
            };
            let keys = match decode_delete(&schema, m.payload(), h.rows, config.max_body_bytes) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(id = %m.id(), error = %e, "a delete in the log does not decode; skipped");
                    return Ok(false);
                }
            };
            let start = position_of(m).unwrap_or(Position {
                id: m.id(),
                after: Timestamp(ts.saturating_sub(1)),
            });
            let buf = state
                .deletes
                .entry((vchannel, h.collection_id))
                .or_insert_with(|| DeleteBuf {
                    keys: Vec::new(),
                    ts: Vec::new(),
                    start,
                });
            buf.ts.extend(std::iter::repeat_n(ts as i64, keys.len()));
            buf.keys.push(keys);
            Ok(false)
        }
        MessageType::Flush => {
            let Ok(h) = m.header::<FlushHeader>() else {
                return Ok(false);
            };
            flush_segments(state, config, &[h.segment_id], ts).await?;
            flush_deletes(state, wal, config, &vchannel, h.collection_id, ts).await?;
            Ok(true)
        }
        MessageType::ManualFlush => {
            let Ok(h) = m.header::<ManualFlushHeader>() else {
                return Ok(false);
            };
            flush_segments(state, config, &h.segment_ids, ts).await?;
            flush_deletes(state, wal, config, &vchannel, h.collection_id, ts).await?;
            Ok(true)
        }
        MessageType::SchemaChange => {
            let Ok(h) = m.header::<SchemaChangeHeader>() else {
                return Ok(false);
            };
            flush_segments(state, config, &h.flushed_segment_ids, ts).await?;
            flush_deletes(state, wal, config, &vchannel, h.collection_id, ts).await?;
            if let Some(schema) = h.schema {
                for ((v, c), s) in state.schemas.iter_mut() {
                    if *c == h.collection_id && (vchannel.is_empty() || *v == vchannel) {
                        *s = Some(schema.clone());
                    }
                }
            }
            Ok(true)
        }
        MessageType::DropCollection => {
            if let Ok(h) = m.header::<DropCollectionHeader>() {
                let hit = |v: &str| vchannel.is_empty() || v == vchannel;
                state
                    .segments
                    .retain(|_, s| !(s.collection == h.collection_id && hit(&s.vchannel)));
                state
                    .deletes
                    .retain(|(v, c), _| !(*c == h.collection_id && hit(v)));
                remove_data(config, wal, &vchannel, h.collection_id, None).await;
            }
            Ok(true)
        }
        MessageType::DropPartition => {
            if let Ok(h) = m.header::<DropPartitionHeader>() {
                state.segments.retain(|_, s| {
                    !(s.collection == h.collection_id
                        && s.partition == h.partition_id
                        && (vchannel.is_empty() || s.vchannel == vchannel))
                });
                remove_data(
                    config,
                    wal,
                    &vchannel,
                    h.collection_id,
                    Some(h.partition_id),
                )
                .await;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Removes what the recovery storage holds of a dropped collection (`partition`: of one of
/// its partitions) on `vchannel` (empty: every vchannel of this WAL's pchannel): each
/// segment's manifest, then its files (a crash in between leaves files no manifest names, never
/// a manifest without its files), and for a collection its delete manifests and files. Best
/// effort: a failure is logged and leaves the rest for an operator (the data is unreadable
/// either way). Ids are never reused, so a replay of the drop removes nothing new.
async fn remove_data(
    config: &StorageConfig,
    wal: &Wal,
    vchannel: &str,
    collection: i64,
    partition: Option<i64>,
) {
    let pchannel = wal.pchannel().as_str().to_owned();
    let on_this = |v: &str| {
        if vchannel.is_empty() {
            VChannel::new(v).is_ok_and(|v| v.pchannel_str() == pchannel)
        } else {
            v == vchannel
        }
    };
    let outcome: Result<(usize, usize), FlushError> = async {
        let (mut segments, mut deletes) = (0, 0);
        let prefix = storage::collection_segments_prefix(config.root(), collection);
        let (kvs, _) = config.meta.scan_prefix(&prefix).await?;
        for kv in kvs {
            let Ok(m) = SegmentManifest::decode(kv.value.as_ref()) else {
                continue;
            };
            if !on_this(&m.vchannel) || partition.is_some_and(|p| p != m.partition_id) {
                continue;
            }
            config.meta.delete(&kv.key, Condition::None).await?;
            let dir = storage::segment_dir(m.collection_id, m.partition_id, m.segment_id);
            delete_objects(config, &dir).await?;
            segments += 1;
        }
        if partition.is_none() {
            let prefix = storage::collection_deletes_prefix(config.root(), collection);
            let (kvs, _) = config.meta.scan_prefix(&prefix).await?;
            for kv in kvs {
                let Ok(m) = DeleteManifest::decode(kv.value.as_ref()) else {
                    continue;
                };
                if !on_this(&m.vchannel) {
                    continue;
                }
                config.meta.delete(&kv.key, Condition::None).await?;
                if let Some(f) = &m.file {
                    crate::gc::delete_object(config, &ObjectPath::from(f.path.as_str())).await?;
                }
                deletes += 1;
            }
        }
        Ok((segments, deletes))
    }
    .await;
    match outcome {
        Ok((segments, deletes)) if segments + deletes > 0 => tracing::info!(
            collection,
            ?partition,
            vchannel,
            segments,
            delete_files = deletes,
            "removed the stored data of a drop"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            collection,
            ?partition,
            vchannel,
            error = %e,
            "removing the stored data of a drop failed; its files stay (unread)"
        ),
    }
}

/// Deletes every object under `dir`.
async fn delete_objects(config: &StorageConfig, dir: &str) -> Result<(), FlushError> {
    for o in crate::gc::list_objects(config, dir).await? {
        crate::gc::delete_object(config, &o.location).await?;
    }
    Ok(())
}

/// An insert's rows (of a collection with a schema) with the `_ts` column.
fn rows_of(
    schema: &CollectionSchema,
    m: &ImmutableMessage,
    rows: u64,
    ts: u64,
    max_bytes: usize,
) -> Result<RecordBatch, FlushError> {
    let batch = decode_insert_bytes(schema, m.payload(), rows, max_bytes)
        .map_err(|e| FlushError::Corrupt(e.to_string()))?;
    let s = batch.schema();
    let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    fields.push(Field::new(TS_COLUMN, ArrowType::Int64, false));
    columns.push(Arc::new(Int64Array::from(vec![
        ts as i64;
        batch.num_rows()
    ])));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The Parquet writer settings of every file the flusher writes: Snappy, column statistics, a
/// bloom filter on the primary key `pk`, dictionary encoding only for text columns (vectors and
/// numbers gain nothing from it and pay for the dictionary), delta encoding for a compacted
/// file's row numbers.
pub fn writer_properties(schema: &arrow_schema::Schema, pk: Option<&str>) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_dictionary_enabled(false);
    for f in schema.fields() {
        if matches!(f.data_type(), ArrowType::Utf8 | ArrowType::LargeUtf8) {
            props = props.set_column_dictionary_enabled(f.name().as_str().into(), true);
        }
        if f.name() == crate::compaction::ROW_COLUMN {
            // Increasing row numbers: a few bits per row instead of four bytes.
            props = props.set_column_encoding(
                f.name().as_str().into(),
                parquet::basic::Encoding::DELTA_BINARY_PACKED,
            );
        }
    }
    if let Some(pk) = pk {
        props = props.set_column_bloom_filter_enabled(pk.into(), true);
    }
    props.build()
}

/// Parquet bytes of `batches` (see [`writer_properties`]).
pub(crate) fn parquet_bytes(
    batches: &[RecordBatch],
    pk: Option<&str>,
) -> Result<Vec<u8>, FlushError> {
    let Some(first) = batches.first() else {
        return Err(FlushError::Corrupt("nothing to write".into()));
    };
    let props = writer_properties(&first.schema(), pk);
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, first.schema(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(out)
}

async fn put_object(config: &StorageConfig, path: &str, bytes: Vec<u8>) -> Result<(), FlushError> {
    config
        .store
        .put(&ObjectPath::from(path), Bytes::from(bytes).into())
        .await?;
    Ok(())
}

/// The primary key's min and max over a segment's rows.
fn pk_bounds(
    schema: Option<&CollectionSchema>,
    batches: &[RecordBatch],
) -> (Option<PkMin>, Option<PkMax>) {
    let Some(pk) = schema.and_then(|s| primary_key(s).ok()) else {
        return (None, None);
    };
    match DataType::try_from(pk.data_type) {
        Ok(DataType::Int64) => {
            let vals = batches
                .iter()
                .filter_map(|b| b.column_by_name(&pk.name))
                .flat_map(|c| {
                    c.as_primitive::<arrow_array::types::Int64Type>()
                        .iter()
                        .flatten()
                        .collect::<Vec<_>>()
                });
            let (mut lo, mut hi) = (None::<i64>, None::<i64>);
            for v in vals {
                lo = Some(lo.map_or(v, |l| l.min(v)));
                hi = Some(hi.map_or(v, |h| h.max(v)));
            }
            (lo.map(PkMin::PkMinInt), hi.map(PkMax::PkMaxInt))
        }
        Ok(DataType::Varchar) => {
            let (mut lo, mut hi): (Option<String>, Option<String>) = (None, None);
            for c in batches.iter().filter_map(|b| b.column_by_name(&pk.name)) {
                for v in c.as_string::<i32>().iter().flatten() {
                    if lo.as_deref().is_none_or(|l| v < l) {
                        lo = Some(v.to_owned());
                    }
                    if hi.as_deref().is_none_or(|h| v > h) {
                        hi = Some(v.to_owned());
                    }
                }
            }
            (lo.map(PkMin::PkMinStr), hi.map(PkMax::PkMaxStr))
        }
        _ => (None, None),
    }
}

async fn flush_segments(
    state: &mut State,
    config: &StorageConfig,
    ids: &[i64],
    flush_ts: u64,
) -> Result<(), FlushError> {
    for id in ids {
        let Some(seg) = state.segments.get_mut(id) else {
            continue;
        };
        let key = config.manifest_key(seg.collection, *id);
        if config.meta.get(&key).await?.is_some() {
            // Flushed before (a replay after a crash): every row is there already.
            state.segments.remove(id);
            continue;
        }
        let path = storage::segment_data_path(seg.collection, seg.partition, *id);
        let pk = seg
            .schema
            .as_ref()
            .and_then(|s| primary_key(s).ok())
            .map(|f| f.name.clone());
        let started = std::time::Instant::now();
        let bytes = parquet_bytes(seg.all_batches(), pk.as_deref())?;
        let size = bytes.len() as u64;
        put_object(config, &path, bytes).await?;
        metrics::counter!("sluice_storage_segments_flushed_total").increment(1);
        metrics::counter!("sluice_storage_flushed_bytes_total").increment(size);
        metrics::counter!("sluice_storage_flushed_rows_total").increment(seg.rows);
        metrics::histogram!("sluice_storage_segment_write_seconds")
            .record(started.elapsed().as_secs_f64());
        let (pk_min, pk_max) = pk_bounds(seg.schema.as_ref(), &seg.batches);
        let manifest = SegmentManifest {
            segment_id: *id,
            collection_id: seg.collection,
            partition_id: seg.partition,
            vchannel: seg.vchannel.clone(),
            rows: seg.rows,
            min_timestamp: seg.min_ts,
            max_timestamp: seg.max_ts,
            start_position: seg.first_id.to_string(),
            end_position: seg.last_id.to_string(),
            data: Some(StorageFile {
                path,
                rows: seg.rows,
                bytes: size,
            }),
            schema_version: seg.schema.as_ref().map_or(0, |s| s.version),
            pk_min,
            pk_max,
            flush_timestamp: flush_ts,
            compaction_timestamp: 0,
        };
        config
            .meta
            .put(
                &key,
                Bytes::from(manifest.encode_to_vec()),
                Condition::None,
                None,
            )
            .await?;
        tracing::debug!(
            segment = id,
            rows = seg.rows,
            bytes = size,
            "segment flushed"
        );
        state.segments.remove(id);
    }
    Ok(())
}

async fn flush_deletes(
    state: &mut State,
    wal: &Wal,
    config: &StorageConfig,
    vchannel: &str,
    collection: i64,
    flush_ts: u64,
) -> Result<(), FlushError> {
    let key = (vchannel.to_owned(), collection);
    if !state.deletes.contains_key(&key) {
        return Ok(());
    }
    let Some(schema) = state.schema(wal, vchannel, collection) else {
        state.deletes.remove(&key);
        return Ok(());
    };
    let Some(buf) = state.deletes.get(&key) else {
        return Ok(());
    };
    let pk = primary_key(&schema).map_err(|e| FlushError::Corrupt(e.to_string()))?;
    let manifest_key = config.delete_manifest_key(collection, vchannel, flush_ts);
    if config.meta.get(&manifest_key).await?.is_none() {
        let refs: Vec<&dyn Array> = buf.keys.iter().map(|a| a.as_ref()).collect();
        let keys = arrow_select::concat::concat(&refs)?;
        let rows = keys.len() as u64;
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new(&pk.name, keys.data_type().clone(), false),
                Field::new(TS_COLUMN, ArrowType::Int64, false),
            ])),
            vec![keys, Arc::new(Int64Array::from(buf.ts.clone()))],
        )?;
        let path = storage::delete_file_path(collection, vchannel, flush_ts);
        let bytes = parquet_bytes(&[batch], Some(&pk.name))?;
        let size = bytes.len() as u64;
        put_object(config, &path, bytes).await?;
        let manifest = DeleteManifest {
            collection_id: collection,
            vchannel: vchannel.to_owned(),
            rows,
            min_timestamp: buf.ts.iter().copied().min().unwrap_or(0) as u64,
            max_timestamp: buf.ts.iter().copied().max().unwrap_or(0) as u64,
            file: Some(StorageFile {
                path,
                rows,
                bytes: size,
            }),
            flush_timestamp: flush_ts,
            merged_timestamp: 0,
        };
        config
            .meta
            .put(
                &manifest_key,
                Bytes::from(manifest.encode_to_vec()),
                Condition::None,
                None,
            )
            .await?;
    }
    state.deletes.remove(&key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(batches: &[RecordBatch]) -> Vec<(Vec<u8>, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let bodies = b.column_by_name(PAYLOAD_COLUMN).unwrap().as_binary::<i32>();
            let ts = b
                .column_by_name(TS_COLUMN)
                .unwrap()
                .as_primitive::<arrow_array::types::Int64Type>();
            for i in 0..b.num_rows() {
                out.push((bodies.value(i).to_vec(), ts.value(i)));
            }
        }
        out
    }

    /// A segment of no collection, starting at message 1.
    fn empty_segment() -> SegmentBuf {
        let start = Position {
            id: MessageId(1),
            after: Timestamp(0),
        };
        SegmentBuf::starting(start, MessageId(1), 1)
    }

    #[test]
    fn a_segment_keeps_every_row_in_order_across_merges() {
        let mut seg = empty_segment();
        let n = 2 * COALESCE_ROWS + 10;
        let mut expected = Vec::new();
        for i in 0..n {
            let body = (i as u32).to_le_bytes().to_vec();
            if i % 1000 == 999 {
                // Now and then a row that arrives as a batch (same schema): it keeps its place.
                let batch = RecordBatch::try_new(
                    payload_schema(),
                    vec![
                        Arc::new(arrow_array::BinaryArray::from_vec(vec![&body[..]])),
                        Arc::new(Int64Array::from(vec![i as i64])),
                    ],
                )
                .unwrap();
                seg.push(batch);
            } else {
                seg.push_body(&body, i as u64);
            }
            expected.push((body, i as i64));
        }
        assert_eq!(seg.rows, n as u64);
        // Merged as they came: whole batches of COALESCE_ROWS rows, then the rest at the end.
        assert_eq!(seg.batches.len(), 2);
        assert_eq!(seg.batches[0].num_rows(), COALESCE_ROWS);
        let all = seg.all_batches();
        assert_eq!(all.len(), 3);
        assert_eq!(rows(all), expected);
    }

    #[test]
    fn a_body_larger_than_a_block_gets_a_block_of_its_own() {
        let mut seg = empty_segment();
        let big = |b: u8| vec![b; 3 * COALESCE_BYTES];
        let expected = vec![
            (vec![1u8; 10], 0),
            (big(2), 1),
            (vec![3u8; 10], 2),
            (big(4), 3),
            (big(5), 4),
        ];
        for (body, ts) in &expected {
            seg.push_body(body, *ts as u64);
        }
        assert_eq!(rows(seg.all_batches()), expected);
        let held: usize = seg
            .all_batches()
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum();
        assert!(
            held < 9 * COALESCE_BYTES + 4096 * 5,
            "the batches hold {held} bytes"
        );
    }

    #[test]
    fn large_rows_are_merged_by_bytes() {
        const BODY: usize = 40_000;
        let mut seg = empty_segment();
        for i in 0..60u8 {
            seg.push_body(&[i; BODY], u64::from(i));
        }
        // 26 rows of 40 kB fill a block, the 27th does not fit: two merged batches, 8 rows not
        // merged yet.
        let merged: Vec<usize> = seg.batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(merged, [26, 26]);
        // Each holds its block, and no spare room for offsets and timestamps.
        for b in &seg.batches {
            let held = b.get_array_memory_size();
            assert!(
                held < COALESCE_BYTES + 4096,
                "a merged batch holds {held} bytes"
            );
        }
        // The last block, cut short when the segment is flushed, gives back what it does not use.
        let last = seg.all_batches().last().unwrap().get_array_memory_size();
        assert!(last < 8 * BODY + 4096, "the last batch holds {last} bytes");
        let all = rows(seg.all_batches());
        assert_eq!(all.len(), 60);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, (body, ts))| body[..] == [i as u8; BODY] && *ts == i as i64)
        );
    }
}
