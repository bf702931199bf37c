//! Recovery snapshots in the meta store (embedded redb in standalone, etcd in a cluster).
//!
//! Layout, under `{root}/wal/{pchannel}/`:
//!
//! | key | value |
//! |---|---|
//! | `owner` | the term that claimed the pchannel's snapshots last (decimal) |
//! | `segment/{segment id}` | a growing segment (`SegmentMeta`, protobuf) |
//! | `collection/{collection id}/{vchannel or _}` | a collection on a vchannel (`CollectionMeta`) |
//! | `producer/{producer id, hex}` | an idempotent producer's remembered appends (`ProducerMeta`) |
//! | `checkpoint` | where replay starts (`Checkpoint`) |
//!
//! A save writes only the records whose content changed since the last one this process wrote
//! or read, in transactions of at most [`MAX_OPS`] operations: segments first, collections
//! next, the checkpoint last. Every transaction compares the `owner` key with the revision this
//! process claimed it at, so an owner that was replaced cannot write a thing once the new owner
//! has loaded. Each record carries the timestamp it is valid as of, so a save that stops half
//! way leaves a state recovery still reads correctly (see `sluice_wal::checkpoint`).
//!
//! **A record that does not decode** stops the WAL from opening with an error naming the key.
//! The way out: delete the pchannel's keys under the prefix above; the next open then replays
//! the log from its oldest retained record (complete as long as the log was never truncated).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use sluice_meta::{Condition, KeyValue, MetaError, MetaStore, Revision, TxnOp};
use sluice_types::{PChannel, Term};
use sluice_wal::WalError;
use sluice_wal::checkpoint::{Checkpoint, CheckpointStore, CollectionMeta, SegmentMeta, Snapshot};
use sluice_wal::producer::ProducerMeta;

/// The most operations one meta-store transaction carries (etcd's default limit is 128).
pub const MAX_OPS: usize = 64;

/// Recovery snapshots kept in a [`MetaStore`].
pub struct MetaCheckpointStore {
    store: Arc<dyn MetaStore>,
    root: String,
    claims: Mutex<HashMap<PChannel, Claim>>,
}

impl std::fmt::Debug for MetaCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCheckpointStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// This process's claim on one pchannel's snapshots.
#[derive(Debug, Clone, Default)]
struct Claim {
    term: u64,
    owner_revision: Revision,
    /// Per record key: its content as last written or read (encoded with `as_of` zero).
    written: HashMap<String, Vec<u8>>,
}

