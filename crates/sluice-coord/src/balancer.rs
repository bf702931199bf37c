//! The placement policy: which node each pchannel should be on.
//!
//! [`balance`] is a pure, deterministic function (same input, same output) modelled on Milvus's
//! `vchannelFair` policy (§5.4 of the semantics reference), without the collection-affinity term.
//!
//! # Cost
//!
//! With `p_n` / `v_n` the pchannel / vchannel counts of healthy node `n`, and `p̄` / `v̄` the
//! per-node averages over *all* pchannels (placed or not), the layout's cost is
//!
//! ```text
//! cost = Σ_n  0.4·((p_n − p̄)/p̄)² + 0.3·((v_n − v̄)/v̄)²      (a term is 0 when its average is 0)
//! ```
//!
//! # Policy
//!
//! 1. **Keep** every current placement on a healthy node (the caller passes a placement only for a
//!    channel that is Assigned on a live node; one naming a node not in `nodes` is dropped).
//! 2. **Place** the unplaced pchannels, most vchannels first (ties by name), each on the node that
//!    gives the lowest cost, among the nodes holding fewer than `⌈P/N⌉` pchannels (so a fresh
//!    layout is count-balanced); ties go to the smaller node id.
//! 3. **Rebalance** (when [`BalanceConfig::allow_rebalance`]): move *movable* channels (kept in
//!    step 1 and assigned long enough ago, as the caller says), at most
//!    [`BalanceConfig::max_steps`] channels per call, taking the best step each time:
//!    * a move from a node with at least 2 more pchannels than the target is always taken (it
//!      evens out the counts; among those, the lowest resulting cost wins);
//!    * otherwise a move between nodes whose counts differ by exactly 1 (the counts stay as even
//!      as they were), or a swap of two channels on different nodes (two steps; counts do not
//!      change), whichever lowers the cost most, and only when that is by more than
//!      [`BalanceConfig::tolerance`].
//!
//!    A channel moves at most once per call.
//!
//! Every step lowers `(Σ p_n², cost)` lexicographically, so repeated calls converge: once no
//! channel is moved, the pchannel counts of any two nodes differ by at most 1 (if every channel
//! is movable), and calling again on that layout moves nothing (a balanced layout is a fixed
//! point). A new node therefore receives channels from the loaded ones, up to `max_steps` per call.

use std::collections::{BTreeMap, BTreeSet};

use crate::{CoordError, NodeId, Result};

/// Weight of the pchannel-count term.
pub const PCHANNEL_WEIGHT: f64 = 0.4;
/// Weight of the vchannel-count term.
pub const VCHANNEL_WEIGHT: f64 = 0.3;

/// The rebalance settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceConfig {
    /// Whether placed channels may be moved to even out the load (default true).
    pub allow_rebalance: bool,
    /// At most this many channels are moved per call (default 3).
    pub max_steps: usize,
    /// A cost-only move is taken only when it lowers the cost by more than this (default 0.01).
    pub tolerance: f64,
    /// A channel is movable only when it was assigned at least this long ago (default 5 min;
    /// applied by the caller, see [`ChannelInput::movable`]).
    pub min_rebalance_interval: std::time::Duration,
}

impl Default for BalanceConfig {
    fn default() -> BalanceConfig {
        BalanceConfig {
            allow_rebalance: true,
            max_steps: 3,
            tolerance: 0.01,
            min_rebalance_interval: std::time::Duration::from_secs(300),
        }
    }
}

/// What the policy knows about one pchannel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInput {
    /// How many vchannels it carries (may be 0).
    pub vchannels: u32,
    /// Where it is now, if it is Assigned on a healthy node.
    pub current: Option<NodeId>,
    /// Whether a rebalance may move it (assigned long enough ago).
    pub movable: bool,
}

#[derive(Clone, Copy, Default)]
struct Load {
    p: u64,
    v: u64,
}

struct Layout {
    avg_p: f64,
    avg_v: f64,
    load: BTreeMap<NodeId, Load>,
}

