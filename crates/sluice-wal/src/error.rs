//! Errors of the WAL layer, each with its stable wire code.

use sluice_log::LogError;
use sluice_types::{ErrorCode, PChannel, ParseError, Term};

/// An error from the WAL. `Clone` because one failure may be reported to many waiters.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    /// A newer term took the pchannel over; this WAL can never append again.
    #[error("WAL of {pchannel} at term {term} is fenced")]
    Fenced {
        /// The pchannel.
        pchannel: PChannel,
        /// This WAL's term.
        term: Term,
    },
    /// The WAL (or the scanner) is closing.
    #[error("WAL is shutting down")]
    Shutdown,
    /// The transaction expired, was never begun, or was failed by an exclusive message.
    #[error("transaction {txn_id} expired")]
    TxnExpired {
        /// The transaction.
        txn_id: i64,
    },
    /// The transaction is not in a state that allows the operation.
    #[error("transaction {txn_id} is {state}: {operation} not allowed")]
    InvalidTxnState {
        /// The transaction.
        txn_id: i64,
        /// Its state.
        state: &'static str,
        /// What was tried.
        operation: &'static str,
    },
    /// The operation can never succeed (e.g. an insert into a dropped collection).
    #[error("unrecoverable: {0}")]
    Unrecoverable(String),
    /// Bad input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A write-ahead buffer position was evicted; the reader must fall back to the log.
    #[error("write-ahead buffer position evicted")]
    Evicted,
    /// The node refuses writes for now (see [`crate::pressure`]); nothing was written.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The store recovery snapshots are kept in failed.
    #[error("checkpoint store: {message}")]
    Store {
        /// What failed.
        message: String,
        /// Whether trying again may succeed.
        retryable: bool,
    },
    /// The log backend failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
}

impl From<ParseError> for WalError {
    fn from(e: ParseError) -> Self {
        WalError::InvalidArgument(e.to_string())
    }
}

impl WalError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            WalError::Fenced { .. } => ErrorCode::ChannelFenced,
            WalError::Shutdown => ErrorCode::OnShutdown,
            WalError::TxnExpired { .. } => ErrorCode::TransactionExpired,
            WalError::InvalidTxnState { .. } => ErrorCode::InvalidTransactionState,
            WalError::Unrecoverable(_) => ErrorCode::Unrecoverable,
            WalError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            WalError::Evicted | WalError::Store { .. } => ErrorCode::Inner,
            WalError::Overloaded(_) => ErrorCode::ResourceExhausted,
            WalError::Log(e) => e.code(),
        }
    }

    /// Whether the same operation may succeed if retried.
    pub fn retryable(&self) -> bool {
        match self {
            WalError::Log(e) => e.retryable(),
            WalError::Evicted | WalError::Overloaded(_) => true,
            WalError::Store { retryable, .. } => *retryable,
            _ => false,
        }
    }
}
