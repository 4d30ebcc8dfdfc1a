//! Memory monitor: tells the registration cache when memory it registered is unmapped or its
//! pages are removed, so a registration of freed-then-reused addresses is never used again.
//!
//! # Why userfaultfd
//!
//! A cached registration (an `fi_mr` / `ibv_mr`) pins or describes the pages that backed an
//! address range *when it was registered*. If the program frees the buffer and the allocator
//! returns the pages to the kernel (`munmap`, `brk`, `madvise(MADV_DONTNEED)`), a later buffer at
//! the same address is backed by other pages, and reusing the cached registration would move the
//! wrong bytes. MPI libraries traditionally catch this by patching the allocator (Open MPI's
//! `patcher`, UCX's `ucm` hooks). Linux's userfaultfd reports the same facts from the kernel,
//! without patching anything: with `UFFD_FEATURE_EVENT_UNMAP | EVENT_REMOVE | EVENT_REMAP`, every
//! `munmap`/`mremap`/`MADV_DONTNEED`/`MADV_FREE`/`MADV_REMOVE` that touches a range registered
//! with the descriptor produces an event, and the unmapping thread is held until the event has
//! been *read*. This module owns that descriptor and the thread that reads it.
//!
//! # Design
//!
//! - [`Watcher::new`] opens a userfaultfd (the syscall, or `/dev/userfaultfd` where the syscall is
//!   refused), negotiates the features, and starts a thread (`oxmpi-memwatch`) that blocks in
//!   `poll` on it and on an eventfd used to stop it.
//! - [`Watcher::watch`] registers a page-aligned range (`UFFDIO_REGISTER`, mode `MISSING`, the
//!   mode the events require). Ranges that cannot be watched (file-backed, hugetlb, registered
//!   with another userfaultfd, unmapped) give an error: the cache then does not keep that
//!   registration past its last use.
//! - The thread pushes each invalidated range onto a lock-free single-producer ring and sets a
//!   `DIRTY` bit; [`Watcher::has_pending`] is one atomic load, so the cache's hit path costs one
//!   load. The ring never grows: if it is full the `OVERFLOW` bit makes [`Watcher::take_pending`]
//!   report "everything" (conservative, never wrong).
//! - Ordering: the kernel lets `munmap` return as soon as the event is read, possibly before the
//!   thread has queued it. The thread therefore marks a *batch in progress* (an odd epoch in the
//!   same atomic word) before reading, and `take_pending` waits for a batch in progress to end.
//!   So once `munmap` has returned, the next `has_pending`/`take_pending` sees its range.
//! - Page faults: registering in `MISSING` mode also routes faults on not-present pages of a
//!   watched range (first touch, or touch after removal) to this thread. They must never hang: the
//!   thread unregisters the whole watched range that contains the page (`UFFDIO_UNREGISTER`,
//!   which lets the fault proceed normally), reports that range as invalidated (it is no longer
//!   watched, so the cache must not keep trusting it), and wakes the faulting thread
//!   (`UFFDIO_WAKE`). Where that is not possible it maps the zero page (`UFFDIO_ZEROPAGE`, what
//!   the kernel would have done) and wakes the thread.
//! - The monitor thread runs in the same process as the memory it watches, so it must never
//!   wait for a thread that may be stopped on a watched page: on its event path it does not
//!   allocate or free (that could touch or trim watched heap pages), it takes the watched-range
//!   lock only with `try_lock` (falling back to the zero page), and the pending ring is lock-free.
//!   Removed ranges are unregistered at once, so later touches do not fault to the thread.
//!
//! # Fallback
//!
//! `Watcher::new` fails where userfaultfd is unavailable (`ENOSYS`, `EPERM` for unprivileged users
//! with `vm.unprivileged_userfaultfd=0`, seccomp). The cache then either caches without
//! monitoring (providers that do not pin memory) or deregisters every registration as soon as
//! it is idle (providers that pin), see [`crate::regcache`].
//!
//! One `Watcher` per process: a range registered with one userfaultfd cannot be registered with
//! another (`EBUSY`), so a second watcher can only decline those ranges. Events are not asked
//! for across `fork`: a child's copies of watched ranges are not watched.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread::JoinHandle;

use crate::sys::{cvt, cvt_retry};

/// The userfaultfd ABI, transcribed from `<linux/userfaultfd.h>` (Linux 6.x uapi) since the
/// `libc` crate does not define it. The ioctl numbers use the generic `_IOC` encoding of
/// `<asm-generic/ioctl.h>` (x86, x86_64, arm, aarch64, riscv, loongarch, s390x); the
/// architectures with their own encoding are refused in [`Watcher::new`].
mod uapi {
    /// `_IOC_WRITE` of `<asm-generic/ioctl.h>`.
    const IOC_WRITE: u32 = 1;
    /// `_IOC_READ`.
    const IOC_READ: u32 = 2;

