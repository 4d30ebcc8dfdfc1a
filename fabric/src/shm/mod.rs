//! The shared-memory backend: ranks on one host exchange frames through per-peer rings in
//! shared mappings ([`segment`], [`ring`]) and read each other's lent memory with
//! `process_vm_readv` (cross-memory attach) where the kernel's ptrace rules permit it.
//!
//! Eager messages cost two copies (into the ring, out of it into the user's buffer) and no
//! syscall unless the receiver sleeps. Large messages use either a pipelined copy through the
//! ring (rendezvous pipeline) or a single-copy remote read; which one is chosen by size from
//! [`Caps::rndv_read_min`], set from measurements on the target machine (docs/benchmarks.md).
//! A read of [`assist::ASSIST_MIN`] bytes or more is an *assisted* read: the sender, waiting
//! for it in its poll, copies part of it with `process_vm_writev` ([`assist`]). Only one-way:
//! a rank does not ask a peer that has a rendezvous message of its to read as well (an
//! exchange keeps both cores copying anyway), and helps only from a poll that found nothing.
//! With more ranks than cores ([`Shm::new`]) the rules are stricter: a rank asks only a sender
//! that waits for nothing but its sends ([`Fabric::read_from_idle`]) and is pinned to another
//! CPU, and helps only while its last poll and those of the ranks that may share its core
//! found nothing.

pub mod assist;
pub mod ring;
pub mod segment;

use crate::sys::cvt;
use crate::{Caps, Event, Fabric, FabricError, Header, PerfModel, Rank, RemoteKey, Sent};
use assist::{AssistError, ASSIST_CHUNK, ASSIST_MIN};
use ring::{Consumer, Producer, MAX_PAYLOAD};
use segment::Segment;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Default largest eager message over shared memory (measured: docs/benchmarks.md).
pub const EAGER_MAX: usize = 8 * 1024;
/// Default smallest message read with `process_vm_readv` where permitted; smaller rendezvous
/// messages, and all of them where CMA is not permitted, go through the ring pipeline.
pub const RNDV_READ_MIN: usize = 8 * 1024 + 1;
/// Default largest message read with `process_vm_readv`: no limit. Reads had the lower
/// latency and the higher bidirectional bandwidth at every size measured on the 2-core VM,
/// and, with `osu_bw` sending a window from one buffer as OSU does, the higher one-way
/// bandwidth too (`scripts/shm-protocols.sh`, docs/benchmarks.md). The pipeline carries
/// rendezvous messages where CMA is not permitted.
pub const RNDV_READ_MAX: usize = usize::MAX;

/// A peer reachable through shared memory.
pub struct ShmPeer {
    /// World rank.
    pub rank: Rank,
    /// Its process id (for `process_vm_readv`).
    pub pid: i32,
    /// Whether `process_vm_readv` on it was probed to work.
    pub cma: bool,
    /// Its segment, mapped here.
    pub segment: Segment,
}

struct Outbound {
    producer: Producer,
    segment: Segment,
    pid: i32,
    caps: Caps,
    /// Whether this rank helps the peer's reads of its memory (`process_vm_writev` into the
    /// peer: CMA permitted, and no write of ours failed).
    helps: bool,
    /// Whether this rank asks the peer for help with its reads (the peer did not end with a
    /// chunk of ours claimed).
    asks: bool,
    /// Rendezvous sends to the peer whose memory it may still read (keys lent, not released).
    lent: u32,
}

/// Sizes of assisted reads (`OXMPI_SHM_ASSIST_MIN`, `OXMPI_SHM_ASSIST_CHUNK`; a minimum of 0
/// turns assistance off).
#[derive(Clone, Copy, Debug)]
struct AssistConfig {
    min: usize,
    chunk: usize,
}

/// Whether process `pid` can still write anything: it exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // A zombie (exited, not yet reaped by oxrun) still answers signal 0.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => r == 0,
    }
}

/// The shared-memory fabric of one rank.
pub struct Shm {
    rank: Rank,
    size: u32,
    own: Segment,
    inbound: Vec<(Rank, Consumer)>,
    outbound: Vec<Option<Outbound>>,
    next_poll: usize,
    short_naps: u8,
    assist: AssistConfig,
    /// More of this host's ranks than cores (and `OXMPI_SHM_ASSIST_MIN` not set): ask only
    /// idle senders pinned to another CPU, help only while the core-mates' polls are empty.
    shared_cores: bool,
    /// The CPU this rank is pinned to, if one.
    cpu: Option<u32>,
    /// With `shared_cores`, the peers that may run on this rank's core: those pinned to its
    /// CPU, or every peer when this rank or that peer is not pinned to one CPU.
    core_mates: Vec<Rank>,
    /// What this rank's segment says of its last poll (`Segment::idle`; kept with
    /// `shared_cores` only).
    idle: bool,
    counters: ShmCounters,
}

