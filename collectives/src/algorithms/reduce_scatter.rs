//! Reduce-scatter (block `i` of the reduced vector to rank `i`): recursive halving
//! (commutative), pairwise exchange (commutative), and reduce + scatter (any op).

use super::{Blocks, Fold};
use crate::schedule::{Buf, Builder, Group, Span};

/// Recursive halving over the folded ranks; new rank `j` ends with the blocks of the original
/// ranks it stands for, and hands the folded neighbour its block.
pub fn recursive_halving(b: &mut Builder, g: &Group, input: Span, output: Span, blocks: &Blocks) {
    let p = g.size();
    let f = Fold::new(p);
    let r = g.rank;
    let n = input.len;
    let acc = Span::new(b.tmp(n), 0, n);
    // Blocks of new ranks: new rank j covers original ranks first(j)..first(j + 1).
    let merged = Blocks::packed(
        (0..f.pof2)
            .map(|j| blocks.bytes(f.first(j), f.first(j + 1)))
            .collect(),
    );
    let mine = |i: u32| {
        let s = blocks.span(Buf::Send, i);
        acc.sub(s.off, s.len)
    };
    match super::reduce::halving(b, g, input, acc, &merged) {
        None => {
            if output.len > 0 {
                b.recv(g, r + 1, output);
            }
        }
        Some(_) => {
            if r < 2 * f.rem {
                let s = mine(r - 1);
                if s.len > 0 {
                    b.send(g, r - 1, s);
                }
            }
            b.copy(mine(r), output);
        }
    }
    b.round();
}

/// Pairwise exchange: in step `k` send the input block of rank `r + k` to it and reduce the
/// block received from `r - k` into this rank's result.
pub fn pairwise(b: &mut Builder, g: &Group, input: Span, output: Span, blocks: &Blocks) {
    let p = g.size();
    let r = g.rank;
    let blk = |i: u32| {
        let s = blocks.span(Buf::Send, i);
        input.sub(s.off, s.len)
    };
    b.copy(blk(r), output);
    let t = Span::new(b.tmp(output.len), 0, output.len);
    for k in 1..p {
        let (dst, src) = ((r + k) % p, (r + p - k) % p);
        let s = blk(dst);
        if s.len > 0 {
            b.send(g, dst, s);
        }
        if output.len > 0 {
            b.recv(g, src, t);
        }
        b.round();
        b.reduce(t, output, src < r);
    }
    b.round();
}

/// Reduce to rank 0 (binomial, rank order kept) then scatter the blocks: works for
/// non-commutative ops.
pub fn reduce_scatter(
    b: &mut Builder,
    g: &Group,
    input: Span,
    output: Span,
    blocks: &Blocks,
    commutative: bool,
) {
    let n = input.len;
    let full = Span::new(b.tmp(n), 0, n);
    super::reduce::binomial(b, g, 0, input, full, commutative);
    let layout = Blocks {
        counts: blocks.counts.clone(),
        displs: blocks.displs.clone(),
    };
    super::scatter::linear(b, g, 0, full.buf, &layout, output);
}
