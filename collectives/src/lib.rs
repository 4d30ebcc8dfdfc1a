//! oxmpi's collectives: every collective is an algorithm that *generates a schedule* — rounds
//! of sends, receives, copies and reductions over byte ranges — and one executor runs any
//! schedule over the p2p engine's requests.
//!
//! - [`schedule`]: the schedule data structure and its builder.
//! - [`algorithms`]: the algorithms, each correct for any number of ranks.
//! - [`registry`]: what each algorithm accepts, the selection table, forcing by environment.
//! - [`exec`]: the executor ([`exec::Run`]), shared by blocking, nonblocking and persistent
//!   collectives; [`exec_small`]: a leaner one ([`exec_small::SmallRun`]) for blocking
//!   collectives whose messages are all small, on the caller's slices.
//! - [`ops`]: reduction operations and their kernels.
//! - [`topology`]: which ranks share a node, for the hierarchical algorithms.
//!
//! No I/O and no `unsafe` here: the executor drives an [`oxmpi_p2p::Engine`] over any
//! [`oxmpi_fabric::Fabric`], and buffers are [`oxmpi_fabric::Region`]s, which check every
//! range a schedule touches.

#![forbid(unsafe_code)]

pub mod algorithms;
pub mod exec;
pub mod exec_small;
pub mod ops;
pub mod registry;
pub mod schedule;
pub mod topology;

pub use exec::{CollError, Route, Run};
pub use ops::{Kernel, Loc, Op, ReduceOp, Reducible, TypedKernel, UserOp};
pub use registry::{AlgoInfo, Coll, Spec, Table};
pub use schedule::Schedule;
pub use topology::Topology;
