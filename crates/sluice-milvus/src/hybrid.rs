//! Milvus's HybridSearch: several searches of one collection (each on its own vector field,
//! with its own query vectors, filter and limit) fused into one ranking per query vector.
//!
//! Rankers, as Milvus defines them:
//! - `rrf` (reciprocal rank fusion): a hit's score is the sum over the searches that found it
//!   of `1 / (k + rank)`, rank counting from 1 in that search's answer; `k` in (0, 16384),
//!   60 by default.
//! - `weighted`: the sum of `weight_i * score_i`, one weight in [0, 1] per search; with
//!   `norm_score` (the default) each score is first mapped to 0..1, larger = nearer: IP
//!   `0.5 + atan(s) / π`, COSINE `(1 + s) / 2`, L2 `1 − 2·atan(s) / π`. Without it, IP and
//!   COSINE scores are summed as they are; L2 distances are still mapped (raw, they rank the
//!   other way round).
//!
//! The fused hits are ordered by score (best first; ties by first appearance), `offset` of
//! them skipped and `limit` kept; each carries the output fields of the search that found it.

use std::collections::HashMap;

use arrow_array::{Array, ArrayRef, RecordBatch};
use serde_json::Value;
use sluice_proto::v1;

use crate::convert::batches_to_milvus;
use crate::decay::{Decay, nearness};
use crate::pb::common::KeyValuePair;
use crate::pb::schema as ms;
use crate::service::{Collection, ids_of};
use crate::status::Failure;

/// Searches one hybrid search may fuse at most.
pub(crate) const MAX_HYBRID_SEARCHES: usize = 1024;

/// One search's answer before it becomes Milvus's: per query vector `topks[q]` hits, best
/// first, their scores and rows (the rows of all queries in order, in any number of batches).
pub(crate) struct Searched {
    pub(crate) collection: Collection,
    /// The timestamp the search read the collection at.
    pub(crate) mvcc_timestamp: u64,
    /// A search iterator's page: its token and last bound.
    pub(crate) iterator: Option<ms::SearchIteratorV2Results>,
    pub(crate) metric: v1::MetricType,
    pub(crate) nq: usize,
    pub(crate) top_k: u64,
    pub(crate) scores: Vec<f32>,
    pub(crate) topks: Vec<i64>,
    pub(crate) rows: Vec<RecordBatch>,
    /// The output fields to answer with, and the names to report.
    pub(crate) fields: Vec<String>,
    pub(crate) report: Vec<String>,
}

impl Searched {
    /// Milvus's SearchResultData.
    pub(crate) fn into_milvus(self) -> Result<ms::SearchResultData, Failure> {
        let c = &self.collection;
        let ids = crate::convert::column(c.pk()?, &self.rows)?;
        let fields_data = batches_to_milvus(&c.schema, c.props(), &self.rows, &self.fields)?;
        Ok(ms::SearchResultData {
            num_queries: self.nq as i64,
            top_k: self.top_k as i64,
            fields_data,
            scores: self.scores,
            ids: Some(ids_of(&ids)?),
            topks: self.topks,
            output_fields: self.report,
            primary_field_name: c.pk()?.name.clone(),
            search_iterator_v2_results: self.iterator,
            ..Default::default()
        })
    }

    /// Every row in one batch (`None`: no hits at all).
    fn all_rows(&self) -> Result<Option<RecordBatch>, Failure> {
        let Some(first) = self.rows.first() else {
            return Ok(None);
        };
        arrow_select::concat::concat_batches(&first.schema(), &self.rows)
            .map(Some)
            .map_err(|e| Failure::unexpected(e.to_string()))
    }
}

/// One hit of a hybrid search as the searches' hits are fused.
struct Fused {
    score: f64,
    /// The order it was first seen in (ties of RRF and weighted fusion).
    seen: usize,
    /// (search, row) it is first seen at.
    at: (usize, usize),
}

/// How the searches' hits are fused.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fusion {
    Rrf {
        k: f64,
    },
    Weighted {
        weights: Vec<f64>,
        normalize: bool,
    },
    /// A decay ranker (`crate::decay`): each hit's best larger-is-nearer score over the
    /// searches, times the decay of its field; equal scores by primary key.
    Decay(Decay),
}

