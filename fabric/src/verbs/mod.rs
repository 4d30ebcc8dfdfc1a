//! The InfiniBand verbs backend: one reliable-connection queue pair per peer, one shared
//! receive queue with credit flow control, inline sends for small frames, and RDMA reads of
//! registered memory for rendezvous.
//!
//! The logic here runs over [`device::VerbsDevice`], a thin layer over the verbs calls, so it
//! is the same code whether the device is a real NIC (`ibv`, feature `verbs`, libibverbs loaded
//! at run time) or [`fake`], an in-process NIC model the tests use on machines without RDMA
//! hardware.
//!
//! - **Connection.** [`Verbs::new`] creates a queue pair per peer and moves it to INIT;
//!   [`Verbs::addresses`] are published through the bootstrap exchange; [`Verbs::connect`]
//!   moves each queue pair to RTR with the peer's address and then to RTS. Every step checks the
//!   state the device reports, so a transition out of order is an error, not a hang.
//! - **Frames.** Each frame is one send: an 8-byte prefix (magic, kind, credits returned), the
//!   48-byte header and the payload. Frames that fit the device's inline limit are sent inline
//!   (no registration, no buffer held); larger ones are copied into one of the pre-registered
//!   send slots, freed by their completion.
//! - **Credits.** The shared receive queue holds `credits` slots per peer plus two spare per
//!   peer. A sender spends one credit per data frame and gets them back in the prefix of the
//!   peer's frames, or in a credit-only frame once half its window is owed (credit-only frames
//!   take no credit: at most two can be outstanding per peer, which the spare slots cover). A
//!   sender out of credits answers [`Sent::WouldBlock`], so a receiver is never overrun.
//! - **Rendezvous.** [`Fabric::remote_key`] registers the sender's buffer for remote reads
//!   through the [registration cache](crate::regcache), which also registers the receiver's
//!   buffer for [`Fabric::read`]; an RDMA read moves the data with no copy on either side.
//! - **Failures.** A failed completion (retry or RNR counter exceeded, access errors) fails its
//!   peer with the device's status text; later flushes of that queue pair are ignored.

pub mod device;
pub mod fake;
#[cfg(feature = "verbs")]
pub mod ibv;

use crate::regcache::{Access, CacheStats, Config as CacheConfig, Lease, RegCache, Registrar};
use crate::HEADER_LEN;
use crate::{Caps, Event, Fabric, FabricError, Header, MemRef, PerfModel, Rank, RemoteKey, Sent};
use device::{
    status_text, Completion, QpAddress, QpId, QpState, Sge, Transition, VerbsDevice, VerbsError,
    WcOpcode, WC_SUCCESS, WC_WR_FLUSH_ERR,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Prefix of every frame: magic (u16), kind (u8), spare (u8), credits returned (u32).
const PREFIX: usize = 8;
const MAGIC: u16 = 0x4f56; // "OV"
const KIND_DATA: u8 = 0;
const KIND_CREDIT: u8 = 1;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Default largest eager message.
pub const EAGER_MAX: usize = 8 * 1024;
const SLOT: usize = PREFIX + HEADER_LEN + MAX_PAYLOAD;
/// Default receive credits per peer.
pub const CREDITS: u32 = 32;
/// Send slots (registered bounce buffers for frames too large to inline).
pub const TX_SLOTS: usize = 64;
const CQ_BATCH: usize = 16;
/// How long a remote read may take before its peer is reported lost.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Work-request ids: the kind in the top byte, an index below.
const WR_RECV: u64 = 1 << 56;
const WR_SEND_SLOT: u64 = 2 << 56;
const WR_SEND_INLINE: u64 = 3 << 56;
const WR_READ: u64 = 4 << 56;
const WR_KIND: u64 = 0xff << 56;
const WR_INDEX: u64 = (1 << 56) - 1;

/// Tunables of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerbsConfig {
    /// Receive credits per peer (`OXMPI_VERBS_CREDITS`).
    pub credits: u32,
    /// Largest eager message (`OXMPI_VERBS_EAGER_MAX`, at most [`MAX_PAYLOAD`]).
    pub eager_max: usize,
    /// Registration cache limits.
    pub cache: CacheConfig,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        Self {
            credits: CREDITS,
            eager_max: EAGER_MAX,
            cache: CacheConfig::default(),
        }
    }
}

impl VerbsConfig {
    /// Defaults, overridden by `OXMPI_VERBS_CREDITS` and `OXMPI_VERBS_EAGER_MAX`.
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if let Some(v) = crate::shm::env_usize("OXMPI_VERBS_CREDITS") {
            c.credits = v.clamp(2, 4096) as u32;
        }
        if let Some(v) = crate::shm::env_usize("OXMPI_VERBS_EAGER_MAX") {
            c.eager_max = v.min(MAX_PAYLOAD);
        }
        c
    }

    /// Shared-receive-queue slots for `peers` peers: the credits plus two spare per peer.
    pub fn srq_slots(&self, peers: u32) -> u32 {
        (self.credits + 2).saturating_mul(peers.max(1))
    }
}

fn verr(e: VerbsError) -> FabricError {
    FabricError::Setup(e.to_string())
}

/// The device as the registration cache's registrar.
struct Nic<D>(D);

impl<D: VerbsDevice> Registrar for Nic<D> {
    type Handle = D::Mr;

    fn register(
        &mut self,
        addr: usize,
        len: usize,
        access: Access,
    ) -> Result<Self::Handle, FabricError> {
        self.0
            .reg_mr(addr, len, access)
            .map_err(|e| FabricError::Rma(e.to_string()))
    }

