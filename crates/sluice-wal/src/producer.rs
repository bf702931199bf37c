//! Exactly-once appends: what a WAL remembers of each idempotent producer.
//!
//! A producer numbers its appends (`_pid` / `_psq`, see `MutableMessage::set_producer`). The
//! WAL keeps, per producer, the results of its last [`ProducerConfig::window`] numbered appends
//! and forgets a producer whose newest append is older than [`ProducerConfig::idle_expiry`]:
//!
//! * an append whose (producer, sequence) is remembered is not written again: the original's
//!   result is returned — or awaited, while the original is still in flight (and when that one
//!   fails, the retry gets its error and may try again);
//! * a sequence below every one remembered, once the window is full, is refused: it may have
//!   been appended and forgotten;
//! * what is remembered survives restarts and moves: the numbering is in the log with the
//!   message, replayed on open from the recovery snapshot's checkpoint, and the snapshot keeps
//!   every producer as of its checkpoint ([`ProducerMeta`]).
//!
//! Transaction bodies, commits and rollbacks cannot be numbered (their transaction already
//! makes them count once).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_types::message::{ManualFlushHeader, SchemaChangeHeader};
use sluice_types::{
    AppendResult, ImmutableMessage, MessageId, MessageType, MutableMessage, Timestamp,
};
use tokio::sync::watch;

use crate::WalError;

/// How much of each producer a WAL remembers.
#[derive(Clone, Copy, Debug)]
pub struct ProducerConfig {
    /// Numbered appends remembered per producer (the newest). Default 256.
    pub window: usize,
    /// A producer whose newest append is older than this is forgotten. Default 1 h.
    pub idle_expiry: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            window: 256,
            idle_expiry: Duration::from_secs(3600),
        }
    }
}

/// One remembered append of a producer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProducedAppend {
    /// Its sequence number.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// Its message id (16 bytes, big-endian).
    #[prost(bytes = "vec", tag = "2")]
    pub message_id: Vec<u8>,
    /// Its timestamp.
    #[prost(uint64, tag = "3")]
    pub timestamp: u64,
    /// Its last-confirmed id (16 bytes, big-endian).
    #[prost(bytes = "vec", tag = "4")]
    pub last_confirmed: Vec<u8>,
    /// The segments it sealed (ManualFlush, SchemaChange).
    #[prost(int64, repeated, tag = "5")]
    pub flushed_segments: Vec<i64>,
}

/// One producer as a recovery snapshot keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProducerMeta {
    /// The producer id.
    #[prost(uint64, tag = "1")]
    pub producer_id: u64,
    /// Its remembered appends, by ascending sequence.
    #[prost(message, repeated, tag = "2")]
    pub appends: Vec<ProducedAppend>,
}

/// A remembered result.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Done {
    id: MessageId,
    ts: Timestamp,
    lc: MessageId,
    flushed: Vec<i64>,
}

impl Done {
    fn result(&self) -> AppendResult {
        AppendResult {
            id: self.id,
            timestamp: self.ts,
            last_confirmed: self.lc,
            txn: None,
            flushed_segments: self.flushed.clone(),
        }
    }
}

type Outcome = Option<Result<AppendResult, WalError>>;

#[derive(Default)]
struct Producer {
    done: BTreeMap<u64, Done>,
    /// Appends in flight, with the channel their retries wait on (made by the first retry:
    /// almost every append has none).
    in_flight: HashMap<u64, Option<watch::Sender<Outcome>>>,
    /// The newest remembered timestamp.
    newest: Timestamp,
}

/// A numbered append's run: polled by its caller like any future, and when the caller stops
/// waiting before it finished, spawned on the runtime to run to its end — a retry must find its
/// outcome, never an append left half done. Cheaper than spawning every append up front (a
/// task, and a wake-up through its handle) when callers wait, as nearly all do.
pub(crate) struct RunToEnd<T: Send + 'static> {
    run: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> RunToEnd<T> {
    pub(crate) fn new(run: impl Future<Output = T> + Send + 'static) -> Self {
        RunToEnd {
            run: Some(Box::pin(run)),
        }
    }
}

impl<T: Send + 'static> Future for RunToEnd<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(run) = self.run.as_mut() else {
            panic!("RunToEnd polled after it finished");
        };
        let out = std::task::ready!(run.as_mut().poll(cx));
        self.run = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for RunToEnd<T> {
    fn drop(&mut self) {
        // Without a runtime (it is shutting down) nothing could finish it anyway.
        if let (Some(run), Ok(runtime)) = (self.run.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(run);
        }
    }
}

/// What to do with a numbered append.
pub(crate) enum Claim {
    /// Append it; report how it ended with [`Producers::finish`].
    Fresh,
    /// Already appended: its result.
    Done(AppendResult),
    /// The original is in flight: its outcome.
    Wait(watch::Receiver<Outcome>),
}

/// Every producer a WAL (or its checkpoint replica) remembers.
pub(crate) struct Producers {
    config: ProducerConfig,
    table: Mutex<HashMap<u64, Producer>>,
}

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producers")
            .field("producers", &self.table.lock().len())
            .finish()
    }
}

/// The numbering of `msg`, checked: `None` when it has none.
pub(crate) fn numbering(msg: &MutableMessage) -> Result<Option<(u64, u64)>, WalError> {
    let Some(n) = msg.producer()? else {
        return Ok(None);
    };
    let ty = msg.message_type()?;
    if msg.txn_context()?.is_some()
        || matches!(
            ty,
            MessageType::BeginTxn | MessageType::CommitTxn | MessageType::RollbackTxn
        )
    {
        return Err(WalError::InvalidArgument(
            "transaction messages cannot carry a producer sequence (the transaction makes its \
             bodies count once)"
                .into(),
        ));
    }
    Ok(Some(n))
}

