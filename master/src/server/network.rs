//! Raft between masters over tonic: openraft's requests and replies travel
//! postcard-encoded inside `RaftMessage`. One lazily connected channel per
//! peer, shared by its replication stream and every ReadIndex round
//! (openraft asks for a new client per round: a connection each would cost
//! a handshake per read and pile up sockets); tonic reconnects a broken
//! channel, and HTTP/2 keep-alive ends one a partition left hanging. Each
//! call is bounded by openraft's own deadline so a stopped peer (SIGSTOP)
//! cannot hang a stream.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gfs_proto::auth::{AuthChannel, Token, with_token};
use gfs_proto::wire::master::raft_client::RaftClient;
use gfs_proto::wire::master::raft_server::Raft as RaftRpc;
use gfs_proto::wire::master::{Empty, RaftMessage};
use gfs_proto::wire::{ErrorKind, MAX_MESSAGE_BYTES, error};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::store::TypeConfig;

type NodeId = u64;

/// Makes a channel to `addr`, connecting on first use, from `local` when
/// set (so that firewall rules can tell masters apart on loopback),
/// presenting the cluster token with every call if there is one.
pub fn channel(
    addr: &str,
    local: Option<IpAddr>,
    token: Option<&Token>,
) -> Result<AuthChannel, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .local_address(local);
    Ok(with_token(ep.connect_lazy(), token))
}

#[derive(Debug, Clone)]
pub struct Network {
    /// This master's own IP, the source of its outgoing connections.
    local: Option<IpAddr>,
    /// One channel per peer address.
    channels: Arc<Mutex<HashMap<String, AuthChannel>>>,
    token: Option<Token>,
}

impl Network {
    pub fn new(local: Option<IpAddr>, token: Option<Token>) -> Self {
        Self {
            local,
            channels: Arc::default(),
            token,
        }
    }

    fn channel(&self, addr: &str) -> Result<AuthChannel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = channel(addr, self.local, self.token.as_ref())?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A new channel to `addr` in place of the cached one: after a peer
    /// was unreachable (killed and restarted, say), the old channel may
    /// still be backing off its reconnects, and an election must not wait
    /// for that.
    fn renew(&self, addr: &str) -> Result<AuthChannel, String> {
        let c = channel(addr, self.local, self.token.as_ref())?;
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn client(
        &self,
        addr: &str,
        c: Result<AuthChannel, String>,
    ) -> Result<RaftClient<AuthChannel>, String> {
        c.map(|c| {
            RaftClient::new(c)
                .max_decoding_message_size(MAX_MESSAGE_BYTES * 8)
                .max_encoding_message_size(MAX_MESSAGE_BYTES * 8)
        })
        .map_err(|e| format!("{addr}: {e}"))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: self.client(&node.addr, self.channel(&node.addr)),
            network: self.clone(),
        }
    }
}

#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Result<RaftClient<AuthChannel>, String>,
    network: Network,
}

fn encode<T: Serialize>(v: &T) -> RaftMessage {
    RaftMessage {
        payload: Bytes::from(postcard::to_stdvec(v).expect("raft messages serialize")),
    }
}

fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, postcard::Error> {
    postcard::from_bytes(&m.payload)
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: &dyn std::fmt::Display| {
            RPCError::Unreachable(Unreachable::new(&NetErr(e.to_string())))
        };
        let client = self.client.as_mut().map_err(|e| unreachable(e))?;
        let mut request = Request::new(encode(req));
        // As openraft's own timeout round the call: at least the floor
        // (`runtime`), or a round trip longer than a heartbeat interval
        // failed every AppendEntries.
        request.set_timeout(crate::runtime::floored(option.hard_ttl()));
        let reply = match kind {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        }
        .map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                self.client = self
                    .network
                    .client(&self.addr, self.network.renew(&self.addr));
                unreachable(&s)
            } else {
                RPCError::Network(NetworkError::new(&NetErr(format!(
                    "{kind} to {}: {s}",
                    self.target
                ))))
            }
        })?;
        let r: Result<Resp, RaftError<NodeId, E>> = decode(reply.get_ref()).map_err(|e| {
            RPCError::Network(NetworkError::new(&NetErr(format!(
                "undecodable {kind} reply from {}: {e}",
                self.target
            ))))
        })?;
        r.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

#[derive(Debug)]
struct NetErr(String);

impl std::fmt::Display for NetErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetErr {}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// The receiving side: decodes, hands to the local Raft, encodes the result
/// (errors included) for the sender.
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft<TypeConfig>,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

fn undecodable(what: &str, e: postcard::Error) -> Status {
    error(
        ErrorKind::InvalidArgument,
        format!("undecodable {what}: {e}"),
    )
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(req.get_ref()).map_err(|e| undecodable("append-entries", e))?;
        Ok(Response::new(encode(&self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(|e| undecodable("vote", e))?;
        Ok(Response::new(encode(&self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode(req.get_ref()).map_err(|e| undecodable("install-snapshot", e))?;
        Ok(Response::new(encode(
            &self.raft.install_snapshot(rpc).await,
        )))
    }

    async fn elect(&self, _req: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| error(ErrorKind::Internal, e.to_string()))?;
        Ok(Response::new(Empty {}))
    }
}
