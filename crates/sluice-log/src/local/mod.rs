//! The `local` backend: one directory of segment files per pchannel on a local filesystem.
//!
//! ```text
//!  root/{pchannel}/terms/{term}, {base}-{term}.log, .idx, .seal ...  (see `segment.rs`)
//!
//!  append ─▶ enqueue (encode, back-pressure) ─▶ writer thread ─▶ flock the term's claim, check
//!            the claim, one write + one fdatasync for every queued record, check the claim
//!            again, unlock ─▶ resolve AppendFutures
//!  read   ─▶ reader task: seek with the sparse index, read chunks on the blocking pool,
//!            tail committed records (in process: a watch of the committed lsn; other
//!            processes' writes: polling)
//! ```
//!
//! Ids are `MessageId::from_parts(0, lsn)` with a dense lsn per pchannel that continues across
//! segments, reopens and terms.
//!
//! # Fencing
//!
//! Fencing holds across processes, and a new owner never waits for an old one: an owner that is
//! stopped (SIGSTOP, a long pause) at any point, holding whatever it holds, cannot keep a higher
//! term from opening the log and appending. Three mechanisms, none of them a lock shared between
//! terms:
//!
//! * **Claims** (`claims.rs`). An open at term `t` refuses if a higher term is stored, creates
//!   the claim file `terms/{t}` and removes the claims of lower terms (each step synced), and
//!   only then reads the log. A handle is the owner while its claim file exists. Handles of one
//!   term take turns through a `flock` on that file — which is all an open ever waits for.
//! * **Check after sync.** A batch is checked against the claim before it is written and, again,
//!   after its fdatasync; only then is it acknowledged. A failed check fails the batch with
//!   [`LogError::Fenced`] (the handle stays fenced) and leaves its bytes where they are.
//! * **Seal and a fresh segment.** A new term never appends to a file an older term may still
//!   have open. Its open seals the newest segment at the end its recovery found — first seal
//!   wins, so racing opens agree (`seal.rs`) — and starts its own segment, created with
//!   `O_EXCL` under a name that carries the term. Everything in the sealed segment after the
//!   seal, and any segment a fenced writer creates late, is outside the log (`segment.rs`, "The
//!   chain of segments"); recovery and readers stop at the seal.
//!
//! Why that is enough, for an old writer at term `T` and a new owner at `T' > T` whose open
//! removes the claim of `T` at moment `R` and then reads the log:
//!
//! * *No acknowledged record is lost.* A batch is acknowledged only if its second check ran
//!   before `R`, so it was durable (written, for the relaxed durabilities) before the new
//!   owner's recovery read the segment: the recovery finds it, syncs it and seals after it.
//! * *Nothing of the old writer appears after the open.* A batch whose check ran after `R`
//!   fails. Its write may land before the recovery's read (then it is inside the seal:
//!   unacknowledged records may or may not be in the log, as always) or after it (then it is
//!   after the seal, ignored by every reader and recovery). Stopped anywhere — before its write,
//!   between write and fdatasync, before the second check, inside a roll (the new segment it
//!   creates has the new owner's base and a lower term, so it is dead) — it acknowledges
//!   nothing once continued, and later batches fail their first check.
//! * *No torn or interleaved data.* The new owner writes only to its own new segment, which no
//!   other term can open by name; the old writer's late writes go to its old file, after the
//!   seal. Lsns stay dense: the new segment's base is the sealed segment's end.
//! * *Readers.* A reader decides what it may deliver only after reading it (`reader.rs`): in
//!   the newest segment, a record counts if no newer term has claimed the log yet — then the
//!   newer term's recovery comes later and keeps it — and otherwise only once the seal says so.
//!   So a record a reader delivered is never cut off by a seal.
//! * *Two new terms racing* (`T+1` and `T+2`): the higher removes the lower's claim, so the
//!   lower acknowledges nothing after that; they agree on the old segment's end through the
//!   first seal, and the lower's segment is either sealed by the higher (if it existed when the
//!   higher read the log) or dead (same base, lower term).
//! * *Crashes* (SIGKILL anywhere): claims and seals are created durably before anything relies
//!   on them; a claim without a seal or a seal without the next segment is completed by the
//!   next open; recovery truncates a torn tail only in a segment of the opening term.
//!
//! Logs written before claims (no `terms/`, segment names without a term, a `TERM` file) open
//! and read as before: their term still refuses lower opens, and the first read-write open seals
//! their newest segment and continues in a segment of its own.

mod claims;
mod reader;
mod recovery;
mod seal;
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

use self::claims::Claim;
use self::reader::{Reader, Start};
use self::recovery::{RecoveryMode, recover};
use self::segment::{list_segment_files, list_segments};
use self::writer::{WriterLink, open_writer};
use crate::{
    AccessMode, AppendFuture, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream,
    OpenOptions, ReadOptions,
};

