//! Nonblocking operations and their requests (`MPI_Request`).
//!
//! A [`Request`] on a borrowed buffer comes from a [`Scope`] (see
//! [`Communicator::scope`](crate::Communicator::scope)): the buffer is borrowed for the whole
//! scope, so the borrow checker keeps it alive and untouched while the transport may use it,
//! and the scope waits for the transport before it returns. Requests on owned data
//! ([`Communicator::isend_obj`](crate::Communicator::isend_obj),
//! [`Communicator::irecv_obj`](crate::Communicator::irecv_obj)) need no scope. Dropping a
//! request without waiting detaches it: the operation still completes.

use crate::comm::{decode, Communicator};
use crate::progress::Progress;
use crate::status::{check_tag, Source, Status, Tag};
use crate::Error;
use bytemuck::Pod;
use oxmpi_fabric::Lender;
use oxmpi_p2p::{Completion, ReqId, SendMode};
use std::marker::PhantomData;

/// Lends buffers to nonblocking operations on one communicator until the scope ends.
pub struct Scope<'s, 'env> {
    lender: &'s Lender<'s, 'env>,
    comm: &'env Communicator,
}

impl<'s, 'env> Scope<'s, 'env> {
    pub(crate) fn new(lender: &'s Lender<'s, 'env>, comm: &'env Communicator) -> Self {
        Self { lender, comm }
    }

    pub(crate) fn comm(&self) -> &'env Communicator {
        self.comm
    }

    pub(crate) fn lender(&self) -> &'s Lender<'s, 'env> {
        self.lender
    }

    fn isend_mode<T: Pod>(
        &self,
        buf: &'s [T],
        dest: u32,
        tag: i32,
        mode: SendMode,
    ) -> Result<Request<'s>, Error> {
        let c = self.comm;
        let dest = c.dest(dest)?;
        let tag = check_tag(tag)?;
        let bytes: &[u8] = bytemuck::cast_slice(buf);
        if mode == SendMode::Standard {
            let mut p = c.state.progress();
            let Progress { engine, fabric, .. } = &mut *p;
            if engine.try_send_now(fabric, c.ctx, dest, tag, bytes)? {
                let status = oxmpi_p2p::Status {
                    source: dest,
                    tag,
                    bytes: bytes.len() as u64,
                };
                drop(p);
                return Ok(Request::sent(c.clone(), status));
            }
        }
        let mem = self.lender.lend(bytes);
        let id = c.state.progress().engine.isend(c.ctx, dest, tag, mem, mode);
        Ok(Request::new(c.clone(), id))
    }

    /// Starts a send (`MPI_Isend`).
    pub fn isend<T: Pod>(&self, buf: &'s [T], dest: u32, tag: i32) -> Result<Request<'s>, Error> {
        self.isend_mode(buf, dest, tag, SendMode::Standard)
    }

    /// Starts a synchronous-mode send (`MPI_Issend`).
    pub fn issend<T: Pod>(&self, buf: &'s [T], dest: u32, tag: i32) -> Result<Request<'s>, Error> {
        self.isend_mode(buf, dest, tag, SendMode::Synchronous)
    }

    /// Starts a receive into `buf` (`MPI_Irecv`).
    pub fn irecv<T: Pod>(
        &self,
        buf: &'s mut [T],
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<Request<'s>, Error> {
        let c = self.comm;
        let src = c.source(source.into())?;
        let tag = tag.into().raw()?;
        let mem = self.lender.lend_mut(bytemuck::cast_slice_mut(buf));
        let id = c.state.progress().engine.irecv(c.ctx, src, tag, Some(mem));
        Ok(Request::new(c.clone(), id))
    }
}

/// A pending nonblocking operation.
#[must_use = "a request should be waited for or tested"]
pub struct Request<'s> {
    comm: Communicator,
    id: ReqId,
    active: bool,
    /// Set for a send that completed when it was started (no engine request behind it).
    sent: Option<oxmpi_p2p::Status>,
    _scope: PhantomData<&'s ()>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({:#x}, active: {})", self.id, self.active)
    }
}

impl<'s> Request<'s> {
    pub(crate) fn new(comm: Communicator, id: ReqId) -> Self {
        Self {
            comm,
            id,
            active: true,
            sent: None,
            _scope: PhantomData,
        }
    }

