//! Users and roles (see "Users and roles" in `coord.proto`, and `sluice_types::rbac` for the
//! vocabulary of grants).
//!
//! `catalog/users/{name}` holds each user's `StoredUser` (its roles, and its password as a
//! salted PBKDF2-HMAC-SHA256 hash), `catalog/roles/{name}` each role's `RoleInfo`,
//! `catalog/privilege_groups/{name}` each custom privilege group's `PrivilegeGroupInfo`. `root`, and
//! the roles `admin` and `public`, always exist: `root`'s record is written when its password
//! or roles first change, `public`'s when its grants do; `admin` is never stored. Every change
//! is a compare-and-set of the record it read. A user may name a role dropped meanwhile (a
//! role dropped while given to it): readers leave out roles that do not exist.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;

use bytes::Bytes;
use ring::rand::SecureRandom as _;
use sluice_meta::{Condition, MetaError};
use sluice_proto::v1;
use sluice_types::rbac::{
    ADMIN_ROLE, DEFAULT_ROOT_PASSWORD, OBJECT_TYPES, PUBLIC_ROLE, ROOT_USER, builtin_groups,
    check_password, check_role_name, check_user_name, is_privilege, is_single,
};

use super::Catalog;
use crate::{CoordError, Result};

/// PBKDF2 rounds of a password hash written now.
const ITERATIONS: u32 = 100_000;
/// Bytes of a password's salt.
const SALT_LEN: usize = 16;
/// Bytes of a password hash.
const HASH_LEN: usize = 32;

fn invalid(message: impl Into<String>) -> CoordError {
    CoordError::InvalidArgument(message.into())
}

fn hash(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; HASH_LEN];
    let rounds = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// `info` with `password` hashed under a fresh salt.
fn stored(info: v1::UserInfo, password: &str) -> Result<v1::StoredUser> {
    let mut salt = vec![0u8; SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| invalid("no randomness for a password salt"))?;
    Ok(v1::StoredUser {
        info: Some(info),
        hash: hash(password, &salt, ITERATIONS).into(),
        salt: salt.into(),
        iterations: ITERATIONS,
    })
}

/// Whether `password` is the one `user` holds (compared in constant time).
fn verify(user: &v1::StoredUser, password: &str) -> bool {
    let Some(rounds) = NonZeroU32::new(user.iterations) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &user.salt,
        password.as_bytes(),
        &user.hash,
    )
    .is_ok()
}

/// Whether `a` and `b` are equal, compared in time independent of where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `root` before its record is written.
fn default_root() -> v1::StoredUser {
    v1::StoredUser {
        info: Some(v1::UserInfo {
            name: ROOT_USER.to_owned(),
            roles: vec![ADMIN_ROLE.to_owned()],
            created_unix_ms: 0,
        }),
        salt: Bytes::new(),
        hash: Bytes::new(),
        iterations: 0,
    }
}

fn builtin_role(name: &str) -> v1::RoleInfo {
    v1::RoleInfo {
        name: name.to_owned(),
        grants: Vec::new(),
        builtin: true,
    }
}

fn check_grant(g: &v1::Grant) -> Result<()> {
    if !OBJECT_TYPES.contains(&g.object_type.as_str()) {
        return Err(invalid(format!(
            "object type {:?}: one of {}",
            g.object_type,
            OBJECT_TYPES.join(", ")
        )));
    }
    if g.object_name.is_empty() || g.database.is_empty() {
        return Err(invalid("a grant names its object and database (`*`: any)"));
    }
    Ok(())
}

