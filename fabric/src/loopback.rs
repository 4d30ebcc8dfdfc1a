//! The loopback backend: ranks are threads of one process, frames travel over channels.
//!
//! It is the harness for API tests that want real concurrency without processes. It advertises
//! remote reads, served by copying from the peer's lent memory in the same address space, so
//! both rendezvous protocols run over it.

use crate::{Caps, Event, Fabric, FabricError, Header, PerfModel, Rank, RemoteKey, Sent};
use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

type Frame = (Rank, Header, Vec<u8>);

/// One thread-rank's end of a loopback world.
pub struct Loopback {
    rank: Rank,
    size: u32,
    peers: Vec<Sender<Frame>>,
    inbox: Receiver<Frame>,
    stash: VecDeque<Frame>,
    caps: Caps,
}

/// Creates the fabrics of a world of `n` thread-ranks; hand element `r` to the thread of rank `r`.
pub fn world(n: u32) -> Vec<Loopback> {
    world_with(n, 4096, 16 * 1024, 64 * 1024)
}

/// Like [`world`] with explicit eager limit, remote-read threshold and frame size.
pub fn world_with(
    n: u32,
    eager_max: usize,
    rndv_read_min: usize,
    max_payload: usize,
) -> Vec<Loopback> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| channel()).unzip();
    let caps = Caps {
        name: "loopback",
        rma_read: true,
        max_payload,
        eager_max,
        rndv_read_min,
        rndv_read_max: usize::MAX,
        pipeline_chunk: max_payload,
        lent_min: usize::MAX,
        model: PerfModel {
            latency_us: 1.0,
            bandwidth_gbs: 5.0,
        },
    };
    rxs.into_iter()
        .enumerate()
        .map(|(r, inbox)| Loopback {
            rank: r as Rank,
            size: n,
            peers: txs.clone(),
            inbox,
            stash: VecDeque::new(),
            caps,
        })
        .collect()
}

impl Fabric for Loopback {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn caps(&self, _peer: Rank) -> &Caps {
        &self.caps
    }

    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError> {
        self.peers[peer as usize]
            .send((self.rank, *header, payload.to_vec()))
            .map_err(|_| FabricError::PeerLost {
                peer,
                why: "thread-rank has finished".into(),
            })?;
        Ok(Sent::Done)
    }

    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        if offset + dst.len() as u64 > remote.len {
            return Err(FabricError::Rma(format!(
                "read past the end of rank {peer}'s region"
            )));
        }
        // SAFETY: thread-ranks share one address space; `remote` was advertised by the peer's
        // engine for memory it keeps lent (see `memory`) until we answer the read, and the
        // range is within the advertised length (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (remote.addr + offset) as *const u8,
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        let mut n = 0;
        while let Some((peer, header, payload)) = self
            .stash
            .pop_front()
            .or_else(|| self.inbox.try_recv().ok())
        {
            on(Event::Frame {
                peer,
                header: &header,
                payload: &payload,
            });
            n += 1;
            if n == 64 {
                break;
            }
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) {
        if !self.stash.is_empty() {
            return;
        }
        match self.inbox.recv_timeout(timeout) {
            Ok(f) => self.stash.push_back(f),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
}
