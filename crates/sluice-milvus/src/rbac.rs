//! Milvus's users, roles and privileges over Sluice's (`sluice_types::rbac`, kept by the
//! coordinator), and the check every call passes when authorization is on.
//!
//! **Who calls.** A call carries `authorization` metadata: the base64 of `user:password`
//! (pymilvus `token="user:password"`, or `user=` and `password=`). The coordinator checks the
//! password (a slow hash, on purpose); the front then goes by that header for
//! [`IDENTITY_FOR`], so a password changed or a user dropped through another front stops
//! working within that (through this front: at once).
//!
//! **What it may do.** Each request type needs one privilege on one object ([`Privileged`],
//! Milvus's table): a collection it names, or the database (`Global`). Roles and grants are read
//! at most [`POLICY_FOR`] old (forgotten when changed through this front). `root` and holders of
//! `admin` may do everything; everyone holds `public`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::Mutex;
use sluice_proto::Channel;
use sluice_proto::v1;
use sluice_proto::v1::coordinator_client::CoordinatorClient;
use sluice_types::rbac::{ADMIN_ROLE, ANY, Need, PUBLIC_ROLE, ROOT_USER, permits_with};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::pb::milvus as mm;
use crate::status::Failure;

/// How long a checked `authorization` header stands for its user.
pub(crate) const IDENTITY_FOR: Duration = Duration::from_secs(10);
/// How old the roles and grants the front goes by may be.
pub(crate) const POLICY_FOR: Duration = Duration::from_secs(1);
/// The most checked headers kept (beyond that the oldest are forgotten).
const IDENTITIES_KEPT: usize = 4096;

/// Every user's roles and every role's grants, as read from the coordinator.
#[derive(Debug, Default)]
struct Policy {
    roles_of: HashMap<String, Vec<String>>,
    grants: HashMap<String, Vec<v1::Grant>>,
    /// Custom privilege groups' privileges.
    groups: HashMap<String, Vec<String>>,
}

impl Policy {
    /// The grants of `user`'s roles and `public`'s.
    fn grants_of(&self, user: &str) -> Vec<&v1::Grant> {
        let held = self.roles_of.get(user).map_or(&[][..], Vec::as_slice);
        held.iter()
            .map(String::as_str)
            .chain([PUBLIC_ROLE])
            .filter_map(|r| self.grants.get(r))
            .flatten()
            .collect()
    }

    /// Whether `grant` lets a call with `need` through.
    fn permits(&self, grant: &v1::Grant, need: &Need<'_>) -> bool {
        permits_with(
            (
                &grant.object_type,
                &grant.object_name,
                &grant.database,
                &grant.privilege,
            ),
            need,
            &|name: &str| self.groups.get(name).map(Vec::as_slice),
        )
    }
}

/// The front's access control.
pub(crate) struct Rbac {
    /// Whether calls are checked (`milvus_authorization`).
    enabled: bool,
    coord: CoordinatorClient<Channel>,
    /// SHA-256 of a checked header → (when checked, its user).
    identities: Mutex<HashMap<[u8; 32], (Instant, String)>>,
    policy: Mutex<Option<(Instant, Arc<Policy>)>>,
}

impl std::fmt::Debug for Rbac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rbac")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// What a request type needs: the object type (`Global`, `Collection`, `User`) and privilege;
/// `None`, any authenticated caller may.
pub(crate) type Needs = Option<(&'static str, &'static str)>;

