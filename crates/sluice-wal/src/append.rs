//! The append path as an ordered chain of steps.
//!
//! Every append runs the steps of its chain in order; each step may act before the log append
//! (and refuse the message), and is told how the append ended:
//!
//! ```text
//!            before (in order)                          after the log append
//!  Validate  type, vchannel on this pchannel, header     ·
//!            decodes and keeps its type's rules, txn
//!  Lock      vchannel lock (exclusive for DDL),          released when the append ends
//!            held to the end
//!  Rows      Insert / Delete body against the schema     ·
//!            in force (when the collection has one)
//!  Place     insert → growing segment (writes            done: hold (txn body) or release the
//!            CreateSegment when none has room); DDL      reservation; failed: release it
//!            needs its collection on the vchannel;
//!            ManualFlush / SchemaChange name the
//!            segments they seal
//!  Observe   ·                                           done: shard state from DDL,
//!                                                        CreateSegment, Flush, flush points
//!  TxnId     BeginTxn: transaction id and keepalive      ·
//!  Timestamp timestamp ≥ barrier, last-confirmed id,     done: acknowledge (hands the message
//!            term stamped                                to the timetick sync); failed: free
//!                                                        the slot
//!  Txn       session rules at that timestamp             done: body / commit / rollback done,
//!            (Begin / body / Commit / Rollback)          an exclusive message ends open txns;
//!                                                        failed: the session learns it failed
//!  ──────── log append (retried until fenced or closed) ────────
//! ```
//!
//! `done` runs in chain order once the log holds the message; `failed` runs in reverse order,
//! for the steps whose `before` ran, when a later step or the log refused it. A step that
//! refuses gets no `failed` call: it undoes its own partial work. New parts of the append path
//! (the recovery storage's bookkeeping, the flusher) join as steps instead of adding cases to
//! one long function.
//!
//! Two chains exist: [`CLIENT`] for what producers append, and [`SELF_WRITTEN`] for the
//! messages the WAL writes itself (CreateSegment, Flush), which already hold their vchannel's
//! lock and need neither validation nor placement.

use std::time::Duration;

use sluice_types::message::{
    BeginTxnHeader, Header, InsertHeader, ManualFlushHeader, SchemaChangeHeader, TxnContext,
};
use sluice_types::{
    AppendResult, ImmutableMessage, MessageId, MessageType, MutableMessage, Timestamp, VChannel,
};

use crate::WalError;
use crate::ack::Ticket;
use crate::lock::AppendLock;
use crate::txn::Ended;
use crate::wal::Inner;

/// One step of the append path (see the module docs for what each does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Validate,
    Lock,
    Rows,
    Place,
    Observe,
    TxnId,
    Timestamp,
    Txn,
}

/// The chain a producer's message goes through.
pub(crate) const CLIENT: &[Step] = &[
    Step::Validate,
    Step::Lock,
    Step::Rows,
    Step::Place,
    Step::Observe,
    Step::TxnId,
    Step::Timestamp,
    Step::Txn,
];

/// The chain of the messages the WAL writes itself (CreateSegment, Flush).
pub(crate) const SELF_WRITTEN: &[Step] = &[Step::Observe, Step::Timestamp];

/// One append on its way through a chain.
pub(crate) struct Append {
    /// The message, stamped by the steps (`None` once the log holds it).
    msg: Option<MutableMessage>,
    /// After the log append: the message, until the Timestamp step hands it to the
    /// acknowledgement (steps after it have only the stamps below).
    appended: Option<ImmutableMessage>,
    ty: MessageType,
    vchannel: Option<VChannel>,
    txn: Option<TxnContext>,
    /// Held until the append ends.
    _lock: Option<AppendLock>,
    /// The growing segment an insert was placed in (its reservation is held).
    segment: Option<i64>,
    /// Segments a ManualFlush / SchemaChange sealed.
    flushed: Vec<i64>,
    /// The header, decoded once by the Validate step.
    header: Option<Header>,
    /// BeginTxn: the keepalive the session gets.
    begin_keepalive: Option<Option<Duration>>,
    ticket: Option<Ticket>,
    id: Option<MessageId>,
}

