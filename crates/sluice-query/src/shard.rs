//! One shard's data (one collection on one vchannel): growing segments fed by the WAL, sealed
//! segments loaded from object storage, the versions of every primary key, the deletes — and
//! search, query and get over all of it at an MVCC timestamp.
//!
//! **MVCC.** Messages reach a shard in timestamp order; a row inserted at `ts` is the visible
//! version of its key from `ts` until the next event on that key: a later insert (an upsert, or
//! the same key inserted again) or a delete. A delete at `td` hides rows with `ts < td` (an
//! upsert is a delete and an insert at one timestamp: the new row stays). Each row keeps that
//! bound (`superseded`), recomputed whenever an event on its key arrives, so the check at search
//! time is two comparisons, and at any `T` at most one version of a key is visible — across
//! growing and sealed segments alike.
//!
//! **Hand-off.** When a growing segment's Parquet file is committed, [`ShardData::load_sealed`]
//! takes its rows in under one write lock: each (key, timestamp) already held points at the
//! sealed row instead, the growing segment goes, and no search sees the rows missing or twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use sluice_types::schema::{CollectionSchema, DataType};

use crate::QueryError;
use crate::filter::Filter;
use crate::index::{IndexParams, distance_of};
use crate::segment::{MatchField, Pk, RowRef, Segment, TermStats, VectorSource, pks_of};
use crate::vector::{Metric, TopK, norm};

/// The column holding each hit's score in search results.
pub const SCORE_COLUMN: &str = "_score";

/// What a search asks of one shard.
#[derive(Clone, Debug, Default)]
pub struct SearchSpec {
    /// The vector field searched (`None`: the only one).
    pub field: Option<String>,
    /// The query vectors of a FLOAT_VECTOR field.
    pub vectors: Vec<Vec<f32>>,
    /// The query vectors of a SPARSE_FLOAT_VECTOR field, each laid out as
    /// [`sluice_types::sparse`] describes (and checked by it).
    pub sparse: Vec<Vec<u8>>,
    /// The text queries of a BM25 function's output field: each is split into terms by the
    /// function's analyzer, and rows are scored by Okapi BM25.
    pub texts: Vec<String>,
    /// BM25's `k1` and `b` (`None`: 1.2 and 0.75).
    pub bm25: Option<(f32, f32)>,
    /// The term statistics BM25 scores by (`None`: those of every segment of this shard data,
    /// [`ShardData::term_stats`]); a delegator gives its query workers its own.
    pub term_stats: Option<TermStats>,
    /// Hits per query.
    pub top_k: usize,
    /// The metric (`None`: the index's, L2 by default).
    pub metric: Option<Metric>,
    /// Only rows matching this.
    pub filter: Option<Filter>,
    /// Only these partitions (empty: all).
    pub partitions: Vec<i64>,
    /// Fields returned with each hit (the primary key always is).
    pub output_fields: Vec<String>,
    /// Compare every visible row instead of walking ANN graphs.
    pub exact: bool,
    /// The ANN candidate list size (`None`: the index's).
    pub ef: Option<usize>,
}

/// What scores a row's term frequencies in a BM25 search.
#[derive(Clone, Copy, Debug)]
struct Bm25Scoring {
    k1: f32,
    b: f32,
    /// The rows' average number of terms.
    avgdl: f32,
}

/// One query's hits from one shard, closest first.
#[derive(Clone, Debug)]
pub struct Hits {
    /// Each hit's key.
    pub pks: Vec<Pk>,
    /// Internal distances (smaller is closer) for merging.
    pub distances: Vec<f32>,
    /// The scores callers see.
    pub scores: Vec<f32>,
    /// The output fields of each hit, one row per hit (the primary key first).
    pub rows: RecordBatch,
}

/// What part of a shard a read covers: a delegator reads what it holds and sends each query
/// worker the segments it holds, with the rows that are gone at the read's timestamp by a
/// newer version or a delete the worker does not know of.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only these segments (`None`: every segment whose rows are held).
    pub segments: Option<HashSet<i64>>,
    /// Per segment, rows the read treats as invisible.
    pub hidden: HashMap<i64, HashSet<u32>>,
    /// Rows inserted before this timestamp are expired (the collection's TTL at the read's
    /// timestamp, `sluice_types::ttl::expired_before`); 0: none.
    pub expired_before: u64,
}

impl Scope {
    /// The segments `ids`, hiding `hidden` (rows per segment).
    pub fn of(ids: impl IntoIterator<Item = i64>, hidden: HashMap<i64, HashSet<u32>>) -> Scope {
        Scope {
            segments: Some(ids.into_iter().collect()),
            hidden,
            expired_before: 0,
        }
    }

    /// Every segment held, with rows inserted before `expired_before` expired.
    pub fn expiring(expired_before: u64) -> Scope {
        Scope {
            expired_before,
            ..Scope::default()
        }
    }

    /// This scope, with rows inserted before `expired_before` expired.
    pub fn with_expiry(self, expired_before: u64) -> Scope {
        Scope {
            expired_before,
            ..self
        }
    }

    fn covers(&self, seg: &Segment) -> bool {
        !seg.remote && self.segments.as_ref().is_none_or(|s| s.contains(&seg.id))
    }

