//! Deterministic N-rank harness: engines exchange frames through a simulated network that
//! reorders and delays them (and sometimes pushes back), driven step by step from a seeded
//! generator, so every race it finds can be replayed.

use oxmpi_fabric::{
    Caps, Event, Fabric, FabricError, Header, MemMut, MemRef, PerfModel, Rank, RemoteKey, Sent,
};
use oxmpi_p2p::{
    Completion, Engine, P2pError, ProtocolConfig, ReqId, SendMode, ANY_SOURCE, ANY_TAG,
};
use std::cell::{Cell, RefCell};

struct InFlight {
    from: Rank,
    to: Rank,
    header: Header,
    payload: Vec<u8>,
    /// A frame sent in place (`send_lent`): the address of its payload in the sender's lent
    /// memory and the send's token. The payload is read from the sender only on delivery, as
    /// a receiving process reads it, and the sender then hears `SendDone`.
    lent: Option<(u64, usize, u64)>,
}

struct Sim {
    engines: Vec<RefCell<Engine>>,
    wire: RefCell<Vec<InFlight>>,
    rng: Cell<u64>,
    caps: Caps,
    /// Percent of sends answered with back-pressure.
    block_pct: u64,
    /// Remote reads fail with their peer (as a timed-out or broken read does).
    fail_reads: Cell<bool>,
    /// Remote reads issued through `read` and through `read_from_idle`.
    reads: Cell<(u32, u32)>,
}

struct SimFabric<'a> {
    sim: &'a Sim,
    rank: Rank,
}

impl Sim {
    fn new(n: u32, seed: u64, config: ProtocolConfig) -> Self {
        let engines = (0..n)
            .map(|r| RefCell::new(Engine::new(r, n, vec![config; n as usize])))
            .collect();
        Self {
            engines,
            wire: RefCell::new(Vec::new()),
            rng: Cell::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            caps: Caps {
                name: "sim",
                rma_read: true,
                max_payload: 1 << 20,
                eager_max: config.eager_max,
                rndv_read_min: config.read_min,
                rndv_read_max: config.read_max,
                pipeline_chunk: config.chunk,
                lent_min: config.lent_min,
                model: PerfModel {
                    latency_us: 1.0,
                    bandwidth_gbs: 1.0,
                },
            },
            block_pct: 10,
            fail_reads: Cell::new(false),
            reads: Cell::new((0, 0)),
        }
    }

    fn rand(&self, n: u64) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x % n.max(1)
    }

    fn engine(&self, r: Rank) -> std::cell::RefMut<'_, Engine> {
        self.engines[r as usize].borrow_mut()
    }

    /// One step: every engine transmits, then a random in-flight frame is delivered.
    fn step(&self) {
        for r in 0..self.engines.len() as Rank {
            let mut f = SimFabric { sim: self, rank: r };
            let sent = self.engine(r).progress_tx(&mut f);
            if !self.fail_reads.get() {
                sent.unwrap();
            }
        }
        let n = self.wire.borrow().len();
        if n > 0 {
            // Prefer old frames a little, so nothing starves, but reorder freely.
            let i = if self.rand(4) == 0 {
                0
            } else {
                self.rand(n as u64) as usize
            };
            let f = self.wire.borrow_mut().swap_remove(i);
            let f = self.read_lent(f);
            self.engine(f.to)
                .handle_frame(f.from, &f.header, &f.payload);
        }
    }

    /// For a frame sent in place, reads its payload from the sender's lent memory (which must
    /// still be there, unchanged) and tells the sender the send is done.
    fn read_lent(&self, mut f: InFlight) -> InFlight {
        if let Some((addr, len, token)) = f.lent.take() {
            let mut sender = self.engine(f.from);
            let bytes = sender
                .lent_bytes(addr)
                .expect("a lent payload was released before its SendDone");
            assert_eq!(bytes.len(), len);
            f.payload = bytes.to_vec();
            sender.on_lent_send_done(f.to, token);
        }
        f
    }

    /// Removes a random in-flight frame addressed to `to`, if any.
    fn take_frame_for(&self, to: Rank) -> Option<InFlight> {
        let idx: Vec<usize> = self
            .wire
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.to == to)
            .map(|(i, _)| i)
            .collect();
        if idx.is_empty() {
            return None;
        }
        let i = idx[self.rand(idx.len() as u64) as usize];
        let f = self.wire.borrow_mut().swap_remove(i);
        Some(self.read_lent(f))
    }

    fn wait(&self, r: Rank, id: ReqId) -> Completion {
        for _ in 0..2_000_000 {
            if let Some(c) = self.engine(r).take(id) {
                return c;
            }
            self.step();
        }
        panic!("request {id:#x} on rank {r} did not complete");
    }
}

