//! Chunk storage for gfs-rs chunkservers.
//!
//! What this crate owns: chunk files on local disks. A [`ChunkStore`] serves
//! one or more data directories (one per disk); each directory has its own
//! I/O backend: io_uring with O_DIRECT on a dedicated thread, or the
//! portable pread/pwrite thread pool, chosen at open (and logged with why).
//!
//! Modules:
//! - [`store`]: the `ChunkStore` handle: create, write, append, read, pad,
//!   version, sync, delete, list, usage, scrub;
//! - [`layout`]: on-disk format of a chunk (alignment, metadata encoding);
//! - [`recovery`]: the pure decision of what a chunk holds after a crash;
//! - [`backend`]: the I/O seam and its io_uring, portable and fault-injecting
//!   implementations;
//! - [`buf`]: sector-aligned buffers and their pool;
//! - [`config`]: configuration, raw and validated;
//! - [`counters`]: the kernel's counters of the host's CPUs and devices;
//! - [`error`]: the one error type.
//!
//! Invariants:
//! - No byte leaves the store without its 64 KiB block passing CRC32C; a
//!   mismatch is `StoreError::Corrupt` naming chunk and block.
//! - After a crash, each chunk reports a length such that every byte below
//!   it passes its checksum; a torn tail is cut, a chunk whose complete data
//!   is damaged is quarantined (moved aside), never silently deleted.
//! - An update of checksums or version never overwrites the copy describing
//!   the current state (two slots, sequence numbers).
//! - After a failed write or fsync a directory refuses all writes.
//! - Buffer memory, request size, chunk size and I/Os in flight are bounded
//!   by [`StoreConfig`].
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod buf;
pub mod config;
pub mod counters;
pub mod error;
mod io;
pub mod layout;
pub mod recovery;
pub mod store;

pub use backend::faulty::{FaultSwitch, Faults};
pub use config::{BackendKind, StoreConfig, StoreConfigFile};
pub use error::{Result, StoreError};
pub use io::disk_space;
pub use store::{
    ChunkInfo, ChunkStore, CorruptChunk, DirIo, DiskUsage, Landing, Prepared, Received, Receiving,
    RecoveryReport, STALLED_DIR,
};
