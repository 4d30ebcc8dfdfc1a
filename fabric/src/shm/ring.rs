//! A single-producer single-consumer byte ring in shared memory.
//!
//! Layout: one cache line holding the producer's `tail`, one holding the consumer's `head`
//! (both monotonically increasing byte counts), then `RING_BYTES` of records. A record is an
//! 8-byte prefix, the 48-byte frame header stored in one of three lengths (see
//! [`stored_header_len`]) and the payload, padded to a cache line. A record
//! that would straddle the end is preceded by a skip record filling the rest of the ring.
//!
//! The prefix is one 64-bit word — payload length and a stamp derived from the record's
//! position — written last with release ordering, followed by a release store of `tail`. The
//! consumer polls the prefix at its head and takes the record when the stamp matches, so a
//! small message costs the receiver one cache-line transfer (the record itself), not a counter
//! line and then the record. A line start that held payload bytes in the previous lap (inside a
//! multi-line record) could by chance look like a valid prefix; the consumer remembers those
//! lines in a private bitmap and, there only, confirms with `tail`. The consumer publishes
//! `head` for the producer, which rereads it only when its cached copy says the ring is full.
//! No lock, allocation or syscall per message.

use crate::{Header, HEADER_LEN};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of record space per ring.
pub const RING_BYTES: usize = 512 * 1024;
/// Record prefix: payload length (u32) and kind (u32).
const PREFIX: usize = 8;
const LINE: usize = 64;
/// Largest payload: a record of exactly 64 KiB, so eight fill the ring.
pub const MAX_PAYLOAD: usize = 64 * 1024 - PREFIX - HEADER_LEN;
/// Stored length of a header whose last 16 bytes are zero.
const SHORT_HEADER: usize = 32;
/// Stored length of a header whose last 16 bytes are zero and whose bytes 24..32 hold the
/// payload length (the protocol engine's message-length field, for eager frames).
const TINY_HEADER: usize = 24;
/// Set in a record's length field when its header is stored short.
const SHORT_FLAG: u32 = 1 << 31;
/// Set in a record's length field when its header is stored tiny.
const TINY_FLAG: u32 = 1 << 30;
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

fn record_len(header: usize, payload: usize) -> usize {
    (PREFIX + header + payload).div_ceil(LINE) * LINE
}

/// Bytes of the header stored for a frame with `payload` bytes. The last 16 bytes are left
/// out when they are zero (as in standard-mode eager frames), and bytes 24..32 too when they
/// equal the payload length (the message length of an eager frame), so up to 32 payload bytes
/// fit in one cache line. Either way the consumer restores the header exactly.
#[inline]
fn stored_header_len(header: &Header, payload: usize) -> usize {
    if header[SHORT_HEADER..].iter().any(|&b| b != 0) {
        HEADER_LEN
    } else if header[TINY_HEADER..SHORT_HEADER] == (payload as u64).to_le_bytes() {
        TINY_HEADER
    } else {
        SHORT_HEADER
    }
}

/// The flag recording a stored header length in a record's length field.
#[inline]
fn header_flag(hlen: usize) -> u32 {
    match hlen {
        TINY_HEADER => TINY_FLAG,
        SHORT_HEADER => SHORT_FLAG,
        _ => 0,
    }
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
        let hlen = stored_header_len(header, payload.len());
        let rec = record_len(hlen, payload.len());
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
            std::ptr::copy_nonoverlapping(header.as_ptr(), dst, hlen);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(hlen), payload.len());
            self.publish_prefix(
                idx,
                prefix(payload.len() as u32 | header_flag(hlen), self.tail),
            );
        }
        self.tail += rec as u64;
        self.ring.tail().store(self.tail, Ordering::Release);
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

const LINES: usize = RING_BYTES / LINE;

/// The consumer's end.
pub struct Consumer {
    ring: RingPtr,
    head: u64,
    /// Lines whose first word held payload (not a prefix) when last written.
    interior: Box<[u64; LINES / 64]>,
}

