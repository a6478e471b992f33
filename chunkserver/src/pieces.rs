//! Receive buffers for pushed pieces, recycled.
//!
//! A push arrives in pieces of up to `PIECE_BYTES`, each read by the kernel
//! into a buffer that lives until the mutation using it is applied. A fresh
//! allocation of that size comes from new pages (glibc serves it by `mmap`,
//! or from an arena top it trimmed), so every piece paid for page faults
//! and for the kernel zeroing its pages: about a quarter of a chunkserver's
//! CPU under four record appenders (`perf`, BENCHMARKS.md). A pooled buffer
//! was faulted in once and is reused as it is; the socket read overwrites
//! it, and nothing is zeroed.
//!
//! Memory: only pieces of at least half a buffer take one, so what a push
//! holds stays within twice what the push buffer accounts for it; and the
//! pool keeps at most `keep` free buffers, memory the process holds on to
//! after a burst.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

#[derive(Debug)]
pub struct PiecePool {
    free: Mutex<Vec<Vec<u8>>>,
    piece: usize,
    keep: usize,
}

/// A pooled buffer inside a `Bytes`: back to the pool when the last
/// `Bytes` of it is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<PiecePool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

impl PiecePool {
    /// Buffers of `piece` bytes, at most `keep` of them kept free.
    pub fn new(piece: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            piece,
            keep,
        })
    }

    /// An empty buffer with room for `n` bytes: a pooled one when `n` is at
    /// least half a piece (and at most one), otherwise exactly `n`.
    pub fn take(&self, n: usize) -> Vec<u8> {
        if n < self.piece / 2 || n > self.piece {
            return Vec::with_capacity(n);
        }
        let reused = self.lock().pop();
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(self.piece));
        buf.clear();
        buf
    }

    /// `buf` (from `take`) as `Bytes`; a pooled buffer goes back to the
    /// pool when the last of them is dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        if buf.capacity() != self.piece {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.lock();
        if buf.capacity() == self.piece && free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Free buffers held now.
    pub fn free(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_piece_is_reused_and_the_pool_stays_bounded() {
        let pool = PiecePool::new(1024, 2);
        let mut a = pool.take(1000);
        assert_eq!(a.capacity(), 1024);
        a.extend_from_slice(&[7; 1000]);
        let at = a.as_ptr();
        let a = pool.freeze(a);
        let part = a.slice(10..20);
        drop(a);
        assert_eq!(pool.free(), 0, "a slice still holds it");
        assert_eq!(&part[..], &[7; 10]);
        drop(part);
        assert_eq!(pool.free(), 1);
        let b = pool.take(600);
        assert_eq!((b.as_ptr(), b.len()), (at, 0), "the same buffer, emptied");
        // Three pieces dropped at once: only two are kept.
        let bufs: Vec<Bytes> = (0..3).map(|_| pool.freeze(pool.take(1024))).collect();
        drop(bufs);
        drop(b);
        assert_eq!(pool.free(), 2);
    }

    #[test]
    fn small_and_odd_pieces_are_never_pooled() {
        let pool = PiecePool::new(1024, 4);
        let small = pool.take(100);
        assert_eq!(small.capacity(), 100);
        drop(pool.freeze(small));
        let big = pool.take(4096);
        assert!(big.capacity() >= 4096);
        drop(pool.freeze(big));
        assert_eq!(pool.free(), 0);
    }
}
