//! The coordinator process: campaign for leadership, and while leader run everything the
//! cluster needs from its coordinator.
//!
//! On winning the election the leader opens, in order: the timestamp oracle and id allocator
//! (whose persisted windows make sure it never hands out anything a predecessor did), the
//! pchannel records, the node watcher, the assignment loop and the broadcaster (which resumes
//! the tasks a predecessor left). When leadership is lost (lease lapsed, key taken) everything is
//! shut down and the process campaigns again. Callers reach the current leader's parts through
//! [`Coordinator::leader`], which waits (bounded) while an election is in progress.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_meta::MetaStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use sluice_types::backoff::Backoff;

use crate::assign::{AssignConfig, Assigner, NodeClient};
use crate::broadcast::{BroadcastAppender, BroadcastConfig, BroadcastIds, Broadcaster};
use crate::election::Election;
use crate::keys::Keys;
use crate::pchannel::{ChannelManager, PChannelNames};
use crate::registry::NodeWatcher;
use crate::tso::{Ids, IdsConfig, SystemClock, Tso, TsoConfig};
use crate::{CoordError, Result};

/// Everything a coordinator needs to know.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Key layout (root) in the meta store.
    pub keys: Keys,
    /// This process's name in the election (unique per coordinator process).
    pub candidate: String,
    /// Leader lease TTL: a standby takes over this long after the leader dies. Default 10 s.
    pub election_ttl: Duration,
    /// The pchannels to manage.
    pub pchannels: PChannelNames,
    /// Timestamp oracle settings.
    pub tso: TsoConfig,
    /// Id allocator settings.
    pub ids: IdsConfig,
    /// Assignment loop settings.
    pub assign: AssignConfig,
    /// Broadcaster settings.
    pub broadcast: BroadcastConfig,
    /// Before its first placement a new leader waits until the node set has not changed for this
    /// long (at most five times as long in all), so nodes starting together with the cluster
    /// share the pchannels from the start instead of the first one to register taking them all.
    /// Default 1 s.
    pub node_settle: Duration,
    /// Query placement settings.
    pub placement: crate::placement::PlacementConfig,
}

impl CoordinatorConfig {
    /// Defaults for `candidate` managing `pchannels`.
    pub fn new(candidate: impl Into<String>, pchannels: PChannelNames) -> CoordinatorConfig {
        CoordinatorConfig {
            keys: Keys::default(),
            candidate: candidate.into(),
            election_ttl: Duration::from_secs(10),
            pchannels,
            tso: TsoConfig::default(),
            ids: IdsConfig::default(),
            assign: AssignConfig::default(),
            broadcast: BroadcastConfig::default(),
            node_settle: Duration::from_secs(1),
            placement: crate::placement::PlacementConfig::default(),
        }
    }
}

/// The leader's timestamp oracle and id allocator. They are served as soon as they are open,
/// before the rest of the leader (which first waits for nodes to settle): nodes keep getting
/// timestamps across a coordinator restart.
#[derive(Debug)]
pub struct Oracles {
    /// Timestamps.
    pub tso: Arc<Tso>,
    /// Ids.
    pub ids: Arc<Ids>,
}

/// The parts a leader runs.
pub struct LeaderState {
    /// Timestamps.
    pub tso: Arc<Tso>,
    /// Ids.
    pub ids: Arc<Ids>,
    /// The pchannel records.
    pub channels: Arc<ChannelManager>,
    /// The assignment loop and topology.
    pub assigner: Arc<Assigner>,
    /// Broadcasts.
    pub broadcaster: Arc<Broadcaster>,
    /// Live nodes.
    pub nodes: Arc<NodeWatcher>,
    /// Collections.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// Sealed segments on query workers (taken on shutdown).
    pub placement: parking_lot::Mutex<Option<crate::placement::Placement>>,
    /// Nodes an operator drained ([`crate::keys::Keys::drain`]): the assignment loop sees them
    /// as stopping.
    pub drained: watch::Sender<std::collections::BTreeSet<crate::NodeId>>,
    _drain_merge: crate::registry::OwnedTask,
}

impl std::fmt::Debug for LeaderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderState").finish_non_exhaustive()
    }
}

/// A running coordinator process (leader or standby). Dropping it stops everything.
pub struct Coordinator {
    state: watch::Receiver<Option<Arc<LeaderState>>>,
    oracles: watch::Receiver<Option<Arc<Oracles>>>,
    store: Arc<dyn MetaStore>,
    root: String,
    cancel: CancellationToken,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("leader", &self.state.borrow().is_some())
            .finish()
    }
}

struct IdsForBroadcast(Arc<Ids>);

#[async_trait]
impl BroadcastIds for IdsForBroadcast {
    async fn next_id(&self) -> Result<u64> {
        self.0.allocate(1).await
    }
}

