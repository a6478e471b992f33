//! Record framing for record append, and the scanner that finds records in
//! chunk data.
//!
//! A frame is `magic | payload length | CRC32C | client id | seq | payload`,
//! little-endian, [`HEADER_BYTES`] of header. The checksum covers the client
//! id, the sequence number and the payload. A frame of at least
//! [`PAD_FROM_BYTES`] is followed by zeros up to a whole number of
//! [`PAD_TO_BYTES`] ([`framed_len`]). A chunk holding appended records
//! may also hold zero padding (that, or a record that did not fit), torn
//! fragments (a failed append) and duplicates (a retried append that had
//! partly succeeded): [`scan`] skips the first two, and a reader drops the
//! third by `(client id, seq)`.
//!
//! Why pad: records appended one after another then start on a sector of
//! the chunk, so a replica writes each with whole-sector I/O over its own
//! sectors, instead of rewriting the sector where the record before it
//! ended (the cached tail) along with it. Four appenders of 1 MiB records
//! on the development VM, with the engine writing each padded record as
//! one request: +8-11 % into new chunk files, +5 % overall (BENCHMARKS.md,
//! 2026-11-23, night), for at most 4 KiB per record (0.4 % of a 1 MiB one).
//! Small records are not padded: their padding would cost more than it
//! saves, and a chunk that holds them keeps larger ones unaligned, which is
//! slower but never wrong.

use crate::crc::{crc32c, crc32c_append};

/// "GFSR" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"GFSR");

/// Bytes of header before the payload.
pub const HEADER_BYTES: usize = 4 + 4 + 4 + 8 + 8;

/// Identifies one record across retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub client_id: u64,
    pub seq: u64,
}

/// Frames at least this long are padded ([`framed_len`]).
pub const PAD_FROM_BYTES: usize = 64 << 10;

/// What a padded frame is a multiple of: the storage engine's sector.
pub const PAD_TO_BYTES: usize = 4096;

/// Bytes a record of `payload` bytes takes in a chunk: its frame, padded
/// to a whole number of [`PAD_TO_BYTES`] once it is [`PAD_FROM_BYTES`] or
/// more. Never more than the next multiple of [`PAD_TO_BYTES`], so a
/// frame that fits a limit that is such a multiple still fits it padded.
pub fn framed_len(payload: usize) -> usize {
    let frame = HEADER_BYTES + payload;
    if frame >= PAD_FROM_BYTES {
        frame.next_multiple_of(PAD_TO_BYTES)
    } else {
        frame
    }
}

/// Frames `payload` as record `id`, padded ([`framed_len`]).
pub fn encode(id: RecordId, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(framed_len(payload.len()));
    out.extend_from_slice(&header(id, payload));
    out.extend_from_slice(payload);
    out.resize(framed_len(payload.len()), 0);
    out
}

