//! Sparse float vectors (SPARSE_FLOAT_VECTOR) as rows hold them: Milvus's layout, per
//! (index, weight) pair the index as a little-endian `u32` then the weight as a little-endian
//! `f32`, indices strictly increasing. The same bytes travel in Milvus's `SparseFloatArray`, in
//! Sluice's Arrow rows (a Binary column) and in Parquet, so no layer re-encodes them.

/// Bytes per (index, weight) pair.
pub const PAIR_BYTES: usize = 8;

/// The largest index a pair may have (`u32::MAX` is reserved, as in Milvus).
pub const MAX_INDEX: u32 = u32::MAX - 1;

/// Why a sparse row was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SparseError(pub String);

/// The (index, weight) pairs of a row, without checking it (see [`check`]).
pub fn pairs(row: &[u8]) -> impl Iterator<Item = (u32, f32)> + '_ {
    row.chunks_exact(PAIR_BYTES).map(|p| {
        let (i, w) = p.split_at(4);
        (
            u32::from_le_bytes(i.try_into().unwrap_or_default()),
            f32::from_le_bytes(w.try_into().unwrap_or_default()),
        )
    })
}

/// Checks a row: whole pairs, indices increasing and at most [`MAX_INDEX`], weights finite and
/// not negative. An empty row (no pair) is valid: it matches nothing.
pub fn check(row: &[u8]) -> Result<(), SparseError> {
    if !row.len().is_multiple_of(PAIR_BYTES) {
        return Err(SparseError(format!(
            "a sparse vector of {} bytes: it needs {PAIR_BYTES} per (index, weight) pair",
            row.len()
        )));
    }
    let mut last: Option<u32> = None;
    for (i, w) in pairs(row) {
        if i > MAX_INDEX {
            return Err(SparseError(format!(
                "sparse vector index {i}: indices must be below {}",
                u32::MAX
            )));
        }
        if last.is_some_and(|l| i <= l) {
            return Err(SparseError(format!(
                "sparse vector index {i} after {}: indices must increase, each once",
                last.unwrap_or_default()
            )));
        }
        if !w.is_finite() || w < 0.0 {
            return Err(SparseError(format!(
                "sparse vector weight {w} at index {i}: weights must be finite and not negative"
            )));
        }
        last = Some(i);
    }
    Ok(())
}

/// Encodes pairs (sorted by index, merged if given twice: the last weight wins) into a row,
/// checked.
pub fn encode(mut pairs: Vec<(u32, f32)>) -> Result<Vec<u8>, SparseError> {
    pairs.sort_by_key(|&(i, _)| i);
    let mut out: Vec<u8> = Vec::with_capacity(pairs.len() * PAIR_BYTES);
    let mut prev: Option<u32> = None;
    for (i, w) in pairs {
        if prev == Some(i) {
            out.truncate(out.len() - PAIR_BYTES);
        }
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&w.to_le_bytes());
        prev = Some(i);
    }
    check(&out)?;
    Ok(out)
}

/// The inner product of two rows (both with increasing indices), if they share an index with
/// a weight other than 0 in both: rows that share none do not match each other at all (as in
/// Milvus, whose sparse indexes only reach the rows holding one of the query's indices).
pub fn dot(a: &[u8], b: &[u8]) -> Option<f32> {
    let (mut x, mut y) = (pairs(a), pairs(b));
    let (mut p, mut q) = (x.next(), y.next());
    let mut sum: Option<f32> = None;
    while let (Some((i, v)), Some((j, w))) = (p, q) {
        match i.cmp(&j) {
            std::cmp::Ordering::Less => p = x.next(),
            std::cmp::Ordering::Greater => q = y.next(),
            std::cmp::Ordering::Equal => {
                if v != 0.0 && w != 0.0 {
                    sum = Some(sum.unwrap_or(0.0) + v * w);
                }
                p = x.next();
                q = y.next();
            }
        }
    }
    sum
}

