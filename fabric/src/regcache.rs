//! Registration cache: keeps user buffers registered with a NIC between uses, for zero-copy
//! rendezvous on the `ofi` and `verbs` backends (the idea of UCX's rcache and Open MPI's grdma).
//!
//! Registering memory (`fi_mr_reg`, `ibv_reg_mr`) costs tens of microseconds and more per
//! megabyte; a program sends from the same buffers again and again. [`RegCache`] owns what it
//! registered through a backend's [`Registrar`] and hands out [`Lease`]s on entries covering
//! the requested range:
//!
//! - **Lookup** is O(log n): the entries in the lookup map never overlap (a new registration
//!   replaces the entries it overlaps, merging their ranges and access into its own), so the
//!   only candidate for an address is the entry starting at or below it. The hit path
//!   allocates nothing and takes no lock; it reads the monitor's pending flag (one atomic load).
//! - **Misses** register the range expanded to whole pages. An entry whose access lacks what is
//!   asked is replaced by one with the union of both.
//! - **Lazy deregistration**: an entry whose last lease is released stays registered, idle, in
//!   an LRU list. Idle entries are deregistered, least recently used first, only while the cache
//!   is over its capacity in entries or bytes ([`Config`]), or to retry a registration that
//!   failed. Entries in use are never evicted.
//! - **Invalidation**: [`RegCache::invalidate`] (and the [`Watcher`], see [`crate::memwatch`])
//!   removes every entry overlapping a range from lookup; idle ones are deregistered at once,
//!   ones in use when their last lease is released.
//!
//! A registration that outlives the memory it describes is dangerous for providers that pin
//! pages (verbs, efa): a freed-then-reused buffer at the same address would be backed by other
//! pages. So, where [`Config::needs_invalidation`] holds, the cache keeps an idle entry only if
//! the [`Watcher`] watches its range; without a watcher (userfaultfd refused) it deregisters
//! every entry as soon as it is idle ([`Mode::Uncached`]). Providers that resolve addresses at
//! each use (tcp) can cache unmonitored ([`Mode::Unmonitored`]).
//!
//! The cache is single-threaded (`&mut self`), like the engine that drives it. `Drop` cannot
//! reach the registrar: call [`RegCache::clear`] before dropping a cache (once its leases are
//! released), or its registrations are dropped without being deregistered.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::{BitOr, BitOrAssign};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::memwatch::{page_size, Watcher};
use crate::FabricError;

/// Access rights of a registration; combine with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u8);

impl Access {
    /// No access.
    pub const NONE: Self = Self(0);
    /// The local NIC may read the memory (send from it).
    pub const LOCAL_READ: Self = Self(1);
    /// The local NIC may write the memory (receive into it).
    pub const LOCAL_WRITE: Self = Self(2);
    /// Peers may read it (RMA read, rendezvous by read).
    pub const REMOTE_READ: Self = Self(4);
    /// Peers may write it (RMA write).
    pub const REMOTE_WRITE: Self = Self(8);
    /// Local read and write.
    pub const LOCAL: Self = Self(1 | 2);
    /// Everything.
    pub const ALL: Self = Self(1 | 2 | 4 | 8);

    /// Both sets of rights.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every right in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no right is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits (`LOCAL_READ` = 1, `LOCAL_WRITE` = 2, `REMOTE_READ` = 4, `REMOTE_WRITE` = 8).
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl BitOr for Access {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for Access {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Access, &str); 4] = [
            (Access::LOCAL_READ, "LOCAL_READ"),
            (Access::LOCAL_WRITE, "LOCAL_WRITE"),
            (Access::REMOTE_READ, "REMOTE_READ"),
            (Access::REMOTE_WRITE, "REMOTE_WRITE"),
        ];
        if self.is_empty() {
            return f.write_str("NONE");
        }
        let mut first = true;
        for (a, name) in NAMES {
            if self.contains(a) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// What a backend implements to register memory with its NIC.
pub trait Registrar {
    /// A registration (an `fid_mr` wrapper, an `ibv_mr`, ...).
    type Handle;
    /// Registers `[addr, addr + len)` (page aligned) with at least `access`.
    fn register(
        &mut self,
        addr: usize,
        len: usize,
        access: Access,
    ) -> Result<Self::Handle, FabricError>;
    /// Deregisters a handle `register` returned. Called exactly once per handle.
    fn deregister(&mut self, handle: Self::Handle);
}

/// Capacity and policy of a [`RegCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Deregister idle entries while more than this many entries are registered.
    pub max_entries: usize,
    /// Deregister idle entries while more than this many bytes are registered.
    pub max_bytes: usize,
    /// The provider pins pages at registration (verbs, efa): an idle registration may be kept
    /// only while its range is watched for unmapping.
    pub needs_invalidation: bool,
}

impl Default for Config {
    /// 1024 entries, 1 GiB, pinning provider.
    fn default() -> Self {
        Self {
            max_entries: 1024,
            max_bytes: 1 << 30,
            needs_invalidation: true,
        }
    }
}

/// How a cache keeps idle registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Idle entries are kept while a [`Watcher`] watches their memory (an entry whose range
    /// cannot be watched is deregistered when idle, if the provider needs invalidation).
    Monitored,
    /// No watcher, but the provider does not pin memory: idle entries are kept.
    Unmonitored,
    /// No watcher and the provider pins memory: entries are deregistered as soon as idle.
    Uncached,
}

