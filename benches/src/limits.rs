//! `gfs-bench limits`: this machine's ceilings, and the limits of the
//! Figure 3 benchmarks computed from them (`figure3` judges every point
//! against ceilings it samples with [`ceilings`] around it).
//!
//! Ceilings (`limits`): O_DIRECT sequential write and read bandwidth of
//! each data directory (the best of 8 and 32 requests in flight:
//! `raw::ceiling`), loopback TCP bandwidth between two processes, and the
//! CRC32C throughput of one core. With `--tcp-to`, TCP is measured to a
//! `gfs-bench tcp-sink --listen` on another host instead: a host of a real
//! cluster measures its link so, and `figure3 --hosts` computes the
//! cluster's limits from those hosts' figures (`crate::hosts`).
//!
//! Limits (how each is computed, with R the replication factor the cluster
//! gives the benchmark's files, asked of it: 3 for the local cluster):
//! - read: min(device read, TCP): every byte is read from a disk once and
//!   crosses loopback once. The device read is the better of the scratch
//!   file's sequential read and, for a local cluster, random 1 MiB reads of
//!   the read set's own chunk files (`raw::read_spread`): on a virtual disk
//!   the two differ, and the limit is what the device gives for the data
//!   the benchmark reads;
//! - write and append: min(device write, TCP) / R: every byte lands on a
//!   disk R times and crosses loopback R times (client to the first replica,
//!   then along the chain). On one host all replicas share the disk. The
//!   device write is the better of a pass extending a fresh file and one
//!   over its blocks, which on ext4 is the faster.
//!
//! Writes and appends fill new chunk files, and a filesystem may take new
//! blocks slower than written ones (the development VM's ext4: ~2 GB/s
//! against 2.3-2.5). So each write and append point is also judged against
//! min(device write into new files, TCP) / R (`new_blocks_limit`,
//! `raw::new_blocks_write`), reported beside the efficiency: it says how
//! much of a shortfall is the filesystem's allocation of new blocks.
//!
//! A cluster `figure3` starts runs its clients, masters and chunkservers on
//! this host's CPUs, and each ceiling above was measured with the whole
//! machine to itself: on a 2-core VM the loopback TCP ceiling alone keeps
//! both cores busy. So each point of a local cluster is also judged against
//! the **CPU limit** (`cpu_limit`): every core spent on nothing but what
//! each byte cannot avoid, at the CPU cost per MB the ceilings measured
//! (host-wide CPU time from `/proc/stat`, stolen time left out, during the TCP and device
//! measurements; the CRC32C rate of one core):
//! - read: cores / (one loopback hop + device I/O + one CRC32C) per MB;
//! - write and append: cores / (R x (hop + device I/O + CRC32C)) per MB.
//!
//! It leaves out everything else the system does (RPCs, task wake-ups,
//! the client's own work), so it is an upper bound, and a ratio against it
//! says how much of the CPU went to overhead beyond those copies. It is
//! reported beside the efficiency, which stays against the limits above.

use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{busy, fill_random, mb_s, median, raw};

const MIB: u64 = 1 << 20;
/// The local cluster's replication factor, and the one the limits
/// `gfs-bench limits` prints assume.
const LOCAL_REPLICATION: u32 = 3;

