//! `sluice standalone` as a real process: produce with the CLI and with `sluice-client`, consume
//! with the CLI (every key exactly once, timestamps strictly increasing), SIGTERM (exit 0 within
//! a bound), restart on the same data directory and read the same messages again; bad flags and
//! bad config files fail with a clear message, a non-zero exit, and touch nothing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use sluice_client::access::RoutedAccess;
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
    let topology = Arc::new(CoordinatorTopology::connect(&endpoint).expect("endpoint"));
    let client = Client::new(
        topology,
        Arc::new(RoutedAccess::new(None)),
        ClientConfig {
            timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        },
    );
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