impl Layout {
    fn node_cost(&self, l: Load) -> f64 {
        let term = |x: u64, avg: f64| {
            if avg > 0.0 {
                let d = (x as f64 - avg) / avg;
                d * d
            } else {
                0.0
            }
        };
        PCHANNEL_WEIGHT * term(l.p, self.avg_p) + VCHANNEL_WEIGHT * term(l.v, self.avg_v)
    }

    fn cost(&self) -> f64 {
        self.load.values().map(|l| self.node_cost(*l)).sum()
    }

    /// How the cost changes when a channel with `v` vchannels leaves `from` (if any) and joins
    /// `to`.
    fn delta(&self, from: Option<NodeId>, to: NodeId, v: u32) -> f64 {
        let v = u64::from(v);
        let mut d = 0.0;
        if let Some(from) = from {
            let l = self.load[&from];
            d += self.node_cost(Load {
                p: l.p - 1,
                v: l.v - v,
            }) - self.node_cost(l);
        }
        let l = self.load[&to];
        d += self.node_cost(Load {
            p: l.p + 1,
            v: l.v + v,
        }) - self.node_cost(l);
        d
    }

    /// How the cost changes when a channel with `va` vchannels on `na` and one with `vb` on `nb`
    /// exchange nodes (pchannel counts stay as they are).
    fn swap_delta(&self, na: NodeId, va: u32, nb: NodeId, vb: u32) -> f64 {
        let (va, vb) = (u64::from(va), u64::from(vb));
        let (la, lb) = (self.load[&na], self.load[&nb]);
        let new_a = Load {
            p: la.p,
            v: la.v - va + vb,
        };
        let new_b = Load {
            p: lb.p,
            v: lb.v - vb + va,
        };
        self.node_cost(new_a) + self.node_cost(new_b) - self.node_cost(la) - self.node_cost(lb)
    }

    fn apply(&mut self, from: Option<NodeId>, to: NodeId, v: u32) {
        let v = u64::from(v);
        if let Some(from) = from
            && let Some(l) = self.load.get_mut(&from)
        {
            l.p -= 1;
            l.v -= v;
        }
        if let Some(l) = self.load.get_mut(&to) {
            l.p += 1;
            l.v += v;
        }
    }
}

/// The cost of a complete placement (see the module docs); exposed for tests and logs.
pub fn cost(
    channels: &BTreeMap<String, ChannelInput>,
    placement: &BTreeMap<String, NodeId>,
    nodes: &BTreeSet<NodeId>,
) -> f64 {
    let mut layout = empty_layout(channels, nodes);
    for (name, node) in placement {
        if let Some(c) = channels.get(name)
            && layout.load.contains_key(node)
        {
            layout.apply(None, *node, c.vchannels);
        }
    }
    layout.cost()
}

fn empty_layout(channels: &BTreeMap<String, ChannelInput>, nodes: &BTreeSet<NodeId>) -> Layout {
    let n = nodes.len().max(1) as f64;
    let total_v: u64 = channels.values().map(|c| u64::from(c.vchannels)).sum();
    Layout {
        avg_p: channels.len() as f64 / n,
        avg_v: total_v as f64 / n,
        load: nodes.iter().map(|n| (*n, Load::default())).collect(),
    }
}

