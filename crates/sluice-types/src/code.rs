//! Stable error codes carried on the wire.
//!
//! The numbers follow the streaming error table of the system Sluice is modelled on. A code is
//! never renumbered and a retired code is never reused; `codes_are_pinned` below enforces it.

use std::fmt;

/// A stable streaming error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The WAL of the pchannel is not on this node.
    ChannelNotExist = 1,
    /// The WAL was fenced by a newer term.
    ChannelFenced = 2,
    /// The component is shutting down.
    OnShutdown = 3,
    /// Protocol misuse: a request out of sequence.
    InvalidRequestSeq = 4,
    /// The request's term does not match the WAL's.
    UnmatchedChannelTerm = 5,
    /// A stale request that was ignored.
    IgnoredOperation = 6,
    /// An internal error.
    Inner = 7,
    /// Bad input.
    InvalidArgument = 8,
    /// The transaction expired or is unknown.
    TransactionExpired = 9,
    /// The transaction is not in a state that allows the operation.
    InvalidTransactionState = 10,
    /// The operation will never succeed.
    Unrecoverable = 11,
    /// A broadcast resource key is held.
    ResourceAcquired = 12,
    /// The collection does not exist.
    CollectionNotFound = 13,
    /// A read's shard did not catch up with its guarantee timestamp in time.
    NotReady = 14,
    /// The collection is released.
    CollectionNotLoaded = 15,
    /// The node refuses writes for now: a disk is below its free-space watermark or the node
    /// is over its memory cap. Nothing was written; retry with backoff.
    ResourceExhausted = 16,
    /// Anything else.
    Unknown = 999,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::ChannelNotExist,
        ErrorCode::ChannelFenced,
        ErrorCode::OnShutdown,
        ErrorCode::InvalidRequestSeq,
        ErrorCode::UnmatchedChannelTerm,
        ErrorCode::IgnoredOperation,
        ErrorCode::Inner,
        ErrorCode::InvalidArgument,
        ErrorCode::TransactionExpired,
        ErrorCode::InvalidTransactionState,
        ErrorCode::Unrecoverable,
        ErrorCode::ResourceAcquired,
        ErrorCode::CollectionNotFound,
        ErrorCode::NotReady,
        ErrorCode::CollectionNotLoaded,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unknown,
    ];

    /// The wire number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The code with wire number `n`; unknown numbers map to [`ErrorCode::Unknown`].
    pub fn from_number(n: u32) -> ErrorCode {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.number() == n)
            .unwrap_or(ErrorCode::Unknown)
    }

    /// The upper-case name used in logs and messages, e.g. `CHANNEL_FENCED`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::ChannelNotExist => "CHANNEL_NOT_EXIST",
            ErrorCode::ChannelFenced => "CHANNEL_FENCED",
            ErrorCode::OnShutdown => "ON_SHUTDOWN",
            ErrorCode::InvalidRequestSeq => "INVALID_REQUEST_SEQ",
            ErrorCode::UnmatchedChannelTerm => "UNMATCHED_CHANNEL_TERM",
            ErrorCode::IgnoredOperation => "IGNORED_OPERATION",
            ErrorCode::Inner => "INNER",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::TransactionExpired => "TRANSACTION_EXPIRED",
            ErrorCode::InvalidTransactionState => "INVALID_TRANSACTION_STATE",
            ErrorCode::Unrecoverable => "UNRECOVERABLE",
            ErrorCode::ResourceAcquired => "RESOURCE_ACQUIRED",
            ErrorCode::CollectionNotFound => "COLLECTION_NOT_FOUND",
            ErrorCode::NotReady => "NOT_READY",
            ErrorCode::CollectionNotLoaded => "COLLECTION_NOT_LOADED",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The pchannel is not (or no longer) served here at the term asked for: the client waits
    /// for a higher term in the assignment and retries on its owner.
    pub fn is_wrong_node(self) -> bool {
        matches!(
            self,
            ErrorCode::ChannelNotExist | ErrorCode::UnmatchedChannelTerm | ErrorCode::ChannelFenced
        )
    }

    /// Retrying the same operation later can succeed (wrong-node errors included).
    pub fn retryable(self) -> bool {
        self.is_wrong_node()
            || matches!(
                self,
                ErrorCode::OnShutdown
                    | ErrorCode::Inner
                    | ErrorCode::NotReady
                    | ErrorCode::ResourceExhausted
                    | ErrorCode::Unknown
            )
    }

    /// The WAL will take no more appends from this producer (fenced or shutting down): a
    /// producer stream ends after answering what is in flight.
    pub fn ends_producer(self) -> bool {
        matches!(self, ErrorCode::ChannelFenced | ErrorCode::OnShutdown)
    }

    /// The code named `name` (as [`ErrorCode::name`] writes it).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.name() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_pinned() {
        let pinned: Vec<(u32, &str)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.number(), c.name()))
            .collect();
        assert_eq!(
            pinned,
            [
                (1, "CHANNEL_NOT_EXIST"),
                (2, "CHANNEL_FENCED"),
                (3, "ON_SHUTDOWN"),
                (4, "INVALID_REQUEST_SEQ"),
                (5, "UNMATCHED_CHANNEL_TERM"),
                (6, "IGNORED_OPERATION"),
                (7, "INNER"),
                (8, "INVALID_ARGUMENT"),
                (9, "TRANSACTION_EXPIRED"),
                (10, "INVALID_TRANSACTION_STATE"),
                (11, "UNRECOVERABLE"),
                (12, "RESOURCE_ACQUIRED"),
                (13, "COLLECTION_NOT_FOUND"),
                (14, "NOT_READY"),
                (15, "COLLECTION_NOT_LOADED"),
                (16, "RESOURCE_EXHAUSTED"),
                (999, "UNKNOWN"),
            ]
        );
        assert_eq!(ErrorCode::from_number(4242), ErrorCode::Unknown);
    }
}
