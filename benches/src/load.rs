//! A synthetic CPU load: every core of this host kept busy a given share
//! of the time while something else is measured.
//!
//! `figure3` reads the read set's chunk files straight from the device
//! with the cores as busy as a read point kept them. On the development
//! VM a random read of its virtual disk gives less when the cores are
//! busy (fio, 512 KiB at 6 deep: 3724 MB/s idle, 3206 with both cores 30
//! % busy, 2654 at 50 %) while a sequential one does not, so the idle
//! ceiling is more than any cluster on that host can get from the disk
//! while its processes use the CPU (BENCHMARKS.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One cycle of each core's load: busy for `on`, then asleep.
const PERIOD: Duration = Duration::from_millis(10);

/// How long each core spins and then sleeps in one `period` to be busy
/// `share` of the time (clamped to 0..=1).
fn duty(share: f64, period: Duration) -> (Duration, Duration) {
    let on = period.mul_f64(share.clamp(0.0, 1.0));
    (on, period - on)
}

/// Sets the flag when dropped: the load stops even if the measurement
/// panics (the scope would otherwise wait for the spinning threads).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` with one thread per core busy `share` of the time; returns
/// what `f` returned and the time the load spun in all.
pub fn busy_at<T>(share: f64, f: impl FnOnce() -> T) -> (T, Duration) {
    let (on, off) = duty(share, PERIOD);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let spinners: Vec<_> = (0..cores)
            .filter(|_| !on.is_zero())
            .map(|_| s.spawn(|| spin(on, off, &stop)))
            .collect();
        let out = {
            let _stop = StopOnDrop(&stop);
            f()
        };
        let spun = spinners
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .sum();
        (out, spun)
    })
}

fn spin(on: Duration, off: Duration, stop: &AtomicBool) -> Duration {
    let mut spun = Duration::ZERO;
    while !stop.load(Ordering::Acquire) {
        let start = Instant::now();
        while start.elapsed() < on {
            std::hint::spin_loop();
        }
        spun += start.elapsed();
        std::thread::sleep(off);
    }
    spun
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_that_much_of_each_period_spent_spinning() {
        let ms = Duration::from_millis;
        assert_eq!(duty(0.5, ms(10)), (ms(5), ms(5)));
        assert_eq!(duty(0.0, ms(10)), (ms(0), ms(10)));
        assert_eq!(duty(1.0, ms(10)), (ms(10), ms(0)));
        assert_eq!(duty(1.7, ms(10)), (ms(10), ms(0)), "clamped");
        assert_eq!(duty(-0.2, ms(10)), (ms(0), ms(10)), "clamped");
    }

    #[test]
    fn the_load_runs_while_the_measurement_does_and_stops_with_it() {
        let (got, spun) = busy_at(0.5, || {
            std::thread::sleep(Duration::from_millis(50));
            7
        });
        assert_eq!(got, 7);
        assert!(spun > Duration::ZERO);
        let (_, none) = busy_at(0.0, || std::thread::sleep(Duration::from_millis(20)));
        assert_eq!(none, Duration::ZERO, "no load: nothing spins");
    }

    #[test]
    fn a_measurement_that_panics_stops_the_load() {
        let r = std::panic::catch_unwind(|| busy_at(0.5, || panic!("measurement failed")));
        assert!(r.is_err(), "the panic comes through, and nothing hangs");
    }
}