/// A request and what it needs (Milvus's `privilege_ext_obj` of the request message).
pub(crate) trait Privileged {
    /// The object type and privilege.
    const NEEDS: Needs;
    /// The objects it names (collections, or a user), as the caller named them.
    fn objects(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Implements [`Privileged`]: `Request => [];` (any caller), `Request => [Type Privilege];`
/// (the object is any) or `Request => [Type Privilege field];` (the object is that field).
macro_rules! privileged {
    ($($request:ident => [$($ty:ident $privilege:ident $($field:ident)?)?];)*) => {
        $(impl Privileged for mm::$request {
            const NEEDS: Needs = privileged!(@needs $($ty $privilege)?);
            $($(fn objects(&self) -> Vec<&str> {
                vec![self.$field.as_str()]
            })?)?
        })*
    };
    (@needs) => { None };
    (@needs $ty:ident $privilege:ident) => { Some((stringify!($ty), stringify!($privilege))) };
}

privileged! {
    CreateCollectionRequest => [Global CreateCollection];
    DropCollectionRequest => [Global DropCollection];
    HasCollectionRequest => [];
    LoadCollectionRequest => [Collection Load collection_name];
    ReleaseCollectionRequest => [Collection Release collection_name];
    DescribeCollectionRequest => [Global DescribeCollection collection_name];
    GetCollectionStatisticsRequest => [Collection GetStatistics collection_name];
    ShowCollectionsRequest => [];
    AlterCollectionRequest => [Global CreateCollection];
    AlterCollectionFieldRequest => [Global CreateCollection];
    TruncateCollectionRequest => [Global DropCollection];
    CreatePartitionRequest => [Collection CreatePartition collection_name];
    DropPartitionRequest => [Collection DropPartition collection_name];
    HasPartitionRequest => [Collection HasPartition collection_name];
    LoadPartitionsRequest => [Collection Load collection_name];
    ReleasePartitionsRequest => [Collection Release collection_name];
    GetPartitionStatisticsRequest => [Collection GetStatistics collection_name];
    ShowPartitionsRequest => [Collection ShowPartitions collection_name];
    GetLoadingProgressRequest => [Collection GetLoadState collection_name];
    GetLoadStateRequest => [Collection GetLoadState collection_name];
    CreateAliasRequest => [Global CreateAlias collection_name];
    DropAliasRequest => [Global DropAlias];
    AlterAliasRequest => [Global CreateAlias collection_name];
    DescribeAliasRequest => [Global DescribeAlias];
    ListAliasesRequest => [Global ListAliases collection_name];
    CreateIndexRequest => [Collection CreateIndex collection_name];
    AlterIndexRequest => [Collection CreateIndex collection_name];
    DescribeIndexRequest => [Collection IndexDetail collection_name];
    DropIndexRequest => [Collection DropIndex collection_name];
    InsertRequest => [Collection Insert collection_name];
    DeleteRequest => [Collection Delete collection_name];
    UpsertRequest => [Collection Upsert collection_name];
    SearchRequest => [Collection Search collection_name];
    HybridSearchRequest => [Collection Search collection_name];
    QueryRequest => [Collection Query collection_name];
    FlushAllRequest => [Global FlushAll];
    AddCollectionFieldRequest => [Collection AddCollectionField collection_name];
    GetFlushStateRequest => [Collection GetFlushState collection_name];
    GetFlushAllStateRequest => [];
    GetPersistentSegmentInfoRequest => [];
    GetQuerySegmentInfoRequest => [];
    GetReplicasRequest => [];
    GetCompactionStateRequest => [];
    GetCompactionPlansRequest => [];
    ManualCompactionRequest => [Collection Compaction collection_name];
    CreateCredentialRequest => [Global CreateOwnership];
    UpdateCredentialRequest => [User UpdateUser username];
    DeleteCredentialRequest => [Global DropOwnership];
    ListCredUsersRequest => [Global SelectOwnership];
    CreateRoleRequest => [Global CreateOwnership];
    DropRoleRequest => [Global DropOwnership];
    OperateUserRoleRequest => [Global ManageOwnership];
    SelectRoleRequest => [Global SelectOwnership];
    OperatePrivilegeRequest => [Global ManageOwnership];
    OperatePrivilegeV2Request => [Global ManageOwnership];
    SelectGrantRequest => [Global SelectOwnership];
    RenameCollectionRequest => [Global RenameCollection];
    ConnectRequest => [];
    AllocTimestampRequest => [];
    CreateDatabaseRequest => [Global CreateDatabase];
    DropDatabaseRequest => [Global DropDatabase];
    ListDatabasesRequest => [];
    AlterDatabaseRequest => [Global AlterDatabase];
    DescribeDatabaseRequest => [Global DescribeDatabase];
    RunAnalyzerRequest => [];
    CreatePrivilegeGroupRequest => [Global CreatePrivilegeGroup];
    DropPrivilegeGroupRequest => [Global DropPrivilegeGroup];
    ListPrivilegeGroupsRequest => [Global ListPrivilegeGroups];
    OperatePrivilegeGroupRequest => [Global OperatePrivilegeGroup];
    BackupRbacMetaRequest => [Global BackupRBAC];
    RestoreRbacMetaRequest => [Global RestoreRBAC];
}

impl Privileged for mm::FlushRequest {
    const NEEDS: Needs = Some(("Collection", "Flush"));
    fn objects(&self) -> Vec<&str> {
        self.collection_names.iter().map(String::as_str).collect()
    }
}

impl Privileged for mm::SelectUserRequest {
    const NEEDS: Needs = Some(("User", "SelectUser"));
    fn objects(&self) -> Vec<&str> {
        self.user
            .as_ref()
            .map(|u| u.name.as_str())
            .into_iter()
            .collect()
    }
}

/// The user and password an `authorization` header names (base64 of `user:password`, with or
/// without `Bearer `).
fn credentials(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let text = text.strip_prefix("Bearer ").unwrap_or(text);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthenticated() -> Status {
    Status::unauthenticated(
        "auth check failure: the call carries no user and password, or they are not a user's \
         (send the base64 of user:password as `authorization`; pymilvus: token=\"user:password\")",
    )
}

impl Rbac {
    pub(crate) fn new(enabled: bool, coord: CoordinatorClient<Channel>) -> Rbac {
        Rbac {
            enabled,
            coord,
            identities: Mutex::new(HashMap::new()),
            policy: Mutex::new(None),
        }
    }

    /// Forgets what was read: users, roles or grants changed through this front.
    pub(crate) fn forget(&self) {
        self.identities.lock().clear();
        *self.policy.lock() = None;
    }

    /// The calling user (`None` when authorization is off); UNAUTHENTICATED when the call
    /// names none or a wrong password.
    pub(crate) async fn caller(&self, metadata: &MetadataMap) -> Result<Option<String>, Status> {
        if !self.enabled {
            return Ok(None);
        }
        let header = metadata
            .get("authorization")
            .ok_or_else(unauthenticated)?
            .as_bytes();
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, header)
            .as_ref()
            .try_into()
            .map_err(|_| Status::internal("a SHA-256 digest is 32 bytes"))?;
        if let Some((at, user)) = self.identities.lock().get(&digest)
            && at.elapsed() < IDENTITY_FOR
        {
            return Ok(Some(user.clone()));
        }
        let (name, password) = credentials(header).ok_or_else(unauthenticated)?;
        let info = self
            .coord
            .clone()
            .authenticate(v1::AuthenticateRequest { name, password })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unauthenticated => unauthenticated(),
                _ => s,
            })?
            .into_inner();
        let mut identities = self.identities.lock();
        if identities.len() >= IDENTITIES_KEPT {
            identities.retain(|_, (at, _)| at.elapsed() < IDENTITY_FOR);
            if identities.len() >= IDENTITIES_KEPT {
                identities.clear();
            }
        }
        identities.insert(digest, (Instant::now(), info.name.clone()));
        Ok(Some(info.name))
    }

