//! Process wiring: `standalone` (coordinator + node + embedded meta store + local log in one
//! process), `coord` and `node`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use async_trait::async_trait;
use sluice_client::access::WalAccess;
use sluice_client::{Client, ClientConfig, TopologySource};
use sluice_coord::assign::{AssignConfig, NodeClient};
use sluice_coord::broadcast::{AppendOutcome, BroadcastAppender};
use sluice_coord::keys::Keys;
use sluice_coord::leader::{Coordinator, CoordinatorConfig, LeaderOracle};
use sluice_coord::pchannel::PChannelNames;
use sluice_coord::registry::NodeSession;
use sluice_coord::service::CoordinatorService;
use sluice_coord::{CoordError, NodeId, NodeInfo};
use sluice_log::LogProvider;
use sluice_log::local::LocalProvider;
use sluice_meta::MetaStore;
use sluice_node::WalManager;
use sluice_node::coord_link::{GrpcNodeClient, LeaderOracleLink, LocalNodeClient, RemoteOracle};
use sluice_node::query::{QueryHost, QueryService};
use sluice_node::service::NodeService;
use sluice_storage::checkpoints::MetaCheckpointStore;
use sluice_storage::flusher::StorageConfig;
use sluice_storage::rows::ArrowRowCheck;
use sluice_types::{ErrorCode, MutableMessage, PChannel, VChannel};
use sluice_wal::shard::NodeGrowingBytes;
use sluice_wal::tso::{IdAllocator, TimestampOracle};
use sluice_wal::{WalConfig, WalDeps};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{Config, LogBackendConfig, MetaBackendConfig};
use crate::local_access::RoutedAccess;

/// Serves Prometheus metrics at `metrics_listen`, when configured: every process records its
/// counters and histograms through the `metrics` facade, and this exporter renders them.
pub(crate) fn serve_metrics(config: &Config) -> anyhow::Result<()> {
    let Some(listen) = config.metrics_listen.as_deref().filter(|l| !l.is_empty()) else {
        return Ok(());
    };
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("metrics_listen {listen:?} is not host:port"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    println!("metrics on http://{addr}/metrics");
    Ok(())
}

/// Opens the configured meta store: the one factory for every meta backend.
pub(crate) async fn meta_store(config: &Config) -> anyhow::Result<Arc<dyn MetaStore>> {
    Ok(match config.meta_backend() {
        #[cfg(feature = "etcd")]
        MetaBackendConfig::Etcd { endpoints } => Arc::new(
            sluice_meta::etcd::EtcdStore::connect(&endpoints)
                .await
                .with_context(|| format!("connecting to etcd at {endpoints:?}"))?,
        ),
        #[cfg(not(feature = "etcd"))]
        MetaBackendConfig::Etcd { .. } => {
            bail!("meta.backend = \"etcd\" needs a sluice binary built with the etcd feature")
        }
        MetaBackendConfig::Embedded { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            Arc::new(
                sluice_meta::embedded::EmbeddedStore::open(&path)
                    .with_context(|| format!("opening the meta store {}", path.display()))?,
            )
        }
    })
}

/// Opens the configured log backend: the one factory for every log backend.
pub(crate) fn log_provider(config: &Config) -> anyhow::Result<Arc<dyn LogProvider>> {
    let create = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
    };
    Ok(match config.log_backend()? {
        LogBackendConfig::Local(local) => {
            create(&local.root)?;
            let root = local.root.clone();
            Arc::new(
                LocalProvider::new(local)
                    .with_context(|| format!("opening the local log in {}", root.display()))?,
            )
        }
        LogBackendConfig::Object(object) => {
            if let sluice_log::object::ObjectStoreConfig::LocalDir(dir) = &object.store {
                create(dir)?;
            }
            Arc::new(
                sluice_log::object::ObjectProvider::new(object)
                    .context("opening the object log")?,
            )
        }
        #[cfg(feature = "kafka")]
        LogBackendConfig::Kafka(kafka) => {
            Arc::new(sluice_log::kafka::KafkaProvider::new(kafka).context("opening the kafka log")?)
        }
    })
}

fn wal_config(config: &Config) -> WalConfig {
    config.wal.wal_config()
}

