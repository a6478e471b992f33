//! On-disk layout of a chunk, as pure functions: alignment arithmetic and the
//! encoding of the chunk's metadata file.
//!
//! Each chunk is two files in `<dir>/chunks/`:
//! - `<handle>.chunk`: the data, written with O_DIRECT in whole sectors. Its
//!   size is the chunk length rounded up to a sector; bytes past the length
//!   are zeros and never served.
//! - `<handle>.meta`: written buffered. Two header slots (one per 4 KiB
//!   sector) hold the chunk version and the sync watermark; then two arrays
//!   of block entries (slot 0 for every block, then slot 1), one entry per
//!   64 KiB block holding the CRC32C and length of that block's data.
//!
//! Every header and entry carries its own CRC32C and a sequence number. An
//! update never overwrites the copy that describes the current state: it
//! goes to the other slot with a higher sequence number. A torn or lost
//! update therefore leaves the previous state readable, which is what crash
//! recovery falls back to (see `recovery`).

use gfs_proto::limits::CHECKSUM_BLOCK_BYTES;

/// Alignment of every O_DIRECT address, offset and length. 4 KiB is a
/// multiple of every logical block size in use (512 B and 4 KiB devices).
pub const SECTOR_BYTES: u64 = 4096;
/// Bytes covered by one CRC32C.
pub const BLOCK_BYTES: u64 = CHECKSUM_BLOCK_BYTES;

const _: () = assert!(BLOCK_BYTES.is_multiple_of(SECTOR_BYTES));

pub const META_MAGIC: u32 = 0x4346_5347; // "GSFC" little-endian
pub const META_FORMAT: u16 = 1;
/// Each header slot has a sector of its own, so tearing one never touches the other.
pub const HEADER_SLOT_BYTES: u64 = SECTOR_BYTES;
pub const HEADER_BYTES: usize = 52;
pub const ENTRIES_OFFSET: u64 = 2 * HEADER_SLOT_BYTES;
pub const ENTRY_BYTES: usize = 24;

const _: () = assert!(HEADER_BYTES as u64 <= HEADER_SLOT_BYTES);

pub fn align_down(x: u64) -> u64 {
    x & !(SECTOR_BYTES - 1)
}

pub fn align_up(x: u64) -> u64 {
    align_down(x + SECTOR_BYTES - 1)
}

/// Number of checksum blocks in a chunk of `chunk_size` bytes.
pub fn blocks_per_chunk(chunk_size: u64) -> usize {
    chunk_size.div_ceil(BLOCK_BYTES) as usize
}

/// Number of blocks holding data in a chunk of `length` bytes.
pub fn blocks_for_length(length: u64) -> usize {
    length.div_ceil(BLOCK_BYTES) as usize
}

/// Size of a chunk's metadata file.
pub fn meta_file_bytes(chunk_size: u64) -> u64 {
    ENTRIES_OFFSET + 2 * blocks_per_chunk(chunk_size) as u64 * ENTRY_BYTES as u64
}

/// Offset in the metadata file of header slot `slot`.
pub fn header_offset(slot: u8) -> u64 {
    u64::from(slot) * HEADER_SLOT_BYTES
}

/// Offset in the metadata file of `block`'s entry in `slot`.
pub fn entry_offset(blocks: usize, block: usize, slot: u8) -> u64 {
    ENTRIES_OFFSET + ((usize::from(slot) * blocks + block) * ENTRY_BYTES) as u64
}

/// The durable description of a chunk: its identity, version and the entry
/// sequence number up to which everything was fdatasynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub handle: u64,
    pub version: u64,
    /// Every entry with `seq <= synced_seq` and the data it describes were
    /// fdatasynced; recovery trusts them without re-reading the data.
    pub synced_seq: u64,
    pub chunk_size: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&META_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&META_FORMAT.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.handle.to_le_bytes());
        out[24..32].copy_from_slice(&self.version.to_le_bytes());
        out[32..40].copy_from_slice(&self.synced_seq.to_le_bytes());
        out[40..48].copy_from_slice(&self.chunk_size.to_le_bytes());
        let crc = gfs_proto::crc::crc32c(&out[..48]);
        out[48..52].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header slot; `None` if it is empty, torn or of another format.
    pub fn decode(raw: &[u8]) -> Option<Header> {
        let raw = raw.get(..HEADER_BYTES)?;
        if gfs_proto::crc::crc32c(&raw[..48]) != le_u32(&raw[48..52]) {
            return None;
        }
        if le_u32(&raw[0..4]) != META_MAGIC || u16::from_le_bytes([raw[4], raw[5]]) != META_FORMAT {
            return None;
        }
        Some(Header {
            seq: le_u64(&raw[8..16]),
            handle: le_u64(&raw[16..24]),
            version: le_u64(&raw[24..32]),
            synced_seq: le_u64(&raw[32..40]),
            chunk_size: le_u64(&raw[40..48]),
        })
    }
}

