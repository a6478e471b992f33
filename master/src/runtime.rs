//! The async runtime openraft runs on: tokio, with every timeout openraft
//! puts on a call to a peer at least [`TIMEOUT_FLOOR`].
//!
//! openraft 0.9 cuts each AppendEntries (replication, and the heartbeats
//! that confirm a linearizable read) at `heartbeat_interval`, and each vote
//! request at `election_timeout_min`. With the 30 ms heartbeat that keeps a
//! failover short, a round trip between masters plus the follower's log
//! write above 30 ms failed every replication and every read while the
//! leader stayed the leader: no election, no commit, no answer. Measured
//! with a 25 ms delay each way into every master (`tests/src/link.rs`):
//! 3 operations answered in 8 s of the predicted-history workload, the
//! rest failed after their 30 s deadline; with 10 ms, a seventh of the
//! operations of no delay. A slow disk under a follower does the same.
//!
//! What the timeouts guard is a call that will never answer; a late answer
//! is still an answer, and Raft is safe with any. The timers that find a
//! dead leader (the election timeout, the leader's heartbeat interval)
//! are sleeps and ticks, not these timeouts, and stay as configured, so
//! failover takes as long as before.

use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};

/// The shortest timeout openraft gets on a call: a round trip plus a
/// follower's log write taking less than this commits.
pub const TIMEOUT_FLOOR: Duration = Duration::from_secs(1);

/// tokio's runtime as openraft's [`TokioRuntime`] drives it, but for the
/// floor on timeouts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runtime;

type Tokio = TokioRuntime;

/// `duration`, raised to the floor.
pub fn floored(duration: Duration) -> Duration {
    duration.max(TIMEOUT_FLOOR)
}

impl AsyncRuntime for Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(floored(duration), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        let floor = tokio::time::Instant::now() + TIMEOUT_FLOOR;
        Tokio::timeout_at(deadline.max(floor), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_raised_to_the_floor_and_longer_ones_kept() {
        let ms = Duration::from_millis;
        assert_eq!(floored(ms(30)), TIMEOUT_FLOOR, "a heartbeat interval");
        assert_eq!(floored(ms(0)), TIMEOUT_FLOOR);
        assert_eq!(floored(ms(10_000)), ms(10_000), "a snapshot's");
    }

    #[tokio::test]
    async fn a_call_answering_after_the_asked_timeout_is_waited_for() {
        let late = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            7
        };
        // Asked for 30 ms, as openraft asks of an AppendEntries.
        let got = Runtime::timeout(Duration::from_millis(30), late).await;
        assert_eq!(got.ok(), Some(7));
        let never = std::future::pending::<()>();
        let started = tokio::time::Instant::now();
        assert!(
            Runtime::timeout_at(started + Duration::from_millis(30), never)
                .await
                .is_err()
        );
        let took = started.elapsed();
        assert!(took >= TIMEOUT_FLOOR, "cut before the floor: {took:?}");
        assert!(took < TIMEOUT_FLOOR * 2, "{took:?}");
    }
}
