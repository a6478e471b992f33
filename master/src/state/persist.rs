//! How the state machine is laid out as key-value pairs (one RocksDB column
//! family), and the exact set of keys each request changed.
//!
//! `MasterState::apply` records every key it touches; the storage layer
//! calls [`MasterState::take_dirty`] after applying a batch of entries and
//! writes each key's current value ([`MasterState::value_of`], `None`
//! meaning delete) in the same `WriteBatch` as `last_applied`. At start,
//! [`MasterState::load`] rebuilds the whole in-memory state from those pairs;
//! a Raft snapshot is [`MasterState::dump`], all of them.
//!
//! Keys: `p<path>` inode, `c<handle>` chunk, `l<handle>` lease, `d<id>`
//! deleted tree, `s<client>` session, `x<node>` draining chunkserver,
//! `u<handle>` chunk with an unconfirmed grant, `r<handle>` the replicas of
//! a chunk's last confirmed grant, `n` counters; integers big-endian so
//! RocksDB orders them numerically.

use std::collections::HashMap;

use gfs_proto::{ChunkHandle, NodeId};
use serde::{Deserialize, Serialize};

use super::{Inode, MasterState, PathTable};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Path(String),
    Chunk(ChunkHandle),
    Lease(ChunkHandle),
    Deleted(u64),
    Session(u64),
    Draining(NodeId),
    Unconfirmed(ChunkHandle),
    Members(ChunkHandle),
    Counters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    chunk_size_bytes: u64,
    next_handle: u64,
    next_deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unknown key {0:?} in the state machine")]
    UnknownKey(Vec<u8>),
    #[error("undecodable value under key {key:?}: {source}")]
    Value {
        key: Vec<u8>,
        #[source]
        source: postcard::Error,
    },
    #[error("the state machine has no counters record")]
    NoCounters,
}

