//! The write path: a bounded queue in front of one writer thread per read-write handle.
//!
//! Group commit: the writer takes every queued record, writes them with one `pwrite` and one
//! `fdatasync`, then resolves all their futures. With many appenders in a closed loop, taking
//! "whatever is queued" splits them into alternating small and large cohorts (the few that
//! re-enqueued first, then the rest), which halves throughput. So when the queue holds fewer
//! records than the previous batch and that batch ended very recently, the writer waits a short,
//! bounded time — at most `group_commit_max_wait` and the last fsync's duration — for the queue
//! to reach the previous batch size. A writer whose previous batch was one record never
//! waits, so a lone appender sees no added latency.
//!
//! Zero runway: an `fdatasync` that extends the file (or writes into unwritten extents) must
//! also journal metadata, which costs about as much again as the data. So the writer keeps zeros
//! written ahead of the next record (`Active::zeroed_end`): when a batch would end past them, it
//! writes zeros up to `LocalConfig::runway` beyond the batch in the same pass, and the batch's
//! `fdatasync` persists both. Later batches overwrite allocated, written blocks, and their syncs
//! flush data only. The file length is therefore not the end of the data: whether another handle
//! wrote is decided by the frame header at the expected end (zeros or the end of the file mean
//! nobody did). Rolling cuts the runway off before the next segment is created.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use sluice_types::codec::{FRAME_HEADER_LEN, MAX_BODY_LEN, encode_message, encoded_len};
use sluice_types::{MessageId, MutableMessage, PChannel, Term};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::claims::{self, Claim};
use super::recovery::{RecoveryMode, ScannedSegment, recover};
use super::segment::{
    SEGMENT_HEADER_LEN, encode_segment_header, list_segments, read_full_at, segment_name, sync_dir,
};
use super::{Durability, LocalConfig, SharedDir};
use crate::{AppendFuture, LogError, OpenOptions};

type Ack = oneshot::Sender<Result<MessageId, LogError>>;

/// A scratch buffer larger than this (after a big record) is given back instead of kept.
const SCRATCH_KEEP: usize = 1 << 20;

thread_local! {
    /// Where an appender encodes its record before copying it into the queue.
    static ENCODE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One accepted record waiting for the writer; its frame is in the queue's buffer.
struct Pending {
    /// Frame length in bytes.
    len: usize,
    ack: Ack,
    /// Back-pressure: released once the record is written (or failed).
    _permit: OwnedSemaphorePermit,
}

/// Records taken from the queue: their frames back to back, in order.
struct Batch {
    items: Vec<Pending>,
    frames: Vec<u8>,
}

struct QueueState {
    items: Vec<Pending>,
    /// The frames of `items`, back to back (encoded by the appenders, written as is).
    frames: Vec<u8>,
    /// The error every later append gets once the writer is fenced.
    terminal: Option<LogError>,
    closing: bool,
    /// The writer is asleep until the queue holds this many records.
    wake_at: usize,
}

struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// Back-pressure in bytes. A record weighs its frame length but at least
    /// `queue_bytes / queue_records`, so the queue is bounded in records too.
    room: Arc<Semaphore>,
    /// Least weight of a record.
    min_weight: u32,
    /// Most weight of a record (a larger one waits for an empty queue).
    max_weight: u32,
}

impl Queue {
    fn refusal(state: &QueueState) -> Option<LogError> {
        if let Some(e) = &state.terminal {
            return Some(e.clone());
        }
        state.closing.then_some(LogError::Closed)
    }

    fn refusal_now(&self) -> LogError {
        Queue::refusal(&self.state.lock()).unwrap_or(LogError::Closed)
    }

    /// Stops accepting appends: with `terminal` (fenced) or because the handle closes.
    fn stop(&self, terminal: Option<LogError>) {
        let mut state = self.state.lock();
        match terminal {
            Some(e) => {
                state.terminal.get_or_insert(e);
            }
            None => state.closing = true,
        }
        self.wake.notify_all();
        drop(state);
        self.room.close();
    }
}

