//! Data received from the network straight into the engine's sector-aligned
//! I/O memory, so a mutation can write it where it lies.
//!
//! Without this, every replica copied each pushed byte from its receive
//! buffer into an aligned I/O buffer: 14.5 % of all CPU samples of the
//! write benchmark at four clients (BENCHMARKS.md, 2026-11-23). Data that
//! lands at a sector-aligned offset (a write from the `Writer`, a record
//! append framed to whole sectors) needs no copy: the socket fills a
//! [`Receiving`] buffer, its filled bytes go on down the chain as `Bytes`
//! views, and the finished [`Received`] is written by
//! [`ChunkStore::prepare_received`](super::ChunkStore::prepare_received)
//! without being touched again.
//!
//! Memory: a receive buffer is leased from half the share of the store's
//! buffer memory that prepared appends may hold, only if it is free right
//! now, so it never takes what a mutation in its turn needs, and data that
//! waits long for its mutation leaves room for reads and copies; with no
//! room the caller receives into ordinary memory and the mutation copies
//! as before.

use std::sync::Arc;

use bytes::Bytes;

use super::Leased;
use crate::buf::AlignedBuf;
use crate::layout::{SECTOR_BYTES, align_up};

/// The buffer and its lease, shared by the receiver, every `Bytes` view and
/// every [`Received`] of it. When the last goes the buffer returns to the
/// pool and its memory permits to the store.
struct Held {
    /// `None` only while being dropped.
    buf: Option<Arc<AlignedBuf>>,
    len: usize,
    lease: Leased,
}

impl Held {
    fn buf(&self) -> &Arc<AlignedBuf> {
        self.buf
            .as_ref()
            .expect("a held buffer is present until dropped")
    }

    /// Bytes `[at, at + n)` of the buffer.
    ///
    /// # Safety
    /// No one may write those bytes while the slice is alive: the receiver
    /// writes only past what it has filled, and views cover filled bytes.
    unsafe fn window(&self, at: usize, n: usize) -> &[u8] {
        assert!(at + n <= self.len, "view outside the received data");
        // SAFETY: in bounds (checked above) of a live, initialised
        // allocation; no writer of these bytes, by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.buf().as_ptr().add(at), n) }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A mutation dropped mid-write leaves its I/O holding the buffer:
        // then it is freed when that I/O completes, not pooled.
        if let Some(buf) = self.buf.take().and_then(|b| Arc::try_unwrap(b).ok()) {
            self.lease.buf = Some(buf);
        }
    }
}

/// A `Bytes` view of filled bytes.
struct View {
    held: Arc<Held>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a view is made only of bytes already filled, which the
        // receiver never writes again.
        unsafe { self.held.window(self.at, self.len) }
    }
}

/// A sector-aligned buffer of `len` bytes being filled front to back, for
/// example by a socket. The bytes from `len` to the end of its last sector
/// are zeros, so the data can be written as whole sectors.
pub struct Receiving {
    held: Arc<Held>,
    filled: usize,
}

impl std::fmt::Debug for Receiving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiving")
            .field("len", &self.held.len)
            .field("filled", &self.filled)
            .finish()
    }
}

impl Receiving {
    /// `len > 0` bytes in the leased buffer, which must hold their sectors.
    pub(super) fn new(mut lease: Leased, len: usize) -> Self {
        let mut buf = lease.buf.take().expect("a fresh lease holds a buffer");
        let end = align_up(len as u64) as usize;
        assert!(
            len > 0 && end <= buf.len(),
            "lease too small to receive into"
        );
        buf.as_mut_slice()[len..end].fill(0);
        Self {
            held: Arc::new(Held {
                buf: Some(Arc::new(buf)),
                len,
                lease,
            }),
            filled: 0,
        }
    }

    /// Bytes still to be filled.
    pub fn remaining(&self) -> usize {
        self.held.len - self.filled
    }

    /// The next `n` unfilled bytes (at most `remaining`), to be filled.
    pub fn unfilled(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.remaining(), "past the end of the received data");
        // SAFETY: `[filled, filled + n)` lies inside the allocation, and no
        // one else reads or writes it: views and `Received` cover only
        // `[0, filled)`, and `&mut self` makes this the only window here.
        unsafe { std::slice::from_raw_parts_mut(self.held.buf().as_ptr().add(self.filled), n) }
    }

    /// Marks the next `n` bytes filled and returns them as `Bytes` (which
    /// keep the buffer alive).
    pub fn advance(&mut self, n: usize) -> Bytes {
        assert!(n <= self.remaining(), "past the end of the received data");
        let at = self.filled;
        self.filled += n;
        Bytes::from_owner(View {
            held: self.held.clone(),
            at,
            len: n,
        })
    }

    /// The whole data, once every byte is filled.
    pub fn finish(self) -> Option<Received> {
        (self.remaining() == 0).then_some(Received { held: self.held })
    }
}

/// Data received whole into sector-aligned memory: `len` bytes from the
/// buffer's start, zeros to the end of the last sector.
#[derive(Clone)]
pub struct Received {
    held: Arc<Held>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("len", &self.held.len)
            .finish()
    }
}

impl Received {
    pub fn len(&self) -> usize {
        self.held.len
    }

    pub fn is_empty(&self) -> bool {
        self.held.len == 0
    }

    /// The data.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: every byte is filled and the receiver is gone.
        unsafe { self.held.window(0, self.held.len) }
    }

    /// The buffer, whose first `align_up(len)` bytes are the data's sectors.
    pub(super) fn buf(&self) -> &Arc<AlignedBuf> {
        self.held.buf()
    }

    /// The sector at `at` of the data (zeros past its end).
    pub(super) fn sector(&self, at: usize) -> &[u8] {
        let n = SECTOR_BYTES as usize;
        assert!(
            at.is_multiple_of(n) && at < self.held.len,
            "not a sector of the data"
        );
        // SAFETY: the data's sectors lie inside the buffer (checked when
        // it was leased), every byte is filled and nothing writes them.
        unsafe { std::slice::from_raw_parts(self.held.buf().as_ptr().add(at), n) }
    }
}
