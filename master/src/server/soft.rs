//! Soft state every master learns from chunkserver heartbeats: which
//! chunkservers are alive, their disks and racks, and where each chunk's
//! replicas are. Never persisted; rebuilt after a restart from the next
//! full reports. Pure: the caller passes the time.

use std::collections::{BTreeSet, HashMap};

use gfs_proto::{ChunkHandle, ChunkVersion, NodeId};

use crate::placement::ServerView;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunkserver {
    pub id: NodeId,
    pub addr: String,
    pub rack: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub draining: bool,
    pub last_seen_ms: u64,
    /// Whether a full chunk report arrived since this master started.
    pub reported: bool,
    /// Replicas placed here that the leader does not yet expect (their
    /// log entry is on its way): placement counts them as held.
    pub placing: u64,
    /// Until when new chunks go elsewhere first: a writer reported it
    /// failed a mutation (heartbeats do not clear this: a stalled disk
    /// may leave the server heartbeating).
    pub suspect_until_ms: u64,
    /// The usual time between this server's heartbeats (a moving
    /// average; 0 until two arrived).
    pub gap_ms: u64,
}

impl Chunkserver {
    /// Whether nothing was heard from it for several of its usual
    /// heartbeat gaps (and at least `QUIET_MIN_MS`): stopped, stalled or
    /// cut off, though not declared dead yet. It is placed on last, like
    /// a suspect: a copy ordered to a stalled server holds the chunk's
    /// writers out for the copy's whole timeout.
    fn quiet(&self, now_ms: u64) -> bool {
        self.gap_ms > 0
            && now_ms.saturating_sub(self.last_seen_ms)
                > (QUIET_GAPS * self.gap_ms).max(QUIET_MIN_MS)
    }
}

/// How long a server a writer reported failed is placed on only after the
/// others: four default chunkserver timeouts, so a stalled one is
/// declared dead (and dropped) long before it ends.
pub const SUSPECT_FOR_MS: u64 = 60_000;

/// A server silent for this many of its usual heartbeat gaps ...
const QUIET_GAPS: u64 = 4;
/// ... and at least this long is quiet (`Chunkserver::quiet`).
const QUIET_MIN_MS: u64 = 1_000;

/// One heartbeat, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    pub id: NodeId,
    pub addr: String,
    pub rack: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub draining: bool,
    /// `Some` for a full report.
    pub chunks: Option<Vec<(ChunkHandle, ChunkVersion)>>,
    /// Without a full report: chunks created or at a new version since the
    /// server's last heartbeat here, and chunks it no longer holds.
    pub changed: Vec<(ChunkHandle, ChunkVersion)>,
    pub removed: Vec<ChunkHandle>,
}

/// One replica as the masters know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub node: NodeId,
    pub version: ChunkVersion,
    /// The server reported holding the chunk (rather than the leader only
    /// expecting it there: placed, or told a new version).
    pub confirmed: bool,
}

#[derive(Debug, Default)]
pub struct Soft {
    servers: HashMap<NodeId, Chunkserver>,
    locations: HashMap<ChunkHandle, Vec<Loc>>,
    /// Per server, the chunks it holds, in handle order (garbage collection
    /// walks them in batches).
    held: HashMap<NodeId, BTreeSet<ChunkHandle>>,
    /// Per chunk, the servers writers reported failed that the grant
    /// making its current version (the first value) left out.
    left_out: HashMap<ChunkHandle, (ChunkVersion, Vec<NodeId>)>,
}

impl Soft {
    /// The grant that gave `handle` `version` left out `failed`, which
    /// writers had reported.
    pub fn left_out(&mut self, handle: ChunkHandle, version: ChunkVersion, failed: &[NodeId]) {
        self.left_out.insert(handle, (version, failed.to_vec()));
    }

