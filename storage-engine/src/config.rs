//! Store configuration in two steps: [`StoreConfigFile`] is what TOML or
//! flags say, with defaults; [`StoreConfig`] is the validated form the store
//! runs with, built by destructuring every field so none is forgotten.

use std::path::PathBuf;

use gfs_proto::limits::DEFAULT_CHUNK_SIZE_BYTES;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::layout::{BLOCK_BYTES, SECTOR_BYTES};

/// Which I/O backend serves a directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// io_uring with O_DIRECT when both work, else the portable backend.
    #[default]
    Auto,
    Uring,
    Portable,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfigFile {
    /// One data directory per disk.
    pub dirs: Vec<PathBuf>,
    pub chunk_size_bytes: u64,
    /// Largest single read, write or append.
    pub max_request_bytes: u64,
    /// Size of one device I/O; a larger request is split into several in flight.
    pub io_size_bytes: u64,
    /// Device I/Os in flight per directory.
    pub io_depth: u32,
    /// Threads of the portable backend per directory.
    pub portable_threads: u32,
    /// Bound on aligned buffer memory held by requests in flight.
    pub buffer_memory_bytes: u64,
    /// Carve I/O buffers from one arena of `buffer_memory_bytes` registered
    /// with io_uring (pinned memory; less CPU per byte moved).
    pub registered_buffers: bool,
    pub backend: BackendKind,
    /// Use O_DIRECT where the filesystem accepts it. Off forces buffered
    /// I/O (acknowledged writes then sit in the page cache until `sync`).
    pub direct_io: bool,
    /// Re-read and verify every block at open, not only unsynced ones.
    pub verify_on_open: bool,
    /// Background scrub rate; 0 disables the scrubber.
    pub scrub_rate_bytes_per_s: u64,
    /// A chunk is scrubbed only if it saw no mutation for this long.
    pub scrub_idle_ms: u64,
    /// Data files of deleted full chunks kept per directory, for new chunks
    /// to write over: a filesystem takes writes over allocated blocks
    /// faster than into new ones (ext4 ~20 %, and io_uring issues them
    /// without a worker thread). The default, 64, is 4 GiB of 64 MiB
    /// chunks: enough to absorb a garbage-collection pass's burst of
    /// deletes, a fraction of a percent of an NVMe drive, and counted as
    /// free space. 0 removes every deleted chunk's files.
    pub recycle_chunk_files: u32,
    /// Appends of one chunk that may be on the disk at once: an append at
    /// a sector-aligned end goes to the disk while up to this many before
    /// it are still there (`store::ahead`). 1 writes a chunk's appends one
    /// at a time, waiting for each.
    pub appends_ahead: u32,
}

impl Default for StoreConfigFile {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            chunk_size_bytes: DEFAULT_CHUNK_SIZE_BYTES,
            max_request_bytes: 8 << 20,
            io_size_bytes: 1 << 20,
            io_depth: 8,
            portable_threads: 4,
            buffer_memory_bytes: 256 << 20,
            registered_buffers: true,
            backend: BackendKind::Auto,
            direct_io: true,
            verify_on_open: false,
            scrub_rate_bytes_per_s: 32 << 20,
            scrub_idle_ms: 60_000,
            recycle_chunk_files: 64,
            appends_ahead: 2,
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dirs: Vec<PathBuf>,
    pub chunk_size_bytes: u64,
    pub max_request_bytes: u64,
    pub io_size_bytes: u64,
    pub io_depth: u32,
    pub portable_threads: u32,
    pub buffer_memory_bytes: u64,
    pub registered_buffers: bool,
    pub backend: BackendKind,
    pub direct_io: bool,
    pub verify_on_open: bool,
    pub scrub_rate_bytes_per_s: u64,
    pub scrub_idle_ms: u64,
    pub recycle_chunk_files: u32,
    pub appends_ahead: u32,
}

