//! Sluice's shared vocabulary: ids, channel names, timestamps, the message model, the on-log
//! record codec and the stable error codes. Everything above this crate speaks these types; it
//! has no heavy dependencies on purpose.

pub mod backoff;
pub mod channel;
pub mod code;
pub mod codec;
pub mod database;
pub mod error;
pub mod ids;
pub mod index;
pub mod message;
pub mod rbac;
pub mod read;
pub mod schema;
pub mod sparse;
pub mod storage;
pub mod text;
pub mod ttl;

pub use channel::{PChannel, VChannel};
pub use code::ErrorCode;
pub use error::{CodecError, ParseError};
pub use ids::{CollectionId, MessageId, NodeId, PartitionId, SegmentId, Term, Timestamp, TxnId};
pub use message::{ImmutableMessage, ImmutableTxnMessage, Message, MessageType, MutableMessage};
pub use read::{AppendResult, ConsumeOptions, DeliverPolicy, MessageFilter, ReadMessage};

/// Exactly-once appends: how far a producer's appends may spread. While sequence `s` of a
/// producer is unanswered, the producer sends no sequence at `s + PRODUCER_WINDOW` or above;
/// a WAL remembers at least this many of each producer's newest appends. Together they let the
/// WAL tell a retry (or a late first attempt) from an append it has forgotten.
pub const PRODUCER_WINDOW: u64 = 128;
