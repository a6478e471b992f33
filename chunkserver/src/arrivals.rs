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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

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

/// The data ids being received here, each with a signal for when a push
/// of it is done (stored or failed); and the ids dropped before their data
/// came.
#[derive(Debug, Default)]
pub struct Arrivals {
    incoming: Mutex<HashMap<u64, Incoming>>,
    /// Id to when it may be kept again.
    forgotten: Mutex<HashMap<u64, u64>>,
}

#[derive(Debug, Default)]
struct Incoming {
    /// Pushes of the id being received (a retried push may overlap one).
    receivers: usize,
    done: Arc<Notify>,
}

impl Arrivals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Incoming>> {
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
            // Still full: one goes (its data, should it come, waits out
            // the buffer's expiry as all data did before).
            if f.len() >= FORGOTTEN_MAX
                && let Some(&any) = f.keys().next()
            {
                f.remove(&any);
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
        self.lock().entry(id).or_default().receivers += 1;
        Receiving { arrivals: self, id }
    }

    /// If a push of `id` is being received here, the signal given when it
    /// is done.
    pub fn incoming(&self, id: u64) -> Option<Arc<Notify>> {
        self.lock().get(&id).map(|i| i.done.clone())
    }
}

/// A push being received; dropping it (stored or failed) wakes the
/// mutations waiting for its data.
#[derive(Debug)]
pub struct Receiving<'a> {
    arrivals: &'a Arrivals,
    id: u64,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        let done = {
            let mut m = self.arrivals.lock();
            let Some(i) = m.get_mut(&self.id) else {
                return;
            };
            i.receivers -= 1;
            let done = i.done.clone();
            if i.receivers == 0 {
                m.remove(&self.id);
            }
            done
        };
        done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a future is ready when polled once.
    fn futures_poll_ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_ready()
    }

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
        // Bounded: when full, the expired go, else any one.
        for id in 0..FORGOTTEN_MAX as u64 + 10 {
            a.forget(1_000_000 + id, 0);
        }
        assert_eq!(a.forgotten().len(), FORGOTTEN_MAX);
        assert!(a.unwanted(1_000_000 + FORGOTTEN_MAX as u64 + 9, 0));
        a.forget(1, 0);
        a.forget(7, 10 * FORGOTTEN_FOR_MS);
        assert_eq!(a.forgotten().len(), 1);
    }

    #[test]
    fn a_push_is_incoming_until_its_last_receiver_is_done() {
        let a = Arrivals::default();
        assert!(a.incoming(7).is_none());
        let first = a.receiving(7);
        let again = a.receiving(7);
        let done = a.incoming(7).expect("incoming");
        assert!(a.incoming(8).is_none());
        let woken = done.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        drop(first);
        // Each push done wakes the waiters; the id is incoming while one is.
        assert!(futures_poll_ready(woken.as_mut()));
        assert!(a.incoming(7).is_some());
        drop(again);
        assert!(a.incoming(7).is_none());
    }
}