/// The target node of every pchannel (see the module docs for the policy). `nodes` are the
/// healthy nodes; none is [`CoordError::NoHealthyNode`].
pub fn balance(
    channels: &BTreeMap<String, ChannelInput>,
    nodes: &BTreeSet<NodeId>,
    config: &BalanceConfig,
) -> Result<BTreeMap<String, NodeId>> {
    let Some(&first) = nodes.first() else {
        return Err(CoordError::NoHealthyNode);
    };
    let mut layout = empty_layout(channels, nodes);
    let mut target = BTreeMap::new();
    // Channels a rebalance may move: kept, movable, not yet moved.
    let mut movable = BTreeSet::new();
    let mut unplaced = Vec::new();

    // 1. Keep current healthy placements.
    for (name, c) in channels {
        match c.current {
            Some(node) if nodes.contains(&node) => {
                layout.apply(None, node, c.vchannels);
                target.insert(name.clone(), node);
                if c.movable {
                    movable.insert(name.clone());
                }
            }
            _ => unplaced.push((name, c.vchannels)),
        }
    }

    // 2. Place the rest, most vchannels first, within the per-node cap.
    unplaced.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let cap = channels.len().div_ceil(nodes.len()) as u64;
    for (name, v) in unplaced {
        let mut best: Option<(f64, NodeId)> = None;
        for (&node, l) in &layout.load {
            if l.p >= cap {
                continue;
            }
            let d = layout.delta(None, node, v);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, node));
            }
        }
        // Some node holds fewer than `cap` while channels remain unplaced; the fallback only
        // keeps this function total.
        let node = best.map_or(first, |b| b.1);
        layout.apply(None, node, v);
        target.insert(name.clone(), node);
    }

    // 3. Rebalance.
    if config.allow_rebalance {
        let mut steps = config.max_steps;
        while let Some(m) = best_move(channels, &layout, &target, &movable, config, steps) {
            let moves: Vec<(String, NodeId)> = match m {
                Move::One(name, to) => vec![(name, to)],
                Move::Swap(a, b) => {
                    let (na, nb) = (target[&a], target[&b]);
                    vec![(a, nb), (b, na)]
                }
            };
            for (name, to) in moves {
                let from = target[&name];
                layout.apply(Some(from), to, channels[&name].vchannels);
                target.insert(name.clone(), to);
                movable.remove(&name);
                steps -= 1;
            }
        }
    }
    Ok(target)
}

/// A rebalance step.
enum Move {
    /// Move one channel to a node.
    One(String, NodeId),
    /// Exchange the nodes of two channels (two steps).
    Swap(String, String),
}