#[derive(clap::Args, Debug, Clone)]
pub struct LimitsArgs {
    /// Data directories to measure (comma-separated): each on its own and,
    /// with several, all at once (what a host's disks give together).
    #[arg(long, value_delimiter = ',', default_value = "gfs-data")]
    pub dirs: Vec<PathBuf>,
    /// Bytes per disk and TCP measurement.
    #[arg(long, default_value_t = 512 << 20)]
    pub size: u64,
    /// Measure TCP to `gfs-bench tcp-sink --listen ADDR` on another host
    /// (the network a chunkserver host or a client host has to the
    /// cluster) instead of loopback between two processes of this one.
    #[arg(long, value_name = "ADDR")]
    pub tcp_to: Option<String>,
    /// TCP streams sent at once (one NIC may need several to fill; default
    /// 1 over loopback, 4 with --tcp-to).
    #[arg(long)]
    pub tcp_streams: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskLimit {
    pub dir: String,
    pub write_mb_s: f64,
    /// Filling new files (`raw::new_blocks_write`), as chunk files are.
    pub new_blocks_write_mb_s: f64,
    pub read_mb_s: f64,
    /// MB the device ceiling moved per CPU-second of this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_mb_per_cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub bench: &'static str,
    pub disks: Vec<DiskLimit>,
    /// With several data directories: all of them measured at once, `dir`
    /// naming them all. What a host's disks give together (a chunkserver
    /// uses them all at once), which is less than their ceilings added up
    /// where they share a controller or a bus (`raw::ceiling`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub together: Option<DiskLimit>,
    /// Random 1 MiB O_DIRECT reads of a local cluster's chunk files, where
    /// a benchmark has data to read (`raw::read_spread`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_read_mb_s: Option<f64>,
    pub tcp_mb_s: f64,
    /// Where TCP was measured to (`--tcp-to`); none for loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_to: Option<String>,
    /// MB sent over loopback per CPU-second this host spent on it (sender,
    /// receiver and kernel together).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_mb_per_cpu_s: Option<f64>,
    pub crc32c_mb_s: f64,
    /// This host's CPUs.
    pub cores: usize,
}

impl Limits {
    /// The slowest directory's figure `f`.
    fn slowest(&self, f: fn(&DiskLimit) -> f64) -> f64 {
        self.disks.iter().map(f).fold(f64::INFINITY, f64::min)
    }

    pub(crate) fn disk_write(&self) -> f64 {
        self.slowest(|d| d.write_mb_s)
    }

    pub(crate) fn disk_new_blocks_write(&self) -> f64 {
        self.slowest(|d| d.new_blocks_write_mb_s)
    }

    /// The slowest directory's sequential read, or the reads of the
    /// benchmark's own data where they were measured and are faster.
    fn disk_read(&self) -> f64 {
        self.sequential_read()
            .max(self.data_read_mb_s.unwrap_or(0.0))
    }

    /// The slowest directory's sequential read of its scratch file.
    pub(crate) fn sequential_read(&self) -> f64 {
        self.slowest(|d| d.read_mb_s)
    }

    /// What the TCP ceiling was measured over.
    pub(crate) fn tcp_name(&self) -> String {
        match &self.tcp_to {
            Some(to) => format!("TCP to {to}"),
            None => "loopback TCP".to_string(),
        }
    }

    /// The limit for `bench` at replication `r`, from the ceilings (see
    /// the module comment).
    pub fn limit(&self, bench: &str, r: u32) -> f64 {
        match bench {
            "read" => self.disk_read().min(self.tcp_mb_s),
            _ => self.disk_write().min(self.tcp_mb_s) / f64::from(r),
        }
    }

    /// For writes and appends, the limit if the disk were only as fast as
    /// it fills new files (see the module comment); `None` for reads.
    pub fn new_blocks_limit(&self, bench: &str, r: u32) -> Option<f64> {
        (bench != "read").then(|| self.disk_new_blocks_write().min(self.tcp_mb_s) / f64::from(r))
    }

    /// MB of device I/O per CPU-second in the dearest directory; `None`
    /// unless every directory has the figure.
    fn io_mb_per_cpu_s(&self) -> Option<f64> {
        let each: Option<Vec<f64>> = self.disks.iter().map(|d| d.io_mb_per_cpu_s).collect();
        Some(each?.into_iter().fold(f64::INFINITY, f64::min))
    }