impl Append {
    /// A message of type `ty` to append to `vchannel` (`None` = every vchannel).
    pub(crate) fn new(msg: MutableMessage, ty: MessageType, vchannel: Option<VChannel>) -> Append {
        Append {
            msg: Some(msg),
            appended: None,
            ty,
            vchannel,
            txn: None,
            _lock: None,
            segment: None,
            flushed: Vec::new(),
            header: None,
            begin_keepalive: None,
            ticket: None,
            id: None,
        }
    }

    fn vc(&self) -> Option<&str> {
        self.vchannel.as_ref().map(VChannel::as_str)
    }

    /// The message before the log append. Steps only run `before` while it is there.
    fn msg(&mut self) -> Result<&mut MutableMessage, WalError> {
        self.msg.as_mut().ok_or_else(after_log)
    }
}

impl Inner {
    /// Runs `a` through `chain`, then the log append, then tells the steps how it ended.
    pub(crate) async fn run_chain(
        &self,
        chain: &[Step],
        mut a: Append,
    ) -> Result<AppendResult, WalError> {
        for (i, step) in chain.iter().enumerate() {
            if let Err(e) = step.before(self, &mut a).await {
                self.unwind(&chain[..i], &a);
                return Err(e);
            }
        }
        let appended = match a.msg.as_ref() {
            Some(msg) => self.append_to_log(msg).await,
            None => Err(WalError::Unrecoverable("append without a message".into())),
        };
        let id = match appended {
            Ok(id) => id,
            Err(e) => {
                self.unwind(chain, &a);
                return Err(e);
            }
        };
        a.id = Some(id);
        a.appended = a.msg.take().map(|m| m.into_immutable(id));
        for step in chain {
            step.done(self, &mut a);
        }
        let (Some(ticket), Some(id)) = (a.ticket, a.id) else {
            return Err(WalError::Unrecoverable(
                "an append chain without a Timestamp step".into(),
            ));
        };
        Ok(AppendResult {
            id,
            timestamp: ticket.ts,
            last_confirmed: ticket.lc,
            txn: a.txn,
            flushed_segments: a.flushed,
        })
    }

    fn unwind(&self, ran: &[Step], a: &Append) {
        for step in ran.iter().rev() {
            step.failed(self, a);
        }
    }
}

impl Step {
    async fn before(self, inner: &Inner, a: &mut Append) -> Result<(), WalError> {
        match self {
            Step::Validate => validate(inner, a),
            Step::Lock => {
                a._lock = Some(inner.locks.acquire(a.vc(), a.ty.is_exclusive()).await);
                inner.check_open()
            }
            Step::Place => {
                let Append {
                    msg,
                    vchannel,
                    header,
                    ..
                } = a;
                let msg = msg.as_mut().ok_or_else(after_log)?;
                let header = header.as_ref().ok_or_else(|| {
                    WalError::Unrecoverable("the Place step runs after the Validate step".into())
                })?;
                a.segment = inner.place(msg, header, vchannel.as_ref()).await?;
                // A flush point: placement named the segments it seals in its header; they
                // leave the growing state when it is acknowledged (Observe).
                a.flushed = match a.ty {
                    MessageType::ManualFlush => a.msg()?.header::<ManualFlushHeader>()?.segment_ids,
                    MessageType::SchemaChange => {
                        a.msg()?.header::<SchemaChangeHeader>()?.flushed_segment_ids
                    }
                    _ => Vec::new(),
                };
                Ok(())
            }
            Step::Rows => check_rows(inner, a),
            Step::Observe => Ok(()),
            Step::TxnId => {
                if a.ty != MessageType::BeginTxn {
                    return Ok(());
                }
                // Transaction ids come from the allocator before the timestamp (they may await).
                let h: BeginTxnHeader = a.msg()?.header()?;
                let keepalive = inner.txns.keepalive_for(h.keepalive_milliseconds);
                let txn_id = inner.ids.allocate_id().await?;
                let ctx = TxnContext {
                    txn_id,
                    keepalive_ms: keepalive.map_or(-1, |k| k.as_millis() as i64),
                };
                a.msg()?.set_txn_context(ctx);
                a.txn = Some(ctx);
                a.begin_keepalive = Some(keepalive);
                Ok(())
            }
            Step::Timestamp => {
                let barrier = a.msg()?.barrier_timestamp()?;
                let ticket = inner.allocate(barrier).await?;
                a.ticket = Some(ticket);
                let term = inner.term;
                let msg = a.msg()?;
                msg.set_timestamp(ticket.ts);
                msg.set_last_confirmed(ticket.lc);
                msg.set_term(term);
                Ok(())
            }
            Step::Txn => txn_before(inner, a).await,
        }
    }