    async fn policy(&self) -> Result<Arc<Policy>, Status> {
        if let Some((at, p)) = &*self.policy.lock()
            && at.elapsed() < POLICY_FOR
        {
            return Ok(p.clone());
        }
        let mut coord = self.coord.clone();
        let users = coord
            .list_users(v1::ListUsersRequest {})
            .await?
            .into_inner()
            .users;
        let roles = coord
            .list_roles(v1::ListRolesRequest {})
            .await?
            .into_inner()
            .roles;
        let groups = coord
            .list_privilege_groups(v1::ListPrivilegeGroupsRequest {})
            .await?
            .into_inner()
            .groups;
        let policy = Arc::new(Policy {
            roles_of: users.into_iter().map(|u| (u.name, u.roles)).collect(),
            grants: roles.into_iter().map(|r| (r.name, r.grants)).collect(),
            groups: groups
                .into_iter()
                .filter(|g| !g.builtin)
                .map(|g| (g.name, g.privileges))
                .collect(),
        });
        *self.policy.lock() = Some((Instant::now(), policy.clone()));
        Ok(policy)
    }

    /// Whether `user` may do everything (`root`, or a holder of `admin`).
    pub(crate) async fn is_admin(&self, user: &str) -> Result<bool, Status> {
        if user == ROOT_USER {
            return Ok(true);
        }
        let policy = self.policy().await?;
        Ok(policy
            .roles_of
            .get(user)
            .is_some_and(|roles| roles.iter().any(|r| r == ADMIN_ROLE)))
    }

    /// The collection alias `name` of database `database` names (`None`: it names none, or
    /// the catalog did not answer).
    async fn collection_of_alias(&self, database: &str, name: &str) -> Option<String> {
        use sluice_types::schema::{in_database, split_database};
        let info = self
            .coord
            .clone()
            .describe_collection(v1::DescribeCollectionRequest {
                which: Some(v1::describe_collection_request::Which::Name(in_database(
                    database, name,
                ))),
            })
            .await
            .ok()?
            .into_inner();
        let real = split_database(&info.schema?.name).1.to_owned();
        (real != name).then_some(real)
    }

