//! Lease grants: the leader picks a primary among the chunk's current
//! replicas, logs the grant (which gives the chunk a new version), tells
//! the replicas the new version, and logs that they took it. Only then
//! does a client hear of the lease. A new chunk's first grant is logged
//! with the chunk itself (`AddChunkLeased`, `MetaService::add_chunk`),
//! then completed by [`finish`] like any other: two entries a chunk, not
//! three.
//!
//! A leader can die between logging the grant and the replicas taking the
//! version. Every replica is then one version behind the table, and no
//! client ever saw the new version. Until a `ConfirmVersion` is logged the
//! grant is *unconfirmed*: the next leader counts the replicas at the
//! version before as current, and grants again over them (at once, from
//! its duties, so readers are not left without replicas).

use gfs_proto::wire::chunk::RevokeRequest;
use gfs_proto::wire::{ErrorKind, error};
use gfs_proto::{ChunkHandle, ChunkVersion, NodeId};

use crate::state::Lease;
use tonic::Status;

use super::meta::{unexpected, version_of};
use super::node::{Node, now_ms};
use super::soft::Soft;
use crate::state::{Command, Reply};

/// Lease grants in a row for one request when replicas do not confirm the
/// new version.
const MAX_GRANT_ROUNDS: usize = 3;

/// Unconfirmed grants one duty pass completes at most.
const COMPLETE_PER_PASS: usize = 64;

/// Grants the lease on `handle`, again (with a new version each time)
/// while a secondary does not confirm the new version; fails if no round
/// was confirmed, so no client is ever handed an unconfirmed lease.
/// Callers hold `Node::grants`.
pub async fn grant_rounds(
    node: &Node,
    handle: ChunkHandle,
    version: ChunkVersion,
    replication: usize,
    mut bump: bool,
) -> Result<(), Status> {
    // A replica that did not confirm the new version may still take it
    // later (its answer was only slow); another bump without it makes
    // sure it can never pass for current.
    for _ in 0..MAX_GRANT_ROUNDS {
        let version = version_of(node, handle, version);
        let refused = grant(node, handle, version, replication, bump).await?;
        if refused.is_empty() {
            break;
        }
        bump = true;
    }
    if node.state().state.unconfirmed(handle) {
        return Err(error(
            ErrorKind::Unavailable,
            format!("the replicas of chunk {handle} did not take its new version; retry"),
        ));
    }
    Ok(())
}

/// The live replicas a grant may go to: those at the table's version, and
/// while the last grant is unconfirmed, those at the version before.
fn candidates(node: &Node, handle: ChunkHandle, version: ChunkVersion) -> Vec<NodeId> {
    let (now, timeout) = (now_ms(), node.cfg.chunkserver_timeout_ms);
    let floor = if node.state().state.unconfirmed(handle) {
        ChunkVersion(version.0.saturating_sub(1))
    } else {
        version
    };
    node.soft()
        .replicas(handle, floor, now, timeout)
        .iter()
        .map(|s| s.id)
        .collect()
}

/// Grants (or, with `bump`, re-grants) the lease on `handle` at
/// `version` + 1 to a live current replica, tells the candidates the new
/// version, and logs that they took it; returns the secondaries that did
/// not (forgotten: stale from now on). Callers hold `Node::grants`.
async fn grant(
    node: &Node,
    handle: ChunkHandle,
    version: ChunkVersion,
    replication: usize,
    bump: bool,
) -> Result<Vec<NodeId>, Status> {
    let (lease, create, was_unconfirmed) = {
        let a = node.state();
        (
            a.state.lease(handle),
            a.state.pristine(handle),
            a.state.unconfirmed(handle),
        )
    };
    // Grant to a live, up-to-date replica; the same primary as before
    // if it is still one (the lease is then extended, not re-granted).
    let mut candidates = candidates(node, handle, version);
    // A draining server's replica is left out of a new lease once the
    // others are enough: it goes stale and is collected.
    {
        let a = node.state();
        let draining = a.state.draining();
        let staying = candidates.iter().filter(|n| !draining.contains(n)).count();
        if staying >= replication {
            candidates.retain(|n| !draining.contains(n));
        }
    }
    let primary = lease
        .map(|l| l.primary)
        .filter(|p| candidates.contains(p))
        .or_else(|| candidates.first().copied())
        .ok_or_else(|| {
            error(
                ErrorKind::NoReplica,
                format!("no live up-to-date replica of chunk {handle}"),
            )
        })?;
    // The grant gives the chunk version + 1. Count the current
    // replicas at it before the grant is visible, so no reader of the
    // new version ever sees the chunk without replicas; they take the
    // new version with the first mutation under the lease.
    {
        let mut soft = node.soft();
        for n in &candidates {
            soft.expect(handle, *n, ChunkVersion(version.0 + 1));
        }
    }
    let granted = node
        .propose(
            0,
            0,
            Command::GrantLease {
                handle,
                primary,
                duration_ms: node.cfg.lease_ms,
                grace_ms: node.cfg.lease_grace_ms,
                bump,
            },
        )
        .await?;
    let Reply::Lease {
        lease: new,
        granted,
        ..
    } = granted
    else {
        return Err(unexpected(granted));
    };
    // Whether clients may hold a live lease of this primary's from before
    // (a confirmed one, not expired): then the lease stays with it even
    // if it does not take the new version.
    let held = lease.is_some_and(|l| {
        l.primary == new.primary
            && !was_unconfirmed
            && now_ms() < l.expires_at_ms + node.cfg.lease_grace_ms
    });
    finish(node, handle, (new, granted), &candidates, create, !held).await
}

