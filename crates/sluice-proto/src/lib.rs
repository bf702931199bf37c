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

/// A lazily connecting gRPC channel to `address` (`host:port`, or a URL such as
/// `http://host:port`): a 2 s connect timeout and `TCP_NODELAY`, as every Sluice client uses.
/// A malformed address is an error naming it.
pub fn lazy_channel(address: &str) -> Result<tonic::transport::Channel, String> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Ok(tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("bad address {address:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}
