//! Typed headers: the small part of each message the WAL needs without decoding the body.
//!
//! The header messages, [`TxnContext`], [`ResourceKey`] and [`BroadcastHeader`] are generated
//! from `proto/sluice/v1/message.proto`, the wire contract, so the Rust types and what a client
//! in another language sends are the same messages. Inside a log they are stored
//! protobuf-encoded in the message's reserved properties; on the wire they are typed fields.
//! Each header type belongs to exactly one [`MessageType`]; [`Header`] is any one of them.

use super::MessageType;
use crate::error::ParseError;

/// Code generated from `proto/sluice/v1/message.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
}

pub use pb::{
    BeginTxnHeader, BroadcastHeader, CommitTxnHeader, CreateCollectionHeader,
    CreatePartitionHeader, CreateSegmentHeader, DeleteHeader, DropCollectionHeader,
    DropPartitionHeader, FlushHeader, ImportHeader, InsertHeader, ManualFlushHeader,
    PartitionSegmentAssignment, ResourceKey, RollbackTxnHeader, SchemaChangeHeader, TimeTickHeader,
    TxnContext, TxnHeader,
};

/// A header type and the message type it belongs to.
pub trait MessageHeader: prost::Message + Default + Clone + PartialEq + 'static {
    /// The message type whose header this is.
    const TYPE: MessageType;
}

macro_rules! headers {
    ($($ty:ident => $name:ident),* $(,)?) => {
        $(
            impl MessageHeader for $name {
                const TYPE: MessageType = MessageType::$ty;
            }
        )*

        /// The header of any message type: the Rust form of the wire's `oneof header`.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Header {
            $(
                #[doc = concat!("The header of a ", stringify!($ty), " message.")]
                $ty($name),
            )*
        }

        impl Header {
            /// The message type this header belongs to.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $(Header::$ty(_) => MessageType::$ty,)*
                }
            }

            /// Decodes the header of a `ty` message from its protobuf bytes.
            pub fn decode(ty: MessageType, bytes: &[u8]) -> Result<Header, prost::DecodeError> {
                use prost::Message as _;
                Ok(match ty {
                    $(MessageType::$ty => Header::$ty($name::decode(bytes)?),)*
                })
            }

            /// The default (empty) header of a `ty` message.
            pub fn empty(ty: MessageType) -> Header {
                match ty {
                    $(MessageType::$ty => Header::$ty($name::default()),)*
                }
            }

            /// The protobuf encoding.
            pub fn encode_to_vec(&self) -> Vec<u8> {
                use prost::Message as _;
                match self {
                    $(Header::$ty(h) => h.encode_to_vec(),)*
                }
            }

            /// Whether every field has its default value (such a header is not stored).
            pub fn is_empty(&self) -> bool {
                match self {
                    $(Header::$ty(h) => *h == $name::default(),)*
                }
            }
        }

        $(
            impl From<$name> for Header {
                fn from(h: $name) -> Header {
                    Header::$ty(h)
                }
            }
        )*
    };
}

headers!(
    TimeTick => TimeTickHeader,
    Insert => InsertHeader,
    Delete => DeleteHeader,
    Flush => FlushHeader,
    CreateCollection => CreateCollectionHeader,
    DropCollection => DropCollectionHeader,
    CreatePartition => CreatePartitionHeader,
    DropPartition => DropPartitionHeader,
    ManualFlush => ManualFlushHeader,
    CreateSegment => CreateSegmentHeader,
    Import => ImportHeader,
    SchemaChange => SchemaChangeHeader,
    BeginTxn => BeginTxnHeader,
    CommitTxn => CommitTxnHeader,
    RollbackTxn => RollbackTxnHeader,
    Txn => TxnHeader,
);

impl Header {
    /// The collection the header names, for the types that name one.
    pub fn collection_id(&self) -> Option<i64> {
        match self {
            Header::Insert(h) => Some(h.collection_id),
            Header::Delete(h) => Some(h.collection_id),
            Header::Flush(h) => Some(h.collection_id),
            Header::CreateCollection(h) => Some(h.collection_id),
            Header::DropCollection(h) => Some(h.collection_id),
            Header::CreatePartition(h) => Some(h.collection_id),
            Header::DropPartition(h) => Some(h.collection_id),
            Header::ManualFlush(h) => Some(h.collection_id),
            Header::CreateSegment(h) => Some(h.collection_id),
            Header::SchemaChange(h) => Some(h.collection_id),
            Header::TimeTick(_)
            | Header::Import(_)
            | Header::BeginTxn(_)
            | Header::CommitTxn(_)
            | Header::RollbackTxn(_)
            | Header::Txn(_) => None,
        }
    }

    /// Checks what a producer's header must satisfy beyond decoding: the fields the WAL fills
    /// are empty, an insert names exactly one partition.
    pub fn check_from_producer(&self) -> Result<(), ParseError> {
        let bad = |reason: &'static str| ParseError::Header {
            ty: self.message_type(),
            reason,
        };
        match self {
            Header::Insert(h) => {
                if h.partitions.len() != 1 {
                    return Err(bad("an insert names exactly one partition"));
                }
                if h.partitions.iter().any(|p| p.segment_id != 0) {
                    return Err(bad("segment_id is assigned by the WAL; leave it 0"));
                }
            }
            Header::ManualFlush(h) if !h.segment_ids.is_empty() => {
                return Err(bad("segment_ids is filled by the WAL; leave it empty"));
            }
            Header::SchemaChange(h) if !h.flushed_segment_ids.is_empty() => {
                return Err(bad(
                    "flushed_segment_ids is filled by the WAL; leave it empty",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}
