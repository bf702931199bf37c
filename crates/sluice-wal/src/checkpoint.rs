//! Recovery snapshots: what a WAL needs to reopen without replaying its whole log.
//!
//! A snapshot is the shard state (collections per vchannel with their schemas and partitions,
//! dropped collections, growing segments with their rows and bytes) **as of a checkpoint**:
//! the last-confirmed id `L` and timestamp `T` of a timetick. Every message with a timestamp
//! above `T` has an id at or above `L`, so a WAL that opens from the snapshot reads the log
//! from `L`, skips what is at or below `T`, and applies the rest.
//!
//! The state a snapshot holds is built by a replica of the shard state that is fed the
//! acknowledged messages **in timestamp order**, the order the write-ahead buffer releases
//! them in — not the live shard state, which counts an insert when it is placed, before it is
//! acknowledged.
//!
//! A store may persist a snapshot as several records (one per collection and per segment, the
//! checkpoint last) and write only those that changed. Each record carries the timestamp it is
//! valid as of (`as_of`); replay never applies to a record a message at or below its `as_of`,
//! so a crash between the records and the checkpoint neither loses nor double-counts anything.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_types::schema::CollectionSchema;
use sluice_types::{ImmutableMessage, MessageId, PChannel, Term, Timestamp};

use crate::WalError;
use crate::shard::{NodeGrowingBytes, SegmentConfig, ShardManager};

/// Where replay starts: the last-confirmed id and timestamp of a timetick whose messages (all
/// at or below `timestamp`) the snapshot reflects.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Checkpoint {
    /// The id replay reads from (16 bytes, big-endian [`MessageId`]).
    #[prost(bytes = "vec", tag = "1")]
    pub message_id: Vec<u8>,
    /// Messages at or below this timestamp are in the snapshot.
    #[prost(uint64, tag = "2")]
    pub timestamp: u64,
    /// The term of the WAL that took it.
    #[prost(uint64, tag = "3")]
    pub term: u64,
}

impl Checkpoint {
    /// A checkpoint at `id` / `timestamp`, taken at `term`.
    pub fn new(id: MessageId, timestamp: Timestamp, term: Term) -> Checkpoint {
        Checkpoint {
            message_id: id.to_bytes().to_vec(),
            timestamp: timestamp.0,
            term: term.0,
        }
    }

    /// The id replay starts at; an error when the stored bytes are not an id.
    pub fn id(&self) -> Result<MessageId, WalError> {
        let bytes: [u8; 16] = self.message_id.as_slice().try_into().map_err(|_| {
            WalError::Unrecoverable(format!(
                "a checkpoint's message id has {} bytes, not 16",
                self.message_id.len()
            ))
        })?;
        Ok(MessageId::from_bytes(bytes))
    }
}

/// One collection on one vchannel (or on the whole pchannel when `vchannel` is empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectionMeta {
    /// The vchannel; empty for a collection created for the whole pchannel.
    #[prost(string, tag = "1")]
    pub vchannel: String,
    /// The collection id.
    #[prost(int64, tag = "2")]
    pub collection_id: i64,
    /// Its partitions.
    #[prost(int64, repeated, tag = "3")]
    pub partition_ids: Vec<i64>,
    /// The schema in force (absent: created without one).
    #[prost(message, optional, tag = "4")]
    pub schema: Option<CollectionSchema>,
    /// Dropped: kept so that a repeated drop is a no-op and replay does not bring it back.
    #[prost(bool, tag = "5")]
    pub dropped: bool,
    /// The record reflects every message at or below this timestamp.
    #[prost(uint64, tag = "6")]
    pub as_of: u64,
    /// Created by a coordinator broadcast (the catalog's): its drop and partition DDL must be
    /// broadcasts too.
    #[prost(bool, tag = "7")]
    pub managed: bool,
}

/// One growing segment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentMeta {
    /// The segment id.
    #[prost(int64, tag = "1")]
    pub segment_id: i64,
    /// Its collection.
    #[prost(int64, tag = "2")]
    pub collection_id: i64,
    /// Its partition.
    #[prost(int64, tag = "3")]
    pub partition_id: i64,
    /// Its vchannel; empty for a pchannel-wide collection.
    #[prost(string, tag = "4")]
    pub vchannel: String,
    /// Its size limit in bytes.
    #[prost(uint64, tag = "5")]
    pub max_bytes: u64,
    /// Bytes inserted so far.
    #[prost(uint64, tag = "6")]
    pub bytes: u64,
    /// Rows inserted so far.
    #[prost(uint64, tag = "7")]
    pub rows: u64,
    /// The record reflects every message at or below this timestamp.
    #[prost(uint64, tag = "8")]
    pub as_of: u64,
}

/// The shard state of one WAL at a checkpoint.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Snapshot {
    /// Where replay starts.
    pub checkpoint: Checkpoint,
    /// Collections, live and dropped.
    pub collections: Vec<CollectionMeta>,
    /// Growing segments.
    pub segments: Vec<SegmentMeta>,
    /// Idempotent producers and their remembered appends.
    pub producers: Vec<crate::producer::ProducerMeta>,
}

/// Where the WAL keeps its snapshots (the recovery storage implements it over the meta store).
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Claims `pchannel`'s snapshots for `term` (from now on saves from lower terms are
    /// refused; a higher term already there is [`WalError::Fenced`]) and returns the latest
    /// snapshot, if one was saved. A stored snapshot that cannot be read is an error naming
    /// what to remove to rebuild from the log.
    async fn load(&self, pchannel: &PChannel, term: Term) -> Result<Option<Snapshot>, WalError>;

    /// Saves `snapshot`: segment records first, then collection records, the checkpoint last,
    /// so a failure half way leaves the previous checkpoint in force. A snapshot from a term
    /// below the stored checkpoint's is refused with [`WalError::Fenced`] (see [`check_term`]).
    async fn save(&self, pchannel: &PChannel, snapshot: &Snapshot) -> Result<(), WalError>;
}

