//! Sector-aligned buffers owned by the engine, and a pool that recycles them.
//!
//! O_DIRECT needs the memory address, the file offset and the length of every
//! request aligned to the device's logical block size. The engine therefore
//! never hands caller memory to the kernel: it copies into (or out of) an
//! [`AlignedBuf`], or lends one for the caller to receive data into
//! (`store::Receiving`). A buffer is split into disjoint [`IoSlice`]s so several
//! I/Os of one request can be in flight at once.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::layout::SECTOR_BYTES;

/// A buffer aligned to [`SECTOR_BYTES`], always initialised (zeroed at
/// allocation), so reading it is never undefined behaviour. It is either a
/// heap allocation of its own or an extent of an [`Arena`] that io_uring
/// has registered.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    origin: Origin,
}

enum Origin {
    Heap,
    Arena {
        arena: Arc<Arena>,
        first_unit: usize,
        units: usize,
    },
}

// SAFETY: AlignedBuf uniquely owns its allocation, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads (and the I/O paths below, whose
// disjointness is argued at each use).
unsafe impl Sync for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes; `len` must be a positive multiple of
    /// the sector size.
    pub fn zeroed(len: usize) -> Self {
        assert!(
            len > 0 && len.is_multiple_of(SECTOR_BYTES as usize),
            "unaligned buffer length {len}"
        );
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self {
            ptr,
            len,
            origin: Origin::Heap,
        }
    }

    /// True if this buffer lies in a registered arena (fixed-buffer I/O).
    pub fn is_registered(&self) -> bool {
        matches!(self.origin, Origin::Arena { .. })
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, SECTOR_BYTES as usize)
            .expect("sector alignment is a power of two")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match &self.origin {
            // SAFETY: allocated in `zeroed` with exactly this layout.
            Origin::Heap => unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) },
            Origin::Arena {
                arena,
                first_unit,
                units,
            } => arena.release(*first_unit, *units),
        }
    }
}

/// One large allocation, registered once with every io_uring of a store, from
/// which I/O buffers are carved. Registered ("fixed") buffers spare the
/// kernel pinning and unpinning every page of every I/O: measured with
/// `gfs-bench registered-buffers`, about 40 % less CPU per GiB moved at the
/// same bandwidth. Extents are handed out first-fit in 64 KiB units; when the
/// arena is too fragmented for a request, the pool falls back to a plain
/// heap buffer, so this never blocks or fails a request.
pub struct Arena {
    base: NonNull<u8>,
    len: usize,
    free: Mutex<Vec<(usize, usize)>>,
}

// SAFETY: the arena owns its mapping; extents handed out are disjoint and
// each is accessed through the AlignedBuf that owns it.
unsafe impl Send for Arena {}
// SAFETY: as above; the free list is behind a mutex.
unsafe impl Sync for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("bytes", &self.len).finish()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: base and len are exactly the mapping made in `new`, and no
        // extent outlives the arena (each holds an Arc to it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

pub const ARENA_UNIT: usize = 64 << 10;

/// The size of a transparent huge page on x86-64 and the arena's alignment.
const HUGE_PAGE: usize = 2 << 20;