impl StoreConfigFile {
    /// A configuration for one directory with every other field defaulted.
    pub fn for_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dirs: vec![dir.into()],
            ..Self::default()
        }
    }

    pub fn validate(self) -> Result<StoreConfig> {
        let StoreConfigFile {
            dirs,
            chunk_size_bytes,
            max_request_bytes,
            io_size_bytes,
            io_depth,
            portable_threads,
            buffer_memory_bytes,
            registered_buffers,
            backend,
            direct_io,
            verify_on_open,
            scrub_rate_bytes_per_s,
            scrub_idle_ms,
            recycle_chunk_files,
            appends_ahead,
        } = self;
        let bad = |m: String| Err(StoreError::Config(m));
        if dirs.is_empty() {
            return bad("at least one data directory is needed".into());
        }
        if chunk_size_bytes == 0 || chunk_size_bytes % BLOCK_BYTES != 0 {
            return bad(format!(
                "chunk_size_bytes {chunk_size_bytes} must be a positive multiple of {BLOCK_BYTES}"
            ));
        }
        if chunk_size_bytes > u64::from(u32::MAX) * BLOCK_BYTES {
            return bad(format!("chunk_size_bytes {chunk_size_bytes} is too large"));
        }
        if io_size_bytes == 0 || io_size_bytes % BLOCK_BYTES != 0 {
            return bad(format!(
                "io_size_bytes {io_size_bytes} must be a positive multiple of {BLOCK_BYTES}"
            ));
        }
        if max_request_bytes == 0 || max_request_bytes > chunk_size_bytes {
            return bad(format!(
                "max_request_bytes {max_request_bytes} must be in 1..=chunk_size_bytes"
            ));
        }
        if io_depth == 0 || io_depth > 4096 {
            return bad(format!("io_depth {io_depth} must be in 1..=4096"));
        }
        if appends_ahead == 0 || appends_ahead > 64 {
            return bad(format!("appends_ahead {appends_ahead} must be in 1..=64"));
        }
        if portable_threads == 0 {
            return bad("portable_threads must be at least 1".into());
        }
        // One request of the largest size, with its block-aligned edges, must fit.
        let largest_buffer = max_request_bytes + 2 * BLOCK_BYTES + SECTOR_BYTES;
        if buffer_memory_bytes < largest_buffer {
            return bad(format!(
                "buffer_memory_bytes {buffer_memory_bytes} cannot hold one request of \
                 max_request_bytes {max_request_bytes} (needs {largest_buffer})"
            ));
        }
        Ok(StoreConfig {
            dirs,
            chunk_size_bytes,
            max_request_bytes,
            io_size_bytes,
            io_depth,
            portable_threads,
            buffer_memory_bytes,
            registered_buffers,
            backend,
            direct_io,
            verify_on_open,
            scrub_rate_bytes_per_s,
            scrub_idle_ms,
            recycle_chunk_files,
            appends_ahead,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_say_why() {
        let ok = StoreConfigFile::for_dir("/tmp/x").validate();
        assert!(ok.is_ok());
        let err = StoreConfigFile {
            chunk_size_bytes: 1000,
            ..StoreConfigFile::for_dir("/x")
        }
        .validate()
        .expect_err("unaligned chunk size");
        assert_eq!(
            err.to_string(),
            "invalid store configuration: chunk_size_bytes 1000 must be a positive multiple of 65536"
        );
        let none = StoreConfigFile::default().validate().expect_err("no dirs");
        assert!(none.to_string().contains("at least one data directory"));
    }

    #[test]
    fn toml_fields_are_checked() {
        let cfg: StoreConfigFile =
            toml_from_str("dirs = [\"/d\"]\nchunk_size_bytes = 1048576\nbackend = \"portable\"");
        assert_eq!(cfg.chunk_size_bytes, 1 << 20);
        assert_eq!(cfg.backend, BackendKind::Portable);
    }

    fn toml_from_str(s: &str) -> StoreConfigFile {
        toml::from_str(s).expect("valid toml")
    }
}
