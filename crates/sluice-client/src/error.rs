//! The client's error: a stable code and a cause, whichever layer it came from.

use sluice_types::ErrorCode;

/// An error as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct ClientError {
    /// The stable code.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl ClientError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError {
            code,
            message: message.into(),
        }
    }

    /// The WAL is not (or no longer) usable at that node and term: wait for a new assignment.
    pub fn is_wrong_node(&self) -> bool {
        self.code.is_wrong_node()
    }

    /// Retrying the same operation later can succeed (wrong-node errors included).
    pub fn retryable(&self) -> bool {
        self.code.retryable()
    }

    /// The error a gRPC status carries.
    pub fn from_status(status: &tonic::Status) -> ClientError {
        let (code, message) = sluice_proto::convert::error_of(status);
        ClientError { code, message }
    }
}

impl From<sluice_types::ParseError> for ClientError {
    fn from(e: sluice_types::ParseError) -> ClientError {
        ClientError::new(ErrorCode::InvalidArgument, e.to_string())
    }
}
