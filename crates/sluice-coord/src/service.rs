//! The coordinator's gRPC service (`sluice.v1.Coordinator`), answered by the current leader.
//!
//! A process that is not the leader (yet) waits up to [`LEADER_PATIENCE`] for an election, then
//! answers `UNAVAILABLE` so clients retry (they reconnect with backoff). The assignment stream
//! ends when this process loses leadership.

// Every handler answers with tonic's `Status`.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_proto::convert;
use sluice_proto::v1::{self, coordinator_server};
use sluice_types::{ErrorCode, MutableMessage};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::CoordError;
use crate::assign::Topology;
use crate::broadcast::BroadcastRequest;
use crate::leader::{Coordinator, LeaderState, Oracles};

/// How long a call waits for this process to become leader.
pub const LEADER_PATIENCE: Duration = Duration::from_secs(5);

/// The gRPC service over a [`Coordinator`].
#[derive(Clone)]
pub struct CoordinatorService {
    coordinator: Arc<Coordinator>,
}

/// The most delegators a shard can have (LoadCollection).
pub use sluice_types::database::MAX_REPLICAS;

impl std::fmt::Debug for CoordinatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorService").finish_non_exhaustive()
    }
}

impl CoordinatorService {
    /// The service of `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> CoordinatorService {
        CoordinatorService { coordinator }
    }

    /// The tonic server.
    pub fn server(&self) -> coordinator_server::CoordinatorServer<CoordinatorService> {
        coordinator_server::CoordinatorServer::new(self.clone()).max_decoding_message_size(64 << 20)
    }

    async fn leader(&self) -> Result<Arc<LeaderState>, Status> {
        self.coordinator
            .leader(LEADER_PATIENCE)
            .await
            .map_err(not_leader_status)
    }

    /// The leader and collection `id`'s catalog record.
    async fn collection(&self, id: i64) -> Result<(Arc<LeaderState>, v1::CollectionInfo), Status> {
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .by_id(id)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok((leader, info))
    }

    /// The leader's oracles, served before the rest of the leader is up.
    async fn oracles(&self) -> Result<Arc<Oracles>, Status> {
        self.coordinator
            .oracles(LEADER_PATIENCE)
            .await
            .map_err(not_leader_status)
    }
}

fn not_leader_status(e: CoordError) -> Status {
    match e {
        CoordError::NotLeader => Status::unavailable("this coordinator is not the leader"),
        e => coord_status(&e),
    }
}

/// How long `MovePChannel` waits for the move.
const MOVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A coordinator error as a status carrying its code.
pub fn coord_status(e: &CoordError) -> Status {
    convert::status(e.code(), e.to_string())
}

/// The collection a broadcast of catalog DDL (create or drop a collection or a partition, add
/// a field) is about; `None` for every other message.
fn catalog_ddl(message: &MutableMessage) -> Option<i64> {
    use sluice_types::message::Header;
    match message.any_header().ok()? {
        Header::CreateCollection(h) => Some(h.collection_id),
        Header::DropCollection(h) => Some(h.collection_id),
        Header::CreatePartition(h) => Some(h.collection_id),
        Header::DropPartition(h) => Some(h.collection_id),
        Header::SchemaChange(h) => Some(h.collection_id),
        _ => None,
    }
}

