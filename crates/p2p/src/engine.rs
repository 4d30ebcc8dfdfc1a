//! Requests and the protocol state machines.
//!
//! Sends: `eager` (one frame, complete once the fabric took it; with an ACK in synchronous
//! mode), `rndv/pipeline` (RTS, then DATA chunks after the receiver's CTS) and `rndv/read` (RTS
//! with the data's address, the receiver reads it and answers FIN). Receives match against the
//! unexpected queue when posted, or are matched by arrivals. Matching frames (EAGER, RTS) carry
//! a per-peer sequence number, so a fabric that reorders them cannot break MPI's
//! non-overtaking rule: early arrivals wait until their predecessors are processed.
//!
//! Outputs are queued per peer and handed to the fabric by [`Engine::progress_tx`]; a peer
//! whose fabric reports back-pressure keeps its queue while the others proceed.

use crate::frame::{FrameHeader, Kind, FLAG_RMA, FLAG_SENDER_IDLE, FLAG_SYNC};
use crate::matching::{Body, Posted, Queues, Remote, Unexpected};
use crate::protocol::{Protocol, ProtocolConfig};
use crate::{P2pError, Status, ANY_SOURCE};
use oxmpi_fabric::{Fabric, FabricError, Header, MemMut, MemRef, Rank, RemoteKey, Sent};
use std::collections::VecDeque;

/// A request handle: slot index in the low 32 bits, slot generation in the high 32.
pub type ReqId = u64;

/// Send modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// Standard mode (`MPI_Send`): may complete before the receive is posted.
    Standard,
    /// Synchronous mode (`MPI_Ssend`): completes only once a receive has matched.
    Synchronous,
}

/// The outcome of a finished request.
#[derive(Debug)]
pub struct Completion {
    /// Status (for sends: destination, tag and length).
    pub status: Status,
    /// Success or the request's error.
    pub result: Result<(), P2pError>,
    /// For receives into an engine-allocated buffer: the message.
    pub data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Queued,
    AwaitAck,
    AwaitCts,
    Streaming,
    AwaitFin,
    /// Eager frame sent in place ([`Sent::Lent`]): waits for the fabric's
    /// [`Event::SendDone`](oxmpi_fabric::Event::SendDone).
    AwaitLocal,
}

#[derive(Debug)]
struct SendReq {
    dest: Rank,
    ctx: u32,
    tag: i32,
    seq: u32,
    len: u64,
    data: Option<MemRef>,
    proto: Protocol,
    sync: bool,
    state: SendState,
    rreq: u64,
    /// The key a read-rendezvous RTS advertised; handed back to the fabric on completion.
    rkey: Option<RemoteKey>,
    /// A collective's send from a round that receives nothing (its RTS says so:
    /// [`FLAG_SENDER_IDLE`]).
    sender_idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    Posted,
    /// Matched an RTS; data frames are arriving from `peer`.
    Pipeline,
    /// Matched an RTS with a remote key; a read is queued.
    Read {
        sreq: u64,
        remote: Remote,
    },
}

#[derive(Debug)]
struct RecvReq {
    ctx: u32,
    src: i32,
    /// `None` until matched when the engine allocates the buffer.
    buf: Option<MemMut>,
    /// The buffer is the engine's (allocated on match, or capped by `irecv_capped`) and goes
    /// back with the completion.
    alloc: bool,
    state: RecvState,
    peer: Rank,
    msg_tag: i32,
    len: u64,
    got: u64,
}

#[derive(Debug)]
enum SlotState {
    Free,
    Send(SendReq),
    Recv(RecvReq),
    Done(Completion),
    /// A message taken out of matching by a matched probe, until its receive starts.
    Held {
        ctx: u32,
        msg: Unexpected,
    },
}

#[derive(Debug)]
struct Slot {
    gen: u32,
    detached: bool,
    state: SlotState,
}

#[derive(Debug, Clone, Copy)]
enum Tx {
    Eager(ReqId),
    Rts(ReqId),
    Data(ReqId, u64),
    Cts { sreq: u64, rreq: u64 },
    Fin { sreq: u64 },
    Ack { sreq: u64 },
}

/// What a send is part of, which decides its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendKind {
    /// Point-to-point.
    P2p,
    /// A collective's send in a round that also receives from its destination.
    Exchange,
    /// A collective's send with no receive from its destination in its round.
    OneWay,
    /// A one-way send from a round that receives nothing ([`FLAG_SENDER_IDLE`]).
    FromIdle,
    /// [`SendKind::OneWay`] or [`SendKind::FromIdle`] (`idle`) as the only send of its
    /// round: eager up to [`ProtocolConfig::single_eager_max`].
    Single { idle: bool },
}

#[derive(Debug)]
struct Held {
    header: FrameHeader,
    payload: Vec<u8>,
}

/// The protocol engine of one rank.
#[derive(Debug)]
pub struct Engine {
    rank: Rank,
    size: u32,
    config: Vec<ProtocolConfig>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    ctxs: Vec<Queues>,
    send_seq: Vec<u32>,
    recv_seq: Vec<u32>,
    held: Vec<Vec<Held>>,
    txq: Vec<VecDeque<Tx>>,
    tx_active: Vec<Rank>,
    reads: VecDeque<ReqId>,
    /// Remote keys of finished sends, to hand back to the fabric.
    key_releases: Vec<(Rank, RemoteKey)>,
    dead: Vec<Option<String>>,
    pool: Vec<Vec<u8>>,
    protocol_errors: u64,
}

const POOL_MAX: usize = 256;

