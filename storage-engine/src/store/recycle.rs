//! Data files of deleted chunks, kept for new chunks to write over.
//!
//! A filesystem takes an O_DIRECT write over allocated, written blocks as
//! an overwrite: on ext4 under a shared inode lock, with no block
//! allocation and no journal update, and io_uring issues it inline. A
//! write into new blocks allocates them under the inode lock held
//! exclusively, so io_uring hands it to a worker thread. On the development
//! VM new blocks took ~2.0 GB/s against 2.3-2.5 GB/s of overwrites
//! (BENCHMARKS.md, "What bounds append"); on a later one 1.9-2.6 against
//! 4.5-6.2, and there the cost was the virtual disk's first write of a
//! block rather than ext4's (2026-12-03: unwritten extents over blocks
//! written before took overwrite speed). Either way a chunk store in steady state
//! deletes about as many chunks as it creates, so the data files of deleted
//! full chunks wait in `recycle/` (at most `recycle_chunk_files` per
//! directory) and a new chunk's data file is one of them, renamed.
//!
//! Why this is safe: a recycled file still holds the deleted chunk's bytes
//! past the new chunk's length, and nothing reads past a chunk's length.
//! Reads, scrubs and recovery verify only blocks that have entries, over
//! each entry's length, and the new chunk's metadata file is new (no
//! entries). Recovery truncates a data file to its chunk's length, as it
//! always did. Only files of exactly a chunk's size with every block
//! allocated are kept: a hole would be new blocks again.
//!
//! Crashes: a delete removes the metadata file first (its commit point) and
//! then renames the data file into the pool; a create renames a pooled
//! file to the chunk's data file and then commits the metadata file. A
//! crash in between leaves a data file without metadata, which recovery
//! removes (one pooled file lost, nothing else). A rename never replaces an
//! existing file (`RENAME_NOREPLACE`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gfs_proto::ChunkHandle;

pub(super) const RECYCLE: &str = "recycle";

/// Whether a deleted chunk's data file is worth keeping: a whole chunk,
/// every block allocated.
fn reusable(meta: &std::fs::Metadata, chunk_size: u64) -> bool {
    meta.is_file() && meta.len() == chunk_size && meta.blocks() * 512 >= chunk_size
}

/// How many of a directory's `pooled` files it keeps while its filesystem
/// has `free` bytes besides them: no more than leaves the pool as large as
/// the space free once the rest are removed (half of the two together).
/// A pool is free space only to the chunks created in its own directory;
/// where several chunkservers share a filesystem (a local cluster) or a
/// disk fills, the files go back before the filesystem runs out, not once
/// a write has failed for lack of the space they hold.
pub(super) fn keep(pooled: usize, free: u64, chunk_size: u64) -> usize {
    let free_files = usize::try_from(free / chunk_size.max(1)).unwrap_or(usize::MAX);
    pooled.min(pooled.saturating_add(free_files) / 2)
}

/// The pool a directory opens with: up to `cap` reusable files of
/// `recycle`; every other file there is removed.
pub(super) fn load(recycle: &Path, chunk_size: u64, cap: usize) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(recycle)?;
    let mut names: Vec<_> = std::fs::read_dir(recycle)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    names.sort();
    let mut pool = Vec::new();
    for path in names {
        let keep = pool.len() < cap
            && path.extension().is_some_and(|e| e == "free")
            && std::fs::symlink_metadata(&path).is_ok_and(|m| reusable(&m, chunk_size));
        if keep {
            pool.push(path);
        } else {
            tracing::info!(file = %path.display(), "removing a file the chunk pool does not keep");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(pool)
}

/// The data file `data` of chunk `handle`, whose metadata file is gone:
/// moved into the pool `keep` (its directory, and the chunk size) if given
/// and the file is reusable (its new path), otherwise removed.
pub(super) fn give(
    data: &Path,
    handle: ChunkHandle,
    keep: Option<(&Path, u64)>,
) -> io::Result<Option<PathBuf>> {
    if let Some((recycle, chunk_size)) = keep
        && std::fs::symlink_metadata(data).is_ok_and(|m| reusable(&m, chunk_size))
    {
        let to = recycle.join(format!("{handle}.free"));
        match rename_new(data, &to) {
            Ok(()) => return Ok(Some(to)),
            Err(e) => {
                tracing::warn!(file = %data.display(), error = %e, "could not keep a deleted chunk's file")
            }
        }
    }
    std::fs::remove_file(data)?;
    Ok(None)
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists.
pub(super) fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::keep;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_pool_is_kept_no_larger_than_the_space_free_besides_it() {
        // Plenty free: every file stays.
        assert_eq!(keep(64, 1 << 40, 64 * MIB), 64);
        assert_eq!(keep(0, 0, 64 * MIB), 0);
        // As much free as pooled: all stay; less: the pool gives way
        // until the two are even.
        assert_eq!(keep(8, 8 * MIB, MIB), 8);
        assert_eq!(keep(8, 7 * MIB, MIB), 7);
        assert_eq!(keep(8, 4 * MIB, MIB), 6);
        assert_eq!(keep(8, 0, MIB), 4);
        // Part of a chunk free counts for nothing.
        assert_eq!(keep(2, MIB - 1, MIB), 1);
        // One more file joins only where the space free holds it as well.
        assert_eq!(keep(5, 5 * MIB, MIB), 5);
        assert_eq!(keep(5, 4 * MIB, MIB), 4);
    }
}
