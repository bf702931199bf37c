//! `sluice bench search`: vector search measured two ways in one run, next to its baselines.
//!
//! 1. **In process**: the vectors as one sealed segment of a shard (its HNSW graph built by
//!    Sluice's index), searched one query at a time through the shard (MVCC visibility checked
//!    on every candidate, result rows materialised) — against the raw `usearch` index with the
//!    same parameters over the same vectors, called directly. Rounds alternate; best and median
//!    of each are reported, with recall@10 against exact search.
//! 2. **End to end**: a standalone server in this process; the rows are inserted through the
//!    client (`sluice insert`'s path), flushed (ManualFlush → Parquet → HNSW on load), then
//!    searched over loopback gRPC by 1 and by 8 concurrent clients (QPS, p50/p99, recall@10),
//!    and the insert→searchable latency of a single row under STRONG consistency.
//!
//! 3. **Sparse, in process**: generated sparse vectors (a 30,000-term vocabulary, about 100
//!    weights per row drawn with a skew toward frequent terms; at most 100 queries of about
//!    20) as one sealed segment of a SPARSE_FLOAT_VECTOR field, searched through the shard
//!    (its inverted index) — against scoring every row with `sparse::dot` and keeping the top
//!    10, the exact answer the shard must give (checked: the same scores at every rank).
//!    Rounds alternate.
//! 4. **Text (BM25), in process**: generated texts (words of a 20,000-word vocabulary drawn
//!    with the same skew, about 60 per row) as one sealed segment of a BM25 function's output,
//!    searched with 3-word texts through the shard — against scoring every row by BM25 from its
//!    term counts (analyzed and counted before the clock starts, with the collection's term
//!    statistics), the exact answer the shard must give (checked: the same scores at every
//!    rank, to 1e-4). Rounds alternate.
//!
//! The data is `scripts/bench_search.py`'s (Parquet files given with `--data/--queries/--truth`)
//! or generated here the same way: fixed-seed Gaussian clusters. `--json` prints one JSON object
//! with the keys that script reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use rand::{Rng, SeedableRng};
use sluice_proto::v1;
use sluice_query::shard::SearchSpec;
use sluice_query::vector::l2_squared;
use sluice_query::{AnnIndex, IndexParams, ShardData};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};

use crate::config::Config;
use crate::server::Standalone;

/// What to measure.
#[derive(Debug)]
pub(crate) struct SearchBenchParams {
    /// Where the server keeps its data (a temporary subdirectory is made).
    pub dir: PathBuf,
    /// Vectors (`id`, `tag`, `vec`) — else generated.
    pub data: Option<PathBuf>,
    /// Query vectors (`vec`).
    pub queries: Option<PathBuf>,
    /// Exact top-10 ids per query (`ids`).
    pub truth: Option<PathBuf>,
    /// Generated rows.
    pub rows: usize,
    /// Generated dimension.
    pub dim: usize,
    /// Generated queries.
    pub nq: usize,
    /// Seconds of searching per concurrency level.
    pub seconds: f64,
    /// In-process rounds per side.
    pub rounds: usize,
    /// Print one JSON object (and the table on stderr).
    pub json: bool,
    /// HNSW parameters.
    pub index: IndexParams,
}

const K: usize = 10;

struct Dataset {
    batches: Vec<RecordBatch>,
    vectors: Vec<f32>,
    dim: usize,
    queries: Vec<Vec<f32>>,
    truth: Vec<Vec<i64>>,
    data_file: PathBuf,
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

fn floats_of(col: &dyn Array) -> anyhow::Result<(usize, Vec<f32>)> {
    let list = col
        .as_fixed_size_list_opt()
        .context("a vector column that is not a fixed-size list")?;
    let dim = list.value_length() as usize;
    let values = list
        .values()
        .as_primitive_opt::<Float32Type>()
        .context("vector elements that are not float32")?;
    let start = list.offset() * dim;
    Ok((
        dim,
        values.values()[start..start + list.len() * dim].to_vec(),
    ))
}

/// Gaussian clusters: 256 centres ~ N(0,1), points = centre + 0.15·N(0,1).
fn generate(rows: usize, dim: usize, nq: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let normal = move |rng: &mut rand::rngs::StdRng| -> f32 {
        // Box–Muller.
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    };
    let centres: Vec<Vec<f32>> = (0..256)
        .map(|_| (0..dim).map(|_| normal(&mut rng)).collect())
        .collect();
    let point = |rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        let c = &centres[rng.random_range(0..centres.len())];
        c.iter().map(|x| x + 0.15 * normal(rng)).collect()
    };
    let vectors: Vec<f32> = (0..rows).flat_map(|_| point(&mut rng)).collect();
    let queries = (0..nq).map(|_| point(&mut rng)).collect();
    (vectors, queries)
}

