//! The leader's background duties as pure decisions: which chunks need a
//! new replica and in what order, where each copy comes from and goes to,
//! and which replicas a chunkserver should delete. No I/O, no clock: the
//! caller describes the chunk table and what the masters know of the
//! replicas, and carries the answers out.
//!
//! Rules:
//! - A replica *counts* when it is at the chunk's current version and its
//!   server is live, or dead for less than the re-replication grace period
//!   (so a quick restart does not start a storm of clones).
//! - A chunk with fewer counting replicas than wanted is cloned from a live
//!   replica that its server confirmed (reported), never from one the
//!   leader only expects. Fewest counting replicas first, then chunks a
//!   client is waiting for.
//! - A chunk under a lease is cloned only after the leader has taken the
//!   lease back from its primary (a copy could miss a mutation); the
//!   leader refuses new leases on a chunk while it is being cloned.
//! - A replica is deleted when no file references its chunk any more (the
//!   handle was allocated and then reclaimed), when it is stale and a
//!   current live confirmed replica exists elsewhere, or when the chunk has
//!   more live confirmed current replicas than wanted (the fullest server's
//!   goes). Never while the chunk is being cloned, never a chunk this
//!   state does not know yet.

use std::collections::HashMap;

use gfs_proto::{ChunkHandle, ChunkVersion, NodeId};

use crate::placement::{ServerView, place_one};

/// One replica, with its server's standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: NodeId,
    pub version: ChunkVersion,
    /// Reported by its server, not only expected by the leader.
    pub confirmed: bool,
    /// The server heartbeats within the timeout.
    pub live: bool,
    /// Live, or dead for less than the grace period.
    pub counts: bool,
    /// Fraction of the server's disk in use, in millionths (for choosing a
    /// surplus replica to drop).
    pub used_ppm: u64,
    /// Being decommissioned: its replica does not count, and goes first
    /// once the chunk has enough elsewhere.
    pub draining: bool,
}

/// A chunk table entry, with what the leader knows about its activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub handle: ChunkHandle,
    pub version: ChunkVersion,
    pub wanted: u8,
    /// Under a lease (not yet expired plus grace).
    pub leased: bool,
    /// A clone of it is in flight.
    pub cloning: bool,
    /// A client asked to write it and found too few replicas.
    pub blocked: bool,
}

/// A chunk short of replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub handle: ChunkHandle,
    pub version: ChunkVersion,
    pub counting: usize,
    pub wanted: usize,
    pub blocked: bool,
    /// Under a lease: revoke it first.
    pub leased: bool,
    /// Live confirmed current replicas to copy from.
    pub sources: Vec<NodeId>,
    /// Every server holding any replica (not a destination).
    pub holders: Vec<NodeId>,
}

/// Whether `c` needs another replica, and from where it can come.
pub fn need(c: &Chunk, holders: &[Holder]) -> Option<Need> {
    let current = |h: &&Holder| h.version == c.version;
    let counting = holders
        .iter()
        .filter(current)
        .filter(|h| h.counts && !h.draining)
        .count();
    let wanted = usize::from(c.wanted);
    if c.cloning || counting >= wanted {
        return None;
    }
    let sources: Vec<NodeId> = holders
        .iter()
        .filter(current)
        .filter(|h| h.live && h.confirmed)
        .map(|h| h.node)
        .collect();
    if sources.is_empty() {
        return None;
    }
    Some(Need {
        handle: c.handle,
        version: c.version,
        counting,
        wanted,
        blocked: c.blocked,
        leased: c.leased,
        sources,
        holders: holders.iter().map(|h| h.node).collect(),
    })
}

