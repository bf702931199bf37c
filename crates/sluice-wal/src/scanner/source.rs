//! The producer side of a scanner: where messages come from.
//!
//! ```text
//!            persisted TimeTick(tt) read from the log
//!            and wab.read_from_exclusive_timetick(tt) succeeds
//!   ┌──────────┐ ─────────────────────────────────────▶ ┌─────────┐
//!   │ catch-up │                                        │ tailing │
//!   │ (log)    │ ◀───────────────────────────────────── │ (WAB)   │
//!   └──────────┘   cursor Evicted: reopen the log at    └─────────┘
//!                  StartFrom(LC(last)), dropping TT ≤ TT(last)
//! ```
//!
//! Catch-up reads the log in id order. Tailing reads the write-ahead buffer in timestamp order,
//! so when the buffer evicts the tailing position, everything up to the last delivered timestamp
//! has been delivered and the log can be reopened at that message's last-confirmed id with an
//! exclusive timestamp bound. A failed log reader is reopened right after the last message it
//! delivered (ids are exact), with a backoff of 100 ms doubling to 5 s while errors are
//! retryable.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use sluice_log::{DeliverPolicy, LogError, LogHandle, LogStream, ReadOptions};
use sluice_types::backoff::Backoff;
use sluice_types::{ImmutableMessage, MessageId, MessageType, Timestamp};
use tokio::time::Instant;

use super::pipeline::Classified;
use crate::error::WalError;
use crate::wab::{WabCursor, WriteAheadBuffer};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Which upstream a scanner is reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScannerMode {
    /// Reading the log (also while a log reader is being opened).
    #[default]
    CatchUp,
    /// Reading the write-ahead buffer.
    Tailing,
}

/// Counters of the producer side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounters {
    /// Switches from the log to the write-ahead buffer.
    pub switches_to_tail: u64,
    /// Switches back to the log because the write-ahead buffer evicted the position.
    pub switches_to_catch_up: u64,
    /// Log readers reopened after a retryable error.
    pub reader_retries: u64,
    /// Messages taken from the log or the buffer (before any filter).
    pub upstream_messages: u64,
}

enum Mode {
    /// A log reader must be opened (at `retry_at`, if set).
    Opening { retry_at: Option<Instant> },
    /// Reading the log; `switch_at` is a persisted timetick to try the buffer at.
    CatchUp {
        stream: LogStream,
        switch_at: Option<Timestamp>,
    },
    /// Reading the write-ahead buffer.
    Tailing { cursor: WabCursor },
}

/// See the module docs.
pub(crate) struct Source {
    log: Arc<dyn LogHandle>,
    wab: Option<Arc<WriteAheadBuffer>>,
    read_ahead: usize,
    /// Where the next log reader starts.
    reader_policy: DeliverPolicy,
    /// Catch-up drops messages at or below this timestamp (set when falling back from the
    /// buffer).
    exclusive_start: Option<Timestamp>,
    /// The last-confirmed id of the latest delivered message that had one.
    resume_from: Option<MessageId>,
    /// Timestamp of the last delivered message.
    last_ts: Option<Timestamp>,
    mode: Mode,
    backoff: Backoff,
    on_new_reader: Option<Arc<dyn Fn() + Send + Sync>>,
    counters: SourceCounters,
}

impl Source {
    pub(crate) fn new(
        log: Arc<dyn LogHandle>,
        wab: Option<Arc<WriteAheadBuffer>>,
        policy: DeliverPolicy,
        read_ahead: usize,
        on_new_reader: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Source {
        Source {
            log,
            wab,
            read_ahead,
            reader_policy: policy,
            exclusive_start: None,
            resume_from: None,
            last_ts: None,
            mode: Mode::Opening { retry_at: None },
            backoff: Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF),
            on_new_reader,
            counters: SourceCounters::default(),
        }
    }

    /// The mode.
    pub(crate) fn mode(&self) -> ScannerMode {
        match self.mode {
            Mode::Tailing { .. } => ScannerMode::Tailing,
            _ => ScannerMode::CatchUp,
        }
    }

    /// What happened so far.
    pub(crate) fn counters(&self) -> SourceCounters {
        self.counters
    }

