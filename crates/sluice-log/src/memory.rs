//! The `memory` backend: one append-only log per pchannel, held in process memory.
//!
//! For tests. Logs are shared by every handle opened through the same provider (and by every
//! provider built with the same [`MemoryConfig::shared_name`]), so close/reopen and term changes
//! behave like a real backend within one process. Ids are dense indexes (`MessageId.lo`).
//! Faults can be injected: a share of appends failing with a retryable error, and a forced fence.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;
use sluice_types::{ImmutableMessage, Message, MessageId, MutableMessage, PChannel, Term};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{
    AccessMode, AppendFuture, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream,
    OpenOptions, ReadOptions,
};

/// Settings of the memory backend.
#[derive(Clone, Debug, Default)]
pub struct MemoryConfig {
    /// Providers built with the same name share their logs process-wide; `None` gives the
    /// provider logs of its own.
    pub shared_name: Option<String>,
    /// Fail one in this many appends with a retryable [`LogError::Unavailable`] (0 = never).
    pub append_error_one_in: u32,
}

type Registry = Arc<Mutex<HashMap<PChannel, Arc<ChannelLog>>>>;

static SHARED: LazyLock<Mutex<HashMap<String, Registry>>> = LazyLock::new(Default::default);

/// Opens in-memory logs.
#[derive(Clone)]
pub struct MemoryProvider {
    logs: Registry,
    append_error_one_in: Arc<AtomicU32>,
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProvider").finish_non_exhaustive()
    }
}

impl MemoryProvider {
    /// A provider; see [`MemoryConfig`].
    pub fn new(config: MemoryConfig) -> MemoryProvider {
        let logs = match &config.shared_name {
            Some(name) => SHARED.lock().entry(name.clone()).or_default().clone(),
            None => Registry::default(),
        };
        MemoryProvider {
            logs,
            append_error_one_in: Arc::new(AtomicU32::new(config.append_error_one_in)),
        }
    }

    /// Changes the injected append failure rate (0 = never).
    pub fn set_append_error_one_in(&self, one_in: u32) {
        self.append_error_one_in.store(one_in, Ordering::Relaxed);
    }

    /// Makes every later append on `pchannel`, through any handle, fail with
    /// [`LogError::Fenced`], as if an unknown newer owner had taken over.
    pub fn force_fence(&self, pchannel: &PChannel) {
        self.channel(pchannel)
            .forced_fence
            .store(true, Ordering::SeqCst);
    }

    fn channel(&self, pchannel: &PChannel) -> Arc<ChannelLog> {
        self.logs
            .lock()
            .entry(pchannel.clone())
            .or_insert_with(|| Arc::new(ChannelLog::new()))
            .clone()
    }
}

#[async_trait]
impl LogProvider for MemoryProvider {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn open(&self, options: OpenOptions) -> Result<Arc<dyn LogHandle>, LogError> {
        let log = self.channel(&options.pchannel);
        if options.mode == AccessMode::ReadWrite {
            let mut state = log.state.lock();
            if options.term < state.max_term {
                return Err(LogError::Fenced {
                    pchannel: options.pchannel,
                    term: options.term,
                    current: state.max_term,
                });
            }
            state.max_term = options.term;
        }
        Ok(Arc::new(MemoryHandle {
            options,
            log,
            append_error_one_in: self.append_error_one_in.clone(),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }
}

struct ChannelState {
    records: VecDeque<Message>,
    /// Index of `records[0]`.
    base: u64,
    max_term: Term,
}

struct ChannelLog {
    state: Mutex<ChannelState>,
    /// The index the next record will get.
    next: watch::Sender<u64>,
    forced_fence: AtomicBool,
}

impl ChannelLog {
    fn new() -> ChannelLog {
        ChannelLog {
            state: Mutex::new(ChannelState {
                records: VecDeque::new(),
                base: 0,
                max_term: Term(0),
            }),
            next: watch::Sender::new(0),
            forced_fence: AtomicBool::new(false),
        }
    }

    /// Up to `max` records starting at index `from` (moved forward past truncated records).
    fn fetch(&self, from: u64, max: usize) -> (u64, Vec<ImmutableMessage>) {
        let state = self.state.lock();
        let from = from.max(state.base);
        let skip = (from - state.base) as usize;
        let out = state
            .records
            .iter()
            .skip(skip)
            .take(max)
            .enumerate()
            .map(|(i, m)| {
                ImmutableMessage::new(MessageId::from_parts(0, from + i as u64), m.clone())
            })
            .collect();
        (from, out)
    }
}

struct MemoryHandle {
    options: OpenOptions,
    log: Arc<ChannelLog>,
    append_error_one_in: Arc<AtomicU32>,
    closed: AtomicBool,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl MemoryHandle {
    fn check_writable(&self) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if self.options.mode == AccessMode::ReadOnly {
            return Err(LogError::ReadOnly(self.options.pchannel.clone()));
        }
        Ok(())
    }

    fn fenced(&self, current: Term) -> LogError {
        LogError::Fenced {
            pchannel: self.options.pchannel.clone(),
            term: self.options.term,
            current,
        }
    }
}

#[async_trait]
impl LogHandle for MemoryHandle {
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
        self.check_writable()?;
        // Appends complete synchronously here; give the scheduler a chance so a tight append
        // loop cannot starve other tasks (real backends always wait on I/O).
        tokio::task::consume_budget().await;
        let one_in = self.append_error_one_in.load(Ordering::Relaxed);
        if one_in > 0 && rand::rng().random_ratio(1, one_in) {
            return Err(LogError::Unavailable("injected append fault".into()));
        }
        let mut state = self.log.state.lock();
        if self.log.forced_fence.load(Ordering::SeqCst) {
            return Err(self.fenced(state.max_term.next()));
        }
        if state.max_term > self.options.term {
            return Err(self.fenced(state.max_term));
        }
        let index = state.base + state.records.len() as u64;
        state.records.push_back(message.into_message());
        self.log.next.send_replace(index + 1);
        Ok(AppendFuture::ready(Ok(MessageId::from_parts(0, index))))
    }

    async fn read(&self, options: ReadOptions) -> Result<LogStream, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let mut next_rx = self.log.next.subscribe();
        let mut position = match options.policy {
            DeliverPolicy::All => 0,
            DeliverPolicy::Latest => *next_rx.borrow_and_update(),
            DeliverPolicy::StartFrom(id) => index_of(id)?,
            DeliverPolicy::StartAfter(id) => index_of(id)?.saturating_add(1),
        };
        let read_ahead = options.effective_read_ahead();
        let (tx, rx) = mpsc::channel(read_ahead);
        let stop = self.cancel.child_token();
        let guard = stop.clone().drop_guard();
        let log = self.log.clone();
        self.tasks.spawn(async move {
            loop {
                let (from, batch) = log.fetch(position, read_ahead);
                position = from + batch.len() as u64;
                if batch.is_empty() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = next_rx.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                for msg in batch {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        sent = tx.send(Ok(msg)) => if sent.is_err() { return },
                    }
                }
            }
        });
        Ok(LogStream::new(rx, Some(guard)))
    }

