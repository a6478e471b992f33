//! Appends ahead: a chunk's next append goes to the disk while the one
//! before it is still there.
//!
//! A mutation used to hold its chunk's lock until its writes completed, so
//! each replica of a chunk had one write on the disk at a time, and record
//! appends to one file were bound by one write's latency per replica
//! (BENCHMARKS.md, "What append at N = 4 waits for"). An append that
//! starts on a sector boundary at the chunk's end now only *accepts* the
//! mutation under the lock: it builds the region and its checksums,
//! advances the chunk's state as if the write were done, and submits the
//! data writes; a landing task waits for them and the lock is free for the
//! next append at once (up to `appends_ahead` of them in flight).
//!
//! What keeps this safe:
//! - **Disjoint sectors.** Only appends at a sector-aligned end go ahead,
//!   so no two writes in flight share a sector (an unaligned append
//!   rewrites the partial sector in front of it: it waits for the appends
//!   in flight to land first, as does every other kind of mutation).
//! - **Entries in order.** An append accepted while another is in flight
//!   writes its checksum entries only once its data is on the disk *and*
//!   the append before it has landed (one accepted with none in flight
//!   writes them with its data, as every mutation did before).
//!   Two appends sharing a block put its entry in opposite slots; the later
//!   one would overwrite the slot holding the last landed entry, so it
//!   waits until the earlier one's entry is written. A crash therefore
//!   finds, for every block, a landed entry or an entry whose data is
//!   complete: recovery ends the chunk at the first append that did not
//!   land, as it always did.
//! - **Answers in order.** An append lands (and its caller hears so) only
//!   after every append accepted before it landed. If one fails, every
//!   append accepted after it fails too (`Withdrawn`), the chunk's state
//!   goes back to what it was before the failed one, and nothing new is
//!   accepted until those in flight are done.
//! - **Readers see what landed.** While appends are in flight a read is
//!   served from the landed length and the landed checksum of the block
//!   at its end; a read past it waits for the appends to land.
//! - Every other operation on the chunk (overwrites, pads, syncs, version
//!   changes, deletes) waits until no append is in flight (`settled`), and
//!   a waiter stops new appends from going ahead, so it is never starved.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Chunk, ChunkState, ChunkStore, Staged};
use crate::backend::IoOp;
use crate::buf::AlignedBuf;
use crate::error::{Result, StoreError};
use crate::layout::{BLOCK_BYTES, SECTOR_BYTES, blocks_for_length};

/// The appends of one chunk in flight, and what readers may see meanwhile.
#[derive(Debug)]
pub(super) struct Ahead {
    /// The outcome of the newest append accepted: `Some(true)` once it
    /// landed, `Some(false)` if it failed. The next append waits on it.
    last: watch::Receiver<Option<bool>>,
    /// Appends in flight.
    count: usize,
    /// The chunk's length after the last append that landed.
    landed_len: u64,
    /// The checksum, as landed, of the partial block at `landed_len`.
    landed_edge: Option<(usize, u32)>,
    /// Something waits for the appends to land (a failure, or an operation
    /// that needs the chunk settled): no new append goes ahead.
    draining: bool,
    /// An append failed and the state went back to before it: the ones
    /// after it are failing too.
    broken: bool,
}

/// What readers see of a chunk: its length, and the checksum of the
/// partial block at its end, if there is one.
pub(super) type Seen = (u64, Option<(usize, u32)>);

/// What an append needs to undo itself: the chunk as it was before it.
#[derive(Debug)]
pub(super) struct Before {
    len: u64,
    /// The partial last block's checksum and slot.
    edge: Option<(usize, u32, u8)>,
}

/// An accepted mutation on its way to the disk. `landed` waits for it (and
/// for every append accepted before it) and gives the chunk's length as it
/// was accepted. Dropping it does not stop the mutation.
#[derive(Debug)]
#[must_use = "a mutation is only known to have landed once `landed` returns"]
pub struct Landing(Flight);

#[derive(Debug)]
enum Flight {
    Landed(u64),
    Flying(JoinHandle<Result<u64>>),
}

impl Landing {
    /// A mutation that is already on the disk, with the chunk's length after it.
    pub fn landed_at(length: u64) -> Self {
        Self(Flight::Landed(length))
    }

