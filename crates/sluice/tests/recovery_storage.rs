//! The recovery storage under SIGKILL: a standalone server is killed ≥ 20 times at random
//! points while producers insert Arrow rows (and delete some) into a collection whose segments
//! seal every few KB, so flushes, checkpoints and truncation run all the time. Afterwards the
//! rows in committed Parquet segments plus the rows the log still holds for segments without a
//! manifest must be exactly the acknowledged rows: none missing, none twice, every acknowledged
//! delete recorded. Appends are sent once (no client retry), so a row is in the log at most once.
//!
//! On `local` (the standalone default) and on `object` over the S3 server (`SLUICE_TEST_S3`),
//! where the segments go to S3 too.
//!
//! And a soak: under minutes of sustained inserts with a short retention, the log directory
//! stays below a stated bound while many times that much data goes through it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use parking_lot::Mutex;
use sluice_client::access::{RemoteAccess, WalAccess};
use sluice_client::topology::{Assignment, CoordinatorTopology, TopologySource};
use sluice_log::{DeliverPolicy, LogProvider, OpenOptions, ReadOptions};
use sluice_meta::MetaStore;
use sluice_storage::flusher::StorageConfig;
use sluice_storage::rows::{decode_delete, decode_insert, encode_stream};
use sluice_storage::segments::{delete_manifests, read_file, segment_manifests};
use sluice_types::message::{
    CreateCollectionHeader, DeleteHeader, InsertHeader, PartitionSegmentAssignment,
};
use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
use sluice_types::{MessageType, MutableMessage, PChannel, Term, VChannel};
use support::{Proc, service_endpoint};

const ROUNDS: usize = 20;
const PRODUCERS: usize = 4;
const ROWS_PER_INSERT: i64 = 8;
const DIM: usize = 8;
const PCHANNEL: &str = "crash-dml_0";

fn schema() -> CollectionSchema {
    CollectionSchema {
        name: "crash".into(),
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
                name: "vec".into(),
                data_type: DataType::FloatVector as i32,
                dim: DIM as u32,
                ..Default::default()
            },
        ],
        shards: 1,
        version: 1,
        ..Default::default()
    }
}

fn vchannel() -> VChannel {
    PChannel::new(PCHANNEL)
        .unwrap()
        .vchannel(sluice_types::CollectionId(500), 0)
        .unwrap()
}

fn rows(ids: &[i64]) -> Vec<u8> {
    let values = Float32Array::from_iter_values(
        ids.iter()
            .flat_map(|i| (0..DIM).map(move |d| *i as f32 + d as f32)),
    );
    let vec = arrow_array::FixedSizeListArray::try_new(
        Arc::new(arrow_schema_field()),
        DIM as i32,
        Arc::new(values),
        None,
    )
    .unwrap();
    let b = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
        ("vec", Arc::new(vec) as ArrayRef),
    ])
    .unwrap();
    encode_stream(&[b]).unwrap()
}

fn arrow_schema_field() -> arrow_schema::Field {
    arrow_schema::Field::new("item", arrow_schema::DataType::Float32, false)
}

fn insert(ids: &[i64]) -> MutableMessage {
    let body = rows(ids);
    MutableMessage::builder(InsertHeader {
        collection_id: 500,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: 1,
            rows: ids.len() as u64,
            binary_size: body.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(&vchannel())
    .payload(body)
    .build()
    .unwrap()
}

fn delete(ids: &[i64]) -> MutableMessage {
    let b =
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef)])
            .unwrap();
    MutableMessage::builder(DeleteHeader {
        collection_id: 500,
        rows: ids.len() as u64,
    })
    .vchannel(&vchannel())
    .payload(encode_stream(&[b]).unwrap())
    .build()
    .unwrap()
}

/// What the producers saw.
#[derive(Default)]
struct Outcome {
    acked: BTreeSet<i64>,
    /// Sent, outcome unknown (the server died under them).
    maybe: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
    maybe_deleted: BTreeSet<i64>,
}

/// Where the data lives, for the server and for the checks after it.
#[derive(Clone)]
enum Medium {
    Local,
    S3 { endpoint: String, prefix: String },
}

