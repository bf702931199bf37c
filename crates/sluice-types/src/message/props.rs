//! The string-map part of a message, and packing messages that are kept for a while.
//!
//! A message being built or stamped keeps its map as a shared `BTreeMap` (copy on write). A
//! message that will sit in memory for a long time (the write-ahead buffer keeps tens of
//! thousands) is better packed: its payload and map entries are copied next to each other into
//! a large shared chunk, and the per-message allocations are freed at once, while they are
//! still in cache. Otherwise every message keeps a dozen small allocations alive for as long as
//! it is buffered, and new messages get built in memory that went cold meanwhile, which made
//! building a message several times slower than the same work next to the raw log.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Message, Properties};

/// The map entries of a message.
#[derive(Clone)]
pub(super) enum Props {
    /// A map that setters may change (copy on write).
    Map(Arc<Properties>),
    /// Packed, read-only entries: `count u32 LE`, then `count` times `key_len u32 LE, key,
    /// value_len u32 LE, value`, keys in ascending order, every key and value valid UTF-8 (they
    /// were `String`s).
    Packed(Bytes),
}

impl Default for Props {
    fn default() -> Self {
        Props::Map(Arc::new(Properties::new()))
    }
}

/// The entry count a packed map starts with.
fn packed_count(bytes: &[u8]) -> usize {
    bytes
        .first_chunk::<4>()
        .map_or(0, |c| u32::from_le_bytes(*c) as usize)
}

/// Entries of a packed map, in key order.
struct PackedIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> PackedIter<'a> {
    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (field, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        // Packed from `String`s, so this never fails; a failure ends the iteration.
        std::str::from_utf8(field).ok()
    }
}

impl<'a> Iterator for PackedIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let k = self.field()?;
        let v = self.field()?;
        Some((k, v))
    }
}