impl Fabric for SimFabric<'_> {
    fn rank(&self) -> Rank {
        self.rank
    }
    fn size(&self) -> u32 {
        self.sim.engines.len() as u32
    }
    fn caps(&self, _: Rank) -> &Caps {
        &self.sim.caps
    }
    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError> {
        if self.sim.rand(100) < self.sim.block_pct {
            return Ok(Sent::WouldBlock);
        }
        self.sim.wire.borrow_mut().push(InFlight {
            from: self.rank,
            to: peer,
            header: *header,
            payload: payload.to_vec(),
            lent: None,
        });
        Ok(Sent::Done)
    }
    fn send_lent(
        &mut self,
        peer: Rank,
        header: &Header,
        payload: &MemRef,
        token: u64,
    ) -> Result<Sent, FabricError> {
        let bytes = payload.bytes();
        if bytes.len() < self.sim.caps.lent_min {
            return self.send(peer, header, bytes);
        }
        if self.sim.rand(100) < self.sim.block_pct {
            return Ok(Sent::WouldBlock);
        }
        self.sim.wire.borrow_mut().push(InFlight {
            from: self.rank,
            to: peer,
            header: *header,
            payload: Vec::new(),
            lent: Some((bytes.as_ptr() as u64, bytes.len(), token)),
        });
        Ok(Sent::Lent)
    }
    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        let (n, oneway) = self.sim.reads.get();
        self.sim.reads.set((n + 1, oneway));
        self.remote_read(peer, remote, offset, dst)
    }
    fn read_from_idle(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        let (n, oneway) = self.sim.reads.get();
        self.sim.reads.set((n, oneway + 1));
        self.remote_read(peer, remote, offset, dst)
    }
    fn poll(&mut self, _: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        Ok(0)
    }
    fn wait(&mut self, _: std::time::Duration) {}
}

impl SimFabric<'_> {
    fn remote_read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        if self.sim.fail_reads.get() {
            return Err(FabricError::PeerLost {
                peer,
                why: "remote read timed out".into(),
            });
        }
        let owner = self.sim.engines[peer as usize].borrow();
        let src = owner
            .lent_bytes(remote.addr)
            .ok_or_else(|| FabricError::Rma("no such region".into()))?;
        let off = offset as usize;
        dst.copy_from_slice(&src[off..off + dst.len()]);
        Ok(())
    }
}

fn config() -> ProtocolConfig {
    ProtocolConfig {
        eager_max: 64,
        read_min: 4096,
        read_max: 8000,
        chunk: 100,
        lent_min: usize::MAX,
        exchange_eager_max: 100,
        oneway_eager_max: 100,
    }
}

/// [`config`] with more eager sizes, of which those from 64 bytes are sent in place.
fn lent_config() -> ProtocolConfig {
    ProtocolConfig {
        eager_max: 300,
        lent_min: 64,
        ..config()
    }
}

/// Message body encoding (sender, per-(sender, tag) sequence) so content and order can be checked.
fn body(src: u32, tag: i32, k: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (src as usize * 31 + tag as usize * 7 + k as usize * 13 + i) as u8)
        .collect()
}

