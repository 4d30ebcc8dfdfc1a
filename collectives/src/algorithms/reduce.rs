//! Reduce: binomial tree (any op; rank order kept by reducing at rank 0 for non-commutative
//! ops), Rabenseifner (reduce-scatter by recursive halving + binomial gather; commutative),
//! and hierarchical (commutative).

use super::{lowbit, Blocks, Fold};
use crate::schedule::{Buf, Builder, Group, Span};
use crate::topology::Topology;

/// Binomial reduce of `input` into `output` at `root` (`output` is only used there).
pub fn binomial(
    b: &mut Builder,
    g: &Group,
    root: u32,
    input: Span,
    output: Span,
    commutative: bool,
) {
    let p = g.size();
    let n = input.len;
    // A non-commutative op needs the tree rooted at rank 0, where children hold higher ranks.
    let tree_root = if commutative { root } else { 0 };
    let vr = (g.rank + p - tree_root) % p;
    let real = |v: u32| (v + tree_root) % p;
    let acc = if g.rank == root && g.rank == tree_root {
        output
    } else {
        Span::new(b.tmp(n), 0, n)
    };
    let mut children = Vec::new();
    let mut mask = 1;
    while mask < p && vr & mask == 0 {
        if vr + mask < p {
            let t = Span::new(b.tmp(n), 0, n);
            b.recv(g, real(vr + mask), t);
            children.push(t);
        }
        mask <<= 1;
    }
    // With the input in the send buffer, a leaf sends it from there and the first child's
    // part is combined with it in one pass (`acc = input op child`); otherwise the input is
    // copied into the accumulator first.
    let direct = input.buf == Buf::Send;
    if !direct || (children.is_empty() && vr == 0) {
        b.copy(input, acc);
    }
    b.round();
    for (i, t) in children.iter().enumerate() {
        if i == 0 && direct {
            b.reduce_from(*t, input, acc, false);
        } else {
            b.reduce(*t, acc, false);
        }
    }
    let result = if children.is_empty() && direct {
        input
    } else {
        acc
    };
    if vr != 0 {
        b.send(g, real(vr - lowbit(vr)), result);
    }
    b.round();
    if tree_root != root {
        if g.rank == tree_root {
            b.send(g, root, result);
        } else if g.rank == root {
            b.recv(g, tree_root, output);
        }
        b.round();
    }
}

/// Reduce-scatter by recursive halving over the folded ranks: on return new rank `nr` holds
/// the fully reduced block `nr` of `acc` (blocks from `blocks`, one per new rank). Returns
/// this rank's new rank, `None` if it folded away. Commutative ops only.
///
/// `acc` (same layout as `input`) need not hold anything yet: sends made before anything is
/// reduced into it take their bytes from `input`, and the first reduction writes its part
/// of `acc` from `input` and the peer's part in one pass ([`Builder::reduce_from`]; when
/// `input` is not the send buffer, that part is copied first, in the round that waits for
/// the peer's). A rank that folds away copies nothing, the others touch half of the vector
/// (power-of-two sizes) instead of all of it; the blocks given away are never needed in
/// `acc`.
pub(crate) fn halving(
    b: &mut Builder,
    g: &Group,
    input: Span,
    acc: Span,
    blocks: &Blocks,
) -> Option<u32> {
    let f = Fold::new(g.size());
    let r = g.rank;
    let n = acc.len;
    let t = Span::new(b.tmp(n), 0, n);
    // Whether nothing has been written to `acc` yet (the data is still only in `input`).
    let mut pristine = true;
    if r < 2 * f.rem {
        if r.is_multiple_of(2) {
            b.send(g, r + 1, input);
            b.round();
            return None;
        }
        b.recv(g, r - 1, t);
        if input.buf == Buf::Send {
            b.round();
            b.reduce_from(t, input, acc, true);
        } else {
            b.copy(input, acc);
            b.round();
            b.reduce(t, acc, true);
        }
        pristine = false;
    }
    let nr = f.newrank(r).expect("odd and upper ranks stay");
    let (mut lo, mut hi) = (0, f.pof2);
    let mut mask = f.pof2 >> 1;
    while mask > 0 {
        let pnr = nr ^ mask;
        let mid = (lo + hi) / 2;
        let (keep, give) = if nr & mask == 0 {
            ((lo, mid), (mid, hi))
        } else {
            ((mid, hi), (lo, mid))
        };
        let gs = blocks.range(acc.buf, give.0, give.1);
        let ks = blocks.range(acc.buf, keep.0, keep.1);
        let gs = Span::new(acc.buf, acc.off + gs.off, gs.len);
        let ks = Span::new(acc.buf, acc.off + ks.off, ks.len);
        let tk = t.sub(ks.off - acc.off, ks.len);
        if gs.len > 0 {
            let from = if pristine {
                input.sub(gs.off - acc.off, gs.len)
            } else {
                gs
            };
            b.send(g, f.real(pnr), from);
        }
        if ks.len > 0 {
            b.recv(g, f.real(pnr), tk);
        }
        // The first reduction takes this rank's part straight from the send buffer (one
        // pass: `ks = tk op input`); from elsewhere it is copied first, while the peer's
        // part is on its way.
        let mine = input.sub(ks.off - acc.off, ks.len);
        let fuse = pristine && input.buf == Buf::Send;
        if pristine && !fuse {
            b.copy(mine, ks);
        }
        b.round();
        if fuse {
            b.reduce_from(tk, mine, ks, pnr < nr);
        } else {
            b.reduce(tk, ks, pnr < nr);
        }
        pristine = false;
        (lo, hi) = keep;
        mask >>= 1;
    }
    if pristine {
        // One new rank (nothing exchanged): the whole vector is its block.
        b.copy(input, acc);
    }
    Some(nr)
}

