//! Milvus databases over Sluice's: the database a call is in, and the names it gives and gets.
//!
//! A call's database is its request's `db_name` when set, else its `dbname` header (pymilvus's
//! `db_name=` and `use_database` send that), else `default`. Sluice names a collection (or an
//! alias) `name` in `default` and `db.name` in another database (`sluice_types::schema`), so the
//! front turns the names a call gives into Sluice names as it takes the request ([`enter`]) and
//! back ([`local`]) in what it answers; in between every helper works with Sluice names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_types::database::{DENY_READING, DENY_WRITING, DatabaseLimits};
use sluice_types::schema::{DEFAULT_DATABASE, in_database, split_database};
use tonic::Request;

use crate::pb::milvus as mm;
use crate::rbac::{Privileged, Rbac};
use crate::status::Failure;

/// The header SDKs name a call's database in.
pub(crate) const HEADER: &str = "dbname";

/// Whether `name` names the default database (an empty name does).
pub(crate) fn is_default(name: &str) -> bool {
    name.is_empty() || name == DEFAULT_DATABASE
}

/// The database named by a request's `db_name` field `body`, else by `header`, else
/// `default`.
pub(crate) fn of(
    body: &str,
    header: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> String {
    if !body.is_empty() {
        return body.to_owned();
    }
    // Bytes that are not text still name a database (one no name rule lets exist), never
    // `default`: nothing meant for another database may land there.
    match header.map(|h| String::from_utf8_lossy(h.as_bytes())) {
        Some(h) if !h.is_empty() => h.into_owned(),
        _ => DEFAULT_DATABASE.to_owned(),
    }
}

/// The Sluice name of collection or alias `name` given in database `database`. A dot in
/// `name` is refused: it would name another database's collection.
pub(crate) fn sluice_name(database: &str, name: &str) -> Result<String, Failure> {
    if name.contains('.') {
        return Err(Failure::invalid(format!(
            "the name {name:?} is invalid: a name holds only letters, digits and underscores"
        )));
    }
    if name.is_empty() {
        return Ok(String::new());
    }
    Ok(in_database(database, name))
}

/// A Sluice collection or alias name as its database names it.
pub(crate) fn local(name: &str) -> &str {
    split_database(name).1
}

/// The database of a Sluice collection or alias name.
pub(crate) fn database_of(name: &str) -> &str {
    split_database(name).0
}

/// How long the front goes by database properties it read: a property changed through another
/// front (or Sluice's own API) acts within this; one changed through this front at once.
pub(crate) const LIMITS_FOR: Duration = Duration::from_secs(1);

/// The limits of every database, by name.
pub(crate) type AllLimits = Arc<HashMap<String, DatabaseLimits>>;

/// The limits every database's properties set, as last read from the catalog.
#[derive(Debug, Default)]
pub(crate) struct LimitsCache(parking_lot::Mutex<Option<(Instant, AllLimits)>>);

impl LimitsCache {
    /// The limits read less than [`LIMITS_FOR`] ago.
    pub(crate) fn fresh(&self) -> Option<AllLimits> {
        match &*self.0.lock() {
            Some((read, all)) if read.elapsed() < LIMITS_FOR => Some(all.clone()),
            _ => None,
        }
    }

    /// Keeps `all`, read just now.
    pub(crate) fn put(&self, all: AllLimits) {
        *self.0.lock() = Some((Instant::now(), all));
    }

    /// Forgets what was read (a database changed).
    pub(crate) fn forget(&self) {
        *self.0.lock() = None;
    }
}

/// What a call does to a database's data.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access {
    /// Inserts, upserts, deletes.
    Write,
    /// Searches, queries.
    Read,
}

/// Whether `limits` (database `name`'s) let a call doing `access` through.
pub(crate) fn check_access(
    name: &str,
    limits: &DatabaseLimits,
    access: Access,
) -> Result<(), Failure> {
    match access {
        Access::Write if limits.deny_writing => Err(Failure::denied(name, "writing", DENY_WRITING)),
        Access::Read if limits.deny_reading => Err(Failure::denied(name, "reading", DENY_READING)),
        _ => Ok(()),
    }
}

/// A request whose collection (and alias) names are in a database.
pub(crate) trait InDatabase {
    /// The request's `db_name` field.
    fn db_name(&self) -> &str;
    /// The collection and alias names it gives.
    fn names(&mut self) -> Vec<&mut String>;
}

/// The request of `r` with its names made Sluice names, and its database; a bad name fails.
pub(crate) fn enter<R: InDatabase>(r: Request<R>) -> Result<(String, R), Failure> {
    let database = of(r.get_ref().db_name(), r.metadata().get(HEADER));
    let mut r = r.into_inner();
    for name in r.names() {
        *name = sluice_name(&database, name)?;
    }
    Ok((database, r))
}

/// Implements [`InDatabase`] for requests with a `db_name` field and the name fields listed.
macro_rules! in_database {
    ($($request:ident => [$($field:ident),*]);* $(;)?) => {
        $(impl InDatabase for mm::$request {
            fn db_name(&self) -> &str {
                &self.db_name
            }
            fn names(&mut self) -> Vec<&mut String> {
                vec![$(&mut self.$field),*]
            }
        })*
    };
}

