//! The `object` backend: a zero-disk WAL written straight to object storage (a local directory
//! through `object_store`'s `LocalFileSystem`, or S3).
//!
//! # Layout
//!
//! ```text
//!  {prefix}/{pchannel}/{term:015}-{gen:05}/owner           claim of the segment
//!                                         /sealed          hint: fenced at the index it holds
//!                                         /b/{block:013}   data block, or the fence
//!                                         /t/{block:013}   truncation mark
//! ```
//!
//! A *segment* is one read-write open: the term it opened at and a generation that tells apart
//! reopens at the same term. Its blocks are objects at consecutive indexes, each written once with
//! a conditional create (`PutMode::Create`). A record's [`MessageId`] is (segment, block, entry),
//! packed so ids order like positions (see `layout.rs`); block formats are in `block.rs`.
//!
//! # Writing
//!
//! Concurrent `enqueue`s share the open block (a record's id is fixed when it joins it). The
//! block is sealed at [`ObjectConfig::block_size`]; otherwise only when one of the
//! [`ObjectConfig::max_inflight`] upload slots is free — at once if no upload is running, else
//! once its first record has waited [`ObjectConfig::flush_interval`] — so while every slot is
//! busy it keeps gathering records. Uploads run concurrently and are acknowledged in block order;
//! [`ObjectConfig::max_pending_bytes`] bounds what is accepted but not yet durable. Transient
//! upload errors are retried with backoff for [`ObjectConfig::retry_timeout`]; after that (or any
//! other failure) the handle fails every pending append and accepts none: nothing after a block
//! that did not land is ever acknowledged.
//!
//! # Fencing
//!
//! A read-write open at term `T`:
//! 1. lists the segments; a segment at a higher term means `Fenced` (nothing is written);
//! 2. seals every lower segment: creates a fence object at the first block index that holds no
//!    block (if the old writer's block lands there first, that block is part of the log and the
//!    fence moves to the next index), then writes the `sealed` hint;
//! 3. claims its own segment `(T, gen)` with a conditional create of `owner` (a lost race moves to
//!    the next gen);
//! 4. lists again: a higher segment that appeared meanwhile means this open lost — it fences its
//!    own (empty) segment and fails with `Fenced`; lower segments that appeared are sealed.
//!
//! An old writer's next upload then meets the fence at its index, so it reports `Fenced`, and
//! every block it acknowledged lies below the fence, where readers find it. Any upload that meets
//! an existing object is checked: the writer's own block (a retry whose response was lost) is
//! success, a fence is `Fenced`.
//!
//! # Reading
//!
//! A reader walks segments in order, reads consecutive blocks from each segment's retained start
//! up to its fence, and tails the newest segment by polling the next index every
//! [`ObjectConfig::poll_interval`] (readers of a read-write handle are also woken by its own
//! acknowledgements). While catching up it fetches up to [`ObjectConfig::read_ahead_blocks`]
//! blocks ahead; records go through a channel bounded by the read's read-ahead.
//!
//! # Truncation
//!
//! `truncate(id)` deletes whole blocks: every block of earlier (sealed) segments and the blocks
//! below `id`'s block in its segment, never at or above the writer's first unacknowledged block.
//! A truncation mark is written first so readers that meet a deleted block know to skip ahead.
//! Owners, fences and `sealed` hints stay (a few bytes per open) so fencing keeps working.
//!
//! # Limits
//!
//! * Durability is the store's: S3 acknowledges durable writes; in a local directory every
//!   object is `fsync`ed (file and directory) before its upload counts as done.
//! * An opener that dies between claiming its segment and sealing it, while racing a higher term,
//!   leaves an empty unsealed segment that readers wait at until the next read-write open seals
//!   it.

mod block;
mod layout;
mod reader;
mod store;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use sluice_types::{MessageId, MutableMessage, PChannel, Term};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::layout::{Layout, Position, SegmentId, TERM_LIMIT, unpack};
use self::reader::{Reader, Start};
use self::store::{Channel, Created};
use self::writer::{Writer, WriterSettings};
use crate::{
    AccessMode, AppendFuture, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream,
    OpenOptions, ReadOptions,
};

/// Where the objects live.
#[derive(Clone, Debug)]
pub enum ObjectStoreConfig {
    /// A local directory (created if missing), through `object_store`'s `LocalFileSystem`, with
    /// every write `fsync`ed.
    LocalDir(PathBuf),
    /// An S3 (or S3-compatible) bucket.
    S3(S3Config),
}

