//! Timestamp allocation, acknowledgement and last-confirmed ids.
//!
//! Appends run concurrently, so log id order is not timestamp order. This state machine keeps
//! what readers need to release messages in timestamp order:
//!
//! * **Allocation** happens under one lock, so allocation order equals timestamp order.
//! * **Last-confirmed id (LC)** of a message `m`: reading the log from `LC(m)` sees every message
//!   with a timestamp ≥ `TT(m)`, and the BeginTxn of every transaction still open. We use the
//!   largest id acknowledged before `m` was allocated: every record with a smaller id got its id
//!   before that acknowledgement, hence was allocated before `m`, hence has a smaller timestamp.
//!   Open transactions hold the LC at their BeginTxn so a reader starting there sees the whole
//!   transaction.
//! * **Timetick sync**: the highest timestamp below which every allocation is acknowledged is
//!   `last_confirmed_ts`. A timetick at that timestamp, written after all of those messages were
//!   acknowledged, guarantees every message with TT ≤ tick precedes it in the log.

use std::collections::{BTreeSet, HashMap, VecDeque};

use sluice_types::{ImmutableMessage, MessageId, Timestamp, VChannel};

use crate::tso::Batch;

/// What a timetick sync decided.
#[derive(Debug)]
pub(crate) struct SyncPlan {
    /// The timetick's timestamp.
    pub(crate) tick: Timestamp,
    /// The timetick's last-confirmed id.
    pub(crate) last_confirmed: MessageId,
    /// Acknowledged messages with TT ≤ tick, in timestamp order, not yet given to readers.
    pub(crate) messages: Vec<ImmutableMessage>,
    /// Whether the timetick must be written to the log.
    pub(crate) persist: bool,
}

/// Where one allocated timestamp stands.
#[derive(Debug)]
enum Slot {
    /// Allocated, not yet acknowledged; the LC it was given.
    InFlight(MessageId),
    /// Acknowledged, waiting for the next sync to hand it to readers.
    Acked(ImmutableMessage),
    /// Nothing to release: the append failed, or the timestamp was a sync's own.
    Done,
}

/// One allocated timestamp: what the append needs, and where its slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The timestamp.
    pub(crate) ts: Timestamp,
    /// Its last-confirmed id.
    pub(crate) lc: MessageId,
    /// Allocation sequence number: the slot's index plus `AckState::head_seq`.
    seq: u64,
}

/// Allocation, acknowledgement and LC state of one WAL.
#[derive(Debug)]
pub(crate) struct AckState {
    pub(crate) batch: Batch,
    last_allocated: Timestamp,
    /// Every timestamp allocated since the last sync released it, in allocation (= timestamp)
    /// order: a sync releases a prefix, an acknowledgement finds its slot by its sequence number.
    slots: VecDeque<(Timestamp, Slot)>,
    /// Sequence number of `slots[0]`.
    head_seq: u64,
    /// Slots still in flight.
    inflight: usize,
    max_acked_id: MessageId,
    /// BeginTxn ids of transactions still open.
    open_txns: BTreeSet<(MessageId, i64)>,
    open_txn_ids: HashMap<i64, MessageId>,
    last_tick: Timestamp,
    /// Messages were released since the last persisted timetick.
    released_since_persist: bool,
    /// Per vchannel, the highest acknowledged timestamp (MVCC).
    vchannel_mvcc: HashMap<String, Timestamp>,
    /// The timestamp of the WAL's first message at this term: every write acknowledged at an
    /// older term is below it.
    opened: Timestamp,
    /// An empty vector with room, for the next sync's messages.
    spare: Vec<ImmutableMessage>,
}

impl AckState {
    /// State right after the first timetick (`tick` at `id`) was written.
    pub(crate) fn new(tick: Timestamp, id: MessageId) -> AckState {
        AckState {
            batch: Batch::default(),
            last_allocated: tick,
            slots: VecDeque::new(),
            head_seq: 0,
            inflight: 0,
            max_acked_id: id,
            open_txns: BTreeSet::new(),
            open_txn_ids: HashMap::new(),
            last_tick: tick,
            released_since_persist: false,
            vchannel_mvcc: HashMap::new(),
            spare: Vec::new(),
            opened: tick,
        }
    }

