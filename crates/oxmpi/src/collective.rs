//! Collective operations on [`Pod`] buffers (MPI chapter 6): blocking and nonblocking (on a
//! [`Scope`]); the persistent forms are in `persistent.rs`. All run the schedules of
//! `oxmpi-collectives` through one executor.
//!
//! Each call describes itself as a [`Spec`] (sizes in bytes), the communicator picks the
//! algorithm (its forced choice, `OXMPI_COLL_<NAME>`, or the selection table) and builds the
//! schedule — cached per communicator, so a repeated call reuses it — and the run goes on the
//! collective context `ctx + 1` with a tag that numbers this communicator's collectives, so
//! concurrent nonblocking collectives never match each other's messages.
//!
//! Counts are checked before anything is sent: a buffer of the wrong length is an
//! [`Error::BufferSize`] on the rank that passed it. Ranks that disagree about counts get an
//! [`Error::CollectiveMismatch`] or [`Error::Truncated`] where the mismatch is visible.

use crate::comm::Communicator;
use crate::request::Scope;
use crate::Error;
use bytemuck::Pod;
use oxmpi_collectives::algorithms::Blocks;
use oxmpi_collectives::exec::TempPool;
use oxmpi_collectives::exec_small::SmallRun;
use oxmpi_collectives::registry::{self, AlgoInfo, Coll, Spec};
use oxmpi_collectives::{CollError, Kernel, Op, ReduceOp, Route, Run, Schedule, TypedKernel};
use oxmpi_fabric::{lend_scope, Fabric, Region};
use oxmpi_p2p::Engine;
use std::marker::PhantomData;
use std::rc::Rc;

/// Nonblocking and persistent collectives in flight, advanced by every progress pass.
#[derive(Default)]
pub(crate) struct CollRuns {
    slots: Vec<Slot>,
    /// Runs not finished yet.
    active: usize,
    /// Temporaries for the next runs (blocking ones too).
    pub pool: TempPool,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    run: Option<Run>,
    detached: bool,
}

/// Handle of a run in [`CollRuns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CollId {
    idx: u32,
    gen: u32,
}

impl CollRuns {
    pub fn insert(&mut self, run: Run) -> CollId {
        let idx = match self.slots.iter().position(|s| s.run.is_none()) {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[idx];
        s.gen = s.gen.wrapping_add(1);
        s.detached = false;
        if !run.is_done() {
            self.active += 1;
        }
        s.run = Some(run);
        CollId {
            idx: idx as u32,
            gen: s.gen,
        }
    }

    #[inline]
    pub fn has_active(&self) -> bool {
        self.active > 0
    }

    /// Advances every unfinished run.
    pub fn advance_all(&mut self, engine: &mut Engine, fabric: &mut dyn Fabric) {
        for s in &mut self.slots {
            let Some(run) = &mut s.run else { continue };
            if run.is_done() {
                continue;
            }
            if run.advance(engine, fabric) {
                run.reclaim(&mut self.pool);
                self.active -= 1;
                if s.detached {
                    s.run = None;
                }
            }
        }
    }

    fn slot(&self, id: CollId) -> Option<&Slot> {
        self.slots
            .get(id.idx as usize)
            .filter(|s| s.gen == id.gen && s.run.is_some())
    }

    pub fn is_done(&self, id: CollId) -> bool {
        self.slot(id)
            .and_then(|s| s.run.as_ref())
            .is_none_or(Run::is_done)
    }

    /// The outcome of a finished run, freeing its slot.
    pub fn take(&mut self, id: CollId) -> Option<Result<(), CollError>> {
        if !self.is_done(id) || self.slot(id).is_none() {
            return None;
        }
        let run = self.slots[id.idx as usize].run.take()?;
        Some(run.result())
    }

    /// The owner no longer wants the outcome: free the slot when the run finishes.
    pub fn detach(&mut self, id: CollId) {
        if self.take(id).is_none() {
            if let Some(s) = self.slots.get_mut(id.idx as usize) {
                if s.gen == id.gen {
                    s.detached = true;
                }
            }
        }
    }
}

/// A nonblocking collective in flight (`MPI_Request` of `MPI_Iallreduce` and friends).
#[must_use = "a collective request should be waited for"]
pub struct CollRequest<'s> {
    comm: Communicator,
    id: CollId,
    active: bool,
    _scope: PhantomData<&'s ()>,
}

impl std::fmt::Debug for CollRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CollRequest(active: {})", self.active)
    }
}

impl CollRequest<'_> {
    /// Waits for the collective to complete on this rank (`MPI_Wait`).
    pub fn wait(mut self) -> Result<(), Error> {
        let id = self.id;
        self.comm.state.wait_until_with(|p| p.colls.is_done(id));
        self.collect().unwrap_or(Ok(()))
    }

    /// Whether it has completed (`MPI_Test`); once true the request is spent.
    pub fn test(&mut self) -> Result<bool, Error> {
        if !self.active {
            return Ok(true);
        }
        self.comm.state.progress().pass();
        match self.collect() {
            Some(r) => r.map(|()| true),
            None => Ok(false),
        }
    }

    fn collect(&mut self) -> Option<Result<(), Error>> {
        let r = self.comm.state.progress().colls.take(self.id)?;
        self.active = false;
        Some(r.map_err(|e| self.comm.coll_error(e)))
    }
}

