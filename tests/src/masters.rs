//! A cluster of real `gfs-master` processes on loopback.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gfs_client::{MasterClient, MasterOptions};
use gfs_proto::auth::Token;

use crate::disk::SmallDisk;
use crate::link::{Link, Reached, Shape};

pub(crate) static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// Raft timings of the harness (the binary's defaults unless a test asks),
/// and what else a test wants of every master.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
    /// More flags for every master (chunk size, lease timings, ...).
    pub extra_args: Vec<String>,
    /// Masters whose data directory is a tmpfs of this many bytes (a
    /// small disk that fills up: [`MasterCluster::disk`]); needs root.
    pub small_disks: Vec<(usize, u64)>,
    /// Masters whose wall clock reads this many seconds ahead (behind if
    /// negative), with libfaketime (`clock::skewed`).
    pub skewed_clocks: Vec<(usize, i64)>,
    /// Masters reached only across a link of this shape (`link::Link`),
    /// by peers, clients and chunkservers alike.
    pub links: Vec<(usize, Shape)>,
    /// The cluster token every master is started with
    /// (`--auth-token-file`), which the harness's clients present.
    pub auth_token: Option<String>,
}

#[derive(Debug)]
pub struct MasterProc {
    pub id: u64,
    /// Where peers, clients and chunkservers reach it (its link's, if it
    /// has one).
    pub addr: String,
    reached: Reached,
    /// Where it serves Prometheus metrics (`--metrics-listen`).
    pub metrics: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

#[derive(Debug)]
pub struct MasterCluster {
    pub masters: Vec<MasterProc>,
    bin: PathBuf,
    timings: Timings,
    /// The small disks, by master; unmounted before `_dir` goes.
    disks: Vec<(usize, SmallDisk)>,
    /// The file of `Timings::auth_token`, and the token.
    pub token: Option<(PathBuf, Token)>,
    _dir: tempfile::TempDir,
}

/// A loopback address of its own for each cluster of this process, so that
/// concurrent tests (and firewall rules) can tell clusters apart.
pub(crate) fn cluster_ip(n: u32) -> [u8; 3] {
    let pid = std::process::id();
    [
        ((pid >> 8) % 200 + 20) as u8,
        (pid % 250) as u8,
        (n % 25 * 10) as u8,
    ]
}

pub(crate) fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

impl MasterCluster {
    /// Starts `n` masters listing each other as peers.
    pub fn start(n: usize, timings: Timings) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let [a, b, c] = cluster_ip(CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let mut masters = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(127, a, b, c + 1 + i as u8);
            let shape = timings.links.iter().find(|(j, _)| *j == i).map(|l| l.1);
            let reached = Reached::at(ip, shape)?;
            masters.push(MasterProc {
                id: i as u64 + 1,
                addr: reached.addr.clone(),
                reached,
                metrics: format!("{ip}:{}", free_port(ip)?),
                data_dir: dir.path().join(format!("m{}", i + 1)),
                log: dir.path().join(format!("m{}.log", i + 1)),
                child: None,
                stopped: false,
            });
        }
        let mut disks = Vec::new();
        for (i, bytes) in &timings.small_disks {
            disks.push((*i, SmallDisk::mount(&masters[*i].data_dir, *bytes)?));
        }
        let token = match &timings.auth_token {
            Some(t) => {
                let file = dir.path().join("token");
                std::fs::write(&file, t)?;
                Some((file, Token::new(t).map_err(anyhow::Error::msg)?))
            }
            None => None,
        };
        let mut c = Self {
            masters,
            bin: crate::binary("gfs-master")?,
            timings,
            disks,
            token,
            _dir: dir,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        Ok(c)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.masters.iter().map(|m| m.addr.clone()).collect()
    }

    /// Options that present the cluster's token, if it has one.
    pub fn options(&self) -> MasterOptions {
        MasterOptions {
            auth_token: self.token.as_ref().map(|(_, t)| t.clone()),
            ..MasterOptions::default()
        }
    }

    /// A client of every master.
    pub fn client(&self) -> MasterClient {
        MasterClient::new(&self.addrs(), self.options()).expect("valid addresses")
    }

