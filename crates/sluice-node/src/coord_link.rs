//! The node's links with the coordinator, in both directions:
//!
//! * [`GrpcNodeClient`]: the coordinator's calls to nodes (`Assign`, `Remove`) over gRPC, and
//!   [`LocalNodeClient`] for a node in the coordinator's own process (standalone);
//! * [`RemoteOracle`]: timestamps and ids for this node's WALs from the coordinator's oracle;
//!   [`LeaderOracleLink`] the same for a node in the coordinator's own process (standalone).
//!
//! The WAL's oracle traits meet the coordinator's oracle here, the one crate that knows both.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_coord::assign::{NodeCallError, NodeClient};
use sluice_coord::leader::LeaderOracle;
use sluice_coord::{CoordError, NodeInfo};
use sluice_log::LogError;
use sluice_proto::v1::{
    self, coordinator_client::CoordinatorClient,
    streaming_node_manager_client::StreamingNodeManagerClient,
};
use sluice_proto::{Channel, convert, lazy_channel};
use sluice_types::{ErrorCode, NodeId, PChannel, Term, Timestamp};
use sluice_wal::WalError;
use sluice_wal::tso::{IdAllocator, TimestampOracle};

use crate::{NodeError, WalManager};

/// Classifies a node's answer: "not here / other term / stale" counts as removed.
fn call_error(code: ErrorCode, cause: String) -> NodeCallError {
    match code {
        ErrorCode::ChannelNotExist
        | ErrorCode::UnmatchedChannelTerm
        | ErrorCode::IgnoredOperation => NodeCallError::Gone(cause),
        _ => NodeCallError::Failed(format!("{}: {cause}", code.name())),
    }
}

/// A node's answer to a call, classified.
fn answered<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<(), NodeCallError> {
    result.map(|_| ()).map_err(|status| {
        let (code, cause) = convert::error_of(&status);
        call_error(code, cause)
    })
}

/// The coordinator's calls to nodes over gRPC (one lazily connected channel per address).
#[derive(Default)]
pub struct GrpcNodeClient {
    channels: Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for GrpcNodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcNodeClient").finish_non_exhaustive()
    }
}

impl GrpcNodeClient {
    /// A client with no connections yet.
    pub fn new() -> GrpcNodeClient {
        GrpcNodeClient::default()
    }

    fn client(
        &self,
        node: &NodeInfo,
    ) -> Result<StreamingNodeManagerClient<Channel>, NodeCallError> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(&node.address) {
            Some(c) => c.clone(),
            None => {
                let c = lazy_channel(&node.address).map_err(NodeCallError::Failed)?;
                channels.insert(node.address.clone(), c.clone());
                c
            }
        };
        Ok(StreamingNodeManagerClient::new(channel))
    }
}

#[async_trait]
impl NodeClient for GrpcNodeClient {
    async fn assign(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError> {
        let request = v1::AssignRequest {
            pchannel: Some(convert::pchannel_to_wire(pchannel, term)),
        };
        answered(self.client(node)?.assign(request).await)
    }

    async fn remove(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError> {
        let request = v1::RemoveRequest {
            pchannel: Some(convert::pchannel_to_wire(pchannel, term)),
        };
        answered(self.client(node)?.remove(request).await)
    }
}

/// The coordinator's calls to the node in its own process (standalone), without gRPC; calls for
/// any other node fail.
pub struct LocalNodeClient {
    node_id: NodeId,
    manager: Arc<WalManager>,
}

impl std::fmt::Debug for LocalNodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNodeClient").finish_non_exhaustive()
    }
}

impl LocalNodeClient {
    /// Calls for `node_id` go to `manager`.
    pub fn new(node_id: NodeId, manager: Arc<WalManager>) -> LocalNodeClient {
        LocalNodeClient { node_id, manager }
    }

    fn check(&self, node: &NodeInfo) -> Result<(), NodeCallError> {
        if node.id == self.node_id {
            Ok(())
        } else {
            Err(NodeCallError::Failed(format!(
                "{} is not the node in this process",
                node.id
            )))
        }
    }
}

fn local_error(e: NodeError) -> NodeCallError {
    call_error(e.code(), e.to_string())
}

