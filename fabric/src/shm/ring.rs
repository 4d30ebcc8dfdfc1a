//! A single-producer single-consumer byte ring in shared memory.
//!
//! Layout: one cache line holding the producer's `tail`, one holding the consumer's `head`
//! (both monotonically increasing byte counts), then `RING_BYTES` of records. A record is an
//! 8-byte prefix, the 48-byte frame header and the payload, padded to a cache line. A record
//! that would straddle the end is preceded by a skip record filling the rest of the ring.
//!
//! The prefix is one 64-bit word — payload length and a stamp derived from the record's
//! position — written last with release ordering. The consumer polls the prefix at its head
//! and takes the record when the stamp matches, so a small message costs the receiver one
//! cache-line transfer (the record itself), not a counter line and then the record. The
//! consumer publishes `head` for the producer, which rereads it only when its cached copy says
//! the ring is full. No lock, allocation or syscall per message.

use crate::{Header, HEADER_LEN};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of record space per ring.
pub const RING_BYTES: usize = 512 * 1024;
/// Record prefix: payload length (u32) and kind (u32).
const PREFIX: usize = 8;
const LINE: usize = 64;
/// Largest payload: a record of exactly 64 KiB, so eight fill the ring.
pub const MAX_PAYLOAD: usize = 64 * 1024 - PREFIX - HEADER_LEN;
/// Length value marking a skip record.
const SKIP: u32 = u32::MAX;
/// Bytes a ring occupies in a segment (control lines + records).
pub const RING_STRIDE: usize = 2 * LINE + RING_BYTES;

#[repr(C, align(64))]
struct Line(AtomicU64);

/// The stamp of a record at byte position `pos`: distinct for every position within any
/// window of 2^32 lines, so a stale record from an earlier lap never matches.
#[inline]
fn stamp(pos: u64) -> u32 {
    ((pos >> 6) as u32) ^ 0x9e37_79b9
}

#[inline]
fn prefix(len: u32, pos: u64) -> u64 {
    (len as u64) | ((stamp(pos) as u64) << 32)
}

/// Raw pointers to one ring inside a mapping.
#[derive(Clone, Copy)]
pub struct RingPtr {
    tail: *const Line,
    head: *const Line,
    data: *mut u8,
}

// SAFETY: the pointers refer to a shared mapping that outlives the fabric holding them; all
// cross-process coordination goes through the atomics.
unsafe impl Send for RingPtr {}

impl RingPtr {
    /// # Safety
    /// `base` must point to `RING_STRIDE` bytes of a live, 64-byte aligned shared mapping that
    /// stays mapped as long as the returned value is used.
    pub unsafe fn new(base: *mut u8) -> Self {
        Self {
            tail: base.cast(),
            // SAFETY: within the RING_STRIDE bytes the caller vouches for.
            head: unsafe { base.add(LINE) }.cast(),
            // SAFETY: as above.
            data: unsafe { base.add(2 * LINE) },
        }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: valid for the mapping's lifetime (constructor contract).
        unsafe { &(*self.tail).0 }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: valid for the mapping's lifetime (constructor contract).
        unsafe { &(*self.head).0 }
    }
}

fn record_len(payload: usize) -> usize {
    (PREFIX + HEADER_LEN + payload).div_ceil(LINE) * LINE
}

/// The producer's end.
pub struct Producer {
    ring: RingPtr,
    tail: u64,
    head_seen: u64,
}

impl Producer {
    /// Attaches to a ring; the producer's own counter is read from the mapping.
    pub fn new(ring: RingPtr) -> Self {
        let tail = ring.tail().load(Ordering::Acquire);
        let head_seen = ring.head().load(Ordering::Acquire);
        Self {
            ring,
            tail,
            head_seen,
        }
    }

    /// Appends a frame; `false` if the ring has no room now.
    pub fn push(&mut self, header: &Header, payload: &[u8]) -> bool {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        let rec = record_len(payload.len());
        let idx = (self.tail % RING_BYTES as u64) as usize;
        let to_end = RING_BYTES - idx;
        let need = if rec <= to_end { rec } else { to_end + rec };
        if RING_BYTES - ((self.tail - self.head_seen) as usize) < need {
            self.head_seen = self.ring.head().load(Ordering::Acquire);
            if RING_BYTES - ((self.tail - self.head_seen) as usize) < need {
                return false;
            }
        }
        let mut idx = idx;
        if rec > to_end {
            // SAFETY: idx is line aligned within the ring and the space to the end is free
            // (checked against head above).
            unsafe { self.publish_prefix(idx, prefix(SKIP, self.tail)) };
            self.tail += to_end as u64;
            idx = 0;
        }
        // SAFETY: [idx, idx + rec) lies within the ring (rec <= to_end or idx == 0 and
        // rec <= RING_BYTES / 2) and is free (checked against head above); the consumer reads
        // the body only after it acquires the prefix, which is published last.
        unsafe {
            let dst = self.ring.data.add(idx + PREFIX);
            std::ptr::copy_nonoverlapping(header.as_ptr(), dst, HEADER_LEN);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(HEADER_LEN), payload.len());
            self.publish_prefix(idx, prefix(payload.len() as u32, self.tail));
        }
        self.tail += rec as u64;
        true
    }

    /// # Safety
    /// `idx` must be a line-aligned offset within the ring whose record space is free.
    unsafe fn publish_prefix(&mut self, idx: usize, word: u64) {
        // SAFETY: line aligned within the mapping, so 8-byte aligned and in bounds.
        let p = unsafe { &*(self.ring.data.add(idx) as *const AtomicU64) };
        p.store(word, Ordering::Release);
    }
}

