//! Segment data as the query path holds it: the rows (Arrow batches, the schema's columns), and
//! beside them what search needs at hand — each row's timestamp and primary key, every vector
//! field laid out contiguously, and the MVCC bound `superseded`: the timestamp from which the
//! row is no longer the visible version of its key (a later insert or a delete of the same
//! key), `u64::MAX` while it is.
//!
//! A row is visible at timestamp `T` when `ts ≤ T < superseded`.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType as ArrowType;

use crate::QueryError;
use crate::index::AnnIndex;
use crate::vector::norm;

/// A primary key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pk {
    /// An INT64 key.
    Int(i64),
    /// A VARCHAR key.
    Str(Arc<str>),
}

impl std::fmt::Display for Pk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pk::Int(v) => write!(f, "{v}"),
            Pk::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The keys of a primary-key column.
pub fn pks_of(col: &dyn Array) -> Result<Vec<Pk>, QueryError> {
    match col.data_type() {
        ArrowType::Int64 => Ok(col
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| Pk::Int(v.unwrap_or_default()))
            .collect()),
        ArrowType::Utf8 => Ok(col
            .as_string::<i32>()
            .iter()
            .map(|v| Pk::Str(Arc::from(v.unwrap_or_default())))
            .collect()),
        other => Err(QueryError::Invalid(format!(
            "a primary key column of type {other} (INT64 or VARCHAR expected)"
        ))),
    }
}

/// Where a vector field's values come from.
#[derive(Clone, Debug)]
pub enum VectorSource {
    /// The rows' column of the field.
    Column(String),
    /// The term frequencies of the rows' text column `input` (a BM25 function's output field,
    /// never stored).
    Text {
        /// The input field.
        input: String,
        /// How its text splits into terms.
        analyzer: sluice_types::text::Analyzer,
    },
}

/// A VARCHAR field with `enable_match` whose terms a segment indexes for `text_match`.
#[derive(Clone, Debug)]
pub struct MatchField {
    /// The field.
    pub name: String,
    /// How its text splits into terms.
    pub analyzer: sluice_types::text::Analyzer,
}

/// Per term, the rows (offsets in the segment, increasing, once each) whose text holds it.
pub type TermRows = std::collections::HashMap<Box<str>, Vec<u32>>;

impl VectorSource {
    /// The column the values are read from.
    fn column(&self) -> &str {
        match self {
            VectorSource::Column(name) => name,
            VectorSource::Text { input, .. } => input,
        }
    }
}

/// Term statistics of rows with a text-sourced column (for BM25's IDF and average length).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TermStats {
    /// Rows.
    pub rows: u64,
    /// Terms in all of them.
    pub terms: u64,
    /// Per term id, the rows holding it (only the terms asked for, when taken for a search).
    pub rows_with_term: std::collections::HashMap<u32, u64>,
}

impl TermStats {
    /// The rows' average number of terms (0 without rows).
    pub fn average_length(&self) -> f32 {
        if self.rows == 0 {
            0.0
        } else {
            (self.terms as f64 / self.rows as f64) as f32
        }
    }
}

/// One vector field's values: `dim` floats per row, or (`dim` 0) sparse vectors held as an
/// inverted index, the form a sparse search reads (the rows themselves stay in the segment's
/// batches).
#[derive(Clone, Debug, Default)]
pub struct VectorColumn {
    /// Floats per vector; 0 for a SPARSE_FLOAT_VECTOR field.
    pub dim: usize,
    /// `rows × dim` floats.
    pub data: Vec<f32>,
    /// `|v|` per row (cosine).
    pub norms: Vec<f32>,
    /// Per sparse index, the rows (offsets in the segment, increasing) holding a weight other
    /// than 0 there, with the weight (`dim` 0 only).
    pub postings: std::collections::HashMap<u32, Vec<(u32, f32)>>,
    /// Rows appended to a sparse column.
    pub sparse_rows: usize,
    /// Text-sourced only: per row, its number of terms.
    pub lengths: Vec<f32>,
    /// Text-sourced only: the terms of every row.
    pub total_terms: u64,
    /// Text-sourced only, once the rows are dropped (a query worker holds them): their term
    /// statistics.
    pub kept_stats: Option<Box<TermStats>>,
}

impl VectorColumn {
    /// An empty column of `dim` floats per row (0: sparse rows).
    pub fn new(dim: usize) -> VectorColumn {
        VectorColumn {
            dim,
            ..VectorColumn::default()
        }
    }