/// What `OXMPI_COUNTERS=1` reports for shared memory.
#[derive(Default)]
struct ShmCounters {
    /// Reads offered for assistance.
    assisted_reads: u64,
    /// Chunks of them this rank read itself.
    chunks_read: u64,
    /// Chunks of them the sender wrote.
    chunks_helped: u64,
    /// Chunks this rank wrote into peers' reads (a failed call's earlier chunks not counted).
    chunks_written: u64,
}

const SHORT_NAPS: u8 = 2;
const SHORT_NAP: Duration = Duration::from_micros(50);

/// Capabilities of a shared-memory link.
pub fn caps(cma: bool) -> Caps {
    Caps {
        name: "shm",
        rma_read: cma,
        max_payload: MAX_PAYLOAD,
        eager_max: env_usize("OXMPI_SHM_EAGER_MAX")
            .unwrap_or(EAGER_MAX)
            .min(MAX_PAYLOAD),
        rndv_read_min: env_usize("OXMPI_SHM_RNDV_READ_MIN").unwrap_or(RNDV_READ_MIN),
        rndv_read_max: env_usize("OXMPI_SHM_RNDV_READ_MAX").unwrap_or(RNDV_READ_MAX),
        pipeline_chunk: MAX_PAYLOAD,
        lent_min: usize::MAX,
        model: PerfModel {
            latency_us: 0.3,
            bandwidth_gbs: 20.0,
        },
    }
}

pub(crate) fn env_usize(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let (num, mul) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1024),
        (i, 'm' | 'M') => (&v[..i], 1024 * 1024),
        _ => (v, 1),
    };
    num.parse::<usize>().ok().map(|n| n.saturating_mul(mul))
}

impl Shm {
    /// Builds the fabric from this rank's segment and the mapped segments of its peers.
    /// `cores`: the CPUs this host's ranks share. With more ranks than cores, copying on a
    /// core another rank needs only moves work around, and a helper preempted with a chunk
    /// claimed keeps its reader waiting: assisting every read measured slower there for
    /// `osu_alltoall` and `osu_allreduce`, whose ranks all send and receive, and faster for
    /// `osu_bcast`, whose root only sends (docs/benchmarks.md). So there a rank asks only a
    /// sender that waits for nothing but its sends ([`Fabric::read_from_idle`]) and is pinned
    /// to another CPU than its own, and helps only while its own last poll and those of the
    /// ranks that may share its core (`core_mates`) found nothing (a rank computing outside
    /// oxmpi still shows its last poll). `OXMPI_SHM_ASSIST_MIN` set lifts these rules: every
    /// read of that size asks, every empty poll helps.
    pub fn new(rank: Rank, size: u32, own: Segment, peers: Vec<ShmPeer>, cores: usize) -> Self {
        let forced_min = env_usize("OXMPI_SHM_ASSIST_MIN");
        let shared_cores = peers.len() + 1 > cores && forced_min.is_none();
        let mut outbound: Vec<Option<Outbound>> = (0..size).map(|_| None).collect();
        let mut inbound = Vec::new();
        for p in peers {
            inbound.push((p.rank, Consumer::new(own.ring(p.rank))));
            let producer = Producer::new(p.segment.ring(rank));
            outbound[p.rank as usize] = Some(Outbound {
                producer,
                segment: p.segment,
                pid: p.pid,
                caps: caps(p.cma),
                helps: p.cma,
                asks: true,
                lent: 0,
            });
        }
        let min = forced_min.unwrap_or(ASSIST_MIN);
        let my_cpu = own.cpu();
        let core_mates = if shared_cores {
            let shares = |o: &Outbound| {
                my_cpu.is_none() || o.segment.cpu().is_none_or(|c| Some(c) == my_cpu)
            };
            (0..size)
                .filter(|&r| outbound[r as usize].as_ref().is_some_and(shares))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            rank,
            size,
            own,
            inbound,
            outbound,
            next_poll: 0,
            short_naps: 0,
            assist: AssistConfig {
                min: if min == 0 { usize::MAX } else { min },
                chunk: env_usize("OXMPI_SHM_ASSIST_CHUNK")
                    .unwrap_or(ASSIST_CHUNK)
                    .max(4096),
            },
            shared_cores,
            cpu: my_cpu,
            core_mates,
            idle: false,
            counters: ShmCounters::default(),
        }
    }

