//! [`VerbsDevice`] over a real NIC: libibverbs, loaded at run time by `oxmpi-verbs-sys`.
//!
//! [`IbvDevice::open`] picks a device and port ([`IbvConfig`]: `OXMPI_VERBS_DEVICE`,
//! `OXMPI_VERBS_PORT`, `OXMPI_VERBS_GID_INDEX`), reads the port's addressing (LID, GID, MTU,
//! link layer) and the device's limits, and creates the protection domain, the one completion
//! queue and the one shared receive queue every queue pair uses. To learn how much a send may
//! carry inline it creates and destroys one probe queue pair, so [`VerbsDevice::limits`] is
//! final from the start. Queue pairs are reliable-connection pairs on that completion queue and
//! shared receive queue; every send and read is signaled.
//!
//! Lifetimes: queue pairs live until the device is dropped. Registrations ([`IbvMr`]) are
//! owned by the caller and must be handed back through [`VerbsDevice::dereg_mr`] before the
//! device is dropped (a registration still alive then keeps the protection domain busy; the
//! kernel releases both when the device context is closed). Dropping the device destroys the
//! queue pairs, the shared receive queue and the completion queue, deallocates the protection
//! domain and closes the device.
//!
//! [`describe`] lists devices and ports for `--fabric-info`.

use super::device::{
    Completion, Keys, Limits, PortAttr, QpAddress, QpId, QpState, Sge, Transition, VerbsDevice,
    VerbsError, WcOpcode,
};
use crate::regcache::Access;
use oxmpi_verbs_sys as sys;
use std::ffi::{c_int, CStr};
use std::ptr::{self, NonNull};

/// Send-queue depth asked for (less where the device allows less).
const SEND_WR: u32 = 256;
/// Inline payload asked for (none where the device refuses it).
const INLINE: u32 = 256;
/// Outstanding RDMA reads per queue pair asked for, as initiator and as responder.
const RD_ATOMIC: u8 = 16;
/// Receiver-not-ready NAK timer (code 12: 0.64 ms).
const MIN_RNR_TIMER: u8 = 12;
/// Local ACK timeout (code 14: 4.096 us * 2^14, about 67 ms).
const TIMEOUT: u8 = 14;
/// Transport retries.
const RETRY_CNT: u8 = 7;
/// Receiver-not-ready retries (7: without limit).
const RNR_RETRY: u8 = 7;
/// Packet sequence numbers and queue-pair numbers are 24 bits.
const MASK_24: u32 = 0xff_ffff;

/// Which device, port and GID to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbvConfig {
    /// Device name (`mlx5_0`); `None`: the first device whose port is active.
    pub device: Option<String>,
    /// Port number (from 1).
    pub port: u8,
    /// GID table index (RoCE: selects the RoCE version and address).
    pub gid_index: u8,
}

impl Default for IbvConfig {
    fn default() -> Self {
        Self {
            device: None,
            port: 1,
            gid_index: 0,
        }
    }
}

impl IbvConfig {
    /// Reads `OXMPI_VERBS_DEVICE`, `OXMPI_VERBS_PORT` (default 1) and `OXMPI_VERBS_GID_INDEX`
    /// (default 0). Empty or unparsable values (and port 0) leave the default.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`IbvConfig::from_env`] over any source of variables.
    fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let d = Self::default();
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u8>().ok());
        Self {
            device: get("OXMPI_VERBS_DEVICE")
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            port: num("OXMPI_VERBS_PORT")
                .filter(|&p| p != 0)
                .unwrap_or(d.port),
            gid_index: num("OXMPI_VERBS_GID_INDEX").unwrap_or(d.gid_index),
        }
    }
}

/// A memory registration (`struct ibv_mr`), deregistered by [`VerbsDevice::dereg_mr`].
/// Dropping it without that leaks the registration until the device is closed.
#[derive(Debug)]
pub struct IbvMr(NonNull<sys::ibv_mr>);

// SAFETY: an ibv_mr is a plain record of the library's (keys, address, length) that any thread
// may read or deregister; libibverbs objects are thread-safe.
unsafe impl Send for IbvMr {}

/// An open RDMA device: one port, one protection domain, one completion queue, one shared
/// receive queue, and the reliable-connection queue pairs created on them.
pub struct IbvDevice {
    lib: &'static sys::Lib,
    name: String,
    ctx: *mut sys::ibv_context,
    pd: *mut sys::ibv_pd,
    cq: *mut sys::ibv_cq,
    srq: *mut sys::ibv_srq,
    qps: Vec<*mut sys::ibv_qp>,
    max_qps: u32,
    port_num: u8,
    gid_index: u8,
    port: PortAttr,
    /// The port's active MTU as the `IBV_MTU_*` value.
    active_mtu: sys::ibv_mtu,
    limits: Limits,
    /// Inline size each queue pair is created with (what the probe got through).
    inline_request: u32,
    /// Reads outstanding as initiator / as responder.
    max_rd_atomic: u8,
    max_dest_rd_atomic: u8,
    /// Poll buffer.
    wc: Vec<sys::ibv_wc>,
}

// SAFETY: the device owns its verbs objects (no aliasing handles exist outside it), libibverbs
// objects may be used from any thread, and every mutating call goes through `&mut self`.
unsafe impl Send for IbvDevice {}

