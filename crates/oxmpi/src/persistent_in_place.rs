//! Persistent collectives with `MPI_IN_PLACE` (MPI-4 `MPI_Allreduce_init(MPI_IN_PLACE, ...)`
//! and friends): one buffer is a rank's input and its output, as in the blocking `*_in_place`
//! forms, and the plan is made once and run or started many times.
//!
//! A [`PersistentInPlace`] plan is a [`Persistent`] plan plus where its input and output lie in
//! the one buffer ([`Place`]). The input part the schedules need apart from the output (the
//! whole buffer for the reductions and alltoall(v), the rank's own block for gather(v) and
//! allgather(v)) is copied at each start into a region the plan allocated at init, so a start
//! allocates nothing; the scatter root's own block is received into that region and dropped.
//! A plan whose previous start has not completed yet refuses to start again (MPI forbids
//! starting an active request) rather than overwrite an input still being sent.

use crate::collective::{bytes, bytes_mut, Call, CollRequest, Len};
use crate::comm::Communicator;
use crate::persistent::{elems, reach, Extent, Persistent};
use crate::request::Scope;
use crate::Error;
use bytemuck::Pod;
use oxmpi_collectives::ReduceOp;
use oxmpi_fabric::{lend_scope, Lender, Region};
use std::ops::Range;
use Extent::{AtLeast, Exact, Unused};

/// Where a plan's input comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Input {
    /// A copy of these elements of the buffer, made at each start.
    Copy(Range<usize>),
    /// The buffer itself (it is not written: a gather's or reduce's buffer off the root, a
    /// scatter's at the root).
    Buffer,
    /// Nothing (a scatter off the root).
    Nothing,
}

/// Where a plan's output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Output {
    /// The first `n` elements of the buffer (all of it for the non-v forms; the rank's block
    /// for a reduce-scatter).
    Head(usize),
    /// All of the buffer, however long (the v-forms' laid-out buffers).
    Whole,
    /// The plan's own region of this many elements, dropped (the scatter root's own block,
    /// already in place).
    Scratch(usize),
    /// Nothing (a gather's or reduce's buffer off the root).
    Nothing,
}

/// How an in-place plan uses its one buffer.
#[derive(Clone, Debug)]
struct Place {
    /// How long the buffer must be.
    buffer: Extent,
    input: Input,
    output: Output,
}

/// A persistent collective on one buffer (`MPI_IN_PLACE`): made by the `*_init_in_place`
/// calls of [`Communicator`], run with [`run`](Self::run) or started with
/// [`Scope::start_persistent_in_place`]. The buffer holds what the blocking `*_in_place`
/// form of the same collective takes, and receives what it leaves.
pub struct PersistentInPlace<T> {
    plan: Persistent<T>,
    place: Place,
    /// The input copy (or the scatter root's own block), allocated once.
    scratch: Region,
}

impl<T> std::fmt::Debug for PersistentInPlace<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PersistentInPlace({:?}, {:?})", self.plan, self.place)
    }
}

impl<T: Pod> PersistentInPlace<T> {
    /// Builds a plan from `call`, whose send and receive sides were made with the lengths
    /// `place` gives them.
    fn new(comm: &Communicator, call: Call<'_>, place: Place) -> Result<Self, Error> {
        let elem = std::mem::size_of::<T>();
        let (send, scratch_len) = match &place.input {
            Input::Copy(r) => (Exact(r.len()), r.len()),
            Input::Buffer => (place.buffer, 0),
            Input::Nothing => (Unused, 0),
        };
        let (recv, scratch_len) = match place.output {
            Output::Head(n) => (Exact(n), scratch_len),
            Output::Whole => (place.buffer, scratch_len),
            Output::Scratch(n) => (Exact(n), n),
            Output::Nothing => (Unused, scratch_len),
        };
        let plan = Persistent::new(comm, call, send, recv)?;
        let scratch = match scratch_len * elem {
            0 => Region::empty(),
            b => Region::alloc(b),
        };
        Ok(Self {
            plan,
            place,
            scratch,
        })
    }