/// An S3 bucket. The store must support conditional create (`If-None-Match: *`).
#[derive(Clone)]
pub struct S3Config {
    /// The endpoint URL (e.g. `http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// The bucket (must exist).
    pub bucket: String,
    /// The region. Default `us-east-1`.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key (`Debug` does not show it).
    pub secret_access_key: String,
    /// Allow plain `http://` endpoints. Default false.
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Config {
    /// A bucket on an S3-compatible server at `endpoint` (plain HTTP allowed, region
    /// `us-east-1`).
    pub fn compatible(endpoint: impl Into<String>, bucket: impl Into<String>) -> S3Config {
        S3Config {
            endpoint: Some(endpoint.into()),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: true,
        }
    }
}

/// Settings of the object backend.
#[derive(Clone, Debug)]
pub struct ObjectConfig {
    /// Where the objects live.
    pub store: ObjectStoreConfig,
    /// Key prefix under which pchannels live (`""` for the root). Default `""`.
    pub prefix: String,
    /// A block is sealed once its records reach this many bytes. Default 2 MiB.
    pub block_size: usize,
    /// While another upload is running, how long the open block gathers records before it is
    /// sealed (when an upload slot is free; 0 = as soon as one is). Default 5 ms.
    pub flush_interval: Duration,
    /// Block uploads in flight at once per handle. Default 8.
    pub max_inflight: usize,
    /// Encoded bytes accepted but not yet acknowledged before `enqueue` waits. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// How often a reader asks again for a block that is not there yet. Default 20 ms.
    pub poll_interval: Duration,
    /// Blocks a reader fetches ahead while catching up (GETs in flight per reader; at most this
    /// many blocks buffered). Default 16: where a GET's latency dominates (a busy S3 test
    /// server) a cold catch-up read 2.6× faster than with 4; on an idle single-threaded test
    /// server it made no difference (`cargo bench -p sluice-log --features object --bench
    /// object_catchup`).
    pub read_ahead_blocks: usize,
    /// How long transient store errors are retried before an operation fails. Default 30 s.
    pub retry_timeout: Duration,
}

impl ObjectConfig {
    /// The defaults for `store`.
    pub fn new(store: ObjectStoreConfig) -> ObjectConfig {
        ObjectConfig {
            store,
            prefix: String::new(),
            block_size: 2 << 20,
            flush_interval: Duration::from_millis(5),
            max_inflight: 8,
            max_pending_bytes: 64 << 20,
            poll_interval: Duration::from_millis(20),
            read_ahead_blocks: 16,
            retry_timeout: Duration::from_secs(30),
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        let bad = |what: &str| Err(LogError::InvalidArgument(format!("object backend: {what}")));
        if self.block_size == 0 || self.max_inflight == 0 || self.read_ahead_blocks == 0 {
            return bad("block_size, max_inflight and read_ahead_blocks must be > 0");
        }
        if self.max_pending_bytes == 0 || self.max_pending_bytes > u32::MAX as usize {
            return bad("max_pending_bytes must be in 1..=4 GiB");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be > 0");
        }
        Ok(())
    }
}

/// Builds the `object_store` client for `config`.
pub fn build_store(config: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, LogError> {
    match config {
        ObjectStoreConfig::LocalDir(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| LogError::io(format!("create {}", dir.display()), e))?;
            let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
                LogError::InvalidArgument(format!(
                    "object backend directory {}: {e}",
                    dir.display()
                ))
            })?;
            // An acknowledged record must survive a machine crash, as on S3.
            Ok(Arc::new(fs.with_fsync(true)))
        }
        ObjectStoreConfig::S3(s3) => {
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_access_key_id(&s3.access_key_id)
                .with_secret_access_key(&s3.secret_access_key)
                .with_allow_http(s3.allow_http)
                .with_conditional_put(S3ConditionalPut::ETagMatch);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e);
            }
            let s3 = b
                .build()
                .map_err(|e| LogError::InvalidArgument(format!("object backend S3 config: {e}")))?;
            Ok(Arc::new(s3))
        }
    }
}

/// Opens logs stored in an object store.
pub struct ObjectProvider {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    config: Arc<ObjectConfig>,
}

impl std::fmt::Debug for ObjectProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectProvider")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish_non_exhaustive()
    }
}

