//! A whole cluster of real processes on loopback: 3 masters (the
//! [`MasterCluster`] harness) and chunkservers, each with its own address,
//! port and data directory; small chunks and short leases for tests.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gfs_client::{Client, ClientOptions};

use crate::disk::SmallDisk;
use crate::faulty::{FaultyServer, Joining};
use crate::link::{Link, Reached, Shape};
use crate::masters::{MasterCluster, Timings, cluster_ip};

#[derive(Clone, Debug)]
pub struct Spec {
    pub masters: usize,
    pub chunkservers: usize,
    pub chunk_size_bytes: u64,
    pub lease_ms: u64,
    pub lease_grace_ms: u64,
    pub chunkserver_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// Where the chunkservers' data directories go (default: the system
    /// temporary directory).
    pub base_dir: Option<PathBuf>,
    /// Chunkservers whose data directory is a tmpfs of this many bytes
    /// (a small disk that fills up); needs root.
    pub small_disks: Vec<(usize, u64)>,
    /// The same for masters (`MasterCluster::disk`).
    pub small_master_disks: Vec<(usize, u64)>,
    /// Masters give no new chunk to a server with less free space.
    pub min_free_bytes: u64,
    /// The leader's duties: grace before re-replicating a dead server's
    /// chunks, clones per server, clone bandwidth (0: unlimited), how long
    /// deleted files stay, the repair pass period.
    pub rereplication_grace_ms: u64,
    pub clones_per_server: u64,
    pub clone_rate_bytes_per_s: u64,
    pub retention_ms: u64,
    pub repair_interval_ms: u64,
    /// Chunkservers with a push buffer of this many bytes (default 256 MiB).
    pub push_buffers: Vec<(usize, u64)>,
    /// Device I/Os in flight per chunkserver (default: the store's, 8).
    pub io_depth: Option<u32>,
    /// Chunkservers whose wall clock reads this many seconds ahead
    /// (behind if negative), with libfaketime (`clock::skewed`).
    pub skewed_clocks: Vec<(usize, i64)>,
    /// The same for masters.
    pub skewed_master_clocks: Vec<(usize, i64)>,
    /// Chunkservers reached only across a link of this shape (a delay, a
    /// bandwidth: `link::Link`; `Cluster::link` changes it).
    pub links: Vec<(usize, Shape)>,
    /// The same for masters (`MasterCluster::link`).
    pub master_links: Vec<(usize, Shape)>,
    /// A cluster token for every server (`--auth-token-file`), which
    /// `client` presents.
    pub auth_token: Option<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            masters: 3,
            chunkservers: 4,
            chunk_size_bytes: 1 << 20,
            lease_ms: 3_000,
            lease_grace_ms: 500,
            chunkserver_timeout_ms: 2_000,
            heartbeat_ms: 200,
            base_dir: None,
            small_disks: Vec::new(),
            small_master_disks: Vec::new(),
            min_free_bytes: 0,
            rereplication_grace_ms: 1_000,
            clones_per_server: 2,
            clone_rate_bytes_per_s: 0,
            retention_ms: 24 * 3600 * 1000,
            repair_interval_ms: 200,
            push_buffers: Vec::new(),
            io_depth: None,
            skewed_clocks: Vec::new(),
            skewed_master_clocks: Vec::new(),
            links: Vec::new(),
            master_links: Vec::new(),
            auth_token: None,
        }
    }
}