/// The recovery storage (object store + manifests in the meta store), if configured.
fn storage_config(
    config: &Config,
    store: &Arc<dyn MetaStore>,
) -> anyhow::Result<Option<Arc<StorageConfig>>> {
    Ok(config.storage_store()?.map(|objects| {
        let st = &config.storage;
        Arc::new(StorageConfig {
            store: objects,
            meta: store.clone(),
            meta_root: config.meta.root.clone(),
            retention: Config::ms(st.retention_ms),
            truncate_interval: Config::ms(st.truncate_interval_ms),
            checkpoint_interval: Config::ms(st.checkpoint_interval_ms),
            max_body_bytes: st.max_body_bytes,
        })
    }))
}

/// The node's WAL manager, with timestamps and ids from `oracle`.
fn wal_manager<O>(
    config: &Config,
    provider: Arc<dyn LogProvider>,
    oracle: Arc<O>,
    store: Arc<dyn MetaStore>,
) -> anyhow::Result<Arc<WalManager>>
where
    O: TimestampOracle + IdAllocator,
{
    let storage = storage_config(config, &store)?;
    let growing = NodeGrowingBytes::new();
    let pressure = sluice_wal::Pressure::with_in_flight_cap(config.node.max_in_flight_bytes);
    let manager = WalManager::new(
        provider,
        wal_config(config),
        WalDeps {
            oracle: oracle.clone(),
            ids: oracle,
            node_growing: growing.clone(),
            pressure: pressure.clone(),
            checkpoints: Some(MetaCheckpointStore::new(store, config.meta.root.clone())),
            rows: Some(Arc::new(ArrowRowCheck {
                max_body_bytes: config.storage.max_body_bytes,
            })),
        },
    );
    let manager = match storage {
        Some(s) if config.query.enabled => manager
            .with_storage(s.clone())
            .with_compaction(config.storage.compaction_config())
            .with_query(QueryHost::new(s, config.query.query_config()?)),
        Some(s) => manager
            .with_storage(s)
            .with_compaction(config.storage.compaction_config()),
        None => manager,
    };
    let manager = Arc::new(manager);
    let mut dirs = vec![config.data_dir.clone()];
    if config.log.backend != crate::config::LogBackend::Kafka {
        dirs.push(config.log_dir());
    }
    if config
        .storage
        .s3_endpoint
        .as_deref()
        .is_none_or(str::is_empty)
    {
        dirs.push(
            config
                .storage
                .dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("storage")),
        );
    }
    let watched = Arc::downgrade(&manager);
    tokio::spawn(sluice_node::pressure::monitor(
        pressure,
        sluice_node::pressure::PressureConfig {
            dirs,
            min_free_bytes: config.node.min_free_disk_bytes,
            memory_cap_bytes: config.node.memory_cap_bytes,
            interval: std::time::Duration::from_millis(200),
        },
        move || {
            watched
                .upgrade()
                .map(|m| m.buffered_bytes().saturating_add(growing.get()))
        },
        tokio_util::sync::CancellationToken::new(),
    ));
    Ok(manager)
}

/// Where pchannels live, from the coordinator's assignment stream.
struct TopologyLocator {
    rx: watch::Receiver<sluice_client::Topology>,
    _source: sluice_client::topology::CoordinatorTopology,
}

impl TopologyLocator {
    fn new(source: sluice_client::topology::CoordinatorTopology) -> TopologyLocator {
        use sluice_client::TopologySource;
        TopologyLocator {
            rx: source.subscribe(),
            _source: source,
        }
    }
}

impl sluice_node::query::ShardLocator for TopologyLocator {
    fn owner(&self, pchannel: &str) -> Option<String> {
        self.rx
            .borrow()
            .channels
            .get(pchannel)
            .map(|a| a.address.clone())
    }
}

/// The `Query` service over the node's delegators, when it has them.
fn query_server(
    manager: &WalManager,
) -> Option<sluice_proto::v1::query_server::QueryServer<QueryService>> {
    manager
        .query()
        .map(|host| QueryService::new(host.clone()).server())
}

