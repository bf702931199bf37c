//! The `local` backend: one directory of segment files per pchannel on a local filesystem.
//!
//! ```text
//!  root/{pchannel}/LOCK, TERM, {base_lsn:020}.log ...      (formats: see `segment.rs`)
//!
//!  append ─▶ enqueue (encode, back-pressure) ─▶ writer thread ─▶ flock, re-read TERM,
//!            one write + one fdatasync for every queued record, unlock ─▶ resolve AppendFutures
//!  read   ─▶ reader task: seek with the sparse index, read chunks on the blocking pool,
//!            tail committed records (in process: a watch of the committed lsn; other
//!            processes' writes: polling)
//! ```
//!
//! Ids are `MessageId::from_parts(0, lsn)` with a dense lsn per pchannel that continues across
//! segments, reopens and terms.
//!
//! Fencing holds across processes: read-write opens and every write batch take an exclusive
//! `flock` on `LOCK` and check `TERM` under it. An open at term `T` writes `T` (refusing if a
//! higher term is stored) and recovers the log under the lock; a batch at a lower term fails with
//! [`LogError::Fenced`], and the handle stays fenced. Because a batch holds the lock from the
//! term check through its fdatasync, a new owner's recovery sees either none or all of it, so no
//! acknowledged record of an old term can be missed, and none can land after the new owner's.

mod reader;
mod recovery;
mod segment;
mod sidecar;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_types::{MessageId, MutableMessage, PChannel, Term};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::reader::{Reader, Start};
use self::recovery::{RecoveryMode, recover};
use self::segment::{LOCK_FILE, list_segments, read_term};
use self::writer::{WriterLink, open_writer};
use crate::{
    AccessMode, AppendFuture, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream,
    OpenOptions, ReadOptions,
};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the record is written and `fdatasync`ed (the default).
    #[default]
    Fsync,
    /// After the record is written; the writer syncs at most once per interval.
    Interval(Duration),
    /// After the record is written; never synced explicitly (a crash of the machine, not of the
    /// process, may lose acknowledged records).
    None,
}

/// Settings of the local backend.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Root directory; one subdirectory per pchannel.
    pub root: PathBuf,
    /// A segment is sealed and a new one started once it reaches this many bytes. Default 64 MiB.
    pub segment_size: u64,
    /// When appends are acknowledged. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Records a handle's writer queue holds before `enqueue` waits. Default 8192.
    pub queue_records: usize,
    /// Encoded bytes a handle's writer queue holds before `enqueue` waits. Default 64 MiB.
    pub queue_bytes: usize,
    /// Bytes between entries of a segment's sparse (lsn, offset) index. Default 64 KiB.
    pub index_interval: u64,
    /// Longest a writer waits for more appends after a short batch when the previous batch was
    /// larger (group commit; never when the previous batch was a single record). Default 200 µs.
    pub group_commit_max_wait: Duration,
    /// How often readers look for records written by other processes, and how often an idle
    /// writer checks whether it was fenced. Default 25 ms.
    pub poll_interval: Duration,
    /// Reserve each segment's blocks up front (`fallocate` with `KEEP_SIZE`, so the file length
    /// still ends at the last record). Only used when `runway` is 0: the zero runway makes
    /// syncs cheaper than reserved (unwritten) blocks do, and supersedes it. Ignored where the
    /// filesystem cannot do it. Default true.
    pub preallocate: bool,
    /// Bytes of zeros the writer keeps written ahead of the next record in the active segment
    /// (capped at `segment_size`; 0 disables). Appends then overwrite blocks that are already
    /// allocated and written, so their `fdatasync` flushes data without journaling metadata;
    /// the metadata cost is paid once per runway instead of once per batch. The segment file
    /// ends in up to this many zero bytes while it is active (see the format docs in
    /// `segment.rs`); it is cut to its last record when sealed. Default 4 MiB.
    pub runway: u64,
}

