//! Heartbeats to every master: liveness, disk use, chunk reports (full at
//! start and when a master asks, incremental otherwise), lease extension
//! requests; the leader's answer extends leases and names chunks to delete.

use std::sync::Arc;
use std::time::Duration;

use gfs_proto::ChunkHandle;
use gfs_proto::wire::master::master_chunkserver_client::MasterChunkserverClient;
use gfs_proto::wire::master::{ChunkReport, HeartbeatReply, HeartbeatRequest};
use tonic::transport::Endpoint;

use crate::service::{HeldLease, Shared};

/// A primary asks to extend a lease while it saw a mutation this recently
/// (a writer streams mutations milliseconds apart). Once a chunk is idle
/// its lease runs out, so the leader may move or copy the chunk.
pub const EXTEND_IF_MUTATED_WITHIN_MS: u64 = 5_000;

/// A lease is also extended once no more than this many heartbeats of it
/// are left, however short it is: a few lost heartbeats (a master failing
/// over) must not let a busy chunk's lease run out.
pub const EXTEND_WITHIN_HEARTBEATS: u64 = 10;

/// Whether a heartbeat asks to extend `l` at `now`: the lease is live,
/// saw a mutation within `EXTEND_IF_MUTATED_WITHIN_MS`, and has at most
/// half of its length left (or `EXTEND_WITHIN_HEARTBEATS` heartbeats).
/// Asking at every heartbeat made every busy primary cost the masters a
/// replicated log entry twice a second; this asks about twice a lease.
pub fn wants_extension(l: &HeldLease, now: u64, heartbeat_ms: u64) -> bool {
    if l.expires_ms <= now || now.saturating_sub(l.last_mutation_ms) >= EXTEND_IF_MUTATED_WITHIN_MS
    {
        return false;
    }
    let left = l.expires_ms - now;
    let length = l.expires_ms.saturating_sub(l.since_ms);
    left.saturating_mul(2) <= length
        || left <= heartbeat_ms.saturating_mul(EXTEND_WITHIN_HEARTBEATS)
}

/// Runs one heartbeat loop per master until the task is dropped.
pub fn spawn(shared: Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    shared
        .cfg
        .masters
        .clone()
        .into_iter()
        .enumerate()
        .map(|(i, m)| tokio::spawn(beat_forever(shared.clone(), i, m)))
        .collect()
}

/// Heartbeats to `master`, the `nth` of the configured ones.
async fn beat_forever(shared: Arc<Shared>, nth: usize, master: String) {
    let channel = match Endpoint::from_shared(format!("http://{master}")) {
        // From this server's own address, as the masters connect from
        // theirs: firewall rules can then tell servers apart on loopback.
        Ok(e) => e
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .local_address(Some(shared.cfg.listen.ip()))
            .connect_lazy(),
        Err(e) => {
            tracing::error!(%master, error = %e, "bad master address; not heartbeating to it");
            return;
        }
    };
    let channel = gfs_proto::auth::with_token(channel, shared.cfg.auth_token.as_ref());
    let mut client = MasterChunkserverClient::new(channel)
        .max_encoding_message_size(gfs_proto::wire::MAX_MESSAGE_BYTES);
    let period = Duration::from_millis(shared.cfg.heartbeat_ms);
    let mut acked: Option<u64> = None;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (req, upto) = request(&shared, acked).await;
        let req_relinquish = req.relinquish.clone();
        let asked = std::time::Instant::now();
        match client.heartbeat(req).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.leader {
                    shared.leader_clock.learn(asked, reply.now_ms);
                    shared.beats.leader_answered();
                }
                acked = (!reply.want_full_report).then_some(upto);
                if reply.leader && !req_relinquish.is_empty() {
                    shared
                        .relinquished
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|h| !req_relinquish.contains(&h.0));
                }
                handle_reply(&shared, reply).await;
            }
            Err(s) => {
                shared.beats.failed(nth);
                tracing::debug!(%master, error = %s.message(), "heartbeat failed");
            }
        }
    }
}