/// Exact top-K ids by L2 (ties by id), on every core.
fn exact_truth(vectors: &[f32], dim: usize, queries: &[Vec<f32>]) -> Vec<Vec<i64>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = queries.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = queries
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|q| {
                            let mut top = sluice_query::vector::TopK::new(K);
                            for (i, v) in vectors.chunks_exact(dim).enumerate() {
                                top.push(l2_squared(q, v), i as i64);
                            }
                            let mut c = top.into_sorted();
                            c.sort_by(|a, b| {
                                a.distance.total_cmp(&b.distance).then(a.item.cmp(&b.item))
                            });
                            c.into_iter().map(|c| c.item).collect()
                        })
                        .collect::<Vec<Vec<i64>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn batch_of(ids: Vec<i64>, vectors: &[f32], dim: usize) -> anyhow::Result<RecordBatch> {
    let tags: Vec<i64> = ids.iter().map(|i| i % 10).collect();
    let item = Arc::new(Field::new("item", ArrowType::Float32, false));
    let vec = FixedSizeListArray::try_new(
        item.clone(),
        dim as i32,
        Arc::new(Float32Array::from(vectors.to_vec())),
        None,
    )?;
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("tag", ArrowType::Int64, false),
            Field::new("vec", ArrowType::FixedSizeList(item, dim as i32), false),
        ])),
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(Int64Array::from(tags)),
            Arc::new(vec),
        ],
    )?)
}

fn load(params: &SearchBenchParams, tmp: &Path) -> anyhow::Result<Dataset> {
    if let (Some(data), Some(queries)) = (&params.data, &params.queries) {
        let batches = read_parquet(data)?;
        let mut vectors = Vec::new();
        let mut dim = 0;
        for b in &batches {
            let (d, v) = floats_of(
                b.column_by_name("vec")
                    .context("data without `vec`")?
                    .as_ref(),
            )?;
            dim = d;
            vectors.extend(v);
        }
        let mut qs = Vec::new();
        for b in read_parquet(queries)? {
            let (d, v) = floats_of(
                b.column_by_name("vec")
                    .context("queries without `vec`")?
                    .as_ref(),
            )?;
            qs.extend(v.chunks_exact(d).map(<[f32]>::to_vec));
        }
        let truth = match &params.truth {
            Some(t) => {
                let mut out = Vec::new();
                for b in read_parquet(t)? {
                    let list = b
                        .column_by_name("ids")
                        .context("truth without `ids`")?
                        .as_fixed_size_list()
                        .clone();
                    for r in 0..list.len() {
                        let v = list.value(r);
                        out.push(v.as_primitive::<Int64Type>().values().to_vec());
                    }
                }
                out
            }
            None => exact_truth(&vectors, dim, &qs),
        };
        return Ok(Dataset {
            batches,
            vectors,
            dim,
            queries: qs,
            truth,
            data_file: data.clone(),
        });
    }
    let (vectors, queries) = generate(params.rows, params.dim, params.nq);
    let truth = exact_truth(&vectors, params.dim, &queries);
    let mut batches = Vec::new();
    for (c, chunk) in vectors.chunks(params.dim * 10_000).enumerate() {
        let first = (c * 10_000) as i64;
        let n = chunk.len() / params.dim;
        batches.push(batch_of(
            (first..first + n as i64).collect(),
            chunk,
            params.dim,
        )?);
    }
    let data_file = tmp.join("data.parquet");
    let file = std::fs::File::create(&data_file)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None)?;
    for b in &batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(Dataset {
        batches,
        vectors,
        dim: params.dim,
        queries,
        truth,
        data_file,
    })
}

fn recall(found: &[Vec<i64>], truth: &[Vec<i64>]) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for (f, t) in found.iter().zip(truth) {
        let t: std::collections::HashSet<_> = t.iter().take(K).collect();
        hit += f.iter().take(K).filter(|i| t.contains(i)).count();
        total += K.min(t.len());
    }
    hit as f64 / total.max(1) as f64
}