/// Repair order: fewest counting replicas first, then chunks blocking a
/// client, then by handle (stable).
pub fn prioritize(needs: &mut [Need]) {
    needs.sort_by_key(|n| (n.counting, !n.blocked, n.handle));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneOrder {
    pub handle: ChunkHandle,
    pub version: ChunkVersion,
    pub source: NodeId,
    pub dest: NodeId,
    /// Revoke the chunk's lease first.
    pub revoke: bool,
}

/// Turns prioritized needs into clone orders while no server takes part in
/// more than `per_server` clones (as source or destination, counting
/// `busy`, the clones already in flight, which is updated).
pub fn assign(
    needs: &[Need],
    servers: &[ServerView],
    busy: &mut HashMap<NodeId, usize>,
    per_server: usize,
    min_free_bytes: u64,
) -> Vec<CloneOrder> {
    let mut orders = Vec::new();
    for n in needs {
        let load = |busy: &HashMap<NodeId, usize>, id: NodeId| busy.get(&id).copied().unwrap_or(0);
        let Some(source) = n
            .sources
            .iter()
            .copied()
            .filter(|s| load(busy, *s) < per_server)
            .min_by_key(|s| (load(busy, *s), *s))
        else {
            continue;
        };
        let excluded = |id| load(busy, id) >= per_server;
        let dest = place_one(servers, &n.holders, excluded, min_free_bytes).or_else(|| {
            // A chunk down to its last replica goes to a suspect server
            // rather than wait out its suspicion (60 s): its data first,
            // its writers (held out while a copy to a stalled server
            // times out) second.
            (n.counting <= 1)
                .then(|| place_one(&trusted(servers), &n.holders, excluded, min_free_bytes))
                .flatten()
        });
        let Some(dest) = dest else {
            continue;
        };
        *busy.entry(source).or_default() += 1;
        *busy.entry(dest).or_default() += 1;
        orders.push(CloneOrder {
            handle: n.handle,
            version: n.version,
            source,
            dest,
            revoke: n.leased,
        });
    }
    orders
}

/// `servers` with no suspicion held against any.
fn trusted(servers: &[ServerView]) -> Vec<ServerView> {
    servers
        .iter()
        .map(|s| ServerView {
            suspect: false,
            ..s.clone()
        })
        .collect()
}

/// Servers further apart than this in disk use (millionths) are
/// rebalanced.
pub const REBALANCE_SPREAD_PPM: u64 = 100_000;

/// Fraction of a disk in use, in millionths.
pub fn used_ppm(used_bytes: u64, capacity_bytes: u64) -> u64 {
    (u128::from(used_bytes) * 1_000_000 / u128::from(capacity_bytes.max(1))) as u64
}

/// The fullest and the emptiest server eligible for rebalancing (live, not
/// draining), if their disk use differs by more than the spread.
pub fn rebalance_pair(servers: &[ServerView], min_free_bytes: u64) -> Option<(NodeId, NodeId)> {
    let eligible = || {
        servers
            .iter()
            .filter(|s| s.live && !s.draining && s.capacity_bytes > 0)
    };
    let full = eligible().max_by_key(|s| (used_ppm(s.used_bytes, s.capacity_bytes), s.id))?;
    let empty = eligible()
        .filter(|s| s.capacity_bytes.saturating_sub(s.used_bytes) >= min_free_bytes)
        .min_by_key(|s| (used_ppm(s.used_bytes, s.capacity_bytes), s.id))?;
    let spread = used_ppm(full.used_bytes, full.capacity_bytes)
        .saturating_sub(used_ppm(empty.used_bytes, empty.capacity_bytes));
    (spread > REBALANCE_SPREAD_PPM).then_some((full.id, empty.id))
}

/// Moves from `from` to `to` for chunks `from` holds (each with its
/// holders), at most `max`, within the per-server clone limit. A chunk that
/// is leased, being cloned, or already on `to` stays. The surplus replica
/// on the fuller server is then collected like any other.
pub fn rebalance_moves(
    from: NodeId,
    to: NodeId,
    chunks: &[(Chunk, Vec<Holder>)],
    busy: &mut HashMap<NodeId, usize>,
    per_server: usize,
    max: usize,
) -> Vec<CloneOrder> {
    let mut orders = Vec::new();
    for (c, holders) in chunks {
        let load = |id: NodeId| busy.get(&id).copied().unwrap_or(0);
        if orders.len() >= max || load(from) >= per_server || load(to) >= per_server {
            break;
        }
        let on_source = holders
            .iter()
            .any(|h| h.node == from && h.version == c.version && h.live && h.confirmed);
        if c.leased || c.cloning || !on_source || holders.iter().any(|h| h.node == to) {
            continue;
        }
        *busy.entry(from).or_default() += 1;
        *busy.entry(to).or_default() += 1;
        orders.push(CloneOrder {
            handle: c.handle,
            version: c.version,
            source: from,
            dest: to,
            revoke: false,
        });
    }
    orders
}

/// What to do with the replica of `handle` on server `on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Delete it while its version is below `below_version` (0: any).
    Delete {
        below_version: u64,
    },
}

