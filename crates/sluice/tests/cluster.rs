//! A real cluster — one `sluice coord` and three `sluice node` processes on a real etcd
//! (`SLUICE_TEST_ETCD`) and one shared local log directory — under continuous load from four
//! producers, while the owner of a pchannel is SIGKILLed round after round and a fresh process
//! with the same node id takes its place — every third round the owner is SIGSTOPped instead
//! (possibly in the middle of a write), its pchannels must be available on another node within
//! the lease TTL + 1 s (on `local`: nothing the stopped process holds may block the new owner),
//! and it is continued and registers again. Then an owner is SIGSTOPped until its pchannel
//! moved and continued: it must not acknowledge anything at its old term (fencing end to end).
//!
//! Checked at the end, reading every vchannel from the beginning: every acknowledged message is
//! there with its acknowledged timestamp, timestamps strictly increase and terms never go back
//! per vchannel, nothing sent to the fenced owner appears, and no message appears twice (the
//! client's appends are numbered: a retry after a failover or a lost acknowledgement is not
//! appended again).
//! Failover time — SIGKILL until the first acknowledged append on the pchannel after the
//! topology showed its new term — is reported (median, max) with the lease TTL, and the median
//! must stay under 3 s with a 2 s TTL.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::process::Signal;
use sluice_client::access::{RemoteAccess, WalAccess};
use sluice_client::topology::CoordinatorTopology;
use sluice_client::{Client, ClientConfig, ReadRequest, Topology, TopologySource};
use sluice_meta::MetaStore;
use sluice_types::message::{CreateCollectionHeader, InsertHeader, PartitionSegmentAssignment};
use sluice_types::{ErrorCode, MessageType, MutableMessage, Term, VChannel};
use sluice_wal::scanner::{MessageFilter, ReadMessage};
use support::{Proc, etcd_endpoint, service_endpoint, unique_root};
use tokio::sync::watch;

const NODES: u64 = 3;
const PCHANNELS: usize = 3;
const COLLECTIONS_PER_PCHANNEL: usize = 2;
const PRODUCERS: usize = 4;
const LEASE_TTL_MS: u64 = 2000;
/// SIGKILL rounds on the `local` and `object` logs (override with `SLUICE_E2E_ROUNDS`).
const ROUNDS: usize = 30;
/// SIGKILL rounds on the `kafka` log, whose test broker is the slowest to fail over on.
const KAFKA_ROUNDS: usize = 10;
/// Bound on every wait for the cluster to do something.
const WAIT: Duration = Duration::from_secs(30);