/// The handle's side of its writer.
pub(super) struct WriterLink {
    queue: Arc<Queue>,
    done: watch::Receiver<bool>,
    claim: Arc<Claim>,
}

impl WriterLink {
    /// The handle's claim of its term (truncation locks and checks it too).
    pub(super) fn claim(&self) -> &Arc<Claim> {
        &self.claim
    }

    /// Fails if the writer no longer accepts appends (fenced or closing).
    pub(super) fn check(&self) -> Result<(), LogError> {
        match Queue::refusal(&self.queue.state.lock()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Encodes the record, waits for room in the queue and queues it.
    pub(super) async fn enqueue(&self, message: MutableMessage) -> Result<AppendFuture, LogError> {
        let message = message.into_message();
        let len = encoded_len(&message);
        if len > FRAME_HEADER_LEN + MAX_BODY_LEN {
            return Err(LogError::InvalidArgument(format!(
                "record of {len} bytes exceeds the {MAX_BODY_LEN}-byte limit"
            )));
        }
        let weight = u32::try_from(len)
            .unwrap_or(u32::MAX)
            .clamp(self.queue.min_weight, self.queue.max_weight);
        let permit = self
            .queue
            .room
            .clone()
            .acquire_many_owned(weight)
            .await
            .map_err(|_| self.queue.refusal_now())?;
        let (ack, future) = AppendFuture::pending();
        // Encoded (checksum included) outside the queue lock, into this thread's scratch
        // buffer: under the lock only a copy remains, so appenders do not queue behind each
        // other's encoding.
        ENCODE_SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode_message(&message, scratch)
                .map_err(|e| LogError::InvalidArgument(format!("record cannot be stored: {e}")))?;
            let mut state = self.queue.state.lock();
            if let Some(e) = Queue::refusal(&state) {
                return Err(e);
            }
            state.frames.extend_from_slice(scratch);
            state.items.push(Pending {
                len: scratch.len(),
                ack,
                _permit: permit,
            });
            if state.items.len() >= state.wake_at {
                self.queue.wake.notify_one();
            }
            drop(state);
            if scratch.capacity() > SCRATCH_KEEP {
                *scratch = Vec::new();
            }
            Ok(())
        })?;
        // The message (and its payload) is freed here, on the appender's thread.
        drop(message);
        Ok(future)
    }

    /// Stops the writer: queued records fail with `Closed`, a batch being written completes.
    /// Returns once the writer thread has finished.
    pub(super) async fn close(&self) {
        self.queue.stop(None);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Tells the writer to stop without waiting for it (handle dropped without `close`).
    pub(super) fn shutdown(&self) {
        self.queue.stop(None);
    }
}

/// The segment being appended to.
struct Active {
    base: u64,
    path: PathBuf,
    file: File,
    /// Where the next record goes (the end of the data as this writer knows it).
    offset: u64,
    /// Everything from `offset` up to here is known to read as zeros (or lie past the end of
    /// the file); zeros this writer wrote are made durable by the next batch's sync.
    zeroed_end: u64,
    next_lsn: u64,
    /// Offset of the last sparse index entry (or the header end).
    last_indexed: u64,
}

/// Reserves the blocks of a segment up to `size` without changing its length (best effort).
fn preallocate(file: &File, path: &Path, size: u64) {
    use rustix::fs::{FallocateFlags, fallocate};
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return,
    };
    if len >= size {
        return;
    }
    if let Err(e) = fallocate(file, FallocateFlags::KEEP_SIZE, len, size - len) {
        tracing::debug!(error = %e, path = %path.display(), "segment preallocation not available");
    }
}

impl Active {
    fn open(seg: &ScannedSegment, config: &LocalConfig) -> Result<Active, LogError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.path)
            .map_err(|e| LogError::io(format!("open {}", seg.path.display()), e))?;
        if config.preallocate && config.runway == 0 {
            preallocate(&file, &seg.path, config.segment_size);
        }
        Ok(Active {
            base: seg.base,
            path: seg.path.clone(),
            file,
            offset: seg.end_offset,
            // Recovery cut any runway; what lies beyond is unknown until zeroed again.
            zeroed_end: seg.end_offset,
            next_lsn: seg.next_lsn,
            last_indexed: seg.index.last().map_or(SEGMENT_HEADER_LEN, |&(_, off)| off),
        })
    }
}

