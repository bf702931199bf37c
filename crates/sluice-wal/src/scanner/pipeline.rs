//! The consumer side of a scanner: filters, reorder buffer, txn buffer and the pending queue.
//!
//! Synchronous on purpose, so the ordering logic can be driven directly by tests. The scanner
//! task feeds it every message from the log or the write-ahead buffer with [`Pipeline::ingest`],
//! lets it release with [`Pipeline::pump`] and hands [`Pipeline::take_pending`] to the consumer.
//!
//! Release is lazy: a timetick is queued, and [`Pipeline::pump`] moves the messages it covers
//! through the txn buffer into the pending queue only while the queue has room. The scanner
//! reads upstream only while [`Pipeline::wants_input`], so a slow consumer holds at most
//! `limit` pending messages plus what arrived before the last timetick.

use std::collections::VecDeque;

use sluice_types::message::TxnContext;
use sluice_types::{ImmutableMessage, MessageType, Timestamp, VChannel};

use super::ReadMessage;
use super::filter::Filters;
use super::reorder::{PushOutcome, ReorderBuffer};
use super::txn_buffer::{TxnBuffer, TxnCounters};
use crate::error::WalError;

/// A message with the properties the pipeline needs parsed once.
#[derive(Clone, Debug)]
pub(crate) struct Classified {
    pub(crate) msg: ImmutableMessage,
    pub(crate) ts: Timestamp,
    pub(crate) ty: MessageType,
    pub(crate) txn: Option<TxnContext>,
}

impl Classified {
    /// Parses type, timestamp and txn context. A message without them cannot be ordered, so
    /// it is an [`WalError::Unrecoverable`] error naming the message.
    pub(crate) fn new(msg: ImmutableMessage) -> Result<Classified, WalError> {
        let id = msg.id();
        let malformed =
            |what: String| WalError::Unrecoverable(format!("malformed message {id}: {what}"));
        let ty = msg.message_type().map_err(|e| malformed(e.to_string()))?;
        let ts = msg
            .timestamp()
            .map_err(|e| malformed(e.to_string()))?
            .ok_or_else(|| malformed("no timestamp".into()))?;
        let txn = msg.txn_context().map_err(|e| malformed(e.to_string()))?;
        Ok(Classified { msg, ts, ty, txn })
    }
}

/// Counters of the consumer side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineCounters {
    /// Messages dropped by the vchannel, type or time filters.
    pub filtered: u64,
    /// Second copies of a message still waiting in the reorder buffer.
    pub duplicates: u64,
    /// Messages (and timeticks) arriving at or below a timetick already seen: copies of
    /// released messages after a mode switch, or time tick violations.
    pub late: u64,
    /// The most messages ever pending for the consumer at once.
    pub max_pending: usize,
    /// The most messages ever held in the reorder buffer at once.
    pub max_reorder: usize,
    /// What the txn buffer did.
    pub txns: TxnCounters,
}

/// See the module docs.
pub(crate) struct Pipeline {
    filters: Filters,
    vchannel: Option<VChannel>,
    limit: usize,
    reorder: ReorderBuffer,
    txns: TxnBuffer,
    /// Timeticks seen whose messages are not all released yet, oldest first.
    ticks: VecDeque<Classified>,
    pending: VecDeque<ReadMessage>,
    counters: PipelineCounters,
}

impl Pipeline {
    /// A pipeline holding at most `limit` (at least 1) pending messages.
    pub(crate) fn new(filters: Filters, vchannel: Option<VChannel>, limit: usize) -> Pipeline {
        Pipeline {
            filters,
            vchannel,
            limit: limit.max(1),
            reorder: ReorderBuffer::default(),
            txns: TxnBuffer::default(),
            ticks: VecDeque::new(),
            pending: VecDeque::new(),
            counters: PipelineCounters::default(),
        }
    }

