//! A shard against a brute-force model: random inserts (keys drawn from a small range, so keys
//! are inserted again and deleted and inserted again), deletes, hand-offs of growing segments to
//! sealed ones (some with an HNSW index, some installed long after they sealed) — and at random
//! timestamps, past ones included, exact search, filtered query and get compared with what the
//! model computes from the same events.
//!
//! Some sealed segments go to one of two query workers (a second `ShardData` each): the shard
//! keeps only their keys, and every read is answered the way a delegator answers it — its own
//! part, plus each worker's part with the rows the shard says are gone at the read's timestamp,
//! merged. Segments also move between workers and back to the shard, and are compacted: the
//! rows deletes removed by the compaction's timestamp are left out of a new version of the file
//! (row numbers kept as `sluice_storage::compaction` keeps them), which a worker loads while
//! the shard keeps the older version's keys (or, as after a restart, the new one's); reads are
//! then at or after the newest compaction's timestamp.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_query::shard::{Hits, Scope, SearchSpec, merge_hits};
use sluice_query::vector::Metric;
use sluice_query::{AnnIndex, Filter, IndexParams, Pk, ShardData};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};

const DIM: usize = 4;
const KEYS: i64 = 60;

fn schema() -> CollectionSchema {
    let f = |name: &str, ty: DataType| FieldSchema {
        name: name.into(),
        data_type: ty as i32,
        ..FieldSchema::default()
    };
    CollectionSchema {
        name: "model".into(),
        fields: vec![
            FieldSchema {
                is_primary_key: true,
                ..f("id", DataType::Int64)
            },
            FieldSchema {
                nullable: true,
                ..f("tag", DataType::Int64)
            },
            FieldSchema {
                dim: DIM as u32,
                ..f("vec", DataType::FloatVector)
            },
        ],
        shards: 1,
        ..CollectionSchema::default()
    }
}

#[derive(Clone, Debug)]
struct Row {
    id: i64,
    tag: Option<i64>,
    vec: Vec<f32>,
}

#[derive(Clone, Debug)]
enum Event {
    Insert(Row),
    Delete(i64),
}

fn batch(rows: &[Row]) -> RecordBatch {
    let item = Arc::new(Field::new("item", ArrowType::Float32, false));
    let floats: Vec<f32> = rows.iter().flat_map(|r| r.vec.clone()).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("tag", ArrowType::Int64, true),
            Field::new(
                "vec",
                ArrowType::FixedSizeList(item.clone(), DIM as i32),
                false,
            ),
        ])),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.tag).collect::<Vec<_>>(),
            )),
            Arc::new(
                FixedSizeListArray::try_new(
                    item,
                    DIM as i32,
                    Arc::new(Float32Array::from(floats)),
                    None,
                )
                .unwrap(),
            ),
        ],
    )
    .unwrap()
}

/// The rows visible at `t`: per key, the newest event at or before `t`, if an insert.
fn visible(events: &[(u64, Event)], t: u64) -> BTreeMap<i64, Row> {
    visible_unexpired(events, t, 0)
}

/// [`visible`], leaving out rows inserted before `expired_before` (a TTL).
fn visible_unexpired(events: &[(u64, Event)], t: u64, expired_before: u64) -> BTreeMap<i64, Row> {
    let mut out = BTreeMap::new();
    for (ts, e) in events {
        if *ts > t {
            break;
        }
        match e {
            Event::Insert(r) => {
                out.insert(r.id, (*ts, r.clone()));
            }
            Event::Delete(id) => {
                out.remove(id);
            }
        }
    }
    out.into_iter()
        .filter(|(_, (ts, _))| *ts >= expired_before)
        .map(|(k, (_, r))| (k, r))
        .collect()
}

/// A sealed copy of segment `id` from its file (and, once compacted, its version and rows'
/// flushed positions) for `to`.
fn sealed(
    to: &ShardData,
    id: i64,
    file: &(Vec<RecordBatch>, Vec<u64>),
    compacted: Option<&(u64, Vec<u32>)>,
) -> sluice_query::Segment {
    let mut seg = to
        .prepare_sealed(id, 1, file.0.clone(), file.1.clone())
        .unwrap();
    if let Some((version, origin)) = compacted {
        seg.set_origin(*version, origin.clone()).unwrap();
    }
    seg
}

/// Segment `file` compacted at `at`: without the rows a delete in `events` removed by then.
fn compact(
    file: &(Vec<RecordBatch>, Vec<u64>),
    origin: Option<&(u64, Vec<u32>)>,
    events: &[(u64, Event)],
    at: u64,
) -> ((Vec<RecordBatch>, Vec<u64>), Vec<u32>) {
    let all = arrow_select::concat::concat_batches(&file.0[0].schema(), &file.0).unwrap();
    let keys = ids(&all);
    let removed = |r: usize| {
        events.iter().any(|(d, e)| {
            matches!(e, Event::Delete(k) if *k == keys[r]) && file.1[r] < *d && *d <= at
        })
    };
    let keep: Vec<bool> = (0..all.num_rows()).map(|r| !removed(r)).collect();
    let kept = arrow_select::filter::filter_record_batch(
        &all,
        &arrow_array::BooleanArray::from(keep.clone()),
    )
    .unwrap();
    let rows = |r: usize| origin.map_or(r as u32, |(_, o)| o[r]);
    let (ts, origin): (Vec<u64>, Vec<u32>) = (0..keep.len())
        .filter(|&r| keep[r])
        .map(|r| (file.1[r], rows(r)))
        .unzip();
    ((vec![kept], ts), origin)
}

