//! Per-peer choice of backend: the fabric a rank actually uses.
//!
//! A [`Router`] owns the backends wired up for this rank and forwards each operation to the
//! one that reaches the peer (shared memory on the same host, TCP otherwise, or what
//! `OXMPI_FABRIC` forces). It is itself a [`Fabric`], so the engine sees one.

use crate::{Caps, Event, Fabric, FabricError, Header, MemRef, Rank, RemoteKey, Sent};
use std::time::Duration;

const NO_ROUTE: u8 = u8::MAX;

/// Backends of one rank and the route to each peer.
pub struct Router {
    rank: Rank,
    size: u32,
    backends: Vec<Box<dyn Fabric>>,
    route: Vec<u8>,
    self_caps: Caps,
    /// Node (host) of each rank, numbered by first appearance.
    nodes: Vec<u32>,
}

impl Router {
    /// A router over `backends`; `route[p]` is the index of the backend reaching peer `p`
    /// (`None` for this rank itself).
    pub fn new(
        rank: Rank,
        size: u32,
        backends: Vec<Box<dyn Fabric>>,
        route: Vec<Option<usize>>,
    ) -> Self {
        assert_eq!(route.len(), size as usize);
        let route = route
            .into_iter()
            .map(|r| r.map_or(NO_ROUTE, |i| i as u8))
            .collect();
        let self_caps = Caps {
            name: "self",
            rma_read: false,
            max_payload: usize::MAX,
            eager_max: 64 * 1024,
            rndv_read_min: usize::MAX,
            rndv_read_max: 0,
            pipeline_chunk: usize::MAX,
            lent_min: usize::MAX,
            model: crate::PerfModel {
                latency_us: 0.05,
                bandwidth_gbs: 20.0,
            },
        };
        Self {
            rank,
            size,
            backends,
            route,
            self_caps,
            nodes: vec![0; size as usize],
        }
    }

    /// Records which node each rank runs on (ranks with equal numbers share a host).
    pub fn set_nodes(&mut self, nodes: Vec<u32>) {
        assert_eq!(nodes.len(), self.size as usize);
        self.nodes = nodes;
    }

    /// Node of each rank (all 0 unless the wire-up saw several hosts).
    pub fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// A router for a world of one.
    pub fn singleton() -> Self {
        Self::new(0, 1, Vec::new(), vec![None])
    }

    /// Wraps a single backend that reaches every peer.
    pub fn single(f: Box<dyn Fabric>) -> Self {
        let (rank, size) = (f.rank(), f.size());
        let route = (0..size).map(|p| (p != rank).then_some(0)).collect();
        Self::new(rank, size, vec![f], route)
    }

    /// Name of the backend reaching `peer` (`self` for this rank).
    pub fn backend_name(&self, peer: Rank) -> &'static str {
        self.caps(peer).name
    }

    fn backend(&mut self, peer: Rank) -> &mut dyn Fabric {
        let i = self.route[peer as usize];
        assert_ne!(
            i, NO_ROUTE,
            "no fabric route to rank {peer} (self messages stay in the engine)"
        );
        self.backends[i as usize].as_mut()
    }
}

impl Fabric for Router {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn caps(&self, peer: Rank) -> &Caps {
        match self.route[peer as usize] {
            NO_ROUTE => &self.self_caps,
            i => self.backends[i as usize].caps(peer),
        }
    }

    #[inline]
    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError> {
        self.backend(peer).send(peer, header, payload)
    }

    fn send_lent(
        &mut self,
        peer: Rank,
        header: &Header,
        payload: &MemRef,
        token: u64,
    ) -> Result<Sent, FabricError> {
        self.backend(peer).send_lent(peer, header, payload, token)
    }

    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        self.backend(peer).read(peer, remote, offset, dst)
    }

    fn read_from_idle(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        self.backend(peer).read_from_idle(peer, remote, offset, dst)
    }

    fn remote_key(&mut self, peer: Rank, mem: &MemRef) -> Result<RemoteKey, FabricError> {
        self.backend(peer).remote_key(peer, mem)
    }

    fn release_key(&mut self, peer: Rank, key: &RemoteKey) {
        self.backend(peer).release_key(peer, key)
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.backends.iter().flat_map(|b| b.counters()).collect()
    }

    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        let mut n = 0;
        for b in &mut self.backends {
            n += b.poll(on)?;
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) {
        match self.backends.len() {
            0 => std::thread::sleep(timeout.min(Duration::from_millis(1))),
            1 => self.backends[0].wait(timeout),
            _ => {
                // Several wait handles: sleep briefly on each in turn.
                let slice = (timeout / self.backends.len() as u32).min(Duration::from_micros(500));
                for b in &mut self.backends {
                    b.wait(slice);
                }
            }
        }
    }
}