    /// Of `names` (collections of database `database`), those the caller of a call with
    /// `metadata` may see: all with authorization off, for `root` and `admin` holders;
    /// otherwise those some grant of the caller's names (by name or `*`), as Milvus lists them.
    pub(crate) async fn visible(
        &self,
        metadata: &MetadataMap,
        database: &str,
        names: Vec<String>,
    ) -> Result<Vec<String>, Status> {
        let Some(user) = self.caller(metadata).await? else {
            return Ok(names);
        };
        if self.is_admin(&user).await? {
            return Ok(names);
        }
        let policy = self.policy().await?;
        let grants = policy.grants_of(&user);
        Ok(names
            .into_iter()
            .filter(|n| {
                grants.iter().any(|g| {
                    (g.database == ANY || g.database == database)
                        && (g.object_name == ANY
                            || (g.object_type == "Collection" && g.object_name == *n))
                })
            })
            .collect())
    }

    /// Checks a call in database `database` needing `needs` on `objects` (none: any object):
    /// UNAUTHENTICATED without a user, PERMISSION_DENIED when no role of the user allows it.
    /// Returns the caller (`None` when authorization is off).
    pub(crate) async fn check(
        &self,
        metadata: &MetadataMap,
        database: &str,
        needs: Needs,
        objects: &[&str],
    ) -> Result<Option<String>, Status> {
        let Some(user) = self.caller(metadata).await? else {
            return Ok(None);
        };
        let Some((object_type, privilege)) = needs else {
            return Ok(Some(user));
        };
        // A user reads and changes its own record.
        if object_type == "User" && objects.iter().all(|o| *o == user) && !objects.is_empty() {
            return Ok(Some(user));
        }
        if self.is_admin(&user).await? {
            return Ok(Some(user));
        }
        let policy = self.policy().await?;
        let grants = policy.grants_of(&user);
        let named: Vec<&str> = objects.iter().copied().filter(|o| !o.is_empty()).collect();
        let objects = if named.is_empty() { vec![ANY] } else { named };
        for name in objects {
            let need = Need {
                object_type,
                name,
                database,
                privilege,
            };
            let mut allowed = grants.iter().any(|g| policy.permits(g, &need));
            // A collection named by an alias: its grants name the collection (as Milvus
            // resolves aliases before it checks).
            if !allowed
                && object_type == "Collection"
                && name != ANY
                && let Some(real) = self.collection_of_alias(database, name).await
            {
                let need = Need {
                    name: &real,
                    ..need
                };
                allowed = grants.iter().any(|g| policy.permits(g, &need));
            }
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "Privilege{privilege}: permission deny to {user} in the `{database}` \
                     database (object {object_type} {name})"
                )));
            }
        }
        Ok(Some(user))
    }
}

/// `items` as (added, removed) by an operation that adds them (`Ok(true)`), removes them
/// (`Ok(false)`) or is of a type Milvus does not have (`Err(number)`).
fn added_or_removed(
    what: &str,
    adding: Result<bool, i32>,
    items: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), Failure> {
    match adding {
        Ok(true) => Ok((items, Vec::new())),
        Ok(false) => Ok((Vec::new(), items)),
        Err(n) => Err(Failure::invalid(format!(
            "{what} type {n} is not one Milvus has"
        ))),
    }
}

/// How a backup names the scheme of a password hash.
const HASH_SCHEME: &str = "pbkdf2-sha256";

/// A password as Milvus clients send it (base64).
fn password(field: &str, encoded: &str) -> Result<String, Failure> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or_else(|| Failure::invalid(format!("{field}: not the base64 of a UTF-8 password")))
}

fn coord_failure(s: &Status) -> Failure {
    Failure::invalid(s.message().to_owned())
}

fn role_entity(name: &str) -> mm::RoleEntity {
    mm::RoleEntity {
        name: name.to_owned(),
        description: String::new(),
    }
}

fn user_entity(name: &str) -> mm::UserEntity {
    mm::UserEntity {
        name: name.to_owned(),
    }
}

/// The database a grant of a request names (`default` when it names none).
fn grant_database(db_name: &str) -> String {
    if db_name.is_empty() {
        sluice_types::schema::DEFAULT_DATABASE.to_owned()
    } else {
        db_name.to_owned()
    }
}

/// The Milvus RBAC calls, after the caller was allowed to make them.
impl Rbac {
    /// Makes a change through the coordinator (`call` with a client of it), then forgets what
    /// this front read so that the change acts at once.
    async fn change<T, F, Fut>(&self, call: F) -> Result<(), Failure>
    where
        F: FnOnce(CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.ask(call).await?;
        self.forget();
        Ok(())
    }