/// Counters of a [`RegCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Acquisitions served by an existing entry.
    pub hits: u64,
    /// Acquisitions that registered memory.
    pub misses: u64,
    /// Idle entries deregistered to respect the capacity or to retry a registration.
    pub evictions: u64,
    /// Entries removed because their memory was unmapped or invalidated.
    pub invalidations: u64,
    /// Calls to [`Registrar::register`] that succeeded.
    pub registrations: u64,
    /// Calls to [`Registrar::deregister`].
    pub deregistrations: u64,
    /// Registrations held now (in use, idle, or waiting for their last release).
    pub entries: usize,
    /// Idle entries held now.
    pub idle: usize,
    /// Bytes registered now.
    pub registered_bytes: usize,
}

impl CacheStats {
    /// `hits / (hits + misses)`, 0 before the first acquisition.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// A use of a cache entry covering an acquired range; give it back with [`RegCache::release`].
#[derive(Debug)]
#[must_use = "a lease keeps its registration alive until released"]
pub struct Lease {
    cache: u32,
    slot: usize,
    generation: u32,
    base: usize,
    size: usize,
}

impl Lease {
    /// Start address of the registration (page aligned, at or below the acquired address);
    /// remote offsets are relative to it.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Length of the registration in bytes (covers the acquired range).
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Marks the end of the LRU list.
const NIL: usize = usize::MAX;

struct Entry<H> {
    start: usize,
    end: usize,
    access: Access,
    handle: H,
    /// Leases outstanding.
    refs: u32,
    /// Reachable by lookup (else: waiting for its last release, then deregistered).
    in_lookup: bool,
    /// May stay registered while idle.
    cacheable: bool,
    /// Its range was watched successfully.
    watched: bool,
    /// LRU neighbours (idle entries only): towards older, towards newer.
    prev: usize,
    next: usize,
}

struct Slot<H> {
    generation: u32,
    entry: Option<Entry<H>>,
}

/// Distinguishes the leases of different caches.
static NEXT_CACHE_ID: AtomicU32 = AtomicU32::new(1);

/// A registration cache; see the [module docs](self).
pub struct RegCache<R: Registrar> {
    id: u32,
    config: Config,
    page: usize,
    watcher: Option<Watcher>,
    /// Entry start → slot; entries in it never overlap.
    lookup: BTreeMap<usize, usize>,
    slots: Vec<Slot<R::Handle>>,
    free: Vec<usize>,
    /// Least recently used idle entry.
    lru_head: usize,
    /// Most recently used idle entry.
    lru_tail: usize,
    stats: CacheStats,
    /// Reused buffer for the watcher's pending ranges.
    pending: Vec<(usize, usize)>,
}

impl<R: Registrar> fmt::Debug for RegCache<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegCache")
            .field("mode", &self.mode())
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn invalid_input(msg: &'static str) -> FabricError {
    FabricError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

impl<R: Registrar> RegCache<R> {
    /// A cache with `config`, monitored by `watcher` if given.
    pub fn new(config: Config, watcher: Option<Watcher>) -> Self {
        Self {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            config,
            page: watcher.as_ref().map_or_else(page_size, Watcher::page_size),
            watcher,
            lookup: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            lru_head: NIL,
            lru_tail: NIL,
            stats: CacheStats::default(),
            pending: Vec::with_capacity(16),
        }
    }

    /// A cache with `config` that starts its own [`Watcher`] where the provider needs
    /// invalidation, falling back to [`Mode::Uncached`] where userfaultfd is refused.
    pub fn with_monitor(config: Config) -> Self {
        let watcher = if config.needs_invalidation {
            Watcher::new().ok()
        } else {
            None
        };
        Self::new(config, watcher)
    }

    /// How idle registrations are kept.
    pub fn mode(&self) -> Mode {
        match (&self.watcher, self.config.needs_invalidation) {
            (Some(_), _) => Mode::Monitored,
            (None, false) => Mode::Unmonitored,
            (None, true) => Mode::Uncached,
        }
    }

    /// Whether idle registrations are kept at all.
    pub fn caching(&self) -> bool {
        self.mode() != Mode::Uncached
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The watcher, if the cache is monitored.
    pub fn watcher(&self) -> Option<&Watcher> {
        self.watcher.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Returns a lease on a registration covering `[addr, addr + len)` with at least `access`,
    /// registering one (whole pages) on a miss.
    ///
    /// # Errors
    ///
    /// [`FabricError::Io`] (`InvalidInput`) for an empty or overflowing range; the registrar's
    /// error where registering fails even after evicting the idle entries.
    pub fn acquire(
        &mut self,
        registrar: &mut R,
        addr: usize,
        len: usize,
        access: Access,
    ) -> Result<Lease, FabricError> {
        self.apply_pending(registrar);
        if len == 0 {
            return Err(invalid_input("cannot register an empty range"));
        }
        let end = addr
            .checked_add(len)
            .ok_or_else(|| invalid_input("registered range overflows the address space"))?;
        if let Some(slot) = self.find(addr, end, access) {
            let lease = self.lease(slot)?;
            self.stats.hits += 1;
            return Ok(lease);
        }
        let mask = self.page - 1;
        let start = addr & !mask;
        let end = end
            .checked_add(mask)
            .map(|e| e & !mask)
            .ok_or_else(|| invalid_input("registered range overflows the address space"))?;
        self.stats.misses += 1;
        self.insert(registrar, start, end, access)
    }

    /// The registration behind `lease`.
    ///
    /// # Panics
    ///
    /// If `lease` came from another cache (a lease of this cache is valid until released, even
    /// across [`clear`](Self::clear) and invalidation).
    pub fn handle(&self, lease: &Lease) -> &R::Handle {
        match self.try_handle(lease) {
            Some(h) => h,
            None => panic!("lease {lease:?} does not belong to this registration cache"),
        }
    }

    /// The registration behind `lease`, or `None` if it came from another cache.
    pub fn try_handle(&self, lease: &Lease) -> Option<&R::Handle> {
        self.leased(lease).map(|(_, e)| &e.handle)
    }

    /// Gives a lease back. When its entry's last lease is released, the entry becomes idle
    /// (cached) or, if it was invalidated or may not be cached, is deregistered. A lease of
    /// another cache is ignored.
    pub fn release(&mut self, registrar: &mut R, lease: Lease) {
        let Some((slot, _)) = self.leased(&lease) else {
            return;
        };
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        let (in_lookup, cacheable) = (e.in_lookup, e.cacheable);
        if !in_lookup {
            self.destroy(registrar, slot);
        } else if !cacheable {
            self.unlink(slot);
            self.destroy(registrar, slot);
        } else {
            self.lru_push(slot);
            self.evict(registrar);
        }
    }

    /// Removes every entry overlapping `[addr, addr + len)` from lookup: idle ones are
    /// deregistered now, ones in use when their last lease is released.
    pub fn invalidate(&mut self, registrar: &mut R, addr: usize, len: usize) {
        self.invalidate_range(registrar, addr, addr.saturating_add(len));
    }

    /// Applies the invalidations the watcher has pending (done at the start of every
    /// [`acquire`](Self::acquire); a backend may also call it when idle).
    pub fn poll_invalidations(&mut self, registrar: &mut R) {
        self.apply_pending(registrar);
    }

    /// Empties the cache: idle entries are deregistered now, entries in use when their last
    /// lease is released. Call it before dropping the cache.
    pub fn clear(&mut self, registrar: &mut R) {
        while let Some((_, slot)) = self.lookup.pop_first() {
            self.detach(registrar, slot);
        }
    }

    /// The slot and entry of a lease of this cache.
    fn leased(&self, lease: &Lease) -> Option<(usize, &Entry<R::Handle>)> {
        if lease.cache != self.id {
            return None;
        }
        let s = self.slots.get(lease.slot)?;
        if s.generation != lease.generation {
            return None;
        }
        s.entry.as_ref().map(|e| (lease.slot, e))
    }

    fn entry(&self, slot: usize) -> Option<&Entry<R::Handle>> {
        self.slots.get(slot).and_then(|s| s.entry.as_ref())
    }

    fn entry_mut(&mut self, slot: usize) -> Option<&mut Entry<R::Handle>> {
        self.slots.get_mut(slot).and_then(|s| s.entry.as_mut())
    }

    /// The entry covering `[addr, end)` with `access`, if any: O(log n), no allocation.
    fn find(&self, addr: usize, end: usize, access: Access) -> Option<usize> {
        let (_, &slot) = self.lookup.range(..=addr).next_back()?;
        let e = self.entry(slot)?;
        (e.end >= end && e.access.contains(access)).then_some(slot)
    }

    /// A new lease on `slot`, taking it off the LRU list if it was idle.
    fn lease(&mut self, slot: usize) -> Result<Lease, FabricError> {
        let id = self.id;
        let generation = self.slots.get(slot).map_or(0, |s| s.generation);
        let Some(e) = self.entry_mut(slot) else {
            return Err(invalid_input("registration cache entry vanished"));
        };
        let was_idle = e.refs == 0;
        e.refs = e
            .refs
            .checked_add(1)
            .ok_or_else(|| invalid_input("too many leases on one registration"))?;
        let lease = Lease {
            cache: id,
            slot,
            generation,
            base: e.start,
            size: e.end - e.start,
        };
        if was_idle {
            self.lru_remove(slot);
        }
        Ok(lease)
    }

    /// The miss path: registers `[start, end)` (page aligned) merged with the entries it
    /// overlaps, replaces them in lookup, watches the result, and leases it.
    fn insert(
        &mut self,
        registrar: &mut R,
        start: usize,
        end: usize,
        access: Access,
    ) -> Result<Lease, FabricError> {
        // Union with the overlapped entries: contiguous, and overlapping nothing else since
        // lookup entries are disjoint.
        let (mut ustart, mut uend, mut uaccess) = (start, end, access);
        for (_, &slot) in self.lookup.range(..end).rev() {
            let Some(e) = self.entry(slot) else { break };
            if e.end <= start {
                break;
            }
            ustart = ustart.min(e.start);
            uend = uend.max(e.end);
            uaccess |= e.access;
        }
        let merged = (ustart, uend, uaccess) != (start, end, access);
        let first = registrar.register(ustart, uend - ustart, uaccess);
        let (rstart, rend, raccess, handle) = match first {
            Ok(h) => (ustart, uend, uaccess, h),
            Err(e) => {
                let h = if merged {
                    match registrar.register(start, end - start, access) {
                        Ok(h) => Ok(h),
                        Err(_) => self.register_after_eviction(registrar, start, end, access),
                    }
                } else if self.lru_head != NIL {
                    self.register_after_eviction(registrar, start, end, access)
                } else {
                    Err(e)
                };
                (start, end, access, h?)
            }
        };
        self.stats.registrations += 1;
        // Replace the entries the new one overlaps. Their parts outside it lose their watch.
        while let Some((&s, &slot)) = self.lookup.range(..rend).next_back() {
            let Some(e) = self.entry(slot) else { break };
            if e.end <= rstart {
                break;
            }
            let (os, oe, watched) = (e.start, e.end, e.watched);
            self.lookup.remove(&s);
            if watched {
                if let Some(w) = &self.watcher {
                    if os < rstart {
                        w.unwatch(os, rstart - os);
                    }
                    if oe > rend {
                        w.unwatch(rend, oe - rend);
                    }
                }
            }
            self.retire(registrar, slot);
        }
        let watched = match &self.watcher {
            Some(w) => {
                let ok = w.watch(rstart, rend - rstart).is_ok();
                if !ok {
                    // Parts of it may still be watched for the entries it replaced.
                    w.unwatch(rstart, rend - rstart);
                }
                ok
            }
            None => false,
        };
        let entry = Entry {
            start: rstart,
            end: rend,
            access: raccess,
            handle,
            refs: 0,
            in_lookup: true,
            cacheable: watched || !self.config.needs_invalidation,
            watched,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.entry = Some(entry);
                }
                slot
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                self.slots.len() - 1
            }
        };
        self.lookup.insert(rstart, slot);
        self.stats.entries += 1;
        self.stats.registered_bytes += rend - rstart;
        let lease = self.lease(slot)?;
        self.evict(registrar);
        Ok(lease)
    }

    /// Deregisters every idle entry, then retries a registration that failed.
    fn register_after_eviction(
        &mut self,
        registrar: &mut R,
        start: usize,
        end: usize,
        access: Access,
    ) -> Result<R::Handle, FabricError> {
        while self.lru_head != NIL {
            let slot = self.lru_head;
            self.unlink(slot);
            self.destroy(registrar, slot);
            self.stats.evictions += 1;
        }
        registrar.register(start, end - start, access)
    }

    /// Deregisters least recently used idle entries while over capacity.
    fn evict(&mut self, registrar: &mut R) {
        while (self.stats.entries > self.config.max_entries
            || self.stats.registered_bytes > self.config.max_bytes)
            && self.lru_head != NIL
        {
            let slot = self.lru_head;
            self.unlink(slot);
            self.destroy(registrar, slot);
            self.stats.evictions += 1;
        }
    }

    fn invalidate_range(&mut self, registrar: &mut R, start: usize, end: usize) {
        if start >= end {
            return;
        }
        while let Some((&s, &slot)) = self.lookup.range(..end).next_back() {
            match self.entry(slot) {
                Some(e) if e.end > start => {}
                _ => break,
            }
            self.lookup.remove(&s);
            self.stats.invalidations += 1;
            self.detach(registrar, slot);
        }
    }

    fn apply_pending(&mut self, registrar: &mut R) {
        match &self.watcher {
            Some(w) if w.has_pending() => {}
            _ => return,
        }
        let mut pending = std::mem::take(&mut self.pending);
        if let Some(w) = &self.watcher {
            w.take_pending(&mut pending);
        }
        for &(s, e) in &pending {
            self.invalidate_range(registrar, s, e);
        }
        pending.clear();
        self.pending = pending;
    }

    /// Takes an entry already removed from `lookup` out of service: stops watching it, and
    /// deregisters it if idle (else at its last release).
    fn detach(&mut self, registrar: &mut R, slot: usize) {
        if let (Some(e), Some(w)) = (self.entry(slot), &self.watcher) {
            if e.watched {
                w.unwatch(e.start, e.end - e.start);
            }
        }
        self.retire(registrar, slot);
    }

    /// Marks an entry removed from `lookup`; deregisters it now if idle.
    fn retire(&mut self, registrar: &mut R, slot: usize) {
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        e.in_lookup = false;
        e.watched = false;
        if e.refs == 0 {
            self.lru_remove(slot);
            self.destroy(registrar, slot);
        }
    }

    /// Removes an idle, looked-up entry from lookup and the LRU list, and stops watching it.
    fn unlink(&mut self, slot: usize) {
        self.lru_remove(slot);
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        let (start, end, watched) = (e.start, e.end, e.watched);
        e.in_lookup = false;
        e.watched = false;
        if self.lookup.get(&start) == Some(&slot) {
            self.lookup.remove(&start);
        }
        if watched {
            if let Some(w) = &self.watcher {
                w.unwatch(start, end - start);
            }
        }
    }

    /// Deregisters an entry and frees its slot.
    fn destroy(&mut self, registrar: &mut R, slot: usize) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(e) = s.entry.take() else {
            return;
        };
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.stats.entries -= 1;
        self.stats.registered_bytes -= e.end - e.start;
        self.stats.deregistrations += 1;
        registrar.deregister(e.handle);
    }

    /// Appends an idle entry at the most recently used end.
    fn lru_push(&mut self, slot: usize) {
        let tail = self.lru_tail;
        if let Some(e) = self.entry_mut(slot) {
            e.prev = tail;
            e.next = NIL;
        }
        match self.entry_mut(tail) {
            Some(t) => t.next = slot,
            None => self.lru_head = slot,
        }
        self.lru_tail = slot;
        self.stats.idle += 1;
    }

    /// Takes an entry off the LRU list (no-op if it is not idle).
    fn lru_remove(&mut self, slot: usize) {
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        let (prev, next) = (e.prev, e.next);
        let linked = prev != NIL || next != NIL || self.lru_head == slot;
        if !linked {
            return;
        }
        if let Some(e) = self.entry_mut(slot) {
            e.prev = NIL;
            e.next = NIL;
        }
        match self.entry_mut(prev) {
            Some(p) => p.next = next,
            None => self.lru_head = next,
        }
        match self.entry_mut(next) {
            Some(n) => n.prev = prev,
            None => self.lru_tail = prev,
        }
        self.stats.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memwatch::tests::{touch_with_timeout, watcher_or_skip, Mapping};
    use std::os::fd::AsRawFd;

    #[derive(Debug, PartialEq, Eq)]
    struct H(u64);

    /// Counts calls; fails on double deregistration; injects failures.
    #[derive(Default)]
    struct Counting {
        next: u64,
        live: BTreeMap<u64, (usize, usize, Access)>,
        registers: usize,
        deregisters: usize,
        fail: usize,
    }

    impl Counting {
        fn ranges(&self) -> Vec<(usize, usize)> {
            let mut v: Vec<_> = self.live.values().map(|&(a, l, _)| (a, l)).collect();
            v.sort_unstable();
            v
        }
    }

    impl Registrar for Counting {
        type Handle = H;
        fn register(&mut self, addr: usize, len: usize, access: Access) -> Result<H, FabricError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(FabricError::Setup("injected failure".into()));
            }
            self.next += 1;
            self.registers += 1;
            self.live.insert(self.next, (addr, len, access));
            Ok(H(self.next))
        }
        fn deregister(&mut self, h: H) {
            assert!(
                self.live.remove(&h.0).is_some(),
                "double deregistration of {h:?}"
            );
            self.deregisters += 1;
        }
    }

