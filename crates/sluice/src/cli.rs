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

fn coordinator(
    coord: &str,
) -> anyhow::Result<v1::coordinator_client::CoordinatorClient<sluice_proto::Channel>> {
    let channel = sluice_proto::lazy_channel(coord).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(v1::coordinator_client::CoordinatorClient::new(channel))
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

/// A field from `name:type[:N][:pk][:auto][:nullable]` (N: a VARCHAR's max length, a
/// FLOAT_VECTOR's dimension).
pub(crate) fn parse_field(spec: &str) -> anyhow::Result<sluice_types::schema::FieldSchema> {
    use sluice_types::schema::{DataType, FieldSchema};
    let mut parts = spec.split(':');
    let name = parts.next().unwrap_or_default();
    let ty = parts.next().unwrap_or_default();
    let data_type = match ty.to_ascii_lowercase().as_str() {
        "bool" => DataType::Bool,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "float" => DataType::Float,
        "double" => DataType::Double,
        "varchar" => DataType::Varchar,
        "json" => DataType::Json,
        "float_vector" => DataType::FloatVector,
        "sparse_float_vector" => DataType::SparseFloatVector,
        other => bail!(
            "field {spec:?}: unknown type {other:?} (bool, int32, int64, float, double, varchar, \
             json, float_vector, sparse_float_vector)"
        ),
    };
    let mut f = FieldSchema {
        name: name.to_owned(),
        data_type: data_type as i32,
        ..FieldSchema::default()
    };
    for p in parts {
        match p {
            "pk" => f.is_primary_key = true,
            "auto" => f.auto_id = true,
            "nullable" => f.nullable = true,
            "analyzer" => f.enable_analyzer = true,
            // TEXT_MATCH filters (with `analyzer`).
            "match" => f.enable_match = true,
            // The output of a BM25 function of that input field (see `bm25_functions`).
            p if p.starts_with("bm25=") => f.is_function_output = true,
            n => {
                let n: u32 = n
                    .parse()
                    .with_context(|| format!("field {spec:?}: {n:?} is not a size"))?;
                match data_type {
                    DataType::Varchar => f.max_length = n,
                    DataType::FloatVector => f.dim = n,
                    _ => bail!("field {spec:?}: only varchar and float_vector take a size"),
                }
            }
        }
    }
    Ok(f)
}

/// The BM25 functions field specs name: `sv:sparse_float_vector:bm25=text` is the output of a
/// BM25 function (named `sv_bm25`) of the field `text`.
fn bm25_functions(specs: &[String]) -> Vec<sluice_types::schema::FunctionSchema> {
    specs
        .iter()
        .filter_map(|spec| {
            let name = spec.split(':').next().unwrap_or_default();
            let input = spec.split(':').find_map(|p| p.strip_prefix("bm25="))?;
            Some(sluice_types::schema::FunctionSchema {
                name: format!("{name}_bm25"),
                r#type: sluice_types::schema::FunctionType::Bm25 as i32,
                input_field: input.to_owned(),
                output_field: name.to_owned(),
            })
        })
        .collect()
}

pub(crate) fn print_collection(c: &v1::CollectionInfo) {
    let schema = c.schema.clone().unwrap_or_default();
    let state = v1::CollectionState::try_from(c.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("COLLECTION_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| c.state.to_string());
    let loaded = if c.load_state == v1::LoadState::Released as i32 {
        "released"
    } else {
        "loaded"
    };
    println!(
        "collection {} id={} state={state} {loaded} replicas={} shards={} schema_version={} \
         created_ts={}",
        schema.name,
        c.collection_id,
        c.replicas.max(1),
        schema.shards,
        schema.version,
        c.created_timestamp
    );
    for f in &schema.fields {
        let ty = sluice_types::schema::DataType::try_from(f.data_type)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("DATA_TYPE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| f.data_type.to_string());
        let mut extra = Vec::new();
        if f.is_primary_key {
            extra.push("primary key".to_owned());
        }
        if f.auto_id {
            extra.push("auto id".to_owned());
        }
        if f.nullable {
            extra.push("nullable".to_owned());
        }
        if f.max_length > 0 {
            extra.push(format!("max_length {}", f.max_length));
        }
        if f.dim > 0 {
            extra.push(format!("dim {}", f.dim));
        }
        if f.enable_analyzer {
            extra.push(if f.analyzer_params.is_empty() {
                "analyzer standard".to_owned()
            } else {
                format!("analyzer {}", f.analyzer_params)
            });
        }
        if f.enable_match {
            extra.push("text_match".to_owned());
        }
        if let Some(func) = sluice_types::schema::bm25_of(&schema, &f.name) {
            extra.push(format!(
                "BM25 of {} (function {})",
                func.input_field, func.name
            ));
        }
        println!(
            "  field {} id={} {ty} {}",
            f.name,
            f.field_id,
            extra.join(", ")
        );
    }
    for p in &c.partitions {
        println!("  partition {} id={}", p.name, p.partition_id);
    }
    for (i, v) in c.vchannels.iter().enumerate() {
        println!("  shard {i} vchannel {v}");
    }
}

/// `sluice ctl create-collection`.
pub(crate) async fn create_collection(
    coord: &str,
    name: &str,
    fields: &[String],
    shards: u32,
    partitions: Vec<String>,
    timeout: Duration,
) -> anyhow::Result<v1::CollectionInfo> {
    let functions = bm25_functions(fields);
    let fields = fields
        .iter()
        .map(|s| parse_field(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let schema = sluice_types::schema::CollectionSchema {
        name: name.to_owned(),
        fields,
        shards,
        functions,
        ..Default::default()
    };
    let info = coordinator(coord)?
        .create_collection(timed(
            v1::CreateCollectionRequest {
                schema: Some(schema),
                partition_names: partitions,
                properties: Default::default(),
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("creating collection {name}: {}", s.message()))?
        .into_inner();
    Ok(info)
}

/// `sluice ctl collections`.
/// `sluice ctl databases`.
pub(crate) async fn list_databases(coord: &str, timeout: Duration) -> anyhow::Result<()> {
    let r = coordinator(coord)?
        .list_databases(timed(v1::ListDatabasesRequest {}, timeout))
        .await
        .map_err(|s| anyhow::anyhow!("listing databases: {}", s.message()))?
        .into_inner();
    for d in &r.databases {
        println!("{} id={}", d.name, d.database_id);
    }
    println!("{} databases", r.databases.len());
    Ok(())
}

/// `sluice ctl users`.
pub(crate) async fn list_users(coord: &str, timeout: Duration) -> anyhow::Result<()> {
    let r = coordinator(coord)?
        .list_users(timed(v1::ListUsersRequest {}, timeout))
        .await
        .map_err(|s| anyhow::anyhow!("listing users: {}", s.message()))?
        .into_inner();
    for u in &r.users {
        println!("{} roles={}", u.name, u.roles.join(","));
    }
    println!("{} users", r.users.len());
    Ok(())
}

/// `sluice ctl reset-password NAME`: the new password is stdin's first line.
pub(crate) async fn reset_password(
    coord: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the new password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    coordinator(coord)?
        .update_password(timed(
            v1::UpdatePasswordRequest {
                name: name.to_owned(),
                old_password: String::new(),
                new_password: password,
                reset: true,
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("setting the password of {name}: {}", s.message()))?;
    println!("password of {name} set");
    Ok(())
}

/// `sluice ctl create-database NAME`.
pub(crate) async fn create_database(
    coord: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let d = coordinator(coord)?
        .create_database(timed(
            v1::CreateDatabaseRequest {
                name: name.to_owned(),
                properties: Default::default(),
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("creating database {name}: {}", s.message()))?
        .into_inner();
    println!("created database {} id={}", d.name, d.database_id);
    Ok(())
}

/// `sluice ctl drop-database NAME`.
pub(crate) async fn drop_database(
    coord: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    coordinator(coord)?
        .drop_database(timed(
            v1::DropDatabaseRequest {
                name: name.to_owned(),
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("dropping database {name}: {}", s.message()))?;
    println!("dropped database {name}");
    Ok(())
}

pub(crate) async fn list_collections(coord: &str, timeout: Duration) -> anyhow::Result<()> {
    let r = coordinator(coord)?
        .list_collections(timed(v1::ListCollectionsRequest {}, timeout))
        .await
        .map_err(|s| anyhow::anyhow!("listing collections: {}", s.message()))?
        .into_inner();
    for c in &r.collections {
        let s = c.schema.clone().unwrap_or_default();
        println!(
            "{} id={} shards={} fields={} vchannels={}",
            s.name,
            c.collection_id,
            s.shards,
            s.fields.len(),
            c.vchannels.join(",")
        );
    }
    println!("{} collections", r.collections.len());
    Ok(())
}

async fn describe(
    coord: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<v1::CollectionInfo> {
    Ok(coordinator(coord)?
        .describe_collection(timed(
            v1::DescribeCollectionRequest {
                which: Some(v1::describe_collection_request::Which::Name(
                    name.to_owned(),
                )),
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("describing collection {name}: {}", s.message()))?
        .into_inner())
}

/// `sluice ctl describe`.
pub(crate) async fn describe_collection(
    coord: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    print_collection(&describe(coord, name, timeout).await?);
    Ok(())
}

/// `sluice ctl drop-collection`.
pub(crate) async fn drop_collection(
    coord: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let info = coordinator(coord)?
        .drop_collection(timed(
            v1::DropCollectionRequest {
                name: name.to_owned(),
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("dropping collection {name}: {}", s.message()))?
        .into_inner();
    println!("dropped collection {name} id={}", info.collection_id);
    Ok(())
}

/// Prints the collection a catalog call answered with, or fails with `what` and the call's
/// message.
fn print_answer(
    answer: Result<tonic::Response<v1::CollectionInfo>, tonic::Status>,
    what: &str,
) -> anyhow::Result<()> {
    let info = answer
        .map_err(|s| anyhow::anyhow!("{what}: {}", s.message()))?
        .into_inner();
    print_collection(&info);
    Ok(())
}

/// `sluice ctl rename NAME NEW_NAME`.
pub(crate) async fn rename(
    coord: &str,
    name: &str,
    new_name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let answer = coordinator(coord)?
        .rename_collection(timed(
            v1::RenameCollectionRequest {
                name: name.to_owned(),
                new_name: new_name.to_owned(),
            },
            timeout,
        ))
        .await;
    print_answer(answer, &format!("renaming collection {name}"))
}

/// `sluice ctl add-field COLLECTION FIELD`.
pub(crate) async fn add_field(
    coord: &str,
    collection: &str,
    field: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let field = parse_field(field)?;
    let answer = coordinator(coord)?
        .add_collection_field(timed(
            v1::AddCollectionFieldRequest {
                name: collection.to_owned(),
                field: Some(field),
                properties: Default::default(),
            },
            timeout,
        ))
        .await;
    print_answer(answer, &format!("collection {collection}"))
}

/// `sluice ctl truncate COLLECTION`.
pub(crate) async fn truncate(
    coord: &str,
    collection: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let answer = coordinator(coord)?
        .truncate_collection(timed(
            v1::TruncateCollectionRequest {
                name: collection.to_owned(),
            },
            timeout,
        ))
        .await;
    print_answer(answer, &format!("truncating {collection}"))
}

/// `sluice ctl alter-field COLLECTION FIELD --max-length N`.
pub(crate) async fn alter_field(
    coord: &str,
    collection: &str,
    field: &str,
    max_length: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let answer = coordinator(coord)?
        .alter_collection_field(timed(
            v1::AlterCollectionFieldRequest {
                name: collection.to_owned(),
                field_name: field.to_owned(),
                max_length,
            },
            timeout,
        ))
        .await;
    print_answer(answer, &format!("collection {collection}"))
}

/// `sluice ctl compact COLLECTION [--wait]`.
pub(crate) async fn compact(
    coord: &str,
    collection: &str,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let info = describe(coord, collection, timeout).await?;
    let mut c = coordinator(coord)?;
    let failed = |s: tonic::Status| anyhow::anyhow!("compacting {collection}: {}", s.message());
    let mut compaction = c
        .compact(timed(
            v1::CompactRequest {
                collection_id: info.collection_id,
            },
            timeout,
        ))
        .await
        .map_err(failed)?
        .into_inner();
    println!(
        "compaction {} of {collection} at timestamp {}",
        compaction.compaction_id, compaction.timestamp
    );
    if !wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while compaction.state != v1::CompactionState::Completed as i32 {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "compaction {} not finished after {timeout:?} ({} of {} vchannels done)",
                compaction.compaction_id,
                compaction.done.len(),
                compaction.vchannels.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        compaction = c
            .get_compaction(timed(
                v1::GetCompactionRequest {
                    compaction_id: compaction.compaction_id,
                },
                timeout,
            ))
            .await
            .map_err(failed)?
            .into_inner();
    }
    for d in &compaction.done {
        println!(
            "{}: {} segments rewritten, {} rows removed, {} -> {} bytes; {} delete files merged, {} -> {} deletes",
            d.vchannel,
            d.segments,
            d.rows_removed,
            d.bytes_before,
            d.bytes_after,
            d.delete_files_merged,
            d.deletes_before,
            d.deletes_after
        );
    }
    println!("compaction {} completed", compaction.compaction_id);
    Ok(())
}

/// `sluice ctl create-partition` (`create`) / `sluice ctl drop-partition`.
pub(crate) async fn partition(
    coord: &str,
    collection: &str,
    partition: &str,
    create: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut c = coordinator(coord)?;
    let (collection_name, partition_name) = (collection.to_owned(), partition.to_owned());
    let info = if create {
        c.create_partition(timed(
            v1::CreatePartitionRequest {
                collection_name,
                partition_name,
            },
            timeout,
        ))
        .await
    } else {
        c.drop_partition(timed(
            v1::DropPartitionRequest {
                collection_name,
                partition_name,
            },
            timeout,
        ))
        .await
    }
    .map_err(|s| anyhow::anyhow!("collection {collection}: {}", s.message()))?
    .into_inner();
    print_collection(&info);
    Ok(())
}

/// `sluice ctl drain NODE [--undo]`.
pub(crate) async fn drain(
    coord: &str,
    node: u64,
    undo: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut c = coordinator(coord)?;
    let r = c
        .drain_node(timed(
            v1::DrainNodeRequest {
                node_id: node,
                undo,
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("draining node {node}: {}", s.message()))?
        .into_inner();
    println!(
        "node {node} {}; drained now: {:?}",
        if undo { "undrained" } else { "drained" },
        r.drained
    );
    Ok(())
}

/// `sluice ctl move PCHANNEL NODE`.
pub(crate) async fn move_pchannel(
    coord: &str,
    pchannel: &str,
    node: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let r = coordinator(coord)?
        .move_p_channel(timed(
            v1::MovePChannelRequest {
                pchannel: pchannel.to_owned(),
                node_id: node,
            },
            timeout,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("moving {pchannel} to node {node}: {}", s.message()))?
        .into_inner();
    println!(
        "{pchannel} is on node {node} at term {} ({} ms)",
        r.term,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// `sluice ctl load` (`Some(replicas)`) / `sluice ctl release` (`None`).
pub(crate) async fn set_loaded(
    coord: &str,
    name: &str,
    load: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut c = coordinator(coord)?;
    let info = if let Some(replicas) = load {
        c.load_collection(timed(
            v1::LoadCollectionRequest {
                name: name.to_owned(),
                replicas,
            },
            timeout,
        ))
        .await
    } else {
        c.release_collection(timed(
            v1::ReleaseCollectionRequest {
                name: name.to_owned(),
            },
            timeout,
        ))
        .await
    }
    .map_err(|s| anyhow::anyhow!("collection {name}: {}", s.message()))?
    .into_inner();
    print_collection(&info);
    Ok(())
}

/// Where `sluice insert` writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InsertTarget<'a> {
    pub(crate) collection: &'a str,
    /// The partition's name (`None`: the collection's default, first one).
    pub(crate) partition: Option<&'a str>,
}

/// `sluice insert` (returns what it did, to print): rows of a JSON-lines file (one object per line) or a Parquet file
/// (`.parquet`, columns named after the fields) into a collection of the catalog, routed to its
/// shards by primary key, at most `batch` rows per insert.
pub(crate) async fn insert_file(
    client: &Client,
    coord: &str,
    target: InsertTarget<'_>,
    file: &std::path::Path,
    batch: usize,
    timeout: Duration,
) -> anyhow::Result<String> {
    let collection = target.collection;
    let info = describe(coord, collection, timeout).await?;
    let schema = info
        .schema
        .clone()
        .context("the collection has no schema")?;
    let pk = sluice_storage::rows::primary_key(&schema)?.name.clone();
    let partition = match target.partition {
        None => info.partitions.first(),
        Some(name) => Some(
            info.partitions
                .iter()
                .find(|p| p.name == name)
                .with_context(|| format!("collection {collection} has no partition {name:?}"))?,
        ),
    }
    .context("the collection has no partition")?
    .partition_id;
    let vchannels = info
        .vchannels
        .iter()
        .map(|v| VChannel::new(v.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    if vchannels.is_empty() {
        bail!("collection {collection} has no vchannels");
    }
    let batch = batch.max(1);
    let started = std::time::Instant::now();
    let (mut rows, mut inserts) = (0usize, 0usize);
    // Each chunk of rows is split by shard and sent as one insert per shard.
    let mut send = async |chunk: arrow_array::RecordBatch| -> anyhow::Result<()> {
        let shards = sluice_storage::rows::shards_of(&chunk, &pk, vchannels.len())?;
        for (shard, v) in vchannels.iter().enumerate() {
            let mask = arrow_array::BooleanArray::from(
                shards.iter().map(|s| *s == shard).collect::<Vec<_>>(),
            );
            let part = arrow_select::filter::filter_record_batch(&chunk, &mask)?;
            if part.num_rows() == 0 {
                continue;
            }
            let body = sluice_storage::rows::encode_stream(std::slice::from_ref(&part))?;
            let msg = MutableMessage::builder(InsertHeader {
                collection_id: info.collection_id,
                partitions: vec![PartitionSegmentAssignment {
                    partition_id: partition,
                    rows: part.num_rows() as u64,
                    binary_size: body.len() as u64,
                    segment_id: 0,
                }],
            })
            .vchannel(v)
            .payload(body)
            .build()?;
            client.append(msg).await.context("inserting")?;
            rows += part.num_rows();
            inserts += 1;
        }
        Ok(())
    };
    let opened =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    if file.extension().is_some_and(|e| e == "parquet") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(opened)
            .with_context(|| format!("{} is not a Parquet file", file.display()))?
            .with_batch_size(batch)
            .build()?;
        for chunk in reader {
            send(chunk.with_context(|| format!("reading {}", file.display()))?).await?;
        }
    } else {
        let mut pending: Vec<serde_json::Value> = Vec::with_capacity(batch);
        let mut first_line = 1;
        for (n, line) in std::io::BufReader::new(opened).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not JSON", file.display(), n + 1))?;
            pending.push(row);
            if pending.len() >= batch {
                let chunk = sluice_storage::rows::batch_from_json(&schema, &pending)
                    .with_context(|| format!("{}:{}-{}", file.display(), first_line, n + 1))?;
                send(chunk).await?;
                pending.clear();
                first_line = n + 2;
            }
        }
        if !pending.is_empty() {
            let chunk = sluice_storage::rows::batch_from_json(&schema, &pending)
                .with_context(|| format!("{}:{}-", file.display(), first_line))?;
            send(chunk).await?;
        }
    }
    Ok(format!(
        "inserted {rows} rows into {collection} in {inserts} inserts ({:.2} s)",
        started.elapsed().as_secs_f64()
    ))
}

/// Appends `batch` (the collection's columns) as one insert into its first partition on
/// `vchannel`.
pub(crate) async fn insert_batch(
    client: &Client,
    coord: &str,
    collection: &str,
    vchannel: &str,
    batch: arrow_array::RecordBatch,
    timeout: Duration,
) -> anyhow::Result<sluice_types::AppendResult> {
    let info = describe(coord, collection, timeout).await?;
    let partition = info
        .partitions
        .first()
        .context("the collection has no partition")?
        .partition_id;
    let body = sluice_storage::rows::encode_stream(std::slice::from_ref(&batch))?;
    let msg = MutableMessage::builder(InsertHeader {
        collection_id: info.collection_id,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: partition,
            rows: batch.num_rows() as u64,
            binary_size: body.len() as u64,
            segment_id: 0,
        }],
    })
    .vchannel(&VChannel::new(vchannel)?)
    .payload(body)
    .build()?;
    client.append(msg).await.context("inserting")
}

/// `sluice ctl flush` (returns a line per shard, to print): a ManualFlush on every shard of a collection (its growing segments are
/// sealed and written to Parquet; searches then use their HNSW indexes).
pub(crate) async fn flush(
    client: &Client,
    coord: &str,
    collection: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let info = describe(coord, collection, timeout).await?;
    let mut out = Vec::new();
    for v in &info.vchannels {
        let v = VChannel::new(v.as_str())?;
        let msg = MutableMessage::builder(sluice_types::message::ManualFlushHeader {
            collection_id: info.collection_id,
            flush_ts: 0,
            segment_ids: Vec::new(),
        })
        .vchannel(&v)
        .build()?;
        let r = client.append(msg).await.context("flushing")?;
        out.push(format!("{v}: flush at {}", r.timestamp.0));
    }
    Ok(out)
}

/// The consistency level named on the command line.
pub(crate) fn consistency(name: &str) -> anyhow::Result<v1::ConsistencyLevel> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "strong" => v1::ConsistencyLevel::Strong,
        "session" => v1::ConsistencyLevel::Session,
        "bounded" => v1::ConsistencyLevel::Bounded,
        "eventually" => v1::ConsistencyLevel::Eventually,
        other => bail!("consistency must be strong, session, bounded or eventually, not {other:?}"),
    })
}

/// The metric named on the command line (empty: the index's).
pub(crate) fn metric(name: &str) -> anyhow::Result<v1::MetricType> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "" => v1::MetricType::Unspecified,
        "L2" => v1::MetricType::L2,
        "IP" => v1::MetricType::Ip,
        "COSINE" => v1::MetricType::Cosine,
        "BM25" => v1::MetricType::Bm25,
        other => bail!("metric must be L2, IP, COSINE or BM25, not {other:?}"),
    })
}

/// Comma-separated floats.
pub(crate) fn parse_vector(text: &str) -> anyhow::Result<Vec<f32>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .with_context(|| format!("{v:?} in a query vector is not a number"))
        })
        .collect()
}

/// Whether a query vector argument is a sparse one (a JSON object).
pub(crate) fn is_sparse_vector(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// A sparse query vector written as a JSON object of index to weight, laid out as
/// [`sluice_types::sparse`] describes.
pub(crate) fn parse_sparse_vector(text: &str) -> anyhow::Result<Vec<u8>> {
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .with_context(|| format!("{text:?} is not a JSON object of index to weight"))?;
    let pairs = obj
        .iter()
        .map(|(k, w)| {
            let index = k
                .parse::<u32>()
                .with_context(|| format!("sparse vector index {k:?} is not a whole number"))?;
            let weight = w
                .as_f64()
                .with_context(|| format!("sparse vector weight {w} is not a number"))?;
            Ok((index, weight as f32))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(sluice_types::sparse::encode(pairs)?)
}

/// The batches of an Arrow IPC stream from a response.
pub(crate) fn decode_rows(bytes: &[u8]) -> anyhow::Result<Vec<arrow_array::RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    Ok(sluice_storage::rows::read_stream_bytes(&bytes, usize::MAX)?)
}

/// One value of `col` at `row` as JSON.
fn json_value(col: &dyn arrow_array::Array, row: usize) -> serde_json::Value {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
    use arrow_schema::DataType as T;
    if col.is_null(row) {
        return serde_json::Value::Null;
    }
    match col.data_type() {
        T::Boolean => col.as_boolean().value(row).into(),
        T::Int32 => col.as_primitive::<Int32Type>().value(row).into(),
        T::Int64 => col.as_primitive::<Int64Type>().value(row).into(),
        T::Float32 => f64::from(col.as_primitive::<Float32Type>().value(row)).into(),
        T::Float64 => col.as_primitive::<Float64Type>().value(row).into(),
        T::Utf8 => col.as_string::<i32>().value(row).into(),
        T::FixedSizeList(_, _) => {
            let v = col.as_fixed_size_list().value(row);
            serde_json::Value::Array((0..v.len()).map(|i| json_value(v.as_ref(), i)).collect())
        }
        // A sparse vector (the one Binary column rows have), as the JSON written to insert it.
        T::Binary => serde_json::Value::Object(
            sluice_types::sparse::pairs(col.as_binary::<i32>().value(row))
                .map(|(i, w)| (i.to_string(), f64::from(w).into()))
                .collect(),
        ),
        other => format!("<{other}>").into(),
    }
}

/// Rows as JSON objects.
pub(crate) fn json_rows(batches: &[arrow_array::RecordBatch]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let mut obj = serde_json::Map::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                obj.insert(f.name().clone(), json_value(c.as_ref(), r));
            }
            out.push(serde_json::Value::Object(obj));
        }
    }
    out
}

/// `sluice search`: prints, per query vector, one JSON object per hit (`_score` and the fields).
pub(crate) async fn search(
    endpoint: &str,
    req: v1::SearchRequest,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = sluice_client::QueryClient::connect(endpoint)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_deadline(timeout);
    let started = std::time::Instant::now();
    let resp = client
        .search(req)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let took = started.elapsed();
    for (q, hits) in resp.results.iter().enumerate() {
        println!("# query {q}: {} hits", hits.scores.len());
        for (mut row, score) in json_rows(&decode_rows(&hits.rows)?)
            .into_iter()
            .zip(&hits.scores)
        {
            if let serde_json::Value::Object(o) = &mut row {
                o.insert("_score".into(), f64::from(*score).into());
            }
            println!("{row}");
        }
    }
    eprintln!(
        "searched at timestamp {} in {:.1} ms",
        resp.mvcc_timestamp,
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

/// `sluice query` and `sluice get`: prints one JSON object per row.
pub(crate) async fn query(
    endpoint: &str,
    req: QueryOrGet,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = sluice_client::QueryClient::connect(endpoint)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_deadline(timeout);
    let resp = match req {
        QueryOrGet::Query(r) => client.query(r).await,
        QueryOrGet::Get(r) => client.get(r).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    for row in json_rows(&decode_rows(&resp.rows)?) {
        println!("{row}");
    }
    eprintln!(
        "{} rows at timestamp {}",
        resp.row_count, resp.mvcc_timestamp
    );
    Ok(())
}

/// A Query or a Get.
pub(crate) enum QueryOrGet {
    Query(v1::QueryRequest),
    Get(v1::GetRequest),
}
