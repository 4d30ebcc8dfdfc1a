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
//! with compare-and-swap by either side, a run at a time: each claim takes half of the chunks
//! left (rounded up), and the receiver, if the sender has claimed nothing since its previous
//! claim, all of them. Every `process_vm_readv`/`writev` call costs about 1 µs on this VM
//! before it copies anything, so calls are kept few: two for a read nobody helps with, a few
//! each when both copy. So:
//! - a sender that is busy elsewhere (computing, sleeping, or not polling) claims nothing and
//!   the receiver copies every chunk itself: the read never waits for the sender to arrive;
//! - the receiver closes the request (swaps in [`CLOSED`]) once no chunk is left, then waits
//!   only for the chunks the sender has already claimed, counted in `done`; no write of the
//!   sender's can land after the read has returned the buffer to the user;
//! - a helper that read the slot of an earlier request fails its compare-and-swap, because the
//!   generation changed, and copies nothing.
//!
//! A helper whose write fails records the run in `failed`/`failed_run` (and counts it done),
//! and helps no more with that request; the receiver copies that run itself after closing. The slot's
//! fields other than the claim word are written only while the request is closed, in the
//! manner of a sequence lock: the receiver fences after closing, the helper fences before its
//! compare-and-swap, so a helper that saw a field of the next request cannot claim a chunk of
//! the old one. A slot starts closed ([`AssistSlot::close_new`] when its segment is created);
//! the receiver also closes it again before writing a request, whatever state it found.
//!
//! The receiver waits for the helper's claimed chunks for as long as the helper process
//! exists: a chunk in flight may land in the buffer until then, so the read never returns
//! early; a helper that dies (or is a zombie) writes nothing more. A sender that sleeps in its
//! wait (no message for it for a while) is not woken to help: the receiver copies alone.
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

/// One receiver's request for help, in the sender's segment. Closed when no request is open
/// (its segment's creator closes it first); a helper checks only the claim word until then.
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
    /// Chunks the helper finished (copied, or failed and recorded in `failed`/`failed_run`).
    done: AtomicU64,
    /// First chunk of the run whose write failed, or `NONE`.
    failed: AtomicU64,
    /// Chunks in that run.
    failed_run: AtomicU64,
    _pad2: [u64; 5],
}

const _: () = assert!(std::mem::size_of::<AssistSlot>() == ASSIST_STRIDE);

impl AssistSlot {
    /// A closed slot.
    pub fn new() -> Self {
        Self {
            claim: AtomicU64::new(CLOSED as u64),
            src: AtomicU64::new(0),
            dst: AtomicU64::new(0),
            len: AtomicU64::new(0),
            chunk: AtomicU64::new(0),
            _pad: [0; 3],
            done: AtomicU64::new(0),
            failed: AtomicU64::new(NONE),
            failed_run: AtomicU64::new(0),
            _pad2: [0; 5],
        }
    }

