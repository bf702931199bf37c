//! Vchannel invariants and the growing-segment life cycle.
//!
//! The shard manager knows which collections and partitions exist on each vchannel of this
//! pchannel and which growing segments take their inserts. State is kept per vchannel (a
//! collection created with no vchannel, for the whole pchannel, serves every vchannel of it):
//!
//! * an Insert or Delete for a collection that was never created on its vchannel, or was
//!   dropped, or (Insert) a partition that does not exist, is **unrecoverable** and nothing is
//!   written; so is a CreatePartition, DropPartition, ManualFlush or SchemaChange for such a
//!   collection, and a DropCollection for one never created (dropping a dropped one again is a
//!   no-op: broadcasts deliver at least once);
//! * each Insert is assigned to a growing segment of its (collection, partition) with room for
//!   it; when none has room the WAL writes a CreateSegment itself and retries;
//! * segments seal by size (a jittered fraction of the maximum), by idle time, and when the
//!   growing bytes of the whole node pass a high watermark (largest first, down to a low one);
//! * a sealed segment gets its Flush message once every write assigned to it is acknowledged
//!   (and every transaction that wrote to it has ended);
//! * ManualFlush / SchemaChange seal every growing segment of the collection and are themselves
//!   the flush point; DropCollection / DropPartition drop their segments.
//!
//! State changes from DDL (ManualFlush and SchemaChange included) apply when the DDL is
//! acknowledged, while the DDL still holds its exclusive lock, so no insert can race them and a
//! failed append changes nothing. Recovery replays the same messages through
//! [`ShardManager::replay`], which also restores each growing segment's rows and bytes from the
//! inserts assigned to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use sluice_types::message::{
    CreateCollectionHeader, CreatePartitionHeader, CreateSegmentHeader, DropCollectionHeader,
    DropPartitionHeader, FlushHeader, Header, InsertHeader, ManualFlushHeader, SchemaChangeHeader,
};
use sluice_types::schema::CollectionSchema;
use sluice_types::{ImmutableMessage, MessageType, MutableMessage, Timestamp};
use tokio::time::Instant;

use crate::WalError;

/// Segment policies.
#[derive(Clone, Debug)]
pub struct SegmentConfig {
    /// Bytes at which a growing segment seals, before jitter. Default 120 MiB (1 GiB × 0.12, as
    /// the reference).
    pub max_segment_bytes: u64,
    /// Each segment's limit is `max_segment_bytes × U[1 − jitter, 1]`. Default 0.1.
    pub size_jitter: f64,
    /// A segment idle this long seals, if it holds at least `min_idle_seal_bytes`. Default 600 s.
    pub max_idle: Duration,
    /// Smallest segment the idle policy seals. Default 16 MiB.
    pub min_idle_seal_bytes: u64,
    /// A segment this old seals whatever its size (its age counts from its CreateSegment, or
    /// from the WAL's open for a recovered one). This bounds how much log the flusher and the
    /// query delegators read again after a failover: a trickle of writes never fills a
    /// segment. Default 30 min.
    pub max_age: Duration,
    /// Growing bytes on the whole node above which the largest segments seal. Default 4 GiB.
    pub node_growing_high: u64,
    /// ... until the node's growing bytes are below this. Default 2 GiB.
    pub node_growing_low: u64,
    /// How often the time and memory policies run. Default 10 s.
    pub check_interval: Duration,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            max_segment_bytes: 120 << 20,
            size_jitter: 0.1,
            max_idle: Duration::from_secs(600),
            min_idle_seal_bytes: 16 << 20,
            max_age: Duration::from_secs(1800),
            node_growing_high: 4 << 30,
            node_growing_low: 2 << 30,
            check_interval: Duration::from_secs(10),
        }
    }
}

/// Growing bytes across every WAL of a node (shared between their shard managers).
#[derive(Debug, Default)]
pub struct NodeGrowingBytes(AtomicU64);

impl NodeGrowingBytes {
    /// A new counter.
    pub fn new() -> Arc<NodeGrowingBytes> {
        Arc::new(NodeGrowingBytes::default())
    }

    /// The current total.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// Why a segment sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealReason {
    /// It reached its size limit.
    Size,
    /// It was idle.
    Idle,
    /// The node held too many growing bytes.
    NodeMemory,
    /// It reached its maximum age.
    Age,
}