/// One more than the largest index of any of `rows` (Milvus's "dim" of a sparse array).
pub fn dim<'a>(rows: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    rows.into_iter()
        .filter_map(|r| pairs(r).last().map(|(i, _)| u64::from(i) + 1))
        .max()
        .unwrap_or(0)
}

/// `row` without its smallest weights: `ratio` (0 ≤ ratio < 1) of its pairs, the smallest
/// first, are dropped (Milvus's `drop_ratio_search` on a query vector).
pub fn drop_smallest(row: &[u8], ratio: f64) -> Vec<u8> {
    let n = row.len() / PAIR_BYTES;
    let drop = ((n as f64) * ratio).floor() as usize;
    if drop == 0 {
        return row.to_vec();
    }
    let mut by_weight: Vec<(usize, f32)> = pairs(row).map(|(_, w)| w).enumerate().collect();
    by_weight.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut gone = vec![false; n];
    for &(k, _) in &by_weight[..drop] {
        gone[k] = true;
    }
    row.chunks_exact(PAIR_BYTES)
        .zip(gone)
        .filter(|(_, g)| !g)
        .flat_map(|(p, _)| p.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: &[(u32, f32)]) -> Vec<u8> {
        p.iter()
            .flat_map(|(i, w)| i.to_le_bytes().into_iter().chain(w.to_le_bytes()))
            .collect()
    }

    #[test]
    fn rows_are_checked_as_milvus_checks_them() {
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&row(&[(0, 0.5), (7, 0.0), (MAX_INDEX, 2.0)])), Ok(()));
        for (bad, what) in [
            (vec![1, 2, 3], "bytes"),
            (row(&[(3, 1.0), (3, 2.0)]), "increase"),
            (row(&[(4, 1.0), (3, 2.0)]), "increase"),
            (row(&[(u32::MAX, 1.0)]), "below"),
            (row(&[(1, -0.5)]), "not negative"),
            (row(&[(1, f32::NAN)]), "finite"),
            (row(&[(1, f32::INFINITY)]), "finite"),
        ] {
            let e = check(&bad).expect_err(what);
            assert!(e.0.contains(what), "{e} should say {what}");
        }
    }

    #[test]
    fn encoding_sorts_and_keeps_the_last_weight_of_an_index() {
        let r = encode(vec![(9, 1.0), (2, 3.0), (9, 4.0)]).unwrap();
        assert_eq!(pairs(&r).collect::<Vec<_>>(), vec![(2, 3.0), (9, 4.0)]);
        assert!(encode(vec![(1, -1.0)]).is_err());
        assert_eq!(dim([r.as_slice(), &[][..]]), 10);
        assert_eq!(dim(std::iter::empty()), 0);
    }

    #[test]
    fn the_inner_product_meets_equal_indices_only_and_needs_one() {
        let a = row(&[(1, 2.0), (5, 3.0), (9, 1.0)]);
        let b = row(&[(0, 7.0), (5, 0.5), (9, 4.0), (12, 1.0)]);
        assert_eq!(dot(&a, &b), Some(3.0 * 0.5 + 4.0));
        assert_eq!(dot(&b, &a), dot(&a, &b));
        assert_eq!(dot(&a, &row(&[(2, 1.0), (6, 1.0)])), None);
        assert_eq!(dot(&a, &row(&[(5, 0.0)])), None);
        assert_eq!(dot(&row(&[(1, 0.0), (5, 1.0)]), &a), Some(3.0));
        assert_eq!(dot(&a, &[]), None);
    }

    #[test]
    fn dropping_takes_the_smallest_weights_first() {
        let a = row(&[(1, 0.5), (2, 0.1), (3, 0.9), (4, 0.2), (5, 0.7)]);
        assert_eq!(drop_smallest(&a, 0.0), a);
        let kept: Vec<u32> = pairs(&drop_smallest(&a, 0.4)).map(|(i, _)| i).collect();
        assert_eq!(kept, vec![1, 3, 5]);
        assert_eq!(drop_smallest(&a, 0.1), a);
    }
}