/// The rest of a grant once its entry is applied (`GrantLease`, or
/// `AddChunkLeased` for a new chunk): tells `candidates` the lease's
/// version (creating the chunk there if `create`), and logs that they took
/// it; returns those that did not (forgotten: stale from now on) and are
/// worth another round: the secondaries, and the primary too if `movable`
/// (no client can hold an earlier lease of its that is still live).
/// Callers hold `Node::grants`.
pub async fn finish(
    node: &Node,
    handle: ChunkHandle,
    (lease, granted): (Lease, bool),
    candidates: &[NodeId],
    create: bool,
    movable: bool,
) -> Result<Vec<NodeId>, Status> {
    let refused = if granted {
        let addrs: Vec<(NodeId, String)> = {
            let soft = node.soft();
            candidates
                .iter()
                .filter_map(|n| soft.server(*n).map(|s| (*n, s.addr.clone())))
                .collect()
        };
        node.chunkservers
            .set_version(handle, lease.version, &addrs, create)
            .await
    } else {
        Vec::new()
    };
    // With no candidate at the new version, the grant stays unconfirmed
    // and the replicas at the version before are still the chunk's (no
    // mutation was acknowledged at the new one): forgotten, the chunk
    // would have none, and a lossy network (every `SetVersion` lost or
    // late) would leave it unreadable and unwritable until each server's
    // next full report. They are kept, for the next round or the duty
    // that completes unconfirmed grants.
    let took = candidates.iter().any(|n| !refused.contains(n));
    {
        let (mut soft, now) = (node.soft(), now_ms());
        for n in candidates {
            if refused.contains(n) {
                // Left at the old version: stale from now on, if another
                // took the new one. A server that did not answer may be
                // stalled yet not declared dead: new chunks and their
                // copies go elsewhere first, or the copy this chunk now
                // needs could be ordered from the same server and hold
                // the chunk's writers for the copy's whole timeout.
                if took {
                    soft.forget(handle, *n);
                }
                soft.suspect(*n, now);
            } else {
                soft.expect(handle, *n, lease.version);
            }
        }
    }
    // A refusal by a secondary is worth another bump. One by the primary
    // is too if no client was ever given a lease of its that may still
    // be live: the next round grants to another replica at once (the
    // log allows that while this grant is unconfirmed; a new chunk
    // placed on a server that stalled would otherwise wait out the whole
    // lease). Otherwise the lease stays with its primary until it expires.
    let again: Vec<NodeId> = refused
        .iter()
        .copied()
        .filter(|n| movable || *n != lease.primary)
        .collect();
    // Confirmed only when no other round follows: a secondary that did not
    // answer in time may still take this version late, and a client handed
    // this lease before the next bump could have mutations acknowledged
    // without it, which it would then pass for current with.
    if granted && again.is_empty() && took {
        let confirm = Command::ConfirmVersion {
            handle,
            version: lease.version,
            replicas: candidates
                .iter()
                .copied()
                .filter(|n| !refused.contains(n))
                .collect(),
        };
        node.propose(0, 0, confirm).await?;
    }
    Ok(again)
}