    #[inline]
    fn hides(&self, seg: &Segment, r: usize) -> bool {
        seg.ts[r] < self.expired_before
            || (!self.hidden.is_empty()
                && self
                    .hidden
                    .get(&seg.id)
                    .is_some_and(|h| h.contains(&seg.row_id(r))))
    }
}

/// One collection's data on one vchannel.
#[derive(Debug)]
pub struct ShardData {
    schema: CollectionSchema,
    arrow: SchemaRef,
    pk: String,
    vector_fields: Vec<String>,
    /// Where each vector field's values come from.
    sources: Vec<VectorSource>,
    /// The fields whose terms segments index for `text_match`.
    matches: Vec<MatchField>,
    dims: Vec<usize>,
    segments: BTreeMap<i64, Segment>,
    /// Segments whose rows come from their Parquet file: inserts read again from the log for
    /// them are not taken.
    sealed_ids: HashSet<i64>,
    versions: HashMap<Pk, Vec<(u64, RowRef)>>,
    deletes: HashMap<Pk, Vec<u64>>,
    /// How many (key, timestamp) pairs `deletes` holds.
    deletes_held: usize,
    index: IndexParams,
    /// Partitions dropped while this shard was served: a segment of one that arrives later (a
    /// flush racing the drop hands its sealed segment over after it) is not taken. Partition
    /// ids are never reused.
    dropped_partitions: HashSet<i64>,
    /// Every committed segment is held and rows arrive only from the log from now on (set by
    /// [`ShardData::mark_loaded`]): until then a delete no held row needs may be needed by a
    /// segment not loaded yet, and [`ShardData::forget_deletes`] keeps it.
    loaded: bool,
}

fn arrow_type(f: &sluice_types::schema::FieldSchema) -> Result<ArrowType, QueryError> {
    Ok(
        match DataType::try_from(f.data_type)
            .map_err(|_| QueryError::Invalid(format!("field {} has an unknown type", f.name)))?
        {
            DataType::Bool => ArrowType::Boolean,
            DataType::Int32 => ArrowType::Int32,
            DataType::Int64 => ArrowType::Int64,
            DataType::Float => ArrowType::Float32,
            DataType::Double => ArrowType::Float64,
            DataType::Varchar | DataType::Json => ArrowType::Utf8,
            DataType::FloatVector => ArrowType::FixedSizeList(
                Arc::new(Field::new("item", ArrowType::Float32, false)),
                f.dim as i32,
            ),
            DataType::SparseFloatVector => ArrowType::Binary,
            DataType::Unspecified => {
                return Err(QueryError::Invalid(format!("field {} has no type", f.name)));
            }
        },
    )
}

/// Where each vector field's values come from: its column, or a BM25 function's input.
fn sources(
    schema: &CollectionSchema,
    vector_fields: &[String],
) -> Result<Vec<VectorSource>, QueryError> {
    vector_fields
        .iter()
        .map(|name| match sluice_types::schema::bm25_of(schema, name) {
            None => Ok(VectorSource::Column(name.clone())),
            Some(func) => {
                let input = schema
                    .fields
                    .iter()
                    .find(|f| f.name == func.input_field)
                    .ok_or_else(|| {
                        QueryError::Invalid(format!("no input field {}", func.input_field))
                    })?;
                let analyzer = sluice_types::text::Analyzer::from_params(&input.analyzer_params)
                    .map_err(|e| QueryError::Invalid(format!("field {}: {e}", input.name)))?;
                Ok(VectorSource::Text {
                    input: input.name.clone(),
                    analyzer,
                })
            }
        })
        .collect()
}

/// The `enable_match` fields, with their analyzers.
fn match_fields(schema: &CollectionSchema) -> Result<Vec<MatchField>, QueryError> {
    schema
        .fields
        .iter()
        .filter(|f| f.enable_match)
        .map(|f| {
            Ok(MatchField {
                name: f.name.clone(),
                analyzer: sluice_types::text::Analyzer::from_params(&f.analyzer_params)
                    .map_err(|e| QueryError::Invalid(format!("field {}: {e}", f.name)))?,
            })
        })
        .collect()
}