fn schema(dim: usize) -> CollectionSchema {
    let field = |name: &str, ty: DataType| FieldSchema {
        name: name.into(),
        data_type: ty as i32,
        ..FieldSchema::default()
    };
    CollectionSchema {
        name: "bench_search".into(),
        fields: vec![
            FieldSchema {
                is_primary_key: true,
                field_id: 1,
                ..field("id", DataType::Int64)
            },
            FieldSchema {
                field_id: 2,
                ..field("tag", DataType::Int64)
            },
            FieldSchema {
                field_id: 3,
                dim: dim as u32,
                ..field("vec", DataType::FloatVector)
            },
        ],
        shards: 1,
        ..CollectionSchema::default()
    }
}

/// The integer keys of the first query's hits of a search of `shard` that sees every row.
fn top_ids(shard: &ShardData, spec: &SearchSpec) -> anyhow::Result<Vec<i64>> {
    let hits = shard.search(spec, u64::MAX - 1)?;
    Ok(hits[0]
        .pks
        .iter()
        .map(|k| match k {
            sluice_query::Pk::Int(v) => *v,
            sluice_query::Pk::Str(_) => -1,
        })
        .collect())
}

struct InProcess {
    build_s: f64,
    raw_build_s: f64,
    sluice_qps: Vec<f64>,
    raw_qps: Vec<f64>,
    sluice_recall: f64,
    raw_recall: f64,
}