    /// A remote read of `peer`'s memory, assisted where [`Shm::new`] says; `sender_idle`: its
    /// sender waits for nothing but its sends ([`Fabric::read_from_idle`]).
    fn read_from(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
        sender_idle: bool,
    ) -> Result<(), FabricError> {
        let (me, assist, shared_cores, cpu) = (self.rank, self.assist, self.shared_cores, self.cpu);
        let counters = &mut self.counters;
        let out = self.outbound[peer as usize].as_mut().expect("shm peer");
        let pid = out.pid;
        if offset + dst.len() as u64 > remote.len {
            return Err(FabricError::Rma(format!(
                "read past the end of rank {peer}'s region"
            )));
        }
        let rma =
            |e: std::io::Error| FabricError::Rma(format!("process_vm_readv from rank {peer}: {e}"));
        // Not while the peer has a message of ours to read too (an exchange): it is copying
        // then rather than idle, and splitting the read into claims would only add calls.
        // Sharing cores, only an idle sender (it has nothing else to do) on another CPU.
        let apart = cpu.is_some() && out.segment.cpu().is_some_and(|c| Some(c) != cpu);
        if dst.len() < assist.min
            || !out.asks
            || out.lent > 0
            || (shared_cores && !(sender_idle && apart))
        {
            return cma_read(pid, remote.addr + offset, dst).map_err(rma);
        }
        let r = assist::assisted_read(
            out.segment.assist(me),
            out.segment.assist_pending(),
            remote.addr + offset,
            dst,
            assist.chunk,
            |addr, buf| cma_read(pid, addr, buf),
            || process_alive(pid),
        );
        counters.assisted_reads += 1;
        match r {
            Ok(stats) => {
                counters.chunks_read += stats.mine;
                counters.chunks_helped += stats.helped;
                Ok(())
            }
            Err(AssistError::Read(e)) => Err(rma(e)),
            Err(AssistError::HelperGone) => {
                out.asks = false;
                Err(FabricError::PeerLost {
                    peer,
                    why: "it ended in the middle of a shared copy".into(),
                })
            }
        }
    }

    /// Copies chunks of the peers' open assisted reads of this rank's memory.
    fn help_peers(&mut self) {
        for i in 0..self.inbound.len() {
            let peer = self.inbound[i].0;
            let out = self.outbound[peer as usize].as_mut().expect("shm peer");
            if !out.helps {
                continue;
            }
            let pid = out.pid;
            let slot = self.own.assist(peer);
            match assist::help(slot, |src, dst, len| cma_write(pid, src, dst, len)) {
                Ok(chunks) => self.counters.chunks_written += chunks,
                Err(e) => {
                    // The peer copies that run itself; stop helping it (it is likely gone).
                    out.helps = false;
                    if crate::wireup::debug_enabled() {
                        eprintln!("oxmpi: shm: stopped helping rank {peer}'s reads: {e}");
                    }
                }
            }
        }
    }

    /// Whether this rank's core would idle now: always when it has a core of its own, else
    /// when every core-mate's last poll found nothing (this rank's own just did).
    fn core_idle(&self) -> bool {
        !self.shared_cores
            || self.core_mates.iter().all(|&r| {
                self.outbound[r as usize]
                    .as_ref()
                    .is_some_and(|o| o.segment.idle().load(Ordering::Relaxed) != 0)
            })
    }

    fn out(&mut self, peer: Rank) -> &mut Outbound {
        self.outbound[peer as usize]
            .as_mut()
            .expect("peer routed to shm has a shm link")
    }
}

/// Reads `dst.len()` bytes at `addr` in process `pid` with `process_vm_readv`.
pub fn cma_read(pid: i32, addr: u64, dst: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: `dst` is a writable slice of this process, exclusively borrowed for the call.
    unsafe { cma(pid, dst.as_mut_ptr() as usize, addr, dst.len(), Cma::Read) }
}

/// Writes `len` bytes at `src` in this process to `dst` in process `pid` with
/// `process_vm_writev`.
pub fn cma_write(pid: i32, src: u64, dst: u64, len: usize) -> std::io::Result<()> {
    // SAFETY: the kernel only reads the local range; an unmapped one fails with EFAULT, never
    // faulting us. The callers pass a send buffer lent to a pending send (shared borrow), which
    // may be read.
    unsafe { cma(pid, src as usize, dst, len, Cma::Write) }
}

#[derive(Clone, Copy)]
enum Cma {
    /// From the other process into ours.
    Read,
    /// From ours into the other process.
    Write,
}