fn arrow_schema(schema: &CollectionSchema) -> Result<SchemaRef, QueryError> {
    let fields = schema
        .fields
        .iter()
        .map(|f| Ok(Field::new(&f.name, arrow_type(f)?, !f.is_primary_key)))
        .collect::<Result<Vec<_>, QueryError>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

impl ShardData {
    /// An empty shard of a collection with `schema`.
    pub fn new(schema: CollectionSchema, index: IndexParams) -> Result<ShardData, QueryError> {
        let pk = schema
            .fields
            .iter()
            .find(|f| f.is_primary_key)
            .ok_or_else(|| QueryError::Invalid("the schema has no primary key".into()))?
            .name
            .clone();
        let (vector_fields, dims): (Vec<String>, Vec<usize>) = schema
            .fields
            .iter()
            .filter(|f| DataType::try_from(f.data_type).is_ok_and(sluice_types::schema::is_vector))
            // A sparse field's column has dim 0.
            .map(|f| (f.name.clone(), f.dim as usize))
            .unzip();
        Ok(ShardData {
            arrow: arrow_schema(&schema)?,
            sources: sources(&schema, &vector_fields)?,
            matches: match_fields(&schema)?,
            schema,
            pk,
            vector_fields,
            dims,
            segments: BTreeMap::new(),
            sealed_ids: HashSet::new(),
            versions: HashMap::new(),
            deletes: HashMap::new(),
            deletes_held: 0,
            index,
            dropped_partitions: HashSet::new(),
            loaded: false,
        })
    }

    /// Every committed segment is held: rows arrive from the log alone from now on, each newer
    /// than every delete held.
    pub fn mark_loaded(&mut self) {
        self.loaded = true;
    }

    /// Forgets the deletes that hide no held row — their rows were compacted away, or they
    /// matched none — so the deletes held stay as many as the rows they hide, not as the
    /// deletes ever made. Nothing before [`ShardData::mark_loaded`]. A row arriving later is
    /// newer than every delete, so none of them would hide it. Returns how many went.
    pub fn forget_deletes(&mut self) -> usize {
        if !self.loaded {
            return 0;
        }
        self.versions.retain(|_, v| !v.is_empty());
        let versions = &self.versions;
        let mut gone = 0;
        self.deletes.retain(|key, list| {
            let oldest = versions
                .get(key)
                .and_then(|v| v.iter().map(|(t, _)| *t).min());
            let before = list.len();
            list.retain(|&td| oldest.is_some_and(|o| o < td));
            gone += before - list.len();
            !list.is_empty()
        });
        self.deletes_held -= gone;
        gone
    }

    /// The deletes held (key, timestamp pairs).
    pub fn deletes_held(&self) -> usize {
        self.deletes_held
    }

    /// Segments held: (growing, sealed with their rows, sealed whose rows a query worker
    /// holds).
    pub fn segment_counts(&self) -> (usize, usize, usize) {
        let mut out = (0, 0, 0);
        for s in self.segments.values() {
            match (s.sealed, s.remote) {
                (false, _) => out.0 += 1,
                (true, false) => out.1 += 1,
                (true, true) => out.2 += 1,
            }
        }
        out
    }

    /// Rows held with their data (growing, and sealed ones not served by a query worker).
    pub fn rows_held(&self) -> usize {
        self.segments
            .values()
            .filter(|s| !s.remote)
            .map(Segment::len)
            .sum()
    }

    /// The schema in force.
    pub fn schema(&self) -> &CollectionSchema {
        &self.schema
    }

    /// A SchemaChange: later rows carry the added field; earlier ones read it as null.
    pub fn set_schema(&mut self, schema: CollectionSchema) -> Result<(), QueryError> {
        self.arrow = arrow_schema(&schema)?;
        self.sources = sources(&schema, &self.vector_fields)?;
        self.matches = match_fields(&schema)?;
        self.schema = schema;
        Ok(())
    }

    /// The segments held: (id, partition, sealed, rows, indexed).
    pub fn segments(&self) -> Vec<(i64, i64, bool, usize, bool)> {
        self.segments
            .values()
            .map(|s| {
                (
                    s.id,
                    s.partition,
                    s.sealed,
                    s.len(),
                    s.indexes.iter().any(Option::is_some),
                )
            })
            .collect()
    }

    /// Whether segment `id` is held as sealed.
    pub fn is_sealed(&self, id: i64) -> bool {
        self.sealed_ids.contains(&id)
    }

    /// Rows visible at `t`.
    pub fn count(&self, t: u64) -> usize {
        self.segments
            .values()
            .map(|s| (0..s.len()).filter(|&r| s.visible(r, t)).count())
            .sum()
    }

    /// Takes an insert's rows at `ts` into growing segment `segment`. Rows of a segment already
    /// held as sealed are not taken again.
    pub fn insert(
        &mut self,
        segment: i64,
        partition: i64,
        batch: RecordBatch,
        ts: u64,
    ) -> Result<(), QueryError> {
        if self.sealed_ids.contains(&segment)
            || batch.num_rows() == 0
            || self.dropped_partitions.contains(&partition)
        {
            return Ok(());
        }
        let seg = self
            .segments
            .entry(segment)
            .or_insert_with(|| Segment::new(segment, partition, false, &self.dims));
        let n = batch.num_rows();
        let rows = seg.append(batch, &vec![ts; n], &self.pk, &self.sources, &self.matches)?;
        let keys: Vec<Pk> = rows.clone().map(|r| seg.pks[r].clone()).collect();
        for (r, key) in rows.zip(keys) {
            let at = RowRef {
                segment,
                offset: r as u32,
            };
            self.add_version(key, ts, at);
        }
        Ok(())
    }

    /// Deletes `keys` at `ts`.
    pub fn delete(&mut self, keys: &dyn Array, ts: u64) -> Result<(), QueryError> {
        for key in pks_of(keys)? {
            self.delete_one(key, ts);
        }
        Ok(())
    }

    /// Deletes `keys[i]` at `ts[i]` (a delete file's rows).
    pub fn delete_each(&mut self, keys: &dyn Array, ts: &[u64]) -> Result<(), QueryError> {
        let keys = pks_of(keys)?;
        if keys.len() != ts.len() {
            return Err(QueryError::Invalid(format!(
                "{} keys with {} timestamps",
                keys.len(),
                ts.len()
            )));
        }
        for (key, ts) in keys.into_iter().zip(ts) {
            self.delete_one(key, *ts);
        }
        Ok(())
    }

    fn delete_one(&mut self, key: Pk, ts: u64) {
        let list = self.deletes.entry(key.clone()).or_default();
        if list.contains(&ts) {
            return;
        }
        list.push(ts);
        self.deletes_held += 1;
        self.refresh(&key);
    }

    fn add_version(&mut self, key: Pk, ts: u64, at: RowRef) {
        let versions = self.versions.entry(key.clone()).or_default();
        if let Some(v) = versions.iter_mut().find(|(t, _)| *t == ts) {
            // The same row again (a growing row and its sealed copy): point at the newer copy;
            // the old one stays hidden.
            let old = std::mem::replace(&mut v.1, at);
            if let Some(s) = self.segments.get_mut(&old.segment)
                && old != at
            {
                s.set_superseded(old.offset as usize, 0);
            }
        } else {
            versions.push((ts, at));
        }
        self.refresh(&key);
    }

    /// Recomputes `superseded` of every version of `key`.
    fn refresh(&mut self, key: &Pk) {
        let Some(versions) = self.versions.get_mut(key) else {
            return;
        };
        versions.sort_unstable_by_key(|(t, _)| *t);
        let deletes = self.deletes.get(key);
        for i in 0..versions.len() {
            let (ts, at) = versions[i];
            let next_insert = versions.get(i + 1).map_or(u64::MAX, |(t, _)| *t);
            let next_delete = deletes
                .into_iter()
                .flatten()
                .copied()
                .filter(|&d| d > ts)
                .min()
                .unwrap_or(u64::MAX);
            if let Some(s) = self.segments.get_mut(&at.segment) {
                s.set_superseded(at.offset as usize, next_insert.min(next_delete));
            }
        }
    }

    /// A sealed segment built from its file's rows (`batches` have the schema's columns, `ts`
    /// is per row), not yet in the shard: build its indexes ([`Segment::vectors`],
    /// [`Segment::set_index`]) outside the shard's lock, then [`ShardData::install_sealed`].
    pub fn prepare_sealed(
        &self,
        id: i64,
        partition: i64,
        batches: Vec<RecordBatch>,
        ts: Vec<u64>,
    ) -> Result<Segment, QueryError> {
        let mut seg = Segment::new(id, partition, true, &self.dims);
        let mut at = 0;
        for b in batches {
            let n = b.num_rows();
            let Some(ts) = ts.get(at..at + n) else {
                return Err(QueryError::Invalid("fewer timestamps than rows".into()));
            };
            seg.append(b, ts, &self.pk, &self.sources, &self.matches)?;
            at += n;
        }
        Ok(seg)
    }

    /// The vector fields, in the order [`Segment::vectors`] numbers them.
    pub fn vector_fields(&self) -> &[String] {
        &self.vector_fields
    }

    /// The index parameters.
    pub fn index_params(&self) -> IndexParams {
        self.index
    }

    /// Segments sealed from now on are indexed with `index` (those indexed keep theirs; a
    /// search with a metric its index was not built for compares exactly).
    pub fn set_index_params(&mut self, index: IndexParams) {
        self.index = index;
    }

    /// Takes a sealed segment in place of the growing segment with its id (a segment of a
    /// dropped partition is not taken).
    pub fn install_sealed(&mut self, seg: Segment) -> Result<(), QueryError> {
        if self.dropped_partitions.contains(&seg.partition) {
            return Ok(());
        }
        let id = seg.id;
        let keys: Vec<(Pk, u64)> = (0..seg.len())
            .map(|r| (seg.pks[r].clone(), seg.ts[r]))
            .collect();
        // The growing copy (or an older version: a compaction left rows out) goes first (same
        // segment id): its versions are forgotten, then the sealed rows are registered. All of
        // it happens under the caller's one write lock.
        let mut replaced = HashSet::new();
        if let Some(old) = self.segments.remove(&id) {
            let keys = old.pks.into_iter().collect::<HashSet<_>>();
            for key in &keys {
                if let Some(v) = self.versions.get_mut(key) {
                    v.retain(|(_, at)| at.segment != id);
                }
            }
            if old.sealed {
                replaced = keys;
            }
        }
        self.segments.insert(id, seg);
        self.sealed_ids.insert(id);
        for (r, (key, ts)) in keys.into_iter().enumerate() {
            self.add_version(
                key,
                ts,
                RowRef {
                    segment: id,
                    offset: r as u32,
                },
            );
        }
        for key in &replaced {
            // Keys the new version lacks: their other versions' bounds change.
            self.refresh(key);
        }
        Ok(())
    }

    /// Keeps only the keys, timestamps and MVCC bounds of sealed segment `id`: its rows are
    /// read on a query worker from now on, with [`ShardData::hidden_rows`]. False when no such
    /// sealed segment is held.
    pub fn demote(&mut self, id: i64) -> bool {
        match self.segments.get_mut(&id) {
            Some(seg) if seg.sealed => {
                seg.demote();
                true
            }
            _ => false,
        }
    }

    /// The sealed segments whose rows a query worker holds.
    pub fn remote_segments(&self) -> Vec<i64> {
        self.segments
            .values()
            .filter(|s| s.remote)
            .map(|s| s.id)
            .collect()
    }

    /// The rows of segment `id` that are gone at `t` although inserted before it: what a query
    /// worker holding the segment must hide (it knows neither the deletes nor newer versions).
    pub fn hidden_rows(&self, id: i64, t: u64) -> HashSet<u32> {
        let Some(seg) = self.segments.get(&id) else {
            return HashSet::new();
        };
        if t < seg.superseded_floor {
            // Nothing of it is gone yet at `t` (the common case: no deletes, no upserts).
            return HashSet::new();
        }
        (0..seg.len())
            .filter(|&r| seg.ts[r] <= t && seg.superseded[r] <= t)
            .map(|r| seg.row_id(r))
            .collect()
    }

    /// The version (compaction timestamp) sealed segment `id` is held at.
    pub fn segment_version(&self, id: i64) -> Option<u64> {
        self.segments
            .get(&id)
            .filter(|s| s.sealed)
            .map(|s| s.version)
    }

    /// Which of `ids` are not held with their rows, or at a version older than the one asked
    /// for (id → oldest version).
    pub fn missing(&self, ids: &HashMap<i64, u64>) -> Vec<i64> {
        let mut out: Vec<i64> = ids
            .iter()
            .filter(|(id, v)| {
                self.segments
                    .get(id)
                    .is_none_or(|s| s.remote || !s.sealed || s.version < **v)
            })
            .map(|(id, _)| *id)
            .collect();
        out.sort_unstable();
        out
    }

    /// Drops sealed segment `id` (a query worker's, no longer placed on it).
    pub fn remove_sealed(&mut self, id: i64) {
        if let Some(seg) = self.segments.remove(&id) {
            self.sealed_ids.remove(&id);
            for key in seg.pks.iter().collect::<HashSet<_>>() {
                if let Some(v) = self.versions.get_mut(key) {
                    v.retain(|(_, at)| at.segment != id);
                }
                self.refresh(key);
            }
        }
    }

    /// Drops a partition's segments.
    pub fn drop_partition(&mut self, partition: i64) {
        self.dropped_partitions.insert(partition);
        let gone: Vec<i64> = self
            .segments
            .values()
            .filter(|s| s.partition == partition)
            .map(|s| s.id)
            .collect();
        for id in gone {
            if let Some(seg) = self.segments.remove(&id) {
                for key in seg.pks.iter().collect::<HashSet<_>>() {
                    if let Some(v) = self.versions.get_mut(key) {
                        v.retain(|(_, at)| at.segment != id);
                    }
                    // A version of the key in another partition is no longer superseded by
                    // the dropped one.
                    self.refresh(key);
                }
            }
        }
    }

    fn vector_field(&self, name: Option<&str>) -> Result<usize, QueryError> {
        match name {
            None if self.vector_fields.len() == 1 => Ok(0),
            None => Err(QueryError::Invalid(format!(
                "the collection has {} vector fields ({}): name the one to search",
                self.vector_fields.len(),
                self.vector_fields.join(", ")
            ))),
            Some(n) => self
                .vector_fields
                .iter()
                .position(|f| f == n)
                .ok_or_else(|| {
                    QueryError::Invalid(format!(
                        "{n:?} is not a vector field of the collection (it has {})",
                        self.vector_fields.join(", ")
                    ))
                }),
        }
    }

    /// The rows of `seg` that match `filter` and the partitions (`None`: all of them).
    fn mask(
        &self,
        seg: &Segment,
        filter: Option<&Filter>,
        partitions: &[i64],
    ) -> Result<Option<Vec<bool>>, QueryError> {
        if !partitions.is_empty() && !partitions.contains(&seg.partition) {
            return Ok(Some(vec![false; seg.len()]));
        }
        let Some(filter) = filter else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(seg.len());
        for (start, b) in seg.batches() {
            let n = b.num_rows();
            let hits = |field: &str, terms: &[String], min: usize| {
                seg.text_hits(field, terms, min, start, n)
            };
            let m = filter
                .evaluate_with(b, &hits)
                .map_err(|e| QueryError::Invalid(e.to_string()))?;
            out.extend(m.values().iter());
        }
        Ok(Some(out))
    }

    fn check_output_fields(&self, fields: &[String]) -> Result<(), QueryError> {
        for f in fields {
            if self.arrow.field_with_name(f).is_err() {
                return Err(QueryError::Invalid(format!(
                    "output field {f:?} is not a field of the collection"
                )));
            }
            if sluice_types::schema::bm25_of(&self.schema, f).is_some() {
                return Err(QueryError::Invalid(format!(
                    "output field {f:?} is a BM25 function's output: it is computed for search, \
                     not returned"
                )));
            }
        }
        Ok(())
    }

    /// The term statistics of the text-sourced field `field` (`None`: the only vector field)
    /// over every segment held (whether a query worker holds its rows or not), with the rows
    /// holding each term of `texts`: what BM25 scores a search of `texts` by. Every row ever
    /// inserted into a held segment counts, deleted or not (as in Milvus).
    pub fn term_stats(
        &self,
        field: Option<&str>,
        texts: &[String],
    ) -> Result<TermStats, QueryError> {
        let f = self.vector_field(field)?;
        let VectorSource::Text { analyzer, .. } = &self.sources[f] else {
            return Err(QueryError::Invalid(format!(
                "field {} is not a BM25 function's output: search it with vectors, not text",
                self.vector_fields[f]
            )));
        };
        let mut ids: Vec<u32> = texts
            .iter()
            .flat_map(|t| analyzer.term_frequencies(t).into_iter().map(|(id, _)| id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut stats = TermStats::default();
        for seg in self.segments.values() {
            seg.vectors[f].add_term_stats(&ids, &mut stats);
        }
        Ok(stats)
    }

    /// Searches at `t`.
    pub fn search(&self, spec: &SearchSpec, t: u64) -> Result<Vec<Hits>, QueryError> {
        self.search_in(spec, t, &Scope::default())
    }

    /// Searches the part `scope` covers at `t`.
    pub fn search_in(
        &self,
        spec: &SearchSpec,
        t: u64,
        scope: &Scope,
    ) -> Result<Vec<Hits>, QueryError> {
        let f = self.vector_field(spec.field.as_deref())?;
        let dim = self.dims[f];
        self.check_output_fields(&spec.output_fields)?;
        if spec.top_k == 0 {
            return Err(QueryError::Invalid("top_k must be at least 1".into()));
        }
        let segments: Vec<&Segment> = self.segments.values().filter(|s| scope.covers(s)).collect();
        let masks = segments
            .iter()
            .map(|s| self.mask(s, spec.filter.as_ref(), &spec.partitions))
            .collect::<Result<Vec<_>, _>>()?;
        if dim == 0 {
            return self.search_sparse(f, spec, t, scope, &segments, &masks);
        }
        if !spec.sparse.is_empty() || !spec.texts.is_empty() {
            return Err(QueryError::Invalid(format!(
                "field {} is a FLOAT_VECTOR field: search it with float vectors, not sparse ones \
                 or text",
                self.vector_fields[f]
            )));
        }
        if let Some(q) = spec.vectors.iter().find(|q| q.len() != dim) {
            return Err(QueryError::Invalid(format!(
                "a query vector has {} dimensions, field {} has {dim}",
                q.len(),
                self.vector_fields[f]
            )));
        }
        let metric = spec.metric.unwrap_or(self.index.metric);
        let mut out = Vec::with_capacity(spec.vectors.len());
        for q in &spec.vectors {
            let qn = norm(q);
            let mut top = TopK::<RowRef>::new(spec.top_k);
            for (seg, mask) in segments.iter().zip(&masks) {
                let keep = |r: usize| {
                    seg.visible(r, t) && mask.as_ref().is_none_or(|m| m[r]) && !scope.hides(seg, r)
                };
                let index = seg
                    .index(f)
                    .filter(|i| !spec.exact && i.params().metric == metric);
                let selective = mask
                    .as_ref()
                    .is_some_and(|m| m.iter().filter(|&&b| b).count() * 10 < seg.len());
                match index {
                    Some(index) if !selective => {
                        let ef = spec.ef.unwrap_or(index.params().expansion_search);
                        let hits = index
                            .search(q, spec.top_k, ef, |k| keep(k as usize))
                            .map_err(|e| QueryError::Internal(e.to_string()))?;
                        for (key, d) in hits {
                            let r = key as usize;
                            if r < seg.len() && keep(r) {
                                top.push(
                                    distance_of(metric, d),
                                    RowRef {
                                        segment: seg.id,
                                        offset: r as u32,
                                    },
                                );
                            }
                        }
                    }
                    _ => {
                        let col = &seg.vectors[f];
                        for r in 0..seg.len() {
                            if !keep(r) {
                                continue;
                            }
                            let d = metric.distance(q, qn, col.row(r), col.norms[r]);
                            if d < top.bound() {
                                top.push(
                                    d,
                                    RowRef {
                                        segment: seg.id,
                                        offset: r as u32,
                                    },
                                );
                            }
                        }
                    }
                }
            }
            out.push(self.hits(top, metric, &spec.output_fields)?);
        }
        Ok(out)
    }

    /// [`ShardData::search_in`] of a sparse vector field `f`: every visible row's inner product
    /// with each query vector (IP is the one metric sparse vectors have) — or, for a BM25
    /// function's output, each text query's Okapi BM25 score; a row that shares no index (term)
    /// with the query is no hit.
    fn search_sparse(
        &self,
        f: usize,
        spec: &SearchSpec,
        t: u64,
        scope: &Scope,
        segments: &[&Segment],
        masks: &[Option<Vec<bool>>],
    ) -> Result<Vec<Hits>, QueryError> {
        let name = &self.vector_fields[f];
        if let Some(metric) = spec.metric.filter(|&m| m != Metric::Ip) {
            return Err(QueryError::Invalid(format!(
                "field {name} is a SPARSE_FLOAT_VECTOR field, searched by IP, not {}",
                metric.name()
            )));
        }
        // Per query, its (index, weight) pairs by increasing index; and BM25's parameters.
        let (queries, bm25): (Vec<Vec<(u32, f32)>>, Option<Bm25Scoring>) = match &self.sources[f] {
            VectorSource::Column(_) => {
                if !spec.vectors.is_empty() || !spec.texts.is_empty() {
                    return Err(QueryError::Invalid(format!(
                        "field {name} is a SPARSE_FLOAT_VECTOR field: search it with sparse \
                             vectors"
                    )));
                }
                for q in &spec.sparse {
                    sluice_types::sparse::check(q).map_err(|e| {
                        QueryError::Invalid(format!("a query vector of field {name}: {e}"))
                    })?;
                }
                let queries = spec
                    .sparse
                    .iter()
                    .map(|q| sluice_types::sparse::pairs(q).collect())
                    .collect();
                (queries, None)
            }
            VectorSource::Text { analyzer, .. } => {
                if !spec.vectors.is_empty() || !spec.sparse.is_empty() {
                    return Err(QueryError::Invalid(format!(
                        "field {name} is a BM25 function's output: search it with text"
                    )));
                }
                let (k1, b) = spec.bm25.unwrap_or((
                    sluice_types::text::DEFAULT_BM25_K1,
                    sluice_types::text::DEFAULT_BM25_B,
                ));
                sluice_types::text::check_bm25_params(k1, b).map_err(QueryError::Invalid)?;
                let own;
                let stats = match &spec.term_stats {
                    Some(s) => s,
                    None => {
                        own = self.term_stats(Some(name), &spec.texts)?;
                        &own
                    }
                };
                let queries = spec
                    .texts
                    .iter()
                    .map(|text| {
                        analyzer
                            .term_frequencies(text)
                            .into_iter()
                            .map(|(id, tf)| {
                                let with = stats.rows_with_term.get(&id).copied().unwrap_or(0);
                                (id, tf * sluice_types::text::idf(stats.rows, with))
                            })
                            .collect()
                    })
                    .collect();
                let avgdl = stats.average_length();
                (queries, Some(Bm25Scoring { k1, b, avgdl }))
            }
        };
        let mut out = Vec::with_capacity(queries.len());
        for q in &queries {
            let mut top = TopK::<RowRef>::new(spec.top_k);
            for (seg, mask) in segments.iter().zip(masks) {
                // The query's indices in increasing order, each row's products summed as they
                // come: the same sum, in the same order, as `sparse::dot` of the two rows.
                let col = &seg.vectors[f];
                let mut scores = vec![0.0f32; seg.len()];
                let mut seen = vec![false; seg.len()];
                let mut touched: Vec<u32> = Vec::new();
                for &(index, qw) in q {
                    let Some(list) = col.postings.get(&index).filter(|_| qw != 0.0) else {
                        continue;
                    };
                    for &(r, w) in list {
                        let Some(score) = scores.get_mut(r as usize) else {
                            continue;
                        };
                        *score += match bm25 {
                            None => qw * w,
                            Some(Bm25Scoring { k1, b, avgdl }) => {
                                let len = col.lengths.get(r as usize).copied().unwrap_or(w);
                                qw * sluice_types::text::tf_weight(w, len, avgdl, k1, b)
                            }
                        };
                        if !seen[r as usize] {
                            seen[r as usize] = true;
                            touched.push(r);
                        }
                    }
                }
                // In row order, as an exact search meets them (equal scores keep that order).
                touched.sort_unstable();
                for r in touched {
                    let ru = r as usize;
                    if !seg.visible(ru, t)
                        || mask.as_ref().is_some_and(|m| !m[ru])
                        || scope.hides(seg, ru)
                    {
                        continue;
                    }
                    let d = -scores[ru];
                    if d < top.bound() {
                        top.push(
                            d,
                            RowRef {
                                segment: seg.id,
                                offset: r,
                            },
                        );
                    }
                }
            }
            out.push(self.hits(top, Metric::Ip, &spec.output_fields)?);
        }
        Ok(out)
    }

    /// One query's hits out of its top rows.
    fn hits(
        &self,
        top: TopK<RowRef>,
        metric: Metric,
        output_fields: &[String],
    ) -> Result<Hits, QueryError> {
        let found = top.into_sorted();
        let rows: Vec<RowRef> = found.iter().map(|c| c.item).collect();
        let batch = self.rows(&rows, output_fields)?;
        let distances: Vec<f32> = found.iter().map(|c| c.distance).collect();
        let scores: Vec<f32> = distances.iter().map(|&d| metric.score(d)).collect();
        Ok(Hits {
            pks: rows
                .iter()
                .map(|r| self.segments[&r.segment].pks[r.offset as usize].clone())
                .collect(),
            distances,
            scores,
            rows: batch,
        })
    }

    /// The rows visible at `t` that match `filter` (every row when `None`), in key order, at
    /// most `limit` (0: no limit), with `output_fields` (the primary key first).
    pub fn query(
        &self,
        filter: Option<&Filter>,
        partitions: &[i64],
        output_fields: &[String],
        limit: usize,
        t: u64,
    ) -> Result<RecordBatch, QueryError> {
        self.query_in(
            filter,
            partitions,
            output_fields,
            limit,
            t,
            &Scope::default(),
        )
    }

    /// [`ShardData::query`] over the part `scope` covers.
    pub fn query_in(
        &self,
        filter: Option<&Filter>,
        partitions: &[i64],
        output_fields: &[String],
        limit: usize,
        t: u64,
        scope: &Scope,
    ) -> Result<RecordBatch, QueryError> {
        self.check_output_fields(output_fields)?;
        let mut found: Vec<(&Pk, RowRef)> = Vec::new();
        for seg in self.segments.values().filter(|s| scope.covers(s)) {
            let mask = self.mask(seg, filter, partitions)?;
            for r in 0..seg.len() {
                if seg.visible(r, t) && mask.as_ref().is_none_or(|m| m[r]) && !scope.hides(seg, r) {
                    found.push((
                        &seg.pks[r],
                        RowRef {
                            segment: seg.id,
                            offset: r as u32,
                        },
                    ));
                }
            }
        }
        found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if limit > 0 {
            found.truncate(limit);
        }
        let rows: Vec<RowRef> = found.into_iter().map(|(_, r)| r).collect();
        self.rows(&rows, output_fields)
    }

    /// The rows of `keys` visible at `t`, in the order asked (missing keys left out).
    pub fn get(
        &self,
        keys: &[Pk],
        output_fields: &[String],
        t: u64,
    ) -> Result<RecordBatch, QueryError> {
        self.get_in(keys, output_fields, t, &Scope::default())
    }

    /// [`ShardData::get`] over the part `scope` covers.
    pub fn get_in(
        &self,
        keys: &[Pk],
        output_fields: &[String],
        t: u64,
        scope: &Scope,
    ) -> Result<RecordBatch, QueryError> {
        self.check_output_fields(output_fields)?;
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for k in keys {
            if !seen.insert(k) {
                continue;
            }
            let Some(versions) = self.versions.get(k) else {
                continue;
            };
            if let Some((_, at)) = versions.iter().find(|(_, at)| {
                self.segments.get(&at.segment).is_some_and(|s| {
                    scope.covers(s)
                        && s.visible(at.offset as usize, t)
                        && !scope.hides(s, at.offset as usize)
                })
            }) {
                rows.push(*at);
            }
        }
        self.rows(&rows, output_fields)
    }

    /// `rows`' key and `fields` as one batch.
    fn rows(&self, rows: &[RowRef], fields: &[String]) -> Result<RecordBatch, QueryError> {
        let mut names: Vec<&str> = vec![self.pk.as_str()];
        names.extend(fields.iter().map(String::as_str).filter(|f| *f != self.pk));
        // Every (segment, batch) the rows touch, numbered for `interleave`.
        let mut sources: Vec<(i64, usize)> = Vec::new();
        let mut picks = Vec::with_capacity(rows.len());
        let mut numbering: HashMap<(i64, usize), usize> = HashMap::new();
        for r in rows {
            let seg = &self.segments[&r.segment];
            let (b, i) = seg.locate(r.offset as usize);
            let n = *numbering.entry((r.segment, b)).or_insert_with(|| {
                sources.push((r.segment, b));
                sources.len() - 1
            });
            picks.push((n, i));
        }
        let mut fields_out = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for name in names {
            let field = self
                .arrow
                .field_with_name(name)
                .map_err(|e| QueryError::Invalid(e.to_string()))?;
            let arrays: Vec<ArrayRef> = sources
                .iter()
                .map(|(s, b)| self.segments[s].column(*b, name, field.data_type()))
                .collect();
            let col = if arrays.is_empty() {
                arrow_array::new_empty_array(field.data_type())
            } else {
                let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                arrow_select::interleave::interleave(&refs, &picks)
                    .map_err(|e| QueryError::Internal(e.to_string()))?
            };
            fields_out.push(Field::new(name, field.data_type().clone(), true));
            columns.push(col);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields_out)), columns)
            .map_err(|e| QueryError::Internal(e.to_string()))
    }
}

/// Merges one query's hits from several shards: the `k` closest, one per key (the closest
/// copy wins), with their rows.
pub fn merge_hits(parts: Vec<Hits>, k: usize) -> Result<Hits, QueryError> {
    let mut all: Vec<(f32, usize, usize)> = Vec::new();
    for (p, h) in parts.iter().enumerate() {
        for i in 0..h.pks.len() {
            all.push((h.distances[i], p, i));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen = HashSet::new();
    let mut picks = Vec::new();
    for (_, p, i) in all {
        if picks.len() == k {
            break;
        }
        if seen.insert(&parts[p].pks[i]) {
            picks.push((p, i));
        }
    }
    let schema = parts
        .first()
        .map(|h| h.rows.schema())
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    let mut columns = Vec::new();
    for c in 0..schema.fields().len() {
        let arrays: Vec<&dyn Array> = parts.iter().map(|h| h.rows.column(c).as_ref()).collect();
        columns.push(
            arrow_select::interleave::interleave(&arrays, &picks)
                .map_err(|e| QueryError::Internal(e.to_string()))?,
        );
    }
    let rows =
        RecordBatch::try_new(schema, columns).map_err(|e| QueryError::Internal(e.to_string()))?;
    Ok(Hits {
        pks: picks
            .iter()
            .map(|&(p, i)| parts[p].pks[i].clone())
            .collect(),
        distances: picks.iter().map(|&(p, i)| parts[p].distances[i]).collect(),
        scores: picks.iter().map(|&(p, i)| parts[p].scores[i]).collect(),
        rows,
    })
}

/// A search result's rows with the score column appended.
pub fn with_scores(hits: &Hits) -> Result<RecordBatch, QueryError> {
    let mut fields: Vec<Field> = hits
        .rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SCORE_COLUMN, ArrowType::Float32, false));
    let mut columns = hits.rows.columns().to_vec();
    columns.push(Arc::new(Float32Array::from(hits.scores.clone())));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| QueryError::Internal(e.to_string()))
}
