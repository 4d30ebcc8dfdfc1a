//! Communicators and their point-to-point operations (MPI chapter 3).
//!
//! Two tiers, as in mpi4py: buffers of [`bytemuck::Pod`] elements move without serialization
//! (`send`, `recv_into`, `recv_vec`, ...), and any `serde` value moves as a compact binary
//! encoding (`send_obj`, `recv_obj`, ...). Ranks are communicator ranks; tags are
//! `0..=TAG_UB`; every call returns `Result`.

use crate::group::Group;
use crate::progress::{check_rank, Progress, State};
use crate::request::{ObjRecv, Request, Scope};
use crate::status::{check_tag, Source, Status, Tag};
use crate::Error;
use bytemuck::Pod;
use oxmpi_collectives::registry::{Coll, Spec};
use oxmpi_collectives::{Schedule, Topology};
use oxmpi_fabric::{lend_scope, MemRef};
use oxmpi_p2p::{Completion, ReqId, SendMode, ANY_SOURCE as RAW_ANY};
use serde::{de::DeserializeOwned, Serialize};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A communicator (`MPI_Comm`): a group of ranks and a private matching context.
///
/// Clones are handles on the same communicator (like copying an `MPI_Comm` handle); its
/// context id goes back to the pool when the last handle is dropped.
#[derive(Clone)]
pub struct Communicator {
    pub(crate) state: Rc<State>,
    pub(crate) group: Rc<Group>,
    /// Point-to-point context; `ctx + 1` carries this communicator's collectives.
    pub(crate) ctx: u32,
    pub(crate) rank: u32,
    pub(crate) shared: Rc<CommShared>,
}

/// A cached builtin-op kernel: (element type, op) and the kernel.
pub(crate) type KernelEntry = (
    (std::any::TypeId, oxmpi_collectives::Op),
    Rc<dyn oxmpi_collectives::Kernel>,
);

/// What all handles of one communicator share.
pub(crate) struct CommShared {
    /// Number of collectives started (tags of the next one).
    pub coll_seq: Cell<u32>,
    /// Algorithms forced with [`Communicator::force_algorithm`].
    pub forced: RefCell<Vec<(Coll, &'static str)>>,
    /// Recently built schedules, newest first (emptied when forced algorithms change).
    pub schedules: RefCell<Vec<(Spec, Rc<Schedule>)>>,
    /// World rank of each rank (empty when they are the same).
    pub world_map: Rc<[u32]>,
    /// Kernels of builtin ops, by element type and op.
    pub kernels: RefCell<Vec<KernelEntry>>,
    /// Which of this communicator's ranks share a node.
    pub topo: Topology,
    /// The context id to give back when the communicator goes away.
    pub release: Option<(Rc<State>, u32)>,
    /// Check the ranks' agreement before each blocking collective
    /// ([`Communicator::set_collective_check`]).
    pub check: Cell<bool>,
}

impl Drop for CommShared {
    fn drop(&mut self) {
        if let Some((state, ctx)) = self.release.take() {
            crate::comm_create::release_ctx(&state, ctx);
        }
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Communicator(rank {} of {}, context {})",
            self.rank,
            self.size(),
            self.ctx
        )
    }
}

impl Communicator {
    pub(crate) fn new(state: Rc<State>, group: Group, ctx: u32) -> Self {
        Self::with_release(state, group, ctx, false)
    }

    /// A communicator whose context id returns to the pool when it goes away (`owned`).
    pub(crate) fn with_release(state: Rc<State>, group: Group, ctx: u32, owned: bool) -> Self {
        let rank = group.from_world(state.rank).expect("this rank is a member");
        Self::with_rank(state, group, ctx, rank, owned)
    }

