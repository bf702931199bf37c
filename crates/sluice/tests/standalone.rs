//! `sluice standalone` as a real process: produce with the CLI and with `sluice-client`, consume
//! with the CLI (every key exactly once, timestamps strictly increasing), SIGTERM (exit 0 within
//! a bound), restart on the same data directory and read the same messages again; bad flags and
//! bad config files fail with a clear message, a non-zero exit, and touch nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use sluice_client::access::RemoteAccess;
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig};
use sluice_types::message::{InsertHeader, PartitionSegmentAssignment};
use sluice_types::{MutableMessage, VChannel};
use support::{Proc, run_cli};

const CLI_MESSAGES: usize = 200;
const CLIENT_MESSAGES: usize = 5;
const VCHANNEL: &str = "sluice-dml_0_100v0";

fn start(data_dir: &std::path::Path, logs: &std::path::Path) -> Proc {
    let data_dir = data_dir.to_str().expect("utf-8 temp path");
    Proc::spawn(
        "standalone",
        &[
            "standalone",
            "--data-dir",
            data_dir,
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        logs,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One consumed message: (id, ts).
type Consumed = BTreeMap<String, (String, u64)>;

/// Consumes `want` inserts of [`VCHANNEL`] from the beginning with the CLI; checks each key
/// arrives once and timestamps strictly increase.
fn consume_all(server: &Proc, want: usize) -> Consumed {
    let limit = want.to_string();
    let endpoint = server.endpoint();
    let out = run_cli(
        &[
            "consume",
            "--coord",
            &endpoint,
            "--vchannel",
            VCHANNEL,
            "--from-beginning",
            "--limit",
            &limit,
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "consume failed: {}\n{}",
        out.status,
        out.stderr
    );
    let mut seen = Consumed::new();
    let mut last_ts = 0u64;
    for line in out.stdout.lines().filter(|l| l.starts_with("msg ")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_owned()
        };
        let ts: u64 = field("ts=").parse().expect("numeric ts");
        assert!(ts > last_ts, "timestamps must strictly increase: {line:?}");
        last_ts = ts;
        let key = field("key=");
        let previous = seen.insert(key.clone(), (field("id="), ts));
        assert!(previous.is_none(), "key {key} delivered twice");
    }
    assert_eq!(seen.len(), want, "consume printed:\n{}", out.stdout);
    seen
}

fn client_insert(vchannel: &VChannel, key: &str) -> MutableMessage {
    MutableMessage::builder(InsertHeader {
        collection_id: vchannel.collection().0,
        partitions: vec![PartitionSegmentAssignment {
            partition_id: 1,
            rows: 1,
            binary_size: 16,
            segment_id: 0,
        }],
    })
    .vchannel(vchannel)
    .property("key", key)
    .payload(b"from sluice-client".to_vec())
    .build()
    .expect("a valid insert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_restart_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let mut server = start(&data_dir, dir.path());
    let endpoint = server.endpoint();

    // N messages through the CLI (it creates the collection first).
    let count = CLI_MESSAGES.to_string();
    let out = tokio::task::block_in_place(|| {
        run_cli(
            &[
                "produce",
                "--coord",
                &endpoint,
                "--vchannel",
                VCHANNEL,
                "--create-collection",
                "--count",
                &count,
            ],
            &[],
            Duration::from_secs(60),
        )
    });
    assert!(
        out.status.success(),
        "produce failed: {}\n{}",
        out.status,
        out.stderr
    );
    let acks = out.stdout.lines().filter(|l| l.starts_with("ack ")).count();
    assert_eq!(acks, CLI_MESSAGES, "produce printed:\n{}", out.stdout);

    // A few through the Rust client, against the same process.
    let client = support::client(&endpoint, Duration::from_secs(30));
    let vchannel = VChannel::new(VCHANNEL).expect("vchannel");
    for i in 0..CLIENT_MESSAGES {
        client
            .append(client_insert(&vchannel, &format!("c{i}")))
            .await
            .expect("append through sluice-client");
    }
    drop(client);

    let want = CLI_MESSAGES + CLIENT_MESSAGES;
    let before = tokio::task::block_in_place(|| consume_all(&server, want));
    for i in 0..CLI_MESSAGES {
        assert!(before.contains_key(&format!("m{i}")), "m{i} missing");
    }
    for i in 0..CLIENT_MESSAGES {
        assert!(before.contains_key(&format!("c{i}")), "c{i} missing");
    }

    // SIGTERM: a clean exit, within a bound.
    server.signal(Signal::TERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)))
        .unwrap_or_else(|| {
            panic!(
                "standalone did not exit within 20 s of SIGTERM\n{}",
                server.stderr_tail(30)
            )
        });
    assert!(status.success(), "exit after SIGTERM: {status}");
    drop(server);

    // Restart on the same data directory: the same messages, same ids and timestamps.
    let server = start(&data_dir, dir.path());
    let after = tokio::task::block_in_place(|| consume_all(&server, want));
    assert_eq!(
        before, after,
        "the log read back differently after a restart"
    );
}

/// Runs `sluice ARGS`, expecting a quick failure whose stderr mentions `expect`.
fn expect_failure(args: &[&str], expect: &str) {
    let out = run_cli(args, &[], Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "sluice {args:?} should fail; stdout:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(expect),
        "sluice {args:?}: stderr should mention {expect:?}:\n{}",
        out.stderr
    );
}

#[test]
fn bad_flags_and_config_fail_clearly_and_touch_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().expect("utf-8 temp path");

    expect_failure(
        &[
            "standalone",
            "--data-dir",
            data,
            "--meta-backend",
            "zookeeper",
        ],
        "meta.backend",
    );
    expect_failure(
        &["standalone", "--data-dir", data, "--no-such-flag"],
        "--no-such-flag",
    );
    expect_failure(
        &["standalone", "--data-dir", data, "--lease-ttl-ms", "soon"],
        "--lease-ttl-ms",
    );

    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "listen = \"127.0.0.1:0\"\nlisten_port = 7\n").expect("write");
    let path = unknown_key.to_str().expect("utf-8 temp path");
    expect_failure(
        &["standalone", "--data-dir", data, "--config", path],
        "listen_port",
    );

    let bad_value = dir.path().join("bad.toml");
    std::fs::write(&bad_value, "[node]\nlease_ttl_ms = \"long\"\n").expect("write");
    let path = bad_value.to_str().expect("utf-8 temp path");
    expect_failure(
        &["standalone", "--data-dir", data, "--config", path],
        "lease_ttl_ms",
    );

    let missing = dir.path().join("missing.toml");
    let path = missing.to_str().expect("utf-8 temp path");
    expect_failure(
        &["standalone", "--data-dir", data, "--config", path],
        "does not exist",
    );

    // None of them got as far as creating the data directory.
    assert!(
        !data_dir.exists(),
        "a rejected configuration must not create {}",
        data_dir.display()
    );
}

