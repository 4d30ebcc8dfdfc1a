//! The executor: runs one rank's [`Schedule`] over the p2p engine's requests.
//!
//! A [`Run`] starts round after round: local steps (copies, reductions) at once, sends and
//! receives posted as requests on the collective's context and tag. A round is finished when
//! all its requests have completed; [`Run::advance`] never blocks, so the same run serves a
//! blocking collective (advance until done), a nonblocking one (advance from every progress
//! pass) and a persistent one (a new run of the same schedule per start).
//!
//! Receives must get exactly the bytes the schedule expects: a longer message is the engine's
//! truncation error, a shorter one a count mismatch — both reported rather than corrupting.

use crate::exec_small::SmallSpare;
use crate::ops::Kernel;
use crate::schedule::{receives, Buf, Local, Schedule, Span, Step};
use oxmpi_fabric::{Fabric, MemRef, Region, RegionError};
use oxmpi_p2p::{Engine, P2pError, ReqId};
use std::rc::Rc;

/// Why a collective failed on this rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollError {
    /// A send or receive failed (truncation: the peers disagree on counts).
    P2p(P2pError),
    /// A message from `peer` (communicator rank) had `got` bytes where the schedule expected
    /// `expected`: the ranks passed different counts.
    Count {
        peer: u32,
        expected: usize,
        got: usize,
    },
    /// A schedule addressed its buffers wrongly (a bug in an algorithm).
    Region(RegionError),
}

impl std::fmt::Display for CollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::P2p(e) => write!(f, "{e}"),
            Self::Count {
                peer,
                expected,
                got,
            } => write!(
                f,
                "collective count mismatch: rank {peer} sent {got} bytes where {expected} were expected"
            ),
            Self::Region(e) => write!(f, "collective schedule error: {e}"),
        }
    }
}

impl std::error::Error for CollError {}

/// Where a run's messages go: the engine context and tag, and the world rank of each
/// communicator rank.
#[derive(Clone, Debug)]
pub struct Route {
    pub ctx: u32,
    pub tag: i32,
    /// World rank of communicator rank `i`; empty when they are the same.
    pub world: Rc<[u32]>,
}

impl Route {
    pub(crate) fn world(&self, r: u32) -> u32 {
        if self.world.is_empty() {
            r
        } else {
            self.world[r as usize]
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    id: ReqId,
    peer: u32,
    /// Expected bytes, for receives.
    recv: Option<usize>,
}

/// One execution of a schedule.
pub struct Run {
    sched: Rc<Schedule>,
    /// The caller's send and receive buffers; dropped as soon as the run finishes.
    io: Option<(Region, Region)>,
    temps: Vec<Region>,
    kernel: Option<Rc<dyn Kernel>>,
    route: Route,
    next_round: usize,
    pending: Vec<Pending>,
    error: Option<CollError>,
    /// Whether receives may be taken straight from arriving frames (blocking runs, whose
    /// driver offers frames through [`Run::direct`]).
    allow_direct: bool,
    /// A small receive waiting for its frame without a request: (peer, span).
    direct: Option<(u32, Span)>,
}

/// A receive the driver should complete from arriving frames: match on `want` (context,
/// world source, tag), copy into `range` of the region.
pub struct DirectRecv<'a> {
    pub want: (u32, i32, i32),
    pub region: &'a Region,
    pub range: std::ops::Range<usize>,
}

impl Run {
    /// A run of `sched` on `send` and `recv`, with temporaries from `pool`, reducing with
    /// `kernel` if the schedule reduces.
    pub fn new(
        sched: Rc<Schedule>,
        send: Region,
        recv: Region,
        kernel: Option<Rc<dyn Kernel>>,
        route: Route,
        pool: &mut TempPool,
    ) -> Self {
        let mut temps = pool.spare_temps.pop().unwrap_or_default();
        temps.extend(sched.temps.iter().map(|&n| pool.take(n)));
        let pending = pool.spare_pending.pop().unwrap_or_default();
        Self {
            sched,
            io: Some((send, recv)),
            temps,
            kernel,
            route,
            next_round: 0,
            pending,
            error: None,
            allow_direct: false,
            direct: None,
        }
    }

    /// Lets this run take a round's single small receive straight from arriving frames; its
    /// driver must then offer frames through [`Run::direct`] and [`Run::direct_done`].
    pub fn allow_direct(&mut self) {
        self.allow_direct = true;
    }

    /// The receive waiting to be completed from arriving frames, if any.
    pub fn direct(&self) -> Option<DirectRecv<'_>> {
        let (peer, span) = self.direct?;
        Some(DirectRecv {
            want: (
                self.route.ctx,
                self.route.world(peer) as i32,
                self.route.tag,
            ),
            region: self.region(span.buf),
            range: span.range(),
        })
    }