impl Medium {
    fn envs(&self) -> Vec<(String, String)> {
        let mut envs: Vec<(String, String)> = [
            ("SLUICE_PCHANNELS__COUNT", "1".into()),
            ("SLUICE_PCHANNELS__PREFIX", "crash-dml".into()),
            ("SLUICE_WAL__SEGMENT_MAX_BYTES", "48000".into()),
            ("SLUICE_WAL__SEGMENT_SIZE_JITTER", "0".into()),
            ("SLUICE_WAL__SEGMENT_CHECK_INTERVAL_MS", "100".into()),
            ("SLUICE_WAL__CHECKPOINT_INTERVAL_MS", "300".into()),
            ("SLUICE_STORAGE__RETENTION_MS", "0".into()),
            ("SLUICE_STORAGE__TRUNCATE_INTERVAL_MS", "300".into()),
            ("SLUICE_STORAGE__CHECKPOINT_INTERVAL_MS", "200".into()),
            ("SLUICE_LOG__LOCAL_SEGMENT_BYTES", "65536".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Medium::S3 { endpoint, prefix } = self {
            for (k, v) in [
                ("SLUICE_LOG__BACKEND", "object".to_owned()),
                ("SLUICE_LOG__S3_ENDPOINT", endpoint.clone()),
                ("SLUICE_LOG__S3_BUCKET", "sluice-e2e".to_owned()),
                ("SLUICE_LOG__PREFIX", format!("{prefix}-wal")),
                ("SLUICE_STORAGE__S3_ENDPOINT", endpoint.clone()),
                ("SLUICE_STORAGE__S3_BUCKET", "sluice-e2e".to_owned()),
                ("SLUICE_STORAGE__PREFIX", format!("{prefix}-storage")),
                // The test server takes any credentials; Sluice has no built-in ones.
                ("SLUICE_LOG__S3_ACCESS_KEY_ID", "test".to_owned()),
                ("SLUICE_LOG__S3_SECRET_ACCESS_KEY", "test".to_owned()),
                ("SLUICE_STORAGE__S3_ACCESS_KEY_ID", "test".to_owned()),
                ("SLUICE_STORAGE__S3_SECRET_ACCESS_KEY", "test".to_owned()),
            ] {
                envs.push((k.to_owned(), v));
            }
        }
        envs
    }

    fn start(&self, data: &Path, logs: &Path) -> Proc {
        self.start_with(data, logs, &[])
    }

    /// Starts with `extra` settings on top of the test's (later ones win).
    fn start_with(&self, data: &Path, logs: &Path, extra: &[(&str, &str)]) -> Proc {
        let mut envs = self.envs();
        envs.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Proc::spawn(
            "standalone",
            &[
                "standalone",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &envs,
            logs,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The storage root the server writes segments to.
    fn object_store(&self, data: &Path) -> Arc<dyn object_store::ObjectStore> {
        use sluice_log::object::{ObjectStoreConfig, S3Config, build_store};
        let (config, prefix) = match self {
            Medium::Local => (
                ObjectStoreConfig::LocalDir(data.join("storage")),
                "storage".to_owned(),
            ),
            Medium::S3 { endpoint, prefix } => (
                ObjectStoreConfig::S3(S3Config::compatible(endpoint.clone(), "sluice-e2e")),
                format!("{prefix}-storage"),
            ),
        };
        Arc::new(object_store::prefix::PrefixStore::new(
            build_store(&config).unwrap(),
            prefix,
        ))
    }

    fn log(&self, data: &Path) -> Arc<dyn LogProvider> {
        match self {
            Medium::Local => Arc::new(
                sluice_log::local::LocalProvider::new(sluice_log::local::LocalConfig::new(
                    data.join("wal"),
                ))
                .unwrap(),
            ),
            Medium::S3 { endpoint, prefix } => Arc::new(
                sluice_log::object::ObjectProvider::new(sluice_log::object::ObjectConfig {
                    prefix: format!("{prefix}-wal"),
                    ..sluice_log::object::ObjectConfig::new(
                        sluice_log::object::ObjectStoreConfig::S3(
                            sluice_log::object::S3Config::compatible(
                                endpoint.clone(),
                                "sluice-e2e",
                            ),
                        ),
                    )
                })
                .unwrap(),
            ),
        }
    }
}

/// Creates the test's collection (with its schema) on `target`.
async fn create_collection(access: &RemoteAccess, target: &Assignment) {
    let create = MutableMessage::builder(CreateCollectionHeader {
        collection_id: 500,
        partition_ids: vec![1],
        db_id: 1,
        schema: Some(schema()),
    })
    .vchannel(&vchannel())
    .build()
    .unwrap();
    access
        .append(target, create)
        .await
        .expect("create the collection");
}

async fn assignment(topology: &CoordinatorTopology) -> Assignment {
    let mut rx = topology.subscribe();
    let t = tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|t| t.channels.contains_key(PCHANNEL)),
    )
    .await
    .expect("the pchannel gets an owner")
    .expect("topology");
    t.channels[PCHANNEL].clone()
}

/// One producer: inserts fresh ids (and now and then deletes two it got acknowledged) until
/// an append fails, which is the server dying.
async fn produce(
    access: Arc<RemoteAccess>,
    target: Assignment,
    next: Arc<std::sync::atomic::AtomicI64>,
    outcome: Arc<Mutex<Outcome>>,
    mine: Arc<Mutex<Vec<i64>>>,
) {
    let mut n = 0u64;
    loop {
        n += 1;
        if n.is_multiple_of(5) {
            let victims: Vec<i64> = {
                let mut m = mine.lock();
                let k = m.len().min(2);
                m.drain(..k).collect()
            };
            if !victims.is_empty() {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    access.append(&target, delete(&victims)),
                )
                .await;
                let mut o = outcome.lock();
                match r {
                    Ok(Ok(_)) => o.deleted.extend(&victims),
                    _ => {
                        o.maybe_deleted.extend(&victims);
                        return;
                    }
                }
                continue;
            }
        }
        let start = next.fetch_add(ROWS_PER_INSERT, std::sync::atomic::Ordering::Relaxed);
        let ids: Vec<i64> = (start..start + ROWS_PER_INSERT).collect();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            access.append(&target, insert(&ids)),
        )
        .await;
        let mut o = outcome.lock();
        match r {
            Ok(Ok(_)) => {
                o.acked.extend(&ids);
                mine.lock().extend(&ids);
            }
            _ => {
                o.maybe.extend(&ids);
                return;
            }
        }
    }
}

/// Rows (primary keys) in committed segments, each with its count; delete-file keys.
async fn committed(storage: &StorageConfig) -> (BTreeMap<i64, u32>, BTreeSet<i64>, BTreeSet<i64>) {
    let mut rows = BTreeMap::new();
    let manifests = segment_manifests(storage, Some(500)).await.unwrap();
    let segments: BTreeSet<i64> = manifests.iter().map(|m| m.segment_id).collect();
    for m in &manifests {
        let path = &m.data.as_ref().unwrap().path;
        let mut n = 0;
        for b in read_file(storage, path).await.unwrap() {
            n += b.num_rows() as u64;
            for k in b
                .column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .iter()
            {
                *rows.entry(k.unwrap()).or_insert(0) += 1;
            }
        }
        assert_eq!(
            n, m.rows,
            "segment {} rows against its manifest",
            m.segment_id
        );
    }
    let mut deleted = BTreeSet::new();
    for d in delete_manifests(storage, Some(500)).await.unwrap() {
        for b in read_file(storage, &d.file.unwrap().path).await.unwrap() {
            deleted.extend(b.column(0).as_primitive::<Int64Type>().iter().flatten());
        }
    }
    (rows, deleted, segments)
}

/// Rows the log still holds for segments without a manifest, and every delete it holds.
async fn log_tail(
    provider: &dyn LogProvider,
    flushed: &BTreeSet<i64>,
) -> (BTreeMap<i64, u32>, BTreeSet<i64>, usize) {
    let log = provider
        .open(OpenOptions::read_only(
            PChannel::new(PCHANNEL).unwrap(),
            Term(u64::MAX >> 1),
        ))
        .await
        .unwrap();
    let mut s = log
        .read(ReadOptions::new(DeliverPolicy::All))
        .await
        .unwrap();
    let (mut rows, mut deleted, mut records) = (BTreeMap::new(), BTreeSet::new(), 0usize);
    let schema = schema();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(3), s.next()).await {
        let m = item.unwrap();
        records += 1;
        match m.message_type() {
            Ok(MessageType::Insert) => {
                let h: InsertHeader = m.header().unwrap();
                let p = &h.partitions[0];
                if flushed.contains(&p.segment_id) {
                    continue;
                }
                let b = decode_insert(&schema, m.payload(), p.rows, 1 << 20).unwrap();
                for k in b
                    .column_by_name("id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .iter()
                {
                    *rows.entry(k.unwrap()).or_insert(0) += 1;
                }
            }
            Ok(MessageType::Delete) => {
                let h: DeleteHeader = m.header().unwrap();
                let keys = decode_delete(&schema, m.payload(), h.rows, 1 << 20).unwrap();
                deleted.extend(keys.as_primitive::<Int64Type>().iter().flatten());
            }
            _ => {}
        }
    }
    log.close().await;
    (rows, deleted, records)
}

async fn run(medium: Medium, label: &str) {
    let rounds = std::env::var("SLUICE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut recovered_from_checkpoint = 0;
    for round in 0..rounds {
        let mut server = medium.start(data.path(), logs.path());
        let topology = CoordinatorTopology::connect(&server.endpoint()).unwrap();
        let target = assignment(&topology).await;
        let access = Arc::new(RemoteAccess::new());
        if round == 0 {
            create_collection(&access, &target).await;
        }
        let mine = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                tokio::spawn(produce(
                    access.clone(),
                    target.clone(),
                    next.clone(),
                    outcome.clone(),
                    mine.clone(),
                ))
            })
            .collect();
        // A random point: 200 ms to 1.5 s into the round.
        let wait = rand::random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill();
        for t in tasks {
            t.await.unwrap();
        }
        if round > 0 {
            let text = std::fs::read_to_string(logs.path().join("standalone.stderr")).unwrap();
            recovered_from_checkpoint = text
                .lines()
                .filter(|l| l.contains("shard state recovered") && l.contains("Some((MessageId"))
                .count();
        }
    }
    // A last run that ends gracefully, then the data is checked offline. It lasts until the
    // flusher caught up with what the killed runs left (more than half the acknowledged rows in
    // committed segments, checked below), at least 5 s and at most 90 s: on a loaded machine the
    // backlog takes longer than a fixed pause.
    let server = medium.start(data.path(), logs.path());
    let acked = outcome.lock().acked.len() as u64;
    let started = std::time::Instant::now();
    let mut coordinator = sluice_proto::v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&server.endpoint()).unwrap(),
    );
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let flushed: u64 = match coordinator
            .list_segments(sluice_proto::v1::ListSegmentsRequest { collection_id: 0 })
            .await
        {
            Ok(r) => r.into_inner().segments.iter().map(|m| m.rows).sum(),
            Err(_) => 0,
        };
        let waited = started.elapsed();
        if waited >= Duration::from_secs(90)
            || (waited >= Duration::from_secs(5) && flushed > acked / 2)
        {
            eprintln!("{label}: last run: {flushed} of {acked} rows flushed after {waited:.1?}");
            break;
        }
    }
    server.signal(rustix::process::Signal::TERM);
    let mut server = server;
    server
        .wait_exit(Duration::from_secs(30))
        .expect("graceful exit");

    let meta: Arc<dyn MetaStore> = Arc::new(
        sluice_meta::embedded::EmbeddedStore::open(data.path().join("meta.redb")).unwrap(),
    );
    let storage = StorageConfig {
        store: medium.object_store(data.path()),
        meta,
        meta_root: "sluice".into(),
        retention: Duration::ZERO,
        truncate_interval: Duration::from_secs(1),
        checkpoint_interval: Duration::from_secs(1),
        max_body_bytes: 1 << 20,
    };
    let (in_parquet, deleted_files, segments) = committed(&storage).await;
    let (in_log, deleted_log, records) = log_tail(&*medium.log(data.path()), &segments).await;

    let o = outcome.lock();
    let mut all = in_parquet.clone();
    for (k, n) in &in_log {
        *all.entry(*k).or_insert(0) += n;
    }
    let twice: Vec<_> = all
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    assert!(twice.is_empty(), "{label}: rows stored twice: {twice:?}");
    let missing: Vec<_> = o.acked.iter().filter(|k| !all.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "{label}: acknowledged rows missing: {missing:?}"
    );
    let extra: Vec<_> = all
        .keys()
        .filter(|k| !o.acked.contains(k) && !o.maybe.contains(k))
        .collect();
    assert!(extra.is_empty(), "{label}: rows nobody sent: {extra:?}");
    let deleted: BTreeSet<i64> = deleted_files.union(&deleted_log).copied().collect();
    let lost_deletes: Vec<_> = o.deleted.difference(&deleted).collect();
    assert!(
        lost_deletes.is_empty(),
        "{label}: acknowledged deletes missing: {lost_deletes:?}"
    );
    assert!(
        deleted
            .iter()
            .all(|k| o.deleted.contains(k) || o.maybe_deleted.contains(k)),
        "{label}: deletes nobody sent"
    );
    assert!(
        in_parquet.len() > o.acked.len() / 2,
        "{label}: most rows should be flushed: {} of {}",
        in_parquet.len(),
        o.acked.len()
    );
    assert!(
        recovered_from_checkpoint >= rounds - 1,
        "{label}: every restart recovers from a checkpoint ({recovered_from_checkpoint} of {})",
        rounds - 1
    );
    report(
        &format!("crash-{label}"),
        &format!(
            "{label}: {rounds} SIGKILLs; {} rows acknowledged, {} unknown; {} in {} Parquet \
             segments, {} in the log tail ({records} records retained); {} deletes acknowledged",
            o.acked.len(),
            o.maybe.len(),
            in_parquet.len(),
            segments.len(),
            in_log.len(),
            o.deleted.len()
        ),
    );
}