/// Checksum of one block: the CRC32C of its first `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub len: u32,
    pub crc: u32,
}

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..16].copy_from_slice(&self.crc.to_le_bytes());
        let ecrc = gfs_proto::crc::crc32c(&out[..16]);
        out[16..20].copy_from_slice(&ecrc.to_le_bytes());
        out
    }

    /// Decodes an entry; `None` if it was never written, is torn, or is
    /// out of range. (All zeros is invalid: the CRC32C of zeros is not zero.)
    pub fn decode(raw: &[u8]) -> Option<Entry> {
        let raw = raw.get(..ENTRY_BYTES)?;
        if gfs_proto::crc::crc32c(&raw[..16]) != le_u32(&raw[16..20]) {
            return None;
        }
        let len = le_u32(&raw[8..12]);
        if len == 0 || u64::from(len) > BLOCK_BYTES {
            return None;
        }
        Some(Entry {
            seq: le_u64(&raw[0..8]),
            len,
            crc: le_u32(&raw[12..16]),
        })
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("caller passes 4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("caller passes 8 bytes"))
}

/// Decodes the two header slots of a metadata file image and returns the
/// newest valid one, with its slot.
pub fn newest_header(meta: &[u8]) -> Option<(Header, u8)> {
    (0..2u8)
        .filter_map(|slot| {
            let at = header_offset(slot) as usize;
            Header::decode(meta.get(at..)?).map(|h| (h, slot))
        })
        .max_by_key(|(h, _)| h.seq)
}

/// Decodes both entry slots of every block from a metadata file image.
pub fn decode_entries(meta: &[u8], blocks: usize) -> Vec<[Option<Entry>; 2]> {
    (0..blocks)
        .map(|b| {
            let slot = |s: u8| {
                let at = entry_offset(blocks, b, s) as usize;
                meta.get(at..).and_then(Entry::decode)
            };
            [slot(0), slot(1)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_arithmetic() {
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(8192), 8192);
        assert_eq!(blocks_per_chunk(64 << 20), 1024);
        assert_eq!(blocks_for_length(0), 0);
        assert_eq!(blocks_for_length(65_537), 2);
        assert_eq!(meta_file_bytes(64 << 20), 8192 + 2 * 1024 * 24);
        assert_eq!(entry_offset(1024, 3, 1), 8192 + (1024 + 3) * 24);
    }

    #[test]
    fn header_round_trips_and_rejects_any_flipped_bit() {
        let h = Header {
            seq: 3,
            handle: 0xabc,
            version: 9,
            synced_seq: 41,
            chunk_size: 1 << 20,
        };
        let raw = h.encode();
        assert_eq!(Header::decode(&raw), Some(h));
        for bit in 0..HEADER_BYTES * 8 {
            let mut bad = raw;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Header::decode(&bad), None, "bit {bit}");
        }
        assert_eq!(Header::decode(&[0u8; HEADER_BYTES]), None);
    }

    #[test]
    fn entry_round_trips_and_zeros_are_invalid() {
        let e = Entry {
            seq: 77,
            len: 65_536,
            crc: 0xdead_beef,
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode(&[0u8; ENTRY_BYTES]), None);
        let too_long = Entry { len: 65_537, ..e };
        assert_eq!(Entry::decode(&too_long.encode()), None);
        let mut torn = e.encode();
        torn[9] ^= 4;
        assert_eq!(Entry::decode(&torn), None);
    }

    #[test]
    fn newest_valid_header_wins() {
        let mut meta = vec![0u8; meta_file_bytes(1 << 20) as usize];
        let old = Header {
            seq: 1,
            handle: 5,
            version: 1,
            synced_seq: 0,
            chunk_size: 1 << 20,
        };
        let new = Header {
            seq: 2,
            version: 2,
            ..old
        };
        meta[..HEADER_BYTES].copy_from_slice(&old.encode());
        meta[4096..4096 + HEADER_BYTES].copy_from_slice(&new.encode());
        assert_eq!(newest_header(&meta), Some((new, 1)));
        meta[4100] ^= 1;
        assert_eq!(newest_header(&meta), Some((old, 0)));
    }
}
