//! Blocking file-system steps of the store: formatting a directory, creating,
//! recovering, quarantining and deleting a chunk's files. They run under
//! `spawn_blocking`; each makes its commit point durable before returning.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use gfs_proto::ChunkHandle;

use super::{ChunkState, Dir, QUARANTINE, STORE_MARKER, data_path, meta_path, recycle};
use crate::backend::portable::PortableBackend;
use crate::backend::uring::{self, UringBackend};
use crate::backend::{self, ChosenBackend, IoBackend};
use crate::buf::{AlignedBuf, Arena};
use crate::config::StoreConfig;
use crate::error::{IoContext, Result, StoreError};
use crate::io as eio;
use crate::layout::{self, BLOCK_BYTES, Header, align_up, blocks_for_length};
use crate::recovery::{self, Verdict};

pub(super) fn prepare_dir(
    cfg: &StoreConfig,
    i: usize,
    root: PathBuf,
    arena: Option<Arc<Arena>>,
) -> Result<(Dir, String)> {
    let chunks = root.join(super::CHUNKS);
    for d in [&root, &chunks, &root.join(QUARANTINE)] {
        std::fs::create_dir_all(d).context(|| format!("create {}", d.display()))?;
    }
    check_marker(&root, cfg.chunk_size_bytes)?;
    let recycle = root.join(recycle::RECYCLE);
    let pool = recycle::load(
        &recycle,
        cfg.chunk_size_bytes,
        cfg.recycle_chunk_files as usize,
    )
    .context(|| format!("open {}", recycle.display()))?;
    let direct_probe = match cfg.direct_io {
        true => eio::probe_direct(&root),
        false => Err("disabled by configuration".into()),
    };
    let choice = backend::choose(cfg.backend, uring::probe(), direct_probe)
        .map_err(|e| StoreError::Config(format!("{}: {e}", root.display())))?;
    let name = format!("d{i}");
    let backend: Box<dyn IoBackend> = match choice.kind {
        ChosenBackend::Uring => Box::new(
            UringBackend::new(cfg.io_depth, &name, arena)
                .context(|| "start io_uring thread".into())?,
        ),
        ChosenBackend::Portable => Box::new(
            PortableBackend::new(cfg.portable_threads, &name)
                .context(|| "start portable I/O threads".into())?,
        ),
    };
    let dir = Dir {
        root,
        chunks,
        backend,
        direct: choice.direct,
        poisoned: Mutex::new(None),
        used_bytes: AtomicU64::new(0),
        recycle,
        recycled: Mutex::new(pool),
    };
    Ok((dir, choice.reason))
}

/// The marker records the chunk size a directory was formatted with; opening
/// it with another would misread every metadata file.
fn check_marker(root: &Path, chunk_size: u64) -> Result<()> {
    let path = root.join(STORE_MARKER);
    let want = format!("gfs-chunk-store 1\nchunk_size_bytes = {chunk_size}\n");
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(StoreError::Config(format!(
            "{} was formatted as {:?}, not {:?}",
            path.display(),
            have.trim(),
            want.trim()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = root.join(format!("{STORE_MARKER}.tmp"));
            let write = || -> io::Result<()> {
                let f = File::create(&tmp)?;
                io::Write::write_all(&mut &f, want.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                eio::sync_dir(root)
            };
            write().context(|| format!("write {}", path.display()))
        }
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

pub(super) fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
        let entry = entry.context(|| format!("list {}", dir.display()))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the metadata file (the commit point, made durable), then the
/// data file, or moves it into the directory's pool when `keep` says there
/// is room (`recycle`; its new path). A data file left behind by a crash in
/// between is removed by recovery.
pub(super) fn delete(
    chunks: &Path,
    handle: ChunkHandle,
    keep: Option<(&Path, u64)>,
) -> Result<Option<PathBuf>> {
    let meta = meta_path(chunks, handle);
    std::fs::remove_file(&meta).context(|| format!("remove {}", meta.display()))?;
    eio::sync_dir(chunks).context(|| format!("fsync {}", chunks.display()))?;
    let data = data_path(chunks, handle);
    recycle::give(&data, handle, keep).context(|| format!("remove {}", data.display()))
}

/// Makes chunk `h`'s files: its data file is `reuse` (a pooled file of a
/// deleted chunk, renamed) when given and still there, else a new one.
pub(super) fn create(
    dir: &Path,
    h: ChunkHandle,
    version: u64,
    direct: bool,
    chunk_size: u64,
    reuse: Option<PathBuf>,
) -> std::result::Result<ChunkState, (String, io::Error)> {
    use std::os::unix::fs::FileExt;
    let data_p = data_path(dir, h);
    let meta_p = meta_path(dir, h);
    let tmp = dir.join(format!("{h}.meta.tmp"));
    let reused = reuse.is_some_and(|from| match recycle::rename_new(&from, &data_p) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(file = %from.display(), error = %e, "could not reuse a pooled chunk file");
            false
        }
    });
    let data = eio::open_data(&data_p, direct, !reused).map_err(|e| {
        if reused {
            // Not left for a retried create to find in its way.
            let _ = std::fs::remove_file(&data_p);
        }
        (format!("create {}", data_p.display()), e)
    })?;
    let header = Header {
        seq: 1,
        handle: h.0,
        version,
        synced_seq: 0,
        chunk_size,
    };
    // The metadata file is written whole at creation so later updates never
    // allocate (and so cannot hit ENOSPC half-way).
    let mut image = vec![0u8; layout::meta_file_bytes(chunk_size) as usize];
    image[..layout::HEADER_BYTES].copy_from_slice(&header.encode());
    // Writing the renamed metadata file is the commit point; a data file
    // without one is removed by recovery.
    let write = || -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all_at(&image, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &meta_p)?;
        eio::sync_dir(dir)?;
        Ok(f)
    };
    let meta = write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&data_p);
        (format!("create {}", meta_p.display()), e)
    })?;
    Ok(ChunkState {
        version,
        length: 0,
        crcs: Vec::new(),
        slots: Vec::new(),
        next_seq: 1,
        synced_seq: 0,
        header_seq: 1,
        header_slot: 0,
        data: Arc::new(data),
        meta: Arc::new(meta),
        // A pooled file is a whole chunk, every block allocated.
        allocated: if reused { chunk_size } else { 0 },
        tail: None,
        deleted: false,
        ahead: None,
    })
}

