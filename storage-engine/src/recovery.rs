//! Crash recovery of one chunk, as a pure decision over its decoded entries.
//!
//! Inputs: both entry slots of every block, the header's sync watermark, and
//! a `verify` callback that checks a block's data against an entry (the only
//! I/O, injected so the rules can be tested by exact output).
//!
//! Rules:
//! - A block's newest entry is trusted without reading data when its
//!   sequence number is at or below the sync watermark (it and its data were
//!   fdatasynced), unless `verify_all` is set.
//! - Otherwise the block's entries are tried newest first; the first whose
//!   checksum matches the data wins. A synced entry that fails is corruption.
//! - The chunk ends at the first block that is empty, partial, or whose
//!   entries all fail (a torn mutation).
//! - Entries past the end are the torn tail and are cut, unless one of them
//!   was synced or predates the torn mutation: then data that was complete
//!   lies behind a damaged block, and the chunk is corrupt (quarantined,
//!   never silently shortened).

use crate::layout::{BLOCK_BYTES, Entry};

/// Outcome of recovering one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy(Recovered),
    Corrupt(String),
}

/// The state a healthy chunk resumes with.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    pub length: u64,
    /// CRC32C of each block holding data.
    pub crcs: Vec<u32>,
    /// Which slot holds each block's current entry.
    pub slots: Vec<u8>,
    /// Highest sequence number seen in any entry: new entries go above it.
    pub max_seq: u64,
    /// Set when a torn tail was cut: the length the discarded entries claimed.
    pub cut_from: Option<u64>,
}

/// Candidate entries of a block, newest first, with their slots.
fn candidates(slots: &[Option<Entry>; 2]) -> Vec<(Entry, u8)> {
    let mut c: Vec<(Entry, u8)> = (0..2u8)
        .filter_map(|s| slots[usize::from(s)].map(|e| (e, s)))
        .collect();
    c.sort_by_key(|(e, _)| std::cmp::Reverse(e.seq));
    c
}

