//! Generated protobuf and tonic code of the master's services, and the
//! mapping between wire errors and what the caller should do next.

use bytes::Bytes;
use prost::Message;
use tonic::{Code, Status};

/// `gfs.master.v1`: messages, clients (`*_client`) and servers (`*_server`).
pub mod master {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("gfs.master.v1");
}

/// `gfs.chunk.v1`: the chunkserver's data and control planes.
pub mod chunk {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("gfs.chunk.v1");
}

pub use master::{ErrorDetail, ErrorKind};

/// Largest frame of chunk data on the wire (push and read).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// A lazily connected client of the chunkserver's control plane at `addr`
/// ("host:port"): TCP_NODELAY (a mutation's answer must not wait out a
/// delayed ACK), the gfs message limit. Chunk data moves on the data plane
/// (`crate::data`).
pub fn chunk_client(
    addr: &str,
) -> Result<
    chunk::chunkserver_client::ChunkserverClient<crate::auth::AuthChannel>,
    tonic::transport::Error,
> {
    chunk_client_from(addr, None, None)
}

/// As [`chunk_client`], connecting from `local` when set: a server's own
/// address, so that firewall rules can tell servers apart on loopback.
pub fn chunk_client_from(
    addr: &str,
    local: Option<std::net::IpAddr>,
    token: Option<&crate::auth::Token>,
) -> Result<
    chunk::chunkserver_client::ChunkserverClient<crate::auth::AuthChannel>,
    tonic::transport::Error,
> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(1))
        .tcp_nodelay(true)
        .local_address(local)
        .connect_lazy();
    let ch = crate::auth::with_token(ch, token);
    Ok(chunk::chunkserver_client::ChunkserverClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Largest message any gfs service decodes (S2): metadata is small, and
/// data moves in frames well below this.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl ErrorKind {
    fn code(self) -> Code {
        match self {
            ErrorKind::NotLeader | ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::InvalidPath | ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::DirectoryNotEmpty
            | ErrorKind::Conflict
            | ErrorKind::LeaseHeld => Code::FailedPrecondition,
            ErrorKind::NoSpace | ErrorKind::Busy => Code::ResourceExhausted,
            ErrorKind::StaleVersion | ErrorKind::NotPrimary => Code::FailedPrecondition,
            ErrorKind::DataMissing => Code::NotFound,
            ErrorKind::Corrupt => Code::DataLoss,
            ErrorKind::NoReplica => Code::Unavailable,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Internal | ErrorKind::Unspecified => Code::Internal,
        }
    }
}

/// A status carrying `detail`, with a gRPC code that matches its kind.
pub fn status(detail: ErrorDetail) -> Status {
    let code = detail.kind().code();
    let msg = detail.message.clone();
    Status::with_details(code, msg, Bytes::from(detail.encode_to_vec()))
}

/// Shorthand for an error without a leader hint.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> Status {
    status(ErrorDetail {
        kind: kind as i32,
        message: message.into(),
        leader_id: 0,
        leader_addr: String::new(),
    })
}

/// How tonic begins the message of a status it made from an HTTP/2 error.
const H2_ERROR: &str = "h2 protocol error";

/// What a status says, whether a gfs server sent it or the transport made it
/// up (a refused connection, a deadline): the latter become `Unavailable`
/// (or `InvalidArgument` for a request the peer could not decode). An
/// HTTP/2 error of the connection (tonic calls it `INTERNAL`, e.g. a call
/// caught by a server's shutdown) says nothing of the request: it is
/// `Unavailable` too, so the caller tries again or elsewhere.
pub fn detail_of(s: &Status) -> ErrorDetail {
    if let Ok(d) = ErrorDetail::decode(s.details())
        && d.kind() != ErrorKind::Unspecified
    {
        return d;
    }
    let kind = match s.code() {
        Code::Internal if s.message().starts_with(H2_ERROR) => ErrorKind::Unavailable,
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::ResourceExhausted => ErrorKind::NoSpace,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::Internal | Code::Unimplemented | Code::DataLoss => ErrorKind::Internal,
        _ => ErrorKind::Unavailable,
    };
    ErrorDetail {
        kind: kind as i32,
        message: s.message().to_string(),
        leader_id: 0,
        leader_addr: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_unavailable_and_a_servers_internal_stays() {
        let h2 = Status::internal("h2 protocol error: http2 error");
        assert_eq!(detail_of(&h2).kind(), ErrorKind::Unavailable);
        assert_eq!(detail_of(&h2).message, "h2 protocol error: http2 error");
        let ours = error(ErrorKind::Internal, "h2 protocol error, said the server");
        assert_eq!(detail_of(&ours).kind(), ErrorKind::Internal);
        let bare = Status::internal("failed to decode the reply");
        assert_eq!(detail_of(&bare).kind(), ErrorKind::Internal);
        let refused = Status::unavailable("tcp connect error");
        assert_eq!(detail_of(&refused).kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn details_round_trip_with_matching_codes() {
        let s = status(ErrorDetail {
            kind: ErrorKind::NotLeader as i32,
            message: "not the leader".into(),
            leader_id: 2,
            leader_addr: "127.0.0.2:7000".into(),
        });
        assert_eq!(s.code(), Code::Unavailable);
        let d = detail_of(&s);
        assert_eq!(d.kind(), ErrorKind::NotLeader);
        assert_eq!((d.leader_id, d.leader_addr.as_str()), (2, "127.0.0.2:7000"));
        assert_eq!(
            detail_of(&error(ErrorKind::NotFound, "/a")).kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn transport_statuses_map_to_retryable_or_invalid() {
        let d = detail_of(&Status::unavailable("connection refused"));
        assert_eq!(d.kind(), ErrorKind::Unavailable);
        let d = detail_of(&Status::deadline_exceeded("slow"));
        assert_eq!(d.kind(), ErrorKind::Unavailable);
        let d = detail_of(&Status::invalid_argument("bad protobuf"));
        assert_eq!(d.kind(), ErrorKind::InvalidArgument);
    }
}
