//! The ANN index of a sealed segment's vector field: HNSW from `usearch`.
//!
//! Why `usearch`: it is a maintained HNSW implementation with SIMD distance kernels, safe to
//! search from many threads at once, serialisable to a byte buffer (so an index built once is
//! stored next to its segment and loaded instead of rebuilt), and it searches with a predicate
//! over keys — which is how MVCC visibility and scalar filters are applied inside the graph walk
//! instead of after it. Keys are row offsets within the segment.

use std::sync::Arc;

use sluice_types::index::IndexSettings;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::vector::Metric;

/// HNSW parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexParams {
    /// The metric the graph is built for.
    pub metric: Metric,
    /// Links per node (HNSW `M`).
    pub connectivity: usize,
    /// Candidate list size while building (`efConstruction`).
    pub expansion_add: usize,
    /// Candidate list size while searching (`ef`); a search asks for at least `k`.
    pub expansion_search: usize,
    /// Segments with fewer rows are searched exactly (an index would not pay).
    pub min_rows: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            metric: Metric::L2,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            min_rows: 2048,
        }
    }
}

impl IndexParams {
    /// These parameters with what a collection sets ([`IndexSettings`]) in their place.
    pub fn with(mut self, settings: &IndexSettings) -> IndexParams {
        if let Some(m) = settings.metric {
            self.metric = m.into();
        }
        if let Some(m) = settings.m {
            self.connectivity = m;
        }
        if let Some(ef) = settings.ef_construction {
            self.expansion_add = ef;
        }
        self
    }
}

/// An index failed.
#[derive(Debug, thiserror::Error)]
#[error("ANN index: {0}")]
pub struct IndexError(pub String);

fn err(e: impl std::fmt::Display) -> IndexError {
    IndexError(e.to_string())
}

/// One vector field's HNSW graph over a segment.
#[derive(Clone)]
pub struct AnnIndex {
    inner: Arc<Index>,
    params: IndexParams,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("params", &self.params)
            .field("size", &self.inner.size())
            .finish()
    }
}

fn options(dim: usize, p: &IndexParams) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: match p.metric {
            Metric::L2 => MetricKind::L2sq,
            Metric::Ip => MetricKind::IP,
            Metric::Cosine => MetricKind::Cos,
            // Never a graph's metric (graphs take theirs from the index settings).
            Metric::Jaccard => MetricKind::Tanimoto,
        },
        quantization: ScalarKind::F32,
        connectivity: p.connectivity,
        expansion_add: p.expansion_add,
        expansion_search: p.expansion_search,
        multi: false,
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Searches at once that the index serves (usearch keeps one context per concurrent call).
const SEARCH_SLOTS: usize = 64;

impl AnnIndex {
    /// Builds the graph over `rows` vectors of `dim` floats laid out one after another; key =
    /// row number. Uses every core.
    pub fn build(vectors: &[f32], dim: usize, params: IndexParams) -> Result<AnnIndex, IndexError> {
        Self::build_on(vectors, dim, params, threads())
    }

    /// [`AnnIndex::build`] on `workers` threads (one thread builds the same graph every time).
    pub fn build_on(
        vectors: &[f32],
        dim: usize,
        params: IndexParams,
        workers: usize,
    ) -> Result<AnnIndex, IndexError> {
        if dim == 0 || !vectors.len().is_multiple_of(dim) {
            return Err(IndexError(format!(
                "{} floats do not make vectors of dimension {dim}",
                vectors.len()
            )));
        }
        let rows = vectors.len() / dim;
        let index = Index::new(&options(dim, &params)).map_err(err)?;
        let workers = workers.max(1);
        index
            .reserve_capacity_and_threads(rows, workers.max(SEARCH_SLOTS))
            .map_err(err)?;
        let per = rows.div_ceil(workers).max(1);
        let failed = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let index = &index;
                    s.spawn(move || -> Result<(), IndexError> {
                        let lo = (w * per).min(rows);
                        let hi = ((w + 1) * per).min(rows);
                        for r in lo..hi {
                            index
                                .add(r as u64, &vectors[r * dim..(r + 1) * dim])
                                .map_err(err)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(err("an index builder panicked")))
                })
                .find_map(Result::err)
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(AnnIndex {
            inner: Arc::new(index),
            params,
        })
    }

    /// The parameters it was built with.
    pub fn params(&self) -> IndexParams {
        self.params
    }

    /// Vectors in the graph.
    pub fn len(&self) -> usize {
        self.inner.size()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest keys passing `keep`, closest first, with usearch distances (L2²,
    /// `1 − ip`, `1 − cos`). The walk keeps at least `ef` candidates (the index's own
    /// `expansion_search` when larger): asking for `max(k, ef)` results widens it per search
    /// without touching the shared index.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        if query.len() != self.inner.dimensions() {
            return Err(IndexError(format!(
                "the query has {} dimensions, the index {}",
                query.len(),
                self.inner.dimensions()
            )));
        }
        let wide = if ef > self.params.expansion_search {
            ef.max(k)
        } else {
            k
        };
        let m = self.inner.filtered_search(query, wide, keep).map_err(err)?;
        let mut out: Vec<(u64, f32)> = m.keys.into_iter().zip(m.distances).collect();
        out.truncate(k);
        Ok(out)
    }