impl std::fmt::Debug for IbvDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvDevice")
            .field("name", &self.name)
            .field("port_num", &self.port_num)
            .field("port", &self.port)
            .field("limits", &self.limits)
            .field("qps", &self.qps.len())
            .finish()
    }
}

/// The thread's errno.
fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An error of `call` from an errno value (0: the call failed without saying why).
fn os_error(call: &'static str, errno: i32) -> VerbsError {
    if errno == 0 {
        VerbsError::new(call, "failed (no errno set)")
    } else {
        VerbsError::errno(call, errno)
    }
}

/// An error of `call` that returned `rc` (a positive errno, `-errno`, or -1 with errno set).
fn rc_error(call: &'static str, rc: c_int) -> VerbsError {
    match rc {
        r if r > 0 => os_error(call, r),
        -1 => os_error(call, last_errno()),
        r => os_error(call, r.saturating_neg()),
    }
}

/// Bytes of an `IBV_MTU_*` value.
fn mtu_bytes(mtu: sys::ibv_mtu) -> Option<u32> {
    (sys::IBV_MTU_256..=sys::IBV_MTU_4096)
        .contains(&mtu)
        .then(|| 128u32 << mtu)
}

/// The largest `IBV_MTU_*` value of at most `bytes` (`None` below 256).
fn mtu_enum(bytes: u32) -> Option<sys::ibv_mtu> {
    (sys::IBV_MTU_256..=sys::IBV_MTU_4096)
        .rev()
        .find(|&m| 128u32 << m <= bytes)
}

fn port_state_name(state: sys::ibv_port_state) -> &'static str {
    match state {
        sys::IBV_PORT_NOP => "NOP",
        sys::IBV_PORT_DOWN => "DOWN",
        sys::IBV_PORT_INIT => "INIT",
        sys::IBV_PORT_ARMED => "ARMED",
        sys::IBV_PORT_ACTIVE => "ACTIVE",
        sys::IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER",
        _ => "unknown",
    }
}

fn link_layer_name(link_layer: u8) -> &'static str {
    match u32::from(link_layer) {
        sys::IBV_LINK_LAYER_ETHERNET => "Ethernet",
        sys::IBV_LINK_LAYER_INFINIBAND => "InfiniBand",
        _ => "unspecified (InfiniBand)",
    }
}

/// Verbs access flags of registration rights.
fn access_flags(access: Access) -> c_int {
    let mut f = 0;
    if access.contains(Access::LOCAL_WRITE) {
        f |= sys::IBV_ACCESS_LOCAL_WRITE;
    }
    if access.contains(Access::REMOTE_READ) {
        f |= sys::IBV_ACCESS_REMOTE_READ;
    }
    if access.contains(Access::REMOTE_WRITE) {
        // Remote write requires local write.
        f |= sys::IBV_ACCESS_REMOTE_WRITE | sys::IBV_ACCESS_LOCAL_WRITE;
    }
    // Local read needs no flag.
    f as c_int
}

/// The list `ibv_get_device_list` returned, freed on drop.
struct DeviceList {
    lib: &'static sys::Lib,
    list: NonNull<*mut sys::ibv_device>,
    devices: Vec<(*mut sys::ibv_device, String)>,
}

impl DeviceList {
    /// The devices; an error when there are none (or the kernel has no RDMA support).
    fn get(lib: &'static sys::Lib) -> Result<Self, VerbsError> {
        let mut n: c_int = 0;
        // SAFETY: ibv_get_device_list writes the count through a valid pointer and returns a
        // null-terminated list (freed by Drop) or null with errno set.
        let raw = unsafe { (lib.ibv_get_device_list)(&mut n) };
        let Some(list) = NonNull::new(raw) else {
            let errno = last_errno();
            let e = std::io::Error::from_raw_os_error(errno);
            let hint = if errno == libc::ENOSYS {
                "; the kernel's RDMA support (ib_uverbs) is not loaded"
            } else {
                ""
            };
            return Err(VerbsError::new(
                "ibv_get_device_list",
                format!("no RDMA device found (ibv_get_device_list failed: {e}{hint})"),
            ));
        };
        let mut me = Self {
            lib,
            list,
            devices: Vec::new(),
        };
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: the list holds n device pointers followed by a null.
            let dev = unsafe { *list.as_ptr().add(i) };
            if dev.is_null() {
                break;
            }
            // SAFETY: dev is a device of the live list; the name is a NUL-terminated string
            // owned by it, copied out here.
            let name = unsafe {
                let p = (lib.ibv_get_device_name)(dev);
                if p.is_null() {
                    format!("device{i}")
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            me.devices.push((dev, name));
        }
        if me.devices.is_empty() {
            return Err(VerbsError::new(
                "ibv_get_device_list",
                "no RDMA device found (ibv_get_device_list returned none)",
            ));
        }
        Ok(me)
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.devices.iter().map(|(_, n)| n.as_str()).collect();
        names.join(", ")
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed once, here; contexts
        // opened from its devices stay valid after the list is freed.
        unsafe { (self.lib.ibv_free_device_list)(self.list.as_ptr()) };
    }
}

/// An open device context, closed on drop unless taken.
struct Context {
    lib: &'static sys::Lib,
    ctx: *mut sys::ibv_context,
}

impl Context {
    fn open(lib: &'static sys::Lib, dev: *mut sys::ibv_device) -> Result<Self, VerbsError> {
        // SAFETY: dev comes from a live device list.
        let ctx = unsafe { (lib.ibv_open_device)(dev) };
        if ctx.is_null() {
            return Err(os_error("ibv_open_device", last_errno()));
        }
        Ok(Self { lib, ctx })
    }

