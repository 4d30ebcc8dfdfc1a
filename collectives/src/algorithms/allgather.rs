//! Allgather into a packed layout: ring (any `p`, bandwidth-optimal), recursive doubling
//! (folded for non-powers of two), and Bruck (`ceil(log2 p)` rounds for any `p`).

use super::{Blocks, Fold};
use crate::schedule::{Buf, Builder, Group, Span};

fn send_nz(b: &mut Builder, g: &Group, peer: u32, s: Span) {
    if s.len > 0 {
        b.send(g, peer, s);
    }
}

fn recv_nz(b: &mut Builder, g: &Group, peer: u32, s: Span) {
    if s.len > 0 {
        b.recv(g, peer, s);
    }
}

/// Ring: `p - 1` steps, each passing one block to the next rank.
pub fn ring(b: &mut Builder, g: &Group, input: Span, out: Buf, blocks: &Blocks) {
    let (p, r) = (g.size(), g.rank);
    b.copy(input, blocks.span(out, r));
    for s in 0..p.saturating_sub(1) {
        // The first step sends this rank's own block from the input, not from its copy:
        // the send does not wait for the copy, and the peer reads memory this rank has not
        // just dirtied.
        let block = if s == 0 {
            input
        } else {
            blocks.span(out, (r + p - s) % p)
        };
        send_nz(b, g, (r + 1) % p, block);
        recv_nz(
            b,
            g,
            (r + p - 1) % p,
            blocks.span(out, (r + 2 * p - s - 1) % p),
        );
        b.round();
    }
    b.round();
}

/// Recursive doubling: exchange everything gathered so far with rank `r ^ 2^k`.
pub fn recursive_doubling(b: &mut Builder, g: &Group, input: Span, out: Buf, blocks: &Blocks) {
    let (p, r) = (g.size(), g.rank);
    b.copy(input, blocks.span(out, r));
    if p == 1 {
        b.round();
        return;
    }
    let f = Fold::new(p);
    if r < 2 * f.rem {
        if r % 2 == 0 {
            send_nz(b, g, r + 1, blocks.span(out, r));
            b.round();
            recv_nz(b, g, r + 1, blocks.range(out, 0, r));
            recv_nz(b, g, r + 1, blocks.range(out, r + 1, p));
            b.round();
            return;
        }
        recv_nz(b, g, r - 1, blocks.span(out, r - 1));
        b.round();
    }
    let nr = f.newrank(r).expect("odd and upper ranks stay");
    let orig = |a: u32, c: u32| blocks.range(out, f.first(a), f.first(c));
    let mut mask = 1;
    while mask < f.pof2 {
        let pnr = nr ^ mask;
        let own = nr & !(mask - 1);
        let theirs = pnr & !(mask - 1);
        send_nz(b, g, f.real(pnr), orig(own, own + mask));
        recv_nz(b, g, f.real(pnr), orig(theirs, theirs + mask));
        b.round();
        mask <<= 1;
    }
    if r < 2 * f.rem {
        send_nz(b, g, r - 1, blocks.range(out, 0, r - 1));
        send_nz(b, g, r - 1, blocks.range(out, r, p));
        b.round();
    }
}

/// Bruck: blocks gathered in rotated order (this rank's first) in a temporary, doubling the
/// count each round, then rotated into place.
pub fn bruck(b: &mut Builder, g: &Group, input: Span, out: Buf, blocks: &Blocks) {
    let (p, r) = (g.size(), g.rank);
    let rot = Blocks::packed(
        (0..p)
            .map(|i| blocks.counts[((r + i) % p) as usize])
            .collect(),
    );
    let total = rot.total();
    let t = b.tmp(total);
    b.copy(input, rot.span(t, 0));
    let mut dist = 1;
    while dist < p {
        let cnt = dist.min(p - dist);
        // What we send are our rotated blocks 0..cnt: ranks r..r+cnt. The receiver
        // (r - dist) stores them at its rotated positions dist..dist+cnt: the same ranks.
        send_nz(b, g, (r + p - dist) % p, rot.range(t, 0, cnt));
        recv_nz(b, g, (r + dist) % p, rot.range(t, dist, dist + cnt));
        b.round();
        dist *= 2;
    }
    // Rotated block i is rank (r + i) % p.
    for i in 0..p {
        b.copy(rot.span(t, i), blocks.span(out, (r + i) % p));
    }
    b.round();
}
