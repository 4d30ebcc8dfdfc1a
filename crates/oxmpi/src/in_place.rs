//! The `MPI_IN_PLACE` forms of the collectives: one buffer is both a rank's input and its
//! output, for every collective where MPI allows it (reduce, allreduce, scan, exscan, gather(v)
//! and scatter(v) at the root, allgather(v), alltoall(v), reduce_scatter(_block)), blocking
//! (`*_in_place` on [`Communicator`]) and nonblocking (`i*_in_place` on a [`Scope`]).
//!
//! Each copies the input part it needs out of the buffer and runs the ordinary form, whose
//! schedules may read a rank's input after writing its output. The copy is as large as the
//! input the rank contributes (for gather(v), scatter(v) and allgather(v) only its own block);
//! a nonblocking form keeps it in a region the request owns.
//! Ranges named by counts and displacements are checked first: a block outside the buffer is
//! an [`Error::BufferSize`], as in the ordinary forms.

use crate::collective::{bytes, Call, CollRequest, Len};
use crate::comm::Communicator;
use crate::request::Scope;
use crate::Error;
use bytemuck::Pod;
use oxmpi_collectives::ReduceOp;
use oxmpi_fabric::Region;

/// Elements `displs[i] .. displs[i] + counts[i]` of `buf`, checked.
fn block<'b, T>(
    what: &'static str,
    buf: &'b [T],
    counts: &[usize],
    displs: &[usize],
    i: u32,
) -> Result<&'b [T], Error> {
    let (c, d) = match (counts.get(i as usize), displs.get(i as usize)) {
        (Some(c), Some(d)) => (*c, *d),
        _ => {
            return Err(Error::BufferSize {
                what,
                buffer: "counts and displacements (one per rank)",
                expected: i as usize + 1,
                got: counts.len().min(displs.len()),
            })
        }
    };
    let end = d.saturating_add(c);
    buf.get(d..end).ok_or(Error::BufferSize {
        what,
        buffer: "buffer (count + displacement)",
        expected: end,
        got: buf.len(),
    })
}

/// The first `n` elements of `buf`, where a reduce-scatter leaves its result.
fn head<'b, T>(what: &'static str, buf: &'b mut [T], n: usize) -> Result<&'b mut [T], Error> {
    let len = buf.len();
    buf.get_mut(..n).ok_or(Error::BufferSize {
        what,
        buffer: "buffer",
        expected: n,
        got: len,
    })
}

/// Rank `r`'s block of `buf` cut in `size` equal blocks (a gather's, scatter's or
/// allgather's layout), and the block length. `r < size`, so the range always lies within
/// `buf`; a length that is not a multiple of `size` is the ordinary form's error.
fn equal_block<T>(buf: &[T], size: u32, r: u32) -> (&[T], usize) {
    let n = buf.len() / size.max(1) as usize;
    (&buf[r as usize * n..][..n], n)
}