    fn query_device(&self) -> Result<sys::ibv_device_attr, VerbsError> {
        let mut attr = sys::ibv_device_attr::default();
        // SAFETY: ctx is open; attr is a writable ibv_device_attr.
        let rc = unsafe { (self.lib.ibv_query_device)(self.ctx, &mut attr) };
        if rc != 0 {
            return Err(rc_error("ibv_query_device", rc));
        }
        Ok(attr)
    }

    fn query_port(&self, port: u8) -> Result<sys::ibv_port_attr, VerbsError> {
        // Zeroed: the exported call fills only the older leading part of the structure.
        let mut attr = sys::ibv_port_attr::default();
        // SAFETY: ctx is open; attr is a writable, zeroed ibv_port_attr, larger than what the
        // exported ibv_query_port writes.
        let rc = unsafe { (self.lib.ibv_query_port)(self.ctx, port, &mut attr) };
        if rc != 0 {
            return Err(rc_error("ibv_query_port", rc));
        }
        Ok(attr)
    }

    fn query_gid(&self, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        let mut gid = sys::ibv_gid::default();
        // SAFETY: ctx is open; gid is a writable ibv_gid.
        let rc = unsafe { (self.lib.ibv_query_gid)(self.ctx, port, c_int::from(index), &mut gid) };
        if rc != 0 {
            return Err(rc_error("ibv_query_gid", rc));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        Ok(unsafe { gid.raw })
    }

    /// Gives up ownership (the caller closes it).
    fn into_raw(self) -> *mut sys::ibv_context {
        let ctx = self.ctx;
        std::mem::forget(self);
        ctx
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ctx is open and owned here; nothing was created on it.
        unsafe { (self.lib.ibv_close_device)(self.ctx) };
    }
}

/// Opens `name`'s device and checks its port is active.
fn open_named(
    list: &DeviceList,
    name: &str,
    port: u8,
) -> Result<(Context, sys::ibv_port_attr), VerbsError> {
    let Some(&(dev, _)) = list.devices.iter().find(|(_, n)| n == name) else {
        return Err(VerbsError::new(
            "ibv_open_device",
            format!("no RDMA device named {name} (found: {})", list.names()),
        ));
    };
    let ctx = Context::open(list.lib, dev)
        .map_err(|e| VerbsError::new(e.call, format!("{name}: {}", e.why)))?;
    let attr = ctx
        .query_port(port)
        .map_err(|e| VerbsError::new(e.call, format!("{name} port {port}: {}", e.why)))?;
    if attr.state != sys::IBV_PORT_ACTIVE {
        return Err(VerbsError::new(
            "ibv_query_port",
            format!(
                "port {port} of {name} is {}, not ACTIVE",
                port_state_name(attr.state)
            ),
        ));
    }
    Ok((ctx, attr))
}

/// Opens the first device whose port `port` is active.
fn open_first_active(
    list: &DeviceList,
    port: u8,
) -> Result<(Context, sys::ibv_port_attr, String), VerbsError> {
    let mut seen = Vec::new();
    for (dev, name) in &list.devices {
        let ctx = match Context::open(list.lib, *dev) {
            Ok(c) => c,
            Err(e) => {
                seen.push(format!("{name}: {}", e.why));
                continue;
            }
        };
        match ctx.query_port(port) {
            Ok(attr) if attr.state == sys::IBV_PORT_ACTIVE => return Ok((ctx, attr, name.clone())),
            Ok(attr) => seen.push(format!("{name}: {}", port_state_name(attr.state))),
            Err(e) => seen.push(format!("{name}: {}", e.why)),
        }
    }
    Err(VerbsError::new(
        "ibv_query_port",
        format!(
            "no RDMA device has port {port} active ({}); set OXMPI_VERBS_DEVICE / \
             OXMPI_VERBS_PORT",
            seen.join("; ")
        ),
    ))
}

impl IbvDevice {
    /// Opens the device `config` names (or the first with an active port) for up to
    /// `max_qps` queue pairs, a shared receive queue of `srq_depth` receives (less where the
    /// device holds fewer: see [`VerbsDevice::limits`]) and a completion queue of `cq_depth`
    /// entries (an error where the device allows fewer).
    pub fn open(
        config: &IbvConfig,
        max_qps: u32,
        srq_depth: u32,
        cq_depth: u32,
    ) -> Result<IbvDevice, VerbsError> {
        let lib = sys::lib().map_err(|e| VerbsError::new("dlopen", e))?;
        if config.port == 0 {
            return Err(VerbsError::new("ibv_query_port", "port numbers start at 1"));
        }
        if srq_depth == 0 || cq_depth == 0 {
            return Err(VerbsError::new(
                "ibv_create_cq",
                format!("queue depths must be positive (srq {srq_depth}, cq {cq_depth})"),
            ));
        }
        let list = DeviceList::get(lib)?;
        let (ctx, pattr, name) = match &config.device {
            Some(name) => {
                let (c, a) = open_named(&list, name, config.port)?;
                (c, a, name.clone())
            }
            None => open_first_active(&list, config.port)?,
        };
        drop(list);
        let label = name.clone();
        let in_dev = |e: VerbsError| VerbsError::new(e.call, format!("{label}: {}", e.why));

        let dattr = ctx.query_device().map_err(in_dev)?;
        let ethernet = u32::from(pattr.link_layer) == sys::IBV_LINK_LAYER_ETHERNET;
        let Some(mtu) = mtu_bytes(pattr.active_mtu) else {
            return Err(in_dev(VerbsError::new(
                "ibv_query_port",
                format!(
                    "port {} reports active MTU code {}",
                    config.port, pattr.active_mtu
                ),
            )));
        };
        if pattr.gid_tbl_len > 0 && c_int::from(config.gid_index) >= pattr.gid_tbl_len {
            return Err(in_dev(VerbsError::new(
                "ibv_query_gid",
                format!(
                    "GID index {} is beyond port {}'s table of {} (OXMPI_VERBS_GID_INDEX)",
                    config.gid_index, config.port, pattr.gid_tbl_len
                ),
            )));
        }
        let gid = if pattr.gid_tbl_len > 0 {
            ctx.query_gid(config.port, config.gid_index)
                .map_err(in_dev)?
        } else {
            [0; 16]
        };
        if ethernet && gid == [0; 16] {
            return Err(in_dev(VerbsError::new(
                "ibv_query_gid",
                format!(
                    "GID index {} of port {} is empty, and RoCE addresses by GID \
                     (OXMPI_VERBS_GID_INDEX)",
                    config.gid_index, config.port
                ),
            )));
        }

        let dev_max = |v: c_int| u32::try_from(v).unwrap_or(0);
        if max_qps > dev_max(dattr.max_qp) {
            return Err(in_dev(VerbsError::new(
                "ibv_create_qp",
                format!(
                    "{max_qps} queue pairs asked for, the device allows {}",
                    dattr.max_qp
                ),
            )));
        }
        if cq_depth > dev_max(dattr.max_cqe) {
            return Err(in_dev(VerbsError::new(
                "ibv_create_cq",
                format!(
                    "a completion queue of {cq_depth} entries asked for, the device allows {}",
                    dattr.max_cqe
                ),
            )));
        }
        let srq_wr = srq_depth.min(dev_max(dattr.max_srq_wr));
        if srq_wr == 0 || dattr.max_srq_sge < 1 {
            return Err(in_dev(VerbsError::new(
                "ibv_create_srq",
                "the device has no shared receive queues",
            )));
        }
        let max_send_wr = SEND_WR.min(dev_max(dattr.max_qp_wr)).max(1);
        let rd = |v: c_int| u8::try_from(v.clamp(0, c_int::from(RD_ATOMIC))).unwrap_or(0);

        let mut me = IbvDevice {
            lib,
            name,
            ctx: ctx.into_raw(),
            pd: ptr::null_mut(),
            cq: ptr::null_mut(),
            srq: ptr::null_mut(),
            qps: Vec::new(),
            max_qps,
            port_num: config.port,
            gid_index: config.gid_index,
            port: PortAttr {
                lid: pattr.lid,
                gid,
                mtu,
                max_msg: u64::from(pattr.max_msg_sz),
                ethernet,
            },
            active_mtu: pattr.active_mtu,
            limits: Limits {
                max_inline: 0,
                max_send_wr,
                max_srq_wr: srq_wr,
            },
            inline_request: 0,
            max_rd_atomic: rd(dattr.max_qp_init_rd_atom),
            max_dest_rd_atomic: rd(dattr.max_qp_rd_atom),
            wc: Vec::new(),
        };
        // From here on, Drop releases whatever was created if a step fails.
        me.create_resources(cq_depth).map_err(in_dev)?;
        Ok(me)
    }

