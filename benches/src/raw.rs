//! The device limit, measured the way fio measures it
//! (`--ioengine=io_uring --fixedbufs --direct=1 --bs=1M --iodepth=N`):
//! sequential O_DIRECT writes then reads of one file, with a fixed number
//! of requests in flight, from registered buffers carved from an arena
//! (huge pages where the system gives them) as the storage engine uses.
//! Independent of the storage engine's I/O path on purpose.
//!
//! [`ceiling`] takes the best of several depths: on the development VM the
//! virtual disk read ~1.6x faster with 32 requests in flight than with 8
//! (1951 / 1915 against 1266 / 1160 MB/s) while writing slower (1421 /
//! 1256 against 2568 / 2222), and a cluster keeps up to 64 reads in
//! flight. A ceiling measured at depth 8 alone was below what the cluster
//! read (figure3 at 105-131 %); the best of the two still was, in some runs
//! on that VM (BENCHMARKS.md, runs M-S), until the ceiling used registered
//! buffers too (see [`ceiling`]).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gfs_storage_engine::buf::{AlignedBuf, Arena};
use io_uring::{IoUring, opcode, types};

/// One aligned buffer per slot in flight, carved from an arena as the
/// storage engine carves its I/O buffers (huge pages where the system
/// gives them: a request from them is one memory segment per 2 MiB).
struct Slots {
    bufs: Vec<AlignedBuf>,
}

impl Slots {
    fn new(depth: usize, bs: usize, random: bool) -> Self {
        let arena = Arena::new(depth * bs);
        let bufs = (0..depth)
            .map(|i| {
                let mut b = arena.alloc(bs).unwrap_or_else(|| AlignedBuf::zeroed(bs));
                if random {
                    crate::fill_random(b.as_mut_slice(), i as u64);
                }
                b
            })
            .collect();
        Self { bufs }
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Write,
    Read,
}

/// `total` requests of `bs` bytes, request `i` at `at(i)` (a file of
/// `files` and an offset), `depth` of them in flight.
fn run(
    files: &[File],
    total: u64,
    bs: usize,
    depth: usize,
    dir: Dir,
    fixed: bool,
    at: impl Fn(u64) -> (usize, u64),
) -> Result<Duration> {
    let mut ring = IoUring::new(depth as u32).context("create io_uring")?;
    let mut slots = Slots::new(depth, bs, matches!(dir, Dir::Write));
    if fixed {
        let iovecs: Vec<libc::iovec> = slots
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_slice().as_mut_ptr().cast(),
                iov_len: bs,
            })
            .collect();
        // SAFETY: the registered buffers stay allocated until after the ring
        // is dropped (explicit drops at the end of this function).
        unsafe { ring.submitter().register_buffers(&iovecs) }.context("register buffers")?;
    }
    let (mut next, mut done, mut in_flight) = (0u64, 0u64, 0usize);
    let mut free: Vec<usize> = (0..depth).collect();
    let started = Instant::now();
    while done < total {
        while in_flight < depth && next < total {
            let slot = free.pop().expect("a slot is free while in_flight < depth");
            let ptr = slots.bufs[slot].as_mut_slice().as_mut_ptr();
            let (f, offset) = at(next);
            let fd = types::Fd(files[f].as_raw_fd());
            let (n, i) = (bs as u32, slot as u16);
            let sqe = match (dir, fixed) {
                (Dir::Write, false) => opcode::Write::new(fd, ptr, n).offset(offset).build(),
                (Dir::Read, false) => opcode::Read::new(fd, ptr, n).offset(offset).build(),
                (Dir::Write, true) => opcode::WriteFixed::new(fd, ptr, n, i)
                    .offset(offset)
                    .build(),
                (Dir::Read, true) => opcode::ReadFixed::new(fd, ptr, n, i).offset(offset).build(),
            };
            // SAFETY: the buffer of `slot` is not reused until its completion is reaped.
            unsafe { ring.submission().push(&sqe.user_data(slot as u64)) }
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
            next += 1;
            in_flight += 1;
        }
        ring.submit_and_wait(1).context("io_uring submit")?;
        for cqe in ring.completion() {
            if cqe.result() != bs as i32 {
                bail!("raw I/O returned {} (expected {bs})", cqe.result());
            }
            free.push(cqe.user_data() as usize);
            in_flight -= 1;
            done += 1;
        }
    }
    let took = started.elapsed();
    drop(ring);
    drop(slots);
    Ok(took)
}

/// `path` opened with O_DIRECT: for reads only, or created afresh (empty)
/// for reads and writes.
fn open_direct(path: &Path, fresh: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(fresh)
        .create(fresh)
        .truncate(fresh)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT", path.display()))
}

/// The `bs`-byte requests of a sequential pass over `size` bytes of each
/// of `n` files, taken round-robin (so every file, on its own disk, is
/// written or read at once).
fn sequential(n: usize, size: u64, bs: usize) -> (u64, impl Fn(u64) -> (usize, u64)) {
    let n = n.max(1) as u64;
    (n * size.div_ceil(bs as u64), move |i| {
        ((i % n) as usize, i / n * bs as u64)
    })
}

