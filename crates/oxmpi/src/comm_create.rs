//! New communicators (MPI chapter 7): dup, split, split by node, create from a group, and
//! intercommunicators (create, merge).
//!
//! Context ids: each communicator owns a pair of matching contexts (point-to-point and
//! collectives). Every process keeps a bit mask of the ids it has free; a new communicator's
//! id is agreed by a bitwise-AND allreduce of the masks over the parent (MPICH's scheme), so it
//! is free on every participant whatever communicators each of them created before — which
//! makes concurrent splits of overlapping communicators safe. The id goes back to the local
//! pool when the communicator's last handle is dropped.

use crate::comm::Communicator;
use crate::group::Group;
use crate::progress::State;
use crate::{Error, Op};
use serde::{Deserialize, Serialize};

/// Words of the free-context mask: 1024 ids.
pub(crate) const CTX_WORDS: usize = 16;
/// Contexts below this belong to the world and self communicators.
const FIRST_DYNAMIC_CTX: u32 = 4;

/// A fresh mask: every id free.
pub(crate) fn all_free() -> Vec<u64> {
    vec![u64::MAX; CTX_WORDS]
}

fn ctx_of(id: usize) -> u32 {
    FIRST_DYNAMIC_CTX + 2 * id as u32
}

/// Gives a communicator's context id back to this process's pool.
pub(crate) fn release_ctx(state: &State, ctx: u32) {
    if ctx >= FIRST_DYNAMIC_CTX {
        let id = ((ctx - FIRST_DYNAMIC_CTX) / 2) as usize;
        if let Ok(mut m) = state.free_ctx.try_borrow_mut() {
            m[id / 64] |= 1 << (id % 64);
        }
    }
}

/// Takes the lowest id free in `mask` out of this process's pool.
fn claim_lowest(state: &State, mask: &[u64]) -> Result<u32, Error> {
    let (w, bits) = mask
        .iter()
        .enumerate()
        .find(|(_, b)| **b != 0)
        .ok_or(Error::NoContext)?;
    let id = w * 64 + bits.trailing_zeros() as usize;
    state.free_ctx.borrow_mut()[id / 64] &= !(1u64 << (id % 64));
    Ok(ctx_of(id))
}

impl Communicator {
    /// The ids free on every rank of this communicator (collective).
    fn free_everywhere(&self) -> Result<Vec<u64>, Error> {
        let mine = self.state.free_ctx.borrow().clone();
        let mut all = vec![0u64; CTX_WORDS];
        self.allreduce(&mine, &mut all, Op::Band)?;
        Ok(all)
    }

    /// A context id agreed on by every rank of this communicator (collective).
    fn agree_ctx(&self) -> Result<u32, Error> {
        let mask = self.free_everywhere()?;
        claim_lowest(&self.state, &mask)
    }

    /// The group of this communicator (`MPI_Comm_group`).
    pub fn group(&self) -> Group {
        (*self.group).clone()
    }

    /// A copy with its own contexts: its messages never match this one's (`MPI_Comm_dup`).
    pub fn dup(&self) -> Result<Communicator, Error> {
        let ctx = self.agree_ctx()?;
        Ok(Communicator::with_release(
            self.state.clone(),
            self.group(),
            ctx,
            true,
        ))
    }

    /// Splits by `colour` (`MPI_Comm_split`): ranks passing the same colour form a new
    /// communicator, ordered by `key` and then by rank here; `None` (`MPI_UNDEFINED`) gets
    /// no communicator. Collective over this communicator.
    pub fn split(&self, colour: Option<u32>, key: i32) -> Result<Option<Communicator>, Error> {
        let p = self.size() as usize;
        let mine = [colour.map_or(-1, i64::from), i64::from(key)];
        let mut all = vec![0i64; 2 * p];
        self.allgather(&mine, &mut all)?;
        let ctx = self.agree_ctx()?;
        let Some(c) = colour else {
            release_ctx(&self.state, ctx);
            return Ok(None);
        };
        let mut members: Vec<(i64, u32)> = (0..p)
            .filter(|&r| all[2 * r] == i64::from(c))
            .map(|r| (all[2 * r + 1], r as u32))
            .collect();
        members.sort();
        let world = members
            .iter()
            .map(|&(_, r)| self.group.to_world(r))
            .collect();
        Ok(Some(Communicator::with_release(
            self.state.clone(),
            Group::of(world),
            ctx,
            true,
        )))
    }

