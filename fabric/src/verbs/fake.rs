//! An in-process model of an RDMA NIC, for testing the verbs backend on machines without one.
//!
//! A [`FakeNet`] joins the [`FakeDevice`]s of thread-ranks in one process. It keeps the rules a
//! real NIC enforces, so a mistake in the logic above it fails here as it would on hardware:
//!
//! - queue pairs move RESET → INIT → RTR → RTS only in that order; posting to a queue pair that
//!   is not in RTS is refused, and one in the error state flushes what is posted to it;
//! - every non-inline scatter-gather entry and every RDMA read must fall inside a registration
//!   with the right key and access rights (else a protection or remote-access error);
//! - a send to a peer whose shared receive queue is empty fails with "RNR retry counter
//!   exceeded". Real queue pairs configured with `rnr_retry = 7` would retry forever instead;
//!   failing makes any flaw in the credit flow visible;
//! - a send to a queue pair that is not connected, or to a device that was [killed](FakeNet::kill),
//!   fails with "transport retry counter exceeded", and the sending queue pair enters the
//!   error state;
//! - a device that is dropped stops answering, like a NIC whose process ended: its receive
//!   buffers are forgotten before the backend frees them.
//!
//! Data moves when a work request is posted (the fake has no wire), in order per queue pair.

use super::device::{
    Completion, Keys, Limits, PortAttr, QpId, QpState, Sge, Transition, VerbsDevice, VerbsError,
    WcOpcode, WC_LOC_LEN_ERR, WC_LOC_PROT_ERR, WC_REM_ACCESS_ERR, WC_RETRY_EXC_ERR,
    WC_RNR_RETRY_EXC_ERR, WC_SUCCESS, WC_WR_FLUSH_ERR,
};
use super::{Verbs, VerbsConfig};
use crate::regcache::Access;
use crate::{FabricError, Rank};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Limits a fake device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeLimits {
    /// Inline limit (0: no inline sends).
    pub max_inline: u32,
    /// Send-queue depth.
    pub max_send_wr: u32,
    /// Shared-receive-queue depth.
    pub max_srq_wr: u32,
}

impl Default for FakeLimits {
    fn default() -> Self {
        Self {
            max_inline: 256,
            max_send_wr: 128,
            max_srq_wr: 16384,
        }
    }
}

/// What a fake device counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Successful `reg_mr` calls.
    pub registrations: u64,
    /// `dereg_mr` calls.
    pub deregistrations: u64,
    /// Sends posted inline.
    pub inline_sends: u64,
    /// Sends posted from registered memory.
    pub buffered_sends: u64,
    /// RDMA reads posted.
    pub reads: u64,
    /// Receives posted to the shared receive queue.
    pub recvs_posted: u64,
    /// Sends that found the peer's shared receive queue empty.
    pub rnr: u64,
    /// Most receives ever waiting in the shared receive queue.
    pub srq_high_water: usize,
}

struct MrRec {
    addr: usize,
    len: usize,
    access: Access,
}

struct QpRec {
    qpn: u32,
    state: QpState,
    remote_qpn: u32,
}

struct DevState {
    alive: bool,
    limits: FakeLimits,
    mrs: HashMap<u32, MrRec>,
    qps: Vec<QpRec>,
    srq: VecDeque<(u64, Sge)>,
    cq: VecDeque<Completion>,
    stats: FakeStats,
}

struct Net {
    devs: Vec<DevState>,
    /// QP number → (device, queue pair index).
    qpns: HashMap<u32, (usize, QpId)>,
    next_qpn: u32,
    next_key: u32,
}

/// Fake devices joined in one process.
#[derive(Clone)]
pub struct FakeNet(Arc<Mutex<Net>>);

