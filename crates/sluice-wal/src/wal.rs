//! The WAL of one pchannel: open sequence, append path, timetick sync, segment flushing, reads.
//!
//! Append path, in order:
//!
//! ```text
//!  lock (exclusive for DDL / ManualFlush / SchemaChange, shared otherwise)
//!   ▸ shard: vchannel invariants, segment assignment (writes CreateSegment when needed),
//!            ManualFlush / SchemaChange seal the collection's segments
//!   ▸ timetick: unique timestamp (≥ barrier) and last-confirmed id, under one lock
//!   ▸ txn: Begin / body / Commit / Rollback session rules and expiry
//!   ▸ log: term stamped, appended with retries (10 ms → 5 s) except on fence
//!   ▸ ack: last-confirmed bookkeeping, shard state from DDL, exclusive messages fail open txns
//! ```
//!
//! A background task writes a timetick every `timetick_interval` (persisted only when real
//! messages were acknowledged since the last one, or a new reader asked for one) and hands the
//! acknowledged messages, in timestamp order, to the write-ahead buffer that tailing readers use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_log::{LogError, LogHandle, LogProvider, OpenOptions};
use sluice_types::message::{BeginTxnHeader, FlushHeader, TimeTickHeader, TxnContext};
use sluice_types::{
    AppendResult, ImmutableMessage, MessageId, MessageType, MutableMessage, PChannel, Term,
    Timestamp, VChannel,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WalError;
use crate::ack::{AckState, Ticket};
use crate::lock::LockManager;
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
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            timetick_interval: Duration::from_millis(200),
            tso_batch: DEFAULT_BATCH,
            txn_default_keepalive: Duration::from_secs(10),
            close_txn_wait: Duration::from_secs(3),
            append_retry_max: Duration::from_secs(5),
            wab: WabConfig::default(),
            segments: SegmentConfig::default(),
        }
    }
}

/// Rebuilds the WAL's state from the log when it opens (the recovery storage plugs in here).
#[async_trait]
pub trait RecoveryHook: Send + Sync + 'static {
    /// Called after the first timetick of this term is written and before appends are
    /// accepted.
    async fn recover(
        &self,
        log: &Arc<dyn LogHandle>,
        first_timetick: &ImmutableMessage,
    ) -> Result<(), WalError>;
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
    /// Recovery; `None` replays nothing.
    pub recovery: Option<Arc<dyn RecoveryHook>>,
}

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const FENCED: u8 = 2;

struct Inner {
    pchannel: PChannel,
    term: Term,
    config: WalConfig,
    log: Arc<dyn LogHandle>,
    ids: Arc<dyn IdAllocator>,
    refiller: Refiller,
    ack: Mutex<AckState>,
    txns: TxnManager,
    locks: LockManager,
    shard: Arc<ShardManager>,
    wab: Arc<WriteAheadBuffer>,
    state: AtomicU8,
    force_tick: AtomicBool,
    tick_wakeup: Notify,
    /// Woken by every acknowledgement so tailing readers get messages without waiting for the
    /// next persisted timetick.
    ack_wakeup: Notify,
}

/// The WAL of one pchannel at one term.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// How a message reaches `write`.
struct Prepared {
    msg: MutableMessage,
    ty: MessageType,
    vchannel: Option<VChannel>,
    txn: Option<TxnContext>,
    segment: Option<i64>,
    flushed: Vec<i64>,
}