/// A hybrid search's ranker and what it keeps.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ranker {
    pub(crate) fusion: Fusion,
    pub(crate) limit: usize,
    pub(crate) offset: usize,
    /// Decimal places scores are rounded to (`None`: not rounded).
    pub(crate) round: Option<u32>,
}

/// A rank parameter's value: pymilvus sends each as JSON.
fn json(params: &[KeyValuePair], key: &str) -> Result<Option<Value>, Failure> {
    let Some(kv) = params.iter().find(|kv| kv.key == key) else {
        return Ok(None);
    };
    serde_json::from_str(&kv.value)
        .or_else(|_| Ok(Value::String(kv.value.clone())))
        .map(Some)
}

fn whole(params: &[KeyValuePair], key: &str, default: i64) -> Result<i64, Failure> {
    match json(params, key)? {
        None => Ok(default),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().unwrap_or(default)),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| Failure::invalid(format!("rank parameter {key} {s:?} is not a number"))),
        Some(v) => Err(Failure::invalid(format!(
            "rank parameter {key} {v} is not a whole number"
        ))),
    }
}

impl Fusion {
    /// The fusion a HybridSearch's function score names (Milvus 2.6's rankers as functions):
    /// one RERANK function with `reranker` `rrf` (`k`, default 60), `weighted` (`weights`,
    /// `norm_score`, default false) or `decay` ([`Decay`]), for `searches` searches of a
    /// collection of `schema`.
    pub(crate) fn of_function(
        score: &ms::FunctionScore,
        schema: &sluice_types::schema::CollectionSchema,
        searches: usize,
    ) -> Result<Fusion, Failure> {
        let reranker = match score.functions.as_slice() {
            [f] if ms::FunctionType::try_from(f.r#type) == Ok(ms::FunctionType::Rerank) => f
                .params
                .iter()
                .find(|p| p.key.eq_ignore_ascii_case("reranker"))
                .map(|p| (f, p.value.trim().to_ascii_lowercase())),
            _ => None,
        };
        let value = |f: &ms::FunctionSchema, key: &str| {
            f.params
                .iter()
                .find(|p| p.key.eq_ignore_ascii_case(key))
                .map(|p| p.value.trim().to_owned())
        };
        match reranker {
            Some((f, r)) if r == "rrf" => {
                let k = match value(f, "k") {
                    None => 60.0,
                    Some(k) => k
                        .parse::<f64>()
                        .map_err(|_| Failure::invalid(format!("rrf k {k:?} is not a number")))?,
                };
                rrf(k)
            }
            Some((f, r)) if r == "weighted" => {
                let weights: Value = match value(f, "weights") {
                    None => return Err(Failure::invalid("the weighted ranker needs weights")),
                    Some(w) => serde_json::from_str(&w)
                        .map_err(|_| Failure::invalid(format!("weights {w}: a list of numbers")))?,
                };
                // Unlike WeightedRanker's rank params, off unless asked for (as in Milvus).
                let normalize = match value(f, "norm_score").map(|n| n.to_ascii_lowercase()) {
                    None => false,
                    Some(n) if matches!(n.as_str(), "true" | "t" | "1") => true,
                    Some(n) if matches!(n.as_str(), "false" | "f" | "0") => false,
                    Some(n) => return Err(Failure::invalid(format!("norm_score {n}"))),
                };
                weighted(&weights, Some(&Value::Bool(normalize)), searches)
            }
            _ => Ok(Fusion::Decay(Decay::of(score, schema)?)),
        }
    }
}

/// RRF with constant `k`, checked.
fn rrf(k: f64) -> Result<Fusion, Failure> {
    if !(k > 0.0 && k < 16384.0) {
        return Err(Failure::invalid(format!(
            "rrf k {k}: it must be in (0, 16384)"
        )));
    }
    Ok(Fusion::Rrf { k })
}

/// Weighted fusion by `weights` (one per search, each 0 to 1), normalized unless `norm_score`
/// is false.
fn weighted(
    weights: &Value,
    norm_score: Option<&Value>,
    searches: usize,
) -> Result<Fusion, Failure> {
    let weights: Vec<f64> = weights
        .as_array()
        .ok_or_else(|| Failure::invalid("the weighted ranker needs weights"))?
        .iter()
        .map(|w| {
            w.as_f64()
                .filter(|w| (0.0..=1.0).contains(w))
                .ok_or_else(|| Failure::invalid(format!("weight {w}: 0 to 1")))
        })
        .collect::<Result<_, _>>()?;
    if weights.len() != searches {
        return Err(Failure::invalid(format!(
            "{} weights for {searches} searches: one weight per search",
            weights.len()
        )));
    }
    let normalize = match norm_score {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(Failure::invalid(format!("norm_score {v}"))),
    };
    Ok(Fusion::Weighted { weights, normalize })
}

impl Ranker {
    /// The ranker of a HybridSearch's `rank_params`, for `searches` searches; `fusion` when
    /// the request's function score names it ([`Fusion::of_function`]; then `rank_params`
    /// give only the limit, offset and rounding).
    pub(crate) fn of(
        params: &[KeyValuePair],
        searches: usize,
        fusion: Option<Fusion>,
    ) -> Result<Ranker, Failure> {
        for key in [
            "group_by_field",
            "group_size",
            "strict_group_size",
            "rank_group_scorer",
        ] {
            if params.iter().any(|kv| kv.key == key) {
                return Err(Failure::unsupported(format!(
                    "grouping a hybrid search ({key})"
                )));
            }
        }
        let strategy = match json(params, "strategy")? {
            None => "rrf".to_owned(),
            Some(Value::String(s)) => s.to_ascii_lowercase(),
            Some(v) => return Err(Failure::invalid(format!("rank strategy {v}"))),
        };
        let inner = match json(params, "params")? {
            None => serde_json::Map::new(),
            Some(Value::Object(o)) => o,
            Some(v) => return Err(Failure::invalid(format!("rank params {v}: not an object"))),
        };
        let fusion = match (fusion, strategy.as_str()) {
            (Some(fusion), _) => fusion,
            (None, "rrf") => match inner.get("k") {
                None => rrf(60.0)?,
                Some(v) => rrf(v
                    .as_f64()
                    .ok_or_else(|| Failure::invalid(format!("rrf k {v} is not a number")))?)?,
            },
            (None, "weighted") => weighted(
                inner.get("weights").unwrap_or(&Value::Null),
                inner.get("norm_score"),
                searches,
            )?,
            (None, other) => {
                return Err(Failure::unsupported(format!(
                    "the rank strategy {other:?} (Sluice has rrf and weighted)"
                )));
            }
        };
        let limit = whole(params, "limit", 10)?;
        let offset = whole(params, "offset", 0)?;
        if limit < 1 || offset < 0 || limit + offset > 16384 {
            return Err(Failure::invalid(format!(
                "limit {limit} + offset {offset}: limit must be in 1..=16384 with the offset"
            )));
        }
        let round = round_decimal(params)?;
        Ok(Ranker {
            fusion,
            limit: limit as usize,
            offset: offset as usize,
            round,
        })
    }