/// Serves `router` until `session`'s registration is lost for good (another process registered
/// the id after its lease lapsed), or until a shutdown signal and a
/// drain: the registration is marked stopping, so the coordinator moves what this process holds
/// to others while it still serves, and the server stops once `held` is zero (or after
/// `drain_timeout`). True when the registration was lost.
async fn serve_until_lost(
    router: sluice_proto::security::Router,
    listener: TcpListener,
    session: &NodeSession,
    held: impl Fn() -> usize,
    drain_timeout: std::time::Duration,
    can_move: impl std::future::Future<Output = bool>,
) -> anyhow::Result<bool> {
    let lost = std::sync::atomic::AtomicBool::new(false);
    serve(router, listener, async {
        tokio::select! {
            _ = shutdown_signal() => {
                if held() > 0 && !can_move.await {
                    tracing::info!("stopping: no other process can take over; closing at once");
                    return;
                }
                if let Err(e) = session.set_stopping().await {
                    tracing::warn!(error = %e, "could not mark the registration stopping; stopping without a drain");
                    return;
                }
                tracing::info!(held = held(), "stopping: waiting for the coordinator to move what this process holds");
                let started = std::time::Instant::now();
                let drained = async {
                    while held() > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    _ = drained => tracing::info!(elapsed = ?started.elapsed(), "drained"),
                    _ = tokio::time::sleep(drain_timeout) => tracing::warn!(held = held(), ?drain_timeout, "drain timed out; stopping anyway"),
                    _ = session.lost() => lost.store(true, std::sync::atomic::Ordering::Relaxed),
                }
            }
            _ = session.lost() => lost.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    })
    .await?;
    Ok(lost.into_inner())
}

/// Whether a streaming node other than `me` is registered and not stopping (one that can take
/// this node's WALs).
async fn other_nodes_serve(store: &Arc<dyn MetaStore>, config: &Config, me: NodeId) -> bool {
    use prost::Message as _;
    let keys = Keys::new(config.meta.root.clone());
    match store.scan_prefix(&keys.node_prefix()).await {
        Ok((kvs, _)) => kvs.iter().any(|kv| {
            sluice_coord::registry::NodeRecord::decode(kv.value.as_ref())
                .is_ok_and(|r| r.id != me.0 && !r.stopping)
        }),
        Err(e) => {
            tracing::warn!(error = %e, "listing the other nodes failed; stopping without a drain");
            false
        }
    }
}

/// Registers this process's node (`node.id`) at `address` under a lease of `node.lease_ttl_ms`
/// (a query worker under `{root}/query/`).
async fn register_node(
    store: Arc<dyn MetaStore>,
    config: &Config,
    address: String,
) -> anyhow::Result<NodeSession> {
    register_under(store, &Keys::new(config.meta.root.clone()), config, address).await
}

async fn register_under(
    store: Arc<dyn MetaStore>,
    keys: &Keys,
    config: &Config,
    address: String,
) -> anyhow::Result<NodeSession> {
    NodeSession::register(
        store,
        keys,
        NodeInfo {
            id: NodeId(config.node.id),
            address,
            stopping: false,
            incarnation: 0,
        },
        Config::ms(config.node.lease_ttl_ms),
    )
    .await
    .context("registering the node")
}

fn coordinator_config(config: &Config, candidate: String) -> CoordinatorConfig {
    let pchannels = if config.pchannels.names.is_empty() {
        PChannelNames::Count {
            prefix: config.pchannels.prefix.clone(),
            count: config.pchannels.count,
        }
    } else {
        PChannelNames::Explicit(config.pchannels.names.clone())
    };
    let mut c = CoordinatorConfig::new(candidate, pchannels);
    c.keys = Keys::new(config.meta.root.clone());
    c.election_ttl = Config::ms(config.coord.election_ttl_ms);
    c.assign = AssignConfig {
        trigger_interval: Config::ms(config.coord.trigger_interval_ms),
        call_timeout: Config::ms(config.coord.call_timeout_ms),
        assign_timeout: Config::ms(config.coord.assign_timeout_ms),
        balance: config.coord.balance_config(),
        ..AssignConfig::default()
    };
    c
}

/// The topology of the coordinator in this process, for an in-process client.
pub(crate) struct LeaderTopology {
    rx: watch::Receiver<sluice_client::Topology>,
    coordinator: Arc<Coordinator>,
    _task: AbortOnDropHandle<()>,
}

impl LeaderTopology {
    /// Follows `coordinator`'s topology whenever it is the leader.
    pub(crate) fn new(coordinator: Arc<Coordinator>) -> LeaderTopology {
        let (tx, rx) = watch::channel(sluice_client::Topology::default());
        let mut leadership = coordinator.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let leader = leadership.borrow_and_update().clone();
                if let Some(leader) = leader {
                    let mut topology = leader.assigner.subscribe();
                    loop {
                        let t = topology.borrow_and_update().clone();
                        tx.send_replace(client_topology(&t));
                        tokio::select! {
                            changed = topology.changed() => if changed.is_err() { break },
                            changed = leadership.changed() => {
                                if changed.is_err() { return }
                                break;
                            }
                        }
                    }
                } else if leadership.changed().await.is_err() {
                    return;
                }
            }
        });
        LeaderTopology {
            rx,
            coordinator,
            _task: AbortOnDropHandle::new(task),
        }
    }
}