    /// PD, CQ, SRQ, and the probe queue pair that finds the inline limit.
    fn create_resources(&mut self, cq_depth: u32) -> Result<(), VerbsError> {
        let lib = self.lib;
        // SAFETY: ctx is open.
        self.pd = unsafe { (lib.ibv_alloc_pd)(self.ctx) };
        if self.pd.is_null() {
            return Err(os_error("ibv_alloc_pd", last_errno()));
        }
        let cqe = c_int::try_from(cq_depth).unwrap_or(c_int::MAX);
        // SAFETY: ctx is open; no completion channel or context pointer is attached.
        self.cq =
            unsafe { (lib.ibv_create_cq)(self.ctx, cqe, ptr::null_mut(), ptr::null_mut(), 0) };
        if self.cq.is_null() {
            return Err(os_error("ibv_create_cq", last_errno()));
        }
        let mut srq_attr = sys::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: sys::ibv_srq_attr {
                max_wr: self.limits.max_srq_wr,
                max_sge: 1,
                srq_limit: 0,
            },
        };
        // SAFETY: pd is live; srq_attr is a valid, writable init structure.
        self.srq = unsafe { (lib.ibv_create_srq)(self.pd, &mut srq_attr) };
        if self.srq.is_null() {
            return Err(os_error("ibv_create_srq", last_errno()));
        }
        // The probe: inline sends if the device takes them, none otherwise.
        let (qp, cap) = match self.create_raw_qp(INLINE) {
            Ok(r) => {
                self.inline_request = INLINE;
                r
            }
            Err(_) => {
                self.inline_request = 0;
                self.create_raw_qp(0)?
            }
        };
        // SAFETY: qp was just created and is used nowhere else.
        unsafe { (lib.ibv_destroy_qp)(qp) };
        self.limits.max_inline = cap.max_inline_data;
        Ok(())
    }