impl Consumer {
    /// Attaches to a ring.
    pub fn new(ring: RingPtr) -> Self {
        let head = ring.head().load(Ordering::Acquire);
        Self {
            ring,
            head,
            interior: Box::new([0; LINES / 64]),
        }
    }

    /// Whether the record at the head is published; also returns its prefix and offset.
    #[inline]
    fn ready(&self) -> Option<(u64, usize)> {
        let idx = (self.head % RING_BYTES as u64) as usize;
        // SAFETY: idx is line aligned within the ring, so the word is aligned and in bounds;
        // it is only ever accessed atomically.
        let p = unsafe { &*(self.ring.data.add(idx) as *const AtomicU64) };
        let word = p.load(Ordering::Acquire);
        if (word >> 32) as u32 != stamp(self.head) {
            return None;
        }
        let line = idx / LINE;
        if self.interior[line / 64] & (1 << (line % 64)) != 0
            && self.ring.tail().load(Ordering::Acquire) <= self.head
        {
            // Stale payload that happens to carry the stamp: not published yet.
            return None;
        }
        Some((word, idx))
    }

    fn mark_interior(&mut self, first_line: usize, lines: usize) {
        let (bits, start) = (&mut *self.interior, first_line);
        bits[start / 64] &= !(1 << (start % 64));
        for l in start + 1..start + lines {
            bits[l / 64] |= 1 << (l % 64);
        }
    }

    /// Whether a record is waiting.
    #[inline]
    pub fn has_data(&mut self) -> bool {
        self.ready().is_some()
    }

