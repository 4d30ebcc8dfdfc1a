//! Memory handed to the transport while an operation is in flight.
//!
//! A nonblocking operation needs the user's buffer after the call that started it returns, and
//! a zero-copy fabric needs its address. Rust cannot express "borrowed until the transport says
//! it is done" with a lifetime on a value the engine stores, so the lifetime is enforced by a
//! *lending scope* instead, like `std::thread::scope`: [`lend_scope`] runs a closure that may
//! lend buffers borrowed for the whole scope ([`Lender::lend`], [`Lender::lend_mut`]), and
//! before it returns (even by unwinding) it calls `settle` until every lent region has been
//! dropped by the transport. Leaking a request therefore cannot leave the transport holding
//! freed memory: the scope, not the request, waits.
//!
//! Lent regions are counted with a plain `Cell` and are neither `Send` nor `Sync`: they stay
//! on the thread of the scope that lent them (the engine's), so counting costs no atomic
//! instruction per message.
//!
//! [`MemRef`] and [`MemMut`] also come in owned forms (a shared or exclusive `Vec<u8>`) for
//! serialized objects and buffers the engine allocates itself.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts the regions lent out of one scope. Lives on the scope's stack frame.
#[derive(Debug)]
pub struct Lender<'scope, 'env: 'scope> {
    outstanding: Cell<usize>,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

impl<'scope, 'env> Lender<'scope, 'env> {
    /// Lends `buf` for reading until the scope ends.
    pub fn lend(&'scope self, buf: &'scope [u8]) -> MemRef {
        self.outstanding.set(self.outstanding.get() + 1);
        MemRef {
            ptr: buf.as_ptr(),
            len: buf.len(),
            lease: RefLease::Lent(&self.outstanding),
        }
    }

    /// Lends `buf` for writing until the scope ends.
    pub fn lend_mut(&'scope self, buf: &'scope mut [u8]) -> MemMut {
        self.outstanding.set(self.outstanding.get() + 1);
        MemMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            lease: MutLease::Lent(&self.outstanding),
        }
    }

    /// Lends `buf` as a read-only [`Region`] until the scope ends (an empty `buf` gives the
    /// shared [`Region::empty`], which borrows nothing).
    pub fn lend_region(&'scope self, buf: &'scope [u8]) -> Region {
        if buf.is_empty() {
            return Region::empty();
        }
        self.outstanding.set(self.outstanding.get() + 1);
        Region::new(
            buf.as_ptr() as *mut u8,
            buf.len(),
            false,
            RegionStore::Lent(&self.outstanding),
        )
    }

    /// Lends `buf` as a writable [`Region`] until the scope ends.
    pub fn lend_region_mut(&'scope self, buf: &'scope mut [u8]) -> Region {
        if buf.is_empty() {
            return Region::empty();
        }
        self.outstanding.set(self.outstanding.get() + 1);
        Region::new(
            buf.as_mut_ptr(),
            buf.len(),
            true,
            RegionStore::Lent(&self.outstanding),
        )
    }

    /// Regions lent out of this scope and not yet dropped.
    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }
}

/// How long a scope that a panic unwinds waits for the transport to release its buffers
/// before the process aborts.
pub const UNWIND_SETTLE: Duration = Duration::from_secs(2);

/// Runs `f` with a [`Lender`], then calls `settle` (which must drive the transport until the
/// predicate it is given holds, i.e. no region is outstanding) before returning or unwinding.
///
/// If `settle` returns while regions are still outstanding the process aborts: returning would
/// let the caller free memory the transport may still write. When `f` panicked, the
/// predicate also holds once [`UNWIND_SETTLE`] has passed: requests a panic left in flight
/// often wait for peers that wait for this rank, and a rank stuck unwinding would hang the
/// job, where an abort brings it down (the panic's message is already printed).
pub fn lend_scope<'env, T>(
    f: impl for<'scope> FnOnce(&'scope Lender<'scope, 'env>) -> T,
    settle: impl FnOnce(&dyn Fn() -> bool),
) -> T {
    let lender = Lender {
        outstanding: Cell::new(0),
        _scope: PhantomData,
        _env: PhantomData,
    };
    let result = catch_unwind(AssertUnwindSafe(|| f(&lender)));
    if lender.outstanding() != 0 {
        let give_up = result.is_err().then(|| Instant::now() + UNWIND_SETTLE);
        let done = || lender.outstanding() == 0 || give_up.is_some_and(|t| Instant::now() >= t);
        let settled = catch_unwind(AssertUnwindSafe(|| settle(&done))).is_ok();
        if !settled || lender.outstanding() != 0 {
            let why = if result.is_err() {
                format!(
                    "a panic unwound their scope and the transport did not release them within \
                     {} s",
                    UNWIND_SETTLE.as_secs()
                )
            } else {
                "they were still held by the transport at the end of their scope".to_string()
            };
            eprintln!(
                "oxmpi: {} lent buffer(s): {why}; aborting rather than let it write freed memory",
                lender.outstanding()
            );
            std::process::abort();
        }
    }
    match result {
        Ok(v) => v,
        Err(p) => resume_unwind(p),
    }
}

