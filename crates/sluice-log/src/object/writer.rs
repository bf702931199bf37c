//! The writer of one segment: group commit into blocks, concurrent uploads, in-order acks.
//!
//! ```text
//!  enqueue ─▶ encode ─▶ pending-bytes permit (back-pressure) ─▶ open block (id assigned here)
//!                                                                 │ sealed at block_size, or
//!                                                                 │ when an upload slot is free:
//!                                                                 │ at once if none is running,
//!                                                                 ▼ else after flush_interval
//!  flusher task ─▶ up to max_inflight conditional-create uploads ─▶ acks in block order
//! ```
//!
//! An upload that meets an existing object at its index was fenced unless the object is the same
//! block from an earlier attempt (same writer nonce). After a failed block nothing later is
//! acknowledged: the handle fails every pending and future append with the same error.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use parking_lot::Mutex;
use sluice_types::{MessageId, MutableMessage, Term};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::block::{BlockKind, encode_data, encode_record};
use super::layout::{BLOCK_LIMIT, MAX_ENTRIES, SegmentId, pack};
use super::store::{Channel, Created, Fetched, store_error, with_retry};
use crate::{AppendFuture, LogError};

type Waiter = oneshot::Sender<Result<MessageId, LogError>>;

/// Writer settings (from the backend config).
#[derive(Clone, Copy, Debug)]
pub(super) struct WriterSettings {
    /// Seal a block at this many body bytes.
    pub block_size: usize,
    /// Seal a non-empty block this long after its first record.
    pub flush_interval: Duration,
    /// Uploads in flight at once.
    pub max_inflight: usize,
    /// Encoded bytes accepted but not yet acknowledged before `enqueue` waits.
    pub max_pending_bytes: usize,
}

struct OpenBlock {
    index: u64,
    body: Vec<u8>,
    waiters: Vec<Waiter>,
    permits: Option<OwnedSemaphorePermit>,
    first_at: Option<Instant>,
}

struct Sealed {
    index: u64,
    data: bytes::Bytes,
    waiters: Vec<Waiter>,
    permits: Option<OwnedSemaphorePermit>,
}

struct State {
    open: OpenBlock,
    sealed: VecDeque<Sealed>,
    /// Set once the writer can never append again (fenced, failed, closed).
    failed: Option<LogError>,
}

/// The shared part of a segment writer.
pub(super) struct Writer {
    channel: Channel,
    segment: SegmentId,
    term: Term,
    nonce: u64,
    settings: WriterSettings,
    state: Mutex<State>,
    wake: Notify,
    budget: Arc<Semaphore>,
    /// The index of the next block to be acknowledged (every block below is durable).
    acked: watch::Sender<u64>,
}

impl Writer {
    /// A writer appending to the (freshly claimed, empty) `segment`.
    pub(super) fn new(
        channel: Channel,
        segment: SegmentId,
        term: Term,
        settings: WriterSettings,
    ) -> Writer {
        Writer {
            channel,
            segment,
            term,
            nonce: rand::random::<u64>() | 1,
            settings,
            state: Mutex::new(State {
                open: OpenBlock {
                    index: 0,
                    body: Vec::new(),
                    waiters: Vec::new(),
                    permits: None,
                    first_at: None,
                },
                sealed: VecDeque::new(),
                failed: None,
            }),
            wake: Notify::new(),
            budget: Arc::new(Semaphore::new(settings.max_pending_bytes)),
            acked: watch::Sender::new(0),
        }
    }

    /// The segment written.
    pub(super) fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Watches the next block index to be acknowledged.
    pub(super) fn acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// The error every append gets from now on, if the writer stopped.
    pub(super) fn failure(&self) -> Option<LogError> {
        self.state.lock().failed.clone()
    }

    /// Stops the writer with `err` (if not stopped already) and fails everything pending.
    pub(super) fn fail(&self, err: LogError) {
        let (open, sealed) = {
            let mut st = self.state.lock();
            if st.failed.is_none() {
                st.failed = Some(err);
            }
            let open = std::mem::take(&mut st.open.waiters);
            st.open.body.clear();
            st.open.permits = None;
            st.open.first_at = None;
            (open, std::mem::take(&mut st.sealed))
        };
        let err = self.failure().unwrap_or(LogError::Closed);
        for w in open
            .into_iter()
            .chain(sealed.into_iter().flat_map(|s| s.waiters))
        {
            let _ = w.send(Err(err.clone()));
        }
        self.wake.notify_one();
    }

    /// Accepts one record (see [`crate::LogHandle::enqueue`]).
    pub(super) async fn enqueue(
        &self,
        message: MutableMessage,
        cancel: &CancellationToken,
    ) -> Result<AppendFuture, LogError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let mut record = Vec::new();
        encode_record(&message.into_message(), &mut record)?;
        if record.len() > self.settings.max_pending_bytes {
            return Err(LogError::InvalidArgument(format!(
                "record of {} bytes exceeds the pending-bytes limit {}",
                record.len(),
                self.settings.max_pending_bytes
            )));
        }
        let permit = tokio::select! {
            p = self.budget.clone().acquire_many_owned(record.len() as u32) => {
                p.map_err(|_| LogError::Closed)?
            }
            _ = cancel.cancelled() => return Err(LogError::Closed),
        };
        let (tx, fut) = AppendFuture::pending();
        let wake = {
            let mut st = self.state.lock();
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            let full = |o: &OpenBlock| {
                o.waiters.len() as u32 >= MAX_ENTRIES
                    || (!o.body.is_empty()
                        && o.body.len() + record.len() > self.settings.block_size)
            };
            let mut wake = false;
            if full(&st.open) {
                wake |= seal_open(&mut st, self)?;
            }
            // The record's id is fixed here: (segment, open block, entry = its place in the block).
            let o = &mut st.open;
            o.body.extend_from_slice(&record);
            o.waiters.push(tx);
            match &mut o.permits {
                Some(p) => p.merge(permit),
                None => o.permits = Some(permit),
            }
            if o.first_at.is_none() {
                o.first_at = Some(Instant::now());
                wake = true;
            }
            if o.body.len() >= self.settings.block_size {
                wake |= seal_open(&mut st, self)?;
            }
            wake
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(fut)
    }