    async fn truncate(&self, up_to: MessageId) -> Result<(), LogError> {
        self.check_writable()?;
        let index = index_of(up_to)?;
        let mut state = self.log.state.lock();
        if state.max_term > self.options.term {
            return Err(self.fenced(state.max_term));
        }
        let end = state.base + state.records.len() as u64;
        // Keep the newest record so the next id stays derivable, as real backends do.
        let drop_to = index.saturating_add(1).min(end.saturating_sub(1));
        while state.base < drop_to {
            state.records.pop_front();
            state.base += 1;
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn index_of(id: MessageId) -> Result<u64, LogError> {
    if id.hi() != 0 {
        return Err(LogError::InvalidArgument(format!(
            "{id} is not a memory-backend message id"
        )));
    }
    Ok(id.lo())
}

impl Drop for MemoryHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::message::DeleteHeader;

    fn msg() -> MutableMessage {
        MutableMessage::builder(DeleteHeader::default())
            .build()
            .expect("message")
    }

    #[tokio::test]
    async fn providers_with_one_shared_name_share_logs() {
        let config = MemoryConfig {
            shared_name: Some("memory-unit-shared".into()),
            ..Default::default()
        };
        let p = PChannel::new("shared").unwrap();
        let a = MemoryProvider::new(config.clone());
        let b = MemoryProvider::new(config);
        let h = a
            .open(OpenOptions::read_write(p.clone(), Term(1)))
            .await
            .unwrap();
        h.append(msg()).await.unwrap();
        let err = b
            .open(OpenOptions::read_write(p.clone(), Term(0)))
            .await
            .err()
            .expect("lower term open through another provider");
        assert!(err.is_fenced());
        let private = MemoryProvider::new(MemoryConfig::default());
        private
            .open(OpenOptions::read_write(p, Term(0)))
            .await
            .expect("a private provider has its own logs");
    }

    #[tokio::test]
    async fn injected_faults_are_retryable_and_forced_fence_is_not() {
        let provider = MemoryProvider::new(MemoryConfig {
            shared_name: None,
            append_error_one_in: 1,
        });
        let p = PChannel::new("faulty").unwrap();
        let h = provider
            .open(OpenOptions::read_write(p.clone(), Term(1)))
            .await
            .unwrap();
        let err = h.append(msg()).await.unwrap_err();
        assert!(err.retryable(), "{err:?}");
        provider.set_append_error_one_in(0);
        h.append(msg()).await.unwrap();
        provider.force_fence(&p);
        let err = h.append(msg()).await.unwrap_err();
        assert!(err.is_fenced() && !err.retryable(), "{err:?}");
    }

    #[tokio::test]
    async fn foreign_ids_are_invalid_arguments() {
        let provider = MemoryProvider::new(MemoryConfig::default());
        let h = provider
            .open(OpenOptions::read_write(
                PChannel::new("ids").unwrap(),
                Term(1),
            ))
            .await
            .unwrap();
        let foreign = MessageId::from_parts(1, 0);
        assert!(matches!(
            h.read(ReadOptions::new(DeliverPolicy::StartFrom(foreign)))
                .await,
            Err(LogError::InvalidArgument(_))
        ));
        assert!(matches!(
            h.truncate(foreign).await,
            Err(LogError::InvalidArgument(_))
        ));
    }
}
