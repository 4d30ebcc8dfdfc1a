//! The shared-memory backend: ranks on one host exchange frames through per-peer rings in
//! shared mappings ([`segment`], [`ring`]) and read each other's lent memory with
//! `process_vm_readv` (cross-memory attach) where the kernel's ptrace rules permit it.
//!
//! Eager messages cost two copies (into the ring, out of it into the user's buffer) and no
//! syscall unless the receiver sleeps. Large messages use either a pipelined copy through the
//! ring (rendezvous pipeline) or a single-copy remote read; which one is chosen by size from
//! [`Caps::rndv_read_min`], set from measurements on the target machine (docs/benchmarks.md).

pub mod ring;
pub mod segment;

use crate::sys::cvt;
use crate::{Caps, Event, Fabric, FabricError, Header, PerfModel, Rank, RemoteKey, Sent};
use ring::{Consumer, Producer, MAX_PAYLOAD};
use segment::Segment;
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
    pub fn new(rank: Rank, size: u32, own: Segment, peers: Vec<ShmPeer>) -> Self {
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
            });
        }
        Self {
            rank,
            size,
            own,
            inbound,
            outbound,
            next_poll: 0,
            short_naps: 0,
        }
    }

    fn out(&mut self, peer: Rank) -> &mut Outbound {
        self.outbound[peer as usize]
            .as_mut()
            .expect("peer routed to shm has a shm link")
    }
}

/// Reads `dst.len()` bytes at `addr` in process `pid` with `process_vm_readv`.
pub fn cma_read(pid: i32, addr: u64, dst: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < dst.len() {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: dst.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut _,
            iov_len: dst.len() - done,
        };
        // SAFETY: `local` describes the writable slice `dst[done..]`; the kernel validates the
        // remote range against the other process and fails with EFAULT if it is not mapped.
        let n = cvt(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) })?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read 0 bytes",
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
        let pid = self.out(peer).pid;
        if offset + dst.len() as u64 > remote.len {
            return Err(FabricError::Rma(format!(
                "read past the end of rank {peer}'s region"
            )));
        }
        cma_read(pid, remote.addr + offset, dst)
            .map_err(|e| FabricError::Rma(format!("process_vm_readv from rank {peer}: {e}")))
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
        if events > 0 {
            self.short_naps = 0;
        }
        Ok(events)
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