    fn deregister(&mut self, handle: Self::Handle) {
        self.0.dereg_mr(handle);
    }
}

/// Where a peer's connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Link {
    /// Queue pair in INIT, waiting for the peer's address.
    Init,
    /// Connected (RTS).
    Ready,
    /// A completion failed; the reason.
    Failed(String),
}

struct Peer {
    qp: QpId,
    qpn: u32,
    psn: u32,
    link: Link,
    /// Data frames this side may still send.
    credits: u32,
    /// Receive slots this peer's frames used and that were posted again, not yet returned.
    owed: u32,
    /// Work requests outstanding on the send queue.
    in_flight: u32,
}

/// A registered block of fixed-size slots.
struct Slab<M> {
    mem: Box<[u8]>,
    mr: Option<M>,
    lkey: u32,
}

impl<M> Slab<M> {
    fn slot_addr(&self, i: usize) -> u64 {
        self.mem[i * SLOT..].as_ptr() as u64
    }
}

/// The verbs fabric of one rank over device `D`.
pub struct Verbs<D: VerbsDevice> {
    rank: Rank,
    size: u32,
    caps: Caps,
    config: VerbsConfig,
    nic: Nic<D>,
    peers: Vec<Option<Peer>>,
    /// (QP number, peer), sorted by QP number.
    by_qpn: Vec<(u32, Rank)>,
    rx: Slab<D::Mr>,
    rx_slots: usize,
    tx: Slab<D::Mr>,
    tx_free: Vec<usize>,
    tx_peer: Vec<Rank>,
    max_inline: usize,
    max_send_wr: u32,
    max_msg: usize,
    /// Frames received and not yet handed to the engine: (slot, length, peer).
    arrived: VecDeque<(usize, usize, Rank)>,
    /// Peers owed at least half a window of credits.
    credit_due: Vec<Rank>,
    /// Outcome of the read in flight.
    read_done: Option<Result<(), String>>,
    cache: RegCache<Nic<D>>,
    /// Registrations lent to peers, by the key handed out.
    lent: HashMap<u64, Lease>,
    next_lend: u64,
    scratch: Box<[u8]>,
}

impl<D: VerbsDevice> Verbs<D> {
    /// Sets up rank `rank` of `size` on `dev`: registers the send and receive slots, posts the
    /// receives, and creates one queue pair per peer, moved to INIT.
    pub fn new(rank: Rank, size: u32, dev: D, config: VerbsConfig) -> Result<Self, FabricError> {
        let everyone = vec![true; size as usize];
        Self::reaching(rank, size, dev, config, &everyone)
    }

    /// Like [`Verbs::new`] with queue pairs only towards the peers `reach` marks (others are
    /// reached by another backend).
    pub fn reaching(
        rank: Rank,
        size: u32,
        dev: D,
        config: VerbsConfig,
        reach: &[bool],
    ) -> Result<Self, FabricError> {
        let mut nic = Nic(dev);
        let limits = nic.0.limits();
        let port = nic.0.port();
        let wanted = |p: Rank| p != rank && reach.get(p as usize).copied().unwrap_or(false);
        let peers_n = (0..size).filter(|&p| wanted(p)).count() as u32;
        let mut config = config;
        if config.srq_slots(peers_n) > limits.max_srq_wr {
            // Fewer credits per peer so the window fits the device's receive queue.
            config.credits = (limits.max_srq_wr / peers_n.max(1)).saturating_sub(2);
            if config.credits < 2 {
                return Err(FabricError::Setup(format!(
                    "verbs: device {} holds {} shared receives, too few for {} peers",
                    nic.0.name(),
                    limits.max_srq_wr,
                    peers_n
                )));
            }
        }
        let rx_slots = config.srq_slots(peers_n) as usize;
        let rx = Self::slab(&mut nic, rx_slots, Access::LOCAL_WRITE)?;
        let tx = Self::slab(&mut nic, TX_SLOTS, Access::LOCAL_READ)?;
        let mut peers = Vec::with_capacity(size as usize);
        let mut by_qpn = Vec::new();
        for p in 0..size {
            if !wanted(p) {
                peers.push(None);
                continue;
            }
            let (qp, qpn) = nic.0.create_qp().map_err(verr)?;
            nic.0.modify_qp(qp, Transition::Init).map_err(verr)?;
            by_qpn.push((qpn, p));
            peers.push(Some(Peer {
                qp,
                qpn,
                psn: initial_psn(rank, p),
                link: Link::Init,
                credits: config.credits,
                owed: 0,
                in_flight: 0,
            }));
        }
        by_qpn.sort_unstable();
        let eager_max = config.eager_max.min(MAX_PAYLOAD);
        let caps = Caps {
            name: "verbs",
            rma_read: true,
            max_payload: MAX_PAYLOAD,
            eager_max,
            rndv_read_min: eager_max + 1,
            rndv_read_max: usize::MAX,
            pipeline_chunk: MAX_PAYLOAD,
            lent_min: usize::MAX,
            model: PerfModel {
                latency_us: 1.5,
                bandwidth_gbs: 10.0,
            },
        };
        let cache = RegCache::with_monitor(config.cache);
        let mut me = Self {
            rank,
            size,
            caps,
            config,
            peers,
            by_qpn,
            rx,
            rx_slots,
            tx,
            tx_free: (0..TX_SLOTS).rev().collect(),
            tx_peer: vec![0; TX_SLOTS],
            max_inline: limits.max_inline as usize,
            max_send_wr: limits.max_send_wr.max(1),
            max_msg: port.max_msg.clamp(4096, 1 << 30) as usize,
            arrived: VecDeque::new(),
            credit_due: Vec::new(),
            read_done: None,
            cache,
            lent: HashMap::new(),
            next_lend: 1,
            scratch: vec![0u8; SLOT].into_boxed_slice(),
            nic,
        };
        for slot in 0..rx_slots {
            me.post_recv(slot)?;
        }
        Ok(me)
    }

