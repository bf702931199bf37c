//! Milvus statuses: what a call answers with, in the `status` field of its response.

use sluice_client::ClientError;
use sluice_types::ErrorCode;

use crate::pb::common::{ErrorCode as MilvusCode, Status};

/// Why a call failed, as Milvus reports it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// Milvus's error code (`Status.code`).
    code: i32,
    /// The deprecated enum pymilvus still reads (`Status.error_code`).
    legacy: MilvusCode,
    reason: String,
    retriable: bool,
}

/// Milvus's code for a collection that does not exist.
const COLLECTION_NOT_FOUND: i32 = 100;
/// Milvus's code for a collection that is not loaded.
const COLLECTION_NOT_LOADED: i32 = 101;
/// Milvus's code for an invalid parameter.
const PARAMETER_INVALID: i32 = 1100;
/// Milvus's code for a partition that does not exist.
const PARTITION_NOT_FOUND: i32 = 200;
/// Milvus's code for a partition that is not loaded.
const PARTITION_NOT_LOADED: i32 = 201;
/// Milvus's code for an alias that does not exist.
const ALIAS_NOT_FOUND: i32 = 1600;
/// Milvus's code for an index that does not exist.
const INDEX_NOT_FOUND: i32 = 700;
/// Milvus's code for a database that does not exist.
const DATABASE_NOT_FOUND: i32 = 800;
/// Milvus's code for a call over a rate limit (retry later).
const RATE_LIMIT: i32 = 8;
/// Milvus's code for a quota that refuses a call (a database denying writes or reads).
const QUOTA_EXCEEDED: i32 = 9;
/// Milvus's code for a database holding its most collections.
const COLLECTION_NUM_LIMIT_EXCEEDED: i32 = 102;
/// Milvus's code for a service that is not ready (retry).
const SERVICE_NOT_READY: i32 = 1;
/// Milvus's code for anything else.
const UNEXPECTED: i32 = 65535;

impl Failure {
    pub(crate) fn invalid(reason: impl Into<String>) -> Failure {
        Failure {
            code: PARAMETER_INVALID,
            legacy: MilvusCode::IllegalArgument,
            reason: reason.into(),
            retriable: false,
        }
    }

    pub(crate) fn collection_not_found(name: &str) -> Failure {
        Failure {
            code: COLLECTION_NOT_FOUND,
            legacy: MilvusCode::CollectionNotExists,
            reason: format!(
                "collection not found[database={}][collection={}]",
                crate::database::database_of(name),
                crate::database::local(name)
            ),
            retriable: false,
        }
    }

