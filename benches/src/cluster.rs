//! `gfs-bench cluster-write` / `cluster-read`: one client, one large file,
//! a local cluster of 3 masters and 4 chunkservers with replication 3 on
//! one disk, against that disk's O_DIRECT bandwidth measured in the same
//! run. Limits: write = device write bandwidth / R (every byte lands R
//! times on the one disk; R is the replication the cluster gives the file,
//! 3 for the local one), read = device read bandwidth. Each run also
//! records what it kept busy and so what bounded it (`busy`). A cluster
//! named by `--masters` with `--hosts` is judged against its own hosts'
//! disks and links instead (`crate::hosts`), and this host's link to it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use gfs_client::{Client, Reader, Writer};
use gfs_tests::cluster::{Cluster, Spec};
use serde::Serialize;

use crate::busy::{
    self, Busy, Probes, ServerBusy, all_between, bound_with, median_busy, median_servers,
    saturated_at, server_line,
};
use crate::hosts::{Hosts, HostsArgs};
use crate::{fill_random, mb_s, median, progress, raw};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Directory on the disk under test (chunkserver data and the raw
    /// measurement go there).
    #[arg(long, default_value = "gfs-data")]
    pub dir: PathBuf,
    /// Bytes in the file.
    #[arg(long, default_value_t = 1 << 30)]
    pub size: u64,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// An existing cluster instead of a local one (without --hosts, the
    /// limit is still measured on --dir of this host). The file goes under
    /// a directory of the run's own, /bench-<pid>-<random>, removed at the
    /// end.
    #[arg(long, value_delimiter = ',')]
    pub masters: Vec<String>,
    #[command(flatten)]
    pub on_hosts: HostsArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub bench: &'static str,
    pub size: u64,
    pub runs: usize,
    pub mb_s: f64,
    pub limit_mb_s: f64,
    pub ratio: f64,
    /// This host's device (`--dir`), measured before every run; left out
    /// with `--hosts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_write_mb_s: Option<f64>,
    /// The device filling new files (`raw::new_blocks_write`), as chunk
    /// files are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_new_blocks_write_mb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_read_mb_s: Option<f64>,
    /// For a write, the limit if the disks were only as fast as they fill
    /// new files, and the ratio against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_blocks_limit_mb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_blocks_ratio: Option<f64>,
    /// With `--hosts`: the chunkserver hosts' ceilings the limit comes
    /// from, and this client host's link to the cluster (`--tcp-to`,
    /// measured before every run; the median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Hosts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_link_mb_s: Option<f64>,
    /// Without `--hosts`: loopback TCP between two processes of this host,
    /// measured before every run (the median), a ceiling of every hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loopback_tcp_mb_s: Option<f64>,
    /// The replication factor of the file (R in the write limit).
    pub replication: u32,
    pub each_mb_s: Vec<f64>,
    /// What each run kept busy (a local cluster's disk only), the median
    /// of each figure, and what that bounds (`busy::bound`).
    pub each_busy: Vec<Busy>,
    pub busy: Busy,
    /// A cluster elsewhere: the median of what each chunkserver's host was
    /// busy with (`busy::ServerBusy`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerBusy>,
    /// What bounded it, on this host or any of the cluster's
    /// (`busy::bound_with`), and where (`busy::saturated_at`).
    pub bound: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bound_at: Vec<String>,
}

/// Creates `path` and streams `size` bytes into it, `block` repeated
/// (handed over as shared bytes: the writer copies none of it when it is
/// a whole number of pieces), counting them on `bar` if there is one.
pub async fn write_stream(
    c: &Client,
    path: &str,
    size: u64,
    block: &Bytes,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<()> {
    let mut w = Writer::create(c, path).await?;
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        w.write_bytes(block.slice(..n)).await?;
        left -= n as u64;
        if let Some(b) = bar {
            b.inc(n as u64);
        }
    }
    w.close().await?;
    Ok(())
}

async fn write_file(c: &Client, path: &str, size: u64, block: &Bytes) -> Result<Duration> {
    let bar = progress(size, "write");
    let start = Instant::now();
    write_stream(c, path, size, block, Some(&bar)).await?;
    bar.finish_and_clear();
    Ok(start.elapsed())
}