    /// Asks the coordinator (`call` with a client of it) for its answer.
    async fn ask<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: FnOnce(CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        Ok(call(self.coord.clone())
            .await
            .map_err(|s| coord_failure(&s))?
            .into_inner())
    }

    async fn users(&self) -> Result<Vec<v1::UserInfo>, Failure> {
        Ok(self
            .ask(|mut c| async move { c.list_users(v1::ListUsersRequest {}).await })
            .await?
            .users)
    }

    async fn roles(&self) -> Result<Vec<v1::RoleInfo>, Failure> {
        Ok(self
            .ask(|mut c| async move { c.list_roles(v1::ListRolesRequest {}).await })
            .await?
            .roles)
    }

    pub(crate) async fn create_credential(
        &self,
        r: mm::CreateCredentialRequest,
    ) -> Result<(), Failure> {
        let password = password("password", &r.password)?;
        let request = v1::CreateUserRequest {
            name: r.username,
            password,
        };
        self.change(|mut c| async move { c.create_user(request).await })
            .await
    }

    /// `caller`: who asks (`None` with authorization off). An administrator changing another
    /// user's password needs not know the old one.
    pub(crate) async fn update_credential(
        &self,
        r: mm::UpdateCredentialRequest,
        caller: Option<&str>,
    ) -> Result<(), Failure> {
        let new_password = password("newPassword", &r.new_password)?;
        let reset = match caller {
            Some(c) if c != r.username => self.is_admin(c).await.unwrap_or(false),
            _ => false,
        };
        let old_password = if reset {
            String::new()
        } else {
            password("oldPassword", &r.old_password)?
        };
        let request = v1::UpdatePasswordRequest {
            name: r.username,
            old_password,
            new_password,
            reset,
        };
        self.change(|mut c| async move { c.update_password(request).await })
            .await
    }

    pub(crate) async fn delete_credential(
        &self,
        r: mm::DeleteCredentialRequest,
    ) -> Result<(), Failure> {
        let request = v1::DropUserRequest { name: r.username };
        self.change(|mut c| async move { c.drop_user(request).await })
            .await
    }

    pub(crate) async fn list_cred_users(&self) -> Result<Vec<String>, Failure> {
        Ok(self.users().await?.into_iter().map(|u| u.name).collect())
    }

    pub(crate) async fn create_role(&self, r: mm::CreateRoleRequest) -> Result<(), Failure> {
        let name = r.entity.map(|e| e.name).unwrap_or_default();
        let request = v1::CreateRoleRequest { name };
        self.change(|mut c| async move { c.create_role(request).await })
            .await
    }

    pub(crate) async fn drop_role(&self, r: mm::DropRoleRequest) -> Result<(), Failure> {
        let request = v1::DropRoleRequest {
            name: r.role_name,
            force: r.force_drop,
        };
        self.change(|mut c| async move { c.drop_role(request).await })
            .await
    }

