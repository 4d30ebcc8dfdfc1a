//! Broadcast: binomial tree, scatter + ring allgather (van de Geijn), and hierarchical.

use super::lowbit;
use crate::schedule::{Builder, Group, Span};
use crate::topology::Topology;

/// Binomial tree from `root`: `ceil(log2 p)` steps, the whole message on each edge.
pub fn binomial(b: &mut Builder, g: &Group, root: u32, data: Span) {
    let p = g.size();
    if p == 1 {
        return;
    }
    let vr = (g.rank + p - root) % p;
    let real = |v: u32| (v + root) % p;
    let top = if vr == 0 {
        p.next_power_of_two()
    } else {
        let mask = lowbit(vr);
        b.recv(g, real(vr - mask), data);
        b.round();
        mask
    };
    let mut mask = top >> 1;
    while mask > 0 {
        if vr + mask < p {
            b.send(g, real(vr + mask), data);
        }
        mask >>= 1;
    }
    b.round();
}

/// Linear: the root sends to every rank in one round. One hop deep, which is what counts when
/// ranks share cores (each hop of a tree may wait for a rank to be scheduled); above the
/// eager limit the receivers read the root's buffer in parallel.
pub fn linear(b: &mut Builder, g: &Group, root: u32, data: Span) {
    let p = g.size();
    if p == 1 {
        return;
    }
    if g.rank == root {
        for r in (0..p).filter(|&r| r != root) {
            b.send(g, r, data);
        }
    } else {
        b.recv(g, root, data);
    }
    b.round();
}

/// Segmented binomial tree: the message moves in `segment`-byte pieces, and each rank
/// forwards piece `k` to its children while it receives piece `k + 1`, so the tree's depth
/// costs one piece's time instead of the whole message's.
pub fn pipelined(b: &mut Builder, g: &Group, root: u32, data: Span, segment: usize) {
    let p = g.size();
    if p == 1 {
        return;
    }
    let segment = segment.max(1);
    let pieces = data.len.div_ceil(segment).max(1);
    let piece = |k: usize| {
        let lo = (k * segment).min(data.len);
        data.sub(lo, (lo + segment).min(data.len) - lo)
    };
    let vr = (g.rank + p - root) % p;
    let real = |v: u32| (v + root) % p;
    let (parent, top) = if vr == 0 {
        (None, p.next_power_of_two())
    } else {
        let mask = lowbit(vr);
        (Some(real(vr - mask)), mask)
    };
    let mut children = Vec::new();
    let mut mask = top >> 1;
    while mask > 0 {
        if vr + mask < p {
            children.push(real(vr + mask));
        }
        mask >>= 1;
    }
    // Round k: forward piece k - 1, receive piece k.
    for k in 0..=pieces {
        if k > 0 || parent.is_none() {
            let fwd = if parent.is_none() { k } else { k - 1 };
            if fwd < pieces {
                for &c in &children {
                    b.send(g, c, piece(fwd));
                }
            }
        }
        if let Some(par) = parent {
            if k < pieces {
                b.recv(g, par, piece(k));
            }
        }
        b.round();
    }
}

/// Scatter + allgather: the root scatters `p` chunks down a binomial tree, then a ring
/// allgather circulates them; about `2 n` bytes per rank instead of `n log p`.
pub fn scatter_allgather(b: &mut Builder, g: &Group, root: u32, data: Span) {
    let p = g.size();
    if p == 1 {
        return;
    }
    let n = data.len;
    let chunk = n.div_ceil(p as usize);
    // Chunks are indexed by relative rank; chunks a..b as one span.
    let chunks = |a: u32, c: u32| {
        let lo = (a as usize * chunk).min(n);
        let hi = (c as usize * chunk).min(n);
        data.sub(lo, hi - lo)
    };
    let vr = (g.rank + p - root) % p;
    let real = |v: u32| (v + root) % p;
    let top = if vr == 0 {
        p.next_power_of_two()
    } else {
        let mask = lowbit(vr);
        let s = chunks(vr, (vr + mask).min(p));
        if s.len > 0 {
            b.recv(g, real(vr - mask), s);
        }
        b.round();
        mask
    };
    let mut mask = top >> 1;
    while mask > 0 {
        if vr + mask < p {
            let s = chunks(vr + mask, (vr + 2 * mask).min(p));
            if s.len > 0 {
                b.send(g, real(vr + mask), s);
            }
        }
        mask >>= 1;
    }
    b.round();
    for s in 0..p - 1 {
        let give = (vr + p - s) % p;
        let take = (vr + 2 * p - s - 1) % p;
        let (gs, ts) = (chunks(give, give + 1), chunks(take, take + 1));
        if gs.len > 0 {
            b.send(g, real((vr + 1) % p), gs);
        }
        if ts.len > 0 {
            b.recv(g, real((vr + p - 1) % p), ts);
        }
        b.round();
    }
}

/// Hierarchical: binomial among node leaders (the root leads its own node), then binomial
/// inside each node.
pub fn hierarchical(b: &mut Builder, rank: u32, root: u32, topo: &Topology, data: Span) {
    let leaders = topo.leaders(Some(root));
    let local_members = topo.local_members(rank);
    let my_leader = *local_members
        .iter()
        .find(|m| leaders.contains(m))
        .expect("every node has a leader");
    if my_leader == rank {
        let lg = Group::of(rank, leaders.clone());
        let lroot = leaders.iter().position(|&l| l == root).expect("root leads") as u32;
        binomial(b, &lg, lroot, data);
    }
    let local = Group::of(rank, local_members.clone());
    let lroot = local_members
        .iter()
        .position(|&m| m == my_leader)
        .expect("leader is local") as u32;
    binomial(b, &local, lroot, data);
}