    const P0: usize = 0x7f00_0000_0000;

    fn pg() -> usize {
        page_size()
    }

    fn cache(max_entries: usize, max_bytes: usize) -> RegCache<Counting> {
        RegCache::new(
            Config {
                max_entries,
                max_bytes,
                needs_invalidation: false,
            },
            None,
        )
    }

    /// Empties the cache and checks every registration was deregistered exactly once.
    fn finish(mut c: RegCache<Counting>, mut r: Counting) {
        c.clear(&mut r);
        assert!(r.live.is_empty(), "leaked {:x?}", r.live);
        assert_eq!(r.registers, r.deregisters);
        let s = c.stats();
        assert_eq!((s.entries, s.idle, s.registered_bytes), (0, 0, 0));
    }

    #[test]
    fn hit_on_exact_and_sub_range() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        let a = c.acquire(&mut r, P0, 2 * pg(), Access::LOCAL).unwrap();
        let h = c.handle(&a).0;
        c.release(&mut r, a);
        let b = c.acquire(&mut r, P0, 2 * pg(), Access::LOCAL).unwrap();
        let d = c
            .acquire(&mut r, P0 + pg() + 7, 100, Access::LOCAL_READ)
            .unwrap();
        assert_eq!((c.handle(&b).0, c.handle(&d).0), (h, h));
        assert_eq!(d.base(), P0);
        c.release(&mut r, b);
        c.release(&mut r, d);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, r.registers), (2, 1, 1));
        finish(c, r);
    }

    #[test]
    fn miss_expands_to_pages() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        let a = c.acquire(&mut r, P0 + 10, 100, Access::LOCAL).unwrap();
        assert_eq!((a.base(), a.size()), (P0, pg()));
        assert_eq!(r.ranges(), vec![(P0, pg())]);
        c.release(&mut r, a);
        let b = c.acquire(&mut r, P0 + pg() - 1, 2, Access::LOCAL).unwrap();
        assert_eq!(c.stats().misses, 2, "crossing the entry's end is a miss");
        // Merged with the idle entry it overlaps, which is deregistered.
        assert_eq!((b.base(), b.size()), (P0, 2 * pg()));
        assert_eq!(r.ranges(), vec![(P0, 2 * pg())]);
        c.release(&mut r, b);
        finish(c, r);
    }

    #[test]
    fn merge_spans_several_entries_and_nested_ranges_hit() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        for i in [0, 2, 5] {
            let l = c
                .acquire(&mut r, P0 + i * pg(), pg(), Access::LOCAL)
                .unwrap();
            c.release(&mut r, l);
        }
        let l = c
            .acquire(&mut r, P0 + pg() - 1, pg() + 2, Access::LOCAL)
            .unwrap();
        assert_eq!((l.base(), l.size()), (P0, 3 * pg()));
        assert_eq!(r.ranges(), vec![(P0, 3 * pg()), (P0 + 5 * pg(), pg())]);
        c.release(&mut r, l);
        let n = c.acquire(&mut r, P0 + pg() + 3, 5, Access::LOCAL).unwrap();
        assert_eq!(n.base(), P0);
        c.release(&mut r, n);
        assert_eq!(c.stats().hits, 1);
        finish(c, r);
    }

    #[test]
    fn access_upgrade_registers_again() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        let a = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        // Still in use: the old entry stays registered until released.
        let b = c.acquire(&mut r, P0, pg(), Access::REMOTE_READ).unwrap();
        assert_ne!(c.handle(&a), c.handle(&b));
        assert_eq!(r.live.len(), 2);
        let hb = c.handle(&b).0;
        assert_eq!(r.live[&hb].2, Access::LOCAL | Access::REMOTE_READ);
        c.release(&mut r, a);
        assert_eq!(
            r.live.len(),
            1,
            "replaced entry deregistered at its last release"
        );
        c.release(&mut r, b);
        // Both rights now hit the new entry.
        let l = c.acquire(&mut r, P0, 10, Access::LOCAL_WRITE).unwrap();
        assert_eq!(c.handle(&l).0, hb);
        c.release(&mut r, l);
        // Upgrade of an idle entry: replaced at once.
        let w = c.acquire(&mut r, P0, 10, Access::REMOTE_WRITE).unwrap();
        assert_eq!(r.live.len(), 1);
        assert_eq!(r.live[&c.handle(&w).0].2, Access::ALL);
        c.release(&mut r, w);
        assert_eq!(c.stats().misses, 3);
        finish(c, r);
    }

    #[test]
    fn lru_eviction_by_entries() {
        let (mut c, mut r) = (cache(3, 1 << 30), Counting::default());
        let at = |i: usize| P0 + 2 * i * pg();
        for i in 0..3 {
            let l = c.acquire(&mut r, at(i), pg(), Access::LOCAL).unwrap();
            c.release(&mut r, l);
        }
        // Use entry 0 again: 1 is now the least recently used.
        let l = c.acquire(&mut r, at(0), pg(), Access::LOCAL).unwrap();
        c.release(&mut r, l);
        let l = c.acquire(&mut r, at(3), pg(), Access::LOCAL).unwrap();
        c.release(&mut r, l);
        assert_eq!(
            r.ranges(),
            vec![(at(0), pg()), (at(2), pg()), (at(3), pg())]
        );
        let l = c.acquire(&mut r, at(4), pg(), Access::LOCAL).unwrap();
        c.release(&mut r, l);
        assert_eq!(
            r.ranges(),
            vec![(at(0), pg()), (at(3), pg()), (at(4), pg())]
        );
        assert_eq!(c.stats().evictions, 2);
        finish(c, r);
    }

    #[test]
    fn lru_eviction_by_bytes() {
        let (mut c, mut r) = (cache(100, 4 * pg()), Counting::default());
        let a = c.acquire(&mut r, P0, 2 * pg(), Access::LOCAL).unwrap();
        c.release(&mut r, a);
        let b = c
            .acquire(&mut r, P0 + 10 * pg(), pg(), Access::LOCAL)
            .unwrap();
        c.release(&mut r, b);
        let d = c
            .acquire(&mut r, P0 + 20 * pg(), 2 * pg(), Access::LOCAL)
            .unwrap();
        c.release(&mut r, d);
        // 5 pages > 4: the oldest (2 pages) goes.
        assert_eq!(
            r.ranges(),
            vec![(P0 + 10 * pg(), pg()), (P0 + 20 * pg(), 2 * pg())]
        );
        assert_eq!(c.stats().registered_bytes, 3 * pg());
        assert_eq!(c.stats().evictions, 1);
        finish(c, r);
    }

    #[test]
    fn entries_in_use_are_not_evicted() {
        let (mut c, mut r) = (cache(1, 1 << 30), Counting::default());
        let a = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        let b = c
            .acquire(&mut r, P0 + 4 * pg(), pg(), Access::LOCAL)
            .unwrap();
        assert_eq!(r.live.len(), 2, "over capacity, but both in use");
        c.release(&mut r, a);
        assert_eq!(r.ranges(), vec![(P0 + 4 * pg(), pg())]);
        c.release(&mut r, b);
        assert_eq!(r.live.len(), 1, "at capacity: stays cached");
        assert_eq!(c.stats().idle, 1);
        finish(c, r);
    }

    #[test]
    fn invalidate_idle_and_in_use() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        let idle = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        c.release(&mut r, idle);
        let busy = c
            .acquire(&mut r, P0 + 4 * pg(), pg(), Access::LOCAL)
            .unwrap();
        let keep = c
            .acquire(&mut r, P0 + 8 * pg(), pg(), Access::LOCAL)
            .unwrap();
        c.invalidate(&mut r, P0 + 100, 4 * pg());
        assert_eq!(c.stats().invalidations, 2);
        assert_eq!(r.live.len(), 2, "idle one deregistered at once");
        // The in-use lease still works; new acquisitions do not find the old entry.
        let hb = c.handle(&busy).0;
        let again = c.acquire(&mut r, P0 + 4 * pg(), 8, Access::LOCAL).unwrap();
        assert_ne!(c.handle(&again).0, hb);
        c.release(&mut r, busy);
        assert!(
            !r.live.contains_key(&hb),
            "deregistered at its last release"
        );
        c.release(&mut r, again);
        c.release(&mut r, keep);
        assert_eq!(r.live.len(), 2);
        finish(c, r);
    }

    #[test]
    fn stats_and_hit_rate() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        assert_eq!(c.stats().hit_rate(), 0.0);
        for _ in 0..4 {
            let l = c.acquire(&mut r, P0 + 1, 64, Access::LOCAL).unwrap();
            c.release(&mut r, l);
        }
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.registrations), (3, 1, 1));
        assert_eq!((s.entries, s.idle, s.registered_bytes), (1, 1, pg()));
        assert!((s.hit_rate() - 0.75).abs() < 1e-12);
        finish(c, r);
    }

    #[test]
    fn uncached_mode_deregisters_when_idle() {
        let mut c = RegCache::new(Config::default(), None);
        let mut r = Counting::default();
        assert_eq!(c.mode(), Mode::Uncached);
        assert!(!c.caching());
        let a = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        let b = c.acquire(&mut r, P0, 10, Access::LOCAL).unwrap();
        assert_eq!(c.stats().hits, 1, "entries in use are still shared");
        c.release(&mut r, a);
        assert_eq!(r.live.len(), 1);
        c.release(&mut r, b);
        assert!(r.live.is_empty());
        let d = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        c.release(&mut r, d);
        assert_eq!(r.registers, 2);
        finish(c, r);
    }

    #[test]
    fn clear_deregisters_idle_now_and_in_use_at_release() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        assert_eq!(c.mode(), Mode::Unmonitored);
        let a = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        c.release(&mut r, a);
        let b = c
            .acquire(&mut r, P0 + 2 * pg(), pg(), Access::LOCAL)
            .unwrap();
        c.clear(&mut r);
        assert_eq!(r.live.len(), 1);
        let hb = c.handle(&b).0;
        assert!(r.live.contains_key(&hb));
        c.release(&mut r, b);
        finish(c, r);
    }

    #[test]
    fn bad_ranges_and_foreign_leases() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        assert!(c.acquire(&mut r, P0, 0, Access::LOCAL).is_err());
        assert!(c
            .acquire(&mut r, usize::MAX - 10, 100, Access::LOCAL)
            .is_err());
        assert!(c
            .acquire(&mut r, usize::MAX - 10, 5, Access::LOCAL)
            .is_err());
        assert_eq!(r.registers, 0);
        let (mut other, mut r2) = (cache(16, 1 << 30), Counting::default());
        let l = other.acquire(&mut r2, P0, 1, Access::LOCAL).unwrap();
        assert!(c.try_handle(&l).is_none());
        c.release(&mut r, l); // ignored: not ours (and lost to `other`)
        assert_eq!(c.stats(), CacheStats::default());
        other.clear(&mut r2);
        assert_eq!(r2.live.len(), 1, "still leased");
        finish(c, r);
    }

    #[test]
    fn registration_failure_evicts_idle_and_retries() {
        let (mut c, mut r) = (cache(16, 1 << 30), Counting::default());
        let a = c.acquire(&mut r, P0, pg(), Access::LOCAL).unwrap();
        c.release(&mut r, a);
        r.fail = 1;
        let b = c
            .acquire(&mut r, P0 + 8 * pg(), pg(), Access::LOCAL)
            .unwrap();
        assert_eq!(r.ranges(), vec![(P0 + 8 * pg(), pg())]);
        assert_eq!(c.stats().evictions, 1);
        r.fail = 5;
        assert!(c
            .acquire(&mut r, P0 + 16 * pg(), pg(), Access::LOCAL)
            .is_err());
        c.release(&mut r, b);
        r.fail = 0;
        finish(c, r);
    }

    fn monitored() -> Option<RegCache<Counting>> {
        let w = watcher_or_skip()?;
        let c = RegCache::new(Config::default(), Some(w));
        assert_eq!(c.mode(), Mode::Monitored);
        Some(c)
    }

    #[test]
    fn watched_entry_is_invalidated_when_its_memory_is_replaced() {
        let Some(mut c) = monitored() else { return };
        let mut r = Counting::default();
        let m = Mapping::new(4);
        m.fill(1);
        let a = c
            .acquire(&mut r, m.addr + 100, 2 * pg(), Access::LOCAL)
            .unwrap();
        c.release(&mut r, a);
        let a = c
            .acquire(&mut r, m.addr + 100, 2 * pg(), Access::LOCAL)
            .unwrap();
        c.release(&mut r, a);
        assert_eq!((r.registers, r.live.len()), (1, 1), "cached while watched");
        // Free and reuse in one step: new pages at the same addresses (an implicit munmap).
        // SAFETY: replaces our own mapping with a fresh anonymous one of the same size.
        let q = unsafe {
            libc::mmap(
                m.addr as *mut libc::c_void,
                m.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(q as usize, m.addr);
        let b = c
            .acquire(&mut r, m.addr + 100, 2 * pg(), Access::LOCAL)
            .unwrap();
        assert_eq!(r.registers, 2, "the stale registration was not reused");
        assert_eq!(c.stats().invalidations, 1);
        assert_eq!(r.live.len(), 1);
        c.release(&mut r, b);
        finish(c, r);
    }

    #[test]
    fn watched_entry_is_invalidated_by_dontneed_and_cached_again() {
        let Some(mut c) = monitored() else { return };
        let mut r = Counting::default();
        let m = Mapping::new(2);
        m.fill(1);
        let a = c.acquire(&mut r, m.addr, m.len, Access::LOCAL).unwrap();
        c.release(&mut r, a);
        m.dontneed();
        let b = c.acquire(&mut r, m.addr, m.len, Access::LOCAL).unwrap();
        c.release(&mut r, b);
        assert_eq!((r.registers, r.live.len()), (2, 1));
        let d = c.acquire(&mut r, m.addr, m.len, Access::LOCAL).unwrap();
        c.release(&mut r, d);
        assert_eq!(r.registers, 2, "watched again, so cached again");
        finish(c, r);
    }

    #[test]
    fn merged_watched_entry_is_invalidated_by_partial_munmap() {
        let Some(mut c) = monitored() else { return };
        let mut r = Counting::default();
        let m = Mapping::new(4);
        m.fill(1);
        let a = c.acquire(&mut r, m.addr, pg(), Access::LOCAL).unwrap();
        c.release(&mut r, a);
        let b = c
            .acquire(&mut r, m.addr + pg() - 8, 16, Access::REMOTE_READ)
            .unwrap();
        assert_eq!((b.base(), b.size()), (m.addr, 2 * pg()));
        c.release(&mut r, b);
        assert_eq!(r.live.len(), 1);
        // SAFETY: unmaps the second page of our own mapping (its Drop unmaps all again).
        assert_eq!(unsafe { libc::munmap((m.addr + pg()) as *mut _, pg()) }, 0);
        c.poll_invalidations(&mut r);
        assert!(r.live.is_empty());
        assert_eq!(c.stats().invalidations, 1);
        // The first page is still mapped and can be cached again.
        let d = c.acquire(&mut r, m.addr, 8, Access::LOCAL).unwrap();
        c.release(&mut r, d);
        assert_eq!((r.registers, r.live.len()), (3, 1));
        finish(c, r);
    }

    #[test]
    fn first_touch_of_a_watched_page_invalidates_its_entry() {
        let Some(mut c) = monitored() else { return };
        let mut r = Counting::default();
        let m = Mapping::new(2); // untouched
        let a = c.acquire(&mut r, m.addr, m.len, Access::LOCAL).unwrap();
        c.release(&mut r, a);
        // Faults into the monitor, which unwatches the range.
        assert_eq!(touch_with_timeout(m.addr + pg() + 1, true), Some(7));
        let b = c.acquire(&mut r, m.addr, m.len, Access::LOCAL).unwrap();
        c.release(&mut r, b);
        assert_eq!(r.registers, 2);
        finish(c, r);
    }

    #[test]
    fn unwatchable_memory_is_not_cached_for_pinning_providers() {
        let Some(mut c) = monitored() else { return };
        let mut r = Counting::default();
        // A private file mapping cannot be watched.
        let f = std::fs::File::open("/proc/self/exe").expect("open own executable");
        // SAFETY: maps one read-only page of a file we hold open.
        let fm = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pg(),
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(fm, libc::MAP_FAILED);
        let a = c.acquire(&mut r, fm as usize, 64, Access::LOCAL).unwrap();
        c.release(&mut r, a);
        assert!(r.live.is_empty(), "deregistered when idle");
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(fm, pg()) };
        finish(c, r);
    }
}
