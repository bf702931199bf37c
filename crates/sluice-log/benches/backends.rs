//! Every backend side by side in one run, each next to the raw ceiling of its medium measured
//! the same way (1 KiB records; 1 and 64 concurrent appenders that each wait for their ack).
//!
//! ```text
//! SLUICE_TEST_S3=http://127.0.0.1:PORT SLUICE_TEST_KAFKA=127.0.0.1:PORT \
//!   cargo bench -p sluice-log --features object,kafka --bench backends
//! ```
//!
//! | medium | backend | raw ceiling (same concurrency, same run) |
//! |---|---|---|
//! | local disk (temp dir in the target dir) | `local` | one file, `write` of one record per appender + `fdatasync` per op: the best a group commit can do |
//! | local disk | `object` on a local directory | conditional-create PUTs of the backend's mean block size through the same `object_store` (fsync on) |
//! | S3 server (`SLUICE_TEST_S3`, skipped if unset) | `object` on S3 | conditional-create PUTs of the mean block size to the same bucket |
//! | Kafka broker (`SLUICE_TEST_KAFKA`, skipped if unset) | `kafka` | a plain `rdkafka` producer (`acks=all`, no transactions), one 1 KiB record per send, each task awaiting its delivery |
//!
//! Raw PUT concurrency is the backend's possible uploads in flight (1 appender: 1; 64:
//! `max_inflight`). `SLUICE_BENCH_SECS` sets the seconds per case (default 3). Reported: ops/s
//! (records, or PUTs / syncs for raw rows), MB/s of payload, p50/p99 latency of one op, and the
//! backend's MB/s as a share of the raw MB/s.

#![allow(missing_docs)]

mod support;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_log::kafka::{KafkaConfig, KafkaProvider};
use sluice_log::local::{LocalConfig, LocalProvider};
use sluice_log::object::{ObjectConfig, ObjectProvider, ObjectStoreConfig, S3Config};
use sluice_types::PChannel;

use support::{
    Outcome, RECORD, append_case, ensure_bucket, gather, histogram, object_blocks, print_header,
    print_row, raw_put_case, secs_per_case,
};

const BUCKET: &str = "sluice-bench";
const APPENDERS: [usize; 2] = [1, 64];

/// One medium's rows: (name, backend outcome, raw outcome, raw description).
type Rows = Vec<(String, Outcome, Outcome, String)>;

fn pchannel(what: &str, appenders: usize) -> PChannel {
    PChannel::new(format!("bench-{what}-{appenders}")).expect("pchannel")
}

/// `write` of `per_sync` records + `fdatasync`, in a loop for `run_for`, to a new file in `dir`.
fn raw_fdatasync(dir: &Path, per_sync: usize, run_for: Duration) -> Outcome {
    let path = dir.join(format!("raw-{per_sync}.dat"));
    let mut file = File::create(&path).expect("create the raw file");
    let batch = vec![0xa5u8; RECORD * per_sync];
    let mut h = histogram();
    let start = Instant::now();
    while start.elapsed() < run_for {
        let t = Instant::now();
        file.write_all(&batch).expect("write");
        file.sync_data().expect("fdatasync");
        h.record(t.elapsed().as_micros().max(1) as u64)
            .expect("latency in range");
    }
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    let ops = h.len();
    Outcome {
        ops,
        bytes: ops * (RECORD * per_sync) as u64,
        elapsed,
        latency_us: h,
    }
}

async fn local_medium(dir: &Path, run_for: Duration) -> Rows {
    let provider = LocalProvider::new(LocalConfig::new(dir.join("local"))).expect("provider");
    let mut rows = Vec::new();
    for appenders in APPENDERS {
        let p = pchannel("local", appenders);
        let backend = append_case(&provider, &p, appenders, 1, run_for).await;
        let raw_dir = dir.to_path_buf();
        let raw = tokio::task::spawn_blocking(move || raw_fdatasync(&raw_dir, appenders, run_for))
            .await
            .expect("raw task");
        rows.push((
            format!("local/{appenders}_appenders"),
            backend,
            raw,
            format!("raw write+fdatasync/{appenders}_rec_per_sync"),
        ));
    }
    rows
}