    /// A client of master `i` alone, failing fast (for per-master reads).
    pub fn client_of(&self, i: usize) -> MasterClient {
        let opts = MasterOptions {
            deadline: Duration::from_millis(500),
            attempt_timeout: Duration::from_millis(500),
            ..self.options()
        };
        MasterClient::new(&[self.masters[i].addr.clone()], opts).expect("valid address")
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("{}={}", m.id, m.addr))
            .collect();
        let m = &mut self.masters[i];
        let mut args: Vec<String> = vec![
            "--id".into(),
            m.id.to_string(),
            "--listen".into(),
            m.reached.listen.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--metrics-listen".into(),
            m.metrics.clone(),
        ];
        for p in &peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        let t = &self.timings;
        for (flag, v) in [
            ("--heartbeat-ms", t.heartbeat_ms),
            ("--election-min-ms", t.election_min_ms),
            ("--election-max-ms", t.election_max_ms),
            ("--snapshot-every", t.snapshot_every),
        ] {
            if let Some(v) = v {
                args.push(flag.into());
                args.push(v.to_string());
            }
        }
        args.extend(t.extra_args.iter().cloned());
        if let Some((file, _)) = &self.token {
            args.extend(["--auth-token-file".into(), file.display().to_string()]);
        }
        let env = crate::clock::skewed_env(&t.skewed_clocks, i);
        m.child = Some(crate::spawn_child_with(
            &self.bin,
            &args,
            &m.log,
            "info,openraft=warn",
            &env,
        )?);
        m.stopped = false;
        Ok(())
    }

    fn signal(&mut self, i: usize, sig: i32) -> anyhow::Result<()> {
        crate::signal(self.masters[i].child.as_ref(), sig)
    }