impl Communicator {
    /// [`reduce`](Self::reduce) with `MPI_IN_PLACE`: `buf` is every rank's input and the
    /// root's output.
    pub fn reduce_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &mut [T],
        op: O,
        root: u32,
    ) -> Result<(), Error> {
        let input = buf.to_vec();
        self.reduce(&input, buf, op, root)
    }

    /// [`allreduce`](Self::allreduce) with `MPI_IN_PLACE`.
    pub fn allreduce_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &mut [T],
        op: O,
    ) -> Result<(), Error> {
        let input = buf.to_vec();
        self.allreduce(&input, buf, op)
    }

    /// [`scan`](Self::scan) with `MPI_IN_PLACE`.
    pub fn scan_in_place<T: Pod, O: ReduceOp<T>>(&self, buf: &mut [T], op: O) -> Result<(), Error> {
        let input = buf.to_vec();
        self.scan(&input, buf, op)
    }

    /// [`exscan`](Self::exscan) with `MPI_IN_PLACE`.
    pub fn exscan_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &mut [T],
        op: O,
    ) -> Result<(), Error> {
        let input = buf.to_vec();
        self.exscan(&input, buf, op)
    }

    /// [`gather`](Self::gather) with `MPI_IN_PLACE` at the root: there `buf` is the whole
    /// receive buffer with the root's block already in place; elsewhere it is the block sent.
    pub fn gather_in_place<T: Pod>(&self, buf: &mut [T], root: u32) -> Result<(), Error> {
        if self.rank() == root {
            let mine = equal_block(buf, self.size(), root).0.to_vec();
            self.gather(&mine, buf, root)
        } else {
            self.gather(buf, &mut [], root)
        }
    }

    /// [`gatherv`](Self::gatherv) with `MPI_IN_PLACE` at the root: there `buf` is the
    /// receive buffer with the root's block already at `displs[root]`; elsewhere it is the
    /// block sent (`counts` and `displs` are read at the root only).
    pub fn gatherv_in_place<T: Pod>(
        &self,
        buf: &mut [T],
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<(), Error> {
        if self.rank() == root {
            let mine = block("gatherv", buf, counts, displs, root)?.to_vec();
            self.gatherv(&mine, buf, counts, displs, root)
        } else {
            self.gatherv(buf, &mut [], counts, displs, root)
        }
    }

    /// [`scatter`](Self::scatter) with `MPI_IN_PLACE` at the root: there `buf` is the whole
    /// send buffer and the root's block stays where it is; elsewhere it receives the block.
    pub fn scatter_in_place<T: Pod>(&self, buf: &mut [T], root: u32) -> Result<(), Error> {
        if self.rank() == root {
            let mut mine = equal_block(buf, self.size(), root).0.to_vec();
            self.scatter(buf, &mut mine, root)
        } else {
            self.scatter(&[], buf, root)
        }
    }

    /// [`scatterv`](Self::scatterv) with `MPI_IN_PLACE` at the root: there `buf` is the send
    /// buffer and the root's block stays at `displs[root]`; elsewhere `buf` receives this
    /// rank's block (`counts` and `displs` are read at the root only).
    pub fn scatterv_in_place<T: Pod>(
        &self,
        buf: &mut [T],
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<(), Error> {
        if self.rank() == root {
            let mut mine = block("scatterv", buf, counts, displs, root)?.to_vec();
            self.scatterv(buf, counts, displs, &mut mine, root)
        } else {
            self.scatterv(&[], counts, displs, buf, root)
        }
    }

    /// [`allgather`](Self::allgather) with `MPI_IN_PLACE`: each rank's block is already at its
    /// place in `buf`.
    pub fn allgather_in_place<T: Pod>(&self, buf: &mut [T]) -> Result<(), Error> {
        let mine = equal_block(buf, self.size(), self.rank()).0.to_vec();
        self.allgather(&mine, buf)
    }

    /// [`allgatherv`](Self::allgatherv) with `MPI_IN_PLACE`: each rank's block is already at
    /// `displs[rank]` of its `buf`.
    pub fn allgatherv_in_place<T: Pod>(
        &self,
        buf: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<(), Error> {
        let mine = block("allgatherv", buf, counts, displs, self.rank())?.to_vec();
        self.allgatherv(&mine, buf, counts, displs)
    }

    /// [`alltoall`](Self::alltoall) with `MPI_IN_PLACE`.
    pub fn alltoall_in_place<T: Pod>(&self, buf: &mut [T]) -> Result<(), Error> {
        let input = buf.to_vec();
        self.alltoall(&input, buf)
    }

    /// [`alltoallv`](Self::alltoallv) with `MPI_IN_PLACE`: one layout for both directions, as
    /// in MPI: the `counts[i]` elements at `displs[i]` of `buf` go to rank `i` and are
    /// replaced by the `counts[i]` that rank `i` sends here (so the ranks' counts must pair
    /// up: what `i` sends `j` is what `j` sends `i`).
    pub fn alltoallv_in_place<T: Pod>(
        &self,
        buf: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<(), Error> {
        let input = buf.to_vec();
        self.alltoallv(&input, counts, displs, buf, counts, displs)
    }

    /// [`reduce_scatter_block`](Self::reduce_scatter_block) with `MPI_IN_PLACE`: `buf` holds
    /// the input (size × `count` elements) and receives this rank's block of `count` in its
    /// first elements; the rest of `buf` is left as it was.
    pub fn reduce_scatter_block_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &mut [T],
        count: usize,
        op: O,
    ) -> Result<(), Error> {
        let input = buf.to_vec();
        self.reduce_scatter_block(&input, head("reduce_scatter_block", buf, count)?, op)
    }

    /// [`reduce_scatter`](Self::reduce_scatter) with `MPI_IN_PLACE`: `buf` holds the input
    /// (`counts.iter().sum()` elements) and receives this rank's `counts[rank]` elements in
    /// its first ones; the rest of `buf` is left as it was.
    pub fn reduce_scatter_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &mut [T],
        counts: &[usize],
        op: O,
    ) -> Result<(), Error> {
        let mine = counts.get(self.rank() as usize).copied().unwrap_or(0);
        let input = buf.to_vec();
        self.reduce_scatter(&input, head("reduce_scatter", buf, mine)?, counts, op)
    }
}

/// An owned region holding a copy of `v`: the input of a nonblocking in-place collective, kept
/// by its request while the buffer itself is lent as the output.
fn input_copy<T: Pod>(v: &[T]) -> Region {
    let b = bytes(v);
    if b.is_empty() {
        return Region::empty();
    }
    let r = Region::alloc(b.len());
    r.write(0..b.len(), |d| d.copy_from_slice(b))
        .expect("a fresh region is writable over its whole length");
    r
}

/// Nonblocking in-place collectives: the buffer is lent for the scope as the output, its input
/// part copied first.
impl<'s> Scope<'s, '_> {
    /// Starts `call` (made with [`Len`] for its send side) on `input` as the send buffer.
    fn start_on_input(&self, call: Call<'s>, input: Region) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        let sched = c.schedule(&call.spec)?;
        let recv = self.lender().lend_region_mut(call.recv);
        Ok(self.start_run(
            c,
            c.new_run(sched, call.spec.coll(), input, recv, call.kernel),
        ))
    }

    /// Copies all of `buf` as the input and starts the call `make` builds from the input's
    /// length and `buf` as the output.
    fn start_on_copy<T: Pod>(
        &self,
        buf: &'s mut [T],
        make: impl FnOnce(&Communicator, Len, &'s mut [T]) -> Result<Call<'s>, Error>,
    ) -> Result<CollRequest<'s>, Error> {
        let input = input_copy(buf);
        let len = Len(buf.len());
        let call = make(self.comm(), len, buf)?;
        self.start_on_input(call, input)
    }

    /// `MPI_Ireduce` with `MPI_IN_PLACE` (see [`Communicator::reduce_in_place`]).
    pub fn ireduce_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &'s mut [T],
        op: O,
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| c.call_reduce::<T, O>(n, out, op, root))
    }

    /// `MPI_Iallreduce` with `MPI_IN_PLACE`.
    pub fn iallreduce_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| c.call_allreduce::<T, O>(n, out, op))
    }

    /// `MPI_Iscan` with `MPI_IN_PLACE`.
    pub fn iscan_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| c.call_scan::<T, O>(n, out, op, false))
    }

    /// `MPI_Iexscan` with `MPI_IN_PLACE` (rank 0's `buf` is left as it was).
    pub fn iexscan_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| c.call_scan::<T, O>(n, out, op, true))
    }

    /// `MPI_Igather` with `MPI_IN_PLACE` at the root (see [`Communicator::gather_in_place`]).
    pub fn igather_in_place<T: Pod>(
        &self,
        buf: &'s mut [T],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        if c.rank() != root {
            return self.igather(buf, &mut [], root);
        }
        let (mine, n) = equal_block(buf, c.size(), root);
        let input = input_copy(mine);
        let call = c.call_gather::<T>(Len(n), buf, root)?;
        self.start_on_input(call, input)
    }

    /// `MPI_Igatherv` with `MPI_IN_PLACE` at the root (see
    /// [`Communicator::gatherv_in_place`]).
    pub fn igatherv_in_place<T: Pod>(
        &self,
        buf: &'s mut [T],
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        if c.rank() != root {
            return self.igatherv(buf, &mut [], counts, displs, root);
        }
        let mine = block("gatherv", buf, counts, displs, root)?;
        let (input, n) = (input_copy(mine), mine.len());
        let call = c.call_gatherv::<T>(Len(n), buf, counts, displs, root)?;
        self.start_on_input(call, input)
    }

    /// `MPI_Iscatter` with `MPI_IN_PLACE` at the root: there `buf` is the whole send buffer
    /// and nothing is written; elsewhere it receives the block.
    pub fn iscatter_in_place<T: Pod>(
        &self,
        buf: &'s mut [T],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        if c.rank() != root {
            return self.iscatter(&[], buf, root);
        }
        // The root's own block would be copied onto itself: receive it into a copy instead,
        // which the request owns (and drops).
        let (mine, n) = equal_block(buf, c.size(), root);
        let own = input_copy(mine);
        let buf: &'s [T] = buf;
        let call = c.call_scatter::<T>(buf, Len(n), root)?;
        self.start_with_output(call, own)
    }

    /// `MPI_Iscatterv` with `MPI_IN_PLACE` at the root (see
    /// [`Communicator::scatterv_in_place`]).
    pub fn iscatterv_in_place<T: Pod>(
        &self,
        buf: &'s mut [T],
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        if c.rank() != root {
            return self.iscatterv(&[], counts, displs, buf, root);
        }
        let mine = block("scatterv", buf, counts, displs, root)?;
        let (own, n) = (input_copy(mine), mine.len());
        let buf: &'s [T] = buf;
        let call = c.call_scatterv::<T>(buf, counts, displs, Len(n), root)?;
        self.start_with_output(call, own)
    }

    /// `MPI_Iallgather` with `MPI_IN_PLACE` (see [`Communicator::allgather_in_place`]).
    pub fn iallgather_in_place<T: Pod>(&self, buf: &'s mut [T]) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        let (mine, n) = equal_block(buf, c.size(), c.rank());
        let input = input_copy(mine);
        let call = c.call_allgather::<T>(Len(n), buf)?;
        self.start_on_input(call, input)
    }

    /// `MPI_Iallgatherv` with `MPI_IN_PLACE` (see [`Communicator::allgatherv_in_place`]).
    pub fn iallgatherv_in_place<T: Pod>(
        &self,
        buf: &'s mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        let mine = block("allgatherv", buf, counts, displs, c.rank())?;
        let (input, n) = (input_copy(mine), mine.len());
        let call = c.call_allgatherv::<T>(Len(n), buf, counts, displs)?;
        self.start_on_input(call, input)
    }

    /// `MPI_Ialltoall` with `MPI_IN_PLACE`.
    pub fn ialltoall_in_place<T: Pod>(&self, buf: &'s mut [T]) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| c.call_alltoall::<T>(n, out))
    }

    /// `MPI_Ialltoallv` with `MPI_IN_PLACE` (see [`Communicator::alltoallv_in_place`]).
    pub fn ialltoallv_in_place<T: Pod>(
        &self,
        buf: &'s mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| {
            c.call_alltoallv::<T>(n, counts, displs, out, counts, displs)
        })
    }

    /// `MPI_Ireduce_scatter_block` with `MPI_IN_PLACE` (see
    /// [`Communicator::reduce_scatter_block_in_place`]).
    pub fn ireduce_scatter_block_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &'s mut [T],
        count: usize,
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| {
            c.call_reduce_scatter_block::<T, O>(n, head("reduce_scatter_block", out, count)?, op)
        })
    }

    /// `MPI_Ireduce_scatter` with `MPI_IN_PLACE` (see
    /// [`Communicator::reduce_scatter_in_place`]).
    pub fn ireduce_scatter_in_place<T: Pod, O: ReduceOp<T>>(
        &self,
        buf: &'s mut [T],
        counts: &[usize],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start_on_copy(buf, |c, n, out| {
            let mine = counts.get(c.rank() as usize).copied().unwrap_or(0);
            c.call_reduce_scatter::<T, O>(n, head("reduce_scatter", out, mine)?, counts, op)
        })
    }

    /// Starts `call` (made with [`Len`] for its receive side) with the owned `output` as the
    /// receive buffer.
    fn start_with_output(&self, call: Call<'s>, output: Region) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        let sched = c.schedule(&call.spec)?;
        let send = self.lender().lend_region(call.send);
        Ok(self.start_run(
            c,
            c.new_run(sched, call.spec.coll(), send, output, call.kernel),
        ))
    }
}