fn sizes(k: u32) -> usize {
    [0usize, 1, 8, 64, 65, 300, 4095, 4096, 8000, 10_000][(k % 10) as usize]
}

#[test]
fn order_and_content_survive_reordering_for_every_protocol() {
    // Copied frames, then eager frames sent in place.
    for cfg in [config(), lent_config()] {
        for seed in 1..=5 {
            let n = 4;
            let sim = Sim::new(n, seed, cfg);
            let per_tag = 12;
            let mut sends = Vec::new();
            for src in 1..n {
                for k in 0..per_tag {
                    for tag in 0..3 {
                        let data = body(src, tag, k, sizes(k + tag as u32));
                        let id = sim.engine(src).isend(
                            0,
                            0,
                            tag,
                            MemRef::owned(data),
                            SendMode::Standard,
                        );
                        sends.push((src, id));
                    }
                }
            }
            // Receive by explicit (source, tag) in an order different from the send order.
            for tag in (0..3).rev() {
                for src in 1..n {
                    for k in 0..per_tag {
                        let id = sim.engine(0).irecv(0, src as i32, tag, None);
                        let c = sim.wait(0, id);
                        c.result.unwrap();
                        assert_eq!(
                            c.data.unwrap(),
                            body(src, tag, k, sizes(k + tag as u32)),
                            "seed {seed}"
                        );
                        assert_eq!((c.status.source, c.status.tag), (src, tag));
                    }
                }
            }
            for (src, id) in sends {
                sim.wait(src, id).result.unwrap();
            }
        }
    }
}

#[test]
fn wildcards_keep_per_sender_order() {
    // Copied frames, then eager frames sent in place.
    for cfg in [config(), lent_config()] {
        let n = 3;
        let sim = Sim::new(n, 42, cfg);
        for src in 1..n {
            for k in 0..40u32 {
                let tag = (k % 4) as i32;
                let id = sim.engine(src).isend(
                    7,
                    0,
                    tag,
                    MemRef::owned(body(src, 0, k, sizes(k))),
                    SendMode::Standard,
                );
                sim.engine(src).detach(id);
            }
        }
        let mut next = vec![0u32; n as usize];
        for _ in 0..80 {
            let id = sim.engine(0).irecv(7, ANY_SOURCE, ANY_TAG, None);
            let c = sim.wait(0, id);
            let src = c.status.source;
            let k = next[src as usize];
            assert_eq!(c.status.tag, (k % 4) as i32);
            assert_eq!(c.data.unwrap(), body(src, 0, k, sizes(k)));
            next[src as usize] += 1;
        }
        assert_eq!(next, vec![0, 40, 40]);
        // Contexts are separate: nothing leaks to another communicator.
        assert!(sim.engine(0).iprobe(8, ANY_SOURCE, ANY_TAG).is_none());
    }
}

#[test]
fn rendezvous_races_posted_before_and_after_arrival() {
    for seed in 1..=20 {
        let sim = Sim::new(2, seed, config());
        for (k, len) in [100usize, 5000, 70].into_iter().enumerate() {
            let k = k as u32;
            let post_first = seed % 2 == 0;
            let mut rid = None;
            if post_first {
                rid = Some(sim.engine(1).irecv(0, 0, 3, None));
            }
            let mode = if k == 2 {
                SendMode::Synchronous
            } else {
                SendMode::Standard
            };
            let sid = sim
                .engine(0)
                .isend(0, 1, 3, MemRef::owned(body(0, 3, k, len)), mode);
            for _ in 0..sim.rand(50) {
                sim.step();
            }
            let rid = rid.unwrap_or_else(|| sim.engine(1).irecv(0, 0, 3, None));
            assert_eq!(sim.wait(1, rid).data.unwrap(), body(0, 3, k, len));
            sim.wait(0, sid).result.unwrap();
        }
    }
}