struct Writer {
    pchannel: PChannel,
    term: Term,
    config: Arc<LocalConfig>,
    shared: Arc<SharedDir>,
    queue: Arc<Queue>,
    /// This handle's claim of its term: checked before and after every batch, and `flock`ed
    /// while the batch is written (against other handles of the term only).
    claim: Arc<Claim>,
    active: Active,
    /// Whether this writer counts in `SharedDir::writers`.
    registered: bool,
    /// Emptied buffers of the last batch, reused for the next.
    spare: Option<Batch>,
    prev_batch: usize,
    last_commit: Instant,
    last_fsync: Duration,
    /// Written but not yet synced (interval durability).
    dirty: bool,
    last_sync: Instant,
    /// A buffer of zeros for the runway (allocated on first use).
    zeros: Vec<u8>,
    done: watch::Sender<bool>,
}

/// The error of a handle at `term` that no longer owns the log in `dir`.
fn fenced_error(dir: &Path, pchannel: &PChannel, term: Term) -> LogError {
    let current = claims::current_term(dir).unwrap_or(term);
    LogError::Fenced {
        pchannel: pchannel.clone(),
        term,
        current,
    }
}

/// Creates an empty segment with base `base` for `term`, durably. Never over an existing file
/// (`O_EXCL`): a fenced writer rolling late cannot take the name of a newer term's segment.
fn create_segment(dir: &Path, base: u64, term: Term) -> Result<ScannedSegment, LogError> {
    let path = dir.join(segment_name(base, Some(term.0)));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| LogError::io(format!("create {}", path.display()), e))?;
    file.write_all_at(&encode_segment_header(base, term), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| LogError::io(format!("write {}", path.display()), e))?;
    sync_dir(dir)?;
    Ok(ScannedSegment {
        base,
        path,
        end_offset: SEGMENT_HEADER_LEN,
        next_lsn: base,
        index: Vec::new(),
    })
}

