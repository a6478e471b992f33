//! The data path: append, write, pad and read.
//!
//! A mutation builds one sector-aligned buffer for the region it touches:
//! the cached tail sector (or the sector read back) in front of an unaligned
//! append, or the edge blocks, read and verified, around an overwrite. It
//! computes the new block checksums from that buffer (incrementally for an
//! append into a partial block), then submits the data writes and the entry
//! updates together and waits for all of them. Entries go to each block's
//! other slot, so the previous state stays intact until the new one is.
//!
//! An append can be prepared before the lock (`prepare`): its copy and
//! checksums need nothing of the chunk's state, so they run while the
//! mutation ahead of it is on the disk; only the partial sector in front
//! and a partial first block's checksum are completed under the lock.
//! Data received into the engine's own aligned memory (`Received`) and
//! appended at a sector-aligned offset is not copied at all
//! (`prepare_received`): the writes go out from where it was received.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use gfs_proto::ChunkHandle;

use super::ahead::AheadWrite;
use super::{Chunk, ChunkState, ChunkStore, Dir, Landing, Leased, Received};
use crate::backend::IoOp;
use crate::buf::{AlignedBuf, IoSlice};
use crate::error::{IoContext, Result, StoreError};
use crate::io::{self as eio, run_all};
use crate::layout::{self, BLOCK_BYTES, Entry, SECTOR_BYTES, align_down, align_up};

fn block_start(b: usize) -> u64 {
    b as u64 * BLOCK_BYTES
}

