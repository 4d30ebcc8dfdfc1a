//! The thin layer between the verbs backend's logic and the verbs calls.
//!
//! [`VerbsDevice`] is everything [`super::Verbs`] asks of a device: register memory, create
//! reliable-connection queue pairs on the device's one completion queue and one shared receive
//! queue, move them through INIT, RTR and RTS, post receives, sends (inline or from registered
//! memory) and RDMA reads, and poll completions. Two implementations exist: `ibv` (feature
//! `verbs`, libibverbs loaded at run time) and [`super::fake`], an in-process model of a NIC
//! that enforces the same rules (queue-pair states, keys and bounds, receiver-not-ready when
//! the shared receive queue is empty) so the logic above it is tested on machines without a
//! device.

use crate::regcache::Access;

/// Index of a queue pair in its device's table (not the QP number).
pub type QpId = usize;

/// Attributes of the port a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortAttr {
    /// Local identifier (InfiniBand); 0 on RoCE.
    pub lid: u16,
    /// The GID at the configured index (all zero where none is configured).
    pub gid: [u8; 16],
    /// Active MTU in bytes (256 .. 4096).
    pub mtu: u32,
    /// Largest message one work request may carry.
    pub max_msg: u64,
    /// Link layer is Ethernet (RoCE): addressing goes by GID.
    pub ethernet: bool,
}

/// Limits of a device as opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload a send may carry inline (0: no inline sends).
    pub max_inline: u32,
    /// Work requests outstanding on one send queue.
    pub max_send_wr: u32,
    /// Receives the shared receive queue holds.
    pub max_srq_wr: u32,
}

/// What a peer needs to connect its queue pair to one of ours; travels through the bootstrap
/// exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpAddress {
    /// Port LID.
    pub lid: u16,
    /// Port GID.
    pub gid: [u8; 16],
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number the queue pair sends with.
    pub psn: u32,
    /// Port MTU in bytes.
    pub mtu: u32,
}

impl QpAddress {
    /// `lid:gid:qpn:psn:mtu`, hexadecimal.
    pub fn encode(&self) -> String {
        let gid: String = self.gid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{:x}:{gid}:{:x}:{:x}:{:x}",
            self.lid, self.qpn, self.psn, self.mtu
        )
    }

    /// Parses what [`QpAddress::encode`] wrote.
    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        let lid = u16::from_str_radix(it.next()?, 16).ok()?;
        let g = it.next()?;
        if g.len() != 32 {
            return None;
        }
        let mut gid = [0u8; 16];
        for (i, b) in gid.iter_mut().enumerate() {
            *b = u8::from_str_radix(g.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let qpn = u32::from_str_radix(it.next()?, 16).ok()?;
        let psn = u32::from_str_radix(it.next()?, 16).ok()?;
        let mtu = u32::from_str_radix(it.next()?, 16).ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(Self {
            lid,
            gid,
            qpn,
            psn,
            mtu,
        })
    }
}

/// Queue-pair states the backend uses (`IBV_QPS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Created, not usable.
    Reset,
    /// Receives may be posted.
    Init,
    /// Ready to receive: connected to a remote queue pair.
    Rtr,
    /// Ready to send.
    Rts,
    /// A work request failed; everything outstanding is flushed with errors.
    Error,
}

/// A state change of a queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// RESET → INIT (port, access flags: remote read allowed).
    Init,
    /// INIT → RTR, connected to `remote` (path MTU the smaller of both ports').
    Rtr {
        /// The peer's queue pair.
        remote: QpAddress,
    },
    /// RTR → RTS, sending from `psn`.
    Rts {
        /// This side's first packet sequence number.
        psn: u32,
    },
}

/// The keys of a memory registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Local key (for scatter-gather entries).
    pub lkey: u32,
    /// Remote key (for a peer's RDMA read).
    pub rkey: u32,
}

/// One scatter-gather entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Address in this process.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the registration covering it (ignored for inline sends).
    pub lkey: u32,
}

/// What a completion completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    /// A send.
    Send,
    /// A receive from the shared receive queue.
    Recv,
    /// An RDMA read.
    Read,
}

