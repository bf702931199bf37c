//! The streaming coordinator.
//!
//! One coordinator (elected among several, see [`election`]) owns the cluster-wide state that the
//! streaming nodes and clients agree on, all of it kept in a [`sluice_meta::MetaStore`] under one
//! key root (see [`keys`]):
//!
//! * [`tso`]: the timestamp oracle and id allocator. Batches are handed out from memory; the
//!   high-water mark is persisted as a window ahead of the clock, so a restarted coordinator never
//!   hands out a timestamp or id it (or a predecessor) handed out before.
//! * [`registry`]: node discovery. A node registers itself under a lease; when the lease lapses
//!   the node is gone.
//! * [`pchannel`]: per-pchannel metadata (term, node, state, history). Every change of owner
//!   bumps the term with compare-and-set, so two coordinators can never hand out the same term.
//! * [`balancer`] and [`assign`]: the placement policy and the assignment loop that moves
//!   pchannels between nodes through the [`assign::NodeClient`] seam, and the topology stream
//!   clients watch.
//! * [`broadcast`]: one message to many vchannels as a persisted task guarded by resource-key
//!   locks.

pub mod assign;
pub mod balancer;
pub mod broadcast;
pub mod catalog;
pub mod compaction;
pub mod election;
pub mod error;
pub mod keys;
pub mod leader;
pub mod node;
pub mod pchannel;
pub mod placement;
pub mod registry;
pub mod service;
pub mod tso;

pub use error::CoordError;
pub use node::{NodeId, NodeInfo, Nodes};

/// Result of a coordinator call.
pub type Result<T, E = CoordError> = std::result::Result<T, E>;