    /// Whether a writer's report of `id` failing `handle` at `version` was
    /// already dealt with: the grant that made `version` left it out.
    /// Each writer with a mutation in flight reports it, and a new version
    /// for each (eight in 80 ms, seen) fails every other mutation in
    /// flight as stale. Not known after a change of leader: then the
    /// report bumps the version again, which is safe.
    pub fn was_left_out(&self, handle: ChunkHandle, version: ChunkVersion, id: NodeId) -> bool {
        self.left_out
            .get(&handle)
            .is_some_and(|(v, ids)| *v == version && ids.contains(&id))
    }

    /// Records a heartbeat; returns whether the server still owes a full
    /// report.
    pub fn beat(&mut self, b: Beat, now_ms: u64) -> bool {
        let s = self.servers.entry(b.id).or_insert_with(|| Chunkserver {
            id: b.id,
            addr: String::new(),
            rack: String::new(),
            capacity_bytes: 0,
            used_bytes: 0,
            draining: false,
            last_seen_ms: 0,
            reported: false,
            placing: 0,
            suspect_until_ms: 0,
            gap_ms: 0,
        });
        if s.last_seen_ms > 0 {
            let gap = now_ms.saturating_sub(s.last_seen_ms);
            s.gap_ms = match s.gap_ms {
                0 => gap,
                g => (3 * g + gap) / 4,
            };
        }
        s.addr = b.addr;
        s.rack = b.rack;
        s.capacity_bytes = b.capacity_bytes;
        s.used_bytes = b.used_bytes;
        s.draining = b.draining;
        s.last_seen_ms = now_ms;
        // As with the bytes reserved: the server's report is the truth now.
        s.placing = 0;
        if let Some(chunks) = b.chunks {
            s.reported = true;
            self.replace_report(b.id, chunks);
        }
        for (h, v) in b.changed {
            self.set(h, b.id, v);
        }
        for h in b.removed {
            self.forget(h, b.id);
        }
        !self.servers[&b.id].reported
    }

    fn set(&mut self, handle: ChunkHandle, id: NodeId, version: ChunkVersion) {
        let locs = self.locations.entry(handle).or_default();
        let loc = Loc {
            node: id,
            version,
            confirmed: true,
        };
        match locs.iter_mut().find(|l| l.node == id) {
            Some(l) => *l = loc,
            None => {
                locs.push(loc);
                self.held.entry(id).or_default().insert(handle);
            }
        }
    }

    /// Drops one replica: its server no longer holds it, or it failed a
    /// mutation and is about to be stale.
    pub fn forget(&mut self, handle: ChunkHandle, id: NodeId) {
        self.drop_location(handle, id);
        if let Some(held) = self.held.get_mut(&id) {
            held.remove(&handle);
        }
    }

    /// Drops `id`'s replica from the chunk's locations; with the last one,
    /// what the leader remembers of the chunk's failed replicas goes too
    /// (a deleted chunk's last replica is collected: nothing stays behind
    /// per chunk that ever had a writer report a failure).
    fn drop_location(&mut self, handle: ChunkHandle, id: NodeId) {
        if let Some(locs) = self.locations.get_mut(&handle) {
            locs.retain(|l| l.node != id);
            if locs.is_empty() {
                self.locations.remove(&handle);
                self.left_out.remove(&handle);
            }
        }
    }

    fn replace_report(&mut self, id: NodeId, chunks: Vec<(ChunkHandle, ChunkVersion)>) {
        if let Some(old) = self.held.remove(&id) {
            for h in old {
                self.drop_location(h, id);
            }
        }
        let mut held = BTreeSet::new();
        for (h, ver) in chunks {
            if held.insert(h) {
                self.locations.entry(h).or_default().push(Loc {
                    node: id,
                    version: ver,
                    confirmed: true,
                });
            }
        }
        self.held.insert(id, held);
    }