/// A broadcast (one DDL to two shards of a collection on different pchannels) reaches both
/// vchannels with its broadcast header, holds its exclusive resource key until both are
/// acknowledged, and then completes with where each copy landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_vchannel_and_completes_on_acks() {
    use sluice_client::coord::CoordClient;
    use sluice_types::message::{CreateCollectionHeader, CreatePartitionHeader, ResourceKey};

    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(&dir.path().join("data"), dir.path());
    let endpoint = server.endpoint();
    let client = support::client(&endpoint, Duration::from_secs(30));
    let shards = [
        VChannel::new("sluice-dml_0_11v0").unwrap(),
        VChannel::new("sluice-dml_1_11v1").unwrap(),
    ];
    for v in &shards {
        let create = MutableMessage::builder(CreateCollectionHeader {
            collection_id: 11,
            partition_ids: vec![1],
            db_id: 1,
            schema: None,
        })
        .vchannel(v)
        .build()
        .unwrap();
        client
            .append(create)
            .await
            .expect("create collection shard");
    }
    let coord = CoordClient::connect(&endpoint).expect("endpoint");
    let key = ResourceKey {
        domain: 1,
        key: "collection-11".into(),
        shared: false,
    };
    let ddl = |partition| {
        MutableMessage::builder(CreatePartitionHeader {
            collection_id: 11,
            partition_id: partition,
        })
        .property("reason", "e2e")
        .build()
        .unwrap()
    };
    let first = tokio::spawn({
        let (coord, shards, key, msg) = (coord.clone(), shards.clone(), key.clone(), ddl(2));
        async move { coord.broadcast(&msg, &shards, &[key]).await }
    });

    // Each shard's consumer finds its copy, checks the header and acknowledges it.
    let mut seen = BTreeMap::new();
    for v in &shards {
        let copy = broadcast_copy(&client, v, None).await;
        let header = copy
            .broadcast_header()
            .expect("a valid broadcast header")
            .expect("the copy carries its broadcast header");
        assert_eq!(copy.vchannel_str(), Some(v.as_str()));
        assert_eq!(copy.property("reason"), Some("e2e"));
        assert_eq!(header.vchannels.len(), 2);
        assert_eq!(header.resource_keys, vec![key.clone()]);
        seen.insert(v.as_str().to_owned(), (header.broadcast_id, copy.id()));
    }
    assert!(!first.is_finished(), "the broadcast waits for both acks");
    // A second broadcast on the same exclusive key waits for the first.
    let second = tokio::spawn({
        let (coord, shards, key, msg) = (coord.clone(), shards.clone(), key.clone(), ddl(3));
        async move { coord.broadcast(&msg, &shards, &[key]).await }
    });
    for v in &shards {
        let (id, _) = seen[v.as_str()];
        coord.ack(id, v).await.expect("ack");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the broadcast completes once every vchannel acknowledged it")
        .unwrap()
        .expect("broadcast");
    for a in &outcome.appends {
        let (id, msg_id) = seen[a.vchannel.as_str()];
        assert_eq!(outcome.broadcast_id, id);
        assert_eq!(
            a.id,
            Some(msg_id),
            "the outcome names the copy the consumer read"
        );
    }
    // The key is free now: the second broadcast gets through; its consumers ack it too.
    for v in &shards {
        let copy = broadcast_copy(&client, v, Some(outcome.broadcast_id)).await;
        let id = copy.broadcast_header().unwrap().unwrap().broadcast_id;
        coord.ack(id, v).await.expect("ack the second broadcast");
    }
    let second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second broadcast completes")
        .unwrap()
        .expect("second broadcast");
    assert!(second.broadcast_id > outcome.broadcast_id);
    // Bad input is refused and changes nothing.
    let err = coord.broadcast(&ddl(4), &[], &[]).await.unwrap_err();
    assert_eq!(err.code, sluice_types::ErrorCode::InvalidArgument, "{err}");
}

