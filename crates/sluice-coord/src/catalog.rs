//! The catalog: collections by name and id, with their schema, vchannels and partitions.
//!
//! Meta-store layout under the root:
//!
//! | key | value |
//! |---|---|
//! | `catalog/collections/{id}` | `CollectionInfo` (protobuf, `coord.proto`) |
//! | `catalog/names/{name}` | the id of the live collection with that name (decimal) |
//! | `catalog/aliases/{alias}` | the id of the live collection the alias names (decimal) |
//! | `catalog/databases/{name}` | `DatabaseInfo` of a database other than `default` ([`databases`]) |
//!
//! A name or alias `db.name` is in database `db`, one without a dot in `default`.
//!
//! Create: validate the schema (field ids assigned), take ids for the collection and its
//! partitions, spread one vchannel per shard over the pchannels, record the collection as
//! CREATING together with its name (one transaction: a name in use fails it), broadcast
//! CreateCollection to every vchannel holding the name's exclusive resource key, then record it
//! CREATED. Drop: broadcast DropCollection the same way, then remove the name and the record.
//! A broadcast here is complete when every vchannel's WAL holds its copy (the WAL applies DDL
//! as it appends it), so the catalog acknowledges the copies itself; the resource key
//! serializes DDL on one collection until then. A crash between the steps leaves the broadcast
//! to the broadcaster's recovery and the record CREATING; creating it again is refused (the
//! name is taken) and dropping it completes it.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use sluice_meta::{Condition, MetaStore, TxnOp};
use sluice_proto::v1;
use sluice_types::message::{
    CreateCollectionHeader, CreatePartitionHeader, DropCollectionHeader, DropPartitionHeader,
    MessageHeader, ResourceKey, SchemaChangeHeader,
};
use sluice_types::schema::{CollectionSchema, FieldSchema, SchemaError, split_database};
use sluice_types::{CollectionId, MutableMessage, PChannel};

pub mod databases;
pub mod rbac;

use crate::broadcast::{BroadcastRequest, Broadcaster};
use crate::tso::Ids;
use crate::{CoordError, Result};

/// The resource-key domain of collection names (see `ResourceKey` in `message.proto`).
const COLLECTION_NAME_DOMAIN: i32 = 1;

/// The most shards a collection may have.
pub const MAX_SHARDS: u32 = 64;

/// The most partitions a collection may have (Milvus's default limit).
pub const MAX_PARTITIONS: usize = 1024;

/// The collection id a name or alias key holds (decimal).
fn id_in(kv: &sluice_meta::KeyValue) -> Result<i64> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CoordError::Malformed {
            key: kv.key.clone(),
            reason: "not a collection id".into(),
        })
}

/// The first of `n` fresh ids (collections and partitions).
async fn allocate_ids(ids: &Ids, n: u64) -> Result<i64> {
    i64::try_from(ids.allocate(n).await?)
        .map_err(|_| CoordError::InvalidArgument("id allocator ran out of i64 ids".into()))
}

/// The DDL message (to broadcast) with `header`.
fn ddl_message<H: MessageHeader>(header: H) -> Result<MutableMessage> {
    MutableMessage::builder(header)
        .build()
        .map_err(|e| CoordError::InvalidArgument(e.to_string()))
}

fn check_partition_name(name: &str) -> Result<()> {
    sluice_types::schema::check_name("partition", name)
        .map_err(|e| CoordError::InvalidArgument(e.to_string()))
}

/// The meta-store key naming the live collection called `name` (its id, decimal), under the
/// meta store's `root`.
pub fn name_key(root: &str, name: &str) -> String {
    format!("{}/catalog/names/{name}", root.trim_end_matches('/'))
}

/// The meta-store key of alias `alias` (the id of its collection), under the meta store's
/// `root`.
pub fn alias_key(root: &str, alias: &str) -> String {
    format!("{}/catalog/aliases/{alias}", root.trim_end_matches('/'))
}

/// The meta-store key of collection `id`'s `CollectionInfo`, under the meta store's `root`.
pub fn collection_key(root: &str, id: &str) -> String {
    format!("{}{id}", collections_prefix(root))
}

/// The prefix of every collection's key under `root`.
pub fn collections_prefix(root: &str) -> String {
    format!("{}/catalog/collections/", root.trim_end_matches('/'))
}

