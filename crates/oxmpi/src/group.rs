//! The ranks of a communicator, as world ranks.

/// An ordered set of world ranks; a communicator's rank `i` is world rank `ranks[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    ranks: Vec<u32>,
    identity: bool,
}

impl Group {
    /// The world group of `size` ranks.
    pub fn world(size: u32) -> Self {
        Self {
            ranks: (0..size).collect(),
            identity: true,
        }
    }

    /// A group of the given world ranks, in order.
    pub fn of(ranks: Vec<u32>) -> Self {
        let identity = ranks.iter().enumerate().all(|(i, r)| i as u32 == *r);
        Self { ranks, identity }
    }

    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.ranks.len() as u32
    }

    /// World rank of group rank `r` (which must be in range).
    #[inline]
    pub fn to_world(&self, r: u32) -> u32 {
        if self.identity {
            r
        } else {
            self.ranks[r as usize]
        }
    }

    /// Group rank of world rank `w`, if it is a member.
    #[inline]
    pub fn from_world(&self, w: u32) -> Option<u32> {
        if self.identity {
            return (w < self.size()).then_some(w);
        }
        self.ranks.iter().position(|&r| r == w).map(|i| i as u32)
    }
}
