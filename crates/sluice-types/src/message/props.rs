//! The string-map part of a message, and packing messages that are kept for a while.
//!
//! A message being built or stamped keeps its map as a shared `BTreeMap` (copy on write). A
//! message that will sit in memory for a long time (the write-ahead buffer keeps tens of
//! thousands) is better packed: its payload and map entries are copied next to each other into
//! a large shared chunk, and the per-message allocations are freed at once, while they are
//! still in cache. Otherwise every message keeps a dozen small allocations alive for as long as
//! it is buffered, and new messages get built in memory that went cold meanwhile, which made
//! building a message several times slower than the same work next to the raw log.

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
/// message packed into it is dropped.
#[derive(Debug)]
pub struct Packer {
    chunk: BytesMut,
    chunk_size: usize,
}

impl Packer {
    /// A packer that allocates chunks of `chunk_size` bytes (a message larger than that gets a
    /// chunk of its own).
    pub fn new(chunk_size: usize) -> Packer {
        Packer {
            chunk: BytesMut::new(),
            chunk_size,
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
            self.chunk = BytesMut::with_capacity(self.chunk_size.max(total));
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
