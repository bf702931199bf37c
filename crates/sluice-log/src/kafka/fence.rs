//! Claiming a pchannel: the transactional producer whose epoch fences every older one, and the
//! read-back of the newest record's owner that tells a fence by a higher term from one by a
//! stale opener (see "Fencing" in the module docs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_types::{PChannel, Term};

use super::reader::{tail_owner, unavailable};
use super::record::{self, Owner};
use crate::LogError;

/// Claim attempts before an open (or a writer's reclaim) gives up.
const CLAIM_ATTEMPTS: usize = 5;
/// How often the newest owner is read while waiting to see who fenced us.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a commit may take before its committer starts looking for who cut it off.
const COMMIT_WATCH_AFTER: Duration = Duration::from_secs(1);

/// Whether a Kafka error code means that a newer producer of the same transactional id took over.
pub(super) fn is_fence_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// Whether a Kafka error means that a newer producer of the same transactional id took over.
pub(super) fn is_fence(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(is_fence_code)
}

/// Whether a transactional call failed for now and may be called again (a timeout, say): its
/// outcome is unknown until it is.
fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable())
}

/// Whether `producer` failed for good because a newer producer of its transactional id took
/// over (its pending requests then fail with other errors, e.g. purged).
pub(super) fn is_fenced(producer: &FutureProducer) -> bool {
    producer
        .client()
        .fatal_error()
        .is_some_and(|(code, _)| is_fence_code(code))
}

/// Drops `producer` on the blocking pool: destroying the last reference to a client waits for
/// its threads.
pub(super) fn drop_off_runtime(producer: Arc<FutureProducer>) {
    drop(tokio::task::spawn_blocking(move || drop(producer)));
}

/// Runs a blocking client call on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Unavailable(format!("kafka client call: {e}")))?
}

/// How one claim attempt ended, when it did not succeed.
enum Attempt {
    /// The fence's commit was itself fenced: see who did it, then maybe try again.
    Retry,
    /// The claim fails with this error.
    Fail(LogError),
}

/// One read-write open's view of its pchannel's topic.
pub(super) struct Fencing {
    /// The pchannel.
    pub pchannel: PChannel,
    /// The topic, which is also the transactional id.
    pub topic: String,
    /// This open.
    pub me: Owner,
    /// Settings of the transactional producers.
    pub producer_config: ClientConfig,
    /// Settings of the consumer that reads the newest record back.
    pub consumer_config: ClientConfig,
    /// Timeout of each blocking call.
    pub op_timeout: Duration,
    /// How long a fenced writer (or opener) waits for the fencer's term fence before it
    /// concludes the fencer was a stale opener and claims the pchannel again.
    pub reclaim_wait: Duration,
}

impl Fencing {
    /// The owner of the newest record (the default owner, term 0, for an empty topic).
    pub(super) async fn newest(&self) -> Result<Owner, LogError> {
        let (config, topic, timeout) = (
            self.consumer_config.clone(),
            self.topic.clone(),
            self.op_timeout,
        );
        blocking(move || tail_owner(&config, &topic, timeout)).await
    }

    /// The fence error for a log whose newest owner is `newest`.
    pub(super) fn fenced(&self, newest: Owner) -> LogError {
        LogError::Fenced {
            pchannel: self.pchannel.clone(),
            term: Term(self.me.term),
            current: Term(newest.term.max(self.me.term)),
        }
    }

    /// Whether `newest` shows that another open won: a higher term, or — once this open has
    /// written (`opened`) — the same term with another nonce (a later open at the same term).
    pub(super) fn beaten(&self, newest: Owner, opened: bool) -> bool {
        newest.term > self.me.term
            || (opened && newest.term == self.me.term && newest.nonce != self.me.nonce)
    }

    /// Claims the pchannel: `init_transactions` (fences every older producer), checks the newest
    /// owner, commits a term fence. `opened` is false for an open and true for a writer that
    /// claims back what a stale opener took. When the fence's commit is itself fenced, waits to
    /// see who did it ([`Fencing::watch`]) and tries again if it was not a winner.
    pub(super) async fn claim(&self, opened: bool) -> Result<Arc<FutureProducer>, LogError> {
        for _ in 0..CLAIM_ATTEMPTS {
            // Refuse before bumping the epoch when a winner is already visible.
            let newest = self.newest().await?;
            if self.beaten(newest, opened) {
                return Err(self.fenced(newest));
            }
            let producer: FutureProducer = self
                .producer_config
                .create()
                .map_err(|e| LogError::InvalidArgument(format!("kafka producer: {e}")))?;
            let producer = Arc::new(producer);
            match self.init_and_fence(&producer, opened).await {
                Ok(()) => return Ok(producer),
                Err(attempt) => {
                    drop_off_runtime(producer);
                    match attempt {
                        Attempt::Retry => self.watch(opened).await?,
                        Attempt::Fail(e) => return Err(e),
                    }
                }
            }
        }
        Err(LogError::Unavailable(format!(
            "kafka: pchannel {} was taken over {CLAIM_ATTEMPTS} times while opening, by no \
             higher term",
            self.pchannel
        )))
    }