    /// Closes a slot in freshly created (zeroed) shared memory, before any peer can see it.
    pub fn close_new(&self) {
        self.claim.store(CLOSED as u64, Ordering::Relaxed);
        self.failed.store(NONE, Ordering::Relaxed);
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

/// How many of the `left` unclaimed chunks one claim takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Take {
    /// Half, rounded up: each side takes half of what is left, so the two finish together
    /// in a few calls each (every `process_vm_readv`/`writev` call costs about 1 µs here
    /// before it copies anything).
    Half,
    /// All of them (the receiver, when the sender claimed nothing since its last claim).
    All,
}

impl Take {
    fn of(self, left: u64) -> u64 {
        match self {
            Take::Half => left.div_ceil(2),
            Take::All => left,
        }
    }
}

/// Claims the next chunks of generation `gen` (of `n` chunks), as many as `take(next)` says:
/// the first and how many, if any is left.
fn claim(slot: &AssistSlot, gen: u32, n: u64, take: impl Fn(u64) -> Take) -> Option<(u64, u64)> {
    let mut w = slot.claim.load(Ordering::Acquire);
    loop {
        let next = w as u32;
        if (w >> 32) as u32 != gen || next == CLOSED || next as u64 >= n {
            return None;
        }
        let take = take(next as u64).of(n - next as u64);
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
    /// The helper process ended with a chunk claimed and unfinished: part of the buffer may be
    /// missing (nothing more can be written to it).
    HelperGone,
}

/// How often a reader waiting for its helper's chunks checks that the helper still exists.
const ALIVE_CHECK: Duration = Duration::from_millis(10);

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
/// write is in flight; while it waits for the helper's chunks it asks `helper_alive` every
/// [`ALIVE_CHECK`], and fails with [`AssistError::HelperGone`] once it says no.
pub fn assisted_read(
    slot: &AssistSlot,
    pending: &AtomicU32,
    src: u64,
    dst: &mut [u8],
    chunk: usize,
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut helper_alive: impl FnMut() -> bool,
) -> Result<AssistStats, AssistError> {
    let chunk = chunk.max(1);
    let len = dst.len() as u64;
    let n = chunks(len, chunk as u64);
    if n >= CLOSED as u64 {
        // More chunks than the claim word counts: no help.
        read(src, dst).map_err(AssistError::Read)?;
        return Ok(AssistStats { mine: 1, helped: 0 });
    }
    // Close the slot (it is closed after every request, but a slot is never trusted to be),
    // then write the fields, then open it with the claim word, then count it for the sender.
    let old = slot.claim.swap(CLOSED as u64, Ordering::AcqRel);
    let gen = ((old >> 32) as u32).wrapping_add(1);
    fence(Ordering::Release);
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
    // First half the message; then, if the sender has claimed nothing meanwhile, the rest in
    // one read (a sender busy elsewhere costs one more system call), else half of what is
    // left.
    let mut expected = None;
    while let Some((c, t)) = claim(slot, gen, n, |next| {
        if expected == Some(next) {
            Take::All
        } else {
            Take::Half
        }
    }) {
        expected = Some(c + t);
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
    let theirs = claimed.saturating_sub(stats.mine);
    let mut checked = Instant::now();
    let mut spins = 0u32;
    while slot.done.load(Ordering::Acquire) < theirs {
        spins = spins.wrapping_add(1);
        if spins < 64 {
            std::hint::spin_loop();
            continue;
        }
        std::thread::yield_now();
        if spins.is_multiple_of(64) && checked.elapsed() >= ALIVE_CHECK {
            checked = Instant::now();
            // Read `done` once more after the check: a helper that finished and then exited
            // is not a lost chunk.
            if !helper_alive() && slot.done.load(Ordering::Acquire) < theirs {
                return Err(AssistError::HelperGone);
            }
        }
    }
    stats.helped = theirs;
    let failed = slot.failed.load(Ordering::Acquire);
    let failed_run = slot.failed_run.load(Ordering::Acquire);
    if failed != NONE && failed < n && error.is_none() {
        // The helper's failed run: counted in `done`, copied here.
        let run = failed_run.min(n - failed).min(theirs);
        stats.helped -= run;
        stats.mine += run;
        let off = (failed * chunk as u64) as usize;
        let end = (off + run as usize * chunk).min(dst.len());
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
/// chunks copied, or the error of a failed write, whose chunks the receiver then copies itself.
/// Each claim takes half of the chunks left (rounded up).
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
        // A write of this request already failed: the receiver takes the rest (`failed` holds
        // one run).
        if next as u64 >= chunks(len, chunk) || slot.failed.load(Ordering::Relaxed) != NONE {
            return Ok(copied);
        }
        // Pairs with the receiver's fence after closing: if any field above came from a later
        // request, the compare-and-swap below sees the slot closed or renewed, and fails.
        fence(Ordering::Acquire);
        // Capped so the count stays in its half of the word (a receiver never publishes more
        // chunks than that; a nonsense slot might).
        let run = Take::Half
            .of(chunks(len, chunk) - next as u64)
            .min(CLOSED as u64 - 1 - next as u64);
        if run == 0 {
            return Ok(copied);
        }
        if slot
            .claim
            .compare_exchange(w, w + run, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let off = next as u64 * chunk;
        // `off < len` (next < chunks); the run's end is capped at `len`.
        let n = (run.saturating_mul(chunk)).min(len - off) as usize;
        match write(src.wrapping_add(off), dst.wrapping_add(off), n) {
            Ok(()) => {
                copied += run;
                slot.done.fetch_add(run, Ordering::Release);
            }
            Err(e) => {
                slot.failed.store(next as u64, Ordering::Relaxed);
                slot.failed_run.store(run, Ordering::Relaxed);
                slot.done.fetch_add(run, Ordering::Release);
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
        // overlap: the source vector and a chunk of the destination of the running read. The
        // helper thread writes chunks of a slice that `assisted_read` holds as `&mut`: the
        // chunks are disjoint from the receiver's, and the receiver looks at them only after
        // `done` (release/acquire) says they are finished.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) }
    }

    fn copying(a: u64, buf: &mut [u8]) -> io::Result<()> {
        copy(a, buf.as_mut_ptr() as u64, buf.len());
        Ok(())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A sender's poll in a thread: waits for a request toward it, then helps with `write`.
    fn spawn_helper(
        slot: &Arc<AssistSlot>,
        pending: &Arc<AtomicU32>,
        write: impl FnMut(u64, u64, usize) -> io::Result<()> + Send + 'static,
    ) -> std::thread::JoinHandle<io::Result<u64>> {
        let (slot, pending) = (slot.clone(), pending.clone());
        std::thread::spawn(move || {
            while pending.load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            help(&slot, write)
        })
    }

    /// An assisted read of `src` into `dst` in 4 KiB chunks, with the helper taken as alive;
    /// each of the receiver's reads waits for `gate` first, if given.
    fn read_gated(
        slot: &AssistSlot,
        pending: &AtomicU32,
        src: &[u8],
        dst: &mut [u8],
        gate: Option<&AtomicBool>,
    ) -> Result<AssistStats, AssistError> {
        assisted_read(
            slot,
            pending,
            src.as_ptr() as u64,
            dst,
            4096,
            |a, buf| {
                if let Some(g) = gate {
                    spin_until(g);
                }
                copying(a, buf)
            },
            || true,
        )
    }

    fn spin_until(flag: &AtomicBool) {
        while !flag.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
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
                |a, buf| {
                    reads += 1;
                    copying(a, buf)
                },
                || true,
            )
            .unwrap();
            assert_eq!(dst, src, "len {len} chunk {chunk}");
            assert_eq!(s.mine, len.div_ceil(chunk) as u64);
            // Half, then the rest.
            assert!(reads <= 2, "{reads} reads");
            assert_eq!(s.helped, 0);
            assert_eq!(pending.load(Ordering::Relaxed), 0);
        }
        // Closed: a helper finds nothing.
        assert_eq!(help(&slot, |_, _, _| panic!("nothing to copy")).unwrap(), 0);
    }

    /// The slots of a new segment are closed: a helper that sees sizes being written into one
    /// (a peer's first request, not yet opened) claims nothing.
    #[test]
    fn slots_of_a_new_segment_start_closed() {
        let job = format!("assist-test-{}", std::process::id());
        let seg = super::super::segment::Segment::create(&job, 0, 3).unwrap();
        seg.unlink();
        for from in 0..3 {
            let slot = seg.assist(from);
            slot.len.store(8192, Ordering::Relaxed);
            slot.chunk.store(4096, Ordering::Relaxed);
            assert_eq!(
                help(slot, |_, _, _| panic!("slot {from} is open")).unwrap(),
                0
            );
        }
    }

    /// A slot found open with a request's sizes (as zeroed memory with sizes half written
    /// would be) is closed again before the receiver writes its request: a helper that claimed
    /// from the stale state is not counted, and its stale claim cannot succeed.
    #[test]
    fn a_receiver_closes_a_slot_it_finds_open() {
        let slot = AssistSlot::new();
        slot.claim.store(0, Ordering::Relaxed);
        slot.len.store(8192, Ordering::Relaxed);
        slot.chunk.store(4096, Ordering::Relaxed);
        let pending = AtomicU32::new(0);
        let src = pattern(8192, 1);
        let mut dst = vec![0u8; 8192];
        let s = read_gated(&slot, &pending, &src, &mut dst, None).unwrap();
        assert_eq!(s, AssistStats { mine: 2, helped: 0 });
        assert!(dst == src);
        assert_eq!(slot.claim.load(Ordering::Relaxed) >> 32, 1, "generation 1");
    }

    #[test]
    fn the_generation_wraps() {
        let slot = AssistSlot::new();
        slot.claim
            .store(((u32::MAX as u64) << 32) | CLOSED as u64, Ordering::Relaxed);
        let pending = AtomicU32::new(0);
        let src = pattern(10_000, 2);
        let mut dst = vec![0u8; 10_000];
        read_gated(&slot, &pending, &src, &mut dst, None).unwrap();
        assert!(dst == src);
        assert_eq!(
            slot.claim.load(Ordering::Relaxed),
            CLOSED as u64,
            "generation 0, closed"
        );
    }

    /// Sizes a peer wrote that make no sense end in the write's error (here as the kernel
    /// would report them), never in a panic or an overflow.
    #[test]
    fn a_helper_survives_nonsense_sizes() {
        for (len, chunk, next) in [
            (u64::MAX, 1, 0),
            (u64::MAX, u64::MAX, 0),
            (u64::MAX, 1, CLOSED - 1),
            (5, 0, 0),
        ] {
            let slot = AssistSlot::new();
            slot.len.store(len, Ordering::Relaxed);
            slot.chunk.store(chunk, Ordering::Relaxed);
            slot.src.store(u64::MAX, Ordering::Relaxed);
            slot.dst.store(u64::MAX, Ordering::Relaxed);
            slot.claim.store((1 << 32) | next as u64, Ordering::Relaxed);
            let r = help(&slot, |_, _, _| {
                Err(io::Error::from_raw_os_error(libc::EFAULT))
            });
            match r {
                // Nothing to claim without a chunk size, or with no room left in the count.
                Ok(0) => assert!(chunk == 0 || next == CLOSED - 1, "{len} {chunk} {next}"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EFAULT)),
                Ok(n) => panic!("{n} chunks copied"),
            }
        }
    }

    /// The helper claims a chunk while the receiver is inside its first one: the chunk is
    /// counted as helped, and every byte arrives.
    #[test]
    fn a_helper_that_claims_a_chunk_is_counted() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let helped = Arc::new(AtomicBool::new(false));
        let helper = {
            let helped = helped.clone();
            // One run, then a failed one: the receiver takes the rest.
            let mut once = false;
            spawn_helper(&slot, &pending, move |s, d, n| {
                if once {
                    helped.store(true, Ordering::Release);
                    return Err(io::Error::from_raw_os_error(libc::EAGAIN));
                }
                once = true;
                copy(s, d, n);
                Ok(())
            })
        };
        let len = 16 * 4096;
        let src = pattern(len, 5);
        let mut dst = vec![0u8; len];
        let s = read_gated(&slot, &pending, &src, &mut dst, Some(&helped)).unwrap();
        // The receiver took chunks 0-7 (half), the helper 8-11 (half of the rest), written,
        // and 12-13, failed and handed back; the receiver then took 14 and 15.
        helper.join().unwrap().unwrap_err();
        assert_eq!(
            s,
            AssistStats {
                mine: 12,
                helped: 4
            }
        );
        assert!(dst == src);
    }

    /// A helper thread polling the slot as a sender's progress loop does, against many reads
    /// of varied sizes in a row: every byte arrives, and what the helper says it copied is what
    /// the reads counted as helped (a stress test of the claim protocol; how much the helper
    /// gets depends on the scheduler).
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
            let s = read_gated(&slot, &pending, &src, &mut dst, None).unwrap();
            assert!(dst == src, "read {i} of {len} bytes differs");
            assert_eq!(s.mine + s.helped, len.div_ceil(4096) as u64);
            total.mine += s.mine;
            total.helped += s.helped;
        }
        stop.store(true, Ordering::Relaxed);
        let copied = helper.join().unwrap();
        assert_eq!(copied, total.helped);
        assert_eq!(pending.load(Ordering::Relaxed), 0);
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
        // The receiver copies its first chunk only after the helper has failed.
        let failed_once = Arc::new(AtomicBool::new(false));
        let helper = {
            let failed_once = failed_once.clone();
            spawn_helper(&slot, &pending, move |_, _, _| {
                failed_once.store(true, Ordering::Release);
                Err(io::Error::from_raw_os_error(libc::ESRCH))
            })
        };
        let s = read_gated(&slot, &pending, &src, &mut dst, Some(&failed_once)).unwrap();
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
        // The request is closed and its failure recorded: a helper trying again finds nothing.
        assert_eq!(help(&slot, |_, _, _| panic!("closed")).unwrap(), 0);
    }

    /// A helper slower than any timeout: the reader waits for its chunk as long as it lives,
    /// and returns only after the chunk is written.
    #[test]
    fn a_slow_helper_is_waited_for() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let claimed = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicBool::new(false));
        let helper = {
            let (claimed, written) = (claimed.clone(), written.clone());
            spawn_helper(&slot, &pending, move |s, d, n| {
                claimed.store(true, Ordering::Release);
                // Longer than a few alive checks of the reader.
                std::thread::sleep(ALIVE_CHECK * 5);
                copy(s, d, n);
                written.store(true, Ordering::Release);
                Err(io::Error::from_raw_os_error(libc::EAGAIN)) // one chunk only
            })
        };
        let src = pattern(8192, 4);
        let mut dst = vec![0u8; 8192];
        let s = read_gated(&slot, &pending, &src, &mut dst, Some(&claimed));
        assert!(
            written.load(Ordering::Acquire),
            "returned before the helper's write"
        );
        // The helper reported its (simulated) failure after writing: the receiver copied the
        // chunk again, so all of it arrives either way.
        assert_eq!(s.unwrap(), AssistStats { mine: 2, helped: 0 });
        assert!(dst == src);
        helper.join().unwrap().unwrap_err();
    }

    /// A helper that claimed a chunk and is gone without finishing it: the read reports that
    /// (once the liveness check says so) instead of waiting forever.
    #[test]
    fn a_helper_gone_with_a_chunk_claimed_is_reported() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let claimed = Arc::new(AtomicBool::new(false));
        let helper = {
            let (release, claimed) = (release.clone(), claimed.clone());
            spawn_helper(&slot, &pending, move |_, _, _| {
                claimed.store(true, Ordering::Release);
                spin_until(&release);
                Err(io::Error::from_raw_os_error(libc::ESRCH))
            })
        };
        let mut dst = vec![0u8; 8192];
        let src = vec![1u8; 8192];
        let mut checks = 0;
        let r = assisted_read(
            &slot,
            &pending,
            src.as_ptr() as u64,
            &mut dst,
            4096,
            |a, buf| {
                spin_until(&claimed);
                copying(a, buf)
            },
            || {
                checks += 1;
                checks < 3
            },
        );
        assert!(matches!(r, Err(AssistError::HelperGone)), "{r:?}");
        assert_eq!(checks, 3);
        release.store(true, Ordering::Release);
        helper.join().unwrap().unwrap_err();
    }

    /// The receiver's own failed read is reported, and only after the helper's chunk in
    /// flight is written.
    #[test]
    fn a_failed_receiver_read_waits_for_the_helper_then_is_reported() {
        let slot = Arc::new(AssistSlot::new());
        let pending = Arc::new(AtomicU32::new(0));
        let claimed = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicBool::new(false));
        let helper = {
            let (claimed, written) = (claimed.clone(), written.clone());
            spawn_helper(&slot, &pending, move |_, _, _| {
                claimed.store(true, Ordering::Release);
                std::thread::sleep(Duration::from_millis(30));
                written.store(true, Ordering::Release);
                Err(io::Error::from_raw_os_error(libc::EAGAIN))
            })
        };
        let mut dst = vec![0u8; 4 * 4096];
        let r = assisted_read(
            &slot,
            &pending,
            0x1000,
            &mut dst,
            4096,
            |_, _| {
                spin_until(&claimed);
                Err(io::Error::from_raw_os_error(libc::EFAULT))
            },
            || true,
        );
        assert!(
            written.load(Ordering::Acquire),
            "returned before the helper's write"
        );
        match r {
            Err(AssistError::Read(e)) => assert_eq!(e.raw_os_error(), Some(libc::EFAULT)),
            other => panic!("{other:?}"),
        }
        assert_eq!(pending.load(Ordering::Relaxed), 0);
        assert_eq!(help(&slot, |_, _, _| panic!("closed")).unwrap(), 0);
        helper.join().unwrap().unwrap_err();
    }
}