fn decode<M: prost::Message + Default>(key: &str, value: &[u8]) -> Result<M> {
    M::decode(value).map_err(|e| CoordError::Malformed {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A record read for a compare-and-set: its value and the condition a write of it takes.
struct Read<M> {
    value: M,
    condition: Condition,
}

impl Catalog {
    fn user_key(&self, name: &str) -> String {
        format!("{}/catalog/users/{name}", self.root)
    }

    fn role_key(&self, name: &str) -> String {
        format!("{}/catalog/roles/{name}", self.root)
    }

    fn group_key(&self, name: &str) -> String {
        format!("{}/catalog/privilege_groups/{name}", self.root)
    }

    async fn read_group(&self, name: &str) -> Result<Option<Read<v1::PrivilegeGroupInfo>>> {
        let key = self.group_key(name);
        Ok(match self.store.get(&key).await? {
            Some(kv) => Some(Read {
                value: decode(&key, &kv.value)?,
                condition: Condition::ModRevision(kv.mod_revision),
            }),
            None => None,
        })
    }

    /// Creates custom privilege group `name`, empty.
    pub async fn create_privilege_group(&self, name: &str) -> Result<v1::PrivilegeGroupInfo> {
        check_role_name(name)
            .map_err(|e| invalid(e.replace("role name", "privilege group name")))?;
        if is_privilege(name) || self.read_group(name).await?.is_some() {
            return Err(invalid(format!(
                "privilege group {name:?} exists (or is a privilege's name)"
            )));
        }
        let group = v1::PrivilegeGroupInfo {
            name: name.to_owned(),
            privileges: Vec::new(),
            builtin: false,
        };
        if !self
            .write_if(&self.group_key(name), &group, Condition::KeyAbsent)
            .await?
        {
            return Err(invalid(format!("privilege group {name:?} exists")));
        }
        tracing::info!(group = name, "privilege group created");
        Ok(group)
    }

    /// Drops custom privilege group `name` when no grant names it.
    pub async fn drop_privilege_group(&self, name: &str) -> Result<()> {
        if is_privilege(name) {
            return Err(invalid(format!(
                "the built-in privilege group {name:?} cannot be dropped"
            )));
        }
        let using: Vec<String> = self
            .list_roles()
            .await?
            .into_iter()
            .filter(|r| r.grants.iter().any(|g| g.privilege == name))
            .map(|r| r.name)
            .collect();
        if !using.is_empty() {
            return Err(invalid(format!(
                "privilege group {name:?} is granted to role(s) {}: revoke it first",
                using.join(", ")
            )));
        }
        self.store
            .delete(&self.group_key(name), Condition::None)
            .await?;
        tracing::info!(group = name, "privilege group dropped");
        Ok(())
    }

    /// Every privilege group: the built-in ones, then the custom ones by name.
    pub async fn list_privilege_groups(&self) -> Result<Vec<v1::PrivilegeGroupInfo>> {
        let mut out: Vec<v1::PrivilegeGroupInfo> = builtin_groups()
            .map(|(name, privileges)| v1::PrivilegeGroupInfo {
                name: name.to_owned(),
                privileges: privileges.into_iter().map(str::to_owned).collect(),
                builtin: true,
            })
            .collect();
        let (kvs, _) = self.store.scan_prefix(&self.group_key("")).await?;
        let mut custom = Vec::new();
        for kv in kvs {
            custom.push(decode::<v1::PrivilegeGroupInfo>(&kv.key, &kv.value)?);
        }
        custom.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(custom);
        Ok(out)
    }

    /// Adds privileges `add` (single ones) to custom group `name` and removes `remove`.
    pub async fn alter_privilege_group(
        &self,
        name: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<v1::PrivilegeGroupInfo> {
        if let Some(p) = add.iter().find(|p| !is_single(p)) {
            return Err(invalid(format!(
                "{p:?} is not a privilege (a group holds single privileges)"
            )));
        }
        loop {
            let Some(read) = self.read_group(name).await? else {
                return Err(invalid(format!(
                    "privilege group {name:?} does not exist (the built-in ones do not change)"
                )));
            };
            let mut group = read.value;
            let mut privileges: BTreeSet<String> = group.privileges.drain(..).collect();
            privileges.extend(add.iter().cloned());
            for p in remove {
                privileges.remove(p);
            }
            group.privileges = privileges.into_iter().collect();
            if self
                .write_if(&self.group_key(name), &group, read.condition)
                .await?
            {
                return Ok(group);
            }
        }
    }

    async fn read_user(&self, name: &str) -> Result<Option<Read<v1::StoredUser>>> {
        let key = self.user_key(name);
        Ok(match self.store.get(&key).await? {
            Some(kv) => Some(Read {
                value: decode(&key, &kv.value)?,
                condition: Condition::ModRevision(kv.mod_revision),
            }),
            None if name == ROOT_USER => Some(Read {
                value: default_root(),
                condition: Condition::KeyAbsent,
            }),
            None => None,
        })
    }

    async fn read_role(&self, name: &str) -> Result<Option<Read<v1::RoleInfo>>> {
        let key = self.role_key(name);
        Ok(match self.store.get(&key).await? {
            Some(kv) => Some(Read {
                value: decode(&key, &kv.value)?,
                condition: Condition::ModRevision(kv.mod_revision),
            }),
            None if name == ADMIN_ROLE || name == PUBLIC_ROLE => Some(Read {
                value: builtin_role(name),
                condition: Condition::KeyAbsent,
            }),
            None => None,
        })
    }

    /// Writes `value` at `key` if `condition` (what it was read with) still holds: `false`
    /// when another write came first (read again).
    async fn write_if<M: prost::Message>(
        &self,
        key: &str,
        value: &M,
        condition: Condition,
    ) -> Result<bool> {
        match self
            .store
            .put(key, Bytes::from(value.encode_to_vec()), condition, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(MetaError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates user `name` with `password` and no role.
    pub async fn create_user(&self, name: &str, password: &str) -> Result<v1::UserInfo> {
        check_user_name(name).map_err(invalid)?;
        check_password(password).map_err(invalid)?;
        if name == ROOT_USER || self.store.get(&self.user_key(name)).await?.is_some() {
            return Err(invalid(format!("user {name:?} exists")));
        }
        let info = v1::UserInfo {
            name: name.to_owned(),
            roles: Vec::new(),
            created_unix_ms: crate::compaction::now_ms(),
        };
        let user = stored(info.clone(), password)?;
        if !self
            .write_if(&self.user_key(name), &user, Condition::KeyAbsent)
            .await?
        {
            return Err(invalid(format!("user {name:?} exists")));
        }
        tracing::info!(user = name, "user created");
        Ok(info)
    }

    /// User `name` if `password` is its password (UNAUTHENTICATED-worthy `None` otherwise).
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Option<v1::UserInfo>> {
        let Some(user) = self.read_user(name).await? else {
            return Ok(None);
        };
        let user = user.value;
        let ok = if user.iterations == 0 && name == ROOT_USER {
            // `root` before its password changed.
            same_bytes(password.as_bytes(), DEFAULT_ROOT_PASSWORD.as_bytes())
        } else {
            verify(&user, password)
        };
        Ok(ok.then(|| user.info.unwrap_or_default()))
    }

    /// Sets user `name`'s password to `new`, if `old` is its password or `reset`.
    pub async fn update_password(
        &self,
        name: &str,
        old: &str,
        new: &str,
        reset: bool,
    ) -> Result<v1::UserInfo> {
        check_password(new).map_err(invalid)?;
        loop {
            let Some(read) = self.read_user(name).await? else {
                return Err(invalid(format!("user {name:?} does not exist")));
            };
            if !reset && self.authenticate(name, old).await?.is_none() {
                return Err(invalid(format!(
                    "the old password of user {name:?} is not its password"
                )));
            }
            let info = read.value.info.unwrap_or_default();
            let user = stored(info.clone(), new)?;
            if self
                .write_if(&self.user_key(name), &user, read.condition)
                .await?
            {
                tracing::info!(user = name, "password changed");
                return Ok(info);
            }
        }
    }

    /// Drops user `name` (no change when it does not exist).
    pub async fn drop_user(&self, name: &str) -> Result<()> {
        if name == ROOT_USER {
            return Err(invalid("the root user cannot be dropped"));
        }
        self.store
            .delete(&self.user_key(name), Condition::None)
            .await?;
        tracing::info!(user = name, "user dropped");
        Ok(())
    }

    /// Roles that exist, by name.
    async fn role_names(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .list_roles()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect())
    }

    /// Every user, `root` first, then by name; roles that no longer exist are left out.
    pub async fn list_users(&self) -> Result<Vec<v1::UserInfo>> {
        let roles = self.role_names().await?;
        let prefix = self.user_key("");
        let (kvs, _) = self.store.scan_prefix(&prefix).await?;
        let mut users: Vec<v1::UserInfo> = Vec::new();
        let mut root = default_root().info.unwrap_or_default();
        for kv in kvs {
            let user: v1::StoredUser = decode(&kv.key, &kv.value)?;
            let info = user.info.unwrap_or_default();
            if info.name == ROOT_USER {
                root = info;
            } else {
                users.push(info);
            }
        }
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users.insert(0, root);
        for u in &mut users {
            u.roles.retain(|r| roles.contains(r));
        }
        Ok(users)
    }

    /// Creates role `name` with no grant.
    pub async fn create_role(&self, name: &str) -> Result<v1::RoleInfo> {
        check_role_name(name).map_err(invalid)?;
        if self.read_role(name).await?.is_some() {
            return Err(invalid(format!("role {name:?} exists")));
        }
        let role = v1::RoleInfo {
            name: name.to_owned(),
            grants: Vec::new(),
            builtin: false,
        };
        if !self
            .write_if(&self.role_key(name), &role, Condition::KeyAbsent)
            .await?
        {
            return Err(invalid(format!("role {name:?} exists")));
        }
        tracing::info!(role = name, "role created");
        Ok(role)
    }

    /// Drops role `name`; with `force` it is taken from its users first, without it a role a
    /// user holds is not dropped.
    pub async fn drop_role(&self, name: &str, force: bool) -> Result<()> {
        if name == ADMIN_ROLE || name == PUBLIC_ROLE {
            return Err(invalid(format!(
                "the built-in role {name:?} cannot be dropped"
            )));
        }
        if self.read_role(name).await?.is_none() {
            return Ok(());
        }
        let holders: Vec<String> = self
            .list_users()
            .await?
            .into_iter()
            .filter(|u| u.roles.iter().any(|r| r == name))
            .map(|u| u.name)
            .collect();
        if !holders.is_empty() && !force {
            return Err(invalid(format!(
                "role {name:?} is given to user(s) {}: take it from them first, or force the drop",
                holders.join(", ")
            )));
        }
        for user in holders {
            self.alter_user_roles(&user, &[], &[name.to_owned()])
                .await?;
        }
        self.store
            .delete(&self.role_key(name), Condition::None)
            .await?;
        tracing::info!(role = name, "role dropped");
        Ok(())
    }

    /// Every role with its grants: `admin`, `public`, then by name.
    pub async fn list_roles(&self) -> Result<Vec<v1::RoleInfo>> {
        let (kvs, _) = self.store.scan_prefix(&self.role_key("")).await?;
        let mut by_name: HashMap<String, v1::RoleInfo> = HashMap::new();
        for kv in kvs {
            let role: v1::RoleInfo = decode(&kv.key, &kv.value)?;
            by_name.insert(role.name.clone(), role);
        }
        let mut out = vec![builtin_role(ADMIN_ROLE)];
        out.push(
            by_name
                .remove(PUBLIC_ROLE)
                .unwrap_or_else(|| builtin_role(PUBLIC_ROLE)),
        );
        let mut rest: Vec<v1::RoleInfo> = by_name.into_values().collect();
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(rest);
        Ok(out)
    }

    /// Gives user `name` the roles `add` (which must exist) and takes `remove`.
    pub async fn alter_user_roles(
        &self,
        name: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<v1::UserInfo> {
        for role in add {
            if self.read_role(role).await?.is_none() {
                return Err(invalid(format!("role {role:?} does not exist")));
            }
        }
        if name == ROOT_USER && remove.iter().any(|r| r == ADMIN_ROLE) {
            return Err(invalid("the root user keeps the admin role"));
        }
        loop {
            let Some(read) = self.read_user(name).await? else {
                return Err(invalid(format!("user {name:?} does not exist")));
            };
            let mut user = read.value;
            let info = user.info.get_or_insert_with(Default::default);
            let mut roles: BTreeSet<String> = info.roles.drain(..).collect();
            roles.extend(add.iter().filter(|r| *r != PUBLIC_ROLE).cloned());
            for r in remove {
                roles.remove(r);
            }
            info.roles = roles.into_iter().collect();
            let info = info.clone();
            if name == ROOT_USER && user.iterations == 0 {
                // `root`'s first record keeps the default password.
                user = v1::StoredUser {
                    info: Some(info.clone()),
                    ..stored(info.clone(), DEFAULT_ROOT_PASSWORD)?
                };
            }
            if self
                .write_if(&self.user_key(name), &user, read.condition)
                .await?
            {
                return Ok(info);
            }
        }
    }

    /// Every user (password hashes too), role and custom privilege group.
    pub async fn export_rbac(&self) -> Result<v1::RbacSnapshot> {
        let mut users = Vec::new();
        for info in self.list_users().await? {
            if let Some(read) = self.read_user(&info.name).await? {
                let mut user = read.value;
                user.info = Some(info);
                users.push(user);
            }
        }
        let roles = self
            .list_roles()
            .await?
            .into_iter()
            .filter(|r| r.name != ADMIN_ROLE)
            .collect();
        let groups = self
            .list_privilege_groups()
            .await?
            .into_iter()
            .filter(|g| !g.builtin)
            .collect();
        Ok(v1::RbacSnapshot {
            users,
            roles,
            groups,
        })
    }

    /// Merges `snapshot` (see `ImportRbac` in `coord.proto`): checked whole, then applied.
    pub async fn import_rbac(&self, snapshot: &v1::RbacSnapshot) -> Result<()> {
        let groups: BTreeSet<&str> = snapshot.groups.iter().map(|g| g.name.as_str()).collect();
        for g in &snapshot.groups {
            check_role_name(&g.name).map_err(invalid)?;
            if let Some(p) = g.privileges.iter().find(|p| !is_single(p)) {
                return Err(invalid(format!(
                    "privilege group {:?}: {p:?} is not a privilege",
                    g.name
                )));
            }
        }
        for r in &snapshot.roles {
            check_role_name(&r.name).map_err(invalid)?;
            for g in &r.grants {
                check_grant(g)?;
                if !is_privilege(&g.privilege)
                    && !groups.contains(g.privilege.as_str())
                    && self.read_group(&g.privilege).await?.is_none()
                {
                    return Err(invalid(format!(
                        "role {:?}: privilege {:?} does not exist",
                        r.name, g.privilege
                    )));
                }
            }
        }
        let roles: BTreeSet<&str> = snapshot.roles.iter().map(|r| r.name.as_str()).collect();
        for u in &snapshot.users {
            let info = u
                .info
                .as_ref()
                .ok_or_else(|| invalid("a user without its info"))?;
            check_user_name(&info.name).map_err(invalid)?;
            let hashed = u.iterations > 0 && u.salt.len() >= 8 && u.hash.len() == HASH_LEN;
            let untouched_root = info.name == ROOT_USER && u.iterations == 0;
            if !(hashed || untouched_root) {
                return Err(invalid(format!(
                    "user {:?}: its password is not one Sluice hashed (PBKDF2-HMAC-SHA256)",
                    info.name
                )));
            }
            for role in &info.roles {
                if !roles.contains(role.as_str())
                    && role != ADMIN_ROLE
                    && self.read_role(role).await?.is_none()
                {
                    return Err(invalid(format!(
                        "user {:?}: role {role:?} does not exist",
                        info.name
                    )));
                }
            }
        }
        for g in &snapshot.groups {
            if self.read_group(&g.name).await?.is_none() && !is_privilege(&g.name) {
                match self.create_privilege_group(&g.name).await {
                    Ok(_) | Err(CoordError::InvalidArgument(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.alter_privilege_group(&g.name, &g.privileges, &[])
                .await?;
        }
        for r in &snapshot.roles {
            if self.read_role(&r.name).await?.is_none() {
                match self.create_role(&r.name).await {
                    Ok(_) | Err(CoordError::InvalidArgument(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if r.name != ADMIN_ROLE {
                self.alter_role_grants(&r.name, &r.grants, &[]).await?;
            }
        }
        for u in &snapshot.users {
            let info = u.info.clone().unwrap_or_default();
            if u.iterations > 0 {
                let key = self.user_key(&info.name);
                let mut fresh = u.clone();
                if let Some(i) = fresh.info.as_mut() {
                    i.roles.clear();
                }
                // Created with its hash if absent (`root`: while never stored here).
                self.write_if(&key, &fresh, Condition::KeyAbsent).await?;
            }
            self.alter_user_roles(&info.name, &info.roles, &[]).await?;
        }
        tracing::info!(
            users = snapshot.users.len(),
            roles = snapshot.roles.len(),
            groups = snapshot.groups.len(),
            "users and roles imported"
        );
        Ok(())
    }

    /// Adds `grant` to role `name` and removes `revoke`.
    pub async fn alter_role_grants(
        &self,
        name: &str,
        grant: &[v1::Grant],
        revoke: &[v1::Grant],
    ) -> Result<v1::RoleInfo> {
        if name == ADMIN_ROLE {
            return Err(invalid(
                "the admin role may do everything; it is not changed",
            ));
        }
        for g in grant {
            check_grant(g)?;
            if !is_privilege(&g.privilege) && self.read_group(&g.privilege).await?.is_none() {
                return Err(invalid(format!(
                    "privilege {:?} does not exist (nor a privilege group of that name)",
                    g.privilege
                )));
            }
        }
        let same = |a: &v1::Grant, b: &v1::Grant| {
            a.object_type == b.object_type
                && a.object_name == b.object_name
                && a.database == b.database
                && a.privilege == b.privilege
        };
        loop {
            let Some(read) = self.read_role(name).await? else {
                return Err(invalid(format!("role {name:?} does not exist")));
            };
            let mut role = read.value;
            for g in grant {
                if !role.grants.iter().any(|h| same(h, g)) {
                    role.grants.push(g.clone());
                }
            }
            role.grants.retain(|h| !revoke.iter().any(|g| same(h, g)));
            if self
                .write_if(&self.role_key(name), &role, read.condition)
                .await?
            {
                return Ok(role);
            }
        }
    }
}