    /// What went wrong, as the client reads it.
    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }

    pub(crate) fn is_collection_not_found(&self) -> bool {
        self.code == COLLECTION_NOT_FOUND
    }

    pub(crate) fn partition_not_found(name: &str) -> Failure {
        Failure {
            code: PARTITION_NOT_FOUND,
            legacy: MilvusCode::UnexpectedError,
            reason: format!("partition not found[partition={name}]"),
            retriable: false,
        }
    }

    pub(crate) fn partition_not_loaded(name: &str) -> Failure {
        Failure {
            code: PARTITION_NOT_LOADED,
            legacy: MilvusCode::UnexpectedError,
            reason: format!("partition not loaded[partition={name}]"),
            retriable: false,
        }
    }

    pub(crate) fn collection_not_loaded(name: &str) -> Failure {
        Failure {
            code: COLLECTION_NOT_LOADED,
            legacy: MilvusCode::UnexpectedError,
            reason: format!(
                "collection not loaded[collection={}]",
                crate::database::local(name)
            ),
            retriable: false,
        }
    }

    pub(crate) fn alias_not_found(alias: &str) -> Failure {
        Failure {
            code: ALIAS_NOT_FOUND,
            legacy: MilvusCode::UnexpectedError,
            reason: format!(
                "alias not found[database={}][alias={}]",
                crate::database::database_of(alias),
                crate::database::local(alias)
            ),
            retriable: false,
        }
    }

    pub(crate) fn index_not_found(name: &str) -> Failure {
        Failure {
            code: INDEX_NOT_FOUND,
            legacy: MilvusCode::IndexNotExist,
            reason: format!(
                "index not found[collection={}]",
                crate::database::local(name)
            ),
            retriable: false,
        }
    }

    pub(crate) fn database_not_found(name: &str) -> Failure {
        Failure {
            code: DATABASE_NOT_FOUND,
            legacy: MilvusCode::UnexpectedError,
            reason: format!("database not found[database={name}]"),
            retriable: false,
        }
    }

    /// A call database `name`'s properties deny (`what`: writing or reading, `property` the
    /// property denying it).
    pub(crate) fn denied(name: &str, what: &str, property: &str) -> Failure {
        Failure {
            code: QUOTA_EXCEEDED,
            legacy: MilvusCode::ForceDeny,
            reason: format!(
                "quota exceeded[reason=access has been disabled by the administrator: database \
                 {name} denies {what} ({property} is true)]"
            ),
            retriable: false,
        }
    }

    /// A write refused because a disk quota is used up (Milvus's quota code).
    pub(crate) fn disk_quota(reason: String) -> Failure {
        Failure {
            code: QUOTA_EXCEEDED,
            legacy: MilvusCode::DiskQuotaExhausted,
            reason: format!("disk quota exceeded[{reason}]"),
            retriable: false,
        }
    }

    /// A call over a rate limit: retriable, as Milvus marks it (pymilvus backs off and
    /// retries).
    pub(crate) fn rate_limited(reason: String) -> Failure {
        Failure {
            code: RATE_LIMIT,
            legacy: MilvusCode::RateLimit,
            reason,
            retriable: true,
        }
    }

    pub(crate) fn unsupported(what: impl std::fmt::Display) -> Failure {
        Failure::invalid(format!("{what} is not supported by Sluice"))
    }

    pub(crate) fn unexpected(reason: impl Into<String>) -> Failure {
        Failure {
            code: UNEXPECTED,
            legacy: MilvusCode::UnexpectedError,
            reason: reason.into(),
            retriable: false,
        }
    }

    /// A Sluice error, as the Milvus status closest to it; `collection` names the collection the
    /// call was about.
    pub(crate) fn from_client(e: &ClientError, collection: &str) -> Failure {
        let reason = e.message.clone();
        match e.code {
            ErrorCode::CollectionNotFound => Failure::collection_not_found(collection),
            ErrorCode::CollectionNotLoaded => Failure::collection_not_loaded(collection),
            ErrorCode::InvalidArgument => {
                // The catalog answers INVALID_ARGUMENT for a name it does not know.
                if reason.contains(sluice_types::database::MAX_COLLECTIONS) {
                    Failure {
                        code: COLLECTION_NUM_LIMIT_EXCEEDED,
                        legacy: MilvusCode::UnexpectedError,
                        reason,
                        retriable: false,
                    }
                } else if reason.contains("database \"") && reason.contains("does not exist") {
                    Failure::database_not_found(crate::database::database_of(collection))
                } else if reason.contains("does not exist") {
                    Failure::collection_not_found(collection)
                } else {
                    Failure::invalid(reason)
                }
            }
            code if code.retryable() => Failure {
                code: SERVICE_NOT_READY,
                legacy: MilvusCode::UnexpectedError,
                reason,
                retriable: true,
            },
            _ => Failure::unexpected(reason),
        }
    }

    pub(crate) fn status(&self) -> Status {
        #[allow(deprecated)]
        Status {
            error_code: self.legacy as i32,
            reason: self.reason.clone(),
            code: self.code,
            retriable: self.retriable,
            detail: self.reason.clone(),
            extra_info: Default::default(),
        }
    }
}

/// Success.
pub(crate) fn ok() -> Status {
    Status::default()
}

/// The status of `r`: success, or its failure's.
pub(crate) fn of<T>(r: &Result<T, Failure>) -> Status {
    match r {
        Ok(_) => ok(),
        Err(f) => f.status(),
    }
}
