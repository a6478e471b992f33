//! Which sequence numbers a client's mutations may take.
//!
//! The masters remember the last `SESSION_REPLIES` (32) replies of each
//! client, so that a retry of a mutation already applied gets its first
//! reply instead of being applied again. Bounding the mutations *in
//! flight* by 32 does not keep a reply among the last 32: one mutation
//! held up (sent to a leader cut off from the others, its entry committed
//! later by the next leader) can be overtaken by any number of mutations
//! that start and finish meanwhile. Its retry then found its reply gone
//! and was applied again: a rename acknowledged as `NotFound` although it
//! was done (seen in the R3 test, a partitioned leader). So a mutation
//! takes sequence number `s` only while `s` is less than the oldest
//! unanswered one plus the window: every reply applied after an
//! unanswered mutation's is then one of the 31 that follow it.

use std::collections::BTreeSet;

/// The sequence numbers handed out and not yet answered, as pure state.
#[derive(Debug)]
pub(crate) struct Window {
    size: u64,
    next: u64,
    open: BTreeSet<u64>,
}

impl Window {
    /// Numbers from 1 on, at most `size` ahead of the oldest unanswered.
    pub(crate) fn new(size: u64) -> Self {
        Self {
            size: size.max(1),
            next: 1,
            open: BTreeSet::new(),
        }
    }

    /// The next sequence number, if the window has room for it.
    pub(crate) fn take(&mut self) -> Option<u64> {
        let oldest = self.open.first().copied().unwrap_or(self.next);
        if self.next >= oldest + self.size {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        self.open.insert(seq);
        Some(seq)
    }

    /// Mutation `seq` was answered, or given up on: it is never sent again.
    pub(crate) fn close(&mut self, seq: u64) {
        self.open.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn a_number_is_handed_out_only_within_the_window_of_the_oldest_unanswered() {
        let mut w = Window::new(4);
        let taken: Vec<_> = (0..4).map(|_| w.take()).collect();
        assert_eq!(taken, vec![Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(w.take(), None);
        // Later ones answered: still no room while 1 is unanswered.
        w.close(2);
        w.close(3);
        w.close(4);
        assert_eq!(w.take(), None);
        // 1 answered: the oldest unanswered is now the next, 5.
        w.close(1);
        assert_eq!(w.take(), Some(5));
        assert_eq!(w.take(), Some(6));
        w.close(5);
        // Oldest unanswered is 6: 7, 8, 9 fit, 10 does not.
        assert_eq!((w.take(), w.take(), w.take()), (Some(7), Some(8), Some(9)));
        assert_eq!(w.take(), None);
    }

    #[test]
    fn with_nothing_unanswered_numbers_keep_coming() {
        let mut w = Window::new(2);
        for want in 1..100 {
            let s = w.take().expect("room");
            assert_eq!(s, want);
            w.close(s);
        }
    }
}