impl Wal {
    /// Opens the WAL of `pchannel` at `term`: opens the log read-write (fencing older terms),
    /// writes the first timetick, runs recovery, starts the background tasks. Appends are
    /// accepted once this returns.
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
        let refiller = Refiller::new(deps.oracle.clone(), config.tso_batch);
        let (first, first_ts) = match Self::write_first_timetick(&log, &refiller, term).await {
            Ok(v) => v,
            Err(e) => {
                log.close().await;
                return Err(e);
            }
        };
        if let Some(r) = &deps.recovery
            && let Err(e) = r.recover(&log, &first).await
        {
            log.close().await;
            return Err(e);
        }
        let shard = Arc::new(ShardManager::new(
            config.segments.clone(),
            deps.node_growing.clone(),
        ));
        if let Err(e) = replay_shard_state(&log, &shard, first.id()).await {
            log.close().await;
            return Err(e);
        }
        let wab = match WriteAheadBuffer::new(config.wab, first.clone()) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                log.close().await;
                return Err(e);
            }
        };
        let inner = Arc::new(Inner {
            pchannel,
            term,
            log,
            ids: deps.ids,
            refiller,
            ack: Mutex::new(AckState::new(first_ts, first.id())),
            txns: TxnManager::new(config.txn_default_keepalive),
            locks: LockManager::default(),
            shard,
            wab,
            state: AtomicU8::new(OPEN),
            force_tick: AtomicBool::new(false),
            tick_wakeup: Notify::new(),
            ack_wakeup: Notify::new(),
            config,
        });
        let wal = Wal {
            inner,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        wal.tasks
            .spawn(timetick_loop(wal.inner.clone(), wal.cancel.clone()));
        wal.tasks
            .spawn(segment_loop(wal.inner.clone(), wal.cancel.clone()));
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
        let mut backoff = Duration::from_millis(20);
        loop {
            match log.append(msg.clone()).await {
                Ok(id) => return Ok((msg.into_immutable(id), ts)),
                Err(e) if e.retryable() => {
                    tracing::warn!(error = %e, "first timetick failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
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

    /// Whether appends can still succeed (not closing, not fenced).
    pub fn is_available(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == OPEN
    }

    /// The latest timestamp a read of `vchannel` may use.
    pub fn latest_mvcc(&self, vchannel: &VChannel) -> Timestamp {
        self.inner.ack.lock().mvcc(vchannel)
    }

    /// Growing segments and their bytes (status and tests).
    pub fn growing_segments(&self) -> Vec<(i64, u64)> {
        self.inner.shard.growing()
    }

    /// Why a known segment sealed, if it did (status and tests).
    pub fn seal_reason(&self, segment: i64) -> Option<crate::shard::SealReason> {
        self.inner.shard.seal_reason(segment)
    }

    /// Appends a message from a client. Self-controlled messages (TimeTick, CreateSegment,
    /// Flush) and the read-side Txn are refused; transaction parts must carry their context.
    pub async fn append(&self, msg: MutableMessage) -> Result<AppendResult, WalError> {
        self.inner.check_open()?;
        let ty = msg.message_type()?;
        if ty.is_self_controlled() || ty == MessageType::Txn {
            return Err(WalError::InvalidArgument(format!(
                "{ty} messages are written by the WAL itself"
            )));
        }
        if msg.is_not_persisted() {
            return Err(WalError::InvalidArgument(
                "only the WAL writes not-persisted messages".into(),
            ));
        }
        let vchannel = match msg.vchannel()? {
            Some(v) if v.pchannel_str() != self.inner.pchannel.as_str() => {
                return Err(WalError::InvalidArgument(format!(
                    "vchannel {v} is not on pchannel {}",
                    self.inner.pchannel
                )));
            }
            v => v,
        };
        if vchannel.is_none() && !ty.is_exclusive() {
            return Err(WalError::InvalidArgument(format!(
                "a {ty} message must name its vchannel"
            )));
        }
        // The header must decode as its type's and keep its type's rules, whatever the type:
        // a record recovery or a reader cannot apply must never reach the log.
        let header = msg.any_header()?;
        header.check_from_producer()?;
        if let (Some(v), Some(collection)) = (&vchannel, header.collection_id())
            && v.collection().0 != collection
        {
            return Err(WalError::InvalidArgument(format!(
                "the {ty} header names collection {collection}, but vchannel {v} belongs to \
                 collection {}",
                v.collection()
            )));
        }
        let txn = msg.txn_context()?;
        if txn.is_some()
            && !(ty.allowed_in_txn()
                || matches!(ty, MessageType::CommitTxn | MessageType::RollbackTxn))
        {
            return Err(WalError::InvalidArgument(format!(
                "{ty} is not allowed in a transaction"
            )));
        }
        if txn.is_none() && matches!(ty, MessageType::CommitTxn | MessageType::RollbackTxn) {
            return Err(WalError::InvalidArgument(format!(
                "{ty} without a transaction context"
            )));
        }
        let inner = &self.inner;
        let _lock = inner
            .locks
            .acquire(vchannel.as_ref().map(VChannel::as_str), ty.is_exclusive())
            .await;
        inner.check_open()?;
        let mut p = Prepared {
            msg,
            ty,
            vchannel,
            txn,
            segment: None,
            flushed: Vec::new(),
        };
        p.segment = inner.place(&mut p.msg, p.vchannel.as_ref()).await?;
        if matches!(ty, MessageType::ManualFlush | MessageType::SchemaChange) {
            p.flushed = inner.shard.seal_for_flush(&mut p.msg)?;
        }
        inner.write(p).await
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
        start_scanner(
            self.inner.log.clone(),
            Some(self.inner.wab.clone()),
            options,
            Some(hook),
        )
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

    fn check_open(&self) -> Result<(), WalError> {
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
    async fn place(
        &self,
        msg: &mut MutableMessage,
        vchannel: Option<&VChannel>,
    ) -> Result<Option<i64>, WalError> {
        loop {
            let (collection, partition) = match self.shard.place(msg)? {
                Placement::Placed(seg) => return Ok(seg),
                Placement::NeedSegment {
                    collection,
                    partition,
                } => (collection, partition),
            };
            let _gate = self.shard.create_gate.lock().await;
            if let Placement::Placed(seg) = self.shard.place(msg)? {
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
            // needs; it is written without taking it again.
            self.write(Prepared {
                msg: b.build()?,
                ty: MessageType::CreateSegment,
                vchannel: vchannel.cloned(),
                txn: None,
                segment: None,
                flushed: Vec::new(),
            })
            .await?;
        }
    }

    /// Takes a timestamp ≥ `barrier` and its last-confirmed id, refilling from the oracle as
    /// needed. The timestamp is registered in flight and must be acknowledged or failed.
    async fn allocate(&self, barrier: Option<Timestamp>) -> Result<Ticket, WalError> {
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

    /// Timestamp, transaction rules, term, log append, acknowledgement.
    async fn write(&self, p: Prepared) -> Result<AppendResult, WalError> {
        let Prepared {
            mut msg,
            ty,
            vchannel,
            mut txn,
            segment,
            flushed,
        } = p;
        let vc = vchannel.as_ref().map(VChannel::as_str);
        // Gives back a failed insert's segment reservation (decoded only on failure).
        let release_failed = |msg: &MutableMessage| {
            if let Some(seg) = segment {
                let bytes = msg
                    .header::<sluice_types::message::InsertHeader>()
                    .ok()
                    .and_then(|h| h.partitions.first().map(|p| p.binary_size));
                self.shard.release(seg, bytes);
            }
        };
        // Transaction ids come from the allocator before the timestamp (they may await).
        let mut begin_keepalive = None;
        if ty == MessageType::BeginTxn {
            let h: BeginTxnHeader = msg.header()?;
            let keepalive = self.txns.keepalive_for(h.keepalive_milliseconds);
            let txn_id = self.ids.allocate_id().await?;
            let ctx = TxnContext {
                txn_id,
                keepalive_ms: keepalive.map_or(-1, |k| k.as_millis() as i64),
            };
            msg.set_txn_context(ctx);
            txn = Some(ctx);
            begin_keepalive = Some(keepalive);
        }
        let barrier = msg.barrier_timestamp()?;
        let ticket = match self.allocate(barrier).await {
            Ok(v) => v,
            Err(e) => {
                release_failed(&msg);
                return Err(e);
            }
        };
        let (ts, lc) = (ticket.ts, ticket.lc);
        // Transaction rules, decided at this timestamp.
        let txn_check = match (ty, txn) {
            (MessageType::BeginTxn, Some(ctx)) => self.txns.begin(
                ctx.txn_id,
                vc.map(str::to_owned),
                begin_keepalive.flatten(),
                ts,
            ),
            (MessageType::CommitTxn | MessageType::RollbackTxn, Some(ctx)) => {
                match self
                    .txns
                    .finish_start(ctx.txn_id, vc, ts, ty == MessageType::CommitTxn)
                {
                    Ok(mut rx) => {
                        // Every body already in flight must finish first.
                        let _ = rx.wait_for(|n| *n == 0).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (_, Some(ctx)) => self.txns.body_start(ctx.txn_id, vc, ts),
            (_, None) => Ok(()),
        };
        if let Err(e) = txn_check {
            self.ack.lock().ack_failed(ticket);
            release_failed(&msg);
            return Err(e);
        }
        if let (MessageType::BeginTxn, Some(ctx)) = (ty, txn) {
            // Before the append, so no LC handed out meanwhile can pass the BeginTxn.
            self.ack.lock().open_txn(ctx.txn_id, lc);
        }
        msg.set_timestamp(ts);
        msg.set_last_confirmed(lc);
        msg.set_term(self.term);

        let result = self.append_to_log(&msg).await;
        let id = match result {
            Ok(id) => id,
            Err(e) => {
                self.ack.lock().ack_failed(ticket);
                release_failed(&msg);
                let ended = match (ty, txn) {
                    (MessageType::BeginTxn, Some(ctx)) => self.txns.begin_failed(ctx.txn_id),
                    (MessageType::CommitTxn | MessageType::RollbackTxn, Some(ctx)) => {
                        self.txns.finish_done(ctx.txn_id, false)
                    }
                    (_, Some(ctx)) => {
                        self.txns.body_done(ctx.txn_id, ts, false);
                        Ended::default()
                    }
                    _ => Ended::default(),
                };
                self.txns_ended(ended);
                return Err(e);
            }
        };
        let imm = msg.into_immutable(id);
        // Shard state from DDL, CreateSegment and Flush applies while this append still holds
        // its lock, before anything allocated later can observe the shard.
        if let Err(e) = self.shard.observe(&imm) {
            tracing::warn!(error = %e, id = %imm.id(), "could not apply message to shard state");
        }
        {
            let mut ack = self.ack.lock();
            ack.ack(ticket, imm);
            self.ack_wakeup.notify_one();
            if let (MessageType::BeginTxn, Some(ctx)) = (ty, txn) {
                ack.txn_begun_at(ctx.txn_id, id);
            }
        }
        // Segment holds: a plain insert releases at once; a transaction body keeps the segment
        // from flushing until its transaction ends.
        match (segment, txn) {
            (Some(seg), Some(ctx)) if ty.allowed_in_txn() => {
                self.shard.hold(seg);
                self.shard.release(seg, None);
                let shard = self.shard.clone();
                self.txns
                    .on_end(ctx.txn_id, Box::new(move || shard.release(seg, None)));
            }
            (Some(seg), _) => self.shard.release(seg, None),
            _ => {}
        }
        let ended = match (ty, txn) {
            (MessageType::CommitTxn | MessageType::RollbackTxn, Some(ctx)) => {
                self.txns.finish_done(ctx.txn_id, true)
            }
            (MessageType::BeginTxn, _) | (_, None) => Ended::default(),
            (_, Some(ctx)) => {
                self.txns.body_done(ctx.txn_id, ts, true);
                Ended::default()
            }
        };
        self.txns_ended(ended);
        if ty.is_exclusive() {
            // No transaction may straddle an exclusive message on its vchannel.
            let ended = self.txns.fail_vchannel(vc);
            self.txns_ended(ended);
        }
        Ok(AppendResult {
            id,
            timestamp: ts,
            last_confirmed: lc,
            txn,
            flushed_segments: flushed,
        })
    }

    fn txns_ended(&self, ended: Ended) {
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
    async fn append_to_log(&self, msg: &MutableMessage) -> Result<MessageId, WalError> {
        let mut backoff = Duration::from_millis(10);
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
                    tracing::warn!(error = %e, ?backoff, "log append failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.append_retry_max);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One timetick: plan, expire transactions, write it if it must be persisted, hand the
    /// acknowledged messages and the tick to the write-ahead buffer.
    /// `persist_due`: the persisted-timetick interval has passed, so a timetick covering newly
    /// released messages is written to the log.
    async fn sync_timetick(&self, persist_due: bool) -> Result<bool, WalError> {
        let force = self.force_tick.swap(false, Ordering::AcqRel);
        let sync = self.allocate(None).await?;
        let Some(plan) = self.ack.lock().plan_sync(sync, force, persist_due) else {
            return Ok(false);
        };
        let persisted = plan.persist;
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
        Ok(persisted)
    }

    fn wab_push(&self, mut messages: Vec<ImmutableMessage>, tick: ImmutableMessage) {
        if let Err(e) = self.wab.push(&mut messages, tick) {
            tracing::error!(error = %e, "write-ahead buffer refused a timetick");
        }
        // The emptied vector is the next sync's.
        self.ack.lock().spare(messages);
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
            self.write(Prepared {
                msg: b.build()?,
                ty: MessageType::Flush,
                vchannel,
                txn: None,
                segment: None,
                flushed: Vec::new(),
            })
            .await?;
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
        match inner.sync_timetick(due).await {
            Ok(true) => last_persisted = tokio::time::Instant::now(),
            Ok(false) => {}
            Err(WalError::Fenced { .. } | WalError::Shutdown) => return,
            Err(e) => tracing::warn!(error = %e, "timetick sync failed"),
        }
        if eager {
            // Coalesce the acknowledgements of the next moment into one release.
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

/// Rebuilds the vchannel state (collections, partitions, growing segments) an earlier owner
/// left, by replaying every retained record before this term's first timetick. A record that
/// does not decode or does not apply is logged and skipped: recovery reports, it never panics.
async fn replay_shard_state(
    log: &Arc<dyn LogHandle>,
    shard: &ShardManager,
    first: MessageId,
) -> Result<(), WalError> {
    let mut stream = log
        .read(sluice_log::ReadOptions::new(sluice_log::DeliverPolicy::All))
        .await?;
    let started = std::time::Instant::now();
    let mut replayed = 0u64;
    while let Some(item) = stream.next().await {
        let msg = item?;
        if msg.id() >= first {
            break;
        }
        replayed += 1;
        if let Err(e) = shard.observe(&msg) {
            tracing::warn!(id = %msg.id(), error = %e, "skipping a record recovery cannot apply");
        }
    }
    tracing::debug!(
        replayed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard state replayed"
    );
    Ok(())
}