#[derive(Debug)]
struct Segment {
    collection: i64,
    partition: i64,
    vchannel: Option<String>,
    limit: u64,
    bytes: u64,
    rows: u64,
    last_write: Instant,
    /// When it was created (or recovered).
    created: Instant,
    sealed: Option<SealReason>,
    /// Writes assigned and not yet acknowledged, plus transactions holding it.
    holds: u32,
    /// Recovered from a snapshot valid as of this timestamp: replay skips messages at or below.
    as_of: u64,
}

#[derive(Debug, Default)]
struct Collection {
    partitions: HashMap<i64, Vec<i64>>,
    /// Its schema (`None`: created without one; its rows are not interpreted).
    schema: Option<CollectionSchema>,
    /// Recovered from a snapshot valid as of this timestamp: replay skips messages at or below.
    as_of: u64,
    /// Created by a coordinator broadcast (Coordinator.CreateCollection): the catalog has it,
    /// so its DropCollection and partition DDL must be broadcasts too (the coordinator's), or
    /// the catalog and the log would disagree.
    managed: bool,
}

/// A collection on one vchannel (`None`: created for the whole pchannel).
type CollKey = (Option<String>, i64);

/// The key under which `collection` exists for `vchannel`: its own, else the pchannel-wide one.
fn coll_key(
    collections: &HashMap<CollKey, Collection>,
    vchannel: Option<&str>,
    collection: i64,
) -> Option<CollKey> {
    let own = (vchannel.map(str::to_owned), collection);
    if collections.contains_key(&own) {
        return Some(own);
    }
    let wide = (None, collection);
    collections.contains_key(&wide).then_some(wide)
}

#[derive(Default)]
struct State {
    collections: HashMap<CollKey, Collection>,
    /// Collections dropped on a vchannel, so that a repeated drop is a no-op (with the
    /// timestamp a recovered tombstone is valid as of).
    dropped: HashMap<CollKey, u64>,
    segments: HashMap<i64, Segment>,
}

impl State {
    fn key(&self, vchannel: Option<&str>, collection: i64) -> Option<CollKey> {
        coll_key(&self.collections, vchannel, collection)
    }

    /// Every key of `collection` a DDL on `vchannel` applies to (a pchannel-wide DDL: all).
    fn keys_for_ddl(&self, vchannel: Option<&str>, collection: i64) -> Vec<CollKey> {
        match vchannel {
            Some(_) => self.key(vchannel, collection).into_iter().collect(),
            None => self
                .collections
                .keys()
                .filter(|(_, c)| *c == collection)
                .cloned()
                .collect(),
        }
    }

    /// Segment ids of `collection` as a DDL on `vchannel` sees it, ascending.
    fn segments_of(&self, vchannel: Option<&str>, collection: i64) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .keys_for_ddl(vchannel, collection)
            .iter()
            .filter_map(|k| self.collections.get(k))
            .flat_map(|c| c.partitions.values().flatten().copied())
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// The result of trying to place an insert.
#[derive(Debug)]
pub(crate) enum Placement {
    /// Nothing to place (not an Insert/Delete) or placed into `segment` (which must be released
    /// with [`ShardManager::release`]).
    Placed(Option<i64>),
    /// No growing segment has room: create one for (collection, partition) and retry.
    NeedSegment { collection: i64, partition: i64 },
}

/// A segment ready for its Flush message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlushReady {
    pub(crate) collection: i64,
    pub(crate) partition: i64,
    pub(crate) segment: i64,
    pub(crate) vchannel: Option<String>,
}

/// Collections, partitions and growing segments of one WAL.
pub(crate) struct ShardManager {
    config: SegmentConfig,
    node: Arc<NodeGrowingBytes>,
    state: Mutex<State>,
    /// Serialises segment creation so concurrent inserts do not each create one.
    pub(crate) create_gate: tokio::sync::Mutex<()>,
    /// Woken when a sealed segment may have become ready to flush.
    pub(crate) flush_wakeup: tokio::sync::Notify,
}

fn unrecoverable(what: String) -> WalError {
    WalError::Unrecoverable(what)
}

impl Drop for ShardManager {
    /// The WAL is gone (closed, moved, fenced): its growing segments no longer take node
    /// memory, and its next owner counts them again from the log.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        let bytes: u64 = st.segments.values().map(|s| s.bytes).sum();
        self.node.sub(bytes);
    }
}

