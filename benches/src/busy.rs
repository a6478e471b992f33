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

use gfs_proto::auth::AuthChannel;
use gfs_proto::wire::chunk::chunkserver_client::ChunkserverClient;
use gfs_proto::wire::chunk::{Empty, HostCounters};
use gfs_storage_engine::counters::{self, CpuTicks, DiskCounters};

use anyhow::Result;

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

/// Whether `b`'s CPUs were saturated: working and stolen time together
/// reached [`SATURATED`] (stolen time was wanted and not given).
fn cpu_saturated(b: &Busy) -> Option<bool> {
    b.cpu.map(|c| c + b.cpu_steal.unwrap_or(0.0) >= SATURATED)
}

fn disk_saturated(b: &Busy) -> Option<bool> {
    b.disk.map(|d| d.util >= SATURATED)
}

/// What bounded a measurement: `CPU`, `disk`, both, or `latency` when
/// neither was saturated (too little was in flight to keep either busy);
/// `unknown` without the counters. The CPUs count as saturated when
/// working and stolen time together reach [`SATURATED`]: stolen time was
/// wanted and not given.
pub fn bound(b: &Busy) -> &'static str {
    kind(cpu_saturated(b), disk_saturated(b))
}

/// What bounded a measurement against a cluster elsewhere: this (client)
/// host's CPUs and every chunkserver host's CPUs and devices, as [`bound`]
/// says for one host. A resource is saturated if it was on any host, and
/// not if it was on none with every host's figure known. Without servers,
/// [`bound`] of the client.
pub fn bound_with(client: &Busy, servers: &[ServerBusy]) -> &'static str {
    if servers.is_empty() {
        return bound(client);
    }
    // Some(true) if any, Some(false) if all known and none, else None.
    let any = |v: Vec<Option<bool>>| {
        if v.contains(&Some(true)) {
            Some(true)
        } else {
            v.iter().all(Option::is_some).then_some(false)
        }
    };
    let cpus = std::iter::once(client)
        .chain(servers.iter().map(|s| &s.busy))
        .map(cpu_saturated)
        .collect();
    let disks = servers.iter().map(|s| disk_saturated(&s.busy)).collect();
    kind(any(cpus), any(disks))
}

/// Where a measurement against a cluster elsewhere saturated something:
/// `client CPU`, `ADDR CPU`, `ADDR disk`, in that order (empty without
/// servers: the one host is all there is).
pub fn saturated_at(client: &Busy, servers: &[ServerBusy]) -> Vec<String> {
    if servers.is_empty() {
        return Vec::new();
    }
    let mut at = Vec::new();
    if cpu_saturated(client) == Some(true) {
        at.push("client CPU".to_string());
    }
    for s in servers {
        if cpu_saturated(&s.busy) == Some(true) {
            at.push(format!("{} CPU", s.addr));
        }
        if disk_saturated(&s.busy) == Some(true) {
            at.push(format!("{} disk", s.addr));
        }
    }
    at
}

fn kind(cpu: Option<bool>, disk: Option<bool>) -> &'static str {
    match (cpu, disk) {
        (Some(true), Some(true)) => "CPU+disk",
        (Some(true), _) => "CPU",
        (_, Some(true)) => "disk",
        (Some(false), Some(false)) => "latency",
        _ => "unknown",
    }
}

/// A measurement's figures for a table: `CPU 83 % (10 % stolen), disk 90 %
/// busy (11.2 in flight, 1741 MB/s)`.
pub fn figures(b: &Busy) -> String {
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
    format!("{cpu}{disk}")
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

/// A chunkserver's host during one measurement: its CPUs, and its busiest
/// device (by the share of the time it was busy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerBusy {
    pub addr: String,
    #[serde(flatten)]
    pub busy: Busy,
}

/// A chunkserver host's counters at one instant, as it reported them.
#[derive(Debug, Clone)]
pub struct ServerSnapshot {
    pub addr: String,
    pub at: Instant,
    pub cpu: Option<CpuTicks>,
    pub devices: Vec<DiskCounters>,
}

/// What each server's host was busy with between two snapshots of all of
/// them (matched by address; a server missing from either is left out).
pub fn servers_between(before: &[ServerSnapshot], after: &[ServerSnapshot]) -> Vec<ServerBusy> {
    let mut out = Vec::new();
    for a in after {
        let Some(b) = before.iter().find(|b| b.addr == a.addr) else {
            continue;
        };
        let secs = (a.at - b.at).as_secs_f64();
        let snap = |s: &ServerSnapshot, disk| Snapshot {
            at: s.at,
            cpu: s.cpu,
            disk,
        };
        let mut busy = self::busy(&snap(b, None), &snap(a, None), secs);
        // The busiest of its devices (the same ones, in the same order).
        busy.disk = (b.devices.len() == a.devices.len())
            .then(|| {
                b.devices
                    .iter()
                    .zip(&a.devices)
                    .filter_map(|(db, da)| {
                        self::busy(&snap(b, Some(*db)), &snap(a, Some(*da)), secs).disk
                    })
                    .max_by(|x, y| x.util.total_cmp(&y.util))
            })
            .flatten();
        out.push(ServerBusy {
            addr: a.addr.clone(),
            busy,
        });
    }
    out
}

