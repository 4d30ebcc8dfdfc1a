//! Message envelopes: [`Status`], and the source and tag selectors of receives and probes.

use crate::Error;

/// Largest valid tag (`MPI_TAG_UB`).
pub const TAG_UB: i32 = i32::MAX;

/// Which sender a receive accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Any rank (`MPI_ANY_SOURCE`).
    Any,
    /// This rank of the communicator.
    Rank(u32),
}

/// Which tag a receive accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// Any tag (`MPI_ANY_TAG`).
    Any,
    /// Exactly this tag.
    Is(i32),
}

/// `MPI_ANY_SOURCE`.
pub const ANY_SOURCE: Source = Source::Any;
/// `MPI_ANY_TAG`.
pub const ANY_TAG: Tag = Tag::Any;

impl From<u32> for Source {
    fn from(r: u32) -> Self {
        Self::Rank(r)
    }
}

impl From<i32> for Tag {
    fn from(t: i32) -> Self {
        Self::Is(t)
    }
}

impl Tag {
    pub(crate) fn raw(self) -> Result<i32, Error> {
        match self {
            Self::Any => Ok(oxmpi_p2p::ANY_TAG),
            Self::Is(t) => check_tag(t),
        }
    }
}

pub(crate) fn check_tag(t: i32) -> Result<i32, Error> {
    if t < 0 {
        return Err(Error::InvalidTag(t));
    }
    Ok(t)
}

/// What a completed receive or a probe reports (`MPI_Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Sender's rank in the communicator.
    pub source: u32,
    /// The message's tag.
    pub tag: i32,
    /// Message length in bytes.
    pub bytes: u64,
}

impl Status {
    /// Number of `T` elements in the message (`MPI_Get_count`).
    pub fn count<T>(&self) -> Result<u64, Error> {
        let elem = std::mem::size_of::<T>();
        if elem == 0 {
            return Ok(0);
        }
        if !self.bytes.is_multiple_of(elem as u64) {
            return Err(Error::Count {
                bytes: self.bytes,
                elem,
            });
        }
        Ok(self.bytes / elem as u64)
    }
}
