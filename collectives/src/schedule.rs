//! Schedules: what a collective does, as data.
//!
//! A [`Schedule`] is a list of rounds; each round a list of [`Step`]s: sends, receives, copies
//! and reductions over byte ranges ([`Span`]s) of the collective's buffers (its send buffer,
//! its receive buffer and temporaries). The executor runs a round's steps in order — local
//! steps at once, communication posted — and starts the next round once every send and
//! receive of this one has completed. So local steps come first in a round, and read what the
//! previous rounds received (libNBC's rounds).
//!
//! Peers are ranks of the communicator the schedule is built for; algorithms that work on a
//! subset of it (hierarchical ones) build through a [`Group`] that maps their ranks.

/// One of the buffers a schedule works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// The caller's input.
    Send,
    /// The caller's output.
    Recv,
    /// A temporary the executor allocates (index into [`Schedule::temps`]).
    Tmp(u16),
}

/// A byte range of one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub buf: Buf,
    pub off: usize,
    pub len: usize,
}

impl Span {
    pub fn new(buf: Buf, off: usize, len: usize) -> Self {
        Self { buf, off, len }
    }

    /// The sub-range `off..off + len` of this span.
    pub fn sub(self, off: usize, len: usize) -> Self {
        debug_assert!(off + len <= self.len);
        Self::new(self.buf, self.off + off, len)
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.off..self.off + self.len
    }
}

/// One step of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `span` to `peer`.
    Send { peer: u32, span: Span },
    /// Receive exactly `span.len` bytes from `peer` into `span`.
    Recv { peer: u32, span: Span },
    /// Copy `from` into `to` (same length).
    Copy { from: Span, to: Span },
    /// Reduce `from` into `into`, element-wise: `into = from op into` when `from_left`
    /// (`from` holds lower ranks' data), else `into = into op from`.
    Reduce {
        from: Span,
        into: Span,
        from_left: bool,
    },
    /// Reduce `from` with `other` into `into`: `into = from op other` when `from_left`, else
    /// `into = other op from`. A [`Step::Copy`] of `other` into `into` and a [`Step::Reduce`]
    /// in one pass over memory. `other` lies in the send buffer, which nothing writes, so
    /// it never overlaps `into`.
    ReduceFrom {
        from: Span,
        other: Span,
        into: Span,
        from_left: bool,
    },
}

impl Step {
    /// A local step (copy or reduction) as its source, its destination and what it does to
    /// them; `None` for a send or a receive.
    pub fn local(&self) -> Option<(Span, Span, Local)> {
        match *self {
            Step::Copy { from, to } => Some((from, to, Local::Copy)),
            Step::Reduce {
                from,
                into,
                from_left,
            } => Some((from, into, Local::Reduce { from_left })),
            Step::ReduceFrom {
                from,
                other,
                into,
                from_left,
            } => Some((from, into, Local::ReduceFrom { other, from_left })),
            Step::Send { .. } | Step::Recv { .. } => None,
        }
    }
}

/// What a local step does to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Copy,
    Reduce {
        from_left: bool,
    },
    /// A [`Step::ReduceFrom`]: the executor passes the bytes of `other` (in the send buffer).
    ReduceFrom {
        other: Span,
        from_left: bool,
    },
}

impl Local {
    /// Applies the step to `to` from `from` (with `kernel` for a reduction, and `other`'s
    /// bytes for a [`Local::ReduceFrom`]).
    pub fn apply(
        self,
        kernel: Option<&dyn crate::ops::Kernel>,
        from: &[u8],
        other: &[u8],
        to: &mut [u8],
    ) {
        let kernel = || kernel.expect("a schedule that reduces runs with a kernel");
        match self {
            Local::Copy => to.copy_from_slice(from),
            Local::Reduce { from_left } => kernel().apply(from, to, from_left),
            Local::ReduceFrom { from_left, .. } => kernel().apply_from(from, other, to, from_left),
        }
    }
}

/// The number of receives in `round`.
pub fn receives(round: &[Step]) -> usize {
    round
        .iter()
        .filter(|s| matches!(s, Step::Recv { .. }))
        .count()
}

