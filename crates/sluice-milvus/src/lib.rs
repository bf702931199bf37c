//! The Milvus-compatible front: the part of Milvus's `MilvusService` that `pymilvus`'s
//! `MilvusClient` uses (`proto/milvus/`, generated from pymilvus's own descriptors), answered
//! over Sluice's client API — the catalog for collections, the WAL for inserts and deletes, the
//! query path for search and query.
//!
//! How Milvus maps onto Sluice:
//! * A collection's Milvus schema becomes a Sluice schema (BOOL, INT8/16/32 as INT32, INT64,
//!   FLOAT, DOUBLE, VARCHAR, JSON, FLOAT_VECTOR; any other type is refused with a clear status).
//!   The dynamic field (`$meta`) is a nullable JSON field named [`DYNAMIC_FIELD`] marked dynamic,
//!   so filters on its keys work as in Milvus. What Sluice's schema does not hold — the original
//!   integer widths, the index, the consistency level — is kept in the collection's properties
//!   (`milvus.*`).
//! * Inserts are routed to shards by primary key and appended as Arrow rows; deletes by filter
//!   look the keys up first, then append deletes of those keys; an upsert deletes, then inserts.
//! * Errors are Milvus statuses (`code` and the deprecated `error_code`) a pymilvus user
//!   recognizes: 100 collection not found, 1100 invalid parameter, 65535 anything else.

mod array;
mod convert;
mod database;
mod decay;
mod hybrid;
mod properties;
mod prune;
mod rate;
mod rbac;
mod scalar_index;
mod service;
mod status;
mod template;
mod unsupported;

pub use service::MilvusFront;
pub use unsupported::Named;

/// The Sluice name of a collection's dynamic field (`$meta` in Milvus).
pub const DYNAMIC_FIELD: &str = "milvus_meta";

/// The generated Milvus API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// `milvus.proto.common`.
    pub mod common {
        tonic::include_proto!("milvus.proto.common");
    }
    /// `milvus.proto.schema`.
    pub mod schema {
        tonic::include_proto!("milvus.proto.schema");
    }
    /// `milvus.proto.msg`.
    pub mod msg {
        tonic::include_proto!("milvus.proto.msg");
    }
    /// `milvus.proto.milvus`.
    pub mod milvus {
        tonic::include_proto!("milvus.proto.milvus");
    }
}