/// Scratch files measured with O_DIRECT, one in each directory, all at
/// once: `write` then `read`, so a caller can interleave other
/// measurements between the two.
pub struct RawFiles {
    paths: Vec<std::path::PathBuf>,
    files: Vec<File>,
    /// Bytes of each file.
    size: u64,
    bs: usize,
    /// Requests in flight for each file.
    depth: usize,
    fixed: bool,
}

impl RawFiles {
    /// A file of `size` bytes in each of `dirs`, each with `depth` requests
    /// of `bs` bytes in flight.
    pub fn create(dirs: &[&Path], size: u64, bs: usize, depth: usize, fixed: bool) -> Result<Self> {
        anyhow::ensure!(!dirs.is_empty(), "no directory to measure");
        let mut raw = Self {
            paths: Vec::new(),
            files: Vec::new(),
            size,
            bs,
            depth,
            fixed,
        };
        for dir in dirs {
            let path = dir.join("raw-limit.dat");
            // Pushed before it is opened: a drop removes whatever exists.
            raw.paths.push(path.clone());
            raw.files.push(open_direct(&path, true)?);
        }
        Ok(raw)
    }

    fn pass(&self, dir: Dir) -> Result<Duration> {
        let (total, at) = sequential(self.files.len(), self.size, self.bs);
        let depth = self.depth * self.files.len();
        run(&self.files, total, self.bs, depth, dir, self.fixed, at)
    }

    pub fn write(&self) -> Result<Duration> {
        let took = self.pass(Dir::Write)?;
        for f in &self.files {
            f.sync_all()?;
        }
        Ok(took)
    }

    /// The faster of two write passes: the first extends the fresh files,
    /// the second goes over their blocks (see [`ceiling`]).
    pub fn best_write(&self) -> Result<Duration> {
        Ok(self.write()?.min(self.write()?))
    }

    pub fn read(&self) -> Result<Duration> {
        self.pass(Dir::Read)
    }

    /// Bytes a pass moves over all the files.
    pub fn bytes(&self) -> u64 {
        self.size * self.files.len() as u64
    }
}

impl Drop for RawFiles {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes then reads `size` bytes of a scratch file in `dir`.
pub fn measure(
    dir: &Path,
    size: u64,
    bs: usize,
    depth: usize,
    fixed: bool,
) -> Result<(Duration, Duration)> {
    let raw = RawFiles::create(&[dir], size, bs, depth, fixed)?;
    Ok((raw.write()?, raw.read()?))
}

/// Queue depths [`ceiling`] measures at.
pub const CEILING_DEPTHS: [usize; 2] = [8, 32];

/// Files [`new_blocks_write`] fills at once, one request in flight each.
pub const NEW_BLOCK_FILES: usize = 8;

/// A directory's ceilings in MB/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceiling {
    /// The better of writing a fresh file and writing over its blocks.
    pub write: f64,
    /// Filling new files ([`new_blocks_write`]): what chunk files take.
    pub new_blocks_write: f64,
    pub read: f64,
    /// MB the device moved during the whole measurement (every pass) per
    /// CPU-second this host spent meanwhile: what O_DIRECT I/O through
    /// io_uring costs the CPUs (`None` without `/proc/stat`).
    pub io_mb_per_cpu_s: Option<f64>,
}

