//! [`PathTable`]: the namespace's lookup table from full path to metadata,
//! prefix-compressed the way the GFS paper describes, not a tree of
//! directory objects.
//!
//! Keys are kept sorted in blocks of at most [`MAX_BLOCK_BYTES`]. Inside a
//! block each entry stores only what differs from the key before it:
//! `varint shared | varint suffix_len | suffix | varint value_len | value`,
//! with the value in its compact [`Packed`] form. A block is one exact-size
//! allocation; a `BTreeMap` from each block's first key finds the block.
//! For a million log files (40-byte paths, one chunk each) this costs 15
//! bytes per file with its metadata, where the radix tree of nodes it
//! replaced cost 164 (`gfs-bench meta-memory`).
//!
//! Invariants: keys are strictly increasing across entries and blocks; the
//! first entry of a block stores its whole key (`shared` is 0) and that key
//! is the block's map key; no block is empty.
//!
//! Costs: a lookup decodes on average half a block; a mutation rewrites one
//! block; listing one directory level seeks past each subdirectory's
//! subtree instead of walking it.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::{Bound, ControlFlow, Range};

use prost::encoding::{decode_varint, encode_varint};

/// A block is split once it grows past this.
pub const MAX_BLOCK_BYTES: usize = 2048;

/// A value with a compact byte form for the table.
pub trait Packed: Sized {
    fn pack(&self, out: &mut Vec<u8>);
    /// `None` if `bytes` is not something `pack` wrote.
    fn unpack(bytes: &[u8]) -> Option<Self>;
}

impl Packed for u32 {
    fn pack(&self, out: &mut Vec<u8>) {
        encode_varint(u64::from(*self), out);
    }

    fn unpack(mut bytes: &[u8]) -> Option<Self> {
        let v = u32::try_from(decode_varint(&mut bytes).ok()?).ok()?;
        bytes.is_empty().then_some(v)
    }
}

#[derive(Debug, Clone)]
pub struct PathTable<V> {
    /// First key of each block → the block's entries.
    blocks: BTreeMap<Box<[u8]>, Box<[u8]>>,
    len: usize,
    _values: PhantomData<fn() -> V>,
}

impl<V> Default for PathTable<V> {
    fn default() -> Self {
        Self {
            blocks: BTreeMap::new(),
            len: 0,
            _values: PhantomData,
        }
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Appends `key` (stored relative to `prev`) and `value` as one entry.
fn put_entry(out: &mut Vec<u8>, prev: &[u8], key: &[u8], value: &[u8]) {
    let shared = common_prefix(prev, key);
    encode_varint(shared as u64, out);
    encode_varint((key.len() - shared) as u64, out);
    out.extend_from_slice(&key[shared..]);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// Walks a block's entries in order, rebuilding each full key.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    key: Vec<u8>,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            key: Vec::new(),
        }
    }

    /// The next entry's value range; its key is then `self.key`. `None` at
    /// the end of the block (or at bytes `put_entry` did not write, which
    /// the table never holds).
    fn next(&mut self) -> Option<Range<usize>> {
        let mut rest = self.data.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let len = rest.len();
        let shared = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
        let suffix = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
        let suffix = rest.get(..suffix)?;
        let after_suffix = &rest[suffix.len()..];
        let mut rest = after_suffix;
        let value_len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
        if shared > self.key.len() || value_len > rest.len() {
            return None;
        }
        self.key.truncate(shared);
        self.key.extend_from_slice(suffix);
        let start = self.pos + (len - rest.len());
        self.pos = start + value_len;
        Some(start..self.pos)
    }
}

fn first_key(block: &[u8]) -> Vec<u8> {
    let mut c = Cursor::new(block);
    c.next().expect("blocks are never empty");
    c.key
}

fn last_key(block: &[u8]) -> Vec<u8> {
    let mut c = Cursor::new(block);
    while c.next().is_some() {}
    c.key
}