impl Default for FakeNet {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNet {
    /// An empty network.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Net {
            devs: Vec::new(),
            qpns: HashMap::new(),
            next_qpn: 0x100,
            next_key: 0x1000,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        // A panicking test thread must not hide the others' results behind poisoning.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new device on this network.
    pub fn device(&self, limits: FakeLimits) -> FakeDevice {
        let mut net = self.lock();
        net.devs.push(DevState {
            alive: true,
            limits,
            mrs: HashMap::new(),
            qps: Vec::new(),
            srq: VecDeque::new(),
            cq: VecDeque::new(),
            stats: FakeStats::default(),
        });
        let dev = net.devs.len() - 1;
        FakeDevice {
            net: self.clone(),
            dev,
            name: format!("fake{dev}"),
        }
    }

    /// Makes device `dev` stop answering, as if its process died.
    pub fn kill(&self, dev: usize) {
        self.lock().devs[dev].alive = false;
    }

    /// Device `dev`'s counters.
    pub fn stats(&self, dev: usize) -> FakeStats {
        self.lock().devs[dev].stats
    }
}

/// One device of a [`FakeNet`].
pub struct FakeDevice {
    net: FakeNet,
    dev: usize,
    name: String,
}

/// A fake registration.
#[derive(Debug)]
pub struct FakeMr {
    key: u32,
}

impl Drop for FakeDevice {
    /// A closed device stops answering, like a NIC whose process ended: peers' later sends
    /// fail with "transport retry counter exceeded" instead of landing in memory that is
    /// about to be freed (its receive buffers and registrations are forgotten here, under the
    /// network's lock, before the backend frees them).
    fn drop(&mut self) {
        let mut net = self.net.lock();
        let d = &mut net.devs[self.dev];
        d.alive = false;
        d.srq.clear();
        d.mrs.clear();
        d.cq.clear();
        for q in &mut d.qps {
            q.state = QpState::Error;
        }
    }
}

impl FakeDevice {
    /// Index of this device in its network.
    pub fn index(&self) -> usize {
        self.dev
    }
}

fn covered(mr: &MrRec, addr: u64, len: u32, need: Access) -> bool {
    let (a, l) = (addr as usize, len as usize);
    mr.access.contains(need) && a >= mr.addr && a.saturating_add(l) <= mr.addr + mr.len
}

fn wc(wr_id: u64, status: u32, opcode: WcOpcode, byte_len: u32, qp_num: u32) -> Completion {
    Completion {
        wr_id,
        status,
        opcode,
        byte_len,
        qp_num,
    }
}

impl Net {
    fn qp(&mut self, dev: usize, qp: QpId) -> Result<&mut QpRec, VerbsError> {
        self.devs[dev]
            .qps
            .get_mut(qp)
            .ok_or_else(|| VerbsError::errno("ibv_post_send", libc::EINVAL))
    }

    /// Whether `qp` may send: its QP number if it is in RTS; `None` (a flush completion queued)
    /// if it is in the error state; an error in any other state, as `ibv_post_send` refuses.
    fn ready_to_send(
        &mut self,
        dev: usize,
        qp: QpId,
        wr_id: u64,
        op: WcOpcode,
    ) -> Result<Option<u32>, VerbsError> {
        let q = self.qp(dev, qp)?;
        let qpn = q.qpn;
        match q.state {
            QpState::Rts => Ok(Some(qpn)),
            QpState::Error => {
                self.devs[dev]
                    .cq
                    .push_back(wc(wr_id, WC_WR_FLUSH_ERR, op, 0, qpn));
                Ok(None)
            }
            s => Err(VerbsError::new(
                "ibv_post_send",
                format!("queue pair is {s:?}, not RTS"),
            )),
        }
    }

    /// Fails a work request: its completion carries `status`, and the queue pair enters the
    /// error state.
    fn fail(&mut self, dev: usize, qp: QpId, wr_id: u64, status: u32, op: WcOpcode) {
        let q = &mut self.devs[dev].qps[qp];
        q.state = QpState::Error;
        let qpn = q.qpn;
        self.devs[dev].cq.push_back(wc(wr_id, status, op, 0, qpn));
    }