/// Knobs for tests of the local backend (`testkit` feature only).
#[cfg(feature = "testkit")]
pub mod testkit {
    use std::time::Duration;

    /// Makes every local writer of this process wait `pause` between a batch's pre-write claim
    /// check and its write (zero: no wait, the default). That is the window in which a writer
    /// that is stopped has checked its term but not written yet; tests that stop writers at
    /// random moments widen it so that they land in it often.
    pub fn pause_before_write(pause: Duration) {
        let micros = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
        super::writer::PAUSE_BEFORE_WRITE_MICROS
            .store(micros, std::sync::atomic::Ordering::Relaxed);
    }
}

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
                    reader::merge_scanned(&shared, &segments, &scanned)?;
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

/// The in-process writers of a directory.
#[derive(Default)]
struct Writers {
    /// Writers that are open and not (known to be) fenced.
    count: usize,
    /// The active segment of the writer of the highest term among them.
    active: Option<(Term, PathBuf)>,
}

/// State shared by every handle of one pchannel directory within this process.
pub(crate) struct SharedDir {
    /// Canonical directory path.
    path: PathBuf,
    /// The lsn after the last record an in-process writer made durable. Readers wake on it.
    committed: watch::Sender<u64>,
    /// While an in-process writer is open, in-process readers of its active segment stop at
    /// `committed`; elsewhere they read what the files hold by the rules in `reader.rs`.
    writers: Mutex<Writers>,
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
            writers: Mutex::new(Writers::default()),
            index: Mutex::new(HashMap::new()),
        });
        registry.insert(path.to_owned(), Arc::downgrade(&shared));
        shared
    }

    /// The lsn in-process readers must stop before, if an in-process writer is active.
    fn read_limit(&self) -> Option<u64> {
        let writers = self.writers.lock();
        (writers.count > 0).then(|| *self.committed.borrow())
    }

    /// The committed lsn, if `path` is the active segment of an in-process writer (the one of
    /// the highest term): readers of that segment stop there.
    fn active_limit(&self, path: &Path) -> Option<u64> {
        let writers = self.writers.lock();
        let active = writers.active.as_ref().is_some_and(|(_, p)| p == path);
        (writers.count > 0 && active).then(|| *self.committed.borrow())
    }

    /// Records the active segment of a writer at `term` (unless a higher term's is known).
    fn set_active(&self, term: Term, path: &Path) {
        let mut writers = self.writers.lock();
        if writers.active.as_ref().is_none_or(|(t, _)| *t <= term) {
            writers.active = Some((term, path.to_owned()));
        }
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

    fn register_writer(&self, committed: u64, term: Term, active: &Path) {
        let mut writers = self.writers.lock();
        writers.count += 1;
        if writers.active.as_ref().is_none_or(|(t, _)| *t <= term) {
            writers.active = Some((term, active.to_owned()));
        }
        self.publish(committed);
    }

    fn deregister_writer(&self) {
        let mut writers = self.writers.lock();
        writers.count = writers.count.saturating_sub(1);
        if writers.count == 0 {
            writers.active = None;
        }
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
        let claim = self.check_writable()?.claim().clone();
        let up_to = lsn_of(up_to)?;
        let shared = self.shared.clone();
        let pchannel = self.options.pchannel.clone();
        let term = self.options.term;
        let removed =
            blocking(move || truncate_segments(&shared.path, &pchannel, term, &claim, up_to))
                .await?;
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

/// Deletes, oldest first, every segment all of whose records are `<= up_to`, never the newest
/// (with the dead segment files among them). Runs under the term's lock and refuses once a
/// newer term has claimed the log.
fn truncate_segments(
    dir: &Path,
    pchannel: &PChannel,
    term: Term,
    claim: &Claim,
    up_to: u64,
) -> Result<Vec<u64>, LogError> {
    let fenced = || LogError::Fenced {
        pchannel: pchannel.clone(),
        term,
        current: claims::current_term(dir).unwrap_or(term),
    };
    let Some(lock) = claim.reopen()? else {
        return Err(fenced());
    };
    lock.lock()
        .map_err(|e| LogError::io(format!("lock {}", claim.path().display()), e))?;
    let result = (|| {
        if !claim.held()? {
            return Err(fenced());
        }
        let chain = list_segments(dir)?;
        let files = list_segment_files(dir)?;
        let mut removed = Vec::new();
        for pair in chain.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            if next.base > up_to.saturating_add(1) {
                break;
            }
            for file in files
                .iter()
                .filter(|f| f.base >= seg.base && f.base < next.base)
            {
                // The sidecar and seal first: neither is read without its segment, but a
                // segment must not outlive a removal that reported success.
                sidecar::remove(&file.path)?;
                seal::remove(&file.path)?;
                match std::fs::remove_file(&file.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(LogError::io(format!("remove {}", file.path.display()), e));
                    }
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
        tracing::warn!(error = %e, path = %claim.path().display(), "unlock failed");
    }
    result
}

#[cfg(test)]
mod tests;
