//! Scanners: ordered, filtered reads of one WAL.
//!
//! A scanner delivers the messages of one pchannel (optionally one vchannel): data messages
//! with strictly increasing timestamps, timeticks interleaved (never below what preceded them;
//! a timetick may equal the newest message it covers), and each committed transaction as one
//! [`ReadMessage::Txn`] at its commit's timestamp.
//!
//! ```text
//!  log ─(catch-up)─┐                  ┌─────────── consumer side (pipeline.rs) ───────────┐
//!                  ├─▶ Source ──────▶ │ filters → reorder buffer ─(timetick)─▶ txn buffer │
//!  WAB ─(tailing)──┘   (source.rs)    └─────────────────────────┬─────────────────────────┘
//!                  Scanner::next ◀── pending (≤ pending_limit) ─┘
//! ```
//!
//! One task per scanner runs both sides; it reads upstream only while fewer than
//! `pending_limit` messages wait for the consumer and nothing released is still being moved,
//! so a slow consumer never grows memory. The task belongs to the [`Scanner`]: dropping the
//! scanner cancels it, and with it the log reader or buffer cursor it holds.

mod filter;
mod pipeline;
mod reorder;
mod source;
mod txn_buffer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use parking_lot::Mutex;
use sluice_log::{DEFAULT_READ_AHEAD, DeliverPolicy, LogHandle};
use sluice_types::{ConsumeOptions, VChannel};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use pipeline::PipelineCounters;
pub use sluice_types::read::{MessageFilter, ReadMessage};
pub use source::{ScannerMode, SourceCounters};
pub use txn_buffer::{DEFAULT_TXN_KEEPALIVE, TxnCounters};

use crate::error::WalError;
use crate::wab::WriteAheadBuffer;
use filter::Filters;
use pipeline::Pipeline;
use source::Source;

/// Messages a scanner holds for a slow consumer before it stops reading upstream (the
/// reference's fixed 16).
pub const DEFAULT_PENDING_LIMIT: usize = 16;

/// What and how to read.
#[derive(Clone, Debug)]
pub struct ScannerOptions {
    /// Only this vchannel (messages addressed to every vchannel, such as timeticks, pass);
    /// `None` = the whole pchannel. Default `None`.
    pub vchannel: Option<VChannel>,
    /// Where catch-up starts reading the log. Default [`DeliverPolicy::All`].
    pub policy: DeliverPolicy,
    /// Conditions every delivered message meets (AND). Default none.
    pub filters: Vec<MessageFilter>,
    /// Messages waiting for the consumer before upstream reading pauses (0 is taken as 1).
    /// Default 16.
    pub pending_limit: usize,
    /// Records the log reader buffers ahead (0 = the log's default). Default 128.
    pub read_ahead: usize,
}

impl Default for ScannerOptions {
    fn default() -> Self {
        ScannerOptions {
            vchannel: None,
            policy: DeliverPolicy::All,
            filters: Vec::new(),
            pending_limit: DEFAULT_PENDING_LIMIT,
            read_ahead: DEFAULT_READ_AHEAD,
        }
    }
}

impl ScannerOptions {
    /// Default tuning for what a consumer asked for.
    pub fn from_consume(options: ConsumeOptions) -> ScannerOptions {
        ScannerOptions {
            vchannel: options.vchannel,
            policy: options.policy,
            filters: options.filters,
            ..ScannerOptions::default()
        }
    }

    /// Default options starting at `policy`.
    pub fn new(policy: DeliverPolicy) -> ScannerOptions {
        ScannerOptions {
            policy,
            ..ScannerOptions::default()
        }
    }
}

/// A point-in-time view of a scanner, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScannerStats {
    /// Which upstream is being read.
    pub mode: ScannerMode,
    /// Producer-side counters.
    pub source: SourceCounters,
    /// Consumer-side counters.
    pub pipeline: PipelineCounters,
    /// Messages waiting for the consumer now.
    pub pending: usize,
    /// Messages in the reorder buffer now.
    pub reorder: usize,
    /// Transactions being assembled now.
    pub open_txns: usize,
    /// Whether the scanner's task has ended.
    pub finished: bool,
}

/// An ordered read of one WAL. A [`Stream`] of `Result<ReadMessage, WalError>`: it ends after
/// one `Err` (terminal) or when dropped. Dropping it stops its task and everything the task
/// holds.
pub struct Scanner {
    rx: mpsc::Receiver<Batch>,
    /// The rest of the batch taken last.
    ready: VecDeque<Result<ReadMessage, WalError>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    stats: Arc<Mutex<ScannerStats>>,
    /// The timestamp of the newest message (timeticks included) the consumer has taken.
    delivered: Arc<AtomicU64>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Scanner {
    /// The next message; `None` once the scanner has ended (after its one terminal error).
    pub async fn next(&mut self) -> Option<Result<ReadMessage, WalError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ReadMessage, WalError>>> {
        while self.ready.is_empty() {
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(batch) => self.ready.extend(batch),
                None => return Poll::Ready(None),
            }
        }
        let item = self.ready.pop_front();
        if let Some(ts) = item
            .as_ref()
            .and_then(|r| r.as_ref().ok())
            .and_then(ReadMessage::timestamp)
        {
            self.delivered.fetch_max(ts.0, Ordering::Relaxed);
        }
        Poll::Ready(item)
    }