/// The catalog over a meta store.
pub struct Catalog {
    store: Arc<dyn MetaStore>,
    root: String,
    pchannels: Vec<PChannel>,
    /// Held while a schema changes: each change is built on the schema the last one recorded.
    schema_changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn not_found(what: impl std::fmt::Display) -> CoordError {
    CoordError::InvalidArgument(format!("collection {what} does not exist"))
}

impl Catalog {
    /// The catalog under `root`, spreading vchannels over `pchannels`.
    pub fn new(store: Arc<dyn MetaStore>, root: &str, pchannels: Vec<PChannel>) -> Catalog {
        Catalog {
            store,
            root: root.trim_end_matches('/').to_owned(),
            pchannels,
            schema_changes: tokio::sync::Mutex::new(()),
        }
    }

    fn record_key(&self, id: i64) -> String {
        collection_key(&self.root, &id.to_string())
    }

    fn name_key(&self, name: &str) -> String {
        name_key(&self.root, name)
    }

    fn alias_key(&self, alias: &str) -> String {
        alias_key(&self.root, alias)
    }

    /// The collection id stored at `key` (a name or an alias), if the key exists.
    async fn id_at(&self, key: String) -> Result<Option<i64>> {
        match self.store.get(&key).await? {
            Some(kv) => id_in(&kv).map(Some),
            None => Ok(None),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<v1::CollectionInfo>> {
        let Some(kv) = self.store.get(key).await? else {
            return Ok(None);
        };
        v1::CollectionInfo::decode(kv.value.as_ref())
            .map(Some)
            .map_err(|e| CoordError::Malformed {
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// The collection with id `id`.
    pub async fn by_id(&self, id: i64) -> Result<v1::CollectionInfo> {
        self.read(&self.record_key(id))
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Whether the catalog holds a record of collection `id` (live or being dropped).
    pub async fn contains(&self, id: i64) -> Result<bool> {
        Ok(self.read(&self.record_key(id)).await?.is_some())
    }

    /// The live collection named `name`, or with the alias `name`.
    pub async fn by_name(&self, name: &str) -> Result<v1::CollectionInfo> {
        let id = match self.id_at(self.name_key(name)).await? {
            Some(id) => id,
            None => self
                .id_at(self.alias_key(name))
                .await?
                .ok_or_else(|| not_found(format!("{name:?}")))?,
        };
        self.by_id(id).await
    }

    /// Lets go of `name` if it leads to no collection record — what a rename interrupted by a
    /// crash leaves when the collection is then dropped by its other name. Whether it did.
    async fn clear_stale_name(&self, name: &str) -> Result<bool> {
        let key = self.name_key(name);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(false);
        };
        if self.contains(id_in(&kv)?).await? {
            return Ok(false);
        }
        match self
            .store
            .delete(&key, Condition::ModRevision(kv.mod_revision))
            .await
        {
            Ok(_) => {
                tracing::warn!(%name, "a collection name leading to no collection was let go");
                Ok(true)
            }
            Err(sluice_meta::MetaError::ConditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the live collection `collection` (a name or an alias) the alias `alias` (see
    /// `CreateAlias` in `coord.proto`); `repoint` (AlterAlias): the alias exists and names
    /// another collection from now on.
    pub async fn set_alias(
        &self,
        alias: &str,
        collection: &str,
        repoint: bool,
    ) -> Result<v1::CollectionInfo> {
        sluice_types::schema::check_collection_name("alias", alias)
            .map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let info = self.by_name(collection).await?;
        let target = info.collection_id;
        if split_database(alias).0 != split_database(name_of(&info)).0 {
            return Err(CoordError::InvalidArgument(format!(
                "the alias {alias:?} and collection {:?} are in different databases",
                name_of(&info)
            )));
        }
        let database = self.database_guard(alias).await?;
        if self.id_at(self.name_key(alias)).await?.is_some() {
            return Err(CoordError::InvalidArgument(format!(
                "{alias:?} is the name of a collection, it cannot be an alias"
            )));
        }
        let key = self.alias_key(alias);
        let current = self.store.get(&key).await?;
        let condition = match (&current, repoint) {
            (None, false) => Condition::KeyAbsent,
            (None, true) => {
                return Err(CoordError::InvalidArgument(format!(
                    "there is no alias {alias:?} to alter"
                )));
            }
            (Some(kv), _) => {
                if id_in(kv)? == target {
                    return Ok(info);
                }
                if !repoint {
                    return Err(CoordError::InvalidArgument(format!(
                        "the alias {alias:?} names another collection (alter it instead)"
                    )));
                }
                Condition::ModRevision(kv.mod_revision)
            }
        };
        // The alias's name must stay free of collections while it is taken.
        let mut conditions = vec![
            (key.clone(), condition),
            (self.name_key(alias), Condition::KeyAbsent),
        ];
        let mut ops = vec![TxnOp::Put {
            key,
            value: Bytes::from(target.to_string()),
            lease: None,
        }];
        database.add_to(&mut conditions, &mut ops);
        let result = self.store.txn(conditions, ops).await?;
        if !result.committed {
            return Err(CoordError::Conflict(format!(
                "the alias {alias:?} changed meanwhile; retry"
            )));
        }
        tracing::info!(%alias, collection = target, name = name_of(&info), "alias set");
        Ok(info)
    }

    /// Removes the alias `alias` (no change when there is none).
    pub async fn drop_alias(&self, alias: &str) -> Result<()> {
        if self
            .store
            .delete(&self.alias_key(alias), Condition::None)
            .await?
            .is_some()
        {
            tracing::info!(%alias, "alias dropped");
        }
        Ok(())
    }

    /// The aliases of the live collection `collection` (a name or an alias), or of every
    /// collection, by alias.
    pub async fn aliases(&self, collection: Option<&str>) -> Result<Vec<v1::CollectionAlias>> {
        let only = match collection {
            Some(c) => Some(self.by_name(c).await?.collection_id),
            None => None,
        };
        let prefix = self.alias_key("");
        let (kvs, _) = self.store.scan_prefix(&prefix).await?;
        let mut out = Vec::new();
        for kv in kvs {
            let id = id_in(&kv)?;
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let Some(info) = self.read(&self.record_key(id)).await? else {
                continue; // its collection went
            };
            out.push(v1::CollectionAlias {
                alias: kv.key[prefix.len()..].to_owned(),
                collection_name: name_of(&info).to_owned(),
                collection_id: id,
            });
        }
        out.sort_by(|a, b| a.alias.cmp(&b.alias));
        Ok(out)
    }

    /// Sets whether the live collection `name` is loaded for reads, and (`Some`) its replicas.
    pub async fn set_load_state(
        &self,
        name: &str,
        state: v1::LoadState,
        replicas: Option<u32>,
    ) -> Result<v1::CollectionInfo> {
        self.update(name, |next| {
            next.load_state = state as i32;
            if let Some(r) = replicas {
                next.replicas = r;
            }
            Ok(())
        })
        .await
    }

    /// Sets, then deletes, properties of the live collection `name` (all or nothing).
    pub async fn alter_properties(
        &self,
        name: &str,
        set: &std::collections::HashMap<String, String>,
        delete: &[String],
    ) -> Result<v1::CollectionInfo> {
        self.update(name, |next| {
            for (k, v) in set {
                next.properties.insert(k.clone(), v.clone());
            }
            for k in delete {
                next.properties.remove(k);
            }
            check_properties(&next.properties)
        })
        .await
    }

    /// Changes the record of the live collection `name` with `change` (compare-and-set on its
    /// record, retried when it changed in between; an error from `change` changes nothing).
    async fn update(
        &self,
        name: &str,
        change: impl Fn(&mut v1::CollectionInfo) -> Result<()>,
    ) -> Result<v1::CollectionInfo> {
        loop {
            let info = self.by_name(name).await?;
            let key = self.record_key(info.collection_id);
            let Some(kv) = self.store.get(&key).await? else {
                return Err(not_found(format!("{name:?}")));
            };
            let mut next = info.clone();
            change(&mut next)?;
            match self
                .store
                .put(
                    &key,
                    Bytes::from(next.encode_to_vec()),
                    Condition::ModRevision(kv.mod_revision),
                    None,
                )
                .await
            {
                Ok(_) => return Ok(next),
                Err(sluice_meta::MetaError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Every live collection, by name.
    pub async fn list(&self) -> Result<Vec<v1::CollectionInfo>> {
        let prefix = collections_prefix(&self.root);
        let (kvs, _) = self.store.scan_prefix(&prefix).await?;
        let mut out = kvs
            .iter()
            .map(|kv| {
                v1::CollectionInfo::decode(kv.value.as_ref()).map_err(|e| CoordError::Malformed {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        Ok(out)
    }

    /// Creates a collection (see the module docs).
    pub async fn create(
        &self,
        ids: &Ids,
        broadcaster: &Broadcaster,
        mut schema: CollectionSchema,
        partition_names: Vec<String>,
        properties: std::collections::HashMap<String, String>,
    ) -> Result<v1::CollectionInfo> {
        check_properties(&properties)?;
        for (i, f) in schema.fields.iter_mut().enumerate() {
            if f.field_id == 0 {
                f.field_id = i as i64 + 1;
            }
        }
        schema.version = 1;
        if schema.shards == 0 {
            schema.shards = 1;
        }
        if schema.shards > MAX_SHARDS {
            return Err(CoordError::InvalidArgument(format!(
                "{} shards: at most {MAX_SHARDS}",
                schema.shards
            )));
        }
        sluice_types::schema::validate(&schema)
            .map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let partition_names = if partition_names.is_empty() {
            vec!["_default".to_owned()]
        } else {
            partition_names
        };
        if partition_names.len() > MAX_PARTITIONS {
            return Err(CoordError::InvalidArgument(format!(
                "{} partitions: at most {MAX_PARTITIONS}",
                partition_names.len()
            )));
        }
        for n in &partition_names {
            check_partition_name(n)?;
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = partition_names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(CoordError::InvalidArgument(format!(
                "partition name {dup:?} is used twice"
            )));
        }
        if self.pchannels.is_empty() {
            return Err(CoordError::InvalidArgument(
                "no pchannels to place shards on".into(),
            ));
        }
        let id = allocate_ids(ids, 1 + partition_names.len() as u64).await?;
        let vchannels = (0..schema.shards)
            .map(|shard| {
                let p = &self.pchannels[(id as usize + shard as usize) % self.pchannels.len()];
                p.vchannel(CollectionId(id), shard)
                    .map(|v| v.as_str().to_owned())
                    .map_err(|e| CoordError::InvalidArgument(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let partitions: Vec<v1::PartitionInfo> = partition_names
            .into_iter()
            .enumerate()
            .map(|(i, name)| v1::PartitionInfo {
                partition_id: id + 1 + i as i64,
                name,
            })
            .collect();
        let mut info = v1::CollectionInfo {
            collection_id: id,
            schema: Some(schema.clone()),
            vchannels,
            partitions,
            state: v1::CollectionState::Creating as i32,
            created_timestamp: 0,
            load_state: v1::LoadState::Loaded as i32,
            replicas: 1,
            properties,
            truncating_partition_ids: Vec::new(),
        };
        let name_key = self.name_key(&schema.name);
        let mut stale_cleared = false;
        let (committed, database_id) = loop {
            let database = self.database_guard(&schema.name).await?;
            self.check_room(&database, &schema.name).await?;
            let mut conditions = vec![
                (name_key.clone(), Condition::KeyAbsent),
                (self.alias_key(&schema.name), Condition::KeyAbsent),
            ];
            let mut ops = vec![
                TxnOp::Put {
                    key: name_key.clone(),
                    value: Bytes::from(id.to_string()),
                    lease: None,
                },
                TxnOp::Put {
                    key: self.record_key(id),
                    value: Bytes::from(info.encode_to_vec()),
                    lease: None,
                },
            ];
            database.add_to(&mut conditions, &mut ops);
            if self.store.txn(conditions, ops).await?.committed {
                break (true, database.id);
            }
            if self.store.get(&name_key).await?.is_none()
                && self
                    .store
                    .get(&self.alias_key(&schema.name))
                    .await?
                    .is_none()
            {
                continue; // the database's record changed meanwhile: again
            }
            if stale_cleared || !self.clear_stale_name(&schema.name).await? {
                break (false, database.id);
            }
            stale_cleared = true;
        };
        if !committed {
            let what = match self.store.get(&self.alias_key(&schema.name)).await? {
                Some(_) => "an alias",
                None => "a collection",
            };
            return Err(CoordError::InvalidArgument(format!(
                "{what} named {:?} exists",
                schema.name
            )));
        }
        let template = ddl_message(CreateCollectionHeader {
            collection_id: id,
            partition_ids: info.partitions.iter().map(|p| p.partition_id).collect(),
            db_id: database_id,
            schema: Some(schema.clone()),
        })?;
        let ts = self
            .broadcast(broadcaster, template, &info.vchannels, &[&schema.name])
            .await?;
        info.state = v1::CollectionState::Created as i32;
        info.created_timestamp = ts;
        self.store
            .put(
                &self.record_key(id),
                Bytes::from(info.encode_to_vec()),
                Condition::None,
                None,
            )
            .await?;
        tracing::info!(collection = id, name = %schema.name, shards = schema.shards, "collection created");
        Ok(info)
    }

    /// Drops the live collection named `name` (see the module docs).
    pub async fn drop_collection(
        &self,
        broadcaster: &Broadcaster,
        name: &str,
    ) -> Result<v1::CollectionInfo> {
        if self.id_at(self.name_key(name)).await?.is_none()
            && let Some(id) = self.id_at(self.alias_key(name)).await?
        {
            let target = self.by_id(id).await?;
            return Err(CoordError::InvalidArgument(format!(
                "{name:?} is an alias of collection {:?}: drop a collection by its own name",
                name_of(&target)
            )));
        }
        let _serial = self.schema_changes.lock().await;
        let mut info = self.by_name(name).await?;
        let aliases = self.aliases(Some(name)).await?;
        if !aliases.is_empty() {
            let names: Vec<&str> = aliases.iter().map(|a| a.alias.as_str()).collect();
            return Err(CoordError::InvalidArgument(format!(
                "collection {name:?} has aliases ({}): drop them first",
                names.join(", ")
            )));
        }
        let template = ddl_message(DropCollectionHeader {
            collection_id: info.collection_id,
            db_id: 1,
        })?;
        self.broadcast(broadcaster, template, &info.vchannels, &[name])
            .await?;
        self.store
            .txn(
                Vec::new(),
                // The record's own name too: an interrupted rename left the old and the new
                // name leading to the collection (a transaction names a key once).
                std::iter::once(name)
                    .chain(Some(name_of(&info)).filter(|n| *n != name))
                    .map(|n| TxnOp::Delete {
                        key: self.name_key(n),
                    })
                    .chain([TxnOp::Delete {
                        key: self.record_key(info.collection_id),
                    }])
                    .collect(),
            )
            .await?;
        info.state = v1::CollectionState::Dropped as i32;
        tracing::info!(collection = info.collection_id, %name, "collection dropped");
        Ok(info)
    }

    /// Adds partition `partition` to the live collection `name`: broadcast first (every WAL of
    /// the collection knows the partition before the catalog shows it, so a write that names
    /// it after this returns is accepted), then recorded. An existing partition of that name is
    /// no change. A crash in between leaves a partition id only the WALs know, unused.
    pub async fn create_partition(
        &self,
        ids: &Ids,
        broadcaster: &Broadcaster,
        name: &str,
        partition: &str,
    ) -> Result<v1::CollectionInfo> {
        check_partition_name(partition)?;
        let info = self.by_name(name).await?;
        if info.partitions.iter().any(|p| p.name == partition) {
            return Ok(info);
        }
        if info.partitions.len() >= MAX_PARTITIONS {
            return Err(CoordError::InvalidArgument(format!(
                "collection {name:?} has {} partitions: at most {MAX_PARTITIONS}",
                info.partitions.len()
            )));
        }
        let partition_id = allocate_ids(ids, 1).await?;
        self.partition_ddl(broadcaster, &info, partition_id, true)
            .await?;
        let info = self
            .update(name, |next| {
                if next.collection_id != info.collection_id {
                    return Err(not_found(format!("{name:?}")));
                }
                // Created meanwhile by another call: that one stands.
                if !next.partitions.iter().any(|p| p.name == partition) {
                    next.partitions.push(v1::PartitionInfo {
                        partition_id,
                        name: partition.to_owned(),
                    });
                }
                Ok(())
            })
            .await?;
        tracing::info!(collection = info.collection_id, %name, %partition, partition_id, "partition created");
        Ok(info)
    }

    /// Adds `field` to the live collection `name` (see `AddCollectionField` in `coord.proto`),
    /// with `properties` set, through [`Catalog::change_schema`].
    pub async fn add_field(
        &self,
        broadcaster: &Broadcaster,
        name: &str,
        field: FieldSchema,
        properties: &std::collections::HashMap<String, String>,
    ) -> Result<v1::CollectionInfo> {
        let field = FieldSchema {
            field_id: 0,
            ..field
        };
        let info = self
            .change_schema(broadcaster, name, properties, |current| {
                sluice_types::schema::add_field(current, field)
            })
            .await?;
        let schema = info.schema.as_ref();
        let added = schema
            .and_then(|s| s.fields.last())
            .map_or("", |f| f.name.as_str());
        let version = schema.map_or(0, |s| s.version);
        tracing::info!(collection = info.collection_id, %name, field = added, version, "field added");
        Ok(info)
    }

    /// Raises VARCHAR field `field`'s `max_length` in the live collection `name` (see
    /// `AlterCollectionField` in `coord.proto`), through [`Catalog::change_schema`].
    pub async fn raise_max_length(
        &self,
        broadcaster: &Broadcaster,
        name: &str,
        field: &str,
        max_length: u32,
    ) -> Result<v1::CollectionInfo> {
        let info = self
            .change_schema(broadcaster, name, &Default::default(), |current| {
                sluice_types::schema::raise_max_length(current, field, max_length)
            })
            .await?;
        tracing::info!(collection = info.collection_id, %name, %field, max_length, "max_length raised");
        Ok(info)
    }

    /// Changes the live collection `name`'s schema to what `change` makes of it: SchemaChange
    /// broadcast to every vchannel first, so a write the new schema allows is accepted once
    /// this returns, then the schema recorded with `properties` set. A crash in between leaves
    /// the WALs a version ahead of the record; the same call again broadcasts the same schema,
    /// which the WALs take as no change, and records it.
    async fn change_schema(
        &self,
        broadcaster: &Broadcaster,
        name: &str,
        properties: &std::collections::HashMap<String, String>,
        change: impl FnOnce(&CollectionSchema) -> std::result::Result<CollectionSchema, SchemaError>,
    ) -> Result<v1::CollectionInfo> {
        let _serial = self.schema_changes.lock().await;
        let info = self.by_name(name).await?;
        let current = info.schema.clone().ok_or_else(|| CoordError::Malformed {
            key: self.record_key(info.collection_id),
            reason: "a collection record without a schema".into(),
        })?;
        let next = change(&current).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        sluice_types::schema::validate(&next)
            .map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let mut merged = info.properties.clone();
        merged.extend(properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        check_properties(&merged)?;
        let template = ddl_message(SchemaChangeHeader {
            collection_id: info.collection_id,
            flushed_segment_ids: Vec::new(),
            schema: Some(next.clone()),
        })?;
        self.broadcast(broadcaster, template, &info.vchannels, &[name_of(&info)])
            .await?;
        self.update(name, |record| {
            if record.collection_id != info.collection_id {
                return Err(not_found(format!("{name:?}")));
            }
            record.schema = Some(next.clone());
            record
                .properties
                .extend(properties.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(())
        })
        .await
    }

    /// Renames the live collection `name` to `new_name` (see `RenameCollection` in
    /// `coord.proto`): the record takes the renamed schema and the new name leads to it as well
    /// (one transaction: the new name must be free of collections and aliases), then
    /// SCHEMA_CHANGE with the renamed schema goes to every vchannel under both names' resource
    /// keys, then the old name is let go. A crash in between leaves both names leading to the
    /// collection; the same call again completes it (the WALs take a change to the schema they
    /// hold as no change).
    pub async fn rename(
        &self,
        broadcaster: &Broadcaster,
        name: &str,
        new_name: &str,
    ) -> Result<v1::CollectionInfo> {
        if name == new_name {
            return Err(CoordError::InvalidArgument(format!(
                "the collection is named {name:?} already"
            )));
        }
        let _serial = self.schema_changes.lock().await;
        let info = loop {
            let Some(id) = self.id_at(self.name_key(name)).await? else {
                if self.id_at(self.alias_key(name)).await?.is_some() {
                    return Err(CoordError::InvalidArgument(format!(
                        "{name:?} is an alias: rename a collection by its own name"
                    )));
                }
                return Err(not_found(format!("{name:?}")));
            };
            let key = self.record_key(id);
            let Some(kv) = self.store.get(&key).await? else {
                return Err(not_found(format!("{name:?}")));
            };
            let mut info = v1::CollectionInfo::decode(kv.value.as_ref()).map_err(|e| {
                CoordError::Malformed {
                    key: key.clone(),
                    reason: e.to_string(),
                }
            })?;
            let current = info.schema.clone().ok_or_else(|| CoordError::Malformed {
                key: key.clone(),
                reason: "a collection record without a schema".into(),
            })?;
            if current.name == new_name {
                // Recorded by an earlier call that stopped before it finished.
                break info;
            }
            if current.name != name {
                return Err(CoordError::InvalidArgument(format!(
                    "collection {name:?} is being renamed to {:?}: rename it to that name to \
                     finish",
                    current.name
                )));
            }
            let renamed = sluice_types::schema::rename(&current, new_name)
                .map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
            info.schema = Some(renamed);
            let database = self.database_guard(new_name).await?;
            if split_database(name).0 != split_database(new_name).0
                && !self.aliases(Some(name)).await?.is_empty()
            {
                return Err(CoordError::InvalidArgument(format!(
                    "collection {name:?} has aliases: drop them before moving it to another \
                     database"
                )));
            }
            if split_database(name).0 != split_database(new_name).0 {
                self.check_room(&database, new_name).await?;
            }
            let mut conditions = vec![
                (self.name_key(new_name), Condition::KeyAbsent),
                (self.alias_key(new_name), Condition::KeyAbsent),
                (key.clone(), Condition::ModRevision(kv.mod_revision)),
            ];
            let mut ops = vec![
                TxnOp::Put {
                    key: self.name_key(new_name),
                    value: Bytes::from(id.to_string()),
                    lease: None,
                },
                TxnOp::Put {
                    key,
                    value: Bytes::from(info.encode_to_vec()),
                    lease: None,
                },
            ];
            database.add_to(&mut conditions, &mut ops);
            let result = self.store.txn(conditions, ops).await?;
            if result.committed {
                break info;
            }
            if self.store.get(&self.alias_key(new_name)).await?.is_some() {
                return Err(CoordError::InvalidArgument(format!(
                    "an alias named {new_name:?} exists"
                )));
            }
            if self.store.get(&self.name_key(new_name)).await?.is_some()
                && !self.clear_stale_name(new_name).await?
            {
                return Err(CoordError::InvalidArgument(format!(
                    "a collection named {new_name:?} exists"
                )));
            }
            // The record changed in between (properties, load state), or the new name was a
            // stale one: again.
        };
        let template = ddl_message(SchemaChangeHeader {
            collection_id: info.collection_id,
            flushed_segment_ids: Vec::new(),
            schema: info.schema.clone(),
        })?;
        self.broadcast(broadcaster, template, &info.vchannels, &[name, new_name])
            .await?;
        self.store
            .delete(&self.name_key(name), Condition::None)
            .await?;
        tracing::info!(collection = info.collection_id, from = %name, to = %new_name, "collection renamed");
        Ok(info)
    }

    /// Drops partition `partition` of the live collection `name`: DropPartition broadcast to
    /// every vchannel (the WALs forget its growing segments, delegators its rows), then the
    /// record forgets it. A partition that does not exist is no change; the default (first)
    /// partition cannot be dropped.
    pub async fn drop_partition(
        &self,
        broadcaster: &Broadcaster,
        name: &str,
        partition: &str,
    ) -> Result<v1::CollectionInfo> {
        let info = self.by_name(name).await?;
        let Some(pos) = info.partitions.iter().position(|p| p.name == partition) else {
            return Ok(info);
        };
        if pos == 0 {
            return Err(CoordError::InvalidArgument(format!(
                "partition {partition:?} is the default partition of collection {name:?}: it \
                 cannot be dropped"
            )));
        }
        let partition_id = info.partitions[pos].partition_id;
        self.partition_ddl(broadcaster, &info, partition_id, false)
            .await?;
        let info = self
            .update(name, |next| {
                next.partitions.retain(|p| p.partition_id != partition_id);
                Ok(())
            })
            .await?;
        tracing::info!(collection = info.collection_id, %name, %partition, partition_id, "partition dropped");
        Ok(info)
    }

    /// Empties the live collection `name` (see `TruncateCollection` in `coord.proto`): each
    /// partition gets a new id, created on every vchannel first; the record takes the new ids
    /// (the old ones kept in `truncating_partition_ids`); DropPartition of each old id is
    /// broadcast (WALs, delegators and the recovery storage let go of its rows, growing and
    /// sealed); then the record lets go of the old ids. A crash before the record leaves
    /// partition ids only the WALs know, unused; after it, the same call again finishes the
    /// drops it recorded (and does not empty the collection a second time).
    pub async fn truncate(
        &self,
        ids: &Ids,
        broadcaster: &Broadcaster,
        name: &str,
    ) -> Result<v1::CollectionInfo> {
        let _serial = self.schema_changes.lock().await;
        let mut info = self.by_name(name).await?;
        if info.truncating_partition_ids.is_empty() {
            let n = info.partitions.len() as u64;
            let first = allocate_ids(ids, n.max(1)).await?;
            let renumbered: Vec<(i64, i64)> = info
                .partitions
                .iter()
                .zip(first..)
                .map(|(p, new)| (p.partition_id, new))
                .collect();
            for &(_, partition_id) in &renumbered {
                self.partition_ddl(broadcaster, &info, partition_id, true)
                    .await?;
            }
            info = self
                .update(name, |next| {
                    if next.collection_id != info.collection_id {
                        return Err(not_found(format!("{name:?}")));
                    }
                    for p in &mut next.partitions {
                        if let Some(&(old, new)) =
                            renumbered.iter().find(|(old, _)| *old == p.partition_id)
                        {
                            p.partition_id = new;
                            next.truncating_partition_ids.push(old);
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        let old = info.truncating_partition_ids.clone();
        for &partition_id in &old {
            self.partition_ddl(broadcaster, &info, partition_id, false)
                .await?;
        }
        let info = self
            .update(name, |next| {
                next.truncating_partition_ids.retain(|p| !old.contains(p));
                Ok(())
            })
            .await?;
        tracing::info!(collection = info.collection_id, %name, partitions = old.len(), "collection truncated");
        Ok(info)
    }

    /// Broadcasts CreatePartition (`create`) or DropPartition of `partition_id` to every
    /// vchannel of the collection `info`, under its name's resource key.
    async fn partition_ddl(
        &self,
        broadcaster: &Broadcaster,
        info: &v1::CollectionInfo,
        partition_id: i64,
        create: bool,
    ) -> Result<u64> {
        let collection_id = info.collection_id;
        let template = if create {
            ddl_message(CreatePartitionHeader {
                collection_id,
                partition_id,
            })?
        } else {
            ddl_message(DropPartitionHeader {
                collection_id,
                partition_id,
            })?
        };
        self.broadcast(broadcaster, template, &info.vchannels, &[name_of(info)])
            .await
    }

    /// Broadcasts `template` to `vchannels` under the exclusive keys of `names`; returns the
    /// first copy's timestamp once every copy is in its WAL.
    async fn broadcast(
        &self,
        broadcaster: &Broadcaster,
        template: MutableMessage,
        vchannels: &[String],
        names: &[&str],
    ) -> Result<u64> {
        let mut handle = broadcaster
            .submit(BroadcastRequest {
                message: template,
                vchannels: vchannels.to_vec(),
                resource_keys: names
                    .iter()
                    .map(|name| ResourceKey {
                        domain: COLLECTION_NAME_DOMAIN,
                        key: (*name).to_owned(),
                        shared: false,
                    })
                    .collect(),
            })
            .await?;
        handle.wait_for(|p| p.sent >= p.total).await?;
        let id = handle.id();
        for v in vchannels {
            broadcaster.ack(id, v).await?;
        }
        let result = handle.wait().await?;
        Ok(result
            .appends
            .values()
            .flatten()
            .map(|o| o.timestamp.0)
            .min()
            .unwrap_or(0))
    }
}

/// Collection properties Sluice keeps: at most 64, keys of 1-256 bytes, values of at most 64 KiB.
/// The limits every set of properties keeps: at most 64, keys 1-256 bytes, values up to
/// 64 KiB; `kind` (collection, database) names whose they are in the error.
fn check_property_limits(kind: &str, p: &std::collections::HashMap<String, String>) -> Result<()> {
    if p.len() > 64 {
        return Err(CoordError::InvalidArgument(format!(
            "{} {kind} properties: at most 64",
            p.len()
        )));
    }
    for (k, v) in p {
        if k.is_empty() || k.len() > 256 {
            return Err(CoordError::InvalidArgument(format!(
                "{kind} property key {k:?}: 1 to 256 bytes"
            )));
        }
        if v.len() > 64 << 10 {
            return Err(CoordError::InvalidArgument(format!(
                "{kind} property {k:?}: its value is {} bytes, at most 64 KiB",
                v.len()
            )));
        }
    }
    Ok(())
}

fn check_properties(p: &std::collections::HashMap<String, String>) -> Result<()> {
    check_property_limits("collection", p)?;
    // The settings Sluice itself reads (index, TTL) must be readable.
    sluice_types::index::IndexSettings::from_properties(p).map_err(CoordError::InvalidArgument)?;
    sluice_types::ttl::ttl_ms(p).map_err(CoordError::InvalidArgument)?;
    Ok(())
}

fn name_of(info: &v1::CollectionInfo) -> &str {
    info.schema.as_ref().map_or("", |s| s.name.as_str())
}