    /// Takes one message from upstream.
    pub(crate) fn ingest(&mut self, msg: Classified) {
        if let (Some(want), Some(got)) = (&self.vchannel, msg.msg.vchannel_str())
            && want.as_str() != got
        {
            self.counters.filtered += 1;
            return;
        }
        // Time filters decide a transaction by its commit, which is checked on the assembled
        // transaction; every other message (timeticks included) is checked here.
        let time_ok = msg.txn.is_some() || self.filters.time_passes(msg.ts);
        if !time_ok || !self.filters.type_passes(msg.ty) {
            self.counters.filtered += 1;
            return;
        }
        if msg.ty == MessageType::TimeTick {
            if self.reorder.advance(msg.ts) {
                self.ticks.push_back(msg);
            } else {
                self.counters.late += 1;
            }
            return;
        }
        match self.reorder.push(msg) {
            PushOutcome::Buffered => {
                self.counters.max_reorder = self.counters.max_reorder.max(self.reorder.len());
            }
            PushOutcome::Duplicate => self.counters.duplicates += 1,
            PushOutcome::Late => self.counters.late += 1,
        }
    }

    /// Releases what queued timeticks cover into the pending queue, as far as it has room.
    pub(crate) fn pump(&mut self) {
        while let Some(tick) = self.ticks.front() {
            let up_to = tick.ts;
            let persisted = !tick.msg.is_not_persisted();
            while self.pending.len() < self.limit {
                let Some(msg) = self.reorder.pop_up_to(up_to) else {
                    break;
                };
                // An assembled transaction is at its commit's timestamp: this message's.
                let ts = msg.ts;
                match self.txns.handle(msg) {
                    Some(ReadMessage::Txn(_)) if !self.filters.time_passes(ts) => {
                        self.counters.filtered += 1;
                    }
                    Some(out) => self.push_pending(out),
                    None => {}
                }
            }
            if self.reorder.has_up_to(up_to) {
                return;
            }
            self.txns.expire(up_to);
            if persisted || self.pending.is_empty() {
                if self.pending.len() >= self.limit {
                    return;
                }
                if let Some(tick) = self.ticks.pop_front() {
                    self.push_pending(ReadMessage::Message(tick.msg));
                }
            } else {
                self.ticks.pop_front();
            }
        }
    }

    fn push_pending(&mut self, msg: ReadMessage) {
        self.pending.push_back(msg);
        self.counters.max_pending = self.counters.max_pending.max(self.pending.len());
    }

    /// Whether upstream may be read: nothing is waiting for release and the queue has room.
    pub(crate) fn wants_input(&self) -> bool {
        self.ticks.is_empty() && self.pending.len() < self.limit
    }

