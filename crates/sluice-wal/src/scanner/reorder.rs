//! The reorder buffer: data messages wait here, sorted by timestamp, until a timetick releases
//! them.
//!
//! Concurrent appends reach the log out of timestamp order, and a scanner switching between the
//! log and the write-ahead buffer may see one message twice. The buffer is a min-heap by
//! `(timestamp, id)` with a set of the ids it holds, so a second copy is dropped. Once timetick
//! `T` has been seen, every message with a timestamp ≤ `T` is already known (the WAL writes a
//! timetick only after everything below it), so a later arrival at or below `T` is either a copy
//! of a released message or a time tick violation; both are dropped and counted.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

use sluice_types::{MessageId, Timestamp};

use super::pipeline::Classified;

/// What [`ReorderBuffer::push`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// Held until a timetick releases it.
    Buffered,
    /// A copy of a message already held; dropped.
    Duplicate,
    /// At or below a timetick already seen; dropped.
    Late,
}

/// A held message, boxed: the heap moves items on every push and pop (about log2(len) moves
/// each), and catch-up can hold tens of thousands between two persisted timeticks. Moving the
/// ~200-byte message itself was the largest single cost of a catch-up read under `perf`.
struct Item {
    key: (Timestamp, MessageId),
    msg: Box<Classified>,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Item {}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

/// Data messages sorted by timestamp, de-duplicated by id. See the module docs.
#[derive(Default)]
pub(crate) struct ReorderBuffer {
    heap: BinaryHeap<Reverse<Item>>,
    ids: HashSet<MessageId>,
    /// The latest timetick seen: nothing at or below it may enter any more.
    watermark: Option<Timestamp>,
}

impl ReorderBuffer {
    /// Holds a message until a timetick releases it, unless it is a duplicate or late.
    pub(crate) fn push(&mut self, msg: Classified) -> PushOutcome {
        if self.watermark.is_some_and(|w| msg.ts <= w) {
            return PushOutcome::Late;
        }
        if !self.ids.insert(msg.msg.id()) {
            return PushOutcome::Duplicate;
        }
        self.heap.push(Reverse(Item {
            key: (msg.ts, msg.msg.id()),
            msg: Box::new(msg),
        }));
        PushOutcome::Buffered
    }

    /// Records that timetick `ts` was seen: later arrivals at or below it are late. Returns
    /// false (and changes nothing) when `ts` does not advance the watermark.
    pub(crate) fn advance(&mut self, ts: Timestamp) -> bool {
        if self.watermark.is_some_and(|w| ts <= w) {
            return false;
        }
        self.watermark = Some(ts);
        true
    }

    /// The oldest message if its timestamp is ≤ `up_to`.
    pub(crate) fn pop_up_to(&mut self, up_to: Timestamp) -> Option<Classified> {
        if self.heap.peek()?.0.key.0 > up_to {
            return None;
        }
        let Reverse(Item { key, msg }) = self.heap.pop()?;
        self.ids.remove(&key.1);
        Some(*msg)
    }

    /// Whether a message with a timestamp ≤ `up_to` is held.
    pub(crate) fn has_up_to(&self, up_to: Timestamp) -> bool {
        self.heap.peek().is_some_and(|m| m.0.key.0 <= up_to)
    }

    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use sluice_types::MutableMessage;
    use sluice_types::message::InsertHeader;

    use super::*;

    fn msg(id: u64, ts: u64) -> Classified {
        let mut m = MutableMessage::builder(InsertHeader::default())
            .build()
            .unwrap();
        m.set_timestamp(Timestamp(ts));
        Classified::new(m.into_immutable(MessageId::from_parts(0, id))).unwrap()
    }

    fn drain(buf: &mut ReorderBuffer, up_to: u64) -> Vec<u64> {
        std::iter::from_fn(|| buf.pop_up_to(Timestamp(up_to)))
            .map(|m| m.ts.0)
            .collect()
    }

    #[test]
    fn releases_in_timestamp_order_up_to_the_tick() {
        let mut buf = ReorderBuffer::default();
        for (id, ts) in [(1, 30), (2, 10), (3, 20), (4, 50)] {
            assert_eq!(buf.push(msg(id, ts)), PushOutcome::Buffered);
        }
        assert!(buf.advance(Timestamp(40)));
        assert_eq!(drain(&mut buf, 40), [10, 20, 30]);
        assert_eq!(buf.len(), 1);
    }

    #[test]
    fn duplicates_and_late_arrivals_are_dropped() {
        let mut buf = ReorderBuffer::default();
        assert_eq!(buf.push(msg(1, 10)), PushOutcome::Buffered);
        assert_eq!(buf.push(msg(1, 10)), PushOutcome::Duplicate);
        assert!(buf.advance(Timestamp(15)));
        assert!(!buf.advance(Timestamp(15)));
        assert_eq!(drain(&mut buf, 15), [10]);
        // The same message again after its release, and a violation below the tick.
        assert_eq!(buf.push(msg(1, 10)), PushOutcome::Late);
        assert_eq!(buf.push(msg(2, 15)), PushOutcome::Late);
        assert_eq!(buf.push(msg(3, 16)), PushOutcome::Buffered);
    }
}
