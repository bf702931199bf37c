//! Pchannel metadata and terms.
//!
//! Every pchannel has one record at `{root}/pchannel/{name}` (a prost [`PChannelMeta`] encoding):
//! its current term, the node it is bound to, its state, and the earlier owners not yet confirmed
//! removed. The lifecycle (Milvus §5.2):
//!
//! ```text
//!  Uninitialized (term 1) --assign--> Assigning (term+1) --assign_done--> Assigned
//!        Assigned --mark_unavailable(current term)--> Unavailable --assign--> Assigning (term+1)
//!        Assigning --assign (retry)--> Assigning (term+1)
//! ```
//!
//! # The contract [`ChannelManager`] keeps
//!
//! * Every write is a compare-and-set on the mod revision this manager last read for the key, so
//!   two managers (two coordinators, one of them stale) can never persist the same term twice for
//!   one pchannel: terms of one pchannel, in revision order, strictly increase.
//! * [`ChannelManager::assign`] never retries a lost compare-and-set with a new term: it re-reads
//!   the record and reports [`CoordError::Conflict`]; the caller decides again.
//! * A request naming a term other than the current one is [`CoordError::StaleTerm`] and changes
//!   nothing; an unknown pchannel is [`CoordError::UnknownPChannel`].
//! * A stored value that does not decode (or decodes to something inconsistent) is
//!   [`CoordError::Malformed`] naming the key; the key is left as it is.
//! * Records are never deleted: a pchannel, once created, is kept (with its term) forever.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use sluice_meta::{Condition, KeyValue, MetaError, MetaStore, Revision};
use sluice_types::{PChannel, Term};

use crate::keys::Keys;
use crate::{CoordError, NodeId, Result};

/// Where a pchannel is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PChannelState {
    /// Created, never assigned (term 1).
    Uninitialized,
    /// Bound to a node at the current term; the node has not confirmed yet.
    Assigning,
    /// The node confirmed: it serves the pchannel at the current term.
    Assigned,
    /// A client reported the current term's owner failing; the next round reassigns it.
    Unavailable,
}

impl PChannelState {
    fn to_wire(self) -> u32 {
        match self {
            PChannelState::Uninitialized => 1,
            PChannelState::Assigning => 2,
            PChannelState::Assigned => 3,
            PChannelState::Unavailable => 4,
        }
    }

    fn from_wire(v: u32) -> Option<PChannelState> {
        Some(match v {
            1 => PChannelState::Uninitialized,
            2 => PChannelState::Assigning,
            3 => PChannelState::Assigned,
            4 => PChannelState::Unavailable,
            _ => return None,
        })
    }
}

/// One pchannel's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PChannelMeta {
    /// The pchannel.
    pub name: PChannel,
    /// The current term (1 for a new pchannel; +1 on every assignment).
    pub term: Term,
    /// The node bound at the current term (`None` only while uninitialized).
    pub node: Option<NodeId>,
    /// The lifecycle state.
    pub state: PChannelState,
    /// Earlier owners `(term, node)` not yet confirmed removed, oldest first.
    pub history: Vec<(Term, NodeId)>,
    /// When the last assignment was confirmed (ms since the Unix epoch; 0: never).
    pub last_assigned_ms: u64,
    /// The incarnation of `node` the current term was assigned to (see
    /// [`crate::NodeInfo::incarnation`]; 0 in records written before incarnations existed).
    pub incarnation: i64,
}

/// The stored form of [`PChannelMeta`].
#[derive(Clone, PartialEq, prost::Message)]
struct PChannelMetaPb {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, optional, tag = "3")]
    node: Option<u64>,
    #[prost(uint32, tag = "4")]
    state: u32,
    #[prost(message, repeated, tag = "5")]
    history: Vec<HistoryPb>,
    #[prost(uint64, tag = "6")]
    last_assigned_ms: u64,
    #[prost(int64, tag = "7")]
    incarnation: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HistoryPb {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    node: u64,
}

