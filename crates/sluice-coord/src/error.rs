//! The coordinator's errors.

use sluice_meta::MetaError;
use sluice_types::ErrorCode;

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// Bad input from a caller (malformed name, empty request, …); nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The pchannel is not one the coordinator manages.
    #[error("unknown pchannel {0:?}")]
    UnknownPChannel(String),
    /// A request named a term that is not the pchannel's current one.
    #[error(
        "stale term for pchannel {pchannel:?}: request has term {requested}, current is {current}"
    )]
    StaleTerm {
        /// The pchannel.
        pchannel: String,
        /// The term in the request.
        requested: u64,
        /// The pchannel's current term.
        current: u64,
    },
    /// A value in the meta store could not be decoded; the key is named so an operator can fix it.
    #[error("malformed meta store value at {key:?}: {reason}")]
    Malformed {
        /// The key holding the bad value.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another writer changed the state first (a compare-and-set lost); retry after re-reading.
    #[error("conflict: {0}")]
    Conflict(String),
    /// This coordinator is not (or no longer) the leader.
    #[error("not the leader")]
    NotLeader,
    /// No healthy streaming node to place pchannels on.
    #[error("no healthy streaming node")]
    NoHealthyNode,
    /// A broadcast resource key is held by another broadcast.
    #[error("resource key held: {0}")]
    ResourceAcquired(String),
    /// A call to a streaming node failed.
    #[error("node {node} failed: {reason}")]
    Node {
        /// The node.
        node: String,
        /// What it said.
        reason: String,
    },
    /// The meta store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    Shutdown,
}

impl CoordError {
    /// The stable wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoordError::InvalidArgument(_) | CoordError::UnknownPChannel(_) => {
                ErrorCode::InvalidArgument
            }
            CoordError::StaleTerm { .. } => ErrorCode::UnmatchedChannelTerm,
            CoordError::Malformed { .. } => ErrorCode::Unrecoverable,
            CoordError::ResourceAcquired(_) => ErrorCode::ResourceAcquired,
            CoordError::Shutdown => ErrorCode::OnShutdown,
            CoordError::Conflict(_)
            | CoordError::NotLeader
            | CoordError::NoHealthyNode
            | CoordError::Node { .. }
            | CoordError::Meta(_) => ErrorCode::Inner,
        }
    }

    /// Whether retrying the same call later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            CoordError::Meta(e) => e.retryable(),
            CoordError::Conflict(_)
            | CoordError::NotLeader
            | CoordError::NoHealthyNode
            | CoordError::ResourceAcquired(_)
            | CoordError::Node { .. } => true,
            _ => false,
        }
    }
}