async fn object_medium(name: &str, store: ObjectStoreConfig, run_for: Duration) -> Rows {
    let prefix = format!("bench-{:08x}", rand::random::<u32>());
    let config = ObjectConfig {
        prefix: prefix.clone(),
        ..ObjectConfig::new(store)
    };
    let max_inflight = config.max_inflight;
    let provider = ObjectProvider::new(config).expect("provider");
    let mut rows = Vec::new();
    for appenders in APPENDERS {
        let p = pchannel(name, appenders);
        let backend = append_case(&provider, &p, appenders, 1, run_for).await;
        let (blocks, block) = object_blocks(provider.store(), &prefix, &p).await;
        let concurrency = appenders.min(max_inflight);
        eprintln!(
            "  {name}/{appenders}: {blocks} blocks, mean {block} B ({:.1} records per block)",
            backend.ops as f64 / blocks.max(1) as f64
        );
        let raw = raw_put_case(
            provider.store().clone(),
            &prefix,
            block,
            concurrency,
            run_for,
        )
        .await;
        rows.push((
            format!("{name}/{appenders}_appenders"),
            backend,
            raw,
            format!("raw put/{block}B_x{concurrency}"),
        ));
    }
    rows
}

/// `concurrency` tasks send one record each and await its delivery, for `run_for`.
async fn raw_kafka(broker: &str, topic: &str, concurrency: usize, run_for: Duration) -> Outcome {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("admin client");
    let _ = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "0")
        .set("socket.nagle.disable", "true")
        .create()
        .expect("producer");
    let producer = Arc::new(producer);
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (producer, topic) = (producer.clone(), topic.to_owned());
        tasks.push(tokio::spawn(async move {
            let payload = vec![0xa5u8; RECORD];
            let mut h = histogram();
            while Instant::now() < deadline {
                let t = Instant::now();
                producer
                    .send(
                        FutureRecord::<(), [u8]>::to(&topic)
                            .partition(0)
                            .payload(&payload[..]),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("raw produce");
                h.record(t.elapsed().as_micros().max(1) as u64)
                    .expect("latency in range");
            }
            h
        }));
    }
    gather(tasks, start, RECORD as u64).await
}

async fn kafka_medium(broker: &str, run_for: Duration) -> Rows {
    let prefix = format!("bench-{:08x}-", rand::random::<u32>());
    let provider = KafkaProvider::new(KafkaConfig {
        prefix: prefix.clone(),
        ..KafkaConfig::new(broker)
    })
    .expect("provider");
    let mut rows = Vec::new();
    for appenders in APPENDERS {
        let p = pchannel("kafka", appenders);
        let backend = append_case(&provider, &p, appenders, 1, run_for).await;
        let raw_topic = format!("{prefix}raw-{appenders}");
        let raw = raw_kafka(broker, &raw_topic, appenders, run_for).await;
        rows.push((
            format!("kafka/{appenders}_appenders"),
            backend,
            raw,
            format!("raw rdkafka acks=all/x{appenders}"),
        ));
    }
    rows
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let (_smoke, secs) = secs_per_case(3);
    let run_for = Duration::from_secs(secs);
    // The target directory's scratch space: a real disk, not a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!("backends: {secs} s per case, {RECORD} B records, appenders {APPENDERS:?}");
    let mut media: Vec<(String, Rows)> = Vec::new();
    media.push((
        format!("local disk ({})", dir.path().display()),
        rt.block_on(local_medium(dir.path(), run_for)),
    ));
    let objects = dir.path().join("objects");
    media.push((
        "object store on the local disk".into(),
        rt.block_on(object_medium(
            "object-dir",
            ObjectStoreConfig::LocalDir(objects),
            run_for,
        )),
    ));
    match env("SLUICE_TEST_S3") {
        Some(endpoint) => {
            ensure_bucket(&endpoint, BUCKET);
            let s3 = S3Config {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
                ..S3Config::compatible(endpoint.clone(), BUCKET)
            };
            media.push((
                format!("S3 server at {endpoint}"),
                rt.block_on(object_medium(
                    "object-s3",
                    ObjectStoreConfig::S3(s3),
                    run_for,
                )),
            ));
        }
        None => eprintln!("note: SLUICE_TEST_S3 is not set; skipping object on S3"),
    }
    match env("SLUICE_TEST_KAFKA") {
        Some(broker) => media.push((
            format!("Kafka broker at {broker}"),
            rt.block_on(kafka_medium(&broker, run_for)),
        )),
        None => eprintln!("note: SLUICE_TEST_KAFKA is not set; skipping kafka"),
    }
    print_header();
    for (medium, rows) in &media {
        eprintln!("-- {medium}");
        for (name, backend, raw, raw_name) in rows {
            print_row(name, backend, Some(raw));
            print_row(&format!("  {raw_name}"), raw, None);
        }
    }
}