/// A chunkserver host's figures for the table: `cs ADDR: CPU 43 % (2 %
/// stolen), disk 91 % busy (6.3 in flight, 2210 MB/s)`.
/// Without its own bound: the measurement's names every host's.
pub fn server_line(s: &ServerBusy) -> String {
    format!("cs {}: {}", s.addr, figures(&s.busy))
}

/// What bounded a measurement, and where when on a cluster elsewhere:
/// `disk (10.0.0.3:7100 disk)`.
pub fn bound_where(bound: &str, at: &[String]) -> String {
    match at {
        [] => bound.to_string(),
        at => format!("{bound} ({})", at.join(", ")),
    }
}

/// The median of each server's figures over several measurements, the
/// servers in the order they first appear.
pub fn median_servers(all: &[Vec<ServerBusy>]) -> Vec<ServerBusy> {
    let mut addrs: Vec<&str> = Vec::new();
    for s in all.iter().flatten() {
        if !addrs.contains(&s.addr.as_str()) {
            addrs.push(&s.addr);
        }
    }
    addrs
        .into_iter()
        .map(|addr| {
            let of: Vec<Busy> = all
                .iter()
                .flatten()
                .filter(|s| s.addr == addr)
                .map(|s| s.busy)
                .collect();
            ServerBusy {
                addr: addr.to_string(),
                busy: median_busy(&of),
            }
        })
        .collect()
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

/// This host's probe and, for a cluster elsewhere, its chunkservers'.
#[derive(Debug, Clone)]
pub struct Probes {
    pub host: Probe,
    pub servers: ServerProbe,
}

/// The counters of this host and of the servers at one instant.
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub host: Snapshot,
    pub servers: Vec<ServerSnapshot>,
}

impl Probes {
    /// The probes of a cluster's measurements: for one started on this
    /// host (`local_dir`, where its data is), this host and that
    /// directory's device; for one elsewhere, this host's CPUs and the
    /// live chunkservers of the cluster `m` leads (the leader's fsck of
    /// `path` lists every server, whatever the path holds).
    pub async fn of_cluster(
        local_dir: Option<&Path>,
        m: &gfs_client::MasterClient,
        path: &str,
    ) -> Result<Self> {
        let servers = match local_dir {
            Some(_) => ServerProbe::default(),
            None => {
                let r = m.fsck(path, false).await?;
                let live: Vec<String> = r
                    .servers
                    .into_iter()
                    .filter(|s| s.live)
                    .map(|s| s.addr)
                    .collect();
                ServerProbe::of(&live)
            }
        };
        Ok(Probes {
            host: Probe::of(local_dir),
            servers,
        })
    }

    /// The counters before a measurement: the servers' first, so this
    /// host's instant is the measurement's start.
    pub async fn before(&self) -> Snapshots {
        let servers = self.servers.snapshot().await;
        Snapshots {
            host: self.host.snapshot(),
            servers,
        }
    }

    /// The counters after a measurement: this host's first, at its end.
    pub async fn after(&self) -> Snapshots {
        let host = self.host.snapshot();
        Snapshots {
            host,
            servers: self.servers.snapshot().await,
        }
    }
}

/// What this host and each server were busy with between two snapshots.
pub fn all_between(before: &Snapshots, after: &Snapshots) -> (Busy, Vec<ServerBusy>) {
    (
        between(&before.host, &after.host),
        servers_between(&before.servers, &after.servers),
    )
}

/// Reads the counters of a cluster's chunkserver hosts over RPC
/// (`Counters`), for a cluster elsewhere: what this host's own counters
/// cannot see.
#[derive(Debug, Clone, Default)]
pub struct ServerProbe {
    servers: Vec<(String, ChunkserverClient<AuthChannel>)>,
}