/// A snapshot from `term` must not replace one of a term that claimed the pchannel after it: an
/// owner that does not know it was replaced yet would put an older checkpoint back (one the new
/// owner may already have truncated the log past). `claimed` is the highest term that loaded.
pub fn check_term(pchannel: &PChannel, claimed: u64, term: u64) -> Result<(), WalError> {
    let stored = claimed;
    if stored > term {
        return Err(WalError::Fenced {
            pchannel: pchannel.clone(),
            term: Term(term),
        });
    }
    Ok(())
}

/// Snapshots in memory (tests, and a process whose log is in memory too).
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    /// Per pchannel: the claiming term and the snapshot.
    snapshots: Mutex<std::collections::HashMap<PChannel, (u64, Option<Snapshot>)>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Arc<MemoryCheckpointStore> {
        Arc::new(MemoryCheckpointStore::default())
    }

    /// Replaces `pchannel`'s snapshot (tests).
    pub fn put(&self, pchannel: &PChannel, snapshot: Snapshot) {
        self.snapshots.lock().entry(pchannel.clone()).or_default().1 = Some(snapshot);
    }

    /// `pchannel`'s snapshot, without claiming it (tests).
    pub fn get(&self, pchannel: &PChannel) -> Option<Snapshot> {
        self.snapshots
            .lock()
            .get(pchannel)
            .and_then(|(_, s)| s.clone())
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, pchannel: &PChannel, term: Term) -> Result<Option<Snapshot>, WalError> {
        let mut all = self.snapshots.lock();
        let entry = all.entry(pchannel.clone()).or_default();
        check_term(pchannel, entry.0, term.0)?;
        entry.0 = term.0;
        Ok(entry.1.clone())
    }

    async fn save(&self, pchannel: &PChannel, snapshot: &Snapshot) -> Result<(), WalError> {
        let mut all = self.snapshots.lock();
        let entry = all.entry(pchannel.clone()).or_default();
        check_term(pchannel, entry.0, snapshot.checkpoint.term)?;
        entry.1 = Some(snapshot.clone());
        Ok(())
    }
}

/// Where the replica stands.
#[derive(Clone, Copy, Debug)]
struct Position {
    id: MessageId,
    ts: Timestamp,
    /// Messages applied since the snapshot was taken last.
    dirty: u64,
    /// Bumped by every apply, so an unchanged replica is not saved again.
    version: u64,
}

/// The shard-state replica a WAL keeps for its snapshots, fed in timestamp order.
pub(crate) struct Checkpointer {
    replica: ShardManager,
    producers: crate::producer::Producers,
    position: Mutex<Position>,
    /// The version last saved, and its checkpoint's id.
    saved: Mutex<Option<(u64, MessageId)>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("position", &*self.position.lock())
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// A replica holding `state` as of the checkpoint `id` / `ts`.
    pub(crate) fn new(
        config: SegmentConfig,
        producers: crate::producer::ProducerConfig,
        state: &Snapshot,
        id: MessageId,
        ts: Timestamp,
    ) -> Checkpointer {
        // Its own byte counter: the replica must not count the node's memory twice.
        let replica = ShardManager::new(config, NodeGrowingBytes::new());
        replica.import(state);
        let producers = crate::producer::Producers::new(producers);
        producers.import(&state.producers);
        Checkpointer {
            replica,
            producers,
            position: Mutex::new(Position {
                id,
                ts,
                dirty: 1,
                version: 1,
            }),
            saved: Mutex::new(None),
        }
    }

    /// Applies the messages a timetick released (all at or below `tick`, in timestamp order)
    /// and moves the checkpoint to the tick. Returns the messages applied since the last
    /// snapshot.
    pub(crate) fn apply(
        &self,
        messages: &[ImmutableMessage],
        last_confirmed: MessageId,
        tick: Timestamp,
    ) -> u64 {
        let mut pos = self.position.lock();
        for m in messages {
            if let Err(e) = self.replica.replay(m) {
                tracing::warn!(id = %m.id(), error = %e, "the checkpoint replica skipped a message");
            }
            self.producers.record(m);
        }
        if tick > pos.ts {
            pos.ts = tick;
            pos.id = pos.id.max(last_confirmed);
        }
        if !messages.is_empty() {
            pos.dirty += messages.len() as u64;
            pos.version += 1;
        }
        pos.dirty
    }

    /// The snapshot to save, or `None` when nothing changed since the last saved one.
    pub(crate) fn snapshot(&self, term: Term) -> Option<(Snapshot, u64)> {
        let mut pos = self.position.lock();
        if self.saved.lock().is_some_and(|(v, _)| v == pos.version) {
            return None;
        }
        let (collections, segments) = self.replica.export(pos.ts);
        self.producers.expire(pos.ts);
        pos.dirty = 0;
        Some((
            Snapshot {
                checkpoint: Checkpoint::new(pos.id, pos.ts, term),
                collections,
                segments,
                producers: self.producers.export(),
            },
            pos.version,
        ))
    }

    /// `version`, with its checkpoint at `id`, was saved.
    pub(crate) fn saved(&self, version: u64, id: MessageId) {
        let mut saved = self.saved.lock();
        if saved.is_none_or(|(v, _)| v < version) {
            *saved = Some((version, id));
        }
    }

    /// The id the last snapshot saved by this WAL starts replay at.
    pub(crate) fn saved_id(&self) -> Option<MessageId> {
        self.saved.lock().map(|(_, id)| id)
    }
}