#[derive(Debug)]
pub struct ServerProc {
    pub id: u64,
    /// Where clients and peers reach it (its link's, if it has one).
    pub addr: String,
    reached: Reached,
    /// Where it serves Prometheus metrics (`--metrics-listen`).
    pub metrics: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct Cluster {
    pub masters: MasterCluster,
    pub servers: Vec<ServerProc>,
    pub spec: Spec,
    bin: PathBuf,
    /// Chunkservers in this process whose disk misbehaves on command
    /// (`add_faulty_server`), after the others in ids and addresses.
    pub faulty: Vec<FaultyServer>,
    /// tmpfs mounts, undone before the directory holding them goes.
    mounts: Vec<SmallDisk>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the masters, then the chunkservers, and waits until the
    /// leader sees every chunkserver.
    pub async fn start(spec: Spec) -> anyhow::Result<Self> {
        let extra_args = [
            ("--chunk-size-bytes", spec.chunk_size_bytes),
            ("--lease-ms", spec.lease_ms),
            ("--lease-grace-ms", spec.lease_grace_ms),
            ("--chunkserver-timeout-ms", spec.chunkserver_timeout_ms),
            ("--min-free-bytes", spec.min_free_bytes),
            ("--rereplication-grace-ms", spec.rereplication_grace_ms),
            ("--clones-per-server", spec.clones_per_server),
            ("--clone-rate-bytes-per-s", spec.clone_rate_bytes_per_s),
            ("--retention-ms", spec.retention_ms),
            ("--repair-interval-ms", spec.repair_interval_ms),
        ]
        .iter()
        .flat_map(|(f, v)| [f.to_string(), v.to_string()])
        .collect();
        // The binary's Raft timings. The data suites ran on slower ones
        // (heartbeat 150 ms, elections 600-1200 ms) while openraft cut
        // every AppendEntries at the heartbeat interval: a follower's
        // fsync past it, with several clusters and chunk copies on one
        // disk, stalled commits. With the floor on those timeouts
        // (`gfs_master::runtime`) the suites pass on the defaults, so
        // they meet the elections a deployment meets.
        let masters = MasterCluster::start(
            spec.masters,
            Timings {
                extra_args,
                small_disks: spec.small_master_disks.clone(),
                skewed_clocks: spec.skewed_master_clocks.clone(),
                links: spec.master_links.clone(),
                auth_token: spec.auth_token.clone(),
                ..Timings::default()
            },
        )?;
        masters.leader(Duration::from_secs(20)).await?;
        let dir = match &spec.base_dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let [a, b, c] =
            cluster_ip(crate::masters::CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut servers = Vec::new();
        for i in 0..spec.chunkservers {
            let ip = Ipv4Addr::new(127, a, b, c + 1 + i as u8);
            let shape = spec.links.iter().find(|(j, _)| *j == i).map(|l| l.1);
            let reached = Reached::at(ip, shape)?;
            servers.push(ServerProc {
                id: i as u64 + 1,
                addr: reached.addr.clone(),
                reached,
                metrics: format!("{ip}:{}", crate::masters::free_port(ip)?),
                data_dir: dir.path().join(format!("cs{}", i + 1)),
                log: dir.path().join(format!("cs{}.log", i + 1)),
                child: None,
            });
        }
        let mut mounts = Vec::new();
        for (i, bytes) in &spec.small_disks {
            mounts.push(SmallDisk::mount(&servers[*i].data_dir, *bytes)?);
        }
        let mut c = Self {
            masters,
            servers,
            spec,
            bin: crate::binary("gfs-chunkserver")?,
            faulty: Vec::new(),
            mounts,
            _dir: dir,
        };
        for i in 0..c.servers.len() {
            c.spawn(i)?;
        }
        c.wait_servers(c.servers.len(), Duration::from_secs(20))
            .await?;
        Ok(c)
    }

    /// A cluster with small disks (`Spec::small_disks`,
    /// `Spec::small_master_disks`), or `None` (the test skipped, and says
    /// so) where tmpfs cannot be mounted (not root).
    pub async fn on_small_disks(spec: Spec) -> Option<Self> {
        if !SmallDisk::available() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        Some(Self::start(spec).await.expect("cluster"))
    }

    /// A cluster with skewed clocks (`Spec::skewed_clocks`,
    /// `Spec::skewed_master_clocks`), or `None` (the test skipped, and
    /// says so) where libfaketime is not installed.
    pub async fn on_skewed_clocks(spec: Spec) -> Option<Self> {
        if !crate::clock::available() {
            eprintln!("skipped: needs libfaketime (scripts/setup installs it)");
            return None;
        }
        Some(Self::start(spec).await.expect("cluster"))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.servers[i];
        let mut args: Vec<String> = vec![
            "--id".into(),
            s.id.to_string(),
            "--listen".into(),
            s.reached.listen.clone(),
            "--advertise".into(),
            s.addr.clone(),
            "--data-dir".into(),
            s.data_dir.display().to_string(),
            "--rack".into(),
            format!("rack-{}", i % 2),
            "--master".into(),
            self.masters.addrs().join(","),
            "--chunk-size-bytes".into(),
            self.spec.chunk_size_bytes.to_string(),
            "--heartbeat-ms".into(),
            self.spec.heartbeat_ms.to_string(),
            "--metrics-listen".into(),
            s.metrics.clone(),
        ];
        if let Some((_, bytes)) = self.spec.push_buffers.iter().find(|(j, _)| *j == i) {
            args.extend(["--buffer-bytes".into(), bytes.to_string()]);
        }
        if let Some(d) = self.spec.io_depth {
            args.extend(["--io-depth".into(), d.to_string()]);
        }
        if let Some((file, _)) = &self.masters.token {
            args.extend(["--auth-token-file".into(), file.display().to_string()]);
        }
        let env = crate::clock::skewed_env(&self.spec.skewed_clocks, i);
        s.child = Some(crate::spawn_child_with(
            &self.bin, &args, &s.log, "info", &env,
        )?);
        Ok(())
    }

    /// Adds a chunkserver running in this process over a store whose
    /// disk misbehaves on command ([`FaultyServer`]), and waits until the
    /// leader counts it; its index in `faulty`.
    pub async fn add_faulty_server(&mut self) -> anyhow::Result<usize> {
        let first: std::net::SocketAddr = self.servers[0].addr.parse()?;
        let std::net::IpAddr::V4(ip) = first.ip() else {
            bail!("the chunkservers are not on IPv4 loopback");
        };
        let n = self.servers.len() + self.faulty.len();
        let [a, b, c, d] = ip.octets();
        let server = FaultyServer::start(Joining {
            id: n as u64 + 1,
            ip: Ipv4Addr::new(a, b, c, d + n as u8),
            rack: format!("rack-{}", n % 2),
            masters: self.masters.addrs(),
            chunk_size_bytes: self.spec.chunk_size_bytes,
            heartbeat_ms: self.spec.heartbeat_ms,
        })
        .await?;
        self.faulty.push(server);
        self.wait_servers(n + 1, Duration::from_secs(20)).await?;
        Ok(self.faulty.len() - 1)
    }

    /// Until the leader counts `n` live chunkservers.
    pub async fn wait_servers(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let l = self.masters.leader(within).await?;
            if let Ok(s) = self.masters.client_of(l).status_of(0).await
                && s.chunkservers as usize >= n
            {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!(
                    "the leader does not see {n} chunkservers within {within:?}; cs1 log:\n{}",
                    crate::tail(&self.servers[0].log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client with deadlines suited to the short test leases.
    pub fn client(&self) -> Client {
        let opts = ClientOptions {
            master: self.masters.options(),
            mutation_deadline: Duration::from_secs(40),
            ..ClientOptions::default()
        };
        Client::with_options(&self.masters.addrs(), opts).expect("valid addresses")
    }

    /// `kill -9` chunkserver `i`.
    pub fn kill_server(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.servers[i].child.take() {
            c.kill().context("kill")?;
            c.wait()?;
        }
        Ok(())
    }

    /// A crash of the whole cluster: `kill -9` to every master and
    /// chunkserver process before any is reaped, then each started again
    /// on its own data directory.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.masters.signal_kill_all()?;
        for s in &self.servers {
            if s.child.is_some() {
                crate::signal(s.child.as_ref(), libc::SIGKILL)?;
            }
        }
        for i in 0..self.masters.masters.len() {
            self.masters.restart(i)?;
        }
        for i in 0..self.servers.len() {
            self.restart_server(i)?;
        }
        Ok(())
    }

    /// Sends `sig` (SIGSTOP, SIGCONT) to chunkserver `i`.
    pub fn signal_server(&self, i: usize, sig: i32) -> anyhow::Result<()> {
        crate::signal(self.servers[i].child.as_ref(), sig)
    }

    pub fn restart_server(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_server(i)?;
        self.spawn(i)
    }

    /// `kill -9` chunkserver `i`, empty its disk, start it again (the same
    /// id and address, no chunks).
    pub fn wipe_server(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_server(i)?;
        let d = &self.servers[i].data_dir;
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        self.spawn(i)
    }

    /// Chunk files on chunkserver `i`'s disk.
    pub fn chunk_files(&self, i: usize) -> usize {
        chunk_files_under(&self.servers[i].data_dir).len()
    }

    /// The chunk handles that have a replica file on any server.
    pub fn chunk_handles(&self) -> std::collections::BTreeSet<u64> {
        (0..self.servers.len())
            .flat_map(|i| files_under(&self.servers[i].data_dir))
            .filter(|p| p.extension().is_some_and(|e| e == "chunk"))
            .filter_map(|p| u64::from_str_radix(p.file_stem()?.to_str()?, 16).ok())
            .collect()
    }

    /// How many servers hold a replica file of `handle`.
    pub fn chunk_replicas(&self, handle: u64) -> usize {
        let name = format!("{handle:016x}.chunk");
        (0..self.servers.len())
            .filter(|&i| {
                files_under(&self.servers[i].data_dir)
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| *n == *name))
            })
            .count()
    }

    /// The leader's fsck of the whole namespace.
    pub async fn fsck(&self) -> anyhow::Result<gfs_proto::wire::master::FsckReply> {
        Ok(self.masters.client().fsck("/", true).await?)
    }

    /// Until the leader counts the chunkservers with these node ids dead.
    pub async fn wait_dead(&self, ids: &[u64], within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.fsck().await
                && r.servers
                    .iter()
                    .filter(|s| ids.contains(&s.node_id))
                    .all(|s| !s.live)
            {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("servers {ids:?} not dead for the leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until fsck finds every chunk fully replicated and nothing pending
    /// deletion.
    pub async fn wait_healthy(
        &self,
        within: Duration,
    ) -> anyhow::Result<gfs_proto::wire::master::FsckReply> {
        let start = Instant::now();
        loop {
            let r = self.fsck().await;
            if let Ok(r) = &r
                && r.under_replicated == 0
                && r.missing == 0
                && r.replicas_pending_deletion == 0
            {
                return Ok(r.clone());
            }
            if start.elapsed() > within {
                bail!("not healthy within {within:?}: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The link in front of chunkserver `i` (`Spec::links`).
    pub fn link(&self, i: usize) -> &Link {
        self.servers[i].reached.link()
    }

    /// The index of the chunkserver with node id `id`.
    pub fn server_index(&self, id: u64) -> Option<usize> {
        self.servers.iter().position(|s| s.id == id)
    }

    /// Chunkserver `i`'s whole log.
    pub fn server_log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
    }

    pub fn server_log(&self, i: usize) -> String {
        crate::tail(&self.servers[i].log, 30)
    }
}

/// Every file below `dir`.
/// The chunk data files (`<handle>.chunk`) under `dir`, at any depth.
pub fn chunk_files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "chunk"))
        .collect()
}

/// Every file under `dir`, however deep.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("GFS_TEST_LOGS").is_some() {
            for (i, s) in self.servers.iter().enumerate() {
                eprintln!(
                    "--- chunkserver {} ({}):\n{}",
                    s.id,
                    s.addr,
                    self.server_log(i)
                );
            }
            for i in 0..self.masters.masters.len() {
                eprintln!("--- master {}:\n{}", i + 1, self.masters.log_tail(i));
            }
        }
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.mounts.clear();
    }
}