    /// Whether something waits for the consumer.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Every message waiting for the consumer, in order.
    pub(crate) fn take_pending(&mut self) -> impl Iterator<Item = ReadMessage> + '_ {
        self.pending.drain(..)
    }

    /// Messages waiting for the consumer.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Messages in the reorder buffer.
    pub(crate) fn reorder_len(&self) -> usize {
        self.reorder.len()
    }

    /// Transactions being assembled.
    pub(crate) fn open_txns(&self) -> usize {
        self.txns.open_count()
    }

    /// What happened so far.
    pub(crate) fn counters(&self) -> PipelineCounters {
        PipelineCounters {
            txns: self.txns.counters(),
            ..self.counters
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reorder and txn buffers driven with random interleavings against a simple model.

    use std::collections::{BTreeMap, HashSet};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use sluice_types::message::{
        BeginTxnHeader, CommitTxnHeader, InsertHeader, RollbackTxnHeader, TimeTickHeader,
    };
    use sluice_types::{MessageId, MutableMessage};

    use super::*;

    /// One step of a simulated WAL.
    #[derive(Clone, Debug)]
    enum Op {
        /// A plain data message.
        Data,
        /// Begin a txn in slot `slot` with this keepalive (ms; -1 = infinite).
        Begin { slot: usize, keepalive_ms: i64 },
        /// A body of the txn in `slot`.
        Body { slot: usize },
        /// Commit the txn in `slot`.
        Commit { slot: usize },
        /// Roll back the txn in `slot`.
        Rollback { slot: usize },
        /// A body of a txn that was never begun.
        OrphanBody,
        /// A timetick; `at_last` puts it at the previous message's timestamp (a timetick may
        /// equal the newest message it covers).
        Tick { persisted: bool, at_last: bool },
        /// Physical time passes.
        Advance { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Data),
            2 => (0..4usize, prop_oneof![Just(-1i64), 1..30i64])
                .prop_map(|(slot, keepalive_ms)| Op::Begin { slot, keepalive_ms }),
            4 => (0..4usize).prop_map(|slot| Op::Body { slot }),
            2 => (0..4usize).prop_map(|slot| Op::Commit { slot }),
            1 => (0..4usize).prop_map(|slot| Op::Rollback { slot }),
            1 => Just(Op::OrphanBody),
            3 => (any::<bool>(), any::<bool>())
                .prop_map(|(persisted, at_last)| Op::Tick { persisted, at_last }),
            1 => (1..20u64).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// What the model expects, in order: a data message id, a txn (begin, bodies, commit), or
    /// a timetick (timestamp, persisted).
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    enum Expected {
        Data(MessageId),
        Txn(MessageId, Vec<MessageId>, MessageId),
        Tick(Timestamp, bool),
    }

    struct OpenTxn {
        txn_id: i64,
        keepalive_ms: i64,
        last: Timestamp,
        begin: MessageId,
        bodies: Vec<MessageId>,
    }

    impl OpenTxn {
        fn expired_at(&self, ts: Timestamp) -> bool {
            self.keepalive_ms >= 0
                && ts
                    >= self
                        .last
                        .saturating_add_duration(std::time::Duration::from_millis(
                            self.keepalive_ms.unsigned_abs(),
                        ))
        }
    }

    /// Turns ops into the messages a WAL would have written (in timestamp order, each with a
    /// unique timestamp and id) and the ideal output. Operations the WAL would reject (a body
    /// or commit after expiry, anything on an unknown txn) are skipped, as the WAL would.
    fn simulate(ops: &[Op]) -> (Vec<ImmutableMessage>, Vec<Expected>, usize) {
        let mut ts = Timestamp::from_parts(1_000, 0).unwrap();
        let mut next_id = 0u64;
        let mut next_txn = 0i64;
        let mut slots: BTreeMap<usize, OpenTxn> = BTreeMap::new();
        let mut log = Vec::new();
        let mut expected = Vec::new();
        let mut mk = |h: MutableMessage, ts: Timestamp, txn: Option<(i64, i64)>| {
            let mut m = h;
            m.set_timestamp(ts);
            if let Some((txn_id, keepalive_ms)) = txn {
                m.set_txn_context(TxnContext {
                    txn_id,
                    keepalive_ms,
                });
            }
            next_id += 1;
            m.into_immutable(MessageId::from_parts(0, next_id))
        };
        let build = |h: sluice_types::message::MessageBuilder| h.build().unwrap();
        let insert = || build(MutableMessage::builder(InsertHeader::default()));
        let ops = ops.iter().cloned().chain([Op::Tick {
            persisted: true,
            at_last: false,
        }]);
        for op in ops {
            ts = Timestamp(ts.0 + 1);
            let previous_is_data_at = |log: &Vec<ImmutableMessage>, at: Timestamp| {
                log.last().is_some_and(|m: &ImmutableMessage| {
                    m.message_type().unwrap() != MessageType::TimeTick
                        && m.timestamp().unwrap() == Some(at)
                })
            };
            // The WAL fails an operation on an expired txn and forgets it.
            let live = |slots: &mut BTreeMap<usize, OpenTxn>, slot: usize, ts| {
                if slots.get(&slot).is_some_and(|t| t.expired_at(ts)) {
                    slots.remove(&slot);
                }
                slots.contains_key(&slot)
            };
            match op {
                Op::Data => {
                    let m = mk(insert(), ts, None);
                    expected.push(Expected::Data(m.id()));
                    log.push(m);
                }
                Op::Begin { slot, keepalive_ms } => {
                    if live(&mut slots, slot, ts) {
                        continue;
                    }
                    next_txn += 1;
                    let m = mk(
                        build(MutableMessage::builder(BeginTxnHeader::default())),
                        ts,
                        Some((next_txn, keepalive_ms)),
                    );
                    slots.insert(
                        slot,
                        OpenTxn {
                            txn_id: next_txn,
                            keepalive_ms,
                            last: ts,
                            begin: m.id(),
                            bodies: Vec::new(),
                        },
                    );
                    log.push(m);
                }
                Op::Body { slot } => {
                    if !live(&mut slots, slot, ts) {
                        continue;
                    }
                    let Some(t) = slots.get_mut(&slot) else {
                        continue;
                    };
                    let m = mk(insert(), ts, Some((t.txn_id, t.keepalive_ms)));
                    t.last = ts;
                    t.bodies.push(m.id());
                    log.push(m);
                }
                Op::Commit { slot } | Op::Rollback { slot } => {
                    if !live(&mut slots, slot, ts) {
                        continue;
                    }
                    let Some(t) = slots.remove(&slot) else {
                        continue;
                    };
                    let commit = matches!(op, Op::Commit { .. });
                    let h = if commit {
                        build(MutableMessage::builder(CommitTxnHeader::default()))
                    } else {
                        build(MutableMessage::builder(RollbackTxnHeader::default()))
                    };
                    let m = mk(h, ts, Some((t.txn_id, t.keepalive_ms)));
                    if commit {
                        expected.push(Expected::Txn(t.begin, t.bodies, m.id()));
                    }
                    log.push(m);
                }
                Op::OrphanBody => {
                    log.push(mk(insert(), ts, Some((-1, -1))));
                }
                Op::Tick { persisted, at_last } => {
                    let prev = Timestamp(ts.0 - 1);
                    let at = if at_last && previous_is_data_at(&log, prev) {
                        prev
                    } else {
                        ts
                    };
                    let mut m = build(MutableMessage::builder(TimeTickHeader::default()));
                    m.set_not_persisted(!persisted).unwrap();
                    log.push(mk(m, at, None));
                    expected.push(Expected::Tick(at, persisted));
                }
                Op::Advance { ms } => {
                    ts = ts.saturating_add_duration(std::time::Duration::from_millis(ms));
                }
            }
        }
        // Transactions still open after the final timetick (at `ts`) stay in the buffer.
        let open = slots.values().filter(|t| !t.expired_at(ts)).count();
        (log, expected, open)
    }

    /// The order a scanner might see: each message at its place or moved before earlier
    /// timeticks (as concurrent appends do), shuffled between timeticks, plus copies anywhere
    /// (as a switch between log and write-ahead buffer produces).
    fn interleave(log: &[ImmutableMessage], seed: u64, dup_pct: u32) -> Vec<ImmutableMessage> {
        let mut rng = StdRng::seed_from_u64(seed);
        let is_tick = |m: &ImmutableMessage| m.message_type().unwrap() == MessageType::TimeTick;
        // Window k = messages before the k-th timetick; the timetick closes it.
        let mut windows: Vec<Vec<ImmutableMessage>> = vec![Vec::new()];
        let mut ticks = Vec::new();
        for m in log {
            if is_tick(m) {
                ticks.push(m.clone());
                windows.push(Vec::new());
            } else {
                let k = windows.len() - 1;
                let back = rng.random_range(0..=2usize).min(k);
                windows[k - back].push(m.clone());
            }
        }
        let copies: Vec<ImmutableMessage> = log
            .iter()
            .filter(|m| !is_tick(m) && rng.random_ratio(dup_pct, 100))
            .cloned()
            .collect();
        for c in copies {
            let k = rng.random_range(0..windows.len());
            windows[k].push(c);
        }
        let mut out = Vec::new();
        for (k, mut w) in windows.into_iter().enumerate() {
            w.shuffle(&mut rng);
            out.extend(w);
            if let Some(t) = ticks.get(k) {
                out.push(t.clone());
            }
        }
        out
    }

    fn observed(m: &ReadMessage) -> Expected {
        match m {
            ReadMessage::Message(m) if m.message_type().unwrap() == MessageType::TimeTick => {
                Expected::Tick(m.timestamp().unwrap().unwrap(), !m.is_not_persisted())
            }
            ReadMessage::Message(m) => Expected::Data(m.id()),
            ReadMessage::Txn(t) => Expected::Txn(
                t.begin().id(),
                t.bodies().iter().map(|b| b.id()).collect(),
                t.commit().id(),
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn reorder_and_txn_buffers_match_the_model_under_random_interleavings(
            ops in proptest::collection::vec(op(), 0..120),
            seed in any::<u64>(),
            dup_pct in 0u32..40,
            limit in 1usize..6,
        ) {
            let (log, expected, open_at_end) = simulate(&ops);
            let arrivals = interleave(&log, seed, dup_pct);
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut p = Pipeline::new(Filters::default(), None, limit);
            let mut out = Vec::new();
            for m in arrivals {
                // The scanner reads upstream only while the pipeline wants input.
                loop {
                    p.pump();
                    prop_assert!(p.pending_len() <= limit);
                    if p.wants_input() {
                        break;
                    }
                    out.extend(p.take_pending());
                }
                p.ingest(Classified::new(m).unwrap());
                p.pump();
                // A consumer of random speed: it takes everything pending, now and then.
                if rng.random_bool(0.3) {
                    out.extend(p.take_pending());
                }
            }
            loop {
                p.pump();
                let before = out.len();
                out.extend(p.take_pending());
                if out.len() == before {
                    break;
                }
            }
            let got: Vec<Expected> = out.iter().map(observed).collect();
            // Strictly increasing timestamps (a txn counts at its commit); a timetick may equal
            // the message before it.
            for w in out.windows(2) {
                let (a, b) = (w[0].timestamp().unwrap(), w[1].timestamp().unwrap());
                prop_assert!(a < b || (a == b && w[1].is_timetick()), "{} then {}", a, b);
            }
            // Exactly once, atomic txns, in order: the model without the not-persisted
            // timeticks, which are only emitted when nothing else is pending.
            let strip = |v: &[Expected]| -> Vec<Expected> {
                v.iter().filter(|e| !matches!(e, Expected::Tick(_, false))).cloned().collect()
            };
            prop_assert_eq!(strip(&got), strip(&expected));
            let model_ticks: HashSet<_> = expected.iter().cloned().collect();
            for e in &got {
                prop_assert!(model_ticks.contains(e), "unexpected output {:?}", e);
            }
            prop_assert_eq!(p.reorder_len(), 0);
            prop_assert_eq!(p.open_txns(), open_at_end);
        }
    }

    #[test]
    fn filters_apply_before_reordering_and_txns_are_filtered_by_commit_time() {
        use sluice_types::MessageFilter;
        let vc = VChannel::new("p_1v0").unwrap();
        let other = VChannel::new("p_2v0").unwrap();
        let mut p = Pipeline::new(
            Filters::new(&[MessageFilter::TimeTickGt(Timestamp(20))]).unwrap(),
            Some(vc.clone()),
            16,
        );
        let mk = |h: MutableMessage, id: u64, ts: u64, txn: bool| {
            let mut m = h;
            m.set_timestamp(Timestamp(ts));
            if txn {
                m.set_txn_context(TxnContext {
                    txn_id: 1,
                    keepalive_ms: -1,
                });
            }
            m.into_immutable(MessageId::from_parts(0, id))
        };
        let on = |vc: &VChannel| {
            MutableMessage::builder(InsertHeader::default())
                .vchannel(vc)
                .build()
                .unwrap()
        };
        let begin = MutableMessage::builder(BeginTxnHeader::default())
            .vchannel(&vc)
            .build()
            .unwrap();
        let commit = MutableMessage::builder(CommitTxnHeader::default())
            .vchannel(&vc)
            .build()
            .unwrap();
        let tick = MutableMessage::builder(TimeTickHeader::default())
            .build()
            .unwrap();
        // Too old.
        p.ingest(Classified::new(mk(on(&vc), 1, 10, false)).unwrap());
        // Old, but its transaction commits later.
        p.ingest(Classified::new(mk(begin, 2, 15, true)).unwrap());
        p.ingest(Classified::new(mk(on(&vc), 3, 18, true)).unwrap());
        // Another vchannel.
        p.ingest(Classified::new(mk(on(&other), 4, 22, false)).unwrap());
        p.ingest(Classified::new(mk(commit, 5, 25, true)).unwrap());
        p.ingest(Classified::new(mk(on(&vc), 6, 26, false)).unwrap());
        // Filtered: not above 20.
        p.ingest(Classified::new(mk(tick.clone(), 7, 19, false)).unwrap());
        p.ingest(Classified::new(mk(tick, 8, 30, false)).unwrap());
        p.pump();
        let got: Vec<_> = p.take_pending().map(|m| observed(&m)).collect();
        assert_eq!(
            got,
            [
                Expected::Txn(MessageId(2), vec![MessageId(3)], MessageId(5)),
                Expected::Data(MessageId(6)),
                Expected::Tick(Timestamp(30), true),
            ]
        );
        assert_eq!(p.counters().filtered, 3);
        assert_eq!(p.open_txns(), 0);
    }
}
