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
//! so it is durable (`acks=all`) and visible to `read_committed` readers. A fence (the broker
//! rejects this producer's epoch) fails the batch and every later append with
//! [`LogError::Fenced`]; any other fatal producer error fails them with that error. A batch that
//! fails with an abortable error is aborted and its appends fail; later batches go on.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_types::{MessageId, MutableMessage, PChannel, Term};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::record;
use crate::{AppendFuture, LogError};

/// Whether a Kafka error means that a newer producer of the same transactional id took over.
pub fn is_fence(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(is_fence_code)
}

fn is_fence_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// Whether the producer can no longer be used.
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}

struct Pending {
    value: Vec<u8>,
    waiter: oneshot::Sender<Result<MessageId, LogError>>,
    _permit: OwnedSemaphorePermit,
}

/// What the writer needs to know about its log.
pub struct WriterSettings {
    /// The topic.
    pub topic: String,
    /// The pchannel (for errors).
    pub pchannel: PChannel,
    /// The handle's term.
    pub term: Term,
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
pub struct Writer {
    producer: Arc<FutureProducer>,
    settings: WriterSettings,
    queue: mpsc::UnboundedSender<Pending>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    permits: Arc<Semaphore>,
    failure: Mutex<Option<LogError>>,
    /// Finds the highest term in the log when a fence is reported (for `Fenced::current`).
    current_term: Box<dyn Fn() -> futures::future::BoxFuture<'static, u64> + Send + Sync>,
}

impl Writer {
    /// A writer over a producer that has initialised its transactions.
    pub fn new(
        producer: Arc<FutureProducer>,
        settings: WriterSettings,
        current_term: Box<dyn Fn() -> futures::future::BoxFuture<'static, u64> + Send + Sync>,
    ) -> Writer {
        let (queue, rx) = mpsc::unbounded_channel();
        Writer {
            producer,
            permits: Arc::new(Semaphore::new(settings.max_pending_bytes)),
            settings,
            queue,
            rx: Mutex::new(Some(rx)),
            failure: Mutex::new(None),
            current_term,
        }
    }

    /// The error every append fails with from now on, if any.
    pub fn failure(&self) -> Option<LogError> {
        self.failure.lock().clone()
    }

    /// Fails every later append with `e` (the first failure wins).
    pub fn fail(&self, e: LogError) {
        let mut f = self.failure.lock();
        if f.is_none() {
            *f = Some(e);
        }
    }

    /// Encodes `message`, waits for room, and queues it.
    pub async fn enqueue(
        &self,
        message: MutableMessage,
        cancel: &CancellationToken,
    ) -> Result<AppendFuture, LogError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let value = record::encode_data(self.settings.term.0, &message.into_message())?;
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
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
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
        match self.try_commit(values).await {
            Ok(ids) => Ok(ids),
            Err(e) => Err(self.classify(e).await),
        }
    }

    async fn try_commit(&self, values: &[&[u8]]) -> Result<Vec<MessageId>, KafkaError> {
        self.producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(values.len());
        let mut send_error = None;
        for v in values {
            let rec = FutureRecord::<(), [u8]>::to(&self.settings.topic)
                .partition(0)
                .payload(v);
            match self.producer.send_result(rec) {
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
            self.abort().await;
            return Err(e);
        }
        let producer = self.producer.clone();
        let timeout = self.settings.op_timeout;
        let committed = tokio::task::spawn_blocking(move || producer.commit_transaction(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        if let Err(e) = committed {
            self.abort().await;
            return Err(e);
        }
        Ok(ids)
    }

    /// Aborts the open transaction, if the producer still can (a fenced one cannot).
    async fn abort(&self) {
        let producer = self.producer.clone();
        let timeout = self.settings.op_timeout;
        let r = tokio::task::spawn_blocking(move || producer.abort_transaction(timeout)).await;
        if let Ok(Err(e)) = r {
            tracing::debug!(pchannel = %self.settings.pchannel, error = %e, "abort_transaction failed");
        }
    }

    /// Turns a failed transaction into the error its appends get. A fence — the broker's
    /// answer, or (read back) a higher term at the end of the log — fails the writer for good,
    /// as does any other fatal producer error.
    async fn classify(&self, e: KafkaError) -> LogError {
        let pchannel = &self.settings.pchannel;
        let fatal_fence = self
            .producer
            .client()
            .fatal_error()
            .is_some_and(|(code, _)| is_fence_code(code));
        let current = (self.current_term)().await;
        if is_fence(&e) || fatal_fence || current > self.settings.term.0 {
            let current = current.max(self.settings.term.0);
            let fenced = LogError::Fenced {
                pchannel: pchannel.clone(),
                term: self.settings.term,
                current: Term(current),
            };
            tracing::info!(%pchannel, term = self.settings.term.0, current, error = %e,
                "kafka writer fenced");
            self.fail(fenced.clone());
            return fenced;
        }
        let error = LogError::Unavailable(format!("kafka transaction on {pchannel}: {e}"));
        if is_fatal(&e) || self.producer.client().fatal_error().is_some() {
            tracing::warn!(%pchannel, error = %e, "kafka producer failed for good");
            self.fail(error.clone());
        }
        error
    }
}
