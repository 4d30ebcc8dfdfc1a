//! Persistent collectives (MPI-4 `MPI_*_init`, then `MPI_Start` many times): every collective
//! of [`Communicator`] on `Pod` buffers has one.
//!
//! An `*_init` call checks the arguments, picks the algorithm and builds the schedule once,
//! from element counts (and the counts and displacements of the v-forms). The [`Persistent`]
//! plan it returns runs the collective on any buffers of the lengths it was made for: blocking
//! with [`Persistent::run`], or started on a [`Scope`] with [`Scope::start_persistent`] and
//! completed like any nonblocking collective. Every rank of the communicator must make the
//! same plans in the same order and run them in the same order, as with the other forms.
//!
//! Buffer lengths are checked at every start: exactly the count for fixed-size buffers, at
//! least the reach of the counts and displacements (`max(displs[i] + counts[i])`) for the
//! v-forms' laid-out buffers. Arguments significant only at the root (a gather's or reduce's
//! receive buffer, a scatter's send buffer, the v-forms' layouts there) are ignored elsewhere,
//! whatever their length, as the blocking forms ignore them. A plan runs on the communicator it
//! was made on, also when a scope of another communicator starts it.

use crate::collective::{bytes, bytes_mut, len_check, Call, CollRequest, Len};
use crate::comm::Communicator;
use crate::request::Scope;
use crate::Error;
use bytemuck::Pod;
use oxmpi_collectives::exec::Run;
use oxmpi_collectives::exec_small::SmallRun;
use oxmpi_collectives::registry::Spec;
use oxmpi_collectives::{Kernel, ReduceOp, Schedule};
use oxmpi_fabric::{lend_scope, Region};
use std::marker::PhantomData;
use std::rc::Rc;
use Extent::{AtLeast, Exact, Unused};

/// How long a persistent collective's buffer must be, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extent {
    /// Exactly this many: the counts fix the length.
    Exact(usize),
    /// At least this many: a v-form's counts and displacements reach this far.
    AtLeast(usize),
    /// Not used on this rank (a buffer only the root reads or writes): any length is taken,
    /// as the blocking form takes it, and nothing of it is lent.
    Unused,
}

impl Extent {
    /// The buffer length the plan is built with.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Exact(n) | Self::AtLeast(n) => n,
            Self::Unused => 0,
        }
    }

    pub(crate) fn check(self, buffer: &'static str, got: usize) -> Result<(), Error> {
        const WHAT: &str = "persistent collective";
        match self {
            Self::Exact(n) => len_check(WHAT, buffer, got, n),
            Self::AtLeast(n) if got >= n => Ok(()),
            Self::Unused => Ok(()),
            Self::AtLeast(n) => Err(Error::BufferSize {
                what: WHAT,
                buffer,
                expected: n,
                got,
            }),
        }
    }
}

/// How far `counts` elements at `displs` reach into a buffer (0 for no blocks; `None` past
/// `usize`).
pub(crate) fn reach(counts: &[usize], displs: &[usize]) -> Option<usize> {
    counts
        .iter()
        .zip(displs)
        .try_fold(0, |m: usize, (c, d)| Some(m.max(c.checked_add(*d)?)))
}

/// `n` elements of `T` (`None`: an overflowed count), refused when their bytes could not
/// exist in memory: no buffer of that length could ever be passed, and the byte sizes
/// computed from it would overflow.
pub(crate) fn elems<T>(n: Option<usize>) -> Result<usize, Error> {
    n.filter(|n| {
        n.checked_mul(std::mem::size_of::<T>())
            .is_some_and(|b| b <= isize::MAX as usize)
    })
    .ok_or_else(|| {
        Error::InvalidArgument(
            "persistent collective: the counts reach beyond addressable memory".into(),
        )
    })
}

/// A persistent collective (`MPI_Allreduce_init` and friends): arguments checked, algorithm
/// chosen and schedule built once; each [`run`](Self::run) or
/// [`Scope::start_persistent`] executes it on buffers of the lengths it was made for.
pub struct Persistent<T> {
    comm: Communicator,
    spec: Spec,
    sched: Rc<Schedule>,
    kernel: Option<Rc<dyn Kernel>>,
    send: Extent,
    recv: Extent,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Persistent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Persistent({:?})", self.spec.coll())
    }
}