    /// Hands the next frame to `on`, if any; `Ok(false)` when the ring is empty.
    pub fn pop(&mut self, on: impl FnOnce(&Header, &[u8])) -> Result<bool, Corrupt> {
        loop {
            let Some((word, idx)) = self.ready() else {
                return Ok(false);
            };
            let len = word as u32;
            if len == SKIP {
                self.head += (RING_BYTES - idx) as u64;
                continue;
            }
            let hlen = match len & (SHORT_FLAG | TINY_FLAG) {
                0 => HEADER_LEN,
                SHORT_FLAG => SHORT_HEADER,
                TINY_FLAG => TINY_HEADER,
                _ => return Err(Corrupt(format!("record flags {len:#x} at offset {idx}"))),
            };
            let len = (len & !(SHORT_FLAG | TINY_FLAG)) as usize;
            let rec = record_len(hlen, len);
            if len > MAX_PAYLOAD || idx + rec > RING_BYTES {
                return Err(Corrupt(format!("record length {len} at offset {idx}")));
            }
            let mut full = [0u8; HEADER_LEN];
            // SAFETY: the record [idx, idx + rec) is in bounds (checked) and fully written
            // before its prefix, which we acquired; the producer will not overwrite it until
            // we advance `head` below.
            let (header, payload) = unsafe {
                let base = self.ring.data.add(idx + PREFIX);
                let header: &Header = if hlen == HEADER_LEN {
                    &*(base as *const Header)
                } else {
                    std::ptr::copy_nonoverlapping(base, full.as_mut_ptr(), hlen);
                    if hlen == TINY_HEADER {
                        full[TINY_HEADER..SHORT_HEADER]
                            .copy_from_slice(&(len as u64).to_le_bytes());
                    }
                    &full
                };
                (header, std::slice::from_raw_parts(base.add(hlen), len))
            };
            on(header, payload);
            if rec > LINE || self.interior[idx / LINE / 64] != 0 {
                self.mark_interior(idx / LINE, rec / LINE);
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

    /// Ping-pong-like traffic of small records, many laps, all record sizes mixed.
    #[test]
    fn small_records_over_many_laps() {
        let mut mem = Box::new(Mem([0; RING_STRIDE]));
        // SAFETY: the boxed buffer is aligned, RING_STRIDE long and outlives the ring ends.
        let ring = unsafe { RingPtr::new(mem.0.as_mut_ptr()) };
        let (mut p, mut c) = (Producer::new(ring), Consumer::new(ring));
        for k in 0..200_000u32 {
            let len = [0usize, 8, 9, 32, 64, 200, 1000][(k % 7) as usize] + (k as usize % 3);
            let payload: Vec<u8> = (0..len).map(|i| (i as u32 ^ k) as u8).collect();
            let mut h = [0u8; HEADER_LEN];
            h[..4].copy_from_slice(&k.to_le_bytes());
            match k % 4 {
                // A full header (its last 16 bytes not zero).
                1 => h[40..44].copy_from_slice(&k.to_le_bytes()),
                // Tiny: the length field equals the payload length.
                2 => h[24..32].copy_from_slice(&(len as u64).to_le_bytes()),
                // Short: a length field that differs from the payload length.
                3 => h[24..32].copy_from_slice(&(len as u64 + 1).to_le_bytes()),
                _ => {}
            }
            assert!(p.push(&h, &payload), "room for message {k}");
            assert!(c
                .pop(|got, pl| {
                    assert_eq!(got, &h);
                    assert_eq!(pl, &payload[..]);
                })
                .unwrap());
            assert!(!c.has_data());
        }
    }

    /// Eager-style headers with up to 32 payload bytes take one cache line.
    #[test]
    fn small_eager_record_fits_one_line() {
        let mut mem = Box::new(Mem([0; RING_STRIDE]));
        // SAFETY: the boxed buffer is aligned, RING_STRIDE long and outlives the ring ends.
        let ring = unsafe { RingPtr::new(mem.0.as_mut_ptr()) };
        let (mut p, mut c) = (Producer::new(ring), Consumer::new(ring));
        for len in [0usize, 24, 32, 33] {
            let mut h = [7u8; HEADER_LEN];
            h[24..32].copy_from_slice(&(len as u64).to_le_bytes());
            h[32..].fill(0);
            let before = p.tail;
            assert!(p.push(&h, &vec![9u8; len]));
            let lines = (p.tail - before) as usize / LINE;
            assert_eq!(lines, if len <= 32 { 1 } else { 2 }, "{len} bytes");
            assert!(c
                .pop(|got, pl| {
                    assert_eq!(got, &h);
                    assert_eq!(pl.len(), len);
                })
                .unwrap());
        }
    }

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

    #[test]
    fn stale_payload_that_looks_like_a_prefix_is_not_taken() {
        let mut mem = Box::new(Mem([0; RING_STRIDE]));
        // SAFETY: the boxed buffer is aligned, RING_STRIDE long and outlives the ring ends.
        let ring = unsafe { RingPtr::new(mem.0.as_mut_ptr()) };
        let (mut p, mut c) = (Producer::new(ring), Consumer::new(ring));
        let h = [0u8; HEADER_LEN];
        // A 3-line record whose second line starts with the prefix a record at position
        // RING_BYTES + 64 (same line, next lap) would carry.
        let mut payload = vec![0u8; 100];
        payload[8..16].copy_from_slice(&prefix(5, (RING_BYTES + LINE) as u64).to_le_bytes());
        assert!(p.push(&h, &payload));
        assert!(c.pop(|_, pl| assert_eq!(pl.len(), 100)).unwrap());
        while p.tail < (RING_BYTES + LINE) as u64 {
            assert!(p.push(&h, &[]));
            assert!(c.pop(|_, _| {}).unwrap());
        }
        assert_eq!(c.head, (RING_BYTES + LINE) as u64);
        assert!(!c
            .pop(|_, _| panic!("took stale payload for a record"))
            .unwrap());
        assert!(p.push(&h, &[1, 2, 3]));
        assert!(c.pop(|_, pl| assert_eq!(pl, &[1, 2, 3])).unwrap());
    }
}