impl Coordinator {
    /// Starts campaigning; returns at once.
    pub fn start(
        store: Arc<dyn MetaStore>,
        config: CoordinatorConfig,
        nodes: Arc<dyn NodeClient>,
        appender: Arc<dyn BroadcastAppender>,
    ) -> Result<Coordinator> {
        config.assign.validate()?;
        config.pchannels.resolve()?;
        let (tx, rx) = watch::channel(None);
        let (oracles_tx, oracles) = watch::channel(None);
        let cancel = CancellationToken::new();
        let root = config.keys.root().to_owned();
        let task = tokio::spawn(run(
            store.clone(),
            config,
            nodes,
            appender,
            Published {
                state: tx,
                oracles: oracles_tx,
            },
            cancel.clone(),
        ));
        Ok(Coordinator {
            state: rx,
            oracles,
            store,
            root,
            cancel,
            task: parking_lot::Mutex::new(Some(task)),
        })
    }

    /// The meta store and its key root (reads any coordinator may serve).
    pub fn meta(&self) -> (&Arc<dyn MetaStore>, &str) {
        (&self.store, &self.root)
    }

    /// The leader's parts if this process is the leader now.
    pub fn leader_now(&self) -> Option<Arc<LeaderState>> {
        self.state.borrow().clone()
    }

    /// The leader's parts, waiting up to `patience` for this process to become leader.
    pub async fn leader(&self, patience: Duration) -> Result<Arc<LeaderState>> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(patience, wait).await {
            Ok(Ok(state)) => Ok(state.clone().expect("waited for Some")),
            Ok(Err(_)) => Err(CoordError::Shutdown),
            Err(_) => Err(CoordError::NotLeader),
        }
    }

    /// The leader's oracles, waiting up to `patience` for this process to open them as leader.
    pub async fn oracles(&self, patience: Duration) -> Result<Arc<Oracles>> {
        let mut rx = self.oracles.clone();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(patience, wait).await {
            Ok(Ok(o)) => Ok(o.clone().expect("waited for Some")),
            Ok(Err(_)) => Err(CoordError::Shutdown),
            Err(_) => Err(CoordError::NotLeader),
        }
    }

    /// Leadership changes: `Some` while leader.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<LeaderState>>> {
        self.state.clone()
    }

    /// Stops (resigning leadership if held) and waits until everything stopped.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the leader loop publishes to the process.
struct Published {
    state: watch::Sender<Option<Arc<LeaderState>>>,
    oracles: watch::Sender<Option<Arc<Oracles>>>,
}

impl Published {
    fn clear(&self) {
        self.state.send_replace(None);
        self.oracles.send_replace(None);
    }
}

async fn run(
    store: Arc<dyn MetaStore>,
    config: CoordinatorConfig,
    nodes: Arc<dyn NodeClient>,
    appender: Arc<dyn BroadcastAppender>,
    published: Published,
    cancel: CancellationToken,
) {
    let election = Election::new(
        store.clone(),
        &config.keys,
        config.candidate.clone(),
        config.election_ttl,
    );
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let leadership = tokio::select! {
            _ = cancel.cancelled() => return,
            l = election.campaign() => l,
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "campaign failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        tracing::info!(candidate = %config.candidate, "became the coordinator leader");
        let started = tokio::select! {
            _ = cancel.cancelled() => { published.clear(); let _ = leadership.resign().await; return; }
            _ = leadership.lost() => { tracing::warn!("lost leadership while starting"); published.clear(); continue; }
            s = start_leader(&store, &config, &nodes, &appender, &published.oracles) => s,
        };
        let leader = match started {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(error = %e, "could not start as leader; resigning");
                published.clear();
                let _ = leadership.resign().await;
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        published.state.send_replace(Some(leader.clone()));
        let resign = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = leadership.lost() => { tracing::warn!("lost coordinator leadership"); false }
        };
        published.clear();
        stop_leader(leader).await;
        if resign {
            let _ = leadership.resign().await;
            return;
        }
    }
}