    /// What this host's CPUs allow when the clients and every server share
    /// them (see the module comment): all cores spent on nothing but each
    /// byte's loopback hops, device I/O and one CRC32C per hop, at the CPU
    /// cost per MB the ceilings measured. `None` without the CPU figures.
    pub fn cpu_limit(&self, bench: &str, r: u32) -> Option<f64> {
        let per_hop =
            1.0 / self.tcp_mb_per_cpu_s? + 1.0 / self.io_mb_per_cpu_s()? + 1.0 / self.crc32c_mb_s;
        let hops = if bench == "read" { 1.0 } else { f64::from(r) };
        Some(self.cores as f64 / (hops * per_hop))
    }
}

/// TCP bandwidth: `streams` connections at once send `size` bytes in all
/// to a sink that discards them, and the MB sent per CPU-second this host
/// spent meanwhile. Without `to`, over loopback to a child process
/// (`gfs-bench tcp-sink`), whose CPU time is this host's too; with `to`,
/// to a `gfs-bench tcp-sink --listen` elsewhere (then the CPU figure,
/// which would count only the sending side, is left out).
fn tcp_bandwidth(
    size: u64,
    to: Option<&str>,
    streams: Option<usize>,
) -> Result<(f64, Option<f64>)> {
    let streams = streams_to(to, streams);
    anyhow::ensure!(
        (1..=64).contains(&streams),
        "--tcp-streams must be 1 to 64, not {streams}"
    );
    if let Some(addr) = to {
        let mb_s = send_to_sink(addr, size, streams)
            .with_context(|| format!("measuring TCP to the sink at {addr}"))?
            .0;
        return Ok((mb_s, None));
    }
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("tcp-sink")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the TCP sink")?;
    let result = (|| -> Result<(f64, Option<f64>)> {
        let mut line = String::new();
        let out = child.stdout.as_mut().context("sink stdout")?;
        let mut byte = [0u8; 1];
        while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        let (mb_s, cpu_s) = send_to_sink(line.trim(), size, streams)?;
        let per_cpu_s = cpu_s.filter(|s| *s > 0.0).map(|s| size as f64 / 1e6 / s);
        Ok((mb_s, per_cpu_s))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Loopback TCP bandwidth between this process and a sink process of its
/// own (one stream, `size` bytes), MB/s: the ceiling of each hop between
/// a local cluster's clients and servers.
pub(crate) fn loopback_ceiling(size: u64) -> Result<f64> {
    Ok(tcp_bandwidth(size, None, None)?.0)
}

/// TCP streams to a sink on another host unless told otherwise: one
/// stream rarely fills a fast link (one core copies it), and the clients
/// of a benchmark use many connections at once.
pub(crate) const REMOTE_STREAMS: usize = 4;

/// The streams a TCP ceiling sends over: `given`, else one over loopback
/// (`to` none) and [`REMOTE_STREAMS`] to another host.
fn streams_to(to: Option<&str>, given: Option<usize>) -> usize {
    given.unwrap_or(if to.is_some() { REMOTE_STREAMS } else { 1 })
}

/// TCP bandwidth to the sink at `to` over `streams` connections (by
/// default [`REMOTE_STREAMS`]), MB/s.
pub(crate) fn tcp_ceiling(size: u64, to: &str, streams: Option<usize>) -> Result<f64> {
    Ok(tcp_bandwidth(size, Some(to), streams)?.0)
}

/// How long a sink may take to answer a connection, or to take the next
/// bytes, before the measurement fails.
const SINK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `size` bytes of random data over `streams` connections at once to
/// the sink at `addr`, each waiting for the sink's word that it read
/// everything: the MB/s, and the host's CPU-seconds meanwhile.
fn send_to_sink(addr: &str, size: u64, streams: usize) -> Result<(f64, Option<f64>)> {
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let s = std::net::TcpStream::connect_timeout(&target, SINK_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(SINK_TIMEOUT))?;
        s.set_read_timeout(Some(SINK_TIMEOUT))?;
        conns.push(s);
    }
    let mut buf = vec![0u8; MIB as usize];
    fill_random(&mut buf, 3);
    let buf = &buf;
    let each = size.div_ceil(streams as u64);
    let start = Instant::now();
    let (sent, cpu_s) = busy::cpu_seconds(|| -> Result<u64> {
        std::thread::scope(|scope| {
            let senders: Vec<_> = conns
                .into_iter()
                .map(|mut s| {
                    scope.spawn(move || -> Result<u64> {
                        let mut left = each;
                        while left > 0 {
                            let n = left.min(buf.len() as u64) as usize;
                            s.write_all(&buf[..n])?;
                            left -= n as u64;
                        }
                        s.shutdown(std::net::Shutdown::Write)?;
                        // The sink answers once it has read everything.
                        let mut answer = [0u8; 1];
                        s.read_exact(&mut answer)
                            .context("the sink did not confirm it read everything")?;
                        Ok(each)
                    })
                })
                .collect();
            let mut total = 0;
            for sender in senders {
                total += sender
                    .join()
                    .map_err(|_| anyhow::anyhow!("a TCP sender panicked"))??;
            }
            Ok(total)
        })
    });
    Ok((mb_s(sent?, start.elapsed()), cpu_s))
}

/// The sink of the TCP ceiling: prints the address it listens on, then,
/// for every connection, reads until EOF and answers one byte. Without
/// `listen`, on loopback, for one `limits` run (which stops it); with
/// `listen` (as `0.0.0.0:7100` on a host of the cluster), until killed.
pub fn tcp_sink(listen: Option<&str>) -> Result<()> {
    let l = std::net::TcpListener::bind(listen.unwrap_or("127.0.0.1:0"))
        .with_context(|| format!("listening on {}", listen.unwrap_or("127.0.0.1:0")))?;
    println!("{}", l.local_addr()?);
    std::io::stdout().flush()?;
    serve_sink(&l);
    Ok(())
}

/// Serves [`tcp_sink`]'s connections on `l`, each on a thread of its own.
fn serve_sink(l: &std::net::TcpListener) {
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        // A sender that goes quiet is dropped, not waited for forever.
        if s.set_read_timeout(Some(SINK_TIMEOUT)).is_err() {
            continue;
        }
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MIB as usize];
            let drained = (|| -> std::io::Result<()> {
                while s.read(&mut buf)? > 0 {}
                s.write_all(b"k")
            })();
            if let Err(e) = drained {
                eprintln!("tcp-sink: a sender's connection failed: {e}");
            }
        });
    }
}