impl Drop for CollRequest<'_> {
    fn drop(&mut self) {
        if self.active {
            if let Ok(mut p) = self.comm.state.progress.try_borrow_mut() {
                p.colls.detach(self.id);
            }
        }
    }
}

/// One collective call: what it is, its buffers as bytes, its reduction.
pub(crate) struct Call<'a> {
    pub(crate) spec: Spec,
    pub(crate) send: &'a [u8],
    pub(crate) recv: &'a mut [u8],
    pub(crate) kernel: Option<Rc<dyn Kernel>>,
    /// Which reduction, for the collective check: [`op_code`] of the op, `NO_OP` without one.
    pub(crate) op: u64,
}

/// `Call::op` of a collective that reduces nothing.
const NO_OP: u64 = u64::MAX;

/// A code for `op` that ranks can compare: the builtin op's number, or one code for every
/// user op (closures cannot be compared across processes).
fn op_code<T, O: ReduceOp<T>>(op: &O) -> u64 {
    op.builtin().map_or(1 << 32, |b| b as u64)
}

/// A send-buffer argument of a call builder: the caller's buffer, or, for a persistent plan
/// made before there is one, only its length ([`Len`]).
pub(crate) trait SendArg<'a, T> {
    /// Length in elements.
    fn len(&self) -> usize;
    /// The buffer's bytes (empty for a bare length).
    fn bytes(&self) -> &'a [u8];
}

/// A receive-buffer argument of a call builder (see [`SendArg`]).
pub(crate) trait RecvArg<'a, T> {
    /// Length in elements.
    fn len(&self) -> usize;
    /// The buffer's bytes (empty for a bare length).
    fn into_bytes(self) -> &'a mut [u8];
}

impl<'a, T: Pod> SendArg<'a, T> for &'a [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn bytes(&self) -> &'a [u8] {
        bytes(self)
    }
}

impl<'a, T: Pod> RecvArg<'a, T> for &'a mut [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn into_bytes(self) -> &'a mut [u8] {
        bytes_mut(self)
    }
}

/// A buffer's length without the buffer: what a persistent plan is built from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Len(pub(crate) usize);

impl<'a, T> SendArg<'a, T> for Len {
    fn len(&self) -> usize {
        self.0
    }
    fn bytes(&self) -> &'a [u8] {
        &[]
    }
}

impl<'a, T> RecvArg<'a, T> for Len {
    fn len(&self) -> usize {
        self.0
    }
    fn into_bytes(self) -> &'a mut [u8] {
        &mut []
    }
}

pub(crate) fn len_check(
    what: &'static str,
    buffer: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), Error> {
    if got != expected {
        return Err(Error::BufferSize {
            what,
            buffer,
            expected,
            got,
        });
    }
    Ok(())
}

pub(crate) fn bytes<T: Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

pub(crate) fn bytes_mut<T: Pod>(v: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(v)
}

/// Element counts and displacements as a byte layout.
fn layout<T>(
    what: &'static str,
    counts: &[usize],
    displs: &[usize],
    size: u32,
    buf_len: usize,
) -> Result<Blocks, Error> {
    let e = std::mem::size_of::<T>();
    len_check(what, "counts", counts.len(), size as usize)?;
    len_check(what, "displacements", displs.len(), size as usize)?;
    for (c, d) in counts.iter().zip(displs) {
        if d.saturating_add(*c) > buf_len {
            return Err(Error::BufferSize {
                what,
                buffer: "buffer (count + displacement)",
                expected: d.saturating_add(*c),
                got: buf_len,
            });
        }
    }
    Ok(Blocks {
        counts: counts.iter().map(|c| c * e).collect(),
        displs: displs.iter().map(|d| d * e).collect(),
    })
}

/// Builds the [`Call`] of each collective, checking its arguments; shared by the blocking,
/// nonblocking and persistent forms.
impl Communicator {
    /// The byte-level kernel of `op` on `T`; builtin ops' kernels are made once per
    /// communicator.
    fn kernel<T: Pod, O: ReduceOp<T>>(&self, op: O) -> Result<Rc<dyn Kernel>, Error> {
        op.check().map_err(Error::InvalidOp)?;
        let Some(b) = op.builtin() else {
            return Ok(Rc::new(TypedKernel::<T, O>::new(op)));
        };
        let key = (std::any::TypeId::of::<T>(), b);
        let mut cache = self.shared.kernels.borrow_mut();
        if let Some((_, k)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(k.clone());
        }
        let k: Rc<dyn Kernel> = Rc::new(TypedKernel::<T, O>::new(op));
        cache.push((key, k.clone()));
        Ok(k)
    }

    fn check_root(&self, root: u32) -> Result<(), Error> {
        crate::progress::check_rank(root, self.size())
    }

