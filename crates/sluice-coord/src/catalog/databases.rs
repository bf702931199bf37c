//! Databases: namespaces of collections (see "Databases" in `coord.proto`).
//!
//! `catalog/databases/{name}` holds each database's `DatabaseInfo`. `default` always exists;
//! its record is stored only once its properties are altered. A collection or an alias says its database in its name
//! (`db.name`, [`split_database`]), so the rest of the catalog — and every service reading it —
//! keeps one key per name.
//!
//! A drop racing a create cannot leave a collection in a dropped database: every write that
//! puts a name into a database (CreateCollection, RenameCollection into it, CreateAlias,
//! AlterAlias) rewrites the database's record in its own transaction, guarded by the revision
//! it read ([`DatabaseGuard`]); DropDatabase deletes the record guarded by the revision it read
//! before looking for collections. Whichever commits second fails its guard: a create after the
//! drop finds no database, a drop after the create looks again and finds the collection.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message as _;
use sluice_meta::{Condition, TxnOp};
use sluice_proto::v1;
use sluice_types::database::{DatabaseLimits, MAX_COLLECTIONS};
use sluice_types::schema::{DEFAULT_DATABASE, check_name, split_database};

use super::{Catalog, check_property_limits, id_in};
use crate::tso::Ids;
use crate::{CoordError, Result};

/// The id of the `default` database.
pub const DEFAULT_DATABASE_ID: i64 = 1;

/// What a write putting a name into a database adds to its transaction: the database's record
/// unchanged since it was read, and written again (so that a drop that read it before fails).
#[derive(Debug, Default)]
pub(super) struct DatabaseGuard {
    /// The database's id.
    pub(super) id: i64,
    /// What its properties set.
    limits: DatabaseLimits,
    guard: Option<(String, Condition, Bytes)>,
}

impl DatabaseGuard {
    /// Adds the guard's condition and write to a transaction's.
    pub(super) fn add_to(&self, conditions: &mut Vec<(String, Condition)>, ops: &mut Vec<TxnOp>) {
        if let Some((key, condition, value)) = &self.guard {
            conditions.push((key.clone(), *condition));
            ops.push(TxnOp::Put {
                key: key.clone(),
                value: value.clone(),
                lease: None,
            });
        }
    }
}

