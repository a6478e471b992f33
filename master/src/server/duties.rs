//! The leader's background duties, carried out: re-replication (a pass
//! every `repair_interval_ms` plans clones with [`crate::repair`] and sends
//! them to the destination chunkservers), reclaiming deleted entries whose
//! retention ran out, and garbage collection of replicas, in batches with
//! each heartbeat. Followers do none of it; a new leader starts from its
//! own applied state and the soft state it learned from heartbeats.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gfs_proto::wire::chunk::CloneRequest;
use gfs_proto::wire::master::DeleteChunk;
use gfs_proto::{ChunkHandle, NodeId};

use super::node::{Node, now_ms};
use super::soft::{Loc, Soft};
use crate::repair::{self, Chunk, CloneOrder, Holder, Known, Verdict};
use crate::state::{ChunkMeta, Command, MasterState, Reply};

/// Chunks one heartbeat checks for garbage.
const GC_BATCH: usize = 1024;
/// Deleted entries one reclaim command drops.
const RECLAIM_BATCH: usize = 1000;
/// A client's "too few replicas" mark lasts this long.
const BLOCKED_FOR_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairStats {
    /// Chunks short of replicas in the last pass, cloned or not.
    pub short: u64,
    /// Short chunks that got no clone in the last pass (limits, no source
    /// or no destination).
    pub queued: u64,
    pub cloned: u64,
    pub failed: u64,
    pub bytes_cloned: u64,
    pub deletes_sent: u64,
}

#[derive(Debug, Default)]
pub struct Duties {
    in_flight: Mutex<HashMap<ChunkHandle, (NodeId, NodeId)>>,
    /// Servers a clone to failed (full, broken), left out as destinations
    /// until the time given: a full cluster must not keep a short chunk
    /// "being copied" (and so closed to writes) by orders that cannot
    /// succeed.
    refused: Mutex<HashMap<NodeId, u64>>,
    blocked: Mutex<HashMap<ChunkHandle, u64>>,
    gc_cursor: Mutex<HashMap<NodeId, ChunkHandle>>,
    stats: Mutex<RepairStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Duties {
    pub fn cloning(&self, h: ChunkHandle) -> bool {
        lock(&self.in_flight).contains_key(&h)
    }

    pub fn clones_in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Each chunk being copied, with the server it is copied to.
    pub fn copies(&self) -> HashMap<ChunkHandle, NodeId> {
        let in_flight = lock(&self.in_flight);
        in_flight.iter().map(|(h, (_, dest))| (*h, *dest)).collect()
    }

    /// A client wants to write `h` and found too few replicas.
    pub fn mark_blocked(&self, h: ChunkHandle, now: u64) {
        lock(&self.blocked).insert(h, now);
    }

    pub fn stats(&self) -> RepairStats {
        *lock(&self.stats)
    }
}

/// Timing knobs the pure rules need, from the config.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: u64,
    pub timeout_ms: u64,
    pub grace_ms: u64,
    pub lease_grace_ms: u64,
}

impl Clock {
    pub fn of(node: &Node) -> Self {
        Self {
            now: now_ms(),
            timeout_ms: node.cfg.chunkserver_timeout_ms,
            grace_ms: node.cfg.rereplication_grace_ms,
            lease_grace_ms: node.cfg.lease_grace_ms,
        }
    }
}

/// The replicas of a chunk with their servers' standing.
pub fn holders(
    soft: &Soft,
    locs: &[Loc],
    draining: &BTreeSet<NodeId>,
    clock: Clock,
) -> Vec<Holder> {
    locs.iter()
        .map(|l| {
            let s = soft.server(l.node);
            let seen = s.map_or(0, |s| s.last_seen_ms);
            let used_ppm = s.map_or(0, |s| repair::used_ppm(s.used_bytes, s.capacity_bytes));
            Holder {
                node: l.node,
                version: l.version,
                confirmed: l.confirmed,
                live: seen + clock.timeout_ms >= clock.now,
                counts: seen + clock.timeout_ms + clock.grace_ms >= clock.now,
                used_ppm,
                draining: draining.contains(&l.node) || s.is_some_and(|s| s.draining),
            }
        })
        .collect()
}