impl LocalConfig {
    /// The defaults for logs under `root`.
    pub fn new(root: impl Into<PathBuf>) -> LocalConfig {
        LocalConfig {
            root: root.into(),
            segment_size: 64 << 20,
            durability: Durability::Fsync,
            queue_records: 8192,
            queue_bytes: 64 << 20,
            index_interval: 64 << 10,
            group_commit_max_wait: Duration::from_micros(200),
            poll_interval: Duration::from_millis(25),
            preallocate: true,
            runway: 4 << 20,
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        let bad = |what: &str| Err(LogError::InvalidArgument(format!("local backend: {what}")));
        if self.segment_size == 0 {
            return bad("segment_size must be > 0");
        }
        if self.queue_records == 0 || self.queue_bytes == 0 {
            return bad("queue_records and queue_bytes must be > 0");
        }
        if self.index_interval == 0 {
            return bad("index_interval must be > 0");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be > 0");
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("a durability interval must be > 0");
        }
        Ok(())
    }
}

/// Opens logs stored as segment files under a local directory.
pub struct LocalProvider {
    config: Arc<LocalConfig>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// A provider over `config.root` (created if missing).
    pub fn new(config: LocalConfig) -> Result<LocalProvider, LogError> {
        config.validate()?;
        std::fs::create_dir_all(&config.root)
            .map_err(|e| LogError::io(format!("create log root {}", config.root.display()), e))?;
        Ok(LocalProvider {
            config: Arc::new(config),
        })
    }
}

#[async_trait]
impl LogProvider for LocalProvider {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn open(&self, options: OpenOptions) -> Result<Arc<dyn LogHandle>, LogError> {
        Ok(Arc::new(self.open_local(options).await?))
    }
}

impl LocalProvider {
    async fn open_local(&self, options: OpenOptions) -> Result<LocalHandle, LogError> {
        let config = self.config.clone();
        let dir = config.root.join(options.pchannel.as_str());
        let opts = options.clone();
        let (shared, writer) = blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| LogError::io(format!("create {}", dir.display()), e))?;
            let canonical = std::fs::canonicalize(&dir)
                .map_err(|e| LogError::io(format!("resolve {}", dir.display()), e))?;
            let shared = SharedDir::get(&canonical);
            let writer = match opts.mode {
                AccessMode::ReadWrite => Some(open_writer(&config, &shared, &opts)?),
                AccessMode::ReadOnly => {
                    let segments = list_segments(&shared.path)?;
                    let scanned = recover(
                        &segments,
                        RecoveryMode::ReadOnly,
                        config.index_interval,
                        None,
                    )?;
                    for s in &scanned {
                        shared.merge_index(s.base, &s.index);
                    }
                    None
                }
            };
            Ok((shared, writer))
        })
        .await?;
        Ok(LocalHandle {
            options,
            config: self.config.clone(),
            shared,
            writer,
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Unavailable(format!("local backend blocking task failed: {e}")))?
}

/// State shared by every handle of one pchannel directory within this process.
pub(crate) struct SharedDir {
    /// Canonical directory path.
    path: PathBuf,
    /// The lsn after the last record an in-process writer made durable. Readers wake on it.
    committed: watch::Sender<u64>,
    /// In-process writers that are open and not fenced. While there is one, in-process readers
    /// stop at `committed`; otherwise they read whatever valid records the files hold.
    writers: Mutex<usize>,
    /// Sparse index per segment base: (lsn, offset), ascending.
    index: Mutex<HashMap<u64, Vec<(u64, u64)>>>,
}

static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<SharedDir>>>> =
    LazyLock::new(Default::default);

impl SharedDir {
    /// The process-wide state of the directory at the canonical path `path`.
    fn get(path: &Path) -> Arc<SharedDir> {
        let mut registry = REGISTRY.lock();
        if let Some(shared) = registry.get(path).and_then(Weak::upgrade) {
            return shared;
        }
        registry.retain(|_, w| w.strong_count() > 0);
        let shared = Arc::new(SharedDir {
            path: path.to_owned(),
            committed: watch::Sender::new(0),
            writers: Mutex::new(0),
            index: Mutex::new(HashMap::new()),
        });
        registry.insert(path.to_owned(), Arc::downgrade(&shared));
        shared
    }

    /// The lsn in-process readers must stop before, if an in-process writer is active.
    fn read_limit(&self) -> Option<u64> {
        let writers = self.writers.lock();
        (*writers > 0).then(|| *self.committed.borrow())
    }

    /// Records that everything below `next` is durable.
    fn publish(&self, next: u64) {
        self.committed.send_if_modified(|c| {
            let moved = next > *c;
            if moved {
                *c = next;
            }
            moved
        });
    }

    fn register_writer(&self, committed: u64) {
        let mut writers = self.writers.lock();
        *writers += 1;
        self.publish(committed);
    }

    fn deregister_writer(&self) {
        let mut writers = self.writers.lock();
        *writers = writers.saturating_sub(1);
        drop(writers);
        // Wake readers so they re-evaluate their limit.
        self.committed.send_modify(|_| {});
    }

    /// Replaces a segment's index (after a read-write recovery scanned it).
    fn replace_index(&self, base: u64, entries: Vec<(u64, u64)>) {
        self.index.lock().insert(base, entries);
    }

    /// Adds index entries beyond the last one known for the segment.
    fn merge_index(&self, base: u64, entries: &[(u64, u64)]) {
        if entries.is_empty() {
            return;
        }
        let mut index = self.index.lock();
        let list = index.entry(base).or_default();
        for &(lsn, off) in entries {
            if list.last().is_none_or(|&(l, o)| lsn > l && off > o) {
                list.push((lsn, off));
            }
        }
    }

    /// A segment's index entries as known now.
    fn index_entries(&self, base: u64) -> Vec<(u64, u64)> {
        self.index.lock().get(&base).cloned().unwrap_or_default()
    }

