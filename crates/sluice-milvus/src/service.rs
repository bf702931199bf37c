//! `MilvusService` over Sluice's client API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use prost::Message as _;
use serde_json::Value;
use sluice_client::coord::CoordClient;
use sluice_client::{Client, ClientError, QueryClient};
use sluice_proto::Channel;
use sluice_proto::v1::{self, coordinator_client::CoordinatorClient};
use sluice_types::database::DatabaseLimits;
use sluice_types::index::{self, IndexSettings};
use sluice_types::message::{
    DeleteHeader, InsertHeader, ManualFlushHeader, PartitionSegmentAssignment,
};
use sluice_types::schema::{CollectionSchema, DataType};
use sluice_types::{MutableMessage, VChannel};
use tonic::{Request, Response};

use crate::DYNAMIC_FIELD;
use crate::convert::{
    JsonRow, MILVUS_DYNAMIC, PROP_CONSISTENCY, PROP_FIELD_MMAP, PROP_INDEX, PROP_PARTITION_KEY,
    PROP_RELEASED, PROP_TYPES, array_spec, batch_of_rows, batches_to_milvus, check_values,
    field_to_sluice, json_object, json_rows_from_milvus, json_rows_of, milvus_type,
    rows_from_milvus, schema_to_milvus, schema_to_sluice,
};
use crate::database::{self, Access, entered};
use crate::decay::Decay;
use crate::hybrid::{Fusion, MAX_HYBRID_SEARCHES, Ranker, Searched};
use crate::pb::common::{self as mc, KeyValuePair, Status};
use crate::pb::milvus::milvus_service_server::{MilvusService, MilvusServiceServer};
use crate::pb::milvus::{self as mm};
use crate::pb::schema::{self as ms, DataType as MDataType, FieldData, field_data, scalar_field};
use crate::scalar_index::scalar_index;
use crate::status::{self, Failure};

type Reply<T> = Result<Response<T>, tonic::Status>;

/// What a write of rows does with rows of the same primary keys.
#[derive(Debug, Clone, Copy)]
enum Write<'a> {
    /// Adds the rows.
    Insert,
    /// Replaces them.
    Upsert,
    /// Replaces them, keeping their values of the fields the request leaves out, and applying
    /// the array operations to the fields they name.
    PartialUpsert(&'a HashMap<String, ArrayOp>),
}

/// A partial update's operation on an ARRAY field (Milvus's `FieldPartialUpdateOp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayOp {
    Append,
    Remove,
}

/// Bytes in a megabyte, as rate limits and disk quotas count them.
const MB: f64 = (1u64 << 20) as f64;

/// How long the front goes by a collection's counted bytes of flushed segments (disk quotas).
const STORED_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The Milvus front: answers Milvus calls with Sluice's coordinator (catalog, timestamps), its
/// client (appends) and its query service.
#[derive(Clone)]
pub struct MilvusFront {
    coord: CoordinatorClient<Channel>,
    tso: CoordClient,
    client: Client,
    query: QueryClient,
    /// What database properties allow, as last read.
    limits: Arc<database::LimitsCache>,
    /// Who may call, and what (when authorization is on).
    pub(crate) rbac: Arc<crate::rbac::Rbac>,
    /// The collections' rate limits, as this front counts them.
    rates: Arc<crate::rate::Limits>,
    /// Bytes of flushed segment files per collection, and when they were counted.
    stored: Arc<parking_lot::Mutex<HashMap<i64, (std::time::Instant, u64)>>>,
    /// Bytes of flushed segment files per database, and when they were counted.
    stored_in: Arc<parking_lot::Mutex<HashMap<String, (std::time::Instant, u64)>>>,
}

impl std::fmt::Debug for MilvusFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusFront").finish_non_exhaustive()
    }
}

/// A collection as the front works with it.
pub(crate) struct Collection {
    pub(crate) info: v1::CollectionInfo,
    pub(crate) schema: CollectionSchema,
}

impl Collection {
    pub(crate) fn props(&self) -> &HashMap<String, String> {
        &self.info.properties
    }

    pub(crate) fn pk(&self) -> Result<&sluice_types::schema::FieldSchema, Failure> {
        self.schema
            .fields
            .iter()
            .find(|f| f.is_primary_key)
            .ok_or_else(|| Failure::unexpected("the collection has no primary key"))
    }

    fn vchannels(&self) -> Result<Vec<VChannel>, Failure> {
        self.info
            .vchannels
            .iter()
            .map(|v| VChannel::new(v.as_str()).map_err(|e| Failure::unexpected(e.to_string())))
            .collect()
    }

    /// The partition a write names: its default (first) one when `name` is empty.
    fn partition(&self, name: &str) -> Result<i64, Failure> {
        if name.is_empty() {
            return Ok(self.info.partitions.first().map_or(0, |p| p.partition_id));
        }
        self.info
            .partitions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.partition_id)
            .ok_or_else(|| Failure::partition_not_found(name))
    }

    /// The partition key field (Milvus's partition key mode), if the collection has one.
    fn partition_key(&self) -> Option<&str> {
        self.props().get(PROP_PARTITION_KEY).map(String::as_str)
    }

    /// In partition key mode, the partitions a read with this filter can find rows in, when
    /// the filter pins the key (`crate::prune`); empty: every partition.
    fn key_partitions(&self, filter: &str) -> Vec<i64> {
        let Some(key) = self.partition_key() else {
            return Vec::new();
        };
        let Some(values) = crate::prune::key_values(filter, key) else {
            return Vec::new();
        };
        let int_key = self
            .schema
            .fields
            .iter()
            .any(|f| f.name == key && f.data_type == DataType::Int64 as i32);
        let parts = &self.info.partitions;
        match crate::prune::partitions_of(&values, int_key, parts.len()) {
            // No value (`key in []`, `key == 1 and key == 2`): the filter matches nothing;
            // reading every partition answers that too.
            Some(picked) if !picked.is_empty() => picked
                .into_iter()
                .filter_map(|i| parts.get(i).map(|p| p.partition_id))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The partitions a read covers ([`Collection::partitions`]), narrowed to those the
    /// filter pins in partition key mode.
    fn read_partitions(&self, names: &[String], filter: &str) -> Result<Vec<i64>, Failure> {
        let named = self.partitions(names)?;
        if named.is_empty() {
            return Ok(self.key_partitions(filter));
        }
        Ok(named)
    }

    /// Refuses naming partitions of a collection in partition key mode (Milvus's rule: its
    /// partitions are the key's).
    fn no_named_partitions(&self, names: &[String]) -> Result<(), Failure> {
        if self.partition_key().is_some() && names.iter().any(|n| !n.is_empty()) {
            return Err(Failure::invalid(
                "not support manually specifying the partition names if partition key mode is used",
            ));
        }
        Ok(())
    }

    /// The partitions a read covers: those it names, each of which must exist (an unknown
    /// name is an error, not an empty answer) and be loaded; else every loaded one (an empty
    /// list when none is released: all of them).
    fn partitions(&self, names: &[String]) -> Result<Vec<i64>, Failure> {
        self.no_named_partitions(names)?;
        let released = self.released();
        let named: Vec<&String> = names.iter().filter(|n| !n.is_empty()).collect();
        if !named.is_empty() {
            return named
                .into_iter()
                .map(|n| match self.partition(n)? {
                    id if released.contains(&id) => Err(Failure::partition_not_loaded(n)),
                    id => Ok(id),
                })
                .collect();
        }
        if released.is_empty() {
            return Ok(Vec::new());
        }
        let loaded: Vec<i64> = self
            .info
            .partitions
            .iter()
            .map(|p| p.partition_id)
            .filter(|id| !released.contains(id))
            .collect();
        if loaded.is_empty() {
            return Err(Failure::collection_not_loaded(&self.schema.name));
        }
        Ok(loaded)
    }

    /// The partitions released while the collection stays loaded (Milvus's ReleasePartitions).
    fn released(&self) -> Vec<i64> {
        self.props()
            .get(PROP_RELEASED)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// The ids of the partitions `names` (at least one; each must exist).
    fn named_partitions(&self, names: &[String]) -> Result<Vec<i64>, Failure> {
        if names.is_empty() {
            return Err(Failure::invalid("no partition names"));
        }
        names
            .iter()
            .map(|n| {
                if n.is_empty() {
                    Err(Failure::invalid("an empty partition name"))
                } else {
                    self.partition(n)
                }
            })
            .collect()
    }

    /// Whether the collection (or, when named, each of `partitions`) is loaded.
    fn load_state(&self, partitions: &[String]) -> Result<mc::LoadState, Failure> {
        let released = self.released();
        let named = match partitions.is_empty() {
            true => Vec::new(),
            false => self.named_partitions(partitions)?,
        };
        Ok(
            if self.released_now() || named.iter().any(|id| released.contains(id)) {
                mc::LoadState::NotLoad
            } else {
                mc::LoadState::Loaded
            },
        )
    }

    fn released_now(&self) -> bool {
        self.info.load_state == v1::LoadState::Released as i32
    }

    /// The indexes recorded on the collection (Milvus's CreateIndex), one JSON object each (at
    /// most one per vector field), in the order they were created. (A collection indexed before
    /// several were kept holds one object rather than a list.)
    fn indexes(&self) -> Vec<serde_json::Map<String, Value>> {
        match self
            .props()
            .get(PROP_INDEX)
            .map(|v| serde_json::from_str(v))
        {
            Some(Ok(Value::Array(all))) => all
                .into_iter()
                .filter_map(|i| match i {
                    Value::Object(o) => Some(o),
                    _ => None,
                })
                .collect(),
            Some(Ok(Value::Object(one))) => vec![one],
            _ => Vec::new(),
        }
    }

    /// The index recorded on vector field `field`.
    fn index_of(&self, field: &str) -> Option<serde_json::Map<String, Value>> {
        self.indexes()
            .into_iter()
            .find(|i| i.get("field").and_then(Value::as_str) == Some(field))
    }

    /// The vector field a search names (`anns`), or the collection's only one.
    fn anns_field(&self, anns: &str) -> Result<String, Failure> {
        if !anns.is_empty() {
            return Ok(anns.to_owned());
        }
        let vectors: Vec<&str> = self
            .schema
            .fields
            .iter()
            .filter(|f| DataType::try_from(f.data_type).is_ok_and(sluice_types::schema::is_vector))
            .map(|f| f.name.as_str())
            .collect();
        match vectors.as_slice() {
            [one] => Ok((*one).to_owned()),
            _ => Err(Failure::invalid(format!(
                "the collection has {} vector fields ({}): name the one to search with anns_field",
                vectors.len(),
                vectors.join(", ")
            ))),
        }
    }

    /// The metric of the index on `field` (when it has none: COSINE, Milvus's default, IP for a
    /// sparse vector field, BM25 for a BM25 function's output).
    fn metric_of(&self, field: &str) -> String {
        if sluice_types::schema::bm25_of(&self.schema, field).is_some() {
            return "BM25".into();
        }
        let sparse = self
            .schema
            .fields
            .iter()
            .any(|f| f.name == field && f.data_type == DataType::SparseFloatVector as i32);
        let binary =
            self.schema.fields.iter().any(|f| {
                f.name == field && milvus_type(f, self.props()) == MDataType::BinaryVector
            });
        self.index_of(field)
            .and_then(|i| i.get("metric_type")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                match (sparse, binary) {
                    (true, _) => "IP",
                    (_, true) => "HAMMING",
                    _ => "COSINE",
                }
                .into()
            })
    }

    /// The collection's consistency level (Milvus's enum number; Bounded by default).
    fn consistency(&self) -> i32 {
        self.props()
            .get(PROP_CONSISTENCY)
            .and_then(|c| c.parse().ok())
            .unwrap_or(mc::ConsistencyLevel::Bounded as i32)
    }
}

/// Whether the recorded index `i` is a vector index (scalar ones have no metric).
fn is_vector_index(i: &serde_json::Map<String, Value>) -> bool {
    i.contains_key("metric_type")
}

/// Where a recorded index keeps the properties AlterIndex set.
const INDEX_PROPERTIES: &str = "properties";

/// The index properties AlterIndex takes (Milvus's configurable index parameters).
const INDEX_PROPERTY_KEYS: [&str; 1] = ["mmap.enabled"];

/// `key` if AlterIndex takes it.
fn index_property(key: &str) -> Result<String, Failure> {
    if INDEX_PROPERTY_KEYS.contains(&key) {
        return Ok(key.to_owned());
    }
    Err(Failure::invalid(format!(
        "{key} is not a configurable index param: an index takes {}",
        INDEX_PROPERTY_KEYS.join(", ")
    )))
}

/// A value of `mmap.enabled`: true or false in any case (SDKs send `true` or `True`), kept as
/// `true` or `false`.
fn index_property_value(value: &str) -> Result<Value, Failure> {
    match value.trim().to_ascii_lowercase().as_str() {
        v @ ("true" | "false") => Ok(Value::String(v.to_owned())),
        _ => Err(Failure::invalid(format!(
            "mmap.enabled takes true or false, not {value:?}"
        ))),
    }
}

fn unknown_field_property(key: &str) -> Failure {
    Failure::invalid(format!(
        "{key} is not a field property Sluice alters: max_length (VARCHAR), max_capacity \
         (ARRAY) or mmap.enabled"
    ))
}

/// Whether the recorded index `i` is the one named `name` on `field` (empty: any).
fn matches_index(i: &serde_json::Map<String, Value>, name: &str, field: &str) -> bool {
    let is =
        |k: &str, want: &str| want.is_empty() || i.get(k).and_then(Value::as_str) == Some(want);
    is("name", name) && is("field", field)
}

/// The graph settings a recorded index asks for: its metric, and M / efConstruction when it is
/// HNSW (the other types' parameters are kept and described, and shape nothing).
fn graph_settings(index: &serde_json::Map<String, Value>) -> Result<IndexSettings, Failure> {
    let hnsw = index.get("index_type").and_then(Value::as_str) == Some("HNSW");
    let number = |key: &str| {
        hnsw.then(|| index.get("params")?.get(key)?.as_u64())
            .flatten()
            .map(|n| n as usize)
    };
    // A binary field's: HAMMING is L2 of its bits; a JACCARD field is searched exactly (no
    // graph has that metric), so the graph it does not use is an L2 one.
    let metric = match index.get("metric_type").and_then(Value::as_str) {
        Some(m) if m.eq_ignore_ascii_case("HAMMING") || m.eq_ignore_ascii_case("JACCARD") => "L2",
        Some(m) => m,
        None => "COSINE",
    };
    Ok(IndexSettings {
        metric: Some(metric.parse().map_err(Failure::invalid)?),
        m: number("M"),
        ef_construction: number("efConstruction"),
    })
}

/// A Milvus key-value pair.
pub(crate) fn kv(key: &str, value: impl Into<String>) -> KeyValuePair {
    KeyValuePair {
        key: key.into(),
        value: value.into(),
    }
}

fn param<'a>(params: &'a [KeyValuePair], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// A Milvus response carrying a status.
trait WithStatus: Default {
    fn with_status(self, status: Status) -> Self;
}

macro_rules! with_status {
    ($($t:ty),* $(,)?) => {$(
        impl WithStatus for $t {
            fn with_status(self, status: Status) -> Self {
                Self {
                    status: Some(status),
                    ..self
                }
            }
        }
    )*};
}

with_status!(
    mm::GetPartitionStatisticsResponse,
    mm::ManualCompactionResponse,
    mm::GetCompactionStateResponse,
    mm::GetCompactionPlansResponse,
    mm::GetPersistentSegmentInfoResponse,
    mm::GetReplicasResponse,
    mm::GetQuerySegmentInfoResponse,
);

/// The answer to a call: `result` with status OK, or an empty response with the failure's.
fn answer<T: WithStatus>(result: Result<T, Failure>) -> Response<T> {
    Response::new(match result {
        Ok(r) => r.with_status(status::ok()),
        Err(f) => T::default().with_status(f.status()),
    })
}

/// Partitions of a collection in partition key mode when the request names no number
/// (Milvus's default).
const DEFAULT_KEY_PARTITIONS: i64 = 16;

/// The resource group Milvus reports every replica in (Sluice has no resource groups).
const DEFAULT_RESOURCE_GROUP: &str = "__default_resource_group";

/// Milvus's state of a Sluice compaction.
fn compaction_state(info: &v1::CompactionInfo) -> mc::CompactionState {
    if info.state == v1::CompactionState::Completed as i32 {
        mc::CompactionState::Completed
    } else {
        mc::CompactionState::Executing
    }
}

/// Milvus's plans of a Sluice compaction: one completed plan per segment rewritten so far (in
/// place: source and target are the same segment), from the vchannels done with it.
fn compaction_plans(
    info: &v1::CompactionInfo,
) -> impl Iterator<Item = mm::CompactionMergeInfo> + '_ {
    info.done.iter().flat_map(move |d| {
        d.segment_ids.iter().map(move |&s| mm::CompactionMergeInfo {
            sources: vec![s],
            target: s,
            targets: vec![s],
            trigger_id: info.compaction_id,
            collection_id: info.collection_id,
            channel: d.vchannel.clone(),
            r#type: mc::CompactionType::Single as i32,
            state: mc::CompactionTaskState::Completed as i32,
            ..Default::default()
        })
    })
}

/// Milvus's id of replica `replica` of a collection: unique across collections (a collection
/// has at most 16 replicas).
fn replica_id(collection_id: i64, replica: u32) -> i64 {
    collection_id
        .wrapping_mul(16)
        .wrapping_add(i64::from(replica))
}

/// Sluice read options for a Milvus consistency level. An iterator's pages (`params` hold
/// `iterator: true`) read as of its guarantee timestamp: pymilvus pins every page to the
/// `session_ts` of its first answer, so that rows written meanwhile do not shift the pages.
fn read_options(level: i32, guarantee: u64, params: &[KeyValuePair]) -> v1::ReadOptions {
    let consistency = match mc::ConsistencyLevel::try_from(level) {
        Ok(mc::ConsistencyLevel::Strong) => v1::ConsistencyLevel::Strong,
        Ok(mc::ConsistencyLevel::Session) => v1::ConsistencyLevel::Session,
        Ok(mc::ConsistencyLevel::Eventually) => v1::ConsistencyLevel::Eventually,
        _ => v1::ConsistencyLevel::Bounded,
    };
    let iterator = param(params, "iterator").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    v1::ReadOptions {
        consistency: consistency as i32,
        guarantee_timestamp: guarantee,
        mvcc_timestamp: if iterator { guarantee } else { 0 },
        ..Default::default()
    }
}

/// A page of pymilvus's search iterator (v2): `search_iter_v2` set, the page size in
/// `search_iter_batch_size`, and after the first page the score of the last hit returned so far
/// in `search_iter_last_bound` — the page is the nearest hits strictly past it (and within
/// `radius` / `range_filter` when given). The pages read
/// one snapshot (the first's session_ts, see [`read_options`]). Hits tied with the bound that
/// did not fit in the previous page are not returned (as in Milvus), and an iterator reaches
/// at most 16384 hits deep (as a range search).
#[derive(Clone, Debug)]
struct IteratorV2 {
    batch: u64,
    last_bound: Option<f32>,
    /// The iterator's id (`search_iter_id`), set from the second page on.
    token: Option<String>,
}

impl IteratorV2 {
    fn of(p: &[KeyValuePair]) -> Result<Option<IteratorV2>, Failure> {
        if !param(p, "search_iter_v2").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let batch = match param(p, "search_iter_batch_size").or_else(|| param(p, "topk")) {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|b| (1..=16384).contains(b))
                .ok_or_else(|| {
                    Failure::invalid(format!(
                        "search_iter_batch_size {v:?}: a whole number from 1 to 16384"
                    ))
                })?,
            None => return Err(Failure::invalid("a search iterator needs a batch size")),
        };
        let last_bound = match param(p, "search_iter_last_bound").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|b| b.is_finite())
                    .ok_or_else(|| {
                        Failure::invalid(format!("search_iter_last_bound {v:?}: a number"))
                    })?,
            ),
        };
        let token = param(p, "search_iter_id")
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Ok(Some(IteratorV2 {
            batch,
            last_bound,
            token,
        }))
    }

    /// The hits a page may hold: those of `given` (a range search's), or every hit, strictly
    /// past the last bound.
    fn range(&self, metric: v1::MetricType, given: Option<Range>) -> Range {
        let ascending = smaller_is_nearer(metric);
        let mut range = given.unwrap_or(Range {
            far: if ascending {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            },
            near: None,
            ascending,
        });
        if let Some(b) = self.last_bound {
            let past = if ascending {
                b.next_up()
            } else {
                b.next_down()
            };
            range.near = Some(match range.near {
                None => past,
                Some(n) if ascending => n.max(past),
                Some(n) => n.min(past),
            });
        }
        range
    }
}

