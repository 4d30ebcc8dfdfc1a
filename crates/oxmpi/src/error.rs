//! The one error type of the API, grouped by who is at fault.

use oxmpi_p2p::P2pError;

/// Errors returned by every oxmpi call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    // --- API misuse ---
    /// A rank outside the communicator (`MPI_ERR_RANK`).
    InvalidRank {
        /// The rank given.
        rank: u32,
        /// The communicator's size.
        size: u32,
    },
    /// A tag outside `0..=TAG_UB` (`MPI_ERR_TAG`).
    InvalidTag(i32),
    /// The message was longer than the receive buffer (`MPI_ERR_TRUNCATE`). The message was
    /// consumed; the buffer holds its first `capacity` bytes.
    Truncated {
        /// Sender's rank in the communicator.
        source: u32,
        /// Tag.
        tag: i32,
        /// Bytes sent.
        len: u64,
        /// Bytes the buffer holds.
        capacity: u64,
    },
    /// A message's length is not a whole number of elements of the receiving type.
    Count {
        /// Message length in bytes.
        bytes: u64,
        /// Element size.
        elem: usize,
    },
    /// `init` was called twice in one process.
    AlreadyInitialized,
    /// A collective's buffer, count or displacement list has the wrong length.
    BufferSize {
        /// Which collective.
        what: &'static str,
        /// Which argument.
        buffer: &'static str,
        /// Length needed (elements).
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A reduction op that is not defined on the element type.
    InvalidOp(String),
    /// A forced collective algorithm that does not exist or cannot run this call.
    Algorithm(String),
    /// An argument outside what the call accepts (dimensions, colours, groups).
    InvalidArgument(String),
    /// Every context id is in use (too many live communicators).
    NoContext,

    // --- peer misbehaviour ---
    /// A received object could not be decoded as the requested type.
    Decode(String),
    /// Ranks disagree about a collective's counts: `rank` sent `got` bytes where this rank
    /// expected `expected`.
    CollectiveMismatch {
        /// Communicator rank that sent.
        rank: u32,
        /// Bytes this rank expected.
        expected: usize,
        /// Bytes that came.
        got: usize,
    },
    /// The ranks called a blocking collective with arguments that must agree but do not: a
    /// different collective, root, count or reduction (`field` says which). Found only with
    /// the check on (`OXMPI_COLL_CHECK=1`, [`crate::Communicator::set_collective_check`]);
    /// every rank gets it, and none ran the collective.
    CollectiveDisagreement {
        /// What differed.
        field: &'static str,
    },
    /// An internal inconsistency (a bug in oxmpi); the operation was stopped.
    Internal(String),

    // --- fabric failure ---
    /// A rank this operation depends on is gone.
    PeerLost {
        /// World rank.
        rank: u32,
        /// What was observed.
        why: String,
    },
    /// The fabric failed (setup, remote read, I/O).
    Fabric(String),

    // --- bootstrap failure ---
    /// Wire-up with the launcher failed or timed out.
    Bootstrap(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidRank { rank, size } => {
                write!(f, "invalid rank {rank}: the communicator has {size} rank(s)")
            }
            Self::InvalidTag(t) => write!(f, "invalid tag {t}: tags are 0..={}", crate::TAG_UB),
            Self::Truncated { source, tag, len, capacity } => write!(
                f,
                "message truncated: {len} bytes from rank {source} (tag {tag}) into a buffer of {capacity} bytes"
            ),
            Self::Count { bytes, elem } => {
                write!(f, "a {bytes}-byte message is not a whole number of {elem}-byte elements")
            }
            Self::AlreadyInitialized => write!(f, "oxmpi::init was already called in this process"),
            Self::BufferSize { what, buffer, expected, got } => {
                write!(f, "{what}: {buffer} has length {got}, {expected} needed")
            }
            Self::InvalidOp(m) => write!(f, "invalid reduction: {m}"),
            Self::Algorithm(m) => write!(f, "collective algorithm: {m}"),
            Self::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Self::NoContext => write!(f, "no free communicator context id (free some communicators)"),
            Self::CollectiveDisagreement { field } => write!(
                f,
                "collective arguments differ between ranks: the {field} (found by the collective check)"
            ),
            Self::CollectiveMismatch { rank, expected, got } => write!(
                f,
                "collective count mismatch: rank {rank} sent {got} bytes where {expected} were expected (ranks passed different counts)"
            ),
            Self::Internal(m) => write!(f, "internal error: {m}"),
            Self::Decode(m) => write!(f, "could not decode the received object: {m}"),
            Self::PeerLost { rank, why } => write!(f, "rank {rank} is gone: {why}"),
            Self::Fabric(m) => write!(f, "fabric error: {m}"),
            Self::Bootstrap(m) => write!(f, "bootstrap error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn from_p2p(e: P2pError, to_comm: impl Fn(u32) -> u32) -> Self {
        match e {
            P2pError::Truncated {
                source,
                tag,
                len,
                capacity,
            } => Self::Truncated {
                source: to_comm(source),
                tag,
                len,
                capacity,
            },
            P2pError::PeerLost { rank, why } => Self::PeerLost { rank, why },
            P2pError::Rma(m) => Self::Fabric(m),
            other => Self::Fabric(other.to_string()),
        }
    }
}

impl From<oxmpi_bootstrap::BootstrapError> for Error {
    fn from(e: oxmpi_bootstrap::BootstrapError) -> Self {
        Self::Bootstrap(e.to_string())
    }
}

impl From<oxmpi_fabric::FabricError> for Error {
    fn from(e: oxmpi_fabric::FabricError) -> Self {
        match e {
            oxmpi_fabric::FabricError::PeerLost { peer, why } => Self::PeerLost { rank: peer, why },
            other => Self::Fabric(other.to_string()),
        }
    }
}
