//! The `kafka` backend: each pchannel is a Kafka topic (`{prefix}{pchannel}`, one partition),
//! and a record's [`MessageId`] is its offset (`hi = 0`, `lo = offset`).
//!
//! # Writing
//!
//! A read-write handle owns a *transactional* producer whose `transactional.id` is
//! `{prefix}{pchannel}`. Concurrent `enqueue`s are gathered into one transaction per batch
//! (group commit, see `writer.rs`); an append is acknowledged once its transaction committed
//! (`acks=all`, and visible to `read_committed` readers). Commit and abort markers occupy
//! offsets, so ids are increasing but not contiguous. Every record value carries its writer's
//! term (`record.rs`).
//!
//! # Fencing
//!
//! Storage-level, through the producer epoch of the shared transactional id; every record also
//! carries its writer's owner (term, and a random nonce per read-write open), so the
//! newest record of the topic tells who holds the pchannel. A read-write open at term `T`:
//! 1. creates the topic if it is missing;
//! 2. reads the newest record's owner; a term above `T` means `Fenced`, and nothing is touched
//!    (the usual stale open);
//! 3. `init_transactions`: the broker bumps the epoch of `{prefix}{pchannel}`, ends whatever
//!    transaction an older producer had open, and from then on refuses that producer's
//!    produce, add-partition and commit requests (`ProducerFenced`);
//! 4. reads the newest owner again; a term above `T` (an open at a higher term got further
//!    meanwhile) means `Fenced`, still without writing anything;
//! 5. commits a term fence record in its own transaction. If that commit is itself fenced, it
//!    waits to see who did it (below) and starts again at 3 unless a higher term took over.
//!
//! Everything an old writer acknowledged was committed before step 3 (after it the broker
//! refuses its commits), so it precedes the new owner's records and stays; its next batch fails.
//! Records are in owner order in the log: a producer can only write while it holds the epoch,
//! and each owner checks (4) before writing that no higher term wrote after it.
//!
//! A fenced writer cannot tell from the broker *who* bumped the epoch: a higher term, a later
//! open at the same term — or a lower-term open that raced this one past step 2 and fails at
//! step 4 without writing. So it waits up to [`KafkaConfig::reclaim_wait`] for a record of a
//! higher term or of another open at its term: one means `Fenced`, for this append and every
//! later one; none means the fencer did not take over, and the writer claims the pchannel back
//! (steps 3–5 with a new producer) and writes the batch again. A racing stale open thus delays
//! the owner by up to `reclaim_wait` but does not break it, and a higher term always wins (its
//! fence lands within moments of its epoch bump). A commit that hangs (a fenced epoch's request
//! that the broker answers with retriable errors) ends as soon as a winner is visible.
//! `truncate` reads the newest owner back too, so a fenced handle's truncate is `Fenced`.
//!
//! # Reading
//!
//! A reader is a `read_committed` consumer (see [`KafkaConfig::read_committed`]) assigned to
//! partition 0 at the policy's offset
//! (`All` = the oldest retained, `Latest` = the end offset when `read` is called, `StartFrom(id)` =
//! `id`, `StartAfter(id)` = `id + 1`), without a consumer group. Term fences are skipped; a value
//! that is not ours is `Corrupted`. The consumer's own prefetch is capped
//! (`queued.min.messages` = the read-ahead), records then go through a channel bounded by the
//! read-ahead.
//!
//! # Truncation
//!
//! The test broker (Tansu 0.6.0) does not implement `DeleteRecords`, so `truncate` only checks
//! that the handle is not fenced; retention is the topic's (`retention.ms`/`retention.bytes`).
//! The contract allows, and does not require, discarding.
//!
//! # Limits of the test broker (Tansu 0.6.0)
//!
//! Tansu holds back records of open transactions and fences older producer epochs, but a
//! `read_committed` reader also receives records of *aborted* transactions (seen with
//! kafka-python; Kafka itself filters them). Such records were never acknowledged (a batch a
//! fence cut off, a failed batch), so the contract holds — nothing acknowledged is missed, and
//! records may show up whose append failed or, after a claim-back, twice (the aborted copy and
//! the acknowledged one, with different ids). On Kafka they stay invisible.
//!
//! Worse, when an epoch bump races the old producer's requests, Tansu can leave the old epoch's
//! transaction open for good: the partition's last stable offset then stays at that epoch's
//! first offset, and `read_committed` readers stop there forever (seen in about one run in three
//! of the racing fencing tests; another epoch bump does not clear it). On Tansu, set
//! [`KafkaConfig::read_committed`] to false — the tests do.

