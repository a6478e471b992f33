//! What changed in the chunk set since each master last heard: the
//! incremental part of heartbeats. Pure.

use std::collections::VecDeque;

use gfs_proto::{ChunkHandle, ChunkVersion};

/// A sequence-numbered log of chunk changes, bounded; a master that fell
/// further behind than the log reaches gets a full report instead.
#[derive(Debug)]
pub struct Changes {
    next: u64,
    log: VecDeque<(u64, ChunkHandle, Option<ChunkVersion>)>,
    cap: usize,
}

/// Changes after some point: chunks at a (new) version, and removed chunks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub changed: Vec<(ChunkHandle, ChunkVersion)>,
    pub removed: Vec<ChunkHandle>,
    /// Pass this to `since` next time.
    pub upto: u64,
}

impl Changes {
    pub fn new(cap: usize) -> Self {
        Self {
            next: 1,
            log: VecDeque::new(),
            cap,
        }
    }

    /// `Some(version)`: the chunk exists at that version; `None`: removed.
    pub fn note(&mut self, handle: ChunkHandle, version: Option<ChunkVersion>) {
        if self.log.len() == self.cap {
            self.log.pop_front();
        }
        self.log.push_back((self.next, handle, version));
        self.next += 1;
    }

    /// Where a full report taken now stands.
    pub fn head(&self) -> u64 {
        self.next - 1
    }

    /// Everything noted after `seq`; `None` if the log no longer reaches
    /// back that far (send a full report).
    pub fn since(&self, seq: u64) -> Option<Delta> {
        if let Some((first, ..)) = self.log.front()
            && *first > seq + 1
        {
            return None;
        }
        let mut d = Delta {
            upto: self.head(),
            ..Delta::default()
        };
        let mut last = std::collections::HashMap::new();
        for (s, h, v) in self.log.iter().filter(|(s, ..)| *s > seq) {
            last.insert(*h, (*s, *v));
        }
        let mut ordered: Vec<_> = last.into_iter().collect();
        ordered.sort_by_key(|(_, (s, _))| *s);
        for (h, (_, v)) in ordered {
            match v {
                Some(v) => d.changed.push((h, v)),
                None => d.removed.push(h),
            }
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_the_last_state_of_each_chunk() {
        let mut c = Changes::new(10);
        assert_eq!(c.since(0), Some(Delta::default()));
        c.note(ChunkHandle(1), Some(ChunkVersion(2)));
        c.note(ChunkHandle(2), Some(ChunkVersion(2)));
        c.note(ChunkHandle(1), Some(ChunkVersion(3)));
        c.note(ChunkHandle(2), None);
        assert_eq!(
            c.since(0),
            Some(Delta {
                changed: vec![(ChunkHandle(1), ChunkVersion(3))],
                removed: vec![ChunkHandle(2)],
                upto: 4
            })
        );
        assert_eq!(
            c.since(3),
            Some(Delta {
                changed: vec![],
                removed: vec![ChunkHandle(2)],
                upto: 4
            })
        );
    }

    #[test]
    fn a_master_behind_the_log_needs_a_full_report() {
        let mut c = Changes::new(2);
        for h in 1..=3 {
            c.note(ChunkHandle(h), Some(ChunkVersion(1)));
        }
        assert_eq!(c.since(0), None);
        assert!(c.since(1).is_some());
        assert_eq!(c.head(), 3);
    }
}