/// Moves `len` bytes between `local` in this process and `remote` in process `pid`, in as
/// many calls as the kernel needs.
///
/// # Safety
/// For [`Cma::Read`], `local..local + len` must be writable memory of this process that
/// nothing else accesses during the call; for [`Cma::Write`], memory that may be read.
unsafe fn cma(pid: i32, local: usize, remote: u64, len: usize, dir: Cma) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let l = libc::iovec {
            iov_base: (local + done) as *mut _,
            iov_len: len - done,
        };
        let r = libc::iovec {
            iov_base: (remote as usize + done) as *mut _,
            iov_len: len - done,
        };
        // SAFETY: the local range is as the caller vouches; the kernel validates the remote
        // range against the other process (EFAULT if it is not mapped there).
        let n = cvt(unsafe {
            match dir {
                Cma::Read => libc::process_vm_readv(pid, &l, 1, &r, 1, 0),
                Cma::Write => libc::process_vm_writev(pid, &l, 1, &r, 1, 0),
            }
        })?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "moved 0 bytes",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

impl Fabric for Shm {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn caps(&self, peer: Rank) -> &Caps {
        &self.outbound[peer as usize]
            .as_ref()
            .expect("shm peer")
            .caps
    }

    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError> {
        let out = self.out(peer);
        if payload.len() > MAX_PAYLOAD {
            return Err(FabricError::Setup(format!(
                "payload of {} bytes over the shm limit",
                payload.len()
            )));
        }
        if out.producer.push(header, payload) {
            out.segment.ring_doorbell();
            Ok(Sent::Done)
        } else {
            Ok(Sent::WouldBlock)
        }
    }

    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        self.read_from(peer, remote, offset, dst, false)
    }

    fn read_from_idle(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        self.read_from(peer, remote, offset, dst, true)
    }

    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        let n = self.inbound.len();
        let mut events = 0;
        // Start one ring further each poll so a busy peer cannot starve the others (no
        // division on this path: it runs on every spin of a waiting rank).
        let mut i = self.next_poll;
        for _ in 0..n {
            let (peer, consumer) = &mut self.inbound[i];
            let peer = *peer;
            // A bounded batch per ring per poll.
            for _ in 0..64 {
                let got = consumer
                    .pop(|header, payload| {
                        on(Event::Frame {
                            peer,
                            header,
                            payload,
                        })
                    })
                    .map_err(|c| FabricError::BadFrame { peer, why: c.0 })?;
                if !got {
                    break;
                }
                events += 1;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.next_poll = if self.next_poll + 1 >= n {
            0
        } else {
            self.next_poll + 1
        };
        if self.shared_cores && self.idle != (events == 0) {
            self.idle = events == 0;
            self.own
                .idle()
                .store(u32::from(self.idle), Ordering::Relaxed);
        }
        if events > 0 {
            self.short_naps = 0;
        } else if self.own.assist_pending().load(Ordering::Acquire) != 0 && self.core_idle() {
            // Help with peers' reads only when nothing arrived: a frame may start work of this
            // rank's own (in an exchange, its read of the peer's message), which goes first.
            self.help_peers();
        }
        Ok(events)
    }

    fn remote_key(&mut self, peer: Rank, mem: &crate::MemRef) -> Result<RemoteKey, FabricError> {
        self.out(peer).lent += 1;
        Ok(RemoteKey::of_address(mem))
    }

    fn release_key(&mut self, peer: Rank, _key: &RemoteKey) {
        let out = self.out(peer);
        out.lent = out.lent.saturating_sub(1);
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let c = &self.counters;
        vec![
            ("shm.assisted_reads".into(), c.assisted_reads),
            ("shm.assist.chunks_read".into(), c.chunks_read),
            ("shm.assist.chunks_helped".into(), c.chunks_helped),
            ("shm.assist.chunks_written".into(), c.chunks_written),
        ]
    }

    fn wait(&mut self, timeout: Duration) {
        // The first naps after activity are short: they bound the delay of a wake-up missed
        // in the race documented at `Segment::ring_doorbell`.
        let timeout = if self.short_naps < SHORT_NAPS {
            self.short_naps += 1;
            timeout.min(SHORT_NAP)
        } else {
            timeout
        };
        let inbound = &mut self.inbound;
        self.own
            .sleep(timeout, || inbound.iter_mut().any(|(_, c)| c.has_data()));
    }
}

#[cfg(test)]
mod tests {
    use super::process_alive;

    /// A helper is waited for while its process lives: not once it has exited, whether or not
    /// it has been reaped (a zombie answers signal 0 but writes nothing).
    #[test]
    fn a_process_is_alive_until_it_exits_reaped_or_not() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(process_alive(pid));
        child.kill().unwrap();
        // Not reaped yet: a zombie once the kill lands.
        let mut dead = false;
        for _ in 0..500 {
            if !process_alive(pid) {
                dead = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(dead, "a killed, unreaped child still counts as alive");
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