pub(super) struct Recovered {
    pub state: ChunkState,
    pub cut: Option<(u64, u64)>,
}

pub(super) enum RecoverError {
    Corrupt(String),
    Store(StoreError),
}

impl From<StoreError> for RecoverError {
    fn from(e: StoreError) -> Self {
        RecoverError::Store(e)
    }
}

pub(super) fn recover(
    dir: &Path,
    h: ChunkHandle,
    direct: bool,
    chunk_size: u64,
    verify_all: bool,
) -> std::result::Result<Recovered, RecoverError> {
    use std::os::unix::fs::FileExt;
    let meta_p = meta_path(dir, h);
    let data_p = data_path(dir, h);
    let meta = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&meta_p)
        .context(|| format!("open {}", meta_p.display()))?;
    let mut image = Vec::new();
    io::Read::read_to_end(&mut &meta, &mut image)
        .context(|| format!("read {}", meta_p.display()))?;
    let Some((header, header_slot)) = layout::newest_header(&image) else {
        return Err(RecoverError::Corrupt("no valid header".into()));
    };
    if header.handle != h.0 || header.chunk_size != chunk_size {
        return Err(RecoverError::Corrupt(format!(
            "header names chunk {:016x} of size {}, expected {h} of size {chunk_size}",
            header.handle, header.chunk_size
        )));
    }
    if image.len() as u64 != layout::meta_file_bytes(chunk_size) {
        return Err(RecoverError::Corrupt(format!(
            "metadata file has {} bytes",
            image.len()
        )));
    }
    let data = match eio::open_data(&data_p, direct, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RecoverError::Corrupt("data file is missing".into()));
        }
        Err(e) => return Err(StoreError::io(format!("open {}", data_p.display()), e).into()),
    };
    let blocks = layout::blocks_per_chunk(chunk_size);
    let entries = layout::decode_entries(&image, blocks);
    let mut scratch = AlignedBuf::zeroed(BLOCK_BYTES as usize);
    let verdict = recovery::recover(&entries, header.synced_seq, verify_all, |b, e| {
        let want = align_up(u64::from(e.len)) as usize;
        match data.read_exact_at(&mut scratch.as_mut_slice()[..want], b as u64 * BLOCK_BYTES) {
            Ok(()) => Ok(gfs_proto::crc::crc32c(&scratch.as_slice()[..e.len as usize]) == e.crc),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(err) => Err(err),
        }
    });
    let r = match verdict {
        Ok(Verdict::Healthy(r)) => r,
        Ok(Verdict::Corrupt(reason)) => return Err(RecoverError::Corrupt(reason)),
        Err(e) => {
            return Err(RecoverError::Corrupt(format!(
                "read error while verifying: {e}"
            )));
        }
    };

    let file_len = data
        .metadata()
        .context(|| format!("stat {}", data_p.display()))?
        .len();
    // Space allocated ahead of the data (`grow_to`) is given back here.
    let keep = align_up(r.length);
    let mut changed = false;
    if file_len > keep {
        data.set_len(keep)
            .context(|| format!("truncate {}", data_p.display()))?;
        changed = true;
    }
    if r.cut_from.is_some() {
        // Clear every entry that does not describe the recovered state, so a
        // later recovery can never resurrect the torn tail.
        let used = blocks_for_length(r.length);
        let zero = [0u8; layout::ENTRY_BYTES];
        for b in 0..blocks {
            for slot in 0..2u8 {
                let current = b < used && r.slots[b] == slot;
                if !current {
                    let at = layout::entry_offset(blocks, b, slot);
                    meta.write_all_at(&zero, at)
                        .context(|| format!("write {}", meta_p.display()))?;
                }
            }
        }
        changed = true;
    }
    if changed {
        data.sync_all()
            .context(|| format!("fsync {}", data_p.display()))?;
        meta.sync_all()
            .context(|| format!("fsync {}", meta_p.display()))?;
    }
    Ok(Recovered {
        cut: r.cut_from.map(|from| (from, r.length)),
        state: ChunkState {
            version: header.version,
            length: r.length,
            crcs: r.crcs,
            slots: r.slots,
            next_seq: r.max_seq.max(header.synced_seq) + 1,
            synced_seq: header.synced_seq,
            header_seq: header.seq,
            header_slot,
            data: Arc::new(data),
            meta: Arc::new(meta),
            allocated: file_len.min(keep),
            tail: None,
            deleted: false,
            ahead: None,
        },
    })
}