    /// The next message. Errors are terminal. Cancel-safe: a dropped call loses nothing.
    pub(crate) async fn next(&mut self) -> Result<Classified, WalError> {
        loop {
            match &mut self.mode {
                Mode::Opening { retry_at } => {
                    if let Some(at) = *retry_at {
                        tokio::time::sleep_until(at).await;
                    }
                    let options = ReadOptions {
                        policy: self.reader_policy,
                        read_ahead: self.read_ahead,
                    };
                    match self.log.read(options).await {
                        Ok(stream) => {
                            self.mode = Mode::CatchUp {
                                stream,
                                switch_at: None,
                            };
                            // An RW WAL answers with a persisted timetick, which this reader
                            // will see, so catch-up finds a fresh boundary to switch at.
                            if let Some(hook) = self.on_new_reader.take() {
                                hook();
                            }
                        }
                        Err(e) => self.retry_or_fail(e)?,
                    }
                }
                Mode::CatchUp { stream, switch_at } => {
                    if let (Some(tt), Some(wab)) = (*switch_at, &self.wab) {
                        match wab.read_from_exclusive_timetick(tt).await {
                            Ok(cursor) => {
                                tracing::debug!(
                                    pchannel = %self.log.pchannel(),
                                    timetick = %tt,
                                    "scanner switches to the write-ahead buffer"
                                );
                                self.mode = Mode::Tailing { cursor };
                                self.counters.switches_to_tail += 1;
                                continue;
                            }
                            Err(WalError::Evicted) => *switch_at = None,
                            Err(e) => return Err(e),
                        }
                    }
                    let item = stream.next().await;
                    if let Some(msg) = self.take_log_item(item)? {
                        return Ok(msg);
                    }
                }
                Mode::Tailing { cursor } => {
                    let item = cursor.next().await;
                    if let Some(msg) = self.take_buffer_item(item)? {
                        return Ok(msg);
                    }
                }
            }
        }
    }

    /// What [`Source::next`] would return now, if that needs no waiting (`None` otherwise), so
    /// a scanner can move whatever is ready in one go. Never opens a log reader and never
    /// switches from the log to the buffer: those are left to `next`.
    pub(crate) fn try_next(&mut self) -> Option<Result<Classified, WalError>> {
        loop {
            let taken = match &mut self.mode {
                Mode::CatchUp {
                    stream,
                    switch_at: None,
                } => match stream.try_next() {
                    Poll::Ready(item) => self.take_log_item(item),
                    Poll::Pending => return None,
                },
                Mode::Tailing { cursor } => {
                    let item = cursor.try_next()?;
                    self.take_buffer_item(item)
                }
                // Opening a log reader (also after an eviction) is `next`'s work.
                _ => return None,
            };
            match taken {
                Ok(Some(msg)) => return Some(Ok(msg)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Handles one item of the log reader: the message to deliver, `None` when it is skipped
    /// (or the reader is being reopened after an error), or a terminal error.
    fn take_log_item(
        &mut self,
        item: Option<Result<ImmutableMessage, LogError>>,
    ) -> Result<Option<Classified>, WalError> {
        let msg = match item {
            None => return Err(WalError::Shutdown),
            Some(Err(e)) => {
                self.retry_or_fail(e)?;
                return Ok(None);
            }
            Some(Ok(msg)) => msg,
        };
        self.backoff.reset();
        self.reader_policy = DeliverPolicy::StartAfter(msg.id());
        self.counters.upstream_messages += 1;
        let msg = Classified::new(msg)?;
        if self.exclusive_start.is_some_and(|ex| msg.ts <= ex) {
            return Ok(None);
        }
        if self.wab.is_some()
            && msg.ty == MessageType::TimeTick
            && !msg.msg.is_not_persisted()
            && let Mode::CatchUp { switch_at, .. } = &mut self.mode
        {
            *switch_at = Some(msg.ts);
        }
        self.record(&msg);
        Ok(Some(msg))
    }

    /// Handles one item of the buffer cursor, like [`Source::take_log_item`]; an eviction switches
    /// back to the log.
    fn take_buffer_item(
        &mut self,
        item: Result<ImmutableMessage, WalError>,
    ) -> Result<Option<Classified>, WalError> {
        match item {
            Ok(msg) => {
                self.counters.upstream_messages += 1;
                let msg = Classified::new(msg)?;
                self.record(&msg);
                Ok(Some(msg))
            }
            Err(WalError::Evicted) => {
                self.fall_back_to_log();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Remembers where to resume: the latest last-confirmed id and the last timestamp.
    fn record(&mut self, msg: &Classified) {
        match msg.msg.last_confirmed() {
            Ok(Some(lc)) => self.resume_from = Some(lc),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                id = %msg.msg.id(),
                error = %e,
                "ignoring a malformed last-confirmed id"
            ),
        }
        self.last_ts = Some(msg.ts);
    }

    fn fall_back_to_log(&mut self) {
        tracing::debug!(
            pchannel = %self.log.pchannel(),
            "write-ahead buffer evicted the scanner's position; back to the log"
        );
        self.counters.switches_to_catch_up += 1;
        self.exclusive_start = self.exclusive_start.max(self.last_ts);
        if let Some(lc) = self.resume_from {
            self.reader_policy = DeliverPolicy::StartFrom(lc);
        }
        self.mode = Mode::Opening { retry_at: None };
    }

    fn retry_or_fail(&mut self, e: LogError) -> Result<(), WalError> {
        if matches!(e, LogError::Closed) {
            return Err(WalError::Shutdown);
        }
        if !e.retryable() {
            return Err(e.into());
        }
        tracing::warn!(
            pchannel = %self.log.pchannel(),
            error = %e,
            backoff_ms = self.backoff.current().as_millis() as u64,
            "log reader failed; reopening"
        );
        self.counters.reader_retries += 1;
        self.mode = Mode::Opening {
            retry_at: Some(Instant::now() + self.backoff.next_delay()),
        };
        Ok(())
    }
}
