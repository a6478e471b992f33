//! The compact form of an [`Inode`] in the path table: a tag byte, then
//! varints. A file's chunk handles are stored as the first handle and then
//! zigzag deltas, so the consecutive handles of a file written alone cost a
//! byte each.
//!
//! ```text
//! dir:  0 | mtime_ms                          (no policy)
//!       1 | mtime_ms | flags | [replication] | [retention_ms]
//! file: 2 | length | mtime_ms | replication | n | handle_0 | delta_1 ...
//! ```

use gfs_proto::ChunkHandle;
use prost::encoding::{decode_varint, encode_varint};

use super::table::Packed;
use super::{DirPolicy, FileMeta, Inode};

const DIR: u8 = 0;
const DIR_WITH_POLICY: u8 = 1;
const FILE: u8 = 2;
const HAS_REPLICATION: u8 = 1;
const HAS_RETENTION: u8 = 2;

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

impl Packed for Inode {
    fn pack(&self, out: &mut Vec<u8>) {
        match self {
            Inode::Dir {
                mtime_ms,
                policy: None,
            } => {
                out.push(DIR);
                encode_varint(*mtime_ms, out);
            }
            Inode::Dir {
                mtime_ms,
                policy: Some(p),
            } => {
                out.push(DIR_WITH_POLICY);
                encode_varint(*mtime_ms, out);
                let mut flags = 0;
                if p.replication.is_some() {
                    flags |= HAS_REPLICATION;
                }
                if p.retention_ms.is_some() {
                    flags |= HAS_RETENTION;
                }
                out.push(flags);
                out.extend(p.replication);
                if let Some(r) = p.retention_ms {
                    encode_varint(r, out);
                }
            }
            Inode::File(f) => {
                out.push(FILE);
                encode_varint(f.length, out);
                encode_varint(f.mtime_ms, out);
                out.push(f.replication);
                encode_varint(f.chunks.len() as u64, out);
                let mut prev = 0u64;
                for (i, h) in f.chunks.iter().enumerate() {
                    if i == 0 {
                        encode_varint(h.0, out);
                    } else {
                        encode_varint(zigzag(h.0.wrapping_sub(prev) as i64), out);
                    }
                    prev = h.0;
                }
            }
        }
    }

    fn unpack(mut b: &[u8]) -> Option<Self> {
        let b = &mut b;
        let byte = |b: &mut &[u8]| -> Option<u8> {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            Some(x)
        };
        let varint = |b: &mut &[u8]| decode_varint(b).ok();
        let inode = match byte(b)? {
            DIR => Inode::Dir {
                mtime_ms: varint(b)?,
                policy: None,
            },
            DIR_WITH_POLICY => {
                let mtime_ms = varint(b)?;
                let flags = byte(b)?;
                let replication = match flags & HAS_REPLICATION {
                    0 => None,
                    _ => Some(byte(b)?),
                };
                let retention_ms = match flags & HAS_RETENTION {
                    0 => None,
                    _ => Some(varint(b)?),
                };
                Inode::Dir {
                    mtime_ms,
                    policy: Some(Box::new(DirPolicy {
                        replication,
                        retention_ms,
                    })),
                }
            }
            FILE => {
                let length = varint(b)?;
                let mtime_ms = varint(b)?;
                let replication = byte(b)?;
                let n = usize::try_from(varint(b)?).ok()?;
                // Every handle takes at least a byte.
                if n > b.len() {
                    return None;
                }
                let mut chunks = Vec::with_capacity(n);
                let mut prev = 0u64;
                for i in 0..n {
                    let v = varint(b)?;
                    let h = if i == 0 {
                        v
                    } else {
                        prev.wrapping_add(unzigzag(v) as u64)
                    };
                    chunks.push(ChunkHandle(h));
                    prev = h;
                }
                Inode::File(FileMeta {
                    length,
                    mtime_ms,
                    replication,
                    chunks,
                })
            }
            _ => return None,
        };
        b.is_empty().then_some(inode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(i: &Inode) -> Vec<u8> {
        let mut out = Vec::new();
        i.pack(&mut out);
        out
    }

    #[test]
    fn inodes_round_trip_in_few_bytes() {
        let file = Inode::File(FileMeta {
            length: 3 << 26,
            mtime_ms: 1_795_000_000_000,
            replication: 3,
            chunks: [900_000, 900_001, 900_002, 12, u64::MAX]
                .map(ChunkHandle)
                .to_vec(),
        });
        let dirs = [
            Inode::Dir {
                mtime_ms: 5,
                policy: None,
            },
            Inode::Dir {
                mtime_ms: 5,
                policy: Some(Box::new(DirPolicy {
                    replication: Some(2),
                    retention_ms: None,
                })),
            },
            Inode::Dir {
                mtime_ms: 5,
                policy: Some(Box::new(DirPolicy {
                    replication: None,
                    retention_ms: Some(86_400_000),
                })),
            },
        ];
        for i in dirs.iter().chain([&file]) {
            assert_eq!(Inode::unpack(&packed(i)).as_ref(), Some(i));
        }
        assert_eq!(packed(&dirs[0]), [DIR, 5]);
        // tag 1, length 4, mtime 6, replication 1, count 1; handles: 3 for
        // the first, 1 + 1 for the next two, 3 for the jump back, and
        // u64::MAX is 13 below 12 (wrapping): 1.
        assert_eq!(packed(&file).len(), 1 + 4 + 6 + 1 + 1 + 3 + 1 + 1 + 3 + 1);
    }

    #[test]
    fn bytes_it_did_not_write_are_refused() {
        let file = packed(&Inode::File(FileMeta {
            length: 1,
            mtime_ms: 2,
            replication: 3,
            chunks: vec![ChunkHandle(7)],
        }));
        for bad in [
            &[][..],
            &[9, 0],
            &file[..file.len() - 1],
            &[file.as_slice(), &[0]].concat(),
            // A chunk count far beyond the bytes that follow.
            &[FILE, 0, 0, 3, 255, 255, 255, 255, 15],
        ] {
            assert_eq!(Inode::unpack(bad), None, "{bad:?}");
        }
    }
}