    fn failed(self, inner: &Inner, a: &Append) {
        match self {
            Step::Validate | Step::Lock | Step::Rows | Step::Observe | Step::TxnId => {}
            Step::Place => {
                if let Some(seg) = a.segment {
                    let bytes = a
                        .msg
                        .as_ref()
                        .and_then(|m| m.header::<InsertHeader>().ok())
                        .and_then(|h| h.partitions.first().map(|p| p.binary_size));
                    inner.shard.release(seg, bytes);
                }
            }
            Step::Timestamp => {
                if let Some(ticket) = a.ticket {
                    inner.ack.lock().ack_failed(ticket);
                }
            }
            Step::Txn => {
                let ended = match (a.ty, a.txn) {
                    (MessageType::BeginTxn, Some(ctx)) => inner.txns.begin_failed(ctx.txn_id),
                    (MessageType::CommitTxn | MessageType::RollbackTxn, Some(ctx)) => {
                        inner.txns.finish_done(ctx.txn_id, false)
                    }
                    (_, Some(ctx)) => {
                        if let Some(t) = a.ticket {
                            inner.txns.body_done(ctx.txn_id, t.ts, false);
                        }
                        Ended::default()
                    }
                    _ => Ended::default(),
                };
                inner.txns_ended(ended);
            }
        }
    }

    fn done(self, inner: &Inner, a: &mut Append) {
        match self {
            Step::Validate | Step::Lock | Step::Rows | Step::TxnId => {}
            Step::Place => match (a.segment, a.txn) {
                // A transaction body keeps its segment from flushing until the transaction
                // ends; a plain insert gives its reservation back at once.
                (Some(seg), Some(ctx)) if a.ty.allowed_in_txn() => {
                    inner.shard.hold(seg);
                    inner.shard.release(seg, None);
                    let shard = inner.shard.clone();
                    inner
                        .txns
                        .on_end(ctx.txn_id, Box::new(move || shard.release(seg, None)));
                }
                (Some(seg), _) => inner.shard.release(seg, None),
                _ => {}
            },
            Step::Observe => {
                // Shard state from DDL, CreateSegment and Flush applies while the append still
                // holds its lock, before anything allocated later can observe the shard.
                if let Some(imm) = &a.appended
                    && let Err(e) = inner.shard.observe(imm)
                {
                    tracing::warn!(error = %e, id = %imm.id(), "could not apply message to shard state");
                }
            }
            Step::Timestamp => {
                let (Some(ticket), Some(imm)) = (a.ticket, a.appended.take()) else {
                    return;
                };
                let id = imm.id();
                let mut ack = inner.ack.lock();
                ack.ack(ticket, imm);
                inner.ack_wakeup.notify_one();
                if let (MessageType::BeginTxn, Some(ctx)) = (a.ty, a.txn) {
                    ack.txn_begun_at(ctx.txn_id, id);
                }
            }
            Step::Txn => {
                let ended = match (a.ty, a.txn) {
                    (MessageType::CommitTxn | MessageType::RollbackTxn, Some(ctx)) => {
                        inner.txns.finish_done(ctx.txn_id, true)
                    }
                    (MessageType::BeginTxn, _) | (_, None) => Ended::default(),
                    (_, Some(ctx)) => {
                        if let Some(t) = a.ticket {
                            inner.txns.body_done(ctx.txn_id, t.ts, true);
                        }
                        Ended::default()
                    }
                };
                inner.txns_ended(ended);
                if a.ty.is_exclusive() {
                    // No transaction may straddle an exclusive message on its vchannel.
                    let ended = inner.txns.fail_vchannel(a.vc());
                    inner.txns_ended(ended);
                }
            }
        }
    }
}