impl<T: Pod> Persistent<T> {
    /// Builds a plan from `call`, made from the `send` and `recv` lengths.
    pub(crate) fn new(
        comm: &Communicator,
        call: Call<'_>,
        send: Extent,
        recv: Extent,
    ) -> Result<Self, Error> {
        let sched = comm.schedule(&call.spec)?;
        Ok(Self {
            comm: comm.clone(),
            spec: call.spec,
            sched,
            kernel: call.kernel,
            send,
            recv,
            _t: PhantomData,
        })
    }

    fn check(&self, send: &[T], recv: &[T]) -> Result<(), Error> {
        self.send.check("send", send.len())?;
        self.recv.check("receive", recv.len())
    }

    /// The bytes of `send` the run reads (none where the plan does not use it).
    fn send_part<'b>(&self, send: &'b [T]) -> &'b [u8] {
        if self.send == Unused {
            &[]
        } else {
            bytes(send)
        }
    }

    /// The bytes of `recv` the run writes (none where the plan does not use it).
    fn recv_part<'b>(&self, recv: &'b mut [T]) -> &'b mut [u8] {
        if self.recv == Unused {
            &mut []
        } else {
            bytes_mut(recv)
        }
    }

    /// The communicator the plan runs on.
    pub(crate) fn comm(&self) -> &Communicator {
        &self.comm
    }

    /// A run of the plan on `send` and `recv` (lent or owned by the caller, lengths checked).
    pub(crate) fn new_run(&self, send: Region, recv: Region) -> Run {
        self.comm.new_run(
            self.sched.clone(),
            self.spec.coll(),
            send,
            recv,
            self.kernel.clone(),
        )
    }

    /// Whether a blocking run takes the small executor ([`SmallRun`]).
    pub(crate) fn is_small(&self) -> bool {
        SmallRun::takes(&self.sched)
    }

    /// A blocking run on the small executor, on the bytes it reads and writes (checked).
    pub(crate) fn run_small(&self, send: &[u8], recv: &mut [u8]) -> Result<(), Error> {
        let (coll, kernel) = (self.spec.coll(), self.kernel.clone());
        self.comm
            .run_small(self.sched.clone(), coll, send, recv, kernel)
    }

    /// Runs the collective once and waits for it.
    pub fn run(&self, send: &[T], recv: &mut [T]) -> Result<(), Error> {
        self.check(send, recv)?;
        let c = &self.comm;
        if self.is_small() {
            return self.run_small(self.send_part(send), self.recv_part(recv));
        }
        lend_scope(
            |l| {
                let run = self.new_run(
                    l.lend_region(self.send_part(send)),
                    l.lend_region_mut(self.recv_part(recv)),
                );
                c.drive(run)
            },
            |done| c.state.wait_until(|_| done()),
        )
    }
}

impl<'s> Scope<'s, '_> {
    /// Starts a persistent collective (`MPI_Start`) on buffers of the lengths it was made for.
    /// It runs on the communicator the plan was made on, whichever communicator's scope lends
    /// the buffers.
    pub fn start_persistent<T: Pod>(
        &self,
        plan: &Persistent<T>,
        send: &'s [T],
        recv: &'s mut [T],
    ) -> Result<CollRequest<'s>, Error> {
        plan.check(send, recv)?;
        let run = plan.new_run(
            self.lender().lend_region(plan.send_part(send)),
            self.lender().lend_region_mut(plan.recv_part(recv)),
        );
        Ok(self.start_run(&plan.comm, run))
    }
}

/// Persistent collectives (MPI-4 `MPI_*_init`): made from element counts, run many times.
/// Each takes what its blocking form takes, with counts in place of the buffers; a plan runs
/// with `send` and `recv` buffers as the blocking form would get them (buffers only the root
/// uses may have any length elsewhere; `barrier_init` and `bcast_init` take an empty `send`).
impl Communicator {
    /// The size of this communicator as a multiplier of counts.
    fn times_size(&self, count: usize) -> Option<usize> {
        count.checked_mul(self.size() as usize)
    }

    /// `extent` if this rank is `root`, else [`Unused`] (a buffer only the root uses).
    fn at_root(&self, root: u32, extent: Extent) -> Extent {
        if self.rank() == root {
            extent
        } else {
            Unused
        }
    }

