//! All-to-all: pairwise exchange (`p - 1` steps, any block sizes), linear (everything posted
//! at once), and Bruck (`ceil(log2 p)` rounds, equal blocks; for small messages).

use super::Blocks;
use crate::schedule::{Buf, Builder, Group, Span};

/// Pairwise: in step `k` send to `r + k` and receive from `r - k`.
pub fn pairwise(b: &mut Builder, g: &Group, send: (Buf, &Blocks), recv: (Buf, &Blocks)) {
    let (p, r) = (g.size(), g.rank);
    b.copy(send.1.span(send.0, r), recv.1.span(recv.0, r));
    for k in 1..p {
        let (dst, src) = ((r + k) % p, (r + p - k) % p);
        b.send(g, dst, send.1.span(send.0, dst));
        b.recv(g, src, recv.1.span(recv.0, src));
        b.round();
    }
    b.round();
}

/// Linear: all sends and receives in one round (receives first).
pub fn linear(b: &mut Builder, g: &Group, send: (Buf, &Blocks), recv: (Buf, &Blocks)) {
    let (p, r) = (g.size(), g.rank);
    b.copy(send.1.span(send.0, r), recv.1.span(recv.0, r));
    for k in 1..p {
        b.recv(g, (r + p - k) % p, recv.1.span(recv.0, (r + p - k) % p));
    }
    for k in 1..p {
        b.send(g, (r + k) % p, send.1.span(send.0, (r + k) % p));
    }
    b.round();
}

/// Bruck with blocks of `bs` bytes: rotate so block `i` is for rank `r + i`; in round `k`
/// send the blocks whose index has bit `k` set to `r + 2^k` (packed), receive the same
/// positions from `r - 2^k`; finally block `i` came from rank `r - i`.
pub fn bruck(b: &mut Builder, g: &Group, send: (Buf, &Blocks), recv: (Buf, &Blocks), bs: usize) {
    let (p, r) = (g.size(), g.rank);
    let tb = b.tmp(p as usize * bs);
    let t = |i: u32| Span::new(tb, i as usize * bs, bs);
    for i in 0..p {
        b.copy(send.1.span(send.0, (r + i) % p), t(i));
    }
    let mut dist = 1;
    while dist < p {
        let idx: Vec<u32> = (0..p).filter(|i| i & dist != 0).collect();
        let len = idx.len() * bs;
        let out = b.tmp(len);
        let inp = b.tmp(len);
        for (j, &i) in idx.iter().enumerate() {
            b.copy(t(i), Span::new(out, j * bs, bs));
        }
        b.send(g, (r + dist) % p, Span::new(out, 0, len));
        b.recv(g, (r + p - dist) % p, Span::new(inp, 0, len));
        b.round();
        for (j, &i) in idx.iter().enumerate() {
            b.copy(Span::new(inp, j * bs, bs), t(i));
        }
        dist *= 2;
    }
    for i in 0..p {
        b.copy(t(i), recv.1.span(recv.0, (r + p - i) % p));
    }
    b.round();
}
