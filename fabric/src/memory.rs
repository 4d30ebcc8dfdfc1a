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

use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

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

    /// Regions lent out of this scope and not yet dropped.
    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }
}

/// Runs `f` with a [`Lender`], then calls `settle` (which must drive the transport until the
/// predicate it is given holds, i.e. no region is outstanding) before returning or unwinding.
///
/// If `settle` returns while regions are still outstanding the process aborts: returning would
/// let the caller free memory the transport may still write.
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
        let done = || lender.outstanding() == 0;
        if catch_unwind(AssertUnwindSafe(|| settle(&done))).is_err() || !done() {
            eprintln!(
                "oxmpi: {} lent buffer(s) still held by the transport at the end of their scope; \
                 aborting rather than let it write freed memory",
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
            MutLease::Lent(c) => {
                self.lease = MutLease::Lent(c);
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
    fn owned_regions_round_trip() {
        let mut m = MemMut::alloc(4);
        m.bytes_mut().copy_from_slice(b"abcd");
        assert_eq!(m.into_vec().unwrap(), b"abcd");
        let r = MemRef::owned(b"xyz".to_vec());
        assert_eq!(r.clone().bytes(), b"xyz");
    }
}