/// The first CreatePartition broadcast copy on `v` whose broadcast id is not `skip`.
async fn broadcast_copy(
    client: &Client,
    v: &VChannel,
    skip: Option<u64>,
) -> sluice_types::ImmutableMessage {
    use sluice_client::ReadRequest;
    use sluice_types::MessageType;
    use sluice_wal::scanner::MessageFilter;
    let mut request = ReadRequest::vchannel(v);
    request
        .filters
        .push(MessageFilter::Types(vec![MessageType::CreatePartition]));
    let mut reader = client.read(request);
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("the broadcast copy arrives")
            .expect("reader open")
            .expect("read");
        if let Some(m) = m.as_message()
            && m.message_type().ok() == Some(MessageType::CreatePartition)
            && let Ok(Some(h)) = m.broadcast_header()
            && Some(h.broadcast_id) != skip
        {
            return m.clone();
        }
    }
}

/// Reaches the server like [`RemoteAccess`], but holds every 37th append back before sending it
/// (so hundreds of later appends of the same client overtake it) and then pretends its
/// acknowledgement was lost (so the client sends it again).
struct HoldingBack {
    inner: RemoteAccess,
    calls: std::sync::atomic::AtomicU64,
    held: parking_lot::Mutex<std::collections::HashSet<(u64, u64)>>,
}

#[async_trait::async_trait]
impl sluice_client::access::WalAccess for HoldingBack {
    async fn append(
        &self,
        target: &sluice_client::Assignment,
        msg: MutableMessage,
    ) -> Result<sluice_types::AppendResult, sluice_client::ClientError> {
        let numbering = msg.producer().expect("numbering").expect("numbered");
        let nth = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hold = nth.is_multiple_of(37) && self.held.lock().insert(numbering);
        if hold {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let result = self.inner.append(target, msg).await?;
        if hold {
            return Err(sluice_client::ClientError::new(
                sluice_types::ErrorCode::Unknown,
                "test: acknowledgement lost",
            ));
        }
        Ok(result)
    }

    async fn read(
        &self,
        target: &sluice_client::Assignment,
        options: sluice_types::ConsumeOptions,
    ) -> Result<sluice_client::access::MessageStream, sluice_client::ClientError> {
        self.inner.read(target, options).await
    }
}

/// One client with 64 appends in flight, some of them overtaken by hundreds of later ones and
/// then retried: every append succeeds, and each is in the log exactly once (the client keeps
/// each producer id's appends within the window a WAL remembers, spreading over more ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_appends_in_flight_overtaken_and_retried_are_each_written_once() {
    use sluice_types::message::CreateCollectionHeader;
    const APPENDS: usize = 3000;

    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(&dir.path().join("data"), dir.path());
    let topology = Arc::new(CoordinatorTopology::connect(&server.endpoint()).expect("endpoint"));
    let access = Arc::new(HoldingBack {
        inner: RemoteAccess::new(),
        calls: Default::default(),
        held: Default::default(),
    });
    let client = Client::new(
        topology,
        access.clone(),
        ClientConfig {
            timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        },
    );
    let vchannel = VChannel::new(VCHANNEL).expect("vchannel");
    let create = MutableMessage::builder(CreateCollectionHeader {
        collection_id: vchannel.collection().0,
        partition_ids: vec![1],
        db_id: 1,
        schema: None,
    })
    .vchannel(&vchannel)
    .build()
    .unwrap();
    client.append(create).await.expect("create the collection");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, vchannel, next) = (client.clone(), vchannel.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= APPENDS {
                        return;
                    }
                    if let Err(e) = client
                        .append(client_insert(&vchannel, &format!("k{i}")))
                        .await
                    {
                        panic!("append k{i}: {e}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("producer task");
    }
    let held = access.held.lock().len();
    assert!(held >= APPENDS / 40, "only {held} appends were held back");
    let consumed = tokio::task::block_in_place(|| consume_all(&server, APPENDS));
    for i in 0..APPENDS {
        assert!(consumed.contains_key(&format!("k{i}")), "k{i} missing");
    }
}
