//! Where each pchannel lives: the topology the coordinator publishes, and sources of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_proto::convert;
use sluice_proto::v1::{self, coordinator_client::CoordinatorClient};
use sluice_types::backoff::Backoff;
use sluice_types::{ErrorCode, NodeId, PChannel, Term};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// One pchannel's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The pchannel.
    pub pchannel: PChannel,
    /// The owner's term.
    pub term: Term,
    /// The owning node.
    pub node_id: NodeId,
    /// Its gRPC address (`host:port`).
    pub address: String,
}

/// Every assigned pchannel, with a version that increases on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Increases on every change.
    pub version: u64,
    /// Assigned pchannels by name.
    pub channels: BTreeMap<String, Assignment>,
}

/// Something that knows the topology and takes error reports.
#[async_trait]
pub trait TopologySource: Send + Sync + 'static {
    /// The topology, updated on every change.
    fn subscribe(&self) -> watch::Receiver<Topology>;

    /// The client could not use `pchannel` at `term`; the coordinator should reassign it.
    async fn report_error(&self, pchannel: &PChannel, term: Term, code: ErrorCode, cause: &str);
}

/// A topology set by hand (tests, or an embedding that computes it itself).
pub struct StaticTopology {
    tx: watch::Sender<Topology>,
    reports: parking_lot::Mutex<Vec<(PChannel, Term, ErrorCode)>>,
}

impl std::fmt::Debug for StaticTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTopology").finish_non_exhaustive()
    }
}

impl StaticTopology {
    /// An empty topology.
    pub fn new() -> Arc<StaticTopology> {
        Arc::new(StaticTopology {
            tx: watch::Sender::new(Topology::default()),
            reports: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Replaces the topology (the version is bumped).
    pub fn set(&self, channels: impl IntoIterator<Item = Assignment>) {
        self.tx.send_modify(|t| {
            t.version += 1;
            t.channels = channels
                .into_iter()
                .map(|a| (a.pchannel.as_str().to_owned(), a))
                .collect();
        });
    }

    /// The errors reported so far.
    pub fn reports(&self) -> Vec<(PChannel, Term, ErrorCode)> {
        self.reports.lock().clone()
    }
}

#[async_trait]
impl TopologySource for StaticTopology {
    fn subscribe(&self) -> watch::Receiver<Topology> {
        self.tx.subscribe()
    }

    async fn report_error(&self, pchannel: &PChannel, term: Term, code: ErrorCode, _cause: &str) {
        self.reports.lock().push((pchannel.clone(), term, code));
    }
}

/// The topology from a coordinator's `WatchAssignments` stream, reconnecting (backoff 100 ms →
/// 10 s) whenever it breaks.
pub struct CoordinatorTopology {
    rx: watch::Receiver<Topology>,
    client: CoordinatorClient<sluice_proto::Channel>,
    _task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for CoordinatorTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorTopology")
            .finish_non_exhaustive()
    }
}

impl CoordinatorTopology {
    /// Watches the coordinator at `endpoint` (`http://host:port`). Returns at once; the first
    /// topology arrives when the coordinator answers. The process's security settings apply
    /// ([`sluice_proto::Security::install`]).
    pub fn connect(endpoint: &str) -> Result<CoordinatorTopology, crate::ClientError> {
        CoordinatorTopology::connect_with(endpoint, &sluice_proto::Security::process())
    }

    /// The same with these TLS settings and token.
    pub fn connect_with(
        endpoint: &str,
        security: &sluice_proto::Security,
    ) -> Result<CoordinatorTopology, crate::ClientError> {
        let channel = security
            .lazy_channel(endpoint)
            .map_err(|e| crate::ClientError::new(ErrorCode::InvalidArgument, e))?;
        let client = CoordinatorClient::new(channel);
        let (tx, rx) = watch::channel(Topology::default());
        let task = tokio::spawn(watch_loop(client.clone(), tx));
        Ok(CoordinatorTopology {
            rx,
            client,
            _task: AbortOnDropHandle::new(task),
        })
    }
}

async fn watch_loop(
    mut client: CoordinatorClient<sluice_proto::Channel>,
    tx: watch::Sender<Topology>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match client
            .watch_assignments(v1::WatchAssignmentsRequest {})
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff.reset();
                            match topology_from_wire(update) {
                                Ok(t) => {
                                    tx.send_if_modified(|cur| {
                                        if t.version != cur.version || t.channels != cur.channels {
                                            *cur = t;
                                            true
                                        } else {
                                            false
                                        }
                                    });
                                }
                                Err(e) => tracing::warn!(error = %e, "bad topology update ignored"),
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%status, "topology stream broke");
                            break;
                        }
                    }
                }
            }
            // Refused credentials do not fix themselves: say so where an operator looks.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::warn!(%status, "the coordinator refused this client's credentials")
            }
            Err(status) => tracing::debug!(%status, "cannot watch the topology yet"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn topology_from_wire(update: v1::Assignments) -> Result<Topology, convert::WireError> {
    let mut channels = BTreeMap::new();
    for a in update.assignments {
        let (pchannel, term) = convert::pchannel_from_wire(a.pchannel)?;
        channels.insert(
            pchannel.as_str().to_owned(),
            Assignment {
                pchannel,
                term,
                node_id: NodeId(a.node_id),
                address: a.address,
            },
        );
    }
    Ok(Topology {
        version: update.version,
        channels,
    })
}

#[async_trait]
impl TopologySource for CoordinatorTopology {
    fn subscribe(&self) -> watch::Receiver<Topology> {
        self.rx.clone()
    }

    async fn report_error(&self, pchannel: &PChannel, term: Term, code: ErrorCode, cause: &str) {
        let request = v1::ReportErrorRequest {
            pchannel: Some(convert::pchannel_to_wire(pchannel, term)),
            error: Some(convert::error_to_wire(code, cause)),
        };
        if let Err(status) = self.client.clone().report_error(request).await {
            tracing::debug!(%status, %pchannel, %term, "could not report an error to the coordinator");
        }
    }
}