    /// An RC queue pair on the CQ and SRQ, with its capabilities as created.
    fn create_raw_qp(
        &self,
        max_inline: u32,
    ) -> Result<(*mut sys::ibv_qp, sys::ibv_qp_cap), VerbsError> {
        let mut attr = sys::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: self.cq,
            recv_cq: self.cq,
            srq: self.srq,
            cap: sys::ibv_qp_cap {
                max_send_wr: self.limits.max_send_wr,
                max_recv_wr: 0,
                max_send_sge: 1,
                max_recv_sge: 0,
                max_inline_data: max_inline,
            },
            qp_type: sys::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: pd, cq and srq are live; attr is a valid, writable init structure (the
        // library writes the capabilities it granted back into attr.cap).
        let qp = unsafe { (self.lib.ibv_create_qp)(self.pd, &mut attr) };
        if qp.is_null() {
            return Err(os_error("ibv_create_qp", last_errno()));
        }
        Ok((qp, attr.cap))
    }

    fn qp(&self, call: &'static str, qp: QpId) -> Result<*mut sys::ibv_qp, VerbsError> {
        self.qps
            .get(qp)
            .copied()
            .ok_or_else(|| VerbsError::new(call, format!("no queue pair {qp}")))
    }

    fn post(&mut self, qp: QpId, wr: &mut sys::ibv_send_wr) -> Result<(), VerbsError> {
        let qp = self.qp("ibv_post_send", qp)?;
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        // SAFETY: qp is a live queue pair of this device; wr is one work request whose
        // scatter-gather entry lives on the caller's stack for this call (inline data is copied
        // during it; registered memory is the caller's contract per VerbsDevice).
        let rc = unsafe { sys::ibv_post_send(qp, wr, &mut bad) };
        if rc != 0 {
            return Err(rc_error("ibv_post_send", rc));
        }
        Ok(())
    }
}

impl Drop for IbvDevice {
    fn drop(&mut self) {
        let lib = self.lib;
        // Errors are ignored: nothing more can be done with them here.
        for &qp in &self.qps {
            // SAFETY: each queue pair is live and owned here, destroyed once.
            unsafe { (lib.ibv_destroy_qp)(qp) };
        }
        self.qps.clear();
        if !self.srq.is_null() {
            // SAFETY: the SRQ is live, no queue pair uses it any more.
            unsafe { (lib.ibv_destroy_srq)(self.srq) };
        }
        if !self.cq.is_null() {
            // SAFETY: the CQ is live, no queue pair uses it any more.
            unsafe { (lib.ibv_destroy_cq)(self.cq) };
        }
        if !self.pd.is_null() {
            // SAFETY: the PD is live; registrations still on it (not handed back through
            // dereg_mr) make this fail, and are then released by closing the device.
            unsafe { (lib.ibv_dealloc_pd)(self.pd) };
        }
        // SAFETY: the context is open and owned here, closed once.
        unsafe { (lib.ibv_close_device)(self.ctx) };
    }
}

impl VerbsDevice for IbvDevice {
    type Mr = IbvMr;

    fn name(&self) -> &str {
        &self.name
    }

    fn port(&self) -> PortAttr {
        self.port
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn reg_mr(&mut self, addr: usize, len: usize, access: Access) -> Result<IbvMr, VerbsError> {
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(VerbsError::new(
                "ibv_reg_mr",
                format!("invalid range {addr:#x} + {len}"),
            ));
        }
        // SAFETY: pd is live; the caller keeps [addr, addr + len) mapped until dereg_mr (the
        // trait's contract); the kernel checks the range itself and fails the call otherwise.
        let mr = unsafe {
            (self.lib.ibv_reg_mr)(
                self.pd,
                addr as *mut libc::c_void,
                len,
                access_flags(access),
            )
        };
        NonNull::new(mr)
            .map(IbvMr)
            .ok_or_else(|| os_error("ibv_reg_mr", last_errno()))
    }

    fn keys(&self, mr: &IbvMr) -> Keys {
        // SAFETY: the registration is live until dereg_mr takes it by value.
        let m = unsafe { mr.0.as_ref() };
        Keys {
            lkey: m.lkey,
            rkey: m.rkey,
        }
    }

    fn dereg_mr(&mut self, mr: IbvMr) {
        // SAFETY: the registration is live and deregistered once (taken by value). A failure
        // (memory windows bound to it: none are used here) leaves it to the device's close.
        unsafe { (self.lib.ibv_dereg_mr)(mr.0.as_ptr()) };
    }