mod fence;
mod reader;
mod record;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::types::RDKafkaErrorCode;
use sluice_types::{MessageId, MutableMessage, PChannel, Term};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::fence::{Fencing, blocking};
use self::reader::{assign, unavailable};
use self::record::Owner;
use self::writer::{Writer, WriterSettings};
use crate::{
    AccessMode, AppendFuture, DeliverPolicy, LogError, LogHandle, LogProvider, LogStream,
    OpenOptions, ReadOptions,
};

/// Settings of the kafka backend.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers` (e.g. `127.0.0.1:9092`).
    pub bootstrap_servers: String,
    /// Prefix of every topic and transactional id (`""` for none). Default `"sluice-"`.
    pub prefix: String,
    /// Records per transaction at most. Default 4096.
    pub max_batch_records: usize,
    /// Encoded bytes accepted but not yet acknowledged before `enqueue` waits. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// The largest encoded record (keep it under the broker's `message.max.bytes`).
    /// Default 1000 KiB.
    pub max_record_bytes: usize,
    /// Timeout of each blocking client call (create topic, init/commit a transaction, read the
    /// end of a topic). Default 30 s.
    pub op_timeout: Duration,
    /// How long the broker may hold a fetch of a caught-up reader (`fetch.wait.max.ms`):
    /// the tailing latency. Default 10 ms.
    pub fetch_wait_max: Duration,
    /// How long a writer whose producer was fenced waits for the fencer's records before it
    /// concludes that the fencer was a stale opener (which fails without writing) and claims
    /// the pchannel back; also how long an open whose own fence was cut off waits before it
    /// tries again. Default 3 s.
    pub reclaim_wait: Duration,
    /// Readers see only committed records (`isolation.level=read_committed`). Default true.
    /// Set it to false on a broker whose last stable offset can get stuck (Tansu 0.6.0, see
    /// the module docs): readers then also see records of open and aborted transactions —
    /// never acknowledged ones, so the contract still holds.
    pub read_committed: bool,
    /// Extra librdkafka settings for every client (producers and consumers).
    pub client_settings: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    /// Everything but the values of `client_settings` (they may hold a SASL password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings: Vec<&str> = self.client_settings.iter().map(|(k, _)| &**k).collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("prefix", &self.prefix)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("op_timeout", &self.op_timeout)
            .field("fetch_wait_max", &self.fetch_wait_max)
            .field("reclaim_wait", &self.reclaim_wait)
            .field("read_committed", &self.read_committed)
            .field("client_settings", &settings)
            .finish()
    }
}

