//! The libfabric backend (cargo feature `ofi`): one RDM endpoint per rank, reaching every peer
//! through an address vector filled from the bootstrap exchange.
//!
//! - **Loading.** libfabric is loaded (`dlopen`, in `oxmpi-ofi-sys`) when a rank first opens or
//!   probes this fabric; a build with the feature runs without the library, and this fabric
//!   then says it cannot be loaded.
//! - **Negotiation.** [`Ofi::open`] asks `fi_getinfo` for a reliable-datagram endpoint with
//!   messages and remote reads (`FI_MSG | FI_RMA | FI_READ | FI_REMOTE_READ`), send-after-send
//!   order, and the memory-registration modes this backend handles (`FI_MR_LOCAL`,
//!   `FI_MR_VIRT_ADDR`, `FI_MR_ALLOCATED`, `FI_MR_PROV_KEY`). A provider without RMA is
//!   accepted with reads off (rendezvous then uses the engine's pipeline); when nothing
//!   matches, the error names what the provider lacks. `OXMPI_OFI_PROVIDER` picks the provider
//!   (`tcp;ofi_rxm`, `shm`, `verbs;ofi_rxm`, ...), `OXMPI_OFI_DOMAIN` the domain (for the tcp
//!   provider, the interface); a job on one host prefers the loopback domain `lo`.
//! - **Frames.** Every frame is one message (a split frame, below, two): an 8-byte prefix (the
//!   job's tag, sender rank), the 48-byte header and the payload. Sends up to the provider's
//!   inject size go out with `fi_inject` from a scratch buffer; larger ones are copied into
//!   one of [`TX_SLOTS`] pre-registered bounce buffers, released when their completion is
//!   read. Over the `shm`
//!   provider, eager frames beyond its inject size go out in place instead
//!   ([`Fabric::send_lent`]): `fi_sendv` of the prefix and header from a bounce buffer and the
//!   payload from the caller's memory, which the receiving process then reads with
//!   `process_vm_readv`; the completion is reported as [`Event::SendDone`]. A payload that
//!   fits the shm provider's inject size only without the 56-byte head goes as a *split
//!   frame*: two injects, the head (its rank word marked with [`SPLIT_HEAD`]) and then the
//!   bare payload, which carries the prefix as remote CQ data; the receiver keeps the head
//!   until the payload from the same sender arrives (the provider keeps a sender's messages
//!   in order), so a 4 KiB message stays on the inject path. Receives land in
//!   [`RX_SLOTS`] pre-posted, pre-registered buffers, posted again by the next poll: after the
//!   engine has acted on the frame (a reply goes out first), not on the way to it.
//! - **Completions.** One completion queue, read in batches by [`Fabric::poll`]; the progress
//!   engine's polling is what drives a manual-progress provider.
//! - **Remote reads.** [`Fabric::remote_key`] registers the sender's buffer for remote reads
//!   (kept until [`Fabric::release_key`]); [`Fabric::read`] issues `fi_read` into the
//!   receiver's buffer (registered first where the provider needs local registration) and
//!   reads the completion queue until it completes, keeping frames that arrive meanwhile for
//!   the next poll.
//!
//! Unlike the TCP backend, libfabric offers no per-connection authentication: only peers whose
//! addresses came through the (authenticated) bootstrap exchange are in the address vector,
//! but the provider accepts messages from any sender that knows the endpoint's address. So
//! every frame starts with a 32-bit tag derived from the job's secret
//! ([`OfiConfig::job_tag`]); messages without it are dropped, counted (`ofi.foreign_frames`)
//! and logged, and disturb nothing else.

use crate::regcache::{Access, Config as CacheConfig, Lease, RegCache, Registrar};
use crate::HEADER_LEN;
use crate::{Caps, Event, Fabric, FabricError, Header, MemRef, PerfModel, Rank, RemoteKey, Sent};
use oxmpi_ofi_sys as fi;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_void, CStr, CString};
use std::mem::MaybeUninit;
use std::ptr;
use std::time::{Duration, Instant};

/// Prefix of every frame: the job's tag (u32, from its secret) and the sender rank (u32),
/// little-endian.
const PREFIX: usize = 8;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Default largest eager message (over `ofi_rxm` providers: [`MAX_PAYLOAD`]).
pub const EAGER_MAX: usize = 16 * 1024;
/// Pre-posted receive buffers.
pub const RX_SLOTS: usize = 64;
/// Bounce buffers for sends too large to inject.
pub const TX_SLOTS: usize = 64;
const SLOT: usize = PREFIX + HEADER_LEN + MAX_PAYLOAD;
/// Largest inject this backend uses (the provider's limit may be lower).
const INJECT_CAP: usize = 4096;
const CQ_BATCH: usize = 16;
/// Bit of a frame prefix's rank word marking a split frame's head (see the module doc).
const SPLIT_HEAD: u32 = 1 << 31;
/// After this long without a completion, `wait` sleeps instead of polling.
const IDLE_SLEEP_AFTER: Duration = Duration::from_millis(50);
/// How long a remote read may take before it is reported as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// `FI_ADDR_NOTAVAIL`: no address (a peer this endpoint does not reach).
const ADDR_NONE: fi::fi_addr_t = u64::MAX;
/// The libfabric API version these bindings ask for.
const API_VERSION: u32 = fi::make_version(1, 11);

/// Loads libfabric (at the first use of the `ofi` fabric), or says why it cannot be loaded.
fn library() -> Result<(), String> {
    tune_providers();
    fi::load().map_err(|e| {
        format!(
            "libfabric could not be loaded ({e}); install it: `apt-get install libfabric1` on \
             Debian/Ubuntu, `dnf install libfabric` on Fedora/RHEL"
        )
    })
}

/// A libfabric call's negative return as a readable message.
fn fi_error(ret: i64, what: &str) -> String {
    let code = (-ret).clamp(0, i32::MAX as i64) as i32;
    // SAFETY: fi_strerror returns a pointer to a static NUL-terminated string for any code.
    let msg = unsafe { CStr::from_ptr(fi::fi_strerror(code)) };
    format!("{what}: {} ({ret})", msg.to_string_lossy())
}

fn setup(ret: i64, what: &str) -> Result<(), FabricError> {
    if ret < 0 {
        Err(FabricError::Setup(fi_error(ret, what)))
    } else {
        Ok(())
    }
}

/// What posting a send (inject, send, sendv) to `peer` returned: `true` once posted,
/// `false` when the provider pushed back (nothing sent); any other failure fails `peer`.
fn injected(ret: isize, peer: Rank, what: &str) -> Result<bool, FabricError> {
    match ret {
        0 => Ok(true),
        r if r == -(fi::FI_EAGAIN as isize) => Ok(false),
        r => Err(FabricError::PeerLost {
            peer,
            why: fi_error(r as i64, what),
        }),
    }
}

/// What the backend was asked for.
#[derive(Clone, Debug)]
pub struct OfiConfig {
    /// Provider name (`OXMPI_OFI_PROVIDER`); libfabric's first match when `None`.
    pub provider: Option<String>,
    /// Domain name (`OXMPI_OFI_DOMAIN`).
    pub domain: Option<String>,
    /// Every rank runs on this host: prefer the loopback domain.
    pub local_only: bool,
    /// The job's tag ([`oxmpi_bootstrap::Secret::tag32`]): frames without it are dropped.
    pub job_tag: u32,
    /// Use remote reads where the provider offers them (`OXMPI_OFI_RMA=0` turns them off:
    /// rendezvous then uses the pipeline of sends, as with a provider without RMA).
    pub rma: bool,
    /// The endpoint's name where the provider names it in the file system (the `shm`
    /// provider's region in `/dev/shm`); the provider's own name when `None`. Wire-up names
    /// it after the job and rank (`oxmpi-<job>-ofi-<rank>`): the provider's default,
    /// `<pid>:<uid>:<n>`, collides with a region left by a killed process whose pid is
    /// reused (libfabric 1.17 then fails `fi_enable` with `EBUSY`), and `oxrun` removes a
    /// job's leftovers by its name.
    pub endpoint_name: Option<String>,
}

impl OfiConfig {
    /// Reads `OXMPI_OFI_PROVIDER` and `OXMPI_OFI_DOMAIN`.
    pub fn from_env(local_only: bool) -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Self {
            provider: var("OXMPI_OFI_PROVIDER"),
            domain: var("OXMPI_OFI_DOMAIN"),
            local_only,
            job_tag: 0,
            rma: var("OXMPI_OFI_RMA").is_none_or(|v| v != "0"),
            endpoint_name: None,
        }
    }
}

/// An `fi_info` list owned by this backend (freed with `fi_freeinfo`).
struct InfoList(*mut fi::fi_info);

impl Drop for InfoList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the list came from fi_getinfo/fi_allocinfo and is freed once, here.
            unsafe { fi::fi_freeinfo(self.0) };
        }
    }
}

/// Capability bits a request names, for messages.
const CAP_NAMES: &[(u64, &str)] = &[
    (fi::FI_MSG as u64, "FI_MSG"),
    (fi::FI_RMA as u64, "FI_RMA"),
    (fi::FI_READ as u64, "FI_READ"),
    (fi::FI_REMOTE_READ as u64, "FI_REMOTE_READ"),
];

fn cap_names(bits: u64) -> String {
    let names: Vec<&str> = CAP_NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    names.join(" | ")
}

/// Size of the buffers the `ofi_rxm` utility provider receives eager messages into, set for
/// this process unless `FI_OFI_RXM_BUFFER_SIZE` is: large enough for a whole frame, so every
/// frame travels as one eager message (rxm's default, 16 KiB, would turn a 16 KiB message
/// into rxm's own slower rendezvous).
const RXM_BUFFER_SIZE: usize = SLOT + 256;