/// The device's write rate into blocks no file had: `size` bytes in each
/// of `dirs`, in requests of `bs` spread round-robin over `files` new
/// files in each directory ([`NEW_BLOCK_FILES`] for the ceilings), with
/// `per_file` requests in flight for each file on average (the ceilings:
/// one, a chunk's mutations one at a time; `engine`: its appends ahead),
/// then fsynced. On the development
/// VM's ext4 this was ~2 GB/s where writes over written blocks reached
/// 2.3-2.5 (fio, BENCHMARKS.md "What bounds append"): the cluster's writes
/// and appends fill new chunk files, so this is what the disk gives them
/// there.
pub fn new_blocks_write(
    dirs: &[&Path],
    size: u64,
    bs: usize,
    (files, per_file): (usize, usize),
) -> Result<f64> {
    let each = files.max(1);
    let paths: Vec<_> = dirs
        .iter()
        .flat_map(|d| (0..each).map(move |i| d.join(format!("raw-new-{i}.dat"))))
        .collect();
    let n = paths.len();
    let bytes = size * dirs.len() as u64;
    let result = (|| {
        anyhow::ensure!(n > 0, "no directory to measure");
        let files = paths
            .iter()
            .map(|p| open_direct(p, true))
            .collect::<Result<Vec<File>>>()?;
        let total = bytes.div_ceil(bs as u64);
        let depth = n * per_file.max(1);
        let took = run(&files, total, bs, depth, Dir::Write, true, |i| {
            ((i % n as u64) as usize, i / n as u64 * bs as u64)
        })?;
        for f in &files {
            f.sync_all()?;
        }
        Ok(crate::mb_s(bytes, took))
    })();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// The write and read ceilings in MB/s of the disks under `dirs`, all at
/// once: `size` bytes in each, in requests of `bs`, at each of
/// [`CEILING_DEPTHS`] in flight for each directory, the best rate of each
/// direction. With several directories this is what they give together,
/// which on a host whose disks share a controller or a bus can be less
/// than their ceilings one by one added up.
/// With registered buffers, as the storage engine does I/O: on the
/// development VM plain buffers read 25-40 % slower (fio `--fixedbufs`
/// over the same files: 1589 / 1745 against 2181 / 2305 MiB/s), and a
/// ceiling without them was below what the cluster read.
///
/// The file is written twice, extending it and then over its own blocks,
/// and the faster pass counts: on that VM the second pass wrote ~20 %
/// faster (fio without preallocation: 1467 / 1585 against 1829 / 1973
/// MiB/s), and the cluster, writing three replicas, put more on the disk
/// than the extending pass alone measured.
///
/// And the write rate into new blocks ([`new_blocks_write`]), once.
pub fn ceiling(dirs: &[&Path], size: u64, bs: usize) -> Result<Ceiling> {
    let (best, cpu_s) = crate::busy::cpu_seconds(|| -> Result<Ceiling> {
        let mut best = Ceiling {
            write: 0.0,
            new_blocks_write: new_blocks_write(dirs, size, bs, (NEW_BLOCK_FILES, 1))?,
            read: 0.0,
            io_mb_per_cpu_s: None,
        };
        for depth in CEILING_DEPTHS {
            let raw = RawFiles::create(dirs, size, bs, depth, true)?;
            best.write = best.write.max(crate::mb_s(raw.bytes(), raw.best_write()?));
            best.read = best.read.max(crate::mb_s(raw.bytes(), raw.read()?));
        }
        Ok(best)
    });
    // The new files once, then two writes and a read at each depth.
    let moved = (size * dirs.len() as u64) as f64 / 1e6 * (1 + 3 * CEILING_DEPTHS.len()) as f64;
    Ok(Ceiling {
        io_mb_per_cpu_s: cpu_s.filter(|s| *s > 0.0).map(|s| moved / s),
        ..best?
    })
}

/// The device's read ceiling for data that is already there: `size` bytes
/// of random, aligned `bs`-byte O_DIRECT reads spread over `paths` (a
/// benchmark's own chunk files), at each of [`CEILING_DEPTHS`], the best
/// rate in MB/s. On the development VM a benchmark read its chunk files
/// faster than a fresh scratch file could be read back sequentially
/// (2090 against 1607 MB/s in one run, every byte from the disk: its
/// counters agreed), so a read limit from the scratch file alone was not
/// what the device allowed.
pub fn read_spread(paths: &[std::path::PathBuf], size: u64, bs: usize, seed: u64) -> Result<f64> {
    use rand::{Rng, SeedableRng};
    let mut files = Vec::new();
    let mut slots = Vec::new();
    for p in paths {
        let file = open_direct(p, false)?;
        let whole = file.metadata()?.len() / bs as u64;
        if whole > 0 {
            files.push(file);
            slots.push(whole);
        }
    }
    anyhow::ensure!(!files.is_empty(), "no file of {bs} bytes or more to read");
    let total = size.div_ceil(bs as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let targets: Vec<(usize, u64)> = (0..total)
        .map(|_| {
            let f = rng.random_range(0..files.len());
            (f, rng.random_range(0..slots[f]) * bs as u64)
        })
        .collect();
    let mut best = 0f64;
    for depth in CEILING_DEPTHS {
        let took = run(&files, total, bs, depth, Dir::Read, true, |i| {
            targets[i as usize]
        })?;
        best = best.max(crate::mb_s(size, took));
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn several_directories_are_written_and_read_at_once_each_in_full() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let raw = RawFiles::create(&[a.path(), b.path()], 3 * MIB, MIB as usize, 2, true).unwrap();
        assert_eq!(raw.bytes(), 6 * MIB);
        raw.write().unwrap();
        for d in [a.path(), b.path()] {
            let len = std::fs::metadata(d.join("raw-limit.dat")).unwrap().len();
            assert_eq!(len, 3 * MIB, "{}", d.display());
        }
        raw.read().unwrap();
        drop(raw);
        assert!(empty(a.path()) && empty(b.path()));
    }

    #[test]
    fn the_ceiling_of_several_directories_leaves_nothing_behind() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let c = ceiling(&[a.path(), b.path()], 2 * MIB, MIB as usize).unwrap();
        for v in [c.write, c.new_blocks_write, c.read] {
            assert!(v.is_finite() && v > 0.0, "{c:?}");
        }
        assert!(empty(a.path()) && empty(b.path()));
        let missing = a.path().join("no such directory");
        let e = format!(
            "{:#}",
            ceiling(&[b.path(), &missing], MIB, MIB as usize).unwrap_err()
        );
        assert!(e.contains("no such directory"), "{e}");
        assert!(empty(b.path()));
    }
}
