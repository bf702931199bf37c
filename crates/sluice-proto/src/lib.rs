//! Sluice's gRPC API.
//!
//! The `.proto` files under `proto/sluice/v1/` are the documented wire contract; this crate holds
//! the generated types and tonic clients/servers ([`v1`]) and the conversions between them and
//! `sluice-types` ([`convert`]).

pub mod convert;
pub mod metered;
pub mod security;

pub use security::{Channel, Security};

/// Generated code for package `sluice.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// A lazily connecting gRPC channel to `address` (`host:port`, or a URL such as
/// `http://host:port`) with this process's TLS settings and token ([`Security::install`];
/// plaintext without a token when none were installed): a 2 s connect timeout and
/// `TCP_NODELAY`, as every Sluice client uses. See [`Security::lazy_channel`].
pub fn lazy_channel(address: &str) -> Result<Channel, String> {
    Security::process().lazy_channel(address)
}