fn decode(key: &str, value: &[u8]) -> Result<v1::DatabaseInfo> {
    v1::DatabaseInfo::decode(value).map_err(|e| CoordError::Malformed {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn default_database() -> v1::DatabaseInfo {
    v1::DatabaseInfo {
        name: DEFAULT_DATABASE.to_owned(),
        database_id: DEFAULT_DATABASE_ID,
        created_unix_ms: 0,
        properties: HashMap::new(),
    }
}

/// A database's properties: within the limits of every set of properties, and the values of
/// those Sluice acts on readable.
fn check_database_properties(properties: &HashMap<String, String>) -> Result<DatabaseLimits> {
    check_property_limits("database", properties)?;
    DatabaseLimits::from_properties(properties).map_err(CoordError::InvalidArgument)
}

/// A database name a caller gave that may be created or dropped: a name, not `default`.
fn check_own(name: &str, doing: &str) -> Result<()> {
    check_name("database", name).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
    if name == DEFAULT_DATABASE {
        return Err(CoordError::InvalidArgument(format!(
            "the default database cannot be {doing}"
        )));
    }
    Ok(())
}

impl Catalog {
    fn databases_prefix(&self) -> String {
        format!("{}/catalog/databases/", self.root)
    }

    fn database_key(&self, name: &str) -> String {
        format!("{}{name}", self.databases_prefix())
    }

    /// The guard for putting collection or alias `name` into its database, which must exist.
    pub(super) async fn database_guard(&self, name: &str) -> Result<DatabaseGuard> {
        let (database, _) = split_database(name);
        let key = self.database_key(database);
        let Some(kv) = self.store.get(&key).await? else {
            if database == DEFAULT_DATABASE {
                return Ok(DatabaseGuard {
                    id: DEFAULT_DATABASE_ID,
                    limits: DatabaseLimits::default(),
                    guard: None,
                });
            }
            return Err(CoordError::InvalidArgument(format!(
                "database {database:?} does not exist"
            )));
        };
        let info = decode(&key, &kv.value)?;
        Ok(DatabaseGuard {
            id: info.database_id,
            // Written only when readable; a record changed by hand that is not goes by none.
            limits: DatabaseLimits::from_properties(&info.properties).unwrap_or_default(),
            guard: Some((key, Condition::ModRevision(kv.mod_revision), kv.value)),
        })
    }

    /// The names of the live collections of database `database`.
    pub(super) async fn collections_in(&self, database: &str) -> Result<Vec<String>> {
        let prefix = if database == DEFAULT_DATABASE {
            self.name_key("")
        } else {
            self.name_key(&format!("{database}."))
        };
        let (names, _) = self.store.scan_prefix(&prefix).await?;
        let mut live = Vec::new();
        for n in &names {
            let name = n.key.rsplit('/').next().unwrap_or_default();
            if split_database(name).0 == database && self.contains(id_in(n)?).await? {
                live.push(name.to_owned());
            }
        }
        Ok(live)
    }

    /// Refuses one more collection in the database of `name` when `guard` (read for it) says
    /// it holds its maximum.
    pub(super) async fn check_room(&self, guard: &DatabaseGuard, name: &str) -> Result<()> {
        let Some(max) = guard.limits.max_collections else {
            return Ok(());
        };
        let database = split_database(name).0;
        let held = self.collections_in(database).await?.len() as u64;
        if held >= max {
            return Err(CoordError::InvalidArgument(format!(
                "database {database:?} holds {held} collection(s), its maximum \
                 ({MAX_COLLECTIONS} = {max}): exceeded the limit number of collections"
            )));
        }
        Ok(())
    }

    /// Creates database `name` with `properties`.
    pub async fn create_database(
        &self,
        ids: &Ids,
        name: &str,
        properties: HashMap<String, String>,
    ) -> Result<v1::DatabaseInfo> {
        check_own(name, "created")?;
        check_database_properties(&properties)?;
        let key = self.database_key(name);
        if self.store.get(&key).await?.is_some() {
            return Err(CoordError::InvalidArgument(format!(
                "database {name:?} exists"
            )));
        }
        let info = v1::DatabaseInfo {
            name: name.to_owned(),
            database_id: super::allocate_ids(ids, 1).await?,
            created_unix_ms: crate::compaction::now_ms(),
            properties,
        };
        let result = self
            .store
            .txn(
                vec![(key.clone(), Condition::KeyAbsent)],
                vec![TxnOp::Put {
                    key,
                    value: Bytes::from(info.encode_to_vec()),
                    lease: None,
                }],
            )
            .await?;
        if !result.committed {
            return Err(CoordError::InvalidArgument(format!(
                "database {name:?} exists"
            )));
        }
        tracing::info!(database = %name, id = info.database_id, "database created");
        Ok(info)
    }

    /// Drops database `name` if it has no collection (no change when it does not exist).
    pub async fn drop_database(&self, name: &str) -> Result<()> {
        check_own(name, "dropped")?;
        let key = self.database_key(name);
        loop {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(());
            };
            let live = self.collections_in(name).await?;
            if !live.is_empty() {
                return Err(CoordError::InvalidArgument(format!(
                    "database {name:?} has {} collection(s) ({}): drop them first",
                    live.len(),
                    live.join(", ")
                )));
            }
            match self
                .store
                .delete(&key, Condition::ModRevision(kv.mod_revision))
                .await
            {
                Ok(_) => {
                    tracing::info!(database = %name, "database dropped");
                    return Ok(());
                }
                // A collection or alias was put into it meanwhile (or its properties changed):
                // look again.
                Err(sluice_meta::MetaError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Every database: `default` first, then by name.
    pub async fn list_databases(&self) -> Result<Vec<v1::DatabaseInfo>> {
        let (kvs, _) = self.store.scan_prefix(&self.databases_prefix()).await?;
        let mut out = vec![default_database()];
        for kv in kvs {
            let info = decode(&kv.key, &kv.value)?;
            if info.name == DEFAULT_DATABASE {
                out[0] = info;
            } else {
                out.push(info);
            }
        }
        out[1..].sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Sets the properties `set`, then deletes `delete`, of database `name`.
    pub async fn alter_database(
        &self,
        name: &str,
        set: &HashMap<String, String>,
        delete: &[String],
    ) -> Result<v1::DatabaseInfo> {
        check_name("database", name).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let key = self.database_key(name);
        loop {
            let current = self.store.get(&key).await?;
            // `default`'s record is written the first time its properties change.
            let (mut info, condition) = match current {
                Some(kv) => (
                    decode(&key, &kv.value)?,
                    Condition::ModRevision(kv.mod_revision),
                ),
                None if name == DEFAULT_DATABASE => (default_database(), Condition::KeyAbsent),
                None => {
                    return Err(CoordError::InvalidArgument(format!(
                        "database {name:?} does not exist"
                    )));
                }
            };
            info.properties
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            for k in delete {
                info.properties.remove(k);
            }
            check_database_properties(&info.properties)?;
            match self
                .store
                .put(&key, Bytes::from(info.encode_to_vec()), condition, None)
                .await
            {
                Ok(_) => return Ok(info),
                Err(sluice_meta::MetaError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