/// Opens the log read-write at `options.term`: claims the term, fences every older one, recovers
/// the log, seals a newest segment of an older term and starts a segment of its own (see the
/// module docs of `local`), registers the writer; then starts the writer thread. Waits only for
/// other handles of the same term, never for a lock an older term holds.
pub(super) fn open_writer(
    config: &Arc<LocalConfig>,
    shared: &Arc<SharedDir>,
    options: &OpenOptions,
) -> Result<WriterLink, LogError> {
    let dir = &shared.path;
    let term = options.term;
    let fenced = || fenced_error(dir, &options.pchannel, term);
    // Refuse a lower term before leaving a claim behind.
    if claims::current_term(dir)? > term {
        return Err(fenced());
    }
    let claim = Arc::new(Claim::acquire(dir, term)?);
    claim.lock()?;
    let recovered = (|| {
        if claims::current_term(dir)? > term || !claim.held()? {
            return Err(fenced());
        }
        // Older terms are fenced from here on: any batch of theirs that is acknowledged was
        // durable before this point, so the recovery below reads it.
        claims::remove_below(dir, term)?;
        let segments = list_segments(dir)?;
        let mut scanned = if segments.is_empty() {
            Vec::new()
        } else {
            recover(
                &segments,
                RecoveryMode::ReadWrite(term),
                config.index_interval,
                None,
            )?
        };
        let newest = segments.last();
        if newest.is_some_and(|n| n.term > Some(term.0)) {
            return Err(fenced());
        }
        // A newest segment of this term (a reopen) is continued; any other was sealed by the
        // recovery, and this term starts its own.
        let continue_newest = match newest {
            Some(n) => n.term == Some(term.0) && super::seal::read(&n.path, n.base)?.is_none(),
            None => false,
        };
        if !continue_newest {
            let base = scanned.last().map_or(0, |s| s.next_lsn);
            scanned.push(create_segment(dir, base, term)?);
        }
        for s in &scanned {
            shared.replace_index(s.base, s.index.clone());
        }
        let newest = scanned
            .last()
            .ok_or_else(|| LogError::Unavailable("recovery found no segment".into()))?;
        let active = Active::open(newest, config)?;
        // A newer term may have claimed meanwhile; then this handle must not start.
        if !claim.held()? {
            return Err(fenced());
        }
        shared.register_writer(active.next_lsn, term, &active.path);
        Ok(active)
    })();
    claim.unlock();
    let active = recovered?;
    tracing::info!(
        pchannel = %options.pchannel,
        term = %options.term,
        next_lsn = active.next_lsn,
        segment = %active.path.display(),
        "local log opened read-write"
    );

    let queue_bytes = u32::try_from(config.queue_bytes).unwrap_or(u32::MAX).max(1);
    let queue_records = u32::try_from(config.queue_records)
        .unwrap_or(u32::MAX)
        .clamp(1, queue_bytes);
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState {
            items: Vec::new(),
            frames: Vec::new(),
            terminal: None,
            closing: false,
            wake_at: usize::MAX,
        }),
        wake: Condvar::new(),
        room: Arc::new(Semaphore::new(queue_bytes as usize)),
        min_weight: (queue_bytes / queue_records).max(1),
        max_weight: queue_bytes,
    });
    let (done, done_rx) = watch::channel(false);
    let now = Instant::now();
    let writer = Writer {
        pchannel: options.pchannel.clone(),
        term: options.term,
        config: config.clone(),
        shared: shared.clone(),
        queue: queue.clone(),
        claim: claim.clone(),
        active,
        registered: true,
        spare: None,
        prev_batch: 0,
        last_commit: now,
        last_fsync: Duration::ZERO,
        dirty: false,
        last_sync: now,
        zeros: Vec::new(),
        done,
    };
    std::thread::Builder::new()
        .name("sluice-wal".into())
        .spawn(move || writer.run())
        .map_err(|e| LogError::io("start the local log writer thread", e))?;
    Ok(WriterLink {
        queue,
        done: done_rx,
        claim,
    })
}

/// Microseconds every writer of this process waits between a batch's claim check and its write
/// (`testkit` only; see `local::testkit::pause_before_write`).
#[cfg(feature = "testkit")]
pub(super) static PAUSE_BEFORE_WRITE_MICROS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

#[cfg(feature = "testkit")]
fn pause_before_write() {
    let micros = PAUSE_BEFORE_WRITE_MICROS.load(std::sync::atomic::Ordering::Relaxed);
    if micros > 0 {
        std::thread::sleep(Duration::from_micros(micros));
    }
}

fn fail(items: impl IntoIterator<Item = Pending>, error: &LogError) {
    for p in items {
        let _ = p.ack.send(Err(error.clone()));
    }
}

