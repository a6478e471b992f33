//! The primary's and secondaries' decisions, as pure functions: version
//! fencing, where a record goes, and the primary's memory of committed
//! appends for deduplicating retries.

use std::collections::VecDeque;

use gfs_proto::record::RecordId;

/// What a replica does with a request naming chunk version `theirs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Same version.
    Current,
    /// A mutation under a newer lease: record the new version first.
    Adopt,
    /// The request's version is older than this replica's (the caller's
    /// locations are old), or, for a read, newer (this replica is stale).
    Refuse,
}

pub fn fence_mutation(mine: u64, theirs: u64) -> Fence {
    match theirs.cmp(&mine) {
        std::cmp::Ordering::Equal => Fence::Current,
        std::cmp::Ordering::Greater => Fence::Adopt,
        std::cmp::Ordering::Less => Fence::Refuse,
    }
}

/// What a secondary does with a mutation forwarded at version `theirs`:
/// only its own version is accepted. A newer one comes from the master
/// (`SetVersion`) to the replicas it counts as current; a replica left out
/// of a new lease may have missed acknowledged mutations, and adopting the
/// version from the primary's forward would let it pass for current.
pub fn fence_forwarded(mine: u64, theirs: u64) -> Fence {
    if mine == theirs {
        Fence::Current
    } else {
        Fence::Refuse
    }
}

/// A read is served only at exactly the version the master named: a stale
/// replica never answers one.
pub fn fence_read(mine: u64, theirs: u64) -> Fence {
    if mine == theirs {
        Fence::Current
    } else {
        Fence::Refuse
    }
}

/// Where one record of a batch of appends goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Written at this offset, right after the record before it.
    At(u64),
    /// This retry was already committed at that offset.
    Duplicate(u64),
    /// It does not fit: the chunk is padded after the records placed, and
    /// the client moves on to the next chunk.
    Full,
}

/// Places a batch of appends queued for one chunk (`(id, length)` in
/// arrival order) at a chunk of `length` bytes: one after the other from
/// the chunk's end, until one does not fit; that one and every later one
/// are `Full` (the chunk is padded from the end of the placed records,
/// the second value). A retry of a committed record (client id nonzero)
/// gets its first offset. A record repeated inside the batch is placed
/// twice: readers drop duplicates by id.
pub fn plan_appends(
    length: u64,
    chunk_size: u64,
    records: &[(RecordId, u64)],
    committed: &Committed,
) -> (Vec<Placed>, u64) {
    let mut end = length;
    let mut full = false;
    let placed = records
        .iter()
        .map(|&(id, len)| {
            let dup = (id.client_id != 0).then(|| committed.find(id)).flatten();
            if let Some(at) = dup {
                Placed::Duplicate(at)
            } else if full || end + len > chunk_size {
                full = true;
                Placed::Full
            } else {
                end += len;
                Placed::At(end - len)
            }
        })
        .collect();
    (placed, end)
}

/// The last mutation a replica processed for one chunk, as the primary
/// numbered it: its run (process) and serial. Rounds of record appends are
/// pipelined, so a replica may receive a mutation before the one it follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    last: Option<(u64, u64)>,
}

impl Turn {
    /// Whether a mutation that follows mutation `after` of primary run
    /// `run` may be applied now (`after` 0: it follows nothing in flight).
    pub fn ready(&self, run: u64, after: u64) -> bool {
        after == 0 || self.last == Some((run, after))
    }

    /// Mutation `serial` of `run` was processed, applied or failed. Within
    /// a run the turn never moves back: a mutation that arrives after its
    /// successor gave up waiting for it does not hold the next one up.
    pub fn processed(&mut self, run: u64, serial: u64) {
        match self.last {
            Some((r, s)) if r == run && s >= serial => {}
            _ => self.last = Some((run, serial)),
        }
    }
}

/// Appends the primary committed recently, to answer a retry with the first
/// offset instead of a second copy. Bounded: a retry comes soon after its
/// first attempt.
#[derive(Debug, Default)]
pub struct Committed {
    recent: VecDeque<(RecordId, u64)>,
}