    /// `_IOC(dir, type, nr, size)`: dir in bits 30..32, size in 16..30, type in 8..16, nr in 0..8.
    pub(super) const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u64 {
        ((dir << 30) | ((size as u32 & 0x3fff) << 16) | (ty << 8) | nr) as u64
    }

    /// `UFFDIO`, the ioctl type.
    const UFFDIO: u32 = 0xAA;
    /// `UFFD_API`.
    pub(super) const UFFD_API: u64 = 0xAA;

    /// `struct uffdio_api`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub(super) struct UffdioApi {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    /// `struct uffdio_range`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub(super) struct UffdioRange {
        pub start: u64,
        pub len: u64,
    }

    /// `struct uffdio_register`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub(super) struct UffdioRegister {
        pub range: UffdioRange,
        pub mode: u64,
        pub ioctls: u64,
    }

    /// `struct uffdio_zeropage`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub(super) struct UffdioZeropage {
        pub range: UffdioRange,
        pub mode: u64,
        pub zeropage: i64,
    }

    /// `struct uffd_msg` (declared packed, but its fields are naturally aligned: 32 bytes).
    /// `arg` is the union: `pagefault {flags, address, feat}`, `remap {from, to, len}`,
    /// `remove {start, end}` (also used by `UNMAP`), `fork {ufd}`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub(super) struct UffdMsg {
        pub event: u8,
        pub reserved1: u8,
        pub reserved2: u16,
        pub reserved3: u32,
        pub arg: [u64; 3],
    }

    impl UffdMsg {
        pub const ZERO: Self = Self {
            event: 0,
            reserved1: 0,
            reserved2: 0,
            reserved3: 0,
            arg: [0; 3],
        };
    }

    const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
    const _: () = assert!(std::mem::size_of::<UffdioRange>() == 16);
    const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
    const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);
    const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

    /// `UFFDIO_API`: `_IOWR(UFFDIO, 0x3F, struct uffdio_api)`.
    pub(super) const UFFDIO_API: u64 = ioc(
        IOC_READ | IOC_WRITE,
        UFFDIO,
        0x3F,
        std::mem::size_of::<UffdioApi>(),
    );
    /// `UFFDIO_REGISTER`: `_IOWR(UFFDIO, 0x00, struct uffdio_register)`.
    pub(super) const UFFDIO_REGISTER: u64 = ioc(
        IOC_READ | IOC_WRITE,
        UFFDIO,
        0x00,
        std::mem::size_of::<UffdioRegister>(),
    );
    /// `UFFDIO_UNREGISTER`: `_IOR(UFFDIO, 0x01, struct uffdio_range)`.
    pub(super) const UFFDIO_UNREGISTER: u64 =
        ioc(IOC_READ, UFFDIO, 0x01, std::mem::size_of::<UffdioRange>());
    /// `UFFDIO_WAKE`: `_IOR(UFFDIO, 0x02, struct uffdio_range)`.
    pub(super) const UFFDIO_WAKE: u64 =
        ioc(IOC_READ, UFFDIO, 0x02, std::mem::size_of::<UffdioRange>());
    /// `UFFDIO_ZEROPAGE`: `_IOWR(UFFDIO, 0x04, struct uffdio_zeropage)`.
    pub(super) const UFFDIO_ZEROPAGE: u64 = ioc(
        IOC_READ | IOC_WRITE,
        UFFDIO,
        0x04,
        std::mem::size_of::<UffdioZeropage>(),
    );
    /// `USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)`, on `/dev/userfaultfd`.
    pub(super) const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0xAA, 0x00, 0);

    /// Bit numbers of `uffdio_api.ioctls`.
    pub(super) const IOCTL_REGISTER_BIT: u64 = 1 << 0x00;
    pub(super) const IOCTL_UNREGISTER_BIT: u64 = 1 << 0x01;

    pub(super) const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
    pub(super) const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
    pub(super) const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

    pub(super) const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;

    pub(super) const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    pub(super) const UFFD_EVENT_FORK: u8 = 0x13;
    pub(super) const UFFD_EVENT_REMAP: u8 = 0x14;
    pub(super) const UFFD_EVENT_REMOVE: u8 = 0x15;
    pub(super) const UFFD_EVENT_UNMAP: u8 = 0x16;
}

use uapi::*;

/// Features asked of the kernel: the three events that say pages went away.
const FEATURES: u64 =
    UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP;

/// Invalidated ranges the ring can hold before it overflows into "everything".
const RING_CAPACITY: usize = 1024;

/// Messages read per `read(2)`.
const BATCH: usize = 16;

