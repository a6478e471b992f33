//! The kernel's counters of this host's CPUs (`/proc/stat`) and of the
//! block device under a directory (`/sys/dev/block/M:m/stat`, the fields
//! of `/proc/diskstats`): what a chunkserver reports of its host, and what
//! `gfs-bench` reads to say what bounded a measurement. The parsing is
//! pure; [`cpu`], [`device_stat`] and [`disk`] read the files.

use std::path::{Path, PathBuf};

/// CPU time since boot, all CPUs together, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    pub total: u64,
    pub idle: u64,
    pub iowait: u64,
    /// Time the hypervisor gave this VM's CPUs to something else (0 where
    /// the kernel does not count it).
    pub steal: u64,
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq
/// softirq steal ...` (guest time is already counted in user time).
pub fn parse_cpu(proc_stat: &str) -> Option<CpuTicks> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v = numbers(&line[3..], 5, 8)?;
    Some(CpuTicks {
        total: v.iter().sum(),
        idle: v[3],
        iowait: v[4],
        steal: v.get(7).copied().unwrap_or(0),
    })
}

/// The first `most` whitespace-separated numbers of `fields`, if there
/// are at least `least` and all of them parse.
fn numbers(fields: &str, least: usize, most: usize) -> Option<Vec<u64>> {
    let v: Vec<u64> = fields
        .split_whitespace()
        .take(most)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() >= least).then_some(v)
}

/// A block device's counters since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskCounters {
    pub read_sectors: u64,
    pub write_sectors: u64,
    /// Milliseconds with at least one request in flight.
    pub busy_ms: u64,
    /// Milliseconds of requests in flight, summed over the requests.
    pub queue_ms: u64,
}

/// `/sys/dev/block/M:m/stat`: reads, read merges, read sectors, read ms,
/// writes, write merges, write sectors, write ms, in flight, busy ms,
/// queue ms, ... (sectors of 512 bytes whatever the device's own).
pub fn parse_disk(stat: &str) -> Option<DiskCounters> {
    let v = numbers(stat, 11, 11)?;
    Some(DiskCounters {
        read_sectors: v[2],
        write_sectors: v[6],
        busy_ms: v[9],
        queue_ms: v[10],
    })
}

/// This host's CPU counters now (`None` where `/proc/stat` is unreadable
/// or not as expected).
pub fn cpu() -> Option<CpuTicks> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(parse_cpu)
}

/// The stat file of the block device holding `dir`, if it has one (a
/// directory on tmpfs or overlayfs has none).
pub fn device_stat(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let p = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    p.exists().then_some(p)
}

/// A device's counters now, from its stat file (see [`device_stat`]).
pub fn disk(stat: &Path) -> Option<DiskCounters> {
    std::fs::read_to_string(stat)
        .ok()
        .as_deref()
        .and_then(parse_disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_disk_counters_parse_from_the_kernels_formats() {
        let stat = "cpu  100 5 50 800 40 3 2 7 0 0\ncpu0 50 2 25 400 20 1 1 3 0 0\nintr 1\n";
        assert_eq!(
            parse_cpu(stat),
            Some(CpuTicks {
                total: 1007,
                idle: 800,
                iowait: 40,
                steal: 7
            })
        );
        // An old kernel's five fields: no steal counted.
        assert_eq!(parse_cpu("cpu  1 2 3 4 5\n").map(|c| c.steal), Some(0));
        assert_eq!(parse_cpu("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_cpu("cpu  1 2 x 4 5\n"), None);
        let disk = " 3230883    88013 2985441570 34191119  6153692   257091 3340478760  \
                    9648134        0  2118924 44652049   268140      227 2961828624";
        assert_eq!(
            parse_disk(disk),
            Some(DiskCounters {
                read_sectors: 2985441570,
                write_sectors: 3340478760,
                busy_ms: 2118924,
                queue_ms: 44652049
            })
        );
        assert_eq!(parse_disk("1 2 3"), None);
    }

    #[test]
    fn this_hosts_counters_read_without_a_panic() {
        // Linux has /proc/stat; a temporary directory may have no device.
        assert!(cpu().is_some_and(|c| c.total > 0));
        let dir = tempfile::tempdir().unwrap();
        if let Some(stat) = device_stat(dir.path()) {
            assert!(disk(&stat).is_some(), "{}", stat.display());
        }
        assert_eq!(device_stat(&dir.path().join("missing")), None);
    }
}