fn in_process(ds: &Dataset, params: &SearchBenchParams) -> anyhow::Result<InProcess> {
    let mut shard = ShardData::new(schema(ds.dim), params.index)?;
    let rows: usize = ds.batches.iter().map(RecordBatch::num_rows).sum();
    let batches: Vec<RecordBatch> = ds
        .batches
        .iter()
        .map(|b| {
            let keep: Vec<usize> = ["id", "tag", "vec"]
                .iter()
                .map(|c| b.schema().index_of(c))
                .collect::<Result<_, _>>()?;
            b.project(&keep)
        })
        .collect::<Result<_, _>>()?;
    let mut seg = shard.prepare_sealed(1, 1, batches, vec![1; rows])?;
    let started = Instant::now();
    let index = AnnIndex::build(&ds.vectors, ds.dim, params.index)?;
    let build_s = started.elapsed().as_secs_f64();
    seg.set_index(0, index);
    shard.install_sealed(seg)?;

    let started = Instant::now();
    let raw = usearch::Index::new(&usearch::IndexOptions {
        dimensions: ds.dim,
        metric: usearch::MetricKind::L2sq,
        quantization: usearch::ScalarKind::F32,
        connectivity: params.index.connectivity,
        expansion_add: params.index.expansion_add,
        expansion_search: params.index.expansion_search,
        multi: false,
    })
    .map_err(|e| anyhow::anyhow!("usearch: {e}"))?;
    raw.reserve(rows)
        .map_err(|e| anyhow::anyhow!("usearch: {e}"))?;
    // Built on every core, as Sluice builds its own.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = rows.div_ceil(workers);
    std::thread::scope(|s| {
        for w in 0..workers {
            let (raw, ds) = (&raw, ds);
            s.spawn(move || {
                for r in (w * per).min(rows)..((w + 1) * per).min(rows) {
                    let _ = raw.add(r as u64, &ds.vectors[r * ds.dim..(r + 1) * ds.dim]);
                }
            });
        }
    });
    let raw_build_s = started.elapsed().as_secs_f64();

    let spec = |q: &Vec<f32>| SearchSpec {
        field: None,
        vectors: vec![q.clone()],
        top_k: K,
        ..SearchSpec::default()
    };
    let (mut sluice_qps, mut raw_qps) = (Vec::new(), Vec::new());
    let (mut sluice_found, mut raw_found) = (Vec::new(), Vec::new());
    for _ in 0..params.rounds.max(1) {
        let started = Instant::now();
        sluice_found.clear();
        for q in &ds.queries {
            sluice_found.push(top_ids(&shard, &spec(q))?);
        }
        sluice_qps.push(ds.queries.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        raw_found.clear();
        for q in &ds.queries {
            let m = raw
                .search(q, K)
                .map_err(|e| anyhow::anyhow!("usearch: {e}"))?;
            raw_found.push(m.keys.iter().map(|k| *k as i64).collect::<Vec<i64>>());
        }
        raw_qps.push(ds.queries.len() as f64 / started.elapsed().as_secs_f64());
    }
    // The data's ids are row numbers (as the generator and the script write them).
    Ok(InProcess {
        build_s,
        raw_build_s,
        sluice_recall: recall(&sluice_found, &ds.truth),
        raw_recall: recall(&raw_found, &ds.truth),
        sluice_qps,
        raw_qps,
    })
}

/// A search in process against scoring every row: the rows, and each round's searches/s.
struct AgainstScan {
    rows: usize,
    sluice_qps: Vec<f64>,
    scan_qps: Vec<f64>,
}

/// The ids of the `K` best of `scored` (score, id): best first, equal scores by id.
fn top_scored(mut scored: Vec<(f32, i64)>) -> Vec<i64> {
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(K).map(|(_, i)| i).collect()
}

/// Each round's searches/s through the shard and by scanning, and the last round's answers.
struct Alternated {
    sluice_qps: Vec<f64>,
    scan_qps: Vec<f64>,
    found: Vec<Vec<i64>>,
    truth: Vec<Vec<i64>>,
}

/// `rounds` alternating rounds of `queries` searched through `shard` (`spec_of` each) and by
/// `scan`.
fn alternate<Q>(
    rounds: usize,
    queries: &[Q],
    shard: &ShardData,
    spec_of: impl Fn(&Q) -> SearchSpec,
    scan: impl Fn(&Q) -> Vec<i64>,
) -> anyhow::Result<Alternated> {
    let (mut sluice_qps, mut scan_qps) = (Vec::new(), Vec::new());
    let (mut found, mut truth) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        found = queries
            .iter()
            .map(|q| top_ids(shard, &spec_of(q)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        sluice_qps.push(queries.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        truth = queries.iter().map(&scan).collect();
        scan_qps.push(queries.len() as f64 / started.elapsed().as_secs_f64());
    }
    Ok(Alternated {
        sluice_qps,
        scan_qps,
        found,
        truth,
    })
}

/// Terms of the generated sparse vocabulary.
const SPARSE_VOCABULARY: u32 = 30_000;

/// A generated sparse row of about `mean` weights: indices skewed toward small (frequent)
/// terms, weights in (0, 1].
fn sparse_row(rng: &mut rand::rngs::StdRng, mean: usize) -> Vec<u8> {
    let n = rng.random_range(1..=2 * mean);
    let pairs = (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            let index = (u * u * f64::from(SPARSE_VOCABULARY)) as u32;
            (index, rng.random_range(1..=1000) as f32 / 1000.0)
        })
        .collect();
    sluice_types::sparse::encode(pairs).unwrap_or_default()
}

fn sparse_in_process(params: &SearchBenchParams) -> anyhow::Result<AgainstScan> {
    use arrow_array::BinaryArray;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let rows: Vec<Vec<u8>> = (0..params.rows)
        .map(|_| sparse_row(&mut rng, 100))
        .collect();
    // At most 100 queries: scoring every row is the slow side.
    let queries: Vec<Vec<u8>> = (0..params.nq.clamp(1, 100))
        .map(|_| sparse_row(&mut rng, 20))
        .collect();
    let schema = super::key_and_vector(
        "sparse_bench",
        FieldSchema {
            name: "sv".into(),
            data_type: DataType::SparseFloatVector as i32,
            ..FieldSchema::default()
        },
    );
    let arrow = sluice_storage::rows::arrow_schema(&schema)?;
    let batch = RecordBatch::try_new(
        arrow,
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)) as ArrayRef,
            Arc::new(BinaryArray::from_iter_values(rows.iter())),
        ],
    )?;
    let mut shard = ShardData::new(schema, params.index)?;
    let seg = shard.prepare_sealed(1, 1, vec![batch], vec![1; rows.len()])?;
    shard.install_sealed(seg)?;

    // The exact answer: every row scored, best first, equal scores in row order.
    let scan = |q: &Vec<u8>| -> Vec<i64> {
        top_scored(
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| Some((sluice_types::sparse::dot(q, r)?, i as i64)))
                .collect(),
        )
    };
    let spec_of = |q: &Vec<u8>| SearchSpec {
        sparse: vec![q.clone()],
        top_k: K,
        ..SearchSpec::default()
    };
    let Alternated {
        sluice_qps,
        scan_qps,
        found,
        truth,
    } = alternate(params.rounds, &queries, &shard, spec_of, scan)?;
    // The same scores at every rank (rows of equal scores may come in either order).
    let scores = |q: &[u8], ids: &[i64]| -> Vec<Option<f32>> {
        ids.iter()
            .map(|&i| sluice_types::sparse::dot(q, &rows[i as usize]))
            .collect()
    };
    if let Some(i) = (0..queries.len())
        .find(|&i| scores(&queries[i], &found[i]) != scores(&queries[i], &truth[i]))
    {
        bail!(
            "the sparse search answered query {i} otherwise than scoring every row: {:?} vs {:?}",
            found[i],
            truth[i]
        );
    }
    Ok(AgainstScan {
        rows: rows.len(),
        sluice_qps,
        scan_qps,
    })
}