/// `state` bits: invalidations were queued since the last `take_pending`.
const DIRTY: u64 = 1 << 0;
/// Some were lost (ring full): everything must be considered invalid.
const OVERFLOW: u64 = 1 << 1;
/// The lowest bit of the batch epoch: set while the monitor is between reading messages and
/// queueing what they said.
const BUSY: u64 = 1 << 2;
/// One half-batch step of the epoch (`BUSY` is its lowest bit).
const EPOCH_STEP: u64 = BUSY;
/// Bits of `state` above the epoch (all of them).
const EPOCH_SHIFT: u32 = 2;

/// The system page size (cached).
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        match usize::try_from(p) {
            Ok(p) if p.is_power_of_two() => p,
            _ => 4096,
        }
    })
}

/// Watches address ranges for unmapping and page removal; see the [module docs](self).
pub struct Watcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    features: u64,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("uffd", &self.shared.uffd.as_raw_fd())
            .field("features", &format_args!("{:#x}", self.features))
            .field("has_pending", &self.has_pending())
            .finish()
    }
}

/// A range this watcher registered with the kernel.
#[derive(Clone, Copy, Debug)]
struct Span {
    /// End (exclusive).
    end: usize,
    /// Unregistered by the monitor thread after a fault; dropped from the map by the next
    /// `watch`/`unwatch` over it (the monitor never frees memory).
    dead: bool,
}

/// What the monitor thread and the watcher's users share.
struct Shared {
    uffd: OwnedFd,
    /// Written to stop the monitor thread.
    stop: OwnedFd,
    page: usize,
    /// `DIRTY | OVERFLOW | epoch << EPOCH_SHIFT` (the epoch is odd while a batch is in progress).
    state: AtomicU64,
    /// Invalidated ranges, monitor → consumers.
    ring: Ring,
    /// Serializes consumers of `ring` (the monitor never takes it).
    consumer: Mutex<()>,
    /// Registered ranges, disjoint, by start. The monitor only `try_lock`s it.
    watched: Mutex<BTreeMap<usize, Span>>,
}

impl Watcher {
    /// Opens a userfaultfd and starts the monitor thread.
    ///
    /// # Errors
    ///
    /// The kernel's error where userfaultfd is unavailable (`ENOSYS`, `EPERM`), or
    /// [`io::ErrorKind::Unsupported`] where the events are not supported.
    pub fn new() -> io::Result<Self> {
        if cfg!(any(
            target_arch = "powerpc",
            target_arch = "powerpc64",
            target_arch = "mips",
            target_arch = "mips64",
            target_arch = "sparc",
            target_arch = "sparc64"
        )) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "userfaultfd ioctl encoding not transcribed for this architecture",
            ));
        }
        let uffd = open_uffd()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: FEATURES,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which `UffdioApi` transcribes.
        unsafe { ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) }?;
        let needed = IOCTL_REGISTER_BIT | IOCTL_UNREGISTER_BIT;
        if api.features & FEATURES != FEATURES || api.ioctls & needed != needed {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "userfaultfd lacks unmap/remove/remap events (features {:#x})",
                    api.features
                ),
            ));
        }
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let stop = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `stop` is a fresh descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let shared = Arc::new(Shared {
            uffd,
            stop,
            page: page_size(),
            state: AtomicU64::new(0),
            ring: Ring::new(RING_CAPACITY),
            consumer: Mutex::new(()),
            watched: Mutex::new(BTreeMap::new()),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("oxmpi-memwatch".into())
            .stack_size(256 * 1024)
            .spawn(move || s.run())?;
        Ok(Self {
            shared,
            thread: Some(thread),
            features: api.features,
        })
    }

    /// The features the kernel reported (`uffdio_api.features`).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The page size ranges are aligned to.
    pub fn page_size(&self) -> usize {
        self.shared.page
    }

    /// Starts watching `[start, start + len)`, which must be page aligned and non-empty.
    /// Watching an already watched range again is allowed.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for an empty or unaligned range; the kernel's error
    /// (`EINVAL`, `EBUSY`, `ENOMEM`, `EPERM`) where the range cannot be watched: not
    /// anonymous or shmem memory, hugetlb, watched by another userfaultfd, or not mapped.
    pub fn watch(&self, start: usize, len: usize) -> io::Result<()> {
        let end = self.check_range(start, len)?;
        let mut set = lock(&self.shared.watched);
        self.shared.register(start, len)?;
        // Already registered pieces inside the range are now covered by this one.
        carve(&mut set, start, end, |_, _| {});
        set.insert(start, Span { end, dead: false });
        Ok(())
    }

    /// Stops watching `[start, start + len)` (the parts of it that are watched). Errors from
    /// the kernel (the range may be partly unmapped already) are ignored.
    pub fn unwatch(&self, start: usize, len: usize) {
        let Some(end) = start.checked_add(len) else {
            return;
        };
        let shared = &*self.shared;
        let mut set = lock(&shared.watched);
        carve(&mut set, start, end, |s, e| {
            let _ = shared.unregister(s, e - s);
        });
    }

    /// Whether invalidations are pending (or being read): one atomic load.
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) & (DIRTY | OVERFLOW | BUSY) != 0
    }

    /// Appends the pending invalidated ranges, as `(start, end)` with `end` exclusive, to `out`.
    /// After events were lost it appends `(0, usize::MAX)`: everything is invalid.
    pub fn take_pending(&self, out: &mut Vec<(usize, usize)>) {
        let shared = &*self.shared;
        let _consumer = lock(&shared.consumer);
        shared.wait_batch();
        let prev = shared
            .state
            .fetch_and(!(DIRTY | OVERFLOW), Ordering::AcqRel);
        shared.ring.drain(out);
        if prev & OVERFLOW != 0 {
            out.push((0, usize::MAX));
        }
    }

    fn check_range(&self, start: usize, len: usize) -> io::Result<usize> {
        let mask = self.shared.page - 1;
        match start.checked_add(len) {
            Some(end) if len > 0 && start & mask == 0 && len & mask == 0 => Ok(end),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "watched range must be non-empty and page aligned",
            )),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd we own.
        let _ = unsafe {
            libc::write(
                self.shared.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Closing the descriptor (when `shared` drops) unregisters every range.
    }
}

