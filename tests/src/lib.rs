//! Cluster-level tests of gfs-rs: the harness that starts real processes
//! on loopback, each in its own temporary directory, and the suites that
//! run against it (`tests/tests/`).
//!
//! - [`masters`]: a cluster of `gfs-master` processes, each on its own
//!   127.x.y.z address and a port picked free; kill -9, SIGSTOP/SIGCONT,
//!   restart and wipe one, wait for a leader; every child is ended when the
//!   harness is dropped (also on a failing test) and dies with the test
//!   process (`PR_SET_PDEATHSIG`).
//! - [`disk`]: a small tmpfs on a server's data directory, to fill up and
//!   free again (R11).
//! - [`history`]: a workload of create / rename / stat / delete whose every
//!   result is predicted exactly, so a lost acknowledged mutation, a stale
//!   read or a duplicated execution fails the test.
//! - [`raw`]: gRPC calls with any bytes as the message, and seeded random
//!   bodies, for the bad-input suites.
//! - [`metrics`]: a server's Prometheus metrics, scraped and summed (every
//!   process the harness starts serves them).
//!
//! The storage engine's own suites live beside the engine in
//! `storage-engine/tests/`.

pub mod clock;
pub mod cluster;
pub mod disk;
pub mod faulty;
pub mod history;
pub mod link;
pub mod masters;
pub mod metrics;
pub mod raw;

/// Sends `sig` to a child we spawned and have not reaped.
pub fn signal(child: Option<&std::process::Child>, sig: i32) -> anyhow::Result<()> {
    use anyhow::Context;
    let pid = i32::try_from(child.context("the process is not running")?.id())?;
    // SAFETY: plain syscall on the pid of a child we spawned and have not
    // reaped.
    if unsafe { libc::kill(pid, sig) } != 0 {
        anyhow::bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A binary of this workspace, built next to the test executable by
/// `cargo test --workspace --all-targets` (or named by `GFS_BIN_DIR`).
pub fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = match std::env::var_os("GFS_BIN_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let exe = std::env::current_exe()?;
            // A binary sits in target/<profile>/, a test in
            // target/<profile>/deps/.
            let here = exe
                .parent()
                .ok_or_else(|| anyhow::anyhow!("no directory above {}", exe.display()))?;
            if here.join(name).exists() {
                here.to_path_buf()
            } else {
                here.parent().unwrap_or(here).to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run the suite with `scripts/test` (which builds every binary \
         first) or set GFS_BIN_DIR",
        path.display()
    );
    Ok(path)
}

/// Starts `bin` with `args`, output appended to `log`, killed by the kernel
/// if the test process dies (`PR_SET_PDEATHSIG`), so no server outlives a
/// crashed test.
pub fn spawn_child(
    bin: &std::path::Path,
    args: &[String],
    log: &std::path::Path,
    rust_log: &str,
) -> anyhow::Result<std::process::Child> {
    spawn_child_with(bin, args, log, rust_log, &[])
}

/// As [`spawn_child`], with `env` added to the child's environment (a
/// clock skewed by libfaketime: `clock::skewed`).
pub fn spawn_child_with(
    bin: &std::path::Path,
    args: &[String],
    log: &std::path::Path,
    rust_log: &str,
    env: &[(String, String)],
) -> anyhow::Result<std::process::Child> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    // A profiling aid: `GFS_KEEP_LOGS=<dir>` sends the output to a file of
    // the same name there, which outlives the temp dirs, with the filter in
    // `GFS_SERVER_LOG` if set (`gfs_chunkserver=trace` logs how long each
    // mutation waited for its turn and spent on the disk).
    let (log, rust_log) = match std::env::var_os("GFS_KEEP_LOGS") {
        Some(dir) => (
            std::path::Path::new(&dir).join(log.file_name().unwrap_or(log.as_os_str())),
            std::env::var("GFS_SERVER_LOG").unwrap_or_else(|_| rust_log.to_string()),
        ),
        None => (log.to_path_buf(), rust_log.to_string()),
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .env("RUST_LOG", &rust_log)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent; it only asks the kernel to SIGKILL the child when the test
    // process dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

/// The last `n` lines of a log file, for failure messages.
pub fn tail(log: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `n` incompressible bytes, the same for the same seed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The node id of a replica of `chunk` that is not its primary.
pub fn a_secondary(chunk: &gfs_proto::wire::master::ChunkInfo) -> u64 {
    chunk
        .replicas
        .iter()
        .find(|r| r.node_id != chunk.primary)
        .expect("a secondary")
        .node_id
}

/// Pushes `data` in one piece under `data_id` to the chunkserver at
/// `chain[0]` and down the rest of the chain, as a client would.
pub async fn push_data(
    pool: &gfs_proto::data::DataPool,
    chain: &[String],
    data_id: u64,
    data: bytes::Bytes,
) -> Result<gfs_proto::wire::chunk::PushReply, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let header = gfs_proto::wire::chunk::PushHeader {
        data_id,
        total_bytes: data.len() as u64,
        chain: chain.get(1..).unwrap_or_default().to_vec(),
    };
    // The channel holds the one piece: the send never waits.
    let _ = tx.send(data).await;
    drop(tx);
    let first = chain.first().map_or("", String::as_str);
    pool.push(first, &header, rx, std::time::Duration::from_secs(20))
        .await
}

/// Reads a piece of one replica directly over the data plane, as a client
/// would: the data and the chunk's length there.
pub async fn read_replica(
    addr: &str,
    handle: u64,
    version: u64,
    offset: u64,
    length: u64,
) -> Result<(bytes::Bytes, u64), tonic::Status> {
    let req = gfs_proto::wire::chunk::ReadRequest {
        handle,
        version,
        offset,
        length,
    };
    gfs_proto::data::DataPool::new()
        .read(addr, &req, std::time::Duration::from_secs(15))
        .await
}