    /// Whether it holds sparse vectors.
    #[inline]
    pub fn is_sparse(&self) -> bool {
        self.dim == 0
    }

    /// Row `r`'s vector.
    #[inline]
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// Adds this column's statistics of the terms `ids` (and its rows and terms) to `into`.
    pub(crate) fn add_term_stats(&self, ids: &[u32], into: &mut TermStats) {
        if let Some(kept) = &self.kept_stats {
            into.rows += kept.rows;
            into.terms += kept.terms;
            for id in ids {
                *into.rows_with_term.entry(*id).or_default() +=
                    kept.rows_with_term.get(id).copied().unwrap_or(0);
            }
            return;
        }
        into.rows += self.sparse_rows as u64;
        into.terms += self.total_terms;
        for id in ids {
            *into.rows_with_term.entry(*id).or_default() +=
                self.postings.get(id).map_or(0, |p| p.len() as u64);
        }
    }

    /// Appends the term frequencies of each text in `col` (a null text has no terms).
    fn append_text(
        &mut self,
        col: &dyn Array,
        analyzer: &sluice_types::text::Analyzer,
    ) -> Result<(), QueryError> {
        let texts = col.as_string_opt::<i32>().ok_or_else(|| {
            QueryError::Invalid(format!("a text column of type {}", col.data_type()))
        })?;
        for text in texts.iter() {
            let at = u32::try_from(self.sparse_rows)
                .map_err(|_| QueryError::Invalid("a segment of over 2^32 rows".into()))?;
            let mut len = 0.0;
            for (id, tf) in analyzer.term_frequencies(text.unwrap_or_default()) {
                self.postings.entry(id).or_default().push((at, tf));
                len += tf;
            }
            self.lengths.push(len);
            self.total_terms += len as u64;
            self.sparse_rows += 1;
        }
        Ok(())
    }

    /// Drops the values, keeping what a text-sourced column's statistics need.
    fn demote(&mut self) {
        // Demoted already: the statistics kept stay.
        let kept = self.kept_stats.take().or_else(|| {
            (!self.lengths.is_empty()).then(|| {
                let mut stats = TermStats::default();
                let ids: Vec<u32> = self.postings.keys().copied().collect();
                self.add_term_stats(&ids, &mut stats);
                Box::new(stats)
            })
        });
        *self = VectorColumn {
            kept_stats: kept,
            ..VectorColumn::new(self.dim)
        };
    }

    fn append(&mut self, col: &dyn Array) -> Result<(), QueryError> {
        if self.is_sparse() {
            let rows = col.as_binary_opt::<i32>().ok_or_else(|| {
                QueryError::Invalid(format!(
                    "a sparse vector column of type {}",
                    col.data_type()
                ))
            })?;
            for r in rows.iter() {
                let at = u32::try_from(self.sparse_rows)
                    .map_err(|_| QueryError::Invalid("a segment of over 2^32 rows".into()))?;
                for (index, weight) in sluice_types::sparse::pairs(r.unwrap_or_default()) {
                    if weight != 0.0 {
                        self.postings.entry(index).or_default().push((at, weight));
                    }
                }
                self.sparse_rows += 1;
            }
            return Ok(());
        }
        let list = col.as_fixed_size_list_opt().ok_or_else(|| {
            QueryError::Invalid(format!("a vector column of type {}", col.data_type()))
        })?;
        if list.value_length() as usize != self.dim {
            return Err(QueryError::Invalid(format!(
                "vectors of dimension {}, the field has {}",
                list.value_length(),
                self.dim
            )));
        }
        let values = list
            .values()
            .as_primitive_opt::<arrow_array::types::Float32Type>();
        let Some(values) = values else {
            return Err(QueryError::Invalid("vector elements are not FLOAT".into()));
        };
        let start = list.offset() * self.dim;
        let floats = &values.values()[start..start + list.len() * self.dim];
        self.data.extend_from_slice(floats);
        self.norms
            .extend(floats.chunks_exact(self.dim.max(1)).map(norm));
        Ok(())
    }
}

/// Where a row is: its segment and its offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowRef {
    /// The segment.
    pub segment: i64,
    /// The row's offset in the segment.
    pub offset: u32,
}

