//! The oxmpi protocol engine: point-to-point semantics without I/O of its own.
//!
//! The [`Engine`] takes inputs — operations posted by the API ([`Engine::isend`],
//! [`Engine::irecv`]) and frames that arrived ([`Engine::handle_frame`]) — and turns them into
//! frames to transmit and remote reads, which it hands to a [`oxmpi_fabric::Fabric`] when the
//! driver calls [`Engine::progress_tx`]. It never waits: blocking is the driver's business. So
//! matching and rendezvous races are tested deterministically by a simulated network that
//! reorders and delays frames (see `tests/harness.rs`).
//!
//! - [`frame`]: the wire header.
//! - [`matching`]: posted and unexpected queues per communicator context.
//! - [`protocol`]: eager / rendezvous selection by size.
//! - [`engine`]: requests, the protocol state machines and ordering.
#![forbid(unsafe_code)]

pub mod engine;
pub mod frame;
pub mod matching;
pub mod protocol;

pub use engine::{Completion, Engine, ReqId, SendMode};
pub use protocol::{Protocol, ProtocolConfig};

/// Wildcard source for receives and probes (`MPI_ANY_SOURCE`).
pub const ANY_SOURCE: i32 = -1;
/// Wildcard tag for receives and probes (`MPI_ANY_TAG`).
pub const ANY_TAG: i32 = -1;

/// What a completed receive (or a probe) reports (`MPI_Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// World rank of the sender.
    pub source: u32,
    /// The message's tag.
    pub tag: i32,
    /// Message length in bytes (for a truncated receive: the length that was sent).
    pub bytes: u64,
}

/// Errors reported on an individual request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum P2pError {
    /// The message was longer than the receive buffer (`MPI_ERR_TRUNCATE`); the message was
    /// consumed and the buffer holds its first `capacity` bytes.
    Truncated {
        /// Sender.
        source: u32,
        /// Tag.
        tag: i32,
        /// Bytes sent.
        len: u64,
        /// Bytes the buffer holds.
        capacity: u64,
    },
    /// The peer involved is gone.
    PeerLost {
        /// Which rank.
        rank: u32,
        /// What the fabric saw.
        why: String,
    },
    /// A remote read failed and the operation could not complete.
    Rma(String),
}

impl std::fmt::Display for P2pError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { source, tag, len, capacity } => write!(
                f,
                "message truncated: {len} bytes from rank {source} (tag {tag}) into a buffer of {capacity}"
            ),
            Self::PeerLost { rank, why } => write!(f, "rank {rank} lost: {why}"),
            Self::Rma(m) => write!(f, "remote read failed: {m}"),
        }
    }
}

impl std::error::Error for P2pError {}
