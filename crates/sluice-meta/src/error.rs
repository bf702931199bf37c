//! The one error type of the metadata store layer.

use std::sync::Arc;

use crate::{LeaseId, Revision};

/// Everything a [`crate::MetaStore`] call can fail with.
///
/// `Clone` so one failure can be handed to many waiters (inner errors sit behind `Arc`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum MetaError {
    /// A compare-and-set condition did not hold; nothing was written.
    #[error("condition failed on key {key:?}: its mod revision is {actual_revision:?}")]
    ConditionFailed {
        /// The key whose condition failed.
        key: String,
        /// The key's mod revision when the condition was checked (`None`: the key was absent).
        actual_revision: Option<Revision>,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0:?} not found")]
    LeaseNotFound(LeaseId),
    /// A watch asked for revisions the store no longer keeps.
    #[error("revision {requested} is compacted (oldest kept: {compacted} + 1)")]
    Compacted {
        /// The revision the watch asked to start from.
        requested: Revision,
        /// The newest revision that is no longer available.
        compacted: Revision,
    },
    /// The caller passed something the contract does not allow (empty key, zero TTL, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Data read from the store (disk or server) is not what this crate wrote.
    #[error("malformed stored data: {0}")]
    Malformed(String),
    /// The backend could not be reached or failed transiently (network, server busy).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend's storage failed (I/O, database error).
    #[error("storage error: {0}")]
    Storage(Arc<dyn std::error::Error + Send + Sync>),
    /// The store is shut down.
    #[error("meta store is shut down")]
    Shutdown,
}

impl MetaError {
    /// Whether repeating the same call later may succeed.
    ///
    /// A failed condition is *not* retryable as such: the caller must re-read and decide again.
    pub fn retryable(&self) -> bool {
        matches!(self, MetaError::Unavailable(_))
    }

    pub(crate) fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        MetaError::Storage(Arc::new(e))
    }
}