/// The next heartbeat: a full report if the master has none from us (or
/// fell behind the change log), else the changes since its last answer.
async fn request(shared: &Shared, acked: Option<u64>) -> (HeartbeatRequest, u64) {
    let now = shared.lease_now();
    let stalled = shared.store.stalled_for();
    shared.give_up_leases_if_disks_stalled(now, stalled);
    let delta = acked.and_then(|seq| {
        shared
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(seq)
    });
    let (capacity, used) = shared.store.usage().iter().fold((0, 0), |(c, u), d| {
        (c + d.total_bytes, u + d.used_bytes.min(d.total_bytes))
    });
    // Report used space as the disk sees it, so placement avoids full disks
    // whatever else fills them.
    let free: u64 = shared.store.usage().iter().map(|d| d.free_bytes).sum();
    let used = used.max(capacity.saturating_sub(free));
    let extend_leases = shared
        .leases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, l)| wants_extension(l, now, shared.cfg.heartbeat_ms))
        .map(|(h, _)| h.0)
        .collect();
    let relinquish = shared
        .relinquished
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|h| h.0)
        .collect();
    let mut req = HeartbeatRequest {
        node_id: shared.cfg.id,
        addr: shared.cfg.advertise.clone(),
        rack: shared.cfg.rack.clone(),
        capacity_bytes: capacity,
        used_bytes: used,
        draining: false,
        full_report: false,
        chunks: Vec::new(),
        extend_leases,
        changed: Vec::new(),
        removed: Vec::new(),
        relinquish,
        // Whether it can take new chunks: one hung disk of several gives
        // up its own chunks' leases (above); new ones go to the others.
        disk_stalled_ms: u64::try_from(shared.store.stalled_for_new_chunks().as_millis())
            .unwrap_or(u64::MAX),
    };
    let upto = match delta {
        Some(d) => {
            req.changed = d
                .changed
                .into_iter()
                .map(|(h, v)| ChunkReport {
                    handle: h.0,
                    version: v.0,
                    length: 0,
                })
                .collect();
            req.removed = d.removed.into_iter().map(|h| h.0).collect();
            d.upto
        }
        None => {
            // Take the log position first: a change racing the listing is
            // sent again next time, never lost.
            let head = shared
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .head();
            req.full_report = true;
            req.chunks = shared
                .store
                .list()
                .await
                .into_iter()
                .map(|c| ChunkReport {
                    handle: c.handle.0,
                    version: c.version.0,
                    length: c.length,
                })
                .collect();
            head
        }
    };
    (req, upto)
}

async fn handle_reply(shared: &Shared, reply: HeartbeatReply) {
    if !reply.leader {
        return;
    }
    if !reply.extended.is_empty() {
        let mut leases = shared.leases.lock().unwrap_or_else(|p| p.into_inner());
        for h in &reply.extended {
            if let Some(l) = leases.get_mut(&ChunkHandle(*h)) {
                l.extend_to(reply.lease_expires_ms, shared.lease_now());
            }
        }
    }
    for d in reply.delete_chunks {
        let h = ChunkHandle(d.handle);
        match shared.delete_replica(h, d.below_version).await {
            Ok(true) => tracing::debug!(chunk = %h, "deleted at the leader's request"),
            Ok(false) => {
                tracing::info!(chunk = %h, "kept a replica the leader named: current or being cloned")
            }
            Err(e) => {
                tracing::warn!(chunk = %h, error = %e.message(), "could not delete a chunk the master named")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(since_ms: u64, expires_ms: u64, last_mutation_ms: u64) -> HeldLease {
        HeldLease {
            expires_ms,
            since_ms,
            last_mutation_ms,
            ..HeldLease::default()
        }
    }

    /// Which of `times` a heartbeat every 500 ms asks to extend `l` at.
    fn asked_at(l: &HeldLease, times: &[u64]) -> Vec<u64> {
        times
            .iter()
            .copied()
            .filter(|&t| wants_extension(l, t, 500))
            .collect()
    }

    #[test]
    fn a_busy_lease_is_extended_once_half_of_it_is_gone() {
        // A 60 s lease learned at 1 000, written to all along.
        let times = [1_000, 20_000, 30_999, 31_000, 45_000, 60_999, 61_000];
        let busy = |t: u64| lease(1_000, 61_000, t);
        let asked: Vec<u64> = times
            .iter()
            .copied()
            .filter(|&t| wants_extension(&busy(t), t, 500))
            .collect();
        assert_eq!(asked, vec![31_000, 45_000, 60_999]);
    }

    #[test]
    fn an_idle_or_expired_lease_is_not_extended() {
        // Last written at 1 000: idle from 6 000 on.
        let l = lease(1_000, 61_000, 1_000);
        assert_eq!(asked_at(&l, &[5_999, 6_000, 40_000]), Vec::<u64>::new());
        // Half gone, but idle for 5 s.
        let l = lease(1_000, 61_000, 35_000);
        assert_eq!(asked_at(&l, &[39_999, 40_000]), vec![39_999]);
        // Expired.
        let l = lease(1_000, 61_000, 61_000);
        assert_eq!(asked_at(&l, &[61_000, 62_000]), Vec::<u64>::new());
    }

    #[test]
    fn a_short_lease_is_extended_with_some_heartbeats_to_spare() {
        // 3 s leases (tests) with 500 ms heartbeats: asked with 5 s, i.e.
        // always; with 100 ms heartbeats, from 1.5 s left (half).
        let l = lease(0, 3_000, 0);
        assert_eq!(asked_at(&l, &[0, 1_000, 2_999]), vec![0, 1_000, 2_999]);
        let asked: Vec<u64> = [0, 1_499, 1_500, 2_000]
            .into_iter()
            .filter(|&t| wants_extension(&l, t, 100))
            .collect();
        assert_eq!(asked, vec![1_500, 2_000]);
    }
}
