//! oxmpi: MPI's model — ranks, communicators, point-to-point messaging — in native Rust, over
//! shared memory inside a node and TCP anywhere, started with `oxrun -n N ./prog`.
//!
//! ```no_run
//! let universe = oxmpi::init()?;
//! let world = universe.world();
//! if world.rank() == 0 {
//!     world.send(&[1.0f64, 2.0, 3.0], 1, 11)?;          // zero-copy Pod buffers
//!     world.send_obj(&("hello", 42u32), 1, 12)?;        // any serde value
//! } else if world.rank() == 1 {
//!     let mut buf = [0.0f64; 3];
//!     let st = world.recv_into(&mut buf, 0, 11)?;
//!     let (obj, _): ((String, u32), _) = world.recv_obj(0, oxmpi::ANY_TAG)?;
//!     println!("{buf:?} {obj:?} from {}", st.source);
//! }
//! # Ok::<(), oxmpi::Error>(())
//! ```
//!
//! A program started without `oxrun` runs as a world of one.
#![forbid(unsafe_code)]

mod cart;
mod collective;
mod collective_obj;
mod comm;
mod comm_create;
mod error;
mod group;
mod in_place;
mod message;
mod persistent;
mod persistent_in_place;
mod progress;
mod reduce_local;
mod request;
mod status;

pub use cart::{dims_create, CartComm};
pub use collective::CollRequest;
pub use comm::Communicator;
pub use comm_create::InterComm;
pub use error::Error;
pub use group::{Group, GroupRelation};
pub use message::Message;
pub use oxmpi_collectives::ops::{LocF32, LocF64, LocI32, LocI64, LocU32, LocU64};
pub use oxmpi_collectives::{Loc, Op, ReduceOp, Reducible, UserOp};
pub use persistent::Persistent;
pub use persistent_in_place::PersistentInPlace;
pub use reduce_local::reduce_local;
pub use request::{
    test_all, test_any, test_some, wait_all, wait_all_into, wait_any, wait_some, ObjRecv, Request,
    Scope,
};
pub use status::{Source, Status, Tag, ANY_SOURCE, ANY_TAG, TAG_UB};

use oxmpi_bootstrap::{JobEnv, KvsClient};
use oxmpi_fabric::{Fabric, Router};
use oxmpi_p2p::{Engine, Protocol};
use progress::{Progress, State, WaitPolicy};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

const WORLD_CTX: u32 = 0;
const SELF_CTX: u32 = 2;

/// The initialized library (`MPI_Init` ... `MPI_Finalize`); finalizes when dropped.
pub struct Universe {
    state: Rc<State>,
}

impl std::fmt::Debug for Universe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Universe(rank {} of {})",
            self.state.rank, self.state.size
        )
    }
}

/// Initializes oxmpi (`MPI_Init`): wires this rank up with the others started by `oxrun`, or
/// makes a world of one when started alone.
pub fn init() -> Result<Universe> {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyInitialized);
    }
    let env = JobEnv::from_env()?;
    // Counted before this rank pins itself: afterwards the process sees one CPU.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(cpu) = std::env::var("OXMPI_BIND_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        if let Err(e) = oxmpi_fabric::affinity::bind_to_cpu(cpu) {
            eprintln!("oxmpi: rank {}: could not bind to cpu {cpu}: {e}", env.rank);
        }
    }
    let (router, kvs) = if env.size > 1 {
        let mut kvs = KvsClient::connect(&env)?;
        let router = oxmpi_fabric::wireup::wire_up(&env, &mut kvs, cores)?;
        (router, Some(kvs))
    } else {
        (Router::singleton(), None)
    };
    Universe::from_router(router, kvs, cores)
}

/// The collective selection table in effect (`OXMPI_COLL_TABLE`, else built in) with the
/// algorithms forced by `OXMPI_COLL_<NAME>`, as `oxrun --coll-table` prints it.
pub fn coll_table() -> Result<String> {
    let t = oxmpi_collectives::Table::from_env().map_err(Error::Algorithm)?;
    Ok(t.describe())
}

/// Which world ranks share a node: the fabric's view, or blocks of `OXMPI_NODE_SIZE`.
fn topology(router: &Router) -> oxmpi_collectives::Topology {
    match std::env::var("OXMPI_NODE_SIZE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(k) if k > 0 => oxmpi_collectives::Topology::blocks(router.size(), k),
        _ => oxmpi_collectives::Topology::from_keys(router.nodes()),
    }
}

impl Universe {
    /// A universe over an already wired fabric (e.g. one thread-rank of
    /// [`oxmpi_fabric::loopback::world`]).
    pub fn from_fabric(fabric: Box<dyn Fabric>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::from_router(Router::single(fabric), None, cores)
            .expect("a universe over a wired fabric needs nothing that can fail but the table")
    }

