//! The limits of a cluster on hosts of its own (`figure3 --hosts`), from
//! ceilings measured on its chunkserver hosts by `gfs-bench limits --tcp-to`
//! and the client host's TCP to the cluster, measured by `figure3
//! --tcp-to` around every point.
//!
//! On a real cluster nothing is shared the way one host shares its disk,
//! cores and loopback; each chunkserver host brings its disks and its
//! network link, and the client host (where all N clients of `figure3`
//! run) brings its own link. So, as the GFS paper computes its limits
//! from the links of its 16 chunkservers and its clients, with R the
//! replication factor:
//! - read: min(client TCP, Σ over the hosts of min(its disks' read, TCP)):
//!   every byte is read from one disk and crosses two links;
//! - write: min(client TCP, Σ over the hosts of min(its disks' write, TCP) /
//!   R): every byte lands on R disks of R hosts, each taking it in over its
//!   link;
//! - record append: min(client TCP, the R-th best host's min(disk write,
//!   TCP)): the clients all append to one file's last chunk, whose R
//!   replicas, one disk on each of R hosts, take every record; a chain is
//!   as fast as its slowest member, and the fastest chain the R fastest
//!   hosts.
//!
//! A host's disks count as `limits` measured them all at once (a host of
//! several disks must have that figure: disks sharing a controller give
//! less together than their sum). A host's TCP ceiling is what it sent to
//! another host's sink: the link's speed, assumed the same in both
//! directions. The same limits
//! with each disk's write into new files give the new-files limit. The
//! ceilings of the chunkserver hosts are measured once, before the run;
//! only the client's TCP is sampled around every point.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::limits::DiskLimit;

/// The flags that judge a cluster named by `--masters` against its own
/// hosts' ceilings (`figure3`, `cluster-write`, `cluster-read`).
#[derive(clap::Args, Debug, Clone)]
pub struct HostsArgs {
    /// With --masters: the ceilings of the cluster's chunkserver hosts, one
    /// file per host holding what `gfs-bench limits --tcp-to ADDR --json`
    /// printed there. The limits are then the cluster's, from its hosts'
    /// disks and links (BENCHMARKS.md, "Running them"), not this host's.
    #[arg(long, value_delimiter = ',', requires_all = ["masters", "tcp_to"])]
    pub hosts: Vec<PathBuf>,
    /// With --hosts: a `gfs-bench tcp-sink --listen` on the cluster's side,
    /// to measure this client host's link to it around every measurement.
    #[arg(long, value_name = "ADDR", requires = "hosts")]
    pub tcp_to: Option<String>,
    /// With --tcp-to: TCP streams sent at once (default 4).
    #[arg(long, requires = "tcp_to")]
    pub tcp_streams: Option<usize>,
}

impl HostsArgs {
    /// The hosts' ceilings, if `--hosts` names any.
    pub fn load(&self) -> Result<Option<Hosts>> {
        (!self.hosts.is_empty())
            .then(|| Hosts::load(&self.hosts))
            .transpose()
    }

    /// This client host's link to the cluster (`--tcp-to`), measured with
    /// `size` bytes.
    pub fn client_link(&self, size: u64) -> Result<f64> {
        let to = self
            .tcp_to
            .as_deref()
            .context("--hosts needs --tcp-to, this host's link to the cluster")?;
        crate::limits::tcp_ceiling(size, to, self.tcp_streams)
    }
}

/// One chunkserver host's ceilings, as `gfs-bench limits --tcp-to --json`
/// measured them there.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// The file they were read from.
    pub file: String,
    pub disks: Vec<DiskLimit>,
    /// With several disks: all of them measured at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub together: Option<DiskLimit>,
    pub tcp_mb_s: f64,
    /// The sink the TCP ceiling was measured to.
    pub tcp_to: String,
}

/// The keys of a `limits --json` line the limits need (the rest is
/// ignored).
#[derive(Deserialize)]
struct LimitsLine {
    disks: Vec<DiskLimit>,
    #[serde(default)]
    together: Option<DiskLimit>,
    tcp_mb_s: f64,
    tcp_to: Option<String>,
}

/// A ceiling that can bound a limit: finite and above zero.
fn ceiling(v: f64, what: &str) -> Result<()> {
    ensure!(v.is_finite() && v > 0.0, "{what} is {v} MB/s");
    Ok(())
}

