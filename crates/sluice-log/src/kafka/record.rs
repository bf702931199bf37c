//! The value of every Kafka record the backend writes.
//!
//! ```text
//!  0..4  magic "SLKF"
//!  4     version (1)
//!  5     kind: 1 = data, 2 = term fence
//!  6..14 the writer's term (u64 LE)
//!  14..22 the writer's nonce (u64 LE): random per read-write open, tells same-term opens apart
//!  22..  data: one codec frame (sluice_types::codec, with its own checksum); fence: nothing
//! ```
//!
//! Every record carries its writer's [`Owner`], so the newest record of a topic tells who wrote
//! last (see the fencing rules in the module above). Anything else in the topic is foreign:
//! decoding it is [`LogError::Corrupted`], never a panic.

use sluice_types::codec::{decode_message, encode_message};
use sluice_types::message::Message;

use crate::LogError;

const MAGIC: [u8; 4] = *b"SLKF";
const VERSION: u8 = 1;
const KIND_DATA: u8 = 1;
const KIND_FENCE: u8 = 2;
/// Bytes before a data record's codec frame.
pub(super) const HEADER_LEN: usize = 22;

/// Who wrote a record: a read-write open's term and nonce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Owner {
    /// The term.
    pub term: u64,
    /// Random per read-write open.
    pub nonce: u64,
}

/// A decoded record value.
#[derive(Debug)]
pub(super) enum Record {
    /// A message written at `term`.
    Data {
        /// The writer.
        owner: Owner,
        /// The message.
        message: Message,
    },
    /// The term fence a read-write open wrote.
    Fence {
        /// The opener.
        owner: Owner,
    },
}

impl Record {
    /// The writer of this record.
    pub(super) fn owner(&self) -> Owner {
        match self {
            Record::Data { owner, .. } | Record::Fence { owner } => *owner,
        }
    }
}

fn header(kind: u8, owner: Owner, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&owner.term.to_le_bytes());
    out.extend_from_slice(&owner.nonce.to_le_bytes());
}

/// Encodes a data record.
pub(super) fn encode_data(owner: Owner, message: &Message) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::with_capacity(HEADER_LEN + sluice_types::codec::encoded_len(message));
    header(KIND_DATA, owner, &mut out);
    encode_message(message, &mut out)?;
    Ok(out)
}

/// Encodes a term fence.
pub(super) fn encode_fence(owner: Owner) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    header(KIND_FENCE, owner, &mut out);
    out
}

/// Decodes a record value; `location` names it in errors.
pub(super) fn decode(
    location: impl Fn() -> String,
    value: Option<&[u8]>,
) -> Result<Record, LogError> {
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
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let owner = Owner {
        term: u64_at(6),
        nonce: u64_at(14),
    };
    match head[5] {
        KIND_DATA => {
            let (message, len) = decode_message(body)?;
            if len != body.len() {
                return Err(corrupted("bytes after the message"));
            }
            Ok(Record::Data { owner, message })
        }
        KIND_FENCE if body.is_empty() => Ok(Record::Fence { owner }),
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
        let owner = Owner { term: 7, nonce: 11 };
        let data = encode_data(owner, &msg()).expect("encode");
        match decode(|| "x".into(), Some(&data)).expect("decode") {
            Record::Data { owner: o, message } => {
                assert_eq!(o, owner);
                assert_eq!(message.payload(), &b"hello"[..]);
            }
            other => panic!("decoded {other:?}"),
        }
        let owner = Owner { term: 9, nonce: 3 };
        let fence = encode_fence(owner);
        assert!(matches!(
            decode(|| "f".into(), Some(&fence)),
            Ok(Record::Fence { owner: o }) if o == owner
        ));
    }

    #[test]
    fn foreign_values_are_corrupted() {
        for v in [
            &b""[..],
            b"hello",
            b"SLKF\x01\x03aaaaaaaabbbbbbbb",
            b"SLKF\x02\x01aaaaaaaabbbbbbbb",
            b"SLKF\x01\x02aaaaaaaabbbbbbbbc",
            b"SLKF\x01\x01aaaaaaaabbbbbbbb",
        ] {
            assert!(matches!(
                decode(|| "x".into(), Some(v)),
                Err(LogError::Corrupted { .. } | LogError::Codec(_))
            ));
        }
        assert!(decode(|| "x".into(), None).is_err());
        let mut data = encode_data(Owner::default(), &msg()).expect("encode");
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
            let good = encode_data(Owner { term: 3, nonce: 1 }, &msg()).expect("encode");
            let mut bad = good.clone();
            let at = at.min(bad.len() - 1);
            bad[at] ^= 1 << bit;
            prop_assert!(decode(|| "x".into(), Some(&bad)).is_err());
        }
    }
}
