//! The value of every Kafka record the backend writes.
//!
//! ```text
//!  0..4  magic "SLKF"
//!  4     version (1)
//!  5     kind: 1 = data, 2 = term fence
//!  6..14 the writer's term (u64 LE)
//!  14..  data: one codec frame (sluice_types::codec, with its own checksum); fence: nothing
//! ```
//!
//! Every record carries its writer's term, so the newest record of a topic tells the highest
//! term that wrote it (see the fencing rules in the module above). Anything else in the topic is
//! foreign: decoding it is [`LogError::Corrupted`], never a panic.

use sluice_types::codec::{decode_message, encode_message};
use sluice_types::message::Message;

use crate::LogError;

const MAGIC: [u8; 4] = *b"SLKF";
const VERSION: u8 = 1;
const KIND_DATA: u8 = 1;
const KIND_FENCE: u8 = 2;
/// Bytes before a data record's codec frame.
pub const HEADER_LEN: usize = 14;

/// A decoded record value.
#[derive(Debug)]
pub enum Record {
    /// A message written at `term`.
    Data {
        /// The writer's term.
        term: u64,
        /// The message.
        message: Message,
    },
    /// The term fence a read-write open at `term` wrote.
    Fence {
        /// The opener's term.
        term: u64,
    },
}

impl Record {
    /// The term of the writer of this record.
    pub fn term(&self) -> u64 {
        match self {
            Record::Data { term, .. } | Record::Fence { term } => *term,
        }
    }
}

fn header(kind: u8, term: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&term.to_le_bytes());
}

/// Encodes a data record.
pub fn encode_data(term: u64, message: &Message) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::with_capacity(HEADER_LEN + sluice_types::codec::encoded_len(message));
    header(KIND_DATA, term, &mut out);
    encode_message(message, &mut out)?;
    Ok(out)
}

/// Encodes a term fence.
pub fn encode_fence(term: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    header(KIND_FENCE, term, &mut out);
    out
}

/// Decodes a record value; `location` names it in errors.
pub fn decode(location: impl Fn() -> String, value: Option<&[u8]>) -> Result<Record, LogError> {
    let corrupted = |reason: &str| LogError::Corrupted {
        location: location(),
        reason: reason.into(),
    };
    let value = value.ok_or_else(|| corrupted("record without a value (not written by Sluice)"))?;
    let Some((head, body)) = value.split_first_chunk::<HEADER_LEN>() else {
        return Err(corrupted(
            "record shorter than its header (not written by Sluice)",
        ));
    };
    if head[0..4] != MAGIC {
        return Err(corrupted("bad magic (not written by Sluice)"));
    }
    if head[4] != VERSION {
        return Err(corrupted("unknown record version"));
    }
    let mut term = [0u8; 8];
    term.copy_from_slice(&head[6..14]);
    let term = u64::from_le_bytes(term);
    match head[5] {
        KIND_DATA => {
            let (message, len) = decode_message(body)?;
            if len != body.len() {
                return Err(corrupted("bytes after the message"));
            }
            Ok(Record::Data { term, message })
        }
        KIND_FENCE if body.is_empty() => Ok(Record::Fence { term }),
        KIND_FENCE => Err(corrupted("bytes after a term fence")),
        _ => Err(corrupted("unknown record kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_types::MutableMessage;
    use sluice_types::message::InsertHeader;

    fn msg() -> Message {
        MutableMessage::builder(InsertHeader::default())
            .property("k", "v")
            .payload(&b"hello"[..])
            .build()
            .expect("message")
            .into_message()
    }

    #[test]
    fn data_and_fence_round_trip() {
        let data = encode_data(7, &msg()).expect("encode");
        match decode(|| "x".into(), Some(&data)).expect("decode") {
            Record::Data { term, message } => {
                assert_eq!(term, 7);
                assert_eq!(message.payload(), &b"hello"[..]);
            }
            other => panic!("decoded {other:?}"),
        }
        let fence = encode_fence(9);
        assert!(matches!(
            decode(|| "f".into(), Some(&fence)),
            Ok(Record::Fence { term: 9 })
        ));
    }

    #[test]
    fn foreign_values_are_corrupted() {
        for v in [
            &b""[..],
            b"hello",
            b"SLKF\x01\x03aaaaaaaa",
            b"SLKF\x02\x01aaaaaaaa",
        ] {
            assert!(matches!(
                decode(|| "x".into(), Some(v)),
                Err(LogError::Corrupted { .. })
            ));
        }
        assert!(decode(|| "x".into(), None).is_err());
        let mut data = encode_data(1, &msg()).expect("encode");
        data.push(0);
        assert!(decode(|| "x".into(), Some(&data)).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(|| "x".into(), Some(&data));
        }

        /// A damaged data record is an error, never a different message.
        #[test]
        fn flipped_bits_are_detected(at in HEADER_LEN..40usize, bit in 0..8u8) {
            let good = encode_data(3, &msg()).expect("encode");
            let mut bad = good.clone();
            let at = at.min(bad.len() - 1);
            bad[at] ^= 1 << bit;
            prop_assert!(decode(|| "x".into(), Some(&bad)).is_err());
        }
    }
}