    /// A send that already completed.
    pub(crate) fn sent(comm: Communicator, status: oxmpi_p2p::Status) -> Self {
        let mut r = Self::new(comm, 0);
        r.sent = Some(status);
        r
    }

    /// Whether the engine (or the immediate path) has finished it.
    fn is_done(&self, e: &oxmpi_p2p::Engine) -> bool {
        self.sent.is_some() || e.is_done(self.id)
    }

    fn take(&mut self) -> Option<Completion> {
        if !self.active {
            return None;
        }
        if let Some(status) = self.sent.take() {
            self.active = false;
            return Some(Completion {
                status,
                result: Ok(()),
                data: None,
            });
        }
        let c = self.comm.state.progress().engine.take(self.id)?;
        self.active = false;
        Some(c)
    }

    pub(crate) fn wait_completion(mut self) -> Completion {
        if let Some(c) = self.take() {
            return c;
        }
        let c = self.comm.wait_id(self.id);
        self.active = false;
        c
    }

    /// Waits for completion (`MPI_Wait`).
    pub fn wait(self) -> Result<Status, Error> {
        let comm = self.comm.clone();
        comm.finish(self.wait_completion())
    }

    /// Completes the request if it is done (`MPI_Test`); `Ok(None)` while in flight.
    pub fn test(&mut self) -> Result<Option<Status>, Error> {
        self.comm.state.progress().pass();
        match self.take() {
            Some(c) => self.comm.finish(c).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the request has not completed (or not been collected) yet.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Cancels a receive that no message has matched yet (`MPI_Cancel`, then `MPI_Wait`):
    /// `Ok(None)` when it was cancelled, its buffer untouched and free again, and a message
    /// sent later left for another receive. A receive a message has already matched, and a
    /// send (MPI-4 no longer cancels sends), are waited for instead: `Ok(Some(status))` as
    /// [`wait`](Self::wait) gives it.
    pub fn cancel(mut self) -> Result<Option<Status>, Error> {
        if self.active
            && self.sent.is_none()
            && self.comm.state.progress().engine.cancel_recv(self.id)
        {
            self.active = false;
            return Ok(None);
        }
        self.wait().map(Some)
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if self.active && self.sent.is_none() {
            if let Ok(mut p) = self.comm.state.progress.try_borrow_mut() {
                p.engine.detach(self.id);
            }
        }
    }
}

/// Waits for all requests (`MPI_Waitall`); returns their statuses in order, or the first error
/// after all have completed. [`wait_all_into`] does the same into a vector of the caller's,
/// without allocating one per call.
pub fn wait_all(reqs: &mut [Request<'_>]) -> Result<Vec<Status>, Error> {
    let mut out = Vec::with_capacity(reqs.len());
    collect_all(reqs, |s| out.push(s))?;
    Ok(out)
}

/// [`wait_all`] into `statuses`, which is cleared first and keeps its capacity: a loop that
/// reuses one vector allocates nothing for its statuses after the first round.
pub fn wait_all_into(reqs: &mut [Request<'_>], statuses: &mut Vec<Status>) -> Result<(), Error> {
    statuses.clear();
    statuses.reserve(reqs.len());
    collect_all(reqs, |s| statuses.push(s))
}

/// Waits for every active request and hands each status to `each`, in order; the first error
/// after all have completed.
fn collect_all(reqs: &mut [Request<'_>], mut each: impl FnMut(Status)) -> Result<(), Error> {
    let Some(first) = reqs.first() else {
        return Ok(());
    };
    let state = first.comm.state.clone();
    state.wait_until(|e| reqs.iter().all(|r| !r.active || r.is_done(e)));
    let mut err = None;
    for r in reqs.iter_mut() {
        if let Some(c) = r.take() {
            match r.comm.finish(c) {
                Ok(s) => each(s),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
    }
    err.map_or(Ok(()), Err)
}

/// Waits for any one active request (`MPI_Waitany`): its index and status, or `None` when no
/// request is active.
pub fn wait_any(reqs: &mut [Request<'_>]) -> Result<Option<(usize, Status)>, Error> {
    let Some(first) = reqs.iter().find(|r| r.active) else {
        return Ok(None);
    };
    let state = first.comm.state.clone();
    let mut which = None;
    state.wait_until(|e| {
        which = reqs.iter().position(|r| r.active && r.is_done(e));
        which.is_some()
    });
    let i = which.expect("one completed");
    let c = reqs[i].take().expect("completed");
    reqs[i].comm.finish(c).map(|s| Some((i, s)))
}

/// Whether every request has completed (`MPI_Testall`); if so they are all collected.
pub fn test_all(reqs: &mut [Request<'_>]) -> Result<bool, Error> {
    let Some(first) = reqs.first() else {
        return Ok(true);
    };
    let done = {
        let mut p = first.comm.state.progress();
        p.pass();
        reqs.iter().all(|r| !r.active || r.is_done(&p.engine))
    };
    if done {
        collect_all(reqs, |_| {})?;
    }
    Ok(done)
}

/// Whether any active request has completed (`MPI_Testany`), after one pass of progress: the
/// index and status of the first completed one (collected), or `None` when none has completed
/// or none is active.
pub fn test_any(reqs: &mut [Request<'_>]) -> Result<Option<(usize, Status)>, Error> {
    let Some(first) = reqs.iter().find(|r| r.active) else {
        return Ok(None);
    };
    let which = {
        let mut p = first.comm.state.progress();
        p.pass();
        reqs.iter().position(|r| r.active && r.is_done(&p.engine))
    };
    let Some(i) = which else {
        return Ok(None);
    };
    let c = reqs[i].take().expect("completed");
    reqs[i].comm.finish(c).map(|s| Some((i, s)))
}

/// Waits until at least one active request has completed, then collects every completed one
/// (`MPI_Waitsome`): their indices and statuses go to `done` (cleared first), in index order.
/// Returns how many; 0 when no request is active. A failed request's error is returned after
/// the others are collected (its index is not in `done`).
pub fn wait_some(
    reqs: &mut [Request<'_>],
    done: &mut Vec<(usize, Status)>,
) -> Result<usize, Error> {
    collect_some(reqs, done, true)
}

/// One pass of progress, then collects every completed request (`MPI_Testsome`): as
/// [`wait_some`], without waiting; 0 when none has completed.
pub fn test_some(
    reqs: &mut [Request<'_>],
    done: &mut Vec<(usize, Status)>,
) -> Result<usize, Error> {
    collect_some(reqs, done, false)
}

/// Waits for one active request to complete (`wait`) or makes one pass of progress, then
/// collects the completed ones into `done`; the first error after all of them.
fn collect_some(
    reqs: &mut [Request<'_>],
    done: &mut Vec<(usize, Status)>,
    wait: bool,
) -> Result<usize, Error> {
    done.clear();
    let Some(first) = reqs.iter().find(|r| r.active) else {
        return Ok(0);
    };
    let state = first.comm.state.clone();
    if wait {
        state.wait_until(|e| reqs.iter().any(|r| r.active && r.is_done(e)));
    } else {
        state.progress().pass();
    }
    let mut err = None;
    for (i, r) in reqs.iter_mut().enumerate() {
        let finished = r.active && r.is_done(&state.progress().engine);
        if !finished {
            continue;
        }
        let c = r.take().expect("completed");
        match r.comm.finish(c) {
            Ok(s) => done.push((i, s)),
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    err.map_or(Ok(done.len()), Err)
}

/// A pending receive of a serialized value.
#[must_use = "a request should be waited for"]
pub struct ObjRecv<D> {
    req: Request<'static>,
    _t: PhantomData<fn() -> D>,
}

impl<D: serde::de::DeserializeOwned> ObjRecv<D> {
    pub(crate) fn new(req: Request<'static>) -> Self {
        Self {
            req,
            _t: PhantomData,
        }
    }

    /// Waits for the value (mpi4py's `req.wait()` on an `irecv`).
    pub fn wait(self) -> Result<(D, Status), Error> {
        let comm = self.req.comm.clone();
        let mut c = self.req.wait_completion();
        let data = c.data.take().unwrap_or_default();
        let st = comm.finish(c)?;
        Ok((decode(&data)?, st))
    }

    /// Cancels the receive if no message has matched it yet (mpi4py's `req.cancel()`):
    /// `Ok(None)`; otherwise waits for the value as [`wait`](Self::wait) does.
    pub fn cancel(mut self) -> Result<Option<(D, Status)>, Error> {
        let r = &mut self.req;
        if r.active && r.comm.state.progress().engine.cancel_recv(r.id) {
            r.active = false;
            return Ok(None);
        }
        self.wait().map(Some)
    }
}
