//! What a measurement kept busy, from the kernel's counters read just
//! before and just after it: this host's CPUs (`/proc/stat`) and the
//! device under the data directory (`/sys/dev/block/M:m/stat`, the
//! fields of `/proc/diskstats`). From them, what bounded it: a point that
//! falls short of its limit either kept the CPUs busy, or the device, or
//! neither (then it was waiting on latency: too little in flight).
//!
//! The counters are `gfs_storage_engine::counters`. The arithmetic is
//! pure; only [`Probe::snapshot`] reads files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use gfs_storage_engine::counters::{self, CpuTicks, DiskCounters};

use crate::median;

/// Share of CPU time, or of wall time the device was busy, at or above
/// which that resource is called the bound.
pub const SATURATED: f64 = 0.9;

/// The counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub at: Instant,
    pub cpu: Option<CpuTicks>,
    pub disk: Option<DiskCounters>,
}

/// What one measurement kept busy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Busy {
    /// Share of all CPU time spent working (neither idle, nor in iowait,
    /// nor stolen by the hypervisor).
    /// Left out when the counters could not be read, or did not move: a
    /// window shorter than the kernel's tick (10 ms per CPU) may see none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Share of all CPU time idle while this host's I/O was outstanding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_iowait: Option<f64>,
    /// Share of all CPU time the hypervisor gave to others (a VM's
    /// `steal`): time this host wanted its CPUs and did not get them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_steal: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskBusy>,
}

/// The data directory's device during one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DiskBusy {
    /// Share of the time with at least one request in flight.
    pub util: f64,
    /// Requests in flight on average.
    pub in_flight: f64,
    pub read_mb_s: f64,
    pub write_mb_s: f64,
}

/// The counters' differences between two snapshots `secs` apart.
pub fn busy(before: &Snapshot, after: &Snapshot, secs: f64) -> Busy {
    let cpu = before.cpu.zip(after.cpu).and_then(|(b, a)| {
        let total = a.total.checked_sub(b.total).filter(|t| *t > 0)? as f64;
        let idle = a.idle.saturating_sub(b.idle) as f64;
        let iowait = a.iowait.saturating_sub(b.iowait) as f64;
        let steal = a.steal.saturating_sub(b.steal) as f64;
        let working = (total - idle - iowait - steal).max(0.0);
        Some((working / total, iowait / total, steal / total))
    });
    let disk = before
        .disk
        .zip(after.disk)
        .filter(|_| secs > 0.0)
        .map(|(b, a)| {
            let ms = secs * 1e3;
            let mb_s = |s: u64| s as f64 * 512.0 / 1e6 / secs;
            DiskBusy {
                util: (a.busy_ms.saturating_sub(b.busy_ms) as f64 / ms).min(1.0),
                in_flight: a.queue_ms.saturating_sub(b.queue_ms) as f64 / ms,
                read_mb_s: mb_s(a.read_sectors.saturating_sub(b.read_sectors)),
                write_mb_s: mb_s(a.write_sectors.saturating_sub(b.write_sectors)),
            }
        });
    Busy {
        cpu: cpu.map(|c| c.0),
        cpu_iowait: cpu.map(|c| c.1),
        cpu_steal: cpu.map(|c| c.2),
        disk,
    }
}

/// CPU time this host spent working (neither idle, nor in iowait, nor
/// stolen) between two readings, in clock ticks of `/proc/stat`.
pub fn working_ticks(before: &CpuTicks, after: &CpuTicks) -> u64 {
    let total = after.total.saturating_sub(before.total);
    let not = after.idle.saturating_sub(before.idle)
        + after.iowait.saturating_sub(before.iowait)
        + after.steal.saturating_sub(before.steal);
    total.saturating_sub(not)
}

/// Runs `f` and says how many CPU-seconds this whole host spent working
/// meanwhile (`None` without readable counters): what a ceiling
/// measurement cost the CPUs, whichever process or kernel thread did it.
pub fn cpu_seconds<T>(f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let before = counters::cpu();
    let out = f();
    let after = counters::cpu();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let secs = before
        .zip(after)
        .filter(|_| hz > 0)
        .map(|(b, a)| working_ticks(&b, &a) as f64 / hz as f64);
    (out, secs)
}

/// What was busy between two snapshots, over the time between them.
pub fn between(before: &Snapshot, after: &Snapshot) -> Busy {
    busy(before, after, (after.at - before.at).as_secs_f64())
}