    /// Steps 3–5 of a claim with `producer` (see the module docs).
    async fn init_and_fence(
        &self,
        producer: &Arc<FutureProducer>,
        opened: bool,
    ) -> Result<(), Attempt> {
        let (p, timeout) = (producer.clone(), self.op_timeout);
        blocking(move || {
            p.init_transactions(timeout)
                .map_err(|e| unavailable("init_transactions", e))
        })
        .await
        .map_err(Attempt::Fail)?;
        let seen = self.newest().await.map_err(Attempt::Fail)?;
        if self.beaten(seen, opened) {
            return Err(Attempt::Fail(self.fenced(seen)));
        }
        let commit = self.commit_fence(producer);
        tokio::pin!(commit);
        let result = tokio::select! {
            r = &mut commit => r,
            // A commit cut off by a newer producer may hang instead of failing (Tansu answers
            // some requests of a fenced epoch with retriable errors until the call times out).
            cut_off = self.cut_off_while_committing(opened, seen) => return Err(cut_off),
        };
        match result {
            Ok(()) => Ok(()),
            // A commit that timed out may or may not have landed: a new producer's
            // `init_transactions` ends it either way, and a fence of ours that did land is
            // harmless (the next claim writes the same owner again).
            Err(e) if is_fence(&e) || is_fenced(producer) || is_retriable(&e) => {
                Err(Attempt::Retry)
            }
            Err(e) => Err(Attempt::Fail(unavailable("commit the term fence", e))),
        }
    }

    /// Resolves, from [`COMMIT_WATCH_AFTER`] into the commit of this open's fence, once the log
    /// shows that the commit was cut off: a winner's record means `Fail(Fenced)`; a record of
    /// any other owner after `seen` (the newest before the commit) means another producer took
    /// the epoch and wrote, so the claim starts again.
    async fn cut_off_while_committing(&self, opened: bool, seen: Owner) -> Attempt {
        self.watch_commit(|newest| {
            if self.beaten(newest, opened) {
                Some(Attempt::Fail(self.fenced(newest)))
            } else if newest != seen && newest != self.me {
                Some(Attempt::Retry)
            } else {
                None
            }
        })
        .await
    }

    /// Reads the newest owner from [`COMMIT_WATCH_AFTER`] into a commit, every quarter of that,
    /// until `cut_off` makes something of it: a commit cut off by a newer producer may hang
    /// instead of failing, and the log shows why.
    pub(super) async fn watch_commit<T>(&self, cut_off: impl Fn(Owner) -> Option<T>) -> T {
        tokio::time::sleep(COMMIT_WATCH_AFTER).await;
        loop {
            if let Ok(newest) = self.newest().await
                && let Some(t) = cut_off(newest)
            {
                return t;
            }
            tokio::time::sleep(COMMIT_WATCH_AFTER / 4).await;
        }
    }

    async fn commit_fence(&self, producer: &Arc<FutureProducer>) -> Result<(), KafkaError> {
        producer.begin_transaction()?;
        let fence = record::encode_fence(self.me);
        let delivery = producer
            .send_result(
                FutureRecord::<(), [u8]>::to(&self.topic)
                    .partition(0)
                    .payload(&fence[..]),
            )
            .map_err(|(e, _)| e)?;
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
        let (p, timeout) = (producer.clone(), self.op_timeout);
        tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// After this open's producer was fenced: waits up to `reclaim_wait` for the fencer's
    /// records. A winner's (see [`Fencing::beaten`]) means `Fenced`; none means the fencer was
    /// an opener that lost (a stale term, which then fails without writing) or died, so the
    /// caller may claim again.
    pub(super) async fn watch(&self, opened: bool) -> Result<(), LogError> {
        let deadline = Instant::now() + self.reclaim_wait;
        loop {
            let newest = self.newest().await?;
            if self.beaten(newest, opened) {
                return Err(self.fenced(newest));
            }
            if Instant::now() >= deadline {
                tracing::info!(pchannel = %self.pchannel, term = self.me.term,
                    "fenced by an opener that did not take over; claiming again");
                return Ok(());
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
        }
    }
}