    /// Splits into one communicator per node (`MPI_Comm_split_type` with
    /// `MPI_COMM_TYPE_SHARED`), ordered by `key` then rank. `OXMPI_NODE_SIZE=k` makes every
    /// `k` consecutive world ranks a node, to try node-aware code on one host.
    pub fn split_shared(&self, key: i32) -> Result<Communicator, Error> {
        let node = self.shared.topo.node(self.rank());
        Ok(self
            .split(Some(node), key)?
            .expect("a colour was given, so a communicator comes back"))
    }

    /// The communicator of `group`'s ranks (`MPI_Comm_create`); `None` on ranks outside it.
    /// `group` must be a subset of this communicator's group, the same on every rank.
    pub fn create(&self, group: &Group) -> Result<Option<Communicator>, Error> {
        for &w in group.world_ranks() {
            if self.group.from_world(w).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "create: world rank {w} is not in this communicator"
                )));
            }
        }
        let ctx = self.agree_ctx()?;
        if group.from_world(self.state.rank).is_none() {
            release_ctx(&self.state, ctx);
            return Ok(None);
        }
        Ok(Some(Communicator::with_release(
            self.state.clone(),
            group.clone(),
            ctx,
            true,
        )))
    }

    /// Makes an intercommunicator between this communicator's group and another disjoint
    /// group (`MPI_Intercomm_create`): `local_leader` here and `remote_leader` (a rank of
    /// `peer`) in the other group talk over `peer` with `tag`. Collective over this
    /// communicator.
    pub fn intercomm_create(
        &self,
        local_leader: u32,
        peer: &Communicator,
        remote_leader: u32,
        tag: i32,
    ) -> Result<InterComm, Error> {
        crate::progress::check_rank(local_leader, self.size())?;
        let mask = self.free_everywhere()?;
        let mut agreed = Agreement::default();
        if self.rank() == local_leader {
            let mine = Agreement {
                mask: mask.clone(),
                ranks: self.group.world_ranks().to_vec(),
                high: false,
            };
            let req = peer.isend_obj(&mine, remote_leader, tag)?;
            let (theirs, _): (Agreement, _) = peer.recv_obj(remote_leader, tag)?;
            req.wait()?;
            agreed = Agreement {
                mask: mask.iter().zip(&theirs.mask).map(|(a, b)| a & b).collect(),
                ranks: theirs.ranks,
                high: false,
            };
        }
        let agreed = self.bcast_obj(
            (self.rank() == local_leader).then_some(agreed),
            local_leader,
        )?;
        for &w in &agreed.ranks {
            if self.group.from_world(w).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "intercomm_create: world rank {w} is in both groups"
                )));
            }
        }
        let ctx = claim_lowest(&self.state, &agreed.mask)?;
        Ok(InterComm::new(self, Group::of(agreed.ranks), ctx))
    }
}

/// What two leaders exchange to set up an intercommunicator or merge one.
#[derive(Default, Serialize, Deserialize)]
struct Agreement {
    mask: Vec<u64>,
    ranks: Vec<u32>,
    high: bool,
}

/// An intercommunicator (`MPI_Comm` with a remote group): point-to-point messages go to
/// ranks of the remote group; [`merge`](Self::merge) makes an intracommunicator of both.
pub struct InterComm {
    local: Communicator,
    remote: Communicator,
}

impl std::fmt::Debug for InterComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InterComm(rank {} of {}, remote size {})",
            self.rank(),
            self.size(),
            self.remote_size()
        )
    }
}

