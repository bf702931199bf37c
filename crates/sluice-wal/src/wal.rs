//! The WAL of one pchannel: open sequence, append path, timetick sync, segment flushing, reads.
//!
//! The append path is an ordered chain of steps (validate ▸ lock ▸ place ▸ observe ▸ txn id ▸
//! timestamp ▸ txn ▸ log), each owning what it does before the log append and after it; see
//! [`crate::append`].
//!
//! A background task writes a timetick every `timetick_interval` (persisted only when real
//! messages were acknowledged since the last one, or a new reader asked for one) and hands the
//! acknowledged messages, in timestamp order, to the write-ahead buffer that tailing readers use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_log::{LogError, LogHandle, LogProvider, OpenOptions};
use sluice_types::backoff::Backoff;
use sluice_types::message::{FlushHeader, Header, TimeTickHeader};
use sluice_types::{
    AppendResult, ImmutableMessage, MessageId, MessageType, MutableMessage, PChannel, Term,
    Timestamp, VChannel,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WalError;
use crate::ack::{AckState, Ticket};
use crate::append::{self, Append};
use crate::checkpoint::{CheckpointStore, Checkpointer};
use crate::lock::LockManager;
use crate::producer::{Claim, RunToEnd};
use crate::scanner::{Scanner, ScannerOptions, start_scanner};
use crate::shard::{NodeGrowingBytes, Placement, SegmentConfig, ShardManager};
use crate::tso::{DEFAULT_BATCH, IdAllocator, Refiller, TimestampOracle};
use crate::txn::{Ended, TxnManager};
use crate::wab::{WabConfig, WriteAheadBuffer};

/// Settings of one WAL.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// How often timeticks are written. Default 200 ms.
    pub timetick_interval: Duration,
    /// Timestamps fetched from the oracle at once. Default 1000.
    pub tso_batch: u32,
    /// How long an append waits for timestamps while the oracle is unavailable (a coordinator
    /// restarting or failing over, its meta store briefly away) before it fails with a
    /// retryable error. Waiting here, the append goes on as soon as the oracle answers again,
    /// instead of after the client's next backoff. Default 10 s.
    pub oracle_patience: Duration,
    /// Keepalive of a transaction whose BeginTxn asks for 0. Default 10 s.
    pub txn_default_keepalive: Duration,
    /// How long a graceful close waits for open transactions. Default 3 s.
    pub close_txn_wait: Duration,
    /// The longest pause between retries of a failed log append. Default 5 s.
    pub append_retry_max: Duration,
    /// Write-ahead buffer limits.
    pub wab: WabConfig,
    /// Segment policies.
    pub segments: SegmentConfig,
    /// How often the recovery snapshot is saved (when anything changed). Default 5 s.
    pub checkpoint_interval: Duration,
    /// Save the recovery snapshot early once this many messages were applied since the last
    /// one. Default 20 000.
    pub checkpoint_dirty_messages: u64,
    /// When the log no longer holds the snapshot's checkpoint (truncated past it by hand, or
    /// the log was replaced), open anyway: replay from the oldest retained record on top of
    /// the snapshot. What the lost records changed (segments created, DDL) is missing from the
    /// shard state. Default false: the open fails with an error naming this setting.
    pub replay_past_missing_checkpoint: bool,
    /// What is remembered of idempotent producers (exactly-once appends).
    pub producers: crate::producer::ProducerConfig,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            timetick_interval: Duration::from_millis(200),
            tso_batch: DEFAULT_BATCH,
            oracle_patience: Duration::from_secs(10),
            txn_default_keepalive: Duration::from_secs(10),
            close_txn_wait: Duration::from_secs(3),
            append_retry_max: Duration::from_secs(5),
            wab: WabConfig::default(),
            segments: SegmentConfig::default(),
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_dirty_messages: 20_000,
            replay_past_missing_checkpoint: false,
            producers: crate::producer::ProducerConfig::default(),
        }
    }
}

/// How a WAL's open rebuilt its state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// The checkpoint the replay started at (id, timestamp); `None`: from the start of the log.
    pub checkpoint: Option<(MessageId, Timestamp)>,
    /// Records applied.
    pub replayed: u64,
    /// Records read and skipped (at or below the checkpoint's timestamp).
    pub skipped: u64,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