impl ShardManager {
    pub(crate) fn new(config: SegmentConfig, node: Arc<NodeGrowingBytes>) -> ShardManager {
        ShardManager {
            config,
            node,
            state: Mutex::new(State::default()),
            create_gate: tokio::sync::Mutex::new(()),
            flush_wakeup: tokio::sync::Notify::new(),
        }
    }

    /// Checks the vchannel invariants for `msg` and, for an Insert, reserves room in a growing
    /// segment and writes its id into the header. Nothing is reserved on error.
    pub(crate) fn place(
        &self,
        msg: &mut MutableMessage,
        header: &Header,
    ) -> Result<Placement, WalError> {
        let vchannel = msg.vchannel_str().map(str::to_owned);
        let vc = vchannel.as_deref();
        let missing = |what: &str, collection: i64| {
            unrecoverable(format!(
                "{what} collection {collection} which does not exist on {} (never created or \
                 dropped)",
                vc.unwrap_or("this pchannel")
            ))
        };
        match header {
            Header::Insert(h) => self.place_insert(msg, h),
            Header::Delete(h) => {
                if self.state.lock().key(vc, h.collection_id).is_none() {
                    return Err(missing("delete from", h.collection_id));
                }
                Ok(Placement::Placed(None))
            }
            Header::CreatePartition(CreatePartitionHeader { collection_id, .. })
            | Header::DropPartition(DropPartitionHeader { collection_id, .. }) => {
                if self.state.lock().key(vc, *collection_id).is_none() {
                    return Err(missing("partition DDL for", *collection_id));
                }
                self.check_managed(msg, vc, *collection_id)?;
                Ok(Placement::Placed(None))
            }
            Header::DropCollection(h) => {
                self.check_managed(msg, vc, h.collection_id)?;
                let st = self.state.lock();
                let again = st
                    .dropped
                    .contains_key(&(vchannel.clone(), h.collection_id));
                if st.keys_for_ddl(vc, h.collection_id).is_empty() && !again {
                    return Err(missing("drop of", h.collection_id));
                }
                Ok(Placement::Placed(None))
            }
            Header::SchemaChange(SchemaChangeHeader {
                collection_id,
                schema: Some(next),
                ..
            }) => {
                self.check_managed(msg, vc, *collection_id)?;
                // The change must be one added field on the schema in force, or a new name.
                let st = self.state.lock();
                let current = st
                    .key(vc, *collection_id)
                    .and_then(|k| st.collections.get(&k))
                    .ok_or_else(|| missing("schema change of", *collection_id))?
                    .schema
                    .clone()
                    .ok_or_else(|| {
                        unrecoverable(format!(
                            "schema change of collection {collection_id}, created without a schema"
                        ))
                    })?;
                drop(st);
                // The schema in force again: a catalog completing a change whose broadcast
                // landed before it could record it. No change (it still seals, as any).
                if current == *next {
                    return self.flush_point(msg, header, vc, *collection_id);
                }
                sluice_types::schema::check_change(&current, next)
                    .map_err(|e| WalError::InvalidArgument(e.to_string()))?;
                self.flush_point(msg, header, vc, *collection_id)
            }
            Header::ManualFlush(ManualFlushHeader { collection_id, .. })
            | Header::SchemaChange(SchemaChangeHeader { collection_id, .. }) => {
                self.flush_point(msg, header, vc, *collection_id)
            }
            _ => Ok(Placement::Placed(None)),
        }
    }

    /// Refuses DDL of a catalog collection (see `Collection::managed`) that is not a broadcast.
    fn check_managed(
        &self,
        msg: &MutableMessage,
        vc: Option<&str>,
        collection: i64,
    ) -> Result<(), WalError> {
        if msg
            .broadcast_header()
            .map_err(|e| WalError::InvalidArgument(e.to_string()))?
            .is_some()
        {
            return Ok(());
        }
        let st = self.state.lock();
        let managed = st
            .keys_for_ddl(vc, collection)
            .iter()
            .filter_map(|k| st.collections.get(k))
            .any(|c| c.managed);
        if managed {
            return Err(WalError::InvalidArgument(format!(
                "collection {collection} was created through the coordinator \
                 (Coordinator.CreateCollection): drop it, change its partitions and add fields \
                 through the coordinator, which keeps the catalog and every vchannel in step"
            )));
        }
        Ok(())
    }