/// Prints `summary` and keeps it in `{CARGO_TARGET_TMPDIR}/{name}.txt` (a passing test's output
/// is not shown; the file is where a run's numbers can be read afterwards).
fn report(name: &str, summary: &str) {
    eprintln!("{summary}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.txt"));
    if let Err(e) = std::fs::write(&path, format!("{summary}\n")) {
        eprintln!("note: could not write {}: {e}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_flushing_on_the_local_log_loses_and_duplicates_nothing() {
    run(Medium::Local, "local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_flushing_on_the_object_log_over_s3_loses_and_duplicates_nothing() {
    let test = "sigkill_while_flushing_on_the_object_log_over_s3_loses_and_duplicates_nothing";
    let Some(endpoint) = service_endpoint("SLUICE_TEST_S3", test) else {
        return;
    };
    sluice_log::testkit::ensure_s3_bucket(&endpoint, "sluice-e2e");
    let prefix = support::unique_root("crash").replace('/', "-");
    run(Medium::S3 { endpoint, prefix }, "object-s3").await;
}

/// The log directory's size in bytes.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The soak's length: `SLUICE_SOAK_SECS`, else 5 minutes in CI and 30 s elsewhere.
fn soak_duration() -> Duration {
    let secs = std::env::var("SLUICE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::var("CI").is_ok_and(|v| v == "true") {
            300
        } else {
            30
        });
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_sustained_inserts_the_log_stays_below_its_bound() {
    // The bound: the retention (10 s) of writes at the paced rate below (~1 MB/s), plus the
    // growing segments (1 MiB each), the log's open file and the checkpoints' lag.
    const BOUND: u64 = 40 << 20;
    let duration = soak_duration();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let server = Medium::Local.start_with(
        data.path(),
        logs.path(),
        &[
            ("SLUICE_STORAGE__RETENTION_MS", "10000"),
            ("SLUICE_STORAGE__TRUNCATE_INTERVAL_MS", "1000"),
            ("SLUICE_WAL__SEGMENT_MAX_BYTES", "1048576"),
            ("SLUICE_LOG__LOCAL_SEGMENT_BYTES", "1048576"),
        ],
    );
    let topology = CoordinatorTopology::connect(&server.endpoint()).unwrap();
    let target = assignment(&topology).await;
    let access = Arc::new(RemoteAccess::new());
    create_collection(&access, &target).await;

    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let producers: Vec<_> = (0..2)
        .map(|_| {
            let (access, target, written, stop, next) = (
                access.clone(),
                target.clone(),
                written.clone(),
                stop.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                // ~200 inserts/s of 64 rows each per producer.
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pace.tick().await;
                    let first = next.fetch_add(64, std::sync::atomic::Ordering::Relaxed);
                    let ids: Vec<i64> = (first..first + 64).collect();
                    let msg = insert(&ids);
                    let bytes = msg.payload().len() as u64;
                    access.append(&target, msg).await.expect("insert");
                    written.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let wal = data.path().join("wal");
    let started = std::time::Instant::now();
    let mut peak = 0u64;
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = dir_bytes(&wal);
        peak = peak.max(now);
        samples.push(now);
        assert!(
            now <= BOUND,
            "after {:.0?} the log holds {now} bytes, above the bound of {BOUND}",
            started.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let total = written.load(std::sync::atomic::Ordering::Relaxed);
    let segments = dir_bytes(&data.path().join("storage"));
    report(
        "soak",
        &format!(
            "soak: {:.0?} of inserts, {total} bytes of bodies written; log peak {peak} bytes \
             (bound {BOUND}), last {} bytes; {segments} bytes of flushed segments (Parquet and HNSW index files)",
            started.elapsed(),
            samples.last().copied().unwrap_or(0)
        ),
    );
    // The pacing writes ~1 MB/s; well under that means the server stalled.
    assert!(
        total >= duration.as_secs() * 250_000,
        "the producers wrote only {total} bytes in {duration:?}"
    );
    if duration >= Duration::from_secs(300) {
        assert!(
            total >= 4 * BOUND,
            "{total} bytes went through a log bounded at {BOUND}"
        );
    }
    assert!(segments > 0, "nothing was flushed");
    drop(server);
}
