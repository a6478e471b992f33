//! Pushes on their way in. A client sends a record append's mutation
//! while it still pushes the record's data (the two overlap: the primary
//! and each secondary start as soon as their own copy is in, not after the
//! whole chain acknowledged it), so a mutation may find its data not
//! buffered yet. It then waits for the data while a push of it is being
//! received here, and a short grace for one to start; a push refused or
//! broken, or none at all, answers `DataMissing` as before.
//!
//! The other way round, a record that did not fit its chunk has its data
//! dropped at every replica, which may come before the data does: such an
//! id is remembered for a while ([`FORGOTTEN_FOR_MS`]) and its data, when
//! it comes, is not kept (else it would hold buffer space until it
//! expired, and a busy file's appenders would fill the buffers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long a mutation waits for a push of its data that has not started
/// here: the push reaches the chain's later servers a hop after the first.
pub const START_GRACE: Duration = Duration::from_millis(250);

/// What a mutation whose data is not buffered does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Wait (for a push to finish, or to start).
    Wait,
    /// Give up: the data is not coming.
    Missing,
}

/// The decision, pure: `incoming` whether a push of the data is being
/// received here now, `waited` how long the mutation has waited, `limit`
/// how long it may wait in all.
pub fn verdict(incoming: bool, waited: Duration, limit: Duration) -> Verdict {
    if waited >= limit || (!incoming && waited >= START_GRACE) {
        Verdict::Missing
    } else {
        Verdict::Wait
    }
}

/// How long the data of a dropped id that had not come yet is refused.
pub const FORGOTTEN_FOR_MS: u64 = 30_000;

/// Dropped ids remembered at most (the oldest go first past it).
const FORGOTTEN_MAX: usize = 1 << 16;

/// The data ids being received here, and a signal whenever one is done
/// (stored or failed); and the ids dropped before their data came.
#[derive(Debug, Default)]
pub struct Arrivals {
    incoming: Mutex<HashMap<u64, usize>>,
    pub done: tokio::sync::Notify,
    /// Id to when it may be kept again.
    forgotten: Mutex<HashMap<u64, u64>>,
}

impl Arrivals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.incoming.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forgotten(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.forgotten.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id` was dropped before its data came here: its data is not to be
    /// kept when it comes (within [`FORGOTTEN_FOR_MS`]).
    pub fn forget(&self, id: u64, now_ms: u64) {
        let mut f = self.forgotten();
        if f.len() >= FORGOTTEN_MAX {
            f.retain(|_, until| *until > now_ms);
            if f.len() >= FORGOTTEN_MAX {
                let oldest = f.iter().min_by_key(|(_, until)| **until).map(|(id, _)| *id);
                f.remove(&oldest.unwrap_or(id));
            }
        }
        f.insert(id, now_ms + FORGOTTEN_FOR_MS);
    }

    /// Whether data of `id` that just came is to be thrown away (it was
    /// dropped before it came); asking forgets the id.
    pub fn unwanted(&self, id: u64, now_ms: u64) -> bool {
        self.forgotten()
            .remove(&id)
            .is_some_and(|until| until > now_ms)
    }

    /// Marks a push of `id` as being received until the guard drops.
    pub fn receiving(&self, id: u64) -> Receiving<'_> {
        *self.lock().entry(id).or_default() += 1;
        Receiving { arrivals: self, id }
    }

    pub fn is_incoming(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }
}

/// A push being received; dropping it (stored or failed) wakes the
/// mutations waiting for data.
#[derive(Debug)]
pub struct Receiving<'a> {
    arrivals: &'a Arrivals,
    id: u64,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        {
            let mut m = self.arrivals.lock();
            if let Some(n) = m.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.id);
                }
            }
        }
        self.arrivals.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutation_waits_for_a_push_under_way_and_briefly_for_one_to_start() {
        let (ms, limit) = (Duration::from_millis, Duration::from_secs(10));
        assert_eq!(verdict(true, ms(0), limit), Verdict::Wait);
        assert_eq!(verdict(true, ms(9_999), limit), Verdict::Wait);
        assert_eq!(verdict(true, ms(10_000), limit), Verdict::Missing);
        assert_eq!(verdict(false, ms(0), limit), Verdict::Wait);
        assert_eq!(verdict(false, ms(249), limit), Verdict::Wait);
        assert_eq!(verdict(false, START_GRACE, limit), Verdict::Missing);
        // A limit below the grace bounds it too.
        assert_eq!(verdict(false, ms(100), ms(100)), Verdict::Missing);
    }

    #[test]
    fn data_dropped_before_it_came_is_not_kept_when_it_comes() {
        let a = Arrivals::default();
        assert!(!a.unwanted(5, 0));
        a.forget(5, 1_000);
        assert!(a.unwanted(5, 2_000));
        // Asked once: a later push of the same id is kept.
        assert!(!a.unwanted(5, 2_000));
        // Past its time, wanted again.
        a.forget(6, 1_000);
        assert!(!a.unwanted(6, 1_000 + FORGOTTEN_FOR_MS));
        // Bounded: the oldest goes first.
        for id in 0..FORGOTTEN_MAX as u64 + 10 {
            a.forget(1_000_000 + id, id);
        }
        assert!(a.forgotten().len() <= FORGOTTEN_MAX);
        assert!(!a.unwanted(1_000_000, 0));
        assert!(a.unwanted(1_000_000 + FORGOTTEN_MAX as u64 + 9, 0));
    }

    #[test]
    fn a_push_is_incoming_until_its_last_receiver_is_done() {
        let a = Arrivals::default();
        assert!(!a.is_incoming(7));
        let first = a.receiving(7);
        let again = a.receiving(7);
        assert!(a.is_incoming(7) && !a.is_incoming(8));
        drop(first);
        assert!(a.is_incoming(7));
        drop(again);
        assert!(!a.is_incoming(7));
    }
}