impl Props {
    /// Every entry, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let (map, packed) = match self {
            Props::Map(m) => (Some(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))), None),
            Props::Packed(bytes) => (
                None,
                Some(PackedIter {
                    rest: bytes.get(4..).unwrap_or_default(),
                    left: packed_count(bytes),
                }),
            ),
        };
        map.into_iter()
            .flatten()
            .chain(packed.into_iter().flatten())
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        match self {
            Props::Map(m) => m.get(key).map(String::as_str),
            Props::Packed(_) => self.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
        }
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Props::Map(m) => m.len(),
            Props::Packed(bytes) => packed_count(bytes),
        }
    }

    /// The entries as a map (borrowed when they are one).
    pub(super) fn as_map(&self) -> std::borrow::Cow<'_, Properties> {
        match self {
            Props::Map(m) => std::borrow::Cow::Borrowed(m),
            Props::Packed(_) => std::borrow::Cow::Owned(
                self.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
        }
    }

    /// The map, for a setter: a packed one is unpacked first, a shared one copied.
    pub(super) fn make_mut(&mut self) -> &mut Properties {
        if let Props::Packed(_) = self {
            *self = Props::Map(Arc::new(self.as_map().into_owned()));
        }
        match self {
            Props::Map(m) => Arc::make_mut(m),
            Props::Packed(_) => unreachable!("unpacked above"),
        }
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// Packs messages into shared chunks (see the module docs). A chunk is freed when the last
/// message packed into it is dropped, or, with [`Packer::with_reuse`], packed into again.
#[derive(Debug)]
pub struct Packer {
    chunk: BytesMut,
    chunk_size: usize,
    /// Whether `chunk` is a standard-size chunk, so worth reusing.
    reusable: bool,
    /// Filled chunks, oldest first, kept to be reused once every message in them is dropped.
    retired: VecDeque<BytesMut>,
    /// How many filled chunks are tracked (0: none are reused).
    max_retired: usize,
    /// Chunks allocated so far.
    allocated: u64,
}

/// Free chunks a reusing [`Packer`] keeps beyond the one it takes.
const MAX_FREE: usize = 16;

impl Packer {
    /// A packer that allocates chunks of `chunk_size` bytes (a message larger than that gets a
    /// chunk of its own).
    pub fn new(chunk_size: usize) -> Packer {
        Packer::with_reuse(chunk_size, 0)
    }

    /// Like [`Packer::new`], and a new chunk is the oldest of the last `max_retired` filled
    /// ones when no message packed into it is alive any more. For a holder that frees messages
    /// oldest first (a FIFO buffer of up to `max_retired` chunks), this recycles memory that is
    /// already mapped instead of having the allocator fault fresh pages in. At most
    /// [`MAX_FREE`] + 1 free chunks are kept.
    pub fn with_reuse(chunk_size: usize, max_retired: usize) -> Packer {
        Packer {
            chunk: BytesMut::new(),
            chunk_size,
            reusable: false,
            retired: VecDeque::new(),
            max_retired,
            allocated: 0,
        }
    }

    /// Chunks allocated so far (reused ones are not counted again).
    pub fn chunks_allocated(&self) -> u64 {
        self.allocated
    }

    /// Makes the current chunk one with room for `total` bytes.
    fn next_chunk(&mut self, total: usize) {
        let filled = std::mem::take(&mut self.chunk);
        if self.reusable && self.max_retired > 0 {
            self.retired.push_back(filled);
        }
        if total > self.chunk_size {
            self.chunk = BytesMut::with_capacity(total);
            self.allocated += 1;
            self.reusable = false;
            return;
        }
        self.reusable = true;
        let size = self.chunk_size;
        // Free chunks sit at the front (the holder drops oldest first): take the oldest, keep
        // at most MAX_FREE more.
        let mut free = 0;
        while free < self.retired.len() && self.retired[free].try_reclaim(size) {
            free += 1;
        }
        self.retired.drain(..free.saturating_sub(MAX_FREE + 1));
        let reused = if free > 0 {
            self.retired.pop_front()
        } else {
            None
        };
        self.chunk = reused.unwrap_or_else(|| {
            self.allocated += 1;
            BytesMut::with_capacity(size)
        });
        while self.retired.len() > self.max_retired {
            self.retired.pop_front();
        }
    }

    /// Moves `msg`'s payload and map entries into the current chunk. The message reads exactly
    /// as before; only setters (which unpack it again) get slower.
    pub fn pack(&mut self, msg: &mut Message) {
        let map = match &msg.properties {
            Props::Map(m) => m,
            Props::Packed(_) => return,
        };
        let entries: usize = 4 + map
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
        let total = msg.payload.len() + entries;
        if self.chunk.capacity() - self.chunk.len() < total {
            self.next_chunk(total);
        }
        self.chunk.extend_from_slice(&msg.payload);
        self.chunk
            .extend_from_slice(&(map.len() as u32).to_le_bytes());
        for (k, v) in map.iter() {
            self.chunk
                .extend_from_slice(&(k.len() as u32).to_le_bytes());
            self.chunk.extend_from_slice(k.as_bytes());
            self.chunk
                .extend_from_slice(&(v.len() as u32).to_le_bytes());
            self.chunk.extend_from_slice(v.as_bytes());
        }
        let mut packed = self.chunk.split().freeze();
        let entries = packed.split_off(msg.payload.len());
        msg.payload = packed;
        msg.properties = Props::Packed(entries);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::Packer;
    use crate::message::InsertHeader;
    use crate::{ImmutableMessage, MessageId, MutableMessage};

    fn msg(i: u64, len: usize) -> ImmutableMessage {
        MutableMessage::builder(InsertHeader::default())
            .payload(vec![i as u8; len])
            .property("n", i.to_string())
            .build()
            .unwrap()
            .into_immutable(MessageId::from_parts(0, i))
    }

    /// Packs `count` messages, keeping the newest `window` (plus, with `pin`, the very first)
    /// alive like a FIFO buffer; checks every live message still reads like its original.
    fn run_fifo(packer: &mut Packer, count: u64, window: usize, pin: bool) {
        let mut live: VecDeque<(ImmutableMessage, ImmutableMessage)> = VecDeque::new();
        let mut pinned = None;
        for i in 0..count {
            let original = msg(i, 700 + (i as usize * 37) % 600);
            let mut packed = original.clone();
            packed.pack(packer);
            if pin && i == 0 {
                pinned = Some((original.clone(), packed.clone()));
            }
            live.push_back((original, packed));
            if live.len() > window {
                live.pop_front();
            }
            if i % 50 == 0 || i + 1 == count {
                for (o, p) in live.iter().chain(pinned.iter()) {
                    assert_eq!(o, p);
                    assert_eq!(o.property("n"), p.property("n"));
                }
            }
        }
    }

    #[test]
    fn a_reusing_packer_recycles_chunks_no_live_message_is_in() {
        // ~3 messages per chunk, 40 alive: ~14 chunks busy at any time.
        let mut packer = Packer::with_reuse(4096, 32);
        run_fifo(&mut packer, 3000, 40, false);
        assert!(
            packer.chunks_allocated() <= 32,
            "{} chunks allocated for 3000 messages",
            packer.chunks_allocated()
        );
        // Without reuse every chunk is new.
        let mut plain = Packer::new(4096);
        run_fifo(&mut plain, 3000, 40, false);
        assert!(
            plain.chunks_allocated() >= 700,
            "{}",
            plain.chunks_allocated()
        );
    }

    #[test]
    fn a_pinned_chunk_is_never_reused_and_stops_nothing() {
        let mut packer = Packer::with_reuse(4096, 32);
        run_fifo(&mut packer, 3000, 40, true);
        assert!(
            packer.chunks_allocated() <= 64,
            "{}",
            packer.chunks_allocated()
        );
    }

    #[test]
    fn oversized_messages_get_their_own_chunk_and_are_not_retired() {
        let mut packer = Packer::with_reuse(1024, 8);
        run_fifo(&mut packer, 200, 4, false);
        let mut big = msg(7, 5000);
        let original = big.clone();
        big.pack(&mut packer);
        assert_eq!(big, original);
        assert!(packer.retired.len() <= 8);
    }
}
