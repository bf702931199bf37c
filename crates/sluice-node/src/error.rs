//! The node's errors, each with its stable wire code.

use sluice_types::{ErrorCode, PChannel, Term};
use sluice_wal::WalError;

/// What a node call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The pchannel's WAL is not on this node.
    #[error("pchannel {0} is not on this node")]
    ChannelNotExist(PChannel),
    /// The request's term is not the term of the WAL here.
    #[error("pchannel {pchannel}: request term {requested} does not match term {current} here")]
    UnmatchedTerm {
        /// The pchannel.
        pchannel: PChannel,
        /// The term asked for.
        requested: Term,
        /// The term of the WAL on this node.
        current: Term,
    },
    /// A request for a term older than one this node already saw for the pchannel.
    #[error("pchannel {pchannel}: term {requested} is older than term {seen} already seen here")]
    Ignored {
        /// The pchannel.
        pchannel: PChannel,
        /// The term asked for.
        requested: Term,
        /// The highest term seen.
        seen: Term,
    },
    /// The node is shutting down.
    #[error("node is shutting down")]
    Shutdown,
    /// Bad input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl NodeError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::ChannelNotExist(_) => ErrorCode::ChannelNotExist,
            NodeError::UnmatchedTerm { .. } => ErrorCode::UnmatchedChannelTerm,
            NodeError::Ignored { .. } => ErrorCode::IgnoredOperation,
            NodeError::Shutdown => ErrorCode::OnShutdown,
            NodeError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            NodeError::Wal(e) => e.code(),
        }
    }

    /// This error as a gRPC status carrying the code.
    pub fn to_status(&self) -> tonic::Status {
        sluice_proto::convert::status(self.code(), self.to_string())
    }
}