    /// Resolves the in-flight slot of `t` to `to`.
    fn resolve(&mut self, t: Ticket, to: Slot) {
        let Some(i) = t.seq.checked_sub(self.head_seq) else {
            return;
        };
        if let Some((ts, slot)) = usize::try_from(i).ok().and_then(|i| self.slots.get_mut(i))
            && *ts == t.ts
            && matches!(slot, Slot::InFlight(_))
        {
            *slot = to;
            self.inflight -= 1;
        }
    }

    /// The first slot still in flight: its timestamp and LC.
    fn first_inflight(&self) -> Option<(Timestamp, MessageId)> {
        if self.inflight == 0 {
            return None;
        }
        self.slots.iter().find_map(|(t, s)| match s {
            Slot::InFlight(lc) => Some((*t, *lc)),
            _ => None,
        })
    }

    /// The LC a message allocated now gets.
    pub(crate) fn current_lc(&self) -> MessageId {
        match self.open_txns.first() {
            Some((begin, _)) => (*begin).min(self.max_acked_id),
            None => self.max_acked_id,
        }
    }

    /// Takes a timestamp (≥ `barrier`) from the local batch and registers it in flight; `None`
    /// when the batch must be refilled first.
    pub(crate) fn allocate(&mut self, barrier: Option<Timestamp>) -> Option<Ticket> {
        let ts = self.batch.take(barrier)?;
        debug_assert!(ts > self.last_allocated);
        self.last_allocated = ts;
        let lc = self.current_lc();
        let seq = self.head_seq + self.slots.len() as u64;
        self.slots.push_back((ts, Slot::InFlight(lc)));
        self.inflight += 1;
        Some(Ticket { ts, lc, seq })
    }

    /// The append at `ts` failed: nothing was written.
    pub(crate) fn ack_failed(&mut self, t: Ticket) {
        self.resolve(t, Slot::Done);
    }

    /// The append at `ts` is durable as `msg`. `deliver` is false for parts of a transaction
    /// that readers get through the scanner's txn assembly anyway (they are still delivered;
    /// the flag exists for messages that must never reach the buffer).
    pub(crate) fn ack(&mut self, t: Ticket, msg: ImmutableMessage) {
        let ts = t.ts;
        self.max_acked_id = self.max_acked_id.max(msg.id());
        if let Some(vc) = msg.vchannel_str() {
            match self.vchannel_mvcc.get_mut(vc) {
                Some(e) => *e = (*e).max(ts),
                None => {
                    self.vchannel_mvcc.insert(vc.to_owned(), ts);
                }
            }
        }
        self.resolve(t, Slot::Acked(msg));
    }

    /// Holds the LC at `begin` until transaction `txn_id` ends. Called when its BeginTxn is
    /// allocated, with the LC that BeginTxn was given, before it is appended: the BeginTxn's id
    /// will be above every id acknowledged so far, so a reader starting at the hold sees it.
    /// Holding only once the BeginTxn is acknowledged is too late: another message can be
    /// acknowledged with a higher id, and a message allocated then gets an LC past the BeginTxn
    /// while the transaction is still open (a resumed reader then lost the whole transaction).
    pub(crate) fn open_txn(&mut self, txn_id: i64, begin: MessageId) {
        if let Some(old) = self.open_txn_ids.insert(txn_id, begin) {
            self.open_txns.remove(&(old, txn_id));
        }
        self.open_txns.insert((begin, txn_id));
    }

    /// The BeginTxn of an open transaction is durable at `id`: the hold moves up to it (every
    /// message allocated from now on may start reading there). Nothing if the transaction
    /// already ended.
    pub(crate) fn txn_begun_at(&mut self, txn_id: i64, id: MessageId) {
        if self.open_txn_ids.contains_key(&txn_id) {
            self.open_txn(txn_id, id);
        }
    }

    /// A transaction ended (committed, rolled back, expired or failed).
    pub(crate) fn close_txn(&mut self, txn_id: i64) {
        if let Some(begin) = self.open_txn_ids.remove(&txn_id) {
            self.open_txns.remove(&(begin, txn_id));
        }
    }

    /// The highest timestamp below which every allocation is acknowledged.
    #[cfg(test)]
    pub(crate) fn last_confirmed_ts(&self) -> Timestamp {
        self.confirmed().0
    }

