//! Streaming node identity as the coordinator sees it.

use std::collections::BTreeMap;

pub use sluice_types::NodeId;

/// What a node announces when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Where its gRPC server listens (`host:port`).
    pub address: String,
    /// The node is shutting down gracefully: it keeps what it has until moved, gets nothing new.
    pub stopping: bool,
    /// Which process of the node this is: the meta store's create revision of its registration,
    /// new every time the node registers (a restarted process has a larger one; `stopping`
    /// keeps it). A pchannel assigned to an earlier incarnation of a node is not held by the
    /// node that now answers at its address, so it is assigned again, at a higher term.
    /// Set by [`crate::registry::NodeSession::register`]; 0 before that.
    pub incarnation: i64,
}

/// The live nodes, by id.
pub type Nodes = BTreeMap<NodeId, NodeInfo>;
