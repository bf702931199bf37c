//! The group-commit writer of a read-write handle.
//!
//! ```text
//!  enqueue ─▶ encode ─▶ pending-bytes permit (back-pressure) ─▶ queue (order fixed here)
//!                                                                  │
//!  writer task: take everything queued (≤ max_batch_records) ─▶ begin transaction ─▶ produce
//!               ─▶ wait for every delivery (offsets) ─▶ commit ─▶ acknowledge with the offsets
//! ```
//!
//! One transaction is in flight at a time; records that arrive meanwhile form the next one, so
//! the batch grows with the load. A record is acknowledged only after its transaction committed,
//! so it is durable (`acks=all`) and visible to `read_committed` readers.
//!
//! When the broker rejects this producer's epoch, the writer reads the newest record back
//! ([`Fencing::watch`]): a higher term's (or a later same-term open's) means the batch and every
//! later append fail [`LogError::Fenced`]; none within `reclaim_wait` means a stale opener bumped
//! the epoch and then failed, so the writer claims the pchannel again with a new producer and the
//! batch fails with a retryable [`LogError::Unavailable`]. A batch that fails with an abortable
//! error is aborted, its appends fail `Unavailable`, and later batches go on.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_types::{MessageId, MutableMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::fence::{Fencing, drop_off_runtime, is_fence, is_fenced};
use super::record;
use crate::{AppendFuture, LogError};

/// Whether the producer can no longer be used.
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}

/// Times a batch is written again after the writer claimed its pchannel back.
const RECLAIM_RETRIES: usize = 3;

/// What a failed transaction leads to.
enum Outcome {
    /// The producer was fenced by an opener that did not take over, and a new producer claimed
    /// the pchannel back: the batch may be written again.
    Reclaimed,
    /// The batch fails with this error.
    Failed(LogError),
}

struct Pending {
    value: Vec<u8>,
    waiter: oneshot::Sender<Result<MessageId, LogError>>,
    _permit: OwnedSemaphorePermit,
}

/// What the writer needs to know about its log.
pub(super) struct WriterSettings {
    /// Records per transaction at most.
    pub max_batch_records: usize,
    /// Encoded bytes accepted but not yet acknowledged before `enqueue` waits.
    pub max_pending_bytes: usize,
    /// The largest encoded record.
    pub max_record_bytes: usize,
    /// Timeout of blocking producer calls (commit, abort).
    pub op_timeout: Duration,
}

/// The writer of one read-write handle.
pub(super) struct Writer {
    fencing: Arc<Fencing>,
    /// `None` once the handle closed.
    producer: Mutex<Option<Arc<FutureProducer>>>,
    settings: WriterSettings,
    queue: mpsc::UnboundedSender<Pending>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    permits: Arc<Semaphore>,
    failure: Mutex<Option<LogError>>,
}

impl Writer {
    /// A writer over the producer that claimed the pchannel.
    pub(super) fn new(
        fencing: Arc<Fencing>,
        producer: Arc<FutureProducer>,
        settings: WriterSettings,
    ) -> Writer {
        let (queue, rx) = mpsc::unbounded_channel();
        Writer {
            fencing,
            producer: Mutex::new(Some(producer)),
            permits: Arc::new(Semaphore::new(settings.max_pending_bytes)),
            settings,
            queue,
            rx: Mutex::new(Some(rx)),
            failure: Mutex::new(None),
        }
    }

    /// Takes the producer out (at close), so that its last reference can be dropped off the
    /// runtime: destroying a client waits for its threads.
    pub(super) fn take_producer(&self) -> Option<Arc<FutureProducer>> {
        self.producer.lock().take()
    }

    /// The error every append fails with from now on, if any.
    pub(super) fn failure(&self) -> Option<LogError> {
        self.failure.lock().clone()
    }

    /// Fails every later append with `e` (the first failure wins).
    pub(super) fn fail(&self, e: LogError) {
        let mut f = self.failure.lock();
        if f.is_none() {
            *f = Some(e);
        }
    }