impl Arena {
    /// Maps `bytes` (rounded up to 64 KiB) of zeroed memory, starting on
    /// a 2 MiB boundary and advised to be backed by transparent huge pages.
    /// An anonymous mapping costs nothing until touched, unlike an aligned
    /// heap allocation, which the allocator zeroes eagerly.
    ///
    /// Huge pages matter to the device, not only to the TLB: a 1 MiB I/O
    /// from 4 KiB pages is 256 memory segments, more than a virtio disk
    /// takes in one request (254), so the block layer split every 1 MiB
    /// I/O in two. From huge pages it is one segment and one request: fio,
    /// random 1 MiB reads 8 deep, 3734 / 3792 MiB/s against 1551 / 1650
    /// from 4 KiB pages, requests of 1019-1024 KiB against 503-509
    /// (BENCHMARKS.md, 2026-11-23, late night). Where huge pages are off or
    /// none are free, the mapping simply stays in 4 KiB pages.
    pub fn new(bytes: usize) -> Arc<Self> {
        let units = bytes.div_ceil(ARENA_UNIT).max(1);
        let len = units * ARENA_UNIT;
        let map_len = len + HUGE_PAGE;
        // SAFETY: an anonymous private mapping with no address hint; checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            alloc::handle_alloc_error(AlignedBuf::layout(len));
        }
        // Keep the 2 MiB-aligned `len` bytes inside the mapping; give back
        // what lies before and after them.
        let head = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
        let tail = map_len - head - len;
        // SAFETY: both ranges lie inside the mapping just made, outside the
        // part kept, and are page-aligned (mmap returns page-aligned memory,
        // and `len` and HUGE_PAGE are multiples of the page size).
        unsafe {
            let start = raw.cast::<u8>();
            if head > 0 {
                libc::munmap(start.cast(), head);
            }
            if tail > 0 {
                libc::munmap(start.add(head + len).cast(), tail);
            }
        }
        // SAFETY: head < HUGE_PAGE, so this stays inside the mapping.
        let kept = unsafe { raw.cast::<u8>().add(head) };
        // SAFETY: advice on memory this arena owns; a failure (huge pages
        // not configured) changes nothing but the page size.
        unsafe { libc::madvise(kept.cast(), len, libc::MADV_HUGEPAGE) };
        let base = NonNull::new(kept).expect("mmap never returns null on success");
        Arc::new(Self {
            base,
            len,
            free: Mutex::new(vec![(0, units)]),
        })
    }

    /// Start and length of the whole arena, for registration.
    pub fn region(&self) -> (*mut u8, usize) {
        (self.base.as_ptr(), self.len)
    }

    /// An extent of at least `len` bytes, or `None` if none is free.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<AlignedBuf> {
        let units = len.div_ceil(ARENA_UNIT).max(1);
        let mut free = self.free.lock().expect("arena lock");
        let i = free.iter().position(|&(_, n)| n >= units)?;
        let (start, n) = free[i];
        if n == units {
            free.remove(i);
        } else {
            free[i] = (start + units, n - units);
        }
        drop(free);
        // SAFETY: start + units <= the arena's unit count, so the offset stays
        // inside the arena's mapping.
        let ptr = unsafe { self.base.as_ptr().add(start * ARENA_UNIT) };
        let ptr = NonNull::new(ptr).expect("offset of a non-null allocation");
        let origin = Origin::Arena {
            arena: self.clone(),
            first_unit: start,
            units,
        };
        Some(AlignedBuf {
            ptr,
            len: units * ARENA_UNIT,
            origin,
        })
    }

    fn release(&self, start: usize, units: usize) {
        let mut free = self.free.lock().expect("arena lock");
        let i = free.partition_point(|&(s, _)| s < start);
        free.insert(i, (start, units));
        // Coalesce with the neighbours.
        if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }

    /// Free bytes (for tests and diagnostics).
    pub fn free_bytes(&self) -> usize {
        self.free
            .lock()
            .expect("arena lock")
            .iter()
            .map(|&(_, n)| n * ARENA_UNIT)
            .sum()
    }
}

/// A disjoint window `[start, start + len)` of a shared buffer, handed to one
/// I/O. The engine creates the windows of one buffer so that they never
/// overlap, and it does not touch the buffer until every I/O has completed:
/// that is what makes the raw access in the backends sound.
#[derive(Debug, Clone)]
pub struct IoSlice {
    buf: Arc<AlignedBuf>,
    start: usize,
    len: usize,
}

impl IoSlice {
    pub fn new(buf: Arc<AlignedBuf>, start: usize, len: usize) -> Self {
        assert!(start + len <= buf.len(), "I/O window outside its buffer");
        Self { buf, start, len }
    }

    /// True if the window lies in a registered arena.
    pub fn is_registered(&self) -> bool {
        self.buf.is_registered()
    }

    /// A window `[start, start + len)` inside this window.
    pub fn new_sub(&self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.len, "sub-window outside its window");
        Self::new(self.buf.clone(), self.start + start, len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw start of the window, for the kernel or pread/pwrite.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: start + len <= buf.len() (checked in `new`), so the offset
        // stays inside the allocation.
        unsafe { self.buf.as_ptr().add(self.start) }
    }

    /// The window as a slice, for writes (the kernel reads it) and for
    /// inspection after a read completed.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf.as_slice()[self.start..self.start + self.len]
    }

    /// The window as a mutable slice.
    ///
    /// # Safety
    /// The caller must be the only one accessing this window: it is the I/O
    /// this window was created for, and no reference from `as_slice` is alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice_unchecked(&self) -> &mut [u8] {
        // SAFETY: forwarded to the caller's contract above.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }
}

