//! The engine's one error type. Each variant tells the caller what to do next.

use std::io;
use std::path::PathBuf;

use gfs_proto::ChunkHandle;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} does not exist")]
    NotFound(ChunkHandle),

    #[error("chunk {0} already exists")]
    AlreadyExists(ChunkHandle),

    #[error("chunk {handle}: range {offset}+{len} is outside its length {length}")]
    OutOfRange {
        handle: ChunkHandle,
        offset: u64,
        len: u64,
        length: u64,
    },

    /// The mutation would grow the chunk past the chunk size: pad it and move
    /// on to the next chunk.
    #[error("chunk {handle} has {free} bytes free, {requested} were asked for")]
    ChunkFull {
        handle: ChunkHandle,
        free: u64,
        requested: u64,
    },

    /// A mutation placed at the chunk's end (`submit_at_end`) found it
    /// elsewhere: one placed before it did not land here.
    #[error(
        "chunk {handle} ends at {length} here, not at {offset}: a mutation before this one did not land"
    )]
    NotAtEnd {
        handle: ChunkHandle,
        offset: u64,
        length: u64,
    },

    #[error("request of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },

    /// Data on disk does not match its checksum. Never returned as data: read
    /// another replica, and have this one re-replicated.
    #[error("chunk {handle}: checksum mismatch in block {block}")]
    Corrupt { handle: ChunkHandle, block: u64 },

    /// The disk is full. Nothing already written was touched.
    #[error("no space left in {dir}")]
    NoSpace { dir: PathBuf },

    /// An earlier write or fsync failed in this directory, so its contents
    /// can no longer be trusted to be on disk. It refuses writes until the
    /// process restarts and recovery runs.
    #[error("{dir} refuses writes since an earlier failure: {reason}")]
    Poisoned { dir: PathBuf, reason: String },

    /// An append accepted after one that failed: it was not applied
    /// either (`store::ahead`). Nothing acknowledged was touched; retry.
    #[error("chunk {0}: an append accepted before this one failed, so this one was withdrawn")]
    Withdrawn(ChunkHandle),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds a description of what was being done to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| StoreError::io(what(), e))
    }
}