/// `block` with `key` set to `value` (`None`: removed), and the bytes of
/// the value it replaced.
fn splice(block: &[u8], key: &[u8], value: Option<&[u8]>) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut c = Cursor::new(block);
    let mut prev = Vec::new();
    loop {
        let start = c.pos;
        let Some(found) = c.next() else {
            // Past the last key: append.
            let mut out = block.to_vec();
            if let Some(v) = value {
                put_entry(&mut out, &prev, key, v);
            }
            return (out, None);
        };
        if c.key.as_slice() < key {
            prev.clone_from(&c.key);
            continue;
        }
        let hit = c.key.as_slice() == key;
        if !hit && value.is_none() {
            return (block.to_vec(), None);
        }
        let mut out = Vec::with_capacity(block.len() + key.len() + value.map_or(0, <[u8]>::len));
        out.extend_from_slice(&block[..start]);
        if let Some(v) = value {
            put_entry(&mut out, &prev, key, v);
        }
        let written: &[u8] = if value.is_some() { key } else { &prev };
        let old = hit.then(|| block[found.clone()].to_vec());
        // The entry after the one written (or removed) is stored relative
        // to its predecessor, which changed: store it again.
        let next = if hit { c.next() } else { Some(found) };
        if let Some(n) = next {
            put_entry(&mut out, written, &c.key, &block[n]);
            out.extend_from_slice(&block[c.pos..]);
        }
        return (out, old);
    }
}

/// Splits a block in two near its middle; the second half's first entry is
/// stored whole.
fn split(block: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut c = Cursor::new(block);
    loop {
        let start = c.pos;
        let value = c.next().expect("a block past its limit holds entries");
        if start >= block.len() / 2 && start > 0 {
            let mut second = Vec::with_capacity(block.len() - start + c.key.len());
            put_entry(&mut second, &[], &c.key, &block[value]);
            second.extend_from_slice(&block[c.pos..]);
            return (block[..start].to_vec(), second);
        }
    }
}

/// `a` followed by `b`, `b`'s first entry now stored relative to `a`'s last.
fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut c = Cursor::new(b);
    let value = c.next().expect("blocks are never empty");
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    put_entry(&mut out, &last_key(a), &c.key, &b[value]);
    out.extend_from_slice(&b[c.pos..]);
    out
}