    /// A ManualFlush / SchemaChange: the segments it seals go into its header; they are
    /// forgotten when it is acknowledged (observe), so a failed append changes nothing.
    fn flush_point(
        &self,
        msg: &mut MutableMessage,
        header: &Header,
        vc: Option<&str>,
        collection_id: i64,
    ) -> Result<Placement, WalError> {
        let ids = {
            let st = self.state.lock();
            if st.keys_for_ddl(vc, collection_id).is_empty() {
                return Err(unrecoverable(format!(
                    "flush of collection {collection_id} which does not exist on {} (never \
                     created or dropped)",
                    vc.unwrap_or("this pchannel")
                )));
            }
            st.segments_of(vc, collection_id)
        };
        match header {
            Header::ManualFlush(h) => msg.set_header(&ManualFlushHeader {
                segment_ids: ids,
                ..h.clone()
            })?,
            Header::SchemaChange(h) => msg.set_header(&SchemaChangeHeader {
                flushed_segment_ids: ids,
                ..h.clone()
            })?,
            _ => {}
        }
        Ok(Placement::Placed(None))
    }

    fn place_insert(
        &self,
        msg: &mut MutableMessage,
        header: &InsertHeader,
    ) -> Result<Placement, WalError> {
        let mut h = header.clone();
        let [part] = h.partitions.as_mut_slice() else {
            return Err(WalError::InvalidArgument(format!(
                "an insert must carry exactly one partition, this one has {}",
                h.partitions.len()
            )));
        };
        if part.binary_size == 0 {
            part.binary_size = msg.estimate_size() as u64;
        }
        let size = part.binary_size;
        let mut st = self.state.lock();
        let State {
            collections,
            segments,
            ..
        } = &mut *st;
        let vc = msg.vchannel_str();
        let coll = coll_key(collections, vc, h.collection_id)
            .and_then(|k| collections.get(&k))
            .ok_or_else(|| {
                unrecoverable(format!(
                    "insert into collection {} which does not exist on {} (never created or \
                     dropped)",
                    h.collection_id,
                    vc.unwrap_or("this pchannel")
                ))
            })?;
        let growing = coll.partitions.get(&part.partition_id).ok_or_else(|| {
            unrecoverable(format!(
                "insert into partition {} of collection {} which does not exist",
                part.partition_id, h.collection_id
            ))
        })?;
        let mut placed = None;
        for id in growing {
            let Some(seg) = segments.get_mut(id) else {
                continue;
            };
            if seg.sealed.is_some() {
                continue;
            }
            if seg.bytes + size <= seg.limit {
                seg.bytes += size;
                seg.rows += part.rows;
                seg.holds += 1;
                seg.last_write = Instant::now();
                placed = Some(*id);
                break;
            }
            if seg.bytes == 0 {
                return Err(unrecoverable(format!(
                    "insert of {size} bytes is larger than an empty segment ({} bytes)",
                    seg.limit
                )));
            }
            // Full: seal it; the insert goes elsewhere.
            seg.sealed = Some(SealReason::Size);
            self.flush_wakeup.notify_one();
        }
        let (collection, partition) = (h.collection_id, part.partition_id);
        match placed {
            Some(segment) => {
                part.segment_id = segment;
                self.node.add(size);
                drop(st);
                msg.set_header(&h)?;
                Ok(Placement::Placed(Some(segment)))
            }
            None => Ok(Placement::NeedSegment {
                collection,
                partition,
            }),
        }
    }

    /// The header of a new segment for (collection, partition), with a jittered size limit.
    pub(crate) fn new_segment_header(
        &self,
        collection: i64,
        partition: i64,
        segment: i64,
    ) -> CreateSegmentHeader {
        let j = self.config.size_jitter.clamp(0.0, 0.99);
        let factor = if j > 0.0 {
            rand::rng().random_range(1.0 - j..=1.0)
        } else {
            1.0
        };
        CreateSegmentHeader {
            collection_id: collection,
            partition_id: partition,
            segment_id: segment,
            storage_version: 2,
            max_segment_size: ((self.config.max_segment_bytes as f64) * factor).max(1.0) as u64,
            max_rows: 0,
            level: 1,
        }
    }

