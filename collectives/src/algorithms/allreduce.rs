//! Allreduce: recursive doubling (any op, rank order kept), Rabenseifner (recursive-halving
//! reduce-scatter + recursive-doubling allgather; commutative), ring (reduce-scatter and
//! allgather around a ring; commutative, bandwidth-optimal), and hierarchical.

use super::{Blocks, Fold};
use crate::schedule::{Buf, Builder, Group, Span};
use crate::topology::Topology;

/// Recursive doubling: `log2 p` exchanges of the whole vector, plus one fold step before and
/// after when `p` is not a power of two.
pub fn recursive_doubling(b: &mut Builder, g: &Group, input: Span, output: Span) {
    let p = g.size();
    let n = input.len;
    // With the input in the send buffer, the first exchange sends it from there and the
    // first reduction combines it with the peer's part in one pass (`ReduceFrom`), so the
    // input is never copied; otherwise it is copied into `output` first.
    let mut pristine = input.buf == Buf::Send;
    if p == 1 || !pristine {
        b.copy(input, output);
        pristine = false;
    }
    if p == 1 {
        b.round();
        return;
    }
    let f = Fold::new(p);
    let r = g.rank;
    let t = Span::new(b.tmp(n), 0, n);
    // This rank's running result: `input` until the first reduction writes `output`.
    let current = |pristine: bool| if pristine { input } else { output };
    let reduce = |b: &mut Builder, pristine: &mut bool, from_left: bool| {
        if *pristine {
            b.reduce_from(t, input, output, from_left);
        } else {
            b.reduce(t, output, from_left);
        }
        *pristine = false;
    };
    if r < 2 * f.rem {
        if r.is_multiple_of(2) {
            b.send(g, r + 1, current(pristine));
            b.round();
            b.recv(g, r + 1, output);
            b.round();
            return;
        }
        b.recv(g, r - 1, t);
        b.round();
        reduce(b, &mut pristine, true);
    }
    let nr = f.newrank(r).expect("odd and upper ranks stay");
    let mut mask = 1;
    while mask < f.pof2 {
        let pnr = nr ^ mask;
        b.send(g, f.real(pnr), current(pristine));
        b.recv(g, f.real(pnr), t);
        b.round();
        reduce(b, &mut pristine, pnr < nr);
        mask <<= 1;
    }
    if r < 2 * f.rem {
        b.send(g, r - 1, output);
    }
    b.round();
}

/// Rabenseifner: recursive halving leaves each new rank one reduced block, recursive doubling
/// gathers the blocks back, the folded ranks get the result last. Commutative ops only.
pub fn rabenseifner(b: &mut Builder, g: &Group, input: Span, output: Span, elem: usize) {
    let p = g.size();
    let n = input.len;
    if p == 1 {
        b.copy(input, output);
        b.round();
        return;
    }
    let f = Fold::new(p);
    let r = g.rank;
    let blocks = Blocks::split(n / elem, elem, f.pof2);
    let blk = |a: u32, c: u32| {
        let s = blocks.range(Buf::Send, a, c);
        output.sub(s.off, s.len)
    };
    // `halving` fills `output` from `input` only where it reduces (see there).
    match super::reduce::halving(b, g, input, output, &blocks) {
        None => {
            b.recv(g, r + 1, output);
            b.round();
        }
        Some(nr) => {
            let mut mask = 1;
            while mask < f.pof2 {
                let pnr = nr ^ mask;
                let own = nr & !(mask - 1);
                let theirs = pnr & !(mask - 1);
                let (os, ts) = (blk(own, own + mask), blk(theirs, theirs + mask));
                if os.len > 0 {
                    b.send(g, f.real(pnr), os);
                }
                if ts.len > 0 {
                    b.recv(g, f.real(pnr), ts);
                }
                b.round();
                mask <<= 1;
            }
            if r < 2 * f.rem {
                b.send(g, r - 1, output);
                b.round();
            }
        }
    }
}

/// Ring: `p - 1` reduce-scatter steps then `p - 1` allgather steps, each moving `n / p`
/// bytes to the next rank. Commutative ops only.
pub fn ring(b: &mut Builder, g: &Group, input: Span, output: Span, elem: usize) {
    let p = g.size();
    let n = input.len;
    // Each block of `output` is either reduced once by this rank (from its input block and
    // the partial sum received) or received whole in the allgather, so with the input in
    // the send buffer nothing needs copying: the reductions read the input block directly.
    let direct = input.buf == Buf::Send;
    if p == 1 || !direct {
        b.copy(input, output);
    }
    if p == 1 {
        b.round();
        return;
    }
    let r = g.rank;
    let blocks = Blocks::split(n / elem, elem, p);
    let blk = |i: u32| {
        let s = blocks.span(Buf::Send, i);
        output.sub(s.off, s.len)
    };
    let t = Span::new(b.tmp(blocks.counts[0]), 0, blocks.counts[0]);
    let (next, prev) = ((r + 1) % p, (r + p - 1) % p);
    let mut pending: Option<Span> = None;
    let mine = |into: Span| input.sub(into.off - output.off, into.len);
    for s in 0..p - 1 {
        if let Some(into) = pending.take() {
            if direct {
                b.reduce_from(t.sub(0, into.len), mine(into), into, true);
            } else {
                b.reduce(t.sub(0, into.len), into, true);
            }
        }
        let give = blk((r + p - s) % p);
        let take = blk((r + 2 * p - s - 1) % p);
        if give.len > 0 {
            // The first block sent is still the input's: send it from there (no wait for
            // the copy, no freshly written lines for the peer to read).
            let from = if s == 0 {
                input.sub(give.off - output.off, give.len)
            } else {
                give
            };
            b.send(g, next, from);
        }
        if take.len > 0 {
            b.recv(g, prev, t.sub(0, take.len));
        }
        b.round();
        pending = Some(take);
    }
    if let Some(into) = pending.take() {
        if direct {
            b.reduce_from(t.sub(0, into.len), mine(into), into, true);
        } else {
            b.reduce(t.sub(0, into.len), into, true);
        }
    }
    for s in 0..p - 1 {
        let give = blk((r + 1 + p - s) % p);
        let take = blk((r + p - s) % p);
        if give.len > 0 {
            b.send(g, next, give);
        }
        if take.len > 0 {
            b.recv(g, prev, take);
        }
        b.round();
    }
}

/// Hierarchical: binomial reduce to each node's leader, recursive doubling among leaders,
/// binomial broadcast inside each node. Commutative ops only.
pub fn hierarchical(b: &mut Builder, rank: u32, topo: &Topology, input: Span, output: Span) {
    let local = Group::of(rank, topo.local_members(rank));
    super::reduce::binomial(b, &local, 0, input, output, true);
    if local.rank == 0 {
        let leaders = Group::of(rank, topo.leaders(None));
        recursive_doubling(b, &leaders, output, output);
    }
    super::bcast::binomial(b, &local, 0, output);
}