impl Engine {
    /// An engine for `rank` of `size`, with the protocol thresholds towards each peer.
    pub fn new(rank: Rank, size: u32, config: Vec<ProtocolConfig>) -> Self {
        assert_eq!(config.len(), size as usize);
        let n = size as usize;
        Self {
            rank,
            size,
            config,
            slots: Vec::new(),
            free: Vec::new(),
            ctxs: Vec::new(),
            send_seq: vec![0; n],
            recv_seq: vec![0; n],
            held: (0..n).map(|_| Vec::new()).collect(),
            txq: (0..n).map(|_| VecDeque::new()).collect(),
            tx_active: Vec::new(),
            reads: VecDeque::new(),
            key_releases: Vec::new(),
            dead: vec![None; n],
            pool: Vec::new(),
            protocol_errors: 0,
        }
    }

    /// An engine whose thresholds come from `fabric`'s capabilities (and the environment).
    pub fn for_fabric(fabric: &dyn Fabric) -> Self {
        let config = (0..fabric.size())
            .map(|p| ProtocolConfig::from_caps(fabric.caps(p)))
            .collect();
        Self::new(fabric.rank(), fabric.size(), config)
    }

    /// This rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The thresholds towards `peer`.
    pub fn config(&self, peer: Rank) -> &ProtocolConfig {
        &self.config[peer as usize]
    }

    /// Lowers the largest eager message a collective sends one way towards `peer` to `max`
    /// (never below the point-to-point eager limit).
    pub fn limit_oneway_eager(&mut self, peer: Rank, max: usize) {
        let c = &mut self.config[peer as usize];
        c.oneway_eager_max = c.oneway_eager_max.min(max).max(c.eager_max);
    }