enum RefLease {
    Lent(*const Cell<usize>),
    /// A range of a [`Region`], released when dropped.
    View(#[allow(dead_code)] ViewGuard),
    Owned(Arc<Vec<u8>>),
    Static,
}

/// Readable memory held by the transport: lent from a scope or owned.
pub struct MemRef {
    ptr: *const u8,
    len: usize,
    lease: RefLease,
}

impl std::fmt::Debug for MemRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemRef({} bytes)", self.len)
    }
}

impl MemRef {
    /// Owned bytes (e.g. a serialized object).
    pub fn owned(v: Vec<u8>) -> Self {
        let v = Arc::new(v);
        Self {
            ptr: v.as_ptr(),
            len: v.len(),
            lease: RefLease::Owned(v),
        }
    }

    /// Bytes that live for the whole program (no allocation, no counting).
    pub fn from_static(bytes: &'static [u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            lease: RefLease::Static,
        }
    }

    /// An empty region.
    pub fn empty() -> Self {
        Self::from_static(&[])
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe live bytes: borrowed for the lending scope, which cannot
        // end while this value (counted in `outstanding`) exists, kept alive by the Arc in
        // `lease`, or 'static.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Clone for MemRef {
    fn clone(&self) -> Self {
        let lease = match &self.lease {
            RefLease::Lent(c) => {
                // SAFETY: the counter lives in the lending scope, which outlives every region
                // it counts, and this region is counted.
                let counter = unsafe { &**c };
                counter.set(counter.get() + 1);
                RefLease::Lent(*c)
            }
            RefLease::Owned(a) => RefLease::Owned(a.clone()),
            RefLease::Static => RefLease::Static,
            RefLease::View(g) => RefLease::View(g.duplicate()),
        };
        Self {
            ptr: self.ptr,
            len: self.len,
            lease,
        }
    }
}

impl Drop for MemRef {
    fn drop(&mut self) {
        if let RefLease::Lent(c) = self.lease {
            // SAFETY: as in Clone: the scope's counter outlives this counted region.
            let c = unsafe { &*c };
            c.set(c.get() - 1);
        }
    }
}

enum MutLease {
    Lent(*const Cell<usize>),
    /// A range of a [`Region`], released when dropped.
    View(#[allow(dead_code)] ViewGuard),
    Owned(Vec<u8>),
}

/// Writable memory held by the transport: lent from a scope, or a buffer the engine owns.
pub struct MemMut {
    ptr: *mut u8,
    len: usize,
    lease: MutLease,
}

impl std::fmt::Debug for MemMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemMut({} bytes)", self.len)
    }
}

