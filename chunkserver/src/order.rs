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

/// Where a record append goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendPlan {
    /// At the chunk's end.
    At(u64),
    /// It does not fit: pad the chunk on every replica, the client moves on.
    Pad,
    /// This retry was already committed at that offset.
    Duplicate(u64),
}

pub fn plan_append(length: u64, chunk_size: u64, record_len: u64, dup: Option<u64>) -> AppendPlan {
    if let Some(at) = dup {
        return AppendPlan::Duplicate(at);
    }
    if length + record_len > chunk_size {
        AppendPlan::Pad
    } else {
        AppendPlan::At(length)
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
    fn records_go_at_the_end_or_pad_or_dedupe() {
        assert_eq!(plan_append(0, 100, 25, None), AppendPlan::At(0));
        assert_eq!(plan_append(75, 100, 25, None), AppendPlan::At(75));
        assert_eq!(plan_append(76, 100, 25, None), AppendPlan::Pad);
        assert_eq!(
            plan_append(90, 100, 25, Some(10)),
            AppendPlan::Duplicate(10)
        );
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
