//! The streaming node.
//!
//! A node holds the WALs of the pchannels the coordinator assigned to it ([`WalManager`]: one
//! WAL per pchannel, transitions serialized per pchannel and ordered by term) and serves them over
//! gRPC ([`service`]): `Produce` and `Consume` for clients, `Assign`/`Remove`/`Status` for the
//! coordinator — and the query delegators of those WALs' shards with the `Query` service over
//! them ([`query`]).

pub mod compactor;
pub mod coord_link;
pub mod error;
pub mod manager;
pub mod mirror;
pub mod pressure;
pub mod query;
pub mod service;
pub mod worker;

pub use error::NodeError;
pub use manager::WalManager;