impl MemMut {
    /// An owned buffer: the whole of `v`.
    pub fn from_vec(mut v: Vec<u8>) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            lease: MutLease::Owned(v),
        }
    }

    /// An owned, zeroed buffer of `len` bytes.
    pub fn alloc(len: usize) -> Self {
        let mut v = vec![0u8; len];
        Self {
            ptr: v.as_mut_ptr(),
            len,
            lease: MutLease::Owned(v),
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: see MemRef::bytes; `&self` excludes writers through this handle.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: the region is exclusively ours (lent mutably for the whole scope, or owned),
        // and `&mut self` makes this the only live slice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The owned buffer, if this region owns one (lent regions give `None`).
    pub fn into_vec(mut self) -> Option<Vec<u8>> {
        match std::mem::replace(&mut self.lease, MutLease::Owned(Vec::new())) {
            MutLease::Owned(v) => Some(v),
            other => {
                self.lease = other;
                None
            }
        }
    }
}

impl Drop for MemMut {
    fn drop(&mut self) {
        if let MutLease::Lent(c) = self.lease {
            // SAFETY: the scope's counter outlives this counted region.
            let c = unsafe { &*c };
            c.set(c.get() - 1);
        }
    }
}

/// Where a [`Region`]'s bytes live.
enum RegionStore {
    /// Borrowed from a lending scope, which waits for the region's last handle.
    Lent(*const Cell<usize>),
    /// Owned, 16-byte aligned, so any element type can be viewed in place.
    Owned(#[allow(dead_code)] Box<[u128]>),
    /// A lent region's allocation kept for reuse once its scope's count was released.
    Spare,
}

/// A byte range of a region in use: by the transport (a view) or by a local copy or reduction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Claim {
    start: usize,
    end: usize,
    write: bool,
    token: u64,
}

/// Token of the claim on an empty range, which is not recorded.
const NO_CLAIM: u64 = u64::MAX;

thread_local! {
    /// The empty region every empty buffer shares.
    static EMPTY_REGION: Region = Region::alloc(0);
}

struct RegionInner {
    ptr: *mut u8,
    len: usize,
    writable: bool,
    store: RegionStore,
    claims: RefCell<Claims>,
    next_token: Cell<u64>,
}

/// The claims on a region: a few inline (the common case, no allocation), more spilled.
/// Live claims are `inline[..len]` then `more`, so a region with none costs no scan.
#[derive(Default)]
struct Claims {
    inline: [Claim; INLINE_CLAIMS],
    len: usize,
    more: Vec<Claim>,
}

const INLINE_CLAIMS: usize = 4;

impl Claims {
    fn iter(&self) -> impl Iterator<Item = &Claim> {
        self.inline[..self.len].iter().chain(self.more.iter())
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && self.more.is_empty()
    }

    fn push(&mut self, c: Claim) {
        if self.len < INLINE_CLAIMS {
            self.inline[self.len] = c;
            self.len += 1;
        } else {
            self.more.push(c);
        }
    }

    fn remove(&mut self, token: u64) {
        // Claims are mostly released last-in first-out: look from the newest.
        if let Some(i) = self.inline[..self.len]
            .iter()
            .rposition(|c| c.token == token)
        {
            let last = self.len - 1;
            if i != last {
                self.inline[i] = self.inline[last];
            }
            self.len = last;
            // Keep the inline slots full while claims have spilled over.
            if let Some(c) = self.more.pop() {
                self.inline[self.len] = c;
                self.len += 1;
            }
        } else if let Some(i) = self.more.iter().position(|c| c.token == token) {
            self.more.swap_remove(i);
        }
    }
}

impl Drop for RegionInner {
    fn drop(&mut self) {
        if let RegionStore::Lent(c) = self.store {
            // SAFETY: a lent region's counter lives in its `Lender`, on the stack frame of a
            // lending scope that does not return while the count is non-zero, and this region
            // is counted in it.
            let c = unsafe { &*c };
            c.set(c.get() - 1);
        }
    }
}

/// Why a region access was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// The range lies outside the region.
    OutOfBounds {
        start: usize,
        end: usize,
        len: usize,
    },
    /// A write was asked of a read-only region.
    ReadOnly,
    /// The range overlaps one already in use in a conflicting way (a writer and anything else).
    Overlap { start: usize, end: usize },
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfBounds { start, end, len } => {
                write!(
                    f,
                    "bytes {start}..{end} lie outside a region of {len} bytes"
                )
            }
            Self::ReadOnly => write!(f, "write to a read-only region"),
            Self::Overlap { start, end } => {
                write!(f, "bytes {start}..{end} overlap a range already in use")
            }
        }
    }
}

impl std::error::Error for RegionError {}

/// A buffer addressed by byte range, whose ranges can be handed to the transport
/// ([`Region::view`], [`Region::view_mut`]) and worked on locally ([`Region::read`],
/// [`Region::write`], [`Region::combine`]) while other ranges are in flight.
///
/// This is what a collective schedule runs on: several receives land in disjoint parts of one
/// buffer while another part is being sent and a third is reduced. Every range in use is
/// recorded, and a request that would let a writer overlap anything else is refused with
/// [`RegionError::Overlap`], so safe code can never alias a buffer, however a schedule is
/// written. Regions are cheap handles (`Rc`); the bytes are lent from a scope
/// ([`Lender::lend_region_mut`]) or owned ([`Region::alloc`]).
pub struct Region(ManuallyDrop<Rc<RegionInner>>);