async fn start_leader(
    store: &Arc<dyn MetaStore>,
    config: &CoordinatorConfig,
    node_client: &Arc<dyn NodeClient>,
    appender: &Arc<dyn BroadcastAppender>,
    oracles: &watch::Sender<Option<Arc<Oracles>>>,
) -> Result<LeaderState> {
    let tso = Arc::new(
        Tso::open(
            store.clone(),
            &config.keys,
            config.tso.clone(),
            Arc::new(SystemClock),
        )
        .await?,
    );
    let ids = Arc::new(Ids::open(store.clone(), &config.keys, config.ids.clone()).await?);
    oracles.send_replace(Some(Arc::new(Oracles {
        tso: tso.clone(),
        ids: ids.clone(),
    })));
    let names = config.pchannels.resolve()?;
    let channels =
        Arc::new(ChannelManager::init(store.clone(), config.keys.clone(), &names).await?);
    let nodes = Arc::new(NodeWatcher::start(store.clone(), &config.keys).await?);
    settle(nodes.subscribe(), config.node_settle).await;
    let (drained_keys, _) = store.scan_prefix(&config.keys.drain_prefix()).await?;
    let drained: std::collections::BTreeSet<crate::NodeId> = drained_keys
        .iter()
        .filter_map(|kv| {
            kv.key
                .strip_prefix(&config.keys.drain_prefix())?
                .parse()
                .ok()
                .map(crate::NodeId)
        })
        .collect();
    let (drained, drained_rx) = watch::channel(drained);
    let (assignable, _drain_merge) = mark_drained(nodes.subscribe(), drained_rx);
    let assigner = Arc::new(Assigner::start(
        channels.clone(),
        assignable,
        node_client.clone(),
        config.assign.clone(),
    )?);
    let (broadcaster, recovery) = Broadcaster::recover(
        store.clone(),
        config.keys.clone(),
        appender.clone(),
        Arc::new(IdsForBroadcast(ids.clone())),
        config.broadcast.clone(),
    )
    .await?;
    for e in &recovery.malformed {
        tracing::error!(error = %e, "a broadcast task could not be recovered");
    }
    let catalog = Arc::new(crate::catalog::Catalog::new(
        store.clone(),
        config.keys.root(),
        names.clone(),
    ));
    let placement = crate::placement::Placement::start(
        store.clone(),
        config.keys.clone(),
        config.placement.clone(),
    )
    .await?;
    Ok(LeaderState {
        tso,
        ids,
        channels,
        assigner,
        broadcaster: Arc::new(broadcaster),
        nodes,
        catalog,
        placement: parking_lot::Mutex::new(Some(placement)),
        drained,
        _drain_merge,
    })
}

/// The live nodes with every drained one marked stopping (what the assignment loop places
/// pchannels on), kept current by a task that ends with the returned handle.
fn mark_drained(
    mut nodes: watch::Receiver<crate::Nodes>,
    mut drained: watch::Receiver<std::collections::BTreeSet<crate::NodeId>>,
) -> (watch::Receiver<crate::Nodes>, crate::registry::OwnedTask) {
    let merge = |nodes: &crate::Nodes, drained: &std::collections::BTreeSet<crate::NodeId>| {
        let mut out = nodes.clone();
        for id in drained {
            if let Some(n) = out.get_mut(id) {
                n.stopping = true;
            }
        }
        out
    };
    let (tx, rx) = watch::channel(merge(
        &nodes.borrow_and_update(),
        &drained.borrow_and_update(),
    ));
    let task = crate::registry::OwnedTask::spawn(move |cancel| async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = nodes.changed() => if r.is_err() { return },
                r = drained.changed() => if r.is_err() { return },
            }
            let merged = merge(&nodes.borrow_and_update(), &drained.borrow_and_update());
            tx.send_if_modified(|cur| {
                if *cur == merged {
                    false
                } else {
                    *cur = merged;
                    true
                }
            });
        }
    });
    (rx, task)
}

/// Waits until the node set is non-empty and then unchanged for `quiet`, or `5 × quiet` passed.
async fn settle(mut nodes: watch::Receiver<crate::Nodes>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet * 5;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return;
        }
        let empty = nodes.borrow_and_update().is_empty();
        let wake = if empty {
            deadline
        } else {
            (now + quiet).min(deadline)
        };
        // A change restarts the quiet period; quiet (or the watcher ending) ends the wait.
        if !matches!(
            tokio::time::timeout_at(wake, nodes.changed()).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

async fn stop_leader(leader: Arc<LeaderState>) {
    leader.assigner.shutdown().await;
    let placement = leader.placement.lock().take();
    if let Some(p) = placement {
        p.shutdown().await;
    }
    // The rest stops when the last reference (held by in-flight RPCs) is dropped.
    drop(leader);
}

/// Timestamps and ids from whichever process is the coordinator leader *in this process*
/// (standalone: the node's WALs use the coordinator it runs beside). While no leader is
/// elected yet, calls wait up to [`LeaderOracle::PATIENCE`], then fail retryably.
pub struct LeaderOracle {
    coordinator: Arc<Coordinator>,
}

impl std::fmt::Debug for LeaderOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderOracle").finish_non_exhaustive()
    }
}

impl LeaderOracle {
    /// How long a call waits for an election.
    pub const PATIENCE: Duration = Duration::from_secs(10);

    /// The oracle of `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> LeaderOracle {
        LeaderOracle { coordinator }
    }
}

impl LeaderOracle {
    async fn oracles(&self) -> Result<Arc<Oracles>> {
        self.coordinator.oracles(Self::PATIENCE).await
    }

    /// `count` consecutive timestamps from the leader's oracle; returns the first.
    pub async fn allocate_timestamps(&self, count: u32) -> Result<sluice_types::Timestamp> {
        self.oracles().await?.tso.allocate(count).await
    }

    /// One fresh id from the leader's allocator.
    pub async fn allocate_id(&self) -> Result<i64> {
        self.oracles().await?.ids.allocate_id().await
    }
}