    /// An insert assigned to `segment` was acknowledged or failed: release its hold, and give
    /// back its bytes if it failed.
    pub(crate) fn release(&self, segment: i64, failed_bytes: Option<u64>) {
        let mut st = self.state.lock();
        if let Some(seg) = st.segments.get_mut(&segment) {
            seg.holds = seg.holds.saturating_sub(1);
            if let Some(b) = failed_bytes {
                seg.bytes = seg.bytes.saturating_sub(b);
                self.node.sub(b);
            }
            if seg.sealed.is_some() && seg.holds == 0 {
                self.flush_wakeup.notify_one();
            }
        }
    }

    /// A transaction body wrote to `segment`: keep it from flushing until the transaction ends.
    pub(crate) fn hold(&self, segment: i64) {
        if let Some(seg) = self.state.lock().segments.get_mut(&segment) {
            seg.holds += 1;
        }
    }

    /// Applies an acknowledged message that changes shard state.
    pub(crate) fn observe(&self, msg: &ImmutableMessage) -> Result<(), WalError> {
        let ty = msg.message_type()?;
        if !matches!(
            ty,
            MessageType::CreateCollection
                | MessageType::CreatePartition
                | MessageType::DropCollection
                | MessageType::DropPartition
                | MessageType::CreateSegment
                | MessageType::Flush
                | MessageType::ManualFlush
                | MessageType::SchemaChange
        ) {
            // Data and everything else leave the shard state as it is.
            return Ok(());
        }
        let vchannel = msg.vchannel_str().map(str::to_owned);
        let vc = vchannel.as_deref();
        let mut st = self.state.lock();
        match ty {
            MessageType::CreateCollection => {
                let h: CreateCollectionHeader = msg.header()?;
                let managed = msg.broadcast_header().ok().flatten().is_some();
                let key = (vchannel.clone(), h.collection_id);
                st.dropped.remove(&key);
                let c = st.collections.entry(key).or_default();
                c.managed |= managed;
                for p in h.partition_ids {
                    c.partitions.entry(p).or_default();
                }
                if h.schema.is_some() {
                    c.schema = h.schema;
                }
            }
            MessageType::CreatePartition => {
                let h: CreatePartitionHeader = msg.header()?;
                for key in st.keys_for_ddl(vc, h.collection_id) {
                    if let Some(c) = st.collections.get_mut(&key) {
                        c.partitions.entry(h.partition_id).or_default();
                    }
                }
            }
            MessageType::DropCollection => {
                let h: DropCollectionHeader = msg.header()?;
                for key in st.keys_for_ddl(vc, h.collection_id) {
                    if let Some(c) = st.collections.remove(&key) {
                        for seg in c.partitions.values().flatten() {
                            if let Some(s) = st.segments.remove(seg) {
                                self.node.sub(s.bytes);
                            }
                        }
                    }
                    st.dropped.insert(key, 0);
                }
                st.dropped.insert((vchannel.clone(), h.collection_id), 0);
            }
            MessageType::DropPartition => {
                let h: DropPartitionHeader = msg.header()?;
                for key in st.keys_for_ddl(vc, h.collection_id) {
                    let segs = st
                        .collections
                        .get_mut(&key)
                        .and_then(|c| c.partitions.remove(&h.partition_id))
                        .unwrap_or_default();
                    for seg in segs {
                        if let Some(s) = st.segments.remove(&seg) {
                            self.node.sub(s.bytes);
                        }
                    }
                }
            }
            MessageType::CreateSegment => {
                let h: CreateSegmentHeader = msg.header()?;
                let State {
                    collections,
                    segments,
                    ..
                } = &mut *st;
                if let Some(p) = coll_key(collections, vc, h.collection_id)
                    .and_then(|k| collections.get_mut(&k))
                    .and_then(|c| c.partitions.get_mut(&h.partition_id))
                {
                    p.push(h.segment_id);
                    segments.insert(
                        h.segment_id,
                        Segment {
                            collection: h.collection_id,
                            partition: h.partition_id,
                            vchannel,
                            limit: h.max_segment_size,
                            bytes: 0,
                            rows: 0,
                            last_write: Instant::now(),
                            created: Instant::now(),
                            sealed: None,
                            holds: 0,
                            as_of: 0,
                        },
                    );
                }
            }
            MessageType::Flush => {
                let h: FlushHeader = msg.header()?;
                Self::forget(&mut st, &self.node, h.segment_id);
            }
            MessageType::ManualFlush | MessageType::SchemaChange => {
                // The flush point: the segments it names are flushed; a schema change puts its
                // schema in force.
                let ids = match ty {
                    MessageType::ManualFlush => msg.header::<ManualFlushHeader>()?.segment_ids,
                    _ => {
                        let h: SchemaChangeHeader = msg.header()?;
                        if let Some(schema) = h.schema {
                            for key in st.keys_for_ddl(vc, h.collection_id) {
                                if let Some(c) = st.collections.get_mut(&key) {
                                    c.schema = Some(schema.clone());
                                }
                            }
                        }
                        h.flushed_segment_ids
                    }
                };
                for id in ids {
                    Self::forget(&mut st, &self.node, id);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies a message read back from the log when the WAL opens (or, in timestamp order,
    /// to a checkpoint replica): what [`Self::observe`] applies, and an insert's rows and bytes
    /// to the growing segment it was assigned to (a live insert counted them when it was
    /// placed), so recovered segments carry their size into the seal policies and the node's
    /// growing bytes.
    ///
    /// A message at or below the `as_of` of the recovered record it would change is skipped:
    /// that record already reflects it.
    pub(crate) fn replay(&self, msg: &ImmutableMessage) -> Result<(), WalError> {
        let ty = msg.message_type()?;
        let ts = msg.timestamp()?.map_or(0, |t| t.0);
        if ty == MessageType::Insert {
            let h: InsertHeader = msg.header()?;
            let mut st = self.state.lock();
            for p in &h.partitions {
                if let Some(seg) = st.segments.get_mut(&p.segment_id)
                    && ts > seg.as_of
                {
                    let bytes = if p.binary_size == 0 {
                        msg.estimate_size() as u64
                    } else {
                        p.binary_size
                    };
                    seg.bytes += bytes;
                    seg.rows += p.rows;
                    self.node.add(bytes);
                }
            }
            return Ok(());
        }
        if ts > 0 && self.covered(msg, ty, ts)? {
            return Ok(());
        }
        self.observe(msg)
    }

    /// Whether a recovered record already reflects the DDL `msg` (at `ts`).
    fn covered(&self, msg: &ImmutableMessage, ty: MessageType, ts: u64) -> Result<bool, WalError> {
        let collection = match ty {
            MessageType::CreateCollection => msg.header::<CreateCollectionHeader>()?.collection_id,
            MessageType::DropCollection => msg.header::<DropCollectionHeader>()?.collection_id,
            MessageType::CreatePartition => msg.header::<CreatePartitionHeader>()?.collection_id,
            MessageType::DropPartition => msg.header::<DropPartitionHeader>()?.collection_id,
            MessageType::SchemaChange => msg.header::<SchemaChangeHeader>()?.collection_id,
            MessageType::ManualFlush => msg.header::<ManualFlushHeader>()?.collection_id,
            MessageType::CreateSegment => {
                let h: CreateSegmentHeader = msg.header()?;
                let st = self.state.lock();
                if st.segments.contains_key(&h.segment_id) {
                    return Ok(true);
                }
                h.collection_id
            }
            _ => return Ok(false),
        };
        let vc = msg.vchannel_str();
        let st = self.state.lock();
        let own = (vc.map(str::to_owned), collection);
        if st.dropped.get(&own).is_some_and(|a| *a >= ts) {
            return Ok(true);
        }
        Ok(st
            .keys_for_ddl(vc, collection)
            .iter()
            .filter_map(|k| st.collections.get(k))
            .any(|c| c.as_of >= ts))
    }

    /// Replaces the state with a snapshot's (a WAL opening from a checkpoint).
    pub(crate) fn import(&self, snapshot: &crate::checkpoint::Snapshot) {
        let vchannel = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        let mut st = self.state.lock();
        let old: u64 = st.segments.values().map(|s| s.bytes).sum();
        self.node.sub(old);
        *st = State::default();
        for c in &snapshot.collections {
            let key = (vchannel(&c.vchannel), c.collection_id);
            if c.dropped {
                st.dropped.insert(key, c.as_of);
                continue;
            }
            st.collections.insert(
                key,
                Collection {
                    partitions: c.partition_ids.iter().map(|p| (*p, Vec::new())).collect(),
                    schema: c.schema.clone(),
                    as_of: c.as_of,
                    managed: c.managed,
                },
            );
        }
        let State {
            collections,
            segments,
            ..
        } = &mut *st;
        let mut ordered: Vec<&crate::checkpoint::SegmentMeta> = snapshot.segments.iter().collect();
        ordered.sort_by_key(|s| s.segment_id);
        for s in ordered {
            let vc = vchannel(&s.vchannel);
            let Some(p) = coll_key(collections, vc.as_deref(), s.collection_id)
                .and_then(|k| collections.get_mut(&k))
                .and_then(|c| c.partitions.get_mut(&s.partition_id))
            else {
                tracing::warn!(
                    segment = s.segment_id,
                    collection = s.collection_id,
                    "a recovered segment's collection or partition is not in the snapshot; \
                     dropping it"
                );
                continue;
            };
            p.push(s.segment_id);
            self.node.add(s.bytes);
            segments.insert(
                s.segment_id,
                Segment {
                    collection: s.collection_id,
                    partition: s.partition_id,
                    vchannel: vc,
                    limit: s.max_bytes,
                    bytes: s.bytes,
                    rows: s.rows,
                    last_write: Instant::now(),
                    created: Instant::now(),
                    sealed: None,
                    holds: 0,
                    as_of: s.as_of,
                },
            );
        }
    }

    /// The state as snapshot records valid as of `as_of`, in a stable order.
    pub(crate) fn export(
        &self,
        as_of: Timestamp,
    ) -> (
        Vec<crate::checkpoint::CollectionMeta>,
        Vec<crate::checkpoint::SegmentMeta>,
    ) {
        use crate::checkpoint::{CollectionMeta, SegmentMeta};
        let st = self.state.lock();
        let name = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut collections: Vec<CollectionMeta> = st
            .collections
            .iter()
            .map(|((v, id), c)| {
                let mut partition_ids: Vec<i64> = c.partitions.keys().copied().collect();
                partition_ids.sort_unstable();
                CollectionMeta {
                    vchannel: name(v),
                    collection_id: *id,
                    partition_ids,
                    schema: c.schema.clone(),
                    dropped: false,
                    as_of: as_of.0,
                    managed: c.managed,
                }
            })
            .chain(st.dropped.keys().map(|(v, id)| CollectionMeta {
                vchannel: name(v),
                collection_id: *id,
                partition_ids: Vec::new(),
                schema: None,
                dropped: true,
                as_of: as_of.0,
                managed: false,
            }))
            .collect();
        collections
            .sort_by(|a, b| (&a.vchannel, a.collection_id).cmp(&(&b.vchannel, b.collection_id)));
        let mut segments: Vec<SegmentMeta> = st
            .segments
            .iter()
            .map(|(id, s)| SegmentMeta {
                segment_id: *id,
                collection_id: s.collection,
                partition_id: s.partition,
                vchannel: name(&s.vchannel),
                max_bytes: s.limit,
                bytes: s.bytes,
                rows: s.rows,
                as_of: as_of.0,
            })
            .collect();
        segments.sort_by_key(|s| s.segment_id);
        (collections, segments)
    }

    /// Drops a flushed segment from the growing state.
    fn forget(st: &mut State, node: &NodeGrowingBytes, segment: i64) {
        let Some(s) = st.segments.remove(&segment) else {
            return;
        };
        node.sub(s.bytes);
        if let Some(p) = coll_key(&st.collections, s.vchannel.as_deref(), s.collection)
            .and_then(|k| st.collections.get_mut(&k))
            .and_then(|c| c.partitions.get_mut(&s.partition))
        {
            p.retain(|id| *id != segment);
        }
    }

    /// Runs the idle and node-memory policies.
    pub(crate) fn seal_by_policy(&self) -> Vec<(i64, SealReason)> {
        let now = Instant::now();
        let mut sealed = Vec::new();
        let mut st = self.state.lock();
        for (id, s) in st.segments.iter_mut() {
            if s.sealed.is_none()
                && s.bytes >= self.config.min_idle_seal_bytes
                && now.duration_since(s.last_write) >= self.config.max_idle
            {
                s.sealed = Some(SealReason::Idle);
                sealed.push((*id, SealReason::Idle));
            } else if s.sealed.is_none()
                && s.rows > 0
                && now.duration_since(s.created) >= self.config.max_age
            {
                s.sealed = Some(SealReason::Age);
                sealed.push((*id, SealReason::Age));
            }
        }
        if self.node.get() > self.config.node_growing_high {
            let mut growing: Vec<(u64, i64)> = st
                .segments
                .iter()
                .filter(|(_, s)| s.sealed.is_none() && s.bytes > 0)
                .map(|(id, s)| (s.bytes, *id))
                .collect();
            growing.sort_unstable_by(|a, b| b.cmp(a));
            // Bytes of sealed segments still count until flushed; project the total down.
            let mut projected = self.node.get();
            for (bytes, id) in growing {
                if projected <= self.config.node_growing_low {
                    break;
                }
                if let Some(s) = st.segments.get_mut(&id) {
                    s.sealed = Some(SealReason::NodeMemory);
                    sealed.push((id, SealReason::NodeMemory));
                    projected = projected.saturating_sub(bytes);
                }
            }
        }
        if !sealed.is_empty() {
            self.flush_wakeup.notify_one();
        }
        sealed
    }

    /// Sealed segments with no write or transaction still holding them.
    pub(crate) fn ready_to_flush(&self) -> Vec<FlushReady> {
        let st = self.state.lock();
        let mut out: Vec<FlushReady> = st
            .segments
            .iter()
            .filter(|(_, s)| s.sealed.is_some() && s.holds == 0)
            .map(|(id, s)| FlushReady {
                collection: s.collection,
                partition: s.partition,
                segment: *id,
                vchannel: s.vchannel.clone(),
            })
            .collect();
        out.sort_by_key(|f| f.segment);
        out
    }

    /// Growing (not sealed) segments and their bytes, for tests and status.
    pub(crate) fn growing(&self) -> Vec<(i64, u64)> {
        let st = self.state.lock();
        let mut v: Vec<(i64, u64)> = st
            .segments
            .iter()
            .filter(|(_, s)| s.sealed.is_none())
            .map(|(id, s)| (*id, s.bytes))
            .collect();
        v.sort_unstable();
        v
    }

    /// The seal reason of a segment still known, for tests and status.
    pub(crate) fn seal_reason(&self, segment: i64) -> Option<SealReason> {
        self.state
            .lock()
            .segments
            .get(&segment)
            .and_then(|s| s.sealed)
    }

    /// The schema in force for `collection` on `vchannel`, if it has one.
    pub(crate) fn schema(
        &self,
        vchannel: Option<&str>,
        collection: i64,
    ) -> Option<CollectionSchema> {
        let st = self.state.lock();
        st.key(vchannel, collection)
            .and_then(|k| st.collections.get(&k))
            .and_then(|c| c.schema.clone())
    }

    /// The partitions of `collection` on `vchannel` (`None`: not a live collection there).
    pub(crate) fn partitions(&self, vchannel: Option<&str>, collection: i64) -> Option<Vec<i64>> {
        let st = self.state.lock();
        let c = st
            .key(vchannel, collection)
            .and_then(|k| st.collections.get(&k))?;
        let mut ids: Vec<i64> = c.partitions.keys().copied().collect();
        ids.sort_unstable();
        Some(ids)
    }

    /// Every (vchannel, collection, schema) with a schema (vchannel-wide collections only: a
    /// pchannel-wide one names no vchannel).
    pub(crate) fn schemas(&self) -> Vec<(String, i64, CollectionSchema)> {
        let st = self.state.lock();
        st.collections
            .iter()
            .filter_map(|((v, c), coll)| Some((v.clone()?, *c, coll.schema.clone()?)))
            .collect()
    }

    /// How often to run [`ShardManager::seal_by_policy`].
    pub(crate) fn check_interval(&self) -> Duration {
        self.config.check_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_limits_are_jittered_within_bounds() {
        let m = ShardManager::new(
            SegmentConfig {
                max_segment_bytes: 1_000_000,
                size_jitter: 0.1,
                ..SegmentConfig::default()
            },
            NodeGrowingBytes::new(),
        );
        let sizes: Vec<u64> = (0..200)
            .map(|i| m.new_segment_header(1, 1, i).max_segment_size)
            .collect();
        assert!(sizes.iter().all(|s| (900_000..=1_000_000).contains(s)));
        let distinct: std::collections::HashSet<_> = sizes.iter().collect();
        assert!(distinct.len() > 50, "limits are not jittered");
    }
}