impl ObjectProvider {
    /// A provider for `config` (builds the store client; touches no object).
    pub fn new(config: ObjectConfig) -> Result<ObjectProvider, LogError> {
        let store = build_store(&config.store)?;
        ObjectProvider::with_store(store, config)
    }

    /// A provider over an existing store client (`config.store` is then ignored).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        config: ObjectConfig,
    ) -> Result<ObjectProvider, LogError> {
        config.validate()?;
        let prefix = Path::parse(&config.prefix).map_err(|e| {
            LogError::InvalidArgument(format!("object backend prefix {:?}: {e}", config.prefix))
        })?;
        Ok(ObjectProvider {
            store,
            prefix,
            config: Arc::new(config),
        })
    }

    /// The store client.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn channel(&self, pchannel: &PChannel) -> Channel {
        Channel {
            store: self.store.clone(),
            layout: Layout::new(&self.prefix, pchannel),
            pchannel: pchannel.clone(),
            retry_timeout: self.config.retry_timeout,
        }
    }
}

/// Claims a segment for a read-write open at `term` and seals everything below it (see the
/// module docs, "Fencing").
async fn claim(channel: &Channel, term: Term) -> Result<SegmentId, LogError> {
    let fenced = |current: u64| channel.fenced(term, current);
    loop {
        let segments = channel.segments().await?;
        if let Some(max) = segments.last()
            && max.term() > term.0
        {
            return Err(fenced(max.term()));
        }
        let gen_ = match segments.iter().rev().find(|s| s.term() == term.0) {
            Some(s) => s.generation().checked_add(1).ok_or_else(|| {
                LogError::InvalidArgument(format!(
                    "pchannel {} was opened read-write {} times at term {}",
                    channel.pchannel,
                    u16::MAX,
                    term.0
                ))
            })?,
            None => 0,
        };
        let mine = SegmentId::new(term.0, gen_).ok_or_else(|| {
            LogError::InvalidArgument(format!("term {} is above {TERM_LIMIT}", term.0))
        })?;
        seal_all(channel, &segments, mine).await?;
        let owner = Bytes::from(format!("term={} gen={}\n", term.0, gen_));
        if let Created::Exists = channel.create(&channel.layout.owner(mine), owner).await? {
            // Another open at this term took the generation: look again.
            continue;
        }
        let after = channel.segments().await?;
        if let Some(higher) = after.iter().find(|s| **s > mine) {
            channel.seal(mine, mine).await?;
            return Err(fenced(higher.term()));
        }
        let newly: Vec<SegmentId> = after
            .into_iter()
            .filter(|s| *s < mine && !segments.contains(s))
            .collect();
        seal_all(channel, &newly, mine).await?;
        return Ok(mine);
    }
}

async fn seal_all(
    channel: &Channel,
    segments: &[SegmentId],
    by: SegmentId,
) -> Result<(), LogError> {
    let results = futures::future::join_all(segments.iter().map(|s| channel.seal(*s, by))).await;
    results.into_iter().try_for_each(|r| r.map(|_| ()))
}

#[async_trait]
impl LogProvider for ObjectProvider {
    fn backend(&self) -> &'static str {
        "object"
    }

    async fn open(&self, options: OpenOptions) -> Result<Arc<dyn LogHandle>, LogError> {
        let channel = self.channel(&options.pchannel);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let writer = match options.mode {
            AccessMode::ReadOnly => None,
            AccessMode::ReadWrite => {
                let segment = claim(&channel, options.term).await?;
                tracing::info!(pchannel = %options.pchannel, term = options.term.0,
                    generation = segment.generation(), "opened object log read-write");
                let w = Arc::new(Writer::new(
                    channel.clone(),
                    segment,
                    options.term,
                    WriterSettings {
                        block_size: self.config.block_size,
                        flush_interval: self.config.flush_interval,
                        max_inflight: self.config.max_inflight,
                        max_pending_bytes: self.config.max_pending_bytes,
                    },
                ));
                tasks.spawn(w.clone().run_flusher(cancel.clone()));
                Some(w)
            }
        };
        Ok(Arc::new(ObjectHandle {
            options,
            channel,
            config: self.config.clone(),
            writer,
            closed: AtomicBool::new(false),
            cancel,
            tasks,
        }))
    }
}

