//! Client commands: `produce`, `consume`, `ctl topology`, `ctl status`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig, ReadRequest, TopologySource};
use sluice_log::DeliverPolicy;
use sluice_proto::v1::{self, streaming_node_manager_client::StreamingNodeManagerClient};
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{MessageType, MutableMessage, VChannel};
use sluice_wal::scanner::{MessageFilter, ReadMessage};

use crate::local_access::RoutedAccess;

/// A client of the coordinator at `endpoint`, giving up an operation after `timeout`.
pub(crate) fn connect(
    endpoint: &str,
    timeout: Duration,
) -> anyhow::Result<(Client, Arc<CoordinatorTopology>)> {
    let topology =
        Arc::new(CoordinatorTopology::connect(endpoint).map_err(|e| anyhow::anyhow!("{e}"))?);
    let client = Client::new(
        topology.clone(),
        Arc::new(RoutedAccess::new(None)),
        ClientConfig {
            timeout: Some(timeout),
            ..ClientConfig::default()
        },
    );
    Ok((client, topology))
}

/// The partition every CLI insert goes to (created with the collection).
pub(crate) const CLI_PARTITION: i64 = 1;

/// An insert of `payload` into `vchannel`'s collection (partition [`CLI_PARTITION`]).
pub(crate) fn insert(
    vchannel: &VChannel,
    payload: Vec<u8>,
    key: Option<&str>,
) -> anyhow::Result<MutableMessage> {
    let mut b = MutableMessage::builder(InsertHeader {
        collection_id: vchannel.collection().0,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: CLI_PARTITION,
            rows: 1,
            binary_size: payload.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(vchannel)
    .payload(payload);
    if let Some(key) = key {
        b = b.property("key", key);
    }
    Ok(b.build()?)
}

/// `sluice produce`.
pub(crate) async fn produce(
    client: &Client,
    vchannel: &VChannel,
    create_collection: bool,
    count: Option<usize>,
    concurrency: usize,
) -> anyhow::Result<()> {
    if create_collection {
        let msg = MutableMessage::builder(CreateCollectionHeader {
            collection_id: vchannel.collection().0,
            partition_ids: vec![CLI_PARTITION],
            db_id: 1,
            schema: None,
        })
        .vchannel(vchannel)
        .build()?;
        let r = client
            .append(msg)
            .await
            .context("creating the collection")?;
        println!(
            "created collection {} id={} ts={}",
            vchannel.collection().0,
            r.id,
            r.timestamp.0
        );
    }
    let payloads: Vec<(String, Vec<u8>)> = match count {
        Some(n) => (0..n)
            .map(|i| (format!("m{i}"), format!("message {i}").into_bytes()))
            .collect(),
        None => {
            let mut lines = Vec::new();
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                lines.push((format!("l{i}"), line.context("reading stdin")?.into_bytes()));
            }
            lines
        }
    };
    let total = payloads.len();
    let started = std::time::Instant::now();
    let queue = Arc::new(parking_lot::Mutex::new(payloads.into_iter()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let client = client.clone();
        let vchannel = vchannel.clone();
        let queue = queue.clone();
        workers.spawn(async move {
            loop {
                let Some((key, payload)) = queue.lock().next() else {
                    return anyhow::Ok(());
                };
                let r = client
                    .append(insert(&vchannel, payload, Some(&key))?)
                    .await
                    .with_context(|| format!("appending {key}"))?;
                println!("ack key={key} id={} ts={}", r.id, r.timestamp.0);
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    eprintln!(
        "{total} messages acknowledged in {:.3}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `sluice consume`.
pub(crate) async fn consume(
    client: &Client,
    vchannel: &VChannel,
    policy: DeliverPolicy,
    limit: Option<usize>,
    idle_exit: Option<Duration>,
) -> anyhow::Result<()> {
    let mut request = ReadRequest::vchannel(vchannel);
    request.policy = policy;
    request
        .filters
        .push(MessageFilter::Types(vec![MessageType::Insert]));
    let mut reader = client.read(request);
    let mut delivered = 0usize;
    // Idle means no insert for that long (timeticks keep arriving while the channel is quiet).
    let mut idle_deadline = idle_exit.map(|idle| tokio::time::Instant::now() + idle);
    while limit.is_none_or(|l| delivered < l) {
        let next = match idle_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, reader.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => reader.next().await,
        };
        let m = match next {
            Some(m) => m.context("reading")?,
            None => bail!("the reader ended"),
        };
        for part in parts(&m) {
            if part.message_type().ok() != Some(MessageType::Insert) {
                continue;
            }
            delivered += 1;
            if let Some(idle) = idle_exit {
                idle_deadline = Some(tokio::time::Instant::now() + idle);
            }
            println!(
                "msg id={} ts={} key={} payload={}",
                part.id(),
                part.timestamp().ok().flatten().map_or(0, |t| t.0),
                part.property("key").unwrap_or("-"),
                String::from_utf8_lossy(part.payload())
            );
        }
    }
    eprintln!("{delivered} messages read");
    Ok(())
}

fn parts(m: &ReadMessage) -> Vec<&sluice_types::ImmutableMessage> {
    match m {
        ReadMessage::Message(m) => vec![m],
        ReadMessage::Txn(t) => t.bodies().iter().collect(),
    }
}

/// `sluice ctl topology`.
pub(crate) async fn topology(topology: &CoordinatorTopology, wait: Duration) -> anyhow::Result<()> {
    let mut rx = topology.subscribe();
    let t = tokio::time::timeout(wait, rx.wait_for(|t| t.version > 0))
        .await
        .context("the coordinator did not answer")?
        .context("topology watch ended")?
        .clone();
    println!("version {}", t.version);
    for a in t.channels.values() {
        println!(
            "{} term={} node={} address={}",
            a.pchannel, a.term, a.node_id, a.address
        );
    }
    Ok(())
}

/// `sluice ctl status`.
pub(crate) async fn status(node: &str) -> anyhow::Result<()> {
    let uri = if node.contains("://") {
        node.to_owned()
    } else {
        format!("http://{node}")
    };
    let mut client = StreamingNodeManagerClient::connect(uri)
        .await
        .with_context(|| format!("connecting to {node}"))?;
    let s = client
        .status(v1::StatusRequest {})
        .await
        .context("status")?
        .into_inner();
    println!("node {}", s.node_id);
    for w in s.wals {
        let p = w.pchannel.unwrap_or_default();
        println!("{} term={} available={}", p.name, p.term, w.available);
    }
    Ok(())
}

/// `sluice ctl segments`: the segments (and delete files) the recovery storage committed.
pub(crate) async fn segments(
    coord: &str,
    collection: Option<i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let channel = sluice_proto::lazy_channel(coord).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut client = v1::coordinator_client::CoordinatorClient::new(channel);
    let mut request = tonic::Request::new(v1::ListSegmentsRequest {
        collection_id: collection.unwrap_or(0),
    });
    request.set_timeout(timeout);
    let r = client
        .list_segments(request)
        .await
        .with_context(|| format!("listing segments at {coord}"))?
        .into_inner();
    println!(
        "{:>10} {:>12} {:>9} {:<28} {:>9} {:>10} {:>20} {:>20}  path",
        "collection", "segment", "partition", "vchannel", "rows", "bytes", "min ts", "max ts"
    );
    for s in &r.segments {
        let data = s.data.clone().unwrap_or_default();
        println!(
            "{:>10} {:>12} {:>9} {:<28} {:>9} {:>10} {:>20} {:>20}  {}",
            s.collection_id,
            s.segment_id,
            s.partition_id,
            s.vchannel,
            s.rows,
            data.bytes,
            s.min_timestamp,
            s.max_timestamp,
            data.path
        );
    }
    for d in &r.deletes {
        let file = d.file.clone().unwrap_or_default();
        println!(
            "{:>10} {:>12} {:>9} {:<28} {:>9} {:>10} {:>20} {:>20}  {}",
            d.collection_id,
            "deletes",
            "-",
            d.vchannel,
            d.rows,
            file.bytes,
            d.min_timestamp,
            d.max_timestamp,
            file.path
        );
    }
    println!(
        "{} segments, {} rows; {} delete files, {} deletes",
        r.segments.len(),
        r.segments.iter().map(|s| s.rows).sum::<u64>(),
        r.deletes.len(),
        r.deletes.iter().map(|d| d.rows).sum::<u64>()
    );
    Ok(())
}
