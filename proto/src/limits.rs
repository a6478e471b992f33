//! Sizes every component agrees on.

/// Default size of a chunk: 64 MiB, as in GFS.
pub const DEFAULT_CHUNK_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// A CRC32C covers one block of this many bytes of chunk data.
pub const CHECKSUM_BLOCK_BYTES: u64 = 64 * 1024;

/// A record append carries at most a quarter of a chunk.
pub const fn max_record_bytes(chunk_size_bytes: u64) -> u64 {
    chunk_size_bytes / 4
}

const _: () = assert!(DEFAULT_CHUNK_SIZE_BYTES.is_multiple_of(CHECKSUM_BLOCK_BYTES));
const _: () = assert!(CHECKSUM_BLOCK_BYTES.is_power_of_two());
