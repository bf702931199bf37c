//! The coordinator's key layout in the meta store.
//!
//! Everything lives under one root (default [`DEFAULT_ROOT`]) so several clusters, or several
//! tests, can share one etcd:
//!
//! ```text
//! {root}/tso                         timestamp high-water mark (window end)
//! {root}/id                          id allocator high-water mark
//! {root}/leader                      the elected coordinator (leased)
//! {root}/node/{id}                   a registered streaming node (leased)
//! {root}/pchannel/{name}             pchannel metadata (term, node, state, history)
//! {root}/broadcast/{id}              a pending broadcast task
//! {root}/drain/{id}                  a streaming node drained by an operator
//! {root}/query/node/{id}             a registered query worker (`sluice querynode`, leased)
//! {root}/query/placement/{segment}   where a sealed segment is served (SegmentPlacement)
//! {root}/query/replica/{vchannel}/{r} a replica delegator of a shard (ReplicaPlacement)
//! {root}/compaction/{id}             a compaction asked for (CompactionInfo)
//! {root}/compaction-done/{id}/{vchannel} one vchannel of it compacted (VChannelCompaction)
//! ```

/// The default key root.
pub const DEFAULT_ROOT: &str = "sluice";

/// Key builder for one root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `root` (a trailing `/` is ignored).
    pub fn new(root: impl Into<String>) -> Keys {
        let mut root = root.into();
        while root.ends_with('/') {
            root.pop();
        }
        Keys { root }
    }

    /// The root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The timestamp oracle's high-water mark.
    pub fn tso(&self) -> String {
        format!("{}/tso", self.root)
    }

    /// The id allocator's high-water mark.
    pub fn id(&self) -> String {
        format!("{}/id", self.root)
    }

    /// The leader key.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }

    /// The prefix of every node registration.
    pub fn node_prefix(&self) -> String {
        format!("{}/node/", self.root)
    }

    /// One node's registration.
    pub fn node(&self, id: crate::NodeId) -> String {
        format!("{}{}", self.node_prefix(), id.0)
    }

    /// The prefix of every pchannel's metadata.
    pub fn pchannel_prefix(&self) -> String {
        format!("{}/pchannel/", self.root)
    }

    /// One pchannel's metadata.
    pub fn pchannel(&self, name: &str) -> String {
        format!("{}{}", self.pchannel_prefix(), name)
    }

    /// The prefix of every broadcast task.
    pub fn broadcast_prefix(&self) -> String {
        format!("{}/broadcast/", self.root)
    }

    /// One broadcast task (zero-padded so tasks scan in id order).
    pub fn broadcast(&self, id: u64) -> String {
        format!("{}{:020}", self.broadcast_prefix(), id)
    }
}

impl Keys {
    /// The keys query workers register under (`{root}/query/node/{id}`): the same layout as
    /// streaming nodes, one level down.
    pub fn query_workers(&self) -> Keys {
        Keys::new(format!("{}/query", self.root))
    }

    /// The prefix of every drained node.
    pub fn drain_prefix(&self) -> String {
        format!("{}/drain/", self.root)
    }

    /// A drained node.
    pub fn drain(&self, node: crate::NodeId) -> String {
        format!("{}{}", self.drain_prefix(), node.0)
    }

    /// The prefix of every segment placement.
    pub fn placement_prefix(&self) -> String {
        format!("{}/query/placement/", self.root)
    }

    /// Where sealed segment `segment` is served.
    pub fn placement(&self, segment: i64) -> String {
        format!("{}{segment}", self.placement_prefix())
    }

    /// The prefix of every replica placement.
    pub fn replica_prefix(&self) -> String {
        format!("{}/query/replica/", self.root)
    }

    /// Where replica `replica` of `vchannel`'s delegator runs.
    pub fn replica(&self, vchannel: &str, replica: u32) -> String {
        format!("{}{vchannel}/{replica}", self.replica_prefix())
    }

    /// The prefix of every compaction asked for.
    pub fn compaction_prefix(&self) -> String {
        format!("{}/compaction/", self.root)
    }

    /// Compaction `id`.
    pub fn compaction(&self, id: i64) -> String {
        format!("{}{id}", self.compaction_prefix())
    }

    /// The prefix of the vchannels compaction `id` is done with.
    pub fn compaction_done_prefix(&self, id: i64) -> String {
        format!("{}/compaction-done/{id}/", self.root)
    }

    /// Compaction `id` is done with `vchannel`.
    pub fn compaction_done(&self, id: i64, vchannel: &str) -> String {
        format!("{}{vchannel}", self.compaction_done_prefix(id))
    }
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new(DEFAULT_ROOT)
    }
}
