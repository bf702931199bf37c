//! The catalog end to end on a real standalone server, through the CLI: create a collection
//! with a schema, list and describe it, insert rows from a JSON-lines file (routed to its two
//! shards), refuse bad rows with a clear error, serialize concurrent creates of one name, drop
//! it and create it again.

mod support;

use std::time::Duration;

use sluice_proto::v1;
use support::{Proc, run_cli};

const TIMEOUT: Duration = Duration::from_secs(60);

fn start(data: &std::path::Path, logs: &std::path::Path) -> Proc {
    Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        logs,
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn ctl(server: &Proc, args: &[&str]) -> support::CliOutput {
    let endpoint = server.endpoint();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--coord", endpoint.as_str()]);
    run_cli(&all, &[], TIMEOUT)
}

/// Collection `name`'s schema: an int64 primary key `id` and a 2-dimensional vector `v`.
fn id_and_vector(name: &str) -> sluice_types::schema::CollectionSchema {
    use sluice_types::schema::{CollectionSchema, DataType, FieldSchema};
    CollectionSchema {
        name: name.into(),
        fields: vec![
            FieldSchema {
                name: "id".into(),
                data_type: DataType::Int64 as i32,
                is_primary_key: true,
                ..Default::default()
            },
            FieldSchema {
                name: "v".into(),
                data_type: DataType::FloatVector as i32,
                dim: 2,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// `sluice ctl create-collection NAME` with the test's schema and two shards.
fn create_collection(endpoint: &str, name: &str) -> support::CliOutput {
    create_with_fields(
        endpoint,
        name,
        &[
            "id:int64:pk",
            "title:varchar:32",
            "vec:float_vector:3",
            "meta:json:nullable",
        ],
        2,
    )
}

/// `sluice ctl create-collection NAME` with field specs `fields` and `shards` shards.
fn create_with_fields(
    endpoint: &str,
    name: &str,
    fields: &[&str],
    shards: u32,
) -> support::CliOutput {
    let shards = shards.to_string();
    let mut args = vec![
        "ctl",
        "create-collection",
        "--name",
        name,
        "--shards",
        &shards,
        "--coord",
        endpoint,
    ];
    for f in fields {
        args.extend(["--field", f]);
    }
    run_cli(&args, &[], TIMEOUT)
}

/// Rows `ids` of the test's schema in a Parquet file (the vector's items not nullable, as the
/// catalog's schema has them).
fn write_parquet(path: &std::path::Path, ids: std::ops::Range<i64>) {
    use arrow_array::{
        ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
    };
    use std::sync::Arc;
    let n = (ids.end - ids.start) as usize;
    let vec = FixedSizeListArray::try_new(
        Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            false,
        )),
        3,
        Arc::new(Float32Array::from_iter_values((0..n * 3).map(|i| i as f32))),
        None,
    )
    .unwrap();
    let b = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(ids.clone())) as ArrayRef,
        ),
        (
            "title",
            Arc::new(StringArray::from_iter_values(ids.map(|i| format!("p{i}")))) as ArrayRef,
        ),
        ("vec", Arc::new(vec) as ArrayRef),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        b.schema(),
        None,
    )
    .unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
}

/// `sluice insert` of JSON `lines`, written to `file` in `dir`, into `collection` (and
/// `partition`).
fn insert_lines<L: AsRef<str>>(
    dir: &std::path::Path,
    endpoint: &str,
    collection: &str,
    partition: Option<&str>,
    file: &str,
    lines: &[L],
) -> support::CliOutput {
    let path = dir.join(file);
    let text: Vec<&str> = lines.iter().map(AsRef::as_ref).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    let path = path.to_str().unwrap();
    let mut args = vec![
        "insert",
        "--collection",
        collection,
        "--file",
        path,
        "--coord",
        endpoint,
    ];
    if let Some(p) = partition {
        args.extend(["--partition", p]);
    }
    run_cli(&args, &[], TIMEOUT)
}