/// A collective's steps for one rank.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub steps: Vec<Step>,
    /// `rounds[i]` is the end (exclusive) of round `i` in `steps`.
    pub rounds: Vec<usize>,
    /// Sizes in bytes of the temporaries.
    pub temps: Vec<usize>,
    /// The largest message sent or received, in bytes (set by [`Builder::finish`]).
    pub largest_message: usize,
}

impl Schedule {
    /// The steps of round `i`.
    pub fn round(&self, i: usize) -> &[Step] {
        let start = if i == 0 { 0 } else { self.rounds[i - 1] };
        &self.steps[start..self.rounds[i]]
    }

    /// Number of messages this rank sends.
    pub fn sends(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Send { .. }))
            .count()
    }
}

/// The ranks an algorithm runs over: `members[i]` is the communicator rank of its rank `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub rank: u32,
    pub members: Vec<u32>,
}

impl Group {
    /// The whole communicator.
    pub fn all(rank: u32, size: u32) -> Self {
        Self {
            rank,
            members: (0..size).collect(),
        }
    }

    /// The sub-group of `members` (communicator ranks, which must include this rank's
    /// `comm_rank`).
    pub fn of(comm_rank: u32, members: Vec<u32>) -> Self {
        let rank = members
            .iter()
            .position(|&m| m == comm_rank)
            .expect("a sub-group contains the rank building it") as u32;
        Self { rank, members }
    }

    pub fn size(&self) -> u32 {
        self.members.len() as u32
    }
}

/// Builds a schedule round by round.
#[derive(Debug, Default)]
pub struct Builder {
    sched: Schedule,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new temporary of `len` bytes.
    pub fn tmp(&mut self, len: usize) -> Buf {
        self.sched.temps.push(len);
        Buf::Tmp((self.sched.temps.len() - 1) as u16)
    }

    /// Sends `span` to rank `peer` of group `g`.
    pub fn send(&mut self, g: &Group, peer: u32, span: Span) {
        self.sched.steps.push(Step::Send {
            peer: g.members[peer as usize],
            span,
        });
    }

    /// Receives into `span` from rank `peer` of group `g`.
    pub fn recv(&mut self, g: &Group, peer: u32, span: Span) {
        self.sched.steps.push(Step::Recv {
            peer: g.members[peer as usize],
            span,
        });
    }

    /// Copies `from` to `to`; nothing when they are the same span.
    pub fn copy(&mut self, from: Span, to: Span) {
        debug_assert_eq!(from.len, to.len);
        if from != to && from.len > 0 {
            self.sched.steps.push(Step::Copy { from, to });
        }
    }

    /// Reduces `from` into `into` (see [`Step::Reduce`]).
    pub fn reduce(&mut self, from: Span, into: Span, from_left: bool) {
        debug_assert_eq!(from.len, into.len);
        if from.len > 0 {
            self.sched.steps.push(Step::Reduce {
                from,
                into,
                from_left,
            });
        }
    }

    /// Reduces `from` with `other` (in the send buffer) into `into` (see
    /// [`Step::ReduceFrom`]).
    pub fn reduce_from(&mut self, from: Span, other: Span, into: Span, from_left: bool) {
        debug_assert_eq!(from.len, into.len);
        debug_assert_eq!(other.len, into.len);
        debug_assert_eq!(other.buf, Buf::Send);
        if from.len > 0 {
            self.sched.steps.push(Step::ReduceFrom {
                from,
                other,
                into,
                from_left,
            });
        }
    }

    /// Ends the current round (no-op when it is empty).
    pub fn round(&mut self) {
        let start = self.sched.rounds.last().copied().unwrap_or(0);
        if self.sched.steps.len() > start {
            self.sched.rounds.push(self.sched.steps.len());
        }
    }

    pub fn finish(mut self) -> Schedule {
        self.round();
        self.sched.largest_message = self
            .sched
            .steps
            .iter()
            .map(|s| match s {
                Step::Send { span, .. } | Step::Recv { span, .. } => span.len,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        self.sched
    }
}