    /// Notes a replica the leader just placed, before its server reports it.
    pub fn expect(&mut self, handle: ChunkHandle, id: NodeId, version: ChunkVersion) {
        let locs = self.locations.entry(handle).or_default();
        match locs.iter_mut().find(|l| l.node == id) {
            Some(l) => l.version = l.version.max(version),
            None => {
                locs.push(Loc {
                    node: id,
                    version,
                    confirmed: false,
                });
                if self.held.entry(id).or_default().insert(handle)
                    && let Some(s) = self.servers.get_mut(&id)
                {
                    s.placing = s.placing.saturating_sub(1);
                }
            }
        }
    }

    /// Every replica the masters know of `handle`, of any version.
    pub fn locations(&self, handle: ChunkHandle) -> &[Loc] {
        self.locations.get(&handle).map_or(&[], Vec::as_slice)
    }

    /// Up to `max` of the chunks `id` holds, starting after `after` in
    /// handle order (wrapping around): the next batch for garbage
    /// collection.
    pub fn held_batch(&self, id: NodeId, after: ChunkHandle, max: usize) -> Vec<ChunkHandle> {
        let Some(held) = self.held.get(&id) else {
            return Vec::new();
        };
        let after_it = held.range(ChunkHandle(after.0.saturating_add(1))..);
        after_it
            .chain(held.range(..=after))
            .take(max)
            .copied()
            .collect()
    }

    pub fn servers(&self) -> impl Iterator<Item = &Chunkserver> {
        self.servers.values()
    }

    pub fn held_count(&self, id: NodeId) -> usize {
        self.held.get(&id).map_or(0, BTreeSet::len)
    }

    pub fn is_live(&self, id: NodeId, now_ms: u64, timeout_ms: u64) -> bool {
        self.servers
            .get(&id)
            .is_some_and(|s| s.last_seen_ms + timeout_ms >= now_ms)
    }

    /// Whether server `id` heartbeats as usual (it is known and not
    /// quiet).
    pub fn heard_lately(&self, id: NodeId, now_ms: u64) -> bool {
        self.servers.get(&id).is_some_and(|s| !s.quiet(now_ms))
    }

    pub fn server(&self, id: NodeId) -> Option<&Chunkserver> {
        self.servers.get(&id)
    }

    /// Whether server `id` sent this master a full chunk report since it
    /// started: until then its chunks are not known here.
    pub fn has_reported(&self, id: NodeId) -> bool {
        self.servers.get(&id).is_some_and(|s| s.reported)
    }

