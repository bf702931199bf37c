//! The Sluice client.
//!
//! A [`Client`] hides where WALs live. It watches the topology (which node owns which pchannel
//! at which term, from a [`TopologySource`]), sends each message to the owner of its vchannel's
//! pchannel, and when the owner changes it waits for the new owner and retries:
//!
//! * **Producing** ([`Client::append`]): on `CHANNEL_NOT_EXIST`, `UNMATCHED_CHANNEL_TERM` or
//!   `CHANNEL_FENCED` the client reports the error to the coordinator, waits until the topology
//!   shows a *strictly higher* term for the pchannel (or a backoff of 100 ms → 10 s elapses) and
//!   retries the same message; transport errors and `ON_SHUTDOWN` are retried with the same
//!   backoff. Only bad input, unrecoverable and transaction errors reach the caller. Delivery is
//!   therefore at-least-once: a message whose acknowledgement was lost in a failover may be
//!   written twice.
//! * **Consuming** ([`Client::read`]): a resumable reader that, after the owner changes, resumes
//!   from the last delivered message's last-confirmed id with a `timestamp > last` filter, so the
//!   consumer sees no gap and no duplicate.
//! * **Reading collections** ([`query::QueryClient`]): Search, Query and Get, retried while a
//!   shard catches up or moves.
//! * **Transactions** ([`Client::begin_txn`], [`Client::append_messages`]).
//!
//! The WALs are reached through a [`access::WalAccess`]: over gRPC ([`access::RemoteAccess`]), or
//! another implementation a process that hosts a node plugs in (standalone routes its own
//! pchannels without a network hop). The client depends only on the contract: `sluice-types`,
//! `sluice-proto` and the gRPC stack.

pub mod access;
pub mod client;
pub mod coord;
pub mod error;
pub mod query;
mod sequence;
pub mod topology;

pub use client::{Client, ClientConfig, ReadRequest, Reader, Txn};
pub use error::ClientError;
pub use query::QueryClient;
pub use topology::{Assignment, Topology, TopologySource};