    /// A communicator handle with an explicit local rank (intercommunicators address the
    /// remote group, which this rank is not part of).
    pub(crate) fn with_rank(
        state: Rc<State>,
        group: Group,
        ctx: u32,
        rank: u32,
        owned: bool,
    ) -> Self {
        let members = group.world_ranks();
        let identity = members.iter().enumerate().all(|(i, &w)| i as u32 == w);
        let world_map: Rc<[u32]> = if identity {
            Rc::from(Vec::new())
        } else {
            Rc::from(members.to_vec())
        };
        let topo = state.topo.restrict(members);
        let shared = Rc::new(CommShared {
            coll_seq: Cell::new(0),
            forced: RefCell::new(Vec::new()),
            schedules: RefCell::new(Vec::new()),
            world_map,
            kernels: RefCell::new(Vec::new()),
            topo,
            release: owned.then(|| (state.clone(), ctx)),
            check: Cell::new(state.coll_check),
        });
        Self {
            state,
            group: Rc::new(group),
            ctx,
            rank,
            shared,
        }
    }

    /// A handle on this communicator's collective context, for collectives built from
    /// point-to-point calls.
    pub(crate) fn coll_view(&self) -> Communicator {
        Communicator {
            ctx: self.ctx + 1,
            ..self.clone()
        }
    }

    /// This process's rank in the communicator (`MPI_Comm_rank`).
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Number of ranks (`MPI_Comm_size`).
    pub fn size(&self) -> u32 {
        self.group.size()
    }

    /// World rank of communicator rank `r`.
    pub fn world_rank_of(&self, r: u32) -> Result<u32, Error> {
        check_rank(r, self.size())?;
        Ok(self.group.to_world(r))
    }

    pub(crate) fn dest(&self, r: u32) -> Result<u32, Error> {
        self.world_rank_of(r)
    }

    pub(crate) fn source(&self, s: Source) -> Result<i32, Error> {
        match s {
            Source::Any => Ok(RAW_ANY),
            Source::Rank(r) => Ok(self.world_rank_of(r)? as i32),
        }
    }

    pub(crate) fn status(&self, s: oxmpi_p2p::Status) -> Status {
        Status {
            source: self.group.from_world(s.source).unwrap_or(s.source),
            tag: s.tag,
            bytes: s.bytes,
        }
    }

    pub(crate) fn finish(&self, c: Completion) -> Result<Status, Error> {
        c.result.map_err(|e| self.error(e))?;
        Ok(self.status(c.status))
    }

    /// An engine error, with ranks translated to this communicator's.
    pub(crate) fn error(&self, e: oxmpi_p2p::P2pError) -> Error {
        Error::from_p2p(e, |w| self.group.from_world(w).unwrap_or(w))
    }

    /// Waits for `id` and takes its outcome.
    pub(crate) fn wait_id(&self, id: ReqId) -> Completion {
        self.state.wait_until(|e| e.is_done(id));
        self.state
            .progress()
            .engine
            .take(id)
            .expect("request completed")
    }