impl Host {
    /// A host's ceilings from the output of `gfs-bench limits --json` run
    /// there (its last line), read from `file`.
    pub fn parse(file: &str, output: &str) -> Result<Self> {
        let last = output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("it is empty")?;
        let l: LimitsLine = serde_json::from_str(last)
            .context("its last line is not the JSON of `gfs-bench limits --json`")?;
        ensure!(
            !l.disks.is_empty(),
            "it names no data directory (`gfs-bench limits --dirs ...`)"
        );
        ensure!(
            l.disks.len() == 1 || l.together.is_some(),
            "its {} data directories were measured one by one, not all at once: run `gfs-bench \
             limits` of this version there (disks that share a controller give less together \
             than their sum)",
            l.disks.len()
        );
        for d in l.disks.iter().chain(&l.together) {
            ceiling(d.write_mb_s, &format!("{}'s write", d.dir))?;
            ceiling(
                d.new_blocks_write_mb_s,
                &format!("{}'s write into new files", d.dir),
            )?;
            ceiling(d.read_mb_s, &format!("{}'s read", d.dir))?;
        }
        ceiling(l.tcp_mb_s, "its TCP ceiling")?;
        let Some(tcp_to) = l.tcp_to else {
            bail!(
                "its TCP ceiling was measured over loopback, not over the host's link: run \
                 `gfs-bench limits --tcp-to HOST:PORT` there, to a `gfs-bench tcp-sink --listen` \
                 on another host"
            );
        };
        Ok(Host {
            file: file.to_string(),
            disks: l.disks,
            together: l.together,
            tcp_mb_s: l.tcp_mb_s,
            tcp_to,
        })
    }

    /// All its disks' figure `f` together (measured at once where it has
    /// several), as far as its link carries them.
    fn all_disks(&self, f: fn(&DiskLimit) -> f64) -> f64 {
        match &self.together {
            Some(all) => f(all),
            None => self.disks.iter().map(f).sum(),
        }
        .min(self.tcp_mb_s)
    }

    /// Its fastest disk's figure `f` (a chunk's replica is on one disk), as
    /// far as its link carries it.
    fn one_disk(&self, f: fn(&DiskLimit) -> f64) -> f64 {
        self.disks
            .iter()
            .map(f)
            .fold(0.0, f64::max)
            .min(self.tcp_mb_s)
    }
}

/// The chunkserver hosts of a cluster named by `--masters`.
#[derive(Debug, Clone, Serialize)]
pub struct Hosts(pub Vec<Host>);

impl Hosts {
    /// The ceilings in `files`, one per chunkserver host.
    pub fn load(files: &[PathBuf]) -> Result<Self> {
        ensure!(!files.is_empty(), "--hosts names no file");
        let hosts = files
            .iter()
            .map(|f| {
                let name = f.display().to_string();
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the host ceilings {name}"))?;
                Host::parse(&name, &text).with_context(|| format!("host ceilings {name}"))
            })
            .collect::<Result<_>>()?;
        Ok(Hosts(hosts))
    }

    /// Whether the hosts can hold `r` replicas of a chunk, one on each.
    pub fn check_replication(&self, r: u32) -> Result<()> {
        ensure!(
            self.0.len() >= r as usize,
            "--hosts names {} chunkserver hosts, fewer than the {r} replicas the cluster gives \
             the benchmark's files: name the ceilings of every chunkserver host",
            self.0.len()
        );
        Ok(())
    }

    /// What the chunkserver hosts allow `bench` at replication `r`, with
    /// `write` each disk's write figure (see the module comment).
    fn servers(&self, bench: &str, r: u32, write: fn(&DiskLimit) -> f64) -> f64 {
        match bench {
            "read" => self.0.iter().map(|h| h.all_disks(|d| d.read_mb_s)).sum(),
            "write" => self.0.iter().map(|h| h.all_disks(write)).sum::<f64>() / f64::from(r.max(1)),
            _ => {
                let mut each: Vec<f64> = self.0.iter().map(|h| h.one_disk(write)).collect();
                each.sort_by(|a, b| b.total_cmp(a));
                // The R fastest hosts' slowest (all of them, were there fewer).
                let chain = (r.max(1) as usize).min(each.len());
                each.get(chain.saturating_sub(1)).copied().unwrap_or(0.0)
            }
        }
    }

    /// The limit for `bench` at replication `r` when the client host's link
    /// carries `client_tcp` MB/s.
    pub fn limit(&self, bench: &str, r: u32, client_tcp: f64) -> f64 {
        self.servers(bench, r, |d| d.write_mb_s).min(client_tcp)
    }