/// The best step allowed by the rules in the module docs that fits in `steps`, if any.
fn best_move(
    channels: &BTreeMap<String, ChannelInput>,
    layout: &Layout,
    target: &BTreeMap<String, NodeId>,
    movable: &BTreeSet<String>,
    config: &BalanceConfig,
    steps: usize,
) -> Option<Move> {
    if steps == 0 {
        return None;
    }
    // (evens counts, cost delta, step): evening moves first, then the lowest delta; iteration
    // order (name, then node id) breaks ties deterministically.
    let mut best: Option<(bool, f64, Move)> = None;
    let mut offer = |evens: bool, d: f64, m: Move| {
        let better = match &best {
            None => true,
            Some((be, bd, _)) => (evens && !be) || (evens == *be && d < *bd),
        };
        if better {
            best = Some((evens, d, m));
        }
    };
    for name in movable {
        let from = target[name];
        let v = channels[name].vchannels;
        let from_p = layout.load[&from].p;
        for (&to, l) in &layout.load {
            if to == from || from_p < l.p + 1 {
                continue;
            }
            let evens = from_p >= l.p + 2;
            let d = layout.delta(Some(from), to, v);
            if evens || d < -config.tolerance {
                offer(evens, d, Move::One(name.clone(), to));
            }
        }
    }
    if steps >= 2 {
        for (i, a) in movable.iter().enumerate() {
            for b in movable.iter().skip(i + 1) {
                let (na, nb) = (target[a], target[b]);
                let (va, vb) = (channels[a].vchannels, channels[b].vchannels);
                if na == nb || va == vb {
                    continue;
                }
                let d = layout.swap_delta(na, va, nb, vb);
                if d < -config.tolerance {
                    offer(false, d, Move::Swap(a.clone(), b.clone()));
                }
            }
        }
    }
    best.map(|(_, _, m)| m)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn nodes(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    fn chans(specs: &[(u32, Option<u64>)]) -> BTreeMap<String, ChannelInput> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(v, cur))| {
                (
                    format!("p{i:02}"),
                    ChannelInput {
                        vchannels: v,
                        current: cur.map(NodeId),
                        movable: true,
                    },
                )
            })
            .collect()
    }

    fn counts(target: &BTreeMap<String, NodeId>, nodes: &BTreeSet<NodeId>) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| target.values().filter(|t| *t == n).count())
            .collect()
    }

    /// Feeds the output back as the current placement until nothing moves.
    fn converge(
        mut channels: BTreeMap<String, ChannelInput>,
        nodes: &BTreeSet<NodeId>,
        config: &BalanceConfig,
    ) -> (BTreeMap<String, ChannelInput>, usize) {
        for round in 0..1000 {
            let target = balance(&channels, nodes, config).unwrap();
            let moved = channels
                .iter()
                .any(|(name, c)| c.current != Some(target[name]));
            for (name, c) in channels.iter_mut() {
                c.current = Some(target[name]);
            }
            if !moved {
                return (channels, round);
            }
        }
        panic!("did not converge in 1000 rounds");
    }

    #[test]
    fn no_healthy_node_is_an_error() {
        let c = chans(&[(1, None)]);
        assert!(matches!(
            balance(&c, &BTreeSet::new(), &BalanceConfig::default()),
            Err(CoordError::NoHealthyNode)
        ));
    }

    #[test]
    fn fresh_layout_is_count_balanced_and_ties_go_to_the_smaller_id() {
        let c = chans(&[(0, None); 7]);
        let n = nodes(&[3, 1, 2]);
        let t = balance(&c, &n, &BalanceConfig::default()).unwrap();
        assert_eq!(counts(&t, &n), [3, 2, 2]);
        // The first channel (all equal) lands on the smallest id.
        assert_eq!(t["p00"], NodeId(1));
    }

    #[test]
    fn heavy_channels_are_spread_by_vchannels() {
        // Two heavy and two light channels on two nodes: each node gets one heavy one.
        let c = chans(&[(10, None), (1, None), (10, None), (1, None)]);
        let n = nodes(&[1, 2]);
        let t = balance(&c, &n, &BalanceConfig::default()).unwrap();
        assert_ne!(t["p00"], t["p02"]);
        assert_ne!(t["p01"], t["p03"]);
    }

    #[test]
    fn heavy_channels_on_one_node_are_swapped_apart() {
        let c = chans(&[(50, Some(1)), (50, Some(1)), (0, Some(2)), (0, Some(2))]);
        let n = nodes(&[1, 2]);
        let config = BalanceConfig::default();
        let t = balance(&c, &n, &config).unwrap();
        assert_ne!(t["p00"], t["p01"]);
        assert_eq!(counts(&t, &n), [2, 2]);
        assert!(cost(&c, &t, &n) < 1e-9);
        // A swap is two steps: with one step allowed nothing can improve.
        let one = BalanceConfig {
            max_steps: 1,
            ..config
        };
        let t = balance(&c, &n, &one).unwrap();
        assert!(c.iter().all(|(name, ch)| ch.current == Some(t[name])));
    }

    #[test]
    fn channels_on_unhealthy_nodes_are_moved_and_healthy_ones_kept() {
        let c = chans(&[(0, Some(1)), (0, Some(2)), (0, Some(9)), (0, Some(9))]);
        let n = nodes(&[1, 2]);
        let t = balance(&c, &n, &BalanceConfig::default()).unwrap();
        assert_eq!(t["p00"], NodeId(1));
        assert_eq!(t["p01"], NodeId(2));
        assert_eq!(counts(&t, &n), [2, 2]);
    }

    #[test]
    fn new_node_gets_at_most_max_steps_channels_per_round() {
        let mut specs = vec![(0, Some(1)); 6];
        specs.extend(vec![(0, Some(2)); 6]);
        let c = chans(&specs);
        let n = nodes(&[1, 2, 3]);
        let config = BalanceConfig::default();
        let t = balance(&c, &n, &config).unwrap();
        assert_eq!(counts(&t, &n).iter().sum::<usize>(), 12);
        assert_eq!(
            counts(&t, &n)[2],
            3,
            "max_steps channels move to the new node"
        );
        let (done, _) = converge(c, &n, &config);
        let t: BTreeMap<_, _> = done
            .iter()
            .map(|(k, c)| (k.clone(), c.current.unwrap()))
            .collect();
        assert_eq!(counts(&t, &n), [4, 4, 4]);
    }

    #[test]
    fn no_rebalance_when_disallowed_or_not_movable() {
        let c = chans(&[(0, Some(1)), (0, Some(1)), (0, Some(1))]);
        let n = nodes(&[1, 2]);
        let off = BalanceConfig {
            allow_rebalance: false,
            ..BalanceConfig::default()
        };
        let t = balance(&c, &n, &off).unwrap();
        assert!(t.values().all(|n| *n == NodeId(1)));
        let mut pinned = c.clone();
        for ch in pinned.values_mut() {
            ch.movable = false;
        }
        let t = balance(&pinned, &n, &BalanceConfig::default()).unwrap();
        assert!(t.values().all(|n| *n == NodeId(1)));
    }

    fn arb_case() -> impl Strategy<Value = (BTreeMap<String, ChannelInput>, BTreeSet<NodeId>)> {
        (1usize..6, 0usize..25).prop_flat_map(|(n_nodes, n_chans)| {
            let nodes: BTreeSet<NodeId> = (1..=n_nodes as u64).map(NodeId).collect();
            // Current placements may name a node that is not healthy (id up to n_nodes + 2).
            let chan = (
                0u32..20,
                proptest::option::of(1u64..=(n_nodes as u64 + 2)),
                any::<bool>(),
            );
            proptest::collection::vec(chan, n_chans).prop_map(move |specs| {
                let channels = specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (v, cur, movable))| {
                        (
                            format!("p{i:02}"),
                            ChannelInput {
                                vchannels: v,
                                current: cur.map(NodeId),
                                movable,
                            },
                        )
                    })
                    .collect();
                (channels, nodes.clone())
            })
        })
    }

    proptest! {
        #[test]
        fn every_channel_lands_on_a_healthy_node((channels, nodes) in arb_case()) {
            let t = balance(&channels, &nodes, &BalanceConfig::default()).unwrap();
            prop_assert_eq!(t.len(), channels.len());
            for node in t.values() {
                prop_assert!(nodes.contains(node));
            }
            // Deterministic.
            prop_assert_eq!(&t, &balance(&channels, &nodes, &BalanceConfig::default()).unwrap());
        }

        #[test]
        fn repeated_rounds_even_counts_and_reach_a_fixed_point((mut channels, nodes) in arb_case()) {
            for c in channels.values_mut() {
                c.movable = true;
            }
            let config = BalanceConfig::default();
            let (done, _) = converge(channels, &nodes, &config);
            let t: BTreeMap<_, _> =
                done.iter().map(|(k, c)| (k.clone(), c.current.unwrap())).collect();
            let cs = counts(&t, &nodes);
            let (min, max) = (cs.iter().min().unwrap(), cs.iter().max().unwrap());
            prop_assert!(max - min <= 1, "counts {:?}", cs);
            // A balanced layout is a fixed point.
            prop_assert_eq!(balance(&done, &nodes, &config).unwrap(), t);
        }

        #[test]
        fn a_count_balanced_layout_without_vchannels_does_not_move(
            n_nodes in 1u64..6, per_node in 0usize..5, extra in 0usize..5,
        ) {
            let nodes: BTreeSet<NodeId> = (1..=n_nodes).map(NodeId).collect();
            let extra = extra.min(n_nodes as usize - 1);
            let mut specs = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                let k = per_node + usize::from(i < extra);
                specs.extend(std::iter::repeat_n((0, Some(node.0)), k));
            }
            let c = chans(&specs);
            let t = balance(&c, &nodes, &BalanceConfig::default()).unwrap();
            for (name, ch) in &c {
                prop_assert_eq!(Some(t[name]), ch.current);
            }
        }
    }
}