/// The table's view of a chunk reported by a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// In the chunk table.
    Live(Chunk),
    /// Allocated once, no longer in the table: reclaimed.
    Reclaimed,
    /// Beyond this state's handle allocator: not applied here yet.
    Unknown,
}

/// Garbage collection of one replica on `on`.
pub fn verdict(on: NodeId, known: Known, holders: &[Holder]) -> Verdict {
    let c = match known {
        Known::Reclaimed => return Verdict::Delete { below_version: 0 },
        Known::Unknown => return Verdict::Keep,
        Known::Live(c) => c,
    };
    let Some(mine) = holders.iter().find(|h| h.node == on) else {
        return Verdict::Keep;
    };
    if c.cloning {
        return Verdict::Keep;
    }
    let good: Vec<&Holder> = holders
        .iter()
        .filter(|h| h.version == c.version && h.live && h.confirmed)
        .collect();
    if mine.version < c.version {
        return if good.iter().any(|h| h.node != on) {
            Verdict::Delete {
                below_version: c.version.0,
            }
        } else {
            Verdict::Keep
        };
    }
    if mine.version == c.version
        && !c.leased
        && good.len() > usize::from(c.wanted)
        && good
            .iter()
            .max_by_key(|h| (h.draining, h.used_ppm, h.node))
            .is_some_and(|h| h.node == on)
    {
        return Verdict::Delete {
            below_version: c.version.0 + 1,
        };
    }
    Verdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(node: u64, version: u64) -> Holder {
        Holder {
            node: NodeId(node),
            version: ChunkVersion(version),
            confirmed: true,
            live: true,
            counts: true,
            used_ppm: node * 10,
            draining: false,
        }
    }

    fn chunk(handle: u64, version: u64) -> Chunk {
        Chunk {
            handle: ChunkHandle(handle),
            version: ChunkVersion(version),
            wanted: 3,
            leased: false,
            cloning: false,
            blocked: false,
        }
    }

    fn server(id: u64, rack: &str) -> ServerView {
        ServerView {
            id: NodeId(id),
            rack: rack.into(),
            used_bytes: id,
            capacity_bytes: 100,
            live: true,
            draining: false,
            chunks: 0,
            suspect: false,
        }
    }

    #[test]
    fn dead_within_grace_counts_dead_after_grace_does_not() {
        let c = chunk(7, 2);
        let mut dead = h(3, 2);
        dead.live = false;
        assert_eq!(need(&c, &[h(1, 2), h(2, 2), dead]), None);
        dead.counts = false;
        let n = need(&c, &[h(1, 2), h(2, 2), dead]).expect("short");
        assert_eq!((n.counting, n.wanted), (2, 3));
        assert_eq!(n.sources, [NodeId(1), NodeId(2)]);
        assert_eq!(n.holders, [NodeId(1), NodeId(2), NodeId(3)]);
    }

    #[test]
    fn stale_unconfirmed_leased_and_cloning_chunks_are_left_alone() {
        let c = chunk(7, 2);
        // Stale replicas do not count and are no source.
        let n = need(&c, &[h(1, 2), h(2, 1)]).expect("short");
        assert_eq!((n.counting, n.sources.len()), (1, 1));
        // Only expected, never reported: nothing to copy from.
        let mut expected = h(1, 2);
        expected.confirmed = false;
        assert_eq!(need(&c, &[expected]), None);
        // A leased chunk is cloned after its lease is revoked.
        let leased = Chunk { leased: true, ..c };
        assert!(need(&leased, &[h(1, 2)]).is_some_and(|n| n.leased));
        let cloning = Chunk { cloning: true, ..c };
        assert_eq!(need(&cloning, &[h(1, 2)]), None);
    }

    #[test]
    fn fewest_replicas_first_then_blocked_clients() {
        let mut needs: Vec<Need> = [(10, 2, false), (11, 1, false), (12, 2, true), (13, 1, true)]
            .into_iter()
            .map(|(handle, counting, blocked)| Need {
                handle: ChunkHandle(handle),
                version: ChunkVersion(1),
                counting,
                wanted: 3,
                blocked,
                leased: false,
                sources: vec![NodeId(1)],
                holders: vec![NodeId(1)],
            })
            .collect();
        prioritize(&mut needs);
        let order: Vec<u64> = needs.iter().map(|n| n.handle.0).collect();
        assert_eq!(order, [13, 11, 12, 10]);
    }

    /// A chunk short of replicas on servers `on` (each a source).
    fn need_on(handle: u64, on: &[u64]) -> Need {
        Need {
            handle: ChunkHandle(handle),
            version: ChunkVersion(1),
            counting: on.len(),
            wanted: 3,
            blocked: false,
            leased: false,
            sources: on.iter().map(|n| NodeId(*n)).collect(),
            holders: on.iter().map(|n| NodeId(*n)).collect(),
        }
    }

    #[test]
    fn only_a_chunk_down_to_its_last_replica_is_copied_to_a_suspect_server() {
        let mut suspect = server(3, "b");
        suspect.suspect = true;
        let servers = [server(1, "a"), server(2, "a"), suspect];
        // Two replicas: it waits for the suspicion to end.
        let orders = assign(&[need_on(1, &[1, 2])], &servers, &mut HashMap::new(), 2, 1);
        assert_eq!(orders, []);
        // One: its copy goes to the suspect server, as a last resort only.
        let orders = assign(&[need_on(2, &[1])], &servers, &mut HashMap::new(), 2, 1);
        assert_eq!(orders.iter().map(|o| o.dest.0).collect::<Vec<_>>(), [2]);
        let orders = assign(
            &[need_on(3, &[1, 2])],
            &servers[..2],
            &mut HashMap::new(),
            2,
            1,
        );
        assert_eq!(orders, []);
        let alone = [server(1, "a"), servers[2].clone()];
        let orders = assign(&[need_on(4, &[1])], &alone, &mut HashMap::new(), 2, 1);
        assert_eq!(orders.iter().map(|o| o.dest.0).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn assignment_respects_racks_and_the_per_server_limit() {
        let servers = [
            server(1, "a"),
            server(2, "a"),
            server(3, "b"),
            server(4, "c"),
            server(5, "c"),
        ];
        let needs = [
            need_on(1, &[1, 3]),
            need_on(2, &[1, 3]),
            need_on(3, &[1, 3]),
        ];
        let mut busy = HashMap::new();
        let orders = assign(&needs, &servers, &mut busy, 1, 1);
        // First: source 1 (ties by id), destination on the unused rack c.
        // Second: source 3 (1 is busy), destination 5 (4 is busy).
        // Third: both sources busy.
        let got: Vec<(u64, u64, u64)> = orders
            .iter()
            .map(|o| (o.handle.0, o.source.0, o.dest.0))
            .collect();
        assert_eq!(got, [(1, 1, 4), (2, 3, 5)]);
        assert_eq!(busy.values().sum::<usize>(), 4);
    }

    #[test]
    fn a_draining_server_s_replicas_are_copied_then_dropped_first() {
        let c = chunk(7, 2);
        let mut d = h(1, 2);
        d.draining = true;
        let three = [d, h(2, 2), h(3, 2)];
        let n = need(&c, &three).expect("short while draining");
        assert_eq!((n.counting, n.sources.len()), (2, 3));
        // Copied: four good replicas, the draining one goes although it is
        // the emptiest.
        let four = [d, h(2, 2), h(3, 2), h(4, 2)];
        assert_eq!(need(&c, &four), None);
        assert_eq!(
            verdict(NodeId(1), Known::Live(c), &four),
            Verdict::Delete { below_version: 3 }
        );
        assert_eq!(verdict(NodeId(4), Known::Live(c), &four), Verdict::Keep);
    }

    #[test]
    fn rebalancing_moves_chunks_from_the_fullest_to_the_emptiest() {
        let mut servers = [server(1, "a"), server(2, "a"), server(3, "b")];
        servers[0].used_bytes = 90;
        servers[1].used_bytes = 50;
        servers[2].used_bytes = 20;
        assert_eq!(rebalance_pair(&servers, 1), Some((NodeId(1), NodeId(3))));
        servers[0].used_bytes = 29;
        servers[1].used_bytes = 25;
        assert_eq!(rebalance_pair(&servers, 1), None, "within the spread");
        // A draining server is no rebalancing target.
        servers[0].used_bytes = 90;
        servers[2].draining = true;
        assert_eq!(rebalance_pair(&servers, 1), Some((NodeId(1), NodeId(2))));
        let on = |handle: u64, nodes: &[u64]| {
            (
                chunk(handle, 1),
                nodes.iter().map(|n| h(*n, 1)).collect::<Vec<_>>(),
            )
        };
        let leased = (
            Chunk {
                leased: true,
                ..chunk(4, 1)
            },
            vec![h(1, 1)],
        );
        let chunks = [
            on(1, &[1, 2]),
            on(2, &[1, 3]),
            leased,
            on(5, &[1]),
            on(6, &[1]),
        ];
        let mut busy = HashMap::new();
        let got: Vec<u64> = rebalance_moves(NodeId(1), NodeId(3), &chunks, &mut busy, 2, 10)
            .iter()
            .map(|o| o.handle.0)
            .collect();
        // 2 is on the target already, 4 is leased; the limit stops at two.
        assert_eq!(got, [1, 5]);
    }

    #[test]
    fn reclaimed_chunks_go_unknown_ones_stay() {
        assert_eq!(
            verdict(NodeId(1), Known::Reclaimed, &[h(1, 1)]),
            Verdict::Delete { below_version: 0 }
        );
        assert_eq!(
            verdict(NodeId(1), Known::Unknown, &[h(1, 1)]),
            Verdict::Keep
        );
    }

    #[test]
    fn stale_replicas_go_only_while_a_good_one_is_left() {
        let c = Known::Live(chunk(7, 3));
        let stale = h(1, 2);
        assert_eq!(
            verdict(NodeId(1), c, &[stale, h(2, 3)]),
            Verdict::Delete { below_version: 3 }
        );
        // The only current replica is dead, or only expected: keep.
        let mut dead = h(2, 3);
        dead.live = false;
        assert_eq!(verdict(NodeId(1), c, &[stale, dead]), Verdict::Keep);
        let mut expected = h(2, 3);
        expected.confirmed = false;
        assert_eq!(verdict(NodeId(1), c, &[stale, expected]), Verdict::Keep);
        // Nor while the chunk is being cloned.
        let cloning = Known::Live(Chunk {
            cloning: true,
            ..chunk(7, 3)
        });
        assert_eq!(
            verdict(NodeId(1), cloning, &[stale, h(2, 3)]),
            Verdict::Keep
        );
    }

    #[test]
    fn a_surplus_replica_goes_from_the_fullest_server_only() {
        let c = chunk(7, 3);
        let four = [h(1, 3), h(2, 3), h(3, 3), h(4, 3)];
        let verdicts: Vec<Verdict> = (1..=4)
            .map(|n| verdict(NodeId(n), Known::Live(c), &four))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Keep,
                Verdict::Keep,
                Verdict::Keep,
                Verdict::Delete { below_version: 4 }
            ]
        );
        // Not under a lease, and not when exactly enough.
        let leased = Chunk { leased: true, ..c };
        assert_eq!(
            verdict(NodeId(4), Known::Live(leased), &four),
            Verdict::Keep
        );
        assert_eq!(
            verdict(NodeId(3), Known::Live(c), &four[..3]),
            Verdict::Keep
        );
    }
}