fn id_bytes(id: MessageId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

fn id_of(bytes: &[u8]) -> Option<MessageId> {
    let b: [u8; 16] = bytes.try_into().ok()?;
    Some(MessageId::from_bytes(b))
}

impl Producers {
    /// Nothing remembered yet.
    pub(crate) fn new(config: ProducerConfig) -> Producers {
        Producers {
            config,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Decides what to do with append `sequence` of `producer`.
    pub(crate) fn claim(&self, producer: u64, sequence: u64) -> Result<Claim, WalError> {
        let mut table = self.table.lock();
        let p = table.entry(producer).or_default();
        if let Some(d) = p.done.get(&sequence) {
            return Ok(Claim::Done(d.result()));
        }
        if let Some(tx) = p.in_flight.get_mut(&sequence) {
            let tx = tx.get_or_insert_with(|| watch::channel(None).0);
            return Ok(Claim::Wait(tx.subscribe()));
        }
        if p.done.len() >= self.config.window
            && p.done
                .keys()
                .next()
                .is_some_and(|&oldest| sequence < oldest)
        {
            return Err(WalError::InvalidArgument(format!(
                "sequence {sequence} of producer {producer:x} is older than the {} appends this \
                 WAL remembers of it (it may have been appended already): use a new sequence \
                 number only for a new message",
                self.config.window
            )));
        }
        p.in_flight.insert(sequence, None);
        Ok(Claim::Fresh)
    }

    /// A [`Claim::Fresh`] append ended: remembered when it succeeded; waiters get the outcome.
    pub(crate) fn finish(
        &self,
        producer: u64,
        sequence: u64,
        outcome: &Result<AppendResult, WalError>,
    ) {
        let mut table = self.table.lock();
        let p = table.entry(producer).or_default();
        if let Ok(r) = outcome {
            self.remember(
                p,
                sequence,
                Done {
                    id: r.id,
                    ts: r.timestamp,
                    lc: r.last_confirmed,
                    flushed: r.flushed_segments.clone(),
                },
            );
        }
        if let Some(Some(tx)) = p.in_flight.remove(&sequence) {
            tx.send_replace(Some(outcome.clone()));
        }
    }

    fn remember(&self, p: &mut Producer, sequence: u64, done: Done) {
        p.newest = p.newest.max(done.ts);
        p.done.insert(sequence, done);
        while p.done.len() > self.config.window {
            p.done.pop_first();
        }
    }

    /// Remembers a numbered message found in the log (recovery, or the checkpoint replica).
    pub(crate) fn record(&self, msg: &ImmutableMessage) {
        let (Ok(Some((producer, sequence))), Ok(Some(ts))) = (msg.producer(), msg.timestamp())
        else {
            return;
        };
        let lc = msg.last_confirmed().ok().flatten().unwrap_or(msg.id());
        let flushed = match msg.message_type() {
            Ok(MessageType::ManualFlush) => msg
                .header::<ManualFlushHeader>()
                .map(|h| h.segment_ids)
                .unwrap_or_default(),
            Ok(MessageType::SchemaChange) => msg
                .header::<SchemaChangeHeader>()
                .map(|h| h.flushed_segment_ids)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut table = self.table.lock();
        let p = table.entry(producer).or_default();
        self.remember(
            p,
            sequence,
            Done {
                id: msg.id(),
                ts,
                lc,
                flushed,
            },
        );
    }

    /// Forgets producers whose newest append is older than the idle expiry before `now`.
    pub(crate) fn expire(&self, now: Timestamp) {
        let physical_ms = now.0 >> 18;
        let horizon = physical_ms.saturating_sub(self.config.idle_expiry.as_millis() as u64) << 18;
        self.table
            .lock()
            .retain(|_, p| !p.in_flight.is_empty() || p.newest.0 >= horizon);
    }

    /// Every producer, as a snapshot keeps it (by ascending id).
    pub(crate) fn export(&self) -> Vec<ProducerMeta> {
        let table = self.table.lock();
        let mut out: Vec<ProducerMeta> = table
            .iter()
            .filter(|(_, p)| !p.done.is_empty())
            .map(|(&id, p)| ProducerMeta {
                producer_id: id,
                appends: p
                    .done
                    .iter()
                    .map(|(&sequence, d)| ProducedAppend {
                        sequence,
                        message_id: id_bytes(d.id),
                        timestamp: d.ts.0,
                        last_confirmed: id_bytes(d.lc),
                        flushed_segments: d.flushed.clone(),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    /// Takes what a snapshot remembers (entries whose ids do not parse are skipped, logged).
    pub(crate) fn import(&self, producers: &[ProducerMeta]) {
        let mut table = self.table.lock();
        for meta in producers {
            let p = table.entry(meta.producer_id).or_default();
            for a in &meta.appends {
                match (id_of(&a.message_id), id_of(&a.last_confirmed)) {
                    (Some(id), Some(lc)) => self.remember(
                        p,
                        a.sequence,
                        Done {
                            id,
                            ts: Timestamp(a.timestamp),
                            lc,
                            flushed: a.flushed_segments.clone(),
                        },
                    ),
                    _ => tracing::warn!(
                        producer = meta.producer_id,
                        sequence = a.sequence,
                        "a remembered append with a malformed id; forgotten"
                    ),
                }
            }
        }
    }
}
