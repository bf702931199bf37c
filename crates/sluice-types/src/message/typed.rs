//! Reserved properties kept typed outside the string map, and their text form.

use super::*;

/// Reserved properties while they are typed.
///
/// The stamps are plain numbers with one bit each in `set` saying whether they are there (an
/// `Option` of each would make every message a third larger).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Typed {
    /// `_t` and `_v`: the type and this build's message version.
    pub(super) kind: Option<MessageType>,
    /// Which stamps are set ([`TS`], [`TERM`], [`LC`], [`PRODUCER`]); an unset one is 0.
    set: u8,
    ts: u64,
    term: u64,
    /// A `MessageId` as two halves (high, low): a `u128` field would make every message 16-byte
    /// aligned and larger.
    lc: [u64; 2],
    /// `_pid` and `_pseq`: the producer and the sequence number of an exactly-once append.
    producer: [u64; 2],
    pub(super) vchannel: Option<VChannel>,
}

const TS: u8 = 1;
const TERM: u8 = 2;
const LC: u8 = 4;
const PRODUCER: u8 = 8;

impl Typed {
    fn get<T>(&self, bit: u8, v: T) -> Option<T> {
        (self.set & bit != 0).then_some(v)
    }

    /// Marks `bit` set or unset (an unset stamp's number is 0).
    fn mark(&mut self, bit: u8, on: bool) {
        if on {
            self.set |= bit;
        } else {
            self.set &= !bit;
        }
    }

    pub(super) fn ts(&self) -> Option<Timestamp> {
        self.get(TS, Timestamp(self.ts))
    }

    pub(super) fn set_ts(&mut self, ts: Option<Timestamp>) {
        self.ts = ts.map_or(0, |t| t.0);
        self.mark(TS, ts.is_some());
    }

    pub(super) fn term(&self) -> Option<Term> {
        self.get(TERM, Term(self.term))
    }

    pub(super) fn set_term(&mut self, term: Option<Term>) {
        self.term = term.map_or(0, |t| t.0);
        self.mark(TERM, term.is_some());
    }

    pub(super) fn lc(&self) -> Option<MessageId> {
        self.get(LC, join_id(self.lc))
    }

    pub(super) fn set_lc(&mut self, id: Option<MessageId>) {
        self.lc = id.map_or([0; 2], split_id);
        self.mark(LC, id.is_some());
    }

    pub(super) fn producer(&self) -> Option<(u64, u64)> {
        self.get(PRODUCER, (self.producer[0], self.producer[1]))
    }

    pub(super) fn set_producer(&mut self, producer: Option<(u64, u64)>) {
        self.producer = producer.map_or([0; 2], |(p, s)| [p, s]);
        self.mark(PRODUCER, producer.is_some());
    }
}

fn split_id(id: MessageId) -> [u64; 2] {
    [(id.0 >> 64) as u64, id.0 as u64]
}

fn join_id([high, low]: [u64; 2]) -> MessageId {
    MessageId((u128::from(high) << 64) | u128::from(low))
}

/// A typed property's value as text, without allocating.
pub(super) enum TypedText<'a> {
    Inline { buf: [u8; 32], len: usize },
    Str(&'a str),
}

impl TypedText<'_> {
    pub(super) fn radix(mut v: u64, radix: u64) -> TypedText<'static> {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut buf = [0u8; 32];
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = DIGITS[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        let len = tmp.len() - i;
        buf[..len].copy_from_slice(&tmp[i..]);
        TypedText::Inline { buf, len }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Digits are ASCII.
            TypedText::Inline { buf, len } => std::str::from_utf8(&buf[..*len]).unwrap_or_default(),
            TypedText::Str(s) => s,
        }
    }
}

/// Digits of `v` in `radix` (the length of its property value).
pub(super) fn digits(mut v: u64, radix: u64) -> usize {
    let mut n = 1;
    while v >= radix {
        v /= radix;
        n += 1;
    }
    n
}

impl Typed {
    /// Key and value bytes of the typed properties.
    pub(super) fn len(&self) -> usize {
        self.kind.map_or(0, |ty| {
            keys::TYPE.len()
                + digits(u64::from(ty.number()), 10)
                + keys::VERSION.len()
                + digits(u64::from(MESSAGE_VERSION), 10)
        }) + self
            .vchannel
            .as_ref()
            .map_or(0, |v| keys::VCHANNEL.len() + v.as_str().len())
            + self
                .ts()
                .map_or(0, |t| keys::TIMESTAMP.len() + digits(t.0, 36))
            + self
                .term()
                .map_or(0, |t| keys::TERM.len() + digits(t.0, 36))
            + self.lc().map_or(0, |_| keys::LAST_CONFIRMED.len() + 32)
            + self.producer().map_or(0, |(p, s)| {
                keys::PRODUCER.len() + digits(p, 36) + keys::PRODUCER_SEQUENCE.len() + digits(s, 36)
            })
    }

    pub(super) fn count(&self) -> usize {
        2 * usize::from(self.kind.is_some())
            + usize::from(self.vchannel.is_some())
            + (self.set & (TS | TERM | LC)).count_ones() as usize
            + 2 * usize::from(self.set & PRODUCER != 0)
    }

    pub(super) fn is_empty(&self) -> bool {
        *self == Typed::default()
    }

    /// The typed properties as (key, value).
    pub(super) fn entries(&self) -> impl Iterator<Item = (&'static str, TypedText<'_>)> {
        let kind = self.kind.map(|ty| {
            [
                (keys::TYPE, TypedText::radix(u64::from(ty.number()), 10)),
                (
                    keys::VERSION,
                    TypedText::radix(u64::from(MESSAGE_VERSION), 10),
                ),
            ]
        });
        let producer = self.producer().map(|(p, s)| {
            [
                (keys::PRODUCER, TypedText::radix(p, 36)),
                (keys::PRODUCER_SEQUENCE, TypedText::radix(s, 36)),
            ]
        });
        kind.into_iter()
            .flatten()
            .chain(producer.into_iter().flatten())
            .chain(
                [
                    self.vchannel
                        .as_ref()
                        .map(|v| (keys::VCHANNEL, TypedText::Str(v.as_str()))),
                    self.ts()
                        .map(|t| (keys::TIMESTAMP, TypedText::radix(t.0, 36))),
                    self.term().map(|t| (keys::TERM, TypedText::radix(t.0, 36))),
                    self.lc().map(|id| {
                        (
                            keys::LAST_CONFIRMED,
                            TypedText::Inline {
                                buf: id.hex(),
                                len: 32,
                            },
                        )
                    }),
                ]
                .into_iter()
                .flatten(),
            )
    }
}