pub(crate) fn crc_bandwidth() -> f64 {
    let mut buf = vec![0u8; 64 * MIB as usize];
    fill_random(&mut buf, 5);
    let start = Instant::now();
    let mut x = 0u32;
    for _ in 0..8 {
        x ^= gfs_proto::crc::crc32c(&buf);
    }
    std::hint::black_box(x);
    mb_s(8 * 64 * MIB, start.elapsed())
}

/// The largest of `v` (NaN for none).
fn best(v: Vec<f64>) -> f64 {
    v.into_iter().reduce(f64::max).unwrap_or(f64::NAN)
}

impl Limits {
    /// Ceilings measured several times in one run: the median of each.
    pub(crate) fn median_of(samples: &[Limits]) -> Limits {
        Self::fold(samples, median)
    }

    /// The best of each ceiling over `samples`: what the device showed it
    /// could do at that time.
    pub(crate) fn best_of(samples: &[Limits]) -> Limits {
        Self::fold(samples, best)
    }

    fn fold(samples: &[Limits], pick: fn(Vec<f64>) -> f64) -> Limits {
        let each = |f: &dyn Fn(&Limits) -> f64| pick(samples.iter().map(f).collect());
        // Of the samples that have the figure (none: left out).
        let some = |f: &dyn Fn(&Limits) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| pick(v))
        };
        let first = &samples[0];
        // Each disk's figures of the samples that have the disk.
        let disk = |of: &dyn Fn(&Limits) -> Option<&DiskLimit>| {
            let d: Vec<&DiskLimit> = samples.iter().filter_map(of).collect();
            let figure = |f: fn(&DiskLimit) -> f64| pick(d.iter().map(|d| f(d)).collect());
            let io: Vec<f64> = d.iter().filter_map(|d| d.io_mb_per_cpu_s).collect();
            Some(DiskLimit {
                dir: d.first()?.dir.clone(),
                write_mb_s: figure(|d| d.write_mb_s),
                new_blocks_write_mb_s: figure(|d| d.new_blocks_write_mb_s),
                read_mb_s: figure(|d| d.read_mb_s),
                io_mb_per_cpu_s: (!io.is_empty()).then(|| pick(io)),
            })
        };
        Limits {
            bench: first.bench,
            disks: (0..first.disks.len())
                .filter_map(|i| disk(&|l| l.disks.get(i)))
                .collect(),
            together: disk(&|l| l.together.as_ref()),
            data_read_mb_s: some(&|l| l.data_read_mb_s),
            tcp_mb_s: each(&|l| l.tcp_mb_s),
            tcp_to: first.tcp_to.clone(),
            tcp_mb_per_cpu_s: some(&|l| l.tcp_mb_per_cpu_s),
            crc32c_mb_s: each(&|l| l.crc32c_mb_s),
            cores: first.cores,
        }
    }
}