impl PChannelMeta {
    /// A new pchannel: term 1, uninitialized.
    pub fn new(name: PChannel) -> PChannelMeta {
        PChannelMeta {
            name,
            term: Term(1),
            node: None,
            state: PChannelState::Uninitialized,
            history: Vec::new(),
            last_assigned_ms: 0,
            incarnation: 0,
        }
    }

    /// The stored encoding.
    pub fn encode(&self) -> Bytes {
        PChannelMetaPb {
            name: self.name.as_str().to_owned(),
            term: self.term.0,
            node: self.node.map(|n| n.0),
            state: self.state.to_wire(),
            history: self
                .history
                .iter()
                .map(|(t, n)| HistoryPb {
                    term: t.0,
                    node: n.0,
                })
                .collect(),
            last_assigned_ms: self.last_assigned_ms,
            incarnation: self.incarnation,
        }
        .encode_to_vec()
        .into()
    }

    /// Decodes the value stored at `key` for pchannel `expected` (the key's last segment),
    /// checking that it is consistent; anything else is [`CoordError::Malformed`].
    pub fn decode(key: &str, expected: &str, value: &[u8]) -> Result<PChannelMeta> {
        let bad = |reason: String| CoordError::Malformed {
            key: key.to_owned(),
            reason,
        };
        let pb = PChannelMetaPb::decode(value).map_err(|e| bad(format!("not a pchannel: {e}")))?;
        if pb.name != expected {
            return Err(bad(format!(
                "names pchannel {:?}, key says {expected:?}",
                pb.name
            )));
        }
        let name = PChannel::new(&pb.name).map_err(|e| bad(e.to_string()))?;
        if pb.term == 0 {
            return Err(bad("term 0 (terms start at 1)".into()));
        }
        let state =
            PChannelState::from_wire(pb.state).ok_or_else(|| bad(format!("state {}", pb.state)))?;
        match (state, pb.node) {
            (PChannelState::Uninitialized, Some(n)) => {
                return Err(bad(format!("uninitialized but bound to node {n}")));
            }
            (PChannelState::Uninitialized, None) => {}
            (_, None) => return Err(bad(format!("{state:?} without a node"))),
            (_, Some(_)) => {}
        }
        let mut history = Vec::with_capacity(pb.history.len());
        for h in &pb.history {
            if h.term == 0 || h.term >= pb.term {
                return Err(bad(format!(
                    "history term {} is not below current term {}",
                    h.term, pb.term
                )));
            }
            history.push((Term(h.term), NodeId(h.node)));
        }
        Ok(PChannelMeta {
            name,
            term: Term(pb.term),
            node: pb.node.map(NodeId),
            state,
            history,
            last_assigned_ms: pb.last_assigned_ms,
            incarnation: pb.incarnation,
        })
    }
}

/// Which pchannels a cluster has: named explicitly, or `count` names `{prefix}_{i}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PChannelNames {
    /// These names.
    Explicit(Vec<String>),
    /// `{prefix}_0` .. `{prefix}_{count-1}`.
    Count {
        /// The common prefix.
        prefix: String,
        /// How many.
        count: u32,
    },
}