/// What the WAL needs from its surroundings.
#[derive(Clone)]
pub struct WalDeps {
    /// Timestamps.
    pub oracle: Arc<dyn TimestampOracle>,
    /// Transaction and segment ids.
    pub ids: Arc<dyn IdAllocator>,
    /// Growing bytes of the whole node.
    pub node_growing: Arc<NodeGrowingBytes>,
    /// Admission of appends, shared by the node's WALs ([`crate::pressure`]).
    pub pressure: Arc<crate::Pressure>,
    /// Where recovery snapshots are kept; `None`: every open replays the whole retained log.
    pub checkpoints: Option<Arc<dyn CheckpointStore>>,
    /// Checks Insert and Delete bodies of collections that have a schema; `None`: bodies are
    /// not interpreted.
    pub rows: Option<Arc<dyn crate::RowCheck>>,
}

impl std::fmt::Debug for WalDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalDeps").finish_non_exhaustive()
    }
}

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const FENCED: u8 = 2;

pub(crate) struct Inner {
    pub(crate) pchannel: PChannel,
    pressure: Arc<crate::Pressure>,
    pub(crate) term: Term,
    config: WalConfig,
    log: Arc<dyn LogHandle>,
    pub(crate) ids: Arc<dyn IdAllocator>,
    pub(crate) rows: Option<Arc<dyn crate::RowCheck>>,
    refiller: Refiller,
    pub(crate) ack: Mutex<AckState>,
    pub(crate) txns: TxnManager,
    pub(crate) locks: LockManager,
    pub(crate) shard: Arc<ShardManager>,
    /// Idempotent producers' remembered appends.
    producers: crate::producer::Producers,
    wab: Arc<WriteAheadBuffer>,
    /// What each open reader has taken (see `Scanner::progress`), for the scanner-lag metric.
    readers: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicU64>>>,
    /// The replica recovery snapshots are taken from, and where they go.
    checkpointer: Option<(Checkpointer, Arc<dyn CheckpointStore>)>,
    checkpoint_wakeup: Notify,
    recovery: RecoveryStats,
    state: AtomicU8,
    force_tick: AtomicBool,
    tick_wakeup: Notify,
    /// Woken by every acknowledgement so tailing readers get messages without waiting for the
    /// next persisted timetick.
    pub(crate) ack_wakeup: Notify,
    /// The metrics every append records, looked up once (an error's counter is looked up when
    /// it happens).
    appends_ok: metrics::Counter,
    append_seconds: metrics::Histogram,
}

/// The WAL of one pchannel at one term.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("pchannel", &self.inner.pchannel)
            .field("term", &self.inner.term)
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The write-ahead buffer's bytes and evictions, how far the newest timetick is behind the
    /// clock, and how far the slowest open reader is behind that timetick
    /// (`sluice_wal_buffer_bytes`, `sluice_wal_buffer_evictions_total`,
    /// `sluice_wal_timetick_lag_seconds`, `sluice_wal_scanners`, `sluice_wal_scanner_lag_seconds`,
    /// per pchannel).
    fn record_buffer_metrics(&self) {
        let stats = self.wab.stats();
        let pchannel = self.pchannel.as_str().to_owned();
        metrics::gauge!("sluice_wal_buffer_bytes", "pchannel" => pchannel.clone())
            .set(stats.bytes as f64);
        metrics::counter!("sluice_wal_buffer_evictions_total", "pchannel" => pchannel.clone())
            .absolute(stats.evicted);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let tick_ms = stats.latest_timetick.0 >> 18;
        metrics::gauge!("sluice_wal_timetick_lag_seconds", "pchannel" => pchannel.clone())
            .set(now_ms.saturating_sub(tick_ms) as f64 / 1000.0);
        // The reader furthest behind: the newest timetick less the newest timestamp it has taken
        // (a reader counts from its first message on).
        let (count, behind_ms) = {
            let mut readers = self.readers.lock();
            readers.retain(|r| r.strong_count() > 0);
            let behind = readers
                .iter()
                .filter_map(|r| Some(r.upgrade()?.load(Ordering::Relaxed)))
                .filter(|&taken| taken > 0)
                .map(|taken| tick_ms.saturating_sub(taken >> 18))
                .max();
            (readers.len(), behind.unwrap_or(0))
        };
        metrics::gauge!("sluice_wal_scanners", "pchannel" => pchannel.clone()).set(count as f64);
        metrics::gauge!("sluice_wal_scanner_lag_seconds", "pchannel" => pchannel)
            .set(behind_ms as f64 / 1000.0);
    }
}