/// A grouped search (Milvus's `group_by_field`): at most `size` hits per value of `field`, for
/// `limit` groups; groups in the order of their nearest hit, hits nearest first within each.
#[derive(Clone, Debug)]
struct Grouping {
    field: String,
    size: usize,
}

/// Most hits per group.
const MAX_GROUP_SIZE: usize = 1024;

impl Grouping {
    fn of(c: &Collection, p: &[mc::KeyValuePair]) -> Result<Option<Grouping>, Failure> {
        let Some(field) = param(p, "group_by_field").filter(|g| !g.is_empty()) else {
            return Ok(None);
        };
        let f = c
            .schema
            .fields
            .iter()
            .find(|f| f.name == field && !f.is_dynamic)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "group_by_field {field:?} is not a field of the collection"
                ))
            })?;
        if !matches!(
            DataType::try_from(f.data_type),
            Ok(DataType::Bool | DataType::Int32 | DataType::Int64 | DataType::Varchar)
        ) {
            return Err(Failure::invalid(format!(
                "group_by_field {field:?}: only BOOL, integer and VARCHAR fields group results"
            )));
        }
        let size = match param(p, "group_size").filter(|s| !s.is_empty()) {
            None => 1,
            Some(s) => match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_GROUP_SIZE).contains(&n) => n,
                _ => {
                    return Err(Failure::invalid(format!(
                        "group_size {s:?}: 1 to {MAX_GROUP_SIZE}"
                    )));
                }
            },
        };
        // strict_group_size asks to fill every group as far as the collection allows: groups
        // are filled from every hit the search returns, whichever it says.
        if let Some(v) = param(p, "strict_group_size")
            && !matches!(v.to_ascii_lowercase().as_str(), "" | "true" | "false")
        {
            return Err(Failure::invalid(format!(
                "strict_group_size {v:?}: true or false"
            )));
        }
        Ok(Some(Grouping {
            field: field.to_owned(),
            size,
        }))
    }

    /// The rows of `batch` (hits nearest first, those in `run` eligible) a grouped answer
    /// holds: past the first `offset` groups, `limit` groups, grouped.
    fn pick(
        &self,
        batch: &RecordBatch,
        run: std::ops::Range<usize>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<usize>, Failure> {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Int32Type, Int64Type};
        let column = batch.column_by_name(&self.field).ok_or_else(|| {
            Failure::unexpected(format!("no column {:?} in the hits", self.field))
        })?;
        let key = |i: usize| -> Option<String> {
            if column.is_null(i) {
                return None;
            }
            Some(match column.data_type() {
                arrow_schema::DataType::Int32 => {
                    column.as_primitive::<Int32Type>().value(i).to_string()
                }
                arrow_schema::DataType::Int64 => {
                    column.as_primitive::<Int64Type>().value(i).to_string()
                }
                arrow_schema::DataType::Boolean => column.as_boolean().value(i).to_string(),
                _ => column.as_string::<i32>().value(i).to_owned(),
            })
        };
        let wanted = offset + limit;
        // Groups in the order of their nearest hit; where each key's group is.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut at: HashMap<Option<String>, usize> = HashMap::new();
        let mut full = 0;
        for i in run {
            let k = key(i);
            match at.get(&k).copied() {
                Some(g) if groups[g].len() < self.size => {
                    groups[g].push(i);
                    full += usize::from(groups[g].len() == self.size);
                }
                Some(_) => {}
                None if groups.len() < wanted => {
                    at.insert(k, groups.len());
                    groups.push(vec![i]);
                    full += usize::from(self.size == 1);
                }
                None => {}
            }
            if full == wanted {
                break;
            }
        }
        Ok(groups.into_iter().skip(offset).flatten().collect())
    }
}

/// A range search's bounds (Milvus's `radius` and `range_filter` search parameters): a hit is
/// kept when its distance is in `range_filter <= d < radius` (L2) or its similarity in
/// `radius < s <= range_filter` (IP, COSINE).
#[derive(Clone, Copy, Debug)]
struct Range {
    /// The far bound (`radius`), excluded.
    far: f32,
    /// The near bound (`range_filter`), included.
    near: Option<f32>,
    /// Smaller scores are nearer (L2).
    ascending: bool,
}

impl Range {
    fn of(
        params: &serde_json::Map<String, Value>,
        metric: v1::MetricType,
    ) -> Result<Option<Range>, Failure> {
        let bound = |key: &str| -> Result<Option<f32>, Failure> {
            let Some(v) = params.get(key) else {
                return Ok(None);
            };
            let x = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            match x {
                Some(x) if x.is_finite() => Ok(Some(x as f32)),
                _ => Err(Failure::invalid(format!(
                    "search parameter {key} is {v}: a number"
                ))),
            }
        };
        let (radius, range_filter) = (bound("radius")?, bound("range_filter")?);
        let Some(far) = radius else {
            if range_filter.is_some() {
                return Err(Failure::invalid("range_filter needs a radius"));
            }
            return Ok(None);
        };
        let ascending = smaller_is_nearer(metric);
        if let Some(near) = range_filter
            && (if ascending { near >= far } else { near <= far })
        {
            return Err(Failure::invalid(format!(
                "range_filter {near} must be {} radius {far} for this metric",
                if ascending { "below" } else { "above" }
            )));
        }
        Ok(Some(Range {
            far,
            near: range_filter,
            ascending,
        }))
    }

    fn contains_far(&self, s: f32) -> bool {
        if self.ascending {
            s < self.far
        } else {
            s > self.far
        }
    }

    fn past_near(&self, s: f32) -> bool {
        self.near
            .is_none_or(|n| if self.ascending { s >= n } else { s <= n })
    }

    /// `[first, end)`: the hits of `scores` (nearest first) in range.
    fn run(&self, scores: &[f32]) -> (usize, usize) {
        let first = scores
            .iter()
            .position(|&s| self.past_near(s))
            .unwrap_or(scores.len());
        let end = first
            + scores[first..]
                .iter()
                .take_while(|&&s| self.contains_far(s))
                .count();
        (first, end)
    }
}

/// The parameters a vector index type takes, with their least and most values; `None`: a type
/// Sluice does not take. IVF_FLAT, IVF_SQ8, IVF_PQ, SCANN and DISKANN are answered with Sluice's
/// HNSW (built with the node's M and efConstruction): their parameters are checked as Milvus
/// checks them and described back, and shape nothing.
fn index_parameters(index_type: &str) -> Option<&'static [(&'static str, u64, u64)]> {
    const HNSW: &[(&str, u64, u64)] = &[
        ("M", 2, index::MAX_M as u64),
        ("efConstruction", 1, index::MAX_EF_CONSTRUCTION as u64),
    ];
    const NLIST: (&str, u64, u64) = ("nlist", 1, 65_536);
    match index_type {
        "AUTOINDEX" | "FLAT" | "DISKANN" => Some(&[]),
        "HNSW" => Some(HNSW),
        "IVF_FLAT" | "IVF_SQ8" | "SCANN" => Some(&[NLIST]),
        "IVF_PQ" => Some(&[NLIST, ("m", 1, 65_536), ("nbits", 1, 16)]),
        _ => None,
    }
}

/// The index to record for a vector index of `index_type` (upper case) with `metric_type`
/// (COSINE when not given) and parameters `given`, each checked: `{"index_type",
/// "metric_type", "params"}`.
fn vector_index(
    index_type: &str,
    metric_type: Option<&str>,
    given: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, Failure> {
    let Some(allowed) = index_parameters(index_type) else {
        return Err(Failure::unsupported(format!(
            "index type {index_type} (Sluice has AUTOINDEX, HNSW and FLAT, and answers \
             IVF_FLAT, IVF_SQ8, IVF_PQ, SCANN and DISKANN with HNSW)"
        )));
    };
    let metric_type = metric_type
        .filter(|m| !m.is_empty())
        .unwrap_or("COSINE")
        .to_ascii_uppercase();
    metric(&metric_type)?;
    let mut params = serde_json::Map::new();
    for (key, value) in given {
        let Some(&(_, least, most)) = allowed.iter().find(|(k, ..)| k == key) else {
            let takes: Vec<&str> = allowed.iter().map(|(k, ..)| *k).collect();
            return Err(Failure::unsupported(format!(
                "index parameter {key:?} with index type {index_type} (it takes {})",
                if takes.is_empty() {
                    "none".to_owned()
                } else {
                    takes.join(", ")
                }
            )));
        };
        let n = whole_number(key, value)?;
        if !(least..=most).contains(&n) {
            return Err(Failure::invalid(format!(
                "index parameter {key} is {n}: {least} to {most}"
            )));
        }
        params.insert(key.clone(), n.into());
    }
    let mut index = serde_json::Map::new();
    index.insert("index_type".into(), index_type.into());
    index.insert("metric_type".into(), metric_type.into());
    index.insert("params".into(), Value::Object(params));
    Ok(index)
}

/// The index to record for a binary vector field: BIN_FLAT (exact), BIN_IVF_FLAT (an HNSW
/// graph, as IVF indexes of float vectors are) or AUTOINDEX, by HAMMING (the default) or
/// JACCARD (always searched exactly); the other binary metrics are refused.
fn binary_index(
    index_type: &str,
    metric_type: Option<&str>,
    given: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, Failure> {
    let metric_type = metric_type
        .filter(|m| !m.is_empty())
        .unwrap_or("HAMMING")
        .to_ascii_uppercase();
    if metric_type != "HAMMING" && metric_type != "JACCARD" {
        return Err(Failure::unsupported(format!(
            "metric type {metric_type} for a binary vector (HAMMING and JACCARD are)"
        )));
    }
    let float_type = match index_type {
        "BIN_FLAT" => "FLAT",
        "BIN_IVF_FLAT" => "IVF_FLAT",
        "AUTOINDEX" => "AUTOINDEX",
        other => {
            return Err(Failure::unsupported(format!(
                "index type {other} for a binary vector (BIN_FLAT, BIN_IVF_FLAT and AUTOINDEX \
                 are)"
            )));
        }
    };
    let mut index = vector_index(float_type, Some("L2"), given)?;
    index.insert("index_type".into(), index_type.into());
    index.insert("metric_type".into(), metric_type.into());
    Ok(index)
}

/// A search's query vectors, of the kind of the field searched.
enum QueryVectors {
    Dense(Vec<v1::FloatVector>),
    /// Each laid out as [`sluice_types::sparse`] describes.
    Sparse(Vec<Vec<u8>>),
    /// Text queries of a BM25 function's output field.
    Text(Vec<String>),
}

impl QueryVectors {
    fn len(&self) -> usize {
        match self {
            QueryVectors::Dense(v) => v.len(),
            QueryVectors::Sparse(v) => v.len(),
            QueryVectors::Text(v) => v.len(),
        }
    }
}

/// A sparse index's or search's `drop_ratio_build` / `drop_ratio_search`: 0 (the default) up to
/// but not including 1, a number or its text.
fn drop_ratio(params: &serde_json::Map<String, Value>, key: &str) -> Result<f64, Failure> {
    let Some(v) = params.get(key) else {
        return Ok(0.0);
    };
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (0.0..1.0).contains(&n) => Ok(n),
        _ => Err(Failure::invalid(format!(
            "{key} is {v}: a number from 0 up to (not including) 1"
        ))),
    }
}

/// The index to record for a SPARSE_FLOAT_VECTOR field: SPARSE_INVERTED_INDEX, SPARSE_WAND or
/// AUTOINDEX, by IP (the default) — or, on a BM25 function's output (`bm25`), by BM25 with its
/// `bm25_k1` and `bm25_b` (the searches' parameters) — with `drop_ratio_build` and
/// `inverted_index_algo` checked and described back. Sluice searches every weight of the rows
/// holding a query's indices, so neither of those shapes an answer.
fn sparse_index(
    index_type: &str,
    metric_type: Option<&str>,
    given: &serde_json::Map<String, Value>,
    bm25: bool,
) -> Result<serde_json::Map<String, Value>, Failure> {
    if !matches!(
        index_type,
        "SPARSE_INVERTED_INDEX" | "SPARSE_WAND" | "AUTOINDEX"
    ) {
        return Err(Failure::invalid(format!(
            "index type {index_type} does not index a sparse float vector field (it takes \
             SPARSE_INVERTED_INDEX, SPARSE_WAND or AUTOINDEX)"
        )));
    }
    let metric_type = metric_type
        .filter(|m| !m.is_empty())
        .unwrap_or(if bm25 { "BM25" } else { "IP" })
        .to_ascii_uppercase();
    match (metric_type.as_str(), bm25) {
        ("IP", false) | ("BM25", true) => {}
        (_, false) => {
            return Err(Failure::invalid(format!(
                "metric type {metric_type} for a sparse float vector field: it is searched by IP \
                 (BM25 is for a BM25 function's output field)"
            )));
        }
        (_, true) => {
            return Err(Failure::invalid(format!(
                "metric type {metric_type} for a BM25 function's output field: it is searched \
                 by BM25"
            )));
        }
    }
    let (mut k1, mut b) = (
        sluice_types::text::DEFAULT_BM25_K1,
        sluice_types::text::DEFAULT_BM25_B,
    );
    let mut params = serde_json::Map::new();
    for (key, value) in given {
        match key.as_str() {
            "bm25_k1" | "bm25_b" if bm25 => {
                let x = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| Failure::invalid(format!("{key} is {value}: a number")))?;
                if key == "bm25_k1" {
                    k1 = x as f32;
                } else {
                    b = x as f32;
                }
                sluice_types::text::check_bm25_params(k1, b).map_err(Failure::invalid)?;
                params.insert(key.clone(), x.into());
                continue;
            }
            "drop_ratio_build" => {
                params.insert(key.clone(), drop_ratio(given, key)?.into());
                continue;
            }
            "inverted_index_algo" => {
                let algo = value.as_str().unwrap_or_default();
                if !matches!(algo, "TAAT_NAIVE" | "DAAT_WAND" | "DAAT_MAXSCORE") {
                    return Err(Failure::invalid(format!(
                        "inverted_index_algo is {value}: TAAT_NAIVE, DAAT_WAND or DAAT_MAXSCORE"
                    )));
                }
            }
            _ => {
                return Err(Failure::unsupported(format!(
                    "index parameter {key:?} with index type {index_type} (it takes \
                     drop_ratio_build, inverted_index_algo{})",
                    if bm25 { ", bm25_k1, bm25_b" } else { "" }
                )));
            }
        }
        params.insert(key.clone(), value.clone());
    }
    let mut index = serde_json::Map::new();
    index.insert("index_type".into(), index_type.into());
    index.insert("metric_type".into(), metric_type.into());
    index.insert("params".into(), Value::Object(params));
    index.insert(SPARSE_INDEX.into(), true.into());
    Ok(index)
}

/// Marks a recorded index as one of a sparse vector field (no graph is built for it).
const SPARSE_INDEX: &str = "sparse";

/// An index parameter that must be a whole number (pymilvus sends numbers or their text).
fn whole_number(key: &str, v: &Value) -> Result<u64, Failure> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| Failure::invalid(format!("index parameter {key} is {v}: a whole number")))
}

/// Whether a metric's scores are distances (smaller is nearer): L2 (HAMMING too) and JACCARD.
fn smaller_is_nearer(metric: v1::MetricType) -> bool {
    matches!(metric, v1::MetricType::L2 | v1::MetricType::Jaccard)
}

fn metric(name: &str) -> Result<v1::MetricType, Failure> {
    Ok(match name.to_ascii_uppercase().as_str() {
        // Binary vectors are held as one 0 or 1 per bit: their squared L2 distance is the
        // number of bits that differ.
        "L2" | "HAMMING" => v1::MetricType::L2,
        "JACCARD" => v1::MetricType::Jaccard,
        "IP" => v1::MetricType::Ip,
        "COSINE" => v1::MetricType::Cosine,
        "BM25" => v1::MetricType::Bm25,
        other => return Err(Failure::unsupported(format!("metric type {other:?}"))),
    })
}

fn decode_rows(bytes: &[u8]) -> Result<Vec<RecordBatch>, Failure> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    sluice_storage::rows::read_stream_bytes(&bytes, usize::MAX)
        .map_err(|e| Failure::unexpected(format!("rows from the query service: {e}")))
}

/// Which Sluice fields to read for Milvus `output_fields`, and the names to report.
fn output_fields(c: &Collection, asked: &[String]) -> Result<(Vec<String>, Vec<String>), Failure> {
    let mut fields: Vec<String> = Vec::new();
    let mut report: Vec<String> = Vec::new();
    let add = |f: &str, fields: &mut Vec<String>| {
        if !fields.iter().any(|x| x == f) {
            fields.push(f.to_owned());
        }
    };
    for name in asked {
        if name == "*" {
            // A BM25 function's output is computed for search, never returned (as in Milvus).
            for f in c.schema.fields.iter().filter(|f| !f.is_function_output) {
                add(&f.name, &mut fields);
                report.push(if f.is_dynamic {
                    MILVUS_DYNAMIC.to_owned()
                } else {
                    f.name.clone()
                });
            }
        } else if name == MILVUS_DYNAMIC {
            add(DYNAMIC_FIELD, &mut fields);
            report.push(name.clone());
        } else if sluice_types::schema::bm25_of(&c.schema, name).is_some() {
            return Err(Failure::invalid(format!(
                "not allowed to retrieve raw data of field {name}: the output of a BM25 \
                 function is computed for search"
            )));
        } else if c
            .schema
            .fields
            .iter()
            .any(|f| &f.name == name && !f.is_dynamic)
        {
            add(name, &mut fields);
            report.push(name.clone());
        } else if sluice_types::schema::dynamic_field(&c.schema).is_some() {
            add(DYNAMIC_FIELD, &mut fields);
            report.push(name.clone());
        } else {
            return Err(Failure::invalid(format!("field {name} not exist")));
        }
    }
    Ok((fields, report))
}

impl MilvusFront {
    /// A front reaching Sluice at `endpoint` (a standalone server, or a streaming node whose
    /// coordinator address is `coord`), appending through `client`.
    /// With `authorization`, every call is authenticated and authorized (see [`crate::rbac`]).
    pub fn connect(
        coord: &str,
        query: &str,
        client: Client,
        authorization: bool,
    ) -> Result<MilvusFront, ClientError> {
        let channel = sluice_proto::Security::process()
            .lazy_channel(coord)
            .map_err(|e| ClientError::new(sluice_types::ErrorCode::InvalidArgument, e))?;
        let coord_client = CoordinatorClient::new(channel);
        Ok(MilvusFront {
            rbac: Arc::new(crate::rbac::Rbac::new(authorization, coord_client.clone())),
            coord: coord_client,
            tso: CoordClient::connect(coord)?,
            client,
            query: QueryClient::connect(query)?,
            limits: Arc::default(),
            rates: Arc::default(),
            stored: Arc::default(),
            stored_in: Arc::default(),
        })
    }