impl InterComm {
    fn new(local: &Communicator, remote: Group, ctx: u32) -> Self {
        let remote = Communicator::with_rank(local.state.clone(), remote, ctx, local.rank(), true);
        Self {
            local: local.clone(),
            remote,
        }
    }

    /// This rank in the local group.
    pub fn rank(&self) -> u32 {
        self.local.rank()
    }

    /// Size of the local group.
    pub fn size(&self) -> u32 {
        self.local.size()
    }

    /// Size of the remote group (`MPI_Comm_remote_size`).
    pub fn remote_size(&self) -> u32 {
        self.remote.size()
    }

    /// The remote group (`MPI_Comm_remote_group`).
    pub fn remote_group(&self) -> Group {
        self.remote.group()
    }

    /// The intracommunicator of the local group this was created from.
    pub fn local(&self) -> &Communicator {
        &self.local
    }

    /// Point-to-point to the remote group: `dest` and sources are remote ranks.
    pub fn remote(&self) -> &Communicator {
        &self.remote
    }

    /// Sends to rank `dest` of the remote group.
    pub fn send<T: bytemuck::Pod>(&self, buf: &[T], dest: u32, tag: i32) -> Result<(), Error> {
        self.remote.send(buf, dest, tag)
    }

    /// Receives from the remote group.
    pub fn recv_into<T: bytemuck::Pod>(
        &self,
        buf: &mut [T],
        source: impl Into<crate::Source>,
        tag: impl Into<crate::Tag>,
    ) -> Result<crate::Status, Error> {
        self.remote.recv_into(buf, source, tag)
    }

    /// Sends a value to rank `dest` of the remote group.
    pub fn send_obj<S: Serialize + ?Sized>(
        &self,
        obj: &S,
        dest: u32,
        tag: i32,
    ) -> Result<(), Error> {
        self.remote.send_obj(obj, dest, tag)
    }

    /// Receives a value from the remote group.
    pub fn recv_obj<D: serde::de::DeserializeOwned>(
        &self,
        source: impl Into<crate::Source>,
        tag: impl Into<crate::Tag>,
    ) -> Result<(D, crate::Status), Error> {
        self.remote.recv_obj(source, tag)
    }

    /// An intracommunicator of both groups (`MPI_Intercomm_merge`): the group whose ranks
    /// pass `high = false` comes first; if both pass the same, the group with the lower
    /// leader world rank does. Collective over both groups.
    pub fn merge(&self, high: bool) -> Result<Communicator, Error> {
        const TAG: i32 = 0x4d52; // leaders' exchange, on the intercommunicator's own context
        let mask = self.local.free_everywhere()?;
        let mut agreed = Agreement::default();
        if self.rank() == 0 {
            let mine = Agreement {
                mask: mask.clone(),
                ranks: Vec::new(),
                high,
            };
            let req = self.remote.isend_obj(&mine, 0, TAG)?;
            let (theirs, _): (Agreement, _) = self.remote.recv_obj(0, TAG)?;
            req.wait()?;
            let local_first = if high != theirs.high {
                !high
            } else {
                self.local.group.to_world(0) < self.remote.group.to_world(0)
            };
            agreed = Agreement {
                mask: mask.iter().zip(&theirs.mask).map(|(a, b)| a & b).collect(),
                ranks: Vec::new(),
                high: !local_first,
            };
        }
        let agreed = self
            .local
            .bcast_obj((self.rank() == 0).then_some(agreed), 0)?;
        let ctx = claim_lowest(&self.local.state, &agreed.mask)?;
        let (l, r) = (
            self.local.group.world_ranks(),
            self.remote.group.world_ranks(),
        );
        let ranks = if agreed.high {
            [r, l].concat()
        } else {
            [l, r].concat()
        };
        Ok(Communicator::with_release(
            self.local.state.clone(),
            Group::of(ranks),
            ctx,
            true,
        ))
    }
}
