//! Milvus's decay rankers: a Search whose `function_score` holds one RERANK function with
//! `reranker` `decay` scales each hit's score by how far a numeric field's value lies from
//! `origin`.
//!
//! The hits reranked are the search's nearest `limit + offset` (what Milvus's proxy merges from
//! its shards before it reranks). Each is scored by its similarity made larger-is-nearer
//! (COSINE, IP and BM25 scores as they are; an L2 distance `s` as `1 − 2·atan(s)/π`) times the
//! decay of its field value `x`: with `d = max(0, |x − origin| − offset)`,
//!
//! * `gauss`: `decay^((d / scale)²)`,
//! * `exp`: `decay^(d / scale)`,
//! * `linear`: `max(0, 1 − (1 − decay)·d / scale)`,
//!
//! so a value within `offset` of `origin` keeps its whole score and one `scale` further keeps
//! `decay` of it (a linear one none at `scale / (1 − decay)`). Best first, equal scores by
//! primary key; then `offset` and `limit` apply.

use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType as ArrowType;
use sluice_proto::v1;
use sluice_types::schema::{CollectionSchema, DataType};

use crate::pb::common::KeyValuePair;
use crate::pb::schema as ms;
use crate::status::Failure;

/// How the score falls off with the distance from `origin`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Gauss,
    Exp,
    Linear,
}

/// A decay ranker (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decay {
    /// The numeric field whose value decays the score.
    pub(crate) field: String,
    shape: Shape,
    origin: f64,
    scale: f64,
    offset: f64,
    decay: f64,
}

/// A hit's similarity made larger-is-nearer: COSINE, IP and BM25 scores as they are, a
/// distance `s` as `1 − 2·atan(s)/π`.
pub(crate) fn nearness(metric: v1::MetricType, score: f32) -> f64 {
    match metric {
        v1::MetricType::Cosine | v1::MetricType::Ip | v1::MetricType::Bm25 => f64::from(score),
        // As weighted fusion maps a distance.
        distance => crate::hybrid::normalized(distance, f64::from(score)),
    }
}

fn number(params: &[KeyValuePair], key: &str) -> Result<Option<f64>, Failure> {
    let Some(p) = params.iter().find(|p| p.key.eq_ignore_ascii_case(key)) else {
        return Ok(None);
    };
    let text = p.value.trim().trim_matches('"');
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(Failure::invalid(format!(
            "the decay ranker's {key} {:?} is not a number",
            p.value
        ))),
    }
}