impl Shared {
    /// The monitor thread: serves events until told to stop. A panic in the event path (there
    /// should be none) must not leave the descriptor unread, since unmapping threads wait for
    /// it: the events of that batch are declared lost and the loop goes on.
    fn run(&self) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve())) {
                Ok(()) => return,
                Err(_) => {
                    let s = self.state.load(Ordering::Acquire);
                    if s & BUSY != 0 {
                        self.state.fetch_add(EPOCH_STEP, Ordering::Release);
                    }
                    self.state.fetch_or(OVERFLOW | DIRTY, Ordering::Release);
                }
            }
        }
    }

    /// Polls and handles batches until the stop eventfd is readable. Allocates nothing.
    fn serve(&self) {
        let uffd = self.uffd.as_raw_fd();
        let mut msgs = [UffdMsg::ZERO; BATCH];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: uffd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a live array of two pollfd structs.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN == 0 {
                if fds[0].revents != 0 {
                    // POLLERR/POLLHUP should not happen on a set-up descriptor; do not spin.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            // Begin a batch (odd epoch) *before* reading: reading is what lets an unmapping
            // thread go on, and it must find this batch visible until its range is queued.
            self.state.fetch_add(EPOCH_STEP, Ordering::SeqCst);
            // SAFETY: reads at most `size_of_val(&msgs)` bytes into the live array `msgs`,
            // whose element type transcribes `struct uffd_msg` and has no invalid bit patterns.
            let n =
                unsafe { libc::read(uffd, msgs.as_mut_ptr().cast(), std::mem::size_of_val(&msgs)) };
            if let Ok(n) = usize::try_from(n) {
                let count = n / std::mem::size_of::<UffdMsg>();
                for msg in msgs.iter().take(count) {
                    self.handle(msg);
                }
            }
            self.state.fetch_add(EPOCH_STEP, Ordering::Release);
        }
    }

    /// Handles one message. Allocates nothing, waits for no lock.
    fn handle(&self, msg: &UffdMsg) {
        let [a, b, c] = msg.arg;
        let (a, b, c) = (a as usize, b as usize, c as usize);
        match msg.event {
            UFFD_EVENT_PAGEFAULT => self.resolve_fault(b),
            UFFD_EVENT_UNMAP => self.push(a, b),
            UFFD_EVENT_REMOVE => {
                // The pages are gone; touching them again must not fault to us.
                let _ = self.unregister(a, b.saturating_sub(a));
                self.push(a, b);
            }
            UFFD_EVENT_REMAP => {
                // The pages moved from `a` to `b` with the registration: the old range is
                // gone, the new one is not ours to watch.
                let _ = self.unregister(b, c);
                self.push(a, a.saturating_add(c));
            }
            UFFD_EVENT_FORK => {
                // Not requested; if the kernel ever sends it, do not leak the child's fd.
                if let Ok(fd) = RawFd::try_from(a as u32) {
                    // SAFETY: a fork event transfers ownership of a new descriptor to us.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            _ => {}
        }
    }

    /// A thread touched a not-present page in a watched range and is waiting: let it go on.
    fn resolve_fault(&self, addr: usize) {
        let page = addr & !(self.page - 1);
        let mut released = false;
        if let Some(mut set) = try_lock(&self.watched) {
            if let Some((&start, span)) = set.range_mut(..=page).next_back() {
                if !span.dead && span.end > page && self.unregister(start, span.end - start).is_ok()
                {
                    span.dead = true;
                    let end = span.end;
                    drop(set);
                    self.push(start, end);
                    released = true;
                }
            }
        }
        if !released {
            // Not a range we can drop (or its lock is held, maybe by the faulting thread):
            // resolve the fault as the kernel would have, with the zero page.
            let mut z = UffdioZeropage {
                range: UffdioRange {
                    start: page as u64,
                    len: self.page as u64,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage`. EEXIST (a racing
            // fault already mapped it) and other errors are fine: the wake below lets the
            // thread retry.
            let _ = unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) };
        }
        let mut r = UffdioRange {
            start: page as u64,
            len: self.page as u64,
        };
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`.
        let _ = unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_WAKE, &mut r) };
    }

    /// Queues an invalidated range.
    fn push(&self, start: usize, end: usize) {
        let mut bits = DIRTY;
        if !self.ring.push(start, end) {
            bits |= OVERFLOW;
        }
        self.state.fetch_or(bits, Ordering::Release);
    }

    /// Waits until a batch in progress (if any) has queued what it read.
    fn wait_batch(&self) {
        let s = self.state.load(Ordering::Acquire);
        if s & BUSY == 0 {
            return;
        }
        let epoch = s >> EPOCH_SHIFT;
        let mut spins = 0u32;
        while self.state.load(Ordering::Acquire) >> EPOCH_SHIFT == epoch {
            if spins < 100 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn register(&self, start: usize, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`.
        unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) }
    }

    fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut r = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`.
        unsafe { ioctl(self.uffd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r) }
    }
}

/// Removes `[start, end)` from the disjoint range map `set`, keeping the parts of ranges
/// outside it, and calls `live(s, e)` for each removed piece that is still registered.
fn carve(
    set: &mut BTreeMap<usize, Span>,
    start: usize,
    end: usize,
    mut live: impl FnMut(usize, usize),
) {
    if start >= end {
        return;
    }
    while let Some((&s, &span)) = set.range(..end).next_back() {
        if span.end <= start {
            break;
        }
        set.remove(&s);
        if !span.dead {
            live(s.max(start), span.end.min(end));
        }
        if span.end > end {
            set.insert(end, span);
        }
        if s < start {
            set.insert(
                s,
                Span {
                    end: start,
                    dead: span.dead,
                },
            );
            break;
        }
    }
}

/// A bounded single-producer (the monitor) ring of ranges; consumers are serialized by
/// `Shared::consumer`. Slots are atomics, so it needs no unsafe code.
struct Ring {
    /// `2 * capacity` words: start, end per slot.
    slots: Box<[AtomicUsize]>,
    /// Next slot to read (consumer-owned).
    head: AtomicUsize,
    /// Next slot to write (producer-owned).
    tail: AtomicUsize,
}

impl Ring {
    /// Allocates and touches every slot now, so the monitor never touches a fresh page.
    fn new(capacity: usize) -> Self {
        Self {
            slots: (0..2 * capacity).map(|_| AtomicUsize::new(0)).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    /// Producer side; false when full.
    fn push(&self, start: usize, end: usize) -> bool {
        let cap = self.capacity();
        let t = self.tail.load(Ordering::Relaxed);
        let h = self.head.load(Ordering::Acquire);
        if cap == 0 || t.wrapping_sub(h) >= cap {
            return false;
        }
        let i = (t % cap) * 2;
        match (self.slots.get(i), self.slots.get(i + 1)) {
            (Some(s), Some(e)) => {
                s.store(start, Ordering::Relaxed);
                e.store(end, Ordering::Relaxed);
            }
            _ => return false,
        }
        self.tail.store(t.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer side (serialized by the caller).
    fn drain(&self, out: &mut Vec<(usize, usize)>) {
        let cap = self.capacity();
        let mut h = self.head.load(Ordering::Relaxed);
        let t = self.tail.load(Ordering::Acquire);
        while h != t && cap > 0 {
            let i = (h % cap) * 2;
            if let (Some(s), Some(e)) = (self.slots.get(i), self.slots.get(i + 1)) {
                out.push((s.load(Ordering::Relaxed), e.load(Ordering::Relaxed)));
            }
            h = h.wrapping_add(1);
        }
        self.head.store(h, Ordering::Release);
    }
}

/// Opens a userfaultfd: the syscall, or `/dev/userfaultfd` where the syscall is refused to
/// unprivileged users but the device is accessible.
fn open_uffd() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    let err = match cvt(r) {
        Ok(fd) => return owned(fd),
        Err(e) => e,
    };
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let Ok(dev) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    else {
        return Err(err);
    };
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new descriptor.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    match cvt(r) {
        Ok(fd) => owned(fd.into()),
        Err(_) => Err(err),
    }
}

/// Wraps a descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issues a userfaultfd ioctl, retrying on `EINTR`.
///
/// # Safety
///
/// `req` must be an ioctl whose argument is a pointer to a `T` (as `<linux/userfaultfd.h>`
/// pairs them).
unsafe fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<()> {
    let p: *mut T = arg;
    cvt_retry(|| {
        // SAFETY: the caller guarantees `req` takes a `*mut T`; `p` is valid and exclusive
        // for the duration of the call.
        unsafe { libc::ioctl(fd, req as _, p) }
    })
    .map(drop)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// An anonymous private mapping, unmapped on drop unless already unmapped.
    pub(crate) struct Mapping {
        pub(crate) addr: usize,
        pub(crate) len: usize,
        mapped: bool,
    }

    impl Mapping {
        pub(crate) fn new(pages: usize) -> Self {
            let len = pages * page_size();
            // SAFETY: a fresh anonymous mapping; no existing memory is affected.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap failed");
            Self {
                addr: p as usize,
                len,
                mapped: true,
            }
        }

        pub(crate) fn fill(&self, byte: u8) {
            // SAFETY: the mapping is ours, readable and writable, `len` bytes long.
            unsafe { std::ptr::write_bytes(self.addr as *mut u8, byte, self.len) };
        }

        pub(crate) fn unmap(&mut self) {
            if self.mapped {
                // SAFETY: unmaps exactly the mapping this value created.
                let r = unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
                assert_eq!(r, 0);
                self.mapped = false;
            }
        }

        pub(crate) fn dontneed(&self) {
            // SAFETY: drops the pages of our own private anonymous mapping.
            let r = unsafe {
                libc::madvise(
                    self.addr as *mut libc::c_void,
                    self.len,
                    libc::MADV_DONTNEED,
                )
            };
            assert_eq!(r, 0);
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            if self.mapped {
                // SAFETY: as in `unmap`.
                unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
            }
        }
    }

    /// A watcher, or `None` where this host refuses userfaultfd (the test then checks only
    /// that the refusal is one the cache handles).
    pub(crate) fn watcher_or_skip() -> Option<Watcher> {
        match Watcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                let refused = matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
                    || e.kind() == io::ErrorKind::Unsupported;
                assert!(refused, "unexpected userfaultfd error: {e}");
                eprintln!("userfaultfd unavailable here ({e}); skipping");
                None
            }
        }
    }

    /// Reads the byte at `addr` (after writing 7 there if `write`) on another thread; `None`
    /// if that does not finish in time.
    pub(crate) fn touch_with_timeout(addr: usize, write: bool) -> Option<u8> {
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            let p = addr as *mut u8;
            // SAFETY: `addr` lies in a live mapping owned by the calling test, which outlives
            // this thread (the test joins it or leaks the mapping on timeout).
            let v = unsafe {
                if write {
                    p.write_volatile(7);
                }
                p.read_volatile()
            };
            let _ = tx.send(v);
        });
        let v = rx.recv_timeout(Duration::from_secs(5)).ok();
        if v.is_some() {
            let _ = t.join();
        }
        v
    }

    fn covers(pending: &[(usize, usize)], start: usize, end: usize) -> bool {
        pending.iter().any(|&(s, e)| s <= start && e >= end)
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
        assert_eq!(UFFDIO_WAKE, 0x8010_AA02);
        assert_eq!(UFFDIO_ZEROPAGE, 0xC020_AA04);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xAA00);
    }

    #[test]
    fn carve_splits_and_reports_live_pieces() {
        let mut set = BTreeMap::new();
        set.insert(
            0,
            Span {
                end: 10,
                dead: false,
            },
        );
        set.insert(
            10,
            Span {
                end: 20,
                dead: true,
            },
        );
        set.insert(
            30,
            Span {
                end: 40,
                dead: false,
            },
        );
        let mut live = Vec::new();
        carve(&mut set, 5, 35, |s, e| live.push((s, e)));
        live.sort_unstable();
        assert_eq!(live, vec![(5, 10), (30, 35)]);
        let left: Vec<_> = set.iter().map(|(&s, sp)| (s, sp.end, sp.dead)).collect();
        assert_eq!(left, vec![(0, 5, false), (35, 40, false)]);
        carve(&mut set, 1, 2, |_, _| {});
        let left: Vec<_> = set.iter().map(|(&s, sp)| (s, sp.end)).collect();
        assert_eq!(left, vec![(0, 1), (2, 5), (35, 40)]);
    }

    #[test]
    fn ring_overflows_without_growing() {
        let r = Ring::new(2);
        assert!(r.push(1, 2));
        assert!(r.push(3, 4));
        assert!(!r.push(5, 6));
        let mut out = Vec::new();
        r.drain(&mut out);
        assert_eq!(out, vec![(1, 2), (3, 4)]);
        assert!(r.push(7, 8));
        out.clear();
        r.drain(&mut out);
        assert_eq!(out, vec![(7, 8)]);
    }

    #[test]
    fn rejects_unaligned_and_unwatchable_ranges() {
        let Some(w) = watcher_or_skip() else { return };
        let p = w.page_size();
        let m = Mapping::new(2);
        let e = w.watch(m.addr + 1, p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            w.watch(m.addr, 0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(w.watch(usize::MAX & !(p - 1), 2 * p).is_err());
        // A private file mapping is not anonymous memory: the kernel refuses it.
        let f = std::fs::File::open("/proc/self/exe").expect("open own executable");
        // SAFETY: maps one read-only page of a file we hold open.
        let fm = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                p,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(fm, libc::MAP_FAILED);
        assert!(w.watch(fm as usize, p).is_err());
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(fm, p) };
        // Unmapped memory cannot be watched either.
        let mut gone = Mapping::new(1);
        let addr = gone.addr;
        gone.unmap();
        assert!(w.watch(addr, p).is_err());
    }

    #[test]
    fn munmap_is_reported_before_it_returns() {
        let Some(w) = watcher_or_skip() else { return };
        let mut m = Mapping::new(4);
        m.fill(1);
        w.watch(m.addr, m.len).expect("watch");
        assert!(!w.has_pending());
        let (start, end) = (m.addr, m.addr + m.len);
        m.unmap();
        // No waiting: once munmap returned, the invalidation is visible.
        assert!(w.has_pending());
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert!(covers(&out, start, end), "{out:x?}");
        assert!(!w.has_pending());
    }

    #[test]
    fn partial_munmap_reports_only_that_part() {
        let Some(w) = watcher_or_skip() else { return };
        let p = page_size();
        let m = Mapping::new(4);
        m.fill(1);
        w.watch(m.addr, m.len).expect("watch");
        // SAFETY: unmaps the third page of our own mapping (the Drop of `m` later unmaps the
        // whole range again, which is harmless).
        assert_eq!(unsafe { libc::munmap((m.addr + 2 * p) as *mut _, p) }, 0);
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert_eq!(out, vec![(m.addr + 2 * p, m.addr + 3 * p)]);
        // The rest stays watched.
        // SAFETY: drops the pages of the first two pages of our own mapping.
        let r = unsafe { libc::madvise(m.addr as *mut _, 2 * p, libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
        out.clear();
        w.take_pending(&mut out);
        assert!(covers(&out, m.addr, m.addr + 2 * p), "{out:x?}");
    }

    #[test]
    fn dontneed_is_reported_and_pages_read_zero_afterwards() {
        let Some(w) = watcher_or_skip() else { return };
        let m = Mapping::new(3);
        m.fill(0xAB);
        w.watch(m.addr, m.len).expect("watch");
        m.dontneed();
        assert!(w.has_pending());
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert!(covers(&out, m.addr, m.addr + m.len), "{out:x?}");
        assert_eq!(touch_with_timeout(m.addr + 5, false), Some(0));
        assert_eq!(touch_with_timeout(m.addr + m.len - 1, true), Some(7));
    }

    #[test]
    fn fault_on_untouched_page_does_not_hang_and_invalidates_the_range() {
        let Some(w) = watcher_or_skip() else { return };
        let p = page_size();
        let m = Mapping::new(4); // never touched: every page is missing
        w.watch(m.addr, m.len).expect("watch");
        assert_eq!(touch_with_timeout(m.addr + p + 3, false), Some(0));
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert!(covers(&out, m.addr, m.addr + m.len), "{out:x?}");
        // Unregistered: other pages fault normally now.
        assert_eq!(touch_with_timeout(m.addr + 3 * p, true), Some(7));
        out.clear();
        w.take_pending(&mut out);
        assert!(out.is_empty(), "{out:x?}");
        // And it can be watched again.
        w.watch(m.addr, m.len).expect("watch again");
        w.unwatch(m.addr, m.len);
    }

    #[test]
    fn fault_outside_known_ranges_is_resolved_with_the_zero_page() {
        let Some(w) = watcher_or_skip() else { return };
        let m = Mapping::new(2);
        // Register with the kernel without recording it, as after a lost bookkeeping race.
        w.shared.register(m.addr, m.len).expect("register");
        assert_eq!(touch_with_timeout(m.addr + 1, false), Some(0));
        assert_eq!(touch_with_timeout(m.addr + 2, true), Some(7));
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert!(out.is_empty(), "{out:x?}");
    }

    #[test]
    fn mremap_reports_the_old_range() {
        let Some(w) = watcher_or_skip() else { return };
        let mut m = Mapping::new(2);
        m.fill(3);
        w.watch(m.addr, m.len).expect("watch");
        let dest = Mapping::new(2);
        // SAFETY: moves our own mapping onto `dest`, another mapping of ours of the same
        // size (which it replaces; `dest`'s Drop unmaps the moved pages).
        let q = unsafe {
            libc::mremap(
                m.addr as *mut libc::c_void,
                m.len,
                m.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dest.addr as *mut libc::c_void,
            )
        };
        assert_eq!(q as usize, dest.addr);
        m.mapped = false;
        assert!(w.has_pending());
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert!(covers(&out, m.addr, m.addr + m.len), "{out:x?}");
        // SAFETY: the moved page is mapped at `dest.addr` and holds the bytes written above.
        assert_eq!(unsafe { (dest.addr as *const u8).read_volatile() }, 3);
        // The moved range is not left registered: discarding and touching it does not stall.
        dest.dontneed();
        assert!(!w.has_pending(), "moved range still watched");
        assert_eq!(touch_with_timeout(dest.addr + 1, false), Some(0));
    }

    #[test]
    fn overlapping_watches_fault_only_their_own_range() {
        let Some(w) = watcher_or_skip() else { return };
        let p = page_size();
        let m = Mapping::new(3); // untouched
        w.watch(m.addr, 2 * p).expect("watch");
        w.watch(m.addr + p, 2 * p)
            .expect("watch an overlapping range");
        // The first page is now its own watched range.
        assert_eq!(touch_with_timeout(m.addr, false), Some(0));
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert_eq!(out, vec![(m.addr, m.addr + p)]);
        assert_eq!(touch_with_timeout(m.addr + 2 * p, false), Some(0));
        out.clear();
        w.take_pending(&mut out);
        assert_eq!(out, vec![(m.addr + p, m.addr + 3 * p)]);
    }

    #[test]
    fn lost_events_report_everything() {
        let Some(w) = watcher_or_skip() else { return };
        let mut maps: Vec<Mapping> = (0..RING_CAPACITY + 8).map(|_| Mapping::new(1)).collect();
        for m in &maps {
            m.fill(1);
            w.watch(m.addr, m.len).expect("watch");
        }
        for m in &mut maps {
            m.unmap();
        }
        let mut out = Vec::new();
        w.take_pending(&mut out);
        assert!(out.contains(&(0, usize::MAX)), "overflow not reported");
        assert!(!w.has_pending());
    }

    #[test]
    fn concurrent_unmaps_are_all_reported() {
        let Some(w) = watcher_or_skip() else { return };
        let w = Arc::new(w);
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let (w, tx) = (Arc::clone(&w), tx.clone());
            std::thread::spawn(move || {
                let mut ranges = Vec::new();
                for _ in 0..100 {
                    let mut m = Mapping::new(2);
                    m.fill(1);
                    w.watch(m.addr, m.len).expect("watch");
                    ranges.push((m.addr, m.addr + m.len));
                    m.unmap();
                }
                let _ = tx.send(ranges);
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut unmapped, mut seen) = (Vec::new(), Vec::new());
        let mut done = 0;
        while done < 4 {
            assert!(Instant::now() < deadline, "unmapping threads stalled");
            w.take_pending(&mut seen);
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(r) => {
                    unmapped.extend(r);
                    done += 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a thread panicked"),
            }
        }
        w.take_pending(&mut seen);
        if !seen.contains(&(0, usize::MAX)) {
            for &(s, e) in &unmapped {
                assert!(covers(&seen, s, e), "unmap of {s:#x}..{e:#x} not reported");
            }
        }
    }

    #[test]
    fn unwatch_stops_reports() {
        let Some(w) = watcher_or_skip() else { return };
        let mut m = Mapping::new(2);
        m.fill(1);
        w.watch(m.addr, m.len).expect("watch");
        w.unwatch(m.addr, m.len);
        m.unmap();
        assert!(!w.has_pending());
    }

    #[test]
    fn drop_joins_the_thread_promptly() {
        let Some(w) = watcher_or_skip() else { return };
        let m = Mapping::new(1);
        m.fill(1);
        w.watch(m.addr, m.len).expect("watch");
        let t0 = Instant::now();
        drop(w);
        assert!(t0.elapsed() < Duration::from_secs(5));
        // The descriptor is closed: unmapping does not wait for anyone.
        drop(m);
    }
}
