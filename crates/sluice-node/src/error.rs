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

    /// The pchannel and the term the error is about, where it names them.
    pub fn pchannel_term(&self) -> Option<(&PChannel, Term)> {
        match self {
            NodeError::ChannelNotExist(p) => Some((p, Term(0))),
            NodeError::UnmatchedTerm {
                pchannel, current, ..
            } => Some((pchannel, *current)),
            NodeError::Ignored { pchannel, seen, .. } => Some((pchannel, *seen)),
            NodeError::Wal(WalError::Fenced { pchannel, term }) => Some((pchannel, *term)),
            _ => None,
        }
    }

    /// This error as a gRPC status carrying the code, and the pchannel and the term here (0
    /// when the node does not hold the pchannel) where the error names them.
    pub fn to_status(&self) -> tonic::Status {
        match self.pchannel_term() {
            Some((pchannel, term)) => sluice_proto::convert::status_with(
                self.code(),
                self.to_string(),
                [
                    ("pchannel", pchannel.as_str().to_owned()),
                    ("term", term.0.to_string()),
                ],
            ),
            None => sluice_proto::convert::status(self.code(), self.to_string()),
        }
    }
}
