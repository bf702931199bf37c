//! The assignment loop and the topology stream.
//!
//! An [`Assigner`] owns one background task that keeps every pchannel bound to a healthy node
//! (Milvus §5.3–5.6):
//!
//! * **Triggers**: a change of the live node set, [`Assigner::report_error`],
//!   [`Assigner::trigger`], [`Assigner::set_vchannel_counts`], and a timer
//!   ([`AssignConfig::trigger_interval`]). A round also runs at start.
//! * **A round** (repeated until it changes nothing): the current layout keeps a pchannel on its
//!   node only if it is Assigned, the node is live and not stopping, and the node is still the
//!   incarnation (process) it was assigned to — a node restarted with the same id holds no WAL,
//!   so its pchannels are assigned again at a higher term; the [`balancer`] decides
//!   the targets; every pchannel whose target differs is moved, all in parallel:
//!   1. persist the new binding ([`ChannelManager::assign`], term + 1);
//!   2. remove the pchannel from every earlier owner in its history, each call bounded by
//!      [`AssignConfig::call_timeout`]; an owner absent from the live node set (its lease is
//!      gone) counts as removed at once, and so does a node answering
//!      [`NodeCallError::Gone`]. An owner that does not confirm in time (hung, cut off) does not
//!      hold the move up: every log backend fences, so the new owner's open at the higher term
//!      stops the old one from acknowledging anything; it is told again in the background;
//!   3. [`NodeClient::assign`] on the new node (bounded by [`AssignConfig::assign_timeout`]);
//!   4. persist [`ChannelManager::assign_done`].
//!
//!   A failed move fails the round: the loop backs off (10 ms doubling to 5 s by default) and
//!   runs the round again; a pchannel left Assigning is then assigned again at a higher term.
//!   A failing node client or meta store never stops or panics the loop; only
//!   [`Assigner::shutdown`] or dropping the [`Assigner`] does.
//! * **Topology**: [`Assigner::subscribe`] gives a [`Topology`] listing the Assigned pchannels
//!   whose node is live in the incarnation they were assigned to, with their term and node; its
//!   version strictly increases on every
//!   change of that list.
//!
//! [`balancer`]: crate::balancer

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use parking_lot::Mutex;
use sluice_types::{PChannel, Term};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use sluice_types::backoff::Backoff;

use crate::balancer::{BalanceConfig, ChannelInput, balance};
use crate::pchannel::{ChannelManager, PChannelState, now_ms};
use crate::{CoordError, NodeId, NodeInfo, Nodes, Result};

/// Why a call to a streaming node did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeCallError {
    /// The node answered that it does not hold the pchannel at that term (channel not exist,
    /// unmatched term, operation ignored). For `remove` this counts as removed.
    #[error("node does not hold the pchannel at that term: {0}")]
    Gone(String),
    /// The call failed (node unreachable, timed out, internal error); nothing is known.
    #[error("node call failed: {0}")]
    Failed(String),
}

impl NodeCallError {
    /// Whether a `remove` that ended with this error counts as done.
    pub fn counts_as_removed(&self) -> bool {
        matches!(self, NodeCallError::Gone(_))
    }
}

/// The coordinator's calls to streaming nodes (gRPC in production, fakes in tests).
#[async_trait]
pub trait NodeClient: Send + Sync + 'static {
    /// Makes `node` serve `pchannel` at `term`; returns once the node's WAL is open at that term
    /// and recovered.
    async fn assign(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError>;

    /// Makes `node` stop serving `pchannel` at `term` (and close its WAL).
    async fn remove(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError>;
}

/// The assignment loop's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AssignConfig {
    /// A round runs at least this often (default 1 min).
    pub trigger_interval: Duration,
    /// Bound on one `remove` call to a node (default 5 s).
    pub call_timeout: Duration,
    /// Bound on one `assign` call, which includes WAL recovery (default 60 s).
    pub assign_timeout: Duration,
    /// First retry delay after a failed round (default 10 ms); doubles per failure.
    pub backoff_initial: Duration,
    /// Largest retry delay (default 5 s).
    pub backoff_max: Duration,
    /// The placement policy's rebalance settings.
    pub balance: BalanceConfig,
}

