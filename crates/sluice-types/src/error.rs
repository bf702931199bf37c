//! Errors for values that come from outside: names, ids, properties and encoded records.

/// A name, id or property that does not parse or validate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A pchannel name that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid pchannel name {0:?}: want 1-{max} characters of [A-Za-z0-9._-]", max = crate::channel::MAX_CHANNEL_NAME_LEN)]
    PChannel(String),
    /// A vchannel name that is not `{pchannel}_{collection}v{shard}`.
    #[error("invalid vchannel name {0:?}: want {{pchannel}}_{{collection}}v{{shard}}")]
    VChannel(String),
    /// A message id that is not 32 lower-case hex digits.
    #[error("invalid message id {0:?}: want 32 lower-case hex digits")]
    MessageId(String),
    /// An unknown message type number.
    #[error("unknown message type {0}")]
    MessageType(u32),
    /// A user property whose key is reserved (starts with `_`) or empty.
    #[error("property key {0:?} is reserved or empty: user keys must not start with '_'")]
    ReservedProperty(String),
    /// A reserved property that is present but malformed.
    #[error("property {key} has a malformed value {value:?}: {reason}")]
    Property {
        /// The property key.
        key: &'static str,
        /// The value found (cut to 64 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A property the operation needs is missing.
    #[error("message has no {0} property")]
    MissingProperty(&'static str),
    /// A header that does not decode or breaks a rule of its type.
    #[error("invalid {ty:?} header: {reason}")]
    Header {
        /// The message's type.
        ty: crate::message::MessageType,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header does not belong to the message's type.
    #[error("header of type {expected:?} asked of a {actual:?} message")]
    HeaderType {
        /// The header type asked for.
        expected: crate::message::MessageType,
        /// The message's type.
        actual: crate::message::MessageType,
    },
}

/// Why an encoded record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the frame says it has.
    #[error("truncated record: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The bytes do not start with the record magic.
    #[error("bad record magic {0:#06x}")]
    BadMagic(u16),
    /// A format version this build does not read.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    /// The body's CRC32C does not match the frame's.
    #[error("record checksum mismatch: frame says {expected:#010x}, body has {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum stored in the frame.
        expected: u32,
        /// The checksum of the body as read.
        actual: u32,
    },
    /// A record or field larger than the format allows.
    #[error("record too large: {size} bytes (limit {limit})")]
    TooLarge {
        /// The size found.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The checksum matched but the body does not parse.
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
}
