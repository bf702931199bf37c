//! The format of one block object (data or fence).
//!
//! ```text
//!  offset  size  field (integers little-endian)
//!  0       4     magic "SLOB"
//!  4       1     version 1
//!  5       1     kind: 1 = data, 2 = fence
//!  6       2     gen of the segment named below
//!  8       8     term of the segment named below
//!  16      8     block index (the object's own index in its segment)
//!  24      8     writer nonce (random per writing handle; 0 in fences)
//!  32      4     record count
//!  36      4     body length in bytes
//!  40      4     CRC32C of the body
//!  44      4     CRC32C of bytes 0..44
//!  48      len   body: `count` records, each one codec frame (length + CRC, see
//!                `sluice_types::codec`)
//! ```
//!
//! A data block names its own segment; a fence names the segment of the writer that sealed the
//! segment (so a fenced writer can report the term that fenced it) and has no body. Decoding never
//! panics: anything short, foreign or damaged is [`LogError::Corrupted`] or [`LogError::Codec`].

use bytes::Bytes;
use sluice_types::Message;
use sluice_types::codec::{decode_message, encode_message};

use super::layout::SegmentId;
use crate::LogError;

/// Block magic, "SLOB".
pub(super) const BLOCK_MAGIC: [u8; 4] = *b"SLOB";
/// Block format version written by this build.
pub(super) const BLOCK_VERSION: u8 = 1;
/// Bytes of the header before the body.
pub(super) const BLOCK_HEADER_LEN: usize = 48;

const KIND_DATA: u8 = 1;
const KIND_FENCE: u8 = 2;

/// What a block object holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum BlockKind {
    /// Records written by the writer with this nonce.
    Data {
        /// The writing handle's nonce.
        nonce: u64,
    },
    /// The segment ends here; sealed by a writer of segment `by`.
    Fence {
        /// The sealing writer's segment.
        by: SegmentId,
    },
}

/// A decoded block: header checked, body checksum verified, records not yet decoded.
#[derive(Clone, Debug)]
pub(super) struct Block {
    /// Data or fence.
    pub kind: BlockKind,
    /// The segment named in the header.
    pub segment: SegmentId,
    /// The block's index.
    pub index: u64,
    /// Records in the body.
    pub count: u32,
    body: Bytes,
}

impl Block {
    /// Decodes and checks `data`, read from `location`.
    pub(super) fn decode(location: &str, data: Bytes) -> Result<Block, LogError> {
        let bad = |reason: &str| LogError::Corrupted {
            location: location.to_owned(),
            reason: reason.to_owned(),
        };
        let h = data
            .get(..BLOCK_HEADER_LEN)
            .ok_or_else(|| bad("shorter than a block header"))?;
        if h[0..4] != BLOCK_MAGIC {
            return Err(bad("not a block (bad magic)"));
        }
        if h[4] != BLOCK_VERSION {
            return Err(bad(&format!("unsupported block version {}", h[4])));
        }
        let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        if crc32c::crc32c(&h[..44]) != u32_at(44) {
            return Err(bad("header checksum mismatch"));
        }
        let segment = SegmentId::new(u64_at(8), u16_at(6))
            .ok_or_else(|| bad("term out of range in header"))?;
        let index = u64_at(16);
        let nonce = u64_at(24);
        let count = u32_at(32);
        let body_len = u32_at(36) as usize;
        let body = data.slice(BLOCK_HEADER_LEN..);
        if body.len() != body_len {
            return Err(bad(&format!(
                "body is {} bytes, header says {body_len} (torn object?)",
                body.len()
            )));
        }
        if crc32c::crc32c(&body) != u32_at(40) {
            return Err(bad("body checksum mismatch"));
        }
        let kind = match h[5] {
            KIND_DATA => BlockKind::Data { nonce },
            KIND_FENCE if count == 0 && body_len == 0 => BlockKind::Fence { by: segment },
            KIND_FENCE => return Err(bad("fence with a body")),
            k => return Err(bad(&format!("unknown block kind {k}"))),
        };
        Ok(Block {
            kind,
            segment,
            index,
            count,
            body,
        })
    }

    /// Decodes the records, in order, checking there are exactly `count` of them.
    pub(super) fn records(&self, location: &str) -> BlockRecords<'_> {
        BlockRecords {
            location: location.to_owned(),
            body: &self.body,
            left: self.count,
        }
    }
}

/// The records of one block, decoded one at a time.
pub(super) struct BlockRecords<'a> {
    location: String,
    body: &'a [u8],
    left: u32,
}

impl Iterator for BlockRecords<'_> {
    type Item = Result<Message, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            if self.body.is_empty() {
                return None;
            }
            self.body = &[];
            return Some(Err(LogError::Corrupted {
                location: self.location.clone(),
                reason: "bytes after the last record".into(),
            }));
        }
        self.left -= 1;
        match decode_message(self.body) {
            Ok((msg, len)) => {
                self.body = &self.body[len..];
                Some(Ok(msg))
            }
            Err(e) => {
                self.left = 0;
                self.body = &[];
                Some(Err(e.into()))
            }
        }
    }
}

