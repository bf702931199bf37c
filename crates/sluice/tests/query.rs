//! The query path end to end on a real standalone process, against a brute-force model kept by
//! the test: random inserts (keys drawn from a small range, so they are inserted again),
//! deletes, flushes (growing segments become Parquet segments with HNSW indexes, loaded and
//! swapped in by the delegators) and WAL moves (the process is SIGKILLed and started again: the
//! WALs reopen at a higher term and the delegators rebuild from the segments and the log) —
//! and at random past and present timestamps, `Query` with a filter, `Get` and exact `Search`
//! are compared with the model. Every insert is read back at once with STRONG consistency and
//! must be there.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_client::access::RemoteAccess;
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig, QueryClient};
use sluice_proto::v1;
use sluice_types::message::{
    DeleteHeader, InsertHeader, ManualFlushHeader, PartitionSegmentAssignment,
};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
use sluice_types::{MutableMessage, VChannel};
use support::{Proc, free_port};

const TIMEOUT: Duration = Duration::from_secs(60);
const DIM: usize = 8;
const KEYS: i64 = 150;

fn start(data: &std::path::Path, logs: &std::path::Path, listen: &str) -> Proc {
    Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            listen,
        ],
        &[
            ("SLUICE_QUERY__INDEX_MIN_ROWS", "20"),
            ("SLUICE_STORAGE__CHECKPOINT_INTERVAL_MS", "200"),
            ("SLUICE_WAL__CHECKPOINT_INTERVAL_MS", "300"),
        ],
        logs,
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"))
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

fn visible(events: &[(u64, Event)], t: u64) -> BTreeMap<i64, Row> {
    let mut sorted: Vec<&(u64, Event)> = events.iter().collect();
    sorted.sort_by_key(|(ts, _)| *ts);
    let mut out = BTreeMap::new();
    for (ts, e) in sorted {
        if *ts > t {
            break;
        }
        match e {
            Event::Insert(r) => {
                out.insert(r.id, r.clone());
            }
            Event::Delete(id) => {
                out.remove(id);
            }
        }
    }
    out
}

fn rows_batch(rows: &[Row]) -> RecordBatch {
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

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

fn decode(bytes: &[u8]) -> Vec<RecordBatch> {
    if bytes.is_empty() {
        return Vec::new();
    }
    arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn ids_and_tags(bytes: &[u8]) -> Vec<(i64, Option<i64>)> {
    let mut out = Vec::new();
    for b in decode(bytes) {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let tags = b
            .column_by_name("tag")
            .map(|c| c.as_primitive::<Int64Type>().clone());
        for i in 0..b.num_rows() {
            let tag = tags
                .as_ref()
                .and_then(|t| (!arrow_array::Array::is_null(t, i)).then(|| t.value(i)));
            out.push((ids.value(i), tag));
        }
    }
    out
}

fn read(consistency: v1::ConsistencyLevel, mvcc: u64) -> Option<v1::ReadOptions> {
    Some(v1::ReadOptions {
        consistency: consistency as i32,
        mvcc_timestamp: mvcc,
        timeout_ms: 30_000,
        ..v1::ReadOptions::default()
    })
}

struct Cluster {
    client: Client,
    query: QueryClient,
    info: v1::CollectionInfo,
}

fn connect(endpoint: &str, info: v1::CollectionInfo) -> Cluster {
    let topology = Arc::new(CoordinatorTopology::connect(endpoint).unwrap());
    let client = Client::new(
        topology,
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(TIMEOUT),
            ..ClientConfig::default()
        },
    );
    Cluster {
        client,
        query: QueryClient::connect(endpoint)
            .unwrap()
            .with_deadline(TIMEOUT),
        info,
    }
}

impl Cluster {
    fn vchannel(&self, key: i64) -> VChannel {
        let n = self.info.vchannels.len() as i64;
        VChannel::new(&self.info.vchannels[key.rem_euclid(n) as usize]).unwrap()
    }

    /// Inserts `rows` (one append per shard); returns (timestamp, rows) per append.
    async fn insert(&self, rows: Vec<Row>) -> Vec<(u64, Vec<Row>)> {
        self.insert_into(self.info.partitions[0].partition_id, rows)
            .await
    }

    /// Inserts `rows` into partition `partition_id` (one append per shard).
    async fn insert_into(&self, partition_id: i64, rows: Vec<Row>) -> Vec<(u64, Vec<Row>)> {
        let mut by_shard: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for r in rows {
            by_shard
                .entry(self.vchannel(r.id).as_str().to_owned())
                .or_default()
                .push(r);
        }
        let mut out = Vec::new();
        for (v, rows) in by_shard {
            let ts = self
                .insert_batch(&v, partition_id, &rows_batch(&rows))
                .await;
            out.push((ts, rows));
        }
        out
    }

    /// Inserts `batch` into partition `partition_id` of shard `vchannel`; returns its timestamp.
    async fn insert_batch(&self, vchannel: &str, partition_id: i64, batch: &RecordBatch) -> u64 {
        let body = ipc(batch);
        let msg = MutableMessage::builder(InsertHeader {
            collection_id: self.info.collection_id,
            partitions: vec![PartitionSegmentAssignment {
                partition_id,
                rows: batch.num_rows() as u64,
                binary_size: body.len() as u64,
                segment_id: 0,
            }],
        })
        .vchannel(&VChannel::new(vchannel).unwrap())
        .payload(body)
        .build()
        .unwrap();
        self.client.append(msg).await.expect("insert").timestamp.0
    }

    async fn delete(&self, keys: Vec<i64>) -> Vec<(u64, Vec<i64>)> {
        let mut by_shard: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for k in keys {
            by_shard
                .entry(self.vchannel(k).as_str().to_owned())
                .or_default()
                .push(k);
        }
        let mut out = Vec::new();
        for (v, keys) in by_shard {
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("id", ArrowType::Int64, false)])),
                vec![Arc::new(Int64Array::from(keys.clone())) as ArrayRef],
            )
            .unwrap();
            let msg = MutableMessage::builder(DeleteHeader {
                collection_id: self.info.collection_id,
                rows: keys.len() as u64,
            })
            .vchannel(&VChannel::new(&v).unwrap())
            .payload(ipc(&batch))
            .build()
            .unwrap();
            let r = self.client.append(msg).await.expect("delete");
            out.push((r.timestamp.0, keys));
        }
        out
    }

    async fn flush(&self) {
        for v in &self.info.vchannels {
            let msg = MutableMessage::builder(ManualFlushHeader {
                collection_id: self.info.collection_id,
                flush_ts: 0,
                segment_ids: Vec::new(),
            })
            .vchannel(&VChannel::new(v).unwrap())
            .build()
            .unwrap();
            self.client.append(msg).await.expect("flush");
        }
    }
}