fn be(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl Key {
    pub fn encode(&self) -> Vec<u8> {
        let tagged = |t: u8, n: u64| {
            let mut v = vec![t];
            v.extend_from_slice(&n.to_be_bytes());
            v
        };
        match self {
            Key::Path(p) => [b"p", p.as_bytes()].concat(),
            Key::Chunk(h) => tagged(b'c', h.0),
            Key::Lease(h) => tagged(b'l', h.0),
            Key::Deleted(id) => tagged(b'd', *id),
            Key::Session(c) => tagged(b's', *c),
            Key::Draining(n) => tagged(b'x', n.0),
            Key::Unconfirmed(h) => tagged(b'u', h.0),
            Key::Members(h) => tagged(b'r', h.0),
            Key::Counters => b"n".to_vec(),
        }
    }

    pub fn decode(raw: &[u8]) -> Option<Key> {
        let (&tag, rest) = raw.split_first()?;
        Some(match tag {
            b'p' => Key::Path(String::from_utf8(rest.to_vec()).ok()?),
            b'c' => Key::Chunk(ChunkHandle(be(rest)?)),
            b'l' => Key::Lease(ChunkHandle(be(rest)?)),
            b'd' => Key::Deleted(be(rest)?),
            b's' => Key::Session(be(rest)?),
            b'x' => Key::Draining(NodeId(be(rest)?)),
            b'u' => Key::Unconfirmed(ChunkHandle(be(rest)?)),
            b'r' => Key::Members(ChunkHandle(be(rest)?)),
            b'n' if rest.is_empty() => Key::Counters,
            _ => return None,
        })
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("state values always serialize")
}

impl MasterState {
    /// Keys changed since the last call, each once, in key order.
    pub fn take_dirty(&mut self) -> Vec<Key> {
        let mut keys = std::mem::take(&mut self.dirty);
        keys.sort();
        keys.dedup();
        keys
    }

    /// The encoded current value of `key`; `None` if it no longer exists.
    pub fn value_of(&self, key: &Key) -> Option<Vec<u8>> {
        match key {
            Key::Path(p) => self.ns.get(p.as_bytes()).map(|i| enc(&i)),
            Key::Chunk(h) => self.chunks.get(h).map(enc),
            Key::Lease(h) => self.leases.get(h).map(enc),
            Key::Deleted(id) => self.deleted.get(id).map(enc),
            Key::Session(c) => self.sessions.get(c).map(enc),
            Key::Draining(n) => self.draining.contains(n).then(|| enc(&true)),
            Key::Unconfirmed(h) => self.unconfirmed.contains(h).then(|| enc(&true)),
            Key::Members(h) => self.members.get(h).map(enc),
            Key::Counters => Some(enc(&Counters {
                chunk_size_bytes: self.chunk_size_bytes,
                next_handle: self.next_handle,
                next_deleted: self.next_deleted,
            })),
        }
    }

    /// Every key with its value: a full image of the state.
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        // Paths come first (the order of `Key`), with their values from the
        // same scan: looking each up again would cost a block walk apiece.
        let mut out = Vec::with_capacity(self.ns.len() + self.chunks.len());
        self.ns.scan(b"", None, false, |k, inode| {
            let key = Key::Path(String::from_utf8_lossy(k).into_owned());
            out.push((key.encode(), enc(&inode)));
            std::ops::ControlFlow::Continue(())
        });
        let mut keys: Vec<Key> = Vec::new();
        keys.extend(self.chunks.keys().map(|h| Key::Chunk(*h)));
        keys.extend(self.leases.keys().map(|h| Key::Lease(*h)));
        keys.extend(self.deleted.keys().map(|id| Key::Deleted(*id)));
        keys.extend(self.sessions.keys().map(|c| Key::Session(*c)));
        keys.extend(self.draining.iter().map(|n| Key::Draining(*n)));
        keys.extend(self.unconfirmed.iter().map(|h| Key::Unconfirmed(*h)));
        keys.extend(self.members.keys().map(|h| Key::Members(*h)));
        keys.push(Key::Counters);
        keys.sort();
        out.extend(keys.into_iter().map(|k| {
            let v = self.value_of(&k).expect("listed keys exist");
            (k.encode(), v)
        }));
        out
    }

    /// Rebuilds the state from the pairs `dump` (or the dirty-key writes)
    /// produced. Nothing from disk is trusted: bad keys or values are errors.
    pub fn load(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<Self, LoadError> {
        let mut ns = PathTable::default();
        let (mut chunks, mut leases, mut sessions) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        let mut deleted = std::collections::BTreeMap::new();
        let mut draining = std::collections::BTreeSet::new();
        let mut unconfirmed = std::collections::BTreeSet::new();
        let mut members = HashMap::new();
        let mut counters: Option<Counters> = None;
        for (k, v) in pairs {
            let key = Key::decode(&k).ok_or_else(|| LoadError::UnknownKey(k.clone()))?;
            let bad = |e| LoadError::Value {
                key: k.clone(),
                source: e,
            };
            match key {
                Key::Path(p) => {
                    let inode: Inode = postcard::from_bytes(&v).map_err(bad)?;
                    ns.insert(p.as_bytes(), &inode);
                }
                Key::Chunk(h) => {
                    chunks.insert(h, postcard::from_bytes(&v).map_err(bad)?);
                }
                Key::Lease(h) => {
                    leases.insert(h, postcard::from_bytes(&v).map_err(bad)?);
                }
                Key::Deleted(id) => {
                    deleted.insert(id, postcard::from_bytes(&v).map_err(bad)?);
                }
                Key::Session(c) => {
                    sessions.insert(c, postcard::from_bytes(&v).map_err(bad)?);
                }
                Key::Draining(n) => {
                    let on: bool = postcard::from_bytes(&v).map_err(bad)?;
                    if on {
                        draining.insert(n);
                    }
                }
                Key::Members(h) => {
                    members.insert(h, postcard::from_bytes(&v).map_err(bad)?);
                }
                Key::Unconfirmed(h) => {
                    let on: bool = postcard::from_bytes(&v).map_err(bad)?;
                    if on {
                        unconfirmed.insert(h);
                    }
                }
                Key::Counters => counters = Some(postcard::from_bytes(&v).map_err(bad)?),
            }
        }
        let c = counters.ok_or(LoadError::NoCounters)?;
        Ok(MasterState {
            chunk_size_bytes: c.chunk_size_bytes,
            ns,
            chunks,
            next_handle: c.next_handle,
            leases,
            deleted,
            next_deleted: c.next_deleted,
            sessions,
            draining,
            unconfirmed,
            members,
            dirty: Vec::new(),
        })
    }
}