    /// The contribution of a hit at `rank` (0 = best) with `score` in search `i`.
    fn contribution(&self, i: usize, metric: v1::MetricType, rank: usize, score: f32) -> f64 {
        match &self.fusion {
            Fusion::Rrf { k } => 1.0 / (k + rank as f64 + 1.0),
            Fusion::Weighted { weights, normalize } => {
                let s = f64::from(score);
                // L2 is always mapped: its raw distances rank the other way round.
                let map = *normalize
                    || !matches!(
                        metric,
                        v1::MetricType::Ip | v1::MetricType::Cosine | v1::MetricType::Bm25
                    );
                let s = if map { normalized(metric, s) } else { s };
                weights[i] * s
            }
            Fusion::Decay(_) => nearness(metric, score),
        }
    }

    /// Fuses the answers of the searches (one per `searched`, in request order).
    pub(crate) fn fuse(&self, searched: Vec<Searched>) -> Result<ms::SearchResultData, Failure> {
        let nq = searched.first().map_or(0, |s| s.nq);
        if let Some(s) = searched.iter().find(|s| s.nq != nq) {
            return Err(Failure::invalid(format!(
                "the searches of a hybrid search have {nq} and {} query vectors: the same \
                 number each",
                s.nq
            )));
        }
        let all: Vec<Option<RecordBatch>> = searched
            .iter()
            .map(Searched::all_rows)
            .collect::<Result<_, _>>()?;
        let mut keys = Vec::with_capacity(searched.len());
        for (s, rows) in searched.iter().zip(&all) {
            let pk = s.collection.pk()?;
            keys.push(match rows {
                Some(b) => key_strings(
                    b.column_by_name(&pk.name)
                        .ok_or_else(|| Failure::unexpected("a search answered without keys"))?,
                )?,
                None => Vec::new(),
            });
        }
        let numeric_keys = match searched.first() {
            Some(s) => s.collection.pk()?.data_type == sluice_types::schema::DataType::Int64 as i32,
            None => false,
        };
        let mut scores = Vec::new();
        let mut topks = Vec::new();
        let mut picked: Vec<RecordBatch> = Vec::new();
        // Where query q's hits start in each search's rows.
        let mut starts = vec![0usize; searched.len()];
        let decay = match &self.fusion {
            Fusion::Decay(d) => Some(d),
            _ => None,
        };
        for q in 0..nq {
            let mut fused: HashMap<&str, Fused> = HashMap::new();
            for (i, s) in searched.iter().enumerate() {
                let n = s
                    .topks
                    .get(q)
                    .map_or(0, |&n| usize::try_from(n).unwrap_or(0));
                for rank in 0..n {
                    let row = starts[i] + rank;
                    let (Some(&score), Some(key)) = (s.scores.get(row), keys[i].get(row)) else {
                        return Err(Failure::unexpected(
                            "a search answered fewer hits than it counted",
                        ));
                    };
                    let add = self.contribution(i, s.metric, rank, score);
                    let seen = fused.len();
                    fused
                        .entry(key.as_str())
                        .and_modify(|e| match decay {
                            Some(_) => e.score = e.score.max(add),
                            None => e.score += add,
                        })
                        .or_insert(Fused {
                            score: add,
                            seen,
                            at: (i, row),
                        });
                }
                starts[i] += n;
            }
            let mut order: Vec<(&str, Fused)> = fused.into_iter().collect();
            if let Some(d) = decay {
                for (_, f) in &mut order {
                    if let Some(rows) = &all[f.at.0] {
                        f.score *= d.factor(d.value(rows, f.at.1)?);
                    }
                }
                // Equal scores by primary key, as Milvus orders them.
                order.sort_by(|(ka, a), (kb, b)| {
                    b.score.total_cmp(&a.score).then_with(|| {
                        match (numeric_keys, ka.parse::<i64>(), kb.parse::<i64>()) {
                            (true, Ok(x), Ok(y)) => x.cmp(&y),
                            _ => ka.cmp(kb),
                        }
                    })
                });
            } else {
                order.sort_by(|(_, a), (_, b)| {
                    b.score.total_cmp(&a.score).then(a.seen.cmp(&b.seen))
                });
            }
            let kept: Vec<Fused> = order
                .into_iter()
                .map(|(_, f)| f)
                .skip(self.offset)
                .take(self.limit)
                .collect();
            topks.push(kept.len() as i64);
            for f in kept {
                scores.push(self.rounded(f.score) as f32);
                if let Some(rows) = &all[f.at.0] {
                    picked.push(rows.slice(f.at.1, 1));
                }
            }
        }
        let Some(first) = searched.into_iter().next() else {
            return Err(Failure::invalid("a hybrid search without searches"));
        };
        let rows = match picked.first() {
            Some(b) => vec![
                arrow_select::concat::concat_batches(&b.schema(), &picked)
                    .map_err(|e| Failure::unexpected(e.to_string()))?,
            ],
            None => Vec::new(),
        };
        Searched {
            top_k: self.limit as u64,
            scores,
            topks,
            rows,
            ..first
        }
        .into_milvus()
    }

