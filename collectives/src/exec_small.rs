//! The executor for small blocking collectives: a [`SmallRun`] runs a schedule whose messages
//! are all small ([`SMALL_MAX`]) on the caller's own byte slices, with none of the
//! bookkeeping a [`Run`](crate::exec::Run) needs to outlive its call (regions, range claims,
//! pooled request vectors).
//!
//! Its steps run as a `Run`'s do, round by round, and its messages are the same (context,
//! tag and order), so ranks running either executor interoperate:
//! - a send goes out at once ([`Engine::try_send_now`]) or, when the fabric pushes back, as a
//!   request on a copy of its bytes;
//! - a round's single receive is taken straight from the arriving frame into its span (the
//!   driver offers frames through [`SmallRun::direct`]); other receives are posted with
//!   buffers from the engine's pool, copied into their spans on completion and handed back;
//! - a message of another length than the schedule expects is a count mismatch.

use crate::exec::{isend, CollError, Route};
use crate::ops::Kernel;
use crate::schedule::{receives, Buf, Local, Schedule, Span, Step};
use oxmpi_fabric::{Fabric, MemRef, RegionError};
use oxmpi_p2p::{Engine, P2pError, ReqId, Status};
use std::rc::Rc;

/// Largest message of a schedule [`SmallRun`] takes: the size of a direct receive.
pub const SMALL_MAX: usize = 4096;

/// What a direct receive matches on: (context, world source, tag).
pub type Want = (u32, i32, i32);

/// A request of the current round: a send on a copy, or a receive into `span`.
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: ReqId,
    peer: u32,
    recv: Option<Span>,
}

/// What one small run leaves for the next: its temporaries and its request list, emptied.
#[derive(Default)]
pub struct SmallSpare {
    temps: Vec<Vec<Word>>,
    pending: Vec<Pending>,
}

impl SmallSpare {
    /// Bytes held by the temporaries.
    pub fn bytes(&self) -> usize {
        self.temps.iter().map(Vec::capacity).sum::<usize>() * std::mem::size_of::<Word>()
    }
}

/// The unit of a temporary's storage: 16 bytes, so temporaries are aligned for every element
/// type a reduction kernel works on, as `Region::alloc`'s are.
type Word = u128;

/// One blocking execution of a small schedule (see the module doc).
pub struct SmallRun<'a> {
    sched: Rc<Schedule>,
    send: &'a [u8],
    recv: &'a mut [u8],
    /// Temporary `i` is the first `sched.temps[i]` bytes of `temps[i]`.
    temps: Vec<Vec<Word>>,
    kernel: Option<Rc<dyn Kernel>>,
    route: Route,
    next_round: usize,
    pending: Vec<Pending>,
    /// The round's receive waiting for its frame without a request: (peer, span).
    direct: Option<(u32, Span)>,
    error: Option<CollError>,
}

impl<'a> SmallRun<'a> {
    /// Whether `sched` suits this executor.
    pub fn takes(sched: &Schedule) -> bool {
        sched.largest_message <= SMALL_MAX
    }

    /// A run of `sched` on `send` and `recv`, reusing what an earlier run left (`spare`).
    pub fn new(
        sched: Rc<Schedule>,
        send: &'a [u8],
        recv: &'a mut [u8],
        spare: SmallSpare,
        kernel: Option<Rc<dyn Kernel>>,
        route: Route,
    ) -> Self {
        let SmallSpare { mut temps, pending } = spare;
        temps.resize_with(sched.temps.len(), Vec::new);
        for (t, &n) in temps.iter_mut().zip(&sched.temps) {
            t.clear();
            t.resize(n.div_ceil(std::mem::size_of::<Word>()), 0);
        }
        Self {
            sched,
            send,
            recv,
            temps,
            kernel,
            route,
            next_round: 0,
            pending,
            direct: None,
            error: None,
        }
    }

    /// The outcome, and what the next run may reuse.
    pub fn finish(mut self) -> (Result<(), CollError>, SmallSpare) {
        let result = match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        self.pending.clear();
        let spare = SmallSpare {
            temps: self.temps,
            pending: self.pending,
        };
        (result, spare)
    }

    /// The receive waiting for its frame, if any: match on (context, world source, tag) and
    /// copy into the slice.
    pub fn direct(&mut self) -> Option<(Want, &mut [u8])> {
        let (peer, span) = self.direct?;
        let want = (
            self.route.ctx,
            self.route.world(peer) as i32,
            self.route.tag,
        );
        if let Err(e) = self.slice_mut(span) {
            // A span outside its buffer (a wrong schedule): fail rather than wait for it.
            self.direct = None;
            self.error.get_or_insert(e);
            return None;
        }
        Some((want, self.slice_mut(span).ok()?))
    }