    pub async fn landed(self) -> Result<u64> {
        match self.0 {
            Flight::Landed(n) => Ok(n),
            Flight::Flying(task) => task.await.unwrap_or_else(|e| {
                Err(StoreError::io(
                    "the append's landing task failed",
                    std::io::Error::other(e.to_string()),
                ))
            }),
        }
    }
}

/// The partial last block of a chunk of `len` bytes, if it has one.
fn edge_block(len: u64) -> Option<usize> {
    (!len.is_multiple_of(BLOCK_BYTES)).then_some((len / BLOCK_BYTES) as usize)
}

impl ChunkState {
    /// How many bytes a read may see: what landed.
    pub(super) fn visible_len(&self) -> u64 {
        self.ahead.as_ref().map_or(self.length, |a| a.landed_len)
    }

    /// Block `b`'s checksum as landed.
    pub(super) fn landed_crc(&self, b: usize) -> u32 {
        match &self.ahead {
            Some(Ahead {
                landed_edge: Some((e, crc)),
                ..
            }) if *e == b => *crc,
            _ => self.crcs[b],
        }
    }

    /// Whether an append at `off` may go ahead of the appends in flight
    /// (or, with none in flight, leave the lock before it lands): it is at
    /// the chunk's sector-aligned end, nothing waits for the chunk to
    /// settle, and fewer than `limit` appends are in flight.
    pub(super) fn may_go_ahead(&self, off: u64, limit: u32) -> bool {
        let in_flight = self.ahead.as_ref().map_or(0, |a| a.count);
        limit > 1 && self.joins_ahead(off) && in_flight < limit as usize
    }

    /// `may_go_ahead` but for the number in flight.
    fn joins_ahead(&self, off: u64) -> bool {
        off == self.length
            && off.is_multiple_of(SECTOR_BYTES)
            && !self.ahead.as_ref().is_some_and(|a| a.draining)
    }

    /// Records an append accepted ahead: the state already says it is
    /// done (the caller updated it); readers keep seeing what landed.
    /// Returns what the append waits for before writing its entries, and
    /// the channel it reports its own outcome on.
    fn accept_ahead(
        &mut self,
        before: &Before,
    ) -> (
        Option<watch::Receiver<Option<bool>>>,
        watch::Sender<Option<bool>>,
    ) {
        let (tx, rx) = watch::channel(None);
        let prev = match &mut self.ahead {
            Some(a) => {
                a.count += 1;
                Some(std::mem::replace(&mut a.last, rx))
            }
            None => {
                self.ahead = Some(Ahead {
                    last: rx,
                    count: 1,
                    landed_len: before.len,
                    landed_edge: before.edge.map(|(b, crc, _)| (b, crc)),
                    draining: false,
                    broken: false,
                });
                None
            }
        };
        (prev, tx)
    }

    /// Records the outcome of an append that was accepted ahead, in the
    /// order they were accepted. The first failure takes the state back to
    /// what it was before it; the appends after it then fail as well.
    /// Returns the bytes the chunk lost by going back.
    fn land(&mut self, ok: bool, before: Before, after: Seen) -> u64 {
        let a = self.ahead.as_mut().expect("an append in flight");
        a.count -= 1;
        let mut lost = 0;
        if ok {
            (a.landed_len, a.landed_edge) = after;
        } else if !a.broken {
            a.broken = true;
            a.draining = true;
            a.landed_len = before.len;
            a.landed_edge = None;
            lost = self.length - before.len;
            self.length = before.len;
            let blocks = blocks_for_length(before.len);
            self.crcs.truncate(blocks);
            self.slots.truncate(blocks);
            if let Some((b, crc, slot)) = before.edge {
                self.crcs[b] = crc;
                self.slots[b] = slot;
            }
            self.tail = None;
        }
        if self.ahead.as_ref().is_some_and(|a| a.count == 0) {
            self.ahead = None;
        }
        lost
    }

    /// The state an append at the (sector-aligned) end must be able to go
    /// back to.
    pub(super) fn before_append(&self) -> Before {
        Before {
            len: self.length,
            edge: edge_block(self.length).map(|b| (b, self.crcs[b], self.slots[b])),
        }
    }

    /// What readers may see once an append that left the chunk at its
    /// current length has landed.
    pub(super) fn after_append(&self) -> Seen {
        (
            self.length,
            edge_block(self.length).map(|b| (b, self.crcs[b])),
        )
    }
}

