//! The leader's clock, as this server times its leases by it.
//!
//! A lease expires at a time of the leader's wall clock, and this server's
//! wall clock may disagree with it by any amount: one 20 s ahead refused
//! every lease it was given as expired (its chunks took no mutation at
//! all), and one behind would keep acting as primary after the leader had
//! given the chunk to another. So leases are never timed by this server's
//! wall clock: each heartbeat the leader answers carries its clock
//! (`now_ms`), and from then on the leader's clock is estimated as that
//! reading plus the time this server's monotonic clock has counted since
//! it *asked*. The leader read its clock after the question left, so the
//! estimate is never behind the leader's clock (by one round trip at most
//! ahead of it): a lease ends here no later than at the leader, whatever
//! either wall clock says, and a step of this server's wall clock (NTP,
//! a resumed VM) changes nothing.
//!
//! The masters still share one time base among themselves (a new leader
//! judges leases the one before stamped), which their lease grace covers.

use std::time::Instant;

/// A reading of the leader's clock, and when (by this server's monotonic
/// clock) the heartbeat that brought it was sent.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub asked: Instant,
    pub leader_ms: u64,
}

impl Reading {
    /// The leader's clock at `now`, by this reading: never behind it.
    pub fn leader_ms_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.asked).as_millis();
        self.leader_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// The latest reading of the leader's clock.
#[derive(Debug, Default)]
pub struct LeaderClock {
    latest: std::sync::Mutex<Option<Reading>>,
}

impl LeaderClock {
    /// Takes a leader's answer to a heartbeat sent at `asked`, whose clock
    /// read `leader_ms` (0: a master that does not say, which is ignored).
    pub fn learn(&self, asked: Instant, leader_ms: u64) {
        if leader_ms == 0 {
            return;
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reading { asked, leader_ms });
    }

    /// The leader's clock now, as leases are timed here; this server's
    /// wall clock until a leader has answered (no lease is held before).
    pub fn now_ms(&self) -> u64 {
        match *self.latest.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(r) => r.leader_ms_at(Instant::now()),
            None => crate::service::now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_leaders_clock_runs_on_from_when_the_heartbeat_was_asked() {
        let t0 = Instant::now();
        let r = Reading {
            asked: t0,
            leader_ms: 1_000_000,
        };
        assert_eq!(r.leader_ms_at(t0), 1_000_000);
        assert_eq!(r.leader_ms_at(t0 + Duration::from_millis(2_500)), 1_002_500);
        // A time before the question (a caller's stale instant) is the
        // reading itself, never less.
        let early = Reading {
            asked: t0 + Duration::from_secs(1),
            leader_ms: 7,
        };
        assert_eq!(early.leader_ms_at(t0), 7);
    }

    #[test]
    fn the_estimate_is_never_behind_the_leader_whatever_the_round_trip() {
        // The leader read its clock 40 ms after the question left, and it
        // read 5 000 then: at 100 ms after the question the leader's clock
        // reads 5 060; the estimate says 5 100, ahead by the 40 ms.
        let asked = Instant::now();
        let r = Reading {
            asked,
            leader_ms: 5_000,
        };
        let now = asked + Duration::from_millis(100);
        let leader_truly = 5_000 + 100 - 40;
        assert!(r.leader_ms_at(now) >= leader_truly);
        assert_eq!(r.leader_ms_at(now) - leader_truly, 40);
    }

    #[test]
    fn a_master_that_does_not_say_its_time_changes_nothing() {
        let c = LeaderClock::default();
        let t0 = Instant::now();
        c.learn(t0, 0);
        assert!(c.latest.lock().unwrap().is_none());
        c.learn(t0, 42);
        c.learn(t0, 0);
        assert_eq!(c.latest.lock().unwrap().unwrap().leader_ms, 42);
    }

    #[test]
    fn the_latest_answer_wins() {
        let c = LeaderClock::default();
        let t0 = Instant::now();
        c.learn(t0, 1_000);
        c.learn(t0, 900_000);
        let now = c.now_ms();
        assert!((900_000..900_000 + 60_000).contains(&now), "{now}");
    }
}
