//! The txn buffer: assembles transactions from their parts as the reorder buffer releases them.
//!
//! Parts arrive in timestamp order. A BeginTxn opens a builder; each body (a data message with a
//! `_tx` context) is appended to its builder; the CommitTxn turns the builder into one
//! [`ImmutableTxnMessage`] delivered at the commit's timestamp; a RollbackTxn discards it. A
//! builder whose keepalive ran out is discarded too: at a timetick `T`, when
//! `T ≥ last part's timestamp + keepalive`, and also when a body or commit arrives at or after
//! that point (the WAL rejects such appends, so this only guards against a damaged log). Parts
//! of an unknown transaction are dropped.

use std::collections::HashMap;
use std::time::Duration;

use sluice_types::message::BeginTxnHeader;
use sluice_types::{ImmutableMessage, ImmutableTxnMessage, MessageType, Timestamp};

use super::ReadMessage;
use super::pipeline::Classified;

/// Keepalive of a transaction that states none (the WAL's default,
/// `streaming.txn.defaultKeepaliveTimeout`).
pub const DEFAULT_TXN_KEEPALIVE: Duration = Duration::from_secs(10);

/// Counters of what the txn buffer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnCounters {
    /// Transactions delivered.
    pub committed: u64,
    /// Transactions rolled back.
    pub rolled_back: u64,
    /// Transactions discarded because their keepalive ran out.
    pub expired: u64,
    /// Parts dropped because their transaction was unknown (never begun, already ended, or
    /// begun twice), or because the assembled transaction was inconsistent.
    pub orphan_parts: u64,
}

struct Builder {
    begin: ImmutableMessage,
    bodies: Vec<ImmutableMessage>,
    /// `None` = never expires.
    keepalive: Option<Duration>,
    last_ts: Timestamp,
}

impl Builder {
    fn expired_at(&self, ts: Timestamp) -> bool {
        match self.keepalive {
            None => false,
            Some(k) => ts >= self.last_ts.saturating_add_duration(k),
        }
    }
}

fn keepalive_of(begin: &Classified) -> Option<Duration> {
    let ms = match begin.txn.map(|t| t.keepalive_ms) {
        Some(ms) if ms != 0 => ms,
        _ => begin
            .msg
            .header::<BeginTxnHeader>()
            .map(|h| h.keepalive_milliseconds)
            .unwrap_or(0),
    };
    match ms {
        0 => Some(DEFAULT_TXN_KEEPALIVE),
        ms if ms < 0 => None,
        ms => Some(Duration::from_millis(ms.unsigned_abs())),
    }
}

/// Open transactions by id. See the module docs.
#[derive(Default)]
pub(crate) struct TxnBuffer {
    open: HashMap<i64, Builder>,
    counters: TxnCounters,
}

impl TxnBuffer {
    /// Handles one released message; returns what to deliver, if anything.
    pub(crate) fn handle(&mut self, msg: Classified) -> Option<ReadMessage> {
        let Some(txn) = msg.txn else {
            return match msg.ty {
                // A transaction control message without a context cannot be matched.
                MessageType::BeginTxn | MessageType::CommitTxn | MessageType::RollbackTxn => {
                    self.counters.orphan_parts += 1;
                    None
                }
                _ => Some(ReadMessage::Message(msg.msg)),
            };
        };
        let id = txn.txn_id;
        match msg.ty {
            MessageType::BeginTxn => {
                if self.open.contains_key(&id) {
                    self.counters.orphan_parts += 1;
                    return None;
                }
                let keepalive = keepalive_of(&msg);
                self.open.insert(
                    id,
                    Builder {
                        begin: msg.msg,
                        bodies: Vec::new(),
                        keepalive,
                        last_ts: msg.ts,
                    },
                );
                None
            }
            MessageType::CommitTxn => {
                let Some(b) = self.open.remove(&id) else {
                    self.counters.orphan_parts += 1;
                    return None;
                };
                if b.expired_at(msg.ts) {
                    self.counters.expired += 1;
                    return None;
                }
                match ImmutableTxnMessage::new(b.begin, b.bodies, msg.msg) {
                    Ok(t) => {
                        self.counters.committed += 1;
                        Some(ReadMessage::Txn(Box::new(t)))
                    }
                    Err(e) => {
                        tracing::warn!(
                            txn_id = id,
                            error = %e,
                            "dropping an inconsistent transaction"
                        );
                        self.counters.orphan_parts += 1;
                        None
                    }
                }
            }
            MessageType::RollbackTxn => {
                if self.open.remove(&id).is_some() {
                    self.counters.rolled_back += 1;
                } else {
                    self.counters.orphan_parts += 1;
                }
                None
            }
            _ => {
                let Some(b) = self.open.get_mut(&id) else {
                    self.counters.orphan_parts += 1;
                    return None;
                };
                if b.expired_at(msg.ts) {
                    self.open.remove(&id);
                    self.counters.expired += 1;
                    return None;
                }
                b.last_ts = msg.ts;
                b.bodies.push(msg.msg);
                None
            }
        }
    }

    /// Discards every transaction whose keepalive ran out by timetick `tick`.
    pub(crate) fn expire(&mut self, tick: Timestamp) {
        let before = self.open.len();
        self.open.retain(|_, b| !b.expired_at(tick));
        self.counters.expired += (before - self.open.len()) as u64;
    }