    fn create_qp(&mut self) -> Result<(QpId, u32), VerbsError> {
        if self.qps.len() >= self.max_qps as usize {
            return Err(VerbsError::new(
                "ibv_create_qp",
                format!("all {} queue pairs of this device are in use", self.max_qps),
            ));
        }
        let (qp, cap) = self.create_raw_qp(self.inline_request)?;
        if cap.max_inline_data < self.limits.max_inline || cap.max_send_wr < self.limits.max_send_wr
        {
            // SAFETY: qp was just created and is used nowhere else.
            unsafe { (self.lib.ibv_destroy_qp)(qp) };
            return Err(VerbsError::new(
                "ibv_create_qp",
                format!(
                    "granted inline {} and {} send requests, below the {} and {} of the probe",
                    cap.max_inline_data,
                    cap.max_send_wr,
                    self.limits.max_inline,
                    self.limits.max_send_wr
                ),
            ));
        }
        // SAFETY: qp is live.
        let qpn = unsafe { (*qp).qp_num };
        self.qps.push(qp);
        Ok((self.qps.len() - 1, qpn))
    }

    fn modify_qp(&mut self, qp: QpId, to: Transition) -> Result<(), VerbsError> {
        let q = self.qp("ibv_modify_qp", qp)?;
        let mut attr = sys::ibv_qp_attr::default();
        let mask = match to {
            Transition::Init => {
                attr.qp_state = sys::IBV_QPS_INIT;
                attr.pkey_index = 0;
                attr.port_num = self.port_num;
                attr.qp_access_flags = sys::IBV_ACCESS_REMOTE_READ | sys::IBV_ACCESS_LOCAL_WRITE;
                sys::IBV_QP_STATE
                    | sys::IBV_QP_PKEY_INDEX
                    | sys::IBV_QP_PORT
                    | sys::IBV_QP_ACCESS_FLAGS
            }
            Transition::Rtr { remote } => {
                let Some(remote_mtu) = mtu_enum(remote.mtu) else {
                    return Err(VerbsError::new(
                        "ibv_modify_qp",
                        format!("invalid path MTU {} from the peer", remote.mtu),
                    ));
                };
                attr.qp_state = sys::IBV_QPS_RTR;
                attr.path_mtu = remote_mtu.min(self.active_mtu);
                attr.dest_qp_num = remote.qpn & MASK_24;
                attr.rq_psn = remote.psn & MASK_24;
                attr.max_dest_rd_atomic = self.max_dest_rd_atomic;
                attr.min_rnr_timer = MIN_RNR_TIMER;
                attr.ah_attr = self.ah_attr(&remote);
                sys::IBV_QP_STATE
                    | sys::IBV_QP_AV
                    | sys::IBV_QP_PATH_MTU
                    | sys::IBV_QP_DEST_QPN
                    | sys::IBV_QP_RQ_PSN
                    | sys::IBV_QP_MAX_DEST_RD_ATOMIC
                    | sys::IBV_QP_MIN_RNR_TIMER
            }
            Transition::Rts { psn } => {
                attr.qp_state = sys::IBV_QPS_RTS;
                attr.timeout = TIMEOUT;
                attr.retry_cnt = RETRY_CNT;
                attr.rnr_retry = RNR_RETRY;
                attr.sq_psn = psn & MASK_24;
                attr.max_rd_atomic = self.max_rd_atomic;
                sys::IBV_QP_STATE
                    | sys::IBV_QP_TIMEOUT
                    | sys::IBV_QP_RETRY_CNT
                    | sys::IBV_QP_RNR_RETRY
                    | sys::IBV_QP_SQ_PSN
                    | sys::IBV_QP_MAX_QP_RD_ATOMIC
            }
        };
        // SAFETY: q is a live queue pair of this device; attr is fully initialized for the
        // fields the mask names.
        let rc = unsafe { (self.lib.ibv_modify_qp)(q, &mut attr, mask as c_int) };
        if rc != 0 {
            return Err(rc_error("ibv_modify_qp", rc));
        }
        Ok(())
    }

    fn qp_state(&self, qp: QpId) -> QpState {
        let Ok(q) = self.qp("ibv_query_qp", qp) else {
            return QpState::Error;
        };
        let mut attr = sys::ibv_qp_attr::default();
        let mut init = sys::ibv_qp_init_attr::default();
        // SAFETY: q is a live queue pair of this device; both structures are writable.
        let rc =
            unsafe { (self.lib.ibv_query_qp)(q, &mut attr, sys::IBV_QP_STATE as c_int, &mut init) };
        if rc != 0 {
            return QpState::Error;
        }
        match attr.qp_state {
            sys::IBV_QPS_RESET => QpState::Reset,
            sys::IBV_QPS_INIT => QpState::Init,
            sys::IBV_QPS_RTR => QpState::Rtr,
            // Send-queue drain still sends what is queued.
            sys::IBV_QPS_RTS | sys::IBV_QPS_SQD => QpState::Rts,
            _ => QpState::Error,
        }
    }