/// The replicas of the chunk's confirmed grant that are not live at its
/// version here (none while a grant is unconfirmed): a writer must not
/// be sent without them, so they count as failed. Right after this
/// process started, one not heard from yet may only be late: the
/// writer is asked to retry instead.
pub fn absent_members(node: &Node, handle: ChunkHandle, now: u64) -> Result<Vec<NodeId>, Status> {
    let timeout = node.cfg.chunkserver_timeout_ms;
    let (members, version) = {
        let a = node.state();
        // An unconfirmed grant is granted again anyway; its members
        // are those of the version before.
        let Some(m) = a
            .state
            .members(handle)
            .filter(|_| !a.state.unconfirmed(handle))
        else {
            return Ok(Vec::new());
        };
        let v = a.state.chunk(handle).map_or(ChunkVersion(0), |c| c.version);
        (m.to_vec(), v)
    };
    let soft = node.soft();
    let live: Vec<NodeId> = soft
        .replicas(handle, version, now, timeout)
        .iter()
        .map(|s| s.id)
        .collect();
    let absent: Vec<NodeId> = members.into_iter().filter(|n| !live.contains(n)).collect();
    if still_learning(node, &soft, &absent, now) {
        return Err(learning(handle));
    }
    Ok(absent)
}

/// Takes the lease on `handle` back (for `why`): the primary stops
/// (after the mutation in progress) and the log drops the lease. A
/// primary that cannot be reached keeps it until it expires.
pub async fn revoke_lease(node: &Node, handle: ChunkHandle, why: &str) -> Result<(), String> {
    let now = now_ms();
    let Some(lease) = node.state().state.lease(handle) else {
        return Ok(());
    };
    if now >= lease.expires_at_ms + node.cfg.lease_grace_ms {
        return Ok(());
    }
    let addr = node
        .soft()
        .server(lease.primary)
        .map(|s| s.addr.clone())
        .ok_or("the primary is unknown")?;
    let req = RevokeRequest {
        handle: handle.0,
        version: lease.version.0,
    };
    node.chunkservers.revoke(&addr, req).await?;
    let cmd = Command::ReleaseLeases {
        primary: lease.primary,
        handles: vec![handle],
    };
    node.propose(0, 0, cmd)
        .await
        .map_err(|e| e.message().to_string())?;
    tracing::info!(chunk = %handle, primary = %lease.primary, "lease revoked for {why}");
    Ok(())
}

/// Whether this master, started less than a chunkserver timeout ago, has
/// yet to hear a full chunk report from one of `servers`. Locations are
/// soft state: a master restarted just before it was elected knows only
/// what chunkservers have reported to it since, so a replica it cannot
/// place may only be late.
pub fn still_learning(node: &Node, soft: &Soft, servers: &[NodeId], now: u64) -> bool {
    node.learning_servers(now) && servers.iter().any(|n| !soft.has_reported(*n))
}

/// The answer while `still_learning`: clients retry `Unavailable`.
pub fn learning(handle: ChunkHandle) -> Status {
    error(
        ErrorKind::Unavailable,
        format!("this master is still learning where chunk {handle} is; retry"),
    )
}

/// The leader's duty: completes the grants a previous leader logged but
/// did not confirm (it died before the replicas took the new version),
/// by granting again over the replicas at the version before.
pub async fn complete_unconfirmed(node: &Node) {
    let pending: Vec<(ChunkHandle, ChunkVersion, u8)> = {
        let a = node.state();
        a.state
            .unconfirmed_chunks()
            .filter_map(|h| a.state.chunk(h).map(|c| (h, c.version, c.replication)))
            .take(COMPLETE_PER_PASS)
            .collect()
    };
    for (handle, version, replication) in pending {
        // Grants in progress hold this lock and confirm before releasing
        // it: what is still unconfirmed once it is held was left behind.
        let _grants = node.grants.lock().await;
        let version = version_of(node, handle, version);
        if !node.state().state.unconfirmed(handle) || node.duties.cloning(handle) {
            continue;
        }
        if candidates(node, handle, version).is_empty() {
            continue;
        }
        match grant_rounds(node, handle, version, usize::from(replication), true).await {
            Ok(()) => {
                tracing::info!(chunk = %handle, "completed a grant the previous leader left unconfirmed")
            }
            Err(e) => {
                tracing::warn!(chunk = %handle, error = %e.message(), "could not complete an unconfirmed grant")
            }
        }
    }
}
