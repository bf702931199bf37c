//! The log backend contract and its backends.
//!
//! A WAL runs on top of a *log*: an ordered, durable sequence of records for one pchannel. This
//! crate defines what every backend must do and ships the `memory` and `local` backends. The
//! conformance suite (feature `testkit`, module [`testkit`]) runs the whole contract against any
//! backend with one macro line.
//!
//! # Shape
//!
//! ```text
//!  LogConfig ──build_provider()──▶ LogProvider ──open(pchannel, term, mode)──▶ LogHandle
//!                                   (one per process   (one per opened pchannel:
//!                                    and backend)        append / read / truncate / close)
//! ```
//!
//! # The contract
//!
//! Ids: every record gets a [`MessageId`] that is strictly greater than every id the log handed
//! out before it on that pchannel (across terms and reopens). Reads deliver records in id order.
//!
//! ```text
//!   ids:   a1 < a2 < a3 < b1 < b2 ...        (a* written at term 1, b* at term 2)
//!   read(All)            → a1 a2 a3 b1 b2 ... (oldest retained first)
//!   read(StartFrom(a2))  → a2 a3 b1 ...
//!   read(StartAfter(a2)) → a3 b1 ...
//!   read(Latest)         → only records appended after the read started
//!   truncate(a2)         → a1, a2 may disappear; a3 onwards must stay
//! ```
//!
//! A [`LogHandle`] implementation:
//! * MUST make `append` safe to call from many tasks at once, and MUST apply back-pressure: the
//!   first await ([`LogHandle::enqueue`]) returns only once the backend has room for the record;
//!   the returned [`AppendFuture`] resolves with the id only once the record is durable at the
//!   backend's durability level. Acceptance and durability are separate so callers can pipeline.
//!   Records enqueued one after another (each `enqueue` returned before the next began) get
//!   increasing ids.
//! * MUST NOT acknowledge a record that a later read, from any handle or process, could miss.
//! * MUST fence: once a handle at term `T` has opened a pchannel read-write, every append through
//!   a handle at a term `< T` fails with [`LogError::Fenced`], and every record that such a handle
//!   *did* acknowledge is still delivered by later reads. Opening read-write at a term lower than
//!   one that already opened fails with [`LogError::Fenced`]. A fenced handle stays fenced.
//! * MUST return [`LogError::ReadOnly`] (never panic) for `append`/`truncate` on a read-only
//!   handle.
//! * MUST bound read-ahead: a reader holds at most [`ReadOptions::read_ahead`] records that the
//!   consumer has not taken. Dropping a [`LogStream`] releases everything it holds, promptly, even
//!   while it waits for new records.
//! * MUST NOT panic on anything read from storage; damaged data is [`LogError::Corrupted`] or
//!   [`LogError::Codec`].
//! * MUST stop every task it started when [`LogHandle::close`] returns.

pub mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod local;
pub mod memory;
#[cfg(feature = "object")]
pub mod object;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use sluice_types::{ImmutableMessage, MessageId, MutableMessage, PChannel, Term};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::DropGuard;

pub use error::LogError;

/// Records a reader buffers ahead of its consumer when [`ReadOptions::read_ahead`] is 0.
pub const DEFAULT_READ_AHEAD: usize = 128;

/// How a handle may use the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Read only: no fencing, no appends.
    ReadOnly,
    /// Read and write: opening fences every lower term.
    ReadWrite,
}

/// What to open.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The pchannel.
    pub pchannel: PChannel,
    /// The caller's ownership term.
    pub term: Term,
    /// Read only or read-write.
    pub mode: AccessMode,
}

impl OpenOptions {
    /// Read-write at `term`.
    pub fn read_write(pchannel: PChannel, term: Term) -> OpenOptions {
        OpenOptions {
            pchannel,
            term,
            mode: AccessMode::ReadWrite,
        }
    }

    /// Read only at `term`.
    pub fn read_only(pchannel: PChannel, term: Term) -> OpenOptions {
        OpenOptions {
            pchannel,
            term,
            mode: AccessMode::ReadOnly,
        }
    }
}

pub use sluice_types::read::DeliverPolicy;

/// How to read.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Where to start.
    pub policy: DeliverPolicy,
    /// Records buffered ahead of the consumer (0 = [`DEFAULT_READ_AHEAD`]).
    pub read_ahead: usize,
}

impl ReadOptions {
    /// Read with `policy` and the default read-ahead.
    pub fn new(policy: DeliverPolicy) -> ReadOptions {
        ReadOptions {
            policy,
            read_ahead: 0,
        }
    }

    /// The effective read-ahead.
    pub fn effective_read_ahead(&self) -> usize {
        if self.read_ahead == 0 {
            DEFAULT_READ_AHEAD
        } else {
            self.read_ahead
        }
    }
}

/// Opens logs of one backend. One provider serves many pchannels.
#[async_trait]
pub trait LogProvider: Send + Sync + 'static {
    /// The backend's name (`memory`, `local`, ...).
    fn backend(&self) -> &'static str;

    /// Opens one pchannel's log. Read-write opens fence every lower term (see the crate docs).
    async fn open(&self, options: OpenOptions) -> Result<Arc<dyn LogHandle>, LogError>;
}