    /// Sends `kill -9` to every running master without reaping any (they
    /// die together); `kill` or `restart` reaps them.
    pub fn signal_kill_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.masters.len() {
            if self.is_running(i) {
                self.signal(i, libc::SIGKILL)?;
            }
        }
        Ok(())
    }

    /// `kill -9` master `i` and reap it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.masters[i].child.take() {
            c.kill()?;
            c.wait()?;
        }
        self.masters[i].stopped = false;
        Ok(())
    }

    /// SIGTERM master `i` and wait for it to exit.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(i, libc::SIGTERM)?;
        let mut c = self.masters[i].child.take().context("not running")?;
        Ok(c.wait()?)
    }

    pub fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.masters[i].stopped = true;
        Ok(())
    }

    pub fn cont(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.masters[i].stopped = false;
        Ok(())
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i)?;
        self.spawn(i)
    }

    /// Kills master `i`, deletes its data directory and starts it again.
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i)?;
        std::fs::remove_dir_all(&self.masters[i].data_dir)?;
        self.spawn(i)
    }

    /// Master `i`'s small disk, if `Timings::small_disks` gave it one.
    /// The link in front of master `i` (`Timings::links`).
    pub fn link(&self, i: usize) -> &Link {
        self.masters[i].reached.link()
    }

    pub fn disk(&self, i: usize) -> Option<&SmallDisk> {
        self.disks.iter().find(|(j, _)| *j == i).map(|(_, d)| d)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.masters[i].child.is_some()
    }

    /// Makes master `i` the leader: the leader is asked to hand over to
    /// it (`TransferLeader`) until it leads, for up to 30 s.
    pub async fn make_leader(&self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = self.leader(Duration::from_secs(10)).await?;
            if l == i {
                return Ok(());
            }
            let to = self.masters[i].id;
            let asked = self
                .client()
                .admin(l)
                .transfer_leader(gfs_proto::wire::master::TransferLeaderRequest { to })
                .await;
            if Instant::now() > deadline {
                bail!("master {i} does not lead 30 s on: {asked:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the master every running, unstopped master agrees
    /// leads, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> anyhow::Result<usize> {
        let start = Instant::now();
        loop {
            let mut seen = Vec::new();
            for i in 0..self.masters.len() {
                if !self.is_running(i) || self.masters[i].stopped {
                    continue;
                }
                if let Ok(s) = self.client_of(i).status_of(0).await {
                    seen.push((i, s));
                }
            }
            let leaders: Vec<usize> = seen
                .iter()
                .filter(|(_, s)| s.state == "leader")
                .map(|(i, _)| *i)
                .collect();
            if let [l] = leaders[..] {
                let id = self.masters[l].id;
                if seen.iter().all(|(_, s)| s.leader_id == id) {
                    return Ok(l);
                }
            }
            if start.elapsed() > within {
                bail!("no agreed leader within {within:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Master `i`'s whole log.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.masters[i].log).unwrap_or_default()
    }

    /// The tail of master `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        crate::tail(&self.masters[i].log, 30)
    }
}

impl Drop for MasterCluster {
    fn drop(&mut self) {
        for m in &mut self.masters {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.disks.clear();
    }
}

/// An nftables table dropping traffic between two sets of servers (one
/// master and the others; a chunkserver and the masters), in both
/// directions, all of it or some at random; removed on drop. Clients
/// (other source addresses) still reach every server, but for
/// [`Partition::lossy_around`].
#[derive(Debug)]
pub struct Partition {
    table: String,
}

static PARTITIONS: AtomicU32 = AtomicU32::new(0);

impl Partition {
    /// Whether this machine can run partition tests (root and `nft`).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("nft")
            .arg("list")
            .arg("tables")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Cuts master `i` off from the other masters of `c`.
    pub fn isolate(c: &MasterCluster, i: usize) -> anyhow::Result<Self> {
        let others: Vec<&str> = c
            .masters
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| m.addr.as_str())
            .collect();
        Self::between(&[c.masters[i].addr.as_str()], &others)
    }

    /// Cuts every address of `a` off from every address of `b` (both ways;
    /// "ip:port" or "ip"). Each process connects from its own address, so
    /// this cuts exactly the traffic between those processes.
    pub fn between(a: &[&str], b: &[&str]) -> anyhow::Result<Self> {
        Self::rule(a, b, "drop")
    }

    /// Drops `percent` of the packets between `a` and `b` (both ways), at
    /// random: a lossy link, where TCP retransmits and every call runs late
    /// now and then.
    pub fn lossy(a: &[&str], b: &[&str], percent: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(percent <= 100, "{percent} % of the packets");
        Self::rule(a, b, &format!("numgen random mod 100 < {percent} drop"))
    }

    /// Drops `percent` of the packets to or from any address of `a`, at
    /// random, whoever the other end is (clients, masters, each other).
    pub fn lossy_around(a: &[&str], percent: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(percent <= 100, "{percent} % of the packets");
        let a = ips(a);
        let drop = format!("numgen random mod 100 < {percent} drop");
        Self::install(&format!(
            "ip saddr {{ {a} }} {drop}\n  ip daddr {{ {a} }} {drop}"
        ))
    }

    /// Drops the calls from the addresses of `from` to the servers `to`
    /// ("ip:port": packets to that port), while calls the other way (a
    /// chunkserver's heartbeats to the masters) and their answers pass.
    pub fn calls(from: &[&str], to: &[&str]) -> anyhow::Result<Self> {
        let from = ips(from);
        let rules: Vec<String> = to
            .iter()
            .map(|addr| {
                let (ip, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
                format!("ip saddr {{ {from} }} ip daddr {ip} tcp dport {port} drop")
            })
            .collect();
        Self::install(&rules.join("\n  "))
    }

    fn rule(a: &[&str], b: &[&str], verdict: &str) -> anyhow::Result<Self> {
        let (a, b) = (ips(a), ips(b));
        Self::install(&format!(
            "ip saddr {{ {a} }} ip daddr {{ {b} }} {verdict}\n  \
             ip saddr {{ {b} }} ip daddr {{ {a} }} {verdict}"
        ))
    }

    /// A table of its own with `rules` in an input chain.
    fn install(rules: &str) -> anyhow::Result<Self> {
        let table = format!(
            "gfs_test_{}_{}",
            std::process::id(),
            PARTITIONS.fetch_add(1, Ordering::Relaxed)
        );
        nft(&format!(
            "table ip {table} {{\n chain input {{\n  \
             type filter hook input priority -10; policy accept;\n  {rules}\n }}\n}}\n"
        ))?;
        Ok(Self { table })
    }
}

/// The IP addresses of "ip:port"s (or "ip"s), as an nftables set's body.
fn ips(set: &[&str]) -> String {
    set.iter()
        .map(|x| x.split(':').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ")
}

fn nft(script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "nft -f failed ({status}) on:\n{script}");
    Ok(())
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table ip {}\n", self.table));
    }
}