fn client_topology(t: &sluice_coord::assign::Topology) -> sluice_client::Topology {
    sluice_client::Topology {
        version: t.version,
        channels: t
            .channels
            .iter()
            .filter_map(|(name, (term, node))| {
                let pchannel = PChannel::new(name).ok()?;
                Some((
                    name.clone(),
                    sluice_client::Assignment {
                        pchannel,
                        term: *term,
                        node_id: node.id,
                        address: node.address.clone(),
                    },
                ))
            })
            .collect(),
    }
}

#[async_trait]
impl TopologySource for LeaderTopology {
    fn subscribe(&self) -> watch::Receiver<sluice_client::Topology> {
        self.rx.clone()
    }

    async fn report_error(
        &self,
        pchannel: &PChannel,
        term: sluice_types::Term,
        code: ErrorCode,
        cause: &str,
    ) {
        if let Some(leader) = self.coordinator.leader_now() {
            tracing::debug!(%pchannel, %term, code = code.name(), cause, "client reported an error");
            let _ = leader.assigner.report_error(pchannel.as_str(), term).await;
        }
    }
}

/// Broadcast copies go out through a client.
struct ClientAppender(std::sync::OnceLock<Client>);

#[async_trait]
impl BroadcastAppender for ClientAppender {
    async fn append(
        &self,
        _vchannel: &VChannel,
        message: MutableMessage,
    ) -> Result<AppendOutcome, CoordError> {
        let client = self.0.get().ok_or(CoordError::Shutdown)?;
        let r = client.append(message).await.map_err(|e| match e.code {
            ErrorCode::InvalidArgument => CoordError::InvalidArgument(e.message),
            _ => CoordError::Node {
                node: "wal".into(),
                reason: e.to_string(),
            },
        })?;
        Ok(AppendOutcome {
            id: r.id,
            timestamp: r.timestamp,
        })
    }
}