/// Sets the provider parameters oxmpi relies on, once, before libfabric is loaded and reads
/// them; values the user set are kept:
/// - `FI_OFI_RXM_BUFFER_SIZE` ([`RXM_BUFFER_SIZE`]), read at the first `fi_getinfo`;
/// - `IPATH_NO_BACKTRACE=1`, read when libfabric's PSM provider library (`libinfinipath`,
///   linked by Debian's libfabric) is loaded: otherwise its handler catches a rank's fatal
///   signals (SIGABRT, SIGSEGV, ...), prints a backtrace and exits with code 1, so `oxrun`
///   could not say which signal killed the rank.
fn tune_providers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Wire-up runs before the program starts threads that could read the environment
        // concurrently.
        if std::env::var_os("FI_OFI_RXM_BUFFER_SIZE").is_none() {
            std::env::set_var("FI_OFI_RXM_BUFFER_SIZE", RXM_BUFFER_SIZE.to_string());
        }
        if std::env::var_os("IPATH_NO_BACKTRACE").is_none() {
            std::env::set_var("IPATH_NO_BACKTRACE", "1");
        }
    });
}

/// Builds hints and calls `fi_getinfo`. `caps` 0 asks for any RDM endpoint (used to explain a
/// failure).
fn getinfo(
    provider: Option<&str>,
    domain: Option<&str>,
    caps: u64,
    strict: bool,
) -> Result<InfoList, i64> {
    tune_providers();
    // SAFETY: fi_allocinfo returns a zeroed fi_info with its attribute structs allocated, or
    // null.
    let hints = InfoList(unsafe { fi::oxmpi_fi_allocinfo() });
    if hints.0.is_null() {
        return Err(-(fi::FI_ENOMEM as i64));
    }
    // SAFETY: hints and its attribute pointers were allocated by fi_allocinfo; the strings
    // given to it are strdup'ed so fi_freeinfo can free them.
    unsafe {
        let h = &mut *hints.0;
        h.caps = caps;
        if strict {
            h.mode = fi::FI_CONTEXT | fi::FI_CONTEXT2;
            (*h.domain_attr).mr_mode =
                (fi::FI_MR_LOCAL | fi::FI_MR_VIRT_ADDR | fi::FI_MR_ALLOCATED | fi::FI_MR_PROV_KEY)
                    as i32;
            (*h.domain_attr).threading = fi::fi_threading_FI_THREAD_DOMAIN;
            (*h.tx_attr).msg_order = fi::FI_ORDER_SAS as u64;
            (*h.rx_attr).msg_order = fi::FI_ORDER_SAS as u64;
        } else {
            h.mode = !0;
            // Every mode bit but the legacy FI_MR_BASIC (1) and FI_MR_SCALABLE (2).
            (*h.domain_attr).mr_mode = !3;
        }
        (*h.ep_attr).type_ = fi::fi_ep_type_FI_EP_RDM;
        if let Some(p) = provider.and_then(|p| CString::new(p).ok()) {
            (*h.fabric_attr).prov_name = libc::strdup(p.as_ptr());
        }
        if let Some(d) = domain.and_then(|d| CString::new(d).ok()) {
            (*h.domain_attr).name = libc::strdup(d.as_ptr());
        }
    }
    let mut info = ptr::null_mut();
    // SAFETY: valid hints; info receives a list we own (freed by InfoList).
    let ret =
        unsafe { fi::fi_getinfo(API_VERSION, ptr::null(), ptr::null(), 0, hints.0, &mut info) };
    if ret < 0 {
        return Err(ret as i64);
    }
    Ok(InfoList(info))
}

/// Why no provider matched: what the named (or any) provider offers against what was asked.
fn explain(provider: Option<&str>, domain: Option<&str>, wanted: u64) -> String {
    let who = provider.map_or("no provider".to_string(), |p| format!("provider {p:?}"));
    let Ok(any) = getinfo(provider, domain, 0, false) else {
        let named = provider.map_or("any provider".to_string(), |p| {
            format!("a provider named {p:?}")
        });
        return format!(
            "libfabric has no {named} with reliable-datagram (RDM) endpoints{} (`fi_info -l` lists the providers)",
            domain.map_or(String::new(), |d| format!(" in domain {d:?}"))
        );
    };
    let mut lacks = Vec::new();
    let mut p = any.0;
    while !p.is_null() {
        // SAFETY: p walks the list fi_getinfo returned, which `any` keeps alive.
        let i = unsafe { &*p };
        let missing = wanted & !i.caps;
        // SAFETY: attribute pointers of a returned fi_info are valid.
        let (mr_mode, order) = unsafe { ((*i.domain_attr).mr_mode, (*i.tx_attr).msg_order) };
        let mut why = Vec::new();
        if missing != 0 {
            why.push(format!("lacks {}", cap_names(missing)));
        }
        if order & fi::FI_ORDER_SAS as u64 == 0 {
            why.push("does not keep send-after-send order (FI_ORDER_SAS)".into());
        }
        let handled =
            (fi::FI_MR_LOCAL | fi::FI_MR_VIRT_ADDR | fi::FI_MR_ALLOCATED | fi::FI_MR_PROV_KEY)
                as i32;
        if mr_mode & !handled != 0 {
            why.push(format!(
                "needs memory-registration modes {:#x} oxmpi does not handle",
                mr_mode & !handled
            ));
        }
        if i.mode & !(fi::FI_CONTEXT | fi::FI_CONTEXT2) != 0 {
            why.push(format!(
                "needs operating modes {:#x}",
                i.mode & !(fi::FI_CONTEXT | fi::FI_CONTEXT2)
            ));
        }
        // SAFETY: fabric_attr of a returned fi_info is valid; prov_name is a C string or null.
        let name = unsafe {
            let n = (*i.fabric_attr).prov_name;
            if n.is_null() {
                "?".into()
            } else {
                CStr::from_ptr(n).to_string_lossy().into_owned()
            }
        };
        if !why.is_empty() {
            lacks.push(format!("{name}: {}", why.join(", ")));
        }
        p = i.next;
    }
    lacks.dedup();
    if lacks.is_empty() {
        format!("{who} matched nothing for {}", cap_names(wanted))
    } else {
        format!("{who} does not fit: {}", lacks.join("; "))
    }
}

/// Providers that run over the host's own network stack or memory: `auto` does not prefer
/// them to oxmpi's own TCP and shared-memory backends.
const SOFTWARE_PROVIDERS: &[&str] = &["tcp", "udp", "sockets", "shm", "sm2", "net"];

/// A provider name without its utility layer (`tcp;ofi_rxm` → `tcp`).
fn core_name(name: &str) -> &str {
    name.split(';').next().unwrap_or("")
}

/// The provider `auto` would use between nodes: `OXMPI_OFI_PROVIDER` if set and usable, else
/// the first provider that is not a software one. The error says why there is none.
pub fn network_provider(config: &OfiConfig) -> Result<String, String> {
    library()?;
    let want = fi::FI_MSG as u64;
    let list = getinfo(
        config.provider.as_deref(),
        config.domain.as_deref(),
        want,
        true,
    )
    .map_err(|_| explain(config.provider.as_deref(), config.domain.as_deref(), want))?;
    let mut seen = Vec::new();
    let mut p = list.0;
    while !p.is_null() {
        // SAFETY: p walks the list fi_getinfo returned, which `list` keeps alive; prov_name is
        // a C string or null.
        let (name, next) = unsafe {
            let n = (*(*p).fabric_attr).prov_name;
            let name = if n.is_null() {
                String::new()
            } else {
                CStr::from_ptr(n).to_string_lossy().into_owned()
            };
            (name, (*p).next)
        };
        if config.provider.is_some() || !SOFTWARE_PROVIDERS.contains(&core_name(&name)) {
            return Ok(name);
        }
        if !seen.contains(&name) {
            seen.push(name);
        }
        p = next;
    }
    Err(format!(
        "only software providers ({}), which oxmpi's own tcp and shm backends replace",
        seen.join(", ")
    ))
}

/// A memory registration (closed on drop).
struct Mr(*mut fi::fid_mr);

impl Mr {
    fn register(
        domain: *mut fi::fid_domain,
        mem: *const u8,
        len: usize,
        access: u64,
        requested_key: u64,
    ) -> Result<Self, String> {
        let mut mr = ptr::null_mut();
        // SAFETY: domain is open; mem..mem+len is memory the caller keeps alive while the
        // registration exists.
        let ret = unsafe {
            fi::oxmpi_fi_mr_reg(
                domain,
                mem.cast(),
                len,
                access,
                0,
                requested_key,
                0,
                &mut mr,
                ptr::null_mut(),
            )
        };
        if ret < 0 {
            return Err(fi_error(ret as i64, "fi_mr_reg"));
        }
        Ok(Self(mr))
    }

    fn desc(&self) -> *mut c_void {
        // SAFETY: an open registration.
        unsafe { fi::oxmpi_fi_mr_desc(self.0) }
    }

    fn key(&self) -> u64 {
        // SAFETY: an open registration.
        unsafe { fi::oxmpi_fi_mr_key(self.0) }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: closing a registration this backend opened, once.
        unsafe { fi::oxmpi_fi_close(&mut (*self.0).fid) };
    }
}

/// Registers user buffers for the [registration cache](crate::regcache).
struct OfiRegistrar {
    domain: *mut fi::fid_domain,
    /// The provider chooses keys (`FI_MR_PROV_KEY`); else keys come from `next_key`.
    prov_key: bool,
    next_key: u64,
}

impl Registrar for OfiRegistrar {
    type Handle = Mr;

    fn register(&mut self, addr: usize, len: usize, access: Access) -> Result<Mr, FabricError> {
        let mut flags = 0u64;
        if access.contains(Access::LOCAL_READ) {
            flags |= (fi::FI_SEND | fi::FI_WRITE) as u64;
        }
        if access.contains(Access::LOCAL_WRITE) {
            flags |= (fi::FI_RECV | fi::FI_READ) as u64;
        }
        if access.contains(Access::REMOTE_READ) {
            flags |= fi::FI_REMOTE_READ as u64;
        }
        if access.contains(Access::REMOTE_WRITE) {
            flags |= fi::FI_REMOTE_WRITE as u64;
        }
        let key = if self.prov_key { 0 } else { self.next_key };
        self.next_key += 1;
        Mr::register(self.domain, addr as *const u8, len, flags, key).map_err(FabricError::Rma)
    }

    fn deregister(&mut self, handle: Mr) {
        drop(handle);
    }
}

/// A block of bounce buffers, registered once.
struct Slab {
    mem: Box<[u8]>,
    mr: Option<Mr>,
}