    /// Whether a receive waits to be offered its frame through [`direct`](Self::direct).
    pub fn has_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Completes the direct receive with the frame's outcome (`Some`), or posts it as a
    /// request (`None`: it can no longer be taken direct).
    pub fn direct_done(&mut self, engine: &mut Engine, outcome: Option<Result<Status, P2pError>>) {
        let Some((peer, span)) = self.direct.take() else {
            return;
        };
        match outcome {
            Some(Ok(st)) => self.check_len(peer, span.len, st.bytes as usize),
            Some(Err(e)) => {
                self.error.get_or_insert(CollError::P2p(e));
            }
            None => self.post_recv(peer, span, engine),
        }
    }

    fn check_len(&mut self, peer: u32, expected: usize, got: usize) {
        if got != expected {
            self.error.get_or_insert(CollError::Count {
                peer,
                expected,
                got,
            });
        }
    }

    fn post_recv(&mut self, peer: u32, span: Span, engine: &mut Engine) {
        let src = self.route.world(peer) as i32;
        let id = engine.irecv_capped(self.route.ctx, src, self.route.tag, span.len);
        self.pending.push(Pending {
            id,
            peer,
            recv: Some(span),
        });
    }

    /// Moves the run on as far as it can without waiting; true once it is done.
    pub fn advance(&mut self, engine: &mut Engine, fabric: &mut dyn Fabric) -> bool {
        loop {
            let mut i = 0;
            while i < self.pending.len() {
                let p = self.pending[i];
                let Some(c) = engine.take(p.id) else {
                    i += 1;
                    continue;
                };
                self.pending.swap_remove(i);
                match (c.result, p.recv) {
                    (Err(e), _) => {
                        self.error.get_or_insert(CollError::P2p(e));
                    }
                    (Ok(()), Some(span)) => {
                        // A longer message was the engine's truncation error above.
                        let got = c.status.bytes as usize;
                        self.check_len(p.peer, span.len, got);
                        let data = c.data.unwrap_or_default();
                        if got == span.len && data.len() == span.len {
                            match self.slice_mut(span) {
                                Ok(dst) => dst.copy_from_slice(&data),
                                Err(e) => {
                                    self.error.get_or_insert(e);
                                }
                            }
                        }
                        engine.recycle_buffer(data);
                    }
                    (Ok(()), None) => {}
                }
            }
            if !self.pending.is_empty() || self.direct.is_some() {
                return false;
            }
            if self.error.is_some() || self.next_round == self.sched.rounds.len() {
                return true;
            }
            let sched = self.sched.clone();
            let round = sched.round(self.next_round);
            let recvs = receives(round);
            for step in round {
                if let Err(e) = self.start(step, round, recvs, engine, fabric) {
                    self.error.get_or_insert(e);
                    break;
                }
            }
            self.next_round += 1;
        }
    }

    /// Starts `step` of `round` (which holds `recvs` receives).
    fn start(
        &mut self,
        step: &Step,
        round: &[Step],
        recvs: usize,
        engine: &mut Engine,
        fabric: &mut dyn Fabric,
    ) -> Result<(), CollError> {
        let (ctx, tag) = (self.route.ctx, self.route.tag);
        match *step {
            Step::Send { peer, span } => {
                let dest = self.route.world(peer);
                let bytes = self.slice(span)?;
                // A fabric error has already failed the peer in the engine; the request below
                // then reports it. Otherwise the send goes as `Run` sends it (see there).
                if !matches!(engine.try_send_now(fabric, ctx, dest, tag, bytes), Ok(true)) {
                    let data = MemRef::owned(bytes.to_vec());
                    let to = (ctx, dest, tag);
                    let id = isend(engine, &self.sched, round, recvs, peer, to, data);
                    self.pending.push(Pending {
                        id,
                        peer,
                        recv: None,
                    });
                }
            }
            Step::Recv { peer, span } => {
                let src = self.route.world(peer) as i32;
                if recvs == 1 && engine.can_recv_direct(ctx, src, tag) {
                    self.direct = Some((peer, span));
                } else {
                    self.post_recv(peer, span, engine);
                }
            }
            Step::Copy { .. } | Step::Reduce { .. } | Step::ReduceFrom { .. } => {
                if let Some((from, to, op)) = step.local() {
                    // (The kernel is only a reduction's: a copy takes no reference count.)
                    let k = (op != Local::Copy).then(|| self.kernel.clone()).flatten();
                    let other: &[u8] = match op {
                        // `other` is in the send buffer, which nothing writes.
                        Local::ReduceFrom { other, .. } => self
                            .send
                            .get(other.range())
                            .ok_or(out_of_bounds(other, self.send.len()))?,
                        _ => &[],
                    };
                    self.local(from, to, |s, d| op.apply(k.as_deref(), s, other, d))?
                }
            }
        }
        Ok(())
    }