    fn slab(nic: &mut Nic<D>, slots: usize, access: Access) -> Result<Slab<D::Mr>, FabricError> {
        let mem = vec![0u8; slots * SLOT].into_boxed_slice();
        let mr = nic
            .0
            .reg_mr(mem.as_ptr() as usize, mem.len(), access)
            .map_err(verr)?;
        let lkey = nic.0.keys(&mr).lkey;
        Ok(Slab {
            mem,
            mr: Some(mr),
            lkey,
        })
    }

    /// The device in use.
    pub fn device_name(&self) -> &str {
        self.nic.0.name()
    }

    /// Credits per peer after fitting the device's limits.
    pub fn credits(&self) -> u32 {
        self.config.credits
    }

    /// Receive slots in the shared receive queue.
    pub fn receive_slots(&self) -> usize {
        self.rx_slots
    }

    /// The registration cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The device (for tests and diagnostics).
    pub fn device(&self) -> &D {
        &self.nic.0
    }

    /// Where each peer's queue pair towards this rank is: `addresses()[p]` goes to rank `p`
    /// (all zero for this rank and peers it does not reach).
    pub fn addresses(&self) -> Vec<QpAddress> {
        let port = self.nic.0.port();
        self.peers
            .iter()
            .map(|p| match p {
                Some(p) => QpAddress {
                    lid: port.lid,
                    gid: port.gid,
                    qpn: p.qpn,
                    psn: p.psn,
                    mtu: port.mtu,
                },
                None => QpAddress {
                    lid: 0,
                    gid: [0; 16],
                    qpn: 0,
                    psn: 0,
                    mtu: 0,
                },
            })
            .collect()
    }

    /// Connects every queue pair: `remote[p]` is the address peer `p` published for its queue
    /// pair towards this rank (ignored for peers this rank does not reach). Moves each to RTR
    /// and then RTS.
    pub fn connect(&mut self, remote: &[QpAddress]) -> Result<(), FabricError> {
        if remote.len() != self.size as usize {
            return Err(FabricError::Setup(format!(
                "verbs: {} addresses for {} ranks",
                remote.len(),
                self.size
            )));
        }
        for (p, addr) in remote.iter().enumerate() {
            let Some(peer) = self.peers[p].as_mut() else {
                continue;
            };
            let fail = |step: &str, why: String| {
                FabricError::Setup(format!("verbs: connecting to rank {p} ({step}): {why}"))
            };
            let state = self.nic.0.qp_state(peer.qp);
            if peer.link != Link::Init || state != QpState::Init {
                return Err(fail(
                    "RTR",
                    format!("queue pair is {state:?}, not INIT; already connected?"),
                ));
            }
            self.nic
                .0
                .modify_qp(peer.qp, Transition::Rtr { remote: *addr })
                .map_err(|e| fail("RTR", e.to_string()))?;
            self.nic
                .0
                .modify_qp(peer.qp, Transition::Rts { psn: peer.psn })
                .map_err(|e| fail("RTS", e.to_string()))?;
            let state = self.nic.0.qp_state(peer.qp);
            if state != QpState::Rts {
                return Err(fail("RTS", format!("device reports {state:?}")));
            }
            peer.link = Link::Ready;
        }
        Ok(())
    }

    fn post_recv(&mut self, slot: usize) -> Result<(), FabricError> {
        let sge = Sge {
            addr: self.rx.slot_addr(slot),
            len: SLOT as u32,
            lkey: self.rx.lkey,
        };
        self.nic
            .0
            .post_srq_recv(WR_RECV | slot as u64, sge)
            .map_err(verr)
    }

    fn peer_of_qpn(&self, qpn: u32) -> Option<Rank> {
        self.by_qpn
            .binary_search_by_key(&qpn, |&(q, _)| q)
            .ok()
            .map(|i| self.by_qpn[i].1)
    }

    fn peer_mut(&mut self, peer: Rank) -> Result<&mut Peer, FabricError> {
        match self.peers.get_mut(peer as usize) {
            Some(Some(p)) => match &p.link {
                Link::Ready => Ok(p),
                Link::Init => Err(FabricError::PeerLost {
                    peer,
                    why: "verbs queue pair not connected".into(),
                }),
                Link::Failed(why) => Err(FabricError::PeerLost {
                    peer,
                    why: why.clone(),
                }),
            },
            _ => Err(FabricError::PeerLost {
                peer,
                why: "no verbs queue pair for this rank".into(),
            }),
        }
    }

    /// Marks `peer` failed by completion `wc` and returns the error to report (none for a
    /// flush of a peer already failed).
    fn fail_peer(&mut self, peer: Rank, wc: &Completion, what: &str) -> Option<FabricError> {
        let p = self.peers.get_mut(peer as usize)?.as_mut()?;
        if matches!(p.link, Link::Failed(_)) && wc.status == WC_WR_FLUSH_ERR {
            return None;
        }
        let why = format!(
            "verbs {what} failed: {} (status {})",
            status_text(wc.status),
            wc.status
        );
        if !matches!(p.link, Link::Failed(_)) {
            p.link = Link::Failed(why.clone());
        }
        Some(FabricError::PeerLost { peer, why })
    }

