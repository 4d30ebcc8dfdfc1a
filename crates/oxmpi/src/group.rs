//! Process groups (`MPI_Group`): ordered sets of ranks, with MPI's set operations.
//!
//! A group lists world ranks; rank `i` of the group is its `i`-th entry. Groups come from
//! [`Communicator::group`](crate::Communicator::group) and make communicators with
//! [`Communicator::create`](crate::Communicator::create).

use crate::Error;

/// An ordered set of world ranks; a communicator's rank `i` is world rank `ranks[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    ranks: Vec<u32>,
    identity: bool,
}

/// How two groups relate (`MPI_Group_compare`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRelation {
    /// Same members in the same order (`MPI_IDENT`).
    Identical,
    /// Same members, another order (`MPI_SIMILAR`).
    Similar,
    /// Different members (`MPI_UNEQUAL`).
    Unequal,
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

    /// The world ranks, in group order.
    pub(crate) fn world_ranks(&self) -> &[u32] {
        &self.ranks
    }

    /// Number of ranks (`MPI_Group_size`).
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

    fn check(&self, ranks: &[u32], what: &str) -> Result<(), Error> {
        for (i, &r) in ranks.iter().enumerate() {
            if r >= self.size() {
                return Err(Error::InvalidRank {
                    rank: r,
                    size: self.size(),
                });
            }
            if ranks[..i].contains(&r) {
                return Err(Error::InvalidArgument(format!(
                    "{what}: rank {r} listed twice"
                )));
            }
        }
        Ok(())
    }

    /// The group of ranks `ranks` of this group, in that order (`MPI_Group_incl`).
    pub fn incl(&self, ranks: &[u32]) -> Result<Group, Error> {
        self.check(ranks, "incl")?;
        Ok(Group::of(ranks.iter().map(|&r| self.to_world(r)).collect()))
    }

    /// This group without ranks `ranks` (`MPI_Group_excl`).
    pub fn excl(&self, ranks: &[u32]) -> Result<Group, Error> {
        self.check(ranks, "excl")?;
        Ok(Group::of(
            (0..self.size())
                .filter(|r| !ranks.contains(r))
                .map(|r| self.to_world(r))
                .collect(),
        ))
    }

    /// This group's ranks, then `other`'s that are not in it (`MPI_Group_union`).
    pub fn union(&self, other: &Group) -> Group {
        let mut ranks = self.ranks.clone();
        ranks.extend(other.ranks.iter().filter(|w| !self.ranks.contains(w)));
        Group::of(ranks)
    }

    /// This group's ranks that are also in `other`, in this group's order
    /// (`MPI_Group_intersection`).
    pub fn intersection(&self, other: &Group) -> Group {
        Group::of(
            self.ranks
                .iter()
                .copied()
                .filter(|w| other.ranks.contains(w))
                .collect(),
        )
    }

    /// This group's ranks that are not in `other` (`MPI_Group_difference`).
    pub fn difference(&self, other: &Group) -> Group {
        Group::of(
            self.ranks
                .iter()
                .copied()
                .filter(|w| !other.ranks.contains(w))
                .collect(),
        )
    }

    /// The rank in `other` of each of this group's `ranks`; `None` where it is not a member
    /// (`MPI_Group_translate_ranks`, `MPI_UNDEFINED`).
    pub fn translate_ranks(&self, ranks: &[u32], other: &Group) -> Result<Vec<Option<u32>>, Error> {
        for &r in ranks {
            crate::progress::check_rank(r, self.size())?;
        }
        Ok(ranks
            .iter()
            .map(|&r| other.from_world(self.to_world(r)))
            .collect())
    }

    /// Compares two groups (`MPI_Group_compare`).
    pub fn compare(&self, other: &Group) -> GroupRelation {
        if self.ranks == other.ranks {
            return GroupRelation::Identical;
        }
        let (mut a, mut b) = (self.ranks.clone(), other.ranks.clone());
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            GroupRelation::Similar
        } else {
            GroupRelation::Unequal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_follow_mpi_order() {
        let w = Group::world(6);
        let a = w.incl(&[4, 1, 3]).unwrap();
        let b = w.excl(&[0, 1]).unwrap(); // 2 3 4 5
        assert_eq!(a.union(&b).world_ranks(), &[4, 1, 3, 2, 5]);
        assert_eq!(a.intersection(&b).world_ranks(), &[4, 3]);
        assert_eq!(a.difference(&b).world_ranks(), &[1]);
        assert_eq!(
            a.translate_ranks(&[0, 1, 2], &b).unwrap(),
            vec![Some(2), None, Some(1)]
        );
        assert_eq!(a.compare(&a.clone()), GroupRelation::Identical);
        assert_eq!(
            a.compare(&w.incl(&[1, 3, 4]).unwrap()),
            GroupRelation::Similar
        );
        assert_eq!(a.compare(&b), GroupRelation::Unequal);
        assert!(matches!(
            w.incl(&[6]),
            Err(Error::InvalidRank { rank: 6, size: 6 })
        ));
        assert!(matches!(w.incl(&[1, 1]), Err(Error::InvalidArgument(_))));
        assert!(a.translate_ranks(&[3], &b).is_err());
    }
}