    /// The last-confirmed timestamp and, when an append is in flight, the LC of the first one
    /// (one scan for both).
    fn confirmed(&self) -> (Timestamp, Option<MessageId>) {
        match self.first_inflight() {
            Some((first, lc)) => (Timestamp(first.0 - 1), Some(lc)),
            None => (self.last_allocated, None),
        }
    }

    /// Plans a timetick. `sync` is a timestamp the caller just allocated for the sync itself
    /// (it is acknowledged here at once, so an idle WAL's time still advances). The timetick is
    /// persisted when forced, or when `persist_due` and messages were released since the last
    /// persisted one. Returns `None` when time did not advance since the last timetick.
    pub(crate) fn plan_sync(
        &mut self,
        sync: Ticket,
        force_persist: bool,
        persist_due: bool,
    ) -> Option<SyncPlan> {
        self.resolve(sync, Slot::Done);
        let (tick, first_lc) = self.confirmed();
        if tick <= self.last_tick {
            return None;
        }
        let last_confirmed = match first_lc {
            Some(lc) => lc.min(self.current_lc()),
            None => self.current_lc(),
        };
        // Everything before the first slot in flight is resolved: release that prefix.
        let mut messages = std::mem::take(&mut self.spare);
        while let Some((t, slot)) = self.slots.front()
            && *t <= tick
            && !matches!(slot, Slot::InFlight(_))
        {
            let popped = self.slots.pop_front();
            self.head_seq += 1;
            if let Some((_, Slot::Acked(m))) = popped {
                messages.push(m);
            }
        }
        let released = self.released_since_persist || !messages.is_empty();
        let persist = force_persist || (persist_due && released);
        self.released_since_persist = released && !persist;
        self.last_tick = tick;
        Some(SyncPlan {
            tick,
            last_confirmed,
            messages,
            persist,
        })
    }

    /// Gives back a sync's emptied message vector, so the next sync need not allocate one.
    pub(crate) fn spare(&mut self, mut messages: Vec<ImmutableMessage>) {
        messages.clear();
        self.spare = messages;
    }

    /// A persisted timetick is durable at `id`.
    pub(crate) fn tick_written(&mut self, id: MessageId) {
        self.max_acked_id = self.max_acked_id.max(id);
    }

    /// A timestamp at or above `vchannel`'s newest acknowledged write, at this term or an
    /// older one: the newest write since the open, else the open itself.
    pub(crate) fn last_write(&self, vchannel: &VChannel) -> Timestamp {
        self.vchannel_mvcc
            .get(vchannel.as_str())
            .copied()
            .unwrap_or_default()
            .max(self.opened)
    }

