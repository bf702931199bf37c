//! Distances between float vectors, written so the compiler vectorises them (eight independent
//! accumulators over fixed-size chunks), and the top-K selection exact search uses.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// How two vectors are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Metric {
    /// Squared Euclidean distance: smaller is closer.
    #[default]
    L2,
    /// Inner product: larger is closer.
    Ip,
    /// Cosine similarity: larger is closer.
    Cosine,
    /// Jaccard distance, `1 − Σ min / Σ max` ([`jaccard_distance`]): smaller is closer. Never
    /// a graph's metric (searched exactly).
    Jaccard,
}

impl From<sluice_types::index::IndexMetric> for Metric {
    fn from(m: sluice_types::index::IndexMetric) -> Metric {
        use sluice_types::index::IndexMetric;
        match m {
            IndexMetric::L2 => Metric::L2,
            IndexMetric::Ip => Metric::Ip,
            IndexMetric::Cosine => Metric::Cosine,
        }
    }
}

impl Metric {
    /// The score a caller sees for a distance `d` computed by [`Metric::distance`]: the squared
    /// L2 distance, the inner product, or the cosine similarity (as Milvus reports them).
    pub fn score(self, d: f32) -> f32 {
        match self {
            Metric::L2 | Metric::Jaccard => d,
            Metric::Ip | Metric::Cosine => -d,
        }
    }

    /// A distance where smaller is always closer: L2², −IP, −cosine. `norm_b` is `|b|` (used by
    /// cosine only; `query_norm` likewise for the query).
    #[inline]
    pub fn distance(self, q: &[f32], query_norm: f32, b: &[f32], norm_b: f32) -> f32 {
        match self {
            Metric::L2 => l2_squared(q, b),
            Metric::Ip => -dot(q, b),
            Metric::Cosine => {
                let denom = query_norm * norm_b;
                if denom > 0.0 { -dot(q, b) / denom } else { 0.0 }
            }
            Metric::Jaccard => jaccard_distance(q, b),
        }
    }

    /// Its name on the wire and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "L2",
            Metric::Ip => "IP",
            Metric::Cosine => "COSINE",
            Metric::Jaccard => "JACCARD",
        }
    }
}

const LANES: usize = 8;

/// Σ (a−b)².
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        sum += d * d;
    }
    sum
}

/// Σ a·b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `1 − Σ min(a, b) / Σ max(a, b)` (0 when both are all zeros): of vectors of 0s and 1s, one
/// minus the share of the bits set in either that are set in both.
#[inline]
pub fn jaccard_distance(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut both, mut either) = ([0f32; LANES], [0f32; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            both[i] += x[i].min(y[i]);
            either[i] += x[i].max(y[i]);
        }
    }
    let (mut both, mut either): (f32, f32) = (both.iter().sum(), either.iter().sum());
    for (x, y) in ra.iter().zip(rb) {
        both += x.min(*y);
        either += x.max(*y);
    }
    if either > 0.0 {
        1.0 - both / either
    } else {
        0.0
    }
}

/// |a|.
#[inline]
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// One candidate: a distance (smaller is closer) and what it points at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate<T> {
    /// Smaller is closer.
    pub distance: f32,
    /// What the distance belongs to.
    pub item: T,
}

impl<T: PartialEq> Eq for Candidate<T> {}

impl<T: PartialEq> PartialOrd for Candidate<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: PartialEq> Ord for Candidate<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance)
    }
}

/// Keeps the `k` closest candidates offered.
#[derive(Debug)]
pub struct TopK<T> {
    k: usize,
    heap: BinaryHeap<Candidate<T>>,
}

impl<T: PartialEq + Copy> TopK<T> {
    /// Keeps at most `k`.
    pub fn new(k: usize) -> TopK<T> {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1),
        }
    }

    /// The distance a candidate must beat to get in (`+∞` until `k` are held).
    #[inline]
    pub fn bound(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |c| c.distance)
        }
    }

    /// Offers one candidate.
    #[inline]
    pub fn push(&mut self, distance: f32, item: T) {
        if self.k == 0 || distance.is_nan() {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Candidate { distance, item });
        } else if distance < self.bound() {
            self.heap.pop();
            self.heap.push(Candidate { distance, item });
        }
    }

    /// The candidates, closest first (ties in the order of `item`'s `Ord`... kept stable by
    /// distance only).
    pub fn into_sorted(self) -> Vec<Candidate<T>> {
        let mut v = self.heap.into_vec();
        v.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_l2(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }

    #[test]
    fn kernels_agree_with_the_naive_loops_for_every_length() {
        for n in [0usize, 1, 7, 8, 9, 31, 128, 131] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            assert!((l2_squared(&a, &b) - naive_l2(&a, &b)).abs() < 1e-3, "{n}");
            let d: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - d).abs() < 1e-3, "{n}");
        }
    }

    #[test]
    fn metrics_order_closer_first() {
        let q = [1.0, 0.0];
        let near = [0.9, 0.1];
        let far = [-1.0, 0.0];
        for m in [Metric::L2, Metric::Ip, Metric::Cosine] {
            let dn = m.distance(&q, norm(&q), &near, norm(&near));
            let df = m.distance(&q, norm(&q), &far, norm(&far));
            assert!(dn < df, "{m:?}");
        }
        assert_eq!(
            Metric::Cosine.score(Metric::Cosine.distance(&q, 1.0, &q, 1.0)),
            1.0
        );
    }

    #[test]
    fn jaccard_is_one_minus_shared_over_either_of_the_bits() {
        // 19 bits (more than two lanes' worth): a sets 0..10, b sets 5..15.
        let bits = |r: std::ops::Range<usize>| -> Vec<f32> {
            (0..19)
                .map(|i| f32::from(u8::from(r.contains(&i))))
                .collect()
        };
        let (a, b) = (bits(0..10), bits(5..15));
        // 5 shared of 15 set in either.
        assert!((jaccard_distance(&a, &b) - (1.0 - 5.0 / 15.0)).abs() < 1e-6);
        assert_eq!(jaccard_distance(&a, &a), 0.0);
        assert_eq!(jaccard_distance(&a, &bits(12..19)), 1.0);
        assert_eq!(jaccard_distance(&bits(0..0), &bits(0..0)), 0.0);
        let m = Metric::Jaccard;
        assert_eq!(
            m.score(m.distance(&a, 0.0, &b, 0.0)),
            jaccard_distance(&a, &b)
        );
    }

    #[test]
    fn top_k_keeps_the_k_smallest_in_order() {
        let mut t = TopK::new(3);
        for (d, i) in [
            (5.0, 1),
            (1.0, 2),
            (3.0, 3),
            (0.5, 4),
            (9.0, 5),
            (f32::NAN, 6),
        ] {
            t.push(d, i);
        }
        let got: Vec<i32> = t.into_sorted().iter().map(|c| c.item).collect();
        assert_eq!(got, vec![4, 2, 3]);
    }
}
