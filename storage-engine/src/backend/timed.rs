//! Every backend wrapped so the store knows how long its oldest I/O has
//! been outstanding: a disk that stops completing I/O (a hung device, a
//! dead path) while the process stays well shows here, where nothing else
//! would (the server still answers, heartbeats and reads its memory).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{IoBackend, IoCallback, IoOp};

/// The I/Os submitted and not completed yet, by submission order, with
/// when each was submitted; shared by every directory of a store.
#[derive(Debug, Default)]
pub struct Outstanding {
    next: AtomicU64,
    started: Mutex<BTreeMap<u64, Instant>>,
}

impl Outstanding {
    fn start(&self, at: Instant) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, at);
        id
    }

    fn end(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the oldest outstanding I/O has waited at `now` (zero when
    /// none is outstanding).
    pub fn oldest_at(&self, now: Instant) -> Duration {
        self.lock()
            .values()
            .next()
            .map_or(Duration::ZERO, |&at| now.saturating_duration_since(at))
    }
}

#[derive(Debug)]
pub struct TimedBackend {
    inner: Box<dyn IoBackend>,
    outstanding: Arc<Outstanding>,
}

impl TimedBackend {
    pub fn new(inner: Box<dyn IoBackend>, outstanding: Arc<Outstanding>) -> Self {
        Self { inner, outstanding }
    }
}

impl IoBackend for TimedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn registered_buffers(&self) -> bool {
        self.inner.registered_buffers()
    }

    fn submit(&self, op: IoOp, done: IoCallback) {
        let outstanding = self.outstanding.clone();
        let id = outstanding.start(Instant::now());
        self.inner.submit(
            op,
            Box::new(move |r| {
                outstanding.end(id);
                done(r)
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_outstanding_io_is_the_one_that_counts() {
        let o = Outstanding::default();
        let t0 = Instant::now();
        assert_eq!(o.oldest_at(t0), Duration::ZERO);
        let first = o.start(t0);
        let second = o.start(t0 + Duration::from_secs(3));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(o.oldest_at(later), Duration::from_secs(5));
        // The first completes: the second is the oldest now.
        o.end(first);
        assert_eq!(o.oldest_at(later), Duration::from_secs(2));
        o.end(second);
        assert_eq!(o.oldest_at(later), Duration::ZERO);
    }
}