    /// Transactions open.
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    /// What happened so far.
    pub(crate) fn counters(&self) -> TxnCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use sluice_types::message::{CommitTxnHeader, InsertHeader, RollbackTxnHeader, TxnContext};
    use sluice_types::{MessageId, MutableMessage, VChannel};

    use super::*;

    fn part<H: sluice_types::message::MessageHeader>(
        h: H,
        txn: Option<(i64, i64)>,
        id: u64,
        ts: Timestamp,
    ) -> Classified {
        let vc = VChannel::new("p_1v0").unwrap();
        let mut m = MutableMessage::builder(h).vchannel(&vc).build().unwrap();
        if let Some((txn_id, keepalive_ms)) = txn {
            m.set_txn_context(TxnContext {
                txn_id,
                keepalive_ms,
            });
        }
        m.set_timestamp(ts);
        Classified::new(m.into_immutable(MessageId::from_parts(0, id))).unwrap()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_parts(1_000 + ms, 0).unwrap()
    }

    #[test]
    fn commit_emits_one_txn_with_its_bodies() {
        let mut b = TxnBuffer::default();
        assert!(
            b.handle(part(BeginTxnHeader::default(), Some((7, 100)), 1, at(0)))
                .is_none()
        );
        assert!(
            b.handle(part(InsertHeader::default(), Some((7, 100)), 2, at(1)))
                .is_none()
        );
        assert!(
            b.handle(part(InsertHeader::default(), Some((7, 100)), 3, at(2)))
                .is_none()
        );
        let out = b.handle(part(CommitTxnHeader::default(), Some((7, 100)), 4, at(3)));
        let Some(ReadMessage::Txn(t)) = out else {
            panic!("expected a txn, got {out:?}");
        };
        assert_eq!(t.bodies().len(), 2);
        assert_eq!(t.timestamp().unwrap(), Some(at(3)));
        assert_eq!(b.open_count(), 0);
        assert_eq!(b.counters().committed, 1);
    }

    #[test]
    fn rollback_orphans_and_plain_messages() {
        let mut b = TxnBuffer::default();
        b.handle(part(BeginTxnHeader::default(), Some((1, 100)), 1, at(0)));
        b.handle(part(InsertHeader::default(), Some((1, 100)), 2, at(1)));
        assert!(
            b.handle(part(RollbackTxnHeader::default(), Some((1, 100)), 3, at(2)))
                .is_none()
        );
        assert!(
            b.handle(part(InsertHeader::default(), Some((9, 100)), 4, at(3)))
                .is_none()
        );
        assert!(
            b.handle(part(CommitTxnHeader::default(), Some((9, 100)), 5, at(4)))
                .is_none()
        );
        let plain = b.handle(part(InsertHeader::default(), None, 6, at(5)));
        assert!(matches!(plain, Some(ReadMessage::Message(_))));
        let c = b.counters();
        assert_eq!((c.rolled_back, c.orphan_parts, c.committed), (1, 2, 0));
    }

    #[test]
    fn keepalive_is_refreshed_by_bodies_and_expires_at_a_tick() {
        let mut b = TxnBuffer::default();
        b.handle(part(BeginTxnHeader::default(), Some((1, 10)), 1, at(0)));
        b.expire(at(9));
        assert_eq!(b.open_count(), 1);
        b.handle(part(InsertHeader::default(), Some((1, 10)), 2, at(8)));
        b.expire(at(17));
        assert_eq!(b.open_count(), 1, "the body at 8 ms moved expiry to 18 ms");
        b.expire(at(18));
        assert_eq!(b.open_count(), 0);
        assert_eq!(b.counters().expired, 1);
    }

    #[test]
    fn infinite_keepalive_never_expires_and_header_keepalive_is_a_fallback() {
        let mut b = TxnBuffer::default();
        b.handle(part(BeginTxnHeader::default(), Some((1, -1)), 1, at(0)));
        let header = BeginTxnHeader {
            keepalive_milliseconds: 5,
        };
        b.handle(part(header, Some((2, 0)), 2, at(0)));
        b.handle(part(BeginTxnHeader::default(), Some((3, 0)), 3, at(0)));
        b.expire(Timestamp::MAX);
        assert_eq!(b.open_count(), 1);
        let mut b2 = TxnBuffer::default();
        b2.handle(part(
            BeginTxnHeader {
                keepalive_milliseconds: 5,
            },
            Some((2, 0)),
            2,
            at(0),
        ));
        b2.handle(part(BeginTxnHeader::default(), Some((3, 0)), 3, at(0)));
        b2.expire(at(5));
        assert_eq!(
            b2.open_count(),
            1,
            "header keepalive 5 ms expired, default 10 s did not"
        );
    }

    #[test]
    fn a_commit_after_expiry_is_dropped() {
        let mut b = TxnBuffer::default();
        b.handle(part(BeginTxnHeader::default(), Some((1, 10)), 1, at(0)));
        assert!(
            b.handle(part(CommitTxnHeader::default(), Some((1, 10)), 2, at(10)))
                .is_none()
        );
        assert_eq!(b.counters().expired, 1);
    }
}