impl Wal {
    /// Opens the WAL of `pchannel` at `term`: opens the log read-write (fencing older terms),
    /// writes the first timetick, runs recovery, starts the background tasks. Appends are
    /// accepted once this returns.
    #[tracing::instrument(name = "wal.open", level = "info", skip_all, fields(pchannel = %pchannel, term = term.0))]
    pub async fn open(
        provider: &dyn LogProvider,
        pchannel: PChannel,
        term: Term,
        config: WalConfig,
        deps: WalDeps,
    ) -> Result<Wal, WalError> {
        let log = provider
            .open(OpenOptions::read_write(pchannel.clone(), term))
            .await?;
        let cancel = CancellationToken::new();
        let refiller = Refiller::new(deps.oracle.clone(), config.tso_batch)
            .patient(config.oracle_patience, cancel.clone());
        let (first, first_ts) = match Self::write_first_timetick(&log, &refiller, term).await {
            Ok(v) => v,
            Err(e) => {
                log.close().await;
                return Err(e);
            }
        };
        let shard = Arc::new(ShardManager::new(
            config.segments.clone(),
            deps.node_growing.clone(),
        ));
        let producers = crate::producer::Producers::new(config.producers);
        let recovered = recover(
            &log,
            &shard,
            &producers,
            &first,
            deps.checkpoints.as_deref(),
            config.replay_past_missing_checkpoint,
        )
        .await;
        let recovery = match recovered {
            Ok(r) => r,
            Err(e) => {
                log.close().await;
                return Err(e);
            }
        };
        // The replica starts at this term's first timetick: every earlier message is in the
        // recovered state, every later one is above its timestamp.
        let checkpointer = deps.checkpoints.map(|store| {
            let (collections, segments) = shard.export(first_ts);
            let state = crate::checkpoint::Snapshot {
                collections,
                segments,
                producers: producers.export(),
                ..Default::default()
            };
            let replica = Checkpointer::new(
                config.segments.clone(),
                config.producers,
                &state,
                first.id(),
                first_ts,
            );
            (replica, store)
        });
        let wab = match WriteAheadBuffer::new(config.wab, first.clone()) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log.close().await;
                return Err(e);
            }
        };
        let pchannel_name = pchannel.as_str().to_owned();
        let inner = Arc::new(Inner {
            pressure: deps.pressure.clone(),
            pchannel,
            term,
            log,
            ids: deps.ids,
            rows: deps.rows,
            refiller,
            ack: Mutex::new(AckState::new(first_ts, first.id())),
            txns: TxnManager::new(config.txn_default_keepalive),
            locks: LockManager::default(),
            shard,
            producers,
            wab,
            readers: Mutex::default(),
            checkpointer,
            checkpoint_wakeup: Notify::new(),
            recovery,
            state: AtomicU8::new(OPEN),
            force_tick: AtomicBool::new(false),
            tick_wakeup: Notify::new(),
            ack_wakeup: Notify::new(),
            appends_ok: metrics::counter!(
                "sluice_wal_appends_total",
                "pchannel" => pchannel_name.clone(),
                "code" => "OK"
            ),
            append_seconds: metrics::histogram!(
                "sluice_wal_append_seconds",
                "pchannel" => pchannel_name
            ),
            config,
        });
        let wal = Wal {
            inner,
            cancel,
            tasks: TaskTracker::new(),
        };
        wal.tasks
            .spawn(timetick_loop(wal.inner.clone(), wal.cancel.clone()));
        wal.tasks
            .spawn(segment_loop(wal.inner.clone(), wal.cancel.clone()));
        if wal.inner.checkpointer.is_some() {
            wal.tasks
                .spawn(checkpoint_loop(wal.inner.clone(), wal.cancel.clone()));
        }
        Ok(wal)
    }

    /// The first timetick of a term, written straight to the log: its timestamp is above
    /// anything an earlier owner used, and its last-confirmed id is itself.
    async fn write_first_timetick(
        log: &Arc<dyn LogHandle>,
        refiller: &Refiller,
        term: Term,
    ) -> Result<(ImmutableMessage, Timestamp), WalError> {
        let slot = Mutex::new(crate::tso::Batch::default());
        refiller.refill(&slot, None).await?;
        let ts = slot
            .lock()
            .take(None)
            .ok_or_else(|| WalError::Unrecoverable("timestamp oracle returned no batch".into()))?;
        let mut msg = MutableMessage::builder(TimeTickHeader::default()).build()?;
        msg.set_timestamp(ts);
        msg.set_term(term);
        msg.set_last_confirmed_is_self();
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(5));
        loop {
            match log.append(msg.clone()).await {
                Ok(id) => return Ok((msg.into_immutable(id), ts)),
                Err(e) if e.retryable() => {
                    tracing::warn!(error = %e, "first timetick failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The pchannel.
    pub fn pchannel(&self) -> &PChannel {
        &self.inner.pchannel
    }

    /// The term.
    pub fn term(&self) -> Term {
        self.inner.term
    }

    /// Bytes the write-ahead buffer holds now.
    pub fn buffer_bytes(&self) -> u64 {
        self.inner.wab.stats().bytes as u64
    }

    /// Whether appends can still succeed (not closing, not fenced).
    pub fn is_available(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == OPEN
    }

    /// The latest timestamp a read of `vchannel` may use.
    pub fn latest_mvcc(&self, vchannel: &VChannel) -> Timestamp {
        self.inner.ack.lock().mvcc(vchannel)
    }

    /// A timestamp at or above `vchannel`'s newest acknowledged write (at this term, else the
    /// WAL's open, which is above every write of older terms): a STRONG read waits for this,
    /// not for the latest timetick, so it never waits for a tick that only says nothing
    /// happened.
    pub fn last_write(&self, vchannel: &VChannel) -> Timestamp {
        self.inner.ack.lock().last_write(vchannel)
    }

    /// How this WAL's open rebuilt its state.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.inner.recovery
    }

    /// Saves a recovery snapshot now if anything changed since the last one (tests, and
    /// before a planned move).
    pub async fn checkpoint(&self) -> Result<(), WalError> {
        self.inner.save_checkpoint().await
    }

    /// Where the last recovery snapshot this WAL saved starts its replay (`None`: it saved
    /// none, or has no snapshot store — then its next owner replays the whole log, which must
    /// not be truncated).
    pub fn saved_checkpoint(&self) -> Option<MessageId> {
        self.inner
            .checkpointer
            .as_ref()
            .and_then(|(replica, _)| replica.saved_id())
    }

    /// Truncates the log up to and including `up_to`, at the backend's granularity (whole
    /// files on `local`, whole blocks on `object`); the caller keeps what is still needed.
    pub async fn truncate(&self, up_to: MessageId) -> Result<(), WalError> {
        self.inner.check_open()?;
        Ok(self.inner.log.truncate(up_to).await?)
    }

    /// Growing segments and their bytes (status and tests).
    pub fn growing_segments(&self) -> Vec<(i64, u64)> {
        self.inner.shard.growing()
    }

    /// Every collection of this pchannel created with a schema: (vchannel, collection, schema
    /// in force).
    pub fn schemas(&self) -> Vec<(String, i64, sluice_types::schema::CollectionSchema)> {
        self.inner.shard.schemas()
    }

    /// The schema in force for `vchannel`'s collection, if it was created with one.
    pub fn schema(&self, vchannel: &VChannel) -> Option<sluice_types::schema::CollectionSchema> {
        self.inner
            .shard
            .schema(Some(vchannel.as_str()), vchannel.collection().0)
    }

    /// The partitions `vchannel`'s collection has now (`None`: it is not live there).
    pub fn partitions(&self, vchannel: &VChannel) -> Option<Vec<i64>> {
        self.inner
            .shard
            .partitions(Some(vchannel.as_str()), vchannel.collection().0)
    }

    /// Why a known segment sealed, if it did (status and tests).
    pub fn seal_reason(&self, segment: i64) -> Option<crate::shard::SealReason> {
        self.inner.shard.seal_reason(segment)
    }

    /// Appends a message from a client. Self-controlled messages (TimeTick, CreateSegment,
    /// Flush) and the read-side Txn are refused; transaction parts must carry their context.
    ///
    /// A message numbered by an idempotent producer (`MutableMessage::set_producer`) is appended
    /// once: a retry gets the original's result (see [`crate::producer`]).
    #[tracing::instrument(name = "wal.append", level = "debug", skip_all, fields(pchannel = %self.inner.pchannel))]
    pub async fn append(&self, msg: MutableMessage) -> Result<AppendResult, WalError> {
        let started = std::time::Instant::now();
        let txn_event = match msg.message_type() {
            Ok(MessageType::BeginTxn) => Some("begin"),
            Ok(MessageType::CommitTxn) => Some("commit"),
            Ok(MessageType::RollbackTxn) => Some("rollback"),
            _ => None,
        };
        let r = match self.inner.pressure.admit(msg.estimate_size() as u64).await {
            Ok(_in_flight) => self.append_once(msg).await,
            Err(e) => Err(e),
        };
        let pchannel = || self.inner.pchannel.as_str().to_owned();
        if let (Some(event), Ok(_)) = (txn_event, &r) {
            metrics::counter!("sluice_wal_txns_total", "pchannel" => pchannel(), "event" => event)
                .increment(1);
        }
        match &r {
            Ok(_) => self.inner.appends_ok.increment(1),
            Err(e) => metrics::counter!(
                "sluice_wal_appends_total",
                "pchannel" => pchannel(),
                "code" => e.code().name()
            )
            .increment(1),
        }
        self.inner
            .append_seconds
            .record(started.elapsed().as_secs_f64());
        r
    }

    async fn append_once(&self, msg: MutableMessage) -> Result<AppendResult, WalError> {
        self.inner.check_open()?;
        let ty = msg.message_type()?;
        let Some((producer, sequence)) = crate::producer::numbering(&msg)? else {
            return self
                .inner
                .run_chain(append::CLIENT, Append::new(msg, ty, None))
                .await;
        };
        let claim = self.inner.producers.claim(producer, sequence)?;
        if !matches!(claim, Claim::Fresh) {
            metrics::counter!(
                "sluice_wal_appends_deduplicated_total",
                "pchannel" => self.inner.pchannel.as_str().to_owned()
            )
            .increment(1);
        }
        match claim {
            Claim::Done(r) => Ok(r),
            Claim::Wait(mut rx) => {
                let outcome = rx
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| WalError::Shutdown)?;
                outcome.clone().unwrap_or(Err(WalError::Shutdown))
            }
            Claim::Fresh => {
                // Runs to its end even when the caller goes away: a retry gets its outcome.
                let inner = self.inner.clone();
                RunToEnd::new(async move {
                    let r = inner
                        .run_chain(append::CLIENT, Append::new(msg, ty, None))
                        .await;
                    inner.producers.finish(producer, sequence, &r);
                    r
                })
                .await
            }
        }
    }

    /// Starts a scanner over this WAL. Its catch-up reads the log; once caught up it tails the
    /// write-ahead buffer.
    pub fn read(&self, options: ScannerOptions) -> Result<Scanner, WalError> {
        self.inner.check_not_closing()?;
        let weak = Arc::downgrade(&self.inner);
        let hook: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.force_tick.store(true, Ordering::Release);
                inner.tick_wakeup.notify_one();
            }
        });
        let scanner = start_scanner(
            self.inner.log.clone(),
            Some(self.inner.wab.clone()),
            options,
            Some(hook),
        )?;
        let mut readers = self.inner.readers.lock();
        readers.retain(|r| r.strong_count() > 0);
        readers.push(scanner.progress());
        Ok(scanner)
    }

    /// Closes gracefully: refuses new transactions and waits (bounded) for open ones, refuses
    /// appends, stops the background tasks, closes the buffer and the log.
    pub async fn close(&self) {
        let inner = &self.inner;
        inner.txns.start_closing();
        let deadline = tokio::time::Instant::now() + inner.config.close_txn_wait;
        while inner.txns.open_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = inner
            .state
            .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // A last snapshot, so the next owner replays as little as possible.
        if inner.state.load(Ordering::Acquire) != FENCED
            && let Err(e) = inner.save_checkpoint().await
        {
            tracing::warn!(error = %e, "saving the last recovery snapshot failed");
        }
        inner.wab.close();
        inner.log.close().await;
    }
}

