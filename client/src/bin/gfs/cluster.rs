//! `gfs cluster start|stop|status`: a local cluster of 3 masters and 4
//! chunkservers on 127.0.0.x, its data, logs and pid files under one
//! directory. `stop` ends exactly the processes whose pids it recorded.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gfs_client::{MasterClient, MasterOptions};

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Masters (1 or 3).
    #[arg(long, default_value_t = 3)]
    pub masters: usize,
    #[arg(long, default_value_t = 4)]
    pub chunkservers: usize,
    /// Chunk size of the cluster (bytes, a multiple of 64 KiB).
    #[arg(long)]
    pub chunk_size_bytes: Option<u64>,
    /// First port; masters listen on 127.0.0.11.. at this port, chunkservers
    /// on 127.0.0.21.. at this port + 100; each serves Prometheus metrics
    /// on its own address at its port + 50 (`GET /metrics`).
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    /// A cluster token file every server is started with: clients then
    /// need `GFS_AUTH_TOKEN_FILE` set to it.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
}

struct Member {
    name: String,
    addr: String,
    /// Where it serves Prometheus metrics.
    metrics: String,
}

fn members(masters: usize, chunkservers: usize, port: u16) -> (Vec<Member>, Vec<Member>) {
    let m = (0..masters)
        .map(|i| Member {
            name: format!("master-{}", i + 1),
            addr: format!("127.0.0.{}:{port}", 11 + i),
            metrics: format!("127.0.0.{}:{}", 11 + i, port + 50),
        })
        .collect();
    let c = (0..chunkservers)
        .map(|i| Member {
            name: format!("chunkserver-{}", i + 1),
            addr: format!("127.0.0.{}:{}", 21 + i, port + 100),
            metrics: format!("127.0.0.{}:{}", 21 + i, port + 150),
        })
        .collect();
    (m, c)
}

/// A sibling binary of this one (cargo puts them side by side), else PATH.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("pids").join(format!("{name}.pid"))
}

fn read_pid(dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is alive and still runs one of our binaries (pids are
/// reused).
fn ours(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("gfs-"))
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
}

fn spawn(dir: &Path, name: &str, bin: &Path, args: &[String]) -> anyhow::Result<()> {
    if let Some(pid) = read_pid(dir, name)
        && ours(pid)
    {
        bail!(
            "{name} already runs as pid {pid}: `gfs cluster stop --dir {}` first",
            dir.display()
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join(format!("{name}.log")))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid only detaches the child from our session so it
    // outlives this command; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (build it with `cargo build --release`)",
            bin.display()
        )
    })?;
    std::fs::write(pid_file(dir, name), child.id().to_string())?;
    Ok(())
}

