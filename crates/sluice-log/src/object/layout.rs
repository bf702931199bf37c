//! Object names and message ids.
//!
//! ```text
//!  {prefix}/{pchannel}/{term:015}-{gen:05}/owner             claims the segment (conditional create)
//!  {prefix}/{pchannel}/{term:015}-{gen:05}/sealed            hint: the segment is fenced (body: index)
//!  {prefix}/{pchannel}/{term:015}-{gen:05}/b/{block:013}     a data block or the fence
//!  {prefix}/{pchannel}/{term:015}-{gen:05}/t/{block:013}     truncation mark: blocks below are gone
//! ```
//!
//! Fixed-width decimal names make the lexicographic order of names the numeric order.
//!
//! A [`MessageId`] packs (segment, block, entry) so ids order like positions in the log:
//!
//! ```text
//!  hi = term << 16 | gen          (term < 2^48)
//!  lo = block << 24 | entry       (block < 2^40, entry < 2^24)
//! ```

use object_store::path::Path;
use sluice_types::{MessageId, PChannel};

/// Bits of `lo` holding the entry index.
const ENTRY_BITS: u32 = 24;
/// Largest term an id can carry, plus one.
pub(super) const TERM_LIMIT: u64 = 1 << 48;
/// Largest block index, plus one.
pub(super) const BLOCK_LIMIT: u64 = 1 << 40;
/// Most records one block may hold.
pub(super) const MAX_ENTRIES: u32 = 1 << ENTRY_BITS;

/// One writer's run: the term it opened at, and a generation that tells apart read-write opens at
/// the same term. Ordered by (term, gen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SegmentId {
    term: u64,
    gen_: u16,
}

impl SegmentId {
    /// `None` when `term` is too large for an id.
    pub(super) fn new(term: u64, gen_: u16) -> Option<SegmentId> {
        (term < TERM_LIMIT).then_some(SegmentId { term, gen_ })
    }

    /// The term.
    pub(super) fn term(self) -> u64 {
        self.term
    }

    /// The generation within the term.
    pub(super) fn generation(self) -> u16 {
        self.gen_
    }

    fn dir_name(self) -> String {
        format!("{:015}-{:05}", self.term, self.gen_)
    }

    /// Parses a segment directory name; `None` for anything else.
    pub(super) fn parse(name: &str) -> Option<SegmentId> {
        let (t, g) = name.split_once('-')?;
        if t.len() != 15 || g.len() != 5 || !t.bytes().chain(g.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        SegmentId::new(t.parse().ok()?, g.parse().ok()?)
    }
}

/// A position in the log: a record, or the start of a block when `entry` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Position {
    /// The segment.
    pub segment: SegmentId,
    /// The block in the segment.
    pub block: u64,
    /// The record in the block.
    pub entry: u32,
}

impl Position {
    /// The position right after this one.
    pub(super) fn next(self) -> Position {
        if self.entry + 1 < MAX_ENTRIES {
            Position {
                entry: self.entry + 1,
                ..self
            }
        } else {
            Position {
                block: self.block.saturating_add(1),
                entry: 0,
                ..self
            }
        }
    }
}

/// The id of a record.
pub(super) fn pack(segment: SegmentId, block: u64, entry: u32) -> MessageId {
    MessageId::from_parts(
        segment.term << 16 | u64::from(segment.gen_),
        block << ENTRY_BITS | u64::from(entry),
    )
}

/// The position of an id (every 128-bit value is one).
pub(super) fn unpack(id: MessageId) -> Position {
    let segment = SegmentId {
        term: id.hi() >> 16,
        gen_: (id.hi() & 0xffff) as u16,
    };
    Position {
        segment,
        block: id.lo() >> ENTRY_BITS,
        entry: (id.lo() & u64::from(MAX_ENTRIES - 1)) as u32,
    }
}

/// Object names of one pchannel.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    channel: Path,
}

impl Layout {
    /// Names under `prefix` (may be empty) for `pchannel`.
    pub(super) fn new(prefix: &Path, pchannel: &PChannel) -> Layout {
        Layout {
            channel: prefix.clone().join(pchannel.as_str()),
        }
    }

    /// The pchannel's directory (segments are its children).
    pub(super) fn channel(&self) -> &Path {
        &self.channel
    }

    /// A segment's directory.
    pub(super) fn segment(&self, s: SegmentId) -> Path {
        self.channel.clone().join(s.dir_name())
    }

    /// The claim object of a segment.
    pub(super) fn owner(&self, s: SegmentId) -> Path {
        self.segment(s).join("owner")
    }

    /// The sealed hint of a segment.
    pub(super) fn sealed(&self, s: SegmentId) -> Path {
        self.segment(s).join("sealed")
    }

    /// The directory of a segment's blocks.
    pub(super) fn blocks(&self, s: SegmentId) -> Path {
        self.segment(s).join("b")
    }

    /// One block.
    pub(super) fn block(&self, s: SegmentId, index: u64) -> Path {
        self.blocks(s).join(format!("{index:013}"))
    }

    /// The directory of a segment's truncation marks.
    pub(super) fn truncs(&self, s: SegmentId) -> Path {
        self.segment(s).join("t")
    }

    /// One truncation mark.
    pub(super) fn trunc(&self, s: SegmentId, index: u64) -> Path {
        self.truncs(s).join(format!("{index:013}"))
    }
}

/// The index in a block or truncation-mark name; `None` for anything else.
pub(super) fn parse_index(name: &str) -> Option<u64> {
    if name.len() != 13 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|i| *i < BLOCK_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ids_round_trip_and_order_like_positions(
            a in (0..TERM_LIMIT, any::<u16>(), 0..BLOCK_LIMIT, 0..MAX_ENTRIES),
            b in (0..TERM_LIMIT, any::<u16>(), 0..BLOCK_LIMIT, 0..MAX_ENTRIES),
        ) {
            let pa = Position { segment: SegmentId::new(a.0, a.1).unwrap(), block: a.2, entry: a.3 };
            let pb = Position { segment: SegmentId::new(b.0, b.1).unwrap(), block: b.2, entry: b.3 };
            let (ia, ib) = (pack(pa.segment, pa.block, pa.entry), pack(pb.segment, pb.block, pb.entry));
            prop_assert_eq!(unpack(ia), pa);
            prop_assert_eq!(ia.cmp(&ib), pa.cmp(&pb));
        }
    }

    #[test]
    fn names_sort_numerically_and_parse_back() {
        let s = SegmentId::new(12, 3).unwrap();
        assert_eq!(SegmentId::parse(&s.dir_name()), Some(s));
        assert!(
            SegmentId::new(9, 0).unwrap().dir_name() < SegmentId::new(10, 0).unwrap().dir_name()
        );
        assert_eq!(SegmentId::parse("12-3"), None);
        assert_eq!(SegmentId::parse("00000000000001x-00000"), None);
        assert_eq!(parse_index("0000000000042"), Some(42));
        assert_eq!(parse_index("42"), None);
        assert_eq!(SegmentId::new(TERM_LIMIT, 0), None);
    }
}