impl Inner {
    fn check_not_closing(&self) -> Result<(), WalError> {
        match self.state.load(Ordering::Acquire) {
            CLOSING => Err(WalError::Shutdown),
            _ => Ok(()),
        }
    }

    pub(crate) fn check_open(&self) -> Result<(), WalError> {
        match self.state.load(Ordering::Acquire) {
            OPEN => Ok(()),
            FENCED => Err(self.fenced()),
            _ => Err(WalError::Shutdown),
        }
    }

    fn fenced(&self) -> WalError {
        WalError::Fenced {
            pchannel: self.pchannel.clone(),
            term: self.term,
        }
    }

    /// Checks vchannel invariants and assigns an insert to a segment, writing CreateSegment
    /// when no growing segment has room.
    pub(crate) async fn place(
        &self,
        msg: &mut MutableMessage,
        header: &Header,
        vchannel: Option<&VChannel>,
    ) -> Result<Option<i64>, WalError> {
        loop {
            let (collection, partition) = match self.shard.place(msg, header)? {
                Placement::Placed(seg) => return Ok(seg),
                Placement::NeedSegment {
                    collection,
                    partition,
                } => (collection, partition),
            };
            let _gate = self.shard.create_gate.lock().await;
            if let Placement::Placed(seg) = self.shard.place(msg, header)? {
                return Ok(seg);
            }
            let segment = self.ids.allocate_id().await?;
            let header = self
                .shard
                .new_segment_header(collection, partition, segment);
            let mut b = MutableMessage::builder(header);
            if let Some(v) = vchannel {
                b = b.vchannel(v);
            }
            // The insert already holds the vchannel's shared lock, which is what CreateSegment
            // needs; it is written without taking it again. (Boxed: placement is itself a step
            // of the chain this runs.)
            let create = Append::new(b.build()?, MessageType::CreateSegment, vchannel.cloned());
            Box::pin(self.run_chain(append::SELF_WRITTEN, create)).await?;
        }
    }