/// Words of the generated text vocabulary.
const TEXT_VOCABULARY: usize = 20_000;

/// A generated text of about `mean` words, skewed toward frequent ones.
fn text_row(rng: &mut rand::rngs::StdRng, mean: usize) -> String {
    let n = rng.random_range(1..=2 * mean);
    let words: Vec<String> = (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            format!("w{}", (u * u * TEXT_VOCABULARY as f64) as usize)
        })
        .collect();
    words.join(" ")
}

/// Text search in process: the shard's BM25 search against scoring every row.
fn text_in_process(params: &SearchBenchParams) -> anyhow::Result<AgainstScan> {
    use sluice_types::schema::{FunctionSchema, FunctionType};
    use sluice_types::text::{Analyzer, DEFAULT_BM25_B, DEFAULT_BM25_K1, idf, tf_weight};
    use std::collections::HashMap;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let texts: Vec<String> = (0..params.rows).map(|_| text_row(&mut rng, 60)).collect();
    let queries: Vec<String> = (0..params.nq.clamp(1, 100))
        .map(|_| {
            (0..3)
                .map(|_| format!("w{}", rng.random_range(0..TEXT_VOCABULARY / 10)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut schema = super::key_and_vector(
        "text_bench",
        FieldSchema {
            name: "text".into(),
            data_type: DataType::Varchar as i32,
            max_length: 65_535,
            enable_analyzer: true,
            ..FieldSchema::default()
        },
    );
    schema.fields.push(FieldSchema {
        field_id: 3,
        name: "sparse".into(),
        data_type: DataType::SparseFloatVector as i32,
        is_function_output: true,
        ..FieldSchema::default()
    });
    schema.functions.push(FunctionSchema {
        name: "text_bm25".into(),
        r#type: FunctionType::Bm25 as i32,
        input_field: "text".into(),
        output_field: "sparse".into(),
    });
    let batch = RecordBatch::try_new(
        sluice_storage::rows::arrow_schema(&schema)?,
        vec![
            Arc::new(Int64Array::from_iter_values(0..texts.len() as i64)) as ArrayRef,
            Arc::new(arrow_array::StringArray::from_iter_values(texts.iter())),
        ],
    )?;
    let mut shard = ShardData::new(schema, params.index)?;
    let seg = shard.prepare_sealed(1, 1, vec![batch], vec![1; texts.len()])?;
    shard.install_sealed(seg)?;

    // Every row's term counts and length, and each term's rows, before the clock starts.
    let analyzer = Analyzer::default();
    let counted: Vec<(HashMap<u32, f32>, f32)> = texts
        .iter()
        .map(|t| {
            let tf: HashMap<u32, f32> = analyzer.term_frequencies(t).into_iter().collect();
            let len = tf.values().sum();
            (tf, len)
        })
        .collect();
    let mut rows_with: HashMap<u32, u64> = HashMap::new();
    for (tf, _) in &counted {
        for id in tf.keys() {
            *rows_with.entry(*id).or_default() += 1;
        }
    }
    let n = counted.len() as u64;
    let avgdl = counted.iter().map(|c| f64::from(c.1)).sum::<f64>() as f32 / n.max(1) as f32;
    let score = |q: &[(u32, f32)], row: &(HashMap<u32, f32>, f32)| -> Option<f32> {
        let mut total = None;
        for &(id, qtf) in q {
            if let Some(&tf) = row.0.get(&id) {
                let w = qtf
                    * idf(n, rows_with[&id])
                    * tf_weight(tf, row.1, avgdl, DEFAULT_BM25_K1, DEFAULT_BM25_B);
                *total.get_or_insert(0.0) += w;
            }
        }
        total
    };
    let scan = |q: &String| -> Vec<i64> {
        let q = analyzer.term_frequencies(q);
        top_scored(
            counted
                .iter()
                .enumerate()
                .filter_map(|(i, row)| Some((score(&q, row)?, i as i64)))
                .collect(),
        )
    };
    let spec_of = |q: &String| SearchSpec {
        texts: vec![q.clone()],
        top_k: K,
        ..SearchSpec::default()
    };
    let Alternated {
        sluice_qps,
        scan_qps,
        found,
        truth,
    } = alternate(params.rounds, &queries, &shard, spec_of, scan)?;
    // The same scores at every rank (rows of equal scores may come in either order).
    let scores = |q: &str, ids: &[i64]| -> Vec<f32> {
        let q = analyzer.term_frequencies(q);
        ids.iter()
            .map(|&i| score(&q, &counted[i as usize]).unwrap_or(f32::NAN))
            .collect()
    };
    let differs = |a: Vec<f32>, b: Vec<f32>| {
        a.len() != b.len()
            || a.iter()
                .zip(&b)
                .any(|(x, y)| (x - y).abs() > 1e-4 * y.abs().max(1.0))
    };
    if let Some(i) = (0..queries.len()).find(|&i| {
        differs(
            scores(&queries[i], &found[i]),
            scores(&queries[i], &truth[i]),
        )
    }) {
        bail!(
            "the text search answered query {i} otherwise than scoring every row: {:?} vs {:?}",
            found[i],
            truth[i]
        );
    }
    Ok(AgainstScan {
        rows: texts.len(),
        sluice_qps,
        scan_qps,
    })
}

/// Prints a section measured against scanning every row, headed `what`; returns the shard's
/// best and median searches/s, then the scan's.
fn report_against_scan(what: &str, r: &AgainstScan, rounds: usize) -> (f64, f64, f64, f64) {
    let (sb, sm) = best_median(&r.sluice_qps);
    let (cb, cm) = best_median(&r.scan_qps);
    eprintln!(
        "# {what} ({} rows), {rounds} alternating rounds (answers checked equal)",
        r.rows
    );
    eprintln!("{:>16} {:>10} {:>10}", "path", "best qps", "median");
    eprintln!("{:>16} {sb:>10.0} {sm:>10.0}", "sluice shard");
    eprintln!("{:>16} {cb:>10.0} {cm:>10.0}", "scan every row");
    eprintln!(
        "sluice / scan = {:.1} (best), {:.1} (median)",
        sb / cb,
        sm / cm
    );
    (sb, sm, cb, cm)
}

fn best_median(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s.last().copied().unwrap_or(0.0), s[s.len() / 2])
}

struct EndToEnd {
    insert_rows_per_s: f64,
    flush_index_s: f64,
    qps: [f64; 2],
    p50: [f64; 2],
    p99: [f64; 2],
    recall: f64,
    insert_to_searchable_ms: f64,
}

fn search_request(q: &[f32], consistency: v1::ConsistencyLevel) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: "bench_search".into(),
        vectors: vec![v1::FloatVector { values: q.to_vec() }],
        top_k: K as u32,
        read: Some(v1::ReadOptions {
            consistency: consistency as i32,
            ..v1::ReadOptions::default()
        }),
        ..v1::SearchRequest::default()
    }
}

fn ids_of(r: &v1::SearchResponse) -> Vec<i64> {
    match r
        .results
        .first()
        .and_then(|h| h.keys.as_ref())
        .and_then(|k| k.keys.as_ref())
    {
        Some(v1::primary_keys::Keys::IntKeys(l)) => l.values.clone(),
        _ => Vec::new(),
    }
}

async fn end_to_end(
    ds: &Dataset,
    params: &SearchBenchParams,
    server: &Standalone,
) -> anyhow::Result<EndToEnd> {
    let endpoint = format!("http://{}", server.addr);
    let timeout = Duration::from_secs(120);
    let fields: Vec<String> = vec![
        "id:int64:pk".into(),
        "tag:int64".into(),
        format!("vec:float_vector:{}", ds.dim),
    ];
    crate::cli::create_collection(&endpoint, "bench_search", &fields, 1, Vec::new(), timeout)
        .await?;
    let (client, _topology) = crate::cli::connect(&endpoint, timeout)?;
    let started = Instant::now();
    crate::cli::insert_file(
        &client,
        &endpoint,
        crate::cli::InsertTarget {
            collection: "bench_search",
            partition: None,
        },
        &ds.data_file,
        1000,
        timeout,
    )
    .await?;
    let rows: usize = ds.batches.iter().map(RecordBatch::num_rows).sum();
    let insert_rows_per_s = rows as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    crate::cli::flush(&client, &endpoint, "bench_search", timeout).await?;
    let host = server
        .manager
        .query()
        .context("the server has no query delegators")?
        .clone();
    loop {
        let segs = host.segments("bench_search");
        let indexed: usize = segs
            .iter()
            .filter(|s| s.2 && (s.4 || s.3 < params.index.min_rows))
            .map(|s| s.3)
            .sum();
        if indexed >= rows {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the flushed segments were not loaded and indexed within 10 minutes: {segs:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flush_index_s = started.elapsed().as_secs_f64();

    let query =
        sluice_client::QueryClient::connect(&endpoint).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Recall over every query, one request each.
    let mut found = Vec::with_capacity(ds.queries.len());
    for q in &ds.queries {
        let r = query
            .search(search_request(q, v1::ConsistencyLevel::Bounded))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        found.push(ids_of(&r));
    }
    let recall = recall(&found, &ds.truth);

    let mut qps = [0.0; 2];
    let mut p50 = [0.0; 2];
    let mut p99 = [0.0; 2];
    for (slot, clients) in [1usize, 8].into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs_f64(params.seconds);
        let queries = Arc::new(ds.queries.clone());
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (query, queries) = (query.clone(), queries.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let mut i = c;
                while Instant::now() < deadline {
                    let q = &queries[i % queries.len()];
                    i += clients;
                    let t = Instant::now();
                    query
                        .search(search_request(q, v1::ConsistencyLevel::Bounded))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    h.record(t.elapsed().as_micros() as u64).ok();
                }
                anyhow::Ok(h)
            }));
        }
        let started = Instant::now();
        let mut all = hdrhistogram::Histogram::<u64>::new(3)?;
        for t in tasks {
            all.add(t.await??)?;
        }
        qps[slot] = all.len() as f64 / started.elapsed().as_secs_f64();
        p50[slot] = all.value_at_quantile(0.5) as f64 / 1e3;
        p99[slot] = all.value_at_quantile(0.99) as f64 / 1e3;
    }

    // Insert → searchable under STRONG consistency.
    let info_vchannel = {
        let v = host.segments("bench_search");
        v.first().map(|s| s.0.clone()).context("no shard")?
    };
    let mut latencies = Vec::new();
    for t in 0..5 {
        let id = 1_000_000_000 + t;
        let vector = vec![1000.0 + t as f32; ds.dim];
        let batch = batch_of(vec![id], &vector, ds.dim)?;
        let started = Instant::now();
        crate::cli::insert_batch(
            &client,
            &endpoint,
            "bench_search",
            &info_vchannel,
            batch,
            timeout,
        )
        .await?;
        loop {
            let r = query
                .search(search_request(&vector, v1::ConsistencyLevel::Strong))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if ids_of(&r).first() == Some(&id) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("an inserted row was not searchable within 30 s");
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(EndToEnd {
        insert_rows_per_s,
        flush_index_s,
        qps,
        p50,
        p99,
        recall,
        insert_to_searchable_ms: latencies[latencies.len() / 2],
    })
}

/// Runs the benchmark.
pub(crate) async fn search(params: SearchBenchParams) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("sluice-bench-search")
        .tempdir_in(&params.dir)
        .with_context(|| format!("making a directory in {}", params.dir.display()))?;
    let started = Instant::now();
    let ds = load(&params, tmp.path())?;
    let rows: usize = ds.batches.iter().map(RecordBatch::num_rows).sum();
    eprintln!(
        "# {rows} vectors of dim {}, {} queries (loaded in {:.1} s)",
        ds.dim,
        ds.queries.len(),
        started.elapsed().as_secs_f64()
    );
    let ip = in_process(&ds, &params)?;
    let (sb, sm) = best_median(&ip.sluice_qps);
    let (rb, rm) = best_median(&ip.raw_qps);
    eprintln!(
        "# in process, 1 thread, top-{K}, HNSW M={} efConstruction={} ef={}, {} alternating rounds",
        params.index.connectivity,
        params.index.expansion_add,
        params.index.expansion_search,
        params.rounds
    );
    eprintln!(
        "{:>16} {:>10} {:>10} {:>8} {:>8}",
        "path", "best qps", "median", "recall", "build s"
    );
    eprintln!(
        "{:>16} {sb:>10.0} {sm:>10.0} {:>8.4} {:>8.1}",
        "sluice shard", ip.sluice_recall, ip.build_s
    );
    eprintln!(
        "{:>16} {rb:>10.0} {rm:>10.0} {:>8.4} {:>8.1}",
        "usearch raw", ip.raw_recall, ip.raw_build_s
    );
    eprintln!(
        "sluice / usearch = {:.2} (best), {:.2} (median)",
        sb / rb,
        sm / rm
    );
    let (spb, spm, scb, scm) = report_against_scan(
        &format!(
            "sparse, in process, 1 thread, top-{K}: ~100 weights a row over {SPARSE_VOCABULARY} terms, ~20 per query"
        ),
        &sparse_in_process(&params)?,
        params.rounds,
    );
    let (txb, txm, tsb, tsm) = report_against_scan(
        &format!(
            "text (BM25), in process, 1 thread, top-{K}: ~60 words a row over {TEXT_VOCABULARY}, 3-word queries"
        ),
        &text_in_process(&params)?,
        params.rounds,
    );

    let mut config = Config {
        data_dir: tmp.path().join("standalone"),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.query.hnsw_m = params.index.connectivity;
    config.query.hnsw_ef_construction = params.index.expansion_add;
    config.query.hnsw_ef_search = params.index.expansion_search;
    config.validate()?;
    let server = Standalone::start(&config)
        .await
        .context("starting the standalone server")?;
    let e2e = end_to_end(&ds, &params, &server).await;
    let stopped = server.stop().await;
    let e2e = e2e?;
    stopped?;
    eprintln!("# end to end: standalone in this process, loopback gRPC, one shard");
    eprintln!(
        "insert {:.0} rows/s; flush + load + index {:.1} s; recall@{K} {:.4}; insert→searchable (strong) {:.1} ms",
        e2e.insert_rows_per_s, e2e.flush_index_s, e2e.recall, e2e.insert_to_searchable_ms
    );
    for (i, c) in [1, 8].iter().enumerate() {
        eprintln!(
            "{c} client(s): {:.0} searches/s, p50 {:.2} ms, p99 {:.2} ms",
            e2e.qps[i], e2e.p50[i], e2e.p99[i]
        );
    }
    if params.json {
        let out = serde_json::json!({
            "system": "sluice",
            "rows": rows,
            "dim": ds.dim,
            "insert_rows_per_s": e2e.insert_rows_per_s,
            "search_qps_1": e2e.qps[0],
            "search_qps_8": e2e.qps[1],
            "p50_ms_1": e2e.p50[0],
            "p99_ms_1": e2e.p99[0],
            "p50_ms_8": e2e.p50[1],
            "p99_ms_8": e2e.p99[1],
            "recall_at_10": e2e.recall,
            "insert_to_searchable_ms": e2e.insert_to_searchable_ms,
            "index": format!(
                "HNSW (usearch) M={} efConstruction={} ef={} on sealed segments; exact on growing",
                params.index.connectivity, params.index.expansion_add, params.index.expansion_search
            ),
            "flush_index_s": e2e.flush_index_s,
            "in_process_qps_best": sb,
            "in_process_qps_median": sm,
            "in_process_recall_at_10": ip.sluice_recall,
            "usearch_raw_qps_best": rb,
            "usearch_raw_qps_median": rm,
            "usearch_raw_recall_at_10": ip.raw_recall,
            "in_process_vs_usearch_best": sb / rb,
            "sparse_qps_best": spb,
            "sparse_qps_median": spm,
            "sparse_scan_qps_best": scb,
            "sparse_scan_qps_median": scm,
            "text_qps_best": txb,
            "text_qps_median": txm,
            "text_scan_qps_best": tsb,
            "text_scan_qps_median": tsm,
        });
        println!("{out}");
    }
    Ok(())
}