impl KafkaConfig {
    /// The defaults for a cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            prefix: "sluice-".into(),
            max_batch_records: 4096,
            max_pending_bytes: 64 << 20,
            max_record_bytes: 1000 << 10,
            op_timeout: Duration::from_secs(30),
            fetch_wait_max: Duration::from_millis(10),
            reclaim_wait: Duration::from_secs(3),
            read_committed: true,
            client_settings: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        let bad = |what: &str| Err(LogError::InvalidArgument(format!("kafka backend: {what}")));
        if self.bootstrap_servers.is_empty() {
            return bad("bootstrap_servers is empty");
        }
        if self.max_batch_records == 0 || self.max_record_bytes == 0 {
            return bad("max_batch_records and max_record_bytes must be > 0");
        }
        if self.max_pending_bytes < self.max_record_bytes
            || self.max_pending_bytes > u32::MAX as usize
        {
            return bad("max_pending_bytes must be in max_record_bytes..=4 GiB");
        }
        if self.op_timeout.is_zero() {
            return bad("op_timeout must be > 0");
        }
        // Topic names allow [a-zA-Z0-9._-]; pchannel names are checked at open.
        if !self.prefix.chars().all(topic_char) {
            return bad("prefix may only hold ASCII letters, digits, '.', '_' and '-'");
        }
        Ok(())
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("socket.nagle.disable", "true")
            .set("log_level", "3");
        for (k, v) in &self.client_settings {
            c.set(k, v);
        }
        c
    }

    fn consumer(&self, read_ahead: usize) -> ClientConfig {
        let mut c = self.client();
        c.set("group.id", format!("{}reader", self.prefix))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "isolation.level",
                if self.read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait_max.as_millis().clamp(1, 10_000).to_string(),
            )
            .set("fetch.error.backoff.ms", "10")
            .set(
                "queued.min.messages",
                read_ahead.clamp(1, 10_000_000).to_string(),
            )
            // librdkafka waits this long before fetching again once its queue holds
            // `queued.min.messages` (default 1 s): a caught-up reader refetches quickly.
            .set("fetch.queue.backoff.ms", "5");
        c
    }

    fn producer(&self, transactional_id: &str) -> ClientConfig {
        let mut c = self.client();
        c.set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set(
                "transaction.timeout.ms",
                self.op_timeout.as_millis().clamp(1000, 900_000).to_string(),
            );
        c
    }
}

fn topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Opens logs stored in Kafka topics.
pub struct KafkaProvider {
    config: Arc<KafkaConfig>,
    admin: AdminClient<DefaultClientContext>,
}