    fn from_router(fabric: Router, kvs: Option<KvsClient>, cores: usize) -> Result<Self> {
        let table = oxmpi_collectives::Table::from_env().map_err(Error::Algorithm)?;
        let topo = topology(&fabric);
        let mut engine = Engine::for_fabric(&fabric);
        let (rank, size) = (fabric.rank(), fabric.size());
        let sockets_only = size > 1
            && (0..size)
                .filter(|&p| p != rank)
                .all(|p| fabric.backend_name(p) == "tcp");
        let local = 1
            + (0..size)
                .filter(|&p| p != rank && fabric.backend_name(p) == "shm")
                .count();
        // Collective messages go eager up to a whole frame so that ranks sharing cores never
        // wait on a handshake. With a core per rank, a round that sends one way to several
        // shared-memory peers has them read in one copy each instead, in parallel; a round's
        // only send, and exchanges, stay eager (`Engine::isend_single`: with one message the
        // sender's copy costs what a read would, and a read measured slower in allreduce).
        if local <= cores && std::env::var_os("OXMPI_COLL_EAGER_MAX").is_none() {
            for p in (0..size).filter(|&p| p != rank && fabric.backend_name(p) == "shm") {
                engine.limit_oneway_eager(p, 0);
            }
        }
        let state = State {
            progress: RefCell::new(Progress {
                engine,
                fabric,
                colls: Default::default(),
                finalizing: false,
            }),
            kvs: RefCell::new(kvs),
            rank,
            size,
            policy: WaitPolicy::new(local, cores, sockets_only),
            table,
            forced_env: oxmpi_collectives::Coll::ALL
                .into_iter()
                .filter_map(|c| oxmpi_collectives::registry::forced_from_env(c).map(|a| (c, a)))
                .collect(),
            coll_check: std::env::var("OXMPI_COLL_CHECK").is_ok_and(|v| v == "1" || v == "true"),
            topo,
            free_ctx: RefCell::new(comm_create::all_free()),
        };
        Ok(Self {
            state: Rc::new(state),
        })
    }

    /// All ranks of the job (`MPI_COMM_WORLD`).
    pub fn world(&self) -> Communicator {
        Communicator::new(self.state.clone(), Group::world(self.state.size), WORLD_CTX)
    }

    /// This rank alone (`MPI_COMM_SELF`).
    pub fn self_comm(&self) -> Communicator {
        Communicator::new(
            self.state.clone(),
            Group::of(vec![self.state.rank]),
            SELF_CTX,
        )
    }

    /// One line per peer: which fabric and protocol thresholds reach it.
    pub fn fabric_info(&self) -> String {
        let p = self.state.progress();
        let mut out = String::new();
        for peer in 0..self.state.size {
            let caps = p.fabric.caps(peer);
            if peer == self.state.rank {
                out.push_str(&format!(
                    "rank {peer} -> {peer}: self (copies within the engine)\n"
                ));
                continue;
            }
            let cfg = p.engine.config(peer);
            let read = if cfg.read_min > cfg.read_max {
                "never".to_string()
            } else {
                format!("{}..={} B", cfg.read_min, cfg.read_max)
            };
            out.push_str(&format!(
                "rank {} -> {peer}: {} ({} <= {} B, {} {read}, {} chunk {} B)\n",
                self.state.rank,
                caps.name,
                Protocol::Eager.name(),
                cfg.eager_max,
                Protocol::RndvRead.name(),
                Protocol::RndvPipeline.name(),
                cfg.chunk
            ));
        }
        out
    }

    /// Brings the whole job down with `code` (`MPI_Abort`).
    pub fn abort(&self, code: i32) -> ! {
        self.state.abort(code, "abort")
    }
}

impl Drop for Universe {
    fn drop(&mut self) {
        // MPI_Finalize: make sure no rank tears its fabric down while others still need it.
        // Peers that finish the barrier first close their connections while the others are
        // still in it: expected now, so not reported.
        self.state.progress().finalizing = true;
        if self.state.size > 1 && !std::thread::panicking() {
            let _ = self.world().barrier();
        }
        if std::env::var("OXMPI_COUNTERS").is_ok_and(|v| !v.is_empty() && v != "0") {
            let counters = self.state.progress().fabric.counters();
            let line: Vec<String> = counters.iter().map(|(n, v)| format!("{n}={v}")).collect();
            eprintln!("oxmpi[{}]: counters: {}", self.state.rank, line.join(" "));
        }
        INITIALIZED.store(false, Ordering::SeqCst);
    }
}

/// The README's code is compiled and run (as a world of one) with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