/// How long a snapshot waits for a server's counters; one that has not
/// answered by then is left out of it.
const COUNTERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl ServerProbe {
    /// For the chunkservers at `addrs` (a bad address is left out), with
    /// the cluster token `GFS_AUTH_TOKEN_FILE` names, if any (a token
    /// that cannot be read leaves every server's counters unknown, as the
    /// clients of the run fail with the reason).
    pub fn of(addrs: &[String]) -> Self {
        let token = gfs_proto::auth::token_from_env().ok().flatten();
        let client = |a: &str| gfs_proto::wire::chunk_client_from(a, None, token.as_ref()).ok();
        let servers = addrs
            .iter()
            .filter_map(|a| Some((a.clone(), client(a)?)))
            .collect();
        ServerProbe { servers }
    }

    /// Every server's counters now, asked of all at once.
    pub async fn snapshot(&self) -> Vec<ServerSnapshot> {
        let mut asks = tokio::task::JoinSet::new();
        for (addr, c) in &self.servers {
            let (addr, mut c) = (addr.clone(), c.clone());
            asks.spawn(async move {
                let got = tokio::time::timeout(COUNTERS_TIMEOUT, c.counters(Empty {})).await;
                let at = Instant::now();
                let Ok(Ok(r)) = got else {
                    return None;
                };
                Some(server_snapshot(addr, at, r.into_inner()))
            });
        }
        let mut all = Vec::new();
        while let Some(r) = asks.join_next().await {
            all.extend(r.ok().flatten());
        }
        all.sort_by(|a: &ServerSnapshot, b| a.addr.cmp(&b.addr));
        all
    }
}

/// A server's reply as a snapshot taken `at`.
fn server_snapshot(addr: String, at: Instant, r: HostCounters) -> ServerSnapshot {
    ServerSnapshot {
        addr,
        at,
        cpu: r.cpu.map(|c| CpuTicks {
            total: c.total,
            idle: c.idle,
            iowait: c.iowait,
            steal: c.steal,
        }),
        devices: r
            .devices
            .iter()
            .map(|d| DiskCounters {
                read_sectors: d.read_sectors,
                write_sectors: d.write_sectors,
                busy_ms: d.busy_ms,
                queue_ms: d.queue_ms,
            })
            .collect(),
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
            figures(&b),
            "CPU 80 %, disk 75 % busy (7.2 in flight, 1000 MB/s)"
        );
        assert_eq!(figures(&Busy { disk: None, ..b }), "CPU 80 %");
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
            figures(&stolen),
            "CPU 80 % (12 % stolen), disk 75 % busy (7.2 in flight, 1000 MB/s)"
        );
        assert_eq!(bound_where("CPU", &[]), "CPU");
        let at = ["client CPU".to_string(), "cs2 disk".to_string()];
        assert_eq!(
            bound_where("CPU+disk", &at),
            "CPU+disk (client CPU, cs2 disk)"
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

    fn server(addr: &str, at: Instant, cpu: (u64, u64), devices: &[(u64, u64)]) -> ServerSnapshot {
        ServerSnapshot {
            addr: addr.into(),
            at,
            cpu: Some(CpuTicks {
                total: cpu.0,
                idle: cpu.1,
                iowait: 0,
                steal: 0,
            }),
            devices: devices
                .iter()
                .map(|&(busy_ms, write_sectors)| DiskCounters {
                    write_sectors,
                    busy_ms,
                    queue_ms: busy_ms * 2,
                    ..DiskCounters::default()
                })
                .collect(),
        }
    }

    #[test]
    fn each_server_is_judged_by_its_cpus_and_its_busiest_device() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(2);
        let before = [
            server("cs1", t0, (1000, 500), &[(0, 0), (100, 0)]),
            server("cs2", t0, (1000, 900), &[(0, 0)]),
            server("gone", t0, (1000, 900), &[]),
        ];
        let after = [
            // 400 ticks, 40 idle: 90 % working; devices busy 0.5 s and 1.9 s.
            server("cs1", t1, (1400, 540), &[(500, 4_000_000), (2000, 0)]),
            // A device more than before: no device figure, the CPUs still.
            server("cs2", t1, (1400, 1260), &[(100, 0), (100, 0)]),
            server("new", t1, (1400, 1260), &[]),
        ];
        let got = servers_between(&before, &after);
        let addrs: Vec<&str> = got.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(addrs, ["cs1", "cs2"]);
        assert_eq!(got[0].busy.cpu, Some(0.9));
        let d = got[0].busy.disk.unwrap();
        assert_eq!((d.util, d.in_flight, d.write_mb_s), (0.95, 1.9, 0.0));
        assert_eq!(got[1].busy.cpu, Some(0.1));
        assert_eq!(got[1].busy.disk, None);
        let client = Busy {
            cpu: Some(0.5),
            ..Busy::default()
        };
        // Saturated on one host is saturated, whatever another's figures.
        assert_eq!(bound_with(&client, &got), "CPU+disk");
        assert_eq!(saturated_at(&client, &got), ["cs1 CPU", "cs1 disk"]);
        // Nothing saturated, and a device not known: unknown, not latency.
        assert_eq!(bound_with(&client, &got[1..]), "unknown");
        // No servers: this host alone, as `bound` says.
        assert_eq!(bound_with(&client, &[]), "unknown");
        assert!(saturated_at(&client, &[]).is_empty());
        let median = median_servers(&[got.clone(), got[1..].to_vec(), got.clone()]);
        assert_eq!(median, got);
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