    fn post_srq_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        let mut s = sys::ibv_sge {
            addr: sge.addr,
            length: sge.len,
            lkey: sge.lkey,
        };
        let mut wr = sys::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut s,
            num_sge: 1,
        };
        let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
        // SAFETY: srq is live; wr and its entry live on this stack for the call; the buffer
        // stays registered and untouched until its completion (the trait's contract).
        let rc = unsafe { sys::ibv_post_srq_recv(self.srq, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(rc_error("ibv_post_srq_recv", rc));
        }
        Ok(())
    }

    fn post_send(
        &mut self,
        qp: QpId,
        wr_id: u64,
        sge: Sge,
        inline: bool,
    ) -> Result<(), VerbsError> {
        if inline && sge.len > self.limits.max_inline {
            return Err(VerbsError::new(
                "ibv_post_send",
                format!(
                    "inline send of {} bytes, the limit is {}",
                    sge.len, self.limits.max_inline
                ),
            ));
        }
        let mut s = sys::ibv_sge {
            addr: sge.addr,
            length: sge.len,
            lkey: sge.lkey,
        };
        let mut wr = sys::ibv_send_wr {
            wr_id,
            sg_list: &mut s,
            num_sge: c_int::from(sge.len > 0),
            opcode: sys::IBV_WR_SEND,
            send_flags: sys::IBV_SEND_SIGNALED | if inline { sys::IBV_SEND_INLINE } else { 0 },
            ..Default::default()
        };
        self.post(qp, &mut wr)
    }

    fn post_read(
        &mut self,
        qp: QpId,
        wr_id: u64,
        local: Sge,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), VerbsError> {
        let mut s = sys::ibv_sge {
            addr: local.addr,
            length: local.len,
            lkey: local.lkey,
        };
        let mut wr = sys::ibv_send_wr {
            wr_id,
            sg_list: &mut s,
            num_sge: 1,
            opcode: sys::IBV_WR_RDMA_READ,
            send_flags: sys::IBV_SEND_SIGNALED,
            ..Default::default()
        };
        wr.wr.rdma = sys::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 { remote_addr, rkey };
        self.post(qp, &mut wr)
    }