#[test]
fn synchronous_send_waits_for_the_match() {
    let sim = Sim::new(2, 9, config());
    let sid = sim
        .engine(0)
        .isend(0, 1, 1, MemRef::owned(vec![1, 2, 3]), SendMode::Synchronous);
    for _ in 0..500 {
        sim.step();
    }
    assert!(
        !sim.engine(0).is_done(sid),
        "ssend completed before any receive was posted"
    );
    let rid = sim.engine(1).irecv(0, 0, 1, None);
    sim.wait(1, rid).result.unwrap();
    sim.wait(0, sid).result.unwrap();
}

#[test]
fn truncation_errors_only_that_receive() {
    for (seed, len) in [(1u64, 50usize), (2, 1000), (3, 9000)] {
        let sim = Sim::new(2, seed, config());
        let a = sim.engine(0).isend(
            0,
            1,
            0,
            MemRef::owned(body(0, 0, 0, len)),
            SendMode::Standard,
        );
        let b = sim.engine(0).isend(
            0,
            1,
            0,
            MemRef::owned(body(0, 0, 1, 20)),
            SendMode::Standard,
        );
        let small = sim.engine(1).irecv(0, 0, 0, Some(MemMut::alloc(10)));
        let c = sim.wait(1, small);
        match c.result {
            Err(P2pError::Truncated {
                len: l,
                capacity: 10,
                ..
            }) => assert_eq!(l, len as u64),
            other => panic!("expected truncation, got {other:?}"),
        }
        let next = sim.engine(1).irecv(0, 0, 0, None);
        assert_eq!(sim.wait(1, next).data.unwrap(), body(0, 0, 1, 20));
        sim.wait(0, a).result.unwrap();
        sim.wait(0, b).result.unwrap();
    }
}

#[test]
fn self_messages_small_large_and_synchronous() {
    let sim = Sim::new(1, 1, config());
    for len in [0usize, 10, 10_000] {
        let s = sim.engine(0).isend(
            0,
            0,
            5,
            MemRef::owned(body(0, 5, 0, len)),
            SendMode::Standard,
        );
        let r = sim.engine(0).irecv(0, 0, 5, None);
        assert_eq!(sim.wait(0, r).data.unwrap(), body(0, 5, 0, len));
        sim.wait(0, s).result.unwrap();
    }
    let s = sim
        .engine(0)
        .isend(0, 0, 6, MemRef::owned(vec![9; 3]), SendMode::Synchronous);
    assert!(!sim.engine(0).is_done(s));
    let r = sim
        .engine(0)
        .irecv(0, ANY_SOURCE, ANY_TAG, Some(MemMut::alloc(3)));
    assert_eq!(sim.wait(0, r).status.tag, 6);
    sim.wait(0, s).result.unwrap();
}

#[test]
fn lost_peer_fails_its_requests_and_no_others() {
    let sim = Sim::new(3, 4, config());
    let from1 = sim.engine(0).irecv(0, 1, 0, None);
    let from2 = sim.engine(0).irecv(0, 2, 0, None);
    let to1 = sim
        .engine(0)
        .isend(0, 1, 0, MemRef::owned(vec![0; 5000]), SendMode::Standard);
    sim.engine(0).fail_peer(1, "test");
    assert!(matches!(
        sim.wait(0, from1).result,
        Err(P2pError::PeerLost { rank: 1, .. })
    ));
    assert!(matches!(
        sim.wait(0, to1).result,
        Err(P2pError::PeerLost { rank: 1, .. })
    ));
    let s = sim
        .engine(2)
        .isend(0, 0, 0, MemRef::owned(vec![4; 4]), SendMode::Standard);
    assert_eq!(sim.wait(0, from2).data.unwrap(), vec![4; 4]);
    sim.wait(2, s).result.unwrap();
    let later = sim
        .engine(0)
        .isend(0, 1, 0, MemRef::owned(vec![1]), SendMode::Standard);
    assert!(sim.wait(0, later).result.is_err());
}