async fn create(endpoint: &str) -> v1::CollectionInfo {
    let f = |name: &str, ty: DataType| FieldSchema {
        name: name.into(),
        data_type: ty as i32,
        ..FieldSchema::default()
    };
    let schema = CollectionSchema {
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
        shards: 2,
        ..CollectionSchema::default()
    };
    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(endpoint).unwrap(),
    );
    coord
        .create_collection(v1::CreateCollectionRequest {
            schema: Some(schema),
            partition_names: Vec::new(),
            properties: Default::default(),
        })
        .await
        .expect("create collection")
        .into_inner()
}

/// The newest timestamp of `events` (at least 1).
fn newest(events: &[(u64, Event)]) -> u64 {
    events.iter().map(|e| e.0).max().unwrap_or(0).max(1)
}

/// A read timestamp: the newest half the time, else the timestamp of a random event.
fn random_read_time(events: &[(u64, Event)], rng: &mut StdRng) -> u64 {
    if rng.random_bool(0.5) || events.is_empty() {
        newest(events)
    } else {
        events[rng.random_range(0..events.len())].0
    }
}

/// Rows of up to `n` distinct random keys, with random tags (a quarter null) and vectors.
fn random_rows(rng: &mut StdRng, n: usize) -> Vec<Row> {
    let mut keys: Vec<i64> = (0..rng.random_range(1..n))
        .map(|_| rng.random_range(0..KEYS))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|id| Row {
            id,
            tag: (rng.random_range(0..4) > 0).then(|| rng.random_range(0..10)),
            vec: (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
        })
        .collect()
}

/// Inserts `rows` and records them at their timestamps.
async fn insert_recorded(c: &Cluster, rows: Vec<Row>, events: &mut Vec<(u64, Event)>) {
    for (ts, rows) in c.insert(rows).await {
        events.extend(rows.into_iter().map(|r| (ts, Event::Insert(r))));
    }
}

/// Deletes `n` random keys (some may repeat) and records the deletes at their timestamps.
async fn delete_recorded(c: &Cluster, rng: &mut StdRng, n: usize, events: &mut Vec<(u64, Event)>) {
    let keys: Vec<i64> = (0..n).map(|_| rng.random_range(0..KEYS)).collect();
    for (ts, mut keys) in c.delete(keys).await {
        keys.sort_unstable();
        keys.dedup();
        events.extend(keys.into_iter().map(|k| (ts, Event::Delete(k))));
    }
}

async fn check(c: &Cluster, events: &[(u64, Event)], at: u64, rng: &mut StdRng, what: &str) {
    check_on(c, &[], events, at, rng, what).await
}

