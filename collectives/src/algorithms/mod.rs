//! The algorithms: each a function that appends one rank's steps for a collective to a
//! [`Builder`](crate::schedule::Builder), over a [`Group`](crate::schedule::Group) of ranks.
//!
//! Buffers are passed as spans and layouts so algorithms compose: the hierarchical ones are an
//! intra-node phase, a phase among node leaders and another intra-node phase, each an ordinary
//! algorithm on a sub-group.

pub mod allgather;
pub mod allreduce;
pub mod alltoall;
pub mod barrier;
pub mod bcast;
pub mod gather;
pub mod reduce;
pub mod reduce_scatter;
pub mod scan;
pub mod scatter;

use crate::schedule::{Buf, Span};

/// Largest power of two not above `p` (`p >= 1`).
pub fn pof2_floor(p: u32) -> u32 {
    1 << (31 - p.leading_zeros())
}

/// Lowest set bit of `x`.
pub fn lowbit(x: u32) -> u32 {
    x & x.wrapping_neg()
}

/// How recursive algorithms run on `p` ranks that are not a power of two: the first
/// `2 * rem` ranks pair up (even into odd) so that `pof2` "new ranks" remain. New rank `j`
/// stands for the original ranks `first(j)..first(j + 1)`, in order, so a range of new ranks
/// is a range of original ranks and rank order (non-commutative ops) is kept.
#[derive(Clone, Copy, Debug)]
pub struct Fold {
    pub p: u32,
    pub pof2: u32,
    pub rem: u32,
}

impl Fold {
    pub fn new(p: u32) -> Self {
        let pof2 = pof2_floor(p);
        Self {
            p,
            pof2,
            rem: p - pof2,
        }
    }

    /// New rank of original rank `r`; `None` for the even ranks that fold into their odd
    /// neighbour.
    pub fn newrank(&self, r: u32) -> Option<u32> {
        if r < 2 * self.rem {
            (!r.is_multiple_of(2)).then_some(r / 2)
        } else {
            Some(r - self.rem)
        }
    }

    /// Original rank that acts for new rank `nr`.
    pub fn real(&self, nr: u32) -> u32 {
        if nr < self.rem {
            2 * nr + 1
        } else {
            nr + self.rem
        }
    }

    /// First original rank that new rank `nr` stands for (`p` for `nr == pof2`).
    pub fn first(&self, nr: u32) -> u32 {
        if nr < self.rem {
            2 * nr
        } else {
            nr + self.rem
        }
    }
}

/// Byte layout of per-rank blocks in a buffer: block `i` is `counts[i]` bytes at `displs[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub counts: Vec<usize>,
    pub displs: Vec<usize>,
}

impl Blocks {
    /// Blocks stored one after another in rank order.
    pub fn packed(counts: Vec<usize>) -> Self {
        let mut displs = Vec::with_capacity(counts.len());
        let mut off = 0;
        for c in &counts {
            displs.push(off);
            off += c;
        }
        Self { counts, displs }
    }

    /// `p` blocks of `len` bytes, packed.
    pub fn equal(p: u32, len: usize) -> Self {
        Self::packed(vec![len; p as usize])
    }

    /// `count` elements of `elem` bytes split into `p` blocks as evenly as possible (the
    /// first `count % p` blocks one element longer), packed.
    pub fn split(count: usize, elem: usize, p: u32) -> Self {
        let (q, r) = (count / p as usize, count % p as usize);
        Self::packed(
            (0..p as usize)
                .map(|i| (q + usize::from(i < r)) * elem)
                .collect(),
        )
    }

    pub fn is_packed(&self) -> bool {
        let mut off = 0;
        for (c, d) in self.counts.iter().zip(&self.displs) {
            if *d != off {
                return false;
            }
            off += c;
        }
        true
    }

    /// Bytes of blocks `a..b` (packed layouts).
    pub fn bytes(&self, a: u32, b: u32) -> usize {
        self.counts[a as usize..b as usize].iter().sum()
    }

    /// Total bytes.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Block `i` of `buf`.
    pub fn span(&self, buf: Buf, i: u32) -> Span {
        Span::new(buf, self.displs[i as usize], self.counts[i as usize])
    }

    /// Blocks `a..b` of `buf` as one span (packed layouts only).
    pub fn range(&self, buf: Buf, a: u32, b: u32) -> Span {
        let off = if (a as usize) < self.displs.len() {
            self.displs[a as usize]
        } else {
            self.total()
        };
        Span::new(buf, off, self.bytes(a, b))
    }
}