    fn remove_index(&self, base: u64) {
        self.index.lock().remove(&base);
    }

    /// The indexed position closest before `lsn` in the segment `base`: (lsn, offset).
    fn seek(&self, base: u64, lsn: u64) -> Option<(u64, u64)> {
        let index = self.index.lock();
        let list = index.get(&base)?;
        let i = list.partition_point(|&(l, _)| l <= lsn);
        i.checked_sub(1).and_then(|i| list.get(i)).copied()
    }
}

struct LocalHandle {
    options: OpenOptions,
    config: Arc<LocalConfig>,
    shared: Arc<SharedDir>,
    writer: Option<WriterLink>,
    closed: AtomicBool,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl LocalHandle {
    fn check_writable(&self) -> Result<&WriterLink, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let Some(writer) = &self.writer else {
            return Err(LogError::ReadOnly(self.options.pchannel.clone()));
        };
        writer.check()?;
        Ok(writer)
    }
}

fn lsn_of(id: MessageId) -> Result<u64, LogError> {
    if id.hi() != 0 {
        return Err(LogError::InvalidArgument(format!(
            "{id} is not a local-backend message id"
        )));
    }
    Ok(id.lo())
}

#[async_trait]
impl LogHandle for LocalHandle {
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
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let Some(writer) = &self.writer else {
            return Err(LogError::ReadOnly(self.options.pchannel.clone()));
        };
        // A fenced or closing writer refuses inside (its queue is closed).
        writer.enqueue(message).await
    }

    async fn read(&self, options: ReadOptions) -> Result<LogStream, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let watch = self.shared.committed.subscribe();
        let start = match options.policy {
            DeliverPolicy::All => Start::Oldest,
            DeliverPolicy::StartFrom(id) => Start::From(lsn_of(id)?),
            DeliverPolicy::StartAfter(id) => Start::From(lsn_of(id)?.saturating_add(1)),
            DeliverPolicy::Latest => match self.shared.read_limit() {
                Some(committed) => Start::From(committed),
                None => {
                    let shared = self.shared.clone();
                    let interval = self.config.index_interval;
                    Start::From(blocking(move || reader::end_lsn(&shared, interval)).await?)
                }
            },
        };
        let read_ahead = options.effective_read_ahead();
        let (tx, rx) = mpsc::channel(read_ahead);
        let stop = self.cancel.child_token();
        let guard = stop.clone().drop_guard();
        let reader = Reader::new(self.shared.clone(), &self.config, start);
        self.tasks.spawn(reader::run(
            reader,
            tx,
            stop,
            watch,
            self.config.poll_interval,
        ));
        Ok(LogStream::new(rx, Some(guard)))
    }

    async fn truncate(&self, up_to: MessageId) -> Result<(), LogError> {
        self.check_writable()?;
        let up_to = lsn_of(up_to)?;
        let shared = self.shared.clone();
        let pchannel = self.options.pchannel.clone();
        let term = self.options.term;
        let removed =
            blocking(move || truncate_segments(&shared.path, &pchannel, term, up_to)).await?;
        for base in removed {
            self.shared.remove_index(base);
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for LocalHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(writer) = &self.writer {
            writer.shutdown();
        }
    }
}

/// Deletes, oldest first, every segment all of whose records are `<= up_to`, never the newest.
/// Runs under the directory lock and refuses if a higher term has opened the log.
fn truncate_segments(
    dir: &Path,
    pchannel: &PChannel,
    term: Term,
    up_to: u64,
) -> Result<Vec<u64>, LogError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| LogError::io(format!("open {}", lock_path.display()), e))?;
    lock.lock()
        .map_err(|e| LogError::io(format!("lock {}", lock_path.display()), e))?;
    let result = (|| {
        let term_path = dir.join(segment::TERM_FILE);
        let term_file = std::fs::File::open(&term_path)
            .map_err(|e| LogError::io(format!("open {}", term_path.display()), e))?;
        let stored = read_term(&term_file, &term_path)?.term;
        if stored > term {
            return Err(LogError::Fenced {
                pchannel: pchannel.clone(),
                term,
                current: stored,
            });
        }
        let segments = list_segments(dir)?;
        let mut removed = Vec::new();
        for pair in segments.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            if next.base > up_to.saturating_add(1) {
                break;
            }
            // The sidecar first: a sidecar without its segment is never read, but a segment
            // must not outlive a removal that reported success.
            sidecar::remove(&seg.path)?;
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LogError::io(format!("remove {}", seg.path.display()), e));
                }
            }
            removed.push(seg.base);
        }
        if !removed.is_empty() {
            segment::sync_dir(dir)?;
        }
        Ok(removed)
    })();
    if let Err(e) = lock.unlock() {
        tracing::warn!(error = %e, path = %lock_path.display(), "unlock failed");
    }
    result
}

#[cfg(test)]
mod tests;
