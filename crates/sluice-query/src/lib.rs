//! The query path: what a search or a query reads and how it is answered.
//!
//! * [`vector`]: distances and top-K selection;
//! * [`index`]: the HNSW index of sealed segments;
//! * [`filter`]: the boolean filter language over a collection's scalar fields;
//! * [`segment`]: rows as the query path holds them, with their MVCC bounds;
//! * [`shard`]: one collection's data on one vchannel — search, query, get, hand-off;
//! * [`delegator`]: a shard with its tsafe, and the waiting reads do on it.

use std::time::Duration;

pub mod delegator;
pub mod filter;
pub mod index;
pub mod segment;
pub mod shard;
pub mod vector;

pub use delegator::{Delegator, ReadAt};
pub use filter::Filter;
pub use index::{AnnIndex, IndexParams};
pub use segment::{Pk, Segment, TermStats};
pub use shard::{Hits, Scope, SearchSpec, ShardData};
pub use vector::Metric;

/// Why a search or query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request is wrong (unknown field, bad dimension, bad filter): fix it, do not retry.
    #[error("{0}")]
    Invalid(String),
    /// The shard has not caught up with the guarantee timestamp in time: retry later.
    #[error(
        "shard {vchannel} has applied the log up to {tsafe}, the read needs {guarantee}; waited {waited:?}"
    )]
    NotReady {
        /// The shard.
        vchannel: String,
        /// Where it stood.
        tsafe: u64,
        /// What the read needed.
        guarantee: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// The shard is not served here (any more): retry where it is.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed that should not have.
    #[error("internal: {0}")]
    Internal(String),
}
