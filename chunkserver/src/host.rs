//! What a chunkserver tells of its host (`Counters`): the kernel's counters
//! of its CPUs and of each block device under its data directories, so a
//! benchmark run from elsewhere can say what a measurement kept busy here.

use std::path::PathBuf;

use gfs_proto::wire::chunk::{CpuTicks, DeviceCounters, HostCounters};
use gfs_storage_engine::counters;

/// The counters now. Data directories on one device are reported once,
/// together; a directory with no block device under it (tmpfs) is left
/// out.
pub fn counters_now(dirs: &[PathBuf]) -> HostCounters {
    let mut devices: Vec<(PathBuf, DeviceCounters)> = Vec::new();
    for dir in dirs {
        let Some(stat) = counters::device_stat(dir) else {
            continue;
        };
        let name = dir.display().to_string();
        if let Some((_, d)) = devices.iter_mut().find(|(s, _)| *s == stat) {
            d.dirs.push(name);
            continue;
        }
        let Some(c) = counters::disk(&stat) else {
            continue;
        };
        let d = DeviceCounters {
            dirs: vec![name],
            read_sectors: c.read_sectors,
            write_sectors: c.write_sectors,
            busy_ms: c.busy_ms,
            queue_ms: c.queue_ms,
        };
        devices.push((stat, d));
    }
    HostCounters {
        cpu: counters::cpu().map(|c| CpuTicks {
            total: c.total,
            idle: c.idle,
            iowait: c.iowait,
            steal: c.steal,
        }),
        devices: devices.into_iter().map(|(_, d)| d).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_on_one_device_are_reported_once_together() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let gone = a.path().join("gone");
        let dirs = [a.path().to_path_buf(), gone, b.path().to_path_buf()];
        let c = counters_now(&dirs);
        assert!(c.cpu.is_some_and(|c| c.total >= c.idle));
        if counters::device_stat(a.path()).is_some() {
            // Both temporary directories are on one filesystem.
            assert_eq!(c.devices.len(), 1);
            let names = [a.path(), b.path()].map(|p| p.display().to_string());
            assert_eq!(c.devices[0].dirs, names);
        } else {
            assert!(c.devices.is_empty());
        }
    }
}
