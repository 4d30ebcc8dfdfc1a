//! One rank's shared-memory segment: a header with the doorbell used to wake it, then one
//! inbound ring per peer, then one assist slot per peer ([`super::assist`]). Rank `j` produces
//! into ring `j` of rank `i`'s segment, and asks rank `i` for help with a read of its memory
//! through assist slot `j`.
//!
//! Segments live in `/dev/shm/oxmpi-<job>-<rank>`. The owner creates its file; peers map it
//! after a fence; after a second fence the owner unlinks the name, so the memory goes away with
//! the last process that maps it however the job ends. `oxrun` also sweeps the job's names.

use super::assist::{AssistSlot, ASSIST_STRIDE};
use super::ring::{RingPtr, RING_STRIDE};
use crate::sys::cvt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const MAGIC: u64 = 0x4f58_4d50_4953_484d; // "OXMPISHM"
const HEADER_BYTES: usize = 4096;

#[repr(C, align(64))]
struct Line32(AtomicU32);

#[repr(C)]
struct SegHeader {
    magic: AtomicU64,
    _pad: [u8; 56],
    /// Futex word bumped by producers that find the owner asleep.
    doorbell: Line32,
    /// Non-zero while the owner sleeps (or is about to) on `doorbell`.
    sleeping: Line32,
    /// Assisted reads of the owner's memory now open (peers add and remove theirs).
    assist_pending: Line32,
    /// The CPU the owner is pinned to, plus one; 0 when it may run on several.
    cpu: Line32,
    /// Non-zero while the owner's last poll found nothing (kept by owners that share a core
    /// with other ranks: see `Shm::poll`).
    idle: Line32,
}

/// The directory that holds segments.
pub fn dir() -> PathBuf {
    PathBuf::from("/dev/shm")
}

/// The file name of `rank`'s segment in `job`.
pub fn name(job: &str, rank: u32) -> String {
    format!("oxmpi-{job}-{rank}")
}

/// A mapped segment (own or a peer's).
pub struct Segment {
    base: *mut u8,
    len: usize,
    size: u32,
    path: PathBuf,
}

// SAFETY: the mapping is process-wide and all shared state in it is accessed atomically or
// through the ring protocol.
unsafe impl Send for Segment {}

impl Segment {
    fn bytes_for(size: u32) -> usize {
        HEADER_BYTES + size as usize * (RING_STRIDE + ASSIST_STRIDE)
    }