/// Hands out I/O buffers: from the registered arena when there is one and
/// it has room, else recycled heap buffers (sizes rounded up to a power of
/// two, at most `keep` kept per size) so the hot path does not pay for
/// allocation and zeroing.
#[derive(Debug)]
pub struct BufPool {
    arena: Option<Arc<Arena>>,
    free: Mutex<Vec<Vec<AlignedBuf>>>,
    keep: usize,
}

impl BufPool {
    pub fn new(keep: usize, arena: Option<Arc<Arena>>) -> Self {
        Self {
            arena,
            free: Mutex::new((0..64).map(|_| Vec::new()).collect()),
            keep,
        }
    }

    fn class(len: usize) -> (usize, usize) {
        let size = len.max(SECTOR_BYTES as usize).next_power_of_two();
        (size.trailing_zeros() as usize, size)
    }

    /// A buffer of at least `len` bytes. Its contents are whatever the last
    /// user left: callers overwrite what they use.
    pub fn get(&self, len: usize) -> AlignedBuf {
        if let Some(buf) = self.arena.as_ref().and_then(|a| a.alloc(len)) {
            return buf;
        }
        let (class, size) = Self::class(len);
        let reused = self
            .free
            .lock()
            .expect("buffer pool lock")
            .get_mut(class)
            .and_then(Vec::pop);
        reused.unwrap_or_else(|| AlignedBuf::zeroed(size))
    }

    pub fn put(&self, buf: AlignedBuf) {
        let (class, size) = Self::class(buf.len());
        if size != buf.len() || buf.is_registered() {
            return;
        }
        let mut free = self.free.lock().expect("buffer pool lock");
        if let Some(list) = free.get_mut(class)
            && list.len() < self.keep
        {
            list.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled_by_size_class() {
        let pool = BufPool::new(2, None);
        let b = pool.get(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % SECTOR_BYTES as usize, 0);
        let addr = b.as_ptr() as usize;
        pool.put(b);
        let again = pool.get(8000);
        assert_eq!(again.as_ptr() as usize, addr);
        assert_eq!(pool.get(4096).len(), 4096);
    }

    #[test]
    fn the_arena_hands_out_first_fit_extents_and_coalesces_them() {
        let arena = Arena::new(4 * ARENA_UNIT);
        let a = arena.alloc(1).expect("room");
        let b = arena.alloc(ARENA_UNIT + 1).expect("room");
        assert!(a.is_registered() && b.is_registered());
        assert_eq!((a.len(), b.len()), (ARENA_UNIT, 2 * ARENA_UNIT));
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, ARENA_UNIT);
        assert!(arena.alloc(2 * ARENA_UNIT).is_none());
        drop(a);
        drop(b);
        assert_eq!(arena.free_bytes(), 4 * ARENA_UNIT);
        assert!(
            arena.alloc(4 * ARENA_UNIT).is_some(),
            "freed extents coalesce"
        );
        let pool = BufPool::new(2, Some(arena.clone()));
        let held = pool.get(3 * ARENA_UNIT);
        assert!(held.is_registered());
        assert!(
            !pool.get(2 * ARENA_UNIT).is_registered(),
            "falls back to the heap"
        );
    }

    #[test]
    fn the_arena_starts_on_a_huge_page_and_frees_exactly_its_mapping() {
        for bytes in [1, ARENA_UNIT, 3 * HUGE_PAGE + 5] {
            let arena = Arena::new(bytes);
            let (base, len) = arena.region();
            assert_eq!(base as usize % HUGE_PAGE, 0, "{bytes} bytes");
            assert_eq!(len, bytes.div_ceil(ARENA_UNIT) * ARENA_UNIT);
            // Every byte is mapped and zeroed, up to the last one.
            let all = arena.alloc(len).expect("the whole arena");
            assert!(all.as_slice().iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn slices_are_windows_of_their_buffer() {
        let mut b = AlignedBuf::zeroed(8192);
        b.as_mut_slice()[4096] = 7;
        let s = IoSlice::new(Arc::new(b), 4096, 4096);
        assert_eq!(s.as_slice()[0], 7);
        assert_eq!(s.len(), 4096);
    }
}