    /// The latest timestamp a read of `vchannel` may use: its newest acknowledged write or the
    /// last timetick, whichever is later.
    pub(crate) fn mvcc(&self, vchannel: &VChannel) -> Timestamp {
        self.vchannel_mvcc
            .get(vchannel.as_str())
            .copied()
            .unwrap_or_default()
            .max(self.last_tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::MutableMessage;
    use sluice_types::message::InsertHeader;

    fn state() -> AckState {
        let mut s = AckState::new(Timestamp(100), MessageId(1));
        s.batch = crate::tso::Batch::default();
        s
    }

    fn fill(s: &mut AckState, from: u64) {
        s.batch = crate::tso::Batch::for_tests(from, from + 1000);
    }

    fn msg(id: u128) -> ImmutableMessage {
        MutableMessage::builder(InsertHeader::default())
            .build()
            .unwrap()
            .into_immutable(MessageId(id))
    }

    #[test]
    fn lc_is_the_largest_id_acked_before_allocation() {
        let mut s = state();
        fill(&mut s, 200);
        let a = s.allocate(None).unwrap();
        let lc_a = a.lc;
        let b = s.allocate(None).unwrap();
        let lc_b = b.lc;
        assert_eq!((lc_a, lc_b), (MessageId(1), MessageId(1)));
        // b finishes first with a smaller id than a will get.
        s.ack(b, msg(5));
        let c = s.allocate(None).unwrap();
        let lc_c = c.lc;
        assert_eq!(lc_c, MessageId(5));
        s.ack(a, msg(6));
        s.ack(c, msg(7));
        assert_eq!(s.last_confirmed_ts(), c.ts);
    }

    #[test]
    fn open_txn_holds_the_lc() {
        let mut s = state();
        fill(&mut s, 200);
        let t = s.allocate(None).unwrap();
        s.ack(t, msg(10));
        s.open_txn(7, MessageId(10));
        let u = s.allocate(None).unwrap();
        s.ack(u, msg(11));
        assert_eq!(s.allocate(None).unwrap().lc, MessageId(10));
        s.close_txn(7);
        assert_eq!(s.allocate(None).unwrap().lc, MessageId(11));
    }

    /// The race the scenario test caught: a BeginTxn's append is assigned its id, a later
    /// message is acknowledged with a higher id before the BeginTxn's acknowledgement is
    /// processed, and a message allocated then must still get an LC at or below the BeginTxn.
    #[test]
    fn txn_hold_starts_when_the_begin_is_allocated() {
        let mut s = state();
        fill(&mut s, 200);
        let begin = s.allocate(None).unwrap();
        s.open_txn(7, begin.lc);
        let other = s.allocate(None).unwrap();
        // The log gave the BeginTxn id 9 and `other` id 10; `other` is processed first.
        s.ack(other, msg(10));
        let during = s.allocate(None).unwrap();
        assert!(
            during.lc <= MessageId(9),
            "LC {:?} skips the BeginTxn",
            during.lc
        );
        s.ack(begin, msg(9));
        s.txn_begun_at(7, MessageId(9));
        assert_eq!(s.allocate(None).unwrap().lc, MessageId(9));
        s.close_txn(7);
        // An ended transaction is not held again by a late acknowledgement.
        s.txn_begun_at(7, MessageId(9));
        assert_eq!(s.allocate(None).unwrap().lc, MessageId(10));
    }

    #[test]
    fn sync_releases_only_confirmed_messages_in_timestamp_order() {
        let mut s = state();
        fill(&mut s, 200);
        let a = s.allocate(None).unwrap();
        let b = s.allocate(None).unwrap();
        let c = s.allocate(None).unwrap();
        s.ack(c, msg(3));
        s.ack(a, msg(4));
        // b is still in flight: only a is confirmed.
        let sync = s.allocate(None).unwrap();
        let plan = s.plan_sync(sync, false, true).unwrap();
        assert_eq!(plan.tick, a.ts);
        assert_eq!(
            plan.messages.iter().map(|m| m.id()).collect::<Vec<_>>(),
            [MessageId(4)]
        );
        assert!(plan.persist);
        // The tick's LC must let a reader see b, whose LC was taken before anything was acked.
        assert_eq!(plan.last_confirmed, MessageId(1));
        s.ack(b, msg(5));
        let sync = s.allocate(None).unwrap();
        let plan = s.plan_sync(sync, false, true).unwrap();
        assert_eq!(plan.tick, sync.ts);
        assert_eq!(
            plan.messages.iter().map(|m| m.id()).collect::<Vec<_>>(),
            [MessageId(5), MessageId(3)]
        );
        // Idle: time advances with a timetick that need not be persisted.
        let sync = s.allocate(None).unwrap();
        let plan = s.plan_sync(sync, false, true).unwrap();
        assert!(!plan.persist && plan.messages.is_empty());
        assert!(
            s.plan_sync(sync, false, true).is_none(),
            "no progress, no timetick"
        );
    }

    #[test]
    fn released_messages_get_a_persisted_timetick_once_it_is_due() {
        let mut s = state();
        fill(&mut s, 200);
        let a = s.allocate(None).unwrap();
        s.ack(a, msg(3));
        // Released at once to the buffer, not yet persisted.
        let sync = s.allocate(None).unwrap();
        let plan = s.plan_sync(sync, false, false).unwrap();
        assert_eq!(plan.messages.len(), 1);
        assert!(!plan.persist);
        // Due: persisted although nothing new was released in this round.
        let sync = s.allocate(None).unwrap();
        let plan = s.plan_sync(sync, false, true).unwrap();
        assert!(plan.messages.is_empty());
        assert!(plan.persist);
        // Then idle rounds are not persisted.
        let sync = s.allocate(None).unwrap();
        assert!(!s.plan_sync(sync, false, true).unwrap().persist);
        // A forced one always is.
        let sync = s.allocate(None).unwrap();
        assert!(s.plan_sync(sync, true, false).unwrap().persist);
    }
}