    /// Reads completions: receives are queued (credit-only frames consumed here), sends free
    /// their slots, a read sets `read_done`. Returns how many it read.
    fn reap(&mut self) -> Result<usize, FabricError> {
        let mut total = 0;
        let mut wcs = [Completion {
            wr_id: 0,
            status: 0,
            opcode: WcOpcode::Send,
            byte_len: 0,
            qp_num: 0,
        }; CQ_BATCH];
        loop {
            let n = self.nic.0.poll_cq(&mut wcs).map_err(verr)?;
            let mut first_err = None;
            for wc in &wcs[..n] {
                if let Err(e) = self.complete(wc) {
                    first_err.get_or_insert(e);
                }
            }
            total += n;
            if let Some(e) = first_err {
                return Err(e);
            }
            if n < CQ_BATCH {
                return Ok(total);
            }
        }
    }

    fn complete(&mut self, wc: &Completion) -> Result<(), FabricError> {
        let index = (wc.wr_id & WR_INDEX) as usize;
        match wc.wr_id & WR_KIND {
            WR_RECV => {
                let Some(peer) = self.peer_of_qpn(wc.qp_num) else {
                    // Not from a connected peer (or a flush): keep the slot.
                    return self.post_recv(index);
                };
                if wc.status != WC_SUCCESS {
                    self.post_recv(index)?;
                    return self.fail_peer(peer, wc, "receive").map_or(Ok(()), Err);
                }
                self.received(index, wc.byte_len as usize, peer)
            }
            WR_SEND_SLOT | WR_SEND_INLINE => {
                let peer = if wc.wr_id & WR_KIND == WR_SEND_SLOT {
                    self.tx_free.push(index);
                    self.tx_peer[index]
                } else {
                    index as Rank
                };
                if let Some(Some(p)) = self.peers.get_mut(peer as usize) {
                    p.in_flight = p.in_flight.saturating_sub(1);
                }
                if wc.status != WC_SUCCESS {
                    return self.fail_peer(peer, wc, "send").map_or(Ok(()), Err);
                }
                Ok(())
            }
            WR_READ => {
                let peer = index as Rank;
                if let Some(Some(p)) = self.peers.get_mut(peer as usize) {
                    p.in_flight = p.in_flight.saturating_sub(1);
                }
                self.read_done = Some(if wc.status == WC_SUCCESS {
                    Ok(())
                } else {
                    Err(format!("{} (status {})", status_text(wc.status), wc.status))
                });
                if wc.status != WC_SUCCESS {
                    self.fail_peer(peer, wc, "RDMA read");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A receive completed in `slot`: take the credits it carries; queue data frames, repost
    /// credit-only ones.
    fn received(&mut self, slot: usize, len: usize, peer: Rank) -> Result<(), FabricError> {
        let at = slot * SLOT;
        let prefix = &self.rx.mem[at..at + PREFIX];
        let magic = u16::from_le_bytes([prefix[0], prefix[1]]);
        let kind = prefix[2];
        let credits = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if len < PREFIX || magic != MAGIC || (kind == KIND_DATA && len < PREFIX + HEADER_LEN) {
            self.post_recv(slot)?;
            return Err(FabricError::BadFrame {
                peer,
                why: format!("{len}-byte verbs message is not an oxmpi frame"),
            });
        }
        let window = self.config.credits;
        if let Some(Some(p)) = self.peers.get_mut(peer as usize) {
            p.credits = p.credits.saturating_add(credits).min(window);
        }
        match kind {
            KIND_DATA => {
                self.arrived.push_back((slot, len, peer));
                Ok(())
            }
            KIND_CREDIT => self.post_recv(slot),
            other => {
                self.post_recv(slot)?;
                Err(FabricError::BadFrame {
                    peer,
                    why: format!("unknown verbs frame kind {other}"),
                })
            }
        }
    }

    fn prefix(kind: u8, credits: u32) -> [u8; PREFIX] {
        let mut p = [0u8; PREFIX];
        p[..2].copy_from_slice(&MAGIC.to_le_bytes());
        p[2] = kind;
        p[4..].copy_from_slice(&credits.to_le_bytes());
        p
    }

    /// Posts one frame to `peer` (inline when it fits, else from a send slot). The caller
    /// has checked credits (data frames) and the send queue.
    fn post_frame(
        &mut self,
        peer: Rank,
        prefix: [u8; PREFIX],
        header: Option<&Header>,
        payload: &[u8],
    ) -> Result<Sent, FabricError> {
        let total = PREFIX + header.map_or(0, |_| HEADER_LEN) + payload.len();
        let qp = self.peer_mut(peer)?.qp;
        let (wr_id, sge, inline, slot) = if total <= self.max_inline {
            let buf = &mut self.scratch[..total];
            fill(buf, &prefix, header, payload);
            let sge = Sge {
                addr: buf.as_ptr() as u64,
                len: total as u32,
                lkey: 0,
            };
            (WR_SEND_INLINE | u64::from(peer), sge, true, None)
        } else {
            if self.tx_free.is_empty() {
                self.reap()?;
            }
            let Some(slot) = self.tx_free.pop() else {
                return Ok(Sent::WouldBlock);
            };
            let at = slot * SLOT;
            fill(&mut self.tx.mem[at..at + total], &prefix, header, payload);
            self.tx_peer[slot] = peer;
            let sge = Sge {
                addr: self.tx.slot_addr(slot),
                len: total as u32,
                lkey: self.tx.lkey,
            };
            (WR_SEND_SLOT | slot as u64, sge, false, Some(slot))
        };
        if let Err(e) = self.nic.0.post_send(qp, wr_id, sge, inline) {
            if let Some(slot) = slot {
                self.tx_free.push(slot);
            }
            return Err(FabricError::PeerLost {
                peer,
                why: e.to_string(),
            });
        }
        if let Some(Some(p)) = self.peers.get_mut(peer as usize) {
            p.in_flight += 1;
        }
        Ok(Sent::Done)
    }

    /// Returns owed credits with credit-only frames where half a window is owed.
    fn return_credits(&mut self) -> Result<(), FabricError> {
        let mut i = 0;
        while i < self.credit_due.len() {
            let peer = self.credit_due[i];
            let max_wr = self.max_send_wr;
            let (owed, room) = match self.peers.get(peer as usize) {
                Some(Some(p)) if p.link == Link::Ready => (p.owed, p.in_flight < max_wr),
                _ => {
                    self.credit_due.swap_remove(i);
                    continue;
                }
            };
            if owed < self.half_window() {
                self.credit_due.swap_remove(i);
                continue;
            }
            if !room {
                i += 1;
                continue;
            }
            match self.post_frame(peer, Self::prefix(KIND_CREDIT, owed), None, &[])? {
                Sent::Done => {
                    if let Some(Some(p)) = self.peers.get_mut(peer as usize) {
                        p.owed -= owed;
                    }
                    self.credit_due.swap_remove(i);
                }
                // post_frame copies or inlines: it never lends.
                Sent::WouldBlock | Sent::Lent => i += 1,
            }
        }
        Ok(())
    }

    fn half_window(&self) -> u32 {
        self.config.credits.div_ceil(2)
    }
}

/// Writes a frame into `buf` (exactly its length).
fn fill(buf: &mut [u8], prefix: &[u8; PREFIX], header: Option<&Header>, payload: &[u8]) {
    buf[..PREFIX].copy_from_slice(prefix);
    let mut at = PREFIX;
    if let Some(h) = header {
        buf[at..at + HEADER_LEN].copy_from_slice(h);
        at += HEADER_LEN;
    }
    buf[at..].copy_from_slice(payload);
}

/// A first packet sequence number for the queue pair from `rank` to `peer` (24 bits), varied
/// per job so a stale packet of an earlier job is not taken for this one's.
fn initial_psn(rank: Rank, peer: Rank) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (t ^ rank.wrapping_mul(0x9e37_79b9) ^ peer.wrapping_mul(0x85eb_ca6b)) & 0x00ff_ffff
}

impl<D: VerbsDevice> Fabric for Verbs<D> {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn caps(&self, _peer: Rank) -> &Caps {
        &self.caps
    }

    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(FabricError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}-byte payload exceeds the verbs frame", payload.len()),
            )));
        }
        let max_wr = self.max_send_wr;
        let p = self.peer_mut(peer)?;
        if p.credits == 0 || p.in_flight >= max_wr {
            self.reap()?;
            let p = self.peer_mut(peer)?;
            if p.credits == 0 || p.in_flight >= max_wr {
                return Ok(Sent::WouldBlock);
            }
        }
        let p = self.peer_mut(peer)?;
        let owed = p.owed;
        let sent = self.post_frame(peer, Self::prefix(KIND_DATA, owed), Some(header), payload)?;
        if sent == Sent::Done {
            let p = self.peer_mut(peer)?;
            p.credits -= 1;
            p.owed -= owed;
        }
        Ok(sent)
    }

    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        if dst.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > remote.len) {
            return Err(FabricError::Rma(format!(
                "read of {} bytes at offset {offset} exceeds the {}-byte lent buffer",
                dst.len(),
                remote.len
            )));
        }
        let qp = self.peer_mut(peer)?.qp;
        let lease = self.cache.acquire(
            &mut self.nic,
            dst.as_ptr() as usize,
            dst.len(),
            Access::LOCAL_WRITE,
        )?;
        let lkey = self.nic.0.keys(self.cache.handle(&lease)).lkey;
        let result = self.read_into(peer, qp, remote, offset, dst, lkey);
        match &result {
            // A read that timed out may still land in `dst`: keep its registration.
            Err(FabricError::PeerLost { .. }) => {
                // Never released: the cache keeps the entry registered for good.
                let _kept = lease;
            }
            _ => self.cache.release(&mut self.nic, lease),
        }
        result
    }

    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        self.reap()?;
        let mut n = 0;
        while let Some((slot, len, peer)) = self.arrived.pop_front() {
            let at = slot * SLOT;
            let bytes = &self.rx.mem[at..at + len.min(SLOT)];
            let header: &Header = bytes[PREFIX..PREFIX + HEADER_LEN].try_into().map_err(|_| {
                FabricError::BadFrame {
                    peer,
                    why: "short frame".into(),
                }
            })?;
            on(Event::Frame {
                peer,
                header,
                payload: &bytes[PREFIX + HEADER_LEN..],
            });
            self.post_recv(slot)?;
            let half = self.half_window();
            if let Some(Some(p)) = self.peers.get_mut(peer as usize) {
                p.owed += 1;
                if p.owed == half {
                    self.credit_due.push(peer);
                }
            }
            n += 1;
        }
        if !self.credit_due.is_empty() {
            self.return_credits()?;
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) {
        // No completion channel: sleep in short slices; the engine polls after each.
        std::thread::sleep(timeout.min(Duration::from_micros(50)));
    }

    fn remote_key(&mut self, _peer: Rank, mem: &MemRef) -> Result<RemoteKey, FabricError> {
        let b = mem.bytes();
        if b.is_empty() {
            return Ok(RemoteKey {
                addr: b.as_ptr() as u64,
                len: 0,
                key: 0,
            });
        }
        let lease = self.cache.acquire(
            &mut self.nic,
            b.as_ptr() as usize,
            b.len(),
            Access::LOCAL_READ | Access::REMOTE_READ,
        )?;
        let rkey = self.nic.0.keys(self.cache.handle(&lease)).rkey;
        let id = self.next_lend;
        self.next_lend += 1;
        self.lent.insert(id, lease);
        Ok(RemoteKey {
            addr: b.as_ptr() as u64,
            len: b.len() as u64,
            key: (id << 32) | u64::from(rkey),
        })
    }

    fn release_key(&mut self, _peer: Rank, key: &RemoteKey) {
        if let Some(lease) = self.lent.remove(&(key.key >> 32)) {
            self.cache.release(&mut self.nic, lease);
        }
    }

    fn counters(&self) -> Vec<(String, u64)> {
        crate::cache_counters("verbs", &self.cache.stats())
    }
}

