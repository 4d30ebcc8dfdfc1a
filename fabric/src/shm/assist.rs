//! Assisted remote reads: the sender of a large message helps copy it while it waits.
//!
//! A shared-memory rendezvous read is one `process_vm_readv` by the receiver, while the sender
//! sits idle until the receiver's FIN. With an assisted read the receiver publishes the
//! transfer in an [`AssistSlot`] of the sender's segment (slot index: the receiver's rank),
//! and the two copy chunks of it at once: the receiver with `process_vm_readv` from the
//! sender's buffer, the sender (from its poll) with `process_vm_writev` into the receiver's.
//! Two cores copy, so a large message moves in about half the time.
//!
//! Chunks are handed out by one claim word per slot, `generation << 32 | next chunk`, taken
//! with compare-and-swap by either side. So:
//! - a sender that is busy elsewhere (computing, sleeping, or not polling) claims nothing and
//!   the receiver copies every chunk itself: the read never waits for the sender to arrive;
//! - the receiver closes the request (swaps in [`CLOSED`]) once no chunk is left, then waits
//!   only for the chunks the sender has already claimed, counted in `done`; no write of the
//!   sender's can land after the read has returned the buffer to the user;
//! - a helper that read the slot of an earlier request fails its compare-and-swap, because the
//!   generation changed, and copies nothing.
//!
//! A helper whose write fails records the chunk in `failed` (and counts it done); the receiver
//! copies that chunk itself after closing. The slot's fields other than the claim word are
//! written only while the request is closed, in the manner of a sequence lock: the receiver
//! fences after closing, the helper fences before its compare-and-swap, so a helper that saw a
//! field of the next request cannot claim a chunk of the old one.
//!
//! Each slot has one writer of requests, the receiver (reads are synchronous), and any number
//! of requests toward one sender can be open at once, one per receiver; the sender's segment
//! counts them (`Segment::assist_pending`) so an idle sender checks one word per poll.

use std::io;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes an [`AssistSlot`] occupies in a segment.
pub const ASSIST_STRIDE: usize = 128;
/// The `next` half of the claim word while no request is open.
pub const CLOSED: u32 = u32::MAX;
/// `failed` when no helper write failed.
const NONE: u64 = u64::MAX;
/// Default smallest read that is offered for assistance.
pub const ASSIST_MIN: usize = 128 * 1024;
/// Default bytes per claimed chunk.
pub const ASSIST_CHUNK: usize = 64 * 1024;

/// One receiver's request for help, in the sender's segment. All zero is a valid, idle slot
/// (no chunks).
#[repr(C, align(64))]
pub struct AssistSlot {
    /// `generation << 32 | next unclaimed chunk`; next is [`CLOSED`] between requests.
    claim: AtomicU64,
    /// Address of the message in the sender.
    src: AtomicU64,
    /// Address of the receive buffer in the receiver.
    dst: AtomicU64,
    /// Bytes to copy.
    len: AtomicU64,
    /// Bytes per chunk.
    chunk: AtomicU64,
    _pad: [u64; 3],
    /// Chunks the helper finished (copied, or failed and recorded in `failed`).
    done: AtomicU64,
    /// Index of the chunk whose write failed, or `NONE`.
    failed: AtomicU64,
    _pad2: [u64; 6],
}

const _: () = assert!(std::mem::size_of::<AssistSlot>() == ASSIST_STRIDE);

impl AssistSlot {
    /// An idle slot (for tests; in a segment the zeroed file is one).
    pub fn new() -> Self {
        Self {
            claim: AtomicU64::new(0),
            src: AtomicU64::new(0),
            dst: AtomicU64::new(0),
            len: AtomicU64::new(0),
            chunk: AtomicU64::new(0),
            _pad: [0; 3],
            done: AtomicU64::new(0),
            failed: AtomicU64::new(NONE),
            _pad2: [0; 6],
        }
    }
}

impl Default for AssistSlot {
    fn default() -> Self {
        Self::new()
    }
}

fn chunks(len: u64, chunk: u64) -> u64 {
    if chunk == 0 {
        0
    } else {
        len.div_ceil(chunk)
    }
}

/// Longest run of chunks the receiver claims at once (while the sender is not helping).
const MAX_RUN: u64 = 16;