    /// Takes a timestamp ≥ `barrier` and its last-confirmed id, refilling from the oracle as
    /// needed. The timestamp is registered in flight and must be acknowledged or failed.
    pub(crate) async fn allocate(&self, barrier: Option<Timestamp>) -> Result<Ticket, WalError> {
        loop {
            if let Some(v) = self.ack.lock().allocate(barrier) {
                return Ok(v);
            }
            let slot = Mutex::new(crate::tso::Batch::default());
            {
                let ack = self.ack.lock();
                *slot.lock() = ack.batch;
            }
            self.refiller.refill(&slot, barrier).await?;
            let fresh = *slot.lock();
            let mut ack = self.ack.lock();
            // Keep whichever batch is newer: another task may have refilled meanwhile, and
            // timestamps must never go backwards.
            if fresh.is_after(&ack.batch) {
                ack.batch = fresh;
            }
        }
    }

    pub(crate) fn txns_ended(&self, ended: Ended) {
        let ids = ended.run();
        if !ids.is_empty() {
            let mut ack = self.ack.lock();
            for id in ids {
                ack.close_txn(id);
            }
        }
    }

    /// Appends to the log, retrying retryable errors with backoff (10 ms → `append_retry_max`).
    /// A fence makes the WAL permanently unavailable.
    pub(crate) async fn append_to_log(&self, msg: &MutableMessage) -> Result<MessageId, WalError> {
        let mut backoff = Backoff::new(Duration::from_millis(10), self.config.append_retry_max);
        loop {
            match self.log.append(msg.clone()).await {
                Ok(id) => return Ok(id),
                Err(e) if e.is_fenced() => {
                    self.state.store(FENCED, Ordering::Release);
                    tracing::warn!(pchannel = %self.pchannel, term = %self.term, "WAL fenced");
                    return Err(self.fenced());
                }
                Err(LogError::Closed) => return Err(WalError::Shutdown),
                Err(e) if e.retryable() => {
                    if self.state.load(Ordering::Acquire) != OPEN {
                        return Err(self.check_open().err().unwrap_or(WalError::Shutdown));
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "log append failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One timetick: plan, expire transactions, write it if it must be persisted, hand the
    /// acknowledged messages and the tick to the write-ahead buffer.
    /// `persist_due`: the persisted-timetick interval has passed, so a timetick covering newly
    /// released messages is written to the log.
    /// Releases what is acknowledged to readers; says whether a tick was persisted and how
    /// many messages the release carried.
    async fn sync_timetick(&self, persist_due: bool) -> Result<(bool, usize), WalError> {
        let force = self.force_tick.swap(false, Ordering::AcqRel);
        let sync = self.allocate(None).await?;
        let Some(plan) = self.ack.lock().plan_sync(sync, force, persist_due) else {
            return Ok((false, 0));
        };
        let persisted = plan.persist;
        let released = plan.messages.len();
        if let Some((replica, _)) = &self.checkpointer {
            let dirty = replica.apply(&plan.messages, plan.last_confirmed, plan.tick);
            if dirty >= self.config.checkpoint_dirty_messages {
                self.checkpoint_wakeup.notify_one();
            }
        }
        let ended = self.txns.expire_up_to(plan.tick);
        self.txns_ended(ended);
        let mut msg = MutableMessage::builder(TimeTickHeader::default()).build()?;
        msg.set_timestamp(plan.tick);
        msg.set_last_confirmed(plan.last_confirmed);
        msg.set_term(self.term);
        let tick = if plan.persist {
            let id = match self.append_to_log(&msg).await {
                Ok(id) => id,
                Err(e) => {
                    // The messages stay with the plan; hand them to the buffer without a
                    // persisted tick so tailing readers are not starved, then report.
                    msg.set_not_persisted(true)?;
                    self.wab_push(plan.messages, msg.into_immutable(plan.last_confirmed));
                    return Err(e);
                }
            };
            self.ack.lock().tick_written(id);
            msg.into_immutable(id)
        } else {
            msg.set_not_persisted(true)?;
            msg.into_immutable(plan.last_confirmed)
        };
        self.wab_push(plan.messages, tick);
        Ok((persisted, released))
    }

    fn wab_push(&self, mut messages: Vec<ImmutableMessage>, tick: ImmutableMessage) {
        if let Err(e) = self.wab.push(&mut messages, tick) {
            tracing::error!(error = %e, "write-ahead buffer refused a timetick");
        }
        // The emptied vector is the next sync's.
        self.ack.lock().spare(messages);
    }

    /// Saves a recovery snapshot if anything changed since the last one.
    async fn save_checkpoint(&self) -> Result<(), WalError> {
        let Some((replica, store)) = &self.checkpointer else {
            return Ok(());
        };
        let Some((snapshot, version)) = replica.snapshot(self.term) else {
            return Ok(());
        };
        store.save(&self.pchannel, &snapshot).await?;
        replica.saved(version, snapshot.checkpoint.id()?);
        tracing::debug!(
            pchannel = %self.pchannel,
            checkpoint = snapshot.checkpoint.timestamp,
            segments = snapshot.segments.len(),
            "recovery snapshot saved"
        );
        Ok(())
    }

    /// Writes Flush for every sealed segment whose writes are all acknowledged.
    async fn flush_ready_segments(&self) -> Result<(), WalError> {
        for f in self.shard.ready_to_flush() {
            let _lock = self.locks.acquire(f.vchannel.as_deref(), false).await;
            let mut b = MutableMessage::builder(FlushHeader {
                collection_id: f.collection,
                partition_id: f.partition,
                segment_id: f.segment,
            });
            let vchannel = f.vchannel.as_deref().map(VChannel::new).transpose()?;
            if let Some(v) = &vchannel {
                b = b.vchannel(v);
            }
            let flush = Append::new(b.build()?, MessageType::Flush, vchannel);
            self.run_chain(append::SELF_WRITTEN, flush).await?;
        }
        Ok(())
    }
}

/// Releases acknowledged messages to the write-ahead buffer as soon as they are confirmed (a
/// not-persisted timetick, coalesced over about a millisecond), and writes a persisted timetick
/// every `timetick_interval` when messages were released since the last one, or at once when a
/// new reader asks for one.
async fn timetick_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let period = inner.config.timetick_interval;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_persisted = tokio::time::Instant::now();
    loop {
        let mut eager = false;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
            _ = inner.tick_wakeup.notified() => {}
            _ = inner.ack_wakeup.notified() => eager = true,
        }
        if inner.state.load(Ordering::Acquire) != OPEN {
            return;
        }
        let due = last_persisted.elapsed() >= period;
        let mut released = 0;
        match inner.sync_timetick(due).await {
            Ok((persisted, n)) => {
                released = n;
                if persisted {
                    last_persisted = tokio::time::Instant::now();
                }
            }
            Err(WalError::Fenced { .. } | WalError::Shutdown) => return,
            Err(e) => tracing::warn!(error = %e, "timetick sync failed"),
        }
        if !eager || due {
            inner.record_buffer_metrics();
        }
        if eager && released > 1 {
            // Under load (acknowledgements arrived together), coalesce those of the next
            // moment into one release: every release wakes every tailing reader. A lone
            // acknowledgement is released at once, so an idle WAL's readers see it without
            // waiting.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {}
            }
        }
    }
}

/// Runs the time and memory seal policies and writes Flush for sealed segments once their
/// writes are acknowledged.
async fn segment_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(inner.shard.check_interval());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {
                inner.shard.seal_by_policy();
                let growing = inner.shard.growing();
                let pchannel = inner.pchannel.as_str().to_owned();
                metrics::gauge!("sluice_wal_growing_segments", "pchannel" => pchannel.clone())
                    .set(growing.len() as f64);
                metrics::gauge!("sluice_wal_growing_bytes", "pchannel" => pchannel)
                    .set(growing.iter().map(|(_, b)| *b as f64).sum::<f64>());
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                inner.producers.expire(Timestamp(ms << 18));
            }
            _ = inner.shard.flush_wakeup.notified() => {}
        }
        if inner.state.load(Ordering::Acquire) != OPEN {
            return;
        }
        if let Err(e) = inner.flush_ready_segments().await {
            match e {
                WalError::Fenced { .. } | WalError::Shutdown => return,
                e => {
                    tracing::warn!(error = %e, "writing Flush failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    inner.shard.flush_wakeup.notify_one();
                }
            }
        }
    }
}