    /// Checks `buf` and the plan's state, and fills the input copy from `buf`.
    fn prepare(&self, buf: &[T]) -> Result<(), Error> {
        self.place.buffer.check("buffer", buf.len())?;
        // (An empty scratch is the shared empty region: nothing to overwrite there, and the
        // buffer itself is borrowed until its start completes.)
        if !self.scratch.is_empty() && !self.scratch.is_unique() {
            return Err(Error::InvalidArgument(
                "persistent collective started again before its last start completed".into(),
            ));
        }
        if let Input::Copy(r) = &self.place.input {
            let input = bytes(&buf[r.clone()]);
            self.scratch
                .write(0..input.len(), |d| d.copy_from_slice(input))
                .map_err(|e| Error::Internal(format!("in-place input copy: {e}")))?;
        }
        Ok(())
    }

    /// The send and receive regions of a start on `buf`, lent by `lender`.
    fn regions<'b>(&self, lender: &'b Lender<'b, '_>, buf: &'b mut [T]) -> (Region, Region) {
        let scratch = || self.scratch.clone();
        let send = match self.place.input {
            Input::Buffer => {
                // Only read: the output, if any, is the scratch.
                let recv = match self.place.output {
                    Output::Scratch(_) => scratch(),
                    _ => Region::empty(),
                };
                return (lender.lend_region(bytes(buf)), recv);
            }
            Input::Copy(_) => scratch(),
            Input::Nothing => Region::empty(),
        };
        let recv = match self.place.output {
            Output::Head(n) => lender.lend_region_mut(bytes_mut(&mut buf[..n])),
            Output::Whole => lender.lend_region_mut(bytes_mut(buf)),
            Output::Scratch(_) => scratch(),
            Output::Nothing => Region::empty(),
        };
        (send, recv)
    }

    /// Runs the collective once on `buf` and waits for it.
    pub fn run(&self, buf: &mut [T]) -> Result<(), Error> {
        self.prepare(buf)?;
        if self.plan.is_small() {
            return self.run_small(buf);
        }
        let c = self.plan.comm();
        lend_scope(
            |l| {
                let (send, recv) = self.regions(l, buf);
                c.drive(self.plan.new_run(send, recv))
            },
            |done| c.state.wait_until(|_| done()),
        )
    }
}

impl<T: Pod> PersistentInPlace<T> {
    /// [`run`](Self::run) on the small executor, on slices: the input copy is read and the
    /// scatter root's own block written in place in the scratch region.
    fn run_small(&self, buf: &mut [T]) -> Result<(), Error> {
        let in_scratch = |e| Error::Internal(format!("in-place scratch: {e}"));
        let whole = self.scratch.len();
        match (&self.place.input, &self.place.output) {
            (Input::Buffer, Output::Scratch(_)) => self
                .scratch
                .write(0..whole, |own| self.plan.run_small(bytes(buf), own))
                .map_err(in_scratch)?,
            (Input::Buffer, _) => self.plan.run_small(bytes(buf), &mut []),
            (input, output) => {
                let out: &mut [u8] = match *output {
                    Output::Head(n) => bytes_mut(&mut buf[..n]),
                    Output::Whole => bytes_mut(buf),
                    Output::Scratch(_) | Output::Nothing => &mut [],
                };
                match input {
                    Input::Copy(_) => self
                        .scratch
                        .read(0..whole, |copy| self.plan.run_small(copy, out))
                        .map_err(in_scratch)?,
                    _ => self.plan.run_small(&[], out),
                }
            }
        }
    }
}

impl<'s> Scope<'s, '_> {
    /// Starts a persistent in-place collective (`MPI_Start`) on `buf`, which stays lent until
    /// the request completes. It runs on the communicator the plan was made on.
    pub fn start_persistent_in_place<T: Pod>(
        &self,
        plan: &PersistentInPlace<T>,
        buf: &'s mut [T],
    ) -> Result<CollRequest<'s>, Error> {
        plan.prepare(buf)?;
        let (send, recv) = plan.regions(self.lender(), buf);
        Ok(self.start_run(plan.plan.comm(), plan.plan.new_run(send, recv)))
    }
}