impl Default for AssignConfig {
    fn default() -> AssignConfig {
        AssignConfig {
            trigger_interval: Duration::from_secs(60),
            call_timeout: Duration::from_secs(5),
            assign_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(5),
            balance: BalanceConfig::default(),
        }
    }
}

impl AssignConfig {
    /// Checks the settings; a zero duration or an initial backoff above the maximum is
    /// [`CoordError::InvalidArgument`].
    pub fn validate(&self) -> Result<()> {
        for (what, d) in [
            ("trigger_interval", self.trigger_interval),
            ("call_timeout", self.call_timeout),
            ("assign_timeout", self.assign_timeout),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
        ] {
            if d.is_zero() {
                return Err(CoordError::InvalidArgument(format!(
                    "{what} must be positive"
                )));
            }
        }
        if self.backoff_initial > self.backoff_max {
            return Err(CoordError::InvalidArgument(
                "backoff_initial is above backoff_max".into(),
            ));
        }
        if !self.balance.tolerance.is_finite() || self.balance.tolerance < 0.0 {
            return Err(CoordError::InvalidArgument(
                "rebalance tolerance must be a non-negative number".into(),
            ));
        }
        Ok(())
    }
}

/// Which node serves each pchannel, as clients see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Strictly increases on every change of `channels` (0: nothing published yet).
    pub version: u64,
    /// The Assigned pchannels on live nodes: pchannel name → (term, node).
    pub channels: BTreeMap<String, (Term, NodeInfo)>,
}

struct Shared {
    manager: Arc<ChannelManager>,
    client: Arc<dyn NodeClient>,
    config: AssignConfig,
    /// The latest live node set (read for the topology; the loop keeps its own receiver).
    nodes: watch::Receiver<Nodes>,
    vchannels: Mutex<BTreeMap<String, u32>>,
    /// Moves an operator asked for ([`Assigner::move_pchannel`]): pchannel → target node. They
    /// override the balancer's target until done, or until the node is no longer healthy.
    requested: Mutex<BTreeMap<String, NodeId>>,
    trigger: Notify,
    topology: watch::Sender<Topology>,
    /// How many rounds ended with nothing left to change.
    settled: watch::Sender<u64>,
}

/// The running assignment loop (see the module docs). Dropping it stops the loop.
pub struct Assigner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Assigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assigner")
            .field("topology_version", &self.shared.topology.borrow().version)
            .finish_non_exhaustive()
    }
}