impl Decay {
    /// The decay ranker `score` names, on a collection of `schema`; a function score that is
    /// not one decay ranker of a numeric, non-nullable field is refused.
    pub(crate) fn of(
        score: &ms::FunctionScore,
        schema: &CollectionSchema,
    ) -> Result<Decay, Failure> {
        let [f] = score.functions.as_slice() else {
            return Err(Failure::unsupported(format!(
                "a function score of {} functions (one decay ranker is)",
                score.functions.len()
            )));
        };
        let reranker = f
            .params
            .iter()
            .find(|p| p.key.eq_ignore_ascii_case("reranker"))
            .map(|p| p.value.trim().to_ascii_lowercase());
        if ms::FunctionType::try_from(f.r#type) != Ok(ms::FunctionType::Rerank)
            || reranker.as_deref() != Some("decay")
        {
            return Err(Failure::unsupported(format!(
                "the function {:?} in a search (the decay ranker is supported; RRF and \
                 weighted rankers go with HybridSearch)",
                f.name
            )));
        }
        let [field] = f.input_field_names.as_slice() else {
            return Err(Failure::invalid(format!(
                "the decay ranker takes one input field, not {}",
                f.input_field_names.len()
            )));
        };
        let known = schema.fields.iter().find(|x| &x.name == field);
        let numeric = known.is_some_and(|x| {
            matches!(
                DataType::try_from(x.data_type),
                Ok(DataType::Int32 | DataType::Int64 | DataType::Float | DataType::Double)
            )
        });
        if !numeric {
            return Err(Failure::invalid(format!(
                "the decay ranker's input field {field:?} must be a numeric field of the \
                 collection (INT8, INT16, INT32, INT64, FLOAT or DOUBLE)"
            )));
        }
        if known.is_some_and(|x| x.nullable) {
            return Err(Failure::invalid(format!(
                "the decay ranker's input field {field:?} is nullable: a row without a value \
                 has no distance to decay by"
            )));
        }
        let shape = match f
            .params
            .iter()
            .find(|p| p.key.eq_ignore_ascii_case("function"))
            .map(|p| p.value.trim())
        {
            Some("gauss") => Shape::Gauss,
            Some("exp") => Shape::Exp,
            Some("linear") => Shape::Linear,
            other => {
                return Err(Failure::invalid(format!(
                    "decay function {:?}: gauss, exp or linear",
                    other.unwrap_or_default()
                )));
            }
        };
        let origin = number(&f.params, "origin")?
            .ok_or_else(|| Failure::invalid("the decay ranker needs an origin"))?;
        let scale = number(&f.params, "scale")?
            .ok_or_else(|| Failure::invalid("the decay ranker needs a scale"))?;
        let offset = number(&f.params, "offset")?.unwrap_or(0.0);
        let decay = number(&f.params, "decay")?.unwrap_or(0.5);
        if scale <= 0.0 {
            return Err(Failure::invalid(format!(
                "the decay ranker's scale must be > 0, not {scale}"
            )));
        }
        if offset < 0.0 {
            return Err(Failure::invalid(format!(
                "the decay ranker's offset must be >= 0, not {offset}"
            )));
        }
        if !(decay > 0.0 && decay < 1.0) {
            return Err(Failure::invalid(format!(
                "the decay ranker's decay must be in (0, 1), not {decay}"
            )));
        }
        Ok(Decay {
            field: field.clone(),
            shape,
            origin,
            scale,
            offset,
            decay,
        })
    }

    /// The field's value in row `i` of `rows`.
    pub(crate) fn value(&self, rows: &RecordBatch, i: usize) -> Result<f64, Failure> {
        let column = rows.column_by_name(&self.field).ok_or_else(|| {
            Failure::unexpected(format!("the hits lack the field {:?}", self.field))
        })?;
        let x = match column.data_type() {
            _ if i >= column.len() || column.is_null(i) => None,
            ArrowType::Int32 => Some(f64::from(column.as_primitive::<Int32Type>().value(i))),
            ArrowType::Int64 => Some(column.as_primitive::<Int64Type>().value(i) as f64),
            ArrowType::Float32 => Some(f64::from(column.as_primitive::<Float32Type>().value(i))),
            ArrowType::Float64 => Some(column.as_primitive::<Float64Type>().value(i)),
            _ => None,
        };
        x.ok_or_else(|| Failure::unexpected(format!("a hit without a number in {:?}", self.field)))
    }

    /// The share of a score kept by a row whose field holds `x`.
    pub(crate) fn factor(&self, x: f64) -> f64 {
        let d = ((x - self.origin).abs() - self.offset).max(0.0) / self.scale;
        match self.shape {
            Shape::Gauss => self.decay.powf(d * d),
            Shape::Exp => self.decay.powf(d),
            Shape::Linear => (1.0 - (1.0 - self.decay) * d).max(0.0),
        }
    }

    /// The rows of `all` (one query's hits, nearest first, scored `scores`, primary key `pk`)
    /// to answer with: of the hits in `run`, the nearest `offset + limit` reranked, then
    /// `offset` skipped and at most `limit` kept, each with its new score.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pick(
        &self,
        all: &RecordBatch,
        pk: &str,
        scores: &[f32],
        run: Range<usize>,
        metric: v1::MetricType,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(usize, f32)>, Failure> {
        let end = run.end.min(run.start + offset + limit);
        let mut ranked = Vec::with_capacity(end.saturating_sub(run.start));
        for (i, &score) in scores.iter().enumerate().take(end).skip(run.start) {
            let x = self.value(all, i)?;
            ranked.push((i, (nearness(metric, score) * self.factor(x)) as f32));
        }
        let keys = all
            .column_by_name(pk)
            .filter(|k| k.len() >= end)
            .ok_or_else(|| Failure::unexpected(format!("the hits lack the primary key {pk:?}")))?;
        let by_key = |a: usize, b: usize| match keys.data_type() {
            ArrowType::Int64 => {
                let k = keys.as_primitive::<Int64Type>();
                k.value(a).cmp(&k.value(b))
            }
            ArrowType::Utf8 => {
                let k = keys.as_string::<i32>();
                k.value(a).cmp(k.value(b))
            }
            _ => a.cmp(&b),
        };
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| by_key(a.0, b.0)));
        Ok(ranked.into_iter().skip(offset).take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::schema::FieldSchema;

    use crate::service::kv;

    fn schema() -> CollectionSchema {
        let field = |name: &str, ty: DataType, nullable: bool| FieldSchema {
            name: name.into(),
            data_type: ty as i32,
            nullable,
            ..FieldSchema::default()
        };
        CollectionSchema {
            name: "c".into(),
            fields: vec![
                field("id", DataType::Int64, false),
                field("ts", DataType::Int64, false),
                field("maybe", DataType::Double, true),
                field("title", DataType::Varchar, false),
            ],
            ..CollectionSchema::default()
        }
    }

    fn ranker(field: &str, params: &[(&str, &str)]) -> ms::FunctionScore {
        let mut all = vec![kv("reranker", "decay")];
        all.extend(params.iter().map(|(k, v)| kv(k, *v)));
        ms::FunctionScore {
            functions: vec![ms::FunctionSchema {
                name: "d".into(),
                r#type: ms::FunctionType::Rerank as i32,
                input_field_names: vec![field.into()],
                params: all,
                ..Default::default()
            }],
            params: Vec::new(),
        }
    }

    #[test]
    fn each_shape_keeps_the_score_near_origin_and_decay_of_it_a_scale_further() {
        for shape in ["gauss", "exp", "linear"] {
            let d = Decay::of(
                &ranker(
                    "ts",
                    &[
                        ("function", shape),
                        ("origin", "100"),
                        ("scale", "10"),
                        ("offset", "2"),
                        ("decay", "0.25"),
                    ],
                ),
                &schema(),
            )
            .unwrap();
            assert_eq!(d.factor(100.0), 1.0, "{shape}");
            assert_eq!(d.factor(98.0), 1.0, "{shape}: within the offset");
            assert!((d.factor(112.0) - 0.25).abs() < 1e-12, "{shape}");
            assert!((d.factor(88.0) - 0.25).abs() < 1e-12, "{shape}: both sides");
            assert!(d.factor(105.0) < 1.0 && d.factor(105.0) > 0.25, "{shape}");
        }
        let gauss = |x| {
            Decay::of(
                &ranker(
                    "ts",
                    &[("function", "gauss"), ("origin", "0"), ("scale", "1")],
                ),
                &schema(),
            )
            .unwrap()
            .factor(x)
        };
        // decay defaults to 0.5: two scales away, 0.5^4.
        assert!((gauss(2.0) - 0.0625).abs() < 1e-12);
        let linear = Decay::of(
            &ranker(
                "ts",
                &[("function", "linear"), ("origin", "0"), ("scale", "1")],
            ),
            &schema(),
        )
        .unwrap();
        assert_eq!(linear.factor(50.0), 0.0, "linear ends at 0");
        assert_eq!(linear.factor(1.5), 0.25);
    }

    #[test]
    fn bad_rankers_are_refused_with_the_reason() {
        let refused = |score: ms::FunctionScore, why: &str| {
            let e = Decay::of(&score, &schema()).unwrap_err();
            assert!(e.reason().contains(why), "{why}: {}", e.reason());
        };
        let good = [("function", "gauss"), ("origin", "1"), ("scale", "1")];
        refused(ranker("title", &good), "must be a numeric field");
        refused(ranker("missing", &good), "must be a numeric field");
        refused(ranker("maybe", &good), "nullable");
        refused(
            ranker("ts", &[("origin", "1"), ("scale", "1")]),
            "gauss, exp or linear",
        );
        refused(
            ranker("ts", &[("function", "exp"), ("scale", "1")]),
            "needs an origin",
        );
        refused(
            ranker("ts", &[("function", "exp"), ("origin", "1")]),
            "needs a scale",
        );
        for (key, value, why) in [
            ("scale", "0", "scale must be > 0"),
            ("offset", "-1", "offset must be >= 0"),
            ("decay", "1", "decay must be in (0, 1)"),
            ("decay", "0", "decay must be in (0, 1)"),
            ("origin", "soon", "is not a number"),
        ] {
            let mut params = vec![("function", "gauss"), ("origin", "1"), ("scale", "1")];
            params.retain(|(k, _)| *k != key);
            params.push((key, value));
            refused(ranker("ts", &params), why);
        }
        let mut two = ranker("ts", &good);
        two.functions.push(two.functions[0].clone());
        refused(two, "2 functions");
        let mut rrf = ranker("ts", &good);
        rrf.functions[0].params[0].value = "rrf".into();
        refused(rrf, "HybridSearch");
    }

    #[test]
    fn hits_are_reranked_among_the_nearest_then_paged() {
        use std::sync::Arc;
        let ts = arrow_array::Int64Array::from(vec![0, 50, 100, 100, 90]);
        let id = arrow_array::Int64Array::from(vec![7, 6, 9, 8, 5]);
        let all = RecordBatch::try_from_iter([
            ("ts", Arc::new(ts) as arrow_array::ArrayRef),
            ("id", Arc::new(id) as arrow_array::ArrayRef),
        ])
        .unwrap();
        let d = Decay::of(
            &ranker(
                "ts",
                &[("function", "exp"), ("origin", "100"), ("scale", "10")],
            ),
            &schema(),
        )
        .unwrap();
        let scores = [0.9, 0.8, 0.5, 0.5, 0.4];
        let picked = d
            .pick(&all, "id", &scores, 0..5, v1::MetricType::Ip, 0, 5)
            .unwrap();
        let ids: Vec<usize> = picked.iter().map(|p| p.0).collect();
        // 2 and 3 tie (0.5 × 1): by key (8 before 9); 4 is 0.4 × 0.5; 1 is 0.8 × 0.5^5.
        assert_eq!(ids, [3, 2, 4, 1, 0]);
        assert_eq!(picked[0].1, 0.5);
        assert!((picked[2].1 - 0.2).abs() < 1e-6);
        // Only the nearest offset + limit are reranked: with a limit of 1 and no offset, the
        // nearest hit alone.
        let one = d
            .pick(&all, "id", &scores, 0..5, v1::MetricType::Ip, 0, 1)
            .unwrap();
        assert_eq!(one[0].0, 0);
        let paged = d
            .pick(&all, "id", &scores, 0..5, v1::MetricType::Ip, 1, 2)
            .unwrap();
        // Of the nearest three (0, 1, 2), reranked 2, 1, 0: the second and third.
        assert_eq!(paged.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 0]);
        // L2: smaller is nearer; a distance of 0 is a whole score.
        let l2 = d
            .pick(
                &all,
                "id",
                &[0.0, 0.0, 0.0, 1.0, 0.0],
                2..4,
                v1::MetricType::L2,
                0,
                2,
            )
            .unwrap();
        assert_eq!(l2[0], (2, 1.0));
        assert!((l2[1].1 - 0.5).abs() < 1e-6, "{l2:?}");
    }
}