    /// The graph as bytes (to store next to the segment).
    pub fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        let mut buf = vec![0u8; self.inner.serialized_length()];
        self.inner.save_to_buffer(&mut buf).map_err(err)?;
        Ok(buf)
    }

    /// A graph stored by [`AnnIndex::to_bytes`], checked against what the segment expects.
    pub fn from_bytes(
        bytes: &[u8],
        dim: usize,
        rows: usize,
        params: IndexParams,
    ) -> Result<AnnIndex, IndexError> {
        let meta = Index::metadata_from_buffer(bytes).map_err(err)?;
        if meta.dimensions as usize != dim || meta.count_present as usize != rows {
            return Err(IndexError(format!(
                "the stored index has {} vectors of dimension {}, the segment {rows} of {dim}",
                meta.count_present, meta.dimensions
            )));
        }
        let options = options(dim, &params);
        // Built for another metric (the collection's or the node's setting changed since): its
        // distances would be wrong for this one.
        if meta.metric != options.metric {
            return Err(IndexError(format!(
                "the stored index was built for {:?}, not {:?}",
                meta.metric, params.metric
            )));
        }
        let index = Index::new(&options).map_err(err)?;
        index.load_from_buffer(bytes).map_err(err)?;
        index
            .reserve_capacity_and_threads(rows, threads().max(SEARCH_SLOTS))
            .map_err(err)?;
        index.change_expansion_search(params.expansion_search);
        Ok(AnnIndex {
            inner: Arc::new(index),
            params,
        })
    }
}

/// The score a caller sees for a usearch distance of `metric`.
pub fn score_of(metric: Metric, d: f32) -> f32 {
    match metric {
        Metric::L2 | Metric::Jaccard => d,
        Metric::Ip | Metric::Cosine => 1.0 - d,
    }
}

/// The internal distance (smaller is closer, as [`Metric::distance`]) of a usearch distance.
pub fn distance_of(metric: Metric, d: f32) -> f32 {
    match metric {
        Metric::L2 | Metric::Jaccard => d,
        Metric::Ip | Metric::Cosine => d - 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::{TopK, l2_squared};
    use sluice_types::index::IndexMetric;

    fn data(rows: usize, dim: usize, seed: u32) -> Vec<f32> {
        // A cheap deterministic scatter (no clusters: the hardest case for a graph).
        (0..rows * dim)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / 16_777_216.0
            })
            .collect()
    }

    fn recall(index: &AnnIndex, vectors: &[f32], queries: &[f32], dim: usize, ef: usize) -> f64 {
        let mut hit = 0;
        let n = queries.len() / dim;
        for q in queries.chunks_exact(dim) {
            let mut top = TopK::new(10);
            for (i, v) in vectors.chunks_exact(dim).enumerate() {
                top.push(l2_squared(q, v), i as u64);
            }
            let truth: Vec<u64> = top.into_sorted().iter().map(|c| c.item).collect();
            let got = index.search(q, 10, ef, |_| true).unwrap();
            assert!(got.len() <= 10);
            hit += got.iter().filter(|(k, _)| truth.contains(k)).count();
        }
        hit as f64 / (n * 10) as f64
    }

    #[test]
    fn a_wider_search_finds_more_and_a_stored_index_answers_the_same() {
        let dim = 32;
        let vectors = data(3000, dim, 1);
        let queries = data(40, dim, 7);
        let params = IndexParams {
            connectivity: 2,
            expansion_add: 2,
            expansion_search: 1,
            ..IndexParams::default()
        };
        // One builder thread: the same graph every run.
        let index = AnnIndex::build_on(&vectors, dim, params, 1).unwrap();
        assert_eq!(index.len(), 3000);
        let narrow = recall(&index, &vectors, &queries, dim, 0);
        let wide = recall(&index, &vectors, &queries, dim, 400);
        // A graph this sparse misses most neighbours with its own tiny `ef`; a wide walk finds
        // many more of them.
        assert!(
            wide > narrow + 0.03,
            "ef 400 recall {wide} vs the index's own ef {narrow}"
        );

        let bytes = index.to_bytes().unwrap();
        let back = AnnIndex::from_bytes(&bytes, dim, 3000, params).unwrap();
        for q in queries.chunks_exact(dim).take(5) {
            assert_eq!(
                back.search(q, 10, 64, |_| true).unwrap(),
                index.search(q, 10, 64, |_| true).unwrap()
            );
        }
        // A predicate keeps only what it admits.
        let even = index
            .search(&queries[..dim], 10, 64, |k| k % 2 == 0)
            .unwrap();
        assert!(!even.is_empty() && even.iter().all(|(k, _)| k % 2 == 0));
        // A stored index that does not fit the segment is refused, not trusted.
        let e = AnnIndex::from_bytes(&bytes, dim, 2999, params).unwrap_err();
        assert!(e.to_string().contains("3000 vectors"), "{e}");
        assert!(AnnIndex::from_bytes(b"not an index", dim, 3000, params).is_err());
        // So is one built for another metric (its distances would be wrong for this one).
        let cosine = params.with(&IndexSettings {
            metric: Some(IndexMetric::Cosine),
            ..IndexSettings::default()
        });
        assert_eq!(cosine.metric, Metric::Cosine);
        let e = AnnIndex::from_bytes(&bytes, dim, 3000, cosine).unwrap_err();
        assert!(e.to_string().contains("built for"), "{e}");
        assert!(index.search(&[1.0], 10, 0, |_| true).is_err());
    }

    #[test]
    fn a_collection_s_settings_replace_the_node_s_and_leave_the_rest() {
        let node = IndexParams::default();
        assert_eq!(node.with(&IndexSettings::default()), node);
        let p = node.with(&IndexSettings {
            metric: Some(IndexMetric::Ip),
            m: Some(48),
            ef_construction: Some(300),
        });
        assert_eq!(
            (p.metric, p.connectivity, p.expansion_add),
            (Metric::Ip, 48, 300)
        );
        assert_eq!(
            (p.expansion_search, p.min_rows),
            (node.expansion_search, node.min_rows)
        );
    }
}