impl Assigner {
    /// Starts the loop on the current Tokio runtime (it must be called inside one). `nodes` is
    /// the live node set (from the node registry); `manager` holds the pchannel records.
    pub fn start(
        manager: Arc<ChannelManager>,
        nodes: watch::Receiver<Nodes>,
        client: Arc<dyn NodeClient>,
        config: AssignConfig,
    ) -> Result<Assigner> {
        config.validate()?;
        let (topology, _) = watch::channel(Topology::default());
        let shared = Arc::new(Shared {
            manager,
            client,
            config,
            nodes: nodes.clone(),
            vchannels: Mutex::new(BTreeMap::new()),
            requested: Mutex::new(BTreeMap::new()),
            trigger: Notify::new(),
            topology,
            settled: watch::channel(0).0,
        });
        shared.publish();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(shared.clone(), nodes, cancel.clone()));
        Ok(Assigner {
            shared,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// The topology stream: the current topology now, and every change after.
    pub fn subscribe(&self) -> watch::Receiver<Topology> {
        self.shared.topology.subscribe()
    }

    /// The current topology.
    pub fn topology(&self) -> Topology {
        self.shared.topology.borrow().clone()
    }

    /// How many rounds so far found nothing to change (the layout had settled); for operators
    /// and tests that need to know a round has run.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.shared.settled.subscribe()
    }

    /// A client saw `pchannel` fail at `term`: when `term` is current and the pchannel is
    /// Assigned it becomes Unavailable (leaving the topology) and a round reassigns it at a
    /// higher term. A stale term is [`CoordError::StaleTerm`] and changes nothing; an unknown
    /// pchannel is [`CoordError::UnknownPChannel`].
    pub async fn report_error(&self, pchannel: &str, term: Term) -> Result<()> {
        if self.shared.manager.mark_unavailable(pchannel, term).await? {
            tracing::info!(
                pchannel,
                term = term.0,
                "pchannel reported failing; reassigning"
            );
            self.shared.publish();
            self.shared.trigger.notify_one();
        }
        Ok(())
    }

    /// Moves `pchannel` to node `to` (an operator's move): the next round assigns it there at a
    /// higher term, the old owner closing its WAL first as in every move. Resolves with the
    /// new term once the topology lists the pchannel on `to`, or at once when it is there
    /// already. `to` must be live and neither stopping nor drained
    /// ([`CoordError::InvalidArgument`]); an unknown pchannel is
    /// [`CoordError::UnknownPChannel`]. The balancer may move the pchannel again later, like
    /// any other, once it has been where it is for `min_rebalance_interval`. If `to` stops
    /// being healthy before the move, the request lapses and this waits on: bound it with a
    /// timeout.
    pub async fn move_pchannel(&self, pchannel: &str, to: NodeId) -> Result<Term> {
        let meta = self.shared.manager.get(pchannel)?;
        match self.shared.nodes.borrow().get(&to) {
            None => {
                return Err(CoordError::InvalidArgument(format!(
                    "{to} is not a live streaming node"
                )));
            }
            Some(n) if n.stopping => {
                return Err(CoordError::InvalidArgument(format!(
                    "{to} is stopping or drained"
                )));
            }
            Some(_) => {}
        }
        let mut topology = self.subscribe();
        let on_target = |t: &Topology| {
            t.channels
                .get(pchannel)
                .filter(|(term, node)| node.id == to && *term >= meta.term)
                .map(|(term, _)| *term)
        };
        if let Some(term) = on_target(&topology.borrow_and_update()) {
            return Ok(term);
        }
        self.shared.requested.lock().insert(pchannel.to_owned(), to);
        self.shared.trigger.notify_one();
        tracing::info!(pchannel, node = %to, "pchannel move requested");
        loop {
            if let Some(term) = on_target(&topology.borrow_and_update()) {
                return Ok(term);
            }
            topology.changed().await.map_err(|_| CoordError::Shutdown)?;
        }
    }

    /// Asks for a round now.
    pub fn trigger(&self) {
        self.shared.trigger.notify_one();
    }

    /// Sets how many vchannels each pchannel carries (missing ones count 0) and asks for a round.
    pub fn set_vchannel_counts(&self, counts: BTreeMap<String, u32>) {
        *self.shared.vchannels.lock() = counts;
        self.shared.trigger.notify_one();
    }

    /// Stops the loop and waits for it to end. A move in flight is abandoned where it is; the
    /// next coordinator finishes it (at a higher term).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            // The task only ends by cancellation; a join error would be a panic in it, which
            // has been logged by the runtime already.
            let _ = task.await;
        }
    }
}

impl Drop for Assigner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn run(shared: Arc<Shared>, mut nodes: watch::Receiver<Nodes>, cancel: CancellationToken) {
    let config = &shared.config;
    let mut watching_nodes = true;
    loop {
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        loop {
            let snapshot = nodes.borrow_and_update().clone();
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = shared.round(&snapshot) => r,
            };
            match result {
                Ok(true) => backoff.reset(),
                Ok(false) => {
                    shared.settled.send_modify(|n| *n += 1);
                    break;
                }
                Err(CoordError::NoHealthyNode) => {
                    tracing::warn!("no healthy streaming node; waiting for one");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.current().as_millis() as u64,
                        "assignment round failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.current()) => {}
                        r = nodes.changed(), if watching_nodes => watching_nodes = r.is_ok(),
                    }
                    backoff.advance();
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.trigger.notified() => {}
            r = nodes.changed(), if watching_nodes => watching_nodes = r.is_ok(),
            _ = tokio::time::sleep(config.trigger_interval) => {}
        }
    }
}