impl std::fmt::Debug for KafkaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProvider")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaProvider {
    /// A provider for `config` (connects lazily; creates nothing).
    pub fn new(config: KafkaConfig) -> Result<KafkaProvider, LogError> {
        config.validate()?;
        let admin = config
            .client()
            .create()
            .map_err(|e| LogError::InvalidArgument(format!("kafka backend client: {e}")))?;
        Ok(KafkaProvider {
            config: Arc::new(config),
            admin,
        })
    }

    /// The topic (and transactional id) of `pchannel`.
    pub fn topic(&self, pchannel: &PChannel) -> Result<String, LogError> {
        let topic = format!("{}{}", self.config.prefix, pchannel);
        if topic.len() > 249 || !topic.chars().all(topic_char) {
            return Err(LogError::InvalidArgument(format!(
                "kafka backend: {topic:?} is not a valid topic name"
            )));
        }
        Ok(topic)
    }

    async fn create_topic(&self, topic: &str) -> Result<(), LogError> {
        let opts = AdminOptions::new().operation_timeout(Some(self.config.op_timeout));
        let results = self
            .admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &opts,
            )
            .await
            .map_err(|e| unavailable("create topic", e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(LogError::Unavailable(format!(
                        "kafka: create topic {t}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LogProvider for KafkaProvider {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    async fn open(&self, options: OpenOptions) -> Result<Arc<dyn LogHandle>, LogError> {
        let topic = self.topic(&options.pchannel)?;
        self.create_topic(&topic).await?;
        let fencing = Arc::new(Fencing {
            pchannel: options.pchannel.clone(),
            topic: topic.clone(),
            me: Owner {
                term: options.term.0,
                nonce: rand::random::<u64>() | 1,
            },
            producer_config: self.config.producer(&topic),
            consumer_config: self.config.consumer(1),
            op_timeout: self.config.op_timeout,
            reclaim_wait: self.config.reclaim_wait,
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let writer = match options.mode {
            AccessMode::ReadOnly => None,
            AccessMode::ReadWrite => {
                let producer = fencing.claim(false).await?;
                tracing::info!(pchannel = %options.pchannel, term = options.term.0, topic,
                    "opened kafka log read-write");
                let w = Arc::new(Writer::new(
                    fencing.clone(),
                    producer,
                    WriterSettings {
                        max_batch_records: self.config.max_batch_records,
                        max_pending_bytes: self.config.max_pending_bytes,
                        max_record_bytes: self.config.max_record_bytes,
                        op_timeout: self.config.op_timeout,
                    },
                ));
                tasks.spawn(w.clone().run(cancel.clone()));
                Some(w)
            }
        };
        Ok(Arc::new(KafkaHandle {
            options,
            config: self.config.clone(),
            topic,
            fencing,
            writer,
            closed: AtomicBool::new(false),
            cancel,
            tasks,
        }))
    }
}

struct KafkaHandle {
    options: OpenOptions,
    config: Arc<KafkaConfig>,
    topic: String,
    fencing: Arc<Fencing>,
    writer: Option<Arc<Writer>>,
    closed: AtomicBool,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl KafkaHandle {
    fn writer(&self) -> Result<&Arc<Writer>, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        self.writer
            .as_ref()
            .ok_or_else(|| LogError::ReadOnly(self.options.pchannel.clone()))
    }
}

#[async_trait]
impl LogHandle for KafkaHandle {
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
        self.writer()?.enqueue(message, &self.cancel).await
    }

    async fn read(&self, options: ReadOptions) -> Result<LogStream, LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let read_ahead = options.effective_read_ahead();
        let consumer: StreamConsumer = self
            .config
            .consumer(read_ahead)
            .create()
            .map_err(|e| unavailable("create consumer", e))?;
        let offset = match options.policy {
            DeliverPolicy::All => Offset::Beginning,
            DeliverPolicy::StartFrom(id) => start_offset(id, 0)?,
            DeliverPolicy::StartAfter(id) => start_offset(id, 1)?,
            DeliverPolicy::Latest => {
                let (topic, timeout) = (self.topic.clone(), self.config.op_timeout);
                let (consumer, end) = blocking(move || {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, 0, timeout)
                        .map_err(|e| unavailable("watermarks", e))?;
                    Ok((consumer, high))
                })
                .await?;
                return self.start_reader(consumer, Offset::Offset(end), read_ahead);
            }
        };
        self.start_reader(consumer, offset, read_ahead)
    }

    async fn truncate(&self, _up_to: MessageId) -> Result<(), LogError> {
        let writer = self.writer()?;
        if let Some(e) = writer.failure() {
            return Err(e);
        }
        let newest = self.fencing.newest().await?;
        if self.fencing.beaten(newest, true) {
            let e = self.fencing.fenced(newest);
            writer.fail(e.clone());
            return Err(e);
        }
        // Nothing to delete: see the module docs, "Truncation".
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(w) = &self.writer {
            w.fail(LogError::Closed);
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(p) = self.writer.as_ref().and_then(|w| w.take_producer()) {
            let _ = tokio::task::spawn_blocking(move || drop(p)).await;
        }
    }
}

impl KafkaHandle {
    fn start_reader(
        &self,
        consumer: StreamConsumer,
        offset: Offset,
        read_ahead: usize,
    ) -> Result<LogStream, LogError> {
        assign(&consumer, &self.topic, offset)?;
        let (tx, rx) = mpsc::channel(read_ahead);
        let stop = self.cancel.child_token();
        let guard = stop.clone().drop_guard();
        let tasks = self.tasks.clone();
        let topic = self.topic.clone();
        self.tasks.spawn(async move {
            let consumer = reader::run(consumer, topic, tx, stop).await;
            // Closing a client waits for its threads: not on the runtime's workers.
            tasks.spawn_blocking(move || drop(consumer));
        });
        Ok(LogStream::new(rx, Some(guard)))
    }
}

fn start_offset(id: MessageId, plus: u64) -> Result<Offset, LogError> {
    id.lo()
        .checked_add(plus)
        .and_then(|o| i64::try_from(o).ok())
        .filter(|_| id.hi() == 0)
        .map(Offset::Offset)
        .ok_or_else(|| LogError::InvalidArgument(format!("{id} is not a kafka offset")))
}

impl Drop for KafkaHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
