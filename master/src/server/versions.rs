//! After a lease grant, the leader tells the replicas the chunk's new
//! version (as GFS's master does), so a grant takes effect on the replicas
//! even if no mutation follows it. A replica that does not confirm is left
//! at its old version, and so is stale from then on. The same channels
//! carry the leader's clone orders (re-replication).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use gfs_proto::auth::{AuthChannel, Token};
use gfs_proto::wire::chunk::chunkserver_client::ChunkserverClient;
use gfs_proto::wire::chunk::{CloneRequest, CopyLocalRequest, RevokeRequest, SetVersionRequest};
use gfs_proto::wire::{ErrorKind, detail_of};
use gfs_proto::{ChunkHandle, ChunkVersion, NodeId};

/// Bound on one replica's answer.
const NOTIFY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Bound on a local chunk copy (64 MiB on a slow disk).
const COPY_TIMEOUT: Duration = Duration::from_secs(30);

/// One lazily connected channel per chunkserver address, each connecting
/// from this master's own address (`local`), as its Raft channels do.
#[derive(Debug, Default)]
pub struct Chunkservers {
    conns: Mutex<HashMap<String, ChunkserverClient<AuthChannel>>>,
    local: Option<std::net::IpAddr>,
    token: Option<Token>,
}

impl Chunkservers {
    pub fn from_address(local: std::net::IpAddr, token: Option<Token>) -> Self {
        Self {
            local: Some(local),
            token,
            ..Self::default()
        }
    }

    fn client(&self, addr: &str) -> Option<ChunkserverClient<AuthChannel>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(addr) {
            return Some(c.clone());
        }
        let c = gfs_proto::wire::chunk_client_from(addr, self.local, self.token.as_ref()).ok()?;
        conns.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// Has `dest` copy a chunk (re-replication); returns the bytes copied.
    pub async fn clone_chunk(
        &self,
        dest: &str,
        req: CloneRequest,
        limit: Duration,
    ) -> Result<u64, String> {
        let mut c = self
            .client(dest)
            .ok_or_else(|| format!("bad address {dest}"))?;
        match tokio::time::timeout(limit, c.clone_chunk(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner().length),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Has each replica copy `from` into `to` locally (copy-on-write);
    /// returns the replicas that did, or never held `from`.
    pub async fn copy_local(
        &self,
        from: ChunkHandle,
        to: ChunkHandle,
        version: ChunkVersion,
        replicas: &[(NodeId, String)],
    ) -> Vec<NodeId> {
        let mut calls = tokio::task::JoinSet::new();
        for (id, addr) in replicas {
            let (id, client) = (*id, self.client(addr));
            let req = CopyLocalRequest {
                from: from.0,
                to: to.0,
                version: version.0,
            };
            calls.spawn(async move {
                let Some(mut c) = client else { return (id, false) };
                let ok = match tokio::time::timeout(COPY_TIMEOUT, c.copy_local(req)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(s)) => {
                        let absent = detail_of(&s).kind() == ErrorKind::NotFound;
                        if !absent {
                            tracing::warn!(chunk = %from, replica = %id, error = %s.message(), "copy-on-write failed");
                        }
                        absent
                    }
                    Err(_) => false,
                };
                (id, ok)
            });
        }
        let mut ok = Vec::new();
        while let Some(Ok((id, done))) = calls.join_next().await {
            if done {
                ok.push(id);
            }
        }
        ok.sort_unstable();
        ok
    }

    /// Takes the lease on `handle` back from its primary.
    pub async fn revoke(&self, primary: &str, req: RevokeRequest) -> Result<(), String> {
        let mut c = self
            .client(primary)
            .ok_or_else(|| format!("bad address {primary}"))?;
        match tokio::time::timeout(Duration::from_secs(5), c.revoke(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err("no answer within 5 s".to_string()),
        }
    }

    /// Sends `version` of `handle` to each replica at once; returns the ones
    /// that did not take it. With `create` (a chunk never written), a
    /// replica that lacks the chunk creates it empty; without, one that
    /// does not hold it yet (created by its first mutation) counts as
    /// taking it.
    pub async fn set_version(
        &self,
        handle: ChunkHandle,
        version: ChunkVersion,
        replicas: &[(NodeId, String)],
        create: bool,
    ) -> Vec<NodeId> {
        let mut calls = tokio::task::JoinSet::new();
        for (id, addr) in replicas {
            let id = *id;
            let Some(mut c) = self.client(addr) else {
                calls.spawn(async move { (id, false) });
                continue;
            };
            let req = SetVersionRequest {
                handle: handle.0,
                version: version.0,
                create,
            };
            calls.spawn(async move {
                let ok = match tokio::time::timeout(NOTIFY_TIMEOUT, c.set_version(req)).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(s)) => detail_of(&s).kind() == ErrorKind::NotFound,
                    Err(_) => false,
                };
                (id, ok)
            });
        }
        let mut failed = Vec::new();
        while let Some(Ok((id, ok))) = calls.join_next().await {
            if !ok {
                failed.push(id);
            }
        }
        failed.sort_unstable();
        failed
    }
}