/// What bounded a measurement: `CPU`, `disk`, both, or `latency` when
/// neither was saturated (too little was in flight to keep either busy);
/// `unknown` without the counters. The CPUs count as saturated when
/// working and stolen time together reach [`SATURATED`]: stolen time was
/// wanted and not given.
pub fn bound(b: &Busy) -> &'static str {
    let cpu = b.cpu.map(|c| c + b.cpu_steal.unwrap_or(0.0) >= SATURATED);
    let disk = b.disk.map(|d| d.util >= SATURATED);
    match (cpu, disk) {
        (Some(true), Some(true)) => "CPU+disk",
        (Some(true), _) => "CPU",
        (_, Some(true)) => "disk",
        (Some(false), Some(false)) => "latency",
        _ => "unknown",
    }
}

/// One line for a table: `CPU 83 % (10 % stolen), disk 90 % busy (11.2
/// in flight, 1741 MB/s): CPU+disk`.
pub fn describe(b: &Busy) -> String {
    let stolen = b
        .cpu_steal
        .filter(|s| *s > 0.0)
        .map_or(String::new(), |s| format!(" ({:.0} % stolen)", s * 100.0));
    let cpu = b.cpu.map_or("CPU -".into(), |c| {
        format!("CPU {:.0} %{stolen}", c * 100.0)
    });
    let disk = b.disk.map_or(String::new(), |d| {
        format!(
            ", disk {:.0} % busy ({:.1} in flight, {:.0} MB/s)",
            d.util * 100.0,
            d.in_flight,
            d.read_mb_s + d.write_mb_s
        )
    });
    format!("{cpu}{disk}: {}", bound(b))
}

