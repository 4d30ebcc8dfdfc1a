//! Gather: binomial tree (equal blocks, known on every rank) and linear (any block sizes:
//! gatherv).

use super::{lowbit, Blocks};
use crate::schedule::{Buf, Builder, Group, Span};

/// Binomial gather of `bs`-byte blocks to `root`: each rank collects its subtree's blocks in
/// relative-rank order and passes them up in one message.
pub fn binomial(
    b: &mut Builder,
    g: &Group,
    root: u32,
    input: Span,
    out: (Buf, &Blocks),
    bs: usize,
) {
    let p = g.size();
    let vr = (g.rank + p - root) % p;
    let real = |v: u32| (v + root) % p;
    let sub = if vr == 0 { p } else { lowbit(vr).min(p - vr) };
    let direct = vr == 0 && root == 0 && out.1.is_packed();
    let buf = if direct {
        Span::new(
            out.0,
            out.1.displs.first().copied().unwrap_or(0),
            p as usize * bs,
        )
    } else {
        Span::new(b.tmp(sub as usize * bs), 0, sub as usize * bs)
    };
    b.copy(input, buf.sub(0, bs));
    let top = if vr == 0 {
        p.next_power_of_two()
    } else {
        lowbit(vr)
    };
    let mut mask = 1;
    while mask < top {
        if vr + mask < p {
            let n = mask.min(p - vr - mask) as usize;
            if n * bs > 0 {
                b.recv(g, real(vr + mask), buf.sub(mask as usize * bs, n * bs));
            }
        }
        mask <<= 1;
    }
    b.round();
    if vr != 0 {
        if buf.len > 0 {
            b.send(g, real(vr - lowbit(vr)), buf);
        }
    } else if !direct {
        for j in 0..p {
            b.copy(buf.sub(j as usize * bs, bs), out.1.span(out.0, real(j)));
        }
    }
    b.round();
}

/// Linear: the root receives every block directly (gatherv).
pub fn linear(b: &mut Builder, g: &Group, root: u32, input: Span, out: (Buf, &Blocks)) {
    let (p, r) = (g.size(), g.rank);
    if r == root {
        b.copy(input, out.1.span(out.0, r));
        for i in (0..p).filter(|&i| i != r) {
            b.recv(g, i, out.1.span(out.0, i));
        }
    } else {
        b.send(g, root, input);
    }
    b.round();
}