impl Slab {
    fn new(domain: *mut fi::fid_domain, bytes: usize, register: bool) -> Result<Self, FabricError> {
        let mem = vec![0u8; bytes].into_boxed_slice();
        let mr = if register {
            let access = (fi::FI_SEND | fi::FI_RECV) as u64;
            Some(Mr::register(domain, mem.as_ptr(), bytes, access, 0).map_err(FabricError::Setup)?)
        } else {
            None
        };
        Ok(Self { mem, mr })
    }

    fn slot(&mut self, i: usize) -> *mut u8 {
        self.mem[i * SLOT..].as_mut_ptr()
    }

    /// The first `len` bytes of slot `i` (at most a slot).
    fn bytes(&self, i: usize, len: usize) -> &[u8] {
        &self.mem[i * SLOT..i * SLOT + len.min(SLOT)]
    }

    fn desc(&self) -> *mut c_void {
        self.mr.as_ref().map_or(ptr::null_mut(), Mr::desc)
    }
}

/// The libfabric objects of one endpoint, closed in reverse order of opening.
struct Endpoint {
    fabric: *mut fi::fid_fabric,
    domain: *mut fi::fid_domain,
    cq: *mut fi::fid_cq,
    av: *mut fi::fid_av,
    ep: *mut fi::fid_ep,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: each object was opened by Ofi::open and is closed once, endpoint first.
        unsafe {
            for fid in [
                self.ep.cast::<fi::fid>(),
                self.av.cast(),
                self.cq.cast(),
                self.domain.cast(),
                self.fabric.cast(),
            ] {
                if !fid.is_null() {
                    fi::oxmpi_fi_close(fid);
                }
            }
        }
    }
}

/// Which operation a completion belongs to, from its context pointer.
enum Op {
    Recv(usize),
    Send(usize),
    Read,
}

/// The libfabric fabric of one rank. Fields drop in order: registrations and buffers before
/// the endpoint that owns their domain.
pub struct Ofi {
    rank: Rank,
    size: u32,
    caps: Caps,
    provider: String,
    addrs: Vec<fi::fi_addr_t>,
    inject_max: usize,
    mr_local: bool,
    virt_addr: bool,
    max_msg: usize,
    rx: Slab,
    tx: Slab,
    tx_free: Vec<usize>,
    tx_peer: Vec<Rank>,
    /// The token of the lent send each slot carries the frame head of (`None`: a copied
    /// frame).
    tx_token: Vec<Option<u64>>,
    /// Lent sends completed since the last poll: (peer, token), reported by `poll`.
    lent_done: Vec<(Rank, u64)>,
    /// Sends that went out in place (`ofi.lent_sends`).
    lent_sends: u64,
    /// Receive slots to post again at the next poll (delivered, or the provider said EAGAIN).
    repost: Vec<usize>,
    /// Receives completed and not yet delivered: (slot, length, remote CQ data), handed out
    /// by the next poll.
    arrived: VecDeque<(usize, usize, Option<u64>)>,
    /// Largest payload sent as a split frame (0: never; see the module doc).
    split_max: usize,
    /// Split frames sent (`ofi.split_sends`).
    split_sends: u64,
    /// Split frames' payloads the provider pushed back after their heads went out, with
    /// their peers (at most one per peer): each is posted before anything else to its peer,
    /// and sends to that peer wait until it is.
    split_pending: Vec<(Rank, Vec<u8>)>,
    /// Failures found where they cannot be returned (`wait`, a send's reading of completions
    /// that belong to another peer, posting `split_pending`), reported by the next `poll`s in
    /// the order found.
    deferred: VecDeque<FabricError>,
    /// Per sender: the head of a split frame whose payload has not arrived yet.
    split_heads: Vec<Option<Header>>,
    /// Outcome of the read in flight.
    read_done: Option<Result<(), String>>,
    /// The job's tag, first word of every frame.
    job_tag: u32,
    /// Messages dropped for lacking the tag.
    foreign: u64,
    /// Completions read so far, and the count `wait` last saw.
    completions: u64,
    completions_seen: u64,
    /// When `wait` last saw a completion (or the endpoint opened).
    idle_since: Instant,
    /// User buffers registered for reads (lent ones and read destinations).
    cache: RegCache<OfiRegistrar>,
    registrar: OfiRegistrar,
    /// Registrations lent to peers, by key: one lease each, and how many more times the key
    /// is lent (a cached registration lent twice needs no second lease to stay registered),
    /// so lending and releasing allocate nothing.
    lent: HashMap<u64, (Lease, u32)>,
    scratch: Box<[u8; PREFIX + HEADER_LEN + INJECT_CAP]>,
    /// Operation contexts: RX_SLOTS receives, TX_SLOTS sends, one read.
    ctx: Box<[fi::fi_context2]>,
    ep: Endpoint,
    _info: InfoList,
}

