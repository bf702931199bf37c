//! Errors of the log layer.

use std::io;
use std::sync::Arc;

use sluice_types::{CodecError, ErrorCode, PChannel, Term};

/// An error from a log backend. `Clone` because one failure may be reported to many waiters.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LogError {
    /// A handle at a higher term has opened the pchannel; this handle can never write again.
    #[error("pchannel {pchannel} is fenced: this handle's term {term} is below term {current}")]
    Fenced {
        /// The pchannel.
        pchannel: PChannel,
        /// This handle's term.
        term: Term,
        /// The highest term that opened the pchannel.
        current: Term,
    },
    /// `append` or `truncate` on a read-only handle.
    #[error("pchannel {0} is open read-only")]
    ReadOnly(PChannel),
    /// The handle (or the whole backend) is closed or shutting down.
    #[error("log handle is closed")]
    Closed,
    /// Bad input from the caller (e.g. a record larger than the backend accepts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Stored data is damaged somewhere other than a torn tail.
    #[error("corrupted log at {location}: {reason}")]
    Corrupted {
        /// Where (file and offset, block, ...).
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A record does not decode.
    #[error("record codec: {0}")]
    Codec(#[from] CodecError),
    /// An I/O error from the storage medium.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A transient backend failure (e.g. an injected fault, a timeout).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl LogError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> LogError {
        LogError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, LogError::Io { .. } | LogError::Unavailable(_))
    }

    /// Whether this is a fence.
    pub fn is_fenced(&self) -> bool {
        matches!(self, LogError::Fenced { .. })
    }

    /// The stable wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            LogError::Fenced { .. } => ErrorCode::ChannelFenced,
            LogError::Closed => ErrorCode::OnShutdown,
            LogError::ReadOnly(_) | LogError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            LogError::Corrupted { .. } | LogError::Codec(_) => ErrorCode::Unrecoverable,
            LogError::Io { .. } | LogError::Unavailable(_) => ErrorCode::Inner,
        }
    }
}