    /// Where the peer of `qp` is, if it answers: (device, queue pair index).
    fn peer(&self, dev: usize, qp: QpId) -> Option<(usize, QpId)> {
        let remote = self.devs[dev].qps[qp].remote_qpn;
        let &(rd, rq) = self.qpns.get(&remote)?;
        let r = &self.devs[rd];
        let ok = r.alive
            && matches!(r.qps[rq].state, QpState::Rtr | QpState::Rts)
            && r.qps[rq].remote_qpn == self.devs[dev].qps[qp].qpn;
        ok.then_some((rd, rq))
    }
}

/// Copies `len` bytes between two addresses of this process.
///
/// # Safety
///
/// `src..src+len` must be readable and `dst..dst+len` writable, and they must not overlap.
unsafe fn copy(src: u64, dst: u64, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
}

impl VerbsDevice for FakeDevice {
    type Mr = FakeMr;

    fn name(&self) -> &str {
        &self.name
    }

    fn port(&self) -> PortAttr {
        PortAttr {
            lid: self.dev as u16 + 1,
            gid: [0; 16],
            mtu: 4096,
            max_msg: 1 << 30,
            ethernet: false,
        }
    }

    fn limits(&self) -> Limits {
        let l = self.net.lock().devs[self.dev].limits;
        Limits {
            max_inline: l.max_inline,
            max_send_wr: l.max_send_wr,
            max_srq_wr: l.max_srq_wr,
        }
    }

    fn reg_mr(&mut self, addr: usize, len: usize, access: Access) -> Result<FakeMr, VerbsError> {
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(VerbsError::errno("ibv_reg_mr", libc::EINVAL));
        }
        // A NIC pins the pages when it registers them: fault them in, so that (as on a real
        // device) no page of a registration is missing afterwards.
        let page = crate::memwatch::page_size();
        let mut at = addr & !(page - 1);
        while at < addr + len {
            let p = at.max(addr) as *const u8;
            // SAFETY: the caller keeps [addr, addr + len) mapped (the `reg_mr` contract) and
            // `p` lies in it; a volatile read of one byte does not race with anything the
            // backend does (it hands memory to the NIC only after registering it).
            unsafe { std::ptr::read_volatile(p) };
            at += page;
        }
        let mut net = self.net.lock();
        let key = net.next_key;
        net.next_key += 1;
        let d = &mut net.devs[self.dev];
        d.mrs.insert(key, MrRec { addr, len, access });
        d.stats.registrations += 1;
        Ok(FakeMr { key })
    }

    fn keys(&self, mr: &FakeMr) -> Keys {
        Keys {
            lkey: mr.key,
            rkey: mr.key,
        }
    }

    fn dereg_mr(&mut self, mr: FakeMr) {
        let mut net = self.net.lock();
        let d = &mut net.devs[self.dev];
        d.mrs.remove(&mr.key);
        d.stats.deregistrations += 1;
    }

    fn create_qp(&mut self) -> Result<(QpId, u32), VerbsError> {
        let mut net = self.net.lock();
        let qpn = net.next_qpn;
        net.next_qpn += 1;
        let d = &mut net.devs[self.dev];
        d.qps.push(QpRec {
            qpn,
            state: QpState::Reset,
            remote_qpn: 0,
        });
        let id = d.qps.len() - 1;
        net.qpns.insert(qpn, (self.dev, id));
        Ok((id, qpn))
    }

