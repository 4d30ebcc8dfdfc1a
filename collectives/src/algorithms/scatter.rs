//! Scatter: binomial tree (equal blocks) and linear (any block sizes: scatterv).

use super::{lowbit, Blocks};
use crate::schedule::{Buf, Builder, Group, Span};

/// Binomial scatter of `bs`-byte blocks from `root`: each rank receives its subtree's blocks
/// in one message and passes the children theirs.
pub fn binomial(
    b: &mut Builder,
    g: &Group,
    root: u32,
    input: (Buf, &Blocks),
    output: Span,
    bs: usize,
) {
    let p = g.size();
    let vr = (g.rank + p - root) % p;
    let real = |v: u32| (v + root) % p;
    let sub = if vr == 0 { p } else { lowbit(vr).min(p - vr) };
    let direct = vr == 0 && root == 0 && input.1.is_packed();
    let buf = if direct {
        Span::new(
            input.0,
            input.1.displs.first().copied().unwrap_or(0),
            p as usize * bs,
        )
    } else {
        Span::new(b.tmp(sub as usize * bs), 0, sub as usize * bs)
    };
    let top = if vr == 0 {
        for j in 0..p {
            if !direct {
                b.copy(input.1.span(input.0, real(j)), buf.sub(j as usize * bs, bs));
            }
        }
        p.next_power_of_two()
    } else {
        if buf.len > 0 {
            b.recv(g, real(vr - lowbit(vr)), buf);
        }
        b.round();
        lowbit(vr)
    };
    let mut mask = top >> 1;
    while mask > 0 {
        if vr + mask < p {
            let n = mask.min(p - vr - mask) as usize;
            if n * bs > 0 {
                b.send(g, real(vr + mask), buf.sub(mask as usize * bs, n * bs));
            }
        }
        mask >>= 1;
    }
    b.copy(buf.sub(0, bs), output);
    b.round();
}

/// Linear: the root sends every block directly (scatterv).
pub fn linear(b: &mut Builder, g: &Group, root: u32, input: Buf, blocks: &Blocks, output: Span) {
    let (p, r) = (g.size(), g.rank);
    if r == root {
        for i in (0..p).filter(|&i| i != r) {
            b.send(g, i, blocks.span(input, i));
        }
        b.copy(blocks.span(input, r), output);
    } else {
        b.recv(g, root, output);
    }
    b.round();
}