/// A segment's rows.
#[derive(Debug)]
pub struct Segment {
    /// Its id (the WAL assigned it).
    pub id: i64,
    /// Its partition.
    pub partition: i64,
    /// Loaded from a Parquet segment (else growing, fed by the WAL).
    pub sealed: bool,
    batches: Vec<RecordBatch>,
    starts: Vec<usize>,
    pub(crate) ts: Vec<u64>,
    pub(crate) pks: Vec<Pk>,
    pub(crate) vectors: Vec<VectorColumn>,
    pub(crate) superseded: Vec<u64>,
    pub(crate) indexes: Vec<Option<AnnIndex>>,
    /// Per `enable_match` field (by name), its terms' rows.
    pub(crate) term_rows: std::collections::HashMap<String, TermRows>,
    /// Only keys, timestamps and MVCC bounds are held: a query worker holds the rows.
    pub(crate) remote: bool,
    /// At most every `superseded` value (never raised): no row is gone before it.
    pub(crate) superseded_floor: u64,
    /// Per row, its position in the file the segment was flushed to, when it was loaded from a
    /// compacted file (`None`: the row's own position). Hidden rows are exchanged by it.
    origin: Option<Vec<u32>>,
    /// The manifest's compaction timestamp it was loaded at (0: as flushed).
    pub version: u64,
}

impl Segment {
    /// An empty segment with vector fields of these dimensions (0: a sparse vector field).
    pub fn new(id: i64, partition: i64, sealed: bool, dims: &[usize]) -> Segment {
        Segment {
            id,
            partition,
            sealed,
            batches: Vec::new(),
            starts: Vec::new(),
            ts: Vec::new(),
            pks: Vec::new(),
            vectors: dims.iter().map(|&dim| VectorColumn::new(dim)).collect(),
            superseded: Vec::new(),
            indexes: dims.iter().map(|_| None).collect(),
            term_rows: std::collections::HashMap::new(),
            remote: false,
            superseded_floor: u64::MAX,
            origin: None,
            version: 0,
        }
    }

    /// Marks the segment as loaded from the file of compaction `version`, whose rows were at
    /// `origin` (one per row, increasing) in the flushed file.
    pub fn set_origin(&mut self, version: u64, origin: Vec<u32>) -> Result<(), QueryError> {
        if origin.len() != self.len() {
            return Err(QueryError::Invalid(format!(
                "{} row positions for {} rows",
                origin.len(),
                self.len()
            )));
        }
        if origin.windows(2).any(|w| w[0] >= w[1]) {
            return Err(QueryError::Invalid(
                "row positions that do not increase".into(),
            ));
        }
        self.version = version;
        self.origin = Some(origin);
        Ok(())
    }

    /// Row `r`'s position in the file the segment was flushed to.
    #[inline]
    pub fn row_id(&self, r: usize) -> u32 {
        match &self.origin {
            Some(o) => o[r],
            None => r as u32,
        }
    }

    /// Sets row `r`'s MVCC upper bound.
    #[inline]
    pub(crate) fn set_superseded(&mut self, r: usize, t: u64) {
        self.superseded[r] = t;
        self.superseded_floor = self.superseded_floor.min(t);
    }