fn ok(out: support::CliOutput, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_created_described_filled_from_json_lines_and_dropped() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    let create = |name: &str| create_collection(&endpoint, name);
    let out = ok(create("docs"), "create-collection");
    assert!(out.contains("collection docs id="), "{out}");
    assert!(out.contains("field id id=1 int64 primary key"), "{out}");
    assert!(out.contains("field vec id=3 float_vector dim 3"), "{out}");
    assert!(out.contains("partition _default"), "{out}");
    assert!(out.contains("shard 1 vchannel"), "{out}");

    // A name in use is refused; a bad schema too.
    let again = create("docs");
    assert!(!again.status.success());
    assert!(
        again.stderr.contains("a collection named \"docs\" exists"),
        "{}",
        again.stderr
    );
    let bad = ctl(
        &server,
        &[
            "ctl",
            "create-collection",
            "--name",
            "nopk",
            "--field",
            "x:int64",
        ],
    );
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("primary key"), "{}", bad.stderr);

    let list = ok(ctl(&server, &["ctl", "collections"]), "collections");
    assert!(
        list.contains("docs id=") && list.contains("1 collections"),
        "{list}"
    );

    // Rows from a JSON-lines file.
    let file = data.path().join("rows.jsonl");
    let lines: Vec<String> = (0..250)
        .map(|i| {
            format!(r#"{{"id": {i}, "title": "t{i}", "vec": [{i}, 0.5, 1], "meta": {{"n": {i}}}}}"#)
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = run_cli(
        &[
            "insert",
            "--collection",
            "docs",
            "--file",
            file.to_str().unwrap(),
            "--batch",
            "40",
            "--coord",
            &endpoint,
        ],
        &[],
        TIMEOUT,
    );
    let out = ok(out, "insert");
    assert!(out.contains("inserted 250 rows into docs"), "{out}");

    // And from a Parquet file.
    let parquet_file = data.path().join("rows.parquet");
    write_parquet(&parquet_file, 1000..1050);
    let out = run_cli(
        &[
            "insert",
            "--collection",
            "docs",
            "--file",
            parquet_file.to_str().unwrap(),
            "--coord",
            &endpoint,
        ],
        &[],
        TIMEOUT,
    );
    let out = ok(out, "insert from Parquet");
    assert!(out.contains("inserted 50 rows into docs"), "{out}");

    // Every row is in the WAL of the shard its key routes to.
    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let info = coord
        .describe_collection(v1::DescribeCollectionRequest {
            which: Some(v1::describe_collection_request::Which::Name("docs".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.vchannels.len(), 2);
    assert_eq!(info.state, v1::CollectionState::Created as i32);
    let topology = std::sync::Arc::new(
        sluice_client::topology::CoordinatorTopology::connect(&endpoint).unwrap(),
    );
    let client = sluice_client::Client::new(
        topology,
        std::sync::Arc::new(sluice_client::access::RemoteAccess::new()),
        sluice_client::ClientConfig::default(),
    );
    let mut total = 0u64;
    for (shard, v) in info.vchannels.iter().enumerate() {
        let v = sluice_types::VChannel::new(v.as_str()).unwrap();
        let mut reader = client.read(sluice_client::ReadRequest::vchannel(&v));
        let mut rows = 0u64;
        while rows < 150 {
            let m = tokio::time::timeout(TIMEOUT, reader.next())
                .await
                .expect("rows arrive")
                .expect("stream")
                .expect("message");
            if let sluice_types::ReadMessage::Message(m) = m
                && m.message_type().ok() == Some(sluice_types::MessageType::Insert)
            {
                let h: sluice_types::message::InsertHeader = m.header().unwrap();
                rows += h.partitions[0].rows;
                let b = sluice_storage::rows::decode_insert(
                    info.schema.as_ref().unwrap(),
                    m.payload(),
                    h.partitions[0].rows,
                    1 << 20,
                )
                .unwrap();
                let ids = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow_array::Int64Array>()
                    .unwrap();
                assert!(ids.iter().all(|k| k.unwrap() % 2 == shard as i64));
            }
        }
        total += rows;
    }
    assert_eq!(total, 300);

    // A bad row is a clear error naming it, and nothing of that insert is written.
    std::fs::write(&file, r#"{"id": 1, "title": "x", "vec": [1, 2]}"#).unwrap();
    let out = run_cli(
        &[
            "insert",
            "--collection",
            "docs",
            "--file",
            file.to_str().unwrap(),
            "--coord",
            &endpoint,
        ],
        &[],
        TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("vec must be an array of 3 numbers"),
        "{}",
        out.stderr
    );

    // Concurrent creates of one name: exactly one wins.
    let outcomes: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| create("race").status.success()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");

    // Drop, then the name is free again (a new id).
    let out = ok(ctl(&server, &["ctl", "drop-collection", "docs"]), "drop");
    assert!(out.contains("dropped collection docs"), "{out}");
    let gone = ctl(&server, &["ctl", "describe", "docs"]);
    assert!(!gone.status.success());
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
    let out = ok(create("docs"), "create again");
    let new_id = out
        .split("id=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap();
    assert_ne!(new_id, info.collection_id);
    drop(server);
}

/// Collection properties: set at creation, altered (set and delete in one step) and listed by
/// describe, kept across a restart; bad ones are refused and change nothing. The index settings
/// among them reach the delegators (a search's default metric is the collection's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_properties_are_kept_altered_and_checked() {
    use v1::coordinator_client::CoordinatorClient;
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let connect = |server: &Proc| {
        let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
            .unwrap()
            .connect_lazy();
        CoordinatorClient::new(channel)
    };
    let mut coord = connect(&server);
    let schema = id_and_vector("props");
    let created = coord
        .create_collection(v1::CreateCollectionRequest {
            schema: Some(schema),
            partition_names: Vec::new(),
            properties: [("a".to_owned(), "1".to_owned()), ("b".into(), "2".into())].into(),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.properties.len(), 2);
    let altered = coord
        .alter_collection_properties(v1::AlterCollectionPropertiesRequest {
            name: "props".into(),
            set: [("a".to_owned(), "10".to_owned()), ("c".into(), "3".into())].into(),
            delete_keys: vec!["b".into(), "absent".into()],
        })
        .await
        .expect("alter")
        .into_inner();
    let want: std::collections::HashMap<String, String> =
        [("a".to_owned(), "10".to_owned()), ("c".into(), "3".into())].into();
    assert_eq!(altered.properties, want);
    for bad in [
        v1::AlterCollectionPropertiesRequest {
            name: "props".into(),
            set: [(String::new(), "x".to_owned())].into(),
            delete_keys: Vec::new(),
        },
        v1::AlterCollectionPropertiesRequest {
            name: "props".into(),
            set: [("big".to_owned(), "x".repeat(65 << 10))].into(),
            delete_keys: Vec::new(),
        },
        v1::AlterCollectionPropertiesRequest {
            name: "props".into(),
            set: (0..64).map(|i| (format!("k{i}"), String::new())).collect(),
            delete_keys: Vec::new(),
        },
        v1::AlterCollectionPropertiesRequest {
            name: "nope".into(),
            set: Default::default(),
            delete_keys: Vec::new(),
        },
    ] {
        let e = coord
            .alter_collection_properties(bad)
            .await
            .expect_err("a bad alteration is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    // Index settings (see CollectionInfo.properties): unreadable ones are refused; a metric set
    // on the collection is the one its delegators index and search with by default.
    for (k, v) in [
        ("index.metric", "HAMMING"),
        ("index.hnsw.m", "1"),
        ("index.hnsw.ef_construction", "many"),
    ] {
        let e = coord
            .alter_collection_properties(v1::AlterCollectionPropertiesRequest {
                name: "props".into(),
                set: [(k.to_owned(), v.to_owned())].into(),
                delete_keys: Vec::new(),
            })
            .await
            .expect_err("an unreadable index setting is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(k), "{e:?}");
    }
    let search_metric = |server: &Proc| {
        let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
            .unwrap()
            .connect_lazy();
        let mut query = v1::query_client::QueryClient::new(channel);
        async move {
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                let r = query
                    .search(v1::SearchRequest {
                        collection: "props".into(),
                        vectors: vec![v1::FloatVector {
                            values: vec![1.0, 0.0],
                        }],
                        top_k: 1,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(r) => {
                        break v1::MetricType::try_from(r.into_inner().metric)
                            .expect("a known metric");
                    }
                    // The shards are (re)built: a moment after start or a settings change.
                    Err(e)
                        if e.message().starts_with("NOT_READY")
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("search: {e:?}"),
                }
            }
        }
    };
    assert_eq!(search_metric(&server).await, v1::MetricType::L2);
    let with_index = coord
        .alter_collection_properties(v1::AlterCollectionPropertiesRequest {
            name: "props".into(),
            set: [
                ("index.metric".to_owned(), "cosine".to_owned()),
                ("index.hnsw.m".into(), "24".into()),
            ]
            .into(),
            delete_keys: Vec::new(),
        })
        .await
        .expect("index settings are taken")
        .into_inner();
    assert_eq!(with_index.properties["index.hnsw.m"], "24");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while search_metric(&server).await != v1::MetricType::Cosine {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delegators never took the collection's metric"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want: std::collections::HashMap<String, String> = [
        ("a".to_owned(), "10".to_owned()),
        ("c".into(), "3".into()),
        ("index.metric".into(), "cosine".into()),
        ("index.hnsw.m".into(), "24".into()),
    ]
    .into();
    // Kept, unchanged by the refused ones, across a restart.
    server.signal(rustix::process::Signal::TERM);
    tokio::task::block_in_place(|| server.wait_exit(TIMEOUT)).expect("exits after SIGTERM");
    drop(server);
    let server = start(data.path(), logs.path());
    let mut coord = connect(&server);
    let described = coord
        .describe_collection(v1::DescribeCollectionRequest {
            which: Some(v1::describe_collection_request::Which::Name("props".into())),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.properties, want);
    assert_eq!(search_metric(&server).await, v1::MetricType::Cosine);
}

/// The partition id named `name` in `info`.
fn partition_id(info: &v1::CollectionInfo, name: &str) -> Option<i64> {
    info.partitions
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.partition_id)
}

/// Waits until the embedded meta store under `dir`, opened by the test and dropped, has closed
/// its file: it does once its lease reaper (a task) saw it dropped.
async fn meta_store_closed(dir: &std::path::Path) {
    let file = std::fs::File::open(dir.join("meta.redb")).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the meta store stays open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inserts rows `ids` of the test's schema into `collection` (into `partition`, if given)
/// through the CLI, from a JSON lines file `file` under `dir`.
fn insert_ids(
    dir: &std::path::Path,
    endpoint: &str,
    collection: &str,
    partition: Option<&str>,
    file: &str,
    ids: std::ops::Range<i64>,
) -> String {
    let lines: Vec<String> = ids
        .map(|i| format!(r#"{{"id": {i}, "title": "t{i}", "vec": [{i}, 0.5, 1]}}"#))
        .collect();
    ok(
        insert_lines(dir, endpoint, collection, partition, file, &lines),
        file,
    )
}

/// The ids of `collection`'s rows, as a query through the CLI reads them.
fn query_ids(endpoint: &str, collection: &str) -> Vec<i64> {
    let args = [
        "query",
        "--node",
        endpoint,
        "--collection",
        collection,
        "--filter",
        "id >= 0",
    ];
    let out = ok(run_cli(&args, &[], TIMEOUT), collection);
    let mut ids: Vec<i64> = out
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            row["id"].as_i64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Partitions through the CLI (the coordinator's CreatePartition / DropPartition): added, written
/// to by name, refused when badly named or the default, dropped; idempotent both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_added_written_to_and_dropped() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(create_collection(&endpoint, "parts"), "create-collection");
    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let describe = |mut coord: v1::coordinator_client::CoordinatorClient<_>| async move {
        coord
            .describe_collection(v1::DescribeCollectionRequest {
                which: Some(v1::describe_collection_request::Which::Name("parts".into())),
            })
            .await
            .unwrap()
            .into_inner()
    };

    let out = ok(
        ctl(&server, &["ctl", "create-partition", "parts", "p1"]),
        "create-partition",
    );
    assert!(out.contains("partition p1 id="), "{out}");
    let info = describe(coord.clone()).await;
    let p1 = partition_id(&info, "p1").expect("p1 recorded");
    assert_eq!(info.partitions[0].name, "_default");
    // Again: no change, the same id.
    ok(
        ctl(&server, &["ctl", "create-partition", "parts", "p1"]),
        "create-partition again",
    );
    let info = describe(coord.clone()).await;
    assert_eq!(info.partitions.len(), 2, "{:?}", info.partitions);
    assert_eq!(partition_id(&info, "p1"), Some(p1));
    for bad in ["1p", "p-1", ""] {
        let out = ctl(&server, &["ctl", "create-partition", "parts", bad]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(out.stderr.contains("partition name"), "{}", out.stderr);
    }
    let out = ctl(&server, &["ctl", "create-partition", "nope", "p1"]);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);

    // Rows into p1 by name: every insert of them is assigned to p1.
    let file = data.path().join("rows.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"id": {i}, "title": "t{i}", "vec": [{i}, 0.5, 1]}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let insert = |partition: &str| {
        run_cli(
            &[
                "insert",
                "--collection",
                "parts",
                "--file",
                file.to_str().unwrap(),
                "--partition",
                partition,
                "--coord",
                &endpoint,
            ],
            &[],
            TIMEOUT,
        )
    };
    let out = ok(insert("p1"), "insert into p1");
    assert!(out.contains("inserted 20 rows into parts"), "{out}");
    let out = insert("p2");
    assert!(!out.status.success());
    assert!(out.stderr.contains("no partition \"p2\""), "{}", out.stderr);
    let client = sluice_client::Client::new(
        std::sync::Arc::new(
            sluice_client::topology::CoordinatorTopology::connect(&endpoint).unwrap(),
        ),
        std::sync::Arc::new(sluice_client::access::RemoteAccess::new()),
        sluice_client::ClientConfig::default(),
    );
    let mut rows = 0;
    for v in &info.vchannels {
        let v = sluice_types::VChannel::new(v.as_str()).unwrap();
        let mut reader = client.read(sluice_client::ReadRequest::vchannel(&v));
        let mut here = 0;
        while here < 10 {
            let m = tokio::time::timeout(TIMEOUT, reader.next())
                .await
                .expect("rows arrive")
                .expect("stream")
                .expect("message");
            if let sluice_types::ReadMessage::Message(m) = m
                && m.message_type().ok() == Some(sluice_types::MessageType::Insert)
            {
                let h: sluice_types::message::InsertHeader = m.header().unwrap();
                assert_eq!(h.partitions[0].partition_id, p1);
                here += h.partitions[0].rows;
            }
        }
        rows += here;
    }
    assert_eq!(rows, 20);

    // The default partition stays; p1 goes (twice: no change the second time).
    let out = ctl(&server, &["ctl", "drop-partition", "parts", "_default"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("default partition"), "{}", out.stderr);
    for _ in 0..2 {
        let out = ok(
            ctl(&server, &["ctl", "drop-partition", "parts", "p1"]),
            "drop-partition",
        );
        assert!(!out.contains("partition p1"), "{out}");
    }
    let info = describe(coord.clone()).await;
    assert_eq!(partition_id(&info, "p1"), None);
    let out = insert("p1");
    assert!(!out.status.success());
    // Through the coordinator's API directly: the answer is the collection as it is now.
    let now = coord
        .create_partition(v1::CreatePartitionRequest {
            collection_name: "parts".into(),
            partition_name: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let again = partition_id(&now, "p1").expect("created again");
    assert_ne!(again, p1, "a new partition gets a new id");
    ok(insert("p1"), "insert into the new p1");
}

/// Aliases through the coordinator's API: another name every catalog call takes (describe,
/// insert), unique among names and aliases, repointed at once, kept across a restart; a
/// collection is dropped by its own name and only once its aliases are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_name_collections_until_dropped() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(create_collection(&endpoint, "first"), "create first");
    ok(create_collection(&endpoint, "second"), "create second");
    let coord = || {
        v1::coordinator_client::CoordinatorClient::new(
            sluice_proto::lazy_channel(&server.endpoint()).unwrap(),
        )
    };
    let describe = |name: &str| {
        let mut c = coord();
        let name = name.to_owned();
        async move {
            c.describe_collection(v1::DescribeCollectionRequest {
                which: Some(v1::describe_collection_request::Which::Name(name)),
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let alias = |alias: &str, collection: &str, alter: bool| {
        let mut c = coord();
        let (alias, collection_name) = (alias.to_owned(), collection.to_owned());
        async move {
            if alter {
                c.alter_alias(v1::AlterAliasRequest {
                    alias,
                    collection_name,
                })
                .await
            } else {
                c.create_alias(v1::CreateAliasRequest {
                    alias,
                    collection_name,
                })
                .await
            }
            .map(|r| r.into_inner().collection_id)
        }
    };
    let first = describe("first").await.unwrap().collection_id;
    let second = describe("second").await.unwrap().collection_id;

    assert_eq!(alias("current", "first", false).await.unwrap(), first);
    assert_eq!(describe("current").await.unwrap().collection_id, first);
    assert_eq!(alias("current", "first", false).await.unwrap(), first);
    for (a, c, alter, why) in [
        ("current", "second", false, "names another collection"),
        ("second", "first", false, "is the name of a collection"),
        ("9x", "first", false, "alias name"),
        ("missing", "first", true, "there is no alias"),
        ("other", "missing", false, "does not exist"),
    ] {
        let e = alias(a, c, alter).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{a} → {c}: {e:?}");
        assert!(e.message().contains(why), "{a} → {c}: {}", e.message());
    }
    let taken = create_collection(&endpoint, "current");
    assert!(!taken.status.success());
    assert!(
        taken.stderr.contains("an alias named \"current\" exists"),
        "{}",
        taken.stderr
    );
    let listed = coord()
        .list_aliases(v1::ListAliasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .aliases;
    assert_eq!(
        listed,
        vec![v1::CollectionAlias {
            alias: "current".into(),
            collection_name: "first".into(),
            collection_id: first,
        }]
    );
    for name in ["first", "current"] {
        let out = ctl(&server, &["ctl", "drop-collection", name]);
        assert!(!out.status.success(), "dropped {name} with an alias");
        assert!(out.stderr.contains("alias"), "{}", out.stderr);
    }

    // Repointed: the CLI's describe and insert through the alias reach the second collection.
    assert_eq!(alias("current", "second", true).await.unwrap(), second);
    let out = ok(ctl(&server, &["ctl", "describe", "current"]), "describe");
    assert!(out.contains("collection second"), "{out}");
    let file = data.path().join("rows.jsonl");
    std::fs::write(&file, r#"{"id": 7, "title": "t", "vec": [1, 2, 3]}"#).unwrap();
    let out = run_cli(
        &[
            "insert",
            "--collection",
            "current",
            "--file",
            file.to_str().unwrap(),
            "--coord",
            &endpoint,
        ],
        &[],
        TIMEOUT,
    );
    assert!(ok(out, "insert").contains("inserted 1 rows into current"));
    let first_aliases = coord()
        .list_aliases(v1::ListAliasesRequest {
            collection_name: "first".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .aliases;
    assert!(first_aliases.is_empty(), "{first_aliases:?}");
    ok(
        ctl(&server, &["ctl", "drop-collection", "first"]),
        "drop first",
    );

    // Kept across a restart.
    drop(server);
    let server = start(data.path(), logs.path());
    let mut c = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&server.endpoint()).unwrap(),
    );
    let info = c
        .describe_collection(v1::DescribeCollectionRequest {
            which: Some(v1::describe_collection_request::Which::Name(
                "current".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.collection_id, second);
    for _ in 0..2 {
        c.drop_alias(v1::DropAliasRequest {
            alias: "current".into(),
        })
        .await
        .unwrap();
    }
    let gone = ctl(&server, &["ctl", "describe", "current"]);
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
    ok(
        ctl(&server, &["ctl", "drop-collection", "second"]),
        "drop second",
    );
}

/// `sluice ctl add-field` (the coordinator's AddCollectionField): a nullable field joins the
/// schema at the next id and version; rows from before read it as null, rows after carry it;
/// a field that is not nullable, or a name in use, is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_are_added_through_the_cli_and_read_back() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(create_collection(&endpoint, "fields"), "create-collection");
    let insert = |name: &str, lines: Vec<String>| {
        let file = data.path().join(name);
        std::fs::write(&file, lines.join("\n")).unwrap();
        ok(
            run_cli(
                &[
                    "insert",
                    "--collection",
                    "fields",
                    "--file",
                    file.to_str().unwrap(),
                    "--coord",
                    &endpoint,
                ],
                &[],
                TIMEOUT,
            ),
            name,
        )
    };
    insert(
        "before.jsonl",
        (0..10)
            .map(|i| format!(r#"{{"id": {i}, "title": "t{i}", "vec": [{i}, 0.5, 1]}}"#))
            .collect(),
    );
    let out = ok(
        ctl(
            &server,
            &["ctl", "add-field", "fields", "score:float:nullable"],
        ),
        "add-field",
    );
    assert!(out.contains("schema_version=2"), "{out}");
    assert!(out.contains("field score id=5 float nullable"), "{out}");
    for (bad, why) in [
        ("plain:int64", "must be nullable"),
        ("score:int64:nullable", "used already"),
        ("nope", "unknown type"),
    ] {
        let out = ctl(&server, &["ctl", "add-field", "fields", bad]);
        assert!(!out.status.success(), "{bad} was added");
        assert!(out.stderr.contains(why), "{bad}: {}", out.stderr);
    }
    let out = ok(ctl(&server, &["ctl", "describe", "fields"]), "describe");
    assert!(out.contains("schema_version=2"), "{out}");
    assert!(!out.contains("field plain"), "{out}");
    insert(
        "after.jsonl",
        (10..15)
            .map(|i| {
                format!(r#"{{"id": {i}, "title": "t{i}", "vec": [{i}, 0.5, 1], "score": {i}.5}}"#)
            })
            .collect(),
    );
    let query = |filter: &str| {
        ok(
            run_cli(
                &[
                    "query",
                    "--node",
                    &endpoint,
                    "--collection",
                    "fields",
                    "--filter",
                    filter,
                    "--output-fields",
                    "score",
                ],
                &[],
                TIMEOUT,
            ),
            filter,
        )
    };
    let rows = query("score is null");
    assert_eq!(rows.lines().count(), 10, "{rows}");
    assert!(rows.contains(r#""score":null"#), "{rows}");
    let rows = query("score > 13");
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [r#"{"id":13,"score":13.5}"#, r#"{"id":14,"score":14.5}"#],
        "{rows}"
    );
}

/// `sluice ctl alter-field` (the coordinator's AlterCollectionField): a VARCHAR field's
/// max_length grows at the next schema version, a value up to the new limit is accepted once
/// the command returns (and one over it still refused), and after a SIGKILL and a restart the
/// WALs replay the change: both rows read back, the limit stays. A lower limit, a field that is
/// not VARCHAR or the primary key are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_varchar_max_length_is_raised_and_kept_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(create_collection(&endpoint, "notes"), "create-collection");
    let insert = |endpoint: &str, name: &str, id: i64, title: &str| {
        let file = data.path().join(name);
        let line = format!(r#"{{"id": {id}, "title": "{title}", "vec": [{id}, 0.5, 1]}}"#);
        std::fs::write(&file, line).unwrap();
        run_cli(
            &[
                "insert",
                "--collection",
                "notes",
                "--file",
                file.to_str().unwrap(),
                "--coord",
                endpoint,
            ],
            &[],
            TIMEOUT,
        )
    };
    let long = "x".repeat(40);
    ok(insert(&endpoint, "short.jsonl", 0, "short"), "insert short");
    let refused = insert(&endpoint, "long.jsonl", 1, &long);
    assert!(
        !refused.status.success(),
        "40 bytes over max_length 32 were accepted"
    );

    let alter = |server: &Proc, field: &str, n: &str| {
        ctl(
            server,
            &["ctl", "alter-field", "notes", field, "--max-length", n],
        )
    };
    let out = ok(alter(&server, "title", "48"), "alter-field");
    assert!(out.contains("schema_version=2"), "{out}");
    assert!(out.contains("max_length 48"), "{out}");
    for (field, n, why) in [
        ("title", "40", "only grows"),
        ("title", "48", "already"),
        ("meta", "64", "not VARCHAR"),
        ("id", "64", "not VARCHAR"),
        ("nope", "64", "no field"),
    ] {
        let out = alter(&server, field, n);
        assert!(!out.status.success(), "{field} {n} was accepted");
        assert!(out.stderr.contains(why), "{field} {n}: {}", out.stderr);
    }
    ok(insert(&endpoint, "long.jsonl", 1, &long), "insert long");
    let over = insert(&endpoint, "over.jsonl", 2, &"y".repeat(49));
    assert!(
        !over.status.success(),
        "49 bytes over max_length 48 were accepted"
    );

    server.kill();
    drop(server);
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    let out = ok(ctl(&server, &["ctl", "describe", "notes"]), "describe");
    assert!(
        out.contains("schema_version=2") && out.contains("max_length 48"),
        "{out}"
    );
    let rows = ok(
        run_cli(
            &[
                "query",
                "--node",
                &endpoint,
                "--collection",
                "notes",
                "--filter",
                "id >= 0",
                "--output-fields",
                "title",
            ],
            &[],
            TIMEOUT,
        ),
        "query",
    );
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            r#"{"id":0,"title":"short"}"#.to_owned(),
            format!(r#"{{"id":1,"title":"{long}"}}"#)
        ],
        "{rows}"
    );
    ok(
        insert(&endpoint, "long2.jsonl", 3, &long),
        "insert long after the restart",
    );
}

/// `sluice ctl truncate` (the coordinator's TruncateCollection): sealed and growing rows of
/// every partition go, the partitions stay under their names with new ids, rows written after
/// are read as usual, and after a SIGKILL and a restart the old rows stay gone. Then a
/// truncation cut short after the catalog recorded the new ids (as a crash leaves it: the old
/// ids in `truncating_partition_ids`, written into the stopped server's meta store) is
/// finished by the same call again, which drops the old rows and empties nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_collection_stays_empty_across_a_restart_and_a_cut_short_one_is_finished() {
    use prost::Message as _;
    use sluice_meta::MetaStore as _;
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(create_collection(&endpoint, "trunc"), "create-collection");
    ok(
        ctl(&server, &["ctl", "create-partition", "trunc", "p1"]),
        "create-partition",
    );
    let dir = data.path();
    insert_ids(dir, &endpoint, "trunc", None, "a.jsonl", 0..10);
    ok(ctl(&server, &["ctl", "flush", "trunc"]), "flush");
    insert_ids(dir, &endpoint, "trunc", None, "b.jsonl", 10..20);
    insert_ids(dir, &endpoint, "trunc", Some("p1"), "c.jsonl", 20..25);
    assert_eq!(query_ids(&endpoint, "trunc"), (0..25).collect::<Vec<_>>());
    let describe = |endpoint: String| async move {
        v1::coordinator_client::CoordinatorClient::new(
            sluice_proto::lazy_channel(&endpoint).unwrap(),
        )
        .describe_collection(v1::DescribeCollectionRequest {
            which: Some(v1::describe_collection_request::Which::Name("trunc".into())),
        })
        .await
        .unwrap()
        .into_inner()
    };
    let before = describe(endpoint.clone()).await;

    let out = ok(ctl(&server, &["ctl", "truncate", "trunc"]), "truncate");
    assert!(
        out.contains("partition _default") && out.contains("partition p1"),
        "{out}"
    );
    let after = describe(endpoint.clone()).await;
    let names = |i: &v1::CollectionInfo| {
        i.partitions
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&after), names(&before));
    for p in &after.partitions {
        assert_ne!(
            partition_id(&before, &p.name),
            Some(p.partition_id),
            "{p:?} kept its id"
        );
    }
    assert!(after.truncating_partition_ids.is_empty(), "{after:?}");
    assert_eq!(after.schema, before.schema);
    assert!(query_ids(&endpoint, "trunc").is_empty());
    insert_ids(dir, &endpoint, "trunc", None, "d.jsonl", 100..103);
    insert_ids(dir, &endpoint, "trunc", Some("p1"), "e.jsonl", 103..105);
    assert_eq!(
        query_ids(&endpoint, "trunc"),
        (100..105).collect::<Vec<_>>()
    );
    let out = ctl(&server, &["ctl", "truncate", "missing"]);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);

    server.kill();
    drop(server);
    let mut server = start(dir, logs.path());
    let endpoint = server.endpoint();
    assert_eq!(
        query_ids(&endpoint, "trunc"),
        (100..105).collect::<Vec<_>>()
    );

    // What a crash after the record and before the drops leaves: the WALs know the new ids
    // (created here as partitions of other names), the record names them under the old names
    // and keeps the old ids to drop.
    for spare in ["x0", "x1"] {
        ok(
            ctl(&server, &["ctl", "create-partition", "trunc", spare]),
            "create a spare partition",
        );
    }
    let info = describe(endpoint.clone()).await;
    server.kill();
    drop(server);
    {
        let meta = sluice_meta::embedded::EmbeddedStore::open(dir.join("meta.redb"))
            .expect("open the meta store");
        let key = sluice_coord::catalog::collection_key("sluice", &info.collection_id.to_string());
        let mut cut = info.clone();
        let spare = |n: &str| partition_id(&info, n).unwrap();
        cut.truncating_partition_ids = vec![spare("_default"), spare("p1")];
        cut.partitions = vec![
            v1::PartitionInfo {
                partition_id: spare("x0"),
                name: "_default".into(),
            },
            v1::PartitionInfo {
                partition_id: spare("x1"),
                name: "p1".into(),
            },
        ];
        let kv = meta.get(&key).await.unwrap().expect("the record");
        meta.put(
            &key,
            bytes::Bytes::from(cut.encode_to_vec()),
            sluice_meta::Condition::ModRevision(kv.mod_revision),
            None,
        )
        .await
        .expect("write the cut-short record");
    }
    meta_store_closed(dir).await;
    let server = start(dir, logs.path());
    let endpoint = server.endpoint();
    // Rows written under the new ids before the call finishes stay.
    insert_ids(dir, &endpoint, "trunc", None, "f.jsonl", 200..202);
    let out = ok(
        ctl(&server, &["ctl", "truncate", "trunc"]),
        "finish the truncation",
    );
    assert!(
        out.contains("partition _default") && out.contains("partition p1"),
        "{out}"
    );
    let finished = describe(endpoint.clone()).await;
    assert!(finished.truncating_partition_ids.is_empty(), "{finished:?}");
    assert_eq!(names(&finished), ["_default", "p1"]);
    assert_eq!(query_ids(&endpoint, "trunc"), vec![200, 201]);
    insert_ids(dir, &endpoint, "trunc", Some("p1"), "g.jsonl", 300..301);
    assert_eq!(query_ids(&endpoint, "trunc"), vec![200, 201, 300]);
}

/// `sluice ctl rename` (the coordinator's RenameCollection): the collection keeps its id, rows
/// and aliases under the new name, reads and writes take the new name at once, the old name is
/// free again, and all of it holds after a SIGKILL and a restart (the WALs replay the rename).
/// The same name, an unknown collection, an alias, a name in use and a bad name are refused
/// and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_renamed_and_keep_their_rows_and_aliases() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(create_collection(&endpoint, "before"), "create before");
    ok(create_collection(&endpoint, "taken"), "create taken");
    let insert = |endpoint: &str, collection: &str, file: &str, ids: std::ops::Range<i64>| {
        insert_ids(data.path(), endpoint, collection, None, file, ids)
    };
    let ids = query_ids;
    insert(&endpoint, "before", "first.jsonl", 0..10);
    let id = ok(ctl(&server, &["ctl", "describe", "before"]), "describe");
    let id = id
        .split_whitespace()
        .find(|w| w.starts_with("id="))
        .unwrap()
        .to_owned();
    v1::coordinator_client::CoordinatorClient::new(sluice_proto::lazy_channel(&endpoint).unwrap())
        .create_alias(v1::CreateAliasRequest {
            alias: "nick".into(),
            collection_name: "before".into(),
        })
        .await
        .expect("create the alias");

    let out = ok(
        ctl(&server, &["ctl", "rename", "before", "after"]),
        "rename",
    );
    assert!(out.contains("after") && out.contains(&id), "{out}");
    assert!(out.contains("schema_version=2"), "{out}");
    assert_eq!(ids(&endpoint, "after"), (0..10).collect::<Vec<_>>());
    insert(&endpoint, "after", "second.jsonl", 10..15);
    assert_eq!(ids(&endpoint, "after"), (0..15).collect::<Vec<_>>());
    let out = ctl(&server, &["ctl", "describe", "before"]);
    assert!(
        !out.status.success(),
        "the old name still names it: {}",
        out.stdout
    );
    let out = ok(ctl(&server, &["ctl", "describe", "nick"]), "describe alias");
    assert!(out.contains("after") && out.contains(&id), "{out}");

    for (args, why) in [
        (["after", "after"], "named \"after\" already"),
        (["missing", "other"], "missing"),
        (["nick", "other"], "alias"),
        (["after", "taken"], "named \"taken\" exists"),
        (["after", "nick"], "alias named \"nick\" exists"),
        (["after", "9bad"], "must be 1-"),
    ] {
        let out = ctl(&server, &["ctl", "rename", args[0], args[1]]);
        assert!(!out.status.success(), "{args:?} was renamed");
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
    }
    let out = ok(
        ctl(&server, &["ctl", "describe", "after"]),
        "describe after",
    );
    assert!(out.contains("schema_version=2"), "{out}");

    // The old name is free for a new collection.
    ok(
        create_collection(&endpoint, "before"),
        "create before again",
    );
    assert!(ids(&endpoint, "before").is_empty());

    server.kill();
    drop(server);
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    assert_eq!(ids(&endpoint, "after"), (0..15).collect::<Vec<_>>());
    assert!(ids(&endpoint, "before").is_empty());
    let out = ok(ctl(&server, &["ctl", "describe", "nick"]), "describe alias");
    assert!(out.contains("after") && out.contains(&id), "{out}");

    // A name leading to no collection (what a rename cut short by a crash leaves once the
    // collection is dropped by its other name) is let go when a collection or a rename
    // wants it.
    let mut server = server;
    server.kill();
    drop(server);
    {
        use sluice_meta::MetaStore as _;
        let meta = sluice_meta::embedded::EmbeddedStore::open(data.path().join("meta.redb"))
            .expect("open the meta store");
        for stale in ["ghost", "ghost2"] {
            meta.put(
                &sluice_coord::catalog::name_key("sluice", stale),
                bytes::Bytes::from_static(b"999999"),
                sluice_meta::Condition::KeyAbsent,
                None,
            )
            .await
            .expect("write a stale name");
        }
    }
    meta_store_closed(data.path()).await;
    let server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    let out = ctl(&server, &["ctl", "describe", "ghost"]);
    assert!(
        !out.status.success(),
        "a stale name describes: {}",
        out.stdout
    );
    ok(
        create_collection(&endpoint, "ghost"),
        "create over a stale name",
    );
    insert(&endpoint, "ghost", "ghost.jsonl", 0..3);
    assert_eq!(ids(&endpoint, "ghost"), vec![0, 1, 2]);
    ok(
        ctl(&server, &["ctl", "rename", "after", "ghost2"]),
        "rename onto a stale name",
    );
    assert_eq!(ids(&endpoint, "ghost2"), (0..15).collect::<Vec<_>>());
}

/// A SPARSE_FLOAT_VECTOR field through the CLI: created, filled from JSON lines
/// (`{"index": weight}`), searched by inner product over sealed (flushed) and growing rows —
/// a row sharing no index with the query is no hit — and after a SIGKILL and a restart the
/// same hits come back from the Parquet segment and the WAL. A bad sparse row is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_vectors_are_searched_by_inner_product_and_recovered_after_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(
        create_with_fields(
            &endpoint,
            "terms",
            &["id:int64:pk", "sv:sparse_float_vector"],
            1,
        ),
        "create-collection",
    );
    let insert = |endpoint: &str, file: &str, lines: &[&str]| {
        insert_lines(data.path(), endpoint, "terms", None, file, lines)
    };
    ok(
        insert(
            &endpoint,
            "sealed.jsonl",
            &[
                r#"{"id": 1, "sv": {"3": 1.0, "9": 2.0}}"#,
                r#"{"id": 2, "sv": {"4": 5.0}}"#,
            ],
        ),
        "insert sealed",
    );
    ok(ctl(&server, &["ctl", "flush", "terms"]), "flush");
    ok(
        insert(
            &endpoint,
            "growing.jsonl",
            &[
                r#"{"id": 3, "sv": {"9": 0.5}}"#,
                r#"{"id": 4, "sv": {"3": 4.0}}"#,
            ],
        ),
        "insert growing",
    );
    let bad = insert(&endpoint, "bad.jsonl", &[r#"{"id": 5, "sv": {"3": -1.0}}"#]);
    assert!(!bad.status.success(), "a negative weight was accepted");
    assert!(bad.stderr.contains("not negative"), "{}", bad.stderr);

    let search = |endpoint: &str| {
        let out = ok(
            run_cli(
                &[
                    "search",
                    "--node",
                    endpoint,
                    "--collection",
                    "terms",
                    "--vector",
                    r#"{"3": 1.0, "9": 1.0}"#,
                    "--output-fields",
                    "sv",
                ],
                &[],
                TIMEOUT,
            ),
            "search",
        );
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| {
                (
                    v["id"].as_i64().unwrap(),
                    v["_score"].as_f64().unwrap(),
                    v["sv"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let want = vec![
        (4, 4.0, serde_json::json!({"3": 4.0})),
        (1, 3.0, serde_json::json!({"3": 1.0, "9": 2.0})),
        (3, 0.5, serde_json::json!({"9": 0.5})),
    ];
    assert_eq!(search(&endpoint), want);

    server.kill();
    drop(server);
    let server = start(data.path(), logs.path());
    assert_eq!(search(&server.endpoint()), want);
    assert_eq!(query_ids(&server.endpoint(), "terms"), vec![1, 2, 3, 4]);
}

/// Full-text search through the CLI: a VARCHAR field with the standard analyzer and a BM25
/// function's output field; rows flushed and growing; `search --text` answers by
/// BM25 (rare terms weigh more, and so do short texts), the same hits and scores
/// after a SIGKILL and a restart (the sealed rows from Parquet, the rest from the WAL); a row
/// giving the output field is refused, and so is asking for it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_searched_by_bm25_and_recovered_after_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    ok(
        create_with_fields(
            &endpoint,
            "notes",
            &[
                "id:int64:pk",
                "body:varchar:200:analyzer",
                "terms:sparse_float_vector:bm25=body",
            ],
            1,
        ),
        "create-collection",
    );
    let insert = |endpoint: &str, file: &str, lines: &[&str]| {
        insert_lines(data.path(), endpoint, "notes", None, file, lines)
    };
    ok(
        insert(
            &endpoint,
            "sealed.jsonl",
            &[
                r#"{"id": 1, "body": "Tide tables for the harbor"}"#,
                r#"{"id": 2, "body": "The harbor master keeps the harbor log"}"#,
                r#"{"id": 3, "body": "A long note about gardens, roses, soil and the harbor"}"#,
            ],
        ),
        "insert sealed",
    );
    ok(ctl(&server, &["ctl", "flush", "notes"]), "flush");
    ok(
        insert(
            &endpoint,
            "growing.jsonl",
            &[
                r#"{"id": 4, "body": "Roses in the garden"}"#,
                r#"{"id": 5, "body": "HARBOR harbor Harbor"}"#,
            ],
        ),
        "insert growing",
    );
    let bad = insert(
        &endpoint,
        "bad.jsonl",
        &[r#"{"id": 6, "body": "x", "terms": {"1": 1.0}}"#],
    );
    assert!(
        !bad.status.success(),
        "a row with the output field was accepted"
    );
    assert!(bad.stderr.contains("function's output"), "{}", bad.stderr);

    let search = |endpoint: &str, output: &str| {
        run_cli(
            &[
                "search",
                "--node",
                endpoint,
                "--collection",
                "notes",
                "--text",
                "harbor roses",
                "--output-fields",
                output,
            ],
            &[],
            TIMEOUT,
        )
    };
    let hits = |endpoint: &str| {
        ok(search(endpoint, "body"), "search")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["id"].as_i64().unwrap(), v["_score"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    let before = hits(&endpoint);
    let ids: Vec<i64> = before.iter().map(|h| h.0).collect();
    // "harbor" is in every row (idf ln(1 + 0.5 / 5.5)), "roses" in 2 of 5 (ln(1 + 3.5 / 2.5)):
    // the rows with roses first, the short one (4 terms; 5.8 on average) ahead of the long one
    // (10); then "harbor" thrice in 3 terms, twice in 7, once in 5. Row 4 by hand:
    // 0.8755 · 2.2 / (1 + 1.2 · (0.25 + 0.75 · 4 / 5.8)) = 1.0028.
    assert_eq!(ids, vec![4, 3, 5, 2, 1], "{before:?}");
    assert!((before[0].1 - 1.0028).abs() < 1e-3, "{before:?}");
    assert!(before.windows(2).all(|w| w[0].1 > w[1].1), "{before:?}");
    let refused = search(&endpoint, "terms");
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("BM25 function's output"),
        "{}",
        refused.stderr
    );

    server.kill();
    drop(server);
    let server = start(data.path(), logs.path());
    let after = hits(&server.endpoint());
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-5, "{after:?} vs {before:?}");
    }
}

/// Databases through the CLI and the coordinator (CreateDatabase, DropDatabase,
/// ListDatabases, AlterDatabaseProperties): a collection named `db.name` is `name` in database
/// `db` — created there only while it exists, with rows of its own beside a `default`
/// collection of the same name; aliases stay in their database; a rename moves a collection
/// into another database; a database with collections is not dropped; all of it holds after a
/// SIGKILL and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_hold_their_own_collections_and_go_only_when_empty() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    let refused = |out: support::CliOutput, why: &str| {
        assert!(!out.status.success(), "not refused: {}", out.stdout);
        assert!(out.stderr.contains(why), "{why}: {}", out.stderr);
    };
    refused(
        create_collection(&endpoint, "tenant.docs"),
        "database \"tenant\" does not exist",
    );
    ok(
        ctl(&server, &["ctl", "create-database", "tenant"]),
        "create tenant",
    );
    refused(
        ctl(&server, &["ctl", "create-database", "tenant"]),
        "exists",
    );
    refused(
        ctl(&server, &["ctl", "create-database", "default"]),
        "default database cannot be created",
    );
    refused(
        ctl(&server, &["ctl", "create-database", "9x"]),
        "must be 1-",
    );
    refused(
        create_collection(&endpoint, "default.docs"),
        "named without it",
    );
    ok(create_collection(&endpoint, "docs"), "create docs");
    ok(
        create_collection(&endpoint, "tenant.docs"),
        "create tenant.docs",
    );
    insert_ids(data.path(), &endpoint, "docs", None, "a.jsonl", 0..3);
    insert_ids(
        data.path(),
        &endpoint,
        "tenant.docs",
        None,
        "b.jsonl",
        10..15,
    );
    assert_eq!(query_ids(&endpoint, "docs"), vec![0, 1, 2]);
    assert_eq!(
        query_ids(&endpoint, "tenant.docs"),
        (10..15).collect::<Vec<_>>()
    );

    let mut coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&endpoint).unwrap(),
    );
    let alias = |alias: &str, collection: &str| v1::CreateAliasRequest {
        alias: alias.into(),
        collection_name: collection.into(),
    };
    coord
        .create_alias(alias("tenant.nick", "tenant.docs"))
        .await
        .expect("an alias in the collection's database");
    for (a, c) in [("nick", "tenant.docs"), ("tenant.other", "docs")] {
        let e = coord.create_alias(alias(a, c)).await.unwrap_err();
        assert!(e.message().contains("different databases"), "{a}: {e}");
    }
    let e = coord
        .create_alias(alias("ghost.nick", "docs"))
        .await
        .unwrap_err();
    assert!(e.message().contains("different databases"), "{e}");
    let listed = coord
        .alter_database_properties(v1::AlterDatabasePropertiesRequest {
            name: "tenant".into(),
            set: [("owner".to_owned(), "team-a".to_owned())].into(),
            delete_keys: Vec::new(),
        })
        .await
        .expect("alter the database")
        .into_inner();
    assert_eq!(listed.properties["owner"], "team-a");

    refused(
        ctl(&server, &["ctl", "drop-database", "tenant"]),
        "has 1 collection(s) (tenant.docs)",
    );
    refused(
        ctl(&server, &["ctl", "drop-database", "default"]),
        "cannot be dropped",
    );
    // Moving a collection with aliases to another database is refused; without, it moves.
    ok(
        ctl(&server, &["ctl", "create-database", "archive"]),
        "create archive",
    );
    refused(
        ctl(&server, &["ctl", "rename", "tenant.docs", "archive.docs"]),
        "has aliases",
    );
    refused(
        ctl(&server, &["ctl", "rename", "docs", "nowhere.docs"]),
        "database \"nowhere\" does not exist",
    );
    ok(
        ctl(&server, &["ctl", "rename", "docs", "archive.docs"]),
        "move docs",
    );
    assert_eq!(query_ids(&endpoint, "archive.docs"), vec![0, 1, 2]);

    server.kill();
    drop(server);
    let mut server = start(data.path(), logs.path());
    let endpoint = server.endpoint();
    let out = ok(ctl(&server, &["ctl", "databases"]), "databases");
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["default", "archive", "tenant", "3"], "{out}");
    assert_eq!(query_ids(&endpoint, "archive.docs"), vec![0, 1, 2]);
    assert_eq!(
        query_ids(&endpoint, "tenant.docs"),
        (10..15).collect::<Vec<_>>()
    );
    let out = ok(
        ctl(&server, &["ctl", "describe", "tenant.nick"]),
        "describe alias",
    );
    assert!(out.contains("tenant.docs"), "{out}");
    refused(
        ctl(&server, &["ctl", "drop-database", "archive"]),
        "has 1 collection(s)",
    );
    ok(
        ctl(&server, &["ctl", "drop-collection", "archive.docs"]),
        "drop archive.docs",
    );
    ok(
        ctl(&server, &["ctl", "drop-database", "archive"]),
        "drop archive",
    );
    ok(
        ctl(&server, &["ctl", "drop-database", "archive"]),
        "drop a missing database",
    );
    refused(
        create_collection(&endpoint, "archive.docs"),
        "database \"archive\" does not exist",
    );
    let out = ok(ctl(&server, &["ctl", "databases"]), "databases");
    assert!(
        out.contains("2 databases") && !out.contains("archive"),
        "{out}"
    );
    server.kill();
}

/// `database.max.collections` caps a database's collections exactly, also when creates race
/// (each rewrites the database record guarded by its revision) and for renames into it; the
/// properties Sluice acts on refuse values they do not take; `default` takes properties too,
/// and they are kept across a SIGKILL and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_holds_at_most_its_max_collections_even_when_creates_race() {
    use sluice_types::database::MAX_COLLECTIONS;
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let coord = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&server.endpoint()).unwrap(),
    );
    let schema = id_and_vector;
    let create = |name: String| {
        let mut coord = coord.clone();
        let schema = schema(&name);
        async move {
            coord
                .create_collection(v1::CreateCollectionRequest {
                    schema: Some(schema),
                    partition_names: Vec::new(),
                    properties: Default::default(),
                })
                .await
        }
    };
    let set = |name: &str, key: &str, value: &str| v1::AlterDatabasePropertiesRequest {
        name: name.into(),
        set: [(key.to_owned(), value.to_owned())].into(),
        delete_keys: Vec::new(),
    };
    let mut c = coord.clone();
    for (key, bad) in [
        (MAX_COLLECTIONS, "-1"),
        ("database.force.deny.writing", "yes"),
        ("database.replica.number", "0"),
    ] {
        let e = c
            .create_database(v1::CreateDatabaseRequest {
                name: "capped".into(),
                properties: [(key.to_owned(), bad.to_owned())].into(),
            })
            .await
            .unwrap_err();
        assert!(e.message().contains(key), "{key}={bad}: {e}");
    }
    c.create_database(v1::CreateDatabaseRequest {
        name: "capped".into(),
        properties: [(MAX_COLLECTIONS.to_owned(), "3".to_owned())].into(),
    })
    .await
    .expect("create capped");
    let e = c
        .alter_database_properties(set("capped", MAX_COLLECTIONS, "three"))
        .await
        .unwrap_err();
    assert!(e.message().contains(MAX_COLLECTIONS), "{e}");

    // Eight creates at once into a database holding at most three: exactly three land.
    let racing: Vec<_> = (0..8)
        .map(|i| tokio::spawn(create(format!("capped.c{i}"))))
        .collect();
    let mut landed = 0;
    for r in racing {
        match r.await.unwrap() {
            Ok(_) => landed += 1,
            Err(e) => assert!(
                e.message().contains(MAX_COLLECTIONS)
                    && e.message()
                        .contains("exceeded the limit number of collections"),
                "{e}"
            ),
        }
    }
    assert_eq!(landed, 3, "collections created under a cap of 3");
    let listed = c
        .list_collections(v1::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections;
    let in_capped = listed
        .iter()
        .filter(|i| {
            i.schema
                .as_ref()
                .is_some_and(|s| s.name.starts_with("capped."))
        })
        .count();
    assert_eq!(in_capped, 3);

    // A rename into the full database is refused; out of it and within it is not.
    create(String::from("outside"))
        .await
        .expect("create outside");
    refused_rename(&server, "outside", "capped.outside", MAX_COLLECTIONS);
    let first = listed
        .iter()
        .filter_map(|i| i.schema.as_ref().map(|s| s.name.clone()))
        .find(|n| n.starts_with("capped."))
        .unwrap();
    ok(
        ctl(&server, &["ctl", "rename", &first, "capped.renamed"]),
        "rename within the full database",
    );
    ok(
        ctl(&server, &["ctl", "rename", "capped.renamed", "moved"]),
        "move out of it",
    );
    ok(
        ctl(&server, &["ctl", "rename", "outside", "capped.outside"]),
        "move into it once there is room",
    );

    // `default` takes properties (its record is written then) and caps its collections too.
    // (it holds `moved`)
    c.alter_database_properties(set("default", MAX_COLLECTIONS, "1"))
        .await
        .expect("alter default");
    let e = create(String::from("third")).await.unwrap_err();
    assert!(e.message().contains("database \"default\" holds 1"), "{e}");

    server.kill();
    drop(server);
    let server = start(data.path(), logs.path());
    let mut c = v1::coordinator_client::CoordinatorClient::new(
        sluice_proto::lazy_channel(&server.endpoint()).unwrap(),
    );
    let databases = c
        .list_databases(v1::ListDatabasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .databases;
    let names: Vec<&str> = databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["default", "capped"]);
    assert_eq!(databases[0].properties[MAX_COLLECTIONS], "1");
    assert_eq!(databases[0].database_id, 1);
    assert_eq!(databases[1].properties[MAX_COLLECTIONS], "3");
    c.alter_database_properties(v1::AlterDatabasePropertiesRequest {
        name: "default".into(),
        set: Default::default(),
        delete_keys: vec![MAX_COLLECTIONS.into()],
    })
    .await
    .expect("lift default's cap");
    let mut coord = c;
    coord
        .create_collection(v1::CreateCollectionRequest {
            schema: Some(schema("third")),
            partition_names: Vec::new(),
            properties: Default::default(),
        })
        .await
        .expect("created once the cap is gone");
}

fn refused_rename(server: &Proc, from: &str, to: &str, why: &str) {
    let out = ctl(server, &["ctl", "rename", from, to]);
    assert!(!out.status.success(), "not refused: {}", out.stdout);
    assert!(out.stderr.contains(why), "{why}: {}", out.stderr);
}

/// Users, roles and grants are kept by the coordinator across a SIGKILL and restart: passwords
/// are checked (a wrong one, an unknown user: UNAUTHENTICATED alike), changed only with the
/// old one unless reset, `root` has `Milvus` until changed; roles are given and taken, grants
/// are checked against the privileges that exist, a role given to a user goes only by force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_are_kept_checked_and_survive_a_restart() {
    use v1::coordinator_client::CoordinatorClient;
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), logs.path());
    let mut c = CoordinatorClient::new(sluice_proto::lazy_channel(&server.endpoint()).unwrap());
    let auth = |name: &str, password: &str| v1::AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let grant = |object_type: &str, object_name: &str, privilege: &str| v1::Grant {
        object_type: object_type.into(),
        object_name: object_name.into(),
        database: "default".into(),
        privilege: privilege.into(),
    };
    assert_eq!(
        c.authenticate(auth("root", "Milvus"))
            .await
            .expect("root's default password")
            .into_inner()
            .roles,
        ["admin"]
    );
    c.create_user(v1::CreateUserRequest {
        name: "alice".into(),
        password: "alice-secret".into(),
    })
    .await
    .expect("create alice");
    for (name, password) in [("alice", "alice-wrong"), ("nobody", "alice-secret")] {
        let e = c.authenticate(auth(name, password)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{name}: {e}");
    }
    for (name, password, why) in [
        ("alice", "whatever", "exists"),
        ("9lives", "whatever", "user name"),
        ("bob", "short", "6 to 256"),
    ] {
        let e = c
            .create_user(v1::CreateUserRequest {
                name: name.into(),
                password: password.into(),
            })
            .await
            .unwrap_err();
        assert!(e.message().contains(why), "{name}: {e}");
    }
    let e = c
        .update_password(v1::UpdatePasswordRequest {
            name: "alice".into(),
            old_password: "guess-again".into(),
            new_password: "alice-new".into(),
            reset: false,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("old password"), "{e}");
    c.update_password(v1::UpdatePasswordRequest {
        name: "alice".into(),
        old_password: "alice-secret".into(),
        new_password: "alice-new".into(),
        reset: false,
    })
    .await
    .expect("with the old password");
    c.update_password(v1::UpdatePasswordRequest {
        name: "root".into(),
        old_password: String::new(),
        new_password: "root-secret".into(),
        reset: true,
    })
    .await
    .expect("reset root's password");

    c.create_role(v1::CreateRoleRequest {
        name: "readers".into(),
    })
    .await
    .expect("create readers");
    for (bad, why) in [
        (grant("Table", "docs", "Search"), "object type"),
        (grant("Collection", "docs", "Fly"), "Fly"),
        (grant("Collection", "", "Search"), "names its object"),
    ] {
        let e = c
            .alter_role_grants(v1::AlterRoleGrantsRequest {
                role: "readers".into(),
                grant: vec![bad],
                revoke: Vec::new(),
            })
            .await
            .unwrap_err();
        assert!(e.message().contains(why), "{why}: {e}");
    }
    let role = c
        .alter_role_grants(v1::AlterRoleGrantsRequest {
            role: "readers".into(),
            grant: vec![
                grant("Collection", "docs", "Search"),
                grant("Collection", "*", "CollectionReadOnly"),
                grant("Collection", "docs", "Search"),
            ],
            revoke: Vec::new(),
        })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(role.grants.len(), 2, "a grant given twice is kept once");
    // A custom privilege group: granted by name once it exists, not dropped while granted.
    let e = c
        .alter_role_grants(v1::AlterRoleGrantsRequest {
            role: "readers".into(),
            grant: vec![grant("Collection", "*", "lookers")],
            revoke: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("lookers"), "{e}");
    c.create_privilege_group(v1::CreatePrivilegeGroupRequest {
        name: "lookers".into(),
    })
    .await
    .expect("create lookers");
    let e = c
        .alter_privilege_group(v1::AlterPrivilegeGroupRequest {
            name: "lookers".into(),
            add: vec!["Search".into(), "CollectionAdmin".into()],
            remove: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("CollectionAdmin"), "{e}");
    c.alter_privilege_group(v1::AlterPrivilegeGroupRequest {
        name: "lookers".into(),
        add: vec!["Search".into(), "Query".into()],
        remove: Vec::new(),
    })
    .await
    .expect("fill lookers");
    c.alter_role_grants(v1::AlterRoleGrantsRequest {
        role: "readers".into(),
        grant: vec![grant("Collection", "*", "lookers")],
        revoke: Vec::new(),
    })
    .await
    .expect("grant lookers");
    let e = c
        .drop_privilege_group(v1::DropPrivilegeGroupRequest {
            name: "lookers".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("readers"), "{e}");
    c.alter_role_grants(v1::AlterRoleGrantsRequest {
        role: "readers".into(),
        grant: Vec::new(),
        revoke: vec![grant("Collection", "*", "lookers")],
    })
    .await
    .expect("revoke lookers");
    let e = c
        .alter_role_grants(v1::AlterRoleGrantsRequest {
            role: "admin".into(),
            grant: vec![grant("Global", "*", "All")],
            revoke: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("admin"), "{e}");
    let e = c
        .alter_user_roles(v1::AlterUserRolesRequest {
            user: "alice".into(),
            add: vec!["ghosts".into()],
            remove: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("does not exist"), "{e}");
    c.alter_user_roles(v1::AlterUserRolesRequest {
        user: "alice".into(),
        add: vec!["readers".into()],
        remove: Vec::new(),
    })
    .await
    .expect("give alice readers");

    server.kill();
    drop(server);
    let mut server = start(data.path(), logs.path());
    let mut c = CoordinatorClient::new(sluice_proto::lazy_channel(&server.endpoint()).unwrap());
    let alice = c
        .authenticate(auth("alice", "alice-new"))
        .await
        .expect("alice's new password after the restart")
        .into_inner();
    assert_eq!(alice.roles, ["readers"]);
    assert!(c.authenticate(auth("alice", "alice-secret")).await.is_err());
    assert!(c.authenticate(auth("root", "Milvus")).await.is_err());
    c.authenticate(auth("root", "root-secret"))
        .await
        .expect("root's new password");
    let users = c
        .list_users(v1::ListUsersRequest {})
        .await
        .unwrap()
        .into_inner()
        .users;
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["root", "alice"]);
    let roles = c
        .list_roles(v1::ListRolesRequest {})
        .await
        .unwrap()
        .into_inner()
        .roles;
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["admin", "public", "readers"]);
    assert_eq!(roles[2].grants.len(), 2);
    let groups = c
        .list_privilege_groups(v1::ListPrivilegeGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 10, "nine built-in groups and lookers");
    assert!(groups[..9].iter().all(|g| g.builtin));
    assert_eq!(groups[9].name, "lookers");
    assert_eq!(groups[9].privileges, ["Query", "Search"]);

    let e = c
        .drop_role(v1::DropRoleRequest {
            name: "readers".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("alice"), "{e}");
    c.drop_role(v1::DropRoleRequest {
        name: "readers".into(),
        force: true,
    })
    .await
    .expect("forced");
    let alice = c.authenticate(auth("alice", "alice-new")).await.unwrap();
    assert!(alice.into_inner().roles.is_empty());
    for (name, why) in [("admin", "built-in"), ("public", "built-in")] {
        let e = c
            .drop_role(v1::DropRoleRequest {
                name: name.into(),
                force: true,
            })
            .await
            .unwrap_err();
        assert!(e.message().contains(why), "{name}: {e}");
    }
    let e = c
        .drop_user(v1::DropUserRequest {
            name: "root".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("cannot be dropped"), "{e}");
    // An operator who lost a password sets it from the CLI, the password on stdin.
    let endpoint = server.endpoint();
    let out = support::run_cli_input(
        &["ctl", "reset-password", "alice", "--coord", &endpoint],
        &[],
        Some("alice-from-cli\n"),
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.stderr);
    c.authenticate(auth("alice", "alice-from-cli"))
        .await
        .expect("the password set from the CLI");
    let out = ok(ctl(&server, &["ctl", "users"]), "users");
    assert!(
        out.contains("root roles=admin") && out.contains("alice roles="),
        "{out}"
    );
    c.drop_user(v1::DropUserRequest {
        name: "alice".into(),
    })
    .await
    .expect("drop alice");
    assert!(
        c.authenticate(auth("alice", "alice-from-cli"))
            .await
            .is_err()
    );
    server.kill();
}