/// The I/O of an append accepted ahead.
pub(super) struct AheadWrite {
    pub(super) data: Vec<IoOp>,
    pub(super) entries: Vec<IoOp>,
    pub(super) entry_buf: Arc<AlignedBuf>,
    pub(super) staged: Staged,
    pub(super) before: Before,
    pub(super) after: Seen,
    /// How long building the region took.
    pub(super) filled: std::time::Duration,
}

impl ChunkStore {
    /// The chunk's state with no append in flight, or, for an append at
    /// `ahead` (its offset, and `appends_ahead`), with appends in flight it
    /// may join. A caller that must wait for every append to land stops
    /// new ones from going ahead meanwhile; an append that only waits for
    /// room waits for one to land.
    pub(super) async fn settled<'a>(
        &self,
        chunk: &'a Chunk,
        ahead: Option<(u64, u32)>,
    ) -> tokio::sync::RwLockWriteGuard<'a, ChunkState> {
        loop {
            let landed = chunk.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            let mut st = chunk.state.write().await;
            let joins = match ahead {
                Some((off, limit)) if st.may_go_ahead(off, limit) => return st,
                Some((off, _)) => st.joins_ahead(off),
                None => false,
            };
            let Some(a) = st.ahead.as_mut() else {
                return st;
            };
            if !joins {
                a.draining = true;
            }
            drop(st);
            landed.await;
        }
    }

    /// The chunk's state once the appends in flight have landed as far as
    /// `end` (or failed): for a read.
    pub(super) async fn landed_to<'a>(
        &self,
        chunk: &'a Chunk,
        end: u64,
    ) -> tokio::sync::RwLockReadGuard<'a, ChunkState> {
        loop {
            let landed = chunk.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            let st = chunk.state.read().await;
            if st.ahead.is_none() || end <= st.visible_len() || end > st.length {
                return st;
            }
            drop(st);
            landed.await;
        }
    }

    /// Accepts an append whose state change the caller has just made:
    /// submits its data writes and returns the landing, which writes its
    /// entries once the data and the appends before it are on the disk.
    pub(super) fn go_ahead(
        &self,
        chunk: &Arc<Chunk>,
        st: &mut ChunkState,
        w: AheadWrite,
    ) -> Landing {
        let (prev, tx) = st.accept_ahead(&w.before);
        let accepted_len = st.length;
        let (store, chunk) = (self.clone(), chunk.clone());
        let AheadWrite {
            mut data,
            mut entries,
            entry_buf,
            staged,
            before,
            after,
            filled,
        } = w;
        // With no append in flight before it, the slots its entries go to
        // hold nothing landed that they could replace: they go with the
        // data, as a mutation's always did.
        if prev.is_none() {
            data.append(&mut entries);
        }
        // Submitted now, in the order the appends are accepted.
        let started = std::time::Instant::now();
        let data = crate::io::submit_all(self.dir(&chunk).backend.as_ref(), data);
        let task = tokio::spawn(async move {
            let dir = store.dir(&chunk);
            let bytes = after.0 - before.len;
            let mut result = store.finish_mutation(dir, data, false).await;
            tracing::trace!(
                bytes,
                fill_ms = filled.as_secs_f64() * 1e3,
                io_ms = started.elapsed().as_secs_f64() * 1e3,
                ahead = true,
                "mutation"
            );
            let prev_ok = match prev {
                None => true,
                Some(mut rx) => matches!(
                    rx.wait_for(Option::is_some).await.as_deref(),
                    Ok(Some(true))
                ),
            };
            if result.is_ok() && !prev_ok {
                result = Err(StoreError::Withdrawn(chunk.handle));
            }
            if result.is_ok() && !entries.is_empty() {
                result = store.run_mutation(dir, entries, true).await;
            }
            store.recycle(entry_buf);
            staged.release();
            let mut st = chunk.state.write().await;
            let lost = st.land(result.is_ok(), before, after);
            dir.used_bytes.fetch_sub(lost, Ordering::Relaxed);
            drop(st);
            let _ = tx.send(Some(result.is_ok()));
            chunk.landed.notify_waiters();
            result.map(|()| accepted_len)
        });
        Landing(Flight::Flying(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(length: u64, crcs: Vec<u32>, slots: Vec<u8>) -> ChunkState {
        let file = Arc::new(tempfile::tempfile().expect("temp file"));
        ChunkState {
            version: 1,
            length,
            crcs,
            slots,
            next_seq: 1,
            synced_seq: 0,
            header_seq: 1,
            header_slot: 0,
            data: file.clone(),
            meta: file,
            allocated: 0,
            tail: None,
            deleted: false,
            ahead: None,
        }
    }

    /// Accepts an append of `n` bytes: the state as `mutate` leaves it.
    fn accept(
        st: &mut ChunkState,
        n: u64,
        crc: u32,
    ) -> (Before, Seen, watch::Sender<Option<bool>>) {
        let before = st.before_append();
        st.length += n;
        let blocks = blocks_for_length(st.length);
        let first = (before.len / BLOCK_BYTES) as usize;
        for b in first..blocks {
            let slot = st.slots.get(b).map_or(0, |s| 1 - s);
            if b < st.crcs.len() {
                st.crcs[b] = crc;
                st.slots[b] = slot;
            } else {
                st.crcs.push(crc);
                st.slots.push(slot);
            }
        }
        let after = st.after_append();
        let (_, tx) = st.accept_ahead(&before);
        (before, after, tx)
    }

    const B: u64 = BLOCK_BYTES;
    const S: u64 = SECTOR_BYTES;

    #[test]
    fn readers_see_what_landed_in_order() {
        // Half a block landed (checksum 7); two appends go ahead.
        let mut st = state(B / 2, vec![7], vec![0]);
        let (b1, a1, _t1) = accept(&mut st, B, 8);
        let (b2, a2, _t2) = accept(&mut st, 2 * S, 9);
        assert_eq!(st.length, B / 2 + B + 2 * S);
        assert_eq!(st.visible_len(), B / 2);
        assert_eq!((st.landed_crc(0), st.crcs[0]), (7, 8));
        // The first lands: its end, and its partial block's checksum as it left it.
        assert_eq!(st.land(true, b1, a1), 0);
        assert_eq!(st.visible_len(), B / 2 + B);
        assert_eq!(st.landed_crc(0), 8);
        assert_eq!(st.landed_crc(1), 8, "block 1 as the first append left it");
        assert_eq!(st.crcs[1], 9, "the state already holds the second append");
        assert_eq!(st.land(true, b2, a2), 0);
        assert!(st.ahead.is_none());
        assert_eq!(st.visible_len(), B / 2 + B + 2 * S);
        assert_eq!(st.slots, vec![1, 1], "block 1 alternated once per append");
    }

    #[test]
    fn a_failure_takes_the_state_back_and_stops_new_appends() {
        let mut st = state(B / 2, vec![7], vec![1]);
        let (b1, a1, _t1) = accept(&mut st, 4 * S, 8);
        let (b2, a2, _t2) = accept(&mut st, B, 9);
        let (b3, a3, _t3) = accept(&mut st, S, 10);
        assert!(st.may_go_ahead(st.length, 8));
        assert_eq!(st.land(true, b1, a1), 0);
        // The second fails: back to the end of the first, whatever came after.
        assert_eq!(st.land(false, b2, a2), B + S);
        assert_eq!(st.length, B / 2 + 4 * S);
        assert_eq!((st.crcs.clone(), st.slots.clone()), (vec![8], vec![0]));
        assert_eq!(st.visible_len(), B / 2 + 4 * S);
        assert!(!st.may_go_ahead(st.length, 8), "draining after a failure");
        // The third fails too (its predecessor did) and changes nothing.
        assert_eq!(st.land(false, b3, a3), 0);
        assert!(st.ahead.is_none());
        assert_eq!(st.length, B / 2 + 4 * S);
        assert!(st.may_go_ahead(st.length, 8));
    }

    #[test]
    fn only_appends_at_an_aligned_end_go_ahead_and_at_most_the_limit() {
        let mut st = state(S, vec![1], vec![0]);
        assert!(st.may_go_ahead(S, 2));
        assert!(!st.may_go_ahead(0, 2), "an overwrite");
        assert!(!st.may_go_ahead(2 * S, 2), "past the end");
        let _a = accept(&mut st, 100, 2);
        assert!(!st.may_go_ahead(st.length, 2), "an unaligned end");
        let mut st = state(S, vec![1], vec![0]);
        let _a = accept(&mut st, S, 2);
        assert!(st.may_go_ahead(2 * S, 2));
        let _b = accept(&mut st, S, 3);
        assert!(!st.may_go_ahead(3 * S, 2), "two in flight");
        assert!(st.may_go_ahead(3 * S, 3));
        assert!(!st.may_go_ahead(3 * S, 0), "off");
    }
}