/// Fields drop in order: the processes die before their directory (and stderr logs) go.
struct Cluster {
    nodes: BTreeMap<u64, Proc>,
    coord: Proc,
    /// Where the coordinator listens (the same address after a restart).
    coord_listen: String,
    etcd: String,
    root: String,
    /// How nodes reach the log (environment for `sluice node`).
    log_envs: Vec<(&'static str, String)>,
    /// The nodes' registration lease TTL.
    lease_ttl_ms: u64,
    dir: tempfile::TempDir,
}

/// Where the WAL lives.
enum Medium {
    /// The `local` backend on one directory every node shares (cross-process fencing).
    SharedDir,
    /// The `object` backend on an S3 server (fencing by conditional create).
    S3 {
        /// `http://host:port`.
        endpoint: String,
    },
    /// The `kafka` backend on a Kafka-protocol broker (fencing by producer epochs).
    Kafka {
        /// `host:port`.
        bootstrap: String,
    },
}

impl Cluster {
    fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![
            ("SLUICE_META__ROOT", self.root.clone()),
            ("SLUICE_COORD__ELECTION_TTL_MS", "2000".into()),
            // Segments go where every node sees them (S3 overrides this below).
            (
                "SLUICE_STORAGE__DIR",
                self.dir.path().join("storage").display().to_string(),
            ),
            // The test reads every acknowledged message back from the log at the end: keep the
            // log whole for that long (truncation is tested in recovery_storage.rs).
            ("SLUICE_STORAGE__RETENTION_MS", "7200000".into()),
        ];
        envs.extend(self.log_envs.iter().cloned());
        envs
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs the coordinator and starts it again at the same address at once (retrying
    /// while the port is not free yet). Returns how long the process took to listen.
    fn restart_coord(&mut self) -> Duration {
        self.coord.kill();
        let started = Instant::now();
        let deadline = started + WAIT;
        loop {
            match spawn_coord(&self.etcd, &self.root, &self.coord_listen, self.logs()) {
                Ok(p) => {
                    self.coord = p;
                    return started.elapsed();
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "coordinator did not start yet (retrying): {}",
                        first_line(&e.message)
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("the coordinator would not start again within {WAIT:?}: {e}"),
            }
        }
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Starts node `id`, retrying while the registration of a dead predecessor with the same id
    /// has not lapsed yet.
    fn start_node(&self, id: u64) -> Proc {
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let log_dir = self.log_dir();
        let coord = self.coord.endpoint();
        let (id_s, ttl) = (id.to_string(), self.lease_ttl_ms.to_string());
        let args = [
            "node",
            "--meta-backend",
            "etcd",
            "--etcd",
            &self.etcd,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("utf-8 temp path"),
            "--log-dir",
            log_dir.to_str().expect("utf-8 temp path"),
            "--node-id",
            &id_s,
            "--lease-ttl-ms",
            &ttl,
            "--coord",
            &coord,
        ];
        let envs = self.envs();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            match Proc::spawn(
                &format!("node-{id}"),
                &args,
                &envs,
                self.logs(),
                Duration::from_secs(20),
            ) {
                Ok(p) => return p,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "node {id} did not start yet (retrying): {}",
                        first_line(&e.message)
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("node {id} would not start within {WAIT:?}: {e}"),
            }
        }
    }
}

/// The last "shard state recovered" line node `id` logged for `pchannel` (ANSI colours removed).
fn last_recovery(cluster: &Cluster, id: u64, pchannel: &str) -> String {
    let text = std::fs::read_to_string(cluster.logs().join(format!("node-{id}.stderr")))
        .unwrap_or_default();
    let plain: String = {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // Skip to the end of the escape sequence (a letter).
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    plain
        .lines()
        .rev()
        .find(|l| {
            l.contains("shard state recovered") && l.contains(&format!("pchannel={pchannel} "))
        })
        .unwrap_or("no recovery logged")
        .to_owned()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn start_cluster(etcd: String, medium: &Medium) -> Cluster {
    start_cluster_of(etcd, medium, NODES)
}

/// `sluice coord` on `listen`.
fn spawn_coord(
    etcd: &str,
    root: &str,
    listen: &str,
    dir: &Path,
) -> Result<Proc, support::SpawnError> {
    let pchannels = PCHANNELS.to_string();
    Proc::spawn(
        "coord",
        &[
            "coord",
            "--meta-backend",
            "etcd",
            "--etcd",
            etcd,
            "--listen",
            listen,
            "--pchannels",
            &pchannels,
        ],
        &[
            ("SLUICE_META__ROOT", root),
            ("SLUICE_COORD__ELECTION_TTL_MS", "2000"),
        ],
        dir,
        WAIT,
    )
}

/// A coordinator and `nodes` node processes.
fn start_cluster_of(etcd: String, medium: &Medium, nodes: u64) -> Cluster {
    start_cluster_with(etcd, medium, nodes, LEASE_TTL_MS)
}

/// A coordinator and `nodes` node processes whose leases last `lease_ttl_ms`.
fn start_cluster_with(etcd: String, medium: &Medium, nodes: u64, lease_ttl_ms: u64) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = unique_root("cluster");
    let log_envs = match medium {
        Medium::SharedDir => Vec::new(),
        Medium::S3 { endpoint } => {
            sluice_log::testkit::ensure_s3_bucket(endpoint, "sluice-e2e");
            vec![
                ("SLUICE_LOG__BACKEND", "object".to_owned()),
                ("SLUICE_LOG__S3_ENDPOINT", endpoint.clone()),
                ("SLUICE_LOG__S3_BUCKET", "sluice-e2e".to_owned()),
                // A fresh prefix per run: the bucket outlives the test.
                ("SLUICE_LOG__PREFIX", root.replace('/', "-")),
                ("SLUICE_STORAGE__S3_ENDPOINT", endpoint.clone()),
                ("SLUICE_STORAGE__S3_BUCKET", "sluice-e2e".to_owned()),
                // The test server takes any credentials; Sluice has no built-in ones.
                ("SLUICE_LOG__S3_ACCESS_KEY_ID", "test".to_owned()),
                ("SLUICE_LOG__S3_SECRET_ACCESS_KEY", "test".to_owned()),
                ("SLUICE_STORAGE__S3_ACCESS_KEY_ID", "test".to_owned()),
                ("SLUICE_STORAGE__S3_SECRET_ACCESS_KEY", "test".to_owned()),
                (
                    "SLUICE_STORAGE__PREFIX",
                    format!("{}-storage", root.replace('/', "-")),
                ),
            ]
        }
        Medium::Kafka { bootstrap } => vec![
            ("SLUICE_LOG__BACKEND", "kafka".to_owned()),
            ("SLUICE_LOG__KAFKA_BOOTSTRAP", bootstrap.clone()),
            // Fresh topics and transactional ids per run: the broker outlives the test.
            (
                "SLUICE_LOG__KAFKA_PREFIX",
                format!("{}-", root.replace('/', "-")),
            ),
            // Tansu 0.6.0 can leave a fenced epoch's transaction open for good, which stalls
            // read_committed readers (docs/kafka.md).
            ("SLUICE_LOG__KAFKA_READ_COMMITTED", "false".to_owned()),
        ],
    };
    // A fixed port, so a restarted coordinator is found where the nodes look for it.
    let coord_listen = format!("127.0.0.1:{}", support::free_port());
    let coord =
        spawn_coord(&etcd, &root, &coord_listen, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let mut cluster = Cluster {
        dir,
        etcd,
        root,
        log_envs,
        coord,
        coord_listen,
        lease_ttl_ms,
        nodes: BTreeMap::new(),
    };
    for id in 1..=nodes {
        let node = cluster.start_node(id);
        cluster.nodes.insert(id, node);
    }
    cluster
}

fn pchannel_name(p: usize) -> String {
    format!("sluice-dml_{p}")
}

fn vchannels() -> Vec<VChannel> {
    (0..PCHANNELS)
        .flat_map(|p| {
            (0..COLLECTIONS_PER_PCHANNEL).map(move |c| {
                let collection = 100 + p * COLLECTIONS_PER_PCHANNEL + c;
                VChannel::new(format!("{}_{collection}v0", pchannel_name(p))).expect("vchannel")
            })
        })
        .collect()
}

fn create_collection(v: &VChannel) -> MutableMessage {
    MutableMessage::builder(CreateCollectionHeader {
        collection_id: v.collection().0,
        partition_ids: vec![1],
        db_id: 1,
        schema: None,
    })
    .vchannel(v)
    .build()
    .expect("a valid CreateCollection")
}

fn insert(v: &VChannel, tag: &str) -> MutableMessage {
    support::tagged_insert(v, "tag", tag, vec![7u8; 32])
}

/// One acknowledged append.
#[derive(Clone, Debug)]
struct Ack {
    tag: String,
    vchannel: usize,
    ts: u64,
    done: Instant,
}

/// What the producers share with the test.
struct Load {
    acks: Mutex<Vec<Ack>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Bumped on every ack, so waiters wake on progress instead of polling.
    progress: watch::Sender<u64>,
}

impl Load {
    /// Waits (bounded) until some ack satisfies `pred`; returns the first such ack.
    async fn wait_ack(&self, what: &str, pred: impl Fn(&Ack) -> bool) -> Ack {
        let mut rx = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(a) = self.acks.lock().iter().find(|a| pred(a)) {
                return a.clone();
            }
            let errors = self.errors.lock().clone();
            assert!(errors.is_empty(), "producers failed: {errors:?}");
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .unwrap_or_else(|_| panic!("no acknowledged append {what} within {WAIT:?}"))
                .expect("progress channel");
        }
    }
}

async fn wait_topology(
    rx: &mut watch::Receiver<Topology>,
    what: &str,
    pred: impl Fn(&Topology) -> bool,
) -> Topology {
    tokio::time::timeout(WAIT, rx.wait_for(|t| pred(t)))
        .await
        .unwrap_or_else(|_| panic!("topology: {what} did not happen within {WAIT:?}"))
        .expect("topology watch")
        .clone()
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn tag_of(m: &ReadMessage) -> Option<&str> {
    m.as_message().and_then(|m| m.property("tag"))
}

/// Every pchannel's (term, node address) from the coordinator's raw `WatchAssignments`, once
/// all `PCHANNELS` are listed and `ok` holds for them.
async fn raw_assignments(
    coord: &str,
    ok: impl Fn(&BTreeMap<String, (u64, String)>) -> bool,
) -> BTreeMap<String, (u64, String)> {
    use sluice_proto::v1::{WatchAssignmentsRequest, coordinator_client::CoordinatorClient};
    let mut client = CoordinatorClient::new(sluice_proto::lazy_channel(coord).expect("address"));
    let mut stream = client
        .watch_assignments(WatchAssignmentsRequest {})
        .await
        .expect("watch assignments")
        .into_inner();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = BTreeMap::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let Ok(Ok(Some(update))) = next else {
            panic!("assignments never became what was expected; last: {last:?} ({next:?})");
        };
        last = update
            .assignments
            .into_iter()
            .filter_map(|a| {
                let p = a.pchannel?;
                Some((p.name, (p.term, a.address)))
            })
            .collect();
        if last.len() == PCHANNELS && ok(&last) {
            return last;
        }
    }
}

/// A restarted node process, reached with nothing but the generated gRPC stubs and never
/// calling `ReportError`: the coordinator lists its pchannels again only at higher terms, the
/// node holds each WAL it is listed for, and a raw producer can append at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_the_same_id_serves_again_without_report_error() {
    use sluice_proto::v1::{
        self, StatusRequest, produce_request, produce_response,
        streaming_node_client::StreamingNodeClient,
        streaming_node_manager_client::StreamingNodeManagerClient,
    };
    let Some(etcd) =
        etcd_endpoint("a_node_restarted_with_the_same_id_serves_again_without_report_error")
    else {
        return;
    };
    let mut cluster = start_cluster_of(etcd, &Medium::SharedDir, 1);
    let coord = cluster.coord.endpoint();
    let mut before = raw_assignments(&coord, |_| true).await;
    for (how, signal) in [("SIGTERM", Signal::TERM), ("SIGKILL", Signal::KILL)] {
        let mut old = cluster.nodes.remove(&1).expect("node 1");
        old.signal(signal);
        assert!(
            old.wait_exit(WAIT).is_some(),
            "node 1 did not exit after {how}"
        );
        drop(old);
        cluster.nodes.insert(1, cluster.start_node(1));
        let after = raw_assignments(&coord, |a| {
            a.iter().all(|(name, (term, _))| *term > before[name].0)
        })
        .await;
        let address = &after.values().next().expect("a pchannel").1;
        let channel = sluice_proto::lazy_channel(address).expect("address");
        // The node holds every WAL it is listed for, at the listed term.
        let status = StreamingNodeManagerClient::new(channel.clone())
            .status(StatusRequest {})
            .await
            .expect("node status")
            .into_inner();
        let held: BTreeMap<String, (u64, bool)> = status
            .wals
            .into_iter()
            .filter_map(|w| {
                let p = w.pchannel?;
                Some((p.name, (p.term, w.available)))
            })
            .collect();
        for (name, (term, _)) in &after {
            assert_eq!(
                held.get(name),
                Some(&(*term, true)),
                "after {how}: {held:?}"
            );
        }
        // A raw producer appends at the new term at once.
        let (name, (term, _)) = after.iter().next().expect("a pchannel");
        let v = VChannel::new(format!("{name}_9{term}v0")).expect("vchannel");
        let requests = vec![
            v1::ProduceRequest {
                request: Some(produce_request::Request::Open(v1::ProduceOpen {
                    pchannel: Some(v1::PChannelAtTerm {
                        name: name.clone(),
                        term: *term,
                    }),
                    batch_responses: false,
                })),
            },
            v1::ProduceRequest {
                request: Some(produce_request::Request::Append(v1::ProduceAppend {
                    request_id: 1,
                    message: Some(v1::Message::from(&*create_collection(&v))),
                    barrier_timestamp: 0,
                    ..Default::default()
                })),
            },
        ];
        let mut responses = StreamingNodeClient::new(channel)
            .produce(futures::stream::iter(requests))
            .await
            .expect("open a producer")
            .into_inner();
        let mut appended = None;
        while let Some(r) = responses.message().await.expect("produce stream") {
            if let Some(produce_response::Response::Appended(a)) = r.response {
                appended = a.outcome;
            }
        }
        assert!(
            matches!(appended, Some(v1::produce_appended::Outcome::Result(_))),
            "after {how}: {appended:?}"
        );
        before = after;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_owner_kills_and_fences_a_stopped_owner() {
    let Some(etcd) = etcd_endpoint("cluster_survives_owner_kills_and_fences_a_stopped_owner")
    else {
        return;
    };
    run_cluster(etcd, Medium::SharedDir, "local", ROUNDS).await;
}

/// The same with the WAL on the `object` backend over the S3 server (`SLUICE_TEST_S3`): a
/// zero-disk WAL that any node can take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_on_the_object_log_over_s3_survives_owner_kills() {
    let test = "cluster_on_the_object_log_over_s3_survives_owner_kills";
    let Some(etcd) = etcd_endpoint(test) else {
        return;
    };
    let Some(endpoint) = service_endpoint("SLUICE_TEST_S3", test) else {
        return;
    };
    run_cluster(etcd, Medium::S3 { endpoint }, "object-s3", ROUNDS).await;
}

/// The same with the WAL on the `kafka` backend (`SLUICE_TEST_KAFKA`): the new owner's open
/// bumps the pchannel's transactional producer epoch, so the old owner cannot commit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_on_the_kafka_log_survives_owner_kills() {
    let test = "cluster_on_the_kafka_log_survives_owner_kills";
    let Some(etcd) = etcd_endpoint(test) else {
        return;
    };
    let Some(bootstrap) = service_endpoint("SLUICE_TEST_KAFKA", test) else {
        return;
    };
    run_cluster(etcd, Medium::Kafka { bootstrap }, "kafka", KAFKA_ROUNDS).await;
}

async fn run_cluster(etcd: String, medium: Medium, label: &str, default_rounds: usize) {
    let rounds = std::env::var("SLUICE_E2E_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default_rounds);
    // Seconds between rounds (`SLUICE_E2E_ROUND_GAP_SECS`, default 0): with 20 rounds and 30 s
    // this is the ≥ 10-minute fault loop.
    let round_gap = Duration::from_secs(
        std::env::var("SLUICE_E2E_ROUND_GAP_SECS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
    );
    // `SLUICE_E2E_AT_LEAST_ONCE=1`: the producers do not number their appends (a baseline for
    // the duplicates exactly-once appends prevent; they are then counted, not refused).
    let idempotent = std::env::var("SLUICE_E2E_AT_LEAST_ONCE").is_err();
    let test_started = Instant::now();
    let mut cluster = tokio::task::block_in_place(|| start_cluster(etcd, &medium));

    let topology =
        Arc::new(CoordinatorTopology::connect(&cluster.coord.endpoint()).expect("endpoint"));
    let mut topo_rx = topology.subscribe();
    wait_topology(&mut topo_rx, "every pchannel assigned", |t| {
        t.channels.len() == PCHANNELS
    })
    .await;
    let client = Client::new(
        topology.clone(),
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(Duration::from_secs(60)),
            idempotent,
            ..ClientConfig::default()
        },
    );
    let vchannels = Arc::new(vchannels());
    for v in vchannels.iter() {
        client
            .append(create_collection(v))
            .await
            .unwrap_or_else(|e| panic!("creating the collection of {v}: {e}"));
    }

    // Four producers append continuously, each cycling over every vchannel.
    let load = Arc::new(Load {
        acks: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        progress: watch::Sender::new(0),
    });
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (client, load, vchannels) = (client.clone(), load.clone(), vchannels.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !load.stop.load(Ordering::Relaxed) {
                    let vi = (p + i) % vchannels.len();
                    let tag = format!("p{p}-{i}");
                    match client.append(insert(&vchannels[vi], &tag)).await {
                        Ok(r) => {
                            load.acks.lock().push(Ack {
                                tag,
                                vchannel: vi,
                                ts: r.timestamp.0,
                                done: Instant::now(),
                            });
                            load.progress.send_modify(|n| *n += 1);
                        }
                        Err(e) => {
                            load.errors.lock().push(format!("{tag}: {e}"));
                            load.progress.send_modify(|n| *n += 1);
                            return;
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();

    let on_pchannel = |a: &Ack, p: &str| vchannels[a.vchannel].pchannel_str() == p;
    // Every pchannel takes appends before the first kill.
    let warm = Instant::now();
    for p in 0..PCHANNELS {
        let name = pchannel_name(p);
        load.wait_ack(&format!("on {name} at start"), |a| {
            a.done >= warm && on_pchannel(a, &name)
        })
        .await;
    }

    let mut failovers = Vec::new();
    let mut stops = Vec::new();
    for round in 0..rounds {
        let pchannel = pchannel_name(round % PCHANNELS);
        // A pchannel being moved (by the balancer, say) is absent until it is assigned again.
        let before = wait_topology(&mut topo_rx, &format!("{pchannel} assigned"), |t| {
            t.channels.contains_key(&pchannel)
        })
        .await;
        let owner = before.channels[&pchannel].clone();
        let victim = owner.node_id.0;
        let owned: Vec<(String, Term)> = before
            .channels
            .values()
            .filter(|a| a.node_id.0 == victim)
            .map(|a| (a.pchannel.as_str().to_owned(), a.term))
            .collect();

        // Every third round stops the owner (alive, cut off, possibly in the middle of a write
        // holding whatever it holds) instead of killing it.
        let stop_round = round % 3 == 2;
        let killed_at = Instant::now();
        if stop_round {
            cluster.nodes[&victim].signal(Signal::STOP);
        } else {
            cluster
                .nodes
                .get_mut(&victim)
                .expect("a running node owns every pchannel")
                .kill();
        }
        let after = wait_topology(
            &mut topo_rx,
            &format!("round {round}: node {victim}'s pchannels {owned:?} move"),
            |t| {
                owned.iter().all(|(p, term)| {
                    t.channels
                        .get(p)
                        .is_some_and(|a| a.term > *term && a.node_id.0 != victim)
                })
            },
        )
        .await;
        let moved_at = Instant::now();
        let first = load
            .wait_ack(
                &format!("round {round}: on {pchannel} after the move"),
                |a| a.done >= moved_at && on_pchannel(a, &pchannel),
            )
            .await;
        let failover = first.done - killed_at;
        let new = &after.channels[&pchannel];
        eprintln!(
            "round {round}: {} node {victim} owning {owned:?}; {pchannel} term {} -> {} on node {} (topology after {:.2?}); first ack after {:.2?}",
            if stop_round { "stopped" } else { "killed" },
            owner.term,
            new.term,
            new.node_id,
            moved_at - killed_at,
            failover
        );
        failovers.push(failover);
        if stop_round {
            stops.push(failover);
            // A stopped owner keeps nothing unavailable past its lease (the new owner's open
            // does not wait for anything the stopped process holds).
            if matches!(medium, Medium::SharedDir) {
                let bound = Duration::from_millis(LEASE_TTL_MS) + Duration::from_secs(1);
                assert!(
                    failover <= bound,
                    "round {round}: {pchannel} was unavailable for {failover:?} behind a stopped owner (bound {bound:?})"
                );
            }
        }
        // The new owner rebuilt its state from the recovery checkpoint its predecessor saved,
        // not by replaying the pchannel's whole log.
        let recovered = last_recovery(&cluster, new.node_id.0, &pchannel);
        assert!(
            recovered.contains("Some((MessageId("),
            "round {round}: node {} opened {pchannel} without a checkpoint: {recovered}",
            new.node_id
        );
        eprintln!(
            "round {round}: {}",
            recovered
                .split("shard state recovered")
                .nth(1)
                .unwrap_or_default()
                .trim()
        );

        if stop_round {
            // Continued, the old owner finds its WALs fenced and its lease gone, and registers
            // again as a new incarnation: three nodes stay available.
            cluster.nodes[&victim].signal(Signal::CONT);
        } else {
            // A fresh process with the same id keeps three nodes available.
            let node = tokio::task::block_in_place(|| cluster.start_node(victim));
            cluster.nodes.insert(victim, node);
        }
        // Every pchannel takes appends again before the next round.
        let restarted = Instant::now();
        for p in 0..PCHANNELS {
            let name = pchannel_name(p);
            load.wait_ack(
                &format!("round {round}: on {name} after the restart"),
                |a| a.done >= restarted && on_pchannel(a, &name),
            )
            .await;
        }
        // A fault loop spaces the kills out while the producers keep writing, so the log ages.
        if !round_gap.is_zero() {
            tokio::time::sleep(round_gap).await;
        }
    }

    // Fencing end to end: stop an owner (alive, cut off) until its registration lease lapsed,
    // continue it (a stopped process may hold the shared log's write lock, which would keep the
    // new owner from opening), wait until its pchannel moved to a higher term, then append to it
    // at its old term: never acknowledged.
    let pchannel = pchannel_name(0);
    let owner = wait_topology(&mut topo_rx, &format!("{pchannel} assigned"), |t| {
        t.channels.contains_key(&pchannel)
    })
    .await
    .channels[&pchannel]
        .clone();
    let store = sluice_meta::etcd::EtcdStore::connect(std::slice::from_ref(&cluster.etcd))
        .await
        .expect("connecting to etcd");
    let node_key = sluice_coord::keys::Keys::new(cluster.root.clone()).node(owner.node_id);
    assert!(
        store.get(&node_key).await.expect("etcd get").is_some(),
        "the owner's registration {node_key} exists"
    );
    let fenced_vchannel = vchannels
        .iter()
        .find(|v| v.pchannel_str() == pchannel)
        .expect("a vchannel on the pchannel");
    let old_owner = RemoteAccess::new();
    // A producer stream to the owner opened before it is stopped: what it answers after the
    // move comes from the old process itself (not only a refused connection).
    let fenced_vi = vchannels
        .iter()
        .position(|v| v == fenced_vchannel)
        .expect("index");
    match old_owner
        .append(&owner, insert(fenced_vchannel, "before-stop"))
        .await
    {
        Ok(r) => load.acks.lock().push(Ack {
            tag: "before-stop".into(),
            vchannel: fenced_vi,
            ts: r.timestamp.0,
            done: Instant::now(),
        }),
        Err(e) => eprintln!("note: the owner refused the append before the stop: {e}"),
    }
    cluster.nodes[&owner.node_id.0].signal(Signal::STOP);
    let stopped_at = Instant::now();
    let lapse_deadline = stopped_at + WAIT;
    while store.get(&node_key).await.expect("etcd get").is_some() {
        assert!(
            Instant::now() < lapse_deadline,
            "the stopped node's registration did not lapse within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lapsed_after = stopped_at.elapsed();
    cluster.nodes[&owner.node_id.0].signal(Signal::CONT);
    let moved = wait_topology(
        &mut topo_rx,
        &format!("{pchannel} leaves stopped node {}", owner.node_id),
        |t| {
            t.channels
                .get(&pchannel)
                .is_some_and(|a| a.term > owner.term && a.node_id != owner.node_id)
        },
    )
    .await;
    let moved_at = Instant::now();
    eprintln!(
        "fencing: stopped node {} ({pchannel} term {}); lease lapsed after {lapsed_after:.2?}; moved to node {} at term {} after {:.2?}",
        owner.node_id,
        owner.term,
        moved.channels[&pchannel].node_id,
        moved.channels[&pchannel].term,
        moved_at - stopped_at
    );
    let mut fenced_codes = BTreeSet::new();
    for i in 0..5 {
        let tag = format!("fenced-{i}");
        match old_owner
            .append(&owner, insert(fenced_vchannel, &tag))
            .await
        {
            Ok(r) => panic!(
                "the old owner acknowledged {tag} at term {} after term {} opened: {r:?}",
                owner.term, moved.channels[&pchannel].term
            ),
            Err(e) => {
                assert!(
                    e.is_wrong_node()
                        || matches!(e.code, ErrorCode::OnShutdown | ErrorCode::Unknown),
                    "unexpected error from the fenced owner: {e}"
                );
                fenced_codes.insert(format!("{}: {}", e.code.name(), e.message));
            }
        }
    }
    eprintln!("fencing: appends to the old owner at its old term failed with {fenced_codes:?}");
    load.wait_ack(&format!("on {pchannel} on its new owner"), |a| {
        a.done >= moved_at && on_pchannel(a, &pchannel)
    })
    .await;
    cluster
        .nodes
        .get_mut(&owner.node_id.0)
        .expect("the stopped node")
        .kill();

    // A graceful stop: SIGTERM the owner of another pchannel. It marks itself stopping, the
    // coordinator moves its WALs to the others while it still serves, and it exits (status 0)
    // once it holds none. The producers see no error (checked below with every other failure).
    let node = tokio::task::block_in_place(|| cluster.start_node(owner.node_id.0));
    cluster.nodes.insert(owner.node_id.0, node);
    let pchannel = pchannel_name(1);
    let before = wait_topology(&mut topo_rx, &format!("{pchannel} assigned"), |t| {
        t.channels.contains_key(&pchannel)
    })
    .await;
    let victim = before.channels[&pchannel].node_id.0;
    let owned: Vec<String> = before
        .channels
        .values()
        .filter(|a| a.node_id.0 == victim)
        .map(|a| a.pchannel.as_str().to_owned())
        .collect();
    let termed_at = Instant::now();
    cluster.nodes[&victim].signal(Signal::TERM);
    let status = tokio::task::block_in_place(|| {
        cluster
            .nodes
            .get_mut(&victim)
            .expect("the node")
            .wait_exit(WAIT)
    })
    .unwrap_or_else(|| panic!("node {victim} did not exit within {WAIT:?} of SIGTERM"));
    let exited = termed_at.elapsed();
    assert!(
        status.success(),
        "node {victim} exited with {status} on SIGTERM"
    );
    let after_exit = Instant::now();
    for p in &owned {
        load.wait_ack(&format!("on {p} after node {victim} stopped"), |a| {
            a.done >= after_exit && on_pchannel(a, p)
        })
        .await;
    }
    let mut longest = Duration::ZERO;
    for p in &owned {
        let mut done: Vec<Instant> = load
            .acks
            .lock()
            .iter()
            .filter(|a| on_pchannel(a, p) && a.done >= termed_at)
            .map(|a| a.done)
            .collect();
        done.sort();
        done.insert(0, termed_at);
        for w in done.windows(2) {
            longest = longest.max(w[1] - w[0]);
        }
    }
    eprintln!(
        "graceful stop: node {victim} holding {owned:?} exited {exited:.2?} after SIGTERM; longest \
         wait for an acknowledgement on those pchannels {longest:.2?}"
    );

    // Stop the load; every producer must have kept going through every failover.
    load.stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.expect("producer task");
    }
    let errors = load.errors.lock().clone();
    assert!(errors.is_empty(), "producers failed: {errors:?}");
    let acks = load.acks.lock().clone();

    // Read every vchannel from the beginning.
    let reader_client = Client::new(
        topology.clone(),
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        },
    );
    let mut duplicates = 0usize;
    let mut read_total = 0usize;
    for (vi, v) in vchannels.iter().enumerate() {
        let want: BTreeMap<&str, u64> = acks
            .iter()
            .filter(|a| a.vchannel == vi)
            .map(|a| (a.tag.as_str(), a.ts))
            .collect();
        let mut request = ReadRequest::vchannel(v);
        request
            .filters
            .push(MessageFilter::Types(vec![MessageType::Insert]));
        let mut reader = reader_client.read(request);
        let mut copies: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let (mut last_ts, mut last_term) = (0u64, Term(0));
        let mut last_desc = String::new();
        let mut missing = want.len();
        while missing > 0 {
            let m = tokio::time::timeout(WAIT, reader.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{v}: {missing} acknowledged messages never arrived within {WAIT:?}")
                })
                .unwrap_or_else(|| panic!("{v}: the reader ended"))
                .unwrap_or_else(|e| panic!("{v}: read error {e}"));
            let ts = m
                .timestamp()
                .expect("a delivered message has a timestamp")
                .0;
            let desc = format!(
                "id {} type {:?} tag {:?} term {:?}",
                m.id(),
                m.message_type(),
                tag_of(&m),
                m.as_message().map(|m| m.term())
            );
            // Data messages get unique, strictly increasing timestamps; a timetick may repeat
            // the last one (it promises nothing at or below it follows).
            assert!(
                ts > last_ts || (m.is_timetick() && ts == last_ts),
                "{v}: timestamp {ts} ({desc}) after {last_ts} ({last_desc})"
            );
            last_ts = ts;
            last_desc = desc;
            let Some(msg) = m.as_message() else { continue };
            let term = msg.term().expect("a valid term").expect("a stamped term");
            assert!(
                term >= last_term,
                "{v}: a message at term {term} after one at term {last_term} (fencing)"
            );
            last_term = term;
            let Some(tag) = tag_of(&m) else { continue };
            assert!(
                !tag.starts_with("fenced-"),
                "{v}: the fenced owner wrote {tag}"
            );
            read_total += 1;
            let seen = copies.entry(tag.to_owned()).or_default();
            if !seen.is_empty() {
                duplicates += 1;
            }
            seen.push(ts);
            if want.get(tag) == Some(&ts) {
                missing -= 1;
            }
        }
        for (tag, ts) in &want {
            assert!(
                copies.get(*tag).is_some_and(|c| c.contains(ts)),
                "{v}: acknowledged {tag} at ts {ts} is missing (copies: {:?})",
                copies.get(*tag)
            );
        }
    }

    // A failover must not get slower as the log ages (every open replays from a recent
    // checkpoint, never from the start of the log).
    let in_order = failovers.clone();
    let third = in_order.len() / 3;
    if third >= 2 {
        let mut early = in_order[..third].to_vec();
        let mut late = in_order[in_order.len() - third..].to_vec();
        early.sort();
        late.sort();
        let (early, late) = (median(&early), median(&late));
        assert!(
            late <= early * 2 + Duration::from_secs(1),
            "failovers grew with the log's age: first third median {early:?}, last third {late:?} \
             (in order: {in_order:?})"
        );
    }
    failovers.sort();
    let (med, max) = (median(&failovers), failovers[failovers.len() - 1]);
    let summary = format!(
        "cluster e2e ({label} log): {rounds} rounds ({} SIGKILL, {} SIGSTOP), lease TTL {LEASE_TTL_MS} ms: failover (kill or stop -> first ack on the new owner) median {med:.2?}, max {max:.2?}, all {failovers:?}; behind a stopped owner max {:.2?}; {} acknowledged, {read_total} read, 0 lost, {duplicates} duplicates; test took {:.1?}",
        rounds - stops.len(),
        stops.len(),
        stops.iter().max().copied().unwrap_or_default(),
        acks.len(),
        test_started.elapsed()
    );
    eprintln!("{summary}");
    if idempotent {
        assert_eq!(
            duplicates, 0,
            "{label}: acknowledged messages appear twice (exactly-once appends)"
        );
    }
    let report =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-failover-{label}.txt"));
    if let Err(e) = std::fs::write(&report, format!("{summary}\n")) {
        eprintln!("note: could not write {}: {e}", report.display());
    }
    // The bound the issue sets for a 2 s TTL. On the object backend a failover also seals the
    // old segment with a few S3 requests, which the test server (moto, single-threaded Python)
    // serves slowly on a loaded 2-core box: it gets one more second.
    // On kafka an open makes several broker round trips (topic metadata, read the newest
    // record back, init the transactional producer — the epoch bump — read back again, commit
    // the term fence): about one second more on Tansu (median ~3.0 s measured on a quiet box).
    let bound = match medium {
        Medium::SharedDir => Duration::from_secs(3),
        Medium::S3 { .. } => Duration::from_secs(4),
        Medium::Kafka { .. } => Duration::from_secs(5),
    };
    // The typical failover of the short test; a fault loop (`SLUICE_E2E_ROUND_GAP_SECS`) on a
    // long-lived, busy test server is held to the two checks around this one instead: no growth
    // with the log's age, and every failover within 3× this bound.
    if round_gap.is_zero() {
        assert!(
            med < bound,
            "median failover {med:?} with a {LEASE_TTL_MS} ms lease TTL (want < {bound:?}): {summary}"
        );
    }
    // Every failover, not just the typical one, completes within a bound (an assign timeout
    // is 30 s: a recovery restarted from scratch would show here).
    assert!(
        max < bound * 3,
        "slowest failover {max:?} (want < {:?}): {summary}",
        bound * 3
    );
}

/// Searches through one node while the owner of a shard's WAL is SIGKILLed: the node answering
/// forwards the shards it does not hold to their owners; when an owner dies, searches fail with
/// retryable errors (the client retries) until the new owner's delegator has rebuilt the shard,
/// then resume. Every answer is checked against a model of the acknowledged writes at the
/// answer's MVCC timestamp: no deleted row, no row written after it (rows whose append may have
/// been retried across the failover are allowed either way: the client is at-least-once), and
/// no row missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_resume_on_the_new_owner_after_the_wal_owner_is_killed() {
    use sluice_client::QueryClient;
    use sluice_proto::v1;
    let Some(etcd) =
        etcd_endpoint("searches_resume_on_the_new_owner_after_the_wal_owner_is_killed")
    else {
        return;
    };
    const DIM: usize = 4;
    let mut cluster = start_cluster(etcd, &Medium::SharedDir);
    let coord = cluster.coord.endpoint();
    let f = |name: &str, ty: sluice_types::schema::DataType| sluice_types::schema::FieldSchema {
        name: name.into(),
        data_type: ty as i32,
        ..Default::default()
    };
    let schema = sluice_types::schema::CollectionSchema {
        name: "search_kill".into(),
        fields: vec![
            sluice_types::schema::FieldSchema {
                is_primary_key: true,
                ..f("id", sluice_types::schema::DataType::Int64)
            },
            sluice_types::schema::FieldSchema {
                dim: DIM as u32,
                ..f("vec", sluice_types::schema::DataType::FloatVector)
            },
        ],
        shards: 2,
        ..Default::default()
    };
    let mut cc =
        v1::coordinator_client::CoordinatorClient::new(sluice_proto::lazy_channel(&coord).unwrap());
    let info = cc
        .create_collection(v1::CreateCollectionRequest {
            schema: Some(schema),
            partition_names: Vec::new(),
            properties: Default::default(),
        })
        .await
        .expect("create collection")
        .into_inner();
    let topology = Arc::new(CoordinatorTopology::connect(&coord).unwrap());
    let client = Client::new(
        topology.clone(),
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(WAIT),
            ..ClientConfig::default()
        },
    );
    let vector = |id: i64| -> Vec<f32> {
        (0..DIM)
            .map(|d| ((id as f32) * 0.37 + d as f32 * 1.3).sin())
            .collect()
    };
    let ipc = move |b: &arrow_array::RecordBatch| {
        let mut out = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &b.schema()).unwrap();
        w.write(b).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    };
    let rows_of = move |ids: &[i64]| {
        let item = Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            false,
        ));
        let floats: Vec<f32> = ids.iter().flat_map(|i| vector(*i)).collect();
        arrow_array::RecordBatch::try_new(
            Arc::new(arrow_schema::Schema::new(vec![
                arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false),
                arrow_schema::Field::new(
                    "vec",
                    arrow_schema::DataType::FixedSizeList(item.clone(), DIM as i32),
                    false,
                ),
            ])),
            vec![
                Arc::new(arrow_array::Int64Array::from(ids.to_vec())) as arrow_array::ArrayRef,
                Arc::new(
                    arrow_array::FixedSizeListArray::try_new(
                        item,
                        DIM as i32,
                        Arc::new(arrow_array::Float32Array::from(floats)),
                        None,
                    )
                    .unwrap(),
                ),
            ],
        )
        .unwrap()
    };
    let vchannels = info.vchannels.clone();
    let shard_of = move |id: i64| VChannel::new(&vchannels[id.rem_euclid(2) as usize]).unwrap();
    let (collection_id, partition_id) = (info.collection_id, info.partitions[0].partition_id);
    let insert_shard = shard_of.clone();
    let insert_msg = move |id: i64| {
        let shard_of = &insert_shard;
        let body = ipc(&rows_of(&[id]));
        MutableMessage::builder(InsertHeader {
            collection_id,
            partitions: vec![PartitionSegmentAssignment {
                partition_id,
                rows: 1,
                binary_size: body.len() as u64,
                segment_id: 0,
            }],
        })
        .vchannel(&shard_of(id))
        .payload(body)
        .build()
        .unwrap()
    };
    // (id, ack timestamp, how long the append took): rows; (id, ack timestamp): deletes.
    let inserted: Arc<Mutex<Vec<(i64, u64, Duration)>>> = Arc::default();
    let mut deleted: Vec<(i64, u64)> = Vec::new();
    for id in 0..120 {
        let started = Instant::now();
        let r = client.append(insert_msg(id)).await.expect("insert");
        inserted.lock().push((id, r.timestamp.0, started.elapsed()));
    }
    for id in (0..60).step_by(3) {
        let keys = arrow_array::RecordBatch::try_new(
            Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
                "id",
                arrow_schema::DataType::Int64,
                false,
            )])),
            vec![Arc::new(arrow_array::Int64Array::from(vec![id])) as arrow_array::ArrayRef],
        )
        .unwrap();
        let msg = MutableMessage::builder(sluice_types::message::DeleteHeader {
            collection_id: info.collection_id,
            rows: 1,
        })
        .vchannel(&shard_of(id))
        .payload(ipc(&keys))
        .build()
        .unwrap();
        let r = client.append(msg).await.expect("delete");
        deleted.push((id, r.timestamp.0));
    }
    // The victim owns shard 0; searches go through another node.
    let p0 = VChannel::new(&info.vchannels[0])
        .unwrap()
        .pchannel_str()
        .to_owned();
    let assignments = raw_assignments(&coord, |_| true).await;
    let (term0, owner_addr) = assignments[&p0].clone();
    let victim = *cluster
        .nodes
        .iter()
        .find(|(_, p)| p.addr == owner_addr)
        .map(|(id, _)| id)
        .expect("the owner is one of the nodes");
    let reader = cluster
        .nodes
        .iter()
        .find(|(id, _)| **id != victim)
        .map(|(_, p)| p.endpoint())
        .unwrap();
    let query = QueryClient::connect(&reader).unwrap().with_deadline(WAIT);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, inserted, client) = (stop.clone(), inserted.clone(), client.clone());
        let insert_msg = insert_msg.clone();
        tokio::spawn(async move {
            let mut id = 1000;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = client.append(insert_msg(id)).await.expect("insert");
                inserted.lock().push((id, r.timestamp.0, started.elapsed()));
                id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    type Answer = (Instant, i64, u64, Vec<i64>, Vec<f32>);
    let searcher = {
        let (stop, query) = (stop.clone(), query.clone());
        tokio::spawn(async move {
            let mut answers: Vec<Answer> = Vec::new();
            let mut q = 0i64;
            while !stop.load(Ordering::Relaxed) {
                q += 1;
                let probe = 5000 + q;
                let r = query
                    .search(v1::SearchRequest {
                        collection: "search_kill".into(),
                        vectors: vec![v1::FloatVector {
                            values: (0..DIM)
                                .map(|d| ((probe as f32) * 0.37 + d as f32 * 1.3).sin())
                                .collect(),
                        }],
                        top_k: 5,
                        exact: true,
                        read: Some(v1::ReadOptions {
                            consistency: v1::ConsistencyLevel::Strong as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .expect("a search failed for good (the client retries retryable errors)");
                let hits = &r.results[0];
                let ids = match hits.keys.as_ref().and_then(|k| k.keys.as_ref()) {
                    Some(v1::primary_keys::Keys::IntKeys(l)) => l.values.clone(),
                    _ => Vec::new(),
                };
                answers.push((
                    Instant::now(),
                    probe,
                    r.mvcc_timestamp,
                    ids,
                    hits.scores.clone(),
                ));
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.nodes.get_mut(&victim).unwrap().kill();
    let mut rx = topology.subscribe();
    wait_topology(&mut rx, "shard 0's pchannel at a higher term", |t| {
        t.channels.get(&p0).is_some_and(|a| a.term.0 > term0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let answers = searcher.await.unwrap();

    // Every answer against the model at its timestamp.
    let inserted = inserted.lock().clone();
    let retried: BTreeSet<i64> = inserted
        .iter()
        .filter(|(_, _, took)| *took > Duration::from_millis(500))
        .map(|(id, _, _)| *id)
        .collect();
    let mut gap = Duration::ZERO;
    let mut last = killed_at;
    let mut after_kill = 0;
    for (at, probe, mvcc, ids, scores) in &answers {
        let q: Vec<f32> = (0..DIM)
            .map(|d| ((*probe as f32) * 0.37 + d as f32 * 1.3).sin())
            .collect();
        let live = |id: i64, t: u64| {
            inserted.iter().any(|(i, ts, _)| *i == id && *ts <= t)
                && !deleted.iter().any(|(i, ts)| *i == id && *ts <= t)
        };
        for id in ids {
            assert!(
                live(*id, *mvcc) || retried.contains(id),
                "a search at {mvcc} returned row {id}, which is deleted or not yet written then"
            );
        }
        let kth = scores.last().copied().unwrap_or(f32::INFINITY);
        for (id, ts, _) in &inserted {
            if *ts <= *mvcc && live(*id, *mvcc) && !ids.contains(id) {
                let d = sluice_query::vector::l2_squared(&q, &vector(*id));
                assert!(
                    d > kth + 1e-5 || (ids.len() == 5 && (d - kth).abs() <= 1e-5),
                    "a search at {mvcc} missed row {id} (distance {d}, 5th hit {kth}): {ids:?}"
                );
            }
        }
        if *at > killed_at {
            after_kill += 1;
            gap = gap.max(at.duration_since(last));
            last = *at;
        }
    }
    eprintln!(
        "{} searches ({after_kill} after the kill), longest wait for an answer after the kill {gap:?}, {} rows inserted ({} possibly retried)",
        answers.len(),
        inserted.len(),
        retried.len()
    );
    assert!(after_kill > 0, "no search answered after the kill");
    assert!(
        gap < Duration::from_secs(LEASE_TTL_MS / 1000 + 10),
        "searches stalled for {gap:?} after the owner was killed"
    );
}

/// An operator drains a node (`Coordinator.DrainNode`): its pchannels move to the other nodes
/// while a producer keeps writing without a single error, and it takes nothing new. Undrained
/// (and the two others drained), every pchannel moves to it. The node processes run throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_pchannels_over_and_takes_them_again_when_undrained() {
    use sluice_proto::v1;
    let Some(etcd) = etcd_endpoint(
        "a_drained_node_hands_its_pchannels_over_and_takes_them_again_when_undrained",
    ) else {
        return;
    };
    let mut cluster = start_cluster(etcd, &Medium::SharedDir);
    let coord = cluster.coord.endpoint();
    let (client, vchannels, mut rx) = flowing_client(&cluster).await;
    let flow = Flow::start(&client, &vchannels, 1);
    let progress = |n| flow.progress(n);
    progress(50).await;
    let mut coordinator =
        v1::coordinator_client::CoordinatorClient::new(sluice_proto::lazy_channel(&coord).unwrap());
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let first = ids[0];
    let drained = coordinator
        .drain_node(v1::DrainNodeRequest {
            node_id: first,
            undo: false,
        })
        .await
        .expect("drain")
        .into_inner()
        .drained;
    assert_eq!(drained, [first]);
    wait_topology(&mut rx, "no pchannel on the drained node", |t| {
        t.channels.len() == PCHANNELS && t.channels.values().all(|a| a.node_id.0 != first)
    })
    .await;
    progress(50).await;
    for &id in &ids[1..] {
        coordinator
            .drain_node(v1::DrainNodeRequest {
                node_id: id,
                undo: false,
            })
            .await
            .expect("drain");
    }
    let drained = coordinator
        .drain_node(v1::DrainNodeRequest {
            node_id: first,
            undo: true,
        })
        .await
        .expect("undrain")
        .into_inner()
        .drained;
    assert_eq!(drained, ids[1..]);
    wait_topology(&mut rx, "every pchannel on the undrained node", |t| {
        t.channels.len() == PCHANNELS && t.channels.values().all(|a| a.node_id.0 == first)
    })
    .await;
    progress(50).await;
    let (acked, errors) = flow.stop().await;
    assert!(errors.is_empty(), "the producer saw errors: {errors:?}");
    assert!(acked > 0);
    for (id, node) in cluster.nodes.iter_mut() {
        assert!(
            node.wait_exit(Duration::ZERO).is_none(),
            "node {id} exited while drained"
        );
    }
    eprintln!("drain and undrain: {acked} appends acknowledged, no error");
}

/// Producers appending in a closed loop, remembering when each acknowledgement came.
struct Flow {
    acks: Arc<Mutex<Vec<Instant>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Flow {
    fn start(client: &Client, vchannels: &Arc<Vec<VChannel>>, producers: usize) -> Flow {
        let (acks, errors) = (
            Arc::<Mutex<Vec<Instant>>>::default(),
            Arc::<Mutex<Vec<String>>>::default(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..producers {
            let (client, vchannels) = (client.clone(), vchannels.clone());
            let (acks, errors, stop) = (acks.clone(), errors.clone(), stop.clone());
            tasks.spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let v = &vchannels[(i + p) % vchannels.len()];
                    match client.append(insert(v, &format!("f{p}-{i}"))).await {
                        Ok(_) => acks.lock().push(Instant::now()),
                        Err(e) => errors.lock().push(format!("f{p}-{i}: {e}")),
                    }
                    i += 1;
                }
            });
        }
        Flow {
            acks,
            errors,
            stop,
            tasks,
        }
    }

    /// Waits (bounded) for `n` more acknowledgements.
    async fn progress(&self, n: usize) {
        let goal = self.acks.lock().len() + n;
        let deadline = Instant::now() + WAIT;
        while self.acks.lock().len() < goal {
            assert!(Instant::now() < deadline, "the producers stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The longest time between `from` and `to` in which no append was acknowledged, and
    /// when it began (after `from`).
    fn longest_gap(&self, from: Instant, to: Instant) -> (Duration, Duration) {
        let mut times: Vec<Instant> = self
            .acks
            .lock()
            .iter()
            .copied()
            .filter(|t| *t > from && *t < to)
            .collect();
        times.sort();
        let mut last = from;
        let mut longest = (Duration::ZERO, Duration::ZERO);
        for t in times.into_iter().chain([to]) {
            if t - last > longest.0 {
                longest = (t - last, last - from);
            }
            last = t;
        }
        longest
    }

    /// Stops the producers; returns how many appends were acknowledged and the errors seen.
    async fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(r) = self.tasks.join_next().await {
            r.expect("producer task");
        }
        let errors = self.errors.lock().clone();
        (self.acks.lock().len(), errors)
    }
}

/// A client of `cluster` once every pchannel is assigned, the collections created, and the
/// topology it follows.
async fn flowing_client(
    cluster: &Cluster,
) -> (Client, Arc<Vec<VChannel>>, watch::Receiver<Topology>) {
    let topology =
        Arc::new(CoordinatorTopology::connect(&cluster.coord.endpoint()).expect("endpoint"));
    let mut rx = topology.subscribe();
    wait_topology(&mut rx, "every pchannel assigned", |t| {
        t.channels.len() == PCHANNELS
    })
    .await;
    let client = Client::new(
        topology,
        Arc::new(RemoteAccess::new()),
        ClientConfig {
            timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        },
    );
    let vchannels = Arc::new(vchannels());
    for v in vchannels.iter() {
        client.append(create_collection(v)).await.expect("create");
    }
    (client, vchannels, rx)
}

/// Appends keep flowing while the coordinator is SIGKILLed and started again at the same
/// address: the restarted process takes its own leader key over at once (no waiting out its
/// previous lease), and nodes wait for timestamps instead of failing appends meanwhile. No
/// acknowledgement gap may exceed 0.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_keep_flowing_through_coordinator_restarts() {
    let Some(etcd) = etcd_endpoint("appends_keep_flowing_through_coordinator_restarts") else {
        return;
    };
    let mut cluster = start_cluster_of(etcd, &Medium::SharedDir, 2);
    let (client, vchannels, _) = flowing_client(&cluster).await;
    let flow = Flow::start(&client, &vchannels, PRODUCERS);
    flow.progress(100).await;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let killed = Instant::now();
        let start = tokio::task::block_in_place(|| cluster.restart_coord());
        flow.progress(100).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        rounds.push((start, flow.longest_gap(killed, Instant::now())));
    }
    let (acked, errors) = flow.stop().await;
    assert!(errors.is_empty(), "the producers saw errors: {errors:?}");
    eprintln!(
        "coordinator restarts (time to listen again, longest acknowledgement gap): {rounds:?}; {acked} appends acknowledged"
    );
    for (id, node) in cluster.nodes.iter_mut() {
        assert!(node.wait_exit(Duration::ZERO).is_none(), "node {id} exited");
    }
    for (_, (gap, _)) in &rounds {
        assert!(
            *gap <= Duration::from_millis(500),
            "an acknowledgement gap of {gap:?} through a coordinator restart: {rounds:?}"
        );
    }
}

/// A single-member etcd this test owns (to SIGKILL and restart it).
struct OwnEtcd {
    child: std::process::Child,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl OwnEtcd {
    fn start() -> OwnEtcd {
        let data = tempfile::tempdir().expect("temp dir");
        let (client_port, peer_port) = (support::free_port(), support::free_port());
        let child = OwnEtcd::spawn(data.path(), client_port, peer_port);
        let etcd = OwnEtcd {
            child,
            data,
            client_port,
            peer_port,
        };
        etcd.wait_healthy();
        etcd
    }

    fn spawn(data: &Path, client: u16, peer: u16) -> std::process::Child {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        std::process::Command::new("etcd")
            .args([
                "--name",
                "outage",
                "--data-dir",
                data.to_str().expect("utf-8 temp path"),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("outage={peer_url}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting etcd (test.sh installs it)")
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Waits until `/health` answers healthy (a leader is elected).
    fn wait_healthy(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + WAIT;
        loop {
            let healthy = std::net::TcpStream::connect(("127.0.0.1", self.client_port))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
                    let mut body = String::new();
                    s.read_to_string(&mut body)?;
                    Ok(body.contains("\"health\":\"true\""))
                })
                .unwrap_or(false);
            if healthy {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs etcd, waits `down`, starts it again on the same data and ports; returns the
    /// time from the kill until it answered healthy again.
    fn restart(&mut self, down: Duration) -> Duration {
        self.child.kill().expect("SIGKILL etcd");
        let killed = Instant::now();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = OwnEtcd::spawn(self.data.path(), self.client_port, self.peer_port);
        self.wait_healthy();
        killed.elapsed()
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd SIGKILLed and restarted under load: no node or coordinator process stops (they keep
/// serving the WALs they own while the meta store is away, and keep their registrations), and
/// appends stall no longer than etcd is away (plus a second of slack for reconnecting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_stops_no_process_and_appends_resume() {
    // Runs where the etcd tests run (the etcd binary is there).
    if etcd_endpoint("an_etcd_restart_stops_no_process_and_appends_resume").is_none() {
        return;
    }
    let mut etcd = OwnEtcd::start();
    let mut cluster = start_cluster_of(etcd.endpoint(), &Medium::SharedDir, 2);
    let (client, vchannels, _) = flowing_client(&cluster).await;
    let flow = Flow::start(&client, &vchannels, PRODUCERS);
    flow.progress(100).await;
    let mut rounds = Vec::new();
    for down in [Duration::from_millis(500), Duration::from_millis(1500)] {
        let killed = Instant::now();
        let outage = tokio::task::block_in_place(|| etcd.restart(down));
        flow.progress(100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        rounds.push((outage, flow.longest_gap(killed, Instant::now())));
    }
    let (acked, errors) = flow.stop().await;
    eprintln!(
        "etcd restarts (away for, longest acknowledgement gap): {rounds:?}; {acked} appends acknowledged"
    );
    assert!(errors.is_empty(), "the producers saw errors: {errors:?}");
    assert!(
        cluster.coord.wait_exit(Duration::ZERO).is_none(),
        "the coordinator exited"
    );
    for (id, node) in cluster.nodes.iter_mut() {
        assert!(node.wait_exit(Duration::ZERO).is_none(), "node {id} exited");
    }
    for (outage, (gap, _)) in &rounds {
        assert!(
            *gap <= *outage + Duration::from_secs(1),
            "appends stalled {gap:?} for an etcd outage of {outage:?}: {rounds:?}"
        );
    }
}

/// `sluice ctl move PCHANNEL NODE` under load: each move hands the pchannel over (a higher
/// term on the target node, which the topology lists), producers see no error, and bad
/// requests (a node that is not live, an unknown pchannel) are refused with a clear error and
/// move nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_move_hands_pchannels_over_under_load_without_errors() {
    let Some(etcd) = etcd_endpoint("ctl_move_hands_pchannels_over_under_load_without_errors")
    else {
        return;
    };
    let cluster = start_cluster(etcd, &Medium::SharedDir);
    let (client, vchannels, mut rx) = flowing_client(&cluster).await;
    let flow = Flow::start(&client, &vchannels, PRODUCERS);
    flow.progress(100).await;
    let coord = cluster.coord.endpoint();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--coord", &coord]);
        tokio::task::block_in_place(|| support::run_cli(&all, &[], WAIT))
    };
    let mut gaps = Vec::new();
    for round in 0..6 {
        let pchannel = pchannel_name(round % PCHANNELS);
        let before = wait_topology(&mut rx, &format!("{pchannel} assigned"), |t| {
            t.channels.contains_key(&pchannel)
        })
        .await;
        let from = before.channels[&pchannel].clone();
        let to = cluster
            .nodes
            .keys()
            .copied()
            .find(|id| *id != from.node_id.0 && (*id + round as u64).is_multiple_of(2))
            .or_else(|| {
                cluster
                    .nodes
                    .keys()
                    .copied()
                    .find(|id| *id != from.node_id.0)
            })
            .expect("another node");
        let asked = Instant::now();
        let out = ctl(&["move", &pchannel, &to.to_string()]);
        assert!(
            out.status.success(),
            "ctl move failed: {}{}",
            out.stdout,
            out.stderr
        );
        let term: u64 = out
            .stdout
            .split(" at term ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no term in {:?}", out.stdout));
        assert!(
            term > from.term.0,
            "{pchannel}: term {term} after {}",
            from.term
        );
        let after = wait_topology(&mut rx, &format!("{pchannel} on node {to}"), |t| {
            t.channels
                .get(&pchannel)
                .is_some_and(|a| a.node_id.0 == to && a.term.0 == term)
        })
        .await;
        assert_eq!(after.channels[&pchannel].node_id.0, to);
        flow.progress(100).await;
        gaps.push(flow.longest_gap(asked, Instant::now()).0);
    }
    // Bad requests change nothing.
    let layout = rx.borrow().channels.clone();
    let out = ctl(&["move", &pchannel_name(0), "99"]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not a live streaming node"),
        "{}",
        out.stderr
    );
    let out = ctl(&["move", "no-such-pchannel", "1"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("unknown pchannel"), "{}", out.stderr);
    assert_eq!(
        rx.borrow().channels,
        layout,
        "a refused move changed the layout"
    );
    let (acked, errors) = flow.stop().await;
    assert!(errors.is_empty(), "the producers saw errors: {errors:?}");
    eprintln!(
        "ctl move: 6 moves, longest acknowledgement gap around each: {gaps:?}; {acked} appends acknowledged, no error"
    );
}

/// A hung owner (SIGSTOPped, its lease still good for 30 s) does not hold a move up: `ctl move`
/// of its pchannel returns once the coordinator's bounded remove call has given up (5 s) and
/// the target has opened at the higher term — the storage fences the stopped owner — and the
/// producers go on there long before the lease would have expired. Continued, the old owner
/// finds itself fenced; no producer sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_does_not_hold_a_move_until_its_lease_expires() {
    const TTL_MS: u64 = 30_000;
    let Some(etcd) = etcd_endpoint("a_hung_owner_does_not_hold_a_move_until_its_lease_expires")
    else {
        return;
    };
    let cluster = start_cluster_with(etcd, &Medium::SharedDir, 2, TTL_MS);
    let (client, vchannels, mut rx) = flowing_client(&cluster).await;
    let flow = Flow::start(&client, &vchannels, PRODUCERS);
    flow.progress(100).await;
    let coord = cluster.coord.endpoint();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--coord", &coord]);
        tokio::task::block_in_place(|| support::run_cli(&all, &[], WAIT))
    };
    // Everything on node 2 but the first pchannel, which node 1 owns.
    let p0 = pchannel_name(0);
    for p in 0..PCHANNELS {
        let (name, to) = if p == 0 {
            (p0.clone(), 1)
        } else {
            (pchannel_name(p), 2)
        };
        if rx
            .borrow()
            .channels
            .get(&name)
            .is_some_and(|a| a.node_id.0 == to)
        {
            continue;
        }
        let out = ctl(&["move", &name, &to.to_string()]);
        assert!(out.status.success(), "ctl move {name} {to}: {}", out.stderr);
    }
    wait_topology(&mut rx, "sluice-dml_0 alone on node 1", |t| {
        t.channels.len() == PCHANNELS
            && t.channels
                .iter()
                .all(|(name, a)| a.node_id.0 == if *name == p0 { 1 } else { 2 })
    })
    .await;
    flow.progress(100).await;

    cluster.nodes[&1].signal(Signal::STOP);
    let stopped = Instant::now();
    let out = ctl(&["move", &p0, "2"]);
    let answered = stopped.elapsed();
    assert!(
        out.status.success(),
        "ctl move away from a stopped owner: {}",
        out.stderr
    );
    wait_topology(&mut rx, "sluice-dml_0 on node 2", |t| {
        t.channels.get(&p0).is_some_and(|a| a.node_id.0 == 2)
    })
    .await;
    flow.progress(100).await;
    let flowing = stopped.elapsed();
    assert!(
        flowing < Duration::from_millis(TTL_MS / 3),
        "appends resumed {flowing:?} after the owner stopped: the move waited for its lease"
    );
    cluster.nodes[&1].signal(Signal::CONT);
    flow.progress(100).await;
    let (acked, errors) = flow.stop().await;
    assert!(errors.is_empty(), "the producers saw errors: {errors:?}");
    eprintln!(
        "hung owner: ctl move answered {answered:?} after SIGSTOP, appends flowing again after \
         {flowing:?} (lease TTL {TTL_MS} ms); {acked} acknowledged, no error"
    );
}