/// Claims up to `k` next chunks of generation `gen` (of `n` chunks): the first and how many,
/// if any is left.
fn claim(slot: &AssistSlot, gen: u32, n: u64, k: u64) -> Option<(u64, u64)> {
    let mut w = slot.claim.load(Ordering::Acquire);
    loop {
        let next = w as u32;
        if (w >> 32) as u32 != gen || next == CLOSED || next as u64 >= n {
            return None;
        }
        let take = k.min(n - next as u64);
        match slot
            .claim
            .compare_exchange_weak(w, w + take, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some((next as u64, take)),
            Err(now) => w = now,
        }
    }
}

/// Why an assisted read failed.
#[derive(Debug)]
pub enum AssistError {
    /// The receiver's own copy failed (the helper's chunks, if any, had finished).
    Read(io::Error),
    /// The helper claimed a chunk and did not finish it within the deadline: the slot may
    /// still be written to, and must not be used again.
    Stalled,
}

/// What an assisted read did: chunks copied by each side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssistStats {
    /// Chunks the receiver copied.
    pub mine: u64,
    /// Chunks the helper copied.
    pub helped: u64,
}

/// Receiver side: copies `dst.len()` bytes from `src` (an address in the sender) into `dst`
/// with `read(src_addr, buf)`, chunk by chunk, while the sender may claim chunks through
/// `slot` (the receiver's slot in the sender's segment) and write them itself. `pending` is
/// the sender's count of open requests. Returns once every chunk is in `dst` and no helper
/// write is in flight, or with [`AssistError::Stalled`] if a claimed chunk is not finished by
/// `deadline`.
pub fn assisted_read(
    slot: &AssistSlot,
    pending: &AtomicU32,
    src: u64,
    dst: &mut [u8],
    chunk: usize,
    deadline: Duration,
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<AssistStats, AssistError> {
    let chunk = chunk.max(1);
    let len = dst.len() as u64;
    let n = chunks(len, chunk as u64);
    let gen = ((slot.claim.load(Ordering::Acquire) >> 32) as u32).wrapping_add(1);
    // Publish: the fields first (the slot is closed, so no helper claims from it), then the
    // claim word that opens it, then the count the sender polls.
    slot.src.store(src, Ordering::Relaxed);
    slot.dst.store(dst.as_mut_ptr() as u64, Ordering::Relaxed);
    slot.len.store(len, Ordering::Relaxed);
    slot.chunk.store(chunk as u64, Ordering::Relaxed);
    slot.done.store(0, Ordering::Relaxed);
    slot.failed.store(NONE, Ordering::Relaxed);
    slot.claim.store((gen as u64) << 32, Ordering::Release);
    pending.fetch_add(1, Ordering::AcqRel);

    let mut stats = AssistStats::default();
    let mut error = None;
    // While the sender claims nothing, take longer runs (one read each): a sender busy
    // elsewhere costs the read a few more system calls, not one per chunk.
    let (mut run, mut expected) = (1, 0);
    while let Some((c, t)) = claim(slot, gen, n, run) {
        run = if c == expected {
            (run * 2).min(MAX_RUN)
        } else {
            1
        };
        expected = c + t;
        stats.mine += t;
        let off = (c * chunk as u64) as usize;
        let end = (off + t as usize * chunk).min(dst.len());
        if let Err(e) = read(src + off as u64, &mut dst[off..end]) {
            error = Some(e);
            break;
        }
    }
    // Close; from here no chunk can be claimed. Fields may be rewritten only after the fence.
    let last = slot
        .claim
        .swap(((gen as u64) << 32) | CLOSED as u64, Ordering::AcqRel);
    fence(Ordering::Release);
    pending.fetch_sub(1, Ordering::AcqRel);
    let claimed = (last as u32 as u64).min(n);
    let theirs = claimed - stats.mine;
    let start = Instant::now();
    let mut spins = 0u32;
    while slot.done.load(Ordering::Acquire) < theirs {
        spins = spins.wrapping_add(1);
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
            if spins.is_multiple_of(256) && start.elapsed() > deadline {
                return Err(AssistError::Stalled);
            }
        }
    }
    stats.helped = theirs;
    let failed = slot.failed.load(Ordering::Acquire);
    if failed != NONE && failed < n && error.is_none() {
        stats.helped -= 1;
        stats.mine += 1;
        let off = (failed * chunk as u64) as usize;
        let end = (off + chunk).min(dst.len());
        if let Err(e) = read(src + off as u64, &mut dst[off..end]) {
            error = Some(e);
        }
    }
    match error {
        Some(e) => Err(AssistError::Read(e)),
        None => Ok(stats),
    }
}

