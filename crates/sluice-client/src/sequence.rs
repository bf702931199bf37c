//! Numbering exactly-once appends so that a WAL can always tell a retry from a new append.
//!
//! A WAL remembers the results of the newest [`sluice_types::PRODUCER_WINDOW`] numbered appends
//! of each producer and refuses a sequence below all of them once it holds that many (it may
//! have been appended and forgotten). So a producer must never let an append fall that far
//! behind: while sequence `s` is unanswered, it sends nothing at `s + PRODUCER_WINDOW` or above.
//! Then a first attempt or a retry of `s` always finds fewer than the window's worth of higher
//! sequences remembered, however the appends in flight were reordered on the way.
//!
//! One client may have any number of appends in flight, so it numbers them in *lanes*: per
//! pchannel, up to [`MAX_LANES`] producer ids, each with its own sequence and its own window.
//! An append takes a number from the first lane with room; when every lane is full it waits for
//! the oldest append of one to be answered.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;
use sluice_types::{PChannel, PRODUCER_WINDOW};
use tokio::sync::Notify;

/// Producer ids (lanes) one client uses per pchannel at most.
pub(crate) const MAX_LANES: usize = 16;

struct Lane {
    producer: u64,
    next: u64,
    /// Sequences handed out and not yet answered.
    outstanding: BTreeSet<u64>,
}

impl Lane {
    fn has_room(&self) -> bool {
        self.outstanding
            .first()
            .is_none_or(|&oldest| self.next - oldest < PRODUCER_WINDOW)
    }
}

/// A client's lanes, by pchannel.
pub(crate) struct Sequencer {
    lanes: Mutex<HashMap<String, Vec<Lane>>>,
    freed: Notify,
    new_producer: fn() -> u64,
}

/// One number handed out; returned to its lane when dropped (answered, failed or abandoned).
pub(crate) struct Ticket<'a> {
    sequencer: &'a Sequencer,
    pchannel: String,
    lane: usize,
    /// The lane's producer id.
    pub(crate) producer: u64,
    /// The append's sequence number.
    pub(crate) sequence: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self
            .sequencer
            .lanes
            .lock()
            .get_mut(&self.pchannel)
            .and_then(|lanes| lanes.get_mut(self.lane))
        {
            lane.outstanding.remove(&self.sequence);
        }
        self.sequencer.freed.notify_waiters();
    }
}

impl Sequencer {
    /// No lanes yet; each new lane's producer id comes from `new_producer` (random, non-zero).
    pub(crate) fn new(new_producer: fn() -> u64) -> Sequencer {
        Sequencer {
            lanes: Mutex::new(HashMap::new()),
            freed: Notify::new(),
            new_producer,
        }
    }

    fn try_take(&self, pchannel: &PChannel) -> Option<Ticket<'_>> {
        let mut all = self.lanes.lock();
        let lanes = all.entry(pchannel.as_str().to_owned()).or_default();
        let lane = match lanes.iter().position(Lane::has_room) {
            Some(i) => i,
            None if lanes.len() < MAX_LANES => {
                lanes.push(Lane {
                    producer: (self.new_producer)(),
                    next: 1,
                    outstanding: BTreeSet::new(),
                });
                lanes.len() - 1
            }
            None => return None,
        };
        let l = &mut lanes[lane];
        let sequence = l.next;
        l.next += 1;
        l.outstanding.insert(sequence);
        Some(Ticket {
            sequencer: self,
            pchannel: pchannel.as_str().to_owned(),
            lane,
            producer: l.producer,
            sequence,
        })
    }

    /// The next number for an append to `pchannel`, waiting while every lane is full.
    pub(crate) async fn take(&self, pchannel: &PChannel) -> Ticket<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(t) = self.try_take(pchannel) {
                return t;
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    fn counter() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_lane_never_hands_out_a_number_a_window_past_its_oldest_unanswered_one() {
        let s = Sequencer::new(counter);
        let p = PChannel::new("p_0").unwrap();
        let oldest = s.take(&p).await;
        let mut others = Vec::new();
        for _ in 1..PRODUCER_WINDOW {
            let t = s.take(&p).await;
            assert_eq!(t.producer, oldest.producer);
            others.push(t);
        }
        // Answering newer ones frees nothing while the oldest is out: the next number comes
        // from a second lane.
        others.clear();
        let next = s.take(&p).await;
        assert_ne!(next.producer, oldest.producer);
        assert_eq!(next.sequence, 1);
        drop(next);
        // Once the oldest is answered, the first lane goes on where it stopped.
        let first = oldest.producer;
        drop(oldest);
        let t = s.take(&p).await;
        assert_eq!((t.producer, t.sequence), (first, PRODUCER_WINDOW + 1));
        // Another pchannel has lanes of its own.
        let q = s.take(&PChannel::new("p_1").unwrap()).await;
        assert_eq!(q.sequence, 1);
        assert_ne!(q.producer, first);
    }

    #[tokio::test]
    async fn when_every_lane_is_full_an_append_waits_for_one_to_be_answered() {
        let s = Sequencer::new(counter);
        let p = PChannel::new("p_0").unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_LANES as u64 * PRODUCER_WINDOW {
            held.push(s.take(&p).await);
        }
        let producers: BTreeSet<u64> = held.iter().map(|t| t.producer).collect();
        assert_eq!(producers.len(), MAX_LANES);
        {
            let waiting = s.take(&p);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                    .await
                    .is_err(),
                "every lane is full: the append must wait"
            );
            // Answer the oldest of lane 3: that lane has room again.
            let i = held
                .iter()
                .position(|t| t.producer == held[3 * PRODUCER_WINDOW as usize].producer)
                .unwrap();
            let freed = held.remove(i);
            let lane_producer = freed.producer;
            drop(freed);
            let t = tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("a freed lane wakes the waiting append");
            assert_eq!(
                (t.producer, t.sequence),
                (lane_producer, PRODUCER_WINDOW + 1)
            );
        }
    }
}