struct ObjectHandle {
    options: OpenOptions,
    channel: Channel,
    config: Arc<ObjectConfig>,
    writer: Option<Arc<Writer>>,
    closed: AtomicBool,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl ObjectHandle {
    fn writer(&self) -> Result<&Arc<Writer>, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        self.writer
            .as_ref()
            .ok_or_else(|| LogError::ReadOnly(self.options.pchannel.clone()))
    }

    /// Where `Latest` starts: the first free block index of the newest segment.
    async fn end_position(&self) -> Result<Start, LogError> {
        let segments = self.channel.segments().await?;
        let Some(last) = segments.last().copied() else {
            return Ok(Start::Oldest);
        };
        let start = self.channel.retained_start(last).await?;
        let present = self.channel.block_indexes(last, start).await?;
        let mut block = start;
        while present.contains(&block) {
            block += 1;
        }
        Ok(Start::At(Position {
            segment: last,
            block,
            entry: 0,
        }))
    }

    /// Truncates segment `s` below block `below` (write the mark, then delete).
    async fn truncate_segment(&self, s: SegmentId, below: u64) -> Result<(), LogError> {
        let current = self.channel.retained_start(s).await?;
        if below <= current {
            return Ok(());
        }
        self.channel
            .overwrite(&self.channel.layout.trunc(s, below), Bytes::new())
            .await?;
        let blocks = self.channel.block_indexes(s, 0).await?;
        let doomed = blocks
            .range(..below)
            .map(|i| self.channel.layout.block(s, *i))
            .collect();
        self.channel.delete_all(doomed).await?;
        let marks = self.channel.indexes(&self.channel.layout.truncs(s)).await?;
        let old = marks
            .into_iter()
            .filter(|m| *m < below)
            .map(|m| self.channel.layout.trunc(s, m))
            .collect();
        self.channel.delete_all(old).await
    }
}

#[async_trait]
impl LogHandle for ObjectHandle {
    fn pchannel(&self) -> &PChannel {
        &self.options.pchannel
    }

    fn term(&self) -> Term {
        self.options.term
    }

    fn mode(&self) -> AccessMode {
        self.options.mode
    }

    async fn enqueue(&self, message: MutableMessage) -> Result<AppendFuture, LogError> {
        self.writer()?.enqueue(message, &self.cancel).await
    }

    async fn read(&self, options: ReadOptions) -> Result<LogStream, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let start = match options.policy {
            DeliverPolicy::All => Start::Oldest,
            DeliverPolicy::Latest => self.end_position().await?,
            DeliverPolicy::StartFrom(id) => Start::At(unpack(id)),
            DeliverPolicy::StartAfter(id) => Start::At(unpack(id).next()),
        };
        let (tx, rx) = mpsc::channel(options.effective_read_ahead());
        let stop = self.cancel.child_token();
        let guard = stop.clone().drop_guard();
        let reader = Reader {
            channel: self.channel.clone(),
            start,
            tx,
            stop,
            acked: self.writer.as_ref().map(|w| w.acked()),
            poll_interval: self.config.poll_interval,
            read_ahead_blocks: self.config.read_ahead_blocks,
            tasks: self.tasks.clone(),
        };
        self.tasks.spawn(reader.run());
        Ok(LogStream::new(rx, Some(guard)))
    }

    async fn truncate(&self, up_to: MessageId) -> Result<(), LogError> {
        let writer = self.writer()?;
        if let Some(e) = writer.failure() {
            return Err(e);
        }
        let mine = writer.segment();
        let segments = self.channel.segments().await?;
        if let Some(higher) = segments.iter().find(|s| **s > mine) {
            let e = self.channel.fenced(self.options.term, higher.term());
            writer.fail(e.clone());
            return Err(e);
        }
        let p = unpack(up_to);
        if p.segment > mine {
            return Err(LogError::InvalidArgument(format!(
                "{up_to} is beyond this log's newest segment"
            )));
        }
        // Never past what this writer has acknowledged: everything below is durable.
        let acked = *writer.acked().borrow();
        let (seg, below) = if p.segment == mine {
            (mine, p.block.min(acked))
        } else {
            (p.segment, p.block)
        };
        for s in segments.into_iter().filter(|s| *s <= seg) {
            let below = if s == seg {
                below
            } else {
                match self.channel.fence_index(s).await? {
                    Some(k) => k,
                    // Not sealed (cannot happen below an open writer's segment): leave it.
                    None => continue,
                }
            };
            self.truncate_segment(s, below).await?;
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(w) = &self.writer {
            w.fail(LogError::Closed);
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for ObjectHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests;