/// The wire form of a topology.
pub fn topology_to_wire(t: &Topology) -> v1::Assignments {
    v1::Assignments {
        version: t.version,
        assignments: t
            .channels
            .iter()
            .filter_map(|(name, (term, node))| {
                let p = sluice_types::PChannel::new(name).ok()?;
                Some(v1::Assignment {
                    pchannel: Some(convert::pchannel_to_wire(&p, *term)),
                    node_id: node.id.0,
                    address: node.address.clone(),
                })
            })
            .collect(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    type WatchAssignmentsStream = BoxStream<v1::Assignments>;

    async fn watch_assignments(
        &self,
        _request: Request<v1::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let leader = self.leader().await?;
        let mut topology = leader.assigner.subscribe();
        let mut leadership = self.coordinator.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let update = topology_to_wire(&topology.borrow_and_update());
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = topology.changed() => if changed.is_err() { break },
                    _ = leadership.wait_for(Option::is_none) => break,
                }
            }
            let _ = tx
                .send(Err(Status::unavailable("coordinator leadership changed")))
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_error(
        &self,
        request: Request<v1::ReportErrorRequest>,
    ) -> Result<Response<v1::ReportErrorResponse>, Status> {
        let request = request.into_inner();
        let (pchannel, term) = convert::pchannel_from_wire(request.pchannel)
            .map_err(|e| convert::status(e.code(), e.to_string()))?;
        let leader = self.leader().await?;
        match leader.assigner.report_error(pchannel.as_str(), term).await {
            Ok(()) | Err(CoordError::StaleTerm { .. }) => {}
            Err(e) => return Err(coord_status(&e)),
        }
        Ok(Response::new(v1::ReportErrorResponse {}))
    }

    async fn allocate_timestamps(
        &self,
        request: Request<v1::AllocateRequest>,
    ) -> Result<Response<v1::AllocateResponse>, Status> {
        let count = request.into_inner().count;
        let oracles = self.oracles().await?;
        let first = oracles
            .tso
            .allocate(count)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::AllocateResponse {
            first: first.0,
            count,
        }))
    }

    async fn allocate_ids(
        &self,
        request: Request<v1::AllocateRequest>,
    ) -> Result<Response<v1::AllocateResponse>, Status> {
        let count = request.into_inner().count;
        if count == 0 {
            return Err(convert::status(
                ErrorCode::InvalidArgument,
                "count must be positive",
            ));
        }
        let oracles = self.oracles().await?;
        let first = oracles
            .ids
            .allocate(u64::from(count))
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::AllocateResponse { first, count }))
    }

    async fn broadcast(
        &self,
        request: Request<v1::BroadcastRequest>,
    ) -> Result<Response<v1::BroadcastResponse>, Status> {
        let request = request.into_inner();
        let message = request
            .message
            .ok_or_else(|| convert::status(ErrorCode::InvalidArgument, "missing message"))
            .and_then(|m| MutableMessage::try_from(m).map_err(|e| e.to_status()))?;
        let leader = self.leader().await?;
        if let Some(id) = catalog_ddl(&message)
            && leader
                .catalog
                .contains(id)
                .await
                .map_err(|e| coord_status(&e))?
        {
            return Err(convert::status(
                ErrorCode::InvalidArgument,
                format!(
                    "collection {id} is in the catalog: create and drop it, its partitions and \
                     its fields with CreateCollection, DropCollection, CreatePartition, \
                     DropPartition and AddCollectionField, which keep the catalog and every \
                     vchannel in step"
                ),
            ));
        }
        let vchannels = request.vchannels.clone();
        let broadcast = BroadcastRequest {
            message,
            vchannels: request.vchannels,
            resource_keys: request.resource_keys,
        };
        let result = leader
            .broadcaster
            .broadcast(broadcast)
            .await
            .map_err(|e| coord_status(&e))?;
        let results = vchannels
            .iter()
            .map(|v| {
                let outcome = result
                    .appends
                    .iter()
                    .find(|(k, _)| k.as_str() == v)
                    .and_then(|(_, o)| *o);
                v1::BroadcastVChannelResult {
                    vchannel: v.clone(),
                    id: outcome.map(|o| o.id.to_string()).unwrap_or_default(),
                    timestamp: outcome.map_or(0, |o| o.timestamp.0),
                }
            })
            .collect();
        Ok(Response::new(v1::BroadcastResponse {
            broadcast_id: result.broadcast_id,
            results,
        }))
    }

    async fn broadcast_ack(
        &self,
        request: Request<v1::BroadcastAckRequest>,
    ) -> Result<Response<v1::BroadcastAckResponse>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        leader
            .broadcaster
            .ack(request.broadcast_id, &request.vchannel)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::BroadcastAckResponse {}))
    }

    async fn create_database(
        &self,
        request: Request<v1::CreateDatabaseRequest>,
    ) -> Result<Response<v1::DatabaseInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .create_database(&leader.ids, &request.name, request.properties)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn drop_database(
        &self,
        request: Request<v1::DropDatabaseRequest>,
    ) -> Result<Response<v1::DropDatabaseResponse>, Status> {
        let leader = self.leader().await?;
        leader
            .catalog
            .drop_database(&request.into_inner().name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::DropDatabaseResponse {}))
    }

    async fn list_databases(
        &self,
        _: Request<v1::ListDatabasesRequest>,
    ) -> Result<Response<v1::ListDatabasesResponse>, Status> {
        let leader = self.leader().await?;
        let databases = leader
            .catalog
            .list_databases()
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListDatabasesResponse { databases }))
    }

    async fn alter_database_properties(
        &self,
        request: Request<v1::AlterDatabasePropertiesRequest>,
    ) -> Result<Response<v1::DatabaseInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .alter_database(&request.name, &request.set, &request.delete_keys)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn create_user(
        &self,
        request: Request<v1::CreateUserRequest>,
    ) -> Result<Response<v1::UserInfo>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .create_user(&r.name, &r.password)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn update_password(
        &self,
        request: Request<v1::UpdatePasswordRequest>,
    ) -> Result<Response<v1::UserInfo>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .update_password(&r.name, &r.old_password, &r.new_password, r.reset)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn drop_user(
        &self,
        request: Request<v1::DropUserRequest>,
    ) -> Result<Response<v1::DropUserResponse>, Status> {
        let leader = self.leader().await?;
        leader
            .catalog
            .drop_user(&request.into_inner().name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::DropUserResponse {}))
    }

    async fn list_users(
        &self,
        _: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        let leader = self.leader().await?;
        let users = leader
            .catalog
            .list_users()
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListUsersResponse { users }))
    }

    async fn authenticate(
        &self,
        request: Request<v1::AuthenticateRequest>,
    ) -> Result<Response<v1::UserInfo>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        match leader
            .catalog
            .authenticate(&r.name, &r.password)
            .await
            .map_err(|e| coord_status(&e))?
        {
            Some(info) => Ok(Response::new(info)),
            None => Err(Status::unauthenticated("unknown user or wrong password")),
        }
    }

    async fn create_role(
        &self,
        request: Request<v1::CreateRoleRequest>,
    ) -> Result<Response<v1::RoleInfo>, Status> {
        let leader = self.leader().await?;
        let role = leader
            .catalog
            .create_role(&request.into_inner().name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(role))
    }

    async fn drop_role(
        &self,
        request: Request<v1::DropRoleRequest>,
    ) -> Result<Response<v1::DropRoleResponse>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        leader
            .catalog
            .drop_role(&r.name, r.force)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::DropRoleResponse {}))
    }

    async fn list_roles(
        &self,
        _: Request<v1::ListRolesRequest>,
    ) -> Result<Response<v1::ListRolesResponse>, Status> {
        let leader = self.leader().await?;
        let roles = leader
            .catalog
            .list_roles()
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListRolesResponse { roles }))
    }

    async fn alter_user_roles(
        &self,
        request: Request<v1::AlterUserRolesRequest>,
    ) -> Result<Response<v1::UserInfo>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .alter_user_roles(&r.user, &r.add, &r.remove)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn alter_role_grants(
        &self,
        request: Request<v1::AlterRoleGrantsRequest>,
    ) -> Result<Response<v1::RoleInfo>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        let role = leader
            .catalog
            .alter_role_grants(&r.role, &r.grant, &r.revoke)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(role))
    }

    async fn export_rbac(
        &self,
        _: Request<v1::ExportRbacRequest>,
    ) -> Result<Response<v1::RbacSnapshot>, Status> {
        let leader = self.leader().await?;
        let snapshot = leader
            .catalog
            .export_rbac()
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(snapshot))
    }

    async fn import_rbac(
        &self,
        request: Request<v1::RbacSnapshot>,
    ) -> Result<Response<v1::ImportRbacResponse>, Status> {
        let leader = self.leader().await?;
        leader
            .catalog
            .import_rbac(&request.into_inner())
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ImportRbacResponse {}))
    }

    async fn create_privilege_group(
        &self,
        request: Request<v1::CreatePrivilegeGroupRequest>,
    ) -> Result<Response<v1::PrivilegeGroupInfo>, Status> {
        let leader = self.leader().await?;
        let group = leader
            .catalog
            .create_privilege_group(&request.into_inner().name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(group))
    }

    async fn drop_privilege_group(
        &self,
        request: Request<v1::DropPrivilegeGroupRequest>,
    ) -> Result<Response<v1::DropPrivilegeGroupResponse>, Status> {
        let leader = self.leader().await?;
        leader
            .catalog
            .drop_privilege_group(&request.into_inner().name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::DropPrivilegeGroupResponse {}))
    }

    async fn list_privilege_groups(
        &self,
        _: Request<v1::ListPrivilegeGroupsRequest>,
    ) -> Result<Response<v1::ListPrivilegeGroupsResponse>, Status> {
        let leader = self.leader().await?;
        let groups = leader
            .catalog
            .list_privilege_groups()
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListPrivilegeGroupsResponse { groups }))
    }

    async fn alter_privilege_group(
        &self,
        request: Request<v1::AlterPrivilegeGroupRequest>,
    ) -> Result<Response<v1::PrivilegeGroupInfo>, Status> {
        let r = request.into_inner();
        let leader = self.leader().await?;
        let group = leader
            .catalog
            .alter_privilege_group(&r.name, &r.add, &r.remove)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(group))
    }

    async fn create_collection(
        &self,
        request: Request<v1::CreateCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let schema = request
            .schema
            .ok_or_else(|| convert::status(ErrorCode::InvalidArgument, "missing schema"))?;
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .create(
                &leader.ids,
                &leader.broadcaster,
                schema,
                request.partition_names,
                request.properties,
            )
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn alter_collection_properties(
        &self,
        request: Request<v1::AlterCollectionPropertiesRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .alter_properties(&request.name, &request.set, &request.delete_keys)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn add_collection_field(
        &self,
        request: Request<v1::AddCollectionFieldRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let Some(field) = request.field else {
            return Err(convert::status(
                ErrorCode::InvalidArgument,
                "AddCollectionField needs a field",
            ));
        };
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .add_field(
                &leader.broadcaster,
                &request.name,
                field,
                &request.properties,
            )
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn truncate_collection(
        &self,
        request: Request<v1::TruncateCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .truncate(&leader.ids, &leader.broadcaster, &request.name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn alter_collection_field(
        &self,
        request: Request<v1::AlterCollectionFieldRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .raise_max_length(
                &leader.broadcaster,
                &request.name,
                &request.field_name,
                request.max_length,
            )
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn rename_collection(
        &self,
        request: Request<v1::RenameCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .rename(&leader.broadcaster, &request.name, &request.new_name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn create_partition(
        &self,
        request: Request<v1::CreatePartitionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .create_partition(
                &leader.ids,
                &leader.broadcaster,
                &request.collection_name,
                &request.partition_name,
            )
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn drop_partition(
        &self,
        request: Request<v1::DropPartitionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .drop_partition(
                &leader.broadcaster,
                &request.collection_name,
                &request.partition_name,
            )
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn create_alias(
        &self,
        request: Request<v1::CreateAliasRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .set_alias(&request.alias, &request.collection_name, false)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn alter_alias(
        &self,
        request: Request<v1::AlterAliasRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .set_alias(&request.alias, &request.collection_name, true)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn drop_alias(
        &self,
        request: Request<v1::DropAliasRequest>,
    ) -> Result<Response<v1::DropAliasResponse>, Status> {
        let leader = self.leader().await?;
        leader
            .catalog
            .drop_alias(&request.into_inner().alias)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::DropAliasResponse {}))
    }

    async fn list_aliases(
        &self,
        request: Request<v1::ListAliasesRequest>,
    ) -> Result<Response<v1::ListAliasesResponse>, Status> {
        let name = request.into_inner().collection_name;
        let leader = self.leader().await?;
        let aliases = leader
            .catalog
            .aliases((!name.is_empty()).then_some(name.as_str()))
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListAliasesResponse { aliases }))
    }

    async fn drop_collection(
        &self,
        request: Request<v1::DropCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let name = request.into_inner().name;
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .drop_collection(&leader.broadcaster, &name)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn load_collection(
        &self,
        request: Request<v1::LoadCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let request = request.into_inner();
        if request.replicas > MAX_REPLICAS {
            return Err(convert::status(
                ErrorCode::InvalidArgument,
                format!(
                    "{} replicas: at most {MAX_REPLICAS} delegators per shard",
                    request.replicas
                ),
            ));
        }
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .set_load_state(
                &request.name,
                v1::LoadState::Loaded,
                Some(request.replicas.max(1)),
            )
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn move_p_channel(
        &self,
        request: Request<v1::MovePChannelRequest>,
    ) -> Result<Response<v1::MovePChannelResponse>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let node = crate::NodeId(request.node_id);
        let moved = tokio::time::timeout(
            MOVE_PATIENCE,
            leader.assigner.move_pchannel(&request.pchannel, node),
        )
        .await
        .map_err(|_| {
            convert::status(
                ErrorCode::NotReady,
                format!(
                    "{} did not reach {node} within {MOVE_PATIENCE:?}; the move may still finish",
                    request.pchannel
                ),
            )
        })?
        .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::MovePChannelResponse { term: moved.0 }))
    }

    async fn compact(
        &self,
        request: Request<v1::CompactRequest>,
    ) -> Result<Response<v1::CompactionInfo>, Status> {
        use prost::Message as _;
        let collection_id = request.into_inner().collection_id;
        let (_, info) = self.collection(collection_id).await?;
        if info.state != v1::CollectionState::Created as i32 {
            return Err(convert::status(
                ErrorCode::InvalidArgument,
                format!("collection {collection_id} is being dropped"),
            ));
        }
        let oracles = self.oracles().await?;
        let timestamp = oracles
            .tso
            .allocate(1)
            .await
            .map_err(|e| coord_status(&e))?;
        let id = oracles
            .ids
            .allocate(1)
            .await
            .map_err(|e| coord_status(&e))?;
        let (store, root) = self.coordinator.meta();
        let keys = crate::keys::Keys::new(root);
        let record = v1::CompactionInfo {
            compaction_id: id as i64,
            collection_id,
            timestamp: timestamp.0,
            vchannels: info.vchannels.clone(),
            started_unix_ms: crate::compaction::now_ms(),
            ..v1::CompactionInfo::default()
        };
        crate::compaction::forget_old(store.as_ref(), &keys)
            .await
            .map_err(|e| coord_status(&e))?;
        store
            .put(
                &keys.compaction(record.compaction_id),
                bytes::Bytes::from(record.encode_to_vec()),
                sluice_meta::Condition::KeyAbsent,
                None,
            )
            .await
            .map_err(|e| Status::unavailable(format!("meta store: {e}")))?;
        tracing::info!(compaction = id, collection_id, "compaction asked for");
        Ok(Response::new(v1::CompactionInfo {
            state: v1::CompactionState::Executing as i32,
            ..record
        }))
    }

    async fn get_compaction(
        &self,
        request: Request<v1::GetCompactionRequest>,
    ) -> Result<Response<v1::CompactionInfo>, Status> {
        let id = request.into_inner().compaction_id;
        let leader = self.leader().await?;
        let (store, root) = self.coordinator.meta();
        let keys = crate::keys::Keys::new(root);
        let info = crate::compaction::read(store.as_ref(), &keys, id, &leader.catalog)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn list_compactions(
        &self,
        request: Request<v1::ListCompactionsRequest>,
    ) -> Result<Response<v1::ListCompactionsResponse>, Status> {
        let collection_id = request.into_inner().collection_id;
        let leader = self.leader().await?;
        let (store, root) = self.coordinator.meta();
        let keys = crate::keys::Keys::new(root);
        let compactions =
            crate::compaction::list(store.as_ref(), &keys, collection_id, &leader.catalog)
                .await
                .map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListCompactionsResponse { compactions }))
    }

    async fn list_replicas(
        &self,
        request: Request<v1::ListReplicasRequest>,
    ) -> Result<Response<v1::ListReplicasResponse>, Status> {
        use prost::Message as _;
        let collection_id = request.into_inner().collection_id;
        let (leader, info) = self.collection(collection_id).await?;
        let owners = leader.assigner.subscribe().borrow().channels.clone();
        let (store, root) = self.coordinator.meta();
        let keys = crate::keys::Keys::new(root);
        let read = |e: sluice_meta::MetaError| Status::unavailable(format!("meta store: {e}"));
        let corrupt = |key: &str, e: prost::DecodeError| {
            Status::internal(format!("the placement {key} does not decode: {e}"))
        };
        let (kvs, _) = store
            .scan_prefix(&keys.replica_prefix())
            .await
            .map_err(read)?;
        let mut placed = Vec::new();
        for kv in &kvs {
            let r =
                v1::ReplicaPlacement::decode(kv.value.as_ref()).map_err(|e| corrupt(&kv.key, e))?;
            if r.collection_id == collection_id && r.replica > 0 {
                placed.push(r);
            }
        }
        let mut replicas = Vec::new();
        for vchannel in &info.vchannels {
            let owner = sluice_types::VChannel::new(vchannel.as_str())
                .ok()
                .and_then(|v| owners.get(v.pchannel().as_str()));
            replicas.push(v1::ReplicaPlacement {
                collection_id,
                vchannel: vchannel.clone(),
                replica: 0,
                node_id: owner.map_or(0, |(_, node)| node.id.0),
                address: owner.map_or_else(String::new, |(_, node)| node.address.clone()),
            });
            let mut more: Vec<_> = placed
                .iter()
                .filter(|r| &r.vchannel == vchannel)
                .cloned()
                .collect();
            more.sort_by_key(|r| r.replica);
            replicas.extend(more);
        }
        let (kvs, _) = store
            .scan_prefix(&keys.placement_prefix())
            .await
            .map_err(read)?;
        let mut segments = Vec::new();
        for kv in &kvs {
            let p =
                v1::SegmentPlacement::decode(kv.value.as_ref()).map_err(|e| corrupt(&kv.key, e))?;
            if p.collection_id == collection_id {
                segments.push(p);
            }
        }
        segments.sort_by_key(|p| p.segment_id);
        Ok(Response::new(v1::ListReplicasResponse {
            replicas,
            segments,
        }))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let request = request.into_inner();
        let leader = self.leader().await?;
        let node = crate::NodeId(request.node_id);
        let (store, root) = self.coordinator.meta();
        let key = crate::keys::Keys::new(root).drain(node);
        let written = if request.undo {
            store
                .delete(&key, sluice_meta::Condition::None)
                .await
                .map(|_| ())
        } else {
            store
                .put(
                    &key,
                    bytes::Bytes::new(),
                    sluice_meta::Condition::None,
                    None,
                )
                .await
                .map(|_| ())
        };
        written.map_err(|e| coord_status(&e.into()))?;
        leader.drained.send_modify(|set| {
            if request.undo {
                set.remove(&node);
            } else {
                set.insert(node);
            }
        });
        tracing::info!(
            node = request.node_id,
            undo = request.undo,
            "node drain changed"
        );
        let drained = leader.drained.borrow().iter().map(|n| n.0).collect();
        Ok(Response::new(v1::DrainNodeResponse { drained }))
    }

    async fn release_collection(
        &self,
        request: Request<v1::ReleaseCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        let name = request.into_inner().name;
        let leader = self.leader().await?;
        let info = leader
            .catalog
            .set_load_state(&name, v1::LoadState::Released, None)
            .await
            .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn describe_collection(
        &self,
        request: Request<v1::DescribeCollectionRequest>,
    ) -> Result<Response<v1::CollectionInfo>, Status> {
        use v1::describe_collection_request::Which;
        let leader = self.leader().await?;
        let info = match request.into_inner().which {
            Some(Which::Name(name)) => leader.catalog.by_name(&name).await,
            Some(Which::CollectionId(id)) => leader.catalog.by_id(id).await,
            None => {
                return Err(convert::status(
                    ErrorCode::InvalidArgument,
                    "name or collection_id is required",
                ));
            }
        }
        .map_err(|e| coord_status(&e))?;
        Ok(Response::new(info))
    }

    async fn list_collections(
        &self,
        _request: Request<v1::ListCollectionsRequest>,
    ) -> Result<Response<v1::ListCollectionsResponse>, Status> {
        let leader = self.leader().await?;
        let collections = leader.catalog.list().await.map_err(|e| coord_status(&e))?;
        Ok(Response::new(v1::ListCollectionsResponse { collections }))
    }

    async fn list_segments(
        &self,
        request: Request<v1::ListSegmentsRequest>,
    ) -> Result<Response<v1::ListSegmentsResponse>, Status> {
        use prost::Message as _;
        use sluice_types::storage;
        let collection = request.into_inner().collection_id;
        let (store, root) = self.coordinator.meta();
        let (segments_prefix, deletes_prefix) = if collection == 0 {
            (
                storage::segment_manifests_prefix(root),
                storage::delete_manifests_prefix(root),
            )
        } else {
            (
                storage::collection_segments_prefix(root, collection),
                storage::collection_deletes_prefix(root, collection),
            )
        };
        let read = |e: sluice_meta::MetaError| Status::unavailable(format!("meta store: {e}"));
        let corrupt = |key: &str, e: prost::DecodeError| {
            Status::internal(format!("the manifest {key} does not decode: {e}"))
        };
        let (kvs, _) = store.scan_prefix(&segments_prefix).await.map_err(read)?;
        let mut segments = kvs
            .iter()
            .map(|kv| {
                sluice_types::message::pb::SegmentManifest::decode(kv.value.as_ref())
                    .map_err(|e| corrupt(&kv.key, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        segments.sort_by_key(|m| (m.collection_id, m.segment_id));
        let (kvs, _) = store.scan_prefix(&deletes_prefix).await.map_err(read)?;
        let mut deletes = kvs
            .iter()
            .map(|kv| {
                sluice_types::message::pb::DeleteManifest::decode(kv.value.as_ref())
                    .map_err(|e| corrupt(&kv.key, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        deletes.sort_by_key(|m| (m.collection_id, m.flush_timestamp));
        Ok(Response::new(v1::ListSegmentsResponse {
            segments,
            deletes,
        }))
    }
}
