//! The driver: one rank's engine and fabric, and how a blocking call waits.
//!
//! Waiting spins on progress for a short while (`OXMPI_SPIN_US`, default 50 µs; none when the
//! host runs more ranks than it has cores or all peers are behind sockets, where every empty
//! poll yields instead), then yields the core for up to 2 ms, then sleeps
//! on the fabric's wait handle (a futex doorbell for shared memory, epoll for TCP) in slices of
//! a few milliseconds. So two pinned ranks see polling latency, and eight ranks on two cores
//! still make progress without burning each other's time.

use crate::collective::CollRuns;
use crate::Error;
use oxmpi_bootstrap::KvsClient;
use oxmpi_collectives::{Table, Topology};
use oxmpi_fabric::{Event, Fabric, FabricError, Header, Rank, Router};
use oxmpi_p2p::Engine;
use std::cell::{RefCell, RefMut};
use std::time::{Duration, Instant};

/// The engine and fabric of this rank.
pub(crate) struct Progress {
    pub engine: Engine,
    pub fabric: Router,
    /// Nonblocking and persistent collectives in flight.
    pub colls: CollRuns,
    /// Set by finalize: peers closing their connections is expected then, not reported.
    pub finalizing: bool,
}

impl Progress {
    /// One pass: transmit, collect arrivals, transmit what they caused.
    #[inline]
    pub fn pass(&mut self) -> usize {
        self.pass_with(|engine, peer, header, payload| engine.handle_frame(peer, header, payload))
    }

    /// A pass for a direct receive (`Engine::handle_frame_direct`): fills `out` when the
    /// receive's message arrives; other frames are processed as usual.
    pub fn pass_direct(
        &mut self,
        want: (u32, i32, i32),
        buf: &mut [u8],
        out: &mut Option<Result<oxmpi_p2p::Status, oxmpi_p2p::P2pError>>,
    ) {
        self.pass_with(|engine, peer, header, payload| {
            if out.is_none() {
                *out = engine.handle_frame_direct(peer, header, payload, want, buf);
            } else {
                engine.handle_frame(peer, header, payload);
            }
        });
    }

    /// A pass in which `on_frame` handles each arrival.
    #[inline]
    fn pass_with(&mut self, mut on_frame: impl FnMut(&mut Engine, Rank, &Header, &[u8])) -> usize {
        let Self {
            engine,
            fabric,
            colls,
            finalizing,
        } = self;
        if engine.has_tx() {
            let _ = engine.progress_tx(fabric);
        }
        let n = match fabric.poll(&mut |ev| match ev {
            Event::Frame {
                peer,
                header,
                payload,
            } => on_frame(engine, peer, header, payload),
            Event::SendDone { peer, token } => engine.on_lent_send_done(peer, token),
        }) {
            Ok(n) => n,
            Err(e) => {
                Self::on_fabric_error(engine, e, *finalizing);
                1
            }
        };
        if colls.has_active() {
            colls.advance_all(engine, fabric);
        }
        if engine.has_tx() {
            let _ = engine.progress_tx(fabric);
        }
        n
    }

    fn on_fabric_error(engine: &mut Engine, e: FabricError, finalizing: bool) {
        match &e {
            FabricError::PeerLost { peer, why } | FabricError::BadFrame { peer, why } => {
                if !finalizing {
                    eprintln!("oxmpi: rank {}: {e}", engine.rank());
                }
                engine.fail_peer(*peer, why);
            }
            other => eprintln!("oxmpi: rank {}: {other}", engine.rank()),
        }
    }
}

/// How long each waiting phase lasts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitPolicy {
    pub spin: Duration,
    pub yield_for: Duration,
    pub sleep_slice: Duration,
}

