//! Barrier: dissemination, recursive doubling (pairwise exchanges), linear (fan-in to rank 0,
//! fan-out), and a hierarchical form (fan-in to a node leader, dissemination among leaders,
//! fan-out).

use super::Fold;
use crate::schedule::{Builder, Group};
use crate::topology::Topology;

/// Dissemination barrier: in round `k` every rank signals `rank + 2^k` and waits for
/// `rank - 2^k`; `ceil(log2 p)` rounds for any `p`.
pub fn dissemination(b: &mut Builder, g: &Group) {
    let (n, me) = (g.size(), g.rank);
    let token = b.tmp(0);
    let token = crate::schedule::Span::new(token, 0, 0);
    let mut dist = 1;
    while dist < n {
        b.send(g, (me + dist) % n, token);
        b.recv(g, (me + n - dist) % n, token);
        b.round();
        dist *= 2;
    }
}

/// Recursive-doubling barrier: in round `k` ranks `r` and `r ^ 2^k` exchange a token, so
/// each round's partners wait only for each other. For a non-power-of-two size the first
/// `2 * rem` ranks pair up first: the even one checks in with its odd neighbour, which takes
/// part for both and releases it at the end. `log2` of the power of two below `p` rounds,
/// plus two when `p` is not one.
pub fn recursive_doubling(b: &mut Builder, g: &Group) {
    let fold = Fold::new(g.size());
    let token = crate::schedule::Span::new(b.tmp(0), 0, 0);
    let me = g.rank;
    let Some(nr) = fold.newrank(me) else {
        // Folded away: check in with the odd neighbour, then wait to be released.
        b.send(g, me + 1, token);
        b.recv(g, me + 1, token);
        b.round();
        return;
    };
    if me < 2 * fold.rem {
        b.recv(g, me - 1, token);
        b.round();
    }
    let mut mask = 1;
    while mask < fold.pof2 {
        let peer = fold.real(nr ^ mask);
        b.send(g, peer, token);
        b.recv(g, peer, token);
        b.round();
        mask *= 2;
    }
    if me < 2 * fold.rem {
        b.send(g, me - 1, token);
        b.round();
    }
}

/// Linear barrier: every rank checks in with rank 0, which releases them all once the last
/// has arrived. Two steps on any rank but 0's critical path is `2 (p - 1)` messages; with
/// more ranks than cores it needs the fewest hand-offs between ranks sharing a core.
pub fn linear(b: &mut Builder, g: &Group) {
    let token = crate::schedule::Span::new(b.tmp(0), 0, 0);
    if g.rank != 0 {
        b.send(g, 0, token);
        b.recv(g, 0, token);
        b.round();
        return;
    }
    for r in 1..g.size() {
        b.recv(g, r, token);
    }
    b.round();
    for r in 1..g.size() {
        b.send(g, r, token);
    }
    b.round();
}

/// Hierarchical barrier: each node's ranks check in with their leader, leaders run a
/// dissemination barrier, then each leader releases its node.
pub fn hierarchical(b: &mut Builder, rank: u32, topo: &Topology) {
    let local = Group::of(rank, topo.local_members(rank));
    let token = crate::schedule::Span::new(b.tmp(0), 0, 0);
    if local.rank != 0 {
        b.send(&local, 0, token);
        b.recv(&local, 0, token);
        b.round();
        return;
    }
    for r in 1..local.size() {
        b.recv(&local, r, token);
    }
    b.round();
    let leaders = Group::of(rank, topo.leaders(None));
    dissemination(b, &leaders);
    for r in 1..local.size() {
        b.send(&local, r, token);
    }
    b.round();
}
