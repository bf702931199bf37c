//! The on-log record codec.
//!
//! Every record a backend stores is one frame:
//!
//! ```text
//!  offset  size  field
//!  0       2     magic   0x534C ("SL"), little-endian
//!  2       1     version 1
//!  3       1     flags   0 (reserved; a reader rejects unknown bits)
//!  4       4     body length in bytes, little-endian u32 (≤ MAX_BODY_LEN)
//!  8       4     CRC32C of the body, little-endian u32
//!  12      len   body
//! ```
//!
//! Body of a version-1 message record (all integers little-endian u32):
//!
//! ```text
//!  payload_len, payload bytes,
//!  property_count, then per property: key_len, key (UTF-8), value_len, value (UTF-8)
//! ```
//!
//! Decoding never panics: short input, a wrong magic, an unknown version or flag, a bad checksum
//! or a body that does not parse each give a typed [`CodecError`].

use bytes::Bytes;

use crate::error::CodecError;
use crate::message::{Message, Properties};

/// Frame magic, "SL".
pub const MAGIC: u16 = 0x534C;
/// Frame format version written by this build.
pub const VERSION: u8 = 1;
/// Bytes of the frame before the body.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest body a frame may carry (64 MiB).
pub const MAX_BODY_LEN: usize = 64 << 20;

/// What the fixed frame header says, before the body is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length.
    pub body_len: usize,
    /// CRC32C the body must have.
    pub crc: u32,
}

impl FrameHeader {
    /// Frame length including the header.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len
    }
}

/// Parses the fixed header at the start of `buf`.
pub fn decode_frame_header(buf: &[u8]) -> Result<FrameHeader, CodecError> {
    let Some(h) = buf.get(..FRAME_HEADER_LEN) else {
        return Err(CodecError::Truncated {
            needed: FRAME_HEADER_LEN,
            available: buf.len(),
        });
    };
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    if h[2] != VERSION {
        return Err(CodecError::UnsupportedVersion(h[2]));
    }
    if h[3] != 0 {
        return Err(CodecError::Malformed("unknown frame flags"));
    }
    let body_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if body_len > MAX_BODY_LEN {
        return Err(CodecError::TooLarge {
            size: body_len,
            limit: MAX_BODY_LEN,
        });
    }
    let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    Ok(FrameHeader { body_len, crc })
}

/// Checks the frame at the start of `buf` and returns its body and the frame length.
pub fn decode_frame(buf: &[u8]) -> Result<(&[u8], usize), CodecError> {
    let header = decode_frame_header(buf)?;
    let frame_len = header.frame_len();
    let Some(body) = buf.get(FRAME_HEADER_LEN..frame_len) else {
        return Err(CodecError::Truncated {
            needed: frame_len,
            available: buf.len(),
        });
    };
    let actual = crc32c::crc32c(body);
    if actual != header.crc {
        return Err(CodecError::ChecksumMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok((body, frame_len))
}

/// Appends a frame holding `body` to `out`.
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    if body.len() > MAX_BODY_LEN {
        return Err(CodecError::TooLarge {
            size: body.len(),
            limit: MAX_BODY_LEN,
        });
    }
    out.reserve(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// The body length of `msg`.
pub fn message_body_len(msg: &Message) -> usize {
    8 + msg.payload().len() + 8 * msg.property_count() + msg.properties_len()
}

/// The frame length of `msg`.
pub fn encoded_len(msg: &Message) -> usize {
    FRAME_HEADER_LEN + message_body_len(msg)
}

/// Appends one framed message record to `out`. The frame is written in place (no intermediate
/// body buffer) and its checksum filled in afterwards.
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let body_len = message_body_len(msg);
    if body_len > MAX_BODY_LEN {
        return Err(CodecError::TooLarge {
            size: body_len,
            limit: MAX_BODY_LEN,
        });
    }
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    put(out, msg.payload());
    out.extend_from_slice(&(msg.property_count() as u32).to_le_bytes());
    msg.for_each_property(|k, v| {
        put(out, k.as_bytes());
        put(out, v.as_bytes());
    });
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, FRAME_HEADER_LEN + body_len);
    Ok(())
}

/// Encodes one framed message record into a new buffer.
pub fn encode_message_to_vec(msg: &Message) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(encoded_len(msg));
    encode_message(msg, &mut out)?;
    Ok(out)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, CodecError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(CodecError::Malformed("body ends inside a length"))?;
        self.buf = rest;
        Ok(u32::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u32()? as usize;
        if len > self.buf.len() {
            return Err(CodecError::Malformed("field longer than the body"));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Malformed("property is not UTF-8"))
    }
}