    fn slice(&self, span: Span) -> Result<&[u8], CollError> {
        let buf: &[u8] = match span.buf {
            Buf::Send => self.send,
            Buf::Recv => self.recv,
            Buf::Tmp(i) => bytes(&self.temps[i as usize], self.sched.temps[i as usize]),
        };
        buf.get(span.range()).ok_or(out_of_bounds(span, buf.len()))
    }

    fn slice_mut(&mut self, span: Span) -> Result<&mut [u8], CollError> {
        let buf: &mut [u8] = match span.buf {
            Buf::Send => return Err(CollError::Region(RegionError::ReadOnly)),
            Buf::Recv => self.recv,
            Buf::Tmp(i) => bytes_mut(&mut self.temps[i as usize], self.sched.temps[i as usize]),
        };
        let len = buf.len();
        buf.get_mut(span.range()).ok_or(out_of_bounds(span, len))
    }

    /// Runs `f` on `from` and, mutably, `to` (disjoint ranges when in the same buffer).
    fn local(
        &mut self,
        from: Span,
        to: Span,
        f: impl FnOnce(&[u8], &mut [u8]),
    ) -> Result<(), CollError> {
        let sizes = &self.sched.temps;
        let (src, dst): (&[u8], &mut [u8]) = match (from.buf, to.buf) {
            (_, Buf::Send) => return Err(CollError::Region(RegionError::ReadOnly)),
            (Buf::Recv, Buf::Recv) => return self.within(from, to, f),
            (Buf::Tmp(i), Buf::Tmp(j)) if i == j => return self.within(from, to, f),
            (Buf::Send, Buf::Recv) => (self.send, &mut *self.recv),
            (Buf::Send, Buf::Tmp(j)) => (
                self.send,
                bytes_mut(&mut self.temps[j as usize], sizes[j as usize]),
            ),
            (Buf::Recv, Buf::Tmp(j)) => (
                &*self.recv,
                bytes_mut(&mut self.temps[j as usize], sizes[j as usize]),
            ),
            (Buf::Tmp(i), Buf::Recv) => (
                bytes(&self.temps[i as usize], sizes[i as usize]),
                &mut *self.recv,
            ),
            (Buf::Tmp(i), Buf::Tmp(j)) => {
                let (i, j) = (i as usize, j as usize);
                let (ni, nj) = (sizes[i], sizes[j]);
                if i < j {
                    let (lo, hi) = self.temps.split_at_mut(j);
                    (bytes(&lo[i], ni), bytes_mut(&mut hi[0], nj))
                } else {
                    let (lo, hi) = self.temps.split_at_mut(i);
                    (bytes(&hi[0], ni), bytes_mut(&mut lo[j], nj))
                }
            }
        };
        let (slen, dlen) = (src.len(), dst.len());
        let s = src.get(from.range()).ok_or(out_of_bounds(from, slen))?;
        let d = dst.get_mut(to.range()).ok_or(out_of_bounds(to, dlen))?;
        f(s, d);
        Ok(())
    }

    /// [`local`](Self::local) on two ranges of one buffer, which must not overlap.
    fn within(
        &mut self,
        from: Span,
        to: Span,
        f: impl FnOnce(&[u8], &mut [u8]),
    ) -> Result<(), CollError> {
        let buf: &mut [u8] = match to.buf {
            Buf::Send => return Err(CollError::Region(RegionError::ReadOnly)),
            Buf::Recv => self.recv,
            Buf::Tmp(i) => bytes_mut(&mut self.temps[i as usize], self.sched.temps[i as usize]),
        };
        let (a, b) = (from.range(), to.range());
        for (r, span) in [(&a, from), (&b, to)] {
            if r.end > buf.len() {
                return Err(out_of_bounds(span, buf.len()));
            }
        }
        if a.is_empty() || b.is_empty() {
            f(&[], &mut []);
            return Ok(());
        }
        if a.start < b.end && b.start < a.end {
            return Err(CollError::Region(RegionError::Overlap {
                start: b.start,
                end: b.end,
            }));
        }
        if a.start < b.start {
            let (lo, hi) = buf.split_at_mut(b.start);
            f(&lo[a], &mut hi[..b.len()]);
        } else {
            let (lo, hi) = buf.split_at_mut(a.start);
            f(&hi[..a.len()], &mut lo[b]);
        }
        Ok(())
    }
}

/// The first `n` bytes of a temporary's words.
fn bytes(t: &[Word], n: usize) -> &[u8] {
    &bytemuck::cast_slice(t)[..n]
}

fn bytes_mut(t: &mut [Word], n: usize) -> &mut [u8] {
    &mut bytemuck::cast_slice_mut(t)[..n]
}

fn out_of_bounds(span: Span, len: usize) -> CollError {
    CollError::Region(RegionError::OutOfBounds {
        start: span.off,
        end: span.off + span.len,
        len,
    })
}