#[async_trait]
impl NodeClient for LocalNodeClient {
    async fn assign(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError> {
        self.check(node)?;
        self.manager
            .assign(pchannel, term)
            .await
            .map_err(local_error)
    }

    async fn remove(
        &self,
        node: &NodeInfo,
        pchannel: &PChannel,
        term: Term,
    ) -> Result<(), NodeCallError> {
        self.check(node)?;
        self.manager
            .remove(pchannel, term)
            .await
            .map_err(local_error)
    }
}

/// Timestamps and ids from the coordinator (`AllocateTimestamps`, `AllocateIds`). Ids are
/// fetched in blocks of [`RemoteOracle::ID_BLOCK`]; timestamps are already batched by the WAL.
/// A failed call is a retryable error (the coordinator may be failing over).
pub struct RemoteOracle {
    endpoint: String,
    /// Replaced by a fresh one after a call fails in transport: a lazily connecting channel
    /// whose connection failed waits about a second before it connects again, while a
    /// restarted coordinator listens again within milliseconds.
    client: Mutex<CoordinatorClient<Channel>>,
    /// Ids fetched and not yet handed out: `[next, end)`.
    ids: tokio::sync::Mutex<(u64, u64)>,
}

impl std::fmt::Debug for RemoteOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOracle").finish_non_exhaustive()
    }
}

impl RemoteOracle {
    /// Ids fetched per call.
    pub const ID_BLOCK: u32 = 1000;

    /// An oracle asking the coordinator at `endpoint`.
    pub fn new(endpoint: &str) -> Result<RemoteOracle, String> {
        Ok(RemoteOracle {
            endpoint: endpoint.to_owned(),
            client: Mutex::new(CoordinatorClient::new(lazy_channel(endpoint)?)),
            ids: tokio::sync::Mutex::new((0, 0)),
        })
    }

    fn client(&self) -> CoordinatorClient<Channel> {
        self.client.lock().clone()
    }

    /// The call's error; after a transport failure the next call connects afresh.
    fn failed(&self, status: &tonic::Status) -> WalError {
        if (status.source().is_some() || status.code() == tonic::Code::Unavailable)
            && let Ok(channel) = lazy_channel(&self.endpoint)
        {
            *self.client.lock() = CoordinatorClient::new(channel);
        }
        unavailable(status)
    }
}

fn unavailable(status: &tonic::Status) -> WalError {
    let (code, cause) = convert::error_of(status);
    match code {
        ErrorCode::InvalidArgument => WalError::InvalidArgument(cause),
        _ => WalError::Log(LogError::Unavailable(format!(
            "coordinator oracle: {}: {cause}",
            code.name()
        ))),
    }
}

#[async_trait]
impl TimestampOracle for RemoteOracle {
    async fn allocate(&self, count: u32) -> Result<Timestamp, WalError> {
        let r = self
            .client()
            .allocate_timestamps(v1::AllocateRequest { count })
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        if r.count < count || r.first == 0 {
            return Err(WalError::Unrecoverable(format!(
                "coordinator answered {} timestamps from {} for {count}",
                r.count, r.first
            )));
        }
        Ok(Timestamp(r.first))
    }
}

#[async_trait]
impl IdAllocator for RemoteOracle {
    async fn allocate_id(&self) -> Result<i64, WalError> {
        let mut ids = self.ids.lock().await;
        if ids.0 >= ids.1 {
            let r = self
                .client()
                .allocate_ids(v1::AllocateRequest {
                    count: Self::ID_BLOCK,
                })
                .await
                .map_err(|s| self.failed(&s))?
                .into_inner();
            if r.count == 0 || r.first == 0 {
                return Err(WalError::Unrecoverable(
                    "coordinator answered an empty id block".into(),
                ));
            }
            *ids = (r.first, r.first + u64::from(r.count));
        }
        let id = ids.0;
        ids.0 += 1;
        i64::try_from(id).map_err(|_| WalError::Unrecoverable(format!("id {id} exceeds i64")))
    }
}

/// The coordinator's error as the WAL's: bad input stays bad input, everything the caller may
/// retry (lost leadership, meta store unavailable) becomes a retryable backend-unavailable
/// error, the rest is unrecoverable.
pub fn coord_to_wal_error(e: CoordError) -> WalError {
    match e {
        CoordError::InvalidArgument(m) => WalError::InvalidArgument(m),
        CoordError::Shutdown => WalError::Shutdown,
        e if e.retryable() => WalError::Log(LogError::Unavailable(e.to_string())),
        e => WalError::Unrecoverable(e.to_string()),
    }
}

/// Timestamps and ids for the WALs of a node that runs in the coordinator's process: straight
/// from the leader's oracle (waiting for an election when there is no leader).
#[derive(Clone)]
pub struct LeaderOracleLink(pub Arc<LeaderOracle>);

impl std::fmt::Debug for LeaderOracleLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderOracleLink").finish_non_exhaustive()
    }
}

#[async_trait]
impl TimestampOracle for LeaderOracleLink {
    async fn allocate(&self, count: u32) -> Result<Timestamp, WalError> {
        self.0
            .allocate_timestamps(count)
            .await
            .map_err(coord_to_wal_error)
    }
}

#[async_trait]
impl IdAllocator for LeaderOracleLink {
    async fn allocate_id(&self) -> Result<i64, WalError> {
        self.0.allocate_id().await.map_err(coord_to_wal_error)
    }
}