    /// For writes and appends, the limit if every disk were only as fast as
    /// it fills new files; `None` for reads.
    pub fn new_blocks_limit(&self, bench: &str, r: u32, client_tcp: f64) -> Option<f64> {
        (bench != "read").then(|| {
            self.servers(bench, r, |d| d.new_blocks_write_mb_s)
                .min(client_tcp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(write: f64, new_blocks: f64, read: f64) -> DiskLimit {
        DiskLimit {
            dir: "/d".to_string(),
            write_mb_s: write,
            new_blocks_write_mb_s: new_blocks,
            read_mb_s: read,
            io_mb_per_cpu_s: None,
        }
    }

    fn host(disks: Vec<DiskLimit>, tcp: f64) -> Host {
        Host {
            file: "h".to_string(),
            disks,
            together: None,
            tcp_mb_s: tcp,
            tcp_to: "10.0.0.9:7100".to_string(),
        }
    }

    /// The paper's cluster: 16 chunkservers on 100 Mbit/s links (12.5 MB/s),
    /// disks faster than the links, clients behind a 1 Gbit/s link.
    #[test]
    fn the_papers_cluster_gives_the_papers_limits() {
        let hosts = Hosts(vec![host(vec![disk(50.0, 40.0, 60.0)], 12.5); 16]);
        assert_eq!(hosts.limit("read", 3, 125.0), 125.0);
        assert_eq!(hosts.limit("read", 3, 1000.0), 200.0);
        assert!((hosts.limit("write", 3, 125.0) - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(hosts.limit("append", 3, 125.0), 12.5);
        assert_eq!(hosts.new_blocks_limit("read", 3, 125.0), None);
    }

    #[test]
    fn a_hosts_disks_count_as_measured_together_and_its_link_caps_them() {
        let mut two = host(
            vec![disk(300.0, 200.0, 500.0), disk(300.0, 200.0, 500.0)],
            1000.0,
        );
        // Together less than their sum (a shared controller).
        two.together = Some(disk(450.0, 300.0, 800.0));
        let slow_link = host(vec![disk(3000.0, 2000.0, 5000.0)], 400.0);
        let hosts = Hosts(vec![two.clone(), slow_link.clone()]);
        // Read: 800 (both disks at once) + 400 (the link).
        assert_eq!(hosts.limit("read", 2, f64::INFINITY), 1200.0);
        // Write: (450 + 400) / 2.
        assert_eq!(hosts.limit("write", 2, f64::INFINITY), 425.0);
        assert_eq!(
            hosts.new_blocks_limit("write", 2, f64::INFINITY),
            Some(350.0)
        );
        // Together faster than the link: the link.
        two.together = Some(disk(1500.0, 1200.0, 3000.0));
        let fast = Hosts(vec![two, slow_link]);
        assert_eq!(fast.limit("read", 2, f64::INFINITY), 1400.0);
        assert_eq!(fast.limit("write", 2, f64::INFINITY), 700.0);
        // Append: one disk per host; the chain of both is the slower, 300.
        assert_eq!(hosts.limit("append", 2, f64::INFINITY), 300.0);
        assert_eq!(
            hosts.new_blocks_limit("append", 2, f64::INFINITY),
            Some(200.0)
        );
        // The client's link bounds everything.
        assert_eq!(hosts.limit("read", 2, 250.0), 250.0);
        assert_eq!(hosts.new_blocks_limit("write", 2, 150.0), Some(150.0));
    }

    #[test]
    fn an_append_chain_is_the_r_fastest_hosts_slowest() {
        let hosts = Hosts(
            [100.0, 400.0, 300.0, 200.0]
                .map(|w| host(vec![disk(w, w, w)], 1000.0))
                .to_vec(),
        );
        assert_eq!(hosts.limit("append", 1, 1e9), 400.0);
        assert_eq!(hosts.limit("append", 2, 1e9), 300.0);
        assert_eq!(hosts.limit("append", 3, 1e9), 200.0);
        assert!(hosts.check_replication(4).is_ok());
        let e = hosts.check_replication(5).unwrap_err().to_string();
        assert!(
            e.contains("names 4 chunkserver hosts, fewer than the 5"),
            "{e}"
        );
    }

    /// What `gfs-bench limits --tcp-to ... --json` prints last.
    const LINE: &str = r#"{"bench":"limits","disks":[{"dir":"/nvme0","write_mb_s":3000.5,"new_blocks_write_mb_s":2000.0,"read_mb_s":3500.0,"io_mb_per_cpu_s":900.0}],"tcp_mb_s":2900.0,"tcp_to":"10.0.0.2:7100","crc32c_mb_s":9000.0,"cores":32}"#;

    #[test]
    fn a_hosts_ceilings_are_read_from_the_last_line_of_limits_json() {
        let out = format!("disk /nvme0: O_DIRECT write ...\nlimits: ...\n{LINE}\n\n");
        let h = Host::parse("cs1.json", &out).unwrap();
        assert_eq!(h.file, "cs1.json");
        assert_eq!(h.disks.len(), 1);
        assert_eq!(h.disks[0].write_mb_s, 3000.5);
        assert_eq!(h.disks[0].new_blocks_write_mb_s, 2000.0);
        assert_eq!(h.disks[0].read_mb_s, 3500.0);
        assert_eq!(h.tcp_mb_s, 2900.0);
        assert_eq!(h.tcp_to, "10.0.0.2:7100");
    }

    #[test]
    fn a_host_of_several_disks_brings_them_measured_at_once() {
        let second = r#"{"dir":"/nvme1","write_mb_s":2800.0,"new_blocks_write_mb_s":1900.0,"read_mb_s":3400.0}"#;
        let two = LINE.replace("}],", &format!("}},{second}],"));
        let e = format!("{:#}", Host::parse("cs2.json", &two).unwrap_err());
        assert!(
            e.contains("2 data directories were measured one by one, not all at once"),
            "{e}"
        );
        let all = r#""together":{"dir":"/nvme0,/nvme1","write_mb_s":4000.0,"new_blocks_write_mb_s":3000.0,"read_mb_s":5000.0},"#;
        let with = two.replace(r#""tcp_mb_s""#, &format!(r#"{all}"tcp_mb_s""#));
        let h = Host::parse("cs2.json", &with).unwrap();
        assert_eq!(h.disks.len(), 2);
        let t = h.together.as_ref().unwrap();
        assert_eq!((t.dir.as_str(), t.read_mb_s), ("/nvme0,/nvme1", 5000.0));
        // 5000 of both disks at once, at the 2900 of the link.
        assert_eq!(Hosts(vec![h]).limit("read", 1, f64::INFINITY), 2900.0);
        let bad = with.replace(r#""read_mb_s":5000.0"#, r#""read_mb_s":0.0"#);
        let e = format!("{:#}", Host::parse("cs2.json", &bad).unwrap_err());
        assert!(e.contains("/nvme0,/nvme1's read is 0 MB/s"), "{e}");
    }

    #[test]
    fn bad_host_ceilings_are_refused_saying_why() {
        let err = |text: &str| format!("{:#}", Host::parse("f", text).unwrap_err());
        assert!(err("").contains("empty"));
        assert!(err("disk /d: 3000 MB/s\n").contains("not the JSON of `gfs-bench limits"));
        assert!(err(r#"{"disks":[]}"#).contains("not the JSON"));
        let loopback = LINE.replace(r#""tcp_to":"10.0.0.2:7100","#, "");
        assert!(err(&loopback).contains("measured over loopback"));
        let no_disk = LINE.replace(
            &LINE[LINE.find('[').unwrap()..=LINE.find(']').unwrap()],
            "[]",
        );
        assert!(err(&no_disk).contains("names no data directory"));
        let zero = LINE.replace("\"read_mb_s\":3500.0", "\"read_mb_s\":0.0");
        assert!(err(&zero).contains("/nvme0's read is 0 MB/s"));
        let null = LINE.replace("\"tcp_mb_s\":2900.0", "\"tcp_mb_s\":null");
        assert!(err(&null).contains("not the JSON"));
        let negative = LINE.replace("\"tcp_mb_s\":2900.0", "\"tcp_mb_s\":-1");
        assert!(err(&negative).contains("TCP ceiling is -1 MB/s"));
    }

    #[test]
    fn hosts_are_loaded_from_their_files_or_the_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("cs1.json");
        std::fs::write(&good, LINE).unwrap();
        let hosts = Hosts::load(&[good.clone(), good.clone()]).unwrap();
        assert_eq!(hosts.0.len(), 2);
        let missing = dir.path().join("cs9.json");
        let e = format!("{:#}", Hosts::load(&[good, missing]).unwrap_err());
        assert!(e.contains("cs9.json"), "{e}");
        assert!(Hosts::load(&[]).is_err());
    }
}