    /// Whether only the keys are held here (a query worker holds the rows).
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Drops the rows, vectors and indexes, keeping keys, timestamps and MVCC bounds.
    pub(crate) fn demote(&mut self) {
        self.batches = Vec::new();
        self.starts = Vec::new();
        for v in &mut self.vectors {
            v.demote();
        }
        for i in &mut self.indexes {
            *i = None;
        }
        self.term_rows = std::collections::HashMap::new();
        self.remote = true;
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Appends `batch` (the schema's columns; `pk` names the key column, `sources` the
    /// vector fields' in the segment's order, `matches` the fields whose terms are indexed)
    /// with per-row timestamps `ts`.
    pub(crate) fn append(
        &mut self,
        batch: RecordBatch,
        ts: &[u64],
        pk: &str,
        sources: &[VectorSource],
        matches: &[MatchField],
    ) -> Result<std::ops::Range<usize>, QueryError> {
        let n = batch.num_rows();
        if ts.len() != n {
            return Err(QueryError::Invalid(format!(
                "{} timestamps for {n} rows",
                ts.len()
            )));
        }
        let pk_col = batch
            .column_by_name(pk)
            .ok_or_else(|| QueryError::Invalid(format!("rows without the primary key {pk}")))?;
        let pks = pks_of(pk_col.as_ref())?;
        let mut cols = Vec::with_capacity(sources.len());
        for source in sources {
            let name = source.column();
            let col = match (batch.column_by_name(name), source) {
                (Some(col), _) => col.clone(),
                // A nullable text field's column may be left out: no terms.
                (None, VectorSource::Text { .. }) => {
                    arrow_array::new_null_array(&ArrowType::Utf8, n)
                }
                (None, VectorSource::Column(_)) => {
                    return Err(QueryError::Invalid(format!(
                        "rows without the vector field {name}"
                    )));
                }
            };
            cols.push(col);
        }
        for ((v, col), source) in self.vectors.iter_mut().zip(&cols).zip(sources) {
            match source {
                VectorSource::Column(_) => v.append(col.as_ref())?,
                VectorSource::Text { analyzer, .. } => v.append_text(col.as_ref(), analyzer)?,
            }
        }
        let first = self.len();
        for m in matches {
            let Some(col) = batch.column_by_name(&m.name) else {
                continue;
            };
            let texts = col.as_string_opt::<i32>().ok_or_else(|| {
                QueryError::Invalid(format!("a text column of type {}", col.data_type()))
            })?;
            let index = self.term_rows.entry(m.name.clone()).or_default();
            let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
            for (i, text) in texts.iter().enumerate() {
                let row = u32::try_from(first + i)
                    .map_err(|_| QueryError::Invalid("a segment of over 2^32 rows".into()))?;
                seen.clear();
                m.analyzer
                    .each_term(text.unwrap_or_default(), |term, _, _, _| {
                        if !seen.contains(term) {
                            seen.insert(term.to_owned());
                            match index.get_mut(term) {
                                Some(rows) => rows.push(row),
                                None => {
                                    index.insert(term.into(), vec![row]);
                                }
                            }
                        }
                        true
                    });
            }
        }
        self.starts.push(first);
        self.batches.push(batch);
        self.ts.extend_from_slice(ts);
        self.pks.extend(pks);
        self.superseded.resize(first + n, u64::MAX);
        Ok(first..first + n)
    }

    /// Whether row `r` is visible at `t`.
    #[inline]
    pub fn visible(&self, r: usize, t: u64) -> bool {
        self.ts[r] <= t && t < self.superseded[r]
    }

    /// The batches and the row each starts at.
    pub fn batches(&self) -> impl Iterator<Item = (usize, &RecordBatch)> {
        self.starts.iter().copied().zip(&self.batches)
    }

    /// Which batch row `r` is in, and its row there.
    pub fn locate(&self, r: usize) -> (usize, usize) {
        let b = self.starts.partition_point(|&s| s <= r) - 1;
        (b, r - self.starts[b])
    }

    /// The batch at `b`.
    pub fn batch(&self, b: usize) -> &RecordBatch {
        &self.batches[b]
    }

    /// A column of batch `b` by name, or nulls when the batch predates the field.
    pub(crate) fn column(&self, b: usize, name: &str, ty: &ArrowType) -> ArrayRef {
        let batch = &self.batches[b];
        batch
            .column_by_name(name)
            .cloned()
            .unwrap_or_else(|| arrow_array::new_null_array(ty, batch.num_rows()))
    }

    /// `text_match(field, terms, min)` for rows `start..start + n`, read from the field's term
    /// index (`None` when the segment does not index the field).
    pub(crate) fn text_hits(
        &self,
        field: &str,
        terms: &[String],
        min: usize,
        start: usize,
        n: usize,
    ) -> Option<arrow_array::BooleanArray> {
        let index = self.term_rows.get(field)?;
        let mut held = vec![0usize; n];
        for term in terms {
            let Some(rows) = index.get(term.as_str()) else {
                continue;
            };
            let from = rows.partition_point(|&r| (r as usize) < start);
            for &r in rows[from..]
                .iter()
                .take_while(|&&r| (r as usize) < start + n)
            {
                held[r as usize - start] += 1;
            }
        }
        Some(
            held.into_iter()
                .map(|h| Some(h >= min && !terms.is_empty()))
                .collect(),
        )
    }

    /// Row `r`'s key.
    pub fn pk(&self, r: usize) -> &Pk {
        &self.pks[r]
    }

    /// Row `r`'s timestamp.
    pub fn ts(&self, r: usize) -> u64 {
        self.ts[r]
    }

    /// Sets the ANN index of vector field `f`.
    pub fn set_index(&mut self, f: usize, index: AnnIndex) {
        if let Some(slot) = self.indexes.get_mut(f) {
            *slot = Some(index);
        }
    }

    /// The ANN index of vector field `f`, if built.
    pub fn index(&self, f: usize) -> Option<&AnnIndex> {
        self.indexes.get(f).and_then(Option::as_ref)
    }

    /// Vector field `f`'s values.
    pub fn vectors(&self, f: usize) -> Option<&VectorColumn> {
        self.vectors.get(f)
    }
}