    /// Frames the engine dropped as malformed or unexpected.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors
    }

    // ----- request slots -----

    fn alloc(&mut self, state: SlotState) -> ReqId {
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].state = state;
                i
            }
            None => {
                self.slots.push(Slot {
                    gen: 1,
                    detached: false,
                    state,
                });
                (self.slots.len() - 1) as u32
            }
        };
        ((self.slots[idx as usize].gen as u64) << 32) | idx as u64
    }

    fn slot(&self, id: ReqId) -> Option<&Slot> {
        let s = self.slots.get((id & 0xffff_ffff) as usize)?;
        (s.gen == (id >> 32) as u32 && !matches!(s.state, SlotState::Free)).then_some(s)
    }

    fn slot_mut(&mut self, id: ReqId) -> Option<&mut Slot> {
        let s = self.slots.get_mut((id & 0xffff_ffff) as usize)?;
        (s.gen == (id >> 32) as u32 && !matches!(s.state, SlotState::Free)).then_some(s)
    }

    fn release(&mut self, id: ReqId) {
        let idx = (id & 0xffff_ffff) as u32;
        let s = &mut self.slots[idx as usize];
        s.state = SlotState::Free;
        s.gen = s.gen.wrapping_add(1).max(1);
        s.detached = false;
        self.free.push(idx);
    }

    fn send_req(&mut self, id: ReqId) -> Option<&mut SendReq> {
        match &mut self.slot_mut(id)?.state {
            SlotState::Send(s) => Some(s),
            _ => None,
        }
    }

    fn recv_req(&mut self, id: ReqId) -> Option<&mut RecvReq> {
        match &mut self.slot_mut(id)?.state {
            SlotState::Recv(r) => Some(r),
            _ => None,
        }
    }

    fn complete(&mut self, id: ReqId, status: Status, result: Result<(), P2pError>) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        let done = SlotState::Done(Completion {
            status,
            result,
            data: None,
        });
        // Lent buffers go back to their scope now (dropped with the old state); an owned
        // receive buffer travels with the completion.
        let mut key_release = None;
        match std::mem::replace(&mut slot.state, done) {
            SlotState::Recv(r) if r.alloc => {
                if let (Some(buf), SlotState::Done(c)) = (r.buf, &mut slot.state) {
                    c.data = buf.into_vec();
                }
            }
            SlotState::Send(SendReq {
                dest,
                rkey: Some(key),
                ..
            }) => key_release = Some((dest, key)),
            _ => {}
        }
        let detached = slot.detached;
        self.key_releases.extend(key_release);
        if detached {
            self.release(id);
        }
    }

    /// Whether `id` has completed.
    pub fn is_done(&self, id: ReqId) -> bool {
        self.slot(id)
            .is_some_and(|s| matches!(s.state, SlotState::Done(_)))
    }

    /// Takes a completed request's outcome and frees it; `None` while it is in flight.
    pub fn take(&mut self, id: ReqId) -> Option<Completion> {
        let slot = self.slot_mut(id)?;
        if !matches!(slot.state, SlotState::Done(_)) {
            return None;
        }
        let SlotState::Done(c) = std::mem::replace(&mut slot.state, SlotState::Free) else {
            unreachable!()
        };
        self.release(id);
        Some(c)
    }

    /// Cancels the receive `id` if no message has matched it yet (`MPI_Cancel`): it leaves its
    /// context's posted queue and is freed, dropping its buffer. True if cancelled; false for
    /// a send, a receive already matched (it completes as usual) or an unknown id.
    pub fn cancel_recv(&mut self, id: ReqId) -> bool {
        let ctx = match self.slot(id).map(|s| &s.state) {
            Some(SlotState::Recv(r)) if r.state == RecvState::Posted => r.ctx,
            _ => return false,
        };
        if !self.queues(ctx).remove_posted(id) {
            return false;
        }
        self.release(id);
        true
    }

    /// The caller no longer wants `id`'s outcome: free it now or when it completes.
    pub fn detach(&mut self, id: ReqId) {
        if self.take(id).is_none() {
            if let Some(s) = self.slot_mut(id) {
                s.detached = true;
            }
        }
    }

    fn queues(&mut self, ctx: u32) -> &mut Queues {
        let i = ctx as usize;
        if self.ctxs.len() <= i {
            self.ctxs.resize_with(i + 1, Queues::default);
        }
        &mut self.ctxs[i]
    }

    fn push_tx(&mut self, peer: Rank, tx: Tx) {
        let q = &mut self.txq[peer as usize];
        if q.is_empty() {
            self.tx_active.push(peer);
        }
        q.push_back(tx);
    }

    fn pooled_copy(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(bytes);
        v
    }

    fn recycle(&mut self, v: Vec<u8>) {
        if self.pool.len() < POOL_MAX && v.capacity() <= 1 << 20 {
            self.pool.push(v);
        }
    }

    // ----- operations -----

    /// Sends a standard-mode eager message at once if nothing is queued for `dest` and its
    /// fabric has room: the whole blocking `MPI_Send` of a small message, with no request, no
    /// lent buffer and no queueing. Returns `Ok(false)` (and changes nothing) when the message
    /// must take the general path ([`Engine::isend`]).
    pub fn try_send_now(
        &mut self,
        fabric: &mut dyn Fabric,
        ctx: u32,
        dest: Rank,
        tag: i32,
        bytes: &[u8],
    ) -> Result<bool, FabricError> {
        let d = dest as usize;
        if dest == self.rank
            || bytes.len() > self.config[d].eager_max
            || bytes.len() >= self.config[d].lent_min
            || !self.txq[d].is_empty()
            || self.dead[d].is_some()
        {
            return Ok(false);
        }
        let seq = self.send_seq[d];
        let h = FrameHeader {
            kind: Kind::Eager,
            flags: 0,
            ctx,
            src: self.rank,
            tag,
            seq,
            len: bytes.len() as u64,
            req: 0,
            arg: 0,
        };
        match fabric.send(dest, &h.encode(), bytes) {
            Ok(Sent::Done) => {
                self.send_seq[d] = seq.wrapping_add(1);
                Ok(true)
            }
            // `send` never lends.
            Ok(Sent::WouldBlock | Sent::Lent) => Ok(false),
            Err(e) => {
                self.fail_peer(dest, &e.to_string());
                Err(e)
            }
        }
    }

    /// Starts a send of `data` to `dest` (`MPI_Isend` / `MPI_Issend`).
    pub fn isend(&mut self, ctx: u32, dest: Rank, tag: i32, data: MemRef, mode: SendMode) -> ReqId {
        self.isend_with(ctx, dest, tag, data, mode, SendKind::P2p)
    }

    /// [`isend`](Self::isend) for a message sent while traffic flows both ways (collectives):
    /// large messages take the remote-read protocol wherever the fabric offers it
    /// ([`ProtocolConfig::select_exchange`]).
    pub fn isend_exchange(&mut self, ctx: u32, dest: Rank, tag: i32, data: MemRef) -> ReqId {
        self.isend_with(ctx, dest, tag, data, SendMode::Standard, SendKind::Exchange)
    }

    /// [`isend_exchange`](Self::isend_exchange) for a collective's send with no receive
    /// from `dest` in the same round: eager only up to
    /// [`ProtocolConfig::oneway_eager_max`].
    pub fn isend_oneway(&mut self, ctx: u32, dest: Rank, tag: i32, data: MemRef) -> ReqId {
        self.isend_with(ctx, dest, tag, data, SendMode::Standard, SendKind::OneWay)
    }

    /// [`isend_oneway`](Self::isend_oneway) from a round that receives nothing: this rank
    /// only waits for its sends, and a remote-read RTS says so ([`FLAG_SENDER_IDLE`]), so the
    /// receiver's fabric may ask it to help copy ([`Fabric::read_from_idle`]).
    pub fn isend_from_idle(&mut self, ctx: u32, dest: Rank, tag: i32, data: MemRef) -> ReqId {
        self.isend_with(ctx, dest, tag, data, SendMode::Standard, SendKind::FromIdle)
    }

    /// [`isend_oneway`](Self::isend_oneway), or [`isend_from_idle`](Self::isend_from_idle)
    /// when `idle`, for the only send of its round: eager up to
    /// [`ProtocolConfig::single_eager_max`] (32 KiB), a remote read above it. With one
    /// message to copy, the sender's copy into the ring costs about what the receiver's read
    /// would, and nobody waits for a handshake; the lower one-way limit is for rounds that
    /// send to several peers, whose reads then copy in parallel.
    pub fn isend_single(
        &mut self,
        ctx: u32,
        dest: Rank,
        tag: i32,
        data: MemRef,
        idle: bool,
    ) -> ReqId {
        let kind = SendKind::Single { idle };
        self.isend_with(ctx, dest, tag, data, SendMode::Standard, kind)
    }

    fn isend_with(
        &mut self,
        ctx: u32,
        dest: Rank,
        tag: i32,
        data: MemRef,
        mode: SendMode,
        kind: SendKind,
    ) -> ReqId {
        let len = data.len() as u64;
        let sync = mode == SendMode::Synchronous;
        let status = Status {
            source: dest,
            tag,
            bytes: len,
        };
        if dest == self.rank {
            return self.isend_self(ctx, tag, data, sync);
        }
        let cfg = &self.config[dest as usize];
        let proto = match kind {
            SendKind::Exchange => cfg.select_collective(data.len(), cfg.exchange_eager_max),
            SendKind::Single { .. } => cfg.select_collective(data.len(), cfg.single_eager_max()),
            SendKind::OneWay | SendKind::FromIdle => {
                cfg.select_collective(data.len(), cfg.oneway_eager_max)
            }
            SendKind::P2p => cfg.select(data.len()),
        };
        let seq = self.send_seq[dest as usize];
        self.send_seq[dest as usize] = seq.wrapping_add(1);
        let id = self.alloc(SlotState::Send(SendReq {
            dest,
            ctx,
            tag,
            seq,
            len,
            data: Some(data),
            proto,
            sync,
            state: SendState::Queued,
            rreq: 0,
            rkey: None,
            sender_idle: matches!(kind, SendKind::FromIdle | SendKind::Single { idle: true }),
        }));
        if let Some(why) = &self.dead[dest as usize] {
            let why = why.clone();
            self.complete(id, status, Err(P2pError::PeerLost { rank: dest, why }));
            return id;
        }
        let tx = if proto == Protocol::Eager {
            Tx::Eager(id)
        } else {
            Tx::Rts(id)
        };
        self.push_tx(dest, tx);
        id
    }

    fn isend_self(&mut self, ctx: u32, tag: i32, data: MemRef, sync: bool) -> ReqId {
        let me = self.rank;
        let len = data.len() as u64;
        let status = Status {
            source: me,
            tag,
            bytes: len,
        };
        if let Some(p) = self.queues(ctx).take_posted(me, tag) {
            self.deliver_bytes(p.id, me, tag, data.bytes());
            let id = self.alloc(SlotState::Done(Completion {
                status,
                result: Ok(()),
                data: None,
            }));
            return id;
        }
        if !sync && data.len() <= self.config[me as usize].eager_max {
            let copy = self.pooled_copy(data.bytes());
            self.queues(ctx).push_unexpected(Unexpected {
                src: me,
                tag,
                len,
                body: Body::Eager {
                    data: copy,
                    sync_req: None,
                },
            });
            return self.alloc(SlotState::Done(Completion {
                status,
                result: Ok(()),
                data: None,
            }));
        }
        let id = self.alloc(SlotState::Send(SendReq {
            dest: me,
            ctx,
            tag,
            seq: 0,
            len,
            data: Some(data),
            proto: Protocol::RndvPipeline,
            sync,
            state: SendState::AwaitFin,
            rreq: 0,
            rkey: None,
            sender_idle: false,
        }));
        self.queues(ctx).push_unexpected(Unexpected {
            src: me,
            tag,
            len,
            body: Body::SelfSend { sreq: id },
        });
        id
    }

    /// Whether a blocking receive for (`ctx`, `src`, `tag`) may take its message straight from
    /// the frames as they arrive ([`Engine::handle_frame_direct`]): no other receive is posted
    /// in `ctx` and no message already waiting matches, so the next matching arrival is its.
    /// A lost source makes it false, so a waiting direct receive falls back to a request and
    /// reports the loss.
    pub fn can_recv_direct(&mut self, ctx: u32, src: i32, tag: i32) -> bool {
        if src != ANY_SOURCE && self.dead.get(src as usize).is_some_and(Option::is_some) {
            return false;
        }
        let q = self.queues(ctx);
        q.posted().next().is_none() && q.peek_unexpected(src, tag).is_none()
    }

    /// Offers an arriving frame to a direct receive into `buf` (see
    /// [`Engine::can_recv_direct`]): the next in-order eager frame from a matching source is
    /// copied into `buf` and its outcome returned; any other frame is processed as usual
    /// ([`Engine::handle_frame`]) and `None` returned.
    pub fn handle_frame_direct(
        &mut self,
        peer: Rank,
        header: &Header,
        payload: &[u8],
        (ctx, src, tag): (u32, i32, i32),
        buf: &mut [u8],
    ) -> Option<Result<Status, P2pError>> {
        let Ok(h) = FrameHeader::decode(header) else {
            self.handle_frame(peer, header, payload);
            return None;
        };
        let p = peer as usize;
        let take = h.kind == Kind::Eager
            && h.src == peer
            && p < self.recv_seq.len()
            && peer != self.rank
            && h.ctx == ctx
            && crate::matching::matches(src, tag, peer, h.tag)
            && h.seq == self.recv_seq[p]
            && h.len == payload.len() as u64;
        if !take {
            self.handle_frame(peer, header, payload);
            return None;
        }
        self.recv_seq[p] = h.seq.wrapping_add(1);
        let n = buf.len().min(payload.len());
        buf[..n].copy_from_slice(&payload[..n]);
        if h.flags & FLAG_SYNC != 0 {
            self.push_tx(peer, Tx::Ack { sreq: h.req });
        }
        self.release_held(peer);
        let status = Status {
            source: peer,
            tag: h.tag,
            bytes: h.len,
        };
        Some(if payload.len() > buf.len() {
            Err(P2pError::Truncated {
                source: peer,
                tag: h.tag,
                len: h.len,
                capacity: buf.len() as u64,
            })
        } else {
            Ok(status)
        })
    }

    /// Starts a receive (`MPI_Irecv`). `buf = None` receives into a buffer the engine
    /// allocates to the message's size (returned in [`Completion::data`]).
    pub fn irecv(&mut self, ctx: u32, src: i32, tag: i32, buf: Option<MemMut>) -> ReqId {
        let alloc = buf.is_none();
        self.post_recv(ctx, src, tag, buf, alloc)
    }

    /// Starts a receive of at most `cap` bytes into a buffer of its own, returned whole in
    /// [`Completion::data`] (the message's length is the status's): a longer message is the
    /// truncation error a caller's buffer of `cap` bytes would give, and nothing larger is
    /// allocated whatever length a peer announces. The buffer comes from the engine's pool
    /// of spent ones; hand it back with [`Engine::recycle_buffer`] once read.
    pub fn irecv_capped(&mut self, ctx: u32, src: i32, tag: i32, cap: usize) -> ReqId {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.resize(cap, 0);
        self.post_recv(ctx, src, tag, Some(MemMut::from_vec(v)), true)
    }

    /// Takes back a buffer a completion returned ([`Completion::data`]) for later receives,
    /// while the pool has room.
    pub fn recycle_buffer(&mut self, v: Vec<u8>) {
        self.recycle(v);
    }

    /// Posts a receive into `buf` (`None`: allocated on match); `returned`: the buffer goes
    /// back with the completion.
    fn post_recv(
        &mut self,
        ctx: u32,
        src: i32,
        tag: i32,
        buf: Option<MemMut>,
        returned: bool,
    ) -> ReqId {
        let alloc = returned;
        let id = self.alloc(SlotState::Recv(RecvReq {
            ctx,
            src,
            buf,
            alloc,
            state: RecvState::Posted,
            peer: 0,
            msg_tag: 0,
            len: 0,
            got: 0,
        }));
        if src != ANY_SOURCE {
            if let Some(why) = self.dead.get(src as usize).cloned().flatten() {
                // Messages that arrived before the loss can still be received.
                if self.queues(ctx).peek_unexpected(src, tag).is_none() {
                    let st = Status {
                        source: src as u32,
                        tag,
                        bytes: 0,
                    };
                    self.complete(
                        id,
                        st,
                        Err(P2pError::PeerLost {
                            rank: src as u32,
                            why,
                        }),
                    );
                    return id;
                }
            }
        }
        match self.queues(ctx).take_unexpected(src, tag) {
            Some(u) => self.match_unexpected(id, u),
            None => self.queues(ctx).post(Posted { id, src, tag }),
        }
        id
    }

    /// Takes the oldest message matching (`ctx`, `src`, `tag`) out of matching, if one has
    /// arrived (`MPI_Improbe`): no receive can match it any more, and only
    /// [`imrecv`](Self::imrecv) of the returned handle receives it.
    pub fn improbe(&mut self, ctx: u32, src: i32, tag: i32) -> Option<(ReqId, Status)> {
        let msg = self.queues(ctx).take_unexpected(src, tag)?;
        let status = Status {
            source: msg.src,
            tag: msg.tag,
            bytes: msg.len,
        };
        Some((self.alloc(SlotState::Held { ctx, msg }), status))
    }

    /// Starts the receive of a message taken by [`improbe`](Self::improbe) (`MPI_Imrecv`),
    /// into `buf` or (`None`) a buffer of the message's size returned with the completion.
    /// The handle becomes the receive's request id; `None` if it holds no message.
    pub fn imrecv(&mut self, msg: ReqId, buf: Option<MemMut>) -> Option<ReqId> {
        let slot = self.slot_mut(msg)?;
        if !matches!(slot.state, SlotState::Held { .. }) {
            return None;
        }
        let SlotState::Held { ctx, msg: u } = std::mem::replace(&mut slot.state, SlotState::Free)
        else {
            unreachable!()
        };
        slot.state = SlotState::Recv(RecvReq {
            ctx,
            src: u.src as i32,
            alloc: buf.is_none(),
            buf,
            state: RecvState::Posted,
            peer: 0,
            msg_tag: 0,
            len: 0,
            got: 0,
        });
        self.match_unexpected(msg, u);
        Some(msg)
    }

    /// Checks for a matching message without receiving it (`MPI_Iprobe`).
    pub fn iprobe(&mut self, ctx: u32, src: i32, tag: i32) -> Option<Status> {
        self.queues(ctx).peek_unexpected(src, tag).map(|u| Status {
            source: u.src,
            tag: u.tag,
            bytes: u.len,
        })
    }

    /// Copies an eager message into matched receive `rid` and completes it.
    fn deliver_bytes(&mut self, rid: ReqId, src: Rank, tag: i32, bytes: &[u8]) {
        let Some(r) = self.recv_req(rid) else { return };
        let len = bytes.len() as u64;
        let status = Status {
            source: src,
            tag,
            bytes: len,
        };
        if r.alloc && r.buf.is_none() {
            let v = bytes.to_vec();
            let Some(slot) = self.slot_mut(rid) else {
                return;
            };
            slot.state = SlotState::Done(Completion {
                status,
                result: Ok(()),
                data: Some(v),
            });
            if slot.detached {
                self.release(rid);
            }
            return;
        }
        let buf = r.buf.as_mut().expect("lent receive buffer");
        let cap = buf.len();
        let n = cap.min(bytes.len());
        buf.bytes_mut()[..n].copy_from_slice(&bytes[..n]);
        let result = if bytes.len() > cap {
            Err(P2pError::Truncated {
                source: src,
                tag,
                len,
                capacity: cap as u64,
            })
        } else {
            Ok(())
        };
        self.complete(rid, status, result);
    }

    fn match_unexpected(&mut self, rid: ReqId, u: Unexpected) {
        match u.body {
            Body::Eager { data, sync_req } => {
                self.deliver_bytes(rid, u.src, u.tag, &data);
                self.recycle(data);
                if let Some(sreq) = sync_req {
                    self.push_tx(u.src, Tx::Ack { sreq });
                }
            }
            Body::Rts { sreq, remote } => {
                // A rendezvous announced before its sender was lost can never be read.
                if let Some(why) = self.dead.get(u.src as usize).cloned().flatten() {
                    let st = Status {
                        source: u.src,
                        tag: u.tag,
                        bytes: 0,
                    };
                    let lost = P2pError::PeerLost { rank: u.src, why };
                    self.complete(rid, st, Err(lost));
                    return;
                }
                self.start_rndv_recv(rid, u.src, u.tag, u.len, sreq, remote)
            }
            Body::SelfSend { sreq } => {
                let data = self.send_req(sreq).and_then(|s| s.data.take());
                if let Some(data) = data {
                    self.deliver_bytes(rid, u.src, u.tag, data.bytes());
                }
                let st = Status {
                    source: self.rank,
                    tag: u.tag,
                    bytes: u.len,
                };
                self.complete(sreq, st, Ok(()));
            }
        }
    }

    fn start_rndv_recv(
        &mut self,
        rid: ReqId,
        src: Rank,
        tag: i32,
        len: u64,
        sreq: u64,
        remote: Option<Remote>,
    ) {
        let Some(r) = self.recv_req(rid) else { return };
        if r.alloc && r.buf.is_none() {
            r.buf = Some(MemMut::alloc(len as usize));
        }
        r.peer = src;
        r.msg_tag = tag;
        r.len = len;
        r.got = 0;
        match remote {
            Some(remote) => {
                r.state = RecvState::Read { sreq, remote };
                self.reads.push_back(rid);
            }
            None => {
                r.state = RecvState::Pipeline;
                self.push_tx(src, Tx::Cts { sreq, rreq: rid });
            }
        }
    }

    fn finish_rndv_recv(&mut self, rid: ReqId) {
        let Some(r) = self.recv_req(rid) else { return };
        let cap = r.buf.as_ref().map_or(0, MemMut::len) as u64;
        let (src, tag, len) = (r.peer, r.msg_tag, r.len);
        let result = if len > cap {
            Err(P2pError::Truncated {
                source: src,
                tag,
                len,
                capacity: cap,
            })
        } else {
            Ok(())
        };
        self.complete(
            rid,
            Status {
                source: src,
                tag,
                bytes: len,
            },
            result,
        );
    }

    // ----- arrivals -----

    fn bad_frame(&mut self, peer: Rank, why: impl std::fmt::Display) {
        self.protocol_errors += 1;
        if self.protocol_errors <= 10 {
            eprintln!(
                "oxmpi: rank {}: dropped a bad frame from rank {peer}: {why}",
                self.rank
            );
        }
    }

    /// Processes a frame that arrived from `peer`.
    pub fn handle_frame(&mut self, peer: Rank, header: &Header, payload: &[u8]) {
        let h = match FrameHeader::decode(header) {
            Ok(h) => h,
            Err(e) => return self.bad_frame(peer, e),
        };
        if h.src != peer || peer >= self.size || peer == self.rank {
            return self.bad_frame(peer, format!("claims to come from rank {}", h.src));
        }
        match h.kind {
            Kind::Eager | Kind::Rts => {
                if h.kind == Kind::Eager && h.len != payload.len() as u64 {
                    return self.bad_frame(peer, "eager length does not match its payload");
                }
                if h.kind == Kind::Rts && !payload.is_empty() && payload.len() != 8 {
                    return self.bad_frame(peer, "RTS payload is not a remote key");
                }
                let expected = self.recv_seq[peer as usize];
                let ahead = h.seq.wrapping_sub(expected) as i32;
                if ahead == 0 {
                    self.accept_matching(peer, &h, payload);
                    self.release_held(peer);
                } else if ahead > 0 {
                    self.held[peer as usize].push(Held {
                        header: h,
                        payload: payload.to_vec(),
                    });
                } else {
                    self.bad_frame(peer, format!("duplicate sequence number {}", h.seq));
                }
            }
            Kind::Cts => self.on_cts(peer, h.req, h.arg),
            Kind::Data => self.on_data(peer, &h, payload),
            Kind::Fin | Kind::Ack => self.on_send_done(peer, h.req, h.kind),
        }
    }

    fn release_held(&mut self, peer: Rank) {
        while !self.held[peer as usize].is_empty() {
            let expected = self.recv_seq[peer as usize];
            let Some(i) = self.held[peer as usize]
                .iter()
                .position(|f| f.header.seq == expected)
            else {
                return;
            };
            let f = self.held[peer as usize].swap_remove(i);
            self.accept_matching(peer, &f.header, &f.payload);
        }
    }

    fn accept_matching(&mut self, peer: Rank, h: &FrameHeader, payload: &[u8]) {
        self.recv_seq[peer as usize] = h.seq.wrapping_add(1);
        let sync = h.flags & FLAG_SYNC != 0;
        match self.queues(h.ctx).take_posted(peer, h.tag) {
            Some(p) => match h.kind {
                Kind::Eager => {
                    self.deliver_bytes(p.id, peer, h.tag, payload);
                    if sync {
                        self.push_tx(peer, Tx::Ack { sreq: h.req });
                    }
                }
                _ => {
                    let remote = rts_remote(h, payload);
                    self.start_rndv_recv(p.id, peer, h.tag, h.len, h.req, remote)
                }
            },
            None => {
                let body = match h.kind {
                    Kind::Eager => Body::Eager {
                        data: self.pooled_copy(payload),
                        sync_req: sync.then_some(h.req),
                    },
                    _ => Body::Rts {
                        sreq: h.req,
                        remote: rts_remote(h, payload),
                    },
                };
                self.queues(h.ctx).push_unexpected(Unexpected {
                    src: peer,
                    tag: h.tag,
                    len: h.len,
                    body,
                });
            }
        }
    }

    fn on_cts(&mut self, peer: Rank, sreq: u64, rreq: u64) {
        match self.send_req(sreq) {
            Some(s) if s.dest == peer && s.state == SendState::AwaitCts => {
                s.state = SendState::Streaming;
                s.rreq = rreq;
                self.push_tx(peer, Tx::Data(sreq, 0));
            }
            _ => self.bad_frame(peer, format!("CTS for unknown send {sreq:#x}")),
        }
    }

    fn on_data(&mut self, peer: Rank, h: &FrameHeader, payload: &[u8]) {
        let rid = h.req;
        let Some(r) = self.recv_req(rid) else {
            return self.bad_frame(peer, format!("DATA for unknown receive {rid:#x}"));
        };
        if r.state != RecvState::Pipeline
            || r.peer != peer
            || h.arg
                .checked_add(payload.len() as u64)
                .is_none_or(|end| end > r.len)
        {
            return self.bad_frame(peer, "DATA outside its rendezvous");
        }
        let buf = r.buf.as_mut().expect("matched receive has a buffer");
        let cap = buf.len() as u64;
        if h.arg < cap {
            let n = (cap - h.arg).min(payload.len() as u64) as usize;
            let off = h.arg as usize;
            buf.bytes_mut()[off..off + n].copy_from_slice(&payload[..n]);
        }
        r.got += payload.len() as u64;
        if r.got == r.len {
            self.finish_rndv_recv(rid);
        }
    }

    /// The fabric has finished reading the payload of an eager send it took in place
    /// ([`Sent::Lent`]): the send is complete. A token of a send already failed (its peer
    /// lost) is ignored.
    pub fn on_lent_send_done(&mut self, peer: Rank, token: u64) {
        match self.send_req(token) {
            Some(s) if s.dest == peer && s.state == SendState::AwaitLocal => {
                let st = Status {
                    source: s.dest,
                    tag: s.tag,
                    bytes: s.len,
                };
                self.complete(token, st, Ok(()));
            }
            _ => {}
        }
    }

    fn on_send_done(&mut self, peer: Rank, sreq: u64, kind: Kind) {
        let expect = if kind == Kind::Fin {
            SendState::AwaitFin
        } else {
            SendState::AwaitAck
        };
        match self.send_req(sreq) {
            Some(s) if s.dest == peer && s.state == expect => {
                let st = Status {
                    source: s.dest,
                    tag: s.tag,
                    bytes: s.len,
                };
                self.complete(sreq, st, Ok(()));
            }
            _ => self.bad_frame(peer, format!("{kind:?} for unknown send {sreq:#x}")),
        }
    }

    // ----- output -----

    /// Hands queued frames and reads to `fabric`. Fabric failures fail the requests of the
    /// peer involved (see [`Engine::fail_peer`]) and are returned after the rest progressed.
    pub fn progress_tx(&mut self, fabric: &mut dyn Fabric) -> Result<(), FabricError> {
        let mut first_err = None;
        for (peer, key) in self.key_releases.drain(..) {
            fabric.release_key(peer, &key);
        }
        while let Some(rid) = self.reads.pop_front() {
            let reader_peer = self.recv_req(rid).map(|r| r.peer);
            if let Err(e) = self.do_read(fabric, rid) {
                // The read's request (and the peer's others) fail rather than wait forever.
                let peer = match &e {
                    FabricError::PeerLost { peer, .. } | FabricError::BadFrame { peer, .. } => {
                        Some(*peer)
                    }
                    _ => reader_peer,
                };
                if let Some(peer) = peer {
                    self.fail_peer(peer, &e.to_string());
                }
                first_err.get_or_insert(e);
            }
        }
        let mut i = 0;
        while i < self.tx_active.len() {
            let peer = self.tx_active[i];
            match self.drain_peer(fabric, peer) {
                Ok(()) => {}
                Err(e) => {
                    let why = e.to_string();
                    self.fail_peer(peer, &why);
                    first_err.get_or_insert(e);
                }
            }
            if self.txq[peer as usize].is_empty() {
                self.tx_active.swap_remove(i);
            } else {
                i += 1;
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn do_read(&mut self, fabric: &mut dyn Fabric, rid: ReqId) -> Result<(), FabricError> {
        let Some(r) = self.recv_req(rid) else {
            return Ok(());
        };
        let RecvState::Read { sreq, remote } = r.state else {
            return Ok(());
        };
        let peer = r.peer;
        let buf = r.buf.as_mut().expect("matched receive has a buffer");
        let n = (buf.len() as u64).min(r.len) as usize;
        let key = RemoteKey {
            addr: remote.addr,
            len: r.len,
            key: remote.key,
        };
        if n == 0 {
            // Nothing fits (a discarding or zero-length receive): no read, the sender is done.
            self.push_tx(peer, Tx::Fin { sreq });
            self.finish_rndv_recv(rid);
            return Ok(());
        }
        let dst = &mut buf.bytes_mut()[..n];
        let read = if remote.sender_idle {
            fabric.read_from_idle(peer, key, 0, dst)
        } else {
            fabric.read(peer, key, 0, dst)
        };
        match read {
            Ok(()) => {
                self.push_tx(peer, Tx::Fin { sreq });
                self.finish_rndv_recv(rid);
                Ok(())
            }
            Err(FabricError::Rma(why)) => {
                // Fall back to the pipeline: ask the sender to stream it.
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!("oxmpi: remote read failed ({why}); using the pipelined protocol")
                });
                r.state = RecvState::Pipeline;
                self.push_tx(peer, Tx::Cts { sreq, rreq: rid });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn drain_peer(&mut self, fabric: &mut dyn Fabric, peer: Rank) -> Result<(), FabricError> {
        while let Some(&tx) = self.txq[peer as usize].front() {
            let mut next = None;
            let sent = match tx {
                Tx::Eager(id) | Tx::Rts(id) => {
                    let me = self.rank;
                    let lent_min = self.config[peer as usize].lent_min as u64;
                    let Some(s) = self.send_req(id) else {
                        self.txq[peer as usize].pop_front();
                        continue;
                    };
                    let eager = matches!(tx, Tx::Eager(_));
                    let read = !eager && s.proto == Protocol::RndvRead;
                    if read && s.rkey.is_none() {
                        // Once per send: a retried RTS reuses the key (and its registration).
                        let data = s.data.as_ref().expect("queued send has data");
                        s.rkey = Some(fabric.remote_key(peer, data)?);
                    }
                    let rkey = s.rkey;
                    let data = s.data.as_ref().expect("queued send has data");
                    let h = FrameHeader {
                        kind: if eager { Kind::Eager } else { Kind::Rts },
                        flags: if eager && s.sync { FLAG_SYNC } else { 0 }
                            | if read { FLAG_RMA } else { 0 }
                            | if read && s.sender_idle {
                                FLAG_SENDER_IDLE
                            } else {
                                0
                            },
                        ctx: s.ctx,
                        src: me,
                        tag: s.tag,
                        seq: s.seq,
                        len: s.len,
                        // Only the receivers of synchronous sends and RTS answer with this id;
                        // zero otherwise lets a fabric store a shorter header.
                        req: if eager && !s.sync { 0 } else { id },
                        arg: rkey.map_or(0, |k| k.addr),
                    };
                    // An RTS carries the protection key, where the fabric has one, as its payload.
                    let key_bytes = rkey.map_or(0, |k| k.key).to_le_bytes();
                    let payload = if eager {
                        data.bytes()
                    } else if rkey.is_some_and(|k| k.key != 0) {
                        &key_bytes[..]
                    } else {
                        &[][..]
                    };
                    let lend = eager && !s.sync && s.len >= lent_min;
                    let sent = if lend {
                        fabric.send_lent(peer, &h.encode(), data, id)?
                    } else {
                        fabric.send(peer, &h.encode(), payload)?
                    };
                    if sent == Sent::Lent {
                        s.state = SendState::AwaitLocal;
                    } else if sent == Sent::Done {
                        let st = Status {
                            source: s.dest,
                            tag: s.tag,
                            bytes: s.len,
                        };
                        if !eager {
                            s.state = if read {
                                SendState::AwaitFin
                            } else {
                                SendState::AwaitCts
                            };
                        } else if s.sync {
                            s.state = SendState::AwaitAck;
                            s.data = None;
                        } else {
                            self.complete(id, st, Ok(()));
                        }
                    }
                    sent
                }
                Tx::Data(id, off) => {
                    let me = self.rank;
                    let chunk = self.config[peer as usize].chunk as u64;
                    let Some(s) = self.send_req(id) else {
                        self.txq[peer as usize].pop_front();
                        continue;
                    };
                    let n = chunk.min(s.len - off);
                    let data = s.data.as_ref().expect("streaming send has data");
                    let h = FrameHeader {
                        kind: Kind::Data,
                        flags: 0,
                        ctx: s.ctx,
                        src: me,
                        tag: s.tag,
                        seq: 0,
                        len: s.len,
                        req: s.rreq,
                        arg: off,
                    };
                    let sent = fabric.send(
                        peer,
                        &h.encode(),
                        &data.bytes()[off as usize..(off + n) as usize],
                    )?;
                    if sent == Sent::Done {
                        if off + n < s.len {
                            next = Some(Tx::Data(id, off + n));
                        } else {
                            let st = Status {
                                source: s.dest,
                                tag: s.tag,
                                bytes: s.len,
                            };
                            self.complete(id, st, Ok(()));
                        }
                    }
                    sent
                }
                Tx::Cts { sreq, rreq } => self.send_control(fabric, peer, Kind::Cts, sreq, rreq)?,
                Tx::Fin { sreq } => self.send_control(fabric, peer, Kind::Fin, sreq, 0)?,
                Tx::Ack { sreq } => self.send_control(fabric, peer, Kind::Ack, sreq, 0)?,
            };
            if sent == Sent::WouldBlock {
                return Ok(());
            }
            self.txq[peer as usize].pop_front();
            if let Some(n) = next {
                self.txq[peer as usize].push_back(n);
            }
        }
        Ok(())
    }

    fn send_control(
        &mut self,
        fabric: &mut dyn Fabric,
        peer: Rank,
        kind: Kind,
        req: u64,
        arg: u64,
    ) -> Result<Sent, FabricError> {
        let h = FrameHeader {
            kind,
            flags: 0,
            ctx: 0,
            src: self.rank,
            tag: 0,
            seq: 0,
            len: 0,
            req,
            arg,
        };
        fabric.send(peer, &h.encode(), &[])
    }

    /// Whether there are frames or reads waiting for the fabric.
    pub fn has_tx(&self) -> bool {
        !self.tx_active.is_empty() || !self.reads.is_empty()
    }

    /// Fails every request that depends on `peer`, and all later ones, with `PeerLost`.
    pub fn fail_peer(&mut self, peer: Rank, why: &str) {
        if self.dead[peer as usize].is_some() {
            return;
        }
        self.dead[peer as usize] = Some(why.to_string());
        self.txq[peer as usize].clear();
        self.held[peer as usize].clear();
        let lost = || P2pError::PeerLost {
            rank: peer,
            why: why.to_string(),
        };
        let mut victims = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let id = ((s.gen as u64) << 32) | i as u64;
            match &s.state {
                SlotState::Send(r) if r.dest == peer => victims.push((id, None)),
                SlotState::Recv(r) if r.state != RecvState::Posted && r.peer == peer => {
                    victims.push((id, Some(r.ctx)))
                }
                SlotState::Recv(r) if r.state == RecvState::Posted && r.src == peer as i32 => {
                    victims.push((id, Some(r.ctx)))
                }
                _ => {}
            }
        }
        for (id, ctx) in victims {
            if let Some(ctx) = ctx {
                self.queues(ctx).remove_posted(id);
            }
            self.complete(
                id,
                Status {
                    source: peer,
                    tag: 0,
                    bytes: 0,
                },
                Err(lost()),
            );
        }
    }

    /// The bytes of a lent send buffer at `addr` (for simulated fabrics that serve remote
    /// reads without shared address spaces).
    pub fn lent_bytes(&self, addr: u64) -> Option<&[u8]> {
        self.slots.iter().find_map(|s| match &s.state {
            SlotState::Send(r) => r
                .data
                .as_ref()
                .filter(|d| d.bytes().as_ptr() as u64 == addr)
                .map(MemRef::bytes),
            _ => None,
        })
    }
}

/// What an RTS that offers a read says of the sender's memory (the key travels as its
/// payload).
fn rts_remote(h: &FrameHeader, payload: &[u8]) -> Option<Remote> {
    (h.flags & FLAG_RMA != 0).then(|| Remote {
        addr: h.arg,
        key: payload.try_into().map_or(0, u64::from_le_bytes),
        sender_idle: h.flags & FLAG_SENDER_IDLE != 0,
    })
}