/// The element-wise median of several measurements' figures.
pub fn median_busy(all: &[Busy]) -> Busy {
    let some = |f: &dyn Fn(&Busy) -> Option<f64>| {
        let v: Vec<f64> = all.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let disk = |f: fn(&DiskBusy) -> f64| some(&|b: &Busy| b.disk.as_ref().map(f));
    Busy {
        cpu: some(&|b| b.cpu),
        cpu_iowait: some(&|b| b.cpu_iowait),
        cpu_steal: some(&|b| b.cpu_steal),
        disk: disk(|d| d.util).map(|util| DiskBusy {
            util,
            in_flight: disk(|d| d.in_flight).unwrap_or(f64::NAN),
            read_mb_s: disk(|d| d.read_mb_s).unwrap_or(f64::NAN),
            write_mb_s: disk(|d| d.write_mb_s).unwrap_or(f64::NAN),
        }),
    }
}

/// Reads the counters of this host and of the device holding a directory.
#[derive(Debug, Clone)]
pub struct Probe {
    disk_stat: Option<PathBuf>,
}

impl Probe {
    /// For the device under `dir`, if given and if it has one (a directory
    /// on tmpfs or overlayfs has no block device); otherwise only the CPUs
    /// are read (pass no directory when the device under it is not the
    /// one measured, as for a cluster elsewhere).
    pub fn of(dir: Option<&Path>) -> Self {
        Probe {
            disk_stat: dir.and_then(counters::device_stat),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu: counters::cpu(),
            disk: self.disk_stat.as_deref().and_then(counters::disk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_ticks_leave_out_idle_and_iowait_and_never_go_negative() {
        let t = |total, idle, iowait| CpuTicks {
            total,
            idle,
            iowait,
            steal: 0,
        };
        assert_eq!(working_ticks(&t(1000, 800, 40), &t(1500, 1100, 60)), 180);
        // Stolen time is not this host's work.
        let stolen = |steal| CpuTicks {
            steal,
            ..t(1500, 1100, 60)
        };
        assert_eq!(working_ticks(&t(1000, 800, 40), &stolen(50)), 130);
        // Counters that went back (a VM restored): nothing, not a panic.
        assert_eq!(working_ticks(&t(1500, 1100, 60), &t(1000, 800, 40)), 0);
        assert_eq!(working_ticks(&t(0, 0, 0), &t(100, 90, 20)), 0);
    }

    fn snap(cpu: (u64, u64, u64), disk: (u64, u64, u64, u64)) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu: Some(CpuTicks {
                total: cpu.0,
                idle: cpu.1,
                iowait: cpu.2,
                steal: 0,
            }),
            disk: Some(DiskCounters {
                read_sectors: disk.0,
                write_sectors: disk.1,
                busy_ms: disk.2,
                queue_ms: disk.3,
            }),
        }
    }

    #[test]
    fn a_measurement_is_bound_by_what_it_kept_saturated() {
        // 2 s: 400 ticks, 20 idle and 60 in iowait; the device busy 1.5 s
        // with 7.2 requests in flight on average, 2 GB read.
        let b = busy(
            &snap((1000, 500, 100), (0, 0, 100, 1000)),
            &snap((1400, 520, 160), (3_906_250, 0, 1600, 15400)),
            2.0,
        );
        assert_eq!(
            b,
            Busy {
                cpu: Some(0.8),
                cpu_iowait: Some(0.15),
                cpu_steal: Some(0.0),
                disk: Some(DiskBusy {
                    util: 0.75,
                    in_flight: 7.2,
                    read_mb_s: 1000.0,
                    write_mb_s: 0.0
                })
            }
        );
        assert_eq!(bound(&b), "latency");
        assert_eq!(
            describe(&b),
            "CPU 80 %, disk 75 % busy (7.2 in flight, 1000 MB/s): latency"
        );
        assert_eq!(describe(&Busy { disk: None, ..b }), "CPU 80 %: unknown");
        let cpu = Busy {
            cpu: Some(0.97),
            ..b
        };
        assert_eq!(bound(&cpu), "CPU");
        let disk = Busy {
            disk: Some(DiskBusy {
                util: 0.99,
                ..b.disk.unwrap()
            }),
            ..b
        };
        assert_eq!(bound(&disk), "disk");
        assert_eq!(
            bound(&Busy {
                cpu: Some(0.95),
                ..disk
            }),
            "CPU+disk"
        );
        assert_eq!(bound(&Busy { disk: None, ..b }), "unknown");
        assert_eq!(bound(&Busy { disk: None, ..cpu }), "CPU");
        // 80 % working and 12 % stolen: no CPU to spare.
        let stolen = Busy {
            cpu_steal: Some(0.12),
            ..b
        };
        assert_eq!(bound(&stolen), "CPU");
        assert_eq!(
            describe(&stolen),
            "CPU 80 % (12 % stolen), disk 75 % busy (7.2 in flight, 1000 MB/s): CPU"
        );
    }

    #[test]
    fn stolen_time_is_neither_work_nor_idle() {
        let mut before = snap((1000, 500, 100), (0, 0, 0, 0));
        let mut after = snap((1400, 520, 160), (0, 0, 0, 0));
        before.cpu.as_mut().unwrap().steal = 10;
        after.cpu.as_mut().unwrap().steal = 90;
        let b = busy(&before, &after, 2.0);
        // 400 ticks: 20 idle, 60 iowait, 80 stolen, 240 working.
        assert_eq!(b.cpu, Some(0.6));
        assert_eq!(b.cpu_iowait, Some(0.15));
        assert_eq!(b.cpu_steal, Some(0.2));
    }

    #[test]
    fn counters_that_went_missing_or_back_give_no_figure_and_no_panic() {
        let mut after = snap((1000, 500, 100), (0, 0, 100, 1000));
        after.disk = None;
        let b = busy(&snap((1000, 500, 100), (0, 0, 100, 1000)), &after, 1.0);
        assert_eq!(b.cpu, None, "no CPU time passed");
        assert_eq!(b.disk, None);
        let b = busy(
            &snap((1000, 500, 100), (9, 9, 900, 900)),
            &snap((1100, 450, 90), (0, 0, 0, 0)),
            1.0,
        );
        assert_eq!(b.cpu, Some(1.0));
        assert_eq!(b.disk.map(|d| d.util), Some(0.0));
    }

    #[test]
    fn rounds_fold_into_the_median_of_each_figure() {
        let d = |util: f64| DiskBusy {
            util,
            in_flight: util * 10.0,
            read_mb_s: 1.0,
            write_mb_s: 2.0,
        };
        let all = [
            Busy {
                cpu: Some(0.5),
                cpu_iowait: Some(0.1),
                cpu_steal: Some(0.0),
                disk: Some(d(0.2)),
            },
            Busy {
                cpu: Some(0.9),
                cpu_iowait: None,
                cpu_steal: None,
                disk: Some(d(0.6)),
            },
            Busy {
                cpu: Some(0.7),
                cpu_iowait: Some(0.3),
                cpu_steal: Some(0.1),
                disk: Some(d(1.0)),
            },
        ];
        let m = median_busy(&all);
        assert_eq!(m.cpu, Some(0.7));
        assert_eq!(m.cpu_iowait, Some(0.2));
        assert_eq!(m.cpu_steal, Some(0.05));
        assert_eq!(m.disk, Some(d(0.6)));
        assert_eq!(median_busy(&[]).cpu, None);
    }
}