/// One opened pchannel log. See the crate docs for what an implementation MUST do.
#[async_trait]
pub trait LogHandle: Send + Sync + 'static {
    /// The pchannel.
    fn pchannel(&self) -> &PChannel;

    /// The term the handle was opened at.
    fn term(&self) -> Term;

    /// Read only or read-write.
    fn mode(&self) -> AccessMode;

    /// Accepts a record once the backend has room for it (back-pressure); the returned future
    /// resolves with its id once it is durable.
    async fn enqueue(&self, message: MutableMessage) -> Result<AppendFuture, LogError>;

    /// Appends a record and waits until it is durable.
    async fn append(&self, message: MutableMessage) -> Result<MessageId, LogError> {
        self.enqueue(message).await?.await
    }

    /// Reads records in id order.
    async fn read(&self, options: ReadOptions) -> Result<LogStream, LogError>;

    /// Allows every record up to and including `up_to` to be discarded.
    async fn truncate(&self, up_to: MessageId) -> Result<(), LogError>;

    /// Stops accepting appends, fails the ones not yet durable with [`LogError::Closed`], ends
    /// every reader and stops every task of the handle. Idempotent.
    async fn close(&self);
}

/// Resolves with the id of an accepted record once it is durable.
#[must_use = "an append is only acknowledged once its AppendFuture resolves"]
pub struct AppendFuture {
    inner: AppendInner,
}

impl std::fmt::Debug for AppendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendFuture").finish_non_exhaustive()
    }
}

enum AppendInner {
    Ready(Option<Result<MessageId, LogError>>),
    Waiting(oneshot::Receiver<Result<MessageId, LogError>>),
}

impl AppendFuture {
    /// A future that is already resolved.
    pub fn ready(result: Result<MessageId, LogError>) -> AppendFuture {
        AppendFuture {
            inner: AppendInner::Ready(Some(result)),
        }
    }

    /// A future and the sender that resolves it. A dropped sender resolves it with
    /// [`LogError::Closed`].
    pub fn pending() -> (oneshot::Sender<Result<MessageId, LogError>>, AppendFuture) {
        let (tx, rx) = oneshot::channel();
        (
            tx,
            AppendFuture {
                inner: AppendInner::Waiting(rx),
            },
        )
    }
}

impl Future for AppendFuture {
    type Output = Result<MessageId, LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            AppendInner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(LogError::Closed))),
            AppendInner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(LogError::Closed))),
        }
    }
}

/// An ordered stream of records from one read. Ends with `None` when the handle closes; yields
/// one `Err` and then ends when the read fails. Dropping it stops the reader.
pub struct LogStream {
    rx: mpsc::Receiver<Result<ImmutableMessage, LogError>>,
    _stop: Option<DropGuard>,
}

impl std::fmt::Debug for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStream").finish_non_exhaustive()
    }
}

impl LogStream {
    /// A stream fed by `rx`. `stop`, when given, is cancelled when the stream is dropped so the
    /// producing task can stop even while it waits for new records.
    pub fn new(
        rx: mpsc::Receiver<Result<ImmutableMessage, LogError>>,
        stop: Option<DropGuard>,
    ) -> LogStream {
        LogStream { rx, _stop: stop }
    }

    /// The next record.
    pub async fn next(&mut self) -> Option<Result<ImmutableMessage, LogError>> {
        self.rx.recv().await
    }

    /// The next record if one is ready, without waiting: `Pending` when none is buffered yet,
    /// `Ready(None)` once the stream has ended.
    pub fn try_next(&mut self) -> Poll<Option<Result<ImmutableMessage, LogError>>> {
        match self.rx.try_recv() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(mpsc::error::TryRecvError::Empty) => Poll::Pending,
            Err(mpsc::error::TryRecvError::Disconnected) => Poll::Ready(None),
        }
    }
}

impl Stream for LogStream {
    type Item = Result<ImmutableMessage, LogError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Which backend to build, with its settings.
#[derive(Clone, Debug)]
pub enum LogConfig {
    /// In-process logs for tests.
    Memory(memory::MemoryConfig),
    /// Segment files in a local directory (the embedded default).
    Local(local::LocalConfig),
    /// Blocks in an object store (a local directory or S3): the zero-disk WAL.
    #[cfg(feature = "object")]
    Object(object::ObjectConfig),
    /// One Kafka topic per pchannel, fenced by transactional producers.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConfig),
}

/// Builds the provider for a backend configuration (the factory).
pub async fn build_provider(config: &LogConfig) -> Result<Arc<dyn LogProvider>, LogError> {
    match config {
        LogConfig::Memory(c) => Ok(Arc::new(memory::MemoryProvider::new(c.clone()))),
        LogConfig::Local(c) => Ok(Arc::new(local::LocalProvider::new(c.clone())?)),
        #[cfg(feature = "object")]
        LogConfig::Object(c) => Ok(Arc::new(object::ObjectProvider::new(c.clone())?)),
        #[cfg(feature = "kafka")]
        LogConfig::Kafka(c) => Ok(Arc::new(kafka::KafkaProvider::new(c.clone())?)),
    }
}