    /// Creates and maps this rank's segment with `size` inbound rings.
    pub fn create(job: &str, rank: u32, size: u32) -> io::Result<Self> {
        let path = dir().join(name(job, rank));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let len = Self::bytes_for(size);
        file.set_len(len as u64)?;
        let seg = Self::map(&file, len, size, path)?;
        for from in 0..size {
            seg.assist(from).close_new();
        }
        let cpu = crate::affinity::single_cpu().map_or(0, |c| c as u32 + 1);
        seg.header().cpu.0.store(cpu, Ordering::Relaxed);
        seg.header().magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Maps a peer's segment.
    pub fn open(job: &str, rank: u32, size: u32) -> io::Result<Self> {
        let path = dir().join(name(job, rank));
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = Self::bytes_for(size);
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment too small",
            ));
        }
        let seg = Self::map(&file, len, size, path)?;
        if seg.header().magic.load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an oxmpi segment",
            ));
        }
        Ok(seg)
    }

    fn map(file: &std::fs::File, len: usize, size: u32, path: PathBuf) -> io::Result<Self> {
        // SAFETY: mapping a file we opened read-write, of at least `len` bytes; the result is
        // checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: p.cast(),
            len,
            size,
            path,
        })
    }

    /// Removes the segment's name (the mapping stays).
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// A guard that removes the segment's name when dropped: a wire-up that fails before
    /// [`Segment::unlink`] (a peer that never came, the key-value service lost) leaves nothing
    /// in `/dev/shm`, also under a launcher that sweeps none of it away as `oxrun` does.
    pub fn name_guard(&self) -> NameGuard {
        NameGuard(self.path.clone())
    }

    fn header(&self) -> &SegHeader {
        // SAFETY: the mapping is at least HEADER_BYTES long, page aligned, and SegHeader is
        // made of atomics valid for any bit pattern.
        unsafe { &*(self.base as *const SegHeader) }
    }

    /// Address of the segment in this process (published so peers can probe `process_vm_readv`).
    pub fn base_addr(&self) -> u64 {
        self.base as u64
    }

    /// The magic value at the start of every segment.
    pub fn magic() -> u64 {
        MAGIC
    }

    /// The inbound ring fed by `from`.
    pub fn ring(&self, from: u32) -> RingPtr {
        let off = HEADER_BYTES + from as usize * RING_STRIDE;
        assert!(
            off + RING_STRIDE <= self.len,
            "ring {from} out of the segment"
        );
        // SAFETY: in bounds (asserted), 64-byte aligned (HEADER_BYTES and RING_STRIDE are
        // multiples of 64), and mapped for as long as `self`, which the fabric keeps.
        unsafe { RingPtr::new(self.base.add(off)) }
    }

    /// The assist slot through which `from` asks this segment's owner to help with a read.
    pub fn assist(&self, from: u32) -> &AssistSlot {
        assert!(from < self.size, "assist slot {from} out of the segment");
        let off = HEADER_BYTES + self.size as usize * RING_STRIDE + from as usize * ASSIST_STRIDE;
        // SAFETY: in bounds (`from < size`, and the mapping is `bytes_for(size)` long), 64-byte
        // aligned (HEADER_BYTES, RING_STRIDE and ASSIST_STRIDE are multiples of 64), made of
        // atomics and padding that is never written, valid for any bit pattern, and mapped for
        // as long as `self`.
        unsafe { &*(self.base.add(off) as *const AssistSlot) }
    }

    /// The CPU the owner was pinned to when it created the segment, if only one.
    pub fn cpu(&self) -> Option<u32> {
        self.header().cpu.0.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Non-zero while the owner's last poll found nothing (see [`SegHeader`]).
    pub fn idle(&self) -> &AtomicU32 {
        &self.header().idle.0
    }

    /// The count of assisted reads of the owner's memory now open.
    pub fn assist_pending(&self) -> &AtomicU32 {
        &self.header().assist_pending.0
    }

    /// Producer side: wakes the owner if it sleeps. Call after publishing a record.
    ///
    /// There is deliberately no store-load fence between the record and this load: a fence
    /// would stall every send until the record's cache line is owned (≈0.05 µs here). The
    /// price is a rare missed wake-up when the owner starts sleeping while the record is still
    /// in this core's store buffer; the owner's first naps after activity are therefore short
    /// (see `Shm::wait`), so such a record waits tens of microseconds, never a full sleep.
    pub fn ring_doorbell(&self) {
        let h = self.header();
        if h.sleeping.0.load(Ordering::Relaxed) != 0 {
            h.doorbell.0.fetch_add(1, Ordering::SeqCst);
            // SAFETY: FUTEX_WAKE on a 4-byte aligned word inside a live shared mapping.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    h.doorbell.0.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                );
            }
        }
    }

    /// Owner side: sleeps until a producer rings or `timeout` passes, unless `ready()` says
    /// data is already there once the sleeping flag is visible.
    pub fn sleep(&self, timeout: std::time::Duration, ready: impl FnOnce() -> bool) {
        let h = self.header();
        let seq = h.doorbell.0.load(Ordering::SeqCst);
        h.sleeping.0.store(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !ready() {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT on a live aligned word with a valid timespec; returns on wake,
            // value change, timeout or signal, all of which are fine here.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    h.doorbell.0.as_ptr(),
                    libc::FUTEX_WAIT,
                    seq,
                    &ts as *const libc::timespec,
                );
            }
        }
        h.sleeping.0.store(0, Ordering::SeqCst);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`; no references into it outlive
        // the fabric that owns this segment.
        let _ = cvt(unsafe { libc::munmap(self.base.cast(), self.len) });
    }
}

/// See [`Segment::name_guard`].
#[derive(Debug)]
pub struct NameGuard(PathBuf);

impl Drop for NameGuard {
    fn drop(&mut self) {
        // Gone already after a successful wire-up: nothing to do then.
        let _ = std::fs::remove_file(&self.0);
    }
}