/// Rendezvous messages announced before their sender was lost fail their receive, whether
/// taken by a receive or by a matched probe (before or after the loss); an eager message that
/// arrived before the loss is still received.
#[test]
fn announced_rendezvous_of_a_lost_peer_fail_and_arrived_eager_data_stays() {
    let sim = Sim::new(2, 6, config());
    let mut sends = Vec::new();
    for (tag, len) in [(1, 5000), (2, 5000), (3, 5000), (4, 40)] {
        sends.push(
            sim.engine(1)
                .isend(0, 0, tag, MemRef::owned(vec![7; len]), SendMode::Standard),
        );
    }
    for _ in 0..1000 {
        if sim.engine(0).iprobe(0, 1, 4).is_some() {
            break;
        }
        sim.step();
    }
    let (held, st) = sim.engine(0).improbe(0, 1, 1).expect("announced");
    assert_eq!(st.bytes, 5000);
    sim.engine(0).fail_peer(1, "test");
    let lost =
        |c: oxmpi_p2p::Completion| matches!(c.result, Err(P2pError::PeerLost { rank: 1, .. }));
    let r = sim.engine(0).imrecv(held, None).expect("held");
    assert!(lost(sim.wait(0, r)), "probed before the loss");
    let (later, _) = sim.engine(0).improbe(0, 1, 2).expect("announced");
    let r = sim.engine(0).imrecv(later, None).expect("held");
    assert!(lost(sim.wait(0, r)), "probed after the loss");
    let r = sim.engine(0).irecv(0, 1, 3, None);
    assert!(lost(sim.wait(0, r)), "received after the loss");
    let r = sim.engine(0).irecv(0, 1, 4, None);
    assert_eq!(sim.wait(0, r).data.unwrap(), vec![7; 40]);
}

#[test]
fn probe_sees_unexpected_without_consuming() {
    let sim = Sim::new(2, 3, config());
    let s = sim
        .engine(1)
        .isend(0, 0, 9, MemRef::owned(vec![7; 300]), SendMode::Standard);
    let mut st = None;
    for _ in 0..10_000 {
        st = sim.engine(0).iprobe(0, ANY_SOURCE, 9);
        if st.is_some() {
            break;
        }
        sim.step();
    }
    let st = st.expect("probe found the message");
    assert_eq!((st.source, st.tag, st.bytes), (1, 9, 300));
    let r = sim.engine(0).irecv(
        0,
        st.source as i32,
        st.tag,
        Some(MemMut::alloc(st.bytes as usize)),
    );
    sim.wait(0, r).result.unwrap();
    sim.wait(1, s).result.unwrap();
}

#[test]
fn a_cancelled_receive_leaves_its_message_to_the_next_and_a_matched_one_completes() {
    for (seed, len) in [(11, 40), (12, 5000), (13, 300_000)] {
        let sim = Sim::new(2, seed, config());
        let cancelled = sim
            .engine(0)
            .irecv(0, ANY_SOURCE, 9, Some(MemMut::alloc(len)));
        assert!(sim.engine(0).cancel_recv(cancelled));
        assert!(
            !sim.engine(0).is_done(cancelled),
            "a cancelled receive is gone"
        );
        assert!(!sim.engine(0).cancel_recv(cancelled), "cancelled twice");
        let data = body(1, 9, 0, len);
        let s = sim
            .engine(1)
            .isend(0, 0, 9, MemRef::owned(data.clone()), SendMode::Standard);
        let r = sim.engine(0).irecv(0, 1, 9, None);
        let c = sim.wait(0, r);
        c.result.unwrap();
        assert_eq!(c.data.unwrap(), data, "{len} bytes");
        sim.wait(1, s).result.unwrap();

        // Matched (here by a message already waiting) before the cancel: it completes.
        let s = sim
            .engine(1)
            .isend(0, 0, 10, MemRef::owned(data.clone()), SendMode::Standard);
        while sim.engine(0).iprobe(0, 1, 10).is_none() {
            sim.step();
        }
        let r = sim.engine(0).irecv(0, 1, 10, None);
        assert!(!sim.engine(0).cancel_recv(r));
        assert_eq!(sim.wait(0, r).data.unwrap(), data);
        sim.wait(1, s).result.unwrap();
        assert!(!sim.engine(1).cancel_recv(s), "sends are not cancelled");
    }
}