impl<V: Packed> PathTable<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block that holds `key` if anything does: the last one whose
    /// first key is at most `key`.
    fn block_of(&self, key: &[u8]) -> Option<(&[u8], &[u8])> {
        self.blocks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(k, b)| (&**k, &**b))
    }

    pub fn get(&self, key: &[u8]) -> Option<V> {
        let (_, block) = self.block_of(key)?;
        let mut c = Cursor::new(block);
        while let Some(value) = c.next() {
            match c.key.as_slice().cmp(key) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Some(unpack(&block[value])),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: &[u8], value: &V) -> Option<V> {
        let mut bytes = Vec::new();
        value.pack(&mut bytes);
        let old = self.set(key, Some(&bytes));
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let old = self.set(key, None);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Changes the value at `key` in place, if there is one.
    pub fn update<R>(&mut self, key: &[u8], f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut v = self.get(key)?;
        let r = f(&mut v);
        self.insert(key, &v);
        Some(r)
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<V> {
        // The block holding `key`, or (a key before every block) the first.
        let at: Box<[u8]> = match self.block_of(key) {
            Some((first, _)) => first.into(),
            None => match self.blocks.keys().next() {
                Some(first) => first.clone(),
                None => {
                    let mut block = Vec::new();
                    if let Some(v) = value {
                        put_entry(&mut block, &[], key, v);
                        self.blocks.insert(key.into(), block.into());
                    }
                    return None;
                }
            },
        };
        let block = self.blocks.remove(&at).expect("the key was just found");
        let (new, old) = splice(&block, key, value);
        if new.is_empty() {
            return old.map(|o| unpack(&o));
        }
        if new.len() > MAX_BLOCK_BYTES {
            let (a, b) = split(&new);
            self.put_block(a);
            self.put_block(b);
        } else if new.len() < MAX_BLOCK_BYTES / 4 {
            self.put_merged(new);
        } else {
            self.put_block(new);
        }
        old.map(|o| unpack(&o))
    }

    fn put_block(&mut self, block: Vec<u8>) {
        self.blocks
            .insert(first_key(&block).into(), block.into_boxed_slice());
    }

    /// Puts a small block back, joined with the block after it when the two
    /// fit in one.
    fn put_merged(&mut self, block: Vec<u8>) {
        let first = first_key(&block);
        let next = self
            .blocks
            .range::<[u8], _>((Bound::Excluded(first.as_slice()), Bound::Unbounded))
            .next()
            .filter(|(_, b)| block.len() + b.len() <= MAX_BLOCK_BYTES)
            .map(|(k, _)| k.clone());
        match next {
            Some(k) => {
                let b = self.blocks.remove(&k).expect("the key was just found");
                self.blocks.insert(first.into(), join(&block, &b).into());
            }
            None => {
                self.blocks.insert(first.into(), block.into_boxed_slice());
            }
        }
    }

    /// Calls `f` on every key starting with `prefix` and greater than
    /// `after`, in byte order, until it breaks. With `one_level`, keys
    /// holding a '/' after the prefix are skipped, and so are their
    /// subtrees: the scan costs what it returns, not what lies below.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        one_level: bool,
        mut f: impl FnMut(&[u8], V) -> ControlFlow<()>,
    ) {
        // The smallest key to visit; `after` + 0 is the key right after it.
        let mut from = prefix.to_vec();
        if let Some(a) = after
            && a >= prefix
        {
            from = [a, &[0]].concat();
        }
        'seek: loop {
            let start: Box<[u8]> = match self.block_of(&from) {
                Some((first, _)) => first.into(),
                None => match self.blocks.keys().next() {
                    Some(first) => first.clone(),
                    None => return,
                },
            };
            let mut blocks = self.blocks.range(start..).peekable();
            while let Some((_, block)) = blocks.next() {
                let mut c = Cursor::new(block);
                while let Some(value) = c.next() {
                    let k = c.key.as_slice();
                    if k < from.as_slice() {
                        continue;
                    }
                    if !k.starts_with(prefix) {
                        return;
                    }
                    let below = k[prefix.len()..].iter().position(|b| *b == b'/');
                    if let (true, Some(slash)) = (one_level, below) {
                        // Past this subtree: its keys share `k[..=slash]`,
                        // and '0' is the byte after '/'.
                        from = [&k[..prefix.len() + slash], b"0"].concat();
                        match blocks.peek() {
                            Some((next, _)) if next[..] <= from[..] => continue 'seek,
                            _ => continue,
                        }
                    }
                    if f(k, unpack(&block[value])).is_break() {
                        return;
                    }
                }
            }
            return;
        }
    }

    /// Every key starting with `prefix`, with its value, in order.
    pub fn collect_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, V)> {
        let mut out = Vec::new();
        self.scan(prefix, None, false, |k, v| {
            out.push((k.to_vec(), v));
            ControlFlow::Continue(())
        });
        out
    }

    /// Number of blocks, for memory accounting.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