pub const REMEMBERED_APPENDS: usize = 4096;

impl Committed {
    pub fn find(&self, id: RecordId) -> Option<u64> {
        self.recent
            .iter()
            .rev()
            .find(|(r, _)| *r == id)
            .map(|(_, at)| *at)
    }

    pub fn record(&mut self, id: RecordId, offset: u64) {
        if self.recent.len() == REMEMBERED_APPENDS {
            self.recent.pop_front();
        }
        self.recent.push_back((id, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_adopts_newer_mutations_and_refuses_the_rest() {
        assert_eq!(fence_mutation(3, 3), Fence::Current);
        assert_eq!(fence_mutation(3, 4), Fence::Adopt);
        assert_eq!(fence_mutation(3, 2), Fence::Refuse);
        assert_eq!(fence_forwarded(3, 3), Fence::Current);
        assert_eq!(fence_forwarded(3, 4), Fence::Refuse);
        assert_eq!(fence_forwarded(3, 2), Fence::Refuse);
        assert_eq!(fence_read(3, 3), Fence::Current);
        assert_eq!(fence_read(3, 4), Fence::Refuse);
        assert_eq!(fence_read(3, 2), Fence::Refuse);
    }

    #[test]
    fn records_go_at_the_end_one_after_another_until_one_does_not_fit() {
        let id = |c, s| RecordId {
            client_id: c,
            seq: s,
        };
        let mut done = Committed::default();
        done.record(id(1, 1), 10);
        done.record(id(0, 5), 20);
        assert_eq!(
            plan_appends(0, 100, &[(id(1, 2), 25)], &done),
            (vec![Placed::At(0)], 25)
        );
        let batch = [
            (id(2, 1), 25),
            (id(1, 1), 25),
            (id(3, 1), 30),
            (id(0, 5), 10),
            (id(4, 1), 20),
            (id(5, 1), 1),
            (id(1, 1), 5),
        ];
        // 40 + 25 + 30 = 95: the next 10 does not fit, nor does anything
        // after it; the committed retry is answered wherever it stands.
        assert_eq!(
            plan_appends(40, 100, &batch, &done),
            (
                vec![
                    Placed::At(40),
                    Placed::Duplicate(10),
                    Placed::At(65),
                    Placed::Full,
                    Placed::Full,
                    Placed::Full,
                    Placed::Duplicate(10),
                ],
                95
            )
        );
        assert_eq!(
            plan_appends(100, 100, &[(id(2, 2), 1)], &done),
            (vec![Placed::Full], 100)
        );
    }

    #[test]
    fn pipelined_mutations_wait_for_the_one_they_follow() {
        let mut t = Turn::default();
        assert!(t.ready(7, 0));
        assert!(!t.ready(7, 1));
        t.processed(7, 1);
        assert!(t.ready(7, 1));
        assert!(!t.ready(7, 2));
        // Another run of the primary (it restarted) starts its own order.
        assert!(!t.ready(8, 1));
        t.processed(7, 3);
        t.processed(7, 2);
        assert_eq!(t, Turn { last: Some((7, 3)) });
        assert!(t.ready(7, 3));
        t.processed(8, 1);
        assert!(t.ready(8, 1));
        assert!(!t.ready(7, 3));
    }

    #[test]
    fn committed_appends_are_remembered_boundedly() {
        let id = |s| RecordId {
            client_id: 1,
            seq: s,
        };
        let mut c = Committed::default();
        for s in 0..(REMEMBERED_APPENDS as u64 + 1) {
            c.record(id(s), s * 10);
        }
        assert_eq!(c.find(id(0)), None);
        assert_eq!(c.find(id(1)), Some(10));
        assert_eq!(
            c.find(id(REMEMBERED_APPENDS as u64)),
            Some(REMEMBERED_APPENDS as u64 * 10)
        );
    }
}