/// Appends one record frame for `msg` to a block body under construction.
pub(super) fn encode_record(msg: &Message, body: &mut Vec<u8>) -> Result<(), LogError> {
    encode_message(msg, body).map_err(LogError::from)
}

fn header(
    kind: u8,
    segment: SegmentId,
    index: u64,
    nonce: u64,
    count: u32,
    body: &[u8],
) -> [u8; BLOCK_HEADER_LEN] {
    let mut h = [0u8; BLOCK_HEADER_LEN];
    h[0..4].copy_from_slice(&BLOCK_MAGIC);
    h[4] = BLOCK_VERSION;
    h[5] = kind;
    h[6..8].copy_from_slice(&segment.generation().to_le_bytes());
    h[8..16].copy_from_slice(&segment.term().to_le_bytes());
    h[16..24].copy_from_slice(&index.to_le_bytes());
    h[24..32].copy_from_slice(&nonce.to_le_bytes());
    h[32..36].copy_from_slice(&count.to_le_bytes());
    h[36..40].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[40..44].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&h[..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A data block: header + `body` (which holds `count` record frames).
pub(super) fn encode_data(
    segment: SegmentId,
    index: u64,
    nonce: u64,
    count: u32,
    body: &[u8],
) -> Bytes {
    let mut out = Vec::with_capacity(BLOCK_HEADER_LEN + body.len());
    out.extend_from_slice(&header(KIND_DATA, segment, index, nonce, count, body));
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A fence at `index`, written by a writer of segment `by`.
pub(super) fn encode_fence(by: SegmentId, index: u64) -> Bytes {
    Bytes::copy_from_slice(&header(KIND_FENCE, by, index, 0, 0, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_types::MutableMessage;
    use sluice_types::message::InsertHeader;

    fn msg(i: usize) -> Message {
        MutableMessage::builder(InsertHeader::default())
            .property("i", i.to_string())
            .payload(vec![i as u8; i % 50])
            .build()
            .expect("message")
            .into_message()
    }

    fn data_block(n: usize) -> Bytes {
        let mut body = Vec::new();
        for i in 0..n {
            encode_record(&msg(i), &mut body).expect("encode");
        }
        encode_data(SegmentId::new(3, 1).unwrap(), 7, 42, n as u32, &body)
    }

    #[test]
    fn data_and_fence_round_trip() {
        let b = Block::decode("x", data_block(5)).expect("decode");
        assert_eq!(b.kind, BlockKind::Data { nonce: 42 });
        assert_eq!(
            (b.segment, b.index, b.count),
            (SegmentId::new(3, 1).unwrap(), 7, 5)
        );
        let records: Vec<Message> = b.records("x").map(|r| r.expect("record")).collect();
        assert_eq!(records, (0..5).map(msg).collect::<Vec<_>>());

        let by = SegmentId::new(9, 0).unwrap();
        let f = Block::decode("f", encode_fence(by, 11)).expect("decode fence");
        assert_eq!(f.kind, BlockKind::Fence { by });
        assert_eq!((f.index, f.count), (11, 0));
    }

    #[test]
    fn a_count_that_disagrees_with_the_body_is_an_error() {
        let mut body = Vec::new();
        encode_record(&msg(1), &mut body).unwrap();
        let seg = SegmentId::new(1, 0).unwrap();
        let too_many = Block::decode("x", encode_data(seg, 0, 1, 2, &body)).unwrap();
        let r: Vec<_> = too_many.records("x").collect();
        assert!(r[0].is_ok() && r[1].is_err() && r.len() == 2, "{r:?}");
        let too_few = Block::decode("x", encode_data(seg, 0, 1, 0, &body)).unwrap();
        let r: Vec<_> = too_few.records("x").collect();
        assert!(r.len() == 1 && r[0].is_err(), "{r:?}");
    }

    proptest! {
        /// Any truncation or single-byte flip of a block is an error, never a panic or a
        /// silently different block.
        #[test]
        fn damaged_blocks_are_errors(n in 1usize..6, cut in 0usize..400, flip in 0usize..400) {
            let good = data_block(n);
            let cut = cut % good.len();
            prop_assert!(Block::decode("x", good.slice(..cut)).is_err());
            let mut bad = good.to_vec();
            let at = flip % bad.len();
            bad[at] ^= 0x5a;
            if let Ok(b) = Block::decode("x", Bytes::from(bad)) {
                let all: Result<Vec<_>, _> = b.records("x").collect();
                prop_assert!(all.is_err());
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_do_not_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(b) = Block::decode("x", Bytes::from(data)) {
                let _ = b.records("x").count();
            }
        }
    }
}