fn after_log() -> WalError {
    WalError::Unrecoverable("append step ran after the log append".into())
}

/// What every producer's message must satisfy before anything is locked or allocated.
/// The Rows step: an Insert or Delete body must fit the schema of its collection (when the
/// collection was created with one and a row check is installed).
fn check_rows(inner: &Inner, a: &mut Append) -> Result<(), WalError> {
    let Some(check) = &inner.rows else {
        return Ok(());
    };
    let (collection, rows, insert) = match a.header.as_ref() {
        Some(Header::Insert(h)) => (
            h.collection_id,
            h.partitions.iter().map(|p| p.rows).sum::<u64>(),
            true,
        ),
        Some(Header::Delete(h)) => (h.collection_id, h.rows, false),
        _ => return Ok(()),
    };
    let Some(schema) = inner.shard.schema(a.vc(), collection) else {
        return Ok(());
    };
    let body = a.msg()?.payload().clone();
    let checked = if insert {
        check.check_insert(&schema, rows, &body)
    } else {
        check.check_delete(&schema, rows, &body)
    };
    checked.map_err(WalError::InvalidArgument)
}

fn validate(inner: &Inner, a: &mut Append) -> Result<(), WalError> {
    let ty = a.ty;
    let pchannel = &inner.pchannel;
    let msg = a.msg()?;
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
        Some(v) if v.pchannel_str() != pchannel.as_str() => {
            return Err(WalError::InvalidArgument(format!(
                "vchannel {v} is not on pchannel {pchannel}"
            )));
        }
        v => v,
    };
    if vchannel.is_none() && !ty.is_exclusive() {
        return Err(WalError::InvalidArgument(format!(
            "a {ty} message must name its vchannel"
        )));
    }
    // The header must decode as its type's and keep its type's rules, whatever the type: a
    // record recovery or a reader cannot apply must never reach the log.
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
    // A schema, where a DDL carries one, keeps every schema rule; a schema change must carry
    // the schema it leads to.
    let schema = match &header {
        Header::CreateCollection(h) => h.schema.as_ref(),
        Header::SchemaChange(h) => Some(h.schema.as_ref().ok_or_else(|| {
            WalError::InvalidArgument("a SchemaChange carries the schema after the change".into())
        })?),
        _ => None,
    };
    if let Some(s) = schema {
        sluice_types::schema::validate(s).map_err(|e| WalError::InvalidArgument(e.to_string()))?;
    }
    let txn = msg.txn_context()?;
    if txn.is_some()
        && !(ty.allowed_in_txn() || matches!(ty, MessageType::CommitTxn | MessageType::RollbackTxn))
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
    a.vchannel = vchannel;
    a.txn = txn;
    a.header = Some(header);
    Ok(())
}

/// The transaction rules, decided at the append's timestamp.
async fn txn_before(inner: &Inner, a: &mut Append) -> Result<(), WalError> {
    let (Some(ticket), vc) = (a.ticket, a.vchannel.as_ref().map(VChannel::as_str)) else {
        return Err(WalError::Unrecoverable(
            "the Txn step runs after the Timestamp step".into(),
        ));
    };
    let ts: Timestamp = ticket.ts;
    match (a.ty, a.txn) {
        (MessageType::BeginTxn, Some(ctx)) => {
            inner.txns.begin(
                ctx.txn_id,
                vc.map(str::to_owned),
                a.begin_keepalive.flatten(),
                ts,
            )?;
            // Before the append, so no LC handed out meanwhile can pass the BeginTxn.
            inner.ack.lock().open_txn(ctx.txn_id, ticket.lc);
            Ok(())
        }
        (MessageType::CommitTxn | MessageType::RollbackTxn, Some(ctx)) => {
            let mut rx =
                inner
                    .txns
                    .finish_start(ctx.txn_id, vc, ts, a.ty == MessageType::CommitTxn)?;
            // Every body already in flight must finish first.
            let _ = rx.wait_for(|n| *n == 0).await;
            Ok(())
        }
        (_, Some(ctx)) => inner.txns.body_start(ctx.txn_id, vc, ts),
        (_, None) => Ok(()),
    }
}