async fn read_file(c: &Client, path: &str, size: u64) -> Result<Duration> {
    let bar = progress(size, "read");
    let start = Instant::now();
    let mut r = Reader::open(c, path).await?;
    let mut got = 0u64;
    loop {
        // As fetched, not copied into a buffer of ours.
        let n = r.read_bytes().await?.len();
        if n == 0 {
            break;
        }
        got += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    anyhow::ensure!(got == size, "read {got} of {size} bytes");
    Ok(start.elapsed())
}

/// The local cluster the data-path benchmarks start: full-size chunks,
/// the masters' default leases and timeouts, data under `dir`.
/// Its chunkservers all use the one disk under `dir`, so they share that
/// disk's queue: 8 device I/Os in flight in all (the depth one server
/// with a disk of its own has), 2 each. On the development VM's disk, four
/// servers at 8 each read 1952 / 2135 MB/s at N = 4, at 2 each 2698 / 2728
/// (BENCHMARKS.md): a deep queue made every read slower.
pub fn bench_spec(dir: &std::path::Path) -> Spec {
    let chunkservers = Spec::default().chunkservers;
    Spec {
        io_depth: Some((8 / chunkservers as u32).max(1)),
        chunk_size_bytes: gfs_proto::limits::DEFAULT_CHUNK_SIZE_BYTES,
        lease_ms: 10_000,
        lease_grace_ms: 5_000,
        chunkserver_timeout_ms: 15_000,
        heartbeat_ms: 500,
        base_dir: Some(dir.to_path_buf()),
        ..Spec::default()
    }
}

/// The cluster to measure: the one at `masters`, or, with none named, a
/// local one started from `spec`, which runs while the returned guard
/// lives.
pub async fn target(masters: &[String], spec: Spec) -> Result<(Option<Cluster>, Vec<String>)> {
    if !masters.is_empty() {
        return Ok((None, masters.to_vec()));
    }
    let cluster = Cluster::start(spec).await?;
    let m = cluster.masters.addrs();
    Ok((Some(cluster), m))
}

/// Bytes of each measurement of this host's link to the cluster.
const LINK_SAMPLE_BYTES: u64 = 256 << 20;

pub async fn run(args: &ClusterArgs, read: bool) -> Result<ClusterReport> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    // Read first: bad ceilings fail the run before it starts anything.
    let hosts = args.on_hosts.load()?;
    let (mut dev_w, mut dev_nb, mut dev_r) = (Vec::new(), Vec::new(), Vec::new());
    let (mut links, mut loopback) = (Vec::new(), Vec::new());
    let mut each = Vec::new();
    let (local, masters) = target(&args.masters, bench_spec(&args.dir)).await?;
    let (mut each_busy, mut each_servers) = (Vec::new(), Vec::new());
    let client = Client::connect(&masters)?;
    let mut block = vec![0u8; 8 << 20];
    fill_random(&mut block, 7);
    let block = Bytes::from(block);
    // The run's file goes under a directory of its own, removed at the end.
    let space = crate::Space::make(client.master()).await?;
    let base = space.path.clone();
    let runs = async {
        let replication = space.replication(client.master()).await?;
        if let Some(h) = &hosts {
            h.check_replication(replication)?;
        }
        // The device under --dir is the cluster's only when it is local;
        // a cluster elsewhere has its chunkservers' hosts probed.
        let local_dir = local.is_some().then_some(args.dir.as_path());
        let probe = Probes::of_cluster(local_dir, client.master(), &base).await?;
        for run in 0..args.runs {
            // The ceilings first, then the cluster, alternating, so both see
            // the same state of the disk (or of the link).
            if hosts.is_some() {
                links.push(
                    args.on_hosts
                        .client_link(args.size.min(LINK_SAMPLE_BYTES))?,
                );
            } else {
                let c = raw::ceiling(&[&args.dir], args.size, 1 << 20)?;
                dev_w.push(c.write);
                dev_nb.push(c.new_blocks_write);
                dev_r.push(c.read);
                loopback.push(crate::limits::loopback_ceiling(
                    args.size.min(LINK_SAMPLE_BYTES),
                )?);
            }
            let path = format!("{base}/{run}");
            let mut before = probe.before().await;
            let took = write_file(&client, &path, args.size, &block).await?;
            let took = if read {
                before = probe.before().await;
                read_file(&client, &path, args.size).await?
            } else {
                took
            };
            let after = probe.after().await;
            let (busy, servers) = all_between(&before, &after);
            each_busy.push(busy);
            each_servers.push(servers);
            each.push(mb_s(args.size, took));
            // Purged, not kept for the retention period: the next run needs
            // the space.
            client.master().delete_with(&path, false, true).await?;
        }
        anyhow::Ok(replication)
    };
    let runs = runs.await;
    let replication = space.purge(client.master(), runs).await?;
    let r = f64::from(replication);
    let of = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
    let (device_write_mb_s, device_read_mb_s) = (of(dev_w), of(dev_r));
    let device_new_blocks_write_mb_s = of(dev_nb);
    let client_link_mb_s = of(links);
    let loopback_tcp_mb_s = of(loopback);
    let bench = if read { "read" } else { "write" };
    let (limit, new_blocks_limit_mb_s) = match (&hosts, client_link_mb_s) {
        (Some(h), Some(link)) => (
            h.limit(bench, replication, link),
            h.new_blocks_limit(bench, replication, link),
        ),
        _ => local_limits(
            read,
            r,
            (
                device_write_mb_s,
                device_new_blocks_write_mb_s,
                device_read_mb_s,
            ),
            loopback_tcp_mb_s,
        ),
    };
    let got = median(each.clone());
    let busy = median_busy(&each_busy);
    let servers = median_servers(&each_servers);
    Ok(ClusterReport {
        bench: if read {
            "cluster-read"
        } else {
            "cluster-write"
        },
        size: args.size,
        runs: args.runs,
        mb_s: got,
        limit_mb_s: limit,
        ratio: got / limit,
        device_write_mb_s,
        device_new_blocks_write_mb_s,
        device_read_mb_s,
        new_blocks_limit_mb_s,
        new_blocks_ratio: new_blocks_limit_mb_s.map(|l| got / l),
        hosts,
        client_link_mb_s,
        loopback_tcp_mb_s,
        replication,
        each_mb_s: each,
        each_busy,
        busy,
        bound: bound_with(&busy, &servers),
        bound_at: saturated_at(&busy, &servers),
        servers,
    })
}

