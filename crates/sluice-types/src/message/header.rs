//! Typed headers: the small part of each message the WAL needs without decoding the body.
//!
//! Headers are protobuf messages (declared here with `prost` derives so this crate needs no code
//! generation) stored base64-encoded in the `_h` property. Each header type belongs to exactly one
//! [`MessageType`].

use super::MessageType;

/// A header type and the message type it belongs to.
pub trait MessageHeader: prost::Message + Default + Clone + PartialEq + 'static {
    /// The message type whose `_h` property holds this header.
    const TYPE: MessageType;
}

macro_rules! header {
    ($(#[$doc:meta])* $name:ident => $ty:ident { $($body:tt)* }) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct $name { $($body)* }

        impl MessageHeader for $name {
            const TYPE: MessageType = MessageType::$ty;
        }
    };
}

header!(
    /// TimeTick: no fields; the timestamp is the message's own.
    TimeTickHeader => TimeTick {}
);

/// Rows of one partition in an insert and the growing segment the WAL assigned them to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionSegmentAssignment {
    /// The partition.
    #[prost(int64, tag = "1")]
    pub partition_id: i64,
    /// Rows inserted into it.
    #[prost(uint64, tag = "2")]
    pub rows: u64,
    /// Bytes inserted into it (0 = let the WAL use the message size).
    #[prost(uint64, tag = "3")]
    pub binary_size: u64,
    /// The growing segment assigned by the WAL (0 until assigned).
    #[prost(int64, tag = "4")]
    pub segment_id: i64,
}

header!(
    /// Insert: the collection and, per partition, rows, bytes and the assigned segment.
    InsertHeader => Insert {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// One entry per partition touched (the WAL requires exactly one).
        #[prost(message, repeated, tag = "2")]
        pub partitions: Vec<PartitionSegmentAssignment>,
    }
);

header!(
    /// Delete: the collection and the number of primary keys deleted.
    DeleteHeader => Delete {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// Primary keys deleted.
        #[prost(uint64, tag = "2")]
        pub rows: u64,
    }
);

header!(
    /// Flush: one sealed segment whose writes are all acknowledged (written by the WAL).
    FlushHeader => Flush {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// The partition.
        #[prost(int64, tag = "2")]
        pub partition_id: i64,
        /// The segment.
        #[prost(int64, tag = "3")]
        pub segment_id: i64,
    }
);

header!(
    /// CreateCollection: the new collection and its initial partitions.
    CreateCollectionHeader => CreateCollection {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// Its initial partitions.
        #[prost(int64, repeated, tag = "2")]
        pub partition_ids: Vec<i64>,
        /// Its database.
        #[prost(int64, tag = "3")]
        pub db_id: i64,
    }
);

header!(
    /// DropCollection.
    DropCollectionHeader => DropCollection {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// Its database.
        #[prost(int64, tag = "2")]
        pub db_id: i64,
    }
);

header!(
    /// CreatePartition.
    CreatePartitionHeader => CreatePartition {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// The new partition.
        #[prost(int64, tag = "2")]
        pub partition_id: i64,
    }
);

header!(
    /// DropPartition.
    DropPartitionHeader => DropPartition {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// The dropped partition.
        #[prost(int64, tag = "2")]
        pub partition_id: i64,
    }
);

header!(
    /// ManualFlush: seal every growing segment of a collection (the WAL fills `segment_ids`).
    ManualFlushHeader => ManualFlush {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// The flush timestamp chosen by the caller.
        #[prost(uint64, tag = "2")]
        pub flush_ts: u64,
        /// The segments sealed by this flush (filled by the WAL).
        #[prost(int64, repeated, tag = "3")]
        pub segment_ids: Vec<i64>,
    }
);

header!(
    /// CreateSegment: a new growing segment (written by the WAL).
    CreateSegmentHeader => CreateSegment {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// The partition.
        #[prost(int64, tag = "2")]
        pub partition_id: i64,
        /// The new segment.
        #[prost(int64, tag = "3")]
        pub segment_id: i64,
        /// Storage format version of the segment's files.
        #[prost(int64, tag = "4")]
        pub storage_version: i64,
        /// Bytes at which the segment seals.
        #[prost(uint64, tag = "5")]
        pub max_segment_size: u64,
        /// Rows at which the segment seals (0 = unlimited).
        #[prost(uint64, tag = "6")]
        pub max_rows: u64,
        /// Segment level (1 = L1).
        #[prost(int32, tag = "7")]
        pub level: i32,
    }
);

header!(
    /// Import: no header fields.
    ImportHeader => Import {}
);

header!(
    /// SchemaChange: new schema in the body; the WAL fills the segments it flushed.
    SchemaChangeHeader => SchemaChange {
        /// The collection.
        #[prost(int64, tag = "1")]
        pub collection_id: i64,
        /// Segments sealed by the change (filled by the WAL).
        #[prost(int64, repeated, tag = "2")]
        pub flushed_segment_ids: Vec<i64>,
    }
);

header!(
    /// BeginTxn: opens a transaction on one vchannel.
    BeginTxnHeader => BeginTxn {
        /// Keepalive in milliseconds (0 = the WAL's default).
        #[prost(int64, tag = "1")]
        pub keepalive_milliseconds: i64,
    }
);

header!(
    /// CommitTxn.
    CommitTxnHeader => CommitTxn {}
);

header!(
    /// RollbackTxn.
    RollbackTxnHeader => RollbackTxn {}
);

header!(
    /// Txn: the read-side message a scanner assembles from Begin, bodies and Commit.
    TxnHeader => Txn {}
);

/// The transaction a message belongs to (property `_tx`).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TxnContext {
    /// The transaction id.
    #[prost(int64, tag = "1")]
    pub txn_id: i64,
    /// Keepalive in milliseconds; -1 means infinite.
    #[prost(int64, tag = "2")]
    pub keepalive_ms: i64,
}

/// A lock a broadcast holds while it is being applied.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ResourceKey {
    /// The domain (1 = collection name, 2 = database name, 3 = privilege, 4 = cluster).
    #[prost(int32, tag = "1")]
    pub domain: i32,
    /// The key within the domain.
    #[prost(string, tag = "2")]
    pub key: String,
    /// Shared (reader) or exclusive (writer).
    #[prost(bool, tag = "3")]
    pub shared: bool,
}

/// Identifies one broadcast and the vchannels it goes to (property `_bh`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BroadcastHeader {
    /// The broadcast id from the coordinator's id allocator.
    #[prost(uint64, tag = "1")]
    pub broadcast_id: u64,
    /// Every vchannel the broadcast goes to.
    #[prost(string, repeated, tag = "2")]
    pub vchannels: Vec<String>,
    /// The resource keys held until every vchannel has the message.
    #[prost(message, repeated, tag = "3")]
    pub resource_keys: Vec<ResourceKey>,
}
