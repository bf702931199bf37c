//! Sluice's gRPC API.
//!
//! The `.proto` files under `proto/sluice/v1/` are the documented wire contract; this crate holds
//! the generated types and tonic clients/servers ([`v1`]) and the conversions between them and
//! `sluice-types` ([`convert`]).

pub mod convert;

/// Generated code for package `sluice.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