    fn modify_qp(&mut self, qp: QpId, to: Transition) -> Result<(), VerbsError> {
        let mut net = self.net.lock();
        let q = net.devs[self.dev]
            .qps
            .get_mut(qp)
            .ok_or_else(|| VerbsError::errno("ibv_modify_qp", libc::EINVAL))?;
        let next = match (q.state, to) {
            (QpState::Reset, Transition::Init) => QpState::Init,
            (QpState::Init, Transition::Rtr { remote }) => {
                if remote.mtu < 256 {
                    return Err(VerbsError::new(
                        "ibv_modify_qp",
                        format!("invalid path MTU {}", remote.mtu),
                    ));
                }
                q.remote_qpn = remote.qpn;
                QpState::Rtr
            }
            (QpState::Rtr, Transition::Rts { .. }) => QpState::Rts,
            (from, to) => {
                return Err(VerbsError::new(
                    "ibv_modify_qp",
                    format!("invalid transition from {from:?} by {to:?}"),
                ))
            }
        };
        q.state = next;
        Ok(())
    }

    fn qp_state(&self, qp: QpId) -> QpState {
        let net = self.net.lock();
        net.devs[self.dev]
            .qps
            .get(qp)
            .map_or(QpState::Error, |q| q.state)
    }

    fn post_srq_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        let mut net = self.net.lock();
        let d = &mut net.devs[self.dev];
        if d.srq.len() >= d.limits.max_srq_wr as usize {
            return Err(VerbsError::errno("ibv_post_srq_recv", libc::ENOMEM));
        }
        let ok = d
            .mrs
            .get(&sge.lkey)
            .is_some_and(|m| covered(m, sge.addr, sge.len, Access::LOCAL_WRITE));
        if !ok {
            return Err(VerbsError::new(
                "ibv_post_srq_recv",
                "buffer not covered by a local-write registration",
            ));
        }
        d.srq.push_back((wr_id, sge));
        d.stats.recvs_posted += 1;
        d.stats.srq_high_water = d.stats.srq_high_water.max(d.srq.len());
        Ok(())
    }

    fn post_send(
        &mut self,
        qp: QpId,
        wr_id: u64,
        sge: Sge,
        inline: bool,
    ) -> Result<(), VerbsError> {
        let dev = self.dev;
        let mut net = self.net.lock();
        let max_inline = net.devs[dev].limits.max_inline;
        let Some(qpn) = net.ready_to_send(dev, qp, wr_id, WcOpcode::Send)? else {
            return Ok(()); // flushed
        };
        if inline {
            if sge.len > max_inline {
                return Err(VerbsError::errno("ibv_post_send", libc::EINVAL));
            }
            net.devs[dev].stats.inline_sends += 1;
        } else {
            net.devs[dev].stats.buffered_sends += 1;
            let ok = net.devs[dev]
                .mrs
                .get(&sge.lkey)
                .is_some_and(|m| covered(m, sge.addr, sge.len, Access::NONE));
            if !ok {
                net.fail(dev, qp, wr_id, WC_LOC_PROT_ERR, WcOpcode::Send);
                return Ok(());
            }
        }
        let Some((rd, rq)) = net.peer(dev, qp) else {
            net.fail(dev, qp, wr_id, WC_RETRY_EXC_ERR, WcOpcode::Send);
            return Ok(());
        };
        let remote_qpn = net.devs[rd].qps[rq].qpn;
        let Some((rwr, rsge)) = net.devs[rd].srq.pop_front() else {
            net.devs[dev].stats.rnr += 1;
            net.fail(dev, qp, wr_id, WC_RNR_RETRY_EXC_ERR, WcOpcode::Send);
            return Ok(());
        };
        if sge.len > rsge.len {
            net.devs[rd]
                .cq
                .push_back(wc(rwr, WC_LOC_LEN_ERR, WcOpcode::Recv, 0, remote_qpn));
            // The responder reports an invalid request to the sender.
            net.fail(dev, qp, wr_id, 9, WcOpcode::Send);
            return Ok(());
        }
        // SAFETY: the source is either inline data the caller keeps valid during this call or
        // registered memory checked above; the destination was checked to lie in a local-write
        // registration when it was posted, and registrations stay mapped until deregistered.
        unsafe { copy(sge.addr, rsge.addr, sge.len as usize) };
        net.devs[rd]
            .cq
            .push_back(wc(rwr, WC_SUCCESS, WcOpcode::Recv, sge.len, remote_qpn));
        net.devs[dev]
            .cq
            .push_back(wc(wr_id, WC_SUCCESS, WcOpcode::Send, 0, qpn));
        Ok(())
    }

    fn post_read(
        &mut self,
        qp: QpId,
        wr_id: u64,
        local: Sge,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), VerbsError> {
        let dev = self.dev;
        let mut net = self.net.lock();
        let Some(qpn) = net.ready_to_send(dev, qp, wr_id, WcOpcode::Read)? else {
            return Ok(()); // flushed
        };
        net.devs[dev].stats.reads += 1;
        let local_ok = net.devs[dev]
            .mrs
            .get(&local.lkey)
            .is_some_and(|m| covered(m, local.addr, local.len, Access::LOCAL_WRITE));
        if !local_ok {
            net.fail(dev, qp, wr_id, WC_LOC_PROT_ERR, WcOpcode::Read);
            return Ok(());
        }
        let Some((rd, _)) = net.peer(dev, qp) else {
            net.fail(dev, qp, wr_id, WC_RETRY_EXC_ERR, WcOpcode::Read);
            return Ok(());
        };
        let remote_ok = net.devs[rd]
            .mrs
            .get(&rkey)
            .is_some_and(|m| covered(m, remote_addr, local.len, Access::REMOTE_READ));
        if !remote_ok {
            net.fail(dev, qp, wr_id, WC_REM_ACCESS_ERR, WcOpcode::Read);
            return Ok(());
        }
        // SAFETY: both ranges were checked to lie inside live registrations (the remote one
        // with remote-read rights), which stay mapped until deregistered.
        unsafe { copy(remote_addr, local.addr, local.len as usize) };
        net.devs[dev]
            .cq
            .push_back(wc(wr_id, WC_SUCCESS, WcOpcode::Read, local.len, qpn));
        Ok(())
    }

    fn poll_cq(&mut self, out: &mut [Completion]) -> Result<usize, VerbsError> {
        let mut net = self.net.lock();
        let cq = &mut net.devs[self.dev].cq;
        let n = out.len().min(cq.len());
        for (slot, c) in out.iter_mut().zip(cq.drain(..n)) {
            *slot = c;
        }
        Ok(n)
    }
}

