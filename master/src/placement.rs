//! Where a new chunk's replicas go: live chunkservers only, never a full or
//! draining one, a suspect one (a writer lately found it failed, or it
//! went quiet) only after the others, whatever their racks,
//! least used (by fraction of disk, in steps of 0.1 %) first, among
//! equally full ones the one holding the fewest chunks, and spread across
//! racks before any rack gets a second replica. Pure: the
//! leader feeds it its soft view of the chunkservers and puts the answer
//! in the log entry.

use gfs_proto::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub id: NodeId,
    pub rack: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub live: bool,
    pub draining: bool,
    /// Replicas it holds or was just given.
    pub chunks: u64,
    /// A writer lately reported it failed a mutation, it did not take a
    /// chunk's new version, or it went quiet (it may be stalled while it
    /// still heartbeats, or not declared dead yet).
    pub suspect: bool,
}

/// Steps of a disk's used fraction that count as equally full.
const FULLNESS_STEPS: u128 = 1000;

impl ServerView {
    fn free(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes)
    }

    /// Which server a new replica prefers, least first: not suspect, the
    /// used fraction of its disks in steps of 0.1 %, then the replicas it
    /// holds, then its id (a stable order). Servers that share one filesystem, or
    /// fresh disks of one size, report the same fraction; without the
    /// count the lowest id would get a replica of every chunk (and every
    /// reader of them a third of its reads: BENCHMARKS.md, 2026-12-02,
    /// night).
    fn preference(&self) -> (bool, u128, u64, NodeId) {
        let fullness =
            u128::from(self.used_bytes) * FULLNESS_STEPS / u128::from(self.capacity_bytes.max(1));
        (self.suspect, fullness, self.chunks, self.id)
    }

    fn eligible(&self, min_free_bytes: u64) -> bool {
        self.live && !self.draining && self.free() >= min_free_bytes && self.capacity_bytes > 0
    }
}

/// Up to `n` servers for a new chunk, best first. Servers with less than
/// `min_free_bytes` free count as full. Empty if no server qualifies.
pub fn place(servers: &[ServerView], n: usize, min_free_bytes: u64) -> Vec<NodeId> {
    let mut candidates: Vec<&ServerView> = servers
        .iter()
        .filter(|s| s.eligible(min_free_bytes))
        .collect();
    candidates.sort_by_key(|s| s.preference());
    let mut chosen: Vec<&ServerView> = Vec::with_capacity(n);
    // First one per rack, then fill up from whatever is left. A suspect
    // server does not count for its rack: a replica on it is likely
    // lost, and a copy ordered to it holds the chunk's writers out.
    for s in candidates.iter().filter(|s| !s.suspect) {
        if chosen.len() < n && !chosen.iter().any(|c| c.rack == s.rack) {
            chosen.push(s);
        }
    }
    for s in &candidates {
        if chosen.len() < n && !chosen.iter().any(|c| c.id == s.id) {
            chosen.push(s);
        }
    }
    chosen.iter().map(|s| s.id).collect()
}