impl Clone for Region {
    fn clone(&self) -> Self {
        Self(ManuallyDrop::new(Rc::clone(&self.0)))
    }
}

/// Most allocations of lent regions kept per thread for reuse.
const SPARE_REGIONS_MAX: usize = 16;

thread_local! {
    /// Allocations of lent regions whose last handle has gone: lending a buffer for every
    /// small collective then costs no `malloc`/`free` pair.
    static SPARE_REGIONS: RefCell<Vec<Rc<RegionInner>>> = const { RefCell::new(Vec::new()) };
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the field is taken exactly once, here, and not touched afterwards.
        let mut rc = unsafe { ManuallyDrop::take(&mut self.0) };
        let Some(inner) = Rc::get_mut(&mut rc) else {
            return; // other handles remain; the last one releases the region
        };
        if let RegionStore::Lent(c) = inner.store {
            // Release the scope's count now (as `RegionInner::drop` would) and keep the
            // allocation, which no longer refers to the lent bytes.
            inner.store = RegionStore::Spare;
            inner.ptr = std::ptr::null_mut();
            inner.len = 0;
            // SAFETY: as in `RegionInner::drop`: the counter outlives every region it counts.
            let c = unsafe { &*c };
            c.set(c.get() - 1);
            // During thread teardown the list may be gone: then the allocation is just freed.
            let _ = SPARE_REGIONS.try_with(move |spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_REGIONS_MAX {
                    spare.push(rc);
                }
            });
        }
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} bytes)", self.0.len)
    }
}

/// Releases a claim when a view is dropped.
struct ViewGuard {
    region: Rc<RegionInner>,
    token: u64,
}

impl ViewGuard {
    /// A second handle on the same read claim (for `MemRef::clone`).
    fn duplicate(&self) -> Self {
        if self.token == NO_CLAIM {
            return Self {
                region: self.region.clone(),
                token: NO_CLAIM,
            };
        }
        let c = self
            .region
            .claims
            .borrow()
            .iter()
            .find(|c| c.token == self.token)
            .copied()
            .expect("a live view has its claim");
        let token = self.region.claim_unchecked(c.start, c.end, false);
        Self {
            region: self.region.clone(),
            token,
        }
    }
}

impl Drop for ViewGuard {
    fn drop(&mut self) {
        self.region.release(self.token);
    }
}

impl RegionInner {
    fn check(&self, r: &Range<usize>, write: bool) -> Result<(), RegionError> {
        if r.start > r.end || r.end > self.len {
            return Err(RegionError::OutOfBounds {
                start: r.start,
                end: r.end,
                len: self.len,
            });
        }
        if write && !self.writable {
            return Err(RegionError::ReadOnly);
        }
        if r.start == r.end {
            return Ok(());
        }
        let claims = self.claims.borrow();
        let clash = !claims.is_empty()
            && claims.iter().any(|c| {
                (write || c.write) && c.start < r.end && r.start < c.end && c.start < c.end
            });
        drop(claims);
        if clash {
            return Err(RegionError::Overlap {
                start: r.start,
                end: r.end,
            });
        }
        Ok(())
    }

    fn claim_unchecked(&self, start: usize, end: usize, write: bool) -> u64 {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.claims.borrow_mut().push(Claim {
            start,
            end,
            write,
            token,
        });
        token
    }

    fn claim(&self, r: &Range<usize>, write: bool) -> Result<u64, RegionError> {
        self.check(r, write)?;
        if r.start == r.end {
            // An empty range conflicts with nothing: no bookkeeping.
            return Ok(NO_CLAIM);
        }
        Ok(self.claim_unchecked(r.start, r.end, write))
    }

    fn release(&self, token: u64) {
        if token == NO_CLAIM {
            return;
        }
        self.claims.borrow_mut().remove(token);
    }

    /// Pointer to byte `off`; `off <= len`.
    fn at(&self, off: usize) -> *mut u8 {
        if self.len == 0 {
            return self.ptr;
        }
        // SAFETY: callers pass an offset checked against `len`, so the result stays within
        // (or one past the end of) the allocation `ptr` points into.
        unsafe { self.ptr.add(off) }
    }
}