    fn settle(&self) -> impl FnOnce(&dyn Fn() -> bool) + '_ {
        move |done| self.state.wait_until(|_| done())
    }

    fn send_bytes(&self, bytes: &[u8], dest: u32, tag: i32, mode: SendMode) -> Result<(), Error> {
        let dest = self.dest(dest)?;
        let tag = check_tag(tag)?;
        if mode == SendMode::Standard {
            let mut p = self.state.progress();
            let Progress { engine, fabric, .. } = &mut *p;
            if engine.try_send_now(fabric, self.ctx, dest, tag, bytes)? {
                return Ok(());
            }
        }
        lend_scope(
            |l| {
                let mem = l.lend(bytes);
                let id = self
                    .state
                    .progress()
                    .engine
                    .isend(self.ctx, dest, tag, mem, mode);
                self.finish(self.wait_id(id)).map(drop)
            },
            self.settle(),
        )
    }

    /// Sends a buffer (`MPI_Send`): returns once `buf` may be reused.
    pub fn send<T: Pod>(&self, buf: &[T], dest: u32, tag: i32) -> Result<(), Error> {
        self.send_bytes(bytemuck::cast_slice(buf), dest, tag, SendMode::Standard)
    }

    /// Sends a buffer in synchronous mode (`MPI_Ssend`): returns once the receive has matched.
    pub fn ssend<T: Pod>(&self, buf: &[T], dest: u32, tag: i32) -> Result<(), Error> {
        self.send_bytes(bytemuck::cast_slice(buf), dest, tag, SendMode::Synchronous)
    }

    /// Receives into `buf` (`MPI_Recv`). A longer message is an [`Error::Truncated`] for this
    /// receive only: the message is consumed, the next one is unaffected.
    pub fn recv_into<T: Pod>(
        &self,
        buf: &mut [T],
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<Status, Error> {
        let src = self.source(source.into())?;
        let tag = tag.into().raw()?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        // Direct path: when nothing else is posted or waiting here, take the message straight
        // from the fabric into `buf`; fall back to a request as soon as a matching message
        // arrives some other way (a rendezvous, or out of order).
        let want = (self.ctx, src, tag);
        if self
            .state
            .progress()
            .engine
            .can_recv_direct(self.ctx, src, tag)
        {
            let mut out = None;
            let mut fallback = false;
            self.state.wait_with(|p| {
                p.pass_direct(want, bytes, &mut out);
                fallback = out.is_none() && !p.engine.can_recv_direct(self.ctx, src, tag);
                out.is_some() || fallback
            });
            if let Some(r) = out {
                return r.map(|st| self.status(st)).map_err(|e| self.error(e));
            }
        }
        lend_scope(
            |l| {
                let mem = l.lend_mut(bytes);
                let id = self
                    .state
                    .progress()
                    .engine
                    .irecv(self.ctx, src, tag, Some(mem));
                self.finish(self.wait_id(id))
            },
            self.settle(),
        )
    }

    /// Receives a message of any length into a new vector.
    pub fn recv_vec<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<(Vec<T>, Status), Error> {
        let st = self.probe(source, tag)?;
        let n = st.count::<T>()?;
        let mut v: Vec<T> = bytemuck::allocation::zeroed_vec(n as usize);
        let st = self.recv_into(&mut v, st.source, st.tag)?;
        Ok((v, st))
    }

    /// Sends any serializable value (mpi4py's lowercase `send`).
    pub fn send_obj<S: Serialize + ?Sized>(
        &self,
        obj: &S,
        dest: u32,
        tag: i32,
    ) -> Result<(), Error> {
        let bytes = encode(obj)?;
        self.send_bytes(&bytes, dest, tag, SendMode::Standard)
    }

    /// Sends a value in synchronous mode.
    pub fn ssend_obj<S: Serialize + ?Sized>(
        &self,
        obj: &S,
        dest: u32,
        tag: i32,
    ) -> Result<(), Error> {
        let bytes = encode(obj)?;
        self.send_bytes(&bytes, dest, tag, SendMode::Synchronous)
    }

    /// Receives a value sent with [`send_obj`](Self::send_obj) (mpi4py's lowercase `recv`).
    pub fn recv_obj<D: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<(D, Status), Error> {
        self.irecv_obj(source, tag)?.wait()
    }

    /// Starts sending a value; the request owns the encoded bytes (mpi4py's `isend`).
    pub fn isend_obj<S: Serialize + ?Sized>(
        &self,
        obj: &S,
        dest: u32,
        tag: i32,
    ) -> Result<Request<'static>, Error> {
        let dest = self.dest(dest)?;
        let tag = check_tag(tag)?;
        let mem = MemRef::owned(encode(obj)?);
        let id = self
            .state
            .progress()
            .engine
            .isend(self.ctx, dest, tag, mem, SendMode::Standard);
        Ok(Request::new(self.clone(), id))
    }

    /// Starts receiving a value (mpi4py's `irecv`).
    pub fn irecv_obj<D: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<ObjRecv<D>, Error> {
        let src = self.source(source.into())?;
        let tag = tag.into().raw()?;
        let id = self.state.progress().engine.irecv(self.ctx, src, tag, None);
        Ok(ObjRecv::new(Request::new(self.clone(), id)))
    }

    /// Sends a value and receives one in one call (mpi4py's lowercase `sendrecv`). Both are
    /// in flight at once, so ranks exchanging values around a ring cannot deadlock; a value
    /// that does not decode as `D` is an error for this call only.
    pub fn sendrecv_obj<S: Serialize + ?Sized, D: DeserializeOwned>(
        &self,
        obj: &S,
        dest: u32,
        send_tag: i32,
        source: impl Into<Source>,
        recv_tag: impl Into<Tag>,
    ) -> Result<(D, Status), Error> {
        let recv = self.irecv_obj(source, recv_tag)?;
        let send = self.isend_obj(obj, dest, send_tag)?;
        let got = recv.wait();
        send.wait()?;
        got
    }

    /// Sends one buffer and receives another in one call (`MPI_Sendrecv`).
    pub fn sendrecv<T: Pod, U: Pod>(
        &self,
        send: &[T],
        dest: u32,
        send_tag: i32,
        recv: &mut [U],
        source: impl Into<Source>,
        recv_tag: impl Into<Tag>,
    ) -> Result<Status, Error> {
        let (source, recv_tag) = (source.into(), recv_tag.into());
        self.scope(|s| {
            let r = s.irecv(recv, source, recv_tag)?;
            let q = s.isend(send, dest, send_tag)?;
            q.wait()?;
            r.wait()
        })
    }

    /// Sends `buf` to `dest` and receives into the same buffer from `source`
    /// (`MPI_Sendrecv_replace`): the outgoing contents are copied first (one allocation per
    /// call, as MPI libraries make), so the incoming message may arrive at any time. The
    /// incoming message may be shorter than `buf` (the status gives its length) but not longer.
    pub fn sendrecv_replace<T: Pod>(
        &self,
        buf: &mut [T],
        dest: u32,
        send_tag: i32,
        source: impl Into<Source>,
        recv_tag: impl Into<Tag>,
    ) -> Result<Status, Error> {
        let outgoing = buf.to_vec();
        self.sendrecv(&outgoing, dest, send_tag, buf, source, recv_tag)
    }

    /// Waits for a matching message without receiving it (`MPI_Probe`).
    pub fn probe(&self, source: impl Into<Source>, tag: impl Into<Tag>) -> Result<Status, Error> {
        let src = self.source(source.into())?;
        let tag = tag.into().raw()?;
        let mut found = None;
        self.state.wait_until(|e| {
            found = e.iprobe(self.ctx, src, tag);
            found.is_some()
        });
        Ok(self.status(found.expect("probe found a message")))
    }

    /// Checks for a matching message without receiving it (`MPI_Iprobe`).
    pub fn iprobe(
        &self,
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<Option<Status>, Error> {
        let src = self.source(source.into())?;
        let tag = tag.into().raw()?;
        let mut p = self.state.progress();
        p.pass();
        Ok(p.engine.iprobe(self.ctx, src, tag).map(|s| self.status(s)))
    }

    /// Runs `f` with a [`Scope`] for nonblocking operations on borrowed buffers: every buffer
    /// lent to a request stays borrowed until the scope ends, and the scope does not end
    /// before the transport is done with all of them — even if a request is leaked.
    pub fn scope<'env, R>(&'env self, f: impl for<'s> FnOnce(&Scope<'s, 'env>) -> R) -> R {
        lend_scope(|lender| f(&Scope::new(lender, self)), self.settle())
    }

    /// Brings the whole job down with `code` (`MPI_Abort`).
    pub fn abort(&self, code: i32) -> ! {
        self.state.abort(code, "MPI_Abort")
    }
}

pub(crate) fn encode<S: Serialize + ?Sized>(obj: &S) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(obj).map_err(|e| Error::Decode(format!("encoding failed: {e}")))
}

pub(crate) fn decode<D: DeserializeOwned>(bytes: &[u8]) -> Result<D, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::Decode(e.to_string()))
}