/// [`check`], asking only `shards` (empty: the whole collection) of the node `c` reads from.
async fn check_on(
    c: &Cluster,
    shards: &[String],
    events: &[(u64, Event)],
    at: u64,
    rng: &mut StdRng,
    what: &str,
) {
    let model = visible(events, at);
    // A filtered query.
    let got = c
        .query
        .query(v1::QueryRequest {
            collection: "model".into(),
            filter: "tag < 5 or tag is null".into(),
            output_fields: vec!["tag".into()],
            read: read(v1::ConsistencyLevel::Eventually, at),
            shards: shards.to_vec(),
            ..v1::QueryRequest::default()
        })
        .await
        .expect("query");
    assert_eq!(got.mvcc_timestamp, at, "{what}");
    let want: Vec<(i64, Option<i64>)> = model
        .values()
        .filter(|r| r.tag.is_none_or(|t| t < 5))
        .map(|r| (r.id, r.tag))
        .collect();
    assert_eq!(ids_and_tags(&got.rows), want, "{what}: query at {at}");
    // Get of random keys.
    let keys: Vec<i64> = (0..8).map(|_| rng.random_range(0..KEYS)).collect();
    let got = c
        .query
        .get(v1::GetRequest {
            collection: "model".into(),
            keys: Some(v1::PrimaryKeys {
                keys: Some(v1::primary_keys::Keys::IntKeys(v1::Int64List {
                    values: keys.clone(),
                })),
            }),
            output_fields: vec!["tag".into()],
            read: read(v1::ConsistencyLevel::Eventually, at),
            shards: shards.to_vec(),
        })
        .await
        .expect("get");
    let mut seen = std::collections::HashSet::new();
    let want: Vec<(i64, Option<i64>)> = keys
        .iter()
        .filter(|k| seen.insert(**k))
        .filter_map(|k| model.get(k).map(|r| (r.id, r.tag)))
        .collect();
    assert_eq!(
        ids_and_tags(&got.rows),
        want,
        "{what}: get {keys:?} at {at}"
    );
    // Exact search.
    let q: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    let got = c
        .query
        .search(v1::SearchRequest {
            collection: "model".into(),
            vectors: vec![v1::FloatVector { values: q.clone() }],
            top_k: 7,
            metric: v1::MetricType::L2 as i32,
            read: read(v1::ConsistencyLevel::Eventually, at),
            exact: true,
            shards: shards.to_vec(),
            ..v1::SearchRequest::default()
        })
        .await
        .expect("search");
    let mut want: Vec<(f32, i64)> = model
        .values()
        .map(|r| (sluice_query::vector::l2_squared(&q, &r.vec), r.id))
        .collect();
    want.sort_by(|a, b| a.0.total_cmp(&b.0));
    want.truncate(7);
    let hits = &got.results[0];
    let got_ids = match hits.keys.as_ref().and_then(|k| k.keys.as_ref()) {
        Some(v1::primary_keys::Keys::IntKeys(l)) => l.values.clone(),
        _ => Vec::new(),
    };
    assert_eq!(
        got_ids,
        want.iter().map(|w| w.1).collect::<Vec<_>>(),
        "{what}: search at {at}"
    );
    for (s, w) in hits.scores.iter().zip(&want) {
        assert!((s - w.0).abs() < 1e-4, "{what}: score {s} vs {}", w.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_query_and_get_match_a_model_through_flushes_and_wal_moves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = start(&data, dir.path(), &listen);
    let endpoint = server.endpoint();
    let info = create(&endpoint).await;
    let mut c = connect(&endpoint, info.clone());
    let mut rng = StdRng::seed_from_u64(7);
    let mut events: Vec<(u64, Event)> = Vec::new();
    let (mut checks, mut moves, mut flushes, mut strong) = (0, 0, 0, 0);
    for step in 0..160 {
        match rng.random_range(0..20) {
            0..9 => {
                let rows = random_rows(&mut rng, 12);
                let keys: Vec<i64> = rows.iter().map(|r| r.id).collect();
                insert_recorded(&c, rows.clone(), &mut events).await;
                // STRONG: every acknowledged insert is seen at once, as inserted.
                let got = c
                    .query
                    .get(v1::GetRequest {
                        collection: "model".into(),
                        keys: Some(v1::PrimaryKeys {
                            keys: Some(v1::primary_keys::Keys::IntKeys(v1::Int64List {
                                values: keys.clone(),
                            })),
                        }),
                        output_fields: vec!["tag".into()],
                        read: read(v1::ConsistencyLevel::Strong, 0),
                        shards: Vec::new(),
                    })
                    .await
                    .expect("strong get");
                let want: Vec<(i64, Option<i64>)> = rows.iter().map(|r| (r.id, r.tag)).collect();
                assert_eq!(ids_and_tags(&got.rows), want, "step {step}: strong read");
                strong += 1;
            }
            9..12 => {
                let n = rng.random_range(1..6);
                delete_recorded(&c, &mut rng, n, &mut events).await;
            }
            12..14 => {
                c.flush().await;
                flushes += 1;
            }
            14 => {
                // A WAL move: SIGKILL, then a new process opens every WAL at a higher term.
                server.kill();
                server = start(&data, dir.path(), &listen);
                c = connect(&endpoint, info.clone());
                moves += 1;
            }
            _ => {
                let at = random_read_time(&events, &mut rng);
                check(&c, &events, at, &mut rng, &format!("step {step}")).await;
                checks += 1;
            }
        }
    }
    // Once more after everything is flushed and loaded, and after a last move.
    c.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let latest = newest(&events);
    check(&c, &events, latest, &mut rng, "after the last flush").await;
    server.kill();
    server = start(&data, dir.path(), &listen);
    c = connect(&endpoint, info.clone());
    check(&c, &events, latest, &mut rng, "after the last move").await;
    for e in events.iter().step_by(17) {
        check(
            &c,
            &events,
            e.0,
            &mut rng,
            "a past timestamp after the last move",
        )
        .await;
    }
    server.kill();
    assert!(
        checks >= 10 && moves >= 2 && flushes >= 3 && strong >= 20,
        "checks {checks}, moves {moves}, flushes {flushes}, strong reads {strong}"
    );
    eprintln!("checks {checks}, moves {moves}, flushes {flushes}, strong reads {strong}");
}

async fn query_all(c: &Cluster) -> Result<Vec<(i64, Option<i64>)>, sluice_client::ClientError> {
    c.query
        .query(v1::QueryRequest {
            collection: "model".into(),
            output_fields: vec!["tag".into()],
            read: read(v1::ConsistencyLevel::Strong, 0),
            ..v1::QueryRequest::default()
        })
        .await
        .map(|r| ids_and_tags(&r.rows))
}

/// Release drops a collection's rows from the delegators and reads answer
/// COLLECTION_NOT_LOADED while writes go on; load brings every row back, those written while it
/// was released included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_collection_is_not_read_until_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = start(&data, dir.path(), &listen);
    let endpoint = server.endpoint();
    let info = create(&endpoint).await;
    let c = connect(&endpoint, info);
    let row = |id: i64| Row {
        id,
        tag: Some(id % 10),
        vec: vec![id as f32; DIM],
    };
    c.insert((0..20).map(row).collect()).await;
    c.flush().await;
    c.insert((20..30).map(row).collect()).await;
    let all = |n: i64| (0..n).map(|i| (i, Some(i % 10))).collect::<Vec<_>>();
    assert_eq!(query_all(&c).await.unwrap(), all(30));

    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let released = coord
        .release_collection(v1::ReleaseCollectionRequest {
            name: "model".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.load_state, v1::LoadState::Released as i32);
    // The delegators notice through the catalog watch.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match query_all(&c).await {
            Err(e) if e.code == sluice_types::ErrorCode::CollectionNotLoaded => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "still readable after release: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes go on while it is released.
    c.insert((30..40).map(row).collect()).await;
    let err = coord
        .load_collection(v1::LoadCollectionRequest {
            name: "model".into(),
            replicas: 17,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    coord
        .load_collection(v1::LoadCollectionRequest {
            name: "model".into(),
            replicas: 1,
        })
        .await
        .unwrap();
    // Loaded again (after a restart too): every row, the ones written while released included.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match query_all(&c).await {
            Ok(rows) if rows == all(40) => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "not readable after load: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    server = start(&data, dir.path(), &listen);
    let c = connect(&endpoint, c.info.clone());
    assert_eq!(query_all(&c).await.unwrap(), all(40));
    server.kill();
}

/// What `sluice standalone` and `sluice querynode` processes share when query workers run: an
/// etcd (under a fresh root) and the storage directory.
struct Shared {
    etcd: String,
    root: String,
    storage: std::path::PathBuf,
    logs: std::path::PathBuf,
}

impl Shared {
    /// A fresh root on the test etcd, and a directory for storage and logs (`None`: no etcd).
    fn new(test: &str) -> Option<(tempfile::TempDir, Shared)> {
        let etcd = support::etcd_endpoint(test)?;
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            etcd,
            root: support::unique_root(test),
            storage: dir.path().join("storage"),
            logs: dir.path().to_owned(),
        };
        Some((dir, shared))
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SLUICE_META__ROOT", self.root.clone()),
            ("SLUICE_STORAGE__DIR", self.storage.display().to_string()),
            ("SLUICE_COORD__ELECTION_TTL_MS", "2000".into()),
            ("SLUICE_QUERY__INDEX_MIN_ROWS", "20".into()),
            ("SLUICE_STORAGE__CHECKPOINT_INTERVAL_MS", "200".into()),
            ("SLUICE_WAL__CHECKPOINT_INTERVAL_MS", "300".into()),
        ]
    }

    /// Starts `sluice ARGS` on the shared etcd, retrying while a killed predecessor's
    /// registration (or leadership) has not lapsed yet.
    fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        let mut all = args.to_vec();
        all.extend([
            "--meta-backend",
            "etcd",
            "--etcd",
            &self.etcd,
            "--lease-ttl-ms",
            "2000",
        ]);
        let envs = self.envs();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            match Proc::spawn(name, &all, &envs, &self.logs, Duration::from_secs(20)) {
                Ok(p) => return p,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("{name} did not start yet (retrying): {e}");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("{name} would not start: {e}"),
            }
        }
    }

    fn standalone(&self, data: &std::path::Path, listen: &str) -> Proc {
        self.spawn(
            "standalone",
            &[
                "standalone",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                listen,
            ],
        )
    }

    fn querynode(&self, id: u64, coord: &str) -> Proc {
        let id = id.to_string();
        self.spawn(
            "querynode",
            &[
                "querynode",
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                &id,
                "--coord",
                coord,
            ],
        )
    }
}

