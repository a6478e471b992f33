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

/// Dropped ids remembered at most (past it, the expired go, else any one).
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
    /// Mutations waiting for its data.
    waiters: usize,
    /// Given when a push of it is done.
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

    /// A mutation waiting for the data of `id`, until the guard drops:
    /// woken whenever a push of it is done, whether or not one had
    /// started when it began to wait.
    pub fn watch(&self, id: u64) -> Watch<'_> {
        let done = {
            let mut m = self.lock();
            let i = m.entry(id).or_default();
            i.waiters += 1;
            i.done.clone()
        };
        Watch {
            arrivals: self,
            id,
            done,
        }
    }

    /// One of `id`'s counts down; the entry goes with the last.
    fn leave(&self, id: u64, count: fn(&mut Incoming) -> &mut usize) {
        let mut m = self.lock();
        let Some(i) = m.get_mut(&id) else {
            return;
        };
        let n = count(i);
        *n = n.saturating_sub(1);
        if i.receivers == 0 && i.waiters == 0 {
            m.remove(&id);
        }
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
        let done = self.arrivals.lock().get(&self.id).map(|i| i.done.clone());
        self.arrivals.leave(self.id, |i| &mut i.receivers);
        if let Some(done) = done {
            done.notify_waiters();
        }
    }
}

/// A mutation waiting for the data of one id ([`Arrivals::watch`]).
#[derive(Debug)]
pub struct Watch<'a> {
    arrivals: &'a Arrivals,
    id: u64,
    done: Arc<Notify>,
}

impl Watch<'_> {
    /// Given when a push of the id is done.
    pub fn done(&self) -> &Notify {
        &self.done
    }

    /// Whether a push of the id is being received now.
    pub fn incoming(&self) -> bool {
        self.arrivals
            .lock()
            .get(&self.id)
            .is_some_and(|i| i.receivers > 0)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.arrivals.leave(self.id, |i| &mut i.waiters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a future is ready when polled once.
    fn ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
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
    fn a_waiter_is_woken_by_its_datas_push_whether_or_not_it_had_started() {
        let a = Arrivals::default();
        // Waiting before any push of 7 started.
        let w = a.watch(7);
        assert!(!w.incoming());
        {
            let woken = w.done().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let first = a.receiving(7);
            let again = a.receiving(7);
            assert!(w.incoming());
            assert!(!ready(woken.as_mut()));
            drop(first);
            // Each push done wakes the waiters; the id is incoming while
            // one is.
            assert!(ready(woken.as_mut()));
            assert!(w.incoming());
            drop(again);
            assert!(!w.incoming());
        }
        // Nothing is left once the pushes and the waiters are gone.
        drop(w);
        assert!(a.lock().is_empty());
        drop(a.receiving(8));
        assert!(a.lock().is_empty());
    }
}