    fn rounded(&self, score: f64) -> f64 {
        rounded(score, self.round)
    }
}

/// A request's `round_decimal`: decimal places scores are rounded to, 0 to 6 (-1 or absent:
/// not rounded).
pub(crate) fn round_decimal(params: &[KeyValuePair]) -> Result<Option<u32>, Failure> {
    match whole(params, "round_decimal", -1)? {
        -1 => Ok(None),
        d @ 0..=6 => Ok(Some(d as u32)),
        d => Err(Failure::invalid(format!(
            "round_decimal {d}: -1 (none) or 0 to 6"
        ))),
    }
}

/// `score` rounded to `places` decimal places (`None`: as it is).
pub(crate) fn rounded(score: f64, places: Option<u32>) -> f64 {
    match places {
        Some(d) => {
            let f = 10f64.powi(d as i32);
            (score * f).round() / f
        }
        None => score,
    }
}

/// A score mapped to 0..1, larger = nearer (Milvus's normalization for weighted fusion).
pub(crate) fn normalized(metric: v1::MetricType, s: f64) -> f64 {
    use std::f64::consts::PI;
    match metric {
        v1::MetricType::Ip => 0.5 + s.atan() / PI,
        v1::MetricType::Cosine => (1.0 + s) * 0.5,
        // BM25 scores are never negative.
        v1::MetricType::Bm25 => 2.0 * s.atan() / PI,
        _ => 1.0 - 2.0 * s.atan() / PI,
    }
}

/// Primary keys as strings (INT64 or VARCHAR), to match hits across searches.
pub(crate) fn key_strings(col: &ArrayRef) -> Result<Vec<String>, Failure> {
    use arrow_array::cast::AsArray;
    Ok(match col.data_type() {
        arrow_schema::DataType::Int64 => col
            .as_primitive::<arrow_array::types::Int64Type>()
            .values()
            .iter()
            .map(i64::to_string)
            .collect(),
        arrow_schema::DataType::Utf8 => col
            .as_string::<i32>()
            .iter()
            .map(|k| k.unwrap_or_default().to_owned())
            .collect(),
        other => return Err(Failure::unexpected(format!("primary keys of type {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::service::kv;

    #[test]
    fn rank_params_as_pymilvus_sends_them() {
        let rrf = Ranker::of(
            &[
                kv("strategy", "\"rrf\""),
                kv("params", r#"{"k": 30}"#),
                kv("limit", "4"),
                kv("round_decimal", "-1"),
                kv("offset", "1"),
            ],
            2,
            None,
        )
        .unwrap();
        assert_eq!(rrf.fusion, Fusion::Rrf { k: 30.0 });
        assert_eq!((rrf.limit, rrf.offset, rrf.round), (4, 1, None));
        let w = Ranker::of(
            &[
                kv("strategy", "\"weighted\""),
                kv("params", r#"{"weights": [0.3, 0.7], "norm_score": false}"#),
                kv("limit", "3"),
            ],
            2,
            None,
        )
        .unwrap();
        assert_eq!(
            w.fusion,
            Fusion::Weighted {
                weights: vec![0.3, 0.7],
                normalize: false
            }
        );
        for (params, why) in [
            (
                vec![
                    kv("strategy", "\"weighted\""),
                    kv("params", r#"{"weights": [1]}"#),
                ],
                "one weight per search",
            ),
            (
                vec![
                    kv("strategy", "\"weighted\""),
                    kv("params", r#"{"weights": [1, 2]}"#),
                ],
                "0 to 1",
            ),
            (
                vec![kv("strategy", "\"rrf\""), kv("params", r#"{"k": 0}"#)],
                "(0, 16384)",
            ),
            (vec![kv("strategy", "\"decay\"")], "rank strategy"),
            (vec![kv("limit", "0")], "limit"),
            (vec![kv("group_by_field", "\"x\"")], "grouping"),
        ] {
            let e = Ranker::of(&params, 2, None).unwrap_err();
            assert!(e.reason().contains(why), "{params:?}: {}", e.reason());
        }
    }

    #[test]
    fn scores_normalize_to_unit_range_nearest_highest() {
        use v1::MetricType::*;
        assert!((normalized(Cosine, 1.0) - 1.0).abs() < 1e-9);
        assert!((normalized(Cosine, -1.0)).abs() < 1e-9);
        assert!((normalized(L2, 0.0) - 1.0).abs() < 1e-9);
        assert!(normalized(L2, 0.5) > normalized(L2, 2.0));
        assert!(normalized(Ip, 2.0) > normalized(Ip, 0.5));
        assert!(normalized(Bm25, 0.0).abs() < 1e-9);
        assert!(normalized(Bm25, 2.0) > normalized(Bm25, 0.5));
        // IP scores take any sign; L2 distances are never negative.
        for (m, s) in [
            (Ip, -5.0),
            (Ip, 0.0),
            (Ip, 1e6),
            (L2, 0.0),
            (L2, 3.0),
            (L2, 1e6),
        ] {
            let n = normalized(m, s);
            assert!((0.0..=1.0).contains(&n), "{m:?} {s}: {n}");
        }
    }
}