fn ids(b: &RecordBatch) -> Vec<i64> {
    b.column(0).as_primitive::<Int64Type>().values().to_vec()
}

/// Returns how many deletes the shard forgot (those no held row needed any more).
fn run(seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let params = IndexParams {
        min_rows: 0,
        ..IndexParams::default()
    };
    let mut shard = ShardData::new(schema(), params).unwrap();
    // Every row comes through it from here on.
    shard.mark_loaded();
    let mut forgot = 0;
    let filter = Filter::parse("tag < 5 or tag is null", shard.schema()).unwrap();
    let mut events: Vec<(u64, Event)> = Vec::new();
    let mut ts = 100u64;
    let mut segment = 1i64;
    // The current growing segment's rows and timestamps; sealed ones waiting to be installed.
    let mut growing: (Vec<RecordBatch>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut pending: Vec<(i64, Vec<RecordBatch>, Vec<u64>)> = Vec::new();
    let mut workers = [
        ShardData::new(schema(), params).unwrap(),
        ShardData::new(schema(), params).unwrap(),
    ];
    // Sealed segments a worker holds (and the shard only the keys of), and their rows.
    let mut placed: HashMap<i64, usize> = HashMap::new();
    let mut files: HashMap<i64, (Vec<RecordBatch>, Vec<u64>)> = HashMap::new();
    // Compacted segments: version and each row's position in the flushed file.
    let mut compacted: HashMap<i64, (u64, Vec<u32>)> = HashMap::new();
    // Reads are at or after the newest compaction.
    let mut floor = 90u64;
    let mut checks = 0;
    for _ in 0..400 {
        ts += rng.random_range(1..5);
        match rng.random_range(0..11) {
            0..5 => {
                let mut keys: Vec<i64> = (0..rng.random_range(1..6))
                    .map(|_| rng.random_range(0..KEYS))
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                let rows: Vec<Row> = keys
                    .into_iter()
                    .map(|id| Row {
                        id,
                        tag: (rng.random_range(0..4) > 0).then(|| rng.random_range(0..10)),
                        vec: (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
                    })
                    .collect();
                let b = batch(&rows);
                if rng.random_bool(0.3) {
                    // An upsert: a delete and an insert of the same keys at one timestamp; the
                    // delete hides older rows only.
                    let keys: Vec<i64> = rows.iter().map(|r| r.id).collect();
                    shard.delete(&Int64Array::from(keys.clone()), ts).unwrap();
                    events.extend(keys.into_iter().map(|k| (ts, Event::Delete(k))));
                }
                shard.insert(segment, 1, b.clone(), ts).unwrap();
                growing.1.extend(std::iter::repeat_n(ts, rows.len()));
                growing.0.push(b);
                events.extend(rows.into_iter().map(|r| (ts, Event::Insert(r))));
            }
            5..7 => {
                let n = rng.random_range(1..4);
                let keys: Vec<i64> = (0..n).map(|_| rng.random_range(0..KEYS)).collect();
                let mut uniq = keys.clone();
                uniq.sort_unstable();
                uniq.dedup();
                shard.delete(&Int64Array::from(keys), ts).unwrap();
                events.extend(uniq.into_iter().map(|k| (ts, Event::Delete(k))));
            }
            7 => {
                // Seal: the segment's file is installed now or later.
                if !growing.1.is_empty() {
                    let (b, t) = std::mem::take(&mut growing);
                    pending.push((segment, b, t));
                    segment += 1;
                }
            }
            8 => {
                if !pending.is_empty() {
                    let (id, b, t) = pending.remove(rng.random_range(0..pending.len()));
                    let indexed = rng.random_bool(0.5);
                    let seal = |to: &ShardData, b: Vec<RecordBatch>, t: Vec<u64>| {
                        let mut seg = to.prepare_sealed(id, 1, b, t).unwrap();
                        if indexed {
                            let v = seg.vectors(0).unwrap();
                            seg.set_index(0, AnnIndex::build(&v.data, DIM, params).unwrap());
                        }
                        seg
                    };
                    shard
                        .install_sealed(seal(&shard, b.clone(), t.clone()))
                        .unwrap();
                    if rng.random_bool(0.5) {
                        let w = rng.random_range(0..2);
                        workers[w]
                            .install_sealed(seal(&workers[w], b.clone(), t.clone()))
                            .unwrap();
                        assert!(shard.demote(id));
                        placed.insert(id, w);
                    }
                    files.insert(id, (b, t));
                }
            }
            9 if rng.random_bool(0.3) && !files.is_empty() => {
                // A segment moves: to the other worker, to a worker, or back to the shard.
                let ids: Vec<i64> = files.keys().copied().collect();
                let id = ids[rng.random_range(0..ids.len())];
                let file = &files[&id];
                match placed.get(&id).copied() {
                    Some(w) if rng.random_bool(0.5) => {
                        workers[w].remove_sealed(id);
                        let seg = sealed(&shard, id, file, compacted.get(&id));
                        shard.install_sealed(seg).unwrap();
                        placed.remove(&id);
                    }
                    from => {
                        let to = from.map_or(rng.random_range(0..2), |w| 1 - w);
                        let seg = sealed(&workers[to], id, file, compacted.get(&id));
                        workers[to].install_sealed(seg).unwrap();
                        if let Some(w) = from {
                            workers[w].remove_sealed(id);
                        } else {
                            assert!(shard.demote(id));
                        }
                        placed.insert(id, to);
                    }
                }
            }
            10 if rng.random_bool(0.5) && !files.is_empty() => {
                // A compaction at `ts` of one sealed segment.
                let ids: Vec<i64> = files.keys().copied().collect();
                let id = ids[rng.random_range(0..ids.len())];
                let (file, origin) = compact(&files[&id], compacted.get(&id), &events, ts);
                compacted.insert(id, (ts, origin));
                files.insert(id, file);
                floor = ts;
                let file = &files[&id];
                match placed.get(&id).copied() {
                    Some(w) => {
                        // The worker loads the new version; the shard keeps the older keys,
                        // or (a restarted delegator) loads the new version's.
                        let seg = sealed(&workers[w], id, file, compacted.get(&id));
                        workers[w].install_sealed(seg).unwrap();
                        if rng.random_bool(0.3) {
                            let seg = sealed(&shard, id, file, compacted.get(&id));
                            shard.install_sealed(seg).unwrap();
                            assert!(shard.demote(id));
                        }
                    }
                    None => {
                        let seg = sealed(&shard, id, file, compacted.get(&id));
                        shard.install_sealed(seg).unwrap();
                    }
                }
                // The deletes that hid only the rows left out go; every read below still
                // answers like the model.
                let held = shard.deletes_held();
                let gone = shard.forget_deletes();
                assert_eq!(shard.deletes_held(), held - gone);
                forgot += gone;
            }
            _ => {
                checks += 1;
                let at = rng.random_range(floor..=ts);
                assert_eq!(
                    shard.count(at),
                    visible(&events, at).len(),
                    "seed {seed}: count at {at}"
                );
                // Half the reads with a TTL: rows inserted before `expiry` are gone.
                let expiry = if rng.random_bool(0.5) {
                    rng.random_range(90..=at)
                } else {
                    0
                };
                let model = visible_unexpired(&events, at, expiry);
                let own = Scope::expiring(expiry);
                // What each worker is asked: its segments, minus the rows gone at `at`.
                let scopes: Vec<Scope> = (0..2)
                    .map(|w| {
                        let segs: Vec<i64> = placed
                            .iter()
                            .filter(|(_, x)| **x == w)
                            .map(|(id, _)| *id)
                            .collect();
                        let hidden = segs
                            .iter()
                            .map(|&id| (id, shard.hidden_rows(id, at)))
                            .collect();
                        let versions: HashMap<i64, u64> = segs
                            .iter()
                            .map(|&id| (id, shard.segment_version(id).unwrap()))
                            .collect();
                        assert!(workers[w].missing(&versions).is_empty());
                        Scope::of(segs, hidden).with_expiry(expiry)
                    })
                    .collect();
                // Query with a filter (nulls match only `is null`).
                let mut got = ids(&shard
                    .query_in(Some(&filter), &[], &["tag".into()], 0, at, &own)
                    .unwrap());
                for (w, scope) in scopes.iter().enumerate() {
                    got.extend(ids(&workers[w]
                        .query_in(Some(&filter), &[], &["tag".into()], 0, at, scope)
                        .unwrap()));
                }
                got.sort_unstable();
                let want: Vec<i64> = model
                    .values()
                    .filter(|r| r.tag.is_none_or(|t| t < 5))
                    .map(|r| r.id)
                    .collect();
                assert_eq!(got, want, "seed {seed}: query at {at}, expiry {expiry}");
                // Get.
                let keys: Vec<Pk> = (0..5).map(|_| Pk::Int(rng.random_range(0..KEYS))).collect();
                let mut found: HashSet<i64> = ids(&shard.get_in(&keys, &[], at, &own).unwrap())
                    .into_iter()
                    .collect();
                for (w, scope) in scopes.iter().enumerate() {
                    for id in ids(&workers[w].get_in(&keys, &[], at, scope).unwrap()) {
                        assert!(found.insert(id), "seed {seed}: key {id} found twice");
                    }
                }
                let mut seen2 = HashSet::new();
                let got: Vec<i64> = keys
                    .iter()
                    .filter_map(|k| match k {
                        Pk::Int(v) => Some(*v),
                        Pk::Str(_) => None,
                    })
                    .filter(|v| seen2.insert(*v) && found.contains(v))
                    .collect();
                let mut seen = std::collections::HashSet::new();
                let want: Vec<i64> = keys
                    .iter()
                    .filter_map(|k| match k {
                        Pk::Int(v) => Some(*v),
                        Pk::Str(_) => None,
                    })
                    .filter(|v| seen.insert(*v) && model.contains_key(v))
                    .collect();
                assert_eq!(got, want, "seed {seed}: get at {at}, expiry {expiry}");
                // Exact search.
                let q: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
                let spec = SearchSpec {
                    field: None,
                    vectors: vec![q.clone()],
                    top_k: 5,
                    metric: Some(Metric::L2),
                    output_fields: vec!["tag".into()],
                    exact: true,
                    ..SearchSpec::default()
                };
                let mut parts: Vec<Hits> = shard.search_in(&spec, at, &own).unwrap();
                for (w, scope) in scopes.iter().enumerate() {
                    parts.extend(workers[w].search_in(&spec, at, scope).unwrap());
                }
                let hits = [merge_hits(parts, 5).unwrap()];
                let mut want: Vec<(f32, i64)> = model
                    .values()
                    .map(|r| (sluice_query::vector::l2_squared(&q, &r.vec), r.id))
                    .collect();
                want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                want.truncate(5);
                let got: Vec<i64> = ids(&hits[0].rows);
                assert_eq!(
                    got,
                    want.iter().map(|w| w.1).collect::<Vec<_>>(),
                    "seed {seed}: search at {at}, expiry {expiry}"
                );
                for (s, w) in hits[0].scores.iter().zip(&want) {
                    assert!((s - w.0).abs() < 1e-5, "seed {seed}: score {s} vs {}", w.0);
                }
            }
        }
    }
    assert!(checks > 10, "seed {seed}: only {checks} checks");
    forgot
}

#[test]
fn a_shard_answers_like_the_model_at_every_timestamp() {
    let forgot: usize = (0..40).map(run).sum();
    assert!(forgot > 0, "no delete was ever forgotten");
}

#[test]
fn deletes_are_kept_until_loaded_and_while_a_row_needs_them() {
    let mut shard = ShardData::new(schema(), IndexParams::default()).unwrap();
    let row = |id| Row {
        id,
        tag: Some(1),
        vec: vec![0.0; DIM],
    };
    // Deletes read from storage before the segments they hide rows of.
    shard.delete(&Int64Array::from(vec![1, 2, 3]), 50).unwrap();
    assert_eq!(shard.forget_deletes(), 0, "not loaded yet");
    let seg = shard
        .prepare_sealed(7, 1, vec![batch(&[row(1), row(2)])], vec![10, 60])
        .unwrap();
    shard.install_sealed(seg).unwrap();
    shard.mark_loaded();
    // 1's row is older than its delete, 2's newer, 3 has none.
    assert_eq!(shard.forget_deletes(), 2);
    assert_eq!(shard.deletes_held(), 1);
    assert_eq!(shard.count(100), 1);
    // A compaction leaves 1's row out: its delete goes too.
    let seg = shard
        .prepare_sealed(7, 1, vec![batch(&[row(2)])], vec![60])
        .unwrap();
    shard.install_sealed(seg).unwrap();
    assert_eq!(shard.forget_deletes(), 1);
    assert_eq!((shard.deletes_held(), shard.count(100)), (0, 1));
}

/// A flush racing a DropPartition: the partition's sealed segment is handed over after the
/// drop and must not bring its rows back; a key also written to another partition is visible
/// there once the dropped partition's newer version is gone.
#[test]
fn a_segment_of_a_dropped_partition_handed_over_late_is_not_taken() {
    let params = IndexParams::default();
    let mut shard = ShardData::new(schema(), params).unwrap();
    let row = |id: i64, tag: i64| Row {
        id,
        tag: Some(tag),
        vec: vec![0.5; DIM],
    };
    // Key 1 in partition 1 (segment 10) at 100; keys 1 and 2 in partition 2 (segment 20) at 110.
    let kept = batch(&[row(1, 0)]);
    shard.insert(10, 1, kept, 100).unwrap();
    let dropped = batch(&[row(1, 1), row(2, 1)]);
    shard.insert(20, 2, dropped.clone(), 110).unwrap();
    let all = |s: &ShardData| {
        let mut keys = ids(&s.query(None, &[], &[], usize::MAX, 200).unwrap());
        keys.sort_unstable();
        keys
    };
    assert_eq!(all(&shard), vec![1, 2]);
    shard.drop_partition(2);
    // Key 1's version in partition 1 is visible again; key 2 is gone.
    assert_eq!(all(&shard), vec![1]);
    let late = shard
        .prepare_sealed(20, 2, vec![dropped.clone()], vec![110, 110])
        .unwrap();
    shard.install_sealed(late).unwrap();
    assert_eq!(all(&shard), vec![1]);
    // Rows of the dropped partition read again from the log are not taken either.
    shard.insert(21, 2, dropped, 120).unwrap();
    assert_eq!(all(&shard), vec![1]);
}

/// A collection of an INT64 key `id` and a SPARSE_FLOAT_VECTOR field `sv`.
fn sparse_schema() -> CollectionSchema {
    CollectionSchema {
        name: "docs".into(),
        fields: vec![
            FieldSchema {
                field_id: 1,
                name: "id".into(),
                data_type: DataType::Int64 as i32,
                is_primary_key: true,
                ..Default::default()
            },
            FieldSchema {
                field_id: 2,
                name: "sv".into(),
                data_type: DataType::SparseFloatVector as i32,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// Rows of [`sparse_schema`]: keys `ids`, sparse vectors `rows`.
fn sparse_batch(ids: Vec<i64>, rows: &[Vec<u8>]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", ArrowType::Int64, false),
        Field::new("sv", ArrowType::Binary, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(arrow_array::BinaryArray::from(
            rows.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

/// A SPARSE_FLOAT_VECTOR field: searched by inner product over growing and sealed rows, a row
/// sharing no index with the query is no hit, filters and MVCC apply, the row comes back as it
/// was written; a dense query, or a metric other than IP, is refused.
#[test]
fn sparse_vectors_are_searched_by_inner_product_over_the_rows_that_share_an_index() {
    let sparse = |p: &[(u32, f32)]| sluice_types::sparse::encode(p.to_vec()).unwrap();
    let schema = sparse_schema();
    let mut shard = ShardData::new(schema.clone(), IndexParams::default()).unwrap();
    let rows = |ids: Vec<i64>, vs: Vec<Vec<u8>>| sparse_batch(ids, &vs);
    let sealed = shard
        .prepare_sealed(
            1,
            1,
            vec![rows(
                vec![1, 2],
                vec![sparse(&[(3, 1.0), (9, 2.0)]), sparse(&[(4, 5.0)])],
            )],
            vec![100, 100],
        )
        .unwrap();
    shard.install_sealed(sealed).unwrap();
    shard
        .insert(
            2,
            1,
            rows(vec![3, 4], vec![sparse(&[(9, 0.5)]), sparse(&[(3, 4.0)])]),
            110,
        )
        .unwrap();
    let query = sparse(&[(3, 1.0), (9, 1.0)]);
    let search = |spec: SearchSpec, t: u64| {
        let hits = shard.search(&spec, t)?;
        Ok::<_, sluice_query::QueryError>(
            hits[0]
                .pks
                .iter()
                .zip(&hits[0].scores)
                .map(|(k, s)| (k.clone(), *s))
                .collect::<Vec<_>>(),
        )
    };
    let spec = SearchSpec {
        sparse: vec![query.clone()],
        top_k: 10,
        output_fields: vec!["sv".into()],
        ..SearchSpec::default()
    };
    // Row 2 shares no index with the query: no hit.
    assert_eq!(
        search(spec.clone(), 200).unwrap(),
        vec![(Pk::Int(4), 4.0), (Pk::Int(1), 3.0), (Pk::Int(3), 0.5)]
    );
    // At 105 the growing rows are not there yet.
    assert_eq!(search(spec.clone(), 105).unwrap(), vec![(Pk::Int(1), 3.0)]);
    let filtered = SearchSpec {
        filter: Some(Filter::parse("id != 4", &schema).unwrap()),
        top_k: 2,
        ..spec.clone()
    };
    assert_eq!(
        search(filtered, 200).unwrap(),
        vec![(Pk::Int(1), 3.0), (Pk::Int(3), 0.5)]
    );
    let hits = shard.search(&spec, 200).unwrap();
    let sv = hits[0]
        .rows
        .column_by_name("sv")
        .unwrap()
        .as_binary::<i32>();
    assert_eq!(sv.value(1), sparse(&[(3, 1.0), (9, 2.0)]).as_slice());

    for bad in [
        SearchSpec {
            metric: Some(Metric::L2),
            ..spec.clone()
        },
        SearchSpec {
            sparse: Vec::new(),
            vectors: vec![vec![1.0; 4]],
            ..spec.clone()
        },
    ] {
        assert!(shard.search(&bad, 200).is_err());
    }
    assert!(Filter::parse("sv is null", &schema).is_err());
}

/// The sparse search (an inverted index per segment) answers what scoring every visible row
/// with [`sluice_types::sparse::dot`] answers: the same hits, scores and order, over random
/// rows in several growing and sealed segments with zero weights, deletes and top-k cuts.
#[test]
fn the_sparse_search_answers_as_scoring_every_row_does() {
    let schema = sparse_schema();
    let mut rng = StdRng::seed_from_u64(7);
    let random_row = |rng: &mut StdRng| {
        let n = rng.random_range(0..8);
        let pairs: Vec<(u32, f32)> = (0..n)
            .map(|_| {
                let w = if rng.random_range(0..6) == 0 {
                    0.0
                } else {
                    (rng.random_range(1..1000) as f32) / 1000.0
                };
                (rng.random_range(0..40), w)
            })
            .collect();
        sluice_types::sparse::encode(pairs).unwrap()
    };
    let mut shard = ShardData::new(schema, IndexParams::default()).unwrap();
    let mut all: Vec<(i64, Vec<u8>, u64)> = Vec::new();
    for seg in 0..4i64 {
        let ids: Vec<i64> = (seg * 50..seg * 50 + 50).collect();
        let rows: Vec<Vec<u8>> = ids.iter().map(|_| random_row(&mut rng)).collect();
        let ts = 100 + seg as u64;
        let batch = sparse_batch(ids.clone(), &rows);
        if seg % 2 == 0 {
            let sealed = shard
                .prepare_sealed(seg, 1, vec![batch], vec![ts; ids.len()])
                .unwrap();
            shard.install_sealed(sealed).unwrap();
        } else {
            shard.insert(seg, 1, batch, ts).unwrap();
        }
        all.extend(ids.into_iter().zip(rows).map(|(i, r)| (i, r, ts)));
    }
    let deleted: Vec<i64> = (0..200).filter(|i| i % 7 == 3).collect();
    shard
        .delete(&Int64Array::from(deleted.clone()), 150)
        .unwrap();
    for round in 0..40 {
        let q = random_row(&mut rng);
        let k = rng.random_range(1..30);
        let t = if round % 3 == 0 { 102 } else { 200 };
        let spec = SearchSpec {
            sparse: vec![q.clone()],
            top_k: k,
            ..SearchSpec::default()
        };
        let got = shard.search(&spec, t).unwrap();
        let got: Vec<(Pk, f32)> = got[0]
            .pks
            .iter()
            .cloned()
            .zip(got[0].scores.iter().copied())
            .collect();
        let mut want: Vec<(i64, f32)> = all
            .iter()
            .filter(|(id, _, ts)| *ts <= t && !(t >= 150 && deleted.contains(id)))
            .filter_map(|(id, row, _)| Some((*id, sluice_types::sparse::dot(&q, row)?)))
            .collect();
        // Best first; equal scores in row order (ids increase with it).
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(k);
        let want: Vec<(Pk, f32)> = want.into_iter().map(|(i, s)| (Pk::Int(i), s)).collect();
        assert_eq!(got, want, "round {round} at {t}, k {k}");
    }
}

/// A collection of a key, a text field with the standard analyzer and its BM25 function's
/// output `sparse`.
fn bm25_schema() -> CollectionSchema {
    use sluice_types::schema::{FunctionSchema, FunctionType};
    CollectionSchema {
        name: "texts".into(),
        fields: vec![
            FieldSchema {
                field_id: 1,
                name: "id".into(),
                data_type: DataType::Int64 as i32,
                is_primary_key: true,
                ..Default::default()
            },
            FieldSchema {
                field_id: 2,
                name: "text".into(),
                data_type: DataType::Varchar as i32,
                max_length: 1000,
                nullable: true,
                enable_analyzer: true,
                ..Default::default()
            },
            FieldSchema {
                field_id: 3,
                name: "sparse".into(),
                data_type: DataType::SparseFloatVector as i32,
                is_function_output: true,
                ..Default::default()
            },
        ],
        functions: vec![FunctionSchema {
            name: "bm25".into(),
            r#type: FunctionType::Bm25 as i32,
            input_field: "text".into(),
            output_field: "sparse".into(),
        }],
        ..Default::default()
    }
}

/// Rows of [`bm25_schema`] as written: keys and texts (no `sparse` column).
fn text_batch(ids: Vec<i64>, texts: Vec<Option<&str>>) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", ArrowType::Int64, false),
        Field::new("text", ArrowType::Utf8, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(arrow_array::StringArray::from(texts)),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

/// A BM25 function's output is searched with text: each row scored by Okapi BM25 with the
/// shard's term statistics (every row inserted, growing and sealed, deleted ones too), as
/// computed here by hand from the texts; filters, MVCC and deletes decide the hits, not the
/// statistics; a query worker scoring its rows with the delegator's statistics answers the
/// same; vectors, other metrics and asking for the output field are refused.
#[test]
fn a_bm25_output_is_searched_with_text_by_the_shards_term_statistics() {
    use sluice_types::text::{Analyzer, idf, tf_weight};
    let texts: Vec<(i64, Option<&str>)> = vec![
        (1, Some("The quick brown fox")),
        (2, Some("A lazy dog sleeps; the dog dreams")),
        (3, Some("Quick, quick! The fox runs")),
        (4, None),
        (5, Some("brown bread and brown sugar")),
        (6, Some("dog days of summer")),
    ];
    let schema = bm25_schema();
    let mut shard = ShardData::new(schema.clone(), IndexParams::default()).unwrap();
    let batch = |rows: &[(i64, Option<&str>)]| {
        text_batch(
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
        )
    };
    let sealed = shard
        .prepare_sealed(1, 1, vec![batch(&texts[..3])], vec![100; 3])
        .unwrap();
    shard.install_sealed(sealed).unwrap();
    shard.insert(2, 1, batch(&texts[3..]), 110).unwrap();
    // Row 6 deleted: still counted in the statistics.
    shard.delete(&Int64Array::from(vec![6]), 120).unwrap();

    // By hand: BM25 over all six rows.
    let a = Analyzer::default();
    let docs: Vec<(i64, Vec<String>)> = texts
        .iter()
        .map(|(id, t)| (*id, a.terms(t.unwrap_or_default())))
        .collect();
    let n = docs.len() as u64;
    let avgdl = docs.iter().map(|d| d.1.len()).sum::<usize>() as f32 / n as f32;
    let (k1, b) = (1.5, 0.6);
    let expect = |query: &str, t: u64, live: &dyn Fn(i64) -> bool| {
        let q = a.terms(query);
        let mut scored: Vec<(i64, f32)> = docs
            .iter()
            .filter(|(id, _)| live(*id) && (*id <= 3 || t >= 110) && !(*id == 6 && t >= 120))
            .filter_map(|(id, terms)| {
                let mut score = 0.0;
                let mut hit = false;
                let mut uniq = q.clone();
                uniq.sort();
                uniq.dedup();
                for term in &uniq {
                    let qtf = q.iter().filter(|x| *x == term).count() as f32;
                    let tf = terms.iter().filter(|x| *x == term).count() as f32;
                    if tf == 0.0 {
                        continue;
                    }
                    hit = true;
                    let df = docs.iter().filter(|d| d.1.contains(term)).count() as u64;
                    score += qtf * idf(n, df) * tf_weight(tf, terms.len() as f32, avgdl, k1, b);
                }
                hit.then_some((*id, score))
            })
            .collect();
        scored.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        scored
    };
    let search = |spec: &SearchSpec, t: u64| -> Vec<(i64, f32)> {
        shard.search(spec, t).unwrap()[0]
            .pks
            .iter()
            .zip(&shard.search(spec, t).unwrap()[0].scores)
            .map(|(k, s)| match k {
                Pk::Int(i) => (*i, *s),
                Pk::Str(_) => unreachable!(),
            })
            .collect()
    };
    let close = |got: Vec<(i64, f32)>, want: Vec<(i64, f32)>| {
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            want.iter().map(|w| w.0).collect::<Vec<_>>(),
            "{got:?} vs {want:?}"
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-4, "{got:?} vs {want:?}");
        }
    };
    for (query, t) in [
        ("quick fox", 200),
        ("DOG dog brown", 200),
        ("dog", 115),
        ("the", 105),
        ("summer", 200),
        ("nothing matches", 200),
    ] {
        let spec = SearchSpec {
            texts: vec![query.into()],
            bm25: Some((k1, b)),
            top_k: 10,
            output_fields: vec!["text".into()],
            ..SearchSpec::default()
        };
        close(search(&spec, t), expect(query, t, &|_| true));
    }
    let filtered = SearchSpec {
        texts: vec!["brown dog".into()],
        bm25: Some((k1, b)),
        top_k: 10,
        filter: Some(Filter::parse("id > 1", &schema).unwrap()),
        ..SearchSpec::default()
    };
    close(
        search(&filtered, 200),
        expect("brown dog", 200, &|id| id > 1),
    );

    // A query worker holding the sealed segment scores it by the delegator's statistics.
    let stats = shard.term_stats(None, &filtered.texts).unwrap();
    assert_eq!(
        (stats.rows, stats.terms),
        (6, docs.iter().map(|d| d.1.len() as u64).sum())
    );
    let mut worker = ShardData::new(schema.clone(), IndexParams::default()).unwrap();
    let copy = worker
        .prepare_sealed(1, 1, vec![batch(&texts[..3])], vec![100; 3])
        .unwrap();
    worker.install_sealed(copy).unwrap();
    assert!(shard.demote(1));
    assert_eq!(shard.term_stats(None, &filtered.texts).unwrap(), stats);
    // Demoted twice (the rows gone already), the statistics stay.
    assert!(shard.demote(1));
    assert_eq!(shard.term_stats(None, &filtered.texts).unwrap(), stats);
    let remote = SearchSpec {
        term_stats: Some(stats),
        ..filtered.clone()
    };
    let parts = vec![
        shard
            .search_in(&remote, 200, &Scope::default())
            .unwrap()
            .remove(0),
        worker
            .search_in(&remote, 200, &Scope::default())
            .unwrap()
            .remove(0),
    ];
    let merged = merge_hits(parts, 10).unwrap();
    let got: Vec<(i64, f32)> = merged
        .pks
        .iter()
        .zip(&merged.scores)
        .map(|(k, s)| (if let Pk::Int(i) = k { *i } else { 0 }, *s))
        .collect();
    close(got, expect("brown dog", 200, &|id| id > 1));

    for bad in [
        SearchSpec {
            metric: Some(Metric::L2),
            ..filtered.clone()
        },
        SearchSpec {
            sparse: vec![sluice_types::sparse::encode(vec![(1, 1.0)]).unwrap()],
            ..filtered.clone()
        },
        SearchSpec {
            output_fields: vec!["sparse".into()],
            ..filtered.clone()
        },
        SearchSpec {
            bm25: Some((5.0, 0.5)),
            ..filtered.clone()
        },
    ] {
        assert!(worker.search(&bad, 200).is_err());
    }
    // Text is for a BM25 output only.
    let sparse = ShardData::new(sparse_schema(), IndexParams::default()).unwrap();
    assert!(sparse.search(&filtered, 200).is_err());
}

/// `text_match` reads each segment's term index (built as rows arrive or load): over random
/// texts in growing and sealed segments, with nulls and batches of several sizes, every
/// `text_match` (any term, or `minimum_should_match`) and its negation and conjunctions answer
/// as the row-by-row reading of the text does, and so does `phrase_match` (which reads only
/// the rows holding all its terms); a demoted segment's rows are not read at all.
#[test]
fn text_match_reads_the_term_index_and_answers_as_reading_each_text() {
    use rand::Rng as _;
    let mut schema = bm25_schema();
    schema.fields[1].enable_match = true;
    let words = ["ant", "Bee", "cat", "dog", "eel", "fox", "gnu", "hen"];
    let mut rng = StdRng::seed_from_u64(29);
    let text = |rng: &mut StdRng| -> Option<String> {
        (!rng.random_bool(0.1)).then(|| {
            let n = rng.random_range(0..6);
            (0..n)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let mut shard = ShardData::new(schema.clone(), IndexParams::default()).unwrap();
    let mut all: Vec<(i64, Option<String>)> = Vec::new();
    let mut next = 0i64;
    let mut rows = |n: usize, rng: &mut StdRng, all: &mut Vec<(i64, Option<String>)>| {
        let part: Vec<(i64, Option<String>)> = (0..n)
            .map(|_| {
                next += 1;
                (next, text(rng))
            })
            .collect();
        all.extend(part.clone());
        text_batch(
            part.iter().map(|r| r.0).collect(),
            part.iter().map(|r| r.1.as_deref()).collect(),
        )
    };
    let sealed = vec![rows(30, &mut rng, &mut all), rows(7, &mut rng, &mut all)];
    let seg = shard.prepare_sealed(1, 1, sealed, vec![100; 37]).unwrap();
    shard.install_sealed(seg).unwrap();
    for n in [1, 12, 25] {
        let b = rows(n, &mut rng, &mut all);
        shard.insert(2, 1, b, 110).unwrap();
    }
    let analyzer = sluice_types::text::Analyzer::default();
    let holds = |t: &Option<String>, q: &[&str], min: usize| {
        let terms: HashSet<String> = t
            .as_deref()
            .map(|t| analyzer.terms(t))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut q: Vec<String> = q.iter().flat_map(|w| analyzer.terms(w)).collect();
        q.sort();
        q.dedup();
        !q.is_empty() && q.iter().filter(|w| terms.contains(*w)).count() >= min
    };
    let ids = |shard: &ShardData, expr: &str| -> Vec<i64> {
        let f = Filter::parse(expr, &schema).unwrap();
        let got = shard.query(Some(&f), &[], &[], 0, 200).unwrap();
        got.column(0).as_primitive::<Int64Type>().values().to_vec()
    };
    for _ in 0..60 {
        let q: Vec<&str> = (0..rng.random_range(1..4))
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        let min = rng.random_range(1..3);
        let joined = q.join(" ").to_uppercase();
        type Want<'a> = Box<dyn Fn(i64, &Option<String>) -> bool + 'a>;
        let cases: Vec<(String, Want<'_>)> = vec![
            (
                format!("text_match(text, '{joined}')"),
                Box::new(|_, t| holds(t, &q, 1)),
            ),
            (
                format!("text_match(text, '{joined}', minimum_should_match={min})"),
                Box::new(|_, t| holds(t, &q, min)),
            ),
            (
                format!("not text_match(text, '{joined}') and id % 2 == 0"),
                Box::new(|id, t| !holds(t, &q, 1) && id % 2 == 0),
            ),
            (
                format!("text_match(text, '{joined}') or id < 5"),
                Box::new(|id, t| holds(t, &q, 1) || id < 5),
            ),
        ];
        for (expr, want) in cases {
            let expected: Vec<i64> = all
                .iter()
                .filter(|(id, t)| want(*id, t))
                .map(|r| r.0)
                .collect();
            assert_eq!(ids(&shard, &expr), expected, "{expr}");
        }
    }
    // Phrases: the shard (candidate rows from the term index) answers as reading every row's
    // text in one batch does.
    let every = text_batch(
        all.iter().map(|r| r.0).collect(),
        all.iter().map(|r| r.1.as_deref()).collect(),
    );
    for _ in 0..60 {
        let phrase: Vec<&str> = (0..rng.random_range(1..4))
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        let expr = format!(
            "phrase_match(text, '{}', {}) or id == 3",
            phrase.join(" "),
            rng.random_range(0..4)
        );
        let f = Filter::parse(&expr, &schema).unwrap();
        let mask = f.evaluate(&every).unwrap();
        let expected: Vec<i64> = (0..all.len())
            .filter(|&i| mask.value(i))
            .map(|i| all[i].0)
            .collect();
        assert_eq!(ids(&shard, &expr), expected, "{expr}");
    }
    // A demoted segment (its rows on a query worker) has no term index here and no rows read.
    assert!(shard.demote(1));
    let expr = "text_match(text, 'ant bee cat dog eel fox gnu hen')";
    let expected: Vec<i64> = all
        .iter()
        .filter(|(id, t)| *id > 37 && holds(t, &words, 1))
        .map(|r| r.0)
        .collect();
    assert_eq!(ids(&shard, expr), expected);
}