impl Ofi {
    /// Opens an endpoint as `config` asks. The returned address goes to the peers through
    /// the bootstrap exchange; [`Ofi::connect`] then takes theirs.
    pub fn open(rank: Rank, size: u32, config: &OfiConfig) -> Result<Self, FabricError> {
        library().map_err(FabricError::Setup)?;
        let want_rma = (fi::FI_MSG | fi::FI_RMA | fi::FI_READ | fi::FI_REMOTE_READ) as u64;
        let want_msg = fi::FI_MSG as u64;
        let provider = config.provider.as_deref();
        let mut domains: Vec<Option<&str>> = vec![config.domain.as_deref()];
        if config.domain.is_none() && config.local_only {
            domains.insert(0, Some("lo"));
        }
        let mut found = None;
        'search: for d in &domains {
            for caps in [want_rma, want_msg] {
                if caps == want_rma && !config.rma {
                    continue;
                }
                if let Ok(list) = getinfo(provider, *d, caps, true) {
                    found = Some((list, caps == want_rma));
                    break 'search;
                }
            }
        }
        let Some((info, rma)) = found else {
            return Err(FabricError::Setup(format!(
                "libfabric: {}",
                explain(provider, config.domain.as_deref(), want_rma)
            )));
        };
        // SAFETY: fi_getinfo returned a non-empty list; its first entry and attributes are
        // valid while `info` lives.
        let (i, prov_name, mr_mode, inject, max_msg, cq_data) = unsafe {
            let i = info.0;
            let name = CStr::from_ptr((*(*i).fabric_attr).prov_name)
                .to_string_lossy()
                .into_owned();
            (
                i,
                name,
                (*(*i).domain_attr).mr_mode as u32,
                (*(*i).tx_attr).inject_size,
                (*(*i).ep_attr).max_msg_size,
                (*(*i).domain_attr).cq_data_size,
            )
        };
        let mut ep = Endpoint {
            fabric: ptr::null_mut(),
            domain: ptr::null_mut(),
            cq: ptr::null_mut(),
            av: ptr::null_mut(),
            ep: ptr::null_mut(),
        };
        // SAFETY: each call gets the objects opened before it; failures leave the Endpoint
        // with what was opened so far, which its Drop closes.
        unsafe {
            setup(
                fi::oxmpi_fi_fabric((*i).fabric_attr, &mut ep.fabric) as i64,
                "fi_fabric",
            )?;
            setup(
                fi::oxmpi_fi_domain(ep.fabric, i, &mut ep.domain) as i64,
                "fi_domain",
            )?;
            let mut cq_attr = fi::fi_cq_attr {
                size: 4 * (RX_SLOTS + TX_SLOTS),
                format: fi::fi_cq_format_FI_CQ_FORMAT_DATA,
                wait_obj: fi::fi_wait_obj_FI_WAIT_NONE,
                ..Default::default()
            };
            setup(
                fi::oxmpi_fi_cq_open(ep.domain, &mut cq_attr, &mut ep.cq) as i64,
                "fi_cq_open",
            )?;
            let mut av_attr = fi::fi_av_attr {
                type_: fi::fi_av_type_FI_AV_TABLE,
                count: size as usize,
                ..Default::default()
            };
            setup(
                fi::oxmpi_fi_av_open(ep.domain, &mut av_attr, &mut ep.av) as i64,
                "fi_av_open",
            )?;
            setup(
                fi::oxmpi_fi_endpoint(ep.domain, i, &mut ep.ep) as i64,
                "fi_endpoint",
            )?;
            let flags = (fi::FI_TRANSMIT | fi::FI_RECV) as u64;
            setup(
                fi::oxmpi_fi_ep_bind(ep.ep, &mut (*ep.cq).fid, flags) as i64,
                "fi_ep_bind(cq)",
            )?;
            setup(
                fi::oxmpi_fi_ep_bind(ep.ep, &mut (*ep.av).fid, 0) as i64,
                "fi_ep_bind(av)",
            )?;
            // Only the shm provider takes a name of ours: elsewhere `fi_setname` sets a
            // network address. It copies the name (the provider only reads the bytes, so
            // the `*mut` cast writes nothing), and must come before `fi_enable`.
            if let (true, Some(name)) = (prov_name == "shm", &config.endpoint_name) {
                let name = CString::new(name.as_str()).map_err(|_| {
                    FabricError::Setup(format!("endpoint name {name:?} holds a NUL byte"))
                })?;
                let bytes = name.as_bytes_with_nul();
                setup(
                    fi::oxmpi_fi_setname(
                        &mut (*ep.ep).fid,
                        bytes.as_ptr() as *mut c_void,
                        bytes.len(),
                    ) as i64,
                    "fi_setname",
                )?;
            }
            setup(fi::oxmpi_fi_enable(ep.ep) as i64, "fi_enable")?;
        }
        let mr_local = mr_mode & fi::FI_MR_LOCAL != 0;
        let rx = Slab::new(ep.domain, RX_SLOTS * SLOT, mr_local)?;
        let tx = Slab::new(ep.domain, TX_SLOTS * SLOT, mr_local)?;
        // Over rxm every frame is one eager message (RXM_BUFFER_SIZE): eager up to a frame.
        let default_eager = if prov_name.contains("ofi_rxm") {
            MAX_PAYLOAD
        } else {
            EAGER_MAX
        };
        let eager_max = crate::shm::env_usize("OXMPI_OFI_EAGER_MAX")
            .unwrap_or(default_eager)
            .min(MAX_PAYLOAD);
        // Over the shm provider a frame beyond its inject size is read by the receiving
        // process (process_vm_readv) straight from the sender's memory: send the payload from
        // where it is rather than copying it into a bounce buffer first. Only there: the
        // reader is the peer, so a send failed with its peer leaves nothing of ours reading the
        // buffer after it returns to the user.
        // There too, a payload the inject size holds only without the head goes as a split
        // frame (`OXMPI_OFI_SPLIT=0` turns that off), and frames go in place from beyond it.
        let shm = prov_name == "shm";
        let split_max =
            if shm && cq_data >= 8 && std::env::var("OXMPI_OFI_SPLIT").map_or(true, |v| v != "0") {
                inject.min(INJECT_CAP)
            } else {
                0
            };
        let lent_min = if shm {
            crate::shm::env_usize("OXMPI_OFI_LENT_MIN")
                .unwrap_or(if split_max > 0 {
                    split_max + 1
                } else {
                    (inject + 1).saturating_sub(PREFIX + HEADER_LEN)
                })
                .max(1)
        } else {
            usize::MAX
        };
        let caps = Caps {
            name: "ofi",
            rma_read: rma,
            max_payload: MAX_PAYLOAD,
            eager_max,
            rndv_read_min: if rma { eager_max + 1 } else { usize::MAX },
            rndv_read_max: usize::MAX,
            pipeline_chunk: MAX_PAYLOAD,
            lent_min,
            model: PerfModel {
                latency_us: 5.0,
                bandwidth_gbs: 5.0,
            },
        };
        let mut me = Self {
            rank,
            size,
            caps,
            provider: prov_name.clone(),
            addrs: Vec::new(),
            inject_max: inject.min(INJECT_CAP + PREFIX + HEADER_LEN),
            mr_local,
            virt_addr: mr_mode & fi::FI_MR_VIRT_ADDR != 0,
            max_msg: max_msg.clamp(4096, 1 << 30),
            rx,
            tx,
            tx_free: (0..TX_SLOTS).rev().collect(),
            tx_peer: vec![0; TX_SLOTS],
            tx_token: vec![None; TX_SLOTS],
            lent_done: Vec::new(),
            lent_sends: 0,
            repost: Vec::new(),
            arrived: VecDeque::new(),
            split_max,
            split_sends: 0,
            split_pending: Vec::new(),
            deferred: VecDeque::new(),
            split_heads: vec![None; size as usize],
            read_done: None,
            job_tag: config.job_tag,
            foreign: 0,
            completions: 0,
            completions_seen: 0,
            idle_since: Instant::now(),
            cache: RegCache::with_monitor(CacheConfig {
                // Software providers resolve addresses at each use; hardware ones pin pages.
                needs_invalidation: !SOFTWARE_PROVIDERS.contains(&core_name(&prov_name)),
                ..CacheConfig::default()
            }),
            registrar: OfiRegistrar {
                domain: ep.domain,
                prov_key: mr_mode & fi::FI_MR_PROV_KEY != 0,
                next_key: 1,
            },
            lent: HashMap::new(),
            scratch: Box::new([0; PREFIX + HEADER_LEN + INJECT_CAP]),
            ctx: vec![fi::fi_context2::default(); RX_SLOTS + TX_SLOTS + 1].into_boxed_slice(),
            ep,
            _info: info,
        };
        for slot in 0..RX_SLOTS {
            me.post_recv(slot)?;
        }
        Ok(me)
    }

    /// The provider in use.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// This endpoint's address, for the peers.
    pub fn address(&self) -> Result<Vec<u8>, FabricError> {
        let mut buf = vec![0u8; 256];
        let mut len = buf.len();
        // SAFETY: an enabled endpoint; buf has len bytes.
        let ret =
            unsafe { fi::oxmpi_fi_getname(self.ep.ep.cast(), buf.as_mut_ptr().cast(), &mut len) };
        setup(ret as i64, "fi_getname")?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Fills the address vector with every rank's address (`addrs[r]` for rank `r`; an empty
    /// entry for a rank this endpoint does not reach).
    pub fn connect(&mut self, addrs: &[Vec<u8>]) -> Result<(), FabricError> {
        if addrs.len() != self.size as usize {
            return Err(FabricError::Setup(format!(
                "{} addresses for {} ranks",
                addrs.len(),
                self.size
            )));
        }
        self.addrs = vec![ADDR_NONE; addrs.len()];
        for (r, a) in addrs.iter().enumerate() {
            if a.is_empty() {
                // A peer reached by another backend (or this rank): no address.
                continue;
            }
            // SAFETY: an open address vector; `a` holds one address in the provider's format
            // (as fi_getname produced it on rank r); one fi_addr_t is written.
            let ret = unsafe {
                fi::oxmpi_fi_av_insert(self.ep.av, a.as_ptr().cast(), 1, &mut self.addrs[r], 0)
            };
            if ret != 1 {
                return Err(FabricError::Setup(fi_error(
                    ret.min(0) as i64,
                    &format!("fi_av_insert of rank {r}'s address"),
                )));
            }
        }
        Ok(())
    }

    fn ctx_ptr(&mut self, i: usize) -> *mut c_void {
        (&mut self.ctx[i] as *mut fi::fi_context2).cast()
    }

    fn op_of(&self, ctx: *mut c_void) -> Option<Op> {
        let base = self.ctx.as_ptr() as usize;
        let off = (ctx as usize).checked_sub(base)?;
        let i = off / std::mem::size_of::<fi::fi_context2>();
        match i {
            _ if i < RX_SLOTS => Some(Op::Recv(i)),
            _ if i < RX_SLOTS + TX_SLOTS => Some(Op::Send(i - RX_SLOTS)),
            _ if i == RX_SLOTS + TX_SLOTS => Some(Op::Read),
            _ => None,
        }
    }

    fn post_recv(&mut self, slot: usize) -> Result<(), FabricError> {
        if !self.try_post_recv(slot)? {
            self.repost.push(slot);
        }
        Ok(())
    }

    /// Posts receive slot `slot`; `false` if the provider pushed back.
    fn try_post_recv(&mut self, slot: usize) -> Result<bool, FabricError> {
        let ctx = self.ctx_ptr(slot);
        let buf = self.rx.slot(slot);
        let desc = self.rx.desc();
        // SAFETY: the slot's SLOT bytes stay allocated (and registered) until the endpoint
        // is closed; its context is unique to it.
        let ret = unsafe { fi::oxmpi_fi_recv(self.ep.ep, buf.cast(), SLOT, desc, u64::MAX, ctx) };
        match ret {
            0 => Ok(true),
            r if r == -(fi::FI_EAGAIN as isize) => Ok(false),
            r => Err(FabricError::Setup(fi_error(r as i64, "fi_recv"))),
        }
    }

    /// Posts the slots waiting in `repost`, as far as the provider takes them.
    fn repost_slots(&mut self) -> Result<(), FabricError> {
        while let Some(&slot) = self.repost.last() {
            if !self.try_post_recv(slot)? {
                break;
            }
            self.repost.pop();
        }
        Ok(())
    }

    /// Reads completions. Receives go to `arrived` (handed out by `poll`); sends free their
    /// slots; the read sets `read_done`. Returns how many completions it read.
    fn reap(&mut self) -> Result<usize, FabricError> {
        let mut total = 0;
        loop {
            // Not zeroed: this runs on every poll, and the provider writes the entries it
            // returns.
            let mut entries = [const { MaybeUninit::<fi::fi_cq_data_entry>::uninit() }; CQ_BATCH];
            // SAFETY: an open CQ of FI_CQ_FORMAT_DATA entries; room for CQ_BATCH of them.
            let ret =
                unsafe { fi::oxmpi_fi_cq_read(self.ep.cq, entries.as_mut_ptr().cast(), CQ_BATCH) };
            if ret == -(fi::FI_EAGAIN as isize) {
                return Ok(total);
            }
            if ret == -(fi::FI_EAVAIL as isize) {
                self.cq_error()?;
                total += 1;
                continue;
            }
            if ret < 0 {
                return Err(FabricError::Setup(fi_error(ret as i64, "fi_cq_read")));
            }
            let n = ret as usize;
            for e in &entries[..n] {
                // SAFETY: fi_cq_read wrote the first `n` entries.
                let e = unsafe { e.assume_init_ref() };
                match self.op_of(e.op_context) {
                    Some(Op::Recv(slot)) => {
                        let data = (e.flags & fi::FI_REMOTE_CQ_DATA as u64 != 0).then_some(e.data);
                        self.arrived.push_back((slot, e.len, data));
                    }
                    Some(Op::Send(slot)) => {
                        if let Some(token) = self.tx_token[slot].take() {
                            self.lent_done.push((self.tx_peer[slot], token));
                        }
                        self.tx_free.push(slot);
                    }
                    Some(Op::Read) => self.read_done = Some(Ok(())),
                    None => {}
                }
            }
            total += n;
            self.completions += n as u64;
            if n < CQ_BATCH {
                return Ok(total);
            }
        }
    }

    /// [`reap`](Self::reap) where nothing can return an error (`wait`): a failure (a send's
    /// error completion fails its peer) is kept for the next `poll` and counts as progress.
    fn reap_deferring(&mut self) -> usize {
        match self.reap() {
            Ok(n) => n,
            Err(e) => {
                self.deferred.push_back(e);
                1
            }
        }
    }

    /// Reads one error completion and reports it against its operation.
    fn cq_error(&mut self) -> Result<(), FabricError> {
        let mut e = fi::fi_cq_err_entry::default();
        // SAFETY: an open CQ; e is a valid error entry to fill.
        let ret = unsafe { fi::oxmpi_fi_cq_readerr(self.ep.cq, &mut e, 0) };
        if ret < 0 {
            return Ok(());
        }
        let mut text = [0 as libc::c_char; 256];
        // SAFETY: fi_cq_strerror writes at most len bytes into text and returns a C string
        // (text or a static one).
        let why = unsafe {
            let s = fi::oxmpi_fi_cq_strerror(
                self.ep.cq,
                e.prov_errno,
                e.err_data,
                text.as_mut_ptr(),
                text.len(),
            );
            if s.is_null() {
                format!("error {}", e.err)
            } else {
                CStr::from_ptr(s).to_string_lossy().into_owned()
            }
        };
        match self.op_of(e.op_context) {
            Some(Op::Recv(slot)) => {
                // A failed or truncated receive: the frame is lost; say so, keep the slot.
                eprintln!("oxmpi: ofi receive failed ({why}); frame dropped");
                self.post_recv(slot)
            }
            Some(Op::Send(slot)) => {
                // A lent send's request fails with its peer (the engine's `fail_peer`).
                self.tx_token[slot] = None;
                self.tx_free.push(slot);
                Err(FabricError::PeerLost {
                    peer: self.tx_peer[slot],
                    why: format!("libfabric send failed: {why}"),
                })
            }
            Some(Op::Read) => {
                self.read_done = Some(Err(why));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Hands one received message to `on` (a frame, or a split frame once its payload is
    /// here) and queues its buffer for posting again. `data` is the message's remote CQ data: only the
    /// payload of a split frame carries it.
    fn deliver(
        &mut self,
        slot: usize,
        len: usize,
        data: Option<u64>,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), FabricError> {
        let result = match data {
            Some(data) => self.deliver_split_payload(slot, len, data, on),
            None => self.deliver_frame(slot, len, on),
        };
        // Posted again by the next poll: after the caller has acted on the frame (a reply
        // goes out first), not on its way to it.
        self.repost.push(slot);
        result
    }

    fn deliver_frame(
        &mut self,
        slot: usize,
        len: usize,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), FabricError> {
        let bytes = self.rx.bytes(slot, len);
        let word = |i: usize| {
            bytes
                .get(i..i + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        let word = match (word(0), word(4)) {
            (Some(tag), Some(w)) if tag == self.job_tag && (w & !SPLIT_HEAD) < self.size => w,
            _ => {
                self.foreign_message(len);
                return Ok(());
            }
        };
        let src = word & !SPLIT_HEAD;
        let bad = |why: String| Err(FabricError::BadFrame { peer: src, why });
        if len < PREFIX + HEADER_LEN {
            self.split_heads[src as usize] = None;
            return bad(format!("{len}-byte message is shorter than a frame"));
        }
        let header: &Header = bytes[PREFIX..PREFIX + HEADER_LEN]
            .try_into()
            .expect("header length");
        let waiting = &mut self.split_heads[src as usize];
        if waiting.is_some() {
            *waiting = None;
            return bad("a frame arrived between a split frame's head and its payload".into());
        }
        if word & SPLIT_HEAD != 0 {
            if len != PREFIX + HEADER_LEN {
                return bad(format!("a split frame's head of {len} bytes"));
            }
            *waiting = Some(*header);
            return Ok(());
        }
        on(Event::Frame {
            peer: src,
            header,
            payload: &bytes[PREFIX + HEADER_LEN..],
        });
        Ok(())
    }

    /// The payload of a split frame: `data` is the sender's frame prefix (job tag, rank).
    fn deliver_split_payload(
        &mut self,
        slot: usize,
        len: usize,
        data: u64,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), FabricError> {
        let (tag, src) = (data as u32, (data >> 32) as u32);
        if tag != self.job_tag || src >= self.size {
            self.foreign_message(len);
            return Ok(());
        }
        let Some(header) = self.split_heads[src as usize].take() else {
            return Err(FabricError::BadFrame {
                peer: src,
                why: "a split frame's payload arrived without its head".into(),
            });
        };
        on(Event::Frame {
            peer: src,
            header: &header,
            payload: self.rx.bytes(slot, len),
        });
        Ok(())
    }

    /// Counts (and now and then logs) a message not from this job: without its tag (a
    /// sender without the job's secret) or not a frame.
    fn foreign_message(&mut self, len: usize) {
        self.foreign += 1;
        if self.foreign.is_power_of_two() {
            eprintln!(
                "oxmpi: ofi: rank {}: dropped a {len}-byte message without this job's tag \
                 ({} so far)",
                self.rank, self.foreign
            );
        }
    }

    /// A free send slot, reading completions first if none is free.
    fn take_slot(&mut self) -> Result<Option<usize>, FabricError> {
        if self.tx_free.is_empty() {
            self.reap_deferring();
        }
        Ok(self.tx_free.pop())
    }

    /// Writes the frame's prefix and `header` at the start of send slot `slot` (taken from
    /// the free list); returns the slot's address.
    fn write_head(&mut self, slot: usize, header: &Header) -> *mut u8 {
        let prefix = self.frame_prefix();
        let buf = self.tx.slot(slot);
        // SAFETY: every slot has room for the prefix and header, and this one is not in
        // flight (it came off the free list).
        unsafe {
            ptr::copy_nonoverlapping(prefix.as_ptr(), buf, PREFIX);
            ptr::copy_nonoverlapping(header.as_ptr(), buf.add(PREFIX), HEADER_LEN);
        }
        buf
    }

    /// What posting a send from `slot` to `peer` returned: `true` once posted (the slot is
    /// `peer`'s until its completion); `false` when the provider pushed back (the slot is free
    /// again); an error fails the peer.
    fn posted(
        &mut self,
        ret: isize,
        slot: usize,
        peer: Rank,
        what: &str,
    ) -> Result<bool, FabricError> {
        let sent = injected(ret, peer, what);
        match sent {
            Ok(true) => self.tx_peer[slot] = peer,
            Ok(false) => {
                self.tx_free.push(slot);
                self.reap_deferring();
            }
            Err(_) => self.tx_free.push(slot),
        }
        sent
    }

    /// Sends a frame whose payload fits the inject size only without the head: the head
    /// (rank word marked with [`SPLIT_HEAD`]) as one inject, then the payload with the prefix
    /// as remote CQ data. A payload the provider pushes back once the head is out waits (a
    /// copy in `split_pending`), posted before anything else to its peer.
    fn send_split(
        &mut self,
        peer: Rank,
        dest: fi::fi_addr_t,
        header: &Header,
        payload: &[u8],
    ) -> Result<Sent, FabricError> {
        let mut head = [0u8; PREFIX + HEADER_LEN];
        head[..PREFIX].copy_from_slice(&self.frame_prefix());
        head[4..PREFIX].copy_from_slice(&(self.rank | SPLIT_HEAD).to_le_bytes());
        head[PREFIX..].copy_from_slice(header);
        // SAFETY: an enabled endpoint; inject copies the bytes before returning.
        let ret =
            unsafe { fi::oxmpi_fi_inject(self.ep.ep, head.as_ptr().cast(), head.len(), dest) };
        if !injected(ret, peer, "fi_inject")? {
            self.reap_deferring();
            return Ok(Sent::WouldBlock);
        }
        self.split_sends += 1;
        let data = self.split_data();
        // SAFETY: as above; the payload fits the inject size (`split_max`).
        let ret = unsafe {
            fi::oxmpi_fi_injectdata(
                self.ep.ep,
                payload.as_ptr().cast(),
                payload.len(),
                data,
                dest,
            )
        };
        if !injected(ret, peer, "fi_injectdata")? {
            // Rare (the peer's queue filled between the two injects): keep a copy.
            self.split_pending.push((peer, payload.to_vec()));
        }
        Ok(Sent::Done)
    }

    /// Posts the split payloads the provider pushed back, as far as it takes them now;
    /// returns how many went out (or failed, which fails their peer at the next `poll`).
    fn flush_split_payloads(&mut self) -> usize {
        let (mut done, mut pushed_back, mut i) = (0, false, 0);
        let data = self.split_data();
        while i < self.split_pending.len() {
            let peer = self.split_pending[i].0;
            let outcome = self.peer_addr(peer).and_then(|dest| {
                let bytes = &self.split_pending[i].1;
                // SAFETY: an enabled endpoint; inject copies the bytes before returning.
                let ret = unsafe {
                    fi::oxmpi_fi_injectdata(
                        self.ep.ep,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        data,
                        dest,
                    )
                };
                injected(ret, peer, "fi_injectdata")
            });
            match outcome {
                Ok(false) => {
                    pushed_back = true;
                    i += 1;
                    continue;
                }
                Ok(true) => {}
                Err(e) => self.deferred.push_back(e),
            }
            // One entry per peer: the order among entries does not matter.
            self.split_pending.swap_remove(i);
            done += 1;
        }
        if pushed_back {
            self.reap_deferring();
        }
        done
    }

    /// Posts pushed-back split payloads; `false` if one to `peer` is still waiting (nothing
    /// else may go to `peer` before it).
    fn split_payloads_flushed_to(&mut self, peer: Rank) -> bool {
        if self.split_pending.is_empty() {
            return true;
        }
        self.flush_split_payloads();
        !self.split_pending.iter().any(|(p, _)| *p == peer)
    }

    /// The remote CQ data of a split frame's payload: the frame prefix as one word.
    fn split_data(&self) -> u64 {
        u64::from_le_bytes(self.frame_prefix())
    }

    fn frame_prefix(&self) -> [u8; PREFIX] {
        let mut p = [0u8; PREFIX];
        p[..4].copy_from_slice(&self.job_tag.to_le_bytes());
        p[4..].copy_from_slice(&self.rank.to_le_bytes());
        p
    }

    fn peer_addr(&self, peer: Rank) -> Result<fi::fi_addr_t, FabricError> {
        self.addrs
            .get(peer as usize)
            .copied()
            .filter(|&a| a != ADDR_NONE)
            .ok_or_else(|| FabricError::PeerLost {
                peer,
                why: "no libfabric address for this rank".into(),
            })
    }
}

impl Fabric for Ofi {
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
        if !self.split_payloads_flushed_to(peer) {
            return Ok(Sent::WouldBlock);
        }
        let dest = self.peer_addr(peer)?;
        let total = PREFIX + HEADER_LEN + payload.len();
        if total <= self.inject_max {
            let prefix = self.frame_prefix();
            let buf = &mut self.scratch[..total];
            buf[..PREFIX].copy_from_slice(&prefix);
            buf[PREFIX..PREFIX + HEADER_LEN].copy_from_slice(header);
            buf[PREFIX + HEADER_LEN..].copy_from_slice(payload);
            // SAFETY: an enabled endpoint; inject copies the bytes before returning.
            let ret = unsafe { fi::oxmpi_fi_inject(self.ep.ep, buf.as_ptr().cast(), total, dest) };
            if !injected(ret, peer, "fi_inject")? {
                self.reap_deferring();
                return Ok(Sent::WouldBlock);
            }
            return Ok(Sent::Done);
        }
        if payload.len() <= self.split_max {
            return self.send_split(peer, dest, header, payload);
        }
        let Some(slot) = self.take_slot()? else {
            return Ok(Sent::WouldBlock);
        };
        let buf = self.write_head(slot, header);
        // SAFETY: the slot has SLOT >= total bytes (payload <= MAX_PAYLOAD) and is not in
        // flight (it was on the free list).
        unsafe {
            ptr::copy_nonoverlapping(
                payload.as_ptr(),
                buf.add(PREFIX + HEADER_LEN),
                payload.len(),
            );
        }
        let ctx = self.ctx_ptr(RX_SLOTS + slot);
        let desc = self.tx.desc();
        // SAFETY: the slot stays untouched until its completion returns it to the free list.
        let ret = unsafe { fi::oxmpi_fi_send(self.ep.ep, buf.cast(), total, desc, dest, ctx) };
        Ok(if self.posted(ret, slot, peer, "fi_send")? {
            Sent::Done
        } else {
            Sent::WouldBlock
        })
    }

    fn send_lent(
        &mut self,
        peer: Rank,
        header: &Header,
        payload: &MemRef,
        token: u64,
    ) -> Result<Sent, FabricError> {
        let bytes = payload.bytes();
        if bytes.len() < self.caps.lent_min {
            return self.send(peer, header, bytes);
        }
        if !self.split_payloads_flushed_to(peer) {
            return Ok(Sent::WouldBlock);
        }
        let dest = self.peer_addr(peer)?;
        let Some(slot) = self.take_slot()? else {
            return Ok(Sent::WouldBlock);
        };
        let head = self.write_head(slot, header);
        let iov = [
            fi::iovec {
                iov_base: head.cast(),
                iov_len: PREFIX + HEADER_LEN,
            },
            fi::iovec {
                iov_base: bytes.as_ptr() as *mut c_void,
                iov_len: bytes.len(),
            },
        ];
        let mut desc = [self.tx.desc(), ptr::null_mut()];
        let ctx = self.ctx_ptr(RX_SLOTS + slot);
        // SAFETY: the head slot stays untouched until its completion frees it; the payload
        // stays alive and unchanged until then too (the caller holds it until it sees
        // `Event::SendDone` with this token, or fails the send with its peer). The shm
        // provider (the only one lent sends go to) needs no local registration.
        let ret = unsafe {
            fi::oxmpi_fi_sendv(self.ep.ep, iov.as_ptr(), desc.as_mut_ptr(), 2, dest, ctx)
        };
        if !self.posted(ret, slot, peer, "fi_sendv")? {
            return Ok(Sent::WouldBlock);
        }
        self.tx_token[slot] = Some(token);
        self.lent_sends += 1;
        Ok(Sent::Lent)
    }

    fn read(
        &mut self,
        peer: Rank,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), FabricError> {
        if !self.caps.rma_read {
            return Err(FabricError::Rma(format!(
                "provider {} offers no remote reads",
                self.provider
            )));
        }
        let src = self.peer_addr(peer)?;
        let lease = if self.mr_local && !dst.is_empty() {
            Some(self.cache.acquire(
                &mut self.registrar,
                dst.as_ptr() as usize,
                dst.len(),
                Access::LOCAL_WRITE,
            )?)
        } else {
            None
        };
        let desc = lease
            .as_ref()
            .map_or(ptr::null_mut(), |l| self.cache.handle(l).desc());
        let result = self.read_into(peer, src, remote, offset, dst, desc);
        if let Some(lease) = lease {
            match &result {
                // A read that timed out may still land in `dst`: keep its registration.
                Err(FabricError::PeerLost { .. }) => {
                    let _kept = lease;
                }
                _ => self.cache.release(&mut self.registrar, lease),
            }
        }
        result
    }

    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        self.repost_slots()?;
        if !self.split_pending.is_empty() {
            self.flush_split_payloads();
        }
        if let Some(e) = self.deferred.pop_front() {
            return Err(e);
        }
        self.reap()?;
        let mut n = 0;
        while let Some((slot, len, data)) = self.arrived.pop_front() {
            self.deliver(slot, len, data, on)?;
            n += 1;
        }
        for (peer, token) in self.lent_done.drain(..) {
            on(Event::SendDone { peer, token });
            n += 1;
        }
        Ok(n)
    }

    fn wait(&mut self, timeout: Duration) {
        // The completion queue has no wait object (not every provider offers one), and with
        // manual-progress providers (tcp, shm, rxm) a peer's rendezvous read completes only
        // while this rank reads its completion queue. So keep reading it, yielding the core
        // between reads, until something completes or `timeout` passes; only after a long
        // idle stretch sleep in short slices instead.
        let start = Instant::now();
        if self.completions != self.completions_seen {
            // Completions were read (by `poll`) since the last wait: not idle.
            self.completions_seen = self.completions;
            self.idle_since = start;
        }
        if start.duration_since(self.idle_since) > IDLE_SLEEP_AFTER {
            std::thread::sleep(timeout.min(Duration::from_micros(200)));
            if self.reap_deferring() > 0 {
                self.idle_since = Instant::now();
            }
            return;
        }
        loop {
            let progressed = self.reap_deferring() > 0
                || (!self.split_pending.is_empty() && self.flush_split_payloads() > 0);
            if progressed {
                self.idle_since = Instant::now();
                return;
            }
            if start.elapsed() >= timeout {
                return;
            }
            std::thread::yield_now();
        }
    }

    fn remote_key(&mut self, _peer: Rank, mem: &MemRef) -> Result<RemoteKey, FabricError> {
        let b = mem.bytes();
        if b.is_empty() {
            return Ok(RemoteKey {
                addr: 0,
                len: 0,
                key: 0,
            });
        }
        let lease = self.cache.acquire(
            &mut self.registrar,
            b.as_ptr() as usize,
            b.len(),
            Access::REMOTE_READ,
        )?;
        let key = self.cache.handle(&lease).key();
        let addr = if self.virt_addr {
            b.as_ptr() as u64
        } else {
            // Without FI_MR_VIRT_ADDR a target address is an offset into the registration.
            (b.as_ptr() as usize - lease.base()) as u64
        };
        match self.lent.get_mut(&key) {
            Some((_, more)) => {
                *more += 1;
                self.cache.release(&mut self.registrar, lease);
            }
            None => {
                self.lent.insert(key, (lease, 0));
            }
        }
        Ok(RemoteKey {
            addr,
            len: b.len() as u64,
            key,
        })
    }

    fn release_key(&mut self, _peer: Rank, key: &RemoteKey) {
        match self.lent.get_mut(&key.key) {
            Some((_, more)) if *more > 0 => *more -= 1,
            Some(_) => {
                if let Some((lease, _)) = self.lent.remove(&key.key) {
                    self.cache.release(&mut self.registrar, lease);
                }
            }
            None => {}
        }
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mut c = crate::cache_counters("ofi", &self.cache.stats());
        c.push(("ofi.foreign_frames".into(), self.foreign));
        c.push(("ofi.lent_sends".into(), self.lent_sends));
        c.push(("ofi.split_sends".into(), self.split_sends));
        c
    }
}

impl Ofi {
    /// Reads `dst.len()` bytes at `remote.addr + offset` from `peer` (address `src`) into
    /// `dst`, whose registration descriptor is `desc`, in pieces of at most the provider's
    /// message size, each waited for.
    fn read_into(
        &mut self,
        peer: Rank,
        src: fi::fi_addr_t,
        remote: RemoteKey,
        offset: u64,
        dst: &mut [u8],
        desc: *mut c_void,
    ) -> Result<(), FabricError> {
        let ctx = self.ctx_ptr(RX_SLOTS + TX_SLOTS);
        let mut done = 0usize;
        while done < dst.len() {
            let n = (dst.len() - done).min(self.max_msg);
            let at = remote.addr + offset + done as u64;
            self.read_done = None;
            let deadline = Instant::now() + READ_TIMEOUT;
            loop {
                // SAFETY: dst[done..done + n] is registered (or the provider needs no local
                // registration) and stays borrowed until the completion is read below.
                let ret = unsafe {
                    fi::oxmpi_fi_read(
                        self.ep.ep,
                        dst[done..].as_mut_ptr().cast(),
                        n,
                        desc,
                        src,
                        at,
                        remote.key,
                        ctx,
                    )
                };
                if ret == 0 {
                    break;
                }
                if ret != -(fi::FI_EAGAIN as isize) {
                    return Err(FabricError::Rma(fi_error(ret as i64, "fi_read")));
                }
                // Other operations' failures wait for `poll`: this loop is about the read.
                self.reap_deferring();
                if Instant::now() > deadline {
                    return Err(FabricError::Rma("fi_read stayed busy".into()));
                }
            }
            loop {
                self.reap_deferring();
                match self.read_done.take() {
                    Some(Ok(())) => break,
                    Some(Err(why)) => return Err(FabricError::Rma(why)),
                    None if Instant::now() > deadline => {
                        // The read may still land: keep its buffer alive by failing the peer.
                        return Err(FabricError::PeerLost {
                            peer,
                            why: format!(
                                "remote read of {n} bytes did not complete in {READ_TIMEOUT:?}"
                            ),
                        });
                    }
                    None => std::hint::spin_loop(),
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl Drop for Ofi {
    fn drop(&mut self) {
        // Registrations go before the domain (closed when `ep` drops).
        for (_, (lease, _)) in self.lent.drain() {
            self.cache.release(&mut self.registrar, lease);
        }
        self.cache.clear(&mut self.registrar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name for a test endpoint no other process uses, now or before: over the shm provider
    /// its region is `/dev/shm/<name>`, and the provider's pid-derived default collides with
    /// a region a killed process of the same pid left (`fi_enable` then fails with `EBUSY`).
    fn test_endpoint_name() -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("oxmpi-test-{}-{nanos:x}-{n}", std::process::id())
    }

    /// Two endpoints of a 2-rank world in this process over `tcp;ofi_rxm` on loopback, with
    /// the given job tags.
    fn pair(tags: [u32; 2]) -> (Ofi, Ofi) {
        pair_over("tcp;ofi_rxm", tags)
    }

    /// The endpoints of an `n`-rank world in this process over `provider`, job tag 5.
    fn world_over(provider: &str, n: u32) -> Vec<Ofi> {
        let mut world: Vec<Ofi> = (0..n)
            .map(|rank| {
                let config = OfiConfig {
                    provider: Some(provider.into()),
                    domain: None,
                    local_only: true,
                    job_tag: 5,
                    rma: true,
                    endpoint_name: Some(test_endpoint_name()),
                };
                Ofi::open(rank, n, &config).expect("an endpoint of the provider")
            })
            .collect();
        let addrs: Vec<_> = world.iter().map(|e| e.address().unwrap()).collect();
        for e in &mut world {
            e.connect(&addrs).unwrap();
        }
        world
    }

    /// Two endpoints of a 2-rank world in this process over `provider`.
    fn pair_over(provider: &str, tags: [u32; 2]) -> (Ofi, Ofi) {
        let open = |rank: Rank, tag: u32| {
            let config = OfiConfig {
                provider: Some(provider.into()),
                domain: None,
                local_only: true,
                job_tag: tag,
                rma: true,
                endpoint_name: Some(test_endpoint_name()),
            };
            Ofi::open(rank, 2, &config).expect("an endpoint of the provider")
        };
        let (mut a, mut b) = (open(0, tags[0]), open(1, tags[1]));
        let addrs = vec![a.address().unwrap(), b.address().unwrap()];
        a.connect(&addrs).unwrap();
        b.connect(&addrs).unwrap();
        (a, b)
    }

    /// Polls both until `done(b)` or 10 s; returns the frames `b` received.
    fn exchange(a: &mut Ofi, b: &mut Ofi, done: impl Fn(&Ofi, usize) -> bool) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(b, got.len()) && Instant::now() < deadline {
            a.poll(&mut |_| {}).unwrap();
            b.poll(&mut |e| {
                if let Event::Frame { payload, .. } = e {
                    got.push(payload.to_vec());
                }
            })
            .unwrap();
        }
        got
    }

    /// Sends from `a` to rank 1, retrying (and driving both endpoints) while the provider
    /// pushes back, as when rxm is still connecting.
    fn send(a: &mut Ofi, b: &mut Ofi, payload: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.send(1, &[0u8; HEADER_LEN], payload).unwrap() == Sent::WouldBlock {
            assert!(Instant::now() < deadline, "send stayed blocked");
            a.poll(&mut |_| {}).unwrap();
            b.poll(&mut |_| {}).unwrap();
        }
    }

    #[test]
    fn frames_without_the_jobs_tag_are_dropped_and_counted() {
        let (mut a, mut b) = pair([7, 7]);
        send(&mut a, &mut b, b"same job");
        let got = exchange(&mut a, &mut b, |_, n| n == 1);
        assert_eq!(got, [b"same job".to_vec()]);

        let (mut a, mut c) = pair([7, 8]);
        for _ in 0..3 {
            send(&mut a, &mut c, b"other job");
        }
        let got = exchange(&mut a, &mut c, |c, _| c.foreign == 3);
        assert!(got.is_empty(), "a frame of another job was delivered");
        assert_eq!(c.foreign, 3);
        assert!(c
            .counters()
            .contains(&("ofi.foreign_frames".to_string(), 3)));
        // The receiver goes on: its own job's frames still arrive.
        let (mut d, _) = pair([8, 8]);
        let addrs = vec![d.address().unwrap(), c.address().unwrap()];
        d.connect(&addrs).unwrap();
        send(&mut d, &mut c, b"after");
        let got = exchange(&mut d, &mut c, |_, n| n == 1);
        assert_eq!(got, [b"after".to_vec()]);
    }

    /// Over the shm provider an endpoint takes the name it is given: its region is
    /// `/dev/shm/<name>` while it is open (not the provider's pid-derived default, which a
    /// region left by a killed process with the same pid blocks), peers reach it by that
    /// name, and closing it removes the file.
    #[test]
    fn shm_endpoints_take_the_names_they_are_given() {
        let names: Vec<String> = (0..2).map(|_| test_endpoint_name()).collect();
        let open = |rank: Rank| {
            let config = OfiConfig {
                provider: Some("shm".into()),
                domain: None,
                local_only: true,
                job_tag: 9,
                rma: true,
                endpoint_name: Some(names[rank as usize].clone()),
            };
            Ofi::open(rank, 2, &config).expect("a named shm endpoint")
        };
        let (mut a, mut b) = (open(0), open(1));
        for (e, name) in [&a, &b].into_iter().zip(&names) {
            let addr = e.address().unwrap();
            let text = String::from_utf8_lossy(&addr);
            assert!(
                text.contains(name.as_str()),
                "address {text:?} is not named {name}"
            );
            assert!(
                std::path::Path::new("/dev/shm").join(name).exists(),
                "no region /dev/shm/{name}"
            );
        }
        let addrs = vec![a.address().unwrap(), b.address().unwrap()];
        a.connect(&addrs).unwrap();
        b.connect(&addrs).unwrap();
        send(&mut a, &mut b, b"by name");
        let got = exchange(&mut a, &mut b, |_, n| n == 1);
        assert_eq!(got, [b"by name".to_vec()]);
        drop((a, b));
        for name in &names {
            assert!(
                !std::path::Path::new("/dev/shm").join(name).exists(),
                "/dev/shm/{name} outlived its endpoint"
            );
        }
    }

    /// A buffer lent twice (two rendezvous sends of one buffer in flight) stays readable
    /// until its last key is released, and is then no longer held.
    #[test]
    fn shm_a_buffer_lent_twice_stays_registered_until_its_last_release() {
        let (mut a, mut b) = pair_over("shm", [5, 5]);
        // Connect the reader to the lender first, as an RTS would have.
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.send(0, &[0u8; HEADER_LEN], b"rts").unwrap() == Sent::WouldBlock {
            assert!(Instant::now() < deadline, "send stayed blocked");
            a.poll(&mut |_| {}).unwrap();
            b.poll(&mut |_| {}).unwrap();
        }
        let got = exchange(&mut b, &mut a, |_, n| n == 1);
        assert_eq!(got, [b"rts".to_vec()]);
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 251) as u8).collect();
        let mem = MemRef::owned(data.clone());
        let first = a.remote_key(1, &mem).unwrap();
        let second = a.remote_key(1, &mem).unwrap();
        assert_eq!(first.key, second.key, "one cached registration");
        assert_eq!(a.lent.len(), 1);
        let read = |a: &mut Ofi, b: &mut Ofi, key: RemoteKey| {
            let mut got = vec![0u8; data.len()];
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match b.read(0, key, 0, &mut got) {
                    Ok(()) => return got,
                    Err(e) if Instant::now() > deadline => panic!("read failed: {e}"),
                    // The provider may push back while it maps the peer's region.
                    Err(_) => a.poll(&mut |_| {}).unwrap(),
                };
            }
        };
        a.release_key(1, &first);
        assert_eq!(a.lent.len(), 1, "released with a second loan out");
        assert!(
            read(&mut a, &mut b, second) == data,
            "read after the first release"
        );
        a.release_key(1, &second);
        assert!(a.lent.is_empty(), "the last release gives the lease back");
        // Releasing a key again, or one never lent, changes nothing.
        a.release_key(1, &second);
        assert!(a.lent.is_empty());
    }

    /// Over the shm provider, eager frames beyond its inject size go out in place: the
    /// payload arrives intact, the sender learns when it may reuse the buffer through
    /// `SendDone` with its token, and smaller frames are still copied.
    #[test]
    fn shm_sends_large_eager_frames_in_place_and_reports_when_done() {
        let (mut a, mut b) = pair_over("shm", [5, 5]);
        let lent_min = a.caps(1).lent_min;
        assert!(lent_min < EAGER_MAX, "lent_min {lent_min}");
        let big: Vec<u8> = (0..EAGER_MAX).map(|i| (i * 7 % 251) as u8).collect();
        let payload = MemRef::owned(big.clone());
        let small = MemRef::owned(vec![3u8; 100]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut frames, mut done) = (Vec::new(), Vec::new());
        let take = take_frames;
        // The provider may push back while it maps the peer's region.
        let send = |a: &mut Ofi, b: &mut Ofi, f: &mut Vec<_>, h: u8, p: &MemRef, t: u64| loop {
            match a.send_lent(1, &[h; HEADER_LEN], p, t).unwrap() {
                Sent::WouldBlock if Instant::now() < deadline => take(b, f),
                sent => return sent,
            }
        };
        assert_eq!(send(&mut a, &mut b, &mut frames, 1, &small, 41), Sent::Done);
        assert_eq!(
            send(&mut a, &mut b, &mut frames, 2, &payload, 42),
            Sent::Lent
        );
        while (frames.len() < 2 || done.is_empty()) && Instant::now() < deadline {
            a.poll(&mut |e| {
                if let Event::SendDone { peer, token } = e {
                    done.push((peer, token));
                }
            })
            .unwrap();
            take(&mut b, &mut frames);
        }
        assert_eq!(done, [(1, 42)]);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], (0, 1, vec![3u8; 100]));
        assert_eq!(frames[1].0, 0);
        assert_eq!(frames[1].1, 2);
        assert!(frames[1].2 == big, "lent payload arrived changed");
        assert!(a.counters().contains(&("ofi.lent_sends".to_string(), 1)));
    }

    /// Frames as (peer, first header byte, payload), and the errors polls reported.
    type Received = (Vec<(Rank, u8, Vec<u8>)>, Vec<FabricError>);

    /// Polls `b` until it has `n` frames (or 10 s), driving `a` too; returns the frames as
    /// (peer, first header byte, payload) and the errors `b`'s polls reported.
    fn frames_of(a: &mut Ofi, b: &mut Ofi, n: usize) -> Received {
        let (mut frames, mut errors) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while frames.len() < n && Instant::now() < deadline {
            if let Err(e) = a.poll(&mut |_| {}) {
                panic!("sender's poll failed: {e}");
            }
            if let Err(e) = poll_frames(b, &mut frames) {
                errors.push(e);
            }
        }
        (frames, errors)
    }

    /// Polls `e` once, adding its frames as (peer, first header byte, payload).
    fn poll_frames(
        e: &mut Ofi,
        frames: &mut Vec<(Rank, u8, Vec<u8>)>,
    ) -> Result<usize, FabricError> {
        e.poll(&mut |ev| {
            if let Event::Frame {
                peer,
                header,
                payload,
            } = ev
            {
                frames.push((peer, header[0], payload.to_vec()));
            }
        })
    }

    /// [`poll_frames`], failing the test on a poll error.
    fn take_frames(e: &mut Ofi, frames: &mut Vec<(Rank, u8, Vec<u8>)>) {
        poll_frames(e, frames).unwrap();
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    /// Over the shm provider a payload that fits its inject size only without the frame's
    /// head goes as a split frame (head, then payload with the prefix as CQ data) and
    /// arrives as one frame, in order with the others; smaller and larger ones do not split.
    #[test]
    fn shm_splits_frames_that_fit_the_inject_size_only_without_the_head() {
        let (mut a, mut b) = pair_over("shm", [5, 5]);
        let split_max = a.split_max;
        assert!(split_max > PREFIX + HEADER_LEN, "split_max {split_max}");
        assert_eq!(a.caps(1).lent_min, split_max + 1);
        let whole = split_max - PREFIX - HEADER_LEN;
        let sizes = [whole, whole + 1, split_max, 10, split_max, 0, whole + 1];
        // The first send waits while the provider maps the peer: let `b` read meanwhile.
        send(&mut a, &mut b, b"first");
        let (first, _) = frames_of(&mut a, &mut b, 1);
        assert_eq!(first.len(), 1);
        for (i, &len) in sizes.iter().enumerate() {
            assert_eq!(
                a.send(1, &[i as u8; HEADER_LEN], &pattern(len, i)).unwrap(),
                Sent::Done
            );
        }
        let (frames, errors) = frames_of(&mut a, &mut b, sizes.len());
        assert!(errors.is_empty(), "{errors:?}");
        let want: Vec<_> = (0..sizes.len())
            .map(|i| (0, i as u8, pattern(sizes[i], i)))
            .collect();
        assert!(frames == want, "frames arrived changed or out of order");
        assert!(a.counters().contains(&("ofi.split_sends".to_string(), 4)));
    }

    /// Many split frames in a row, the receiver not reading: whatever the provider pushes
    /// back (a head: nothing sent; a payload: kept and posted before anything else) every
    /// frame arrives once, intact and in order.
    #[test]
    fn shm_split_frames_survive_a_full_receiver() {
        let (mut a, mut b) = pair_over("shm", [5, 5]);
        let len = a.split_max;
        let n = 3000usize;
        let (mut frames, mut kept) = (Vec::new(), 0);
        let take = |b: &mut Ofi, frames: &mut Vec<(u8, Vec<u8>)>| {
            b.poll(&mut |e| {
                if let Event::Frame {
                    header, payload, ..
                } = e
                {
                    frames.push((header[0], payload.to_vec()));
                }
            })
            .unwrap();
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every third frame is a whole one (one message), so the provider's queue can fill
        // between a head and its payload.
        let len_of = |i: usize| if i.is_multiple_of(3) { 10 } else { len };
        for i in 0..n {
            let mut blocked = 0;
            while a
                .send(1, &[i as u8; HEADER_LEN], &pattern(len_of(i), i))
                .unwrap()
                == Sent::WouldBlock
            {
                assert!(Instant::now() < deadline, "send stayed blocked");
                blocked += 1;
                if blocked > 100 {
                    take(&mut b, &mut frames);
                }
            }
            kept += usize::from(!a.split_pending.is_empty());
        }
        while frames.len() < n && Instant::now() < deadline {
            a.poll(&mut |_| {}).unwrap();
            take(&mut b, &mut frames);
        }
        assert_eq!(frames.len(), n);
        for (i, (h, p)) in frames.iter().enumerate() {
            assert_eq!(*h, i as u8, "frame {i} out of order");
            assert!(*p == pattern(len_of(i), i), "frame {i} arrived changed");
        }
        assert!(
            kept > 0,
            "no payload was pushed back: the test did not reach that path"
        );
    }

    /// A split frame's payload without its head, or a head followed by another frame, is a
    /// bad frame from that sender; a payload whose CQ data lacks the job's tag is foreign.
    /// Neither disturbs the frames after it.
    #[test]
    fn shm_split_frames_out_of_protocol_are_reported() {
        let (mut a, mut b) = pair_over("shm", [5, 5]);
        send(&mut a, &mut b, b"first");
        assert_eq!(frames_of(&mut a, &mut b, 1).0.len(), 1);
        let dest = a.addrs[1];
        let inject_data = |a: &mut Ofi, data: u64| {
            let body = [9u8; 64];
            // SAFETY: an enabled endpoint; inject copies the bytes before returning.
            let ret = unsafe {
                fi::oxmpi_fi_injectdata(a.ep.ep, body.as_ptr().cast(), body.len(), data, dest)
            };
            assert_eq!(ret, 0);
        };
        // A payload without a head.
        let data = a.split_data();
        inject_data(&mut a, data);
        send(&mut a, &mut b, b"after a lone payload");
        let (frames, errors) = frames_of(&mut a, &mut b, 1);
        assert!(
            matches!(&errors[..], [FabricError::BadFrame { peer: 0, why }] if why.contains("without its head")),
            "{errors:?}"
        );
        assert_eq!(frames, [(0, 0, b"after a lone payload".to_vec())]);
        // A head, then a whole frame instead of its payload.
        let mut head = [0u8; PREFIX + HEADER_LEN];
        head[..4].copy_from_slice(&5u32.to_le_bytes());
        head[4..8].copy_from_slice(&SPLIT_HEAD.to_le_bytes());
        // SAFETY: an enabled endpoint; inject copies the bytes before returning.
        let ret = unsafe { fi::oxmpi_fi_inject(a.ep.ep, head.as_ptr().cast(), head.len(), dest) };
        assert_eq!(ret, 0);
        send(&mut a, &mut b, b"not a payload");
        send(&mut a, &mut b, b"next");
        let (frames, errors) = frames_of(&mut a, &mut b, 1);
        assert!(
            matches!(&errors[..], [FabricError::BadFrame { peer: 0, why }] if why.contains("between")),
            "{errors:?}"
        );
        assert_eq!(frames, [(0, 0, b"next".to_vec())]);
        // A payload claiming another job.
        inject_data(&mut a, 6); // job tag 6, rank 0
        send(&mut a, &mut b, b"still here");
        let (frames, errors) = frames_of(&mut a, &mut b, 1);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(frames, [(0, 0, b"still here".to_vec())]);
        assert_eq!(b.foreign, 1);
    }

    /// A split payload pushed back by one peer's full queue holds up sends to that peer
    /// only: another peer's frames go out meanwhile, and once the first peer reads, all of
    /// its frames arrive in order.
    #[test]
    fn shm_a_pushed_back_split_payload_holds_up_only_its_peer() {
        let mut w = world_over("shm", 3);
        let len = w[0].split_max;
        let take = take_frames;
        let (mut to1, mut to2) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        // First contact maps the peer's region (the provider pushes back meanwhile).
        for peer in [1, 2] {
            let mut got = Vec::new();
            while w[0].send(peer, &[9; HEADER_LEN], b"hello").unwrap() == Sent::WouldBlock {
                assert!(Instant::now() < deadline, "first send stayed blocked");
                take(&mut w[peer as usize], &mut got);
            }
            while got.is_empty() && Instant::now() < deadline {
                w[0].poll(&mut |_| {}).unwrap();
                take(&mut w[peer as usize], &mut got);
            }
            assert_eq!(got, [(0, 9, b"hello".to_vec())]);
        }
        let mut sent = 0usize;
        // Rank 1 reads only now and then, so its queue fills at varying points until one
        // head goes out and its payload is pushed back.
        while w[0].split_pending.is_empty() {
            assert!(Instant::now() < deadline, "no payload was pushed back");
            let n = if sent.is_multiple_of(3) { 10 } else { len };
            match w[0]
                .send(1, &[sent as u8; HEADER_LEN], &pattern(n, sent))
                .unwrap()
            {
                Sent::Done => sent += 1,
                _ => {
                    let (a, rest) = w.split_at_mut(1);
                    a[0].poll(&mut |_| {}).unwrap();
                    take(&mut rest[0], &mut to1);
                }
            }
        }
        // Rank 1 is held up: nothing more goes to it. Rank 2 is not.
        assert_eq!(
            w[0].send(1, &[0; HEADER_LEN], b"must wait").unwrap(),
            Sent::WouldBlock
        );
        for k in 0..3u8 {
            assert_eq!(
                w[0].send(2, &[k; HEADER_LEN], &pattern(100, k as usize))
                    .unwrap(),
                Sent::Done,
                "a send to rank 2 waited for rank 1"
            );
        }
        while to2.len() < 3 && Instant::now() < deadline {
            w[0].poll(&mut |_| {}).unwrap();
            take(&mut w[2], &mut to2);
        }
        assert_eq!(to2.len(), 3);
        assert!(to2
            .iter()
            .enumerate()
            .all(|(k, f)| *f == (0, k as u8, pattern(100, k))));
        // Rank 1 reads: every frame sent to it arrives once, in order, intact.
        while to1.len() < sent && Instant::now() < deadline {
            w[0].poll(&mut |_| {}).unwrap();
            take(&mut w[1], &mut to1);
        }
        assert!(w[0].split_pending.is_empty());
        assert_eq!(to1.len(), sent);
        for (i, (peer, h, p)) in to1.iter().enumerate() {
            let n = if i.is_multiple_of(3) { 10 } else { len };
            assert_eq!((*peer, *h), (0, i as u8), "frame {i}");
            assert!(*p == pattern(n, i), "frame {i} arrived changed");
        }
    }
}