pub fn limits(args: &LimitsArgs) -> Result<Limits> {
    ceilings(args, crc_bandwidth())
}

/// The disk and TCP ceilings, with the CRC32C figure measured elsewhere (a
/// machine's CPU does not drift the way its disk does, so `figure3`
/// measures it once per run).
pub(crate) fn ceilings(args: &LimitsArgs, crc32c_mb_s: f64) -> Result<Limits> {
    let measure = |dirs: &[&Path]| -> Result<DiskLimit> {
        let c = raw::ceiling(dirs, args.size, MIB as usize)?;
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        Ok(DiskLimit {
            dir: names.join(","),
            write_mb_s: c.write,
            new_blocks_write_mb_s: c.new_blocks_write,
            read_mb_s: c.read,
            io_mb_per_cpu_s: c.io_mb_per_cpu_s,
        })
    };
    let mut disks = Vec::new();
    for dir in &args.dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        disks.push(measure(&[dir])?);
    }
    let all: Vec<&Path> = args.dirs.iter().map(PathBuf::as_path).collect();
    let together = if all.len() > 1 {
        Some(measure(&all)?)
    } else {
        None
    };
    let (tcp_mb_s, tcp_mb_per_cpu_s) =
        tcp_bandwidth(args.size, args.tcp_to.as_deref(), args.tcp_streams)?;
    Ok(Limits {
        bench: "limits",
        disks,
        together,
        data_read_mb_s: None,
        tcp_mb_s,
        tcp_to: args.tcp_to.clone(),
        tcp_mb_per_cpu_s,
        crc32c_mb_s,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

pub fn print_limits(l: &Limits) {
    for d in &l.disks {
        println!(
            "disk {}: O_DIRECT write {:.0} MB/s (into new files {:.0}), read {:.0} MB/s",
            d.dir, d.write_mb_s, d.new_blocks_write_mb_s, d.read_mb_s
        );
    }
    if let Some(t) = &l.together {
        println!(
            "all {} disks at once: O_DIRECT write {:.0} MB/s (into new files {:.0}), read {:.0} MB/s",
            l.disks.len(),
            t.write_mb_s,
            t.new_blocks_write_mb_s,
            t.read_mb_s
        );
    }
    println!(
        "{} {:.0} MB/s, CRC32C one core {:.0} MB/s",
        l.tcp_name(),
        l.tcp_mb_s,
        l.crc32c_mb_s
    );
    if l.tcp_to.is_some() {
        println!(
            "as a chunkserver host of a cluster: give this output (with --json) to `figure3 \
             --masters ... --hosts FILE,...`, one file per host"
        );
        return;
    }
    println!(
        "limits: read {:.0} MB/s, write and append {:.0} MB/s (replication {LOCAL_REPLICATION}; \
         {:.0} from the write into new files)",
        l.limit("read", LOCAL_REPLICATION),
        l.limit("write", LOCAL_REPLICATION),
        l.new_blocks_limit("write", LOCAL_REPLICATION)
            .unwrap_or(f64::NAN)
    );
    if let Some(line) = cpu_costs(l, LOCAL_REPLICATION) {
        println!("{line}");
    }
}

/// The CPU costs the ceilings measured, and the CPU limits from them at
/// replication `r`.
pub(crate) fn cpu_costs(l: &Limits, r: u32) -> Option<String> {
    Some(format!(
        "CPU, {} cores: {:.2} ms a MB over loopback, {:.2} of device I/O, {:.2} of CRC32C; \
         a cluster on this host can do at most read {:.0} MB/s, write and append {:.0} MB/s",
        l.cores,
        1e3 / l.tcp_mb_per_cpu_s?,
        1e3 / l.io_mb_per_cpu_s()?,
        1e3 / l.crc32c_mb_s,
        l.cpu_limit("read", r)?,
        l.cpu_limit("write", r)?,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// With CPU costs per MB of 1 ms a hop over loopback, 0.5 ms of device
    /// I/O and 0.5 ms of CRC32C, on 3 cores: a CPU limit of 1500 MB/s for
    /// reads (one hop) and 500 for writes and appends (three).
    pub(crate) fn sample(write: f64, read: f64, tcp: f64) -> Limits {
        Limits {
            bench: "limits",
            disks: vec![DiskLimit {
                dir: "d".into(),
                write_mb_s: write,
                new_blocks_write_mb_s: write * 0.75,
                read_mb_s: read,
                io_mb_per_cpu_s: Some(2000.0),
            }],
            together: None,
            data_read_mb_s: None,
            tcp_mb_s: tcp,
            tcp_to: None,
            tcp_mb_per_cpu_s: Some(1000.0),
            crc32c_mb_s: 2000.0,
            cores: 3,
        }
    }

    #[test]
    fn the_tcp_ceiling_sends_everything_over_every_stream_to_a_sink() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // Serves until the test process ends.
        std::thread::spawn(move || serve_sink(&l));
        for streams in [1, 3] {
            let (mb_s, cpu_s) = send_to_sink(&addr, 8 * MIB, streams).unwrap();
            assert!(mb_s.is_finite() && mb_s > 0.0, "{mb_s}");
            assert!(cpu_s.is_some());
        }
        // Measured to another host, the CPU figure is left out.
        let (mb_s, per_cpu_s) = tcp_bandwidth(4 * MIB, Some(&addr), None).unwrap();
        assert!(mb_s > 0.0 && per_cpu_s.is_none());
    }

    #[test]
    fn one_stream_over_loopback_four_to_another_host_unless_told() {
        assert_eq!(streams_to(None, None), 1);
        assert_eq!(streams_to(Some("10.0.0.2:7100"), None), REMOTE_STREAMS);
        assert_eq!(REMOTE_STREAMS, 4);
        assert_eq!(streams_to(Some("10.0.0.2:7100"), Some(2)), 2);
        assert_eq!(streams_to(None, Some(3)), 3);
    }

    #[test]
    fn a_tcp_ceiling_nobody_receives_fails_naming_the_sink() {
        // A port just freed: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = format!(
            "{:#}",
            tcp_bandwidth(MIB, Some(&addr), Some(1)).unwrap_err()
        );
        assert!(
            e.contains(&format!("measuring TCP to the sink at {addr}")),
            "{e}"
        );
        let e = format!(
            "{:#}",
            tcp_bandwidth(MIB, Some(&addr), Some(0)).unwrap_err()
        );
        assert!(e.contains("--tcp-streams must be 1 to 64"), "{e}");
        let e = format!(
            "{:#}",
            tcp_bandwidth(MIB, Some("nowhere"), None).unwrap_err()
        );
        assert!(e.contains("resolving nowhere"), "{e}");
    }

    #[test]
    fn the_cpu_limit_counts_every_hop_of_every_byte_on_all_cores() {
        let s = sample(1500.0, 1200.0, 3000.0);
        assert_eq!(s.cpu_limit("read", 3), Some(1500.0));
        assert_eq!(s.cpu_limit("write", 3), Some(500.0));
        assert_eq!(s.cpu_limit("append", 3), Some(500.0));
        let no_tcp = Limits {
            tcp_mb_per_cpu_s: None,
            ..s.clone()
        };
        assert_eq!(no_tcp.cpu_limit("read", 3), None);
        let mut no_io = s.clone();
        no_io.disks[0].io_mb_per_cpu_s = None;
        assert_eq!(no_io.cpu_limit("write", 3), None);
        // The best of two samples takes the cheaper of each cost.
        let mut dearer = s.clone();
        dearer.tcp_mb_per_cpu_s = Some(500.0);
        dearer.disks[0].io_mb_per_cpu_s = Some(4000.0);
        let best = Limits::best_of(&[s, dearer]);
        // 1 + 0.25 + 0.5 ms a hop.
        assert_eq!(best.cpu_limit("read", 3), Some(3.0 / 1.75e-3));
    }

    #[test]
    fn the_limits_come_from_the_median_of_each_ceiling() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        let samples = [
            sample(900.0, 2000.0, 3000.0),
            sample(1800.0, 1000.0, 1500.0),
            sample(1500.0, 1200.0, 5000.0),
        ];
        let m = Limits::median_of(&samples);
        assert_eq!(m.disk_write(), 1500.0);
        assert_eq!(m.disk_read(), 1200.0);
        assert_eq!(m.tcp_mb_s, 3000.0);
        assert_eq!(m.limit("read", 3), 1200.0);
        assert_eq!(m.limit("write", 3), 500.0);
        assert_eq!(m.limit("append", 3), 500.0);
        // New blocks at 3/4 of each sample's write: median 1125.
        assert_eq!(m.new_blocks_limit("write", 3), Some(375.0));
        assert_eq!(m.new_blocks_limit("append", 3), Some(375.0));
        assert_eq!(m.new_blocks_limit("read", 3), None);
        assert!(m.together.is_none());
        // All disks at once, folded as each one is, where samples have it.
        let mut two = samples.clone();
        for (l, w) in two.iter_mut().zip([800.0, 2400.0, 1600.0]) {
            l.together = Some(DiskLimit {
                dir: "d,e".into(),
                write_mb_s: w,
                ..l.disks[0].clone()
            });
        }
        two[1].together.as_mut().unwrap().io_mb_per_cpu_s = None;
        let t = Limits::median_of(&two).together.unwrap();
        assert_eq!((t.dir.as_str(), t.write_mb_s), ("d,e", 1600.0));
        assert_eq!(t.io_mb_per_cpu_s, Some(2000.0));
    }

    #[test]
    fn reads_of_the_benchmarks_own_data_raise_the_read_limit_only_when_faster() {
        let with = |data: Option<f64>| Limits {
            data_read_mb_s: data,
            ..sample(1500.0, 1200.0, 3000.0)
        };
        assert_eq!(with(None).limit("read", 3), 1200.0);
        assert_eq!(with(Some(1000.0)).limit("read", 3), 1200.0);
        assert_eq!(with(Some(1700.0)).limit("read", 3), 1700.0);
        assert_eq!(with(Some(4000.0)).limit("read", 3), 3000.0);
        assert_eq!(with(Some(4000.0)).limit("write", 3), 500.0);
        // Samples taken before there was data to read do not count.
        let m = Limits::median_of(&[with(None), with(Some(1700.0)), with(Some(1900.0))]);
        assert_eq!(m.data_read_mb_s, Some(1800.0));
        assert_eq!(Limits::median_of(&[with(None)]).data_read_mb_s, None);
    }
}