    /// Completes the direct receive with the frame's outcome (`Some`), or, when it can no
    /// longer be direct (`None`: another message got in the way), posts it as a request.
    pub fn direct_done(
        &mut self,
        engine: &mut Engine,
        outcome: Option<Result<oxmpi_p2p::Status, P2pError>>,
    ) {
        let Some((peer, span)) = self.direct.take() else {
            return;
        };
        match outcome {
            Some(Ok(st)) if st.bytes as usize != span.len => {
                self.error.get_or_insert(CollError::Count {
                    peer,
                    expected: span.len,
                    got: st.bytes as usize,
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.error.get_or_insert(CollError::P2p(e));
            }
            None => {
                if let Err(e) = self.post_recv(peer, span, engine) {
                    self.error.get_or_insert(e);
                }
            }
        }
    }

    fn post_recv(&mut self, peer: u32, span: Span, engine: &mut Engine) -> Result<(), CollError> {
        let src = self.route.world(peer) as i32;
        let mem = self
            .region(span.buf)
            .view_mut(span.range())
            .map_err(CollError::Region)?;
        let id = engine.irecv(self.route.ctx, src, self.route.tag, Some(mem));
        self.pending.push(Pending {
            id,
            peer,
            recv: Some(span.len),
        });
        Ok(())
    }

    fn region(&self, b: Buf) -> &Region {
        let io = self
            .io
            .as_ref()
            .expect("a running schedule has its buffers");
        match b {
            Buf::Send => &io.0,
            Buf::Recv => &io.1,
            Buf::Tmp(i) => &self.temps[i as usize],
        }
    }

    /// Gives the temporaries of a finished run back to `pool`.
    pub fn reclaim(&mut self, pool: &mut TempPool) {
        if self.is_done() {
            for t in self.temps.drain(..) {
                pool.give(t);
            }
            if pool.spare_temps.len() < SPARE_VECS {
                pool.spare_temps.push(std::mem::take(&mut self.temps));
            }
            if pool.spare_pending.len() < SPARE_VECS && self.pending.capacity() > 0 {
                pool.spare_pending.push(std::mem::take(&mut self.pending));
            }
        }
    }

    /// Whether the run has finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
            && self.direct.is_none()
            && (self.error.is_some() || self.next_round == self.sched.rounds.len())
    }

    /// The outcome, once [`is_done`](Self::is_done).
    pub fn result(&self) -> Result<(), CollError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Moves the run on as far as it can without waiting; true once it is done.
    pub fn advance(&mut self, engine: &mut Engine, fabric: &mut dyn Fabric) -> bool {
        loop {
            let mut i = 0;
            while i < self.pending.len() {
                let p = self.pending[i];
                if let Some(c) = engine.take(p.id) {
                    self.pending.swap_remove(i);
                    let got = c.status.bytes as usize;
                    let outcome = match (c.result, p.recv) {
                        (Err(e), _) => Err(CollError::P2p(e)),
                        (Ok(()), Some(expected)) if got != expected => Err(CollError::Count {
                            peer: p.peer,
                            expected,
                            got,
                        }),
                        _ => Ok(()),
                    };
                    if let Err(e) = outcome {
                        self.error.get_or_insert(e);
                    }
                } else {
                    i += 1;
                }
            }
            if !self.pending.is_empty() || self.direct.is_some() {
                return false;
            }
            if self.error.is_some() || self.next_round == self.sched.rounds.len() {
                // Done: hand the caller's buffers back now (a lending scope waits for them).
                self.io = None;
                return true;
            }
            let sched = self.sched.clone();
            let round = sched.round(self.next_round);
            let recvs = receives(round);
            for step in round {
                if let (true, 1, Step::Recv { peer, span }) = (self.allow_direct, recvs, step) {
                    let src = self.route.world(*peer) as i32;
                    if span.len <= DIRECT_MAX
                        && engine.can_recv_direct(self.route.ctx, src, self.route.tag)
                    {
                        self.direct = Some((*peer, *span));
                        continue;
                    }
                }
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
                let region = self.region(span.buf);
                let sent = region
                    .read(span.range(), |b| {
                        engine.try_send_now(fabric, ctx, dest, tag, b)
                    })
                    .map_err(CollError::Region)?;
                // A fabric error has already failed the peer in the engine; the general
                // path below then reports it on the request.
                if !matches!(sent, Ok(true)) {
                    let mem = region.view(span.range()).map_err(CollError::Region)?;
                    let id = isend(
                        engine,
                        &self.sched,
                        round,
                        recvs,
                        peer,
                        (ctx, dest, tag),
                        mem,
                    );
                    self.pending.push(Pending {
                        id,
                        peer,
                        recv: None,
                    });
                }
            }
            Step::Recv { peer, span } => self.post_recv(peer, span, engine)?,
            Step::Copy { .. } | Step::Reduce { .. } | Step::ReduceFrom { .. } => {
                if let Some((from, to, op)) = step.local() {
                    // (The kernel is only a reduction's: a copy takes no reference count.)
                    let k = (op != Local::Copy).then(|| self.kernel.clone()).flatten();
                    match op {
                        Local::ReduceFrom { other, .. } => self
                            .region(other.buf)
                            .read(other.range(), |o| {
                                self.local(from, to, |s, d| op.apply(k.as_deref(), s, o, d))
                            })
                            .map_err(CollError::Region)??,
                        _ => self.local(from, to, |s, d| op.apply(k.as_deref(), s, &[], d))?,
                    }
                }
            }
        }
        Ok(())
    }

    fn local(
        &self,
        from: Span,
        to: Span,
        f: impl FnOnce(&[u8], &mut [u8]),
    ) -> Result<(), CollError> {
        Region::combine(
            self.region(from.buf),
            from.range(),
            self.region(to.buf),
            to.range(),
            f,
        )
        .map_err(CollError::Region)
    }
}

/// Starts a send of `data` to `peer` (world rank, context and tag in `to`) from `round` of
/// `sched` (a round with `recvs` receives), by the protocol its place in the schedule asks:
/// - an exchange when the round also receives from that peer and later rounds depend on it
///   ([`Engine::isend_exchange`]). A single-round schedule (linear alltoall) sends as if one
///   way: its reads all proceed at once, so a handshake costs it once, where dependent rounds
///   would each pay one;
/// - from an idle sender when the round receives nothing ([`Engine::isend_from_idle`]): the
///   receiver may ask this rank to help copy it;
/// - one way otherwise ([`Engine::isend_oneway`]);
/// - either of the last two as the round's only send ([`Engine::isend_single`]): eager up to
///   32 KiB. 2-rank bcast, reduce, gather and scatter at 16–32 KiB took 0.36–0.73x the time
///   of a single-copy read (interleaved, docs/benchmarks.md); reads stay for rounds that
///   send to several peers, which then copy in parallel.
pub(crate) fn isend(
    engine: &mut Engine,
    sched: &Schedule,
    round: &[Step],
    recvs: usize,
    peer: u32,
    (ctx, dest, tag): (u32, u32, i32),
    data: MemRef,
) -> ReqId {
    let exchange = recvs > 0
        && sched.rounds.len() > 1
        && round
            .iter()
            .any(|s| matches!(s, Step::Recv { peer: q, .. } if *q == peer));
    let single = || {
        round
            .iter()
            .filter(|s| matches!(s, Step::Send { .. }))
            .count()
            == 1
    };
    if exchange {
        engine.isend_exchange(ctx, dest, tag, data)
    } else if single() {
        engine.isend_single(ctx, dest, tag, data, recvs == 0)
    } else if recvs == 0 {
        engine.isend_from_idle(ctx, dest, tag, data)
    } else {
        engine.isend_oneway(ctx, dest, tag, data)
    }
}

/// Largest receive taken straight from an arriving frame.
const DIRECT_MAX: usize = 4096;

/// Temporaries kept between runs, so a repeated collective neither allocates nor faults in
/// fresh pages. Bounded in total size; larger requests than any kept buffer allocate.
#[derive(Default)]
pub struct TempPool {
    free: Vec<Region>,
    bytes: usize,
    /// Empty vectors of finished runs, for the next ones.
    spare_temps: Vec<Vec<Region>>,
    spare_pending: Vec<Vec<Pending>>,
    /// What the last [`SmallRun`](crate::exec_small::SmallRun) left for the next.
    small: SmallSpare,
}

/// Spare vectors a pool keeps.
const SPARE_VECS: usize = 8;

/// Most bytes a pool keeps.
const POOL_MAX_BYTES: usize = 256 << 20;

/// Most bytes of small-run temporaries a pool keeps.
const SMALL_TEMPS_MAX_BYTES: usize = 1 << 20;

impl TempPool {
    /// A temporary of at least `len` bytes (contents unspecified).
    pub fn take(&mut self, len: usize) -> Region {
        if len == 0 {
            return Region::empty();
        }
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, r)| r.len() >= len)
            .min_by_key(|(_, r)| r.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let r = self.free.swap_remove(i);
                self.bytes -= r.len();
                r
            }
            None => Region::alloc(len),
        }
    }

    /// What a small run may reuse (nothing when none was kept).
    pub fn take_small(&mut self) -> SmallSpare {
        std::mem::take(&mut self.small)
    }

    /// Keeps what a small run left for the next one, unless its temporaries are large.
    pub fn give_small(&mut self, spare: SmallSpare) {
        if spare.bytes() <= SMALL_TEMPS_MAX_BYTES {
            self.small = spare;
        }
    }

    /// Returns a temporary for reuse (dropped if the pool is full or it is still shared).
    pub fn give(&mut self, r: Region) {
        if !r.is_empty() && r.is_unique() && self.bytes + r.len() <= POOL_MAX_BYTES {
            self.bytes += r.len();
            self.free.push(r);
        }
    }
}