impl Shared {
    /// Publishes the topology from the records and the live node set (a new version only when
    /// the list changed).
    fn publish(&self) {
        let nodes = self.nodes.borrow().clone();
        let channels: BTreeMap<String, (Term, NodeInfo)> = self
            .manager
            .list()
            .into_iter()
            .filter(|m| m.state == PChannelState::Assigned)
            .filter_map(|m| {
                let info = nodes.get(&m.node?)?.clone();
                // Never list a WAL at a node process that does not hold it.
                (info.incarnation == m.incarnation)
                    .then(|| (m.name.as_str().to_owned(), (m.term, info)))
            })
            .collect();
        self.topology.send_if_modified(|t| {
            if t.channels == channels {
                return false;
            }
            t.channels = channels;
            t.version += 1;
            metrics::gauge!("sluice_coord_topology_version").set(t.version as f64);
            metrics::gauge!("sluice_coord_assigned_pchannels").set(t.channels.len() as f64);
            true
        });
    }

    /// One round; `Ok(true)` when something moved (so another round should follow).
    async fn round(&self, nodes: &Nodes) -> Result<bool> {
        self.publish();
        let healthy: BTreeSet<NodeId> = nodes
            .values()
            .filter(|n| !n.stopping)
            .map(|n| n.id)
            .collect();
        let now = now_ms();
        let min_age = self.config.balance.min_rebalance_interval.as_millis() as u64;
        let counts = self.vchannels.lock().clone();
        let inputs: BTreeMap<String, ChannelInput> = self
            .manager
            .list()
            .into_iter()
            .map(|m| {
                // A record bound to an earlier incarnation of a node is not placed: that
                // process is gone and the one answering now holds no WAL.
                let current = m.node.filter(|n| {
                    m.state == PChannelState::Assigned
                        && healthy.contains(n)
                        && nodes.get(n).is_some_and(|i| i.incarnation == m.incarnation)
                });
                let input = ChannelInput {
                    vchannels: counts.get(m.name.as_str()).copied().unwrap_or(0),
                    current,
                    movable: now.saturating_sub(m.last_assigned_ms) >= min_age,
                };
                (m.name.as_str().to_owned(), input)
            })
            .collect();
        let mut targets = balance(&inputs, &healthy, &self.config.balance)?;
        self.requested.lock().retain(|name, to| {
            let valid = healthy.contains(to) && targets.contains_key(name);
            if valid {
                targets.insert(name.clone(), *to);
            } else {
                tracing::warn!(pchannel = %name, node = %to, "requested move dropped: the node is not healthy");
            }
            valid
        });
        let moves: Vec<(&String, NodeId)> = targets
            .iter()
            .filter(|(name, to)| inputs[*name].current != Some(**to))
            .map(|(name, to)| (name, *to))
            .collect();
        if moves.is_empty() {
            return Ok(false);
        }
        let results = join_all(
            moves
                .iter()
                .map(|(name, to)| self.move_channel(name, *to, nodes)),
        )
        .await;
        self.publish();
        let failed: Vec<CoordError> = results.into_iter().filter_map(|r| r.err()).collect();
        match failed.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Moves one pchannel to `to` (steps 1–4 in the module docs).
    async fn move_channel(&self, name: &str, to: NodeId, nodes: &Nodes) -> Result<()> {
        let started = Instant::now();
        let target = nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| CoordError::InvalidArgument(format!("{to} is not a live node")))?;
        let meta = self.manager.assign_to(name, to, target.incarnation).await?;
        self.publish();
        let (pchannel, term) = (meta.name.clone(), meta.term);

        let removes = meta.history.iter().map(|&(old_term, old_node)| {
            let pchannel = &pchannel;
            async move {
                let r = self.remove_from(nodes, pchannel, old_term, old_node).await;
                (old_term, old_node, r)
            }
        });
        for (old_term, old_node, r) in join_all(removes).await {
            let Err(e) = r else { continue };
            // Moving on is safe: every log backend fences, so once the new owner has opened at
            // the higher term the old one cannot acknowledge another append — waiting for a hung
            // owner's lease would only keep the pchannel unavailable. It is told again later.
            tracing::warn!(pchannel = %pchannel, term = old_term.0, node = %old_node, error = %e,
                "earlier owner did not confirm the removal; moving on (storage fences it)");
            metrics::counter!("sluice_coord_removes_abandoned_total").increment(1);
            if let Some(info) = nodes.get(&old_node) {
                self.remove_later(info.clone(), pchannel.clone(), old_term);
            }
        }

        match tokio::time::timeout(
            self.config.assign_timeout,
            self.client.assign(&target, &pchannel, term),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(node_error(to, e.to_string())),
            Err(_) => {
                return Err(node_error(
                    to,
                    format!("assign timed out after {:?}", self.config.assign_timeout),
                ));
            }
        }
        self.manager.assign_done(name, term).await?;
        {
            let mut requested = self.requested.lock();
            if requested.get(name) == Some(&to) {
                requested.remove(name);
            }
        }
        self.publish();
        metrics::counter!("sluice_coord_assignments_total", "pchannel" => name.to_owned())
            .increment(1);
        metrics::histogram!("sluice_coord_assign_seconds", "pchannel" => name.to_owned())
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            pchannel = name,
            term = term.0,
            node = %to,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pchannel assigned"
        );
        Ok(())
    }

    /// Tells `node` again, in the background, to stop serving `pchannel@term` (a removal the
    /// move went past): a few attempts, spaced by the call timeout and more, until it confirms.
    fn remove_later(&self, node: NodeInfo, pchannel: PChannel, term: Term) {
        let (client, timeout) = (self.client.clone(), self.config.call_timeout);
        tokio::spawn(async move {
            let mut backoff = Backoff::new(timeout, timeout * 8);
            for _ in 0..LATE_REMOVE_ATTEMPTS {
                tokio::time::sleep(backoff.current()).await;
                backoff.advance();
                match tokio::time::timeout(timeout, client.remove(&node, &pchannel, term)).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) if e.counts_as_removed() => return,
                    _ => {}
                }
            }
            tracing::warn!(pchannel = %pchannel, term = term.0, node = %node.id,
                "earlier owner never confirmed the removal; its WAL stays fenced until it restarts");
        });
    }

    /// Removes `pchannel@term` from `node`: done at once when the node is not live, otherwise a
    /// bounded call that succeeds when the node confirms or answers it does not hold it.
    async fn remove_from(
        &self,
        nodes: &Nodes,
        pchannel: &PChannel,
        term: Term,
        node: NodeId,
    ) -> Result<()> {
        let Some(info) = nodes.get(&node) else {
            tracing::debug!(pchannel = pchannel.as_str(), term = term.0, %node,
                "earlier owner is not live; counts as removed");
            return Ok(());
        };
        match tokio::time::timeout(
            self.config.call_timeout,
            self.client.remove(info, pchannel, term),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.counts_as_removed() => Ok(()),
            Ok(Err(e)) => Err(node_error(node, format!("remove: {e}"))),
            Err(_) => Err(node_error(
                node,
                format!("remove timed out after {:?}", self.config.call_timeout),
            )),
        }
    }
}

/// Background attempts to remove a WAL from an earlier owner that did not confirm in time.
const LATE_REMOVE_ATTEMPTS: usize = 10;

fn node_error(node: NodeId, reason: String) -> CoordError {
    CoordError::Node {
        node: node.to_string(),
        reason,
    }
}