impl Writer {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.commit(batch);
        }
        if self.dirty
            && let Err(e) = self.active.file.sync_data()
        {
            tracing::error!(error = %e, path = %self.active.path.display(), "final sync failed");
        }
        self.deregister();
        let _ = self.done.send(true);
    }

    fn idle_timeout(&self) -> Duration {
        match self.config.durability {
            Durability::Interval(d) => d.min(self.config.poll_interval),
            _ => self.config.poll_interval,
        }
    }

    /// Waits for appends and takes every queued one; `None` once the writer must stop.
    fn next_batch(&mut self) -> Option<Batch> {
        let queue = self.queue.clone();
        let idle = self.idle_timeout();
        let mut state = queue.state.lock();
        loop {
            if let Some(error) = Queue::refusal(&state) {
                let rest = std::mem::take(&mut state.items);
                state.frames.clear();
                drop(state);
                fail(rest, &error);
                return None;
            }
            if !state.items.is_empty() {
                break;
            }
            state.wake_at = 1;
            let timed_out = queue.wake.wait_for(&mut state, idle).timed_out();
            state.wake_at = usize::MAX;
            if timed_out && state.items.is_empty() && Queue::refusal(&state).is_none() {
                MutexGuard::unlocked(&mut state, || self.idle_tick());
            }
        }
        self.gather(&queue, &mut state);
        let spare = self.spare.take().unwrap_or(Batch {
            items: Vec::new(),
            frames: Vec::new(),
        });
        Some(Batch {
            items: std::mem::replace(&mut state.items, spare.items),
            frames: std::mem::replace(&mut state.frames, spare.frames),
        })
    }

    /// The adaptive part of group commit (see the module docs).
    fn gather(&self, queue: &Queue, state: &mut MutexGuard<'_, QueueState>) {
        let target = self.prev_batch;
        if target <= 1 || state.items.len() >= target {
            return;
        }
        let budget = self.config.group_commit_max_wait.min(self.last_fsync);
        let deadline = self.last_commit + budget;
        if Instant::now() >= deadline {
            return;
        }
        state.wake_at = target;
        while state.items.len() < target && Queue::refusal(state).is_none() {
            if queue.wake.wait_until(state, deadline).timed_out() {
                break;
            }
        }
        state.wake_at = usize::MAX;
    }

    fn commit(&mut self, mut batch: Batch) {
        let n = batch.items.len();
        let result = match self.claim.lock() {
            Ok(()) => {
                let r = self.write_locked(&batch);
                self.claim.unlock();
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(first) => {
                self.shared.publish(self.active.next_lsn);
                for (i, p) in batch.items.drain(..).enumerate() {
                    let _ = p.ack.send(Ok(MessageId::from_parts(0, first + i as u64)));
                }
            }
            Err(e) => {
                if e.is_fenced() {
                    self.fence(e.clone());
                }
                fail(batch.items.drain(..), &e);
            }
        }
        batch.frames.clear();
        self.spare = Some(batch);
        self.prev_batch = n;
        self.last_commit = Instant::now();
    }

    /// Fails with `Fenced` unless this handle's claim still stands (see `claims.rs`).
    fn check_claim(&self) -> Result<(), LogError> {
        if self.claim.held()? {
            Ok(())
        } else {
            Err(fenced_error(&self.shared.path, &self.pchannel, self.term))
        }
    }

    fn fence(&mut self, error: LogError) {
        tracing::warn!(pchannel = %self.pchannel, term = %self.term, %error, "local log writer fenced");
        self.queue.stop(Some(error));
        self.deregister();
    }

    fn deregister(&mut self) {
        if self.registered {
            self.registered = false;
            self.shared.deregister_writer();
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> LogError {
        LogError::io(format!("{what} {}", self.active.path.display()), e)
    }

    /// Writes one batch. Runs under the term's lock.
    fn write_locked(&mut self, batch: &Batch) -> Result<u64, LogError> {
        self.check_claim()?;
        #[cfg(feature = "testkit")]
        pause_before_write();
        if self.written_by_other()? {
            // Another handle at this term wrote since our last batch.
            self.resync()?;
        }
        let first = self.active.next_lsn;
        let interval = self.config.index_interval;
        let mut index = Vec::new();
        let mut last_indexed = self.active.last_indexed;
        let mut offset = self.active.offset;
        for (i, p) in batch.items.iter().enumerate() {
            if offset >= last_indexed.saturating_add(interval) {
                index.push((first + i as u64, offset));
                last_indexed = offset;
            }
            offset += p.len as u64;
        }
        let added = batch.frames.len() as u64;
        if let Err(e) = self.write_and_sync(&batch.frames) {
            // Leave no record behind that a reader could see but nobody acknowledged — unless a
            // newer term took over, which may have sealed the segment after these records.
            if self.claim.held().unwrap_or(false)
                && let Err(undo) = self.active.file.set_len(self.active.offset)
            {
                tracing::error!(error = %undo, path = %self.active.path.display(), "could not remove a failed batch");
            }
            self.active.zeroed_end = self.active.offset;
            return Err(e);
        }
        // Acknowledged only if this term still owned the log once the batch was durable: then
        // a newer term's recovery, which starts after it removed this claim, reads the batch.
        // Otherwise the batch stays unacknowledged where it is (never cut: the newer term may
        // have sealed the segment after it).
        self.check_claim()?;
        self.active.offset += added;
        self.active.next_lsn += batch.items.len() as u64;
        self.active.last_indexed = last_indexed;
        self.shared.merge_index(self.active.base, &index);
        if self.active.offset >= self.config.segment_size
            && self.active.next_lsn > self.active.base
            && let Err(e) = self.roll()
        {
            tracing::warn!(error = %e, pchannel = %self.pchannel, "segment roll failed; will retry");
        }
        Ok(first)
    }

    /// Whether the active segment holds something at our end of the data: a frame header that
    /// is not all zeros (the runway), or a file shorter than our end.
    fn written_by_other(&self) -> Result<bool, LogError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let n = read_full_at(&self.active.file, &mut header, self.active.offset)
            .map_err(|e| self.io("read", e))?;
        if n > 0 {
            return Ok(header[..n].iter().any(|&b| b != 0));
        }
        let len = self
            .active
            .file
            .metadata()
            .map_err(|e| self.io("stat", e))?
            .len();
        Ok(len != self.active.offset)
    }

    /// Writes the batch at the end of the data and, when it ends past the zeroed runway,
    /// zeros beyond it (see the module docs); syncs as the durability asks.
    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), LogError> {
        self.active
            .file
            .write_all_at(buf, self.active.offset)
            .map_err(|e| self.io("write", e))?;
        let end = self.active.offset + buf.len() as u64;
        let runway = self.config.runway.min(self.config.segment_size);
        // Not when the segment is about to be sealed (it is cut at `end` then).
        if runway > 0
            && end > self.active.zeroed_end
            && end < self.config.segment_size
            && let Err(e) = self.write_zeros(end, end + runway)
        {
            // Only a cost, not a failure: go on without a runway (and leave none half written).
            tracing::debug!(error = %e, "could not extend the zero runway");
            if let Err(e) = self.active.file.set_len(end) {
                return Err(self.io("truncate", e));
            }
            self.active.zeroed_end = end;
        }
        self.active.zeroed_end = self.active.zeroed_end.max(end);
        match self.config.durability {
            Durability::Fsync => {
                let start = Instant::now();
                self.active
                    .file
                    .sync_data()
                    .map_err(|e| self.io("sync", e))?;
                self.last_fsync = start.elapsed();
                self.last_sync = Instant::now();
            }
            Durability::Interval(d) => {
                self.dirty = true;
                if self.last_sync.elapsed() >= d {
                    self.sync_now()?;
                }
            }
            Durability::None => {}
        }
        Ok(())
    }

    /// Writes zeros over `[from, to)` of the active segment and records them as runway.
    fn write_zeros(&mut self, from: u64, to: u64) -> Result<(), LogError> {
        const ZEROS_CHUNK: u64 = 1 << 20;
        if to <= from {
            return Ok(());
        }
        let chunk = (to - from).min(ZEROS_CHUNK) as usize;
        if self.zeros.len() < chunk {
            self.zeros = vec![0u8; chunk];
        }
        let mut at = from;
        while at < to {
            let n = (to - at).min(self.zeros.len() as u64) as usize;
            if let Err(e) = self.active.file.write_all_at(&self.zeros[..n], at) {
                return Err(self.io("write zeros to", e));
            }
            at += n as u64;
        }
        self.active.zeroed_end = to;
        Ok(())
    }

    fn sync_now(&mut self) -> Result<(), LogError> {
        self.active
            .file
            .sync_data()
            .map_err(|e| self.io("sync", e))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the active segment and starts the next one. Runs under the term's lock.
    fn roll(&mut self) -> Result<(), LogError> {
        // A fenced writer creates no segment (if it is fenced right after this, its segment is
        // dead: see "The chain of segments" in `segment.rs`).
        self.check_claim()?;
        // Cut the runway off and make that durable before the next segment exists, so a sealed
        // segment never ends in zeros.
        let size = self
            .active
            .file
            .metadata()
            .map_err(|e| self.io("stat", e))?
            .len();
        if size > self.active.offset {
            self.active
                .file
                .set_len(self.active.offset)
                .map_err(|e| self.io("cut the runway of", e))?;
            self.active.zeroed_end = self.active.offset;
            self.dirty = true;
        }
        if self.dirty {
            self.sync_now()?;
        }
        let base = self.active.next_lsn;
        let sealed = ScannedSegment {
            base: self.active.base,
            path: self.active.path.clone(),
            end_offset: self.active.offset,
            next_lsn: self.active.next_lsn,
            index: self.shared.index_entries(self.active.base),
        };
        let seg = match create_segment(&self.shared.path, base, self.term) {
            Ok(seg) => seg,
            Err(LogError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                // Someone else at this term rolled first; follow the files.
                return self.resync();
            }
            Err(e) => return Err(e),
        };
        self.active = Active::open(&seg, &self.config)?;
        self.shared.replace_index(base, Vec::new());
        self.shared.set_active(self.term, &self.active.path);
        // Once the next segment exists the sealed one is final: record it for the next open.
        super::sidecar::write(&sealed);
        tracing::debug!(pchannel = %self.pchannel, base, "rolled to a new segment");
        Ok(())
    }

    /// Re-reads the tail of the log (from the active segment on) after another handle at the
    /// same term wrote to it. Runs under the term's lock.
    fn resync(&mut self) -> Result<(), LogError> {
        // What another handle of this term wrote counts as committed below only while the term
        // still owns the log.
        self.check_claim()?;
        let segments: Vec<_> = list_segments(&self.shared.path)?
            .into_iter()
            .filter(|s| s.base >= self.active.base)
            .collect();
        if segments.first().map(|s| s.base) != Some(self.active.base) {
            return Err(LogError::Corrupted {
                location: format!("{}:0", self.active.path.display()),
                reason: "the active segment disappeared".into(),
            });
        }
        let scanned = recover(
            &segments,
            RecoveryMode::ReadWrite(self.term),
            self.config.index_interval,
            None,
        )?;
        for s in &scanned {
            self.shared.replace_index(s.base, s.index.clone());
        }
        let Some(newest) = scanned.last() else {
            return Err(LogError::Unavailable("resync found no segment".into()));
        };
        if segments.last().is_some_and(|s| s.term != Some(self.term.0)) {
            // A newer term's segment: this term is fenced.
            return Err(fenced_error(&self.shared.path, &self.pchannel, self.term));
        }
        self.active = Active::open(newest, &self.config)?;
        self.shared.set_active(self.term, &self.active.path);
        tracing::info!(
            pchannel = %self.pchannel,
            next_lsn = self.active.next_lsn,
            "resynced with records written by another handle"
        );
        // Whoever wrote them held the lock through their sync and their claim check.
        self.shared.publish(self.active.next_lsn);
        Ok(())
    }

    /// Housekeeping while no append arrives: interval syncs, noticing a fence or another
    /// writer's records so in-process readers are not held back by a stale limit.
    fn idle_tick(&mut self) {
        if self.dirty
            && let Durability::Interval(d) = self.config.durability
            && self.last_sync.elapsed() >= d
            && let Err(e) = self.sync_now()
        {
            tracing::error!(error = %e, "interval sync failed");
        }
        match self.check_claim() {
            Err(e) if e.is_fenced() => {
                self.fence(e);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "checking the term claim failed"),
            Ok(()) => {}
        }
        let grown = self.written_by_other().unwrap_or(false);
        if grown {
            let r = self.claim.lock().and_then(|()| {
                let r = self.resync();
                self.claim.unlock();
                r
            });
            match r {
                Err(e) if e.is_fenced() => self.fence(e),
                Err(e) => tracing::warn!(error = %e, "idle resync failed"),
                Ok(()) => {}
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.deregister();
    }
}