/// Helper side: claims and copies chunks of the request open in `slot`, if any, with
/// `write(src_addr, dst_addr, len)` (from this process into the receiver). Returns the
/// chunks copied, or the error of a failed write, whose chunk the receiver then copies itself.
pub fn help(
    slot: &AssistSlot,
    mut write: impl FnMut(u64, u64, usize) -> io::Result<()>,
) -> io::Result<u64> {
    let mut copied = 0;
    loop {
        let w = slot.claim.load(Ordering::Acquire);
        let next = w as u32;
        if next == CLOSED {
            return Ok(copied);
        }
        let src = slot.src.load(Ordering::Relaxed);
        let dst = slot.dst.load(Ordering::Relaxed);
        let len = slot.len.load(Ordering::Relaxed);
        let chunk = slot.chunk.load(Ordering::Relaxed);
        if next as u64 >= chunks(len, chunk) {
            return Ok(copied);
        }
        // Pairs with the receiver's fence after closing: if any field above came from a later
        // request, the compare-and-swap below sees the slot closed or renewed, and fails.
        fence(Ordering::Acquire);
        if slot
            .claim
            .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let off = next as u64 * chunk;
        let n = chunk.min(len - off) as usize;
        match write(src.wrapping_add(off), dst.wrapping_add(off), n) {
            Ok(()) => {
                copied += 1;
                slot.done.fetch_add(1, Ordering::Release);
            }
            Err(e) => {
                slot.failed.store(next as u64, Ordering::Relaxed);
                slot.done.fetch_add(1, Ordering::Release);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// Copies between plain addresses of this process (what CMA does across processes).
    fn copy(src: u64, dst: u64, len: usize) {
        // SAFETY: the tests pass addresses of live buffers of at least `len` bytes that do not
        // overlap: the source vector and the destination slice of the running read.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn without_a_helper_the_receiver_copies_every_chunk() {
        let slot = AssistSlot::new();
        let pending = AtomicU32::new(0);
        for (len, chunk) in [(0, 8), (1, 8), (8, 8), (9, 8), (1000, 7), (4096, 4096)] {
            let src = pattern(len, 3);
            let mut dst = vec![0u8; len];
            let mut reads = 0;
            let s = assisted_read(
                &slot,
                &pending,
                src.as_ptr() as u64,
                &mut dst,
                chunk,
                Duration::from_secs(5),
                |a, buf| {
                    reads += 1;
                    copy(a, buf.as_mut_ptr() as u64, buf.len());
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(dst, src, "len {len} chunk {chunk}");
            assert_eq!(s.mine, len.div_ceil(chunk) as u64);
            // Runs of 1, 2, 4, 8, then MAX_RUN chunks.
            let n = len.div_ceil(chunk) as u64;
            assert!(reads <= 5 + n / MAX_RUN, "{reads} reads for {n} chunks");
            assert_eq!(s.helped, 0);
            assert_eq!(pending.load(Ordering::Relaxed), 0);
        }
        // Closed: a helper finds nothing.
        assert_eq!(help(&slot, |_, _, _| panic!("nothing to copy")).unwrap(), 0);
    }

    #[test]
    fn an_idle_slot_gives_a_helper_nothing() {
        let slot = AssistSlot::new();
        assert_eq!(help(&slot, |_, _, _| panic!("nothing to copy")).unwrap(), 0);
    }

    /// A helper thread polling the slot as a sender's progress loop does, against many reads
    /// of varied sizes in a row: every byte arrives, the work is shared, nothing is left open.
    #[test]
    fn a_polling_helper_shares_the_copy_and_every_byte_arrives() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let helper = {
            let (slot, pending, stop) = (slot.clone(), pending.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut copied = 0;
                while !stop.load(Ordering::Relaxed) {
                    if pending.load(Ordering::Acquire) > 0 {
                        copied += help(&slot, |s, d, n| {
                            copy(s, d, n);
                            Ok(())
                        })
                        .unwrap();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                copied
            })
        };
        let mut total = AssistStats::default();
        for i in 0..400usize {
            let len = [1, 4096, 65536, 100_003, 1 << 20][i % 5];
            let src = pattern(len, i as u8);
            let mut dst = vec![0u8; len];
            let s = assisted_read(
                &slot,
                &pending,
                src.as_ptr() as u64,
                &mut dst,
                4096,
                Duration::from_secs(10),
                |a, buf| {
                    copy(a, buf.as_mut_ptr() as u64, buf.len());
                    Ok(())
                },
            )
            .unwrap();
            assert!(dst == src, "read {i} of {len} bytes differs");
            assert_eq!(s.mine + s.helped, len.div_ceil(4096) as u64);
            total.mine += s.mine;
            total.helped += s.helped;
        }
        stop.store(true, Ordering::Relaxed);
        let copied = helper.join().unwrap();
        assert_eq!(copied, total.helped);
        assert_eq!(pending.load(Ordering::Relaxed), 0);
        // Two threads: unless the machine never ran them at once, the helper took some.
        eprintln!("receiver {} chunks, helper {}", total.mine, total.helped);
    }

    /// A helper whose write fails hands its chunk back: the receiver copies it, the data is
    /// whole, and the error reaches the helper.
    #[test]
    fn a_failed_helper_write_is_copied_by_the_receiver() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let len = 64 * 1024;
        let src = pattern(len, 9);
        let mut dst = vec![0u8; len];
        let src_addr = src.as_ptr() as u64;
        // The receiver lets the helper go first: it claims its first chunk only after the
        // helper has failed (`failed_once`).
        let failed_once = Arc::new(AtomicBool::new(false));
        let helper = {
            let (slot, pending, failed_once) = (slot.clone(), pending.clone(), failed_once.clone());
            std::thread::spawn(move || {
                while pending.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                let r = help(&slot, |_, _, _| {
                    Err(io::Error::from_raw_os_error(libc::ESRCH))
                });
                failed_once.store(true, Ordering::Release);
                r
            })
        };
        let s = assisted_read(
            &slot,
            &pending,
            src_addr,
            &mut dst,
            4096,
            Duration::from_secs(10),
            |a, buf| {
                while !failed_once.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                copy(a, buf.as_mut_ptr() as u64, buf.len());
                Ok(())
            },
        )
        .unwrap();
        let err = helper.join().unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        assert_eq!(
            s,
            AssistStats {
                mine: 16,
                helped: 0
            }
        );
        assert!(dst == src);
    }

    /// A helper that claimed a chunk and never finishes it: the read reports a stall instead
    /// of returning the buffer while a write may still land in it.
    #[test]
    fn a_helper_that_never_finishes_its_chunk_is_reported_as_stalled() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let claimed = Arc::new(AtomicBool::new(false));
        let helper = {
            let (slot, pending, release, claimed) = (
                slot.clone(),
                pending.clone(),
                release.clone(),
                claimed.clone(),
            );
            std::thread::spawn(move || {
                while pending.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                let mut first = true;
                help(&slot, |_, _, _| {
                    if first {
                        first = false;
                        claimed.store(true, Ordering::Release);
                        while !release.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Ok(())
                })
            })
        };
        let mut dst = vec![0u8; 8192];
        let src = vec![1u8; 8192];
        let r = assisted_read(
            &slot,
            &pending,
            src.as_ptr() as u64,
            &mut dst,
            4096,
            Duration::from_millis(200),
            |a, buf| {
                while !claimed.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                copy(a, buf.as_mut_ptr() as u64, buf.len());
                Ok(())
            },
        );
        assert!(matches!(r, Err(AssistError::Stalled)), "{r:?}");
        release.store(true, Ordering::Release);
        helper.join().unwrap().unwrap();
    }

    /// The receiver's own failed read is reported, after the helper's chunks are done.
    #[test]
    fn a_failed_receiver_read_is_reported() {
        let slot = AssistSlot::new();
        let pending = AtomicU32::new(0);
        let mut dst = vec![0u8; 4 * 4096];
        let r = assisted_read(
            &slot,
            &pending,
            0x1000,
            &mut dst,
            4096,
            Duration::from_secs(1),
            |_, _| Err(io::Error::from_raw_os_error(libc::EFAULT)),
        );
        assert!(matches!(r, Err(AssistError::Read(_))), "{r:?}");
        assert_eq!(pending.load(Ordering::Relaxed), 0);
        assert_eq!(help(&slot, |_, _, _| panic!("closed")).unwrap(), 0);
    }
}