#[test]
fn capped_receives_return_their_buffer_and_truncate_longer_messages() {
    for (seed, len) in [(21, 40), (22, 5000), (23, 300_000)] {
        let sim = Sim::new(2, seed, config());
        let data = body(1, 5, 0, len);
        let s = sim
            .engine(1)
            .isend(0, 0, 5, MemRef::owned(data.clone()), SendMode::Standard);
        let r = sim.engine(0).irecv_capped(0, 1, 5, len + 8);
        let c = sim.wait(0, r);
        c.result.unwrap();
        assert_eq!(c.status.bytes as usize, len);
        let got = c.data.unwrap();
        assert_eq!((got.len(), &got[..len]), (len + 8, &data[..]));
        sim.wait(1, s).result.unwrap();

        // A message longer than the cap: truncation, and no buffer beyond the cap.
        let s = sim
            .engine(1)
            .isend(0, 0, 6, MemRef::owned(data.clone()), SendMode::Standard);
        let r = sim.engine(0).irecv_capped(0, 1, 6, len / 2);
        let c = sim.wait(0, r);
        assert!(
            matches!(c.result, Err(P2pError::Truncated { len: l, capacity: cap, .. })
                if l == len as u64 && cap == (len / 2) as u64),
            "{len} bytes: {:?}",
            c.result
        );
        assert!(c.data.is_none_or(|d| d.len() == len / 2));
        let _ = sim.wait(1, s);
    }
}

/// A capped receive's buffer handed back with `recycle_buffer` serves the next capped receive:
/// a collective round's receives allocate nothing once warm.
#[test]
fn capped_receive_buffers_are_reused_once_handed_back() {
    let sim = Sim::new(2, 9, config());
    let mut last = None;
    for k in 0..4u32 {
        let r = sim.engine(0).irecv_capped(0, 1, 5, 40);
        let s = sim.engine(1).isend(
            0,
            0,
            5,
            MemRef::owned(body(1, 5, k, 40)),
            SendMode::Standard,
        );
        let got = sim.wait(0, r).data.unwrap();
        assert_eq!(got, body(1, 5, k, 40));
        if let Some(p) = last {
            assert_eq!(got.as_ptr(), p, "receive {k} got a fresh buffer");
        }
        last = Some(got.as_ptr());
        sim.engine(0).recycle_buffer(got);
        sim.wait(1, s).result.unwrap();
    }
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let sim = Sim::new(2, 5, config());
    let mut bogus = [0u8; 48];
    bogus[0] = 99;
    sim.engine(0).handle_frame(1, &bogus, &[]);
    bogus[0] = 4; // DATA for a receive that does not exist
    bogus[8] = 1;
    sim.engine(0).handle_frame(1, &bogus, &[1, 2, 3]);
    assert_eq!(sim.engine(0).protocol_errors(), 2);
    let s = sim
        .engine(1)
        .isend(0, 0, 0, MemRef::owned(vec![1]), SendMode::Standard);
    let r = sim.engine(0).irecv(0, 1, 0, None);
    assert_eq!(sim.wait(0, r).data.unwrap(), vec![1]);
    sim.wait(1, s).result.unwrap();
}