pub async fn start(dir: &Path, a: &StartArgs) -> anyhow::Result<Vec<String>> {
    for sub in ["pids", "logs", "data"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let (ms, cs) = members(a.masters, a.chunkservers, a.port);
    let master_addrs: Vec<String> = ms.iter().map(|m| m.addr.clone()).collect();
    let peers: Vec<String> = ms
        .iter()
        .enumerate()
        .flat_map(|(i, m)| ["--peer".to_string(), format!("{}={}", i + 1, m.addr)])
        .collect();
    // Flags every server gets.
    let mut common: Vec<String> = a
        .chunk_size_bytes
        .map(|s| vec!["--chunk-size-bytes".to_string(), s.to_string()])
        .unwrap_or_default();
    let mut token = None;
    if let Some(t) = &a.auth_token_file {
        // Checked here, so a bad file is one error, not seven servers'.
        token = Some(gfs_proto::auth::Token::from_file(t).map_err(anyhow::Error::msg)?);
        let t = std::path::absolute(t)?;
        common.extend(["--auth-token-file".to_string(), t.display().to_string()]);
    }
    for (i, m) in ms.iter().enumerate() {
        let mut args = vec![
            "--id".into(),
            (i + 1).to_string(),
            "--listen".into(),
            m.addr.clone(),
            "--data-dir".into(),
            dir.join("data").join(&m.name).display().to_string(),
            "--metrics-listen".into(),
            m.metrics.clone(),
        ];
        args.extend(peers.iter().cloned());
        args.extend(common.iter().cloned());
        spawn(dir, &m.name, &sibling("gfs-master"), &args)?;
    }
    for (i, c) in cs.iter().enumerate() {
        let mut args = vec![
            "--id".into(),
            (i + 1).to_string(),
            "--listen".into(),
            c.addr.clone(),
            "--data-dir".into(),
            dir.join("data").join(&c.name).display().to_string(),
            "--rack".into(),
            format!("rack-{}", i % 2),
            "--master".into(),
            master_addrs.join(","),
            // Every server's data is on the one disk under `dir`: they
            // share its queue (8 I/Os in flight in all, as one server with
            // a disk of its own would have).
            "--io-depth".into(),
            (8 / a.chunkservers.max(1)).max(1).to_string(),
            "--metrics-listen".into(),
            c.metrics.clone(),
        ];
        args.extend(common.iter().cloned());
        spawn(dir, &c.name, &sibling("gfs-chunkserver"), &args)?;
    }
    std::fs::write(dir.join("masters"), master_addrs.join(","))?;
    let metrics: String = ms
        .iter()
        .chain(&cs)
        .map(|m| format!("{} {}\n", m.name, m.metrics))
        .collect();
    std::fs::write(dir.join("metrics"), metrics)?;
    wait_ready(
        &master_addrs,
        a.chunkservers as u64,
        token,
        Duration::from_secs(60),
    )
    .await?;
    Ok(master_addrs)
}

/// Until a leader answers and sees every chunkserver.
async fn wait_ready(
    masters: &[String],
    chunkservers: u64,
    token: Option<gfs_proto::auth::Token>,
    within: Duration,
) -> anyhow::Result<()> {
    let opts = MasterOptions {
        auth_token: token,
        ..MasterOptions::default()
    };
    let c = MasterClient::new(masters, opts)?;
    let start = Instant::now();
    loop {
        for i in 0..masters.len() {
            if let Ok(s) = c.status_of(i).await
                && s.state == "leader"
                && s.chunkservers >= chunkservers
            {
                return Ok(());
            }
        }
        if start.elapsed() > within {
            bail!("the cluster did not come up within {within:?}; see the logs");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn recorded(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".pid"))
                .map(String::from)
        })
        .collect();
    names.sort();
    names
}

pub fn stop(dir: &Path) -> anyhow::Result<usize> {
    let mut stopped = 0;
    let names = recorded(dir);
    // Chunkservers first, then masters (the leader hands over on SIGTERM).
    let order = names
        .iter()
        .filter(|n| n.starts_with("chunkserver"))
        .chain(names.iter().filter(|n| !n.starts_with("chunkserver")));
    for name in order {
        if let Some(pid) = read_pid(dir, name)
            && ours(pid)
        {
            // SAFETY: a signal to a pid this tool recorded and that still
            // runs one of our binaries.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while ours(pid) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if ours(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            stopped += 1;
        }
        let _ = std::fs::remove_file(pid_file(dir, name));
    }
    Ok(stopped)
}

/// Each recorded server: its name, its pid if it runs, and where it
/// serves metrics (as `start` recorded it).
pub fn status(dir: &Path) -> Vec<(String, Option<i32>, Option<String>)> {
    let metrics = std::fs::read_to_string(dir.join("metrics")).unwrap_or_default();
    let metrics_of = |name: &str| {
        metrics
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.to_string())
    };
    recorded(dir)
        .into_iter()
        .map(|n| {
            let pid = read_pid(dir, &n).filter(|p| ours(*p));
            let m = metrics_of(&n);
            (n, pid, m)
        })
        .collect()
}