fn unpack<V: Packed>(bytes: &[u8]) -> V {
    V::unpack(bytes).expect("the table holds only values it packed")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn keys(t: &PathTable<u32>, prefix: &str, after: Option<&str>, one_level: bool) -> Vec<String> {
        let mut out = Vec::new();
        t.scan(
            prefix.as_bytes(),
            after.map(str::as_bytes),
            one_level,
            |k, _| {
                out.push(String::from_utf8(k.to_vec()).expect("utf-8"));
                ControlFlow::Continue(())
            },
        );
        out
    }

    fn table(paths: &[&str]) -> PathTable<u32> {
        let mut t = PathTable::default();
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(t.insert(p.as_bytes(), &(i as u32)), None);
        }
        t
    }

    #[test]
    fn insert_get_remove() {
        let mut t = table(&["/logs/a", "/logs/ab", "/logs/b", "/l", "/"]);
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(b"/logs/ab"), Some(1));
        assert_eq!(t.get(b"/logs"), None);
        assert_eq!(t.get(b"/logs/abc"), None);
        assert_eq!(t.get(b""), None);
        assert_eq!(t.insert(b"/logs/a", &9), Some(0));
        assert_eq!(t.update(b"/logs/a", |v| std::mem::replace(v, 10)), Some(9));
        assert_eq!(t.update(b"/nope", |v| *v), None);
        assert_eq!(t.remove(b"/logs/a"), Some(10));
        assert_eq!(t.remove(b"/logs/a"), None);
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(b"/logs/ab"), Some(1));
        for k in ["/logs/ab", "/logs/b", "/l", "/"] {
            t.remove(k.as_bytes()).expect("present");
        }
        assert!(t.is_empty());
        assert_eq!(t.blocks(), 0);
    }

    #[test]
    fn shared_prefixes_are_stored_once() {
        let mut t = PathTable::default();
        let mut key_bytes = 0;
        for i in 0..10_000u32 {
            let p = format!("/logs/2026-11-22/part-{i:05}");
            key_bytes += p.len();
            t.insert(p.as_bytes(), &i);
        }
        let stored: usize = t.blocks.values().map(|b| b.len()).sum();
        // Each entry: 3 length bytes, a 1-3 byte suffix, a 1-2 byte value.
        assert!(stored * 4 < key_bytes, "{stored} bytes for {key_bytes}");
        assert!(t.blocks() > 10, "large tables span blocks");
        assert!(t.blocks.values().all(|b| b.len() <= MAX_BLOCK_BYTES));
    }

    #[test]
    fn scans_are_ordered_and_respect_prefix_resume_point_and_level() {
        let t = table(&[
            "/a",
            "/a/x",
            "/a/x/deep/er",
            "/a/y",
            "/a/y/z",
            "/ab",
            "/b",
            "/",
        ]);
        assert_eq!(
            keys(&t, "/a/", None, false),
            ["/a/x", "/a/x/deep/er", "/a/y", "/a/y/z"]
        );
        assert_eq!(keys(&t, "/a/", None, true), ["/a/x", "/a/y"]);
        assert_eq!(keys(&t, "/a/", Some("/a/x"), true), ["/a/y"]);
        assert_eq!(keys(&t, "/", None, true), ["/", "/a", "/ab", "/b"]);
        assert_eq!(keys(&t, "/", Some("/a"), true), ["/ab", "/b"]);
        assert_eq!(keys(&t, "/zz/", None, true), Vec::<String>::new());
        assert_eq!(keys(&t, "/a/", Some("/"), false).len(), 4);
        let mut first_two = Vec::new();
        t.scan(b"/", None, false, |k, _| {
            first_two.push(k.to_vec());
            if first_two.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(first_two, [b"/".to_vec(), b"/a".to_vec()]);
    }

    #[test]
    fn listing_one_level_seeks_past_large_subtrees() {
        let mut t = PathTable::default();
        for d in 0..20u32 {
            for f in 0..500u32 {
                t.insert(format!("/d{d:02}/f{f:04}").as_bytes(), &f);
            }
            t.insert(format!("/d{d:02}").as_bytes(), &d);
        }
        t.insert(b"/z", &7);
        let listed = keys(&t, "/", None, true);
        assert_eq!(listed.len(), 21);
        assert_eq!(listed[0], "/d00");
        assert_eq!(listed[20], "/z");
        assert_eq!(keys(&t, "/d07/", Some("/d07/f0497"), true).len(), 2);
    }

    /// A tiny deterministic generator, so the model test needs no crate.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    #[test]
    fn agrees_with_a_btreemap_through_splits_and_merges() {
        let mut t = PathTable::default();
        let mut model = BTreeMap::new();
        let mut s = 7;
        for round in 0..40_000u32 {
            let dir = lcg(&mut s) % 30;
            let file = lcg(&mut s) % 200;
            let key = format!("/data/dir-{dir:03}/part-{file:05}").into_bytes();
            // Grow for the first half, shrink in the second.
            let remove = lcg(&mut s) % 10 < if round < 20_000 { 3 } else { 8 };
            if remove {
                assert_eq!(t.remove(&key), model.remove(&key));
            } else {
                assert_eq!(t.insert(&key, &round), model.insert(key.clone(), round));
            }
            if round % 4000 == 0 {
                let all = t.collect_prefix(b"");
                let expect: Vec<_> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
                assert_eq!(all, expect);
            }
        }
        assert_eq!(t.len(), model.len());
        for (k, v) in &model {
            assert_eq!(t.get(k), Some(*v));
        }
        for (first, block) in &t.blocks {
            assert!(!block.is_empty() && block.len() <= MAX_BLOCK_BYTES);
            assert_eq!(first_key(block), first.to_vec());
        }
        while let Some(k) = model.keys().next().cloned() {
            assert_eq!(t.remove(&k), model.remove(&k));
        }
        assert!(t.is_empty());
        assert_eq!(t.blocks(), 0);
    }
}