    /// Live servers holding `handle` at `version` or newer.
    pub fn replicas(
        &self,
        handle: ChunkHandle,
        version: ChunkVersion,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Vec<&Chunkserver> {
        self.locations
            .get(&handle)
            .into_iter()
            .flatten()
            .filter(|l| l.version >= version)
            .filter(|l| self.is_live(l.node, now_ms, timeout_ms))
            .filter_map(|l| self.servers.get(&l.node))
            .collect()
    }

    /// The placement view of every known server; `draining` adds the
    /// servers being decommissioned (the replicated set).
    pub fn views(
        &self,
        now_ms: u64,
        timeout_ms: u64,
        draining: &BTreeSet<NodeId>,
    ) -> Vec<ServerView> {
        let mut v: Vec<ServerView> = self
            .servers
            .values()
            .map(|s| ServerView {
                id: s.id,
                rack: s.rack.clone(),
                used_bytes: s.used_bytes,
                capacity_bytes: s.capacity_bytes,
                live: s.last_seen_ms + timeout_ms >= now_ms,
                draining: s.draining || draining.contains(&s.id),
                chunks: self.held.get(&s.id).map_or(0, |h| h.len() as u64) + s.placing,
                suspect: now_ms < s.suspect_until_ms || s.quiet(now_ms),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Counts a new replica of `bytes` on `id` until the leader expects it
    /// there or the server's next heartbeat says what is: chunks placed
    /// between two heartbeats would otherwise all be placed from the same
    /// view, on the same servers.
    pub fn reserve(&mut self, id: NodeId, bytes: u64) {
        if let Some(s) = self.servers.get_mut(&id) {
            s.used_bytes = s.used_bytes.saturating_add(bytes).min(s.capacity_bytes);
            s.placing += 1;
        }
    }

    /// A writer reported `id` failed a mutation at `now_ms`, or it did not
    /// take a chunk's new version, or its heartbeat says its disks have
    /// stopped completing I/O: new chunks and copies go elsewhere first
    /// for `SUSPECT_FOR_MS`.
    pub fn suspect(&mut self, id: NodeId, now_ms: u64) {
        if let Some(s) = self.servers.get_mut(&id) {
            s.suspect_until_ms = now_ms.saturating_add(SUSPECT_FOR_MS);
        }
    }

    /// The newest heartbeat from any server (`None`: no server known).
    pub fn newest_heartbeat_ms(&self) -> Option<u64> {
        self.servers.values().map(|s| s.last_seen_ms).max()
    }

    /// The longest usual time between one server's heartbeats (0 until
    /// some server sent two).
    pub fn longest_gap_ms(&self) -> u64 {
        self.servers.values().map(|s| s.gap_ms).max().unwrap_or(0)
    }

    pub fn live_count(&self, now_ms: u64, timeout_ms: u64) -> usize {
        self.servers
            .values()
            .filter(|s| s.last_seen_ms + timeout_ms >= now_ms)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: u64, chunks: Option<Vec<(u64, u64)>>) -> Beat {
        Beat {
            id: NodeId(id),
            addr: format!("127.0.0.1:{}", 9000 + id),
            rack: format!("r{}", id % 2),
            capacity_bytes: 100,
            used_bytes: id,
            draining: false,
            chunks: chunks.map(|c| {
                c.into_iter()
                    .map(|(h, v)| (ChunkHandle(h), ChunkVersion(v)))
                    .collect()
            }),
            changed: Vec::new(),
            removed: Vec::new(),
        }
    }

    #[test]
    fn chunks_placed_between_heartbeats_spread_over_the_servers() {
        let mut s = Soft::default();
        for id in 1..=4 {
            let mut b = beat(id, Some(Vec::new()));
            b.capacity_bytes = 1000;
            b.used_bytes = 0;
            s.beat(b, 0);
        }
        let mut held = [0u32; 5];
        for _ in 0..4 {
            let views = s.views(0, 10, &BTreeSet::new());
            for n in crate::placement::place(&views, 3, 0) {
                held[n.0 as usize] += 1;
                s.reserve(n, 10);
            }
        }
        // 12 replicas over 4 servers: 3 each, not 4 on three of them.
        assert_eq!(held[1..], [3, 3, 3, 3]);
        // The next heartbeat says what is really used.
        let mut b = beat(1, None);
        b.capacity_bytes = 1000;
        b.used_bytes = 7;
        s.beat(b, 1);
        let one = s.views(1, 10, &BTreeSet::new())[0].used_bytes;
        assert_eq!(one, 7);
    }

    /// The servers placed on last at `now`.
    fn suspect(s: &Soft, now: u64) -> Vec<u64> {
        s.views(now, 1 << 40, &BTreeSet::new())
            .iter()
            .filter(|v| v.suspect)
            .map(|v| v.id.0)
            .collect()
    }

    #[test]
    fn a_server_a_writer_reported_failed_stays_suspect_through_heartbeats() {
        let mut s = Soft::default();
        s.beat(beat(1, Some(Vec::new())), 0);
        s.beat(beat(2, Some(Vec::new())), 0);
        s.suspect(NodeId(2), 100);
        s.suspect(NodeId(9), 100); // unknown: nothing to mark
        assert_eq!(suspect(&s, 100), [2]);
        s.beat(beat(2, None), 200);
        assert_eq!(suspect(&s, 200), [2], "a heartbeat does not clear it");
        let end = 100 + SUSPECT_FOR_MS;
        for id in [1, 2] {
            s.beat(beat(id, None), end - 1);
        }
        assert_eq!(suspect(&s, end - 1), [2]);
        assert!(suspect(&s, end).is_empty());
    }

    #[test]
    fn a_failed_server_a_grant_left_out_is_known_at_that_version_only() {
        let mut s = Soft::default();
        let (h, n) = (ChunkHandle(7), NodeId(2));
        assert!(!s.was_left_out(h, ChunkVersion(4), n));
        s.left_out(h, ChunkVersion(4), &[n]);
        assert!(s.was_left_out(h, ChunkVersion(4), n));
        assert!(!s.was_left_out(h, ChunkVersion(4), NodeId(3)));
        assert!(!s.was_left_out(h, ChunkVersion(5), n), "a later version");
        assert!(!s.was_left_out(ChunkHandle(8), ChunkVersion(4), n));
    }

    #[test]
    fn what_a_grant_left_out_goes_with_the_chunks_last_replica() {
        let mut s = Soft::default();
        let (h, v) = (ChunkHandle(7), ChunkVersion(4));
        for id in [1, 3] {
            s.beat(beat(id, Some(vec![(7, 4)])), 0);
        }
        s.left_out(h, v, &[NodeId(2)]);
        // Collected from one server (heartbeat), then the other (report).
        let mut gone = beat(1, None);
        gone.removed = vec![h];
        s.beat(gone, 10);
        assert!(s.was_left_out(h, v, NodeId(2)), "a replica is left");
        s.beat(beat(3, Some(Vec::new())), 20);
        assert!(s.locations(h).is_empty());
        assert!(!s.was_left_out(h, v, NodeId(2)));
        assert!(s.left_out.is_empty());
    }

    #[test]
    fn a_server_silent_for_several_of_its_heartbeat_gaps_is_placed_last() {
        let mut s = Soft::default();
        for now in [0, 500, 1_000, 1_500] {
            s.beat(beat(1, (now == 0).then(Vec::new)), now);
        }
        // Silent since 1500, beating every 500 ms: quiet after 2 s more.
        s.beat(beat(2, Some(Vec::new())), 0);
        assert!(suspect(&s, 3_500).is_empty());
        assert_eq!(suspect(&s, 3_501), [1]);
        // One heartbeat alone says nothing of its gap: server 2 is not.
        assert_eq!(suspect(&s, 60_000), [1]);
        // Heard from again: placed as before.
        s.beat(beat(1, None), 4_000);
        assert!(suspect(&s, 4_000).is_empty());
        // A server beating every 100 ms is quiet after a second, not 400 ms.
        for now in (10_000..=10_500).step_by(100) {
            s.beat(beat(3, (now == 10_000).then(Vec::new)), now);
        }
        assert!(!suspect(&s, 11_500).contains(&3));
        assert!(suspect(&s, 11_501).contains(&3));
    }

    #[test]
    fn servers_sharing_one_filesystem_get_equal_shares_of_the_chunks() {
        // Four chunkservers on one disk all report its usage, which the
        // new chunks barely move.
        let mut s = Soft::default();
        let report = |s: &mut Soft, now| {
            for id in 1..=4 {
                let mut b = beat(id, (now == 0).then(Vec::new));
                (b.capacity_bytes, b.used_bytes) = (1 << 40, 1 << 39);
                s.beat(b, now);
            }
        };
        report(&mut s, 0);
        let mut held = [0u32; 5];
        for handle in 1..=8 {
            let views = s.views(handle, 10, &BTreeSet::new());
            let chosen = crate::placement::place(&views, 3, 0);
            for n in &chosen {
                s.reserve(*n, 64 << 20);
            }
            if handle % 2 == 0 {
                // Some chunks reach their log entry's end before the next
                // placement, some only after the next heartbeat.
                report(&mut s, handle);
            }
            for n in chosen {
                held[n.0 as usize] += 1;
                s.expect(ChunkHandle(handle), n, ChunkVersion(1));
            }
        }
        // 24 replicas, 6 each: not one of every chunk on server 1.
        assert_eq!(held[1..], [6, 6, 6, 6]);
    }

    #[test]
    fn full_reports_replace_locations_and_versions_filter_stale() {
        let mut s = Soft::default();
        assert!(!s.has_reported(NodeId(1)), "never heard of");
        assert!(s.beat(beat(1, None), 0), "owes a full report");
        assert!(!s.has_reported(NodeId(1)), "heard of, chunks unknown");
        assert!(!s.beat(beat(1, Some(vec![(7, 2), (8, 1)])), 10));
        assert!(s.has_reported(NodeId(1)));
        assert!(!s.beat(beat(2, Some(vec![(7, 1)])), 10));
        let ids = |v: Vec<&Chunkserver>| v.iter().map(|c| c.id.0).collect::<Vec<_>>();
        assert_eq!(ids(s.replicas(ChunkHandle(7), ChunkVersion(2), 10, 5)), [1]);
        assert_eq!(
            ids(s.replicas(ChunkHandle(7), ChunkVersion(1), 10, 5)),
            [1, 2]
        );
        // A new full report drops what the server no longer holds.
        s.beat(beat(1, Some(vec![(8, 1)])), 11);
        assert_eq!(ids(s.replicas(ChunkHandle(7), ChunkVersion(1), 11, 5)), [2]);
        // Silence past the timeout makes a server dead.
        assert!(ids(s.replicas(ChunkHandle(7), ChunkVersion(1), 16, 5)).is_empty());
        assert_eq!(s.live_count(16, 5), 1);
        let v = s.views(16, 5, &BTreeSet::new());
        assert_eq!((v[0].id.0, v[0].live, v[1].live), (1, true, false));
    }

    #[test]
    fn expected_replicas_count_until_reported_otherwise() {
        let mut s = Soft::default();
        s.beat(beat(3, Some(vec![])), 0);
        s.expect(ChunkHandle(9), NodeId(3), ChunkVersion(1));
        s.expect(ChunkHandle(9), NodeId(3), ChunkVersion(2));
        assert_eq!(s.replicas(ChunkHandle(9), ChunkVersion(2), 0, 5).len(), 1);
        s.beat(beat(3, Some(vec![])), 1);
        assert!(s.replicas(ChunkHandle(9), ChunkVersion(1), 1, 5).is_empty());
    }

    #[test]
    fn incremental_reports_and_failed_replicas_update_locations() {
        let mut s = Soft::default();
        s.beat(beat(1, Some(vec![(7, 2)])), 0);
        s.beat(beat(2, Some(vec![(7, 2)])), 0);
        let ids = |v: Vec<&Chunkserver>| v.iter().map(|c| c.id.0).collect::<Vec<_>>();
        let mut b = beat(1, None);
        b.changed = vec![
            (ChunkHandle(7), ChunkVersion(3)),
            (ChunkHandle(8), ChunkVersion(1)),
        ];
        s.beat(b, 1);
        assert_eq!(ids(s.replicas(ChunkHandle(7), ChunkVersion(3), 1, 5)), [1]);
        assert_eq!(ids(s.replicas(ChunkHandle(8), ChunkVersion(1), 1, 5)), [1]);
        let mut b = beat(1, None);
        b.removed = vec![ChunkHandle(8)];
        s.beat(b, 2);
        assert!(s.replicas(ChunkHandle(8), ChunkVersion(1), 2, 5).is_empty());
        s.forget(ChunkHandle(7), NodeId(2));
        assert_eq!(ids(s.replicas(ChunkHandle(7), ChunkVersion(1), 2, 5)), [1]);
    }
}
