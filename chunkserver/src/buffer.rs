//! Pushed data waiting for the mutation that names it, keyed by data id.
//! Bounded in bytes; entries expire. Pure: the caller passes the time.

use std::collections::HashMap;

use bytes::Bytes;
use gfs_storage_engine::Received;

#[derive(Debug)]
pub struct DataBuffer {
    entries: HashMap<u64, Entry>,
    /// Bytes held plus bytes reserved by pushes still arriving.
    used: u64,
    cap: u64,
    ttl_ms: u64,
}

/// Pushed data as it arrived: one `Bytes` per piece, never concatenated
/// (the engine copies the pieces straight into its I/O buffer, or writes
/// them where they lie when they were received into its memory).
pub type Parts = Vec<Bytes>;

pub fn parts_len(p: &[Bytes]) -> u64 {
    p.iter().map(|b| b.len() as u64).sum()
}

#[derive(Debug)]
struct Entry {
    data: Parts,
    /// The same bytes, when they were received into the store's memory.
    received: Option<Received>,
    expires_ms: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("push buffer full: {used} of {cap} bytes in use, {wanted} more wanted")]
pub struct Full {
    pub used: u64,
    pub cap: u64,
    pub wanted: u64,
}

impl DataBuffer {
    pub fn new(cap: u64, ttl_ms: u64) -> Self {
        Self {
            entries: HashMap::new(),
            used: 0,
            cap,
            ttl_ms,
        }
    }

    /// Room for a push of `bytes`, dropping expired entries first.
    pub fn reserve(&mut self, bytes: u64, now_ms: u64) -> Result<(), Full> {
        if self.used + bytes > self.cap {
            self.expire(now_ms);
        }
        if self.used + bytes > self.cap {
            return Err(Full {
                used: self.used,
                cap: self.cap,
                wanted: bytes,
            });
        }
        self.used += bytes;
        Ok(())
    }

    /// Gives back a reservation whose push failed.
    pub fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// Stores a push that `reserve`d `reserved` bytes (and, when it was
    /// received into the store's memory, that too). A data id pushed again
    /// (a retry) replaces the old data.
    pub fn insert(
        &mut self,
        id: u64,
        data: Parts,
        received: Option<Received>,
        reserved: u64,
        now_ms: u64,
    ) {
        self.used = self.used.saturating_sub(reserved) + parts_len(&data);
        let expires_ms = now_ms + self.ttl_ms;
        let entry = Entry {
            data,
            received,
            expires_ms,
        };
        if let Some(old) = self.entries.insert(id, entry) {
            self.used -= parts_len(&old.data);
        }
    }

    pub fn get(&self, id: u64, now_ms: u64) -> Option<Parts> {
        self.entries
            .get(&id)
            .filter(|e| e.expires_ms > now_ms)
            .map(|e| e.data.clone())
    }

    /// The data of `id` as received into the store's memory, if it was.
    pub fn received(&self, id: u64, now_ms: u64) -> Option<Received> {
        self.entries
            .get(&id)
            .filter(|e| e.expires_ms > now_ms)
            .and_then(|e| e.received.clone())
    }

    /// Drops data a committed mutation used; whether there was any.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(e) = self.entries.remove(&id) else {
            return false;
        };
        self.used -= parts_len(&e.data);
        true
    }

    pub fn expire(&mut self, now_ms: u64) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = e.expires_ms > now_ms;
            if !keep {
                freed += parts_len(&e.data);
            }
            keep
        });
        self.used -= freed;
    }

    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_bound_memory_and_expiry_frees_it() {
        let mut b = DataBuffer::new(100, 10);
        b.reserve(60, 0).unwrap();
        assert_eq!(
            b.reserve(50, 0),
            Err(Full {
                used: 60,
                cap: 100,
                wanted: 50
            })
        );
        b.insert(
            1,
            vec![Bytes::from(vec![7; 40]), Bytes::from(vec![7; 20])],
            None,
            60,
            0,
        );
        assert_eq!(parts_len(&b.get(1, 5).unwrap()), 60);
        // Expired at 10: the reservation succeeds by dropping it.
        b.reserve(50, 10).unwrap();
        assert_eq!(b.get(1, 10), None);
        assert_eq!(b.used(), 50);
        b.release(50);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_repeated_push_replaces_and_remove_frees() {
        let mut b = DataBuffer::new(100, 10);
        b.reserve(30, 0).unwrap();
        b.insert(1, vec![Bytes::from(vec![1; 30])], None, 30, 0);
        b.reserve(20, 1).unwrap();
        b.insert(1, vec![Bytes::from(vec![2; 20])], None, 20, 1);
        assert_eq!(b.used(), 20);
        assert_eq!(b.get(1, 2).unwrap()[0][0], 2);
        b.remove(1);
        b.remove(1);
        assert_eq!(b.used(), 0);
    }
}