/// Decodes a message body (already checked by [`decode_frame`]). The payload is copied once into
/// the returned message.
pub fn decode_message_body(body: &[u8]) -> Result<Message, CodecError> {
    let mut r = Reader { buf: body };
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let count = r.u32()? as usize;
    // Each property needs at least 8 bytes, so a count beyond that is corrupt (and must not
    // drive an allocation).
    if count > r.buf.len() / 8 {
        return Err(CodecError::Malformed("property count larger than the body"));
    }
    let mut properties = Properties::new();
    for _ in 0..count {
        let k = r.string()?;
        let v = r.string()?;
        if properties.insert(k, v).is_some() {
            return Err(CodecError::Malformed("duplicate property key"));
        }
    }
    if !r.buf.is_empty() {
        return Err(CodecError::Malformed("trailing bytes after the properties"));
    }
    Message::from_parts(payload, properties)
        .map_err(|_| CodecError::Malformed("missing or unknown message type"))
}

/// Decodes the framed message at the start of `buf`; returns it and the frame length.
pub fn decode_message(buf: &[u8]) -> Result<(Message, usize), CodecError> {
    let (body, len) = decode_frame(buf)?;
    Ok((decode_message_body(body)?, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{InsertHeader, MutableMessage, keys};
    use proptest::prelude::*;

    fn sample() -> Message {
        MutableMessage::builder(InsertHeader {
            collection_id: 1,
            partitions: vec![],
        })
        .payload(&b"hello"[..])
        .property("a", "b")
        .build()
        .unwrap()
        .into_message()
    }

    #[test]
    fn round_trip_and_length() {
        let msg = sample();
        let buf = encode_message_to_vec(&msg).unwrap();
        assert_eq!(buf.len(), encoded_len(&msg));
        let (back, len) = decode_message(&buf).unwrap();
        assert_eq!(back, msg);
        assert_eq!(len, buf.len());
    }

    #[test]
    fn typed_errors_for_damaged_frames() {
        let buf = encode_message_to_vec(&sample()).unwrap();
        assert!(matches!(
            decode_message(&buf[..5]),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(
            decode_message(&buf[..buf.len() - 1]),
            Err(CodecError::Truncated { .. })
        ));
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert!(matches!(decode_message(&bad), Err(CodecError::BadMagic(_))));
        let mut bad = buf.clone();
        bad[2] = 9;
        assert_eq!(
            decode_message(&bad).unwrap_err(),
            CodecError::UnsupportedVersion(9)
        );
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(matches!(
            decode_message(&bad),
            Err(CodecError::ChecksumMismatch { .. })
        ));
        let mut bad = buf.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_message(&bad),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn body_without_type_is_malformed() {
        let mut out = Vec::new();
        let mut body = Vec::new();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        encode_frame(&body, &mut out).unwrap();
        assert!(matches!(
            decode_message(&out),
            Err(CodecError::Malformed(_))
        ));
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::btree_map("[a-z_]{1,8}", "\\PC{0,16}", 0..8),
            prop_oneof![Just(2u32), Just(1), Just(999)],
        )
            .prop_map(|(payload, mut props, ty)| {
                props.insert(keys::TYPE.to_owned(), ty.to_string());
                Message::from_parts(payload.into(), props).unwrap()
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(msgs in proptest::collection::vec(arb_message(), 1..5)) {
            let mut buf = Vec::new();
            for m in &msgs {
                encode_message(m, &mut buf).unwrap();
            }
            let mut at = 0;
            for m in &msgs {
                let (back, len) = decode_message(&buf[at..]).unwrap();
                prop_assert_eq!(&back, m);
                at += len;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_message(&bytes);
            let _ = decode_message_body(&bytes);
        }

        #[test]
        fn random_body_in_a_valid_frame_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = Vec::new();
            encode_frame(&body, &mut buf).unwrap();
            let _ = decode_message(&buf);
        }

        #[test]
        fn any_single_bit_flip_is_detected(m in arb_message(), pos: prop::sample::Index, bit in 0u8..8) {
            let mut buf = encode_message_to_vec(&m).unwrap();
            let i = pos.index(buf.len());
            buf[i] ^= 1 << bit;
            if let Ok((back, _)) = decode_message(&buf) {
                prop_assert!(false, "flip at {} decoded as {:?}", i, back);
            }
        }
    }
}