/// Saves a recovery snapshot every `checkpoint_interval`, and early when enough messages were
/// applied. The first one is saved at once: a WAL that just replayed its log never replays that
/// part again, even if its owner dies the next moment.
async fn checkpoint_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(inner.config.checkpoint_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
            _ = inner.checkpoint_wakeup.notified() => {}
        }
        if inner.state.load(Ordering::Acquire) != OPEN {
            return;
        }
        if let Err(e) = inner.save_checkpoint().await {
            tracing::warn!(pchannel = %inner.pchannel, error = %e, "saving the recovery snapshot failed; retrying");
        }
    }
}

/// Rebuilds the vchannel state (collections, partitions, growing segments) an earlier owner
/// left: from the saved snapshot and the records after its checkpoint when there is one, else
/// by replaying every retained record before this term's first timetick. A record that does not
/// decode or does not apply is logged and skipped: recovery reports, it never panics.
async fn recover(
    log: &Arc<dyn LogHandle>,
    shard: &ShardManager,
    producers: &crate::producer::Producers,
    first: &ImmutableMessage,
    store: Option<&dyn CheckpointStore>,
    replay_past_missing: bool,
) -> Result<RecoveryStats, WalError> {
    let snapshot = match store {
        Some(store) => store.load(log.pchannel(), log.term()).await?,
        None => None,
    };
    let started = std::time::Instant::now();
    let (policy, after) = match &snapshot {
        Some(snap) => {
            shard.import(snap);
            producers.import(&snap.producers);
            let id = snap.checkpoint.id()?;
            if id >= first.id() {
                return Err(WalError::Unrecoverable(format!(
                    "the recovery checkpoint of {} is at {id}, past the end of its log (this \
                     term starts at {}): the snapshot is not of this log. Remove it from the \
                     meta store to replay the log from its start",
                    log.pchannel(),
                    first.id()
                )));
            }
            (
                sluice_log::DeliverPolicy::StartFrom(id),
                Some((id, Timestamp(snap.checkpoint.timestamp))),
            )
        }
        None => (sluice_log::DeliverPolicy::All, None),
    };
    let mut stream = log.read(sluice_log::ReadOptions::new(policy)).await?;
    let mut replayed = 0u64;
    let mut skipped = 0u64;
    let mut checked = after.is_none();
    while let Some(item) = stream.next().await {
        let msg = item?;
        if !checked {
            checked = true;
            if let Some((id, _)) = after
                && msg.id() != id
            {
                let what = format!(
                    "the recovery checkpoint of {} is at {id}, which the log no longer holds \
                     (its oldest record from there is {}): the log was truncated past it or \
                     replaced",
                    log.pchannel(),
                    msg.id()
                );
                if !replay_past_missing {
                    return Err(WalError::Unrecoverable(format!(
                        "{what}. To open it anyway from what the log holds, on top of the saved \
                         snapshot, set wal.replay_past_missing_checkpoint = true"
                    )));
                }
                tracing::error!("{what}; replaying from {} as configured", msg.id());
            }
        }
        if msg.id() >= first.id() {
            break;
        }
        // Idempotent: what the snapshot holds already is remembered the same way again.
        producers.record(&msg);
        if let Some((_, ts)) = after
            && msg.timestamp().ok().flatten().is_some_and(|t| t <= ts)
        {
            skipped += 1;
            continue;
        }
        replayed += 1;
        if let Err(e) = shard.replay(&msg) {
            tracing::warn!(id = %msg.id(), error = %e, "skipping a record recovery cannot apply");
        }
    }
    let stats = RecoveryStats {
        checkpoint: after,
        replayed,
        skipped,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    let pchannel = log.pchannel().as_str().to_owned();
    metrics::histogram!("sluice_wal_recovery_seconds", "pchannel" => pchannel.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("sluice_wal_recovery_replayed_total", "pchannel" => pchannel)
        .increment(replayed);
    tracing::info!(
        pchannel = %log.pchannel(),
        checkpoint = ?stats.checkpoint,
        replayed,
        skipped,
        elapsed_ms = stats.elapsed_ms,
        "shard state recovered"
    );
    Ok(stats)
}