/// A chunk table entry as the repair rules see it.
pub fn chunk_of(
    state: &MasterState,
    duties: &Duties,
    blocked: &HashMap<ChunkHandle, u64>,
    h: ChunkHandle,
    c: ChunkMeta,
    clock: Clock,
) -> Chunk {
    let leased = state
        .lease(h)
        .is_some_and(|l| clock.now < l.expires_at_ms + clock.lease_grace_ms);
    Chunk {
        handle: h,
        version: c.version,
        wanted: c.replication,
        leased,
        cloning: duties.cloning(h),
        blocked: blocked
            .get(&h)
            .is_some_and(|t| t + BLOCKED_FOR_MS > clock.now),
    }
}

/// Runs the leader's duties until the task is dropped.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(node.cfg.repair_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_leader() {
            continue;
        }
        reclaim(&node).await;
        // A chunk whose other replicas have not reported to a new master
        // yet looks short: no copies (each revoking a lease first) until
        // every live server has been heard from (all masters restarted:
        // 2-4 needless clones of 48 chunks), nor grants left unconfirmed
        // completed without them (they would be versioned out). A writer
        // of such a chunk completes its grant itself.
        if node.learning_servers(now_ms()) {
            continue;
        }
        super::grant::complete_unconfirmed(&node).await;
        for order in plan(&node) {
            tokio::spawn(execute(node.clone(), order));
        }
    }
}

