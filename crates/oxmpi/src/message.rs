//! Matched probes (`MPI_Mprobe`, `MPI_Improbe`, `MPI_Mrecv`, `MPI_Imrecv`; mpi4py's
//! `comm.mprobe`, `comm.improbe` and `Message.recv`, `Message.irecv`).
//!
//! A plain probe leaves the message in matching, so a receive posted between the probe and the
//! receive meant for it (a wildcard, or another part of the program) can take it first. A
//! matched probe takes the message out of matching and hands back a [`Message`]: its size is
//! known before a buffer is chosen, and only that handle's receive takes it. A handle dropped
//! without a receive discards its message (its sender still completes).

use crate::comm::Communicator;
use crate::request::{ObjRecv, Request, Scope};
use crate::status::{Source, Status, Tag};
use crate::Error;
use bytemuck::Pod;
use oxmpi_fabric::lend_scope;
use oxmpi_p2p::ReqId;
use serde::de::DeserializeOwned;

/// A message taken out of matching by [`Communicator::mprobe`] or
/// [`Communicator::improbe`] (`MPI_Message`), waiting for its receive.
#[must_use = "a probed message is received with one of its recv methods; dropped, it is discarded"]
pub struct Message {
    comm: Communicator,
    /// The engine's handle (`None` once its receive has started).
    id: Option<ReqId>,
    status: Status,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Message({:?})", self.status)
    }
}

impl Communicator {
    /// Waits for a matching message and takes it out of matching (`MPI_Mprobe`): only the
    /// returned handle receives it.
    pub fn mprobe(&self, source: impl Into<Source>, tag: impl Into<Tag>) -> Result<Message, Error> {
        let src = self.source(source.into())?;
        let tag = tag.into().raw()?;
        let mut found = None;
        self.state.wait_until(|e| {
            found = e.improbe(self.ctx, src, tag);
            found.is_some()
        });
        let (id, st) = found.expect("mprobe found a message");
        Ok(self.message(id, st))
    }

    /// Takes a matching message out of matching if one has arrived (`MPI_Improbe`).
    pub fn improbe(
        &self,
        source: impl Into<Source>,
        tag: impl Into<Tag>,
    ) -> Result<Option<Message>, Error> {
        let src = self.source(source.into())?;
        let tag = tag.into().raw()?;
        let mut p = self.state.progress();
        p.pass();
        let found = p.engine.improbe(self.ctx, src, tag);
        drop(p);
        Ok(found.map(|(id, st)| self.message(id, st)))
    }

    fn message(&self, id: ReqId, st: oxmpi_p2p::Status) -> Message {
        Message {
            comm: self.clone(),
            id: Some(id),
            status: self.status(st),
        }
    }
}

impl Message {
    /// The message's source, tag and size.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Receives it into `buf` (`MPI_Mrecv`); a longer message is [`Error::Truncated`].
    pub fn recv_into<T: Pod>(mut self, buf: &mut [T]) -> Result<Status, Error> {
        let msg = self.take();
        let comm = self.comm.clone();
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        lend_scope(
            |l| {
                let mem = l.lend_mut(bytes);
                let id = comm.state.progress().engine.imrecv(msg, Some(mem));
                let id = id.expect("a probed message is held until received");
                comm.finish(comm.wait_id(id))
            },
            |done| comm.state.wait_until(|_| done()),
        )
    }

    /// Receives it into a new vector of exactly its length. A length that is not a whole
    /// number of `T` is [`Error::Count`], and the message is discarded.
    pub fn recv_vec<T: Pod>(self) -> Result<(Vec<T>, Status), Error> {
        let n = self.status.count::<T>()?;
        let mut v: Vec<T> = bytemuck::allocation::zeroed_vec(n as usize);
        let st = self.recv_into(&mut v)?;
        Ok((v, st))
    }

    /// Receives a value sent with `send_obj` (mpi4py's `Message.recv()`).
    pub fn recv_obj<D: DeserializeOwned>(self) -> Result<(D, Status), Error> {
        self.irecv_obj().wait()
    }

    /// Starts receiving a value sent with `send_obj` (mpi4py's `Message.irecv()`).
    pub fn irecv_obj<D: DeserializeOwned>(mut self) -> ObjRecv<D> {
        let comm = self.comm.clone();
        let id = self.start(None);
        ObjRecv::new(Request::new(comm, id))
    }

    fn take(&mut self) -> ReqId {
        self.id.take().expect("a message is received once")
    }

    /// Starts the receive into `buf` (`None`: a buffer of the message's size).
    fn start(&mut self, buf: Option<oxmpi_fabric::MemMut>) -> ReqId {
        let msg = self.take();
        let id = self.comm.state.progress().engine.imrecv(msg, buf);
        id.expect("a probed message is held until received")
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        // Never received: receive it into an empty buffer (a truncation nobody sees; a
        // rendezvous is not read, only finished) and let it go, so its sender is not left
        // waiting. (Not while the driver is borrowed, as by a panic unwinding through it: the
        // message then stays held.)
        let Some(msg) = self.id.take() else { return };
        if let Ok(mut p) = self.comm.state.progress.try_borrow_mut() {
            let empty = oxmpi_fabric::MemMut::from_vec(Vec::new());
            if let Some(id) = p.engine.imrecv(msg, Some(empty)) {
                p.engine.detach(id);
            }
        }
    }
}

impl<'s> Scope<'s, '_> {
    /// Starts receiving `msg` into `buf` (`MPI_Imrecv`); the scope keeps `buf` borrowed until
    /// the transport is done with it.
    pub fn imrecv<T: Pod>(&self, mut msg: Message, buf: &'s mut [T]) -> Result<Request<'s>, Error> {
        let mem = self.lender().lend_mut(bytemuck::cast_slice_mut(buf));
        let comm = msg.comm.clone();
        let id = msg.start(Some(mem));
        Ok(Request::new(comm, id))
    }
}