/// A record that failed validation.
#[derive(Debug)]
pub struct Corrupt(pub String);

/// The consumer's end.
pub struct Consumer {
    ring: RingPtr,
    head: u64,
}

impl Consumer {
    /// Attaches to a ring.
    pub fn new(ring: RingPtr) -> Self {
        let head = ring.head().load(Ordering::Acquire);
        Self { ring, head }
    }

    #[inline]
    fn prefix_at_head(&self) -> (u64, usize) {
        let idx = (self.head % RING_BYTES as u64) as usize;
        // SAFETY: idx is line aligned within the ring, so the word is aligned and in bounds;
        // it is only ever accessed atomically.
        let p = unsafe { &*(self.ring.data.add(idx) as *const AtomicU64) };
        (p.load(Ordering::Acquire), idx)
    }

    /// Whether a record is waiting.
    #[inline]
    pub fn has_data(&mut self) -> bool {
        let (word, _) = self.prefix_at_head();
        (word >> 32) as u32 == stamp(self.head)
    }

    /// Hands the next frame to `on`, if any; `Ok(false)` when the ring is empty.
    pub fn pop(&mut self, on: impl FnOnce(&Header, &[u8])) -> Result<bool, Corrupt> {
        loop {
            let (word, idx) = self.prefix_at_head();
            if (word >> 32) as u32 != stamp(self.head) {
                return Ok(false);
            }
            let len = word as u32;
            if len == SKIP {
                self.head += (RING_BYTES - idx) as u64;
                continue;
            }
            let len = len as usize;
            if len > MAX_PAYLOAD || idx + record_len(len) > RING_BYTES {
                return Err(Corrupt(format!("record length {len} at offset {idx}")));
            }
            // SAFETY: the record [idx, idx + record_len(len)) is in bounds (checked) and fully
            // written before its prefix, which we acquired; the producer will not overwrite it
            // until we advance `head` below.
            let (header, payload) = unsafe {
                let base = self.ring.data.add(idx + PREFIX);
                (
                    &*(base as *const Header),
                    std::slice::from_raw_parts(base.add(HEADER_LEN), len),
                )
            };
            on(header, payload);
            // Line starts inside this record held payload bytes, which a later lap could
            // mistake for a record prefix: clear them. (Single-line records, the latency-
            // critical case, have none; a record's own first line always holds a prefix.)
            let rec = record_len(len);
            for line in (idx + LINE..idx + rec).step_by(LINE) {
                // SAFETY: within the record just consumed (bounds checked above); the
                // producer does not write it again until we publish the new head below.
                let p = unsafe { &*(self.ring.data.add(line) as *const AtomicU64) };
                p.store(0, Ordering::Relaxed);
            }
            self.head += rec as u64;
            self.ring.head().store(self.head, Ordering::Release);
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Mem([u8; RING_STRIDE]);

    #[test]
    fn wraps_and_preserves_order() {
        let mut mem = Box::new(Mem([0; RING_STRIDE]));
        // SAFETY: the boxed buffer is aligned, RING_STRIDE long and outlives the ring ends.
        let ring = unsafe { RingPtr::new(mem.0.as_mut_ptr()) };
        let (mut p, mut c) = (Producer::new(ring), Consumer::new(ring));
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..2000 {
            let len = (round * 7919) % 20_000;
            let payload: Vec<u8> = (0..len).map(|i| (i as u32 ^ next_in) as u8).collect();
            let mut h = [0u8; HEADER_LEN];
            h[..4].copy_from_slice(&next_in.to_le_bytes());
            while !p.push(&h, &payload) {
                assert!(c
                    .pop(|h, pl| {
                        let n = u32::from_le_bytes(h[..4].try_into().unwrap());
                        assert_eq!(n, next_out);
                        assert!(pl
                            .iter()
                            .enumerate()
                            .all(|(i, b)| *b == (i as u32 ^ n) as u8));
                        next_out += 1;
                    })
                    .unwrap());
            }
            next_in += 1;
        }
        while c.pop(|_, _| next_out += 1).unwrap() {}
        assert_eq!(next_in, next_out);
    }
}