async fn bind(listen: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// The gRPC server of this process: TLS and the token check of `config` in front of every
/// service (health checks pass without a token).
fn grpc_server(config: &Config) -> anyhow::Result<sluice_proto::security::Server> {
    let security = config.server_security()?;
    sluice_proto::security::server(&security).context("tls / auth")
}

/// How long open streams get to finish after a shutdown signal.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `router` until it fails or `stop` resolves; then gives open streams [`GRACE`] to end.
async fn serve(
    router: sluice_proto::security::Router,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // Accepted sockets get TCP_NODELAY: with Nagle's algorithm, small responses wait for the
    // peer's delayed ACK (tens of ms) whenever several appends share a connection.
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| anyhow::anyhow!("accepting connections: {e}"))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = rx.await;
    }));
    tokio::select! {
        r = &mut server => return r.context("gRPC server task")?.context("serving gRPC"),
        _ = stop => {}
    }
    let _ = tx.send(());
    match tokio::time::timeout(GRACE, &mut server).await {
        Ok(r) => r.context("gRPC server task")?.context("serving gRPC"),
        Err(_) => {
            tracing::warn!("open streams did not end within {GRACE:?}; closing them");
            server.abort();
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// A standalone server running in this process: coordinator, node (its [`WalManager`]) and the
/// gRPC services on one listener. [`Standalone::stop`] shuts it down in order: the gRPC server
/// (open streams get [`GRACE`]), then the node's WALs, its registration, the coordinator.
pub(crate) struct Standalone {
    /// The address the gRPC services listen on.
    pub(crate) addr: SocketAddr,
    /// The node's id.
    pub(crate) node_id: NodeId,
    /// The node's WALs.
    pub(crate) manager: Arc<WalManager>,
    /// The coordinator's topology, read in process.
    pub(crate) topology: Arc<LeaderTopology>,
    coordinator: Arc<Coordinator>,
    session: NodeSession,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The Milvus API, when served.
    pub(crate) milvus: Option<MilvusServer>,
}

/// The Milvus-compatible API served on its own listener (`milvus_listen`).
pub(crate) struct MilvusServer {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl MilvusServer {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The Milvus port a standalone server tries when `milvus_listen` is not set.
const DEFAULT_MILVUS_LISTEN: &str = "127.0.0.1:19530";

/// Serves the Milvus API on `config.milvus_listen` over Sluice at `coord` / `query`, appending
/// through `client`. Unset: none, except for a standalone server (`default_port`), which tries
/// [`DEFAULT_MILVUS_LISTEN`] and goes on without it (with a warning) when that port is taken.
/// Empty: none.
async fn serve_milvus(
    config: &Config,
    default_port: bool,
    coord: &str,
    query: &str,
    client: Client,
) -> anyhow::Result<Option<MilvusServer>> {
    let (listen, explicit) = match config.milvus_listen.as_deref() {
        Some("") => return Ok(None),
        Some(l) => (l, true),
        None if default_port => (DEFAULT_MILVUS_LISTEN, false),
        None => return Ok(None),
    };
    let (listener, addr) = match bind(listen).await {
        Ok(b) => b,
        Err(e) if !explicit => {
            tracing::warn!(error = %e, "the Milvus API is not served: {listen} is not free (set milvus_listen)");
            eprintln!(
                "warning: the Milvus API is not served: {listen}: {e:#} (set --milvus-listen)"
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("milvus_listen {listen}")),
    };
    let front =
        sluice_milvus::MilvusFront::connect(coord, query, client, config.milvus_authorization)
            .map_err(|e| anyhow::anyhow!("the Milvus front: {e}"))?;
    let mut security = config.server_security()?;
    if config.milvus_authorization {
        // Milvus clients send their user and password where the token would go.
        security.token = None;
    }
    let router = sluice_proto::security::server(&security)
        .context("tls / auth")?
        .add_service(front.server());
    let stop = tokio_util::sync::CancellationToken::new();
    let cancelled = stop.clone();
    let task = tokio::spawn(serve(router, listener, async move {
        cancelled.cancelled().await;
    }));
    Ok(Some(MilvusServer { addr, stop, task }))
}

impl Standalone {
    /// Opens the meta store and the log under `config.data_dir`, binds `config.listen` and
    /// starts serving.
    pub(crate) async fn start(config: &Config) -> anyhow::Result<Standalone> {
        let store = meta_store(config).await?;
        let provider = log_provider(config)?;
        let (listener, addr) = bind(&config.listen).await?;
        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let node_id = NodeId(config.node.id);

        let appender = Arc::new(ClientAppender(std::sync::OnceLock::new()));
        // The node's WALs need timestamps from the coordinator, which needs the node to place
        // pchannels on: the coordinator starts with a client to the manager built just below.
        let manager_slot: Arc<std::sync::OnceLock<Arc<WalManager>>> = Arc::default();
        let coordinator = Arc::new(Coordinator::start(
            store.clone(),
            coordinator_config(config, format!("standalone-{advertise}")),
            Arc::new(DeferredNodeClient(manager_slot.clone(), node_id)),
            appender.clone(),
        )?);
        let oracle = Arc::new(LeaderOracleLink(Arc::new(LeaderOracle::new(
            coordinator.clone(),
        ))));
        let manager = wal_manager(config, provider, oracle, store.clone())?;
        let _ = manager_slot.set(manager.clone());
        let topology = Arc::new(LeaderTopology::new(coordinator.clone()));
        let access: Arc<dyn WalAccess> =
            Arc::new(RoutedAccess::new(Some((node_id, manager.clone()))));
        let client = Client::new(topology.clone(), access, ClientConfig::default());
        let _ = appender.0.set(client.clone());

        let session = register_node(store.clone(), config, advertise.clone()).await?;

        let node = NodeService::new(node_id, manager.clone());
        let coord_service = CoordinatorService::new(coordinator.clone());
        let (mut reporter, health_service) = health();
        reporter
            .set_serving::<sluice_proto::v1::streaming_node_server::StreamingNodeServer<NodeService>>()
            .await;
        let router = grpc_server(config)?
            .add_service(health_service)
            .add_service(node.streaming_server())
            .add_service(node.manager_server())
            .add_optional_service(query_server(&manager))
            .add_service(coord_service.server());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(router, listener, async move {
            let _ = stopped.await;
        }));
        let own = format!("http://{addr}");
        let milvus = serve_milvus(config, true, &own, &own, client).await?;
        Ok(Standalone {
            addr,
            node_id,
            manager,
            topology,
            coordinator,
            session,
            stop,
            server,
            milvus,
        })
    }

    /// Serves until `signal` resolves (or the server fails), then shuts down.
    pub(crate) async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let served = tokio::select! {
            r = &mut self.server => Some(r),
            _ = signal => None,
        };
        let served = match served {
            Some(r) => r,
            None => {
                let _ = self.stop.send(());
                (&mut self.server).await
            }
        };
        if let Some(m) = self.milvus.take() {
            m.stop().await;
        }
        let _ = self.session.set_stopping().await;
        self.manager.shutdown().await;
        let _ = self.session.close().await;
        self.coordinator.shutdown().await;
        served.context("gRPC server task")?
    }

    /// Shuts down now.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.run_until(std::future::ready(())).await
    }
}

/// `sluice standalone`.
pub(crate) async fn standalone(config: Config) -> anyhow::Result<()> {
    let server = Standalone::start(&config).await?;
    println!(
        "sluice standalone listening on {} (data dir {}, {} pchannels)",
        server.addr,
        config.data_dir.display(),
        if config.pchannels.names.is_empty() {
            config.pchannels.count as usize
        } else {
            config.pchannels.names.len()
        }
    );
    if let Some(m) = &server.milvus {
        println!("Milvus API listening on {}", m.addr);
    }
    server
        .run_until(async {
            shutdown_signal().await;
            println!("shutting down");
        })
        .await
}

/// A node client for the node in this process, available once the node is built.
struct DeferredNodeClient(Arc<std::sync::OnceLock<Arc<WalManager>>>, NodeId);

impl DeferredNodeClient {
    fn inner(&self) -> Result<LocalNodeClient, sluice_coord::assign::NodeCallError> {
        self.0
            .get()
            .map(|m| LocalNodeClient::new(self.1, m.clone()))
            .ok_or_else(|| sluice_coord::assign::NodeCallError::Failed("node is starting".into()))
    }
}

#[async_trait]
impl NodeClient for DeferredNodeClient {
    async fn assign(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: sluice_types::Term,
    ) -> Result<(), sluice_coord::assign::NodeCallError> {
        self.inner()?.assign(node, pchannel, term).await
    }

    async fn remove(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: sluice_types::Term,
    ) -> Result<(), sluice_coord::assign::NodeCallError> {
        self.inner()?.remove(node, pchannel, term).await
    }
}

/// `sluice coord`.
pub(crate) async fn coord(config: Config) -> anyhow::Result<()> {
    let store = meta_store(&config).await?;
    let (listener, addr) = bind(&config.listen).await?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let appender = Arc::new(ClientAppender(std::sync::OnceLock::new()));
    let coordinator = Arc::new(Coordinator::start(
        store,
        coordinator_config(&config, format!("coord-{advertise}")),
        Arc::new(GrpcNodeClient::new()),
        appender.clone(),
    )?);
    let topology = Arc::new(LeaderTopology::new(coordinator.clone()));
    let _ = appender.0.set(Client::new(
        topology,
        Arc::new(RoutedAccess::new(None)),
        ClientConfig::default(),
    ));
    let (_reporter, health_service) = health();
    println!("sluice coord listening on {addr}");
    let router = grpc_server(&config)?
        .add_service(health_service)
        .add_service(CoordinatorService::new(coordinator.clone()).server());
    serve(router, listener, shutdown_signal()).await?;
    coordinator.shutdown().await;
    Ok(())
}

/// `sluice node`.
pub(crate) async fn node(config: Config) -> anyhow::Result<()> {
    let store = meta_store(&config).await?;
    let provider = log_provider(&config)?;
    let (listener, addr) = bind(&config.listen).await?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let oracle = Arc::new(
        RemoteOracle::new(&config.coord.endpoint)
            .map_err(anyhow::Error::msg)
            .context("coord.endpoint")?,
    );
    let manager = wal_manager(&config, provider, oracle, store.clone())?;
    if let Some(host) = manager.query() {
        // Reads of collections whose shards live on other nodes are forwarded to their owners.
        let topology =
            sluice_client::topology::CoordinatorTopology::connect(&config.coord.endpoint)
                .map_err(|e| anyhow::anyhow!("coord.endpoint: {e}"))?;
        host.set_locator(Arc::new(TopologyLocator::new(topology)), advertise.clone());
    }
    let node_id = NodeId(config.node.id);
    let session = register_node(store.clone(), &config, advertise.clone()).await?;
    let service = NodeService::new(node_id, manager.clone());
    let (_reporter, health_service) = health();
    println!(
        "sluice node {} listening on {addr} (advertised as {advertise})",
        node_id.0
    );
    let router = grpc_server(&config)?
        .add_service(health_service)
        .add_service(service.streaming_server())
        .add_service(service.manager_server())
        .add_optional_service(query_server(&manager));
    // The Milvus API (when `milvus_listen` is set) goes through the coordinator and this node's
    // query service, and appends like any client.
    let milvus_client = Client::new(
        Arc::new(
            sluice_client::topology::CoordinatorTopology::connect(&config.coord.endpoint)
                .map_err(|e| anyhow::anyhow!("coord.endpoint: {e}"))?,
        ),
        Arc::new(RoutedAccess::new(Some((node_id, manager.clone())))),
        ClientConfig::default(),
    );
    let milvus = serve_milvus(
        &config,
        false,
        &config.coord.endpoint,
        &format!("http://{addr}"),
        milvus_client,
    )
    .await?;
    if let Some(m) = &milvus {
        println!("Milvus API listening on {}", m.addr);
    }
    let drain = Config::ms(config.node.drain_timeout_ms);
    let held = || manager.status().len();
    let lost = serve_until_lost(router, listener, &session, held, drain, async {
        other_nodes_serve(&store, &config, node_id).await
    })
    .await?;
    if let Some(m) = milvus {
        m.stop().await;
    }
    manager.shutdown().await;
    if lost {
        bail!("the node's registration lease was lost and another process registered its id");
    }
    let _ = session.close().await;
    Ok(())
}

/// `sluice querynode`: a query worker alone — it registers under `{root}/query/node/{node.id}`,
/// holds the sealed segments the coordinator places on it and runs the replica delegators
/// placed on it (fed from their WAL's owner, found through the coordinator at `coord.endpoint`).
pub(crate) async fn querynode(config: Config) -> anyhow::Result<()> {
    let store = meta_store(&config).await?;
    let Some(storage) = storage_config(&config, &store)? else {
        bail!("a query worker reads segments from object storage: configure [storage]");
    };
    let (listener, addr) = bind(&config.listen).await?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let query = config.query.query_config()?;
    let worker = sluice_node::worker::QueryWorker::start(
        storage.clone(),
        query,
        config.node.id,
        advertise.clone(),
    );
    let topology = Arc::new(
        sluice_client::topology::CoordinatorTopology::connect(&config.coord.endpoint)
            .map_err(|e| anyhow::anyhow!("coord.endpoint: {e}"))?,
    );
    let host = QueryHost::new(storage.clone(), query);
    worker.set_replicas(host.clone());
    host.set_locator(
        Arc::new(TopologyLocator::new(
            sluice_client::topology::CoordinatorTopology::connect(&config.coord.endpoint)
                .map_err(|e| anyhow::anyhow!("coord.endpoint: {e}"))?,
        )),
        advertise.clone(),
    );
    let client = Client::new(
        topology,
        Arc::new(sluice_client::access::RemoteAccess::new()),
        ClientConfig::default(),
    );
    let replicas = AbortOnDropHandle::new(tokio::spawn(crate::replica::follow(
        host.clone(),
        client,
        storage,
        config.node.id,
        advertise.clone(),
    )));
    let keys = Keys::new(config.meta.root.clone()).query_workers();
    let session = register_under(store, &keys, &config, advertise.clone())
        .await
        .context("registering the query worker")?;
    let (_reporter, health_service) = health();
    println!(
        "sluice querynode {} listening on {addr} (advertised as {advertise})",
        config.node.id
    );
    let router = grpc_server(&config)?
        .add_service(health_service)
        .add_service(worker.server())
        .add_service(QueryService::new(host).server());
    let drain = Config::ms(config.node.drain_timeout_ms);
    let held = || worker.loaded().len();
    // With no other worker, the coordinator removes the placements: the delegators take the
    // segments back, and the drain ends as well.
    let lost = serve_until_lost(router, listener, &session, held, drain, async { true }).await?;
    drop(replicas);
    if lost {
        bail!(
            "the query worker's registration lease was lost and another process registered its id"
        );
    }
    let _ = session.close().await;
    Ok(())
}