    fn poll_cq(&mut self, out: &mut [Completion]) -> Result<usize, VerbsError> {
        let want = out.len().min(c_int::MAX as usize);
        if want == 0 {
            return Ok(0);
        }
        if self.wc.len() < want {
            self.wc.resize(want, sys::ibv_wc::default());
        }
        // SAFETY: cq is live; the buffer has room for `want` entries.
        let rc = unsafe { sys::ibv_poll_cq(self.cq, want as c_int, self.wc.as_mut_ptr()) };
        if rc < 0 {
            return Err(VerbsError::new(
                "ibv_poll_cq",
                format!("completion queue error ({rc})"),
            ));
        }
        let n = (rc as usize).min(want);
        for (slot, wc) in out.iter_mut().zip(&self.wc[..n]) {
            let opcode = match wc.opcode {
                sys::IBV_WC_SEND => WcOpcode::Send,
                sys::IBV_WC_RDMA_READ => WcOpcode::Read,
                sys::IBV_WC_RECV | sys::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::Recv,
                // Failed completions need not carry a valid opcode; only wr_id counts.
                _ if wc.status != sys::IBV_WC_SUCCESS => WcOpcode::Send,
                other => {
                    return Err(VerbsError::new(
                        "ibv_poll_cq",
                        format!("completion with unexpected opcode {other}"),
                    ))
                }
            };
            *slot = Completion {
                wr_id: wc.wr_id,
                status: wc.status,
                opcode,
                byte_len: wc.byte_len,
                qp_num: wc.qp_num,
            };
        }
        Ok(n)
    }
}

impl IbvDevice {
    /// The address vector towards `remote`: by LID, with a global route header where the link
    /// is Ethernet (RoCE) or the peer has no LID.
    fn ah_attr(&self, remote: &QpAddress) -> sys::ibv_ah_attr {
        let mut ah = sys::ibv_ah_attr {
            dlid: remote.lid,
            sl: 0,
            src_path_bits: 0,
            static_rate: 0,
            is_global: 0,
            port_num: self.port_num,
            ..Default::default()
        };
        if self.port.ethernet || remote.lid == 0 {
            ah.is_global = 1;
            ah.grh.dgid = sys::ibv_gid { raw: remote.gid };
            ah.grh.sgid_index = self.gid_index;
            ah.grh.hop_limit = 1;
            ah.grh.flow_label = 0;
            ah.grh.traffic_class = 0;
        }
        ah
    }
}

/// Devices and ports as libibverbs sees them, for `--fabric-info`: the loader's error, "no
/// RDMA device found", or one line per device and port (name, port, state, link layer, LID,
/// active MTU).
pub fn describe() -> String {
    let lib = match sys::lib() {
        Ok(l) => l,
        Err(e) => return e,
    };
    let list = match DeviceList::get(lib) {
        Ok(l) => l,
        Err(e) => return e.why,
    };
    let mut lines = Vec::new();
    for (dev, name) in &list.devices {
        let ctx = match Context::open(lib, *dev) {
            Ok(c) => c,
            Err(e) => {
                lines.push(format!("{name}: cannot open ({e})"));
                continue;
            }
        };
        let ports = match ctx.query_device() {
            Ok(a) => a.phys_port_cnt,
            Err(e) => {
                lines.push(format!("{name}: {e}"));
                continue;
            }
        };
        if ports == 0 {
            lines.push(format!("{name}: no ports"));
        }
        for p in 1..=ports {
            match ctx.query_port(p) {
                Ok(a) => lines.push(format!(
                    "{name} port {p}: {}, link layer {}, LID {:#06x}, active MTU {}",
                    port_state_name(a.state),
                    link_layer_name(a.link_layer),
                    a.lid,
                    mtu_bytes(a.active_mtu).map_or_else(|| "unknown".into(), |b| b.to_string())
                )),
                Err(e) => lines.push(format!("{name} port {p}: {e}")),
            }
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_vars() {
        let c = IbvConfig::from_vars(|_| None);
        assert_eq!(c, IbvConfig::default());
        assert_eq!((c.device, c.port, c.gid_index), (None, 1, 0));
        let c = IbvConfig::from_vars(|k| {
            Some(
                match k {
                    "OXMPI_VERBS_DEVICE" => " mlx5_1 ",
                    "OXMPI_VERBS_PORT" => "2",
                    "OXMPI_VERBS_GID_INDEX" => "3",
                    _ => "",
                }
                .to_string(),
            )
        });
        assert_eq!(c.device.as_deref(), Some("mlx5_1"));
        assert_eq!((c.port, c.gid_index), (2, 3));
        // Bad values keep the defaults.
        let c = IbvConfig::from_vars(|k| {
            Some(if k == "OXMPI_VERBS_PORT" { "0" } else { "x" }.to_string())
        });
        assert_eq!((c.port, c.gid_index), (1, 0));
        assert_eq!(c.device.as_deref(), Some("x"));
    }

    #[test]
    fn mtu_conversions() {
        assert_eq!(mtu_bytes(sys::IBV_MTU_256), Some(256));
        assert_eq!(mtu_bytes(sys::IBV_MTU_4096), Some(4096));
        assert_eq!(mtu_bytes(0), None);
        assert_eq!(mtu_bytes(6), None);
        assert_eq!(mtu_enum(4096), Some(sys::IBV_MTU_4096));
        assert_eq!(mtu_enum(1024), Some(sys::IBV_MTU_1024));
        assert_eq!(mtu_enum(1500), Some(sys::IBV_MTU_1024));
        assert_eq!(mtu_enum(9000), Some(sys::IBV_MTU_4096));
        assert_eq!(mtu_enum(255), None);
    }

    #[test]
    fn access_bits() {
        assert_eq!(access_flags(Access::LOCAL_READ), 0);
        assert_eq!(
            access_flags(Access::LOCAL_WRITE),
            sys::IBV_ACCESS_LOCAL_WRITE as c_int
        );
        assert_eq!(
            access_flags(Access::REMOTE_READ),
            sys::IBV_ACCESS_REMOTE_READ as c_int
        );
        assert_eq!(
            access_flags(Access::REMOTE_WRITE),
            (sys::IBV_ACCESS_REMOTE_WRITE | sys::IBV_ACCESS_LOCAL_WRITE) as c_int
        );
        assert_eq!(access_flags(Access::ALL), 7);
    }

    #[test]
    fn errors_from_return_codes() {
        assert_eq!(
            rc_error("ibv_modify_qp", libc::EINVAL),
            VerbsError::errno("ibv_modify_qp", libc::EINVAL)
        );
        assert_eq!(
            rc_error("ibv_modify_qp", -libc::ENOMEM),
            VerbsError::errno("ibv_modify_qp", libc::ENOMEM)
        );
        assert_eq!(os_error("x", 0).why, "failed (no errno set)");
    }

    /// On a machine without RDMA devices (this one, and CI), opening fails plainly and the
    /// description says why; with the library missing, both give the loader's error.
    #[test]
    fn open_without_device() {
        let desc = describe();
        match IbvDevice::open(&IbvConfig::default(), 4, 64, 256) {
            Err(e) => {
                let msg = e.to_string();
                if sys::lib().is_err() {
                    assert!(msg.contains("libibverbs.so.1 could not be loaded"), "{msg}");
                    assert!(
                        desc.contains("libibverbs.so.1 could not be loaded"),
                        "{desc}"
                    );
                } else if msg.contains("no RDMA device found") {
                    assert!(desc.starts_with("no RDMA device found"), "{desc}");
                } else {
                    // A machine with devices but no active port.
                    assert!(msg.contains("active"), "{msg}");
                    assert!(desc.contains(" port "), "{desc}");
                }
            }
            Ok(dev) => {
                // A machine with an active RDMA port: the device opened for real.
                assert!(desc.contains(dev.name()), "{desc}");
                assert!(dev.limits().max_send_wr >= 1);
            }
        }
        // A named device that does not exist is never opened.
        let named = IbvConfig {
            device: Some("oxmpi-no-such-device".into()),
            ..IbvConfig::default()
        };
        let e = IbvDevice::open(&named, 4, 64, 256).unwrap_err().to_string();
        assert!(
            e.contains("no RDMA device") || e.contains("could not be loaded"),
            "{e}"
        );
    }
}
