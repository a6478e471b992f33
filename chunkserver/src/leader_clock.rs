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

/// What this server knows of the leader's clock.
#[derive(Clone, Copy, Debug, Default)]
enum Known {
    /// No leader has answered yet.
    #[default]
    Nothing,
    /// A leader answered without its clock (a master of a version before
    /// `now_ms`, during an upgrade): its clock is taken to be this
    /// server's wall clock, as those versions did.
    Unsaid,
    Read(Reading),
}

/// The latest reading of the leader's clock.
#[derive(Debug, Default)]
pub struct LeaderClock {
    latest: std::sync::Mutex<Known>,
}

impl LeaderClock {
    /// Takes a leader's answer to a heartbeat sent at `asked`, whose clock
    /// read `leader_ms` (0: a master that does not say).
    pub fn learn(&self, asked: Instant, leader_ms: u64) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        *latest = match leader_ms {
            0 => Known::Unsaid,
            _ => Known::Read(Reading { asked, leader_ms }),
        };
    }

    /// The leader's clock now, as leases are timed here. Until a leader
    /// has answered (a server just started, with a client's lease still
    /// cached from before) it is unknown and every lease is taken to be
    /// over: `u64::MAX`.
    pub fn now_ms(&self) -> u64 {
        match *self.latest.lock().unwrap_or_else(|p| p.into_inner()) {
            Known::Read(r) => r.leader_ms_at(Instant::now()),
            Known::Unsaid => crate::service::now_ms(),
            Known::Nothing => u64::MAX,
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
    fn before_any_leader_answered_every_lease_is_over() {
        assert_eq!(LeaderClock::default().now_ms(), u64::MAX);
    }

    #[test]
    fn a_leader_that_does_not_say_its_clock_is_taken_to_share_ours() {
        let c = LeaderClock::default();
        c.learn(Instant::now(), 0);
        let (before, got) = (crate::service::now_ms(), c.now_ms());
        assert!(
            (before..before + 60_000).contains(&got),
            "{got} against {before}"
        );
        // One that says wins again.
        c.learn(Instant::now(), 42);
        assert!((42..42 + 60_000).contains(&c.now_ms()));
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