in_database! {
    CreateCollectionRequest => [collection_name];
    AlterCollectionRequest => [collection_name];
    AlterCollectionFieldRequest => [collection_name];
    AddCollectionFieldRequest => [collection_name];
    TruncateCollectionRequest => [collection_name];
    DropCollectionRequest => [collection_name];
    HasCollectionRequest => [collection_name];
    DescribeCollectionRequest => [collection_name];
    ShowCollectionsRequest => [];
    GetCollectionStatisticsRequest => [collection_name];
    LoadCollectionRequest => [collection_name];
    ReleaseCollectionRequest => [collection_name];
    GetLoadingProgressRequest => [collection_name];
    GetLoadStateRequest => [collection_name];
    CreateIndexRequest => [collection_name];
    DescribeIndexRequest => [collection_name];
    DropIndexRequest => [collection_name];
    AlterIndexRequest => [collection_name];
    CreatePartitionRequest => [collection_name];
    DropPartitionRequest => [collection_name];
    HasPartitionRequest => [collection_name];
    ShowPartitionsRequest => [collection_name];
    LoadPartitionsRequest => [collection_name];
    ReleasePartitionsRequest => [collection_name];
    GetPartitionStatisticsRequest => [collection_name];
    CreateAliasRequest => [alias, collection_name];
    AlterAliasRequest => [alias, collection_name];
    DropAliasRequest => [alias];
    DescribeAliasRequest => [alias];
    ListAliasesRequest => [collection_name];
    InsertRequest => [collection_name];
    UpsertRequest => [collection_name];
    DeleteRequest => [collection_name];
    SearchRequest => [collection_name];
    HybridSearchRequest => [collection_name];
    QueryRequest => [collection_name];
    FlushRequest => [];
    RunAnalyzerRequest => [collection_name];
    GetPersistentSegmentInfoRequest => [collection_name];
    ManualCompactionRequest => [collection_name];
    GetReplicasRequest => [collection_name];
    GetQuerySegmentInfoRequest => [collection_name];
}

/// An answer carrying a failure (its `status`, the rest empty).
pub(crate) trait Failed {
    /// The answer to a call that failed with `f`.
    fn failed(f: Failure) -> Self;
}

impl Failed for crate::pb::common::Status {
    fn failed(f: Failure) -> Self {
        f.status()
    }
}

macro_rules! failed {
    ($($response:ident),* $(,)?) => {
        $(impl Failed for mm::$response {
            // Some answers have no field but `status`.
            #[allow(clippy::needless_update)]
            fn failed(f: Failure) -> Self {
                mm::$response {
                    status: Some(f.status()),
                    ..Default::default()
                }
            }
        })*
    };
}

/// The answer of a call: `r`'s, or its failure's.
pub(crate) fn answer<T: Failed>(r: Result<T, Failure>) -> T {
    r.unwrap_or_else(T::failed)
}

failed!(
    BackupRbacMetaResponse,
    BoolResponse,
    DescribeAliasResponse,
    DescribeCollectionResponse,
    DescribeDatabaseResponse,
    DescribeIndexResponse,
    FlushAllResponse,
    FlushResponse,
    GetCollectionStatisticsResponse,
    GetLoadStateResponse,
    GetLoadingProgressResponse,
    GetPartitionStatisticsResponse,
    GetPersistentSegmentInfoResponse,
    GetQuerySegmentInfoResponse,
    GetReplicasResponse,
    ListAliasesResponse,
    ListCredUsersResponse,
    ListPrivilegeGroupsResponse,
    ManualCompactionResponse,
    MutationResult,
    QueryResults,
    RunAnalyzerResponse,
    SearchResults,
    SelectGrantResponse,
    SelectRoleResponse,
    SelectUserResponse,
    ShowCollectionsResponse,
    ShowPartitionsResponse,
    TruncateCollectionResponse,
);

/// Checks that the caller of `r` may make it (when authorization is on; see [`crate::rbac`]):
/// UNAUTHENTICATED or PERMISSION_DENIED otherwise.
pub(crate) async fn authorized<R: InDatabase + Privileged>(
    rbac: &Rbac,
    r: &Request<R>,
) -> Result<(), tonic::Status> {
    let database = of(r.get_ref().db_name(), r.metadata().get(HEADER));
    rbac.check(r.metadata(), &database, R::NEEDS, &r.get_ref().objects())
        .await
        .map(|_| ())
}

/// `let (database, request) = entered!(self, r);`: the request of `r` in its database (see
/// [`enter`]) once its caller is allowed to make it ([`authorized`]), or the handler answers
/// the failure.
macro_rules! entered {
    ($front:expr, $r:expr) => {{
        let r = $r;
        $crate::database::authorized(&$front.rbac, &r).await?;
        match $crate::database::enter(r) {
            Ok(entered) => entered,
            Err(f) => {
                return Ok(tonic::Response::new($crate::database::Failed::failed(f)));
            }
        }
    }};
}
pub(crate) use entered;