    /// The gRPC service; a method it does not have is UNIMPLEMENTED with a message naming it.
    pub fn server(self) -> crate::unsupported::Named<MilvusServiceServer<MilvusFront>> {
        crate::unsupported::Named(
            MilvusServiceServer::new(self)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
    }

    /// The name of every collection.
    async fn collection_names(&self) -> Result<Vec<String>, Failure> {
        let list = self
            .coord
            .clone()
            .list_collections(v1::ListCollectionsRequest {})
            .await
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), ""))?;
        Ok(list
            .into_inner()
            .collections
            .into_iter()
            .filter_map(|c| c.schema.map(|s| s.name))
            .collect())
    }

    /// Every database, from the catalog.
    async fn databases(&self) -> Result<Vec<v1::DatabaseInfo>, Failure> {
        self.coord
            .clone()
            .list_databases(v1::ListDatabasesRequest {})
            .await
            .map(|r| r.into_inner().databases)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), ""))
    }

    /// Refuses a call of `kind` costing `cost` on collection `c` when its rate limit says so
    /// (see [`crate::rate`]).
    fn throttle(&self, c: &Collection, kind: crate::rate::Kind, cost: f64) -> Result<(), Failure> {
        let rate = crate::rate::limit(c.props(), crate::properties::KEPT, kind);
        self.rates.take(c.info.collection_id, kind, rate, cost)
    }

    /// Bytes of collection `c`'s flushed segment files, counted at most [`STORED_FOR`] ago.
    async fn stored_bytes(&self, c: &Collection) -> Result<u64, Failure> {
        let id = c.info.collection_id;
        if let Some((at, bytes)) = self.stored.lock().get(&id)
            && at.elapsed() < STORED_FOR
        {
            return Ok(*bytes);
        }
        let bytes = self
            .segment_manifests(c)
            .await?
            .iter()
            .filter_map(|m| m.data.as_ref())
            .map(|f| f.bytes)
            .sum();
        let mut stored = self.stored.lock();
        if stored.len() >= 4096 {
            // Dropped collections' counts go.
            stored.retain(|_, (at, _)| at.elapsed() < STORED_FOR);
        }
        stored.insert(id, (std::time::Instant::now(), bytes));
        Ok(bytes)
    }

    /// Bytes of the flushed segment files of database `db`'s collections, counted at most
    /// [`STORED_FOR`] ago.
    async fn stored_bytes_in(&self, db: &str) -> Result<u64, Failure> {
        if let Some((at, bytes)) = self.stored_in.lock().get(db)
            && at.elapsed() < STORED_FOR
        {
            return Ok(*bytes);
        }
        let mut held = 0;
        for other in self.collection_names().await? {
            if database::database_of(&other) == db {
                held += self.stored_bytes(&self.collection(&other).await?).await?;
            }
        }
        let mut stored_in = self.stored_in.lock();
        if stored_in.len() >= 1024 {
            stored_in.retain(|_, (at, _)| at.elapsed() < STORED_FOR);
        }
        stored_in.insert(db.to_owned(), (std::time::Instant::now(), held));
        Ok(held)
    }

    /// Refuses an insert or upsert into collection `c` while it, or its database, holds more
    /// flushed segment files than its disk quota.
    async fn check_disk_quota(&self, c: &Collection) -> Result<(), Failure> {
        let name = &c.schema.name;
        if let Some(quota) = crate::properties::disk_quota_mb(c.props()) {
            let held = self.stored_bytes(c).await? as f64 / MB;
            if held > quota {
                return Err(Failure::disk_quota(format!(
                    "collection {} holds {held:.3} MB, over its \
                     collection.diskProtection.diskQuota.mb = {quota}",
                    database::local(name)
                )));
            }
        }
        let db = database::database_of(name);
        let Some(quota) = self.database_limits(db).await?.disk_quota_mb else {
            return Ok(());
        };
        let held = self.stored_bytes_in(db).await? as f64 / MB;
        if held > quota {
            return Err(Failure::disk_quota(format!(
                "database {db} holds {held:.3} MB, over its {} = {quota}",
                sluice_types::database::DISK_QUOTA_MB
            )));
        }
        Ok(())
    }

    /// Why this front cannot serve (empty: it can): the catalog or the timestamp oracle do not
    /// answer.
    async fn unhealthy(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Err(f) = self.collection_names().await {
            reasons.push(format!("the catalog does not answer: {}", f.reason()));
        }
        if let Err(e) = self.tso.allocate_timestamps(1).await {
            reasons.push(format!("the timestamp oracle does not answer: {e}"));
        }
        reasons
    }

    /// DescribeIndex of a collection's index by field or name, asked with a call's `metadata`
    /// (its database and caller): its descriptions, or the failure's status.
    async fn described_index(
        &self,
        metadata: tonic::metadata::MetadataMap,
        db_name: String,
        collection_name: String,
        field_name: String,
        index_name: String,
    ) -> Result<Result<Vec<mm::IndexDescription>, Status>, tonic::Status> {
        let mut asked = Request::new(mm::DescribeIndexRequest {
            db_name,
            collection_name,
            field_name,
            index_name,
            ..Default::default()
        });
        *asked.metadata_mut() = metadata;
        let d = MilvusService::describe_index(self, asked)
            .await?
            .into_inner();
        Ok(match d.status {
            Some(s) if s.code != 0 => Err(s),
            _ => Ok(d.index_descriptions),
        })
    }

    /// Checks that the caller of `r`, a call in database `database`, may make it (see
    /// [`crate::rbac`]); returns the caller when authorization is on.
    async fn authorize<R: crate::rbac::Privileged>(
        &self,
        r: &Request<R>,
        database: &str,
    ) -> Result<Option<String>, tonic::Status> {
        let database = if database.is_empty() {
            sluice_types::schema::DEFAULT_DATABASE
        } else {
            database
        };
        self.rbac
            .check(r.metadata(), database, R::NEEDS, &r.get_ref().objects())
            .await
    }

    /// Refuses a call doing `access` in database `name` when its properties deny it (read at
    /// most [`database::LIMITS_FOR`] ago).
    async fn allowed(&self, name: &str, access: database::Access) -> Result<(), Failure> {
        database::check_access(name, &self.database_limits(name).await?, access)
    }

    /// What database `name`'s properties set, read at most [`database::LIMITS_FOR`] ago (a
    /// database that does not exist sets nothing: the call fails on its collection).
    async fn database_limits(&self, name: &str) -> Result<DatabaseLimits, Failure> {
        let all = match self.limits.fresh() {
            Some(all) => all,
            None => {
                let all: HashMap<_, _> = self
                    .databases()
                    .await?
                    .into_iter()
                    .map(|d| {
                        // The catalog writes only readable values.
                        let limits =
                            DatabaseLimits::from_properties(&d.properties).unwrap_or_default();
                        (d.name, limits)
                    })
                    .collect();
                let all = Arc::new(all);
                self.limits.put(all.clone());
                all
            }
        };
        Ok(all.get(name).copied().unwrap_or_default())
    }

    /// Database `name` (empty: `default`), or DatabaseNotFound.
    async fn database(&self, name: &str) -> Result<v1::DatabaseInfo, Failure> {
        let name = if name.is_empty() {
            sluice_types::schema::DEFAULT_DATABASE
        } else {
            name
        };
        self.databases()
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Failure::database_not_found(name))
    }

    async fn collection(&self, name: &str) -> Result<Collection, Failure> {
        if name.is_empty() {
            return Err(Failure::invalid("collection name should not be empty"));
        }
        self.describe(
            v1::describe_collection_request::Which::Name(name.to_owned()),
            name,
        )
        .await
    }

    /// The collection of a request naming it by name or, when the name is empty, by id.
    async fn collection_named_or(&self, name: &str, id: i64) -> Result<Collection, Failure> {
        if !name.is_empty() || id == 0 {
            return self.collection(name).await;
        }
        self.describe(
            v1::describe_collection_request::Which::CollectionId(id),
            &id.to_string(),
        )
        .await
    }

    async fn describe(
        &self,
        which: v1::describe_collection_request::Which,
        label: &str,
    ) -> Result<Collection, Failure> {
        let database = match &which {
            v1::describe_collection_request::Which::Name(n) => database::database_of(n).to_owned(),
            v1::describe_collection_request::Which::CollectionId(_) => String::new(),
        };
        let described = self
            .coord
            .clone()
            .describe_collection(v1::DescribeCollectionRequest { which: Some(which) })
            .await;
        let info = match described {
            Ok(info) => info.into_inner(),
            Err(s) => {
                let f = Failure::from_client(&ClientError::from_status(&s), label);
                // A collection of a database that does not exist: say which is missing.
                if f.is_collection_not_found()
                    && !database::is_default(&database)
                    && self.database(&database).await.is_err()
                {
                    return Err(Failure::database_not_found(&database));
                }
                return Err(f);
            }
        };
        let schema = info
            .schema
            .clone()
            .ok_or_else(|| Failure::unexpected("the catalog returned no schema"))?;
        Ok(Collection { info, schema })
    }

    /// The collection's segments in Parquet (the coordinator's ListSegments), by segment id.
    async fn segment_manifests(
        &self,
        c: &Collection,
    ) -> Result<Vec<sluice_types::message::pb::SegmentManifest>, Failure> {
        self.coord
            .clone()
            .list_segments(v1::ListSegmentsRequest {
                collection_id: c.info.collection_id,
            })
            .await
            .map(|r| r.into_inner().segments)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))
    }

    /// Starts a compaction of the collection (the coordinator's Compact).
    async fn compact(&self, c: &Collection) -> Result<v1::CompactionInfo, Failure> {
        self.coord
            .clone()
            .compact(v1::CompactRequest {
                collection_id: c.info.collection_id,
            })
            .await
            .map(Response::into_inner)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))
    }

    /// A compaction and its progress (the coordinator's GetCompaction).
    async fn compaction(&self, id: i64) -> Result<v1::CompactionInfo, Failure> {
        self.coord
            .clone()
            .get_compaction(v1::GetCompactionRequest { compaction_id: id })
            .await
            .map(Response::into_inner)
            .map_err(|s| Failure::invalid(format!("compaction {id}: {}", s.message())))
    }

    /// The compactions of the collection still kept, oldest first (the coordinator's
    /// ListCompactions).
    async fn compactions(&self, c: &Collection) -> Result<Vec<v1::CompactionInfo>, Failure> {
        self.coord
            .clone()
            .list_compactions(v1::ListCompactionsRequest {
                collection_id: c.info.collection_id,
            })
            .await
            .map(|r| r.into_inner().compactions)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))
    }

    /// Where the collection is served from (the coordinator's ListReplicas).
    async fn placements(&self, c: &Collection) -> Result<v1::ListReplicasResponse, Failure> {
        self.coord
            .clone()
            .list_replicas(v1::ListReplicasRequest {
                collection_id: c.info.collection_id,
            })
            .await
            .map(Response::into_inner)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))
    }

    async fn alter(
        &self,
        name: &str,
        set: HashMap<String, String>,
        delete: Vec<String>,
    ) -> Result<(), Failure> {
        self.coord
            .clone()
            .alter_collection_properties(v1::AlterCollectionPropertiesRequest {
                name: name.to_owned(),
                set,
                delete_keys: delete,
            })
            .await
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), name))?;
        Ok(())
    }

    /// Refuses partition DDL on a collection in partition key mode (Milvus's rule).
    async fn partition_ddl_allowed(&self, name: &str) -> Result<(), Failure> {
        if self.collection(name).await?.partition_key().is_some() {
            return Err(Failure::invalid(
                "disable create/drop/load/release partition if partition key mode is used",
            ));
        }
        Ok(())
    }

    /// `call` on the catalog about the existing collection `name`.
    async fn catalog<T, F, Fut>(&self, name: &str, call: F) -> Result<T, Failure>
    where
        F: FnOnce(CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, tonic::Status>>,
    {
        self.collection(name).await?;
        call(self.coord.clone())
            .await
            .map(Response::into_inner)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), name))
    }

    /// Appends `batch` (rows of `c`) to the collection's shards by primary key; the newest
    /// timestamp.
    async fn insert_rows(
        &self,
        c: &Collection,
        partition_id: i64,
        batch: &RecordBatch,
    ) -> Result<u64, Failure> {
        self.append_by_shard(c, batch, |part, body| {
            MutableMessage::builder(InsertHeader {
                collection_id: c.info.collection_id,
                partitions: vec![PartitionSegmentAssignment {
                    partition_id,
                    rows: part.num_rows() as u64,
                    binary_size: body.len() as u64,
                    segment_id: 0,
                }],
            })
        })
        .await
    }

    /// Appends deletes of `keys` (a primary key column of `c`) to their shards; the newest
    /// timestamp (0 when there was nothing to delete).
    async fn delete_keys(&self, c: &Collection, keys: &ArrayRef) -> Result<u64, Failure> {
        if keys.is_empty() {
            return Ok(0);
        }
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            &c.pk()?.name,
            keys.data_type().clone(),
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![keys.clone()])
            .map_err(|e| Failure::unexpected(e.to_string()))?;
        self.append_by_shard(c, &batch, |part, _| {
            MutableMessage::builder(DeleteHeader {
                collection_id: c.info.collection_id,
                rows: part.num_rows() as u64,
            })
        })
        .await
    }

    /// Splits `batch` (its primary key column and maybe more) by shard and appends each shard's
    /// rows, encoded as the body of the message `builder` starts from them; the newest timestamp.
    async fn append_by_shard(
        &self,
        c: &Collection,
        batch: &RecordBatch,
        builder: impl Fn(&RecordBatch, &[u8]) -> sluice_types::message::MessageBuilder,
    ) -> Result<u64, Failure> {
        let pk = c.pk()?.name.clone();
        let vchannels = c.vchannels()?;
        let shards = sluice_storage::rows::shards_of(batch, &pk, vchannels.len())
            .map_err(|e| Failure::invalid(e.to_string()))?;
        let mut appends = Vec::new();
        for (shard, v) in vchannels.iter().enumerate() {
            let mask = arrow_array::BooleanArray::from(
                shards.iter().map(|s| *s == shard).collect::<Vec<_>>(),
            );
            let part = arrow_select::filter::filter_record_batch(batch, &mask)
                .map_err(|e| Failure::unexpected(e.to_string()))?;
            if part.num_rows() == 0 {
                continue;
            }
            let body = sluice_storage::rows::encode_stream(std::slice::from_ref(&part))
                .map_err(|e| Failure::invalid(e.to_string()))?;
            let msg = builder(&part, &body)
                .vchannel(v)
                .payload(body)
                .build()
                .map_err(|e| Failure::invalid(e.to_string()))?;
            appends.push(self.client.append(msg));
        }
        let mut newest = 0;
        for r in futures::future::join_all(appends).await {
            let r = r.map_err(|e| Failure::from_client(&e, &c.schema.name))?;
            newest = newest.max(r.timestamp.0);
        }
        Ok(newest)
    }

    /// The primary keys of the rows of `c` (in `partition_ids`, all when empty) matching
    /// `filter`, as of now (strong).
    async fn keys_matching(
        &self,
        c: &Collection,
        filter: &str,
        partition_ids: Vec<i64>,
    ) -> Result<ArrayRef, Failure> {
        let r = self
            .query
            .query(v1::QueryRequest {
                collection: c.schema.name.clone(),
                filter: filter.to_owned(),
                partition_ids,
                output_fields: Vec::new(),
                limit: 0,
                read: Some(read_options(mc::ConsistencyLevel::Strong as i32, 0, &[])),
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::from_client(&e, &c.schema.name))?;
        crate::convert::column(c.pk()?, &decode_rows(&r.rows)?)
    }

    /// Loads collection `name` with `replicas` (Milvus's replica_number), keeping `released`
    /// of its partitions released (the others are loaded).
    async fn load(&self, name: &str, replicas: i32, released: Vec<i64>) -> Result<(), Failure> {
        // Written only when it changes: every quick create_collection loads its collection.
        if self.collection(name).await?.released() != released {
            self.set_released(name, released).await?;
        }
        // A load naming no replicas gets its collection's `collection.replica.number`, else
        // its database's `database.replica.number`.
        let replicas = match u32::try_from(replicas) {
            Ok(n) if n > 0 => n,
            _ => match crate::properties::replicas_of(self.collection(name).await?.props()) {
                Some(n) => n,
                None => {
                    let database = self.database(database::database_of(name)).await?;
                    DatabaseLimits::from_properties(&database.properties)
                        .unwrap_or_default()
                        .replicas
                        .unwrap_or(0)
                }
            },
        };
        let request = v1::LoadCollectionRequest {
            name: name.to_owned(),
            replicas,
        };
        self.catalog(
            name,
            |mut c| async move { c.load_collection(request).await },
        )
        .await
        .map(|_| ())
    }

    /// Records which partitions of collection `name` are released.
    async fn set_released(&self, name: &str, released: Vec<i64>) -> Result<(), Failure> {
        if released.is_empty() {
            return self
                .alter(name, HashMap::new(), vec![PROP_RELEASED.into()])
                .await;
        }
        let value =
            serde_json::to_string(&released).map_err(|e| Failure::unexpected(e.to_string()))?;
        self.alter(
            name,
            HashMap::from([(PROP_RELEASED.to_owned(), value)]),
            Vec::new(),
        )
        .await
    }

    /// Milvus's LoadPartitions: the partitions named are loaded; when the collection was
    /// released, it is loaded with only those.
    async fn do_load_partitions(&self, r: mm::LoadPartitionsRequest) -> Result<(), Failure> {
        self.partition_ddl_allowed(&r.collection_name).await?;
        let c = self.collection(&r.collection_name).await?;
        let named = c.named_partitions(&r.partition_names)?;
        let released: Vec<i64> = if c.released_now() {
            c.info.partitions.iter().map(|p| p.partition_id).collect()
        } else {
            c.released()
        };
        let released = released
            .into_iter()
            .filter(|id| !named.contains(id))
            .collect();
        self.load(&r.collection_name, r.replica_number, released)
            .await
    }

    /// Milvus's ReleasePartitions: reads skip the partitions named (naming one is
    /// PartitionNotLoaded) until they are loaded again; releasing every partition releases the
    /// collection.
    async fn do_release_partitions(&self, r: mm::ReleasePartitionsRequest) -> Result<(), Failure> {
        self.partition_ddl_allowed(&r.collection_name).await?;
        let c = self.collection(&r.collection_name).await?;
        let named = c.named_partitions(&r.partition_names)?;
        if c.released_now() {
            return Ok(());
        }
        let mut released = c.released();
        released.retain(|id| c.info.partitions.iter().any(|p| p.partition_id == *id));
        for id in named {
            if !released.contains(&id) {
                released.push(id);
            }
        }
        if released.len() < c.info.partitions.len() {
            return self.set_released(&r.collection_name, released).await;
        }
        let request = v1::ReleaseCollectionRequest {
            name: r.collection_name.clone(),
        };
        self.catalog(&r.collection_name, |mut c| async move {
            c.release_collection(request).await
        })
        .await?;
        self.set_released(&r.collection_name, Vec::new()).await
    }

    /// The aliases of collection `name` (`None`: of every collection), from the catalog.
    async fn alias_list(&self, name: Option<&str>) -> Result<Vec<v1::CollectionAlias>, Failure> {
        let request = v1::ListAliasesRequest {
            collection_name: name.unwrap_or_default().to_owned(),
        };
        self.coord
            .clone()
            .list_aliases(request)
            .await
            .map(|r| r.into_inner().aliases)
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), name.unwrap_or("")))
    }

    /// The aliases of collection `name`, as its database names them.
    async fn aliases(&self, name: &str) -> Result<Vec<String>, Failure> {
        Ok(self
            .alias_list(Some(name))
            .await?
            .iter()
            .map(|a| database::local(&a.alias).to_owned())
            .collect())
    }

    /// CreateAlias (`repoint` false) or AlterAlias.
    async fn set_alias(
        &self,
        alias: String,
        collection: String,
        repoint: bool,
    ) -> Result<(), Failure> {
        if alias.is_empty() {
            return Err(Failure::invalid("alias should not be empty"));
        }
        self.collection(&collection).await?;
        let mut coord = self.coord.clone();
        let answer = if repoint {
            coord
                .alter_alias(v1::AlterAliasRequest {
                    alias: alias.clone(),
                    collection_name: collection.clone(),
                })
                .await
        } else {
            coord
                .create_alias(v1::CreateAliasRequest {
                    alias: alias.clone(),
                    collection_name: collection.clone(),
                })
                .await
        };
        match answer {
            Ok(_) => Ok(()),
            Err(s) if s.message().contains("there is no alias") => {
                Err(Failure::alias_not_found(&alias))
            }
            Err(s) => Err(Failure::from_client(
                &ClientError::from_status(&s),
                &collection,
            )),
        }
    }

    /// CreateCollection in database `db` (`r`'s name is a Sluice name already).
    async fn do_create(&self, db: &str, r: mm::CreateCollectionRequest) -> Result<(), Failure> {
        let m = ms::CollectionSchema::decode(r.schema.as_slice())
            .map_err(|e| Failure::invalid(format!("the schema does not decode: {e}")))?;
        let name = if r.collection_name.is_empty() {
            database::sluice_name(db, &m.name)?
        } else {
            r.collection_name.clone()
        };
        if !database::is_default(db) {
            self.database(db).await?;
        }
        let shards = u32::try_from(r.shards_num.max(0)).unwrap_or(1);
        let (schema, mut props) = schema_to_sluice(&m, &name, shards)?;
        props.extend(crate::properties::to_sluice(&r.properties)?);
        props.insert(PROP_CONSISTENCY.into(), r.consistency_level.to_string());
        // Partition key mode: the partitions are the key's, `_default_0` … (16 unless asked).
        let partition_names = match props.contains_key(PROP_PARTITION_KEY) {
            false => Vec::new(),
            true => {
                let n = match r.num_partitions {
                    0 => DEFAULT_KEY_PARTITIONS,
                    n @ 1..=1024 => n,
                    n => {
                        return Err(Failure::invalid(format!(
                            "num_partitions {n}: 1 to 1024 in partition key mode"
                        )));
                    }
                };
                (0..n).map(|i| format!("_default_{i}")).collect()
            }
        };
        let name = schema.name.clone();
        self.coord
            .clone()
            .create_collection(v1::CreateCollectionRequest {
                schema: Some(schema),
                partition_names,
                properties: props,
            })
            .await
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &name))?;
        Ok(())
    }

    /// Milvus's AddCollectionField: a nullable scalar field added to the collection's schema.
    async fn do_add_field(&self, r: mm::AddCollectionFieldRequest) -> Result<(), Failure> {
        let c = self
            .collection_named_or(&r.collection_name, r.collection_id)
            .await?;
        let f = ms::FieldSchema::decode(r.schema.as_slice())
            .map_err(|e| Failure::invalid(format!("the field schema does not decode: {e}")))?;
        if f.is_dynamic || f.is_primary_key || f.is_function_output || f.is_clustering_key {
            return Err(Failure::invalid(format!(
                "field {:?}: only a nullable scalar field can be added to a collection",
                f.name
            )));
        }
        let mut narrow = match c.props().get(PROP_TYPES).map(|v| serde_json::from_str(v)) {
            Some(Ok(Value::Object(o))) => o,
            _ => serde_json::Map::new(),
        };
        let before = narrow.len();
        let field = field_to_sluice(&f, false, &mut narrow)?;
        if f.default_value.is_some() {
            return Err(Failure::unsupported(format!(
                "a default value for added field {:?} (rows written before it read null)",
                f.name
            )));
        }
        let mut properties = HashMap::new();
        if narrow.len() != before {
            properties.insert(PROP_TYPES.to_owned(), Value::Object(narrow).to_string());
        }
        self.coord
            .clone()
            .add_collection_field(v1::AddCollectionFieldRequest {
                name: c.schema.name.clone(),
                field: Some(field),
                properties,
            })
            .await
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))?;
        Ok(())
    }

    /// Milvus's TruncateCollection: the coordinator's TruncateCollection (every row goes, the
    /// partitions get new ids), then the released partitions recorded again under their new
    /// ids.
    /// RunAnalyzer: the terms of each text by the given analyzer, or by a collection field's.
    async fn do_run_analyzer(
        &self,
        r: mm::RunAnalyzerRequest,
    ) -> Result<Vec<mm::AnalyzerResult>, Failure> {
        if !r.analyzer_names.is_empty() {
            return Err(Failure::unsupported(
                "analyzer_names (multi-language analyzers)",
            ));
        }
        let params = if r.collection_name.is_empty() {
            r.analyzer_params
        } else {
            let c = self.collection(&r.collection_name).await?;
            let field = c
                .schema
                .fields
                .iter()
                .find(|f| f.name == r.field_name)
                .ok_or_else(|| Failure::invalid(format!("field {} not exist", r.field_name)))?;
            if !field.enable_analyzer {
                return Err(Failure::invalid(format!(
                    "field {} has no analyzer (enable_analyzer)",
                    r.field_name
                )));
            }
            field.analyzer_params.clone()
        };
        let analyzer = sluice_types::text::Analyzer::from_params(&params)
            .map_err(|e| Failure::invalid(e.to_string()))?;
        r.placeholder
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| Failure::invalid(format!("text {i} is not UTF-8")))?;
                let tokens = analyzer
                    .tokens(text)
                    .into_iter()
                    .map(|t| mm::AnalyzerToken {
                        hash: if r.with_hash {
                            sluice_types::text::term_id(&t.text)
                        } else {
                            0
                        },
                        start_offset: if r.with_detail { t.start as i64 } else { 0 },
                        end_offset: if r.with_detail { t.end as i64 } else { 0 },
                        position: if r.with_detail { t.position as i64 } else { 0 },
                        position_length: i64::from(r.with_detail),
                        token: t.text,
                    })
                    .collect();
                Ok(mm::AnalyzerResult { tokens })
            })
            .collect()
    }

    async fn do_truncate(&self, r: mm::TruncateCollectionRequest) -> Result<(), Failure> {
        let before = self.collection(&r.collection_name).await?;
        let name = before.schema.name.clone();
        let after = self
            .coord
            .clone()
            .truncate_collection(v1::TruncateCollectionRequest { name: name.clone() })
            .await
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &name))?
            .into_inner();
        let released = before.released();
        if released.is_empty() {
            return Ok(());
        }
        let partition_name = |id: &i64| {
            let p = before
                .info
                .partitions
                .iter()
                .find(|p| p.partition_id == *id)?;
            Some(p.name.as_str())
        };
        let renumbered = released
            .iter()
            .filter_map(partition_name)
            .filter_map(|n| after.partitions.iter().find(|p| p.name == n))
            .map(|p| p.partition_id)
            .collect();
        self.set_released(&name, renumbered).await
    }

    /// Milvus's AlterCollectionField: `max_length` of a VARCHAR field (raised through the
    /// coordinator's AlterCollectionField: it only grows), `max_capacity` of an ARRAY field (its
    /// declaration, which inserts are checked against), `mmap.enabled` of any field (recorded
    /// and described; delete_keys resets it). Everything is checked before anything changes.
    async fn do_alter_field(&self, r: mm::AlterCollectionFieldRequest) -> Result<(), Failure> {
        let c = self.collection(&r.collection_name).await?;
        let name = &r.field_name;
        let field = c
            .schema
            .fields
            .iter()
            .find(|f| &f.name == name && !f.is_dynamic)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "field {name:?} does not exist in collection {:?}",
                    c.schema.name
                ))
            })?;
        if r.properties.is_empty() && r.delete_keys.is_empty() {
            return Err(Failure::invalid("no field property to set or delete"));
        }
        if field.is_primary_key {
            return Err(Failure::invalid(format!(
                "field {name:?} is the primary key: its properties stay as created"
            )));
        }
        let props = c.props();
        let array = array_spec(field, props);
        let mut types = json_object(props, PROP_TYPES);
        let mut mmap = json_object(props, PROP_FIELD_MMAP);
        let number = |key: &str, v: &str| {
            v.trim().parse::<u32>().map_err(|_| {
                Failure::invalid(format!("field {name:?}: {key} {v:?} is not a number"))
            })
        };
        let mut max_length = None;
        let (mut types_changed, mut mmap_changed) = (false, false);
        for p in &r.properties {
            match p.key.as_str() {
                "max_length" if array.is_some() => {
                    return Err(Failure::invalid(format!(
                        "ARRAY field {name:?}: only its max_capacity can be altered"
                    )));
                }
                "max_length" => max_length = Some(number("max_length", &p.value)?),
                "max_capacity" => {
                    let Some(mut spec) = array else {
                        return Err(Failure::invalid(format!(
                            "field {name:?} is not an ARRAY: only an ARRAY field has a \
                             max_capacity"
                        )));
                    };
                    let n = number("max_capacity", &p.value)?;
                    spec.max_capacity = crate::array::check_capacity(name, n)?;
                    types.insert(name.clone(), spec.to_json());
                    types_changed = true;
                }
                // pymilvus describes it as mmap_enabled; some SDKs send it so.
                "mmap.enabled" | "mmap_enabled" => {
                    mmap.insert(name.clone(), index_property_value(&p.value)?);
                    mmap_changed = true;
                }
                other => return Err(unknown_field_property(other)),
            }
        }
        for key in &r.delete_keys {
            if key != "mmap.enabled" && key != "mmap_enabled" {
                return Err(Failure::invalid(format!(
                    "{key} cannot be deleted: a field's mmap.enabled is reset by delete_keys, \
                     its max_length and max_capacity are set to a new value"
                )));
            }
            mmap.remove(name);
            mmap_changed = true;
        }
        if let Some(max_length) = max_length {
            self.coord
                .clone()
                .alter_collection_field(v1::AlterCollectionFieldRequest {
                    name: c.schema.name.clone(),
                    field_name: name.clone(),
                    max_length,
                })
                .await
                .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))?;
        }
        let mut changed = HashMap::new();
        for (key, map, touched) in [
            (PROP_TYPES, types, types_changed),
            (PROP_FIELD_MMAP, mmap, mmap_changed),
        ] {
            if touched {
                changed.insert(key.to_owned(), Value::Object(map).to_string());
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.alter(&c.schema.name, changed, Vec::new()).await
    }

    async fn do_insert(
        &self,
        name: &str,
        partition: &str,
        columns: &[FieldData],
        num_rows: u32,
        write: Write<'_>,
    ) -> Result<mm::MutationResult, Failure> {
        let c = self.collection(name).await?;
        let kind = match write {
            Write::Insert => crate::rate::Kind::Insert,
            Write::Upsert | Write::PartialUpsert(_) => crate::rate::Kind::Upsert,
        };
        let bytes: usize = columns.iter().map(prost::Message::encoded_len).sum();
        self.throttle(&c, kind, bytes as f64 / MB)?;
        self.check_disk_quota(&c).await?;
        c.no_named_partitions(&[partition.to_owned()])?;
        let partition_id = c.partition(partition)?;
        let batch = match write {
            Write::PartialUpsert(ops) => self.partial_rows(&c, columns, num_rows, ops).await?,
            Write::Insert | Write::Upsert => {
                let generated = self.auto_ids(&c, columns).await?;
                let columns: Vec<FieldData> = columns.iter().cloned().chain(generated).collect();
                rows_from_milvus(&c.schema, c.props(), &columns, num_rows)?
            }
        };
        let upsert = !matches!(write, Write::Insert);
        let pk = c.pk()?.name.clone();
        let keys = batch
            .column_by_name(&pk)
            .cloned()
            .ok_or_else(|| Failure::invalid(format!("the rows have no primary key {pk:?}")))?;
        let mut ts = 0;
        if upsert {
            ts = self.delete_keys(&c, &keys).await?;
        }
        ts = ts.max(match c.partition_key() {
            None => self.insert_rows(&c, partition_id, &batch).await?,
            Some(key) => self.insert_by_partition_key(&c, key, &batch).await?,
        });
        let n = batch.num_rows();
        let ids = ids_of(&keys)?;
        Ok(mm::MutationResult {
            status: Some(status::ok()),
            i_ds: Some(ids),
            succ_index: (0..n as u32).collect(),
            insert_cnt: if upsert { 0 } else { n as i64 },
            upsert_cnt: if upsert { n as i64 } else { 0 },
            timestamp: ts,
            ..Default::default()
        })
    }

    /// Inserts `batch` into a collection in partition key mode: each row into partition
    /// `hash(key) % n` of its `n` partitions (INT64 keys by value, VARCHAR keys by CRC-32C, as
    /// shards are chosen by primary key).
    async fn insert_by_partition_key(
        &self,
        c: &Collection,
        key: &str,
        batch: &RecordBatch,
    ) -> Result<u64, Failure> {
        let partitions = &c.info.partitions;
        let keys = batch
            .column_by_name(key)
            .ok_or_else(|| Failure::invalid(format!("the rows have no partition key {key:?}")))?;
        if keys.null_count() > 0 {
            return Err(Failure::invalid(format!(
                "partition key {key:?} is null in some rows"
            )));
        }
        let picked = sluice_storage::rows::shards_of_keys(keys.as_ref(), partitions.len())
            .map_err(|e| Failure::invalid(e.to_string()))?;
        let mut newest = 0;
        for (i, p) in partitions.iter().enumerate() {
            let mask =
                arrow_array::BooleanArray::from(picked.iter().map(|x| *x == i).collect::<Vec<_>>());
            let part = arrow_select::filter::filter_record_batch(batch, &mask)
                .map_err(|e| Failure::unexpected(e.to_string()))?;
            if part.num_rows() > 0 {
                newest = newest.max(self.insert_rows(c, p.partition_id, &part).await?);
            }
        }
        Ok(newest)
    }

    /// The primary key column of an auto-id collection's rows, from the coordinator's id
    /// allocator (none when the collection has no auto id or the rows carry keys).
    /// The rows of a partial update (Milvus's upsert with `partial_update`): each row names its
    /// primary key; a row whose key has a row takes that row's values for the fields the
    /// request leaves out (and its dynamic keys the request does not give), a row whose key has
    /// none is a new row (fields left out are null or their default). The rows read are those
    /// a STRONG read sees; two partial updates of one key at once may each miss the other's.
    ///
    /// `ops` name ARRAY fields whose given elements are appended to the stored array
    /// (ARRAY_APPEND) or removed from it, every equal element (ARRAY_REMOVE); the result keeps
    /// the field's declaration.
    async fn partial_rows(
        &self,
        c: &Collection,
        columns: &[FieldData],
        num_rows: u32,
        ops: &HashMap<String, ArrayOp>,
    ) -> Result<RecordBatch, Failure> {
        let pk = c.pk()?;
        let mut rows = json_rows_from_milvus(&c.schema, c.props(), columns, num_rows)?;
        for field in ops.keys() {
            let f = c.schema.fields.iter().find(|f| &f.name == field);
            if f.and_then(|f| array_spec(f, c.props())).is_none() {
                return Err(Failure::invalid(format!(
                    "field operation on {field:?}: ARRAY_APPEND and ARRAY_REMOVE apply to ARRAY \
                     fields"
                )));
            }
            if rows
                .iter()
                .any(|r| !r.get(field).is_some_and(Value::is_array))
            {
                return Err(Failure::invalid(format!(
                    "field operation on {field:?}: every row gives the elements to add or remove"
                )));
            }
        }
        let keys: Vec<&Value> = rows
            .iter()
            .map(|r| r.get(&pk.name).filter(|k| !k.is_null()))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "a partial update names the primary key {:?} of every row",
                    pk.name
                ))
            })?;
        let keys = if DataType::try_from(pk.data_type) == Ok(DataType::Varchar) {
            v1::primary_keys::Keys::StrKeys(v1::StringList {
                values: keys
                    .iter()
                    .map(|k| k.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| Failure::invalid("a VARCHAR primary key is a string"))?,
            })
        } else {
            v1::primary_keys::Keys::IntKeys(v1::Int64List {
                values: keys
                    .iter()
                    .map(|k| k.as_i64())
                    .collect::<Option<_>>()
                    .ok_or_else(|| Failure::invalid("an INT64 primary key is an integer"))?,
            })
        };
        let resp = self
            .query
            .get(v1::GetRequest {
                collection: c.schema.name.clone(),
                keys: Some(v1::PrimaryKeys { keys: Some(keys) }),
                output_fields: sluice_types::schema::stored_fields(&c.schema)
                    .map(|f| f.name.clone())
                    .collect(),
                read: Some(v1::ReadOptions {
                    consistency: v1::ConsistencyLevel::Strong as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::from_client(&e, &c.schema.name))?;
        let stored = json_rows_of(&c.schema, c.props(), &decode_rows(&resp.rows)?)?;
        let stored: HashMap<String, JsonRow> = stored
            .into_iter()
            .filter_map(|r| Some((r.get(&pk.name)?.to_string(), r)))
            .collect();
        for row in &mut rows {
            let old = row.get(&pk.name).and_then(|k| stored.get(&k.to_string()));
            for (field, op) in ops {
                let kept = old
                    .and_then(|o| o.get(field)?.as_array().cloned())
                    .unwrap_or_default();
                if let Some(Value::Array(given)) = row.get_mut(field) {
                    *given = match op {
                        ArrayOp::Append => kept.into_iter().chain(given.drain(..)).collect(),
                        ArrayOp::Remove => {
                            kept.into_iter().filter(|v| !given.contains(v)).collect()
                        }
                    };
                }
            }
            let Some(old) = old else {
                continue;
            };
            for (field, value) in old {
                match (row.get_mut(field), value) {
                    (None, _) => {
                        row.insert(field.clone(), value.clone());
                    }
                    (Some(Value::Object(given)), Value::Object(kept)) if field == DYNAMIC_FIELD => {
                        for (k, v) in kept {
                            given.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                    (Some(_), _) => {}
                }
            }
        }
        for field in ops.keys() {
            let values: Vec<Value> = rows
                .iter()
                .map(|r| r.get(field).cloned().unwrap_or(Value::Null))
                .collect();
            check_values(c.props(), field, &values)?;
        }
        batch_of_rows(&c.schema, c.props(), rows)
    }

    async fn auto_ids(
        &self,
        c: &Collection,
        columns: &[FieldData],
    ) -> Result<Option<FieldData>, Failure> {
        let pk = c.pk()?;
        if !pk.auto_id || columns.iter().any(|f| f.field_name == pk.name) {
            return Ok(None);
        }
        let n = columns
            .iter()
            .map(crate::convert::column_len)
            .max()
            .unwrap_or(0);
        if n == 0 {
            return Ok(None);
        }
        let count = u32::try_from(n).map_err(|_| Failure::invalid("too many rows"))?;
        let r = self
            .coord
            .clone()
            .allocate_ids(v1::AllocateRequest { count })
            .await
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), &c.schema.name))?
            .into_inner();
        let first = i64::try_from(r.first)
            .map_err(|_| Failure::unexpected("the id allocator ran out of int64 ids"))?;
        let ids = first..first + n as i64;
        // A VARCHAR key gets the generated integer's decimal text (as Milvus gives it).
        let (ty, data) = if pk.data_type == DataType::Varchar as i32 {
            let data = ids.map(|i| i.to_string()).collect();
            let data = scalar_field::Data::StringData(ms::StringArray { data });
            (MDataType::VarChar, data)
        } else {
            let data = scalar_field::Data::LongData(ms::LongArray {
                data: ids.collect(),
            });
            (MDataType::Int64, data)
        };
        Ok(Some(FieldData {
            r#type: ty as i32,
            field_name: pk.name.clone(),
            field: Some(field_data::Field::Scalars(ms::ScalarField {
                data: Some(data),
            })),
            ..Default::default()
        }))
    }

    async fn do_delete(&self, r: mm::DeleteRequest) -> Result<mm::MutationResult, Failure> {
        if r.expr.trim().is_empty() {
            return Err(Failure::invalid("a delete needs an expression"));
        }
        let expr = crate::template::render(&r.expr, &r.expr_template_values)?;
        let c = self.collection(&r.collection_name).await?;
        self.throttle(
            &c,
            crate::rate::Kind::Delete,
            prost::Message::encoded_len(&r) as f64 / MB,
        )?;
        let partitions = c.read_partitions(std::slice::from_ref(&r.partition_name), &expr)?;
        let keys = self.keys_matching(&c, &expr, partitions).await?;
        let ts = self.delete_keys(&c, &keys).await?;
        Ok(mm::MutationResult {
            status: Some(status::ok()),
            i_ds: Some(ids_of(&keys)?),
            delete_cnt: keys.len() as i64,
            timestamp: ts,
            ..Default::default()
        })
    }

    /// A Milvus Search: its hits and the timestamp it read the collection at.
    async fn do_search(
        &self,
        r: mm::SearchRequest,
    ) -> Result<(ms::SearchResultData, u64), Failure> {
        let round = crate::hybrid::round_decimal(&r.search_params)?;
        let mut searched = self.search_rows(r, None, None).await?;
        if round.is_some() {
            for s in &mut searched.scores {
                *s = crate::hybrid::rounded(f64::from(*s), round) as f32;
            }
        }
        let at = searched.mvcc_timestamp;
        Ok((searched.into_milvus()?, at))
    }

    /// A Milvus HybridSearch: each search run on its own, then per query vector the hits of all
    /// fused by the ranker (see [`Ranker`]), best first, `offset` skipped, `limit` kept.
    async fn do_hybrid_search(
        &self,
        r: mm::HybridSearchRequest,
    ) -> Result<(ms::SearchResultData, u64), Failure> {
        if !r.function_chains.is_empty() {
            return Err(Failure::unsupported("function chains in a hybrid search"));
        }
        if r.requests.is_empty() || r.requests.len() > MAX_HYBRID_SEARCHES {
            return Err(Failure::invalid(format!(
                "a hybrid search has {} searches: 1 to {MAX_HYBRID_SEARCHES}",
                r.requests.len()
            )));
        }
        let fusion = match &r.function_score {
            Some(f) => Some(Fusion::of_function(
                f,
                &self.collection(&r.collection_name).await?.schema,
                r.requests.len(),
            )?),
            None => None,
        };
        let also = match &fusion {
            Some(Fusion::Decay(d)) => Some(d.field.clone()),
            _ => None,
        };
        let ranker = Ranker::of(&r.rank_params, r.requests.len(), fusion)?;
        let mut searched = Vec::with_capacity(r.requests.len());
        for sub in r.requests {
            let sub = mm::SearchRequest {
                collection_name: r.collection_name.clone(),
                partition_names: r.partition_names.clone(),
                output_fields: r.output_fields.clone(),
                guarantee_timestamp: r.guarantee_timestamp,
                consistency_level: r.consistency_level,
                use_default_consistency: r.use_default_consistency,
                ..sub
            };
            if !sub.sub_reqs.is_empty() {
                return Err(Failure::invalid("a hybrid search inside a hybrid search"));
            }
            // The offset applies to the fused hits (pymilvus copies it into every search too).
            let mut sub = sub;
            sub.search_params.retain(|kv| kv.key != "offset");
            // Every search reads the collection as of the first one's timestamp.
            let at = searched.first().map(|s: &Searched| s.mvcc_timestamp);
            searched.push(self.search_rows(sub, at, also.as_deref()).await?);
        }
        let at = searched.first().map_or(0, |s| s.mvcc_timestamp);
        Ok((ranker.fuse(searched)?, at))
    }

    /// The vectors in field `field` of the rows with primary keys `ids` (Milvus's search by
    /// primary keys), in that order; a key with no row is an error.
    async fn vectors_of(
        &self,
        c: &Collection,
        field: &str,
        ids: ms::IDs,
        read: v1::ReadOptions,
    ) -> Result<QueryVectors, Failure> {
        let (keys, asked) = match ids.id_field {
            Some(ms::i_ds::IdField::IntId(a)) => {
                let asked: Vec<String> = a.data.iter().map(i64::to_string).collect();
                let keys = v1::primary_keys::Keys::IntKeys(v1::Int64List { values: a.data });
                (keys, asked)
            }
            Some(ms::i_ds::IdField::StrId(a)) => {
                let asked = a.data.clone();
                (
                    v1::primary_keys::Keys::StrKeys(v1::StringList { values: a.data }),
                    asked,
                )
            }
            None => return Err(Failure::invalid("a search by primary keys names none")),
        };
        if asked.is_empty() || asked.len() > 16384 {
            return Err(Failure::invalid(format!(
                "a search by {} primary keys: 1 to 16384",
                asked.len()
            )));
        }
        let resp = self
            .query
            .get(v1::GetRequest {
                collection: c.schema.name.clone(),
                keys: Some(v1::PrimaryKeys { keys: Some(keys) }),
                output_fields: vec![field.to_owned()],
                read: Some(read),
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::from_client(&e, &c.schema.name))?;
        let rows = decode_rows(&resp.rows)?;
        let found = crate::hybrid::key_strings(&crate::convert::column(c.pk()?, &rows)?)?;
        if found.len() != asked.len() {
            let missing: Vec<&str> = asked
                .iter()
                .filter(|k| !found.contains(k))
                .map(String::as_str)
                .take(10)
                .collect();
            return Err(Failure::invalid(format!(
                "no rows with the primary keys {} to search with",
                missing.join(", ")
            )));
        }
        let column = rows
            .iter()
            .map(|b| {
                b.column_by_name(field)
                    .cloned()
                    .ok_or_else(|| Failure::invalid(format!("{field:?} is not a vector field")))
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let mut vectors = Vec::with_capacity(asked.len());
        if let Some(sparse) = column
            .iter()
            .map(|col| arrow_array::cast::AsArray::as_binary_opt::<i32>(col.as_ref()))
            .collect::<Option<Vec<_>>>()
        {
            let rows = sparse.iter().flat_map(|a| a.iter());
            return Ok(QueryVectors::Sparse(
                rows.map(|r| r.unwrap_or_default().to_vec()).collect(),
            ));
        }
        for col in column {
            use arrow_array::cast::AsArray;
            let Some(list) = col.as_fixed_size_list_opt() else {
                return Err(Failure::invalid(format!("{field:?} is not a vector field")));
            };
            for i in 0..list.len() {
                let v = list.value(i);
                let Some(values) = v.as_primitive_opt::<arrow_array::types::Float32Type>() else {
                    return Err(Failure::invalid(format!(
                        "{field:?} is not a float vector field"
                    )));
                };
                vectors.push(v1::FloatVector {
                    values: values.values().to_vec(),
                });
            }
        }
        Ok(QueryVectors::Dense(vectors))
    }

    /// A search's hits, best first, as rows (`into_milvus` makes them Milvus's answer); read as
    /// of timestamp `at` when given; the rows hold field `also` too (not answered with).
    async fn search_rows(
        &self,
        r: mm::SearchRequest,
        at: Option<u64>,
        also: Option<&str>,
    ) -> Result<Searched, Failure> {
        if !r.sub_reqs.is_empty() || !r.function_chains.is_empty() {
            return Err(Failure::unsupported(
                "sub-searches and function chains in Search (use HybridSearch)",
            ));
        }
        let filter = crate::template::render(&r.dsl, &r.expr_template_values)?;
        let c = self.collection(&r.collection_name).await?;
        let decay = r
            .function_score
            .as_ref()
            .map(|f| Decay::of(f, &c.schema))
            .transpose()?;
        let partition_ids = c.read_partitions(&r.partition_names, &filter)?;
        let p = &r.search_params;
        for key in ["group_by_fields", "order_by_fields", "search_aggregation"] {
            if param(p, key).is_some_and(|v| !v.is_empty()) {
                return Err(Failure::unsupported(format!("the search parameter {key}")));
            }
        }
        let grouping = Grouping::of(&c, p)?;
        let iterator = IteratorV2::of(p)?;
        if iterator.is_some() && grouping.is_some() {
            return Err(Failure::unsupported("a grouped search iterator"));
        }
        if decay.is_some() && (iterator.is_some() || grouping.is_some()) {
            return Err(Failure::unsupported(
                "a decay ranker in a grouped search or a search iterator",
            ));
        }
        let top_k: u64 = match &iterator {
            Some(it) => it.batch,
            None => param(p, "topk")
                .unwrap_or("10")
                .parse()
                .map_err(|_| Failure::invalid("topk must be a number"))?,
        };
        let offset: u64 = param(p, "offset")
            .filter(|o| !o.is_empty())
            .unwrap_or("0")
            .parse()
            .map_err(|_| Failure::invalid("offset must be a number"))?;
        if top_k == 0 || top_k + offset > 16384 {
            return Err(Failure::invalid(format!(
                "topk {top_k} + offset {offset}: topk must be in 1..=16384 with the offset"
            )));
        }
        let anns = c.anns_field(param(p, "anns_field").unwrap_or_default())?;
        let index_metric = c.metric_of(&anns);
        let asked_metric = param(p, "metric_type").filter(|m| !m.is_empty());
        if let Some(m) = asked_metric
            && !m.eq_ignore_ascii_case(&index_metric)
        {
            return Err(Failure::invalid(format!(
                "metric type not match: invalid parameter[expected={index_metric}][actual={m}]"
            )));
        }
        let metric = metric(&index_metric)?;
        let params: serde_json::Map<String, Value> = match param(p, "params") {
            Some(s) if !s.is_empty() => serde_json::from_str(s)
                .map_err(|e| Failure::invalid(format!("search params {s:?}: {e}")))?,
            _ => serde_json::Map::new(),
        };
        let ef = params.get("ef").and_then(Value::as_u64).unwrap_or(0);
        let range = match (&iterator, Range::of(&params, metric)?) {
            (None, range) => range,
            (Some(it), given) => Some(it.range(metric, given)),
        };
        let exact = c
            .index_of(&anns)
            .and_then(|i| {
                i.get("index_type")?
                    .as_str()
                    .map(|t| t == "FLAT" || t == "BIN_FLAT")
            })
            .unwrap_or(false);
        let level = if r.use_default_consistency {
            c.consistency()
        } else {
            r.consistency_level
        };
        let mut read = read_options(level, r.guarantee_timestamp, p);
        if let Some(at) = at {
            read.mvcc_timestamp = at;
        }
        let vectors = match r.search_input {
            Some(mm::search_request::SearchInput::PlaceholderGroup(bytes)) => {
                let group = mc::PlaceholderGroup::decode(bytes.as_slice()).map_err(|e| {
                    Failure::invalid(format!("the query vectors do not decode: {e}"))
                })?;
                let mut vectors = Vec::new();
                let mut sparse = Vec::new();
                let mut texts = Vec::new();
                for ph in group.placeholders {
                    // 32-bit floats (`None`), or 16-bit ones (`Some(brain)`: IEEE half or brain
                    // float16).
                    let half = match mc::PlaceholderType::try_from(ph.r#type) {
                        Ok(mc::PlaceholderType::BinaryVector) => {
                            vectors.extend(ph.values.iter().map(|v| v1::FloatVector {
                                values: crate::convert::unpack_bits(v),
                            }));
                            continue;
                        }
                        Ok(mc::PlaceholderType::Int8Vector) => {
                            vectors.extend(ph.values.iter().map(|v| v1::FloatVector {
                                values: crate::convert::int8s(v),
                            }));
                            continue;
                        }
                        Ok(mc::PlaceholderType::FloatVector) => None,
                        Ok(mc::PlaceholderType::Float16Vector) => Some(false),
                        Ok(mc::PlaceholderType::BFloat16Vector) => Some(true),
                        Ok(mc::PlaceholderType::VarChar) => {
                            for (i, v) in ph.values.into_iter().enumerate() {
                                texts.push(String::from_utf8(v).map_err(|_| {
                                    Failure::invalid(format!("text query {i} is not UTF-8"))
                                })?);
                            }
                            continue;
                        }
                        Ok(mc::PlaceholderType::SparseFloatVector) => {
                            for (i, v) in ph.values.into_iter().enumerate() {
                                sluice_types::sparse::check(&v).map_err(|e| {
                                    Failure::invalid(format!("query vector {i}: {e}"))
                                })?;
                                sparse.push(v);
                            }
                            continue;
                        }
                        _ => {
                            return Err(Failure::unsupported(
                                "query vectors other than float, float16, bfloat16, int8, binary \
                                 and sparse float vectors (or text for a BM25 function's output)",
                            ));
                        }
                    };
                    let size = if half.is_some() { 2 } else { 4 };
                    for v in ph.values {
                        if v.len() % size != 0 {
                            return Err(Failure::invalid(format!(
                                "a query vector of {} bytes: not a whole number of {size}-byte \
                                 floats",
                                v.len()
                            )));
                        }
                        let values = match half {
                            None => v
                                .chunks_exact(4)
                                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                .collect(),
                            Some(brain) => crate::convert::half_floats(&v, brain),
                        };
                        vectors.push(v1::FloatVector { values });
                    }
                }
                match (vectors.is_empty(), sparse.is_empty(), texts.is_empty()) {
                    (_, true, true) => QueryVectors::Dense(vectors),
                    (true, false, true) => QueryVectors::Sparse(sparse),
                    (true, true, false) => QueryVectors::Text(texts),
                    _ => {
                        return Err(Failure::invalid(
                            "a search holds float and sparse query vectors or text: one kind, \
                             for the kind of field searched",
                        ));
                    }
                }
            }
            Some(mm::search_request::SearchInput::Ids(ids)) => {
                self.vectors_of(&c, &anns, ids, read).await?
            }
            None => return Err(Failure::invalid("a search needs query vectors")),
        };
        let nq = vectors.len();
        self.throttle(&c, crate::rate::Kind::Search, nq as f64)?;
        let bm25 = sluice_types::schema::bm25_of(&c.schema, &anns).is_some();
        let (vectors, sparse_vectors, text_queries) = match vectors {
            QueryVectors::Text(_) if !bm25 => {
                return Err(Failure::invalid(format!(
                    "text queries search a BM25 function's output field; {anns} is not one"
                )));
            }
            _ if bm25 && !matches!(vectors, QueryVectors::Text(_)) => {
                return Err(Failure::invalid(format!(
                    "field {anns} is a BM25 function's output: search it with text"
                )));
            }
            QueryVectors::Dense(v) => (v, Vec::new(), Vec::new()),
            QueryVectors::Sparse(v) => {
                let ratio = drop_ratio(&params, "drop_ratio_search")?;
                let dropped = v
                    .iter()
                    .map(|q| sluice_types::sparse::drop_smallest(q, ratio).into())
                    .collect();
                (Vec::new(), dropped, Vec::new())
            }
            QueryVectors::Text(t) => {
                // Checked, though every term is searched.
                drop_ratio(&params, "drop_ratio_search")?;
                (Vec::new(), Vec::new(), t)
            }
        };
        // BM25's parameters are the index's.
        let index = c.index_of(&anns);
        let index_param = |key: &str| {
            index
                .as_ref()
                .and_then(|i| i.get("params")?.get(key)?.as_f64())
                .map(|x| x as f32)
        };
        let (bm25_k1, bm25_b) = (index_param("bm25_k1").unwrap_or(0.0), index_param("bm25_b"));
        if iterator.is_some() && nq != 1 {
            return Err(Failure::invalid(format!(
                "a search iterator takes one query vector, not {nq}"
            )));
        }
        if r.nq != 0 && usize::try_from(r.nq).ok() != Some(nq) {
            return Err(Failure::invalid(format!(
                "nq is {} but the request holds {nq} query vectors",
                r.nq
            )));
        }
        // A range search that skips the nearest hits (range_filter) asks for as many as a
        // search may return, so that enough are left past them.
        // So does a grouped search (many of the nearest hits may share a group).
        let wanted = match (range, &grouping) {
            (Some(Range { near: Some(_), .. }), _) | (_, Some(_)) => {
                (1_048_576 / nq.max(1)).min(16_384) as u64
            }
            _ => top_k + offset,
        }
        .max(top_k + offset);
        let (fields, report) = output_fields(&c, &r.output_fields)?;
        let mut fetched = fields.clone();
        for field in grouping
            .as_ref()
            .map(|g| g.field.as_str())
            .into_iter()
            .chain(decay.as_ref().map(|d| d.field.as_str()))
            .chain(also)
        {
            if !fetched.iter().any(|f| f == field) {
                fetched.push(field.to_owned());
            }
        }
        let resp = self
            .query
            .search(v1::SearchRequest {
                collection: c.schema.name.clone(),
                vector_field: anns,
                vectors,
                sparse_vectors,
                text_queries,
                bm25_k1,
                bm25_b,
                top_k: wanted as u32,
                metric: metric as i32,
                filter,
                output_fields: fetched,
                read: Some(read),
                exact,
                ef: ef.min(4096) as u32,
                partition_ids,
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::from_client(&e, &c.schema.name))?;
        let mut scores = Vec::new();
        let mut topks = Vec::new();
        let mut rows: Vec<RecordBatch> = Vec::new();
        for hits in &resp.results {
            let batches = decode_rows(&hits.rows)?;
            let all = if batches.is_empty() {
                None
            } else {
                Some(
                    arrow_select::concat::concat_batches(&batches[0].schema(), &batches)
                        .map_err(|e| Failure::unexpected(e.to_string()))?,
                )
            };
            // Nearest first: the hits in range are one run of them.
            let (first, end) = match &range {
                Some(range) => range.run(&hits.scores),
                None => (0, hits.scores.len()),
            };
            let picked = match (&grouping, &decay, &all) {
                (Some(g), _, Some(all)) => {
                    let picked = g.pick(all, first..end, offset as usize, top_k as usize)?;
                    Some(picked.into_iter().map(|i| (i, hits.scores[i])).collect())
                }
                (_, Some(d), Some(all)) => Some(d.pick(
                    all,
                    &c.pk()?.name,
                    &hits.scores,
                    first..end,
                    metric,
                    offset as usize,
                    top_k as usize,
                )?),
                _ => None,
            };
            if let (Some(picked), Some(all)) = (picked, &all) {
                topks.push(picked.len() as i64);
                scores.extend(picked.iter().map(|&(_, score)| score));
                let indices = arrow_array::UInt32Array::from_iter_values(
                    picked.iter().map(|&(i, _)| i as u32),
                );
                let columns = all
                    .columns()
                    .iter()
                    .map(|c| arrow_select::take::take(c, &indices, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Failure::unexpected(e.to_string()))?;
                rows.push(
                    RecordBatch::try_new(all.schema(), columns)
                        .map_err(|e| Failure::unexpected(e.to_string()))?,
                );
                continue;
            }
            let skip = (first + offset as usize).min(end);
            let take = (end - skip).min(top_k as usize);
            topks.push(take as i64);
            scores.extend_from_slice(&hits.scores[skip..skip + take]);
            if let Some(all) = all {
                rows.push(all.slice(skip, take));
            }
        }
        let iterator = iterator.map(|it| ms::SearchIteratorV2Results {
            token: it.token.unwrap_or_else(|| {
                format!("sluice-{}-{}", c.info.collection_id, resp.mvcc_timestamp)
            }),
            last_bound: scores.last().copied().or(it.last_bound).unwrap_or(0.0),
        });
        Ok(Searched {
            collection: c,
            mvcc_timestamp: resp.mvcc_timestamp,
            iterator,
            metric,
            nq,
            top_k,
            scores,
            topks,
            rows,
            fields,
            report,
        })
    }

    async fn do_query(&self, r: mm::QueryRequest) -> Result<mm::QueryResults, Failure> {
        let expr = crate::template::render(&r.expr, &r.expr_template_values)?;
        let c = self.collection(&r.collection_name).await?;
        self.throttle(&c, crate::rate::Kind::Query, 1.0)?;
        let partition_ids = c.read_partitions(&r.partition_names, &expr)?;
        let level = if r.use_default_consistency {
            c.consistency()
        } else {
            r.consistency_level
        };
        let read = Some(read_options(level, r.guarantee_timestamp, &r.query_params));
        let number = |key: &str| -> Result<u64, Failure> {
            match param(&r.query_params, key).filter(|v| !v.is_empty()) {
                None => Ok(0),
                Some(v) => v
                    .parse()
                    .map_err(|_| Failure::invalid(format!("{key} {v:?} is not a number"))),
            }
        };
        let (limit, offset) = (number("limit")?, number("offset")?);
        let pk = c.pk()?.name.clone();
        if r.output_fields
            .iter()
            .any(|f| f.eq_ignore_ascii_case("count(*)"))
        {
            if r.output_fields.len() > 1 {
                return Err(Failure::invalid(
                    "count(*) cannot be mixed with other output fields",
                ));
            }
            let resp = self
                .query
                .query(v1::QueryRequest {
                    collection: c.schema.name.clone(),
                    filter: expr.clone(),
                    limit: 0,
                    read,
                    partition_ids,
                    ..Default::default()
                })
                .await
                .map_err(|e| Failure::from_client(&e, &c.schema.name))?;
            return Ok(mm::QueryResults {
                status: Some(status::ok()),
                fields_data: vec![FieldData {
                    r#type: MDataType::Int64 as i32,
                    field_name: "count(*)".into(),
                    field: Some(field_data::Field::Scalars(ms::ScalarField {
                        data: Some(scalar_field::Data::LongData(ms::LongArray {
                            data: vec![resp.row_count as i64],
                        })),
                    })),
                    ..Default::default()
                }],
                collection_name: database::local(&c.schema.name).to_owned(),
                output_fields: vec!["count(*)".into()],
                primary_field_name: pk,
                session_ts: resp.mvcc_timestamp,
                ..Default::default()
            });
        }
        let (mut fields, mut report) = output_fields(&c, &r.output_fields)?;
        if !fields.contains(&pk) {
            fields.insert(0, pk.clone());
            report.insert(0, pk.clone());
        }
        let resp = self
            .query
            .query(v1::QueryRequest {
                collection: c.schema.name.clone(),
                filter: expr.clone(),
                output_fields: fields.iter().filter(|f| **f != pk).cloned().collect(),
                limit: if limit == 0 { 0 } else { limit + offset },
                read,
                partition_ids,
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::from_client(&e, &c.schema.name))?;
        let mut batches = decode_rows(&resp.rows)?;
        if offset > 0 && !batches.is_empty() {
            let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches)
                .map_err(|e| Failure::unexpected(e.to_string()))?;
            let skip = (offset as usize).min(all.num_rows());
            batches = vec![all.slice(skip, all.num_rows() - skip)];
        }
        let fields_data = batches_to_milvus(&c.schema, c.props(), &batches, &fields)?;
        Ok(mm::QueryResults {
            status: Some(status::ok()),
            fields_data,
            collection_name: database::local(&c.schema.name).to_owned(),
            output_fields: report,
            primary_field_name: pk,
            session_ts: resp.mvcc_timestamp,
            ..Default::default()
        })
    }

    async fn do_create_index(&self, r: mm::CreateIndexRequest) -> Result<(), Failure> {
        let c = self.collection(&r.collection_name).await?;
        let field = c
            .schema
            .fields
            .iter()
            .find(|f| f.name == r.field_name)
            .ok_or_else(|| Failure::invalid(format!("field {} not exist", r.field_name)))?;
        let p = &r.extra_params;
        let index_type = param(p, "index_type")
            .filter(|t| !t.is_empty())
            .unwrap_or("AUTOINDEX")
            .to_ascii_uppercase();
        let params: serde_json::Map<String, Value> = match param(p, "params") {
            Some(s) if !s.is_empty() => serde_json::from_str(s)
                .map_err(|e| Failure::invalid(format!("index params {s:?}: {e}")))?,
            _ => serde_json::Map::new(),
        };
        // The type's parameters, at the top level or in `params` (pymilvus sends either).
        let given: serde_json::Map<String, Value> = p
            .iter()
            .map(|k| (k.key.clone(), Value::String(k.value.clone())))
            .chain(params)
            .filter(|(k, _)| !matches!(k.as_str(), "index_type" | "metric_type" | "params"))
            .collect();
        let ty = DataType::try_from(field.data_type);
        let binary = milvus_type(field, c.props()) == MDataType::BinaryVector;
        let mut index = if binary {
            binary_index(&index_type, param(p, "metric_type"), &given)?
        } else if ty == Ok(DataType::FloatVector) {
            vector_index(&index_type, param(p, "metric_type"), &given)?
        } else if ty == Ok(DataType::SparseFloatVector) {
            let bm25 = sluice_types::schema::bm25_of(&c.schema, &field.name).is_some();
            sparse_index(&index_type, param(p, "metric_type"), &given, bm25)?
        } else {
            scalar_index(
                field,
                milvus_type(field, c.props()),
                array_spec(field, c.props()),
                &index_type,
                param(p, "metric_type"),
                &given,
            )?
        };
        index.insert("field".into(), field.name.clone().into());
        let name = if r.index_name.is_empty() {
            field.name.clone()
        } else {
            r.index_name.clone()
        };
        let mut indexes = c.indexes();
        // One index per field (per path of a JSON field); asking again for the same one is no
        // change.
        let path = |i: &serde_json::Map<String, Value>| i.get("params")?.get("json_path").cloned();
        let same_place = |i: &&serde_json::Map<String, Value>| {
            i.get("field") == index.get("field") && path(i) == path(&index)
        };
        if let Some(existing) = indexes.iter().find(same_place) {
            let same = ["index_type", "metric_type", "params"]
                .iter()
                .all(|k| existing.get(*k) == index.get(*k));
            if same {
                return Ok(());
            }
            return Err(Failure::invalid(
                "at most one distinct index per field (per json_path of a JSON field) is supported",
            ));
        }
        if indexes
            .iter()
            .any(|i| i.get("name").and_then(Value::as_str) == Some(&name))
        {
            return Err(Failure::invalid(format!(
                "an index named {name:?} exists on another field"
            )));
        }
        index.insert("name".into(), name.into());
        indexes.push(index);
        self.record_indexes(&c.schema.name, &indexes).await
    }

    /// Records `indexes` on collection `name`, with the graph settings Sluice builds its HNSW
    /// graphs with taken from the first vector index (the collection-wide settings: a field
    /// indexed with another metric is searched exactly); none: the settings go back to the
    /// node's defaults.
    async fn record_indexes(
        &self,
        name: &str,
        indexes: &[serde_json::Map<String, Value>],
    ) -> Result<(), Failure> {
        let mut props = match indexes
            .iter()
            .find(|i| is_vector_index(i) && !i.contains_key(SPARSE_INDEX))
        {
            Some(first) => graph_settings(first)?.to_properties(),
            None => HashMap::new(),
        };
        let mut unset: Vec<String> = IndexSettings::KEYS
            .iter()
            .filter(|k| !props.contains_key(**k))
            .map(|k| (*k).to_owned())
            .collect();
        if indexes.is_empty() {
            unset.push(PROP_INDEX.to_owned());
        } else {
            props.insert(
                PROP_INDEX.to_owned(),
                Value::Array(indexes.iter().cloned().map(Value::Object).collect()).to_string(),
            );
        }
        self.alter(name, props, unset).await
    }

    /// AlterIndex: sets or resets the index's properties (`mmap.enabled` only, as in Milvus),
    /// kept in its record under `properties` and described back with its parameters.
    async fn do_alter_index(&self, r: mm::AlterIndexRequest) -> Result<(), Failure> {
        let c = self.collection(&r.collection_name).await?;
        if r.index_name.is_empty() {
            return Err(Failure::invalid("index name should not be empty"));
        }
        let set: Vec<(String, Value)> = r
            .extra_params
            .iter()
            .map(|kv| Ok((index_property(&kv.key)?, index_property_value(&kv.value)?)))
            .collect::<Result<_, Failure>>()?;
        let reset: Vec<String> = r
            .delete_keys
            .iter()
            .map(|k| index_property(k))
            .collect::<Result<_, Failure>>()?;
        match (set.is_empty(), reset.is_empty()) {
            (true, true) => return Err(Failure::invalid("no index property to set or delete")),
            (false, false) => {
                return Err(Failure::invalid(
                    "an index's properties are set or deleted, not both in one call",
                ));
            }
            _ => {}
        }
        let mut indexes = c.indexes();
        let index = indexes
            .iter_mut()
            .find(|i| matches_index(i, &r.index_name, ""))
            .ok_or_else(|| Failure::index_not_found(&r.collection_name))?;
        let mut properties = match index.remove(INDEX_PROPERTIES) {
            Some(Value::Object(p)) => p,
            _ => serde_json::Map::new(),
        };
        properties.extend(set);
        for key in &reset {
            properties.remove(key);
        }
        if !properties.is_empty() {
            index.insert(INDEX_PROPERTIES.into(), Value::Object(properties));
        }
        self.record_indexes(&c.schema.name, &indexes).await
    }

    async fn do_describe_index(
        &self,
        r: mm::DescribeIndexRequest,
    ) -> Result<Vec<mm::IndexDescription>, Failure> {
        let c = self.collection(&r.collection_name).await?;
        // Every committed segment is searched with its index (or exactly, below the index's
        // row threshold): none waits for a build. Growing rows are not counted, as in Milvus.
        let sealed: i64 = self
            .segment_manifests(&c)
            .await?
            .iter()
            .map(|m| m.rows as i64)
            .sum();
        let described: Vec<mm::IndexDescription> = c
            .indexes()
            .iter()
            .enumerate()
            .filter(|(_, i)| matches_index(i, &r.index_name, &r.field_name))
            .map(|(n, i)| {
                let s = |k: &str| {
                    i.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut params = vec![kv("index_type", s("index_type"))];
                if is_vector_index(i) {
                    params.push(kv("metric_type", s("metric_type")));
                    params.push(kv(
                        "params",
                        i.get("params")
                            .map_or_else(|| "{}".to_owned(), Value::to_string),
                    ));
                } else if let Some(given) = i.get("params").and_then(Value::as_object) {
                    // A scalar index's parameters (a JSON path index's) one by one, as Milvus.
                    params.extend(
                        given
                            .iter()
                            .map(|(k, v)| kv(k, v.as_str().unwrap_or_default())),
                    );
                }
                // Its properties (AlterIndex) after its parameters, as Milvus lists them.
                if let Some(Value::Object(p)) = i.get(INDEX_PROPERTIES) {
                    params.extend(p.iter().map(|(k, v)| kv(k, v.as_str().unwrap_or_default())));
                }
                mm::IndexDescription {
                    index_name: s("name"),
                    index_id: c.info.collection_id + n as i64,
                    params,
                    field_name: s("field"),
                    state: mc::IndexState::Finished as i32,
                    total_rows: sealed,
                    indexed_rows: sealed,
                    ..Default::default()
                }
            })
            .collect();
        if described.is_empty() {
            return Err(Failure::index_not_found(&r.collection_name));
        }
        Ok(described)
    }

    async fn do_flush(&self, names: &[String]) -> Result<mm::FlushResponse, Failure> {
        let mut out = mm::FlushResponse {
            status: Some(status::ok()),
            ..Default::default()
        };
        for name in names {
            let c = self.collection(name).await?;
            let mut segments = Vec::new();
            let mut ts = 0;
            for v in c.vchannels()? {
                let msg = MutableMessage::builder(ManualFlushHeader {
                    collection_id: c.info.collection_id,
                    flush_ts: 0,
                    segment_ids: Vec::new(),
                })
                .vchannel(&v)
                .build()
                .map_err(|e| Failure::unexpected(e.to_string()))?;
                let r = self
                    .client
                    .append(msg)
                    .await
                    .map_err(|e| Failure::from_client(&e, name))?;
                segments.extend(r.flushed_segments);
                ts = ts.max(r.timestamp.0);
            }
            let list = ms::LongArray { data: segments };
            let name = database::local(name).to_owned();
            out.coll_seg_i_ds.insert(name.clone(), list.clone());
            out.flush_coll_seg_i_ds.insert(name.clone(), list);
            out.coll_seal_times
                .insert(name.clone(), (ts >> 18) as i64 / 1000);
            out.coll_flush_ts.insert(name, ts);
        }
        Ok(out)
    }
}

/// A primary key column as Milvus ids.
pub(crate) fn ids_of(keys: &ArrayRef) -> Result<ms::IDs, Failure> {
    use arrow_array::cast::AsArray;
    Ok(match keys.data_type() {
        arrow_schema::DataType::Int64 => ms::IDs {
            id_field: Some(ms::i_ds::IdField::IntId(ms::LongArray {
                data: keys
                    .as_primitive::<arrow_array::types::Int64Type>()
                    .values()
                    .to_vec(),
            })),
        },
        arrow_schema::DataType::Utf8 => ms::IDs {
            id_field: Some(ms::i_ds::IdField::StrId(ms::StringArray {
                data: keys
                    .as_string::<i32>()
                    .iter()
                    .map(|k| k.unwrap_or_default().to_owned())
                    .collect(),
            })),
        },
        other => return Err(Failure::unexpected(format!("primary keys of type {other}"))),
    })
}

#[tonic::async_trait]
impl MilvusService for MilvusFront {
    /// Registers nothing; a client bound to a database that does not exist is refused here, as
    /// Milvus refuses it (DatabaseNotFound).
    async fn connect(&self, r: Request<mm::ConnectRequest>) -> Reply<mm::ConnectResponse> {
        let db = database::of("", r.metadata().get(database::HEADER));
        self.authorize(&r, &db).await?;
        if !database::is_default(&db)
            && let Err(f) = self.database(&db).await
        {
            return Ok(Response::new(mm::ConnectResponse {
                status: Some(f.status()),
                ..Default::default()
            }));
        }
        Ok(Response::new(mm::ConnectResponse {
            status: Some(status::ok()),
            server_info: Some(mc::ServerInfo {
                build_tags: format!("sluice {}", env!("CARGO_PKG_VERSION")),
                deploy_mode: "sluice".into(),
                ..Default::default()
            }),
            identifier: 1,
        }))
    }

    async fn get_version(
        &self,
        _: Request<mm::GetVersionRequest>,
    ) -> Reply<mm::GetVersionResponse> {
        Ok(Response::new(mm::GetVersionResponse {
            status: Some(status::ok()),
            version: format!("v2.6.0-sluice-{}", env!("CARGO_PKG_VERSION")),
        }))
    }

    async fn create_collection(&self, r: Request<mm::CreateCollectionRequest>) -> Reply<Status> {
        let (db, r) = entered!(self, r);
        Ok(Response::new(status::of(&self.do_create(&db, r).await)))
    }

    async fn alter_collection(&self, r: Request<mm::AlterCollectionRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let result = async {
            let c = self
                .collection_named_or(&r.collection_name, r.collection_id)
                .await?;
            let set = crate::properties::to_sluice(&r.properties)?;
            let delete = crate::properties::keys_to_sluice(&r.delete_keys)?;
            self.alter(&c.schema.name, set, delete).await
        }
        .await;
        Ok(Response::new(status::of(&result)))
    }

    async fn run_analyzer(
        &self,
        r: Request<mm::RunAnalyzerRequest>,
    ) -> Reply<mm::RunAnalyzerResponse> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(match self.do_run_analyzer(r).await {
            Ok(results) => mm::RunAnalyzerResponse {
                status: Some(status::ok()),
                results,
            },
            Err(f) => mm::RunAnalyzerResponse {
                status: Some(f.status()),
                results: Vec::new(),
            },
        }))
    }

    async fn truncate_collection(
        &self,
        r: Request<mm::TruncateCollectionRequest>,
    ) -> Reply<mm::TruncateCollectionResponse> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(mm::TruncateCollectionResponse {
            status: Some(status::of(&self.do_truncate(r).await)),
        }))
    }

    async fn alter_collection_field(
        &self,
        r: Request<mm::AlterCollectionFieldRequest>,
    ) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(&self.do_alter_field(r).await)))
    }

    async fn add_collection_field(
        &self,
        r: Request<mm::AddCollectionFieldRequest>,
    ) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(&self.do_add_field(r).await)))
    }

    async fn drop_collection(&self, r: Request<mm::DropCollectionRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let name = r.collection_name;
        let request = v1::DropCollectionRequest { name: name.clone() };
        let result = self
            .catalog(
                &name,
                |mut c| async move { c.drop_collection(request).await },
            )
            .await;
        Ok(Response::new(status::of(&result)))
    }

    async fn has_collection(
        &self,
        r: Request<mm::HasCollectionRequest>,
    ) -> Reply<mm::BoolResponse> {
        let (_db, r) = entered!(self, r);
        let name = r.collection_name;
        let (status, value) = match self.collection(&name).await {
            Ok(_) => (status::ok(), true),
            Err(f) if f.is_collection_not_found() => (status::ok(), false),
            Err(f) => (f.status(), false),
        };
        Ok(Response::new(mm::BoolResponse {
            status: Some(status),
            value,
        }))
    }

    async fn describe_collection(
        &self,
        r: Request<mm::DescribeCollectionRequest>,
    ) -> Reply<mm::DescribeCollectionResponse> {
        let (db, r) = entered!(self, r);
        let name = r.collection_name;
        let described = match self.collection(&name).await {
            Ok(c) => self.aliases(&c.schema.name).await.map(|a| (c, a)),
            Err(f) => Err(f),
        };
        Ok(Response::new(match described {
            Ok((c, aliases)) => {
                let ts = c.info.created_timestamp;
                let mut schema = schema_to_milvus(&c.schema, c.props());
                schema.name = database::local(&schema.name).to_owned();
                mm::DescribeCollectionResponse {
                    aliases,
                    status: Some(status::ok()),
                    collection_name: schema.name.clone(),
                    schema: Some(schema),
                    collection_id: c.info.collection_id,
                    virtual_channel_names: c.info.vchannels.clone(),
                    physical_channel_names: c
                        .vchannels()
                        .unwrap_or_default()
                        .iter()
                        .map(|v| v.pchannel().as_str().to_owned())
                        .collect(),
                    created_timestamp: ts,
                    created_utc_timestamp: ts >> 18,
                    shards_num: c.info.vchannels.len() as i32,
                    consistency_level: c.consistency(),
                    db_name: db,
                    num_partitions: c.info.partitions.len() as i64,
                    properties: crate::properties::to_milvus(c.props()),
                    ..Default::default()
                }
            }
            Err(f) => mm::DescribeCollectionResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn show_collections(
        &self,
        r: Request<mm::ShowCollectionsRequest>,
    ) -> Reply<mm::ShowCollectionsResponse> {
        let metadata = r.metadata().clone();
        let (db, _) = entered!(self, r);
        let result = async {
            if !database::is_default(&db) {
                self.database(&db).await?;
            }
            self.coord
                .clone()
                .list_collections(v1::ListCollectionsRequest {})
                .await
                .map_err(|s| Failure::from_client(&ClientError::from_status(&s), ""))
        }
        .await;
        // With authorization on, a caller sees the collections its grants name (Milvus's).
        let result = match result {
            Ok(list) => {
                let mut list = list.into_inner();
                let local = |c: &v1::CollectionInfo| {
                    c.schema
                        .as_ref()
                        .map(|s| database::local(&s.name).to_owned())
                        .unwrap_or_default()
                };
                let names = list.collections.iter().map(local).collect();
                let visible: std::collections::HashSet<String> = self
                    .rbac
                    .visible(&metadata, &db, names)
                    .await?
                    .into_iter()
                    .collect();
                list.collections.retain(|c| visible.contains(&local(c)));
                Ok(Response::new(list))
            }
            Err(f) => Err(f),
        };
        Ok(Response::new(match result {
            Ok(list) => {
                let sluice_name = |c: &v1::CollectionInfo| {
                    c.schema
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default()
                };
                let list: Vec<v1::CollectionInfo> = list
                    .into_inner()
                    .collections
                    .into_iter()
                    .filter(|c| database::database_of(&sluice_name(c)) == db)
                    .collect();
                let name = |c: &v1::CollectionInfo| database::local(&sluice_name(c)).to_owned();
                mm::ShowCollectionsResponse {
                    status: Some(status::ok()),
                    collection_names: list.iter().map(name).collect(),
                    collection_ids: list.iter().map(|c| c.collection_id).collect(),
                    created_timestamps: list.iter().map(|c| c.created_timestamp).collect(),
                    created_utc_timestamps: list
                        .iter()
                        .map(|c| c.created_timestamp >> 18)
                        .collect(),
                    query_service_available: list
                        .iter()
                        .map(|c| c.load_state != v1::LoadState::Released as i32)
                        .collect(),
                    shards_num: list.iter().map(|c| c.vchannels.len() as i32).collect(),
                    ..Default::default()
                }
            }
            Err(f) => database::Failed::failed(f),
        }))
    }

    async fn rename_collection(&self, r: Request<mm::RenameCollectionRequest>) -> Reply<Status> {
        let db = database::of(&r.get_ref().db_name, r.metadata().get(database::HEADER));
        self.authorize(&r, &db).await?;
        let r = r.into_inner();
        let result = async {
            let new_db = match r.new_db_name.as_str() {
                "" => db.as_str(),
                other => other,
            };
            if !database::is_default(new_db) {
                self.database(new_db).await?;
            }
            let name = database::sluice_name(&db, &r.old_name)?;
            let request = v1::RenameCollectionRequest {
                name: name.clone(),
                new_name: database::sluice_name(new_db, &r.new_name)?,
            };
            self.catalog(
                &name,
                |mut c| async move { c.rename_collection(request).await },
            )
            .await
        }
        .await;
        Ok(Response::new(status::of(&result)))
    }

    async fn get_collection_statistics(
        &self,
        r: Request<mm::GetCollectionStatisticsRequest>,
    ) -> Reply<mm::GetCollectionStatisticsResponse> {
        let (_db, r) = entered!(self, r);
        let name = r.collection_name;
        let result = async {
            let c = self.collection(&name).await?;
            Ok::<_, Failure>(self.keys_matching(&c, "", Vec::new()).await?.len())
        }
        .await;
        Ok(Response::new(match result {
            Ok(n) => mm::GetCollectionStatisticsResponse {
                status: Some(status::ok()),
                stats: vec![kv("row_count", n.to_string())],
            },
            Err(f) => mm::GetCollectionStatisticsResponse {
                status: Some(f.status()),
                stats: Vec::new(),
            },
        }))
    }

    async fn load_collection(&self, r: Request<mm::LoadCollectionRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(
            &self
                .load(&r.collection_name, r.replica_number, Vec::new())
                .await,
        )))
    }

    async fn release_collection(&self, r: Request<mm::ReleaseCollectionRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let name = r.collection_name;
        let request = v1::ReleaseCollectionRequest { name: name.clone() };
        let result = self
            .catalog(
                &name,
                |mut c| async move { c.release_collection(request).await },
            )
            .await;
        Ok(Response::new(status::of(&result)))
    }

    async fn get_loading_progress(
        &self,
        r: Request<mm::GetLoadingProgressRequest>,
    ) -> Reply<mm::GetLoadingProgressResponse> {
        let (_db, r) = entered!(self, r);
        let state = match self.collection(&r.collection_name).await {
            Ok(c) => c.load_state(&r.partition_names),
            Err(f) => Err(f),
        };
        Ok(Response::new(match state {
            Ok(state) => mm::GetLoadingProgressResponse {
                status: Some(status::ok()),
                progress: if state == mc::LoadState::Loaded {
                    100
                } else {
                    0
                },
                refresh_progress: 100,
            },
            Err(f) => mm::GetLoadingProgressResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn get_load_state(
        &self,
        r: Request<mm::GetLoadStateRequest>,
    ) -> Reply<mm::GetLoadStateResponse> {
        let (_db, r) = entered!(self, r);
        let state = match self.collection(&r.collection_name).await {
            Ok(c) => c.load_state(&r.partition_names),
            Err(f) => Err(f),
        };
        Ok(Response::new(match state {
            Ok(state) => mm::GetLoadStateResponse {
                status: Some(status::ok()),
                state: state as i32,
            },
            Err(f) => mm::GetLoadStateResponse {
                status: Some(f.status()),
                state: mc::LoadState::NotExist as i32,
            },
        }))
    }

    async fn create_index(&self, r: Request<mm::CreateIndexRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(&self.do_create_index(r).await)))
    }

    async fn describe_index(
        &self,
        r: Request<mm::DescribeIndexRequest>,
    ) -> Reply<mm::DescribeIndexResponse> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(match self.do_describe_index(r).await {
            Ok(index_descriptions) => mm::DescribeIndexResponse {
                status: Some(status::ok()),
                index_descriptions,
            },
            Err(f) => mm::DescribeIndexResponse {
                status: Some(f.status()),
                index_descriptions: Vec::new(),
            },
        }))
    }

    async fn drop_index(&self, r: Request<mm::DropIndexRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let name = r.collection_name;
        let result = async {
            let c = self.collection(&name).await?;
            let mut indexes = c.indexes();
            let before = indexes.len();
            indexes.retain(|i| !matches_index(i, &r.index_name, &r.field_name));
            match before - indexes.len() {
                0 => Err(Failure::index_not_found(&name)),
                1 => self.record_indexes(&c.schema.name, &indexes).await,
                _ => Err(Failure::invalid(
                    "the collection has several indexes: name the one to drop",
                )),
            }
        }
        .await;
        Ok(Response::new(status::of(&result)))
    }

    async fn alter_index(&self, r: Request<mm::AlterIndexRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(&self.do_alter_index(r).await)))
    }

    async fn create_partition(&self, r: Request<mm::CreatePartitionRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let request = v1::CreatePartitionRequest {
            collection_name: r.collection_name.clone(),
            partition_name: r.partition_name,
        };
        let result = match self.partition_ddl_allowed(&r.collection_name).await {
            Ok(()) => {
                self.catalog(&r.collection_name, |mut c| async move {
                    c.create_partition(request).await
                })
                .await
            }
            Err(f) => Err(f),
        };
        Ok(Response::new(status::of(&result)))
    }

    async fn drop_partition(&self, r: Request<mm::DropPartitionRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let request = v1::DropPartitionRequest {
            collection_name: r.collection_name.clone(),
            partition_name: r.partition_name,
        };
        let result = match self.partition_ddl_allowed(&r.collection_name).await {
            Ok(()) => {
                self.catalog(&r.collection_name, |mut c| async move {
                    c.drop_partition(request).await
                })
                .await
            }
            Err(f) => Err(f),
        };
        Ok(Response::new(status::of(&result)))
    }

    async fn load_partitions(&self, r: Request<mm::LoadPartitionsRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(&self.do_load_partitions(r).await)))
    }

    async fn release_partitions(&self, r: Request<mm::ReleasePartitionsRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(
            &self.do_release_partitions(r).await,
        )))
    }

    async fn create_alias(&self, r: Request<mm::CreateAliasRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(
            &self.set_alias(r.alias, r.collection_name, false).await,
        )))
    }

    async fn alter_alias(&self, r: Request<mm::AlterAliasRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(status::of(
            &self.set_alias(r.alias, r.collection_name, true).await,
        )))
    }

    async fn drop_alias(&self, r: Request<mm::DropAliasRequest>) -> Reply<Status> {
        let (_db, r) = entered!(self, r);
        let alias = r.alias;
        let result = self
            .coord
            .clone()
            .drop_alias(v1::DropAliasRequest { alias })
            .await
            .map(|_| ())
            .map_err(|s| Failure::from_client(&ClientError::from_status(&s), ""));
        Ok(Response::new(status::of(&result)))
    }

    async fn describe_alias(
        &self,
        r: Request<mm::DescribeAliasRequest>,
    ) -> Reply<mm::DescribeAliasResponse> {
        let (db, r) = entered!(self, r);
        let alias = r.alias;
        let found = match self.alias_list(None).await {
            Ok(all) => all
                .into_iter()
                .find(|a| a.alias == alias)
                .ok_or_else(|| Failure::alias_not_found(&alias)),
            Err(f) => Err(f),
        };
        Ok(Response::new(match found {
            Ok(a) => mm::DescribeAliasResponse {
                status: Some(status::ok()),
                db_name: db,
                alias: database::local(&a.alias).to_owned(),
                collection: database::local(&a.collection_name).to_owned(),
            },
            Err(f) => mm::DescribeAliasResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn list_aliases(
        &self,
        r: Request<mm::ListAliasesRequest>,
    ) -> Reply<mm::ListAliasesResponse> {
        let (db, r) = entered!(self, r);
        let name = r.collection_name;
        let listed = if name.is_empty() {
            self.alias_list(None).await.map(|all| {
                all.iter()
                    .filter(|a| database::database_of(&a.alias) == db)
                    .map(|a| database::local(&a.alias).to_owned())
                    .collect()
            })
        } else {
            match self.collection(&name).await {
                Ok(c) => self.aliases(&c.schema.name).await,
                Err(f) => Err(f),
            }
        };
        Ok(Response::new(match listed {
            Ok(aliases) => mm::ListAliasesResponse {
                status: Some(status::ok()),
                collection_name: database::local(&name).to_owned(),
                db_name: db,
                aliases,
            },
            Err(f) => mm::ListAliasesResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn has_partition(&self, r: Request<mm::HasPartitionRequest>) -> Reply<mm::BoolResponse> {
        let (_db, r) = entered!(self, r);
        Ok(Response::new(
            match self.collection(&r.collection_name).await {
                Ok(c) => mm::BoolResponse {
                    status: Some(status::ok()),
                    value: c.info.partitions.iter().any(|p| p.name == r.partition_name),
                },
                Err(f) => mm::BoolResponse {
                    status: Some(f.status()),
                    value: false,
                },
            },
        ))
    }

    async fn show_partitions(
        &self,
        r: Request<mm::ShowPartitionsRequest>,
    ) -> Reply<mm::ShowPartitionsResponse> {
        let (_db, r) = entered!(self, r);
        let name = r.collection_name;
        Ok(Response::new(match self.collection(&name).await {
            Ok(c) => mm::ShowPartitionsResponse {
                status: Some(status::ok()),
                partition_names: c.info.partitions.iter().map(|p| p.name.clone()).collect(),
                partition_i_ds: c.info.partitions.iter().map(|p| p.partition_id).collect(),
                created_timestamps: c
                    .info
                    .partitions
                    .iter()
                    .map(|_| c.info.created_timestamp)
                    .collect(),
                created_utc_timestamps: c
                    .info
                    .partitions
                    .iter()
                    .map(|_| c.info.created_timestamp >> 18)
                    .collect(),
                ..Default::default()
            },
            Err(f) => mm::ShowPartitionsResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn insert(&self, r: Request<mm::InsertRequest>) -> Reply<mm::MutationResult> {
        let (db, r) = entered!(self, r);
        let result = async {
            self.allowed(&db, Access::Write).await?;
            self.do_insert(
                &r.collection_name,
                &r.partition_name,
                &r.fields_data,
                r.num_rows,
                Write::Insert,
            )
            .await
        };
        Ok(Response::new(mutation(result.await)))
    }

    async fn upsert(&self, r: Request<mm::UpsertRequest>) -> Reply<mm::MutationResult> {
        let (db, r) = entered!(self, r);
        if let Err(f) = self.allowed(&db, Access::Write).await {
            return Ok(Response::new(mutation(Err(f))));
        }
        use ms::field_partial_update_op::OpType;
        let mut ops = HashMap::new();
        for op in &r.field_ops {
            let array_op = match OpType::try_from(op.op) {
                Ok(OpType::Replace) => continue,
                Ok(OpType::ArrayAppend) => ArrayOp::Append,
                Ok(OpType::ArrayRemove) => ArrayOp::Remove,
                Err(_) => {
                    return Ok(Response::new(mutation(Err(Failure::invalid(format!(
                        "field operation {} on {:?} is not one Milvus has",
                        op.op, op.field_name
                    ))))));
                }
            };
            if ops.insert(op.field_name.clone(), array_op).is_some() {
                return Ok(Response::new(mutation(Err(Failure::invalid(format!(
                    "field {:?}: one ARRAY_APPEND or ARRAY_REMOVE per field",
                    op.field_name
                ))))));
            }
        }
        // An array operation makes the upsert a partial one (as pymilvus makes it).
        let write = if r.partial_update || !ops.is_empty() {
            Write::PartialUpsert(&ops)
        } else {
            Write::Upsert
        };
        Ok(Response::new(mutation(
            self.do_insert(
                &r.collection_name,
                &r.partition_name,
                &r.fields_data,
                r.num_rows,
                write,
            )
            .await,
        )))
    }

    async fn delete(&self, r: Request<mm::DeleteRequest>) -> Reply<mm::MutationResult> {
        let (db, r) = entered!(self, r);
        let result = async {
            self.allowed(&db, Access::Write).await?;
            self.do_delete(r).await
        };
        Ok(Response::new(mutation(result.await)))
    }

    async fn hybrid_search(&self, r: Request<mm::HybridSearchRequest>) -> Reply<mm::SearchResults> {
        let (db, r) = entered!(self, r);
        let collection_name = database::local(&r.collection_name).to_owned();
        let result = async {
            self.allowed(&db, Access::Read).await?;
            self.do_hybrid_search(r).await
        };
        Ok(Response::new(match result.await {
            Ok((results, session_ts)) => mm::SearchResults {
                status: Some(status::ok()),
                results: Some(results),
                collection_name,
                session_ts,
            },
            Err(f) => mm::SearchResults {
                status: Some(f.status()),
                collection_name,
                ..Default::default()
            },
        }))
    }

    async fn search(&self, r: Request<mm::SearchRequest>) -> Reply<mm::SearchResults> {
        let (db, r) = entered!(self, r);
        let collection_name = database::local(&r.collection_name).to_owned();
        let result = async {
            self.allowed(&db, Access::Read).await?;
            self.do_search(r).await
        };
        Ok(Response::new(match result.await {
            Ok((results, session_ts)) => mm::SearchResults {
                status: Some(status::ok()),
                results: Some(results),
                collection_name,
                session_ts,
            },
            Err(f) => mm::SearchResults {
                status: Some(f.status()),
                collection_name,
                ..Default::default()
            },
        }))
    }

    async fn query(&self, r: Request<mm::QueryRequest>) -> Reply<mm::QueryResults> {
        let (db, r) = entered!(self, r);
        let result = async {
            self.allowed(&db, Access::Read).await?;
            self.do_query(r).await
        };
        Ok(Response::new(match result.await {
            Ok(q) => q,
            Err(f) => mm::QueryResults {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn flush(&self, r: Request<mm::FlushRequest>) -> Reply<mm::FlushResponse> {
        let (db, r) = entered!(self, r);
        let flushed = async {
            let names = r
                .collection_names
                .iter()
                .map(|n| database::sluice_name(&db, n))
                .collect::<Result<Vec<_>, _>>()?;
            self.do_flush(&names).await
        };
        Ok(Response::new(match flushed.await {
            Ok(mut f) => {
                f.db_name = db;
                f
            }
            Err(f) => mm::FlushResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn get_flush_state(
        &self,
        r: Request<mm::GetFlushStateRequest>,
    ) -> Reply<mm::GetFlushStateResponse> {
        let db = database::of(&r.get_ref().db_name, r.metadata().get(database::HEADER));
        self.authorize(&r, &db).await?;
        // A flush answers once every shard sealed its segments; they are durable in the log.
        Ok(Response::new(mm::GetFlushStateResponse {
            status: Some(status::ok()),
            flushed: true,
        }))
    }

    async fn alloc_timestamp(
        &self,
        r: Request<mm::AllocTimestampRequest>,
    ) -> Reply<mm::AllocTimestampResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(match self.tso.allocate_timestamps(1).await {
            Ok(ts) => mm::AllocTimestampResponse {
                status: Some(status::ok()),
                timestamp: ts.0,
            },
            Err(e) => mm::AllocTimestampResponse {
                status: Some(Failure::from_client(&e, "").status()),
                timestamp: 0,
            },
        }))
    }

    async fn create_database(&self, r: Request<mm::CreateDatabaseRequest>) -> Reply<Status> {
        self.authorize(&r, &r.get_ref().db_name).await?;
        let r = r.into_inner();
        let result = async {
            let properties = r.properties.into_iter().map(|p| (p.key, p.value)).collect();
            self.coord
                .clone()
                .create_database(v1::CreateDatabaseRequest {
                    name: r.db_name,
                    properties,
                })
                .await
                .map_err(|s| Failure::invalid(s.message().to_owned()))
        }
        .await;
        self.limits.forget();
        Ok(Response::new(status::of(&result)))
    }

    async fn drop_database(&self, r: Request<mm::DropDatabaseRequest>) -> Reply<Status> {
        self.authorize(&r, &r.get_ref().db_name).await?;
        let name = r.into_inner().db_name;
        let result = self
            .coord
            .clone()
            .drop_database(v1::DropDatabaseRequest { name })
            .await
            .map_err(|s| Failure::invalid(s.message().to_owned()));
        self.limits.forget();
        Ok(Response::new(status::of(&result)))
    }

    async fn alter_database(&self, r: Request<mm::AlterDatabaseRequest>) -> Reply<Status> {
        self.authorize(&r, &r.get_ref().db_name).await?;
        let r = r.into_inner();
        let result = async {
            self.database(&r.db_name).await?;
            self.coord
                .clone()
                .alter_database_properties(v1::AlterDatabasePropertiesRequest {
                    name: r.db_name,
                    set: r.properties.into_iter().map(|p| (p.key, p.value)).collect(),
                    delete_keys: r.delete_keys,
                })
                .await
                .map_err(|s| Failure::invalid(s.message().to_owned()))
        }
        .await;
        self.limits.forget();
        Ok(Response::new(status::of(&result)))
    }

    async fn list_databases(
        &self,
        r: Request<mm::ListDatabasesRequest>,
    ) -> Reply<mm::ListDatabasesResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(match self.databases().await {
            Ok(all) => mm::ListDatabasesResponse {
                status: Some(status::ok()),
                db_names: all.iter().map(|d| d.name.clone()).collect(),
                created_timestamp: all.iter().map(|d| d.created_unix_ms << 18).collect(),
                db_ids: all.iter().map(|d| d.database_id).collect(),
            },
            Err(f) => mm::ListDatabasesResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn describe_database(
        &self,
        r: Request<mm::DescribeDatabaseRequest>,
    ) -> Reply<mm::DescribeDatabaseResponse> {
        self.authorize(&r, &r.get_ref().db_name).await?;
        let name = r.into_inner().db_name;
        Ok(Response::new(match self.database(&name).await {
            Ok(d) => mm::DescribeDatabaseResponse {
                status: Some(status::ok()),
                db_name: d.name,
                db_id: d.database_id,
                created_timestamp: d.created_unix_ms << 18,
                properties: d.properties.into_iter().map(|(k, v)| kv(&k, v)).collect(),
            },
            Err(f) => database::Failed::failed(f),
        }))
    }

    async fn get_partition_statistics(
        &self,
        r: Request<mm::GetPartitionStatisticsRequest>,
    ) -> Reply<mm::GetPartitionStatisticsResponse> {
        let (_db, r) = entered!(self, r);
        let result = async {
            let c = self.collection(&r.collection_name).await?;
            let partition = c.partition(&r.partition_name)?;
            Ok::<_, Failure>(self.keys_matching(&c, "", vec![partition]).await?.len())
        }
        .await;
        Ok(answer(result.map(|n| mm::GetPartitionStatisticsResponse {
            stats: vec![kv("row_count", n.to_string())],
            ..Default::default()
        })))
    }

    /// Flushes every collection of the call's database (its `dbname` header).
    async fn flush_all(&self, r: Request<mm::FlushAllRequest>) -> Reply<mm::FlushAllResponse> {
        let db = database::of("", r.metadata().get(database::HEADER));
        self.authorize(&r, &db).await?;
        let result = async {
            let names: Vec<String> = self
                .collection_names()
                .await?
                .into_iter()
                .filter(|n| database::database_of(n) == db)
                .collect();
            self.do_flush(&names).await
        }
        .await;
        // Deprecated in Milvus's proto, yet what pymilvus waits on (GetFlushAllState).
        #[allow(deprecated)]
        Ok(Response::new(match result {
            Ok(f) => mm::FlushAllResponse {
                status: Some(status::ok()),
                flush_all_ts: f.coll_flush_ts.values().copied().max().unwrap_or(0),
                ..Default::default()
            },
            Err(f) => mm::FlushAllResponse {
                status: Some(f.status()),
                ..Default::default()
            },
        }))
    }

    async fn get_flush_all_state(
        &self,
        r: Request<mm::GetFlushAllStateRequest>,
    ) -> Reply<mm::GetFlushAllStateResponse> {
        self.authorize(&r, "").await?;
        // FlushAll answers once every shard of every collection sealed its segments.
        Ok(Response::new(mm::GetFlushAllStateResponse {
            status: Some(status::ok()),
            flushed: true,
            ..Default::default()
        }))
    }

    async fn get_persistent_segment_info(
        &self,
        r: Request<mm::GetPersistentSegmentInfoRequest>,
    ) -> Reply<mm::GetPersistentSegmentInfoResponse> {
        let (_db, r) = entered!(self, r);
        let flushed = mc::SegmentState::Flushed as i32;
        let result = async {
            let c = self.collection(&r.collection_name).await?;
            let listed = self.segment_manifests(&c).await?;
            // Every segment Sluice keeps is flushed (growing rows live in the WAL).
            if !r.states.is_empty() && !r.states.contains(&flushed) {
                return Ok(Vec::new());
            }
            Ok::<_, Failure>(
                listed
                    .into_iter()
                    .map(|m| mm::PersistentSegmentInfo {
                        segment_id: m.segment_id,
                        collection_id: m.collection_id,
                        partition_id: m.partition_id,
                        num_rows: i64::try_from(m.rows).unwrap_or(i64::MAX),
                        state: flushed,
                        level: mc::SegmentLevel::L1 as i32,
                        insert_channel: m.vchannel,
                        ..Default::default()
                    })
                    .collect(),
            )
        }
        .await;
        Ok(answer(result.map(|infos| {
            mm::GetPersistentSegmentInfoResponse {
                infos,
                ..Default::default()
            }
        })))
    }

    async fn manual_compaction(
        &self,
        r: Request<mm::ManualCompactionRequest>,
    ) -> Reply<mm::ManualCompactionResponse> {
        let (_db, r) = entered!(self, r);
        let result = async {
            if r.major_compaction {
                return Err(Failure::invalid(
                    "majorCompaction (clustering compaction) needs a clustering key; Sluice has \
                     none — compact without it",
                ));
            }
            let c = self
                .collection_named_or(&r.collection_name, r.collection_id)
                .await?;
            let info = self.compact(&c).await?;
            Ok::<_, Failure>(mm::ManualCompactionResponse {
                compaction_id: info.compaction_id,
                compaction_plan_count: info.vchannels.len() as i32,
                ..Default::default()
            })
        }
        .await;
        Ok(answer(result))
    }

    async fn get_compaction_state(
        &self,
        r: Request<mm::GetCompactionStateRequest>,
    ) -> Reply<mm::GetCompactionStateResponse> {
        self.authorize(&r, "").await?;
        let id = r.into_inner().compaction_id;
        let result = self.compaction(id).await.map(|info| {
            let done = info.done.len() as i64;
            mm::GetCompactionStateResponse {
                state: compaction_state(&info) as i32,
                executing_plan_no: info.vchannels.len() as i64 - done,
                completed_plan_no: done,
                ..Default::default()
            }
        });
        Ok(answer(result))
    }

    async fn get_compaction_state_with_plans(
        &self,
        r: Request<mm::GetCompactionPlansRequest>,
    ) -> Reply<mm::GetCompactionPlansResponse> {
        self.authorize(&r, "").await?;
        let r = r.into_inner();
        let result = async {
            // No compaction but a collection (pymilvus's `list_compaction_tasks`): every
            // compaction of the collection still kept.
            let compactions = if r.compaction_id == 0
                && (!r.collection_name.is_empty() || r.collection_id != 0)
            {
                let c = self
                    .collection_named_or(&r.collection_name, r.collection_id)
                    .await?;
                self.compactions(&c).await?
            } else {
                vec![self.compaction(r.compaction_id).await?]
            };
            let executing = compactions
                .iter()
                .any(|info| compaction_state(info) == mc::CompactionState::Executing);
            Ok::<_, Failure>(mm::GetCompactionPlansResponse {
                state: if executing {
                    mc::CompactionState::Executing
                } else {
                    mc::CompactionState::Completed
                } as i32,
                merge_infos: compactions.iter().flat_map(compaction_plans).collect(),
                ..Default::default()
            })
        }
        .await;
        Ok(answer(result))
    }

    async fn get_replicas(
        &self,
        r: Request<mm::GetReplicasRequest>,
    ) -> Reply<mm::GetReplicasResponse> {
        let (_db, r) = entered!(self, r);
        let result = async {
            let c = self
                .collection_named_or(&r.collection_name, r.collection_id)
                .await?;
            if c.released_now() {
                return Err(Failure::collection_not_loaded(&c.schema.name));
            }
            let placed = self.placements(&c).await?;
            let released = c.released();
            let partition_ids: Vec<i64> = c
                .info
                .partitions
                .iter()
                .map(|p| p.partition_id)
                .filter(|id| !released.contains(id))
                .collect();
            // Sluice's replica r of every shard is Milvus's replica r of the collection.
            let mut by_replica: BTreeMap<u32, Vec<&v1::ReplicaPlacement>> = BTreeMap::new();
            for p in &placed.replicas {
                by_replica.entry(p.replica).or_default().push(p);
            }
            Ok::<_, Failure>(
                by_replica
                    .into_iter()
                    .map(|(replica, shards)| {
                        let mut node_ids: Vec<i64> = shards
                            .iter()
                            .filter(|p| p.node_id != 0)
                            .map(|p| p.node_id as i64)
                            .collect();
                        node_ids.sort_unstable();
                        node_ids.dedup();
                        mm::ReplicaInfo {
                            replica_id: replica_id(c.info.collection_id, replica),
                            collection_id: c.info.collection_id,
                            partition_ids: partition_ids.clone(),
                            shard_replicas: shards
                                .iter()
                                .map(|p| mm::ShardReplica {
                                    leader_id: p.node_id as i64,
                                    leader_addr: p.address.clone(),
                                    dm_channel_name: p.vchannel.clone(),
                                    node_ids: if r.with_shard_nodes && p.node_id != 0 {
                                        vec![p.node_id as i64]
                                    } else {
                                        Vec::new()
                                    },
                                })
                                .collect(),
                            node_ids,
                            resource_group_name: DEFAULT_RESOURCE_GROUP.into(),
                            ..Default::default()
                        }
                    })
                    .collect(),
            )
        }
        .await;
        Ok(answer(result.map(|replicas| mm::GetReplicasResponse {
            replicas,
            ..Default::default()
        })))
    }

    async fn get_query_segment_info(
        &self,
        r: Request<mm::GetQuerySegmentInfoRequest>,
    ) -> Reply<mm::GetQuerySegmentInfoResponse> {
        let (_db, r) = entered!(self, r);
        let result = async {
            let c = self.collection(&r.collection_name).await?;
            if c.released_now() {
                return Err(Failure::collection_not_loaded(&c.schema.name));
            }
            let placed = self.placements(&c).await?;
            let listed = self.segment_manifests(&c).await?;
            let released = c.released();
            let workers: HashMap<i64, u64> = placed
                .segments
                .iter()
                .map(|p| (p.segment_id, p.node_id))
                .collect();
            // A segment no query worker holds is held by its shard's primary delegator.
            let owners: HashMap<&str, u64> = placed
                .replicas
                .iter()
                .filter(|p| p.replica == 0)
                .map(|p| (p.vchannel.as_str(), p.node_id))
                .collect();
            let index = c.indexes().into_iter().find(is_vector_index);
            let index_name = index
                .as_ref()
                .and_then(|i| i.get("name")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Failure>(
                listed
                    .into_iter()
                    .filter(|m| !released.contains(&m.partition_id))
                    .map(|m| {
                        let node = workers
                            .get(&m.segment_id)
                            .or_else(|| owners.get(m.vchannel.as_str()))
                            .copied()
                            .unwrap_or(0) as i64;
                        mm::QuerySegmentInfo {
                            segment_id: m.segment_id,
                            collection_id: m.collection_id,
                            partition_id: m.partition_id,
                            num_rows: i64::try_from(m.rows).unwrap_or(i64::MAX),
                            index_name: index_name.clone(),
                            node_ids: if node == 0 { Vec::new() } else { vec![node] },
                            state: mc::SegmentState::Sealed as i32,
                            level: mc::SegmentLevel::L1 as i32,
                            ..Default::default()
                        }
                    })
                    .collect(),
            )
        }
        .await;
        Ok(answer(result.map(|infos| {
            mm::GetQuerySegmentInfoResponse {
                infos,
                ..Default::default()
            }
        })))
    }

    async fn create_credential(&self, r: Request<mm::CreateCredentialRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.create_credential(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn update_credential(&self, r: Request<mm::UpdateCredentialRequest>) -> Reply<Status> {
        let caller = self.authorize(&r, "").await?;
        let result = self
            .rbac
            .update_credential(r.into_inner(), caller.as_deref())
            .await;
        Ok(Response::new(status::of(&result)))
    }

    async fn delete_credential(&self, r: Request<mm::DeleteCredentialRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.delete_credential(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn list_cred_users(
        &self,
        r: Request<mm::ListCredUsersRequest>,
    ) -> Reply<mm::ListCredUsersResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(database::answer(
            self.rbac
                .list_cred_users()
                .await
                .map(|usernames| mm::ListCredUsersResponse {
                    status: Some(status::ok()),
                    usernames,
                }),
        )))
    }

    async fn create_role(&self, r: Request<mm::CreateRoleRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.create_role(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn drop_role(&self, r: Request<mm::DropRoleRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.drop_role(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn operate_user_role(&self, r: Request<mm::OperateUserRoleRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.operate_user_role(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn select_role(
        &self,
        r: Request<mm::SelectRoleRequest>,
    ) -> Reply<mm::SelectRoleResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(database::answer(
            self.rbac
                .select_role(r.into_inner())
                .await
                .map(|results| mm::SelectRoleResponse {
                    status: Some(status::ok()),
                    results,
                }),
        )))
    }

    async fn select_user(
        &self,
        r: Request<mm::SelectUserRequest>,
    ) -> Reply<mm::SelectUserResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(database::answer(
            self.rbac
                .select_user(r.into_inner())
                .await
                .map(|results| mm::SelectUserResponse {
                    status: Some(status::ok()),
                    results,
                }),
        )))
    }

    async fn operate_privilege(&self, r: Request<mm::OperatePrivilegeRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.operate_privilege(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn operate_privilege_v2(
        &self,
        r: Request<mm::OperatePrivilegeV2Request>,
    ) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.operate_privilege_v2(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn select_grant(
        &self,
        r: Request<mm::SelectGrantRequest>,
    ) -> Reply<mm::SelectGrantResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(database::answer(
            self.rbac
                .select_grant(r.into_inner())
                .await
                .map(|entities| mm::SelectGrantResponse {
                    status: Some(status::ok()),
                    entities,
                }),
        )))
    }

    async fn backup_rbac(
        &self,
        r: Request<mm::BackupRbacMetaRequest>,
    ) -> Reply<mm::BackupRbacMetaResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(database::answer(
            self.rbac
                .backup()
                .await
                .map(|meta| mm::BackupRbacMetaResponse {
                    status: Some(status::ok()),
                    rbac_meta: Some(meta),
                }),
        )))
    }

    async fn restore_rbac(&self, r: Request<mm::RestoreRbacMetaRequest>) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let meta = r.into_inner().rbac_meta.unwrap_or_default();
        let result = self.rbac.restore(meta).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn create_privilege_group(
        &self,
        r: Request<mm::CreatePrivilegeGroupRequest>,
    ) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.create_privilege_group(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn drop_privilege_group(
        &self,
        r: Request<mm::DropPrivilegeGroupRequest>,
    ) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.drop_privilege_group(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn list_privilege_groups(
        &self,
        r: Request<mm::ListPrivilegeGroupsRequest>,
    ) -> Reply<mm::ListPrivilegeGroupsResponse> {
        self.authorize(&r, "").await?;
        Ok(Response::new(database::answer(
            self.rbac
                .list_privilege_groups()
                .await
                .map(|privilege_groups| mm::ListPrivilegeGroupsResponse {
                    status: Some(status::ok()),
                    privilege_groups,
                }),
        )))
    }

    async fn operate_privilege_group(
        &self,
        r: Request<mm::OperatePrivilegeGroupRequest>,
    ) -> Reply<Status> {
        self.authorize(&r, "").await?;
        let result = self.rbac.operate_privilege_group(r.into_inner()).await;
        Ok(Response::new(status::of(&result)))
    }

    async fn get_index_state(
        &self,
        r: Request<mm::GetIndexStateRequest>,
    ) -> Reply<mm::GetIndexStateResponse> {
        let (metadata, _, r) = r.into_parts();
        let described = self
            .described_index(
                metadata,
                r.db_name,
                r.collection_name,
                r.field_name,
                r.index_name,
            )
            .await?;
        Ok(Response::new(match described {
            Ok(d) => mm::GetIndexStateResponse {
                status: Some(status::ok()),
                state: d.first().map_or(mc::IndexState::None as i32, |i| i.state),
                fail_reason: String::new(),
            },
            Err(status) => mm::GetIndexStateResponse {
                status: Some(status),
                ..Default::default()
            },
        }))
    }

    async fn get_index_build_progress(
        &self,
        r: Request<mm::GetIndexBuildProgressRequest>,
    ) -> Reply<mm::GetIndexBuildProgressResponse> {
        let (metadata, _, r) = r.into_parts();
        let described = self
            .described_index(
                metadata,
                r.db_name,
                r.collection_name,
                r.field_name,
                r.index_name,
            )
            .await?;
        Ok(Response::new(match described {
            Ok(d) => mm::GetIndexBuildProgressResponse {
                status: Some(status::ok()),
                indexed_rows: d.first().map_or(0, |i| i.indexed_rows),
                total_rows: d.first().map_or(0, |i| i.total_rows),
            },
            Err(status) => mm::GetIndexBuildProgressResponse {
                status: Some(status),
                ..Default::default()
            },
        }))
    }

    async fn get_index_statistics(
        &self,
        r: Request<mm::GetIndexStatisticsRequest>,
    ) -> Reply<mm::GetIndexStatisticsResponse> {
        let (metadata, _, r) = r.into_parts();
        let described = self
            .described_index(
                metadata,
                r.db_name,
                r.collection_name,
                String::new(),
                r.index_name,
            )
            .await?;
        Ok(Response::new(match described {
            Ok(index_descriptions) => mm::GetIndexStatisticsResponse {
                status: Some(status::ok()),
                index_descriptions,
            },
            Err(status) => mm::GetIndexStatisticsResponse {
                status: Some(status),
                index_descriptions: Vec::new(),
            },
        }))
    }

    async fn batch_describe_collection(
        &self,
        r: Request<mm::BatchDescribeCollectionRequest>,
    ) -> Reply<mm::BatchDescribeCollectionResponse> {
        let (metadata, _, r) = r.into_parts();
        let mut asked: Vec<(String, String)> = r
            .collection_name
            .iter()
            .map(|n| (r.db_name.clone(), n.clone()))
            .collect();
        for &id in &r.collection_id {
            match self.collection_named_or("", id).await {
                Ok(c) => asked.push((
                    database::database_of(&c.schema.name).to_owned(),
                    database::local(&c.schema.name).to_owned(),
                )),
                Err(f) => {
                    return Ok(Response::new(mm::BatchDescribeCollectionResponse {
                        status: Some(f.status()),
                        responses: Vec::new(),
                    }));
                }
            }
        }
        let mut responses = Vec::with_capacity(asked.len());
        for (db_name, collection_name) in asked {
            let mut one = Request::new(mm::DescribeCollectionRequest {
                db_name,
                collection_name,
                ..Default::default()
            });
            *one.metadata_mut() = metadata.clone();
            let described = self.describe_collection(one).await?.into_inner();
            if let Some(s) = described.status.as_ref().filter(|s| s.code != 0) {
                return Ok(Response::new(mm::BatchDescribeCollectionResponse {
                    status: Some(s.clone()),
                    responses: Vec::new(),
                }));
            }
            responses.push(described);
        }
        Ok(Response::new(mm::BatchDescribeCollectionResponse {
            status: Some(status::ok()),
            responses,
        }))
    }

    async fn get_component_states(
        &self,
        _: Request<mm::GetComponentStatesRequest>,
    ) -> Reply<mm::ComponentStates> {
        let reasons = self.unhealthy().await;
        let state = mm::ComponentInfo {
            node_id: 0,
            role: "Proxy".into(),
            state_code: if reasons.is_empty() {
                mc::StateCode::Healthy
            } else {
                mc::StateCode::Abnormal
            } as i32,
            extra_info: reasons.iter().map(|r| kv("reason", r.clone())).collect(),
        };
        Ok(Response::new(mm::ComponentStates {
            state: Some(state),
            subcomponent_states: Vec::new(),
            status: Some(status::ok()),
        }))
    }

    async fn check_health(
        &self,
        _: Request<mm::CheckHealthRequest>,
    ) -> Reply<mm::CheckHealthResponse> {
        let reasons = self.unhealthy().await;
        Ok(Response::new(mm::CheckHealthResponse {
            status: Some(status::ok()),
            is_healthy: reasons.is_empty(),
            reasons,
            ..Default::default()
        }))
    }
}

fn mutation(r: Result<mm::MutationResult, Failure>) -> mm::MutationResult {
    match r {
        Ok(m) => m,
        Err(f) => mm::MutationResult {
            status: Some(f.status()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_range_keeps_the_run_of_hits_between_its_bounds() {
        let l2 = Range::of(
            &params(r#"{"radius": 4.0, "range_filter": 1}"#),
            v1::MetricType::L2,
        )
        .unwrap()
        .unwrap();
        // Distances, nearest first: 0.5 is too near, 4.0 is not below the radius.
        assert_eq!(l2.run(&[0.5, 1.0, 2.0, 3.9, 4.0, 9.0]), (1, 4));
        assert_eq!(l2.run(&[5.0]), (0, 0));
        assert_eq!(l2.run(&[]), (0, 0));
        let cos = Range::of(&params(r#"{"radius": "0.2"}"#), v1::MetricType::Cosine)
            .unwrap()
            .unwrap();
        // Similarities, nearest first: everything above 0.2.
        assert_eq!(cos.run(&[0.99, 0.5, 0.2, 0.1]), (0, 2));
        let cos = Range::of(
            &params(r#"{"radius": 0.2, "range_filter": 0.9}"#),
            v1::MetricType::Ip,
        )
        .unwrap()
        .unwrap();
        assert_eq!(cos.run(&[0.99, 0.9, 0.5, 0.2, 0.1]), (1, 3));
        assert!(
            Range::of(&params(r#"{"ef": 10}"#), v1::MetricType::L2)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_grouped_answer_fills_groups_in_the_order_of_their_nearest_hit() {
        let batch = RecordBatch::try_from_iter([(
            "doc",
            Arc::new(arrow_array::Int64Array::from(vec![
                Some(1),
                Some(1),
                Some(2),
                None,
                Some(2),
                Some(1),
                Some(4),
                None,
            ])) as ArrayRef,
        )])
        .unwrap();
        let g = |size| Grouping {
            field: "doc".into(),
            size,
        };
        // Two per group, three groups (1, 2, null); the first skipped by the offset.
        assert_eq!(g(2).pick(&batch, 0..8, 1, 2).unwrap(), [2, 4, 3, 7]);
        assert_eq!(g(2).pick(&batch, 0..8, 0, 1).unwrap(), [0, 1]);
        assert_eq!(g(1).pick(&batch, 0..8, 0, 10).unwrap(), [0, 2, 3, 6]);
        // Only hits in the run count.
        assert_eq!(g(1).pick(&batch, 4..7, 0, 10).unwrap(), [4, 5, 6]);
    }

    #[test]
    fn bad_range_bounds_are_refused() {
        for (json, metric) in [
            (r#"{"range_filter": 1}"#, v1::MetricType::L2),
            (r#"{"radius": 1, "range_filter": 2}"#, v1::MetricType::L2),
            (
                r#"{"radius": 0.5, "range_filter": 0.4}"#,
                v1::MetricType::Cosine,
            ),
            (r#"{"radius": "far"}"#, v1::MetricType::L2),
            (r#"{"radius": [1]}"#, v1::MetricType::L2),
        ] {
            let e = Range::of(&params(json), metric).unwrap_err().status();
            assert_eq!(e.code, 1100, "{json}");
            assert!(
                e.reason.contains("radius") || e.reason.contains("range_filter"),
                "{json}: {}",
                e.reason
            );
        }
    }
}