#[test]
fn immediate_sends_keep_order_with_queued_ones() {
    // Copied frames, then eager frames sent in place.
    for cfg in [config(), lent_config()] {
        for seed in 1..=10 {
            let sim = Sim::new(2, seed, cfg);
            let mut queued = Vec::new();
            for k in 0..60u32 {
                let data = body(0, 1, k, sizes(k));
                let sent_now = k % 3 != 0 && {
                    let mut f = SimFabric { sim: &sim, rank: 0 };
                    sim.engine(0).try_send_now(&mut f, 0, 1, 1, &data).unwrap()
                };
                if !sent_now {
                    queued.push(sim.engine(0).isend(
                        0,
                        1,
                        1,
                        MemRef::owned(data),
                        SendMode::Standard,
                    ));
                }
            }
            for k in 0..60u32 {
                let r = sim.engine(1).irecv(0, 0, 1, None);
                assert_eq!(
                    sim.wait(1, r).data.unwrap(),
                    body(0, 1, k, sizes(k)),
                    "seed {seed} message {k}"
                );
            }
            for id in queued {
                sim.wait(0, id).result.unwrap();
            }
        }
    }
}

/// A direct receive takes the next matching eager frame; anything else goes the usual way, and
/// order is kept with the messages around it.
#[test]
fn direct_receives_take_only_their_in_order_message() {
    // Copied frames, then eager frames sent in place.
    for cfg in [config(), lent_config()] {
        for seed in 1..=10 {
            let sim = Sim::new(3, seed, cfg);
            for k in 0..30u32 {
                for src in 1..3 {
                    let id = sim.engine(src).isend(
                        0,
                        0,
                        (k % 2) as i32,
                        MemRef::owned(body(src, 0, k, sizes(k))),
                        SendMode::Standard,
                    );
                    sim.engine(src).detach(id);
                }
            }
            let mut next = [0u32; 3];
            let mut direct = 0;
            for _ in 0..60 {
                // Wildcard receives; take directly when allowed, else through a request.
                let want = (0, oxmpi_p2p::ANY_SOURCE, oxmpi_p2p::ANY_TAG);
                let mut buf = vec![0u8; 20_000];
                let got = if sim.engine(0).can_recv_direct(0, want.1, want.2) {
                    let mut out = None;
                    for _ in 0..200_000 {
                        for r in 1..3 {
                            let mut f = SimFabric { sim: &sim, rank: r };
                            sim.engine(r).progress_tx(&mut f).unwrap();
                        }
                        let Some(f) = sim.take_frame_for(0) else {
                            continue;
                        };
                        out = sim
                            .engine(0)
                            .handle_frame_direct(f.from, &f.header, &f.payload, want, &mut buf);
                        if out.is_some() || !sim.engine(0).can_recv_direct(0, want.1, want.2) {
                            break;
                        }
                    }
                    match out {
                        Some(r) => {
                            direct += 1;
                            let st = r.unwrap();
                            Some((st.source, buf[..st.bytes as usize].to_vec()))
                        }
                        None => None,
                    }
                } else {
                    None
                };
                let (src, data) = got.unwrap_or_else(|| {
                    let id = sim.engine(0).irecv(0, want.1, want.2, None);
                    let c = sim.wait(0, id);
                    (c.status.source, c.data.unwrap())
                });
                let k = next[src as usize];
                assert_eq!(
                    data,
                    body(src, 0, k, sizes(k)),
                    "seed {seed}: message {k} from {src}"
                );
                next[src as usize] += 1;
            }
            assert_eq!(next, [0, 30, 30]);
            assert!(direct > 0, "seed {seed}: the direct path was never taken");
        }
    }
}