/// Copies `parts` one after the other into `bytes` from `at`; returns
/// where they end.
fn copy_parts(bytes: &mut [u8], mut at: usize, parts: &[&[u8]]) -> usize {
    for p in parts {
        bytes[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    at
}

/// Where a mutation lands: bytes `off..end`, carried in the sector-aligned
/// region of `region_len` bytes from `region_start`, over blocks `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    off: u64,
    end: u64,
    region_start: u64,
    region_len: usize,
    first: usize,
    last: usize,
}

impl Span {
    /// The span of `n > 0` bytes at `off` over a chunk of `old_len` bytes
    /// (`off <= old_len`). An append's region starts at the sector holding
    /// `off` (the bytes in front of it come from the cached tail sector);
    /// an overwrite's at its first block, whose checksum needs the whole
    /// block. The region ends with the sector holding the new end, or, for
    /// an overwrite inside the chunk, with its last block or the chunk's
    /// last sector, whichever comes first.
    fn new(off: u64, n: u64, old_len: u64) -> Self {
        let end = off + n;
        let first = (off / BLOCK_BYTES) as usize;
        let last = ((end - 1) / BLOCK_BYTES) as usize;
        let region_start = if off == old_len {
            align_down(off)
        } else {
            block_start(first)
        };
        let region_end = align_up(old_len.max(end))
            .min(block_start(last + 1))
            .max(align_up(end));
        Self {
            off,
            end,
            region_start,
            region_len: (region_end - region_start) as usize,
            first,
            last,
        }
    }
}

/// The entry block `b` gets from the mutation being built: the chunk's
/// next sequence number, in the slot not holding the block's current entry.
fn entry(st: &ChunkState, b: usize, new_len: u64, crc: u32) -> (usize, u8, Entry) {
    let len = (new_len - block_start(b)).min(BLOCK_BYTES) as u32;
    let slot = st.slots.get(b).map_or(0, |s| 1 - s);
    let seq = st.next_seq;
    (b, slot, Entry { seq, len, crc })
}

/// An append's data, already in sector-aligned I/O memory with the
/// CRC32C of its bytes in each block it touches: see [`ChunkStore::prepare`]
/// and [`ChunkStore::prepare_received`]. Holds its memory until it is
/// written or dropped.
pub struct Prepared {
    offset: u64,
    len: u64,
    body: Body,
    /// One checksum per block touched, of the new bytes in it, first block first.
    pieces: Vec<u32>,
}

/// Where a prepared append's bytes are.
enum Body {
    /// Copied into a buffer of the store's own, at their offset in the
    /// first sector (the bytes in front are filled in the turn).
    Copied(Leased),
    /// Where they were received, one after the other from a sector-aligned
    /// offset; all but the last a whole number of sectors.
    Received(Vec<Received>),
}

/// A mutation's region, ready to be written.
pub(super) enum Staged {
    /// One buffer of the store's own holding the whole region.
    Copied { lease: Leased, buf: Arc<AlignedBuf> },
    /// The received data, whose sectors are the region.
    Received(Vec<Received>),
}

impl Staged {
    fn copied(lease: Leased, buf: AlignedBuf) -> Self {
        Self::Copied {
            lease,
            buf: Arc::new(buf),
        }
    }

    /// The data writes of the region of `region_len` bytes at `region_start`.
    fn writes(
        &self,
        file: &Arc<std::fs::File>,
        region_start: u64,
        region_len: usize,
        io_size: usize,
    ) -> Vec<IoOp> {
        let write = |offset, buf| IoOp::Write {
            file: file.clone(),
            offset,
            buf,
        };
        match self {
            Self::Copied { buf, .. } => {
                eio::split(buf, 0, region_len, region_start, io_size, write)
            }
            Self::Received(parts) => {
                let mut at = region_start;
                let mut ops = Vec::new();
                for p in parts {
                    let n = align_up(p.len() as u64);
                    ops.extend(eio::split(p.buf(), 0, n as usize, at, io_size, write));
                    at += n;
                }
                debug_assert_eq!(at - region_start, region_len as u64);
                ops
            }
        }
    }

    /// `crc` extended over `len` bytes of the region from `at`.
    fn crc_from(&self, crc: u32, at: usize, len: usize) -> u32 {
        match self {
            Self::Copied { buf, .. } => {
                gfs_proto::crc::crc32c_append(crc, &buf.as_slice()[at..at + len])
            }
            Self::Received(parts) => crc_across(crc, parts, at, at + len),
        }
    }

    /// The region's sector at `at` (bytes from its start), once written.
    fn sector(&self, at: usize) -> &[u8] {
        match self {
            Self::Copied { buf, .. } => &buf.as_slice()[at..at + SECTOR_BYTES as usize],
            Self::Received(parts) => {
                let mut start = 0;
                for p in parts {
                    let end = start + align_up(p.len() as u64) as usize;
                    if at < end {
                        return p.sector(at - start);
                    }
                    start = end;
                }
                panic!("sector {at} is outside the region")
            }
        }
    }

    /// Gives a buffer of the store's own back to its pool (when no I/O
    /// holds it any more).
    pub(super) fn release(self) {
        if let Self::Copied { mut lease, buf } = self {
            lease.buf = Arc::try_unwrap(buf).ok();
        }
    }
}

/// `crc` extended over bytes `[lo, hi)` of `parts` taken one after the
/// other (from 0: their CRC32C).
fn crc_across(mut crc: u32, parts: &[Received], lo: usize, hi: usize) -> u32 {
    let mut start = 0;
    for p in parts {
        let end = start + p.len();
        if end > lo && start < hi {
            let bytes = &p.bytes()[lo.max(start) - start..hi.min(end) - start];
            crc = gfs_proto::crc::crc32c_append(crc, bytes);
        }
        start = end;
    }
    crc
}

impl Prepared {
    fn fits(&self, offset: u64, len: u64) -> bool {
        self.offset == offset && self.len == len
    }

    /// Whether the data is written from where it was received (no copy).
    pub fn is_in_place(&self) -> bool {
        matches!(self.body, Body::Received(_))
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// What a write past a chunk's end does with the gap in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gap {
    /// Zeros, up to `max_request_bytes` with the data (a sparse write).
    Fill,
    /// Refused: the write was meant to start at the end.
    Refuse,
}

impl ChunkStore {
    /// Appends `data` at the chunk's end; returns the offset it landed at.
    pub async fn append(&self, handle: ChunkHandle, data: &[u8]) -> Result<u64> {
        let chunk = self.chunk(handle)?;
        let end = chunk.state.read().await.length;
        let limit = self.inner.config.appends_ahead;
        let mut st = self.settled(&chunk, Some((end, limit))).await;
        let offset = st.length;
        let landing = self
            .mutate(&chunk, &mut st, offset, &[data], None, true)
            .await?;
        drop(st);
        landing.landed().await?;
        Ok(offset)
    }

    /// Writes `data` at `offset`. Writing past the end fills the gap with
    /// zeros. Returns the chunk's new length.
    pub async fn write_at(&self, handle: ChunkHandle, offset: u64, data: &[u8]) -> Result<u64> {
        self.write_at_vectored(handle, offset, &[data]).await
    }

    /// As `write_at`, with the data in several pieces (as it arrived from
    /// the network), copied straight into the I/O buffer.
    pub async fn write_at_vectored(
        &self,
        handle: ChunkHandle,
        offset: u64,
        parts: &[&[u8]],
    ) -> Result<u64> {
        self.write_prepared(handle, offset, parts, None).await
    }

    /// As `write_at_vectored`, with the buffer `prepare` built from the same
    /// `offset` and `parts` ahead of the chunk's lock, if there is one.
    pub async fn write_prepared(
        &self,
        handle: ChunkHandle,
        offset: u64,
        parts: &[&[u8]],
        prepared: Option<Prepared>,
    ) -> Result<u64> {
        self.submit_prepared(handle, offset, parts, prepared)
            .await?
            .landed()
            .await
    }

    /// As `write_prepared`, but returns once the mutation is accepted: an
    /// append at the chunk's sector-aligned end may then still be on its way
    /// to the disk while the next one is accepted (`ahead`). Mutations are
    /// applied in the order they are submitted; `Landing::landed` says when
    /// this one is on the disk, with the chunk's length after it.
    pub async fn submit_prepared(
        &self,
        handle: ChunkHandle,
        offset: u64,
        parts: &[&[u8]],
        prepared: Option<Prepared>,
    ) -> Result<Landing> {
        self.submit(handle, offset, parts, prepared, Gap::Fill)
            .await
    }

    /// As `submit_prepared`, for a mutation its orderer placed at the
    /// chunk's end (a round of record appends at its primary, after the
    /// rounds before it): refused with `NotAtEnd` where the chunk ends
    /// elsewhere, as when one of those failed here, rather than written
    /// past a hole of that one's size.
    pub async fn submit_at_end(
        &self,
        handle: ChunkHandle,
        offset: u64,
        parts: &[&[u8]],
        prepared: Option<Prepared>,
    ) -> Result<Landing> {
        self.submit(handle, offset, parts, prepared, Gap::Refuse)
            .await
    }

    async fn submit(
        &self,
        handle: ChunkHandle,
        offset: u64,
        parts: &[&[u8]],
        prepared: Option<Prepared>,
        gap: Gap,
    ) -> Result<Landing> {
        let chunk = self.chunk(handle)?;
        let cfg = &self.inner.config;
        let mut st = self
            .settled(&chunk, Some((offset, cfg.appends_ahead)))
            .await;
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if offset
            .checked_add(len)
            .is_none_or(|end| end > cfg.chunk_size_bytes)
        {
            let free = cfg.chunk_size_bytes.saturating_sub(offset);
            return Err(StoreError::ChunkFull {
                handle,
                free,
                requested: len,
            });
        }
        if gap == Gap::Refuse && offset != st.length {
            return Err(StoreError::NotAtEnd {
                handle,
                offset,
                length: st.length,
            });
        }
        if offset > st.length {
            let gap = offset - st.length;
            if gap + len > cfg.max_request_bytes {
                return Err(StoreError::TooLarge {
                    len: gap + len,
                    max: cfg.max_request_bytes,
                });
            }
            let zeros = vec![0u8; gap as usize];
            let mut filled: Vec<&[u8]> = vec![&zeros];
            filled.extend_from_slice(parts);
            let at = st.length;
            self.mutate(&chunk, &mut st, at, &filled, None, false).await
        } else {
            self.mutate(&chunk, &mut st, offset, parts, prepared, true)
                .await
        }
    }

    /// Pads the chunk with zeros up to the chunk size (record append moves on
    /// to the next chunk). Returns the padded length.
    pub async fn pad_to_end(&self, handle: ChunkHandle) -> Result<u64> {
        let chunk = self.chunk(handle)?;
        let mut st = self.settled(&chunk, None).await;
        let limit = self.inner.config.chunk_size_bytes;
        let piece = self.inner.config.max_request_bytes;
        let zeros = vec![0u8; piece.min(limit - st.length) as usize];
        while st.length < limit {
            let n = (limit - st.length).min(piece) as usize;
            let at = st.length;
            // Not ahead: each is on the disk before the next.
            let landing = self
                .mutate(&chunk, &mut st, at, &[&zeros[..n]], None, false)
                .await?;
            landing.landed().await?;
        }
        Ok(st.length)
    }

    /// Applies one mutation under the chunk's lock. With `may_go_ahead`,
    /// an append at the chunk's sector-aligned end is only accepted here
    /// and lands in a task of its own (`ahead`); every other mutation is on
    /// the disk when this returns.
    pub(super) async fn mutate(
        &self,
        chunk: &Arc<Chunk>,
        st: &mut ChunkState,
        off: u64,
        parts: &[&[u8]],
        prepared: Option<Prepared>,
        may_go_ahead: bool,
    ) -> Result<Landing> {
        let handle = chunk.handle;
        let dir = self.dir(chunk);
        dir.check_writable()?;
        if st.deleted {
            return Err(StoreError::NotFound(handle));
        }
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let cfg = &self.inner.config;
        if n > cfg.max_request_bytes {
            return Err(StoreError::TooLarge {
                len: n,
                max: cfg.max_request_bytes,
            });
        }
        if off > st.length {
            return Err(StoreError::OutOfRange {
                handle,
                offset: off,
                len: n,
                length: st.length,
            });
        }
        let end = off + n;
        if end > cfg.chunk_size_bytes {
            let free = cfg.chunk_size_bytes - st.length;
            return Err(StoreError::ChunkFull {
                handle,
                free,
                requested: n,
            });
        }
        if n == 0 {
            return Ok(Landing::landed_at(st.length));
        }
        let ahead = may_go_ahead && st.may_go_ahead(off, cfg.appends_ahead);
        debug_assert!(ahead || st.ahead.is_none(), "settled before a mutation");
        let old_len = st.length;
        let appending = off == old_len;
        let span = Span::new(off, n, old_len);
        let (region_start, region_len) = (span.region_start, span.region_len);

        let started = std::time::Instant::now();
        // A preparation that no longer fits (the write is not an append
        // after all) gives its memory back here, before the lease below.
        let (staged, entries) = match prepared.filter(|p| appending && p.fits(off, n)) {
            Some(p) => self.fill_prepared(dir, st, p).await?,
            None => self.fill(dir, st, handle, parts, span).await?,
        };

        self.allocate_for(st, region_start + region_len as u64)
            .await;
        let io_size = cfg.io_size_bytes as usize;
        let data = staged.writes(&st.data, region_start, region_len, io_size);
        let mut meta = Vec::new();
        let entry_buf = self.entry_writes(st, &entries, &mut meta);
        let filled = started.elapsed();
        if ahead {
            let before = st.before_append();
            self.advance(chunk, st, entries, &staged, span);
            let after = st.after_append();
            let w = AheadWrite {
                data,
                entries: meta,
                entry_buf,
                staged,
                before,
                after,
                filled,
            };
            return Ok(self.go_ahead(chunk, st, w));
        }

        let mut ops = data;
        ops.extend(meta);
        // ENOSPC is harmless when every byte written lies past the old end.
        let overwrote = !appending || region_start < align_down(old_len);
        let result = self.run_mutation(dir, ops, overwrote).await;
        tracing::trace!(
            bytes = n,
            fill_ms = filled.as_secs_f64() * 1e3,
            io_ms = (started.elapsed() - filled).as_secs_f64() * 1e3,
            "mutation"
        );
        self.recycle(entry_buf);
        if let Err(e) = result {
            staged.release();
            return Err(e);
        }
        self.advance(chunk, st, entries, &staged, span);
        staged.release();
        Ok(Landing::landed_at(st.length))
    }

    /// Allocates the data file ahead of a write that ends at `end`
    /// (`files::grow_to`). Where the filesystem cannot (a full disk, no
    /// fallocate), the write extends the file itself, as it would have.
    async fn allocate_for(&self, st: &mut ChunkState, end: u64) {
        let Some(to) = super::files::grow_to(st.allocated, end, self.inner.config.chunk_size_bytes)
        else {
            return;
        };
        let (file, from) = (st.data.clone(), st.allocated);
        // ext4 waits here for the file's writes in flight: off the runtime.
        match super::blocking(move || super::files::allocate(&file, from, to)).await {
            Ok(()) => st.allocated = to,
            Err(e) => {
                tracing::debug!(error = %e, from, to, "could not allocate a chunk file ahead");
                st.allocated = end;
            }
        }
    }

    /// Brings the chunk's state to what it is once a mutation over `span`
    /// with these `entries` and region is on the disk.
    fn advance(
        &self,
        chunk: &Chunk,
        st: &mut ChunkState,
        entries: Vec<(usize, u8, Entry)>,
        staged: &Staged,
        span: Span,
    ) {
        let region_end = span.region_start + span.region_len as u64;
        for (b, slot, e) in entries {
            if b < st.crcs.len() {
                st.crcs[b] = e.crc;
                st.slots[b] = slot;
            } else {
                st.crcs.push(e.crc);
                st.slots.push(slot);
            }
        }
        st.next_seq += 1;
        let old_len = st.length;
        let new_len = old_len.max(span.end);
        st.length = new_len;
        // Keep the cached tail sector in step with the disk: refresh it when
        // this write covered the last sector, drop it when the end is aligned.
        let tail_at = align_down(new_len);
        if new_len.is_multiple_of(SECTOR_BYTES) {
            st.tail = None;
        } else if tail_at >= span.region_start && tail_at + SECTOR_BYTES <= region_end {
            let i = (tail_at - span.region_start) as usize;
            st.tail = Some((tail_at, staged.sector(i).into()));
        }
        self.dir(chunk)
            .used_bytes
            .fetch_add(new_len - old_len, Ordering::Relaxed);
        chunk
            .last_mutation_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// The ordinary way to build a mutation's buffer, under the chunk's
    /// lock: carry the existing bytes the region must keep, copy the new
    /// ones in, and checksum every block touched.
    async fn fill(
        &self,
        dir: &Dir,
        st: &ChunkState,
        handle: ChunkHandle,
        parts: &[&[u8]],
        span: Span,
    ) -> Result<(Staged, Vec<(usize, u8, Entry)>)> {
        let Span {
            off,
            end,
            region_start,
            region_len,
            first,
            last,
        } = span;
        let old_len = st.length;
        let new_len = old_len.max(end);
        let appending = off == old_len;
        let mut lease = self.lease(region_len).await?;
        let mut buf = lease.buf.take().expect("fresh lease holds a buffer");

        // Existing bytes the region must carry unchanged.
        if appending {
            if !off.is_multiple_of(SECTOR_BYTES) {
                match &st.tail {
                    Some((at, sector)) if *at == region_start => {
                        buf.as_mut_slice()[..SECTOR_BYTES as usize].copy_from_slice(sector)
                    }
                    _ => {
                        let sector = SECTOR_BYTES as usize;
                        buf = self
                            .read_into(dir, st, buf, region_start, 0, sector)
                            .await?
                    }
                }
            }
        } else {
            let mut edges = Vec::new();
            if off > block_start(first) {
                edges.push(first);
            }
            if end < block_start(last + 1).min(old_len) && (edges.is_empty() || last != first) {
                edges.push(last);
            }
            for b in edges {
                let at = (block_start(b) - region_start) as usize;
                let have = (block_start(b + 1).min(old_len) - block_start(b)) as usize;
                let aligned = align_up(have as u64) as usize;
                buf = self
                    .read_into(dir, st, buf, block_start(b), at, aligned)
                    .await?;
                // Never bless damaged bytes with a fresh checksum.
                if gfs_proto::crc::crc32c(&buf.as_slice()[at..at + have]) != st.crcs[b] {
                    self.inner.checksum_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(StoreError::Corrupt {
                        handle,
                        block: b as u64,
                    });
                }
            }
        }
        {
            let bytes = buf.as_mut_slice();
            copy_parts(bytes, (off - region_start) as usize, parts);
            // Past the new end the last sector is zeros (never stale pool bytes).
            let data_end = ((new_len - region_start) as usize).min(region_len);
            bytes[data_end..region_len].fill(0);
        }

        // New checksums, computed from the bytes about to be written.
        let entries = (first..=last)
            .map(|b| {
                let crc = if appending && b == first && off > block_start(b) {
                    let new_part = (block_start(b + 1).min(end) - off) as usize;
                    let at = (off - region_start) as usize;
                    gfs_proto::crc::crc32c_append(st.crcs[b], &buf.as_slice()[at..at + new_part])
                } else {
                    let blen = (new_len - block_start(b)).min(BLOCK_BYTES);
                    let at = (block_start(b) - region_start) as usize;
                    gfs_proto::crc::crc32c(&buf.as_slice()[at..at + blen as usize])
                };
                entry(st, b, new_len, crc)
            })
            .collect();
        Ok((Staged::copied(lease, buf), entries))
    }

    /// Copies an append's data into a sector-aligned buffer and checksums
    /// it, without the chunk's lock: the costly part of an append, done
    /// while the mutation ahead of it is still on the disk. `None` when the
    /// write cannot be an append within the limits, or the memory for it is
    /// not free right now within the share preparations may hold (the write
    /// then fills its buffer in its turn). A preparation never waits for
    /// memory, and never takes what a write in its turn needs.
    pub fn prepare(&self, offset: u64, parts: &[&[u8]]) -> Option<Prepared> {
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let cfg = &self.inner.config;
        let end = offset.checked_add(n)?;
        if n == 0 || n > cfg.max_request_bytes || end > cfg.chunk_size_bytes {
            return None;
        }
        // The span it has if it is an append when its turn comes.
        let Span {
            region_start,
            region_len,
            first,
            last,
            ..
        } = Span::new(offset, n, offset);
        let mut lease = self.lease_to_prepare(region_len)?;
        let buf = lease.buf.as_mut().expect("fresh lease holds a buffer");
        let bytes = buf.as_mut_slice();
        let at = copy_parts(bytes, (offset - region_start) as usize, parts);
        bytes[at..region_len].fill(0);
        let pieces = (first..=last)
            .map(|b| {
                let lo = block_start(b).max(offset) - region_start;
                let hi = block_start(b + 1).min(end) - region_start;
                gfs_proto::crc::crc32c(&bytes[lo as usize..hi as usize])
            })
            .collect();
        Some(Prepared {
            offset,
            len: n,
            body: Body::Copied(lease),
            pieces,
        })
    }

    /// As [`prepare`](Self::prepare) for data received into the store's
    /// memory ([`receiving`](Self::receiving)), without copying it: only
    /// the checksums are computed. `None` unless `offset` is on a sector,
    /// every part but the last is a whole number of sectors, and the write
    /// fits the limits (the write then copies the data in its turn).
    pub fn prepare_received(&self, offset: u64, parts: &[Received]) -> Option<Prepared> {
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let cfg = &self.inner.config;
        let end = offset.checked_add(n)?;
        let whole_sectors = |p: &Received| (p.len() as u64).is_multiple_of(SECTOR_BYTES);
        if n == 0
            || n > cfg.max_request_bytes
            || end > cfg.chunk_size_bytes
            || !offset.is_multiple_of(SECTOR_BYTES)
            || !parts[..parts.len() - 1].iter().all(whole_sectors)
        {
            return None;
        }
        let (first, last) = (
            (offset / BLOCK_BYTES) as usize,
            ((end - 1) / BLOCK_BYTES) as usize,
        );
        let pieces = (first..=last)
            .map(|b| {
                let lo = block_start(b).max(offset) - offset;
                let hi = block_start(b + 1).min(end) - offset;
                crc_across(0, parts, lo as usize, hi as usize)
            })
            .collect();
        Some(Prepared {
            offset,
            len: n,
            body: Body::Received(parts.to_vec()),
            pieces,
        })
    }

    /// Completes a prepared append under the chunk's lock: the bytes of the
    /// partial sector in front of it, and the checksum of a partial first
    /// block combined with the one of the bytes already there.
    async fn fill_prepared(
        &self,
        dir: &Dir,
        st: &ChunkState,
        p: Prepared,
    ) -> Result<(Staged, Vec<(usize, u8, Entry)>)> {
        let Prepared {
            offset: off,
            len,
            body,
            pieces,
        } = p;
        let end = off + len;
        let staged = match body {
            // Received data starts on a sector: nothing in front of it.
            Body::Received(parts) => Staged::Received(parts),
            Body::Copied(mut lease) => {
                let mut buf = lease.buf.take().expect("a preparation holds its buffer");
                let region_start = align_down(off);
                let head = (off - region_start) as usize;
                if head > 0 {
                    match &st.tail {
                        Some((at, sector)) if *at == region_start => {
                            buf.as_mut_slice()[..head].copy_from_slice(&sector[..head])
                        }
                        _ => {
                            let n = SECTOR_BYTES as usize;
                            let sector = self.inner.pool.get(n);
                            let sector =
                                self.read_into(dir, st, sector, region_start, 0, n).await?;
                            buf.as_mut_slice()[..head].copy_from_slice(&sector.as_slice()[..head]);
                            self.inner.pool.put(sector);
                        }
                    }
                }
                Staged::copied(lease, buf)
            }
        };
        let first = (off / BLOCK_BYTES) as usize;
        // A partial first block's checksum is the block's own, extended over
        // the new bytes in it: a few microseconds for at most 64 KiB, where
        // combining it with the new bytes' checksum (`crc32c_combine`) took
        // 18 us, 1.2 % of the CPU time of record appends.
        let extended = (off > block_start(first)).then(|| {
            let new_part = (block_start(first + 1).min(end) - off) as usize;
            staged.crc_from(st.crcs[first], (off - align_down(off)) as usize, new_part)
        });
        let entries = pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| {
                let crc = extended.filter(|_| i == 0).unwrap_or(piece);
                entry(st, first + i, end, crc)
            })
            .collect();
        Ok((staged, entries))
    }

    /// Adds the metadata writes for `entries` to `ops`: one write per run of
    /// consecutive blocks going to the same slot (an append needs at most
    /// two). Returns the buffer the writes point into.
    fn entry_writes(
        &self,
        st: &ChunkState,
        entries: &[(usize, u8, Entry)],
        ops: &mut Vec<IoOp>,
    ) -> Arc<AlignedBuf> {
        let blocks = layout::blocks_per_chunk(self.inner.config.chunk_size_bytes);
        let mut buf = self.inner.pool.get(entries.len() * layout::ENTRY_BYTES);
        for (i, (_, _, e)) in entries.iter().enumerate() {
            let at = i * layout::ENTRY_BYTES;
            buf.as_mut_slice()[at..at + layout::ENTRY_BYTES].copy_from_slice(&e.encode());
        }
        let buf = Arc::new(buf);
        let mut i = 0;
        while i < entries.len() {
            let (b0, slot, _) = entries[i];
            let mut j = i + 1;
            while j < entries.len() && entries[j].1 == slot && entries[j].0 == b0 + (j - i) {
                j += 1;
            }
            let window = IoSlice::new(
                buf.clone(),
                i * layout::ENTRY_BYTES,
                (j - i) * layout::ENTRY_BYTES,
            );
            let offset = layout::entry_offset(blocks, b0, slot);
            ops.push(IoOp::Write {
                file: st.meta.clone(),
                offset,
                buf: window,
            });
            i = j;
        }
        buf
    }

    /// Reads `len` bytes at `file_offset` of the chunk's data into `buf` at
    /// `at`, with several I/Os in flight. Hands the buffer back.
    async fn read_into(
        &self,
        dir: &Dir,
        st: &ChunkState,
        buf: AlignedBuf,
        file_offset: u64,
        at: usize,
        len: usize,
    ) -> Result<AlignedBuf> {
        let buf = Arc::new(buf);
        let io_size = self.inner.config.io_size_bytes as usize;
        let ops = eio::split(&buf, at, len, file_offset, io_size, |offset, w| {
            IoOp::Read {
                file: st.data.clone(),
                offset,
                buf: w,
            }
        });
        let result = run_all(dir.backend.as_ref(), ops).await;
        let buf = Arc::try_unwrap(buf).expect("every read completed, so no window is alive");
        result.context(|| format!("read chunk data in {}", dir.root.display()))?;
        Ok(buf)
    }

    /// Reads `len` bytes at `offset`. Every block the range touches is
    /// verified against its checksum before any byte is returned.
    pub async fn read(&self, handle: ChunkHandle, offset: u64, len: u64) -> Result<Bytes> {
        let chunk = self.chunk(handle)?;
        let max = self.inner.config.max_request_bytes;
        if len > max {
            return Err(StoreError::TooLarge { len, max });
        }
        // Appends still on their way to the disk are waited for.
        let st = self.landed_to(&chunk, offset.saturating_add(len)).await;
        if st.deleted {
            return Err(StoreError::NotFound(handle));
        }
        let length = st.visible_len();
        let Some(end) = offset.checked_add(len).filter(|&e| e <= length) else {
            return Err(StoreError::OutOfRange {
                handle,
                offset,
                len,
                length,
            });
        };
        if len == 0 {
            return Ok(Bytes::new());
        }
        let dir = self.dir(&chunk);
        let first = (offset / BLOCK_BYTES) as usize;
        let last = ((end - 1) / BLOCK_BYTES) as usize;
        let region_start = block_start(first);
        let region_len = align_up(block_start(last + 1).min(length) - region_start) as usize;
        let started = std::time::Instant::now();
        let mut lease = self.lease(region_len).await?;
        let leased = started.elapsed();
        let buf = lease.buf.take().expect("fresh lease holds a buffer");
        let registered = buf.is_registered();
        let buf = self
            .read_into(dir, &st, buf, region_start, 0, region_len)
            .await?;
        let read = started.elapsed();
        let bad = (first..=last).find(|&b| {
            let at = (block_start(b) - region_start) as usize;
            let blen = (block_start(b + 1).min(length) - block_start(b)) as usize;
            gfs_proto::crc::crc32c(&buf.as_slice()[at..at + blen]) != st.landed_crc(b)
        });
        tracing::trace!(
            bytes = region_len,
            registered,
            lease_ms = leased.as_secs_f64() * 1e3,
            io_ms = (read - leased).as_secs_f64() * 1e3,
            verify_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
            "store read"
        );
        lease.buf = Some(buf);
        if let Some(b) = bad {
            self.inner.checksum_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(chunk = %handle, block = b, "checksum mismatch on read");
            return Err(StoreError::Corrupt {
                handle,
                block: b as u64,
            });
        }
        let start = (offset - region_start) as usize;
        Ok(Bytes::from_owner(lease).slice(start..start + len as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    fn span(off: u64, end: u64, region: (u64, u64), blocks: (usize, usize)) -> Span {
        Span {
            off,
            end,
            region_start: region.0,
            region_len: (region.1 - region.0) as usize,
            first: blocks.0,
            last: blocks.1,
        }
    }

    #[test]
    fn a_span_covers_the_sectors_and_blocks_a_mutation_touches() {
        let cases = [
            // An aligned append into an empty chunk: its own sectors.
            ((0, 100, 0), span(0, 100, (0, 4 * K), (0, 0))),
            // An unaligned append: from the sector holding its start.
            ((100, 50, 100), span(100, 150, (0, 4 * K), (0, 0))),
            (
                (5000, 70 * K, 5000),
                span(5000, 5000 + 70 * K, (4 * K, 76 * K), (0, 1)),
            ),
            // An append at a block boundary.
            (
                (64 * K, K, 64 * K),
                span(64 * K, 65 * K, (64 * K, 68 * K), (1, 1)),
            ),
            // An overwrite inside the first block of a long chunk: the whole
            // block, which its checksum covers.
            ((10, 20, 200 * K), span(10, 30, (0, 64 * K), (0, 0))),
            // An overwrite inside a short chunk: up to the chunk's last sector.
            ((10, 20, 5000), span(10, 30, (0, 8 * K), (0, 0))),
            // An overwrite that extends the chunk: up to the new end's sector.
            (
                (60 * K, 10 * K, 62 * K),
                span(60 * K, 70 * K, (0, 72 * K), (0, 1)),
            ),
            // An overwrite across a block boundary, inside the chunk.
            (
                (63 * K, 2 * K, 256 * K),
                span(63 * K, 65 * K, (0, 128 * K), (0, 1)),
            ),
        ];
        for ((off, n, old_len), want) in cases {
            assert_eq!(
                Span::new(off, n, old_len),
                want,
                "{off} + {n} over {old_len}"
            );
        }
    }
}
