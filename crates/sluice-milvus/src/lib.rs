//! The Milvus-compatible front (see `proto/milvus/`).

#![allow(missing_docs)]

/// The generated Milvus API.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    pub mod common {
        tonic::include_proto!("milvus.proto.common");
    }
    pub mod schema {
        tonic::include_proto!("milvus.proto.schema");
    }
    pub mod msg {
        tonic::include_proto!("milvus.proto.msg");
    }
    pub mod milvus {
        tonic::include_proto!("milvus.proto.milvus");
    }
}