/// Rabenseifner reduce: recursive-halving reduce-scatter, then a binomial gather of the
/// blocks to new rank 0, which hands the result to `root`. Commutative ops only.
pub fn rabenseifner(b: &mut Builder, g: &Group, root: u32, input: Span, output: Span, elem: usize) {
    let p = g.size();
    let n = input.len;
    if p == 1 {
        b.copy(input, output);
        b.round();
        return;
    }
    let f = Fold::new(p);
    let acc = Span::new(b.tmp(n), 0, n);
    let blocks = Blocks::split(n / elem, elem, f.pof2);
    let blk = |a: u32, c: u32| {
        let s = blocks.range(Buf::Send, a, c);
        acc.sub(s.off, s.len)
    };
    if let Some(nr) = halving(b, g, input, acc, &blocks) {
        let (lo, mut hi) = (nr, nr + 1);
        let mut mask = 1;
        while mask < f.pof2 {
            if nr & mask != 0 {
                let s = blk(lo, hi);
                if s.len > 0 {
                    b.send(g, f.real(nr - mask), s);
                }
                b.round();
                break;
            }
            let s = blk(nr + mask, nr + 2 * mask);
            if s.len > 0 {
                b.recv(g, f.real(nr + mask), s);
            }
            b.round();
            hi = nr + 2 * mask;
            mask <<= 1;
        }
        let _ = hi;
    }
    let holder = f.real(0);
    if g.rank == holder {
        if holder == root {
            b.copy(acc, output);
        } else {
            b.send(g, root, acc);
        }
    } else if g.rank == root {
        b.recv(g, holder, output);
    }
    b.round();
}

/// Hierarchical reduce: binomial inside each node to its leader (the root leads its node),
/// then binomial among leaders to the root. Commutative ops only.
pub fn hierarchical(
    b: &mut Builder,
    rank: u32,
    root: u32,
    topo: &Topology,
    input: Span,
    output: Span,
) {
    let leaders = topo.leaders(Some(root));
    let local_members = topo.local_members(rank);
    let my_leader = *local_members
        .iter()
        .find(|m| leaders.contains(m))
        .expect("every node has a leader");
    let local = Group::of(rank, local_members.clone());
    let lroot = local_members
        .iter()
        .position(|&m| m == my_leader)
        .expect("leader is local") as u32;
    let n = input.len;
    let mid = if rank == root {
        output
    } else {
        Span::new(b.tmp(n), 0, n)
    };
    binomial(b, &local, lroot, input, mid, true);
    if my_leader == rank {
        let lg = Group::of(rank, leaders.clone());
        let lr = leaders.iter().position(|&l| l == root).expect("root leads") as u32;
        binomial(b, &lg, lr, mid, output, true);
    }
}
