//! CRC-32C (Castagnoli), the checksum of every 64 KiB block on disk, of
//! every record and of every metadata header: one implementation for all
//! of gfs-rs.
//!
//! Backed by `crc-fast`, which picks the widest carry-less multiply the
//! CPU has at run time (AVX-512 VPCLMULQDQ, PCLMULQDQ, ARM PMULL) and
//! falls back to a table where it has none. On the development VM (AMD
//! EPYC, AVX-512) it checksums 1 MiB buffers at 41-49 GB/s from cache and
//! 16-21 GB/s from memory, against 21-23 and 8-10 GB/s for the `crc32c`
//! crate's three-way SSE 4.2 loop; the checksums were 10 % of the CPU
//! time of a figure3 write at N = 4 (BENCHMARKS.md, 2026-12-02,
//! afternoon). The values are the same: `crc32c` stays as the reference
//! the tests below compare against.

use crc_fast::{CrcAlgorithm, Digest};

/// CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// CRC-32C of the bytes whose checksum is `crc` followed by `data`: what
/// `crc32c` of the two together gives, without reading the first again.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        return crc;
    }
    // The running register is the finished checksum with its final
    // inversion undone.
    let mut d = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    d.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes that vary (the high byte of a multiplicative hash).
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        (0..n as u64)
            .map(|i| ((i + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect()
    }

    #[test]
    fn the_catalogue_check_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    }

    #[test]
    fn agrees_with_the_reference_at_every_length_and_alignment() {
        // Lengths around every width the SIMD paths switch at, from every
        // start within a cache line; and whole blocks.
        let data = bytes(300_000, 7);
        for start in 0..64 {
            for len in (0..600).chain([4095, 4096, 4097, 65_535, 65_536, 65_537, 262_144]) {
                let s = &data[start..start + len];
                assert_eq!(crc32c(s), crc32c::crc32c(s), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn appending_equals_the_checksum_of_the_whole() {
        let data = bytes(200_000, 11);
        for split in [0, 1, 7, 63, 64, 4096, 65_536, 99_999, 200_000] {
            let (a, b) = data.split_at(split);
            let whole = crc32c(&data);
            assert_eq!(crc32c_append(crc32c(a), b), whole, "split {split}");
            assert_eq!(
                crc32c_append(crc32c(a), b),
                crc32c::crc32c_append(crc32c(a), b)
            );
        }
        assert_eq!(crc32c_append(0x1234_5678, b""), 0x1234_5678);
    }
}