impl<D: VerbsDevice> Verbs<D> {
    fn read_into(
        &mut self,
        peer: Rank,
        qp: QpId,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
        lkey: u32,
    ) -> Result<(), FabricError> {
        let rkey = remote.key as u32;
        let mut done = 0usize;
        while done < dst.len() {
            let n = (dst.len() - done).min(self.max_msg);
            let local = Sge {
                addr: dst[done..].as_mut_ptr() as u64,
                len: n as u32,
                lkey,
            };
            self.read_done = None;
            let deadline = Instant::now() + READ_TIMEOUT;
            while self.peer_mut(peer)?.in_flight >= self.max_send_wr {
                self.reap()?;
                if Instant::now() > deadline {
                    return Err(FabricError::Rma("send queue stayed full".into()));
                }
            }
            self.nic
                .0
                .post_read(
                    qp,
                    WR_READ | u64::from(peer),
                    local,
                    remote.addr + offset + done as u64,
                    rkey,
                )
                .map_err(|e| FabricError::Rma(e.to_string()))?;
            self.peer_mut(peer)?.in_flight += 1;
            loop {
                self.reap()?;
                match self.read_done.take() {
                    Some(Ok(())) => break,
                    Some(Err(why)) => return Err(FabricError::Rma(why)),
                    None if Instant::now() > deadline => {
                        return Err(FabricError::PeerLost {
                            peer,
                            why: format!(
                                "RDMA read of {n} bytes did not complete in {READ_TIMEOUT:?}"
                            ),
                        });
                    }
                    None => std::hint::spin_loop(),
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl<D: VerbsDevice> Drop for Verbs<D> {
    fn drop(&mut self) {
        for (_, lease) in self.lent.drain() {
            self.cache.release(&mut self.nic, lease);
        }
        self.cache.clear(&mut self.nic);
        for slab in [&mut self.rx, &mut self.tx] {
            if let Some(mr) = slab.mr.take() {
                self.nic.0.dereg_mr(mr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{self, FakeDevice, FakeLimits, FakeNet};
    use super::*;

    type Frames = Vec<(Rank, Header, Vec<u8>)>;

    fn drain(v: &mut Verbs<FakeDevice>) -> Result<Frames, FabricError> {
        let mut got = Vec::new();
        v.poll(&mut |e| {
            if let Event::Frame {
                peer,
                header,
                payload,
            } = e
            {
                got.push((peer, *header, payload.to_vec()));
            }
        })?;
        Ok(got)
    }

    fn header(i: u8) -> Header {
        [i; HEADER_LEN]
    }

    fn world(n: u32, limits: FakeLimits, credits: u32) -> (FakeNet, Vec<Verbs<FakeDevice>>) {
        let config = VerbsConfig {
            credits,
            ..VerbsConfig::default()
        };
        fake::world_with(n, limits, config).unwrap()
    }

    #[test]
    fn frames_inline_and_buffered_arrive_intact() {
        let (net, mut w) = world(2, FakeLimits::default(), 8);
        let sizes = [0usize, 1, 100, 200, 201, 4096, MAX_PAYLOAD];
        for (i, &len) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            assert_eq!(w[0].send(1, &header(i as u8), &body).unwrap(), Sent::Done);
            let got = drain(&mut w[1]).unwrap();
            assert_eq!(got, vec![(0, header(i as u8), body)]);
        }
        let s = net.stats(0);
        // Prefix + header + payload up to 256 bytes goes inline.
        assert_eq!((s.inline_sends, s.buffered_sends), (4, 3));
        assert_eq!(net.stats(1).rnr, 0);
        let too_big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(w[0].send(1, &header(0), &too_big).is_err());
    }

    #[test]
    fn no_inline_device_sends_everything_from_registered_slots() {
        let limits = FakeLimits {
            max_inline: 0,
            ..FakeLimits::default()
        };
        let (net, mut w) = world(2, limits, 4);
        for i in 0..20u8 {
            assert_eq!(w[1].send(0, &header(i), &[i; 3]).unwrap(), Sent::Done);
            assert_eq!(drain(&mut w[0]).unwrap(), vec![(1, header(i), vec![i; 3])]);
            drain(&mut w[1]).unwrap();
        }
        assert_eq!(net.stats(1).inline_sends, 0);
        assert!(net.stats(1).buffered_sends >= 20);
    }

    #[test]
    fn credits_stop_a_sender_before_the_receiver_is_overrun() {
        let (net, mut w) = world(3, FakeLimits::default(), 4);
        // Rank 1 never sends data back: credits return in credit-only frames.
        let mut sent = 0u32;
        let mut received = 0u32;
        for round in 0..50 {
            while w[0].send(1, &header(1), &sent.to_le_bytes()).unwrap() == Sent::Done {
                sent += 1;
                assert!(sent - received <= 4, "more frames in flight than credits");
            }
            // Also from rank 2, sharing rank 1's receive queue.
            while w[2].send(1, &header(2), &[]).unwrap() == Sent::Done {}
            if round % 3 == 0 {
                continue; // the receiver is slow this round
            }
            for (peer, _, body) in drain(&mut w[1]).unwrap() {
                if peer == 0 {
                    assert_eq!(body, received.to_le_bytes());
                    received += 1;
                }
            }
            drain(&mut w[0]).unwrap();
            drain(&mut w[2]).unwrap();
        }
        assert!(sent > 100, "credits did not come back ({sent} sent)");
        assert_eq!(net.stats(1).rnr, 0);
        // 3 ranks, 4 credits + 2 spare per peer.
        assert_eq!(w[1].receive_slots(), 12);
        assert!(net.stats(1).srq_high_water <= 12);
    }

    #[test]
    fn credits_ride_back_on_data_frames() {
        let (net, mut w) = world(2, FakeLimits::default(), 4);
        for i in 0..100u32 {
            let (a, b) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            let (x, y) = w.split_at_mut(1);
            let (s, r) = if a == 0 {
                (&mut x[0], &mut y[0])
            } else {
                (&mut y[0], &mut x[0])
            };
            assert_eq!(s.send(b, &header(0), &i.to_le_bytes()).unwrap(), Sent::Done);
            assert_eq!(drain(r).unwrap().len(), 1);
        }
        // Alternating traffic never needs a credit-only frame: every send is a data frame.
        let sends = |d| net.stats(d).inline_sends + net.stats(d).buffered_sends;
        assert_eq!(sends(0) + sends(1), 100);
    }

    #[test]
    fn rendezvous_read_through_the_registration_cache() {
        let (net, mut w) = world(2, FakeLimits::default(), 8);
        // Buffers on pages of their own: the two caches of this one process watch their
        // registrations, and a page can be watched by one of them only.
        let src = page_aligned(800_000);
        src.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        let src: &'static [u8] = src;
        let mem = MemRef::from_static(src);
        let dst = page_aligned(800_000);
        let (a, b) = w.split_at_mut(1);
        let (owner, reader) = (&mut a[0], &mut b[0]);
        for round in 0..5 {
            let key = owner.remote_key(1, &mem).unwrap();
            assert_eq!(key.len, 800_000);
            reader.read(0, key, 80, &mut dst[..8000]).unwrap();
            assert_eq!(dst[..8000], src[80..8080]);
            reader.read(0, key, 0, dst).unwrap();
            owner.release_key(1, &key);
            assert_eq!(&dst[..], src, "round {round}");
            dst.iter_mut().for_each(|x| *x = 0);
        }
        // One registration for the owner; the reader's first small read registered a part of
        // its buffer, replaced by the whole at the first full read. Later rounds only hit.
        let (o, r) = (owner.cache_stats(), reader.cache_stats());
        assert_eq!((o.misses, o.hits), (1, 4));
        assert_eq!((r.misses, r.hits), (2, 8));
        assert_eq!(r.entries, 1);
        assert!(r.hit_rate() >= 0.8);
        assert_eq!(net.stats(1).reads, 10);
    }

    #[test]
    fn reads_outside_the_lent_range_or_with_a_wrong_key_fail() {
        let (_net, mut w) = world(2, FakeLimits::default(), 8);
        let mem = MemRef::owned(vec![5u8; 4096]);
        let mut dst = vec![0u8; 8192];
        let (a, b) = w.split_at_mut(1);
        let key = a[0].remote_key(1, &mem).unwrap();
        let err = b[0].read(0, key, 100, &mut dst[..4096]).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        let forged = RemoteKey {
            key: key.key ^ 0xffff,
            ..key
        };
        let err = b[0].read(0, forged, 0, &mut dst[..16]).unwrap_err();
        assert!(err.to_string().contains("remote access error"), "{err}");
        a[0].release_key(1, &key);
        // The failed read put the connection in the error state: the peer is reported lost.
        let err = b[0].send(0, &header(0), &[1]).unwrap_err();
        assert!(
            matches!(err, FabricError::PeerLost { peer: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_dead_peer_fails_sends_with_the_device_status() {
        let (net, mut w) = world(3, FakeLimits::default(), 8);
        net.kill(2);
        assert_eq!(w[0].send(2, &header(0), &[1, 2]).unwrap(), Sent::Done);
        let err = drain(&mut w[0]).unwrap_err();
        match err {
            FabricError::PeerLost { peer: 2, why } => {
                assert!(why.contains("transport retry counter exceeded"), "{why}")
            }
            e => panic!("unexpected {e}"),
        }
        // Other peers are undisturbed.
        assert_eq!(w[0].send(1, &header(3), &[3]).unwrap(), Sent::Done);
        assert_eq!(drain(&mut w[1]).unwrap(), vec![(0, header(3), vec![3])]);
        assert!(w[0].send(2, &header(0), &[]).is_err());
    }

    #[test]
    fn a_rank_that_closed_takes_no_more_frames() {
        let (_net, mut w) = world(2, FakeLimits::default(), 8);
        let closed = w.pop().unwrap();
        drop(closed);
        // Its receive buffers are gone: the send fails instead of landing there.
        assert_eq!(w[0].send(1, &header(0), &[1; 300]).unwrap(), Sent::Done);
        let err = drain(&mut w[0]).unwrap_err();
        assert!(
            matches!(err, FabricError::PeerLost { peer: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn connection_steps_are_checked() {
        let net = FakeNet::new();
        let cfg = VerbsConfig::default();
        let mut a = Verbs::new(0, 2, net.device(FakeLimits::default()), cfg).unwrap();
        let mut b = Verbs::new(1, 2, net.device(FakeLimits::default()), cfg).unwrap();
        // Not connected yet: sends are refused with a reason.
        let err = a.send(1, &header(0), &[]).unwrap_err();
        assert!(err.to_string().contains("not connected"), "{err}");
        let (aa, ba) = (a.addresses(), b.addresses());
        assert!(a.connect(&ba[..1]).is_err(), "short address list");
        a.connect(&[aa[0], ba[0]]).unwrap();
        b.connect(&[aa[1], ba[1]]).unwrap();
        let err = a.connect(&[aa[0], ba[0]]).unwrap_err();
        assert!(err.to_string().contains("not INIT"), "{err}");
        assert_eq!(a.send(1, &header(9), &[9]).unwrap(), Sent::Done);
        assert_eq!(drain(&mut b).unwrap(), vec![(0, header(9), vec![9])]);
    }

    /// A raw device plays rank 1 and sends what it likes to rank 0's queue pair.
    fn raw_peer() -> (FakeNet, Verbs<FakeDevice>, FakeDevice, QpId) {
        let net = FakeNet::new();
        let mut v = Verbs::new(
            0,
            2,
            net.device(FakeLimits::default()),
            VerbsConfig::default(),
        )
        .unwrap();
        let mut raw = net.device(FakeLimits::default());
        let (qp, qpn) = raw.create_qp().unwrap();
        raw.modify_qp(qp, Transition::Init).unwrap();
        let mine = QpAddress {
            lid: raw.port().lid,
            gid: [0; 16],
            qpn,
            psn: 7,
            mtu: 4096,
        };
        let theirs = v.addresses()[1];
        v.connect(&[theirs, mine]).unwrap();
        raw.modify_qp(qp, Transition::Rtr { remote: theirs })
            .unwrap();
        raw.modify_qp(qp, Transition::Rts { psn: 7 }).unwrap();
        (net, v, raw, qp)
    }

    fn raw_send(raw: &mut FakeDevice, qp: QpId, bytes: &[u8]) {
        let sge = Sge {
            addr: bytes.as_ptr() as u64,
            len: bytes.len() as u32,
            lkey: 0,
        };
        raw.post_send(qp, 1, sge, true).unwrap();
    }

    #[test]
    fn corrupt_or_short_frames_are_reported_and_disturb_nothing_else() {
        let (_net, mut v, mut raw, qp) = raw_peer();
        let good = |tag: u8| {
            let mut f = Verbs::<FakeDevice>::prefix(KIND_DATA, 0).to_vec();
            f.extend_from_slice(&header(tag));
            f.extend_from_slice(&[tag; 5]);
            f
        };
        let mut bad_magic = good(1);
        bad_magic[0] ^= 0xff;
        let short = good(2)[..PREFIX + 10].to_vec();
        let mut bad_kind = good(3);
        bad_kind[2] = 9;
        for (bytes, what) in [
            (&bad_magic[..], "not an oxmpi frame"),
            (&short[..], "not an oxmpi frame"),
            (&bad_kind[..], "unknown verbs frame kind"),
            (&[0u8; 3][..], "not an oxmpi frame"),
        ] {
            raw_send(&mut raw, qp, bytes);
            let err = drain(&mut v).unwrap_err();
            match err {
                FabricError::BadFrame { peer: 1, why } => assert!(why.contains(what), "{why}"),
                e => panic!("unexpected {e}"),
            }
        }
        // The receive slots went back to the queue: good frames still arrive, in order.
        for tag in 10..20u8 {
            raw_send(&mut raw, qp, &good(tag));
        }
        let got = drain(&mut v).unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.iter().enumerate().all(|(i, (p, h, b))| *p == 1
            && *h == header(10 + i as u8)
            && b == &[10 + i as u8; 5]));
        assert_eq!(v.receive_slots(), (CREDITS as usize + 2));
    }

    #[test]
    fn a_small_receive_queue_shrinks_the_window() {
        let limits = FakeLimits {
            max_srq_wr: 60,
            ..FakeLimits::default()
        };
        let (_net, w) = world(5, limits, 32);
        // 4 peers: 60 / 4 = 15 slots each, two of them spare.
        assert_eq!(w[0].credits(), 13);
        let tiny = FakeLimits {
            max_srq_wr: 8,
            ..FakeLimits::default()
        };
        let err = fake::world_with(5, tiny, VerbsConfig::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("too few"), "{err}");
    }

    /// A zeroed buffer of `len` bytes that shares no page with other memory (leaked).
    fn page_aligned(len: usize) -> &'static mut [u8] {
        let page = crate::memwatch::page_size();
        let padded = Box::leak(vec![0u8; len + 3 * page].into_boxed_slice());
        let skip = padded.as_ptr().align_offset(page) + page;
        &mut padded[skip..skip + len]
    }
}