/// One work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The work request id given when posting.
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` (0) or the failure (`IBV_WC_*` numbering).
    pub status: u32,
    /// What completed (for failed completions only `wr_id` is reliable).
    pub opcode: WcOpcode,
    /// Bytes received (receives).
    pub byte_len: u32,
    /// Local queue pair number the completion belongs to.
    pub qp_num: u32,
}

/// `IBV_WC_SUCCESS`.
pub const WC_SUCCESS: u32 = 0;
/// `IBV_WC_LOC_LEN_ERR`: a receive buffer was too small.
pub const WC_LOC_LEN_ERR: u32 = 1;
/// `IBV_WC_LOC_PROT_ERR`: a local key did not cover the memory.
pub const WC_LOC_PROT_ERR: u32 = 4;
/// `IBV_WC_WR_FLUSH_ERR`: flushed because the queue pair is in the error state.
pub const WC_WR_FLUSH_ERR: u32 = 5;
/// `IBV_WC_REM_ACCESS_ERR`: the remote key or range was refused.
pub const WC_REM_ACCESS_ERR: u32 = 10;
/// `IBV_WC_RETRY_EXC_ERR`: the peer stopped answering.
pub const WC_RETRY_EXC_ERR: u32 = 12;
/// `IBV_WC_RNR_RETRY_EXC_ERR`: the peer had no receive posted.
pub const WC_RNR_RETRY_EXC_ERR: u32 = 13;

/// A work-completion status as text (`ibv_wc_status_str` wording).
pub fn status_text(status: u32) -> &'static str {
    match status {
        0 => "success",
        1 => "local length error",
        2 => "local QP operation error",
        4 => "local protection error",
        5 => "Work Request Flushed Error",
        6 => "memory management operation error",
        7 => "bad response error",
        8 => "local access error",
        9 => "remote invalid request error",
        10 => "remote access error",
        11 => "remote operation error",
        12 => "transport retry counter exceeded",
        13 => "RNR retry counter exceeded",
        _ => "other failure",
    }
}

/// A failed verbs call: which one and its errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsError {
    /// The call (`ibv_reg_mr`, `ibv_post_send`, ...).
    pub call: &'static str,
    /// What went wrong.
    pub why: String,
}

impl VerbsError {
    /// An error of `call` with `why`.
    pub fn new(call: &'static str, why: impl Into<String>) -> Self {
        Self {
            call,
            why: why.into(),
        }
    }

    /// An error of `call` from an errno value.
    pub fn errno(call: &'static str, errno: i32) -> Self {
        Self::new(call, std::io::Error::from_raw_os_error(errno).to_string())
    }
}

impl std::fmt::Display for VerbsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.why)
    }
}

/// Everything the verbs backend needs from a device: one protection domain, one completion
/// queue for sends, receives and reads, one shared receive queue, and reliable-connection
/// queue pairs on them.
pub trait VerbsDevice {
    /// A memory registration (deregistered by [`VerbsDevice::dereg_mr`]).
    type Mr;

    /// Device name (`mlx5_0`, `fake0`).
    fn name(&self) -> &str;
    /// The port in use.
    fn port(&self) -> PortAttr;
    /// Limits as opened.
    fn limits(&self) -> Limits;

    /// Registers `[addr, addr + len)` with `access`. The memory must stay mapped until
    /// deregistered.
    fn reg_mr(&mut self, addr: usize, len: usize, access: Access) -> Result<Self::Mr, VerbsError>;
    /// The keys of a registration.
    fn keys(&self, mr: &Self::Mr) -> Keys;
    /// Deregisters.
    fn dereg_mr(&mut self, mr: Self::Mr);

    /// Creates a reliable-connection queue pair on the device's completion queue and shared
    /// receive queue; returns its index and QP number.
    fn create_qp(&mut self) -> Result<(QpId, u32), VerbsError>;
    /// Moves a queue pair to the next state.
    fn modify_qp(&mut self, qp: QpId, to: Transition) -> Result<(), VerbsError>;
    /// The state the device reports for a queue pair.
    fn qp_state(&self, qp: QpId) -> QpState;

    /// Posts a receive buffer to the shared receive queue. The memory must stay registered
    /// and untouched until its completion.
    fn post_srq_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError>;
    /// Posts a signaled send of `sge` on `qp`; `inline` copies the bytes into the work request
    /// (`sge.len <= limits().max_inline`, no key needed). Otherwise the memory must stay
    /// registered and untouched until the completion.
    fn post_send(&mut self, qp: QpId, wr_id: u64, sge: Sge, inline: bool)
        -> Result<(), VerbsError>;
    /// Posts a signaled RDMA read of `local.len` bytes at `remote_addr` (key `rkey`) in the
    /// peer's memory into `local`.
    fn post_read(
        &mut self,
        qp: QpId,
        wr_id: u64,
        local: Sge,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), VerbsError>;
    /// Takes up to `out.len()` completions; returns how many.
    fn poll_cq(&mut self, out: &mut [Completion]) -> Result<usize, VerbsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_address_round_trip() {
        let a = QpAddress {
            lid: 0x12,
            gid: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            qpn: 0xabcdef,
            psn: 0x123,
            mtu: 4096,
        };
        assert_eq!(QpAddress::decode(&a.encode()), Some(a));
        assert_eq!(QpAddress::decode("1:00:2:3:4"), None);
        assert_eq!(QpAddress::decode(&format!("{}:9", a.encode())), None);
    }
}