/// Drops deleted entries whose retention ran out.
async fn reclaim(node: &Node) {
    let ids = node
        .state()
        .state
        .expired_deleted(now_ms(), node.cfg.retention_ms, RECLAIM_BATCH);
    if ids.is_empty() {
        return;
    }
    match node.propose(0, 0, Command::Reclaim { ids }).await {
        Ok(Reply::Reclaimed { entries, chunks }) => {
            tracing::info!(
                entries,
                chunks,
                "reclaimed deleted entries past their retention"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e.message(), "reclaim failed"),
    }
}

/// Rebalancing looks at this many chunks of the fullest server per pass.
const REBALANCE_SCAN: usize = 256;
/// How long a server that failed a clone is not sent another.
const REFUSED_FOR_MS: u64 = 10_000;

/// One pass: the clone orders to send now. Chunks short of replicas
/// first; with clone capacity left, moves from the fullest server to the
/// emptiest.
fn plan(node: &Node) -> Vec<CloneOrder> {
    let clock = Clock::of(node);
    let duties = &node.duties;
    let blocked = {
        let mut b = lock(&duties.blocked);
        b.retain(|_, t| *t + BLOCKED_FOR_MS > clock.now);
        b.clone()
    };
    let mut busy: HashMap<NodeId, usize> = HashMap::new();
    for (s, d) in lock(&duties.in_flight).values() {
        *busy.entry(*s).or_default() += 1;
        *busy.entry(*d).or_default() += 1;
    }
    let per_server = node.cfg.clones_per_server;
    let a = node.state();
    let soft = node.soft();
    let draining = a.state.draining();
    let mut needs = Vec::new();
    for (h, meta) in a.state.chunks() {
        let c = chunk_of(&a.state, duties, &blocked, h, meta, clock);
        let holders = holders(&soft, soft.locations(h), draining, clock);
        if let Some(n) = repair::need(&c, &holders) {
            needs.push(n);
        }
    }
    repair::prioritize(&mut needs);
    let mut views = soft.views(clock.now, clock.timeout_ms, draining);
    {
        let mut refused = lock(&duties.refused);
        refused.retain(|_, until| *until > clock.now);
        views.retain(|v| !refused.contains_key(&v.id));
    }
    let mut orders = repair::assign(
        &needs,
        &views,
        &mut busy,
        per_server,
        node.cfg.min_free_bytes,
    );
    if needs.is_empty()
        && let Some((from, to)) = repair::rebalance_pair(&views, node.cfg.min_free_bytes)
    {
        let chunks: Vec<_> = soft
            .held_batch(from, ChunkHandle(0), REBALANCE_SCAN)
            .into_iter()
            .filter_map(|h| {
                let meta = a.state.chunk(h)?;
                let c = chunk_of(&a.state, duties, &blocked, h, meta, clock);
                Some((c, holders(&soft, soft.locations(h), draining, clock)))
            })
            .collect();
        orders.extend(repair::rebalance_moves(
            from, to, &chunks, &mut busy, per_server, per_server,
        ));
    }
    drop(soft);
    drop(a);
    let mut in_flight = lock(&duties.in_flight);
    for o in &orders {
        in_flight.insert(o.handle, (o.source, o.dest));
    }
    let mut st = lock(&duties.stats);
    st.short = needs.len() as u64;
    st.queued = needs.len().saturating_sub(orders.len()) as u64;
    if !needs.is_empty() {
        tracing::info!(
            short = needs.len(),
            cloning = in_flight.len(),
            "chunks short of replicas"
        );
    }
    orders
}

/// Sends one clone order and records its outcome.
async fn execute(node: Arc<Node>, o: CloneOrder) {
    if o.revoke
        && let Err(e) = super::grant::revoke_lease(&node, o.handle, "re-replication").await
    {
        tracing::info!(chunk = %o.handle, error = %e, "could not revoke the lease; cloning later");
        lock(&node.duties.in_flight).remove(&o.handle);
        return;
    }
    let addrs = {
        let soft = node.soft();
        soft.server(o.source)
            .zip(soft.server(o.dest))
            .map(|(s, d)| (s.addr.clone(), d.addr.clone()))
    };
    let rate = node.cfg.clone_rate_bytes_per_s;
    let result = match addrs {
        Some((source, dest)) => {
            let req = CloneRequest {
                handle: o.handle.0,
                version: o.version.0,
                source,
                rate_bytes_per_s: rate,
            };
            // The chunk at the configured rate, plus slack.
            let secs = node.cfg.chunk_size_bytes.checked_div(rate).unwrap_or(0) + 30;
            node.chunkservers
                .clone_chunk(&dest, req, Duration::from_secs(secs))
                .await
        }
        None => Err("a server of the order is unknown".to_string()),
    };
    match result {
        Ok(bytes) => {
            node.soft().expect(o.handle, o.dest, o.version);
            let mut st = lock(&node.duties.stats);
            st.cloned += 1;
            st.bytes_cloned += bytes;
            tracing::info!(chunk = %o.handle, from = %o.source, to = %o.dest, bytes, "re-replicated");
        }
        Err(e) => {
            lock(&node.duties.refused).insert(o.dest, now_ms() + REFUSED_FOR_MS);
            lock(&node.duties.stats).failed += 1;
            tracing::warn!(chunk = %o.handle, from = %o.source, to = %o.dest, error = %e, "clone failed");
        }
    }
    lock(&node.duties.in_flight).remove(&o.handle);
}

/// Garbage collection for one heartbeat of `id`: the next batch of the
/// chunks it holds, checked against the chunk table. The replicas named
/// are forgotten at once, so no later batch counts them.
pub fn collect_garbage(node: &Node, id: NodeId, max: usize) -> Vec<DeleteChunk> {
    let clock = Clock::of(node);
    let duties = &node.duties;
    let after = lock(&duties.gc_cursor)
        .get(&id)
        .copied()
        .unwrap_or(ChunkHandle(0));
    let blocked = HashMap::new();
    let a = node.state();
    let draining = a.state.draining();
    let mut soft = node.soft();
    let batch = soft.held_batch(id, after, GC_BATCH);
    let mut out = Vec::new();
    let mut last = after;
    for h in batch {
        if out.len() >= max {
            break;
        }
        last = h;
        let known = match a.state.chunk(h) {
            // Its replicas at the version before may be the current ones.
            Some(_) if a.state.unconfirmed(h) => Known::Unknown,
            Some(c) => Known::Live(chunk_of(&a.state, duties, &blocked, h, c, clock)),
            None if a.state.allocated(h) => Known::Reclaimed,
            None => Known::Unknown,
        };
        let holders = holders(&soft, soft.locations(h), draining, clock);
        if let Verdict::Delete { below_version } = repair::verdict(id, known, &holders) {
            out.push(DeleteChunk {
                handle: h.0,
                below_version,
            });
            soft.forget(h, id);
        }
    }
    lock(&duties.gc_cursor).insert(id, last);
    if !out.is_empty() {
        lock(&duties.stats).deletes_sent += out.len() as u64;
        tracing::info!(server = %id, replicas = out.len(), "told to delete replicas");
    }
    out
}

/// Replicas the masters know of that are stale or orphaned (pending
/// deletion), for fsck.
pub fn pending_deletion(state: &MasterState, soft: &Soft) -> u64 {
    let mut n = 0;
    for s in soft.servers() {
        for h in soft.held_batch(s.id, ChunkHandle(0), usize::MAX) {
            let stale = match state.chunk(h) {
                Some(c) => soft
                    .locations(h)
                    .iter()
                    .any(|l| l.node == s.id && l.version < c.version),
                None => state.allocated(h),
            };
            n += u64::from(stale);
        }
    }
    n
}
