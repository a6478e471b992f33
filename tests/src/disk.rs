//! Small disks that fill up (R11): a tmpfs of a given size mounted on a
//! server's data directory, unmounted when dropped. Needs root.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file [`SmallDisk::fill`] writes and [`SmallDisk::free`] removes.
const FILLER: &str = "filler.bin";

#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Whether this process may mount one (root).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Mounts a tmpfs of `bytes` on `dir` (created if missing).
    pub fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .context("running mount")?
            .success();
        anyhow::ensure!(
            ok,
            "mounting a tmpfs on {} failed (root needed)",
            dir.display()
        );
        Ok(Self {
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes every free byte left with a file of its own, so that the
    /// next write of whoever uses the disk fails with `ENOSPC`; returns the
    /// bytes taken.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join(FILLER))?;
        let block = vec![0xa5u8; 64 << 10];
        let mut taken = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => taken += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The last pages: tmpfs takes a short write before refusing.
        let small = [0xa5u8; 512];
        while let Ok(n @ 1..) = f.write(&small) {
            taken += n as u64;
        }
        Ok(taken)
    }

    /// Gives back what [`SmallDisk::fill`] took.
    pub fn free(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.path.join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