fn store_error(e: MetaError) -> WalError {
    WalError::Store {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

/// `record` encoded with its `as_of` cleared: what is compared to tell whether it changed.
fn content<M: prost::Message + Clone>(record: &M, clear: impl Fn(&mut M)) -> Vec<u8> {
    let mut r = record.clone();
    clear(&mut r);
    r.encode_to_vec()
}

impl MetaCheckpointStore {
    /// Snapshots under `{root}/wal/`.
    pub fn new(store: Arc<dyn MetaStore>, root: impl Into<String>) -> Arc<MetaCheckpointStore> {
        let mut root = root.into();
        while root.ends_with('/') {
            root.pop();
        }
        Arc::new(MetaCheckpointStore {
            store,
            root,
            claims: Mutex::new(HashMap::new()),
        })
    }

    /// The prefix of `pchannel`'s keys.
    pub fn prefix(&self, pchannel: &PChannel) -> String {
        format!("{}/wal/{}/", self.root, pchannel)
    }

    fn owner_key(&self, pchannel: &PChannel) -> String {
        format!("{}owner", self.prefix(pchannel))
    }

    fn checkpoint_key(&self, pchannel: &PChannel) -> String {
        format!("{}checkpoint", self.prefix(pchannel))
    }

    fn producer_key(&self, pchannel: &PChannel, producer: u64) -> String {
        format!("{}producer/{producer:016x}", self.prefix(pchannel))
    }

    fn segment_key(&self, pchannel: &PChannel, segment: i64) -> String {
        format!("{}segment/{segment}", self.prefix(pchannel))
    }

    fn collection_key(&self, pchannel: &PChannel, c: &CollectionMeta) -> String {
        let v = if c.vchannel.is_empty() {
            "_"
        } else {
            c.vchannel.as_str()
        };
        format!(
            "{}collection/{}/{v}",
            self.prefix(pchannel),
            c.collection_id
        )
    }

    /// Writes `owner = term` unless a higher term is there; returns the revision written.
    async fn claim(&self, pchannel: &PChannel, term: Term) -> Result<Revision, WalError> {
        let key = self.owner_key(pchannel);
        loop {
            let current = self.store.get(&key).await.map_err(store_error)?;
            let condition = match &current {
                Some(kv) => {
                    let stored = parse_term(kv)?;
                    sluice_wal::checkpoint::check_term(pchannel, stored, term.0)?;
                    Condition::ModRevision(kv.mod_revision)
                }
                None => Condition::KeyAbsent,
            };
            let value = Bytes::from(term.0.to_string());
            match self.store.put(&key, value, condition, None).await {
                Ok(rev) => return Ok(rev),
                // Someone claimed in between: read again (a higher term fences us).
                Err(MetaError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// Why the owner compare failed: a higher term claimed, or the key vanished.
    async fn lost_claim(&self, pchannel: &PChannel, term: u64) -> WalError {
        match self.store.get(&self.owner_key(pchannel)).await {
            Ok(Some(kv)) => match parse_term(&kv) {
                Ok(stored) if stored > term => WalError::Fenced {
                    pchannel: pchannel.clone(),
                    term: Term(term),
                },
                Ok(_) | Err(_) => WalError::Store {
                    message: format!("the owner key of {pchannel} changed under term {term}"),
                    retryable: false,
                },
            },
            Ok(None) => WalError::Store {
                message: format!("the owner key of {pchannel} was deleted under term {term}"),
                retryable: false,
            },
            Err(e) => store_error(e),
        }
    }
}

fn parse_term(kv: &KeyValue) -> Result<u64, WalError> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            WalError::Unrecoverable(format!(
                "the meta-store key {} does not hold a term; delete it to let the next owner claim \
                 the pchannel",
                kv.key
            ))
        })
}

fn decode<M: prost::Message + Default>(kv: &KeyValue, prefix: &str) -> Result<M, WalError> {
    M::decode(kv.value.as_ref()).map_err(|e| {
        WalError::Unrecoverable(format!(
            "the recovery snapshot record {} does not decode ({e}). Delete the keys under {prefix} \
             to rebuild the state from the log's oldest retained record",
            kv.key
        ))
    })
}

#[async_trait]
impl CheckpointStore for MetaCheckpointStore {
    async fn load(&self, pchannel: &PChannel, term: Term) -> Result<Option<Snapshot>, WalError> {
        let owner_revision = self.claim(pchannel, term).await?;
        let prefix = self.prefix(pchannel);
        let (kvs, _) = self.store.scan_prefix(&prefix).await.map_err(store_error)?;
        let mut claim = Claim {
            term: term.0,
            owner_revision,
            written: HashMap::new(),
        };
        let mut checkpoint = None;
        let mut snapshot = Snapshot::default();
        for kv in &kvs {
            let rest = &kv.key[prefix.len()..];
            if rest == "owner" {
                continue;
            }
            if rest == "checkpoint" {
                checkpoint = Some(decode::<Checkpoint>(kv, &prefix)?);
            } else if rest.starts_with("segment/") {
                let s: SegmentMeta = decode(kv, &prefix)?;
                claim
                    .written
                    .insert(kv.key.clone(), content(&s, |r| r.as_of = 0));
                snapshot.segments.push(s);
            } else if rest.starts_with("producer/") {
                let p: ProducerMeta = decode(kv, &prefix)?;
                claim.written.insert(kv.key.clone(), p.encode_to_vec());
                snapshot.producers.push(p);
            } else if rest.starts_with("collection/") {
                let c: CollectionMeta = decode(kv, &prefix)?;
                claim
                    .written
                    .insert(kv.key.clone(), content(&c, |r| r.as_of = 0));
                snapshot.collections.push(c);
            } else {
                tracing::warn!(key = %kv.key, "ignoring an unknown key among the recovery snapshot's");
            }
        }
        self.claims.lock().insert(pchannel.clone(), claim);
        // Records without a checkpoint are what a first save left when it stopped half way:
        // nothing to start from (they are replaced by the next save).
        Ok(checkpoint.map(|c| {
            snapshot.checkpoint = c;
            snapshot
        }))
    }

    async fn save(&self, pchannel: &PChannel, snapshot: &Snapshot) -> Result<(), WalError> {
        let claim = self.claims.lock().get(pchannel).cloned().ok_or_else(|| {
            WalError::Unrecoverable(format!("a snapshot of {pchannel} saved before any load"))
        })?;
        let term = snapshot.checkpoint.term;
        if term < claim.term {
            return Err(WalError::Fenced {
                pchannel: pchannel.clone(),
                term: Term(term),
            });
        }
        // Segments first, collections next: (key, content, full encoding).
        let mut wanted: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
        for s in &snapshot.segments {
            wanted.push((
                self.segment_key(pchannel, s.segment_id),
                content(s, |r| r.as_of = 0),
                s.encode_to_vec(),
            ));
        }
        let segments_end = wanted.len();
        for c in &snapshot.collections {
            wanted.push((
                self.collection_key(pchannel, c),
                content(c, |r| r.as_of = 0),
                c.encode_to_vec(),
            ));
        }
        for p in &snapshot.producers {
            let encoded = p.encode_to_vec();
            wanted.push((
                self.producer_key(pchannel, p.producer_id),
                encoded.clone(),
                encoded,
            ));
        }
        let keep: std::collections::HashSet<&str> =
            wanted.iter().map(|(k, _, _)| k.as_str()).collect();
        let is_segment = |k: &str| k.starts_with(&format!("{}segment/", self.prefix(pchannel)));
        let mut gone: Vec<&String> = claim
            .written
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .collect();
        // Segment deletes go with the segment puts, before the collections.
        gone.sort_by_key(|k| (!is_segment(k), (*k).clone()));
        let changed = |i: &(String, Vec<u8>, Vec<u8>)| claim.written.get(&i.0) != Some(&i.1);
        let mut ops: Vec<(TxnOp, Option<Vec<u8>>)> = Vec::new();
        for item in wanted[..segments_end].iter().filter(|i| changed(i)) {
            ops.push(put(item));
        }
        for k in gone.iter().filter(|k| is_segment(k)) {
            ops.push((TxnOp::Delete { key: (*k).clone() }, None));
        }
        for item in wanted[segments_end..].iter().filter(|i| changed(i)) {
            ops.push(put(item));
        }
        for k in gone.iter().filter(|k| !is_segment(k)) {
            ops.push((TxnOp::Delete { key: (*k).clone() }, None));
        }
        ops.push((
            TxnOp::Put {
                key: self.checkpoint_key(pchannel),
                value: Bytes::from(snapshot.checkpoint.encode_to_vec()),
                lease: None,
            },
            None,
        ));
        let owner = self.owner_key(pchannel);
        for chunk in ops.chunks(MAX_OPS) {
            let txn_ops: Vec<TxnOp> = chunk.iter().map(|(op, _)| op.clone()).collect();
            let result = self
                .store
                .txn(
                    vec![(owner.clone(), Condition::ModRevision(claim.owner_revision))],
                    txn_ops,
                )
                .await
                .map_err(store_error)?;
            if !result.committed {
                return Err(self.lost_claim(pchannel, term).await);
            }
            let mut claims = self.claims.lock();
            let Some(mine) = claims.get_mut(pchannel) else {
                continue;
            };
            for (op, content) in chunk {
                match (op, content) {
                    (TxnOp::Put { key, .. }, Some(c)) => {
                        mine.written.insert(key.clone(), c.clone());
                    }
                    (TxnOp::Delete { key }, _) => {
                        mine.written.remove(key);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn put(item: &(String, Vec<u8>, Vec<u8>)) -> (TxnOp, Option<Vec<u8>>) {
    (
        TxnOp::Put {
            key: item.0.clone(),
            value: Bytes::from(item.2.clone()),
            lease: None,
        },
        Some(item.1.clone()),
    )
}