/// A world of `n` thread-ranks over one fake network, connected: hand element `r` to the
/// thread of rank `r`.
pub fn world(n: u32) -> Vec<Verbs<FakeDevice>> {
    world_with(n, FakeLimits::default(), VerbsConfig::default())
        .expect("fake verbs world")
        .1
}

/// Like [`world`] with explicit device limits and backend configuration; also returns the
/// network (for its counters and [`FakeNet::kill`]). Rank `r` uses device `r`.
pub fn world_with(
    n: u32,
    limits: FakeLimits,
    config: VerbsConfig,
) -> Result<(FakeNet, Vec<Verbs<FakeDevice>>), FabricError> {
    let net = FakeNet::new();
    let ranks = connected(&net, n, limits, config)?;
    Ok((net, ranks))
}

/// Sets up `n` ranks on `net` and connects them, as the bootstrap exchange does between
/// processes: every rank publishes its addresses, then each connects to the others'.
pub fn connected(
    net: &FakeNet,
    n: u32,
    limits: FakeLimits,
    config: VerbsConfig,
) -> Result<Vec<Verbs<FakeDevice>>, FabricError> {
    let mut ranks = (0..n)
        .map(|r| Verbs::new(r as Rank, n, net.device(limits), config))
        .collect::<Result<Vec<_>, _>>()?;
    let published: Vec<_> = ranks.iter().map(Verbs::addresses).collect();
    for (r, v) in ranks.iter_mut().enumerate() {
        let towards_me: Vec<_> = published.iter().map(|a| a[r]).collect();
        v.connect(&towards_me)?;
    }
    Ok(ranks)
}