    /// Runs the flusher until `cancel` fires or the writer fails.
    pub(super) async fn run_flusher(self: Arc<Self>, cancel: CancellationToken) {
        // Uploads run concurrently; `waiting` holds their waiters in the same (block) order, so
        // results are taken, and acknowledged, in order.
        let mut inflight: FuturesOrdered<BoxFuture<'static, Result<(), LogError>>> =
            FuturesOrdered::new();
        let mut waiting: VecDeque<(u64, Vec<Waiter>, Option<OwnedSemaphorePermit>)> =
            VecDeque::new();
        let mut stop = LogError::Closed;
        loop {
            let deadline = {
                let mut st = self.state.lock();
                if let Some(e) = &st.failed {
                    stop = e.clone();
                    break;
                }
                // Size seals happen in `enqueue`. Otherwise the open block is sealed only when an
                // upload slot is free (while all are busy it keeps gathering records), and then at
                // once if nothing is uploading (nothing to batch behind), else once its first
                // record has waited `flush_interval`.
                let mut deadline = None;
                let mut seal_error = None;
                loop {
                    while inflight.len() < self.settings.max_inflight
                        && let Some(block) = st.sealed.pop_front()
                    {
                        let me = self.clone();
                        let (index, data) = (block.index, block.data);
                        inflight.push_back(Box::pin(async move { me.upload(index, data).await }));
                        waiting.push_back((index, block.waiters, block.permits));
                    }
                    let Some(first) = st.open.first_at else { break };
                    if inflight.len() >= self.settings.max_inflight {
                        break;
                    }
                    let due = first + self.settings.flush_interval;
                    if !inflight.is_empty() && due > Instant::now() {
                        deadline = Some(due);
                        break;
                    }
                    if let Err(e) = seal_open(&mut st, &self) {
                        seal_error = Some(e);
                        break;
                    }
                }
                if let Some(e) = seal_error {
                    stop = e;
                    break;
                }
                deadline
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(result) = inflight.next(), if !inflight.is_empty() => {
                    let Some((index, waiters, _permits)) = waiting.pop_front() else { break };
                    match result {
                        Ok(()) => {
                            for (entry, w) in waiters.into_iter().enumerate() {
                                let _ = w.send(Ok(pack(self.segment, index, entry as u32)));
                            }
                            self.acked.send_replace(index + 1);
                        }
                        Err(e) => {
                            tracing::warn!(pchannel = %self.channel.pchannel, term = self.term.0,
                                block = index, error = %e, "block upload failed; writer stops");
                            for w in waiters {
                                let _ = w.send(Err(e.clone()));
                            }
                            stop = e;
                            break;
                        }
                    }
                }
                _ = self.wake.notified() => {}
                _ = sleep_until_opt(deadline) => {}
            }
        }
        // Uploads still running are abandoned: nothing after a failed or unfinished block is
        // acknowledged.
        drop(inflight);
        self.fail(stop.clone());
        let err = self.failure().unwrap_or(stop);
        for (_, waiters, _) in waiting {
            for w in waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
    }

    /// Uploads one block with conditional create, retrying transient errors.
    async fn upload(&self, index: u64, data: bytes::Bytes) -> Result<(), LogError> {
        let path = self.channel.layout.block(self.segment, index);
        let created = with_retry(self.channel.retry_timeout, || {
            self.channel.create_once(&path, data.clone())
        })
        .await?;
        if let Created::Created = created {
            return Ok(());
        }
        // Something is at our index: a fence, or this very block from an attempt whose response
        // was lost.
        match self.channel.fetch(self.segment, index).await? {
            Fetched::Block(b) => match b.kind {
                BlockKind::Data { nonce } if nonce == self.nonce => Ok(()),
                BlockKind::Fence { by } => Err(self.channel.fenced(self.term, by.term())),
                BlockKind::Data { .. } => Err(LogError::Corrupted {
                    location: path.to_string(),
                    reason: "another writer's block in this writer's segment".into(),
                }),
            },
            Fetched::Missing => Err(store_error(
                "create",
                &path,
                object_store::Error::Generic {
                    store: "sluice",
                    source: "create reported an existing object that is gone".into(),
                },
            )),
        }
    }
}

/// Seals the open block into the upload queue. Returns whether the flusher must wake.
fn seal_open(st: &mut State, w: &Writer) -> Result<bool, LogError> {
    if st.open.waiters.is_empty() {
        return Ok(false);
    }
    let index = st.open.index;
    if index + 1 >= BLOCK_LIMIT {
        return Err(LogError::Unavailable(
            "segment is out of block indexes; reopen the pchannel".into(),
        ));
    }
    let body = std::mem::take(&mut st.open.body);
    let waiters = std::mem::take(&mut st.open.waiters);
    let data = encode_data(w.segment, index, w.nonce, waiters.len() as u32, &body);
    st.sealed.push_back(Sealed {
        index,
        data,
        waiters,
        permits: st.open.permits.take(),
    });
    st.open.index = index + 1;
    st.open.first_at = None;
    Ok(true)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