/// A query worker's `Status`.
async fn worker_status(endpoint: &str) -> v1::WorkerStatusResponse {
    let mut c = v1::query_worker_client::QueryWorkerClient::new(
        sluice_proto::lazy_channel(endpoint).unwrap(),
    );
    c.status(v1::WorkerStatusRequest {})
        .await
        .expect("worker status")
        .into_inner()
}

/// The segments a query worker holds.
async fn worker_segments(endpoint: &str) -> Vec<i64> {
    worker_status(endpoint).await.segment_ids
}

/// Sealed segments on query workers: `sluice standalone` on etcd with two `sluice querynode`
/// processes. The coordinator places every flushed segment on a worker, the worker loads it,
/// the delegator keeps only its keys and asks the worker at every read, naming the rows deleted
/// or replaced since. Random inserts, deletes and flushes go on while workers are SIGKILLed
/// (their segments move to the others, or to a new worker) and the standalone process is
/// SIGKILLed (WAL moves); at random past and present timestamps Query, Get and exact Search
/// are compared with the model. At the end every worker is killed: the delegators load the
/// segments back and still answer like the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_match_the_model_with_sealed_segments_on_query_workers_that_get_killed() {
    let Some((dir, shared)) =
        Shared::new("reads_match_the_model_with_sealed_segments_on_query_workers_that_get_killed")
    else {
        return;
    };
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = shared.standalone(&data, &listen);
    let endpoint = server.endpoint();
    let mut workers: Vec<Proc> = vec![
        shared.querynode(101, &endpoint),
        shared.querynode(102, &endpoint),
    ];
    let mut next_worker = 103;
    let info = create(&endpoint).await;
    let mut c = connect(&endpoint, info.clone());
    let mut rng = StdRng::seed_from_u64(11);
    let mut events: Vec<(u64, Event)> = Vec::new();
    let (mut checks, mut worker_kills, mut moves, mut flushes) = (0, 0, 0, 0);
    let mut on_workers = 0;
    for step in 0..90 {
        match rng.random_range(0..20) {
            0..8 => {
                let rows = random_rows(&mut rng, 12);
                insert_recorded(&c, rows, &mut events).await;
            }
            8..11 => {
                let n = rng.random_range(1..6);
                delete_recorded(&c, &mut rng, n, &mut events).await;
            }
            11..14 => {
                c.flush().await;
                flushes += 1;
            }
            14 | 15 => {
                // A worker dies; a new one (a new id) joins.
                let victim = rng.random_range(0..workers.len());
                on_workers += worker_segments(&workers[victim].endpoint()).await.len();
                workers.remove(victim).kill();
                workers.push(shared.querynode(next_worker, &endpoint));
                next_worker += 1;
                worker_kills += 1;
            }
            16 if moves < 2 => {
                server.kill();
                server = shared.standalone(&data, &listen);
                c = connect(&endpoint, info.clone());
                moves += 1;
            }
            _ => {
                let at = random_read_time(&events, &mut rng);
                check(&c, &events, at, &mut rng, &format!("step {step}")).await;
                checks += 1;
            }
        }
    }
    c.flush().await;
    let latest = newest(&events);
    // Wait until the workers' segments settle (placed and loaded), then read through them.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut last = (0, std::time::Instant::now());
    loop {
        let mut held = 0;
        for w in &workers {
            held += worker_segments(&w.endpoint()).await.len();
        }
        if held != last.0 {
            last = (held, std::time::Instant::now());
        } else if held > 0 && last.1.elapsed() > Duration::from_secs(2) {
            on_workers += held;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workers hold {held} segments after {flushes} flushes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check(&c, &events, latest, &mut rng, "with segments on workers").await;
    for e in events.iter().step_by(23) {
        check(&c, &events, e.0, &mut rng, "a past timestamp on workers").await;
    }
    // A compaction rewrites the segments the flushed deletes removed rows of: the workers load
    // the new versions (their placements say which) while the delegators keep the older keys,
    // and reads as of the newest write answer as before.
    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let mut compaction = coord
        .compact(v1::CompactRequest {
            collection_id: info.collection_id,
        })
        .await
        .expect("a compaction")
        .into_inner();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while compaction.state != v1::CompactionState::Completed as i32 {
        assert!(std::time::Instant::now() < deadline, "{compaction:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        compaction = coord
            .get_compaction(v1::GetCompactionRequest {
                compaction_id: compaction.compaction_id,
            })
            .await
            .expect("a compaction's state")
            .into_inner();
    }
    // ListCompactions lists it as GetCompaction answers it: under its collection and under
    // every collection's, not under another one.
    for (collection_id, want) in [
        (info.collection_id, vec![compaction.clone()]),
        (0, vec![compaction.clone()]),
        (info.collection_id + 1, Vec::new()),
    ] {
        let listed = coord
            .list_compactions(v1::ListCompactionsRequest { collection_id })
            .await
            .expect("the compactions")
            .into_inner()
            .compactions;
        assert_eq!(listed, want, "compactions of collection {collection_id}");
    }
    let rewritten: Vec<i64> = compaction
        .done
        .iter()
        .flat_map(|d| d.segment_ids.clone())
        .collect();
    let removed: u64 = compaction.done.iter().map(|d| d.rows_removed).sum();
    assert!(
        !rewritten.is_empty() && removed > 0,
        "the deletes removed no sealed row: {compaction:?}"
    );
    check(&c, &events, latest, &mut rng, "after a compaction").await;
    // The placements of the rewritten segments on workers move to their new versions.
    let reloaded = loop {
        let placed = coord
            .list_replicas(v1::ListReplicasRequest {
                collection_id: info.collection_id,
            })
            .await
            .expect("the placements")
            .into_inner()
            .segments;
        let on_workers: Vec<&v1::SegmentPlacement> = placed
            .iter()
            .filter(|p| rewritten.contains(&p.segment_id))
            .collect();
        if !on_workers.is_empty() && on_workers.iter().all(|p| p.version > 0) {
            break on_workers.iter().map(|p| p.segment_id).collect::<Vec<_>>();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rewritten segment placed on a worker at its new version: {placed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    check(&c, &events, latest, &mut rng, "after a compaction, again").await;
    // The delegators did hand their segments over (and kept the keys only).
    let log = std::fs::read_to_string(dir.path().join("standalone.stderr")).unwrap();
    let handed = log
        .matches("a query worker serves a sealed segment; keeping its keys only")
        .count();
    assert!(handed > 0, "no delegator handed a segment to a worker");
    // A field is added (the catalog broadcasts a SchemaChange to every shard): reads naming it
    // go through the workers, which take the delegator's newer schema (their rows read it as
    // null).
    let added = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    )
    .add_collection_field(v1::AddCollectionFieldRequest {
        name: "model".into(),
        field: Some(FieldSchema {
            name: "note".into(),
            data_type: DataType::Int64 as i32,
            nullable: true,
            ..FieldSchema::default()
        }),
        properties: Default::default(),
    })
    .await
    .expect("add a field")
    .into_inner();
    assert_eq!(
        added.schema.as_ref().map(|s| s.version),
        info.schema.as_ref().map(|s| s.version + 1)
    );
    let got = c
        .query
        .query(v1::QueryRequest {
            collection: "model".into(),
            output_fields: vec!["note".into()],
            read: read(v1::ConsistencyLevel::Strong, 0),
            ..v1::QueryRequest::default()
        })
        .await
        .expect("a query naming the added field");
    let batches = decode(&got.rows);
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let want: Vec<i64> = visible(&events, got.mvcc_timestamp)
        .keys()
        .copied()
        .collect();
    assert_eq!(ids, want, "a query naming the added field");
    for b in &batches {
        let note = b.column_by_name("note").expect("the added field");
        assert_eq!(
            arrow_array::Array::null_count(note.as_ref()),
            b.num_rows(),
            "rows written before the field have none"
        );
    }
    // Every worker dies: once their registrations lapse the segments come back.
    for mut w in workers.drain(..) {
        w.kill();
    }
    check(&c, &events, latest, &mut rng, "after every worker died").await;
    let log = std::fs::read_to_string(dir.path().join("standalone.stderr")).unwrap();
    assert!(
        log.contains("a segment no query worker holds is served here again"),
        "the delegators did not take their segments back"
    );
    server.kill();
    eprintln!(
        "checks {checks}, worker kills {worker_kills}, WAL moves {moves}, flushes {flushes}, \
         segments seen on workers {on_workers}, hand-overs to workers {handed}, compacted \
         {rewritten:?} ({removed} rows removed), of which placed on workers {reloaded:?}"
    );
    assert!(
        checks >= 10 && worker_kills >= 2 && flushes >= 3 && on_workers > 0,
        "checks {checks}, worker kills {worker_kills}, flushes {flushes}, on workers {on_workers}"
    );
}

/// Replicas: a collection loaded with 3 replicas gets two more delegators per shard, one on each
/// of two `sluice querynode` processes, fed remotely from the WAL owner. Reads that are not
/// STRONG, sent to the standalone node, are spread over them (the workers count the reads they
/// answer) and answer like the model; each worker alone answers like the model for every shard;
/// the standalone process is SIGKILLed and restarted (the WALs move to a new incarnation), and
/// the replicas follow: rows written after the move are read from the replicas alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_query_workers_answer_like_the_model_and_follow_a_moved_wal() {
    let Some((dir, shared)) =
        Shared::new("replicas_on_query_workers_answer_like_the_model_and_follow_a_moved_wal")
    else {
        return;
    };
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = shared.standalone(&data, &listen);
    let endpoint = server.endpoint();
    let workers = [
        shared.querynode(101, &endpoint),
        shared.querynode(102, &endpoint),
    ];
    let info = create(&endpoint).await;
    let mut c = connect(&endpoint, info.clone());
    let mut rng = StdRng::seed_from_u64(5);
    let mut events: Vec<(u64, Event)> = Vec::new();
    let write = async |c: &Cluster, rng: &mut StdRng, events: &mut Vec<(u64, Event)>| {
        insert_recorded(c, random_rows(rng, 40), events).await;
        delete_recorded(c, rng, 6, events).await;
    };
    write(&c, &mut rng, &mut events).await;
    c.flush().await;
    write(&c, &mut rng, &mut events).await;

    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let loaded = coord
        .load_collection(v1::LoadCollectionRequest {
            name: "model".into(),
            replicas: 3,
        })
        .await
        .expect("load with replicas")
        .into_inner();
    assert_eq!(loaded.replicas, 3);
    let bad = coord
        .load_collection(v1::LoadCollectionRequest {
            name: "model".into(),
            replicas: 17,
        })
        .await
        .expect_err("17 replicas");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    // Both workers run a replica of both shards.
    let mut want = info.vchannels.clone();
    want.sort();
    let deadline = std::time::Instant::now() + TIMEOUT;
    for w in &workers {
        loop {
            let status = worker_status(&w.endpoint()).await;
            if status.replica_vchannels == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker {} runs replicas of {:?}",
                w.endpoint(),
                status.replica_vchannels
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The coordinator lists them: replica 0 of each shard on the standalone node, 1 and 2 on
    // the workers; and the flushed segments on the workers.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let listed = loop {
        let listed = coord
            .list_replicas(v1::ListReplicasRequest {
                collection_id: info.collection_id,
            })
            .await
            .expect("list replicas")
            .into_inner();
        if !listed.segments.is_empty() || std::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shape: Vec<(&str, u32)> = listed
        .replicas
        .iter()
        .map(|r| (r.vchannel.as_str(), r.replica))
        .collect();
    let expected: Vec<(&str, u32)> = info
        .vchannels
        .iter()
        .flat_map(|v| (0..3).map(move |r| (v.as_str(), r)))
        .collect();
    assert_eq!(shape, expected, "{listed:?}");
    for r in &listed.replicas {
        assert_eq!(r.collection_id, info.collection_id);
        let on_worker = r.node_id == 101 || r.node_id == 102;
        assert_eq!(on_worker, r.replica > 0, "{r:?}");
        assert!(r.node_id != 0 && !r.address.is_empty(), "{r:?}");
    }
    assert!(!listed.segments.is_empty(), "no segment placed: {listed:?}");
    for p in &listed.segments {
        assert_eq!(p.collection_id, info.collection_id);
        assert!(p.node_id == 101 || p.node_id == 102, "{p:?}");
    }
    let unknown = coord
        .list_replicas(v1::ListReplicasRequest {
            collection_id: info.collection_id + 1000,
        })
        .await
        .expect_err("an unknown collection");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
    // Reads through the standalone node, spread over the three delegators of each shard.
    let latest = newest(&events);
    for i in 0..12 {
        let at = if i % 2 == 0 {
            latest
        } else {
            events[rng.random_range(0..events.len())].0
        };
        check(&c, &events, at, &mut rng, &format!("spread read {i}")).await;
    }
    let mut replica_reads = 0;
    for w in &workers {
        replica_reads += worker_status(&w.endpoint()).await.replica_reads;
    }
    assert!(replica_reads > 0, "no read went to a replica");
    // Each worker's replicas alone, for every shard.
    for (i, w) in workers.iter().enumerate() {
        let direct = connect(&w.endpoint(), info.clone());
        check_on(
            &direct,
            &want,
            &events,
            latest,
            &mut rng,
            &format!("replicas on worker {i}"),
        )
        .await;
    }
    // The WAL moves (a new process, a new term); the replicas follow it.
    server.kill();
    server = shared.standalone(&data, &listen);
    c = connect(&endpoint, info.clone());
    write(&c, &mut rng, &mut events).await;
    c.flush().await;
    write(&c, &mut rng, &mut events).await;
    let latest = newest(&events);
    for (i, w) in workers.iter().enumerate() {
        let direct = connect(&w.endpoint(), info.clone());
        check_on(
            &direct,
            &want,
            &events,
            latest,
            &mut rng,
            &format!("replicas on worker {i} after the WAL moved"),
        )
        .await;
    }
    check(&c, &events, latest, &mut rng, "spread after the WAL moved").await;
    server.kill();
    eprintln!(
        "requests answered by replicas for the standalone node: {replica_reads} (12 checks of 3 reads, 2 shards)"
    );
}

/// A replica that starts after a partition was dropped, and after a flush put the drop behind
/// every flush checkpoint, does not load that partition's sealed segments: the log it replays
/// no longer says the partition is gone; the catalog does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_a_partition_drop_does_not_load_its_segments() {
    let Some((dir, shared)) =
        Shared::new("a_replica_started_after_a_partition_drop_does_not_load_its_segments")
    else {
        return;
    };
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = shared.standalone(&data, &listen);
    let endpoint = server.endpoint();
    create(&endpoint).await;
    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let info = coord
        .create_partition(v1::CreatePartitionRequest {
            collection_name: "model".into(),
            partition_name: "p1".into(),
        })
        .await
        .expect("create partition")
        .into_inner();
    let p1 = info
        .partitions
        .iter()
        .find(|p| p.name == "p1")
        .expect("p1 listed")
        .partition_id;
    let c = connect(&endpoint, info.clone());
    let row = |id: i64| Row {
        id,
        tag: Some(id),
        vec: vec![id as f32; DIM],
    };
    c.insert((0..20).map(row).collect()).await;
    c.insert_into(p1, (100..120).map(row).collect()).await;
    c.flush().await;
    coord
        .drop_partition(v1::DropPartitionRequest {
            collection_name: "model".into(),
            partition_name: "p1".into(),
        })
        .await
        .expect("drop partition");
    // Writes and a flush after the drop: once their segments are committed, every shard's
    // flush checkpoint is past the DropPartition.
    c.insert((200..220).map(row).collect()).await;
    c.flush().await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let segments = coord
            .list_segments(v1::ListSegmentsRequest {
                collection_id: info.collection_id,
            })
            .await
            .expect("list segments")
            .into_inner()
            .segments;
        let after_drop: BTreeSet<&str> = segments
            .iter()
            .filter(
                |m| matches!(m.pk_min, Some(sluice_types::message::pb::segment_manifest::PkMin::PkMinInt(k)) if k >= 200),
            )
            .map(|m| m.vchannel.as_str())
            .collect();
        if after_drop.len() == info.vchannels.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "segments: {segments:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The flush checkpoints follow the manifests (checkpoint interval 200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live: Vec<i64> = (0..20).chain(200..220).collect();
    let owner: Vec<i64> = query_all(&c)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(sorted(owner), live);

    let worker = shared.querynode(101, &endpoint);
    coord
        .load_collection(v1::LoadCollectionRequest {
            name: "model".into(),
            replicas: 2,
        })
        .await
        .expect("load with a replica");
    let mut want = info.vchannels.clone();
    want.sort();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while worker_status(&worker.endpoint()).await.replica_vchannels != want {
        assert!(
            std::time::Instant::now() < deadline,
            "no replicas on the worker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct = connect(&worker.endpoint(), info.clone());
    let on_worker: Vec<i64> = query_all(&direct)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(sorted(on_worker), live, "the replica's rows");
    server.kill();
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

/// A collection's TTL (`ttl.seconds`) hides rows older than it at the read's timestamp, in the
/// delegator's growing rows and in the sealed segments a query worker holds alike; a read at an
/// earlier timestamp still sees them, and removing the TTL shows them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_hides_old_rows_on_query_workers_and_delegators() {
    let Some((dir, shared)) = Shared::new("a_ttl_hides_old_rows_on_query_workers_and_delegators")
    else {
        return;
    };
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = shared.standalone(&data, &listen);
    let endpoint = server.endpoint();
    let worker = shared.querynode(101, &endpoint);
    let info = create(&endpoint).await;
    let c = connect(&endpoint, info.clone());
    let mut rng = StdRng::seed_from_u64(17);
    let row = |id: i64, rng: &mut StdRng| Row {
        id,
        tag: Some(id),
        vec: (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect(),
    };
    // Old rows, flushed onto the worker, and old rows left growing.
    let old_sealed: Vec<Row> = (0..20).map(|i| row(i, &mut rng)).collect();
    let mut written = c.insert(old_sealed).await;
    let at_old = written.iter().map(|r| r.0).max().unwrap();
    c.flush().await;
    let old_growing: Vec<Row> = (20..30).map(|i| row(i, &mut rng)).collect();
    written.extend(c.insert(old_growing).await);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while worker_segments(&worker.endpoint()).await.len() < info.vchannels.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "no segment reached the worker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More than the TTL later: new rows.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let new: Vec<Row> = (100..110).map(|i| row(i, &mut rng)).collect();
    let at_new = c.insert(new).await.iter().map(|r| r.0).max().unwrap();

    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let alter = |set: &[(&str, &str)], delete: &[&str]| v1::AlterCollectionPropertiesRequest {
        name: "model".into(),
        set: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        delete_keys: delete.iter().map(|k| (*k).to_owned()).collect(),
    };
    let bad = coord
        .alter_collection_properties(alter(&[("ttl.seconds", "-1")], &[]))
        .await
        .expect_err("a negative TTL");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    coord
        .alter_collection_properties(alter(&[("ttl.seconds", "1")], &[]))
        .await
        .expect("set a TTL");
    let query_at = async |at: u64| {
        let got = c
            .query
            .query(v1::QueryRequest {
                collection: "model".into(),
                read: read(v1::ConsistencyLevel::Strong, at),
                ..v1::QueryRequest::default()
            })
            .await
            .expect("query");
        ids_and_tags(&got.rows)
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<i64>>()
    };
    let newer: Vec<i64> = (100..110).collect();
    // The nodes see the change shortly.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while query_at(at_new).await != newer {
        assert!(
            std::time::Instant::now() < deadline,
            "the TTL is not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Search and Get skip them too, on the worker's segments as in growing rows.
    let search = c
        .query
        .search(v1::SearchRequest {
            collection: "model".into(),
            vectors: vec![v1::FloatVector {
                values: vec![0.0; DIM],
            }],
            top_k: 50,
            exact: true,
            read: read(v1::ConsistencyLevel::Strong, at_new),
            ..v1::SearchRequest::default()
        })
        .await
        .expect("search");
    let mut hits: Vec<i64> = ids_and_tags(&search.results[0].rows)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    hits.sort_unstable();
    assert_eq!(hits, newer, "search with a TTL");
    let got = c
        .query
        .get(v1::GetRequest {
            collection: "model".into(),
            keys: Some(v1::PrimaryKeys {
                keys: Some(v1::primary_keys::Keys::IntKeys(v1::Int64List {
                    values: vec![3, 25, 105],
                })),
            }),
            read: read(v1::ConsistencyLevel::Strong, at_new),
            ..v1::GetRequest::default()
        })
        .await
        .expect("get");
    let got: Vec<i64> = ids_and_tags(&got.rows)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, vec![105], "get with a TTL");
    // As of the old rows' time, they are young. (Timestamps are ordered within a shard, not
    // across: a later append to the other shard may have an earlier one.)
    let mut then: Vec<i64> = written
        .iter()
        .filter(|(ts, _)| *ts <= at_old)
        .flat_map(|(_, rows)| rows.iter().map(|r| r.id))
        .collect();
    then.sort_unstable();
    assert!(then.starts_with(&(0..20).collect::<Vec<i64>>()), "{then:?}");
    assert_eq!(query_at(at_old).await, then);
    // Without the TTL, everything again.
    coord
        .alter_collection_properties(alter(&[], &["ttl.seconds"]))
        .await
        .expect("remove the TTL");
    let all: Vec<i64> = (0..30).chain(100..110).collect();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while query_at(at_new).await != all {
        assert!(
            std::time::Instant::now() < deadline,
            "the TTL is not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
}

/// Text search on query workers: a BM25 function's output, its sealed segment on a `sluice
/// querynode`, more rows growing on the delegator, one deleted. Every hit's score is Okapi BM25
/// with the statistics of all the shard's rows — as computed here from the texts — whether the
/// worker or the delegator scored it (a worker scoring with its own segment's statistics would
/// answer other scores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_searches_on_query_workers_score_by_the_whole_shards_term_statistics() {
    use sluice_types::schema::{FunctionSchema, FunctionType};
    use sluice_types::text::{Analyzer, idf, tf_weight};
    let Some((dir, shared)) =
        Shared::new("text_searches_on_query_workers_score_by_the_whole_shards_term_statistics")
    else {
        return;
    };
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = shared.standalone(&data, &listen);
    let endpoint = server.endpoint();
    let worker = shared.querynode(101, &endpoint);
    let f = |name: &str, ty: DataType| FieldSchema {
        name: name.into(),
        data_type: ty as i32,
        ..FieldSchema::default()
    };
    let schema = CollectionSchema {
        name: "texts".into(),
        fields: vec![
            FieldSchema {
                is_primary_key: true,
                ..f("id", DataType::Int64)
            },
            FieldSchema {
                max_length: 500,
                enable_analyzer: true,
                ..f("text", DataType::Varchar)
            },
            FieldSchema {
                is_function_output: true,
                ..f("sparse", DataType::SparseFloatVector)
            },
        ],
        functions: vec![FunctionSchema {
            name: "text_bm25".into(),
            r#type: FunctionType::Bm25 as i32,
            input_field: "text".into(),
            output_field: "sparse".into(),
        }],
        shards: 1,
        ..CollectionSchema::default()
    };
    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let info = coord
        .create_collection(v1::CreateCollectionRequest {
            schema: Some(schema),
            partition_names: Vec::new(),
            properties: Default::default(),
        })
        .await
        .expect("create collection")
        .into_inner();
    let c = connect(&endpoint, info.clone());
    let words = [
        "river", "stone", "bridge", "lantern", "harbor", "meadow", "signal", "copper",
    ];
    let mut rng = StdRng::seed_from_u64(23);
    let texts: Vec<(i64, String)> = (0..60)
        .map(|id| {
            let n = rng.random_range(1..10);
            let text: Vec<&str> = (0..n)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect();
            (id, text.join(" "))
        })
        .collect();
    let batch = |rows: &[(i64, String)]| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", ArrowType::Int64, false),
                Field::new("text", ArrowType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
                Arc::new(arrow_array::StringArray::from_iter_values(
                    rows.iter().map(|r| r.1.as_str()),
                )),
            ],
        )
        .unwrap()
    };
    let (vchannel, partition) = (&info.vchannels[0], info.partitions[0].partition_id);
    c.insert_batch(vchannel, partition, &batch(&texts[..40]))
        .await;
    c.flush().await;
    // The worker holds the sealed segment and the delegator keeps only its keys.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while worker_segments(&worker.endpoint()).await.is_empty()
        || !server.stderr_tail(400).contains("keeping its keys only")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sealed segment did not move to the worker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.insert_batch(vchannel, partition, &batch(&texts[40..]))
        .await;
    let deleted = c.delete(vec![7]).await;
    let at = deleted[0].0;

    let analyzer = Analyzer::default();
    let docs: Vec<(i64, Vec<String>)> = texts
        .iter()
        .map(|(id, t)| (*id, analyzer.terms(t)))
        .collect();
    let rows = docs.len() as u64;
    let avgdl = docs.iter().map(|d| d.1.len()).sum::<usize>() as f32 / rows as f32;
    let (k1, b) = (1.2, 0.75);
    for query in ["river stone", "copper copper lantern", "meadow"] {
        let q = analyzer.terms(query);
        let mut want: Vec<(i64, f32)> = docs
            .iter()
            .filter(|(id, _)| *id != 7)
            .filter_map(|(id, terms)| {
                let mut uniq = q.clone();
                uniq.sort();
                uniq.dedup();
                let mut score = None;
                for term in &uniq {
                    let tf = terms.iter().filter(|x| *x == term).count() as f32;
                    if tf > 0.0 {
                        let qtf = q.iter().filter(|x| *x == term).count() as f32;
                        let df = docs.iter().filter(|d| d.1.contains(term)).count() as u64;
                        *score.get_or_insert(0.0) +=
                            qtf * idf(rows, df) * tf_weight(tf, terms.len() as f32, avgdl, k1, b);
                    }
                }
                score.map(|s| (*id, s))
            })
            .collect();
        want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        want.truncate(10);
        let got = c
            .query
            .search(v1::SearchRequest {
                collection: "texts".into(),
                text_queries: vec![query.into()],
                top_k: 10,
                read: read(v1::ConsistencyLevel::Strong, at),
                ..v1::SearchRequest::default()
            })
            .await
            .expect("search");
        assert_eq!(got.metric, v1::MetricType::Bm25 as i32);
        let hits = &got.results[0];
        let ids: Vec<i64> = ids_and_tags(&hits.rows).iter().map(|r| r.0).collect();
        // Equal scores may come in either order: compare scores by rank and the sets of ids.
        for (rank, (score, w)) in hits.scores.iter().zip(&want).enumerate() {
            assert!(
                (score - w.1).abs() < 1e-4,
                "{query}: rank {rank}: {score} vs {w:?}"
            );
        }
        assert_eq!(hits.scores.len(), want.len(), "{query}");
        let cut = want.last().map_or(0.0, |w| w.1);
        let sure: BTreeSet<i64> = want
            .iter()
            .filter(|w| w.1 > cut + 1e-4)
            .map(|w| w.0)
            .collect();
        assert!(
            sure.iter().all(|id| ids.contains(id)),
            "{query}: {ids:?} vs {want:?}"
        );
    }
    server.kill();
}
