//! What the filter language costs over JSON values, against the least a row-by-row evaluation
//! of JSON text can do: parse each row's document once (`serde_json::from_str` into a `Value`)
//! and look at it. Same rows, same run.
//!
//! ```text
//! cargo bench -p sluice-query --bench json_filter
//! ```
//!
//! Criterion reports rows/s over a batch of 100,000 rows: an ARRAY-like field `tags` (a JSON
//! array of 8 strings per row) and a JSON field `meta` (an object holding the same array and a
//! number).

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_query::filter::Filter;
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};

const ROWS: usize = 100_000;

/// A benchmark: its name, the filter, the column the baseline reads and what it looks for.
type Case<'a> = (
    &'static str,
    &'static str,
    &'a StringArray,
    Box<dyn Fn(&serde_json::Value) -> bool + 'a>,
);

fn field(name: &str, ty: DataType) -> FieldSchema {
    FieldSchema {
        name: name.into(),
        data_type: ty as i32,
        nullable: ty != DataType::Int64,
        is_primary_key: ty == DataType::Int64,
        ..FieldSchema::default()
    }
}

fn schema() -> CollectionSchema {
    CollectionSchema {
        name: "bench".into(),
        fields: vec![
            field("id", DataType::Int64),
            field("tags", DataType::Json),
            field("meta", DataType::Json),
        ],
        shards: 1,
        ..CollectionSchema::default()
    }
}

/// Row `i`'s tags: 8 of 64 distinct strings.
fn tags(i: usize) -> String {
    let tags: Vec<String> = (0..8)
        .map(|k| format!("\"t{}\"", (i * 7 + k) % 64))
        .collect();
    format!("[{}]", tags.join(","))
}

fn batch() -> RecordBatch {
    let ids = Int64Array::from_iter_values(0..ROWS as i64);
    let tags_col: StringArray = (0..ROWS).map(|i| Some(tags(i))).collect();
    let meta: StringArray = (0..ROWS)
        .map(|i| Some(format!(r#"{{"tags":{},"price":{}}}"#, tags(i), i % 1000)))
        .collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("tags", Arc::new(tags_col) as ArrayRef),
        ("meta", Arc::new(meta) as ArrayRef),
    ])
    .expect("the benchmark batch")
}

/// The baseline: each row's document parsed once, then `pick` looks at it.
fn parse_every_row(column: &StringArray, pick: impl Fn(&serde_json::Value) -> bool) -> usize {
    column
        .iter()
        .filter(|t| {
            t.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .is_some_and(|doc| pick(&doc))
        })
        .count()
}

fn matches(filter: &Filter, batch: &RecordBatch) -> usize {
    filter
        .evaluate(batch)
        .expect("the filter evaluates")
        .true_count()
}

fn json_filter(c: &mut Criterion) {
    let schema = schema();
    let batch = batch();
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .expect("column")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("text")
            .clone()
    };
    let (tags_col, meta_col) = (column("tags"), column("meta"));
    let t7 = serde_json::Value::from("t7");
    let has_t7 = |v: &serde_json::Value| v.as_array().is_some_and(|a| a.contains(&t7));

    let mut g = c.benchmark_group("json_filter");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(20);
    let cases: [Case<'_>; 3] = [
        (
            "array_contains(field)",
            r#"array_contains(tags, "t7")"#,
            &tags_col,
            Box::new(has_t7),
        ),
        (
            "json_contains(key)",
            r#"json_contains(meta["tags"], "t7")"#,
            &meta_col,
            Box::new(|v| v.get("tags").is_some_and(has_t7)),
        ),
        (
            "key compare",
            r#"meta["price"] < 100"#,
            &meta_col,
            Box::new(|v| {
                v.get("price")
                    .and_then(|p| p.as_f64())
                    .is_some_and(|p| p < 100.0)
            }),
        ),
    ];
    for (name, expr, col, pick) in &cases {
        let filter = Filter::parse(expr, &schema).expect("the filter parses");
        // Both sides find the same rows, or the comparison means nothing.
        assert_eq!(
            matches(&filter, &batch),
            parse_every_row(col, pick),
            "{expr}"
        );
        g.bench_function(format!("{name}/parse every row"), |b| {
            b.iter(|| black_box(parse_every_row(col, pick)))
        });
        g.bench_function(format!("{name}/filter"), |b| {
            b.iter(|| black_box(matches(&filter, &batch)))
        });
    }
    g.finish();
}

criterion_group!(benches, json_filter);
criterion_main!(benches);