impl PChannelNames {
    /// The validated, de-duplicated names in order; an invalid name or an empty set is
    /// [`CoordError::InvalidArgument`].
    pub fn resolve(&self) -> Result<Vec<PChannel>> {
        let raw: Vec<String> = match self {
            PChannelNames::Explicit(names) => names.clone(),
            PChannelNames::Count { prefix, count } => {
                (0..*count).map(|i| format!("{prefix}_{i}")).collect()
            }
        };
        if raw.is_empty() {
            return Err(CoordError::InvalidArgument(
                "no pchannels configured".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for name in raw {
            let p = PChannel::new(&name)
                .map_err(|e| CoordError::InvalidArgument(format!("pchannel name: {e}")))?;
            if seen.insert(p.clone()) {
                out.push(p);
            }
        }
        Ok(out)
    }
}

/// A record and the mod revision it was read (or written) at.
#[derive(Clone, Debug)]
struct Entry {
    meta: PChannelMeta,
    revision: Revision,
}

/// The pchannel records of one coordinator: an in-memory copy of every record plus the
/// revision it was read at, written through to the meta store with compare-and-set (see the
/// module docs for the contract).
pub struct ChannelManager {
    store: Arc<dyn MetaStore>,
    keys: Keys,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for ChannelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelManager")
            .field("root", &self.keys.root())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ChannelManager {
    /// Loads every pchannel stored under `keys` and creates the missing ones among `names`
    /// (term 1, uninitialized). A record that does not decode fails the whole call with
    /// [`CoordError::Malformed`]; nothing is overwritten.
    pub async fn init(
        store: Arc<dyn MetaStore>,
        keys: Keys,
        names: &[PChannel],
    ) -> Result<ChannelManager> {
        let prefix = keys.pchannel_prefix();
        let (kvs, _) = store.scan_prefix(&prefix).await?;
        let mut entries = BTreeMap::new();
        for kv in kvs {
            let entry = decode_kv(&prefix, &kv)?;
            entries.insert(entry.meta.name.as_str().to_owned(), entry);
        }
        for name in names {
            if entries.contains_key(name.as_str()) {
                continue;
            }
            let key = keys.pchannel(name.as_str());
            let meta = PChannelMeta::new(name.clone());
            let entry = match store
                .put(&key, meta.encode(), Condition::KeyAbsent, None)
                .await
            {
                Ok(revision) => Entry { meta, revision },
                // Another coordinator created it first: take theirs.
                Err(MetaError::ConditionFailed { .. }) => {
                    let kv = store.get(&key).await?.ok_or_else(|| {
                        CoordError::Conflict(format!("{key} was created and deleted meanwhile"))
                    })?;
                    decode_kv(&prefix, &kv)?
                }
                Err(e) => return Err(e.into()),
            };
            entries.insert(name.as_str().to_owned(), entry);
        }
        Ok(ChannelManager {
            store,
            keys,
            entries: Mutex::new(entries),
        })
    }

    /// The key layout this manager writes under.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The record of one pchannel as last read or written by this manager.
    pub fn get(&self, name: &str) -> Result<PChannelMeta> {
        self.entries
            .lock()
            .get(name)
            .map(|e| e.meta.clone())
            .ok_or_else(|| CoordError::UnknownPChannel(name.to_owned()))
    }

    /// Every record, in name order, as last read or written by this manager.
    pub fn list(&self) -> Vec<PChannelMeta> {
        self.entries
            .lock()
            .values()
            .map(|e| e.meta.clone())
            .collect()
    }

    /// Binds `name` to `node` at a new term (current term + 1), state Assigning; the current
    /// owner (unless uninitialized) joins the history. Assigning a channel to the node it is
    /// already Assigned to changes nothing and returns the record as it is.
    ///
    /// A lost compare-and-set re-reads the record and is [`CoordError::Conflict`].
    pub async fn assign(&self, name: &str, node: NodeId) -> Result<PChannelMeta> {
        self.assign_to(name, node, 0).await
    }

    /// [`Self::assign`] to one incarnation of `node`: a channel Assigned to an earlier
    /// incarnation of the same node (a restarted process, which holds no WAL) is assigned
    /// again at a new term, the earlier incarnation's term joining the history.
    pub async fn assign_to(
        &self,
        name: &str,
        node: NodeId,
        incarnation: i64,
    ) -> Result<PChannelMeta> {
        let entry = self.entry(name)?;
        let cur = &entry.meta;
        if cur.state == PChannelState::Assigned
            && cur.node == Some(node)
            && cur.incarnation == incarnation
        {
            return Ok(cur.clone());
        }
        let mut next = cur.clone();
        if cur.state != PChannelState::Uninitialized
            && let Some(owner) = cur.node
        {
            next.history.push((cur.term, owner));
        }
        next.term = cur.term.next();
        next.node = Some(node);
        next.incarnation = incarnation;
        next.state = PChannelState::Assigning;
        self.write(name, &entry, next).await
    }

    /// The node confirmed serving `name` at `term`: history cleared, state Assigned.
    /// Idempotent for an already Assigned record at `term`; a different term is
    /// [`CoordError::StaleTerm`]; a record not Assigning at `term` is [`CoordError::Conflict`].
    pub async fn assign_done(&self, name: &str, term: Term) -> Result<PChannelMeta> {
        self.update_at_term(name, term, |cur| match cur.state {
            PChannelState::Assigned => Ok(None),
            PChannelState::Assigning => {
                let mut next = cur.clone();
                next.history.clear();
                next.state = PChannelState::Assigned;
                next.last_assigned_ms = now_ms();
                Ok(Some(next))
            }
            state => Err(CoordError::Conflict(format!(
                "pchannel {name} is {state:?} at term {term}, not assigning"
            ))),
        })
        .await
    }

    /// Marks `name` Unavailable when `term` is its current term and it is Assigned; returns
    /// whether the record changed (in any other state at the current term nothing happens).
    /// A different term is [`CoordError::StaleTerm`] and changes nothing.
    pub async fn mark_unavailable(&self, name: &str, term: Term) -> Result<bool> {
        let mut changed = false;
        self.update_at_term(name, term, |cur| {
            if cur.state == PChannelState::Assigned {
                let mut next = cur.clone();
                next.state = PChannelState::Unavailable;
                changed = true;
                Ok(Some(next))
            } else {
                changed = false;
                Ok(None)
            }
        })
        .await?;
        Ok(changed)
    }

    /// Re-reads one record from the store (after someone else may have written it).
    pub async fn refresh(&self, name: &str) -> Result<PChannelMeta> {
        self.entry(name)?;
        Ok(self.reread(name).await?.meta)
    }

    /// Applies `f` to the record when `term` is current; `f` returns the new record, or `None`
    /// for no change. A lost compare-and-set re-reads and tries again (the term is re-checked,
    /// so this never acts on a term that is no longer current).
    async fn update_at_term<F>(&self, name: &str, term: Term, mut f: F) -> Result<PChannelMeta>
    where
        F: FnMut(&PChannelMeta) -> Result<Option<PChannelMeta>>,
    {
        let mut entry = self.entry(name)?;
        loop {
            let cur = &entry.meta;
            if cur.term != term {
                return Err(CoordError::StaleTerm {
                    pchannel: name.to_owned(),
                    requested: term.0,
                    current: cur.term.0,
                });
            }
            let Some(next) = f(cur)? else {
                return Ok(cur.clone());
            };
            match self.write(name, &entry, next).await {
                Err(CoordError::Conflict(_)) => entry = self.entry(name)?,
                other => return other,
            }
        }
    }

    fn entry(&self, name: &str) -> Result<Entry> {
        self.entries
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| CoordError::UnknownPChannel(name.to_owned()))
    }

    /// Writes `next` if the key is still at `read.revision`; on a lost compare-and-set re-reads
    /// (so the next attempt starts from what is stored) and reports [`CoordError::Conflict`].
    async fn write(&self, name: &str, read: &Entry, next: PChannelMeta) -> Result<PChannelMeta> {
        let key = self.keys.pchannel(name);
        match self
            .store
            .put(
                &key,
                next.encode(),
                Condition::ModRevision(read.revision),
                None,
            )
            .await
        {
            Ok(revision) => {
                self.install(
                    name,
                    Entry {
                        meta: next.clone(),
                        revision,
                    },
                );
                Ok(next)
            }
            Err(MetaError::ConditionFailed { .. }) => {
                let now = self.reread(name).await?;
                Err(CoordError::Conflict(format!(
                    "pchannel {name} changed meanwhile (now term {}, {:?})",
                    now.meta.term, now.meta.state
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn reread(&self, name: &str) -> Result<Entry> {
        let key = self.keys.pchannel(name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| CoordError::Malformed {
                key: key.clone(),
                reason: "pchannel record was deleted".into(),
            })?;
        let entry = decode_kv(&self.keys.pchannel_prefix(), &kv)?;
        self.install(name, entry.clone());
        Ok(entry)
    }

    /// Keeps the newer of the cached and the given entry (concurrent calls may finish out of
    /// order).
    fn install(&self, name: &str, entry: Entry) {
        let mut entries = self.entries.lock();
        match entries.get(name) {
            Some(cur) if cur.revision >= entry.revision => {}
            _ => {
                entries.insert(name.to_owned(), entry);
            }
        }
    }
}

fn decode_kv(prefix: &str, kv: &KeyValue) -> Result<Entry> {
    let name = kv.key.strip_prefix(prefix).unwrap_or(&kv.key);
    let meta = PChannelMeta::decode(&kv.key, name, &kv.value)?;
    Ok(Entry {
        meta,
        revision: kv.mod_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> PChannelMeta {
        PChannelMeta {
            name: PChannel::new("p_1").unwrap(),
            term: Term(4),
            node: Some(NodeId(7)),
            state: PChannelState::Assigning,
            history: vec![(Term(2), NodeId(1)), (Term(3), NodeId(2))],
            last_assigned_ms: 1234,
            incarnation: 42,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let m = meta();
        assert_eq!(PChannelMeta::decode("k", "p_1", &m.encode()).unwrap(), m);
        let fresh = PChannelMeta::new(PChannel::new("x").unwrap());
        assert_eq!(
            PChannelMeta::decode("k", "x", &fresh.encode()).unwrap(),
            fresh
        );
    }

    #[test]
    fn inconsistent_records_are_malformed() {
        let malformed = |m: &PChannelMeta, name: &str| {
            matches!(
                PChannelMeta::decode("k", name, &m.encode()),
                Err(CoordError::Malformed { key, .. }) if key == "k"
            )
        };
        let m = meta();
        assert!(malformed(&m, "other"), "name must match the key");
        let mut bad = m.clone();
        bad.term = Term(0);
        bad.history.clear();
        assert!(malformed(&bad, "p_1"), "term 0");
        let mut bad = m.clone();
        bad.node = None;
        assert!(malformed(&bad, "p_1"), "assigning without node");
        let mut bad = m.clone();
        bad.history.push((Term(4), NodeId(3)));
        assert!(malformed(&bad, "p_1"), "history term not below current");
        assert!(matches!(
            PChannelMeta::decode("k", "p_1", b"\xff\xff\xff"),
            Err(CoordError::Malformed { .. })
        ));
        let mut pb = PChannelMetaPb::decode(&*m.encode()).unwrap();
        pb.state = 9;
        assert!(matches!(
            PChannelMeta::decode("k", "p_1", &pb.encode_to_vec()),
            Err(CoordError::Malformed { .. })
        ));
    }

    #[test]
    fn names_resolve_and_validate() {
        let names = PChannelNames::Count {
            prefix: "dml".into(),
            count: 3,
        }
        .resolve()
        .unwrap();
        let names: Vec<&str> = names.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["dml_0", "dml_1", "dml_2"]);
        let dedup = PChannelNames::Explicit(vec!["a".into(), "b".into(), "a".into()])
            .resolve()
            .unwrap();
        assert_eq!(dedup.len(), 2);
        for bad in [
            PChannelNames::Explicit(vec![]),
            PChannelNames::Explicit(vec!["ok".into(), "../x".into()]),
            PChannelNames::Count {
                prefix: "p".into(),
                count: 0,
            },
        ] {
            assert!(matches!(bad.resolve(), Err(CoordError::InvalidArgument(_))));
        }
    }
}