/// The size to allocate a chunk's data file to before a write that ends at
/// `end`, when `allocated` bytes of it are: twice what it had (at least
/// `end`, at most the chunk). `None` when the write fits.
///
/// Allocated ahead (fallocate, mode 0: the size grows with the blocks), a
/// sequential writer's writes land below the file's end, which ext4 takes
/// under its shared inode lock; writes that extend the file take it
/// exclusively, and io_uring hands every one of them to a worker thread
/// (BENCHMARKS.md, 2026-12-02, midday). Doubling keeps the count of
/// allocations to a handful a chunk and the unwritten space below the
/// data's own size, as GFS's lazy allocation wants; recovery gives that
/// space back at open.
pub(super) fn grow_to(allocated: u64, end: u64, chunk_size: u64) -> Option<u64> {
    (end > allocated).then(|| allocated.saturating_mul(2).clamp(end, chunk_size.max(end)))
}

/// Allocates `file` up to `to` bytes (from `from`); the size grows with it.
pub(super) fn allocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from))) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor
    // is owned by `file`, alive for the call.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, off, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn quarantine(root: &Path, chunks: &Path, h: ChunkHandle) -> Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let q = root.join(QUARANTINE);
    for src in [data_path(chunks, h), meta_path(chunks, h)] {
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = q.join(format!("{}.{stamp}", name.to_string_lossy()));
        match std::fs::rename(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("quarantine {}", src.display()), e)),
        }
    }
    eio::sync_dir(chunks).context(|| format!("fsync {}", chunks.display()))?;
    eio::sync_dir(&q).context(|| format!("fsync {}", q.display()))
}

#[cfg(test)]
mod tests {
    use super::grow_to;

    const MIB: u64 = 1 << 20;

    #[test]
    fn chunk_files_grow_by_doubling_up_to_the_chunk() {
        let chunk = 64 * MIB;
        // A sequential writer of 1 MiB pieces: seven allocations a chunk.
        let (mut allocated, mut grown) = (0, Vec::new());
        for end in (1..=64).map(|i| i * MIB) {
            if let Some(to) = grow_to(allocated, end, chunk) {
                grown.push(to / MIB);
                allocated = to;
            }
        }
        assert_eq!(grown, [1, 2, 4, 8, 16, 32, 64]);
        // A write that fits asks for nothing; one past twice the size gets
        // what it needs; the chunk is the cap.
        assert_eq!(grow_to(8 * MIB, 8 * MIB, chunk), None);
        assert_eq!(grow_to(8 * MIB, 4 * MIB, chunk), None);
        assert_eq!(grow_to(MIB, 10 * MIB, chunk), Some(10 * MIB));
        assert_eq!(grow_to(40 * MIB, 41 * MIB, chunk), Some(64 * MIB));
        // A small file's first write allocates only itself.
        assert_eq!(grow_to(0, 4096, chunk), Some(4096));
        assert_eq!(grow_to(4096, 8192 + 512, chunk), Some(8192 + 512));
    }
}