    /// Encodes `message`, waits for room, and queues it.
    pub(super) async fn enqueue(
        &self,
        message: MutableMessage,
        cancel: &CancellationToken,
    ) -> Result<AppendFuture, LogError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let value = record::encode_data(self.fencing.me, &message.into_message())?;
        if value.len() > self.settings.max_record_bytes {
            return Err(LogError::InvalidArgument(format!(
                "record of {} bytes is larger than the kafka backend's limit of {} bytes",
                value.len(),
                self.settings.max_record_bytes
            )));
        }
        let need = u32::try_from(value.len().max(1)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            p = self.permits.clone().acquire_many_owned(need) => p.map_err(|_| LogError::Closed)?,
            _ = cancel.cancelled() => return Err(LogError::Closed),
        };
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let (waiter, fut) = AppendFuture::pending();
        self.queue
            .send(Pending {
                value,
                waiter,
                _permit: permit,
            })
            .map_err(|_| LogError::Closed)?;
        Ok(fut)
    }

    /// The writer task: one transaction per batch until `cancel`.
    pub(super) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.settings.max_batch_records {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if let Some(e) = self.failure() {
                for p in batch {
                    let _ = p.waiter.send(Err(e.clone()));
                }
                continue;
            }
            let values: Vec<&[u8]> = batch.iter().map(|p| p.value.as_slice()).collect();
            let result = tokio::select! {
                r = self.commit_batch(&values) => r,
                // Close: the transaction may still commit; these appends are simply not
                // acknowledged (dropped waiters resolve with `Closed`).
                _ = cancel.cancelled() => break,
            };
            match result {
                Ok(ids) => {
                    for (p, id) in batch.into_iter().zip(ids) {
                        let _ = p.waiter.send(Ok(id));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.waiter.send(Err(e.clone()));
                    }
                }
            }
        }
        self.fail(LogError::Closed);
        rx.close();
    }

    /// Writes `values` in one transaction; returns their ids once it committed.
    async fn commit_batch(&self, values: &[&[u8]]) -> Result<Vec<MessageId>, LogError> {
        for _ in 0..RECLAIM_RETRIES {
            let attempt = self.try_commit(values);
            tokio::pin!(attempt);
            let result = tokio::select! {
                r = &mut attempt => r,
                // A transaction cut off by a newer producer may hang instead of failing (Tansu
                // answers some requests of a fenced epoch with retriable errors): once a winner
                // is visible, the batch fails at once. Its commit can no longer succeed, and not
                // acknowledging is always safe.
                fenced = self.winner_while_committing() => {
                    self.fail(fenced.clone());
                    return Err(fenced);
                }
            };
            match result {
                Ok(ids) => return Ok(ids),
                Err(e) => match self.classify(e).await {
                    // The cut-off transaction was aborted: write the batch again.
                    Outcome::Reclaimed => continue,
                    Outcome::Failed(e) => return Err(e),
                },
            }
        }
        Err(LogError::Unavailable(format!(
            "kafka: pchannel {} was taken over {RECLAIM_RETRIES} times in a row by opens that \
             did not keep it",
            self.fencing.pchannel
        )))
    }

    /// Resolves once another open is seen to have won, checking from one second into a commit.
    async fn winner_while_committing(&self) -> LogError {
        let f = &self.fencing;
        f.watch_commit(|newest| f.beaten(newest, true).then(|| f.fenced(newest)))
            .await
    }

    async fn try_commit(&self, values: &[&[u8]]) -> Result<Vec<MessageId>, KafkaError> {
        let producer = self.producer.lock().clone().ok_or(KafkaError::Canceled)?;
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(values.len());
        let mut send_error = None;
        for v in values {
            let rec = FutureRecord::<(), [u8]>::to(&self.fencing.topic)
                .partition(0)
                .payload(v);
            match producer.send_result(rec) {
                Ok(d) => deliveries.push(d),
                Err((e, _)) => {
                    send_error = Some(e);
                    break;
                }
            }
        }
        let mut ids = Vec::with_capacity(values.len());
        let mut first_error = send_error;
        for d in join_all(deliveries).await {
            match d {
                Ok(Ok(delivery)) => match u64::try_from(delivery.offset) {
                    Ok(o) => ids.push(MessageId::from_parts(0, o)),
                    Err(_) => {
                        first_error.get_or_insert(KafkaError::MessageProduction(
                            RDKafkaErrorCode::InvalidMessage,
                        ));
                    }
                },
                Ok(Err((e, _))) => {
                    first_error.get_or_insert(e);
                }
                Err(_canceled) => {
                    first_error.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        if let Some(e) = first_error {
            self.abort(&producer).await;
            return Err(e);
        }
        let p = producer.clone();
        let timeout = self.settings.op_timeout;
        let committed = tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        if let Err(e) = committed {
            self.abort(&producer).await;
            return Err(e);
        }
        Ok(ids)
    }

    /// Aborts the open transaction, if the producer still can (a fenced one cannot).
    async fn abort(&self, producer: &Arc<FutureProducer>) {
        if producer.client().fatal_error().is_some() {
            return;
        }
        let producer = producer.clone();
        let timeout = self.settings.op_timeout;
        let r = tokio::task::spawn_blocking(move || producer.abort_transaction(timeout)).await;
        if let Ok(Err(e)) = r {
            tracing::debug!(pchannel = %self.fencing.pchannel, error = %e, "abort_transaction failed");
        }
    }

    /// What a failed transaction leads to (see the module docs).
    async fn classify(&self, e: KafkaError) -> Outcome {
        let pchannel = &self.fencing.pchannel;
        let Some(producer) = self.producer.lock().clone() else {
            return Outcome::Failed(LogError::Closed);
        };
        let fatal = producer.client().fatal_error();
        let fenced = is_fence(&e) || is_fenced(&producer);
        if !fenced && fatal.is_none() && !is_fatal(&e) {
            // Abortable or transient: this producer goes on, unless a winner shows up.
            return Outcome::Failed(match self.fencing.newest().await {
                Ok(newest) if self.fencing.beaten(newest, true) => {
                    let f = self.fencing.fenced(newest);
                    self.fail(f.clone());
                    f
                }
                _ => LogError::Unavailable(format!("kafka transaction on {pchannel}: {e}")),
            });
        }
        tracing::info!(%pchannel, term = self.fencing.me.term, fenced, error = %e,
            "kafka producer can no longer write");
        // Whoever made this producer unusable may be a new owner: wait to see.
        let claimed = match self.fencing.watch(true).await {
            Ok(()) => self.fencing.claim(true).await,
            Err(f) => Err(f),
        };
        match claimed {
            Ok(p) => {
                let old = {
                    let mut slot = self.producer.lock();
                    if slot.is_none() {
                        drop(slot);
                        drop_off_runtime(p);
                        return Outcome::Failed(LogError::Closed);
                    }
                    slot.replace(p)
                };
                if let Some(old) = old {
                    drop_off_runtime(old);
                }
                Outcome::Reclaimed
            }
            Err(f) => {
                self.fail(f.clone());
                Outcome::Failed(f)
            }
        }
    }
}