/// The limits of a cluster on this host (figure3's, for one client): a
/// read moves every byte off the device once and over one loopback hop, a
/// write puts it on the device `r` times and over `r` hops. The limit and,
/// for a write, the one from the device's write into new files.
fn local_limits(
    read: bool,
    r: f64,
    (write, new_blocks, device_read): (Option<f64>, Option<f64>, Option<f64>),
    tcp: Option<f64>,
) -> (f64, Option<f64>) {
    // `f64::min` would take TCP for a missing device figure (NaN): an
    // unmeasured device leaves the limit unknown instead.
    let tcp = tcp.unwrap_or(f64::INFINITY);
    let capped = |d: Option<f64>| d.map(|d| d.min(tcp));
    if read {
        (capped(device_read).unwrap_or(f64::NAN), None)
    } else {
        (
            capped(write).map_or(f64::NAN, |w| w / r),
            capped(new_blocks).map(|d| d / r),
        )
    }
}

pub fn print_table(r: &ClusterReport) {
    print!("{}", table(r));
}

/// The table `print_table` prints.
fn table(r: &ClusterReport) -> String {
    use std::fmt::Write;
    let mb = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let runs: Vec<f64> = r.each_mb_s.iter().map(|x| x.round()).collect();
    let against = match &r.hosts {
        Some(h) => format!(
            "the cluster's {} chunkserver hosts (--hosts) and this host's link {} MB/s; runs {runs:?}",
            h.0.len(),
            mb(r.client_link_mb_s)
        ),
        None => format!(
            "device O_DIRECT write {} MB/s, into new files {}, read {} MB/s, loopback TCP {} MB/s; runs {runs:?}",
            mb(r.device_write_mb_s),
            mb(r.device_new_blocks_write_mb_s),
            mb(r.device_read_mb_s),
            mb(r.loopback_tcp_mb_s)
        ),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>12} {:>8}   ({against})",
        r.bench, "MB/s", "limit MB/s", "ratio"
    );
    let _ = writeln!(
        out,
        "{:<14} {:>10.1} {:>12.1} {:>7.0}%   {}: {}",
        "",
        r.mb_s,
        r.limit_mb_s,
        r.ratio * 100.0,
        busy::figures(&r.busy),
        busy::bound_where(r.bound, &r.bound_at)
    );
    for sv in &r.servers {
        let _ = writeln!(out, "{:<14} {:>33}   {}", "", "", server_line(sv));
    }
    if let (Some(l), Some(nb)) = (r.new_blocks_limit_mb_s, r.new_blocks_ratio) {
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>12.1} {:>7.0}%   against the disks' write into new files{}",
            "",
            "",
            l,
            nb * 100.0,
            if r.hosts.is_some() {
                String::new()
            } else {
                format!(" / {}", r.replication)
            }
        );
    }
    if r.hosts.is_none() {
        let _ = writeln!(
            out,
            "limit: {}",
            if r.bench == "cluster-read" {
                "min(device read, loopback TCP)".to_string()
            } else {
                format!("min(device write, loopback TCP) / R, R = {}", r.replication)
            }
        );
    }
    if r.hosts.is_some() {
        let disks = if r.bench == "cluster-read" {
            "their disks' read, their link))"
        } else {
            "their disks' write, their link) / R)"
        };
        let _ = writeln!(
            out,
            "limit: the cluster's, R = {}: min(this host's link, sum over the hosts of min({disks}",
            r.replication
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_cluster_is_limited_by_its_device_and_loopback_tcp() {
        let device = (Some(3000.0), Some(1500.0), Some(1800.0));
        // TCP below the device: every hop is one TCP stream's worth.
        assert_eq!(
            local_limits(false, 3.0, device, Some(2400.0)),
            (800.0, Some(500.0))
        );
        assert_eq!(
            local_limits(true, 3.0, device, Some(1200.0)),
            (1200.0, None)
        );
        // TCP above it: the device's.
        assert_eq!(
            local_limits(false, 3.0, device, Some(9000.0)),
            (1000.0, Some(500.0))
        );
        assert_eq!(
            local_limits(true, 3.0, device, Some(9000.0)),
            (1800.0, None)
        );
        // No TCP figure: the device's alone.
        assert_eq!(local_limits(true, 3.0, device, None), (1800.0, None));
    }

    #[test]
    fn the_table_gives_each_ratio_against_its_own_limit() {
        let r = ClusterReport {
            bench: "cluster-write",
            size: 1 << 30,
            runs: 1,
            mb_s: 500.0,
            limit_mb_s: 1000.0,
            ratio: 0.5,
            device_write_mb_s: Some(3000.0),
            device_new_blocks_write_mb_s: Some(1500.0),
            device_read_mb_s: Some(1800.0),
            new_blocks_limit_mb_s: Some(500.0),
            new_blocks_ratio: Some(1.0),
            hosts: None,
            client_link_mb_s: None,
            loopback_tcp_mb_s: Some(2400.0),
            replication: 3,
            each_mb_s: vec![500.0],
            each_busy: Vec::new(),
            busy: Busy::default(),
            servers: Vec::new(),
            bound: "unknown",
            bound_at: Vec::new(),
        };
        let remote = ClusterReport {
            servers: vec![ServerBusy {
                addr: "10.0.0.3:7100".into(),
                busy: Busy {
                    cpu: Some(0.5),
                    ..Busy::default()
                },
            }],
            bound: "CPU",
            bound_at: vec!["client CPU".into()],
            ..r.clone()
        };
        let t = table(&remote);
        assert!(t.contains(": CPU (client CPU)\n"), "{t}");
        assert!(t.contains("   cs 10.0.0.3:7100: CPU 50 %\n"), "{t}");
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("500.0") && lines[1].contains("1000.0") && lines[1].contains("50%"),
            "{t}"
        );
        assert!(
            lines[2].contains("500.0")
                && lines[2].contains("100%")
                && lines[2].ends_with("write into new files / 3"),
            "{t}"
        );
        assert!(t.contains("read 1800 MB/s, loopback TCP 2400 MB/s;"), "{t}");
        assert_eq!(
            lines[3],
            "limit: min(device write, loopback TCP) / R, R = 3"
        );
        // Against a cluster's hosts: named, with this host's link, the
        // formula, and no device of this host.
        let on_hosts = ClusterReport {
            device_write_mb_s: None,
            device_new_blocks_write_mb_s: None,
            device_read_mb_s: None,
            hosts: Some(Hosts(Vec::new())),
            client_link_mb_s: Some(2500.0),
            loopback_tcp_mb_s: None,
            ..r
        };
        let t = table(&on_hosts);
        assert!(
            t.contains(
                "the cluster's 0 chunkserver hosts (--hosts) and this host's link 2500 MB/s"
            ),
            "{t}"
        );
        assert!(
            t.contains("against the disks' write into new files\n"),
            "{t}"
        );
        assert!(t.contains("/ R)") && !t.contains("device"), "{t}");
    }
}
