//! Every backend wrapped so the store knows how long its oldest I/O has
//! been outstanding: a disk that stops completing I/O (a hung device, a
//! dead path) while the process stays well shows here, where nothing else
//! would (the server still answers, heartbeats and reads its memory).
//! It also counts what each directory's device did for the store (I/Os,
//! bytes, errors, time waited: [`IoCounts`]), which a chunkserver's
//! metrics report.

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
    counts: [Kind; 3],
    errors: AtomicU64,
}

/// Completed I/Os of one kind.
#[derive(Debug, Default)]
struct Kind {
    ops: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

/// What one directory's device did for the store since it opened: I/Os
/// completed (failed ones too), bytes moved by those that succeeded, the
/// time they took from submission to completion, and how many failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub reads: u64,
    pub writes: u64,
    pub syncs: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub read_time: Duration,
    pub write_time: Duration,
    pub sync_time: Duration,
    pub errors: u64,
    /// Submitted and not completed, now.
    pub in_flight: u64,
}

fn kind_of(op: &IoOp) -> usize {
    match op {
        IoOp::Read { .. } => 0,
        IoOp::Write { .. } => 1,
        IoOp::Sync { .. } => 2,
    }
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

    /// Counts a completed I/O of `kind` (`kind_of`) that moved `bytes` if
    /// it succeeded.
    fn count(&self, kind: usize, bytes: u64, took: Duration, ok: bool) {
        let k = &self.counts[kind];
        k.ops.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        k.nanos.fetch_add(nanos, Ordering::Relaxed);
        if ok {
            k.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> IoCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let [r, w, f] = &self.counts;
        IoCounts {
            reads: get(&r.ops),
            writes: get(&w.ops),
            syncs: get(&f.ops),
            read_bytes: get(&r.bytes),
            written_bytes: get(&w.bytes),
            read_time: Duration::from_nanos(get(&r.nanos)),
            write_time: Duration::from_nanos(get(&w.nanos)),
            sync_time: Duration::from_nanos(get(&f.nanos)),
            errors: get(&self.errors),
            in_flight: self.lock().len() as u64,
        }
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
        let (kind, bytes) = (kind_of(&op), op.len() as u64);
        let at = Instant::now();
        let id = outstanding.start(at);
        self.inner.submit(
            op,
            Box::new(move |r| {
                outstanding.end(id);
                outstanding.count(kind, bytes, at.elapsed(), r.is_ok());
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

    #[test]
    fn completed_ios_are_counted_by_kind_and_failures_move_no_bytes() {
        let o = Outstanding::default();
        let id = o.start(Instant::now());
        assert_eq!(o.counts().in_flight, 1);
        o.end(id);
        let ms = Duration::from_millis;
        o.count(0, 4096, ms(2), true);
        o.count(0, 4096, ms(3), false);
        o.count(1, 1 << 20, ms(5), true);
        o.count(2, 0, ms(7), true);
        assert_eq!(
            o.counts(),
            IoCounts {
                reads: 2,
                writes: 1,
                syncs: 1,
                read_bytes: 4096,
                written_bytes: 1 << 20,
                read_time: ms(5),
                write_time: ms(5),
                sync_time: ms(7),
                errors: 1,
                in_flight: 0,
            }
        );
    }
}