/// One more replica for a chunk already on `holders`: a live, not
/// draining, not full, not suspect server that is not a holder and not
/// `excluded`, on a rack the holders do not use if there is one, preferred
/// as `place` does. Never a suspect one: the chunk's lease is revoked for
/// the copy, and a copy to a stalled server holds the chunk's writers out
/// for the copy's whole timeout; the chunk is better left short until
/// another server can take it (unless it is down to its last replica:
/// `repair::assign` then asks again with every server trusted).
pub fn place_one(
    servers: &[ServerView],
    holders: &[NodeId],
    excluded: impl Fn(NodeId) -> bool,
    min_free_bytes: u64,
) -> Option<NodeId> {
    let racks: Vec<&str> = servers
        .iter()
        .filter(|s| holders.contains(&s.id))
        .map(|s| s.rack.as_str())
        .collect();
    servers
        .iter()
        .filter(|s| s.eligible(min_free_bytes))
        .filter(|s| !holders.contains(&s.id) && !excluded(s.id))
        .filter(|s| !s.suspect)
        .min_by_key(|s| (racks.contains(&s.rack.as_str()), s.preference()))
        .map(|s| s.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u64, rack: &str, used: u64) -> ServerView {
        ServerView {
            id: NodeId(id),
            rack: rack.into(),
            used_bytes: used,
            capacity_bytes: 100,
            live: true,
            draining: false,
            chunks: 0,
            suspect: false,
        }
    }

    fn ids(v: Vec<NodeId>) -> Vec<u64> {
        v.into_iter().map(|n| n.0).collect()
    }

    #[test]
    fn spreads_across_racks_least_used_first() {
        let servers = [
            s(1, "r1", 10),
            s(2, "r1", 5),
            s(3, "r2", 50),
            s(4, "r3", 90),
            s(5, "r2", 20),
        ];
        assert_eq!(ids(place(&servers, 3, 1)), [2, 5, 4]);
        assert_eq!(ids(place(&servers, 5, 1)), [2, 5, 4, 1, 3]);
    }

    #[test]
    fn fills_up_within_a_rack_when_racks_run_out() {
        let servers = [s(1, "r1", 30), s(2, "r1", 10), s(3, "r1", 20)];
        assert_eq!(ids(place(&servers, 2, 1)), [2, 3]);
    }

    #[test]
    fn never_picks_dead_draining_or_full_servers() {
        let mut dead = s(1, "r1", 0);
        dead.live = false;
        let mut draining = s(2, "r2", 0);
        draining.draining = true;
        let full = s(3, "r3", 99);
        let ok = s(4, "r4", 50);
        assert_eq!(ids(place(&[dead, draining, full, ok], 3, 2)), [4]);
        assert!(place(&[], 3, 0).is_empty());
    }

    #[test]
    fn one_more_replica_goes_to_a_new_rack_first() {
        let servers = [
            s(1, "r1", 10),
            s(2, "r1", 5),
            s(3, "r2", 50),
            s(4, "r3", 90),
        ];
        let none = |_| false;
        // Holders on r1 and r2: r3 wins although it is the fullest.
        assert_eq!(
            place_one(&servers, &[NodeId(1), NodeId(3)], none, 1),
            Some(NodeId(4))
        );
        // All racks used: the least used non-holder.
        assert_eq!(
            place_one(&servers, &[NodeId(1), NodeId(3), NodeId(4)], none, 1),
            Some(NodeId(2))
        );
        // Excluded (busy) servers are skipped; nobody left is None.
        assert_eq!(
            place_one(&servers, &[NodeId(1), NodeId(3)], |n| n == NodeId(4), 1),
            Some(NodeId(2))
        );
        assert_eq!(
            place_one(
                &servers,
                &[NodeId(1), NodeId(2), NodeId(3), NodeId(4)],
                none,
                1
            ),
            None
        );
    }

    #[test]
    fn equally_full_servers_get_the_one_with_fewest_chunks_first() {
        // Servers on one filesystem report the same usage.
        let with = |id, chunks| {
            let mut v = s(id, "r1", 0);
            (v.used_bytes, v.capacity_bytes, v.chunks) = (400_000, 1_000_000, chunks);
            v
        };
        let servers = [with(1, 8), with(2, 6), with(3, 5), with(4, 5)];
        assert_eq!(ids(place(&servers, 3, 1)), [3, 4, 2]);
        // Within 0.1 % of the capacity counts as equally full ...
        let mut a_bit_fuller = with(3, 5);
        a_bit_fuller.used_bytes += 999;
        assert_eq!(ids(place(&[with(2, 6), a_bit_fuller.clone()], 1, 1)), [3]);
        // ... a step more does not, whatever the count.
        a_bit_fuller.used_bytes += 1;
        assert_eq!(ids(place(&[with(2, 6), a_bit_fuller], 1, 1)), [2]);
        // A new replica of a chunk on 1 goes the same way.
        let none = |_| false;
        assert_eq!(place_one(&servers, &[NodeId(3)], none, 1), Some(NodeId(4)));
    }

    #[test]
    fn a_server_a_writer_found_failed_is_placed_on_only_after_the_others() {
        let mut suspect = s(1, "r1", 0);
        suspect.suspect = true;
        let servers = [suspect, s(2, "r1", 50), s(3, "r2", 90)];
        assert_eq!(ids(place(&servers, 2, 1)), [2, 3], "another on r1 first");
        assert_eq!(ids(place(&servers, 3, 1)), [2, 3, 1], "if needed, still");
        let none = |_| false;
        assert_eq!(place_one(&servers, &[NodeId(3)], none, 1), Some(NodeId(2)));
        // Even when the suspect one is alone on its rack: a copy for a
        // chunk on r1 stays on r1 rather than go to a failing server.
        let mut alone = s(3, "r2", 0);
        alone.suspect = true;
        let servers = [s(1, "r1", 50), s(2, "r1", 60), alone];
        assert_eq!(ids(place(&servers, 2, 1)), [1, 2]);
        assert_eq!(ids(place(&servers, 3, 1)), [1, 2, 3]);
        assert_eq!(place_one(&servers, &[NodeId(1)], none, 1), Some(NodeId(2)));
        // A copy never goes to a suspect server, even the only one left.
        assert_eq!(place_one(&servers, &[NodeId(1), NodeId(2)], none, 1), None);
    }

    #[test]
    fn usage_is_compared_as_a_fraction_of_capacity() {
        let mut big = s(1, "r1", 400);
        big.capacity_bytes = 1000; // 40 % used
        let small = s(2, "r2", 50); // 50 % used
        assert_eq!(ids(place(&[small, big], 1, 1)), [1]);
    }
}