/// A send in place to a peer that is then lost fails with it; the fabric's late `SendDone`
/// for it is ignored and completes nothing else.
#[test]
fn lent_send_to_a_lost_peer_fails_and_a_late_done_is_ignored() {
    let sim = Sim::new(3, 6, lent_config());
    let to1 = sim
        .engine(0)
        .isend(0, 1, 0, MemRef::owned(vec![7; 200]), SendMode::Standard);
    let to2 = sim
        .engine(0)
        .isend(0, 2, 0, MemRef::owned(vec![8; 200]), SendMode::Standard);
    // Hand both to the fabric (back-pressure may take a few tries), delivering nothing.
    for _ in 0..100 {
        let mut f = SimFabric { sim: &sim, rank: 0 };
        sim.engine(0).progress_tx(&mut f).unwrap();
    }
    assert_eq!(sim.wire.borrow().len(), 2, "both sends are on the wire");
    assert!(sim.wire.borrow().iter().all(|f| f.lent.is_some()));
    assert!(
        sim.engine(0).take(to1).is_none(),
        "a lent send waits for SendDone"
    );
    sim.engine(0).fail_peer(1, "test");
    // Rank 1's frame is lost with it.
    sim.wire.borrow_mut().retain(|f| f.to != 1);
    assert!(matches!(
        sim.wait(0, to1).result,
        Err(P2pError::PeerLost { rank: 1, .. })
    ));
    sim.engine(0).on_lent_send_done(1, to1);
    let r = sim.engine(2).irecv(0, 0, 0, None);
    assert_eq!(sim.wait(2, r).data.unwrap(), vec![8; 200]);
    sim.wait(0, to2).result.unwrap();
}

/// A remote read that fails with its peer (timed out, connection lost) fails that receive and
/// the peer's other requests instead of leaving them waiting; other peers go on.
#[test]
fn a_failed_remote_read_fails_its_receive_instead_of_hanging() {
    let sim = Sim::new(3, 8, config());
    sim.fail_reads.set(true);
    // 5000 bytes: the read protocol (read_min 4096, read_max 8000).
    let _big = sim
        .engine(1)
        .isend(0, 0, 0, MemRef::owned(vec![3; 5000]), SendMode::Standard);
    let r = sim.engine(0).irecv(0, 1, 0, None);
    assert!(matches!(
        sim.wait(0, r).result,
        Err(P2pError::PeerLost { rank: 1, .. })
    ));
    let s = sim
        .engine(2)
        .isend(0, 0, 0, MemRef::owned(vec![4; 4]), SendMode::Standard);
    let r2 = sim.engine(0).irecv(0, 2, 0, None);
    assert_eq!(sim.wait(0, r2).data.unwrap(), vec![4; 4]);
    sim.wait(2, s).result.unwrap();
}

/// A collective's send from a round that receives nothing says so in its RTS, and only its
/// receiver reads it through `read_from_idle` (where shared memory may ask the sender for
/// help); one-way, exchange and point-to-point sends are read plainly. Posted before and
/// after the arrival.
#[test]
fn sends_from_idle_senders_are_read_as_such() {
    for post_first in [false, true] {
        let sim = Sim::new(2, 5, config());
        // 5000 bytes: the read protocol (read_min 4096, read_max 8000).
        for (k, kind) in ["idle", "oneway", "exchange", "p2p"]
            .into_iter()
            .enumerate()
        {
            let data = MemRef::owned(body(0, 7, k as u32, 5000));
            let mut rid = post_first.then(|| sim.engine(1).irecv(0, 0, 7, None));
            let sid = match kind {
                "idle" => sim.engine(0).isend_from_idle(0, 1, 7, data),
                "oneway" => sim.engine(0).isend_oneway(0, 1, 7, data),
                "exchange" => sim.engine(0).isend_exchange(0, 1, 7, data),
                _ => sim.engine(0).isend(0, 1, 7, data, SendMode::Standard),
            };
            for _ in 0..5 {
                sim.step();
            }
            let rid = rid.get_or_insert_with(|| sim.engine(1).irecv(0, 0, 7, None));
            assert_eq!(
                sim.wait(1, *rid).data.unwrap(),
                body(0, 7, k as u32, 5000),
                "{kind}"
            );
            sim.wait(0, sid).result.unwrap();
        }
        assert_eq!(
            sim.reads.get(),
            (3, 1),
            "plain reads and reads from idle senders"
        );
    }
}