    /// The timestamp of the newest message the consumer has taken (0 before the first), for as
    /// long as the scanner lives (a WAL reports how far its readers lag).
    pub(crate) fn progress(&self) -> Weak<AtomicU64> {
        Arc::downgrade(&self.delivered)
    }

    /// A point-in-time view.
    pub fn stats(&self) -> ScannerStats {
        *self.stats.lock()
    }

    /// Stops the scanner and waits until its task has ended.
    pub async fn close(self) {
        let tasks = self.tasks.clone();
        drop(self);
        tasks.wait().await;
    }

    #[cfg(test)]
    pub(crate) fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tasks.close();
    }
}

impl Stream for Scanner {
    type Item = Result<ReadMessage, WalError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// Starts a scanner of `log` (and `wab`, when the WAL is read-write) with `options`.
///
/// `on_new_reader` is called once, right after the first log reader opens; an RW WAL uses it to
/// force a persisted timetick so catch-up soon finds a point to switch to the write-ahead buffer.
/// It must not block. Fails with [`WalError::InvalidArgument`] for a type filter naming a system
/// type, or when called outside a Tokio runtime.
pub fn start_scanner(
    log: Arc<dyn LogHandle>,
    wab: Option<Arc<WriteAheadBuffer>>,
    options: ScannerOptions,
    on_new_reader: Option<Arc<dyn Fn() + Send + Sync>>,
) -> Result<Scanner, WalError> {
    let filters = Filters::new(&options.filters)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        WalError::InvalidArgument("a scanner must be started within a Tokio runtime".into())
    })?;
    let pipeline = Pipeline::new(filters, options.vchannel.clone(), options.pending_limit);
    let source = Source::new(log, wab, options.policy, options.read_ahead, on_new_reader);
    let (tx, rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let stats = Arc::new(Mutex::new(ScannerStats::default()));
    tasks.spawn_on(
        run(source, pipeline, tx, cancel.clone(), stats.clone()),
        &runtime,
    );
    tasks.close();
    Ok(Scanner {
        rx,
        ready: VecDeque::new(),
        cancel,
        tasks,
        stats,
        delivered: Arc::default(),
    })
}

fn publish(stats: &Mutex<ScannerStats>, source: &Source, pipeline: &Pipeline, finished: bool) {
    *stats.lock() = ScannerStats {
        mode: source.mode(),
        source: source.counters(),
        pipeline: pipeline.counters(),
        pending: pipeline.pending_len(),
        reorder: pipeline.reorder_len(),
        open_txns: pipeline.open_txns(),
        finished,
    };
}

/// What the scanner's task hands to the consumer at once: messages in order, at most one error
/// (last). Batches let one wake-up of each side move many messages.
type Batch = Vec<Result<ReadMessage, WalError>>;

/// The scanner's task: reads upstream while the pipeline wants input, hands pending messages to
/// the consumer, and on a terminal error delivers what is pending and then the error.
///
/// Upstream is drained of whatever is ready before the task waits, and the consumer gets all
/// pending messages as one batch; with the one-batch channel and the consumer's current batch,
/// at most three times `pending_limit` messages are held for a slow consumer.
async fn run(
    mut source: Source,
    mut pipeline: Pipeline,
    tx: mpsc::Sender<Batch>,
    cancel: CancellationToken,
    stats: Arc<Mutex<ScannerStats>>,
) {
    let error = loop {
        pipeline.pump();
        if let Some(e) = read_ready(&mut source, &mut pipeline) {
            break Some(e);
        }
        publish(&stats, &source, &pipeline, false);
        let can_read = pipeline.wants_input();
        let has_pending = pipeline.has_pending();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break None,
            permit = tx.reserve(), if has_pending => match permit {
                Ok(permit) => permit.send(pipeline.take_pending().map(Ok).collect()),
                Err(_) => break None,
            },
            next = source.next(), if can_read => match next {
                Ok(msg) => pipeline.ingest(msg),
                Err(e) => break Some(e),
            },
        }
    };
    if let Some(error) = error {
        deliver_then_fail(&mut pipeline, &tx, &cancel, error).await;
    }
    publish(&stats, &source, &pipeline, true);
}

/// Moves what upstream has ready into the pipeline, as far as it wants input. A terminal error
/// is returned.
fn read_ready(source: &mut Source, pipeline: &mut Pipeline) -> Option<WalError> {
    while pipeline.wants_input() {
        match source.try_next()? {
            Ok(msg) => {
                pipeline.ingest(msg);
                pipeline.pump();
            }
            Err(e) => return Some(e),
        }
    }
    None
}

async fn deliver_then_fail(
    pipeline: &mut Pipeline,
    tx: &mpsc::Sender<Batch>,
    cancel: &CancellationToken,
    error: WalError,
) {
    loop {
        pipeline.pump();
        let mut batch: Batch = pipeline.take_pending().map(Ok).collect();
        let last = batch.is_empty();
        if last {
            batch.push(Err(error.clone()));
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            sent = tx.send(batch) => if sent.is_err() { return },
        }
        if last {
            return;
        }
    }
}