impl WaitPolicy {
    /// `cores`: the CPUs this host offers the job (read before a rank pins itself to one).
    /// `sockets_only`: every peer is reached over TCP. Polling sockets then yields after each
    /// empty poll too: it leaves the core to the kernel's receive processing, which measured
    /// lower loopback latency than a tight loop of reads (docs/benchmarks.md).
    pub fn new(local_ranks: usize, cores: usize, sockets_only: bool) -> Self {
        let default_spin = if local_ranks > cores || sockets_only {
            0
        } else {
            50
        };
        let spin = std::env::var("OXMPI_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_spin);
        Self {
            spin: Duration::from_micros(spin),
            yield_for: Duration::from_millis(2),
            sleep_slice: Duration::from_millis(5),
        }
    }
}

/// Everything a communicator shares: the driver, the KVS connection, the wait policy.
pub(crate) struct State {
    pub progress: RefCell<Progress>,
    pub kvs: RefCell<Option<KvsClient>>,
    pub rank: u32,
    pub size: u32,
    pub policy: WaitPolicy,
    /// The collective selection table.
    pub table: Table,
    /// Algorithms forced by `OXMPI_COLL_<NAME>`, read once at start-up.
    pub forced_env: Vec<(oxmpi_collectives::Coll, String)>,
    /// `OXMPI_COLL_CHECK=1`: new communicators check that the ranks agree on each blocking
    /// collective's arguments before running it.
    pub coll_check: bool,
    /// Which world ranks share a node.
    pub topo: Topology,
    /// Free context ids (see `comm_create`): bit `i` of word `i / 64` set when free.
    pub free_ctx: RefCell<Vec<u64>>,
}

impl State {
    pub fn progress(&self) -> RefMut<'_, Progress> {
        self.progress.borrow_mut()
    }

    /// Drives progress until `done` holds.
    pub fn wait_until(&self, mut done: impl FnMut(&mut Engine) -> bool) {
        self.wait_with(|p| {
            p.pass();
            done(&mut p.engine)
        })
    }

    /// Drives progress until `done` holds of the driver.
    pub fn wait_until_with(&self, mut done: impl FnMut(&mut Progress) -> bool) {
        self.wait_with(|p| {
            p.pass();
            done(p)
        })
    }

    /// Calls `step` (one pass of progress and a check) until it returns true, waiting between
    /// calls as the policy says.
    pub fn wait_with(&self, mut step: impl FnMut(&mut Progress) -> bool) {
        let mut p = self.progress();
        // The clock is read only once the wait has lasted 1024 polls: short waits, the
        // latency-critical ones, never pay for it.
        let mut start: Option<Instant> = None;
        let mut spins = 0u32;
        let mut sleeping = false;
        loop {
            if step(&mut p) {
                return;
            }
            spins = spins.wrapping_add(1);
            // No PAUSE here: on recent x86 it costs ~140 cycles, which is latency. With no
            // spin phase (oversubscribed), yield after every empty poll: the peer we wait for
            // may need this very core. The clock is read every 32nd yield only: the phases
            // last milliseconds, and a read per yield was 4 % of an oversubscribed rank's time.
            if self.policy.spin.is_zero() {
                if !sleeping && !spins.is_multiple_of(32) {
                    std::thread::yield_now();
                    continue;
                }
            } else if !spins.is_multiple_of(1024) {
                continue;
            }
            let waited = start.get_or_insert_with(Instant::now).elapsed();
            if waited < self.policy.spin {
                continue;
            } else if waited < self.policy.spin + self.policy.yield_for || p.engine.has_tx() {
                // Frames held back by a full ring wait for the peer to drain it, which rings
                // no doorbell of ours: keep yielding rather than sleep through it.
                sleeping = false;
                std::thread::yield_now();
            } else {
                sleeping = true;
                p.fabric.wait(self.policy.sleep_slice);
            }
        }
    }

    /// Asks the launcher to bring the job down, then exits.
    pub fn abort(&self, code: i32, msg: &str) -> ! {
        eprintln!("oxmpi: rank {} called abort({code}): {msg}", self.rank);
        if let Some(k) = self.kvs.borrow_mut().as_mut() {
            let _ = k.abort(code, msg);
        }
        std::process::exit(code)
    }
}

pub(crate) fn check_rank(rank: u32, size: u32) -> Result<(), Error> {
    if rank >= size {
        return Err(Error::InvalidRank { rank, size });
    }
    Ok(())
}
