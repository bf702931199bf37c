//! What the WAL's append path costs on top of the log it writes to: the full WAL against the raw
//! `memory` log, same messages, same concurrency, same run. The memory log does no I/O, so the
//! difference is the WAL's own CPU per append (interceptors, timestamps, acknowledgement,
//! write-ahead buffer, task wake-ups) — the part that decides how close the WAL can get to a
//! disk's group-commit rate at high concurrency.
//!
//! ```text
//! cargo bench -p sluice-wal --bench append_cpu
//! ```
//!
//! Criterion reports appends/s (one element per 1 KiB insert) for 1 and 256 concurrent producers.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_log::memory::{MemoryConfig, MemoryProvider};
use sluice_log::{LogHandle, LogProvider, OpenOptions};
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{CollectionId, MutableMessage, PChannel, Term, VChannel};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::LocalOracle;
use sluice_wal::{Wal, WalConfig, WalDeps};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Payload bytes per insert.
const RECORD: usize = 1024;
const COLLECTION: i64 = 1;
const PARTITION: i64 = 1;

fn insert(vc: &VChannel, payload: &bytes::Bytes) -> MutableMessage {
    MutableMessage::builder(InsertHeader {
        collection_id: COLLECTION,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: PARTITION,
            rows: 1,
            binary_size: payload.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(vc)
    .payload(payload.clone())
    .build()
    .expect("a valid insert")
}

/// Where the appends go.
#[derive(Clone, Copy)]
enum Target {
    Raw,
    Wal,
}

/// Opens a fresh log (and WAL) and runs `iters` appends spread over `producers` tasks.
async fn run(target: Target, producers: usize, iters: u64) -> Duration {
    let provider = MemoryProvider::new(MemoryConfig::default());
    let pchannel = PChannel::new("bench").expect("pchannel");
    let vc = pchannel
        .vchannel(CollectionId(COLLECTION), 0)
        .expect("vchannel");
    let payload = bytes::Bytes::from(vec![0x5a; RECORD]);
    let (raw, wal): (Option<Arc<dyn LogHandle>>, Option<Wal>) = match target {
        Target::Raw => (
            Some(
                provider
                    .open(OpenOptions::read_write(pchannel.clone(), Term(1)))
                    .await
                    .expect("open the log"),
            ),
            None,
        ),
        Target::Wal => {
            let oracle = LocalOracle::new();
            let deps = WalDeps {
                oracle: oracle.clone(),
                ids: oracle,
                node_growing: NodeGrowingBytes::new(),
                pressure: sluice_wal::Pressure::unlimited(),
                checkpoints: None,
                rows: None,
            };
            let wal = Wal::open(
                &provider,
                pchannel.clone(),
                Term(1),
                WalConfig::default(),
                deps,
            )
            .await
            .expect("open the WAL");
            let create = MutableMessage::builder(CreateCollectionHeader {
                collection_id: COLLECTION,
                partition_ids: vec![PARTITION],
                db_id: 1,
                schema: None,
            })
            .vchannel(&vc)
            .build()
            .expect("create collection");
            wal.append(create).await.expect("create the collection");
            (None, Some(wal))
        }
    };
    let per_task = iters.div_ceil(producers as u64).max(1);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let (raw, wal, vc, payload) = (raw.clone(), wal.clone(), vc.clone(), payload.clone());
        tasks.spawn(async move {
            for _ in 0..per_task {
                let msg = insert(&vc, &payload);
                match (&raw, &wal) {
                    (Some(log), _) => {
                        log.append(msg).await.expect("raw append");
                    }
                    (_, Some(wal)) => {
                        wal.append(msg).await.expect("WAL append");
                    }
                    _ => unreachable!("one target is set"),
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a producer panicked");
    }
    let elapsed = start.elapsed();
    if let Some(wal) = wal {
        wal.close().await;
    }
    if let Some(raw) = raw {
        raw.close().await;
    }
    // Time per append actually made, scaled to the requested count.
    elapsed.mul_f64(iters as f64 / (per_task * producers as u64) as f64)
}

fn append_cpu(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("append_cpu");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for producers in [1usize, 256] {
        for (name, target) in [("raw-memory", Target::Raw), ("wal-memory", Target::Wal)] {
            group.bench_function(format!("{name}/{producers}"), |b| {
                b.iter_custom(|iters| rt.block_on(run(target, producers, iters)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append_cpu);
criterion_main!(benches);