impl Region {
    fn new(ptr: *mut u8, len: usize, writable: bool, store: RegionStore) -> Self {
        if matches!(store, RegionStore::Lent(_)) {
            let spare = SPARE_REGIONS
                .try_with(|spare| spare.borrow_mut().pop())
                .ok()
                .flatten();
            if let Some(mut rc) = spare {
                let inner = Rc::get_mut(&mut rc).expect("a spare region has no other handle");
                debug_assert!(inner.claims.borrow().is_empty());
                inner.ptr = ptr;
                inner.len = len;
                inner.writable = writable;
                inner.store = store;
                return Self(ManuallyDrop::new(rc));
            }
        }
        Self(ManuallyDrop::new(Rc::new(RegionInner {
            ptr,
            len,
            writable,
            store,
            claims: RefCell::new(Claims::default()),
            next_token: Cell::new(0),
        })))
    }

    /// A zeroed, owned, writable region of `len` bytes, aligned to 16 bytes.
    pub fn alloc(len: usize) -> Self {
        let mut words = vec![0u128; len.div_ceil(16)].into_boxed_slice();
        let ptr = words.as_mut_ptr() as *mut u8;
        Self::new(ptr, len, true, RegionStore::Owned(words))
    }

    /// An empty writable region (shared, so it costs no allocation).
    pub fn empty() -> Self {
        EMPTY_REGION.with(Region::clone)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Whether this is the only handle on the region (no view or clone holds it).
    pub fn is_unique(&self) -> bool {
        Rc::strong_count(&self.0) == 1
    }

    /// Whether `other` is a handle on the same region.
    pub fn same(&self, other: &Region) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Hands `range` to the transport for reading (a send).
    pub fn view(&self, range: Range<usize>) -> Result<MemRef, RegionError> {
        let token = self.0.claim(&range, false)?;
        Ok(MemRef {
            ptr: self.0.at(range.start),
            len: range.len(),
            lease: RefLease::View(ViewGuard {
                region: Rc::clone(&self.0),
                token,
            }),
        })
    }

    /// Hands `range` to the transport for writing (a receive).
    pub fn view_mut(&self, range: Range<usize>) -> Result<MemMut, RegionError> {
        let token = self.0.claim(&range, true)?;
        Ok(MemMut {
            ptr: self.0.at(range.start),
            len: range.len(),
            lease: MutLease::View(ViewGuard {
                region: Rc::clone(&self.0),
                token,
            }),
        })
    }

    /// Runs `f` on the bytes of `range`.
    pub fn read<R>(
        &self,
        range: Range<usize>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RegionError> {
        let token = self.0.claim(&range, false)?;
        let bytes = if range.is_empty() {
            &[][..]
        } else {
            // SAFETY: the range is in bounds and claimed for reading, so no writer (view or
            // local) overlaps it until the claim is released below.
            unsafe { std::slice::from_raw_parts(self.0.at(range.start), range.len()) }
        };
        let r = f(bytes);
        self.0.release(token);
        Ok(r)
    }

    /// Runs `f` on the bytes of `range`, mutably.
    pub fn write<R>(
        &self,
        range: Range<usize>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, RegionError> {
        let token = self.0.claim(&range, true)?;
        let bytes = if range.is_empty() {
            &mut [][..]
        } else {
            // SAFETY: the range is in bounds, the region writable, and the range claimed for
            // writing, so nothing else reads or writes it until the claim is released below.
            unsafe { std::slice::from_raw_parts_mut(self.0.at(range.start), range.len()) }
        };
        let r = f(bytes);
        self.0.release(token);
        Ok(r)
    }

    /// Runs `f` on `src_range` of `src` and, mutably, `dst_range` of `dst` (which may be the
    /// same region, on a disjoint range): a copy or a reduction.
    pub fn combine<R>(
        src: &Region,
        src_range: Range<usize>,
        dst: &Region,
        dst_range: Range<usize>,
        f: impl FnOnce(&[u8], &mut [u8]) -> R,
    ) -> Result<R, RegionError> {
        let t = src.0.claim(&src_range, false)?;
        let out = dst.write(dst_range, |d| {
            let s = if src_range.is_empty() {
                &[][..]
            } else {
                // SAFETY: in bounds and claimed for reading; the write claim on `dst` was
                // checked against this claim, so the two slices do not overlap.
                unsafe { std::slice::from_raw_parts(src.0.at(src_range.start), src_range.len()) }
            };
            f(s, d)
        });
        src.0.release(t);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn scope_waits_for_regions_held_elsewhere() {
        let held: RefCell<Vec<MemRef>> = RefCell::new(Vec::new());
        let data = vec![1u8, 2, 3];
        let mut settles = 0;
        lend_scope(
            |l| {
                let m = l.lend(&data);
                assert_eq!(m.bytes(), &[1, 2, 3]);
                held.borrow_mut().push(m.clone());
                drop(m);
            },
            |done| {
                settles += 1;
                assert!(!done()); // the transport still holds a clone
                held.borrow_mut().clear();
                assert!(done());
            },
        );
        assert_eq!(settles, 1);
        let _ = data;
    }

    #[test]
    fn region_refuses_overlapping_writers_and_releases_views() {
        let data = vec![7u8; 64];
        let mut out = vec![0u8; 64];
        lend_scope(
            |l| {
                let src = l.lend_region(&data);
                let dst = l.lend_region_mut(&mut out);
                assert_eq!(src.view_mut(0..8).unwrap_err(), RegionError::ReadOnly);
                let a = dst.view_mut(0..32).unwrap();
                assert!(matches!(dst.view(16..40), Err(RegionError::Overlap { .. })));
                assert!(matches!(
                    dst.view_mut(31..33),
                    Err(RegionError::Overlap { .. })
                ));
                let b = dst.view(32..64).unwrap();
                let b2 = b.clone();
                drop(b);
                assert!(dst.view_mut(40..41).is_err()); // the clone still reads it
                drop(b2);
                drop(a);
                Region::combine(&src, 0..32, &dst, 32..64, |s, d| d.copy_from_slice(s)).unwrap();
                assert!(Region::combine(&dst, 0..8, &dst, 4..12, |_, _| ()).is_err());
                assert!(matches!(
                    dst.read(60..65, |_| ()),
                    Err(RegionError::OutOfBounds { .. })
                ));
                let owned = Region::alloc(3);
                owned.write(0..3, |b| b.copy_from_slice(b"abc")).unwrap();
                assert_eq!(owned.read(1..3, |b| b.to_vec()).unwrap(), b"bc");
            },
            |done| assert!(done()),
        );
        assert_eq!(&out[32..], &[7u8; 32][..]);
        assert_eq!(&out[..32], &[0u8; 32][..]);
    }

    #[test]
    fn reused_region_allocations_see_only_their_own_buffer() {
        let first = vec![1u8; 16];
        let mut second = vec![0u8; 8];
        // Several rounds, so later regions come from the spare list.
        for round in 0..3u8 {
            lend_scope(
                |l| {
                    let a = l.lend_region(&first);
                    drop(a);
                    let b = l.lend_region_mut(&mut second);
                    assert_eq!(b.len(), 8);
                    assert!(b.is_unique());
                    b.write(0..8, |d| d.fill(round)).unwrap();
                    assert_eq!(
                        b.view_mut(8..9).unwrap_err(),
                        RegionError::OutOfBounds {
                            start: 8,
                            end: 9,
                            len: 8
                        }
                    );
                    assert_eq!(l.outstanding(), 1);
                    // A view outliving its region keeps the scope waiting until it goes.
                    let v = b.view(0..4).unwrap();
                    drop(b);
                    assert_eq!(l.outstanding(), 1);
                    drop(v);
                    assert_eq!(l.outstanding(), 0);
                },
                |done| assert!(done()),
            );
            assert_eq!(second, vec![round; 8]);
        }
    }

    #[test]
    fn claims_spill_past_the_inline_slots_and_release_in_any_order() {
        let mut data = vec![0u8; 64];
        lend_scope(
            |l| {
                let r = l.lend_region_mut(&mut data);
                let views: Vec<_> = (0..8).map(|i| r.view(i * 8..i * 8 + 8).unwrap()).collect();
                let mut views: Vec<_> = views.into_iter().map(Some).collect();
                for i in [0, 5, 2, 7] {
                    views[i] = None;
                    assert!(r.view_mut(i * 8..i * 8 + 8).is_ok());
                    assert!(r.view_mut(i * 8..i * 8 + 9).is_err());
                }
                views.clear();
                assert!(r.view_mut(0..64).is_ok());
            },
            |done| assert!(done()),
        );
    }

    #[test]
    fn owned_regions_round_trip() {
        let mut m = MemMut::alloc(4);
        m.bytes_mut().copy_from_slice(b"abcd");
        assert_eq!(m.into_vec().unwrap(), b"abcd");
        let r = MemRef::owned(b"xyz".to_vec());
        assert_eq!(r.clone().bytes(), b"xyz");
    }
}