    pub(crate) async fn operate_user_role(
        &self,
        r: mm::OperateUserRoleRequest,
    ) -> Result<(), Failure> {
        let adding = match mm::OperateUserRoleType::try_from(r.r#type) {
            Ok(mm::OperateUserRoleType::AddUserToRole) => Ok(true),
            Ok(mm::OperateUserRoleType::RemoveUserFromRole) => Ok(false),
            Err(_) => Err(r.r#type),
        };
        let (add, remove) = added_or_removed("operate user role", adding, vec![r.role_name])?;
        let request = v1::AlterUserRolesRequest {
            user: r.username,
            add,
            remove,
        };
        self.change(|mut c| async move { c.alter_user_roles(request).await })
            .await
    }

    pub(crate) async fn select_role(
        &self,
        r: mm::SelectRoleRequest,
    ) -> Result<Vec<mm::RoleResult>, Failure> {
        let wanted = r.role.map(|e| e.name).filter(|n| !n.is_empty());
        let users = if r.include_user_info {
            self.users().await?
        } else {
            Vec::new()
        };
        Ok(self
            .roles()
            .await?
            .into_iter()
            .filter(|role| wanted.as_ref().is_none_or(|w| *w == role.name))
            .map(|role| mm::RoleResult {
                users: users
                    .iter()
                    .filter(|u| u.roles.contains(&role.name))
                    .map(|u| user_entity(&u.name))
                    .collect(),
                role: Some(role_entity(&role.name)),
            })
            .collect())
    }

    pub(crate) async fn select_user(
        &self,
        r: mm::SelectUserRequest,
    ) -> Result<Vec<mm::UserResult>, Failure> {
        let wanted = r.user.map(|e| e.name).filter(|n| !n.is_empty());
        Ok(self
            .users()
            .await?
            .into_iter()
            .filter(|u| wanted.as_ref().is_none_or(|w| *w == u.name))
            .map(|u| mm::UserResult {
                user: Some(user_entity(&u.name)),
                roles: if r.include_role_info {
                    u.roles.iter().map(|r| role_entity(r)).collect()
                } else {
                    Vec::new()
                },
                description: String::new(),
            })
            .collect())
    }

    async fn alter_grants(
        &self,
        role: String,
        grant: v1::Grant,
        revoke: bool,
    ) -> Result<(), Failure> {
        let (grant, revoke) = if revoke {
            (Vec::new(), vec![grant])
        } else {
            (vec![grant], Vec::new())
        };
        let request = v1::AlterRoleGrantsRequest {
            role,
            grant,
            revoke,
        };
        self.change(|mut c| async move { c.alter_role_grants(request).await })
            .await
    }

    fn revoking(operation: i32) -> Result<bool, Failure> {
        match mm::OperatePrivilegeType::try_from(operation) {
            Ok(mm::OperatePrivilegeType::Grant) => Ok(false),
            Ok(mm::OperatePrivilegeType::Revoke) => Ok(true),
            Err(_) => Err(Failure::invalid(format!(
                "operate privilege type {operation} is not one Milvus has"
            ))),
        }
    }

    pub(crate) async fn operate_privilege(
        &self,
        r: mm::OperatePrivilegeRequest,
    ) -> Result<(), Failure> {
        let revoke = Self::revoking(r.r#type)?;
        let e = r
            .entity
            .ok_or_else(|| Failure::invalid("a grant needs its entity"))?;
        let role = e.role.map(|r| r.name).unwrap_or_default();
        let privilege = e
            .grantor
            .and_then(|g| g.privilege)
            .map(|p| p.name)
            .unwrap_or_default();
        let grant = v1::Grant {
            object_type: e.object.map(|o| o.name).unwrap_or_default(),
            object_name: e.object_name,
            database: grant_database(&e.db_name),
            privilege,
        };
        self.alter_grants(role, grant, revoke).await
    }

    pub(crate) async fn operate_privilege_v2(
        &self,
        r: mm::OperatePrivilegeV2Request,
    ) -> Result<(), Failure> {
        use sluice_types::rbac::{Level, level};
        let revoke = Self::revoking(r.r#type)?;
        let role = r.role.map(|r| r.name).unwrap_or_default();
        let privilege = r
            .grantor
            .and_then(|g| g.privilege)
            .map(|p| p.name)
            .unwrap_or_default();
        let database = grant_database(&r.db_name);
        let collection = if r.collection_name.is_empty() {
            ANY.to_owned()
        } else {
            r.collection_name
        };
        let level = if sluice_types::rbac::is_privilege(&privilege) {
            level(&privilege)
        } else {
            // A custom group: the highest level of its privileges.
            let groups = self.privilege_groups().await?;
            let custom = groups.iter().find(|g| g.name == privilege).ok_or_else(|| {
                Failure::invalid(format!(
                    "privilege {privilege:?} does not exist (nor a privilege group of that name)"
                ))
            })?;
            sluice_types::rbac::level_of(custom.privileges.iter().map(String::as_str))
        };
        let (object_type, object_name, database) = match level {
            Level::Collection => ("Collection", collection, database),
            Level::Database => ("Global", ANY.to_owned(), database),
            Level::Cluster => ("Global", ANY.to_owned(), ANY.to_owned()),
        };
        let grant = v1::Grant {
            object_type: object_type.to_owned(),
            object_name,
            database,
            privilege,
        };
        self.alter_grants(role, grant, revoke).await
    }

    async fn privilege_groups(&self) -> Result<Vec<v1::PrivilegeGroupInfo>, Failure> {
        Ok(self
            .ask(|mut c| async move {
                c.list_privilege_groups(v1::ListPrivilegeGroupsRequest {})
                    .await
            })
            .await?
            .groups)
    }

    pub(crate) async fn create_privilege_group(
        &self,
        r: mm::CreatePrivilegeGroupRequest,
    ) -> Result<(), Failure> {
        let request = v1::CreatePrivilegeGroupRequest { name: r.group_name };
        self.change(|mut c| async move { c.create_privilege_group(request).await })
            .await
    }

    pub(crate) async fn drop_privilege_group(
        &self,
        r: mm::DropPrivilegeGroupRequest,
    ) -> Result<(), Failure> {
        let request = v1::DropPrivilegeGroupRequest { name: r.group_name };
        self.change(|mut c| async move { c.drop_privilege_group(request).await })
            .await
    }

    pub(crate) async fn list_privilege_groups(
        &self,
    ) -> Result<Vec<mm::PrivilegeGroupInfo>, Failure> {
        Ok(self
            .privilege_groups()
            .await?
            .into_iter()
            .map(|g| mm::PrivilegeGroupInfo {
                group_name: g.name,
                privileges: g
                    .privileges
                    .into_iter()
                    .map(|name| mm::PrivilegeEntity { name })
                    .collect(),
            })
            .collect())
    }

    pub(crate) async fn operate_privilege_group(
        &self,
        r: mm::OperatePrivilegeGroupRequest,
    ) -> Result<(), Failure> {
        let privileges: Vec<String> = r.privileges.into_iter().map(|p| p.name).collect();
        let adding = match mm::OperatePrivilegeGroupType::try_from(r.r#type) {
            Ok(mm::OperatePrivilegeGroupType::AddPrivilegesToGroup) => Ok(true),
            Ok(mm::OperatePrivilegeGroupType::RemovePrivilegesFromGroup) => Ok(false),
            Err(_) => Err(r.r#type),
        };
        let (add, remove) = added_or_removed("operate privilege group", adding, privileges)?;
        let request = v1::AlterPrivilegeGroupRequest {
            name: r.group_name,
            add,
            remove,
        };
        self.change(|mut c| async move { c.alter_privilege_group(request).await })
            .await
    }

    /// Milvus's BackupRBAC: every user (its password as Sluice hashed it:
    /// `pbkdf2-sha256$rounds$salt$hash`, base64; empty for a `root` never changed), role,
    /// grant and custom privilege group.
    pub(crate) async fn backup(&self) -> Result<mm::RbacMeta, Failure> {
        let snapshot = self
            .ask(|mut c| async move { c.export_rbac(v1::ExportRbacRequest {}).await })
            .await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let users = snapshot
            .users
            .iter()
            .map(|u| {
                let info = u.info.clone().unwrap_or_default();
                let password = if u.iterations == 0 {
                    String::new()
                } else {
                    format!(
                        "{HASH_SCHEME}${}${}${}",
                        u.iterations,
                        b64.encode(&u.salt),
                        b64.encode(&u.hash)
                    )
                };
                mm::UserInfo {
                    user: info.name,
                    password,
                    roles: info.roles.iter().map(|r| role_entity(r)).collect(),
                }
            })
            .collect();
        let grants = snapshot
            .roles
            .iter()
            .flat_map(|r| {
                r.grants.iter().map(|g| mm::GrantEntity {
                    role: Some(role_entity(&r.name)),
                    object: Some(mm::ObjectEntity {
                        name: g.object_type.clone(),
                    }),
                    object_name: g.object_name.clone(),
                    grantor: Some(mm::GrantorEntity {
                        user: None,
                        privilege: Some(mm::PrivilegeEntity {
                            name: g.privilege.clone(),
                        }),
                    }),
                    db_name: g.database.clone(),
                })
            })
            .collect();
        Ok(mm::RbacMeta {
            users,
            roles: snapshot
                .roles
                .iter()
                .filter(|r| !r.builtin)
                .map(|r| role_entity(&r.name))
                .collect(),
            grants,
            privilege_groups: snapshot
                .groups
                .into_iter()
                .map(|g| mm::PrivilegeGroupInfo {
                    group_name: g.name,
                    privileges: g
                        .privileges
                        .into_iter()
                        .map(|name| mm::PrivilegeEntity { name })
                        .collect(),
                })
                .collect(),
        })
    }

    /// Milvus's RestoreRBAC of what [`Rbac::backup`] gave (merged; see `ImportRbac`).
    pub(crate) async fn restore(&self, meta: mm::RbacMeta) -> Result<(), Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut users = Vec::new();
        for u in meta.users {
            let (iterations, salt, hash) = if u.password.is_empty() {
                (0, Vec::new(), Vec::new())
            } else {
                let parts: Vec<&str> = u.password.split('$').collect();
                match parts.as_slice() {
                    [HASH_SCHEME, rounds, salt, hash] => (
                        rounds.parse::<u32>().unwrap_or(0),
                        b64.decode(salt).unwrap_or_default(),
                        b64.decode(hash).unwrap_or_default(),
                    ),
                    _ => {
                        return Err(Failure::invalid(format!(
                            "user {:?}: its password is not one Sluice hashed ({HASH_SCHEME}$…; \
                             a Milvus backup's cannot be read): restore without it and set it \
                             with update_password",
                            u.user
                        )));
                    }
                }
            };
            users.push(v1::StoredUser {
                info: Some(v1::UserInfo {
                    name: u.user,
                    roles: u.roles.into_iter().map(|r| r.name).collect(),
                    created_unix_ms: 0,
                }),
                salt: salt.into(),
                hash: hash.into(),
                iterations,
            });
        }
        let mut roles: Vec<v1::RoleInfo> = meta
            .roles
            .into_iter()
            .map(|r| v1::RoleInfo {
                name: r.name,
                grants: Vec::new(),
                builtin: false,
            })
            .collect();
        for g in meta.grants {
            let role = g.role.map(|r| r.name).unwrap_or_default();
            let grant = v1::Grant {
                object_type: g.object.map(|o| o.name).unwrap_or_default(),
                object_name: g.object_name,
                database: grant_database(&g.db_name),
                privilege: g
                    .grantor
                    .and_then(|x| x.privilege)
                    .map(|p| p.name)
                    .unwrap_or_default(),
            };
            match roles.iter_mut().find(|r| r.name == role) {
                Some(r) => r.grants.push(grant),
                None => roles.push(v1::RoleInfo {
                    name: role,
                    grants: vec![grant],
                    builtin: false,
                }),
            }
        }
        let groups = meta
            .privilege_groups
            .into_iter()
            .map(|g| v1::PrivilegeGroupInfo {
                name: g.group_name,
                privileges: g.privileges.into_iter().map(|p| p.name).collect(),
                builtin: false,
            })
            .collect();
        let request = v1::RbacSnapshot {
            users,
            roles,
            groups,
        };
        self.change(|mut c| async move { c.import_rbac(request).await })
            .await
    }

    pub(crate) async fn select_grant(
        &self,
        r: mm::SelectGrantRequest,
    ) -> Result<Vec<mm::GrantEntity>, Failure> {
        let e = r
            .entity
            .ok_or_else(|| Failure::invalid("select grant needs an entity naming its role"))?;
        let role = e.role.map(|r| r.name).unwrap_or_default();
        let object_type = e.object.map(|o| o.name).filter(|n| !n.is_empty());
        let object_name = Some(e.object_name).filter(|n| !n.is_empty());
        let Some(info) = self.roles().await?.into_iter().find(|r| r.name == role) else {
            return Err(Failure::invalid(format!("role {role:?} does not exist")));
        };
        Ok(info
            .grants
            .into_iter()
            .filter(|g| object_type.as_ref().is_none_or(|t| *t == g.object_type))
            .filter(|g| object_name.as_ref().is_none_or(|n| *n == g.object_name))
            .map(|g| mm::GrantEntity {
                role: Some(role_entity(&role)),
                object: Some(mm::ObjectEntity {
                    name: g.object_type,
                }),
                object_name: g.object_name,
                grantor: Some(mm::GrantorEntity {
                    user: None,
                    privilege: Some(mm::PrivilegeEntity { name: g.privilege }),
                }),
                db_name: g.database,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_base64_user_colon_password() {
        let header = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            credentials(header.as_bytes()),
            Some(("alice".into(), "pa:ss".into()))
        );
        let bearer = format!("Bearer {header}");
        assert_eq!(
            credentials(bearer.as_bytes()),
            Some(("alice".into(), "pa:ss".into()))
        );
        let no_colon = base64::engine::general_purpose::STANDARD.encode("apikey");
        assert_eq!(credentials(no_colon.as_bytes()), None);
        assert_eq!(credentials(b"%%%"), None);
    }

    #[test]
    fn the_table_says_what_calls_need() {
        assert_eq!(
            <mm::InsertRequest as Privileged>::NEEDS,
            Some(("Collection", "Insert"))
        );
        assert_eq!(
            <mm::CreateCollectionRequest as Privileged>::NEEDS,
            Some(("Global", "CreateCollection"))
        );
        assert_eq!(<mm::HasCollectionRequest as Privileged>::NEEDS, None);
        let r = mm::SearchRequest {
            collection_name: "docs".into(),
            ..Default::default()
        };
        assert_eq!(r.objects(), vec!["docs"]);
        let f = mm::FlushRequest {
            collection_names: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(f.objects(), vec!["a", "b"]);
    }
}