    pub(crate) fn call_barrier(&self) -> Call<'static> {
        Call {
            spec: Spec::Barrier,
            send: &[],
            recv: &mut [],
            kernel: None,
            op: NO_OP,
        }
    }

    pub(crate) fn call_bcast<'a, T: Pod>(
        &self,
        buf: impl RecvArg<'a, T>,
        root: u32,
    ) -> Result<Call<'a>, Error> {
        self.check_root(root)?;
        Ok(Call {
            spec: Spec::Bcast {
                root,
                bytes: buf.len() * std::mem::size_of::<T>(),
            },
            send: &[],
            recv: buf.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_reduce<'a, T: Pod, O: ReduceOp<T>>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        op: O,
        root: u32,
    ) -> Result<Call<'a>, Error> {
        self.check_root(root)?;
        let at_root = self.rank() == root;
        if at_root {
            len_check("reduce", "receive", recv.len(), send.len())?;
        }
        let e = std::mem::size_of::<T>();
        Ok(Call {
            spec: Spec::Reduce {
                root,
                bytes: send.len() * std::mem::size_of::<T>(),
                elem: e,
                commutative: op.is_commutative(),
            },
            send: send.bytes(),
            recv: if at_root { recv.into_bytes() } else { &mut [] },
            op: op_code(&op),
            kernel: Some(self.kernel(op)?),
        })
    }

    pub(crate) fn call_allreduce<'a, T: Pod, O: ReduceOp<T>>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        op: O,
    ) -> Result<Call<'a>, Error> {
        len_check("allreduce", "receive", recv.len(), send.len())?;
        let e = std::mem::size_of::<T>();
        Ok(Call {
            spec: Spec::Allreduce {
                bytes: send.len() * std::mem::size_of::<T>(),
                elem: e,
                commutative: op.is_commutative(),
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            op: op_code(&op),
            kernel: Some(self.kernel(op)?),
        })
    }

    pub(crate) fn call_scan<'a, T: Pod, O: ReduceOp<T>>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        op: O,
        exclusive: bool,
    ) -> Result<Call<'a>, Error> {
        let what = if exclusive { "exscan" } else { "scan" };
        len_check(what, "receive", recv.len(), send.len())?;
        let e = std::mem::size_of::<T>();
        let (bytes_n, commutative) = (send.len() * std::mem::size_of::<T>(), op.is_commutative());
        Ok(Call {
            spec: if exclusive {
                Spec::Exscan {
                    bytes: bytes_n,
                    elem: e,
                    commutative,
                }
            } else {
                Spec::Scan {
                    bytes: bytes_n,
                    elem: e,
                    commutative,
                }
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            op: op_code(&op),
            kernel: Some(self.kernel(op)?),
        })
    }

    pub(crate) fn call_gather<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        root: u32,
    ) -> Result<Call<'a>, Error> {
        self.check_root(root)?;
        let at_root = self.rank() == root;
        if at_root {
            len_check(
                "gather",
                "receive",
                recv.len(),
                send.len().saturating_mul(self.size() as usize),
            )?;
        }
        Ok(Call {
            spec: Spec::Gather {
                root,
                block: send.len() * std::mem::size_of::<T>(),
            },
            send: send.bytes(),
            recv: if at_root { recv.into_bytes() } else { &mut [] },
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_gatherv<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<Call<'a>, Error> {
        self.check_root(root)?;
        let at_root = self.rank() == root;
        let recv_layout = if at_root {
            let l = layout::<T>("gatherv", counts, displs, self.size(), recv.len())?;
            len_check(
                "gatherv",
                "send (counts[root])",
                send.len(),
                counts[root as usize],
            )?;
            l
        } else {
            Blocks::equal(self.size(), 0)
        };
        Ok(Call {
            spec: Spec::Gatherv {
                root,
                send: send.len() * std::mem::size_of::<T>(),
                recv: recv_layout,
            },
            send: send.bytes(),
            recv: if at_root { recv.into_bytes() } else { &mut [] },
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_scatter<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        root: u32,
    ) -> Result<Call<'a>, Error> {
        self.check_root(root)?;
        let at_root = self.rank() == root;
        if at_root {
            len_check(
                "scatter",
                "send",
                send.len(),
                recv.len().saturating_mul(self.size() as usize),
            )?;
        }
        Ok(Call {
            spec: Spec::Scatter {
                root,
                block: recv.len() * std::mem::size_of::<T>(),
            },
            send: if at_root { send.bytes() } else { &[] },
            recv: recv.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_scatterv<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        counts: &[usize],
        displs: &[usize],
        recv: impl RecvArg<'a, T>,
        root: u32,
    ) -> Result<Call<'a>, Error> {
        self.check_root(root)?;
        let at_root = self.rank() == root;
        let send_layout = if at_root {
            let l = layout::<T>("scatterv", counts, displs, self.size(), send.len())?;
            len_check(
                "scatterv",
                "receive (counts[root])",
                recv.len(),
                counts[root as usize],
            )?;
            l
        } else {
            Blocks::equal(self.size(), 0)
        };
        Ok(Call {
            spec: Spec::Scatterv {
                root,
                send: send_layout,
                recv: recv.len() * std::mem::size_of::<T>(),
            },
            send: if at_root { send.bytes() } else { &[] },
            recv: recv.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_allgather<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
    ) -> Result<Call<'a>, Error> {
        len_check(
            "allgather",
            "receive",
            recv.len(),
            send.len().saturating_mul(self.size() as usize),
        )?;
        Ok(Call {
            spec: Spec::Allgather {
                block: send.len() * std::mem::size_of::<T>(),
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_allgatherv<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        counts: &[usize],
        displs: &[usize],
    ) -> Result<Call<'a>, Error> {
        let l = layout::<T>("allgatherv", counts, displs, self.size(), recv.len())?;
        len_check(
            "allgatherv",
            "send (counts[rank])",
            send.len(),
            counts[self.rank() as usize],
        )?;
        Ok(Call {
            spec: Spec::Allgatherv {
                send: send.len() * std::mem::size_of::<T>(),
                recv: l,
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_alltoall<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
    ) -> Result<Call<'a>, Error> {
        let p = self.size() as usize;
        len_check("alltoall", "receive", recv.len(), send.len())?;
        if !send.len().is_multiple_of(p) {
            return Err(Error::BufferSize {
                what: "alltoall",
                buffer: "send (a multiple of the communicator size)",
                expected: send.len().div_ceil(p) * p,
                got: send.len(),
            });
        }
        Ok(Call {
            spec: Spec::Alltoall {
                block: send.len() * std::mem::size_of::<T>() / p,
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call_alltoallv<'a, T: Pod>(
        &self,
        send: impl SendArg<'a, T>,
        send_counts: &[usize],
        send_displs: &[usize],
        recv: impl RecvArg<'a, T>,
        recv_counts: &[usize],
        recv_displs: &[usize],
    ) -> Result<Call<'a>, Error> {
        let s = layout::<T>(
            "alltoallv",
            send_counts,
            send_displs,
            self.size(),
            send.len(),
        )?;
        let r = layout::<T>(
            "alltoallv",
            recv_counts,
            recv_displs,
            self.size(),
            recv.len(),
        )?;
        Ok(Call {
            spec: Spec::Alltoallv { send: s, recv: r },
            send: send.bytes(),
            recv: recv.into_bytes(),
            kernel: None,
            op: NO_OP,
        })
    }

    pub(crate) fn call_reduce_scatter_block<'a, T: Pod, O: ReduceOp<T>>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        op: O,
    ) -> Result<Call<'a>, Error> {
        len_check(
            "reduce_scatter_block",
            "send",
            send.len(),
            recv.len().saturating_mul(self.size() as usize),
        )?;
        let e = std::mem::size_of::<T>();
        Ok(Call {
            spec: Spec::ReduceScatterBlock {
                block: recv.len() * std::mem::size_of::<T>(),
                elem: e,
                commutative: op.is_commutative(),
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            op: op_code(&op),
            kernel: Some(self.kernel(op)?),
        })
    }

    pub(crate) fn call_reduce_scatter<'a, T: Pod, O: ReduceOp<T>>(
        &self,
        send: impl SendArg<'a, T>,
        recv: impl RecvArg<'a, T>,
        counts: &[usize],
        op: O,
    ) -> Result<Call<'a>, Error> {
        len_check(
            "reduce_scatter",
            "counts",
            counts.len(),
            self.size() as usize,
        )?;
        let total = counts.iter().fold(0usize, |a, c| a.saturating_add(*c));
        len_check("reduce_scatter", "send", send.len(), total)?;
        len_check(
            "reduce_scatter",
            "receive",
            recv.len(),
            counts[self.rank() as usize],
        )?;
        let e = std::mem::size_of::<T>();
        Ok(Call {
            spec: Spec::ReduceScatter {
                blocks: Blocks::packed(counts.iter().map(|c| c * e).collect()),
                elem: e,
                commutative: op.is_commutative(),
            },
            send: send.bytes(),
            recv: recv.into_bytes(),
            op: op_code(&op),
            kernel: Some(self.kernel(op)?),
        })
    }
}

/// Running calls.
impl Communicator {
    /// The algorithm for `spec`: this communicator's forced choice, then
    /// `OXMPI_COLL_<NAME>`, then the selection table.
    pub(crate) fn algorithm(&self, spec: &Spec) -> Result<&'static AlgoInfo, Error> {
        let coll = spec.coll();
        let forced = self
            .shared
            .forced
            .borrow()
            .iter()
            .find(|(c, _)| *c == coll)
            .map(|(_, a)| a.to_string());
        if let Some(name) = forced {
            return registry::forced(spec, &name).map_err(Error::Algorithm);
        }
        if let Some((_, name)) = self.state.forced_env.iter().find(|(c, _)| *c == coll) {
            return registry::forced(spec, name)
                .map_err(|e| Error::Algorithm(format!("{}: {e}", registry::env_name(coll))));
        }
        Ok(self
            .state
            .table
            .select(spec, self.size(), &self.shared.topo))
    }

    /// The schedule for `spec`, from this communicator's cache when it was built before.
    /// The cache is keyed by `spec` alone: the algorithm chosen for it changes only when
    /// [`Communicator::force_algorithm`] or [`Communicator::clear_forced_algorithms`] runs,
    /// and both empty the cache. A repeated call thus skips the selection entirely.
    pub(crate) fn schedule(&self, spec: &Spec) -> Result<Rc<Schedule>, Error> {
        {
            let cache = self.shared.schedules.borrow();
            // A hit stays where it is (moving it costs more than the search when a loop
            // alternates two collectives); the oldest entry is the one evicted.
            if let Some((_, sched)) = cache.iter().find(|(s, _)| s == spec) {
                return Ok(sched.clone());
            }
        }
        let algo = self.algorithm(spec)?;
        let sched = Rc::new(registry::build(
            spec,
            algo,
            self.rank(),
            self.size(),
            &self.shared.topo,
        ));
        let mut cache = self.shared.schedules.borrow_mut();
        cache.insert(0, (spec.clone(), sched.clone()));
        cache.truncate(SCHEDULE_CACHE);
        Ok(sched)
    }

    fn route(&self, coll: Coll) -> Route {
        let seq = self.shared.coll_seq.get();
        self.shared.coll_seq.set(seq.wrapping_add(1));
        Route {
            ctx: self.ctx + 1,
            tag: coll_tag(seq, coll.code()),
            world: self.shared.world_map.clone(),
        }
    }

    pub(crate) fn new_run(
        &self,
        sched: Rc<Schedule>,
        coll: Coll,
        send: Region,
        recv: Region,
        kernel: Option<Rc<dyn Kernel>>,
    ) -> Run {
        let route = self.route(coll);
        let mut p = self.state.progress();
        Run::new(sched, send, recv, kernel, route, &mut p.colls.pool)
    }

    /// Runs `run` to completion. A round's single small receive is taken straight from the
    /// arriving frames (as `recv_into` does), without a request.
    pub(crate) fn drive(&self, mut run: Run) -> Result<(), Error> {
        run.allow_direct();
        let finished = {
            let mut p = self.state.progress();
            let p = &mut *p;
            run.advance(&mut p.engine, &mut p.fabric)
        };
        if !finished {
            self.state.wait_with(|p| {
                if let Some(d) = run.direct() {
                    let mut out = None;
                    let want = d.want;
                    let ok = d
                        .region
                        .write(d.range.clone(), |buf| p.pass_direct(want, buf, &mut out))
                        .is_ok();
                    if out.is_some() {
                        run.direct_done(&mut p.engine, out);
                    } else if !ok || !p.engine.can_recv_direct(want.0, want.1, want.2) {
                        run.direct_done(&mut p.engine, None);
                    }
                } else {
                    p.pass();
                }
                run.advance(&mut p.engine, &mut p.fabric)
            });
        }
        run.reclaim(&mut self.state.progress().colls.pool);
        run.result().map_err(|e| self.coll_error(e))
    }

    /// Runs `sched` (which [`SmallRun::takes`]) to completion on the caller's slices.
    pub(crate) fn run_small(
        &self,
        sched: Rc<Schedule>,
        coll: Coll,
        send: &[u8],
        recv: &mut [u8],
        kernel: Option<Rc<dyn Kernel>>,
    ) -> Result<(), Error> {
        let spare = self.state.progress().colls.pool.take_small();
        self.drive_small(SmallRun::new(
            sched,
            send,
            recv,
            spare,
            kernel,
            self.route(coll),
        ))
    }

    /// Drives a small run to completion. A round's single receive is taken straight from the
    /// arriving frames, as `recv_into` takes one.
    fn drive_small(&self, mut run: SmallRun<'_>) -> Result<(), Error> {
        loop {
            {
                let mut p = self.state.progress();
                let p = &mut *p;
                if run.advance(&mut p.engine, &mut p.fabric) {
                    break;
                }
            }
            if let Some((want, buf)) = run.direct() {
                let mut out = None;
                self.state.wait_with(|p| {
                    p.pass_direct(want, buf, &mut out);
                    out.is_some() || !p.engine.can_recv_direct(want.0, want.1, want.2)
                });
                // Without a frame (`None`) the receive is posted as a request instead.
                run.direct_done(&mut self.state.progress().engine, out);
            } else {
                self.state.wait_with(|p| {
                    p.pass();
                    run.advance(&mut p.engine, &mut p.fabric) || run.has_direct()
                });
            }
        }
        let (result, spare) = run.finish();
        self.state.progress().colls.pool.give_small(spare);
        result.map_err(|e| self.coll_error(e))
    }

    /// Runs a call to completion (the blocking form), after checking that the ranks agree on
    /// its arguments if the check is on.
    pub(crate) fn run_call(&self, call: Call<'_>) -> Result<(), Error> {
        if self.shared.check.get() {
            self.check_agreement(&call.spec, call.op)?;
        }
        self.run_unchecked(call)
    }

    /// Compares what the ranks must agree on for `spec` ([`Spec::agreement`]) with one
    /// allreduce of each value and its complement under `Max` (the maximum and the minimum at
    /// once): every rank learns the same answer, so all fail or none does.
    fn check_agreement(&self, spec: &Spec, op: u64) -> Result<(), Error> {
        const N: usize = registry::AGREEMENT_FIELDS.len() + 1;
        let mut mine = [op; N];
        mine[..N - 1].copy_from_slice(&spec.agreement());
        let mut both = [0u64; 2 * N];
        for (i, v) in mine.iter().enumerate() {
            both[i] = *v;
            both[i + N] = !*v;
        }
        let mut all = [0u64; 2 * N];
        self.run_unchecked(self.call_allreduce::<u64, _>(&both[..], &mut all[..], Op::Max)?)?;
        match (0..N).find(|&i| all[i] != !all[i + N]) {
            Some(i) => Err(Error::CollectiveDisagreement {
                field: registry::AGREEMENT_FIELDS
                    .get(i)
                    .copied()
                    .unwrap_or("reduction operation"),
            }),
            None => Ok(()),
        }
    }

    /// Turns the collective check on or off for this communicator (default:
    /// `OXMPI_COLL_CHECK=1`). With it on, every blocking collective first compares across the
    /// ranks what they must agree on (the collective, root, counts, the reduction's element
    /// size, commutativity and builtin op; all user ops count as one) and fails on
    /// every rank with [`Error::CollectiveDisagreement`] rather than run mismatched calls,
    /// at the cost of one small allreduce per call. Every rank must set the same. Nonblocking
    /// and persistent starts are not checked: a check there would block.
    pub fn set_collective_check(&self, on: bool) {
        self.shared.check.set(on);
    }

    fn run_unchecked(&self, call: Call<'_>) -> Result<(), Error> {
        let sched = self.schedule(&call.spec)?;
        let coll = call.spec.coll();
        let Call {
            send, recv, kernel, ..
        } = call;
        if SmallRun::takes(&sched) {
            return self.run_small(sched, coll, send, recv, kernel);
        }
        lend_scope(
            |l| {
                let run = self.new_run(
                    sched,
                    coll,
                    l.lend_region(send),
                    l.lend_region_mut(recv),
                    kernel,
                );
                self.drive(run)
            },
            |done| self.state.wait_until(|_| done()),
        )
    }

    pub(crate) fn coll_error(&self, e: CollError) -> Error {
        match e {
            CollError::P2p(p) => Error::from_p2p(p, |w| self.group.from_world(w).unwrap_or(w)),
            CollError::Count {
                peer,
                expected,
                got,
            } => Error::CollectiveMismatch {
                rank: peer,
                expected,
                got,
            },
            CollError::Region(r) => Error::Internal(format!("collective schedule: {r}")),
        }
    }

    /// Forces `algorithm` for `collective` on this communicator (overrides
    /// `OXMPI_COLL_<NAME>` and the table). Every rank must force the same.
    pub fn force_algorithm(&self, collective: &str, algorithm: &str) -> Result<(), Error> {
        let coll = Coll::from_name(collective)
            .ok_or_else(|| Error::Algorithm(format!("no collective named '{collective}'")))?;
        let algo = registry::find(coll, algorithm).ok_or_else(|| {
            let known: Vec<&str> = registry::algorithms(coll).map(|a| a.name).collect();
            Error::Algorithm(format!(
                "{collective} has no algorithm '{algorithm}' (known: {})",
                known.join(", ")
            ))
        })?;
        let mut f = self.shared.forced.borrow_mut();
        f.retain(|(c, _)| *c != coll);
        f.push((coll, algo.name));
        self.shared.schedules.borrow_mut().clear();
        Ok(())
    }

    /// Removes this communicator's forced algorithms.
    pub fn clear_forced_algorithms(&self) {
        self.shared.forced.borrow_mut().clear();
        self.shared.schedules.borrow_mut().clear();
    }

    /// Name of the algorithm a call would use (for tools and tests).
    pub fn algorithm_for(&self, collective: &str, bytes: usize) -> Result<&'static str, Error> {
        let coll = Coll::from_name(collective)
            .ok_or_else(|| Error::Algorithm(format!("no collective named '{collective}'")))?;
        let p = self.size();
        let spec = match coll {
            Coll::Barrier => Spec::Barrier,
            Coll::Bcast => Spec::Bcast { root: 0, bytes },
            Coll::Reduce => Spec::Reduce {
                root: 0,
                bytes,
                elem: 1,
                commutative: true,
            },
            Coll::Allreduce => Spec::Allreduce {
                bytes,
                elem: 1,
                commutative: true,
            },
            Coll::Gather => Spec::Gather {
                root: 0,
                block: bytes,
            },
            Coll::Scatter => Spec::Scatter {
                root: 0,
                block: bytes,
            },
            Coll::Allgather => Spec::Allgather { block: bytes },
            Coll::Alltoall => Spec::Alltoall { block: bytes },
            Coll::ReduceScatterBlock => Spec::ReduceScatterBlock {
                block: bytes,
                elem: 1,
                commutative: true,
            },
            Coll::Scan => Spec::Scan {
                bytes,
                elem: 1,
                commutative: true,
            },
            Coll::Exscan => Spec::Exscan {
                bytes,
                elem: 1,
                commutative: true,
            },
            Coll::Gatherv => Spec::Gatherv {
                root: 0,
                send: bytes,
                recv: Blocks::equal(p, bytes),
            },
            Coll::Scatterv => Spec::Scatterv {
                root: 0,
                send: Blocks::equal(p, bytes),
                recv: bytes,
            },
            Coll::Allgatherv => Spec::Allgatherv {
                send: bytes,
                recv: Blocks::equal(p, bytes),
            },
            Coll::Alltoallv => Spec::Alltoallv {
                send: Blocks::equal(p, bytes),
                recv: Blocks::equal(p, bytes),
            },
            Coll::ReduceScatter => Spec::ReduceScatter {
                blocks: Blocks::equal(p, bytes),
                elem: 1,
                commutative: true,
            },
        };
        Ok(self.algorithm(&spec)?.name)
    }
}

/// Schedules kept per communicator.
const SCHEDULE_CACHE: usize = 16;

/// Tag of collective number `seq` of kind `code`: the kind keeps different collectives from
/// matching each other if ranks call them in different orders.
fn coll_tag(seq: u32, code: u8) -> i32 {
    (((seq & 0x00FF_FFFF) << 7) | code as u32) as i32
}

/// The blocking collectives.
impl Communicator {
    /// Blocks until every rank has called it (`MPI_Barrier`).
    pub fn barrier(&self) -> Result<(), Error> {
        self.run_call(self.call_barrier())
    }

    /// Broadcasts `root`'s `buf` into every rank's `buf` (`MPI_Bcast`).
    pub fn bcast<T: Pod>(&self, buf: &mut [T], root: u32) -> Result<(), Error> {
        self.run_call(self.call_bcast(buf, root)?)
    }

    /// Reduces every rank's `send` element-wise with `op` into `recv` at `root` (`MPI_Reduce`);
    /// `recv` is not used on other ranks (an empty slice will do).
    pub fn reduce<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
        root: u32,
    ) -> Result<(), Error> {
        self.run_call(self.call_reduce(send, recv, op, root)?)
    }

    /// Reduces every rank's `send` into every rank's `recv` (`MPI_Allreduce`).
    pub fn allreduce<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<(), Error> {
        self.run_call(self.call_allreduce(send, recv, op)?)
    }

    /// Inclusive prefix reduction: rank `r` gets `send[0] op ... op send[r]` (`MPI_Scan`).
    pub fn scan<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<(), Error> {
        self.run_call(self.call_scan(send, recv, op, false)?)
    }

    /// Exclusive prefix reduction: rank `r > 0` gets `send[0] op ... op send[r-1]`; rank 0's
    /// `recv` is left untouched (`MPI_Exscan`).
    pub fn exscan<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<(), Error> {
        self.run_call(self.call_scan(send, recv, op, true)?)
    }

    /// Gathers every rank's `send` into `recv` at `root`, in rank order (`MPI_Gather`).
    pub fn gather<T: Pod>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<(), Error> {
        self.run_call(self.call_gather(send, recv, root)?)
    }

    /// Gathers `send` (of `counts[rank]` elements) into `recv` at `root`, block `i` at
    /// `displs[i]` (`MPI_Gatherv`); `counts` and `displs` are used at the root.
    pub fn gatherv<T: Pod>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<(), Error> {
        self.run_call(self.call_gatherv(send, recv, counts, displs, root)?)
    }

    /// Scatters `root`'s `send` in rank-order blocks of `recv.len()` elements (`MPI_Scatter`).
    pub fn scatter<T: Pod>(&self, send: &[T], recv: &mut [T], root: u32) -> Result<(), Error> {
        self.run_call(self.call_scatter(send, recv, root)?)
    }

    /// Scatters blocks of `root`'s `send` (`counts[i]` elements at `displs[i]` to rank `i`)
    /// (`MPI_Scatterv`).
    pub fn scatterv<T: Pod>(
        &self,
        send: &[T],
        counts: &[usize],
        displs: &[usize],
        recv: &mut [T],
        root: u32,
    ) -> Result<(), Error> {
        self.run_call(self.call_scatterv(send, counts, displs, recv, root)?)
    }

    /// Gathers every rank's `send` into every rank's `recv` (`MPI_Allgather`).
    pub fn allgather<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<(), Error> {
        self.run_call(self.call_allgather(send, recv)?)
    }

    /// Gathers blocks of varying length into every rank's `recv` (`MPI_Allgatherv`).
    pub fn allgatherv<T: Pod>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<(), Error> {
        self.run_call(self.call_allgatherv(send, recv, counts, displs)?)
    }

    /// Block `j` of rank `i`'s `send` becomes block `i` of rank `j`'s `recv` (`MPI_Alltoall`).
    pub fn alltoall<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<(), Error> {
        self.run_call(self.call_alltoall(send, recv)?)
    }

    /// All-to-all with per-rank counts and displacements (`MPI_Alltoallv`).
    #[allow(clippy::too_many_arguments)]
    pub fn alltoallv<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
        send_displs: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
        recv_displs: &[usize],
    ) -> Result<(), Error> {
        self.run_call(self.call_alltoallv(
            send,
            send_counts,
            send_displs,
            recv,
            recv_counts,
            recv_displs,
        )?)
    }

    /// Reduces `send` (size × `recv.len()` elements) and scatters block `i` of the result to
    /// rank `i` (`MPI_Reduce_scatter_block`).
    pub fn reduce_scatter_block<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<(), Error> {
        self.run_call(self.call_reduce_scatter_block(send, recv, op)?)
    }

    /// Reduces `send` and scatters `counts[i]` elements of the result to rank `i`
    /// (`MPI_Reduce_scatter`).
    pub fn reduce_scatter<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        op: O,
    ) -> Result<(), Error> {
        self.run_call(self.call_reduce_scatter(send, recv, counts, op)?)
    }
}

/// Nonblocking collectives: like the blocking ones, with buffers lent for the scope.
impl<'s> Scope<'s, '_> {
    fn start(&self, call: Call<'s>) -> Result<CollRequest<'s>, Error> {
        let c = self.comm();
        let sched = c.schedule(&call.spec)?;
        let coll = call.spec.coll();
        let send = self.lender().lend_region(call.send);
        let recv = self.lender().lend_region_mut(call.recv);
        Ok(self.start_run(c, c.new_run(sched, coll, send, recv, call.kernel)))
    }

    /// Hands `run` (made by communicator `c`, on buffers lent for this scope) to the progress
    /// engine, advanced by every progress pass from now on.
    pub(crate) fn start_run(&self, c: &Communicator, run: Run) -> CollRequest<'s> {
        let id = {
            let mut p = c.state.progress();
            let p = &mut *p;
            let id = p.colls.insert(run);
            p.colls.advance_all(&mut p.engine, &mut p.fabric);
            id
        };
        CollRequest {
            comm: c.clone(),
            id,
            active: true,
            _scope: PhantomData,
        }
    }

    /// `MPI_Ibarrier`.
    pub fn ibarrier(&self) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_barrier())
    }

    /// `MPI_Ibcast`.
    pub fn ibcast<T: Pod>(&self, buf: &'s mut [T], root: u32) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_bcast(buf, root)?)
    }

    /// `MPI_Ireduce`.
    pub fn ireduce<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        op: O,
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_reduce(send, recv, op, root)?)
    }

    /// `MPI_Iallreduce`.
    pub fn iallreduce<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_allreduce(send, recv, op)?)
    }

    /// `MPI_Iscan`.
    pub fn iscan<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_scan(send, recv, op, false)?)
    }

    /// `MPI_Iexscan`.
    pub fn iexscan<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_scan(send, recv, op, true)?)
    }

    /// `MPI_Igather`.
    pub fn igather<T: Pod>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_gather(send, recv, root)?)
    }

    /// `MPI_Igatherv`.
    pub fn igatherv<T: Pod>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        counts: &[usize],
        displs: &[usize],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_gatherv(send, recv, counts, displs, root)?)
    }

    /// `MPI_Iscatter`.
    pub fn iscatter<T: Pod>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_scatter(send, recv, root)?)
    }

    /// `MPI_Iscatterv`.
    pub fn iscatterv<T: Pod>(
        &self,
        send: &'s [T],
        counts: &[usize],
        displs: &[usize],
        recv: &'s mut [T],
        root: u32,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(
            self.comm()
                .call_scatterv(send, counts, displs, recv, root)?,
        )
    }

    /// `MPI_Iallgather`.
    pub fn iallgather<T: Pod>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_allgather(send, recv)?)
    }

    /// `MPI_Iallgatherv`.
    pub fn iallgatherv<T: Pod>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        counts: &[usize],
        displs: &[usize],
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_allgatherv(send, recv, counts, displs)?)
    }

    /// `MPI_Ialltoall`.
    pub fn ialltoall<T: Pod>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_alltoall(send, recv)?)
    }

    /// `MPI_Ialltoallv`.
    #[allow(clippy::too_many_arguments)]
    pub fn ialltoallv<T: Pod>(
        &self,
        send: &'s [T],
        send_counts: &[usize],
        send_displs: &[usize],
        recv: &'s mut [T],
        recv_counts: &[usize],
        recv_displs: &[usize],
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_alltoallv(
            send,
            send_counts,
            send_displs,
            recv,
            recv_counts,
            recv_displs,
        )?)
    }

    /// `MPI_Ireduce_scatter_block`.
    pub fn ireduce_scatter_block<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_reduce_scatter_block(send, recv, op)?)
    }

    /// `MPI_Ireduce_scatter`.
    pub fn ireduce_scatter<T: Pod, O: ReduceOp<T>>(
        &self,
        send: &'s [T],
        recv: &'s mut [T],
        counts: &[usize],
        op: O,
    ) -> Result<CollRequest<'s>, Error> {
        self.start(self.comm().call_reduce_scatter(send, recv, counts, op)?)
    }
}