/// The header of `payload`'s frame as record `id`: what goes in front of
/// the payload, which is followed by [`padding`] zeros. A writer that
/// sends the three as they are frames a record without copying it.
pub fn header(id: RecordId, payload: &[u8]) -> [u8; HEADER_BYTES] {
    let len = u32::try_from(payload.len()).expect("records are at most a quarter of a chunk");
    let mut h = [0; HEADER_BYTES];
    h[..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[12..20].copy_from_slice(&id.client_id.to_le_bytes());
    h[20..28].copy_from_slice(&id.seq.to_le_bytes());
    let crc = crc32c_append(crc32c(&h[12..]), payload);
    h[8..12].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The zeros that follow a frame of `payload` bytes ([`framed_len`]):
/// fewer than [`PAD_TO_BYTES`].
pub fn padding(payload: usize) -> &'static [u8] {
    static ZEROS: [u8; PAD_TO_BYTES] = [0; PAD_TO_BYTES];
    &ZEROS[..framed_len(payload) - HEADER_BYTES - payload]
}

/// A record found in chunk data: where its frame starts, and its payload's
/// range in the scanned slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub offset: usize,
    pub id: RecordId,
    pub payload: std::ops::Range<usize>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The frame starting at `at`, if a whole, intact one does.
fn frame_at(b: &[u8], at: usize) -> Option<Found> {
    let header_end = at.checked_add(HEADER_BYTES)?;
    if header_end > b.len() || u32_at(b, at) != MAGIC {
        return None;
    }
    let len = u32_at(b, at + 4) as usize;
    let end = header_end.checked_add(len)?;
    if end > b.len() || crc32c(&b[at + 12..end]) != u32_at(b, at + 8) {
        return None;
    }
    Some(Found {
        offset: at,
        id: RecordId {
            client_id: u64_at(b, at + 12),
            seq: u64_at(b, at + 20),
        },
        payload: header_end..end,
    })
}

/// Every intact record in `data`, in order. Anything between records
/// (padding, torn fragments) is skipped by searching for the next magic.
pub fn scan(data: &[u8]) -> Vec<Found> {
    let first = MAGIC.to_le_bytes()[0];
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER_BYTES <= data.len() {
        if let Some(f) = frame_at(data, at) {
            at = f.payload.end;
            out.push(f);
            continue;
        }
        at = match data[at + 1..].iter().position(|&b| b == first) {
            Some(p) => at + 1 + p,
            None => break,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: u64, s: u64) -> RecordId {
        RecordId {
            client_id: c,
            seq: s,
        }
    }

    #[test]
    fn a_frame_has_the_documented_layout() {
        let f = encode(id(7, 9), b"hi");
        assert_eq!(&f[0..4], b"GFSR");
        assert_eq!(&f[4..8], &2u32.to_le_bytes());
        assert_eq!(&f[12..20], &7u64.to_le_bytes());
        assert_eq!(&f[20..28], &9u64.to_le_bytes());
        assert_eq!(&f[28..], b"hi");
        assert_eq!(
            u32::from_le_bytes(f[8..12].try_into().unwrap()),
            crc32c(&f[12..])
        );
    }

    #[test]
    fn header_payload_and_padding_are_the_frame() {
        for n in [
            0,
            2,
            PAD_FROM_BYTES - HEADER_BYTES - 1,
            PAD_FROM_BYTES,
            1 << 20,
        ] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let mut parts = header(id(3, n as u64), &payload).to_vec();
            parts.extend_from_slice(&payload);
            parts.extend_from_slice(padding(n));
            assert_eq!(parts, encode(id(3, n as u64), &payload), "{n} bytes");
        }
    }

    #[test]
    fn large_frames_are_padded_to_whole_sectors_and_scan_back_to_back() {
        assert_eq!(framed_len(100), HEADER_BYTES + 100);
        let small = PAD_FROM_BYTES - HEADER_BYTES - 1;
        assert_eq!(
            framed_len(small),
            PAD_FROM_BYTES - 1,
            "just below: not padded"
        );
        assert_eq!(
            framed_len(small + 1),
            PAD_FROM_BYTES,
            "a whole multiple already"
        );
        assert_eq!(framed_len(1 << 20), (1 << 20) + PAD_TO_BYTES);
        let (a, b) = (vec![0xA1; 100_000], vec![0xB2; 70_000]);
        let (fa, fb) = (encode(id(1, 1), &a), encode(id(1, 2), &b));
        assert_eq!((fa.len(), fb.len()), (102_400, 73_728));
        assert!(fa[HEADER_BYTES + a.len()..].iter().all(|&x| x == 0));
        let mut data = fa.clone();
        data.extend_from_slice(&fb);
        data.extend_from_slice(&encode(id(1, 3), b"small"));
        let found = scan(&data);
        let got: Vec<(usize, u64, usize)> = found
            .iter()
            .map(|f| (f.offset, f.id.seq, f.payload.len()))
            .collect();
        assert_eq!(
            got,
            vec![(0, 1, 100_000), (102_400, 2, 70_000), (176_128, 3, 5)]
        );
    }

    #[test]
    fn scan_skips_padding_torn_fragments_and_keeps_duplicates() {
        let a = encode(id(1, 1), b"first");
        let b = encode(id(2, 1), &[0xAB; 100]);
        let mut data = Vec::new();
        data.extend_from_slice(&a);
        data.extend_from_slice(&b[..50]); // torn: a failed append
        data.extend_from_slice(&[0; 37]); // zero fill
        data.extend_from_slice(&b); // its retry
        data.extend_from_slice(&a); // a duplicate of the first
        data.extend_from_slice(&[0; 1000]); // padding to the chunk's end
        let found = scan(&data);
        let got: Vec<(usize, RecordId, &[u8])> = found
            .iter()
            .map(|f| (f.offset, f.id, &data[f.payload.clone()]))
            .collect();
        let b_at = a.len() + 50 + 37;
        assert_eq!(
            got,
            vec![
                (0, id(1, 1), &b"first"[..]),
                (b_at, id(2, 1), &[0xAB; 100][..]),
                (b_at + b.len(), id(1, 1), &b"first"[..]),
            ]
        );
    }

    #[test]
    fn a_flipped_bit_hides_the_record_but_not_the_next() {
        let a = encode(id(1, 1), b"one");
        let b = encode(id(1, 2), b"two");
        let mut data = [a.clone(), b.clone()].concat();
        data[30] ^= 0x10;
        let found = scan(&data);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].offset, a.len());
        assert_eq!(found[0].id, id(1, 2));
    }

    #[test]
    fn a_length_past_the_end_is_no_record() {
        let mut a = encode(id(1, 1), b"xyz");
        a[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(scan(&a).is_empty());
        assert!(scan(&[]).is_empty());
        assert!(scan(b"GFSR").is_empty());
    }
}