/// Persistent collectives with `MPI_IN_PLACE`: each `*_init_in_place` takes what the
/// ordinary `*_init` takes, and the plan runs on one buffer laid out as the blocking
/// `*_in_place` form's.
impl Communicator {
    /// A plan whose whole buffer of `len` elements is the input, copied at each start, and
    /// whose first `out` elements are the output.
    fn copy_whole<T: Pod>(
        &self,
        len: usize,
        out: Output,
        call: Call<'_>,
    ) -> Result<PersistentInPlace<T>, Error> {
        let buffer = match out {
            Output::Whole => AtLeast(len),
            _ => Exact(len),
        };
        PersistentInPlace::new(
            self,
            call,
            Place {
                buffer,
                input: Input::Copy(0..len),
                output: out,
            },
        )
    }

    /// `MPI_Reduce_init` with `MPI_IN_PLACE` at the root: `buf` (`count` elements) is every
    /// rank's input and the root's output.
    pub fn reduce_init_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
        root: u32,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        if self.rank() != root {
            let call = self.call_reduce::<T, O>(Len(count), Len(0), op, root)?;
            let place = Place {
                buffer: Exact(count),
                input: Input::Buffer,
                output: Output::Nothing,
            };
            return PersistentInPlace::new(self, call, place);
        }
        let call = self.call_reduce::<T, O>(Len(count), Len(count), op, root)?;
        self.copy_whole(count, Output::Head(count), call)
    }

    /// `MPI_Allreduce_init` with `MPI_IN_PLACE` for `count` elements.
    pub fn allreduce_init_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_allreduce::<T, O>(Len(count), Len(count), op)?;
        self.copy_whole(count, Output::Head(count), call)
    }

    /// `MPI_Scan_init` with `MPI_IN_PLACE` for `count` elements.
    pub fn scan_init_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_scan::<T, O>(Len(count), Len(count), op, false)?;
        self.copy_whole(count, Output::Head(count), call)
    }

    /// `MPI_Exscan_init` with `MPI_IN_PLACE` for `count` elements (rank 0's buffer is left
    /// as it was).
    pub fn exscan_init_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let call = self.call_scan::<T, O>(Len(count), Len(count), op, true)?;
        self.copy_whole(count, Output::Head(count), call)
    }

    /// `MPI_Gather_init` with `MPI_IN_PLACE` at the root, for blocks of `count`: there the
    /// buffer is the whole receive buffer (`count × size`) with the root's block in place;
    /// elsewhere it is the block sent.
    pub fn gather_init_in_place<T: Pod>(
        &self,
        count: usize,
        root: u32,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        if self.rank() != root {
            return self.send_only(count, self.call_gather::<T>(Len(count), Len(0), root)?);
        }
        let all = elems::<T>(count.checked_mul(self.size() as usize))?;
        let call = self.call_gather::<T>(Len(count), Len(all), root)?;
        let own = root as usize * count;
        self.own_block(Exact(all), own..own + count, Output::Head(all), call)
    }

    /// `MPI_Gatherv_init` with `MPI_IN_PLACE` at the root: there the buffer is the receive
    /// buffer with the root's block already at `displs[root]`; elsewhere it is the
    /// `send_count` elements sent (`counts` and `displs` are used at the root only).
    pub fn gatherv_init_in_place<T: Pod>(
        &self,
        send_count: usize,
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<PersistentInPlace<T>, Error> {
        let send = elems::<T>(Some(send_count))?;
        if self.rank() != root {
            let call = self.call_gatherv::<T>(Len(send), Len(0), counts, displs, root)?;
            return self.send_only(send, call);
        }
        let len = elems::<T>(reach(counts, displs))?;
        let own = own_range("gatherv", counts, displs, root)?;
        let call = self.call_gatherv::<T>(Len(own.len()), Len(len), counts, displs, root)?;
        self.own_block(AtLeast(len), own, Output::Whole, call)
    }

    /// `MPI_Scatter_init` with `MPI_IN_PLACE` at the root, for blocks of `count`: there the
    /// buffer is the whole send buffer (`count × size`) and nothing is written; elsewhere it
    /// receives the block.
    pub fn scatter_init_in_place<T: Pod>(
        &self,
        count: usize,
        root: u32,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        if self.rank() != root {
            return self.recv_only(count, self.call_scatter::<T>(Len(0), Len(count), root)?);
        }
        let all = elems::<T>(count.checked_mul(self.size() as usize))?;
        let call = self.call_scatter::<T>(Len(all), Len(count), root)?;
        self.send_keeping_own(Exact(all), count, call)
    }

    /// `MPI_Scatterv_init` with `MPI_IN_PLACE` at the root: there the buffer is the send
    /// buffer, the root's block staying at `displs[root]`; elsewhere it receives
    /// `recv_count` elements (`counts` and `displs` are used at the root only).
    pub fn scatterv_init_in_place<T: Pod>(
        &self,
        counts: &[usize],
        displs: &[usize],
        recv_count: usize,
        root: u32,
    ) -> Result<PersistentInPlace<T>, Error> {
        let recv = elems::<T>(Some(recv_count))?;
        if self.rank() != root {
            let call = self.call_scatterv::<T>(Len(0), counts, displs, Len(recv), root)?;
            return self.recv_only(recv, call);
        }
        let len = elems::<T>(reach(counts, displs))?;
        let own = own_range("scatterv", counts, displs, root)?;
        let call = self.call_scatterv::<T>(Len(len), counts, displs, Len(own.len()), root)?;
        self.send_keeping_own(AtLeast(len), own.len(), call)
    }

    /// `MPI_Allgather_init` with `MPI_IN_PLACE` for blocks of `count`: each rank's block is
    /// already at its place in the buffer (`count × size`).
    pub fn allgather_init_in_place<T: Pod>(
        &self,
        count: usize,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let all = elems::<T>(count.checked_mul(self.size() as usize))?;
        let call = self.call_allgather::<T>(Len(count), Len(all))?;
        let own = self.rank() as usize * count;
        self.own_block(Exact(all), own..own + count, Output::Head(all), call)
    }

    /// `MPI_Allgatherv_init` with `MPI_IN_PLACE`: each rank's block is already at
    /// `displs[rank]` of its buffer.
    pub fn allgatherv_init_in_place<T: Pod>(
        &self,
        counts: &[usize],
        displs: &[usize],
    ) -> Result<PersistentInPlace<T>, Error> {
        let len = elems::<T>(reach(counts, displs))?;
        let own = own_range("allgatherv", counts, displs, self.rank())?;
        let call = self.call_allgatherv::<T>(Len(own.len()), Len(len), counts, displs)?;
        self.own_block(AtLeast(len), own, Output::Whole, call)
    }

    /// `MPI_Alltoall_init` with `MPI_IN_PLACE` for blocks of `count` to and from each rank.
    pub fn alltoall_init_in_place<T: Pod>(
        &self,
        count: usize,
    ) -> Result<PersistentInPlace<T>, Error> {
        let n = elems::<T>(count.checked_mul(self.size() as usize))?;
        let call = self.call_alltoall::<T>(Len(n), Len(n))?;
        self.copy_whole(n, Output::Head(n), call)
    }

    /// `MPI_Alltoallv_init` with `MPI_IN_PLACE`: one layout for both directions, as in
    /// [`alltoallv_in_place`](Self::alltoallv_in_place).
    pub fn alltoallv_init_in_place<T: Pod>(
        &self,
        counts: &[usize],
        displs: &[usize],
    ) -> Result<PersistentInPlace<T>, Error> {
        let len = elems::<T>(reach(counts, displs))?;
        let call = self.call_alltoallv::<T>(Len(len), counts, displs, Len(len), counts, displs)?;
        self.copy_whole(len, Output::Whole, call)
    }

    /// `MPI_Reduce_scatter_block_init` with `MPI_IN_PLACE`: the buffer holds the input
    /// (`count × size`) and receives this rank's block in its first `count` elements.
    pub fn reduce_scatter_block_init_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        count: usize,
        op: O,
    ) -> Result<PersistentInPlace<T>, Error> {
        let count = elems::<T>(Some(count))?;
        let all = elems::<T>(count.checked_mul(self.size() as usize))?;
        let call = self.call_reduce_scatter_block::<T, O>(Len(all), Len(count), op)?;
        self.copy_whole(all, Output::Head(count), call)
    }

    /// `MPI_Reduce_scatter_init` with `MPI_IN_PLACE`: the buffer holds the input
    /// (`counts.iter().sum()`) and receives this rank's `counts[rank]` in its first elements.
    pub fn reduce_scatter_init_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        counts: &[usize],
        op: O,
    ) -> Result<PersistentInPlace<T>, Error> {
        let all = elems::<T>(counts.iter().try_fold(0usize, |a, c| a.checked_add(*c)))?;
        let mine = counts.get(self.rank() as usize).copied().unwrap_or(0);
        let call = self.call_reduce_scatter::<T, O>(Len(all), Len(mine), counts, op)?;
        self.copy_whole(all, Output::Head(mine), call)
    }

    /// A plan whose buffer (`len` elements) is only sent: off the root of a gather(v).
    fn send_only<T: Pod>(&self, len: usize, call: Call<'_>) -> Result<PersistentInPlace<T>, Error> {
        let place = Place {
            buffer: Exact(len),
            input: Input::Buffer,
            output: Output::Nothing,
        };
        PersistentInPlace::new(self, call, place)
    }

    /// A plan whose buffer (`len` elements) only receives: off the root of a scatter(v).
    fn recv_only<T: Pod>(&self, len: usize, call: Call<'_>) -> Result<PersistentInPlace<T>, Error> {
        let place = Place {
            buffer: Exact(len),
            input: Input::Nothing,
            output: Output::Head(len),
        };
        PersistentInPlace::new(self, call, place)
    }

    /// A plan whose input is the rank's own block `own` of the buffer, copied at each start,
    /// and whose output is the buffer: gather(v) at the root, allgather(v).
    fn own_block<T: Pod>(
        &self,
        buffer: Extent,
        own: Range<usize>,
        output: Output,
        call: Call<'_>,
    ) -> Result<PersistentInPlace<T>, Error> {
        let place = Place {
            buffer,
            input: Input::Copy(own),
            output,
        };
        PersistentInPlace::new(self, call, place)
    }

    /// A plan that sends from its buffer and receives the rank's own block into its scratch:
    /// scatter(v) at the root, whose own block stays where it is.
    fn send_keeping_own<T: Pod>(
        &self,
        buffer: Extent,
        own: usize,
        call: Call<'_>,
    ) -> Result<PersistentInPlace<T>, Error> {
        let place = Place {
            buffer,
            input: Input::Buffer,
            output: Output::Scratch(own),
        };
        PersistentInPlace::new(self, call, place)
    }
}

/// Rank `r`'s block `displs[r] .. displs[r] + counts[r]`, checked to exist.
fn own_range(
    what: &'static str,
    counts: &[usize],
    displs: &[usize],
    r: u32,
) -> Result<Range<usize>, Error> {
    match (counts.get(r as usize), displs.get(r as usize)) {
        (Some(&c), Some(&d)) => Ok(d..d.checked_add(c).ok_or_else(|| {
            Error::InvalidArgument(format!("{what}: a block reaches beyond addressable memory"))
        })?),
        _ => Err(Error::BufferSize {
            what,
            buffer: "counts and displacements (one per rank)",
            expected: r as usize + 1,
            got: counts.len().min(displs.len()),
        }),
    }
}
