//! The master's Prometheus metrics (`--metrics-listen`): its Raft state,
//! the namespace and chunk table's size, what it knows of the
//! chunkservers, the leader's repair work, and its gRPC calls
//! (`gfs_proto::metrics`). The endpoint outlives each start of the
//! master (`run` starts it again from its store after a store failure):
//! values come from whichever start is serving, read when scraped, and
//! `gfs_master_serving` says whether one is.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use gfs_proto::metrics::prometheus_client::registry::Registry;
use gfs_proto::metrics::{Emit, GrpcCalls, Scraped};
use openraft::ServerState;

use super::node::{Node, now_ms};

/// The registry `/metrics` serves, the gRPC layer counting into it, and
/// the start of the master its values come from.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub calls: GrpcCalls,
    serving: Arc<Mutex<Weak<Node>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let serving: Arc<Mutex<Weak<Node>>> = Arc::default();
        let of = serving.clone();
        let (r, calls) = gfs_proto::metrics::server_registry(|gfs| {
            gfs.register_collector(Box::new(Scraped(move |e: &mut Emit<'_, '_>| {
            let node = of.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
            e.gauge(
                "master_serving",
                "1 while this master serves; 0 while it is out of service (its store failed) or starting",
                node.is_some(),
            )?;
            match node {
                Some(n) => emit(&n, e),
                None => Ok(()),
            }
        })));
            GrpcCalls::register(gfs)
        });
        Self {
            registry: Arc::new(r),
            calls,
            serving,
        }
    }

    /// Values come from `node` from now on (until it is dropped).
    pub fn serve_from(&self, node: &Arc<Node>) {
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(node);
    }
}

fn emit(node: &Node, e: &mut Emit<'_, '_>) -> fmt::Result {
    let m = node.raft.metrics().borrow().clone();
    e.gauge("master_raft_term", "Current Raft term", m.current_term)?;
    e.gauge(
        "master_raft_leader",
        "1 if this master is the Raft leader",
        m.state == ServerState::Leader,
    )?;
    e.gauge(
        "master_raft_leader_id",
        "The leader this master knows of (0: none)",
        m.current_leader.unwrap_or(0),
    )?;
    e.gauge(
        "master_raft_last_log_index",
        "Last index of this master's Raft log",
        m.last_log_index.unwrap_or(0),
    )?;
    e.gauge(
        "master_raft_applied_index",
        "Last log index applied to this master's state",
        m.last_applied.map_or(0, |l| l.index),
    )?;
    e.gauge(
        "master_raft_snapshot_index",
        "Last log index this master's snapshot covers (0: none)",
        m.snapshot.map_or(0, |l| l.index),
    )?;
    e.gauge(
        "master_raft_voters",
        "Voting members of the master cluster",
        m.membership_config.membership().voter_ids().count(),
    )?;
    if let Some(ms) = m.millis_since_quorum_ack {
        e.gauge(
            "master_raft_quorum_ack_age_seconds",
            "Leader only: time since a quorum last acknowledged it",
            ms as f64 / 1e3,
        )?;
    }
    let (files, chunks) = {
        let a = node.state();
        (a.state.files(), a.state.chunk_count())
    };
    e.gauge(
        "master_namespace_entries",
        "Files and directories in the namespace (the root too)",
        files,
    )?;
    e.gauge("master_chunks", "Chunks in the chunk table", chunks)?;
    // One lock of the soft state, dropped before anything else is taken.
    let (known, live, heard) = {
        let soft = node.soft();
        let now = now_ms();
        (
            soft.servers().count(),
            soft.live_count(now, node.cfg.chunkserver_timeout_ms),
            soft.newest_heartbeat_ms().map(|at| now.saturating_sub(at)),
        )
    };
    e.gauge(
        "master_chunkservers",
        "Chunkservers this master has heard from since it started",
        known,
    )?;
    e.gauge(
        "master_chunkservers_live",
        "Chunkservers heard within the chunkserver timeout",
        live,
    )?;
    if let Some(ms) = heard {
        e.gauge(
            "master_chunkserver_heard_age_seconds",
            "Time since this master last heard any chunkserver",
            ms as f64 / 1e3,
        )?;
    }
    let st = node.duties.stats();
    e.gauge(
        "master_chunks_short_of_replicas",
        "Leader only: chunks with fewer live replicas than their goal in the last repair pass",
        st.short,
    )?;
    e.gauge(
        "master_chunks_waiting_for_repair",
        "Leader only: short chunks the last repair pass gave no clone (limits, no source or no destination)",
        st.queued,
    )?;
    e.gauge(
        "master_clones_in_flight",
        "Re-replication clones ordered and not finished",
        node.duties.clones_in_flight(),
    )?;
    e.counter(
        "master_clones",
        "Re-replication clones that succeeded since this master started",
        st.cloned,
    )?;
    e.counter(
        "master_clone_failures",
        "Re-replication clones that failed since this master started",
        st.failed,
    )?;
    e.counter(
        "master_cloned_bytes",
        "Bytes copied by re-replication since this master started",
        st.bytes_cloned,
    )?;
    e.counter(
        "master_replica_deletes_sent",
        "Replica deletions sent to chunkservers (garbage and stale replicas)",
        st.deletes_sent,
    )
}