    /// `MPI_Barrier_init`: run with empty buffers.
    pub fn barrier_init(&self) -> Result<Persistent<u8>, Error> {
        Persistent::new(self, self.call_barrier(), Exact(0), Exact(0))
    }

    /// `MPI_Bcast_init` for `count` elements: run with an empty `send` and the buffer as `recv`.
    pub fn bcast_init<T: Pod>(&self, count: usize, root: u32) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_bcast::<T>(Len(count), root)?;
        Persistent::new(self, call, Exact(0), Exact(count))
    }

    /// `MPI_Reduce_init` for `count` elements (`recv` of `count` at the root, unused
    /// elsewhere).
    pub fn reduce_init<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
        root: u32,
    ) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let recv = self.at_root(root, Exact(count));
        let call = self.call_reduce::<T, O>(Len(count), Len(recv.len()), op, root)?;
        Persistent::new(self, call, Exact(count), recv)
    }

    /// `MPI_Allreduce_init` for `count` elements.
    pub fn allreduce_init<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_allreduce::<T, O>(Len(count), Len(count), op)?;
        Persistent::new(self, call, Exact(count), Exact(count))
    }

    /// `MPI_Gather_init` for blocks of `count` elements (`recv` of `count × size` at the
    /// root, unused elsewhere).
    pub fn gather_init<T: Pod>(&self, count: usize, root: u32) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let recv = self.at_root(root, Exact(elems::<T>(self.times_size(count))?));
        let call = self.call_gather::<T>(Len(count), Len(recv.len()), root)?;
        Persistent::new(self, call, Exact(count), recv)
    }

    /// `MPI_Gatherv_init`: this rank sends `send_count` elements; at the root, rank `i`'s
    /// land at `displs[i]` of `recv` (`counts`, `displs` and `recv` are used only there).
    pub fn gatherv_init<T: Pod>(
        &self,
        send_count: usize,
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<Persistent<T>, Error> {
        let send = elems::<T>(Some(send_count))?;
        let recv = if self.rank() == root {
            AtLeast(elems::<T>(reach(counts, displs))?)
        } else {
            Unused
        };
        let call = self.call_gatherv::<T>(Len(send), Len(recv.len()), counts, displs, root)?;
        Persistent::new(self, call, Exact(send), recv)
    }

    /// `MPI_Scatter_init` for blocks of `count` elements (`send` of `count × size` at the
    /// root, unused elsewhere).
    pub fn scatter_init<T: Pod>(&self, count: usize, root: u32) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let send = self.at_root(root, Exact(elems::<T>(self.times_size(count))?));
        let call = self.call_scatter::<T>(Len(send.len()), Len(count), root)?;
        Persistent::new(self, call, send, Exact(count))
    }

    /// `MPI_Scatterv_init`: at the root, `counts[i]` elements at `displs[i]` of `send` go to
    /// rank `i` (`counts`, `displs` and `send` are used only there); this rank receives
    /// `recv_count`.
    pub fn scatterv_init<T: Pod>(
        &self,
        counts: &[usize],
        displs: &[usize],
        recv_count: usize,
        root: u32,
    ) -> Result<Persistent<T>, Error> {
        let send = if self.rank() == root {
            AtLeast(elems::<T>(reach(counts, displs))?)
        } else {
            Unused
        };
        let recv = elems::<T>(Some(recv_count))?;
        let call = self.call_scatterv::<T>(Len(send.len()), counts, displs, Len(recv), root)?;
        Persistent::new(self, call, send, Exact(recv))
    }

    /// `MPI_Allgather_init` for blocks of `count` elements.
    pub fn allgather_init<T: Pod>(&self, count: usize) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let all = elems::<T>(self.times_size(count))?;
        let call = self.call_allgather::<T>(Len(count), Len(all))?;
        Persistent::new(self, call, Exact(count), Exact(all))
    }

    /// `MPI_Allgatherv_init`: rank `i` contributes `counts[i]` elements, placed at
    /// `displs[i]` of every rank's `recv`.
    pub fn allgatherv_init<T: Pod>(
        &self,
        counts: &[usize],
        displs: &[usize],
    ) -> Result<Persistent<T>, Error> {
        let mine = elems::<T>(Some(counts.get(self.rank() as usize).copied().unwrap_or(0)))?;
        let recv = AtLeast(elems::<T>(reach(counts, displs))?);
        let call = self.call_allgatherv::<T>(Len(mine), Len(recv.len()), counts, displs)?;
        Persistent::new(self, call, Exact(mine), recv)
    }

    /// `MPI_Alltoall_init` for blocks of `count` elements to and from each rank.
    pub fn alltoall_init<T: Pod>(&self, count: usize) -> Result<Persistent<T>, Error> {
        let n = elems::<T>(self.times_size(count))?;
        let call = self.call_alltoall::<T>(Len(n), Len(n))?;
        Persistent::new(self, call, Exact(n), Exact(n))
    }

    /// `MPI_Alltoallv_init`: `send_counts[i]` elements at `send_displs[i]` go to rank `i`,
    /// and rank `i`'s `recv_counts[i]` land at `recv_displs[i]`.
    pub fn alltoallv_init<T: Pod>(
        &self,
        send_counts: &[usize],
        send_displs: &[usize],
        recv_counts: &[usize],
        recv_displs: &[usize],
    ) -> Result<Persistent<T>, Error> {
        let send = AtLeast(elems::<T>(reach(send_counts, send_displs))?);
        let recv = AtLeast(elems::<T>(reach(recv_counts, recv_displs))?);
        let call = self.call_alltoallv::<T>(
            Len(send.len()),
            send_counts,
            send_displs,
            Len(recv.len()),
            recv_counts,
            recv_displs,
        )?;
        Persistent::new(self, call, send, recv)
    }

    /// `MPI_Reduce_scatter_block_init`: reduces `count × size` elements, each rank keeping
    /// its block of `count`.
    pub fn reduce_scatter_block_init<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let all = elems::<T>(self.times_size(count))?;
        let call = self.call_reduce_scatter_block::<T, O>(Len(all), Len(count), op)?;
        Persistent::new(self, call, Exact(all), Exact(count))
    }

    /// `MPI_Reduce_scatter_init`: reduces `counts.iter().sum()` elements, rank `i` keeping
    /// the `counts[i]` of its block.
    pub fn reduce_scatter_init<T: Pod, O: ReduceOp<T>>(
        &self,
        counts: &[usize],
        op: O,
    ) -> Result<Persistent<T>, Error> {
        let all = elems::<T>(counts.iter().try_fold(0usize, |a, c| a.checked_add(*c)))?;
        let mine = counts.get(self.rank() as usize).copied().unwrap_or(0);
        let call = self.call_reduce_scatter::<T, O>(Len(all), Len(mine), counts, op)?;
        Persistent::new(self, call, Exact(all), Exact(mine))
    }

    /// `MPI_Scan_init` for `count` elements.
    pub fn scan_init<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_scan::<T, O>(Len(count), Len(count), op, false)?;
        Persistent::new(self, call, Exact(count), Exact(count))
    }

    /// `MPI_Exscan_init` for `count` elements (rank 0's `recv` is left as it was).
    pub fn exscan_init<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<Persistent<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_scan::<T, O>(Len(count), Len(count), op, true)?;
        Persistent::new(self, call, Exact(count), Exact(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_check_exact_and_minimum_lengths() {
        assert!(Extent::Exact(3).check("send", 3).is_ok());
        assert!(matches!(
            Extent::Exact(3).check("send", 4),
            Err(Error::BufferSize {
                expected: 3,
                got: 4,
                ..
            })
        ));
        assert!(Extent::AtLeast(3).check("receive", 5).is_ok());
        assert!(matches!(
            Extent::AtLeast(3).check("receive", 2),
            Err(Error::BufferSize {
                expected: 3,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn reach_is_the_furthest_block_end() {
        assert_eq!(reach(&[], &[]), Some(0));
        assert_eq!(reach(&[2, 0, 1], &[5, 9, 0]), Some(9));
        assert_eq!(reach(&[1], &[usize::MAX]), None);
    }

    #[test]
    fn element_counts_beyond_memory_are_refused() {
        assert_eq!(elems::<u64>(Some(10)).unwrap(), 10);
        assert!(elems::<u64>(Some(usize::MAX / 4)).is_err());
        assert!(elems::<u8>(None).is_err());
    }
}
