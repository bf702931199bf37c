//! The message types and the reserved property keys.

use super::*;

/// Reserved property keys. Every key starting with `_` is reserved.
pub mod keys {
    /// Message version (decimal).
    pub const VERSION: &str = "_v";
    /// Message type (decimal [`super::MessageType`] number).
    pub const TYPE: &str = "_t";
    /// Timestamp assigned by the WAL (base-36).
    pub const TIMESTAMP: &str = "_tt";
    /// Barrier timestamp: the append must get a timestamp ≥ this (base-36).
    pub const BARRIER_TIMESTAMP: &str = "_btt";
    /// The WAL term that wrote the message (base-36).
    pub const TERM: &str = "_wt";
    /// Last-confirmed message id (32 hex digits).
    pub const LAST_CONFIRMED: &str = "_lc";
    /// Flag: the last-confirmed id is the message's own id (value empty).
    pub const LAST_CONFIRMED_IS_SELF: &str = "_lcs";
    /// Vchannel (absent = every vchannel of the pchannel).
    pub const VCHANNEL: &str = "_vc";
    /// Broadcast header (base64 protobuf).
    pub const BROADCAST_HEADER: &str = "_bh";
    /// Typed header (base64 protobuf).
    pub const HEADER: &str = "_h";
    /// Transaction context (base64 protobuf).
    pub const TXN_CONTEXT: &str = "_tx";
    /// Flag: not persisted (only TimeTick may carry it; value empty).
    pub const NOT_PERSISTED: &str = "_np";
    /// Exactly-once appends: the producer that numbered the message (base-36, non-zero).
    pub const PRODUCER: &str = "_pid";
    /// Exactly-once appends: the message's sequence number in its producer (base-36).
    pub const PRODUCER_SEQUENCE: &str = "_psq";
}

/// The message format version this build writes.
pub const MESSAGE_VERSION: u32 = 2;

/// Every kind of message, with its stable wire number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum MessageType {
    /// Timestamp progress marker (system, self-controlled).
    TimeTick = 1,
    /// Rows for a collection (DML).
    Insert = 2,
    /// Primary keys to delete (DML).
    Delete = 3,
    /// One sealed segment is complete (self-controlled).
    Flush = 4,
    /// A collection is created (exclusive).
    CreateCollection = 5,
    /// A collection is dropped (exclusive).
    DropCollection = 6,
    /// A partition is created (exclusive).
    CreatePartition = 7,
    /// A partition is dropped (exclusive).
    DropPartition = 8,
    /// Seal every growing segment of a collection (exclusive).
    ManualFlush = 9,
    /// A new growing segment (self-controlled).
    CreateSegment = 10,
    /// Bulk import.
    Import = 11,
    /// New collection schema (exclusive).
    SchemaChange = 12,
    /// Opens a transaction (system).
    BeginTxn = 900,
    /// Commits a transaction (system).
    CommitTxn = 901,
    /// Rolls back a transaction (system).
    RollbackTxn = 902,
    /// A committed transaction as one message; read side only, never persisted (system).
    Txn = 999,
}

impl MessageType {
    /// Every message type.
    pub const ALL: [MessageType; 16] = [
        MessageType::TimeTick,
        MessageType::Insert,
        MessageType::Delete,
        MessageType::Flush,
        MessageType::CreateCollection,
        MessageType::DropCollection,
        MessageType::CreatePartition,
        MessageType::DropPartition,
        MessageType::ManualFlush,
        MessageType::CreateSegment,
        MessageType::Import,
        MessageType::SchemaChange,
        MessageType::BeginTxn,
        MessageType::CommitTxn,
        MessageType::RollbackTxn,
        MessageType::Txn,
    ];

    /// The stable wire number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The type with wire number `n`.
    pub fn from_number(n: u32) -> Result<MessageType, ParseError> {
        MessageType::ALL
            .iter()
            .copied()
            .find(|t| t.number() == n)
            .ok_or(ParseError::MessageType(n))
    }

    /// System messages pass every type filter and cannot be appended directly by clients.
    pub fn is_system(self) -> bool {
        matches!(
            self,
            MessageType::TimeTick
                | MessageType::BeginTxn
                | MessageType::CommitTxn
                | MessageType::RollbackTxn
                | MessageType::Txn
        )
    }

    /// Self-controlled messages are only ever written by the streaming node itself.
    pub fn is_self_controlled(self) -> bool {
        matches!(
            self,
            MessageType::TimeTick | MessageType::CreateSegment | MessageType::Flush
        )
    }

    /// Exclusive messages take an exclusive lock on their vchannel while appended.
    pub fn is_exclusive(self) -> bool {
        matches!(
            self,
            MessageType::CreateCollection
                | MessageType::DropCollection
                | MessageType::CreatePartition
                | MessageType::DropPartition
                | MessageType::ManualFlush
                | MessageType::SchemaChange
        )
    }

    /// Messages that may be the body of a client transaction.
    pub fn allowed_in_txn(self) -> bool {
        matches!(self, MessageType::Insert | MessageType::Delete)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