pub fn recover<E>(
    blocks: &[[Option<Entry>; 2]],
    synced_seq: u64,
    verify_all: bool,
    mut verify: impl FnMut(usize, Entry) -> Result<bool, E>,
) -> Result<Verdict, E> {
    let mut out = Recovered {
        length: 0,
        crcs: Vec::new(),
        slots: Vec::new(),
        max_seq: blocks
            .iter()
            .flatten()
            .flatten()
            .map(|e| e.seq)
            .max()
            .unwrap_or(0),
        cut_from: None,
    };
    let mut end = blocks.len();
    // Sequence number of the mutation that tore, if one did.
    let mut torn_seq = None;
    for (b, slots) in blocks.iter().enumerate() {
        let cands = candidates(slots);
        let Some(&(newest, _)) = cands.first() else {
            end = b;
            break;
        };
        let mut chosen = None;
        if !verify_all && newest.seq <= synced_seq {
            chosen = cands.first().copied();
        } else {
            for &(entry, slot) in &cands {
                if verify(b, entry)? {
                    chosen = Some((entry, slot));
                    break;
                }
                if entry.seq <= synced_seq {
                    return Ok(Verdict::Corrupt(format!(
                        "block {b}: synced data fails its checksum"
                    )));
                }
            }
        }
        let Some((entry, slot)) = chosen else {
            if cands.len() > 1 {
                // Only the newest entry can belong to the torn mutation.
                return Ok(Verdict::Corrupt(format!(
                    "block {b}: data written before a torn mutation fails its checksum"
                )));
            }
            torn_seq = Some(newest.seq);
            end = b;
            break;
        };
        if entry.seq != newest.seq {
            torn_seq = Some(newest.seq);
        }
        out.crcs.push(entry.crc);
        out.slots.push(slot);
        out.length += u64::from(entry.len);
        if u64::from(entry.len) < BLOCK_BYTES || torn_seq.is_some() {
            end = b + 1;
            break;
        }
    }

    // Everything the entries claimed, for the report.
    let claimed = blocks
        .iter()
        .enumerate()
        .filter_map(|(b, s)| {
            candidates(s)
                .first()
                .map(|(e, _)| b as u64 * BLOCK_BYTES + u64::from(e.len))
        })
        .max()
        .unwrap_or(0);
    for (b, slots) in blocks.iter().enumerate().skip(end) {
        for (entry, _) in candidates(slots) {
            if entry.seq <= synced_seq {
                return Ok(Verdict::Corrupt(format!(
                    "block {b}: synced entry lies past the recovered end {}",
                    out.length
                )));
            }
            if torn_seq.is_some_and(|t| entry.seq < t) {
                return Ok(Verdict::Corrupt(format!(
                    "block {b}: complete data lies behind a torn block (length {})",
                    out.length
                )));
            }
        }
    }
    if claimed > out.length {
        out.cut_from = Some(claimed);
    }
    Ok(Verdict::Healthy(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: u32 = BLOCK_BYTES as u32;

    fn e(seq: u64, len: u32, crc: u32) -> Option<Entry> {
        Some(Entry { seq, len, crc })
    }

    /// Verifies by a fixed table of which (block, crc) pairs match the data.
    fn data_matches(good: &[(usize, u32)]) -> impl FnMut(usize, Entry) -> Result<bool, ()> + '_ {
        move |b, entry| Ok(good.contains(&(b, entry.crc)))
    }

    fn healthy(length: u64, crcs: &[u32], slots: &[u8], max_seq: u64, cut: Option<u64>) -> Verdict {
        Verdict::Healthy(Recovered {
            length,
            crcs: crcs.to_vec(),
            slots: slots.to_vec(),
            max_seq,
            cut_from: cut,
        })
    }

    #[test]
    fn an_empty_chunk_recovers_empty() {
        let blocks = vec![[None, None]; 4];
        assert_eq!(
            recover(&blocks, 0, false, data_matches(&[])),
            Ok(healthy(0, &[], &[], 0, None))
        );
    }

    #[test]
    fn synced_entries_are_trusted_without_reading() {
        let blocks = vec![[e(1, FULL, 10), None], [e(2, 100, 11), None], [None, None]];
        let mut reads = 0;
        let v = recover(&blocks, 2, false, |_, _| -> Result<bool, ()> {
            reads += 1;
            Ok(false)
        });
        assert_eq!(
            v,
            Ok(healthy(BLOCK_BYTES + 100, &[10, 11], &[0, 0], 2, None))
        );
        assert_eq!(reads, 0);
    }

    #[test]
    fn a_torn_append_falls_back_to_the_older_slot_and_is_cut() {
        // Block 1 held 100 bytes (seq 2, slot 0); an append (seq 3) filled it
        // and started block 2, but block 1's data never landed.
        let blocks = vec![
            [e(1, FULL, 10), None],
            [e(2, 100, 11), e(3, FULL, 12)],
            [e(3, 50, 13), None],
            [None, None],
        ];
        let good = [(0, 10), (1, 11), (2, 13)];
        assert_eq!(
            recover(&blocks, 1, false, data_matches(&good)),
            Ok(healthy(
                BLOCK_BYTES + 100,
                &[10, 11],
                &[0, 0],
                3,
                Some(2 * BLOCK_BYTES + 50)
            ))
        );
    }

    #[test]
    fn an_unsynced_block_whose_entries_all_fail_ends_the_chunk() {
        let blocks = vec![[e(1, FULL, 10), None], [e(2, 10, 11), None]];
        assert_eq!(
            recover(&blocks, 0, false, data_matches(&[(0, 10)])),
            Ok(healthy(BLOCK_BYTES, &[10], &[0], 2, Some(BLOCK_BYTES + 10)))
        );
    }

    #[test]
    fn synced_data_that_fails_under_full_verification_is_corrupt() {
        let blocks = vec![[e(1, FULL, 10), None], [e(1, 10, 11), None]];
        assert_eq!(
            recover(&blocks, 1, true, data_matches(&[(0, 10)])),
            Ok(Verdict::Corrupt(
                "block 1: synced data fails its checksum".into()
            ))
        );
    }

    #[test]
    fn complete_data_behind_a_torn_overwrite_is_corrupt_not_cut() {
        // Blocks 0..3 were written at seq 1..3; an overwrite of block 1 (seq 4)
        // tore: neither of block 1's entries matches its data any more.
        let blocks = vec![
            [e(1, FULL, 10), None],
            [e(2, FULL, 11), e(4, FULL, 14)],
            [e(3, FULL, 12), None],
        ];
        assert_eq!(
            recover(&blocks, 0, false, data_matches(&[(0, 10), (2, 12)])),
            Ok(Verdict::Corrupt(
                "block 1: data written before a torn mutation fails its checksum".into()
            ))
        );
    }

    #[test]
    fn complete_data_behind_a_torn_new_block_is_corrupt_not_cut() {
        // Block 1 was written fresh by seq 4 and tore; block 2 holds older data.
        let blocks = vec![
            [e(1, FULL, 10), None],
            [e(4, FULL, 14), None],
            [e(3, FULL, 12), None],
        ];
        assert_eq!(
            recover(&blocks, 0, false, data_matches(&[(0, 10), (2, 12)])),
            Ok(Verdict::Corrupt(
                "block 2: complete data lies behind a torn block (length 65536)".into()
            ))
        );
    }

    #[test]
    fn a_synced_entry_past_the_end_is_corrupt() {
        let blocks = vec![[e(5, 10, 10), None], [e(1, FULL, 11), None]];
        assert_eq!(
            recover(&blocks, 1, false, data_matches(&[(0, 10)])),
            Ok(Verdict::Corrupt(
                "block 1: synced entry lies past the recovered end 10".into()
            ))
        );
    }

    #[test]
    fn verification_errors_propagate() {
        let blocks = vec![[e(1, 10, 10), None]];
        assert_eq!(recover(&blocks, 0, false, |_, _| Err("eio")), Err("eio"));
    }
}
