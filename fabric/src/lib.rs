//! The fabric layer: moves frames between ranks and exposes remote memory.
//!
//! Every backend fills the same contract, [`Fabric`]: send a frame (a fixed [`Header`] plus a
//! payload) to a peer, report arrivals and completions through [`Fabric::poll`], and, where
//! [`Caps::rma_read`] says so, read a peer's lent memory directly ([`Fabric::read`]). What a
//! backend cannot do natively the protocol engine builds on the minimum (rendezvous over TCP
//! becomes a receiver-driven pipeline of data frames).
//!
//! Backends: [`loopback`] (threads in one process, the test harness), [`shm`] (per-peer rings
//! in a shared mapping, single-copy reads with `process_vm_readv`), [`tcp`] (non-blocking
//! sockets with epoll), [`verbs`] (InfiniBand reliable connections; the real device with the
//! `verbs` feature, an in-process fake NIC always) and, with the `ofi` feature, `ofi`
//! (libfabric RDM endpoints). [`router`]
//! picks one per peer by locality.
//!
//! Back-pressure is a status ([`Sent::WouldBlock`]), never an error: the caller keeps the frame
//! and tries again after polling.

pub mod affinity;
pub mod loopback;
pub mod memory;
pub mod memwatch;
#[cfg(feature = "ofi")]
pub mod ofi;
pub mod regcache;
pub mod router;
pub mod shm;
mod sys;
pub mod tcp;
pub mod verbs;
pub mod wireup;

pub use memory::{lend_scope, Lender, MemMut, MemRef, Region, RegionError};
pub use router::Router;

use std::time::Duration;

/// Bytes in a frame header. The header's layout belongs to the protocol engine; the fabric
/// carries it opaquely.
pub const HEADER_LEN: usize = 48;

/// A frame header, opaque to the fabric.
pub type Header = [u8; HEADER_LEN];

/// A rank in the world communicator.
pub type Rank = u32;

/// A handle on a peer's lent memory: what a rendezvous sender advertises so the receiver can
/// read it with [`Fabric::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteKey {
    /// Where a read starts: the address in the owner's address space, or an offset into the
    /// owner's registration where the backend addresses memory that way.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The backend's protection key for the memory (an RDMA rkey); 0 where none is needed.
    pub key: u64,
}

impl RemoteKey {
    /// The key of `mem` for backends that read by address with no protection key (shared
    /// memory, loopback).
    pub fn of_address(mem: &MemRef) -> Self {
        let b = mem.bytes();
        Self {
            addr: b.as_ptr() as u64,
            len: b.len() as u64,
            key: 0,
        }
    }
}

/// A small performance model, used to choose protocols and reported by `--fabric-info`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerfModel {
    /// One-way latency of a small message, microseconds.
    pub latency_us: f64,
    /// Streaming bandwidth, GB/s.
    pub bandwidth_gbs: f64,
}

/// What a backend offers, per peer; queried once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Caps {
    /// Backend name (`loopback`, `shm`, `tcp`).
    pub name: &'static str,
    /// The peer's lent memory can be read with [`Fabric::read`].
    pub rma_read: bool,
    /// Largest payload of one frame.
    pub max_payload: usize,
    /// Largest message sent eagerly (default; the engine may be told otherwise).
    pub eager_max: usize,
    /// Messages at least this large use a remote read when `rma_read` holds; smaller
    /// rendezvous messages use the pipelined protocol.
    pub rndv_read_min: usize,
    /// Messages larger than this use the pipeline even where reads are possible (on a host
    /// where both ranks copying beats one rank reading).
    pub rndv_read_max: usize,
    /// Chunk size for pipelined rendezvous data.
    pub pipeline_chunk: usize,
    /// Smallest eager payload worth [`Fabric::send_lent`] (sent in place, without a copy);
    /// `usize::MAX` where the fabric always copies.
    pub lent_min: usize,
    /// Performance model.
    pub model: PerfModel,
}

/// Outcome of [`Fabric::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Sent {
    /// The frame is the fabric's: the caller's payload may be reused.
    Done,
    /// No room now: keep the frame, poll, and try again.
    WouldBlock,
    /// Only from [`Fabric::send_lent`]: the frame is on its way, but the fabric still reads
    /// the payload in place. It reports [`Event::SendDone`] with the send's token once the
    /// payload may be reused.
    Lent,
}

/// What [`Fabric::poll`] reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A frame arrived from `peer`. `payload` is valid only during the callback.
    Frame {
        /// Sender.
        peer: Rank,
        /// Its header.
        header: &'a Header,
        /// Its payload.
        payload: &'a [u8],
    },
    /// A send that returned [`Sent::Lent`] has finished reading its payload.
    SendDone {
        /// The send's destination.
        peer: Rank,
        /// The token given to [`Fabric::send_lent`].
        token: u64,
    },
}

/// Fabric failures.
#[derive(Debug)]
#[non_exhaustive]
pub enum FabricError {
    /// The connection to a peer is gone (the peer died or closed it).
    PeerLost {
        /// Which peer.
        peer: Rank,
        /// What was observed.
        why: String,
    },
    /// A peer sent something that is not a valid frame; its connection was closed.
    BadFrame {
        /// Which peer.
        peer: Rank,
        /// What was wrong.
        why: String,
    },
    /// A remote read failed.
    Rma(String),
    /// Setting the fabric up failed.
    Setup(String),
    /// Any other operating-system error.
    Io(std::io::Error),
}

impl std::fmt::Display for FabricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PeerLost { peer, why } => write!(f, "lost rank {peer}: {why}"),
            Self::BadFrame { peer, why } => write!(f, "bad frame from rank {peer}: {why}"),
            Self::Rma(m) => write!(f, "remote read failed: {m}"),
            Self::Setup(m) => write!(f, "fabric setup: {m}"),
            Self::Io(e) => write!(f, "fabric I/O: {e}"),
        }
    }
}

impl std::error::Error for FabricError {}

impl From<std::io::Error> for FabricError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<oxmpi_bootstrap::BootstrapError> for FabricError {
    fn from(e: oxmpi_bootstrap::BootstrapError) -> Self {
        Self::Setup(e.to_string())
    }
}

/// The contract every backend fills.
pub trait Fabric {
    /// This rank.
    fn rank(&self) -> Rank;
    /// Number of ranks.
    fn size(&self) -> u32;
    /// Capabilities and limits towards `peer` (the same object on every call).
    fn caps(&self, peer: Rank) -> &Caps;
    /// Sends one frame. `payload.len()` must not exceed `caps(peer).max_payload`.
    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError>;
    /// Sends one eager frame whose payload stays alive and unchanged until the send completes
    /// (the caller holds `payload` until then). A fabric that can send it in place, without
    /// copying it first, returns [`Sent::Lent`] and later reports [`Event::SendDone`] with
    /// `token`; the default copies it like [`Fabric::send`].
    fn send_lent(
        &mut self,
        peer: Rank,
        header: &Header,
        payload: &MemRef,
        token: u64,
    ) -> Result<Sent, FabricError> {
        let _ = token;
        self.send(peer, header, payload.bytes())
    }
    /// Reads `dst.len()` bytes of `peer`'s lent memory at `remote.addr + offset` into `dst`.
    /// Completes before returning. Only where `caps(peer).rma_read`.
    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError>;
    /// Reports arrivals through `on`; returns how many events it reported.
    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError>;
    /// Blocks until something may have arrived or `timeout` passed (spurious wake-ups allowed).
    fn wait(&mut self, timeout: Duration);
    /// [`Fabric::read`] of a message whose sender only waits for its sends (a collective's
    /// round that receives nothing): a backend may ask the sender to help copy it where it
    /// would not ask others (shared memory with more ranks than cores). The default reads.
    fn read_from_idle(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        self.read(peer, remote, offset, dst)
    }
    /// The key `peer` uses to read `mem` (for `rma_read` backends). Backends that must register
    /// the memory keep it registered at least until [`Fabric::release_key`].
    fn remote_key(&mut self, peer: Rank, mem: &MemRef) -> Result<RemoteKey, FabricError> {
        let _ = peer;
        Ok(RemoteKey::of_address(mem))
    }
    /// `peer` has finished with a key from [`Fabric::remote_key`] (or will never use it).
    fn release_key(&mut self, peer: Rank, key: &RemoteKey) {
        let _ = (peer, key);
    }
    /// The backend's counters, as (name, value) pairs (`regcache.hits`, ...); printed at the
    /// end of a job under `OXMPI_COUNTERS=1`.
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// A registration cache's counters under `{prefix}.` names, with the hit rate in per mille.
pub fn cache_counters(prefix: &str, s: &regcache::CacheStats) -> Vec<(String, u64)> {
    [
        ("regcache.hits", s.hits),
        ("regcache.misses", s.misses),
        (
            "regcache.hit_rate_permille",
            (s.hit_rate() * 1000.0).round() as u64,
        ),
        ("regcache.evictions", s.evictions),
        ("regcache.invalidations", s.invalidations),
        ("regcache.registrations", s.registrations),
        ("regcache.registered_bytes", s.registered_bytes as u64),
    ]
    .into_iter()
    .map(|(n, v)| (format!("{prefix}.{n}"), v))
    .collect()
}
