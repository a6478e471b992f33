//! The data plane: chunk data pushed along a replica chain and read back,
//! and the mutations that write it (a client's at the primary, the
//! primary's forwarded to the secondaries), as framed TCP on the
//! chunkserver's own port, beside its gRPC control plane (a chunkserver
//! tells the two apart by the first four bytes).
//!
//! Why not gRPC: on one host, HTTP/2 framing and protobuf put every byte
//! through two extra copies per hop and several task wake-ups per frame;
//! here a byte is copied by the kernel into a buffer that is then stored and
//! forwarded as it is (figures in ARCHITECTURE.md).
//!
//! ```text
//! request: MAGIC (4) | op (1) | header length (u32 LE) | header | payload
//! reply:   status (1) | header length (u32 LE) | header | payload
//! ```
//!
//! Headers are protobuf messages of `gfs.chunk.v1`: a push sends a
//! [`PushHeader`] and `total_bytes` of data and gets a [`PushReply`]; a read
//! sends a [`ReadRequest`] and gets a [`ReadHead`] and `data_bytes` of data;
//! a mutation sends a `MutateRequest` or `ApplyRequest` and gets its reply,
//! with no payload either way (the same messages as the gRPC calls of the
//! same names, which the chunkserver still serves). A mutation on gRPC cost
//! about 6 % of a chunkserver's CPU in h2, hyper and tower alone, and
//! several task hand-offs per call on each side (ARCHITECTURE.md).
//! A failed request gets status 1 and an [`ErrorDetail`]. A connection
//! carries one request at a time and is reused; a server closes it after a
//! request it could not parse.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Status;

mod watch;

use self::watch::Watched;
use crate::auth::Token;
use crate::wire::chunk::{
    HelloRequest, PingReply, PingRequest, PushHeader, PushReply, ReadHead, ReadRequest,
};
use crate::wire::{
    ErrorDetail, ErrorKind, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, detail_of, error, status,
};

/// The first bytes of every data-plane connection. An HTTP/2 connection
/// starts with "PRI ", so the two never collide.
pub const MAGIC: [u8; 4] = *b"GFSd";

/// Largest header either side accepts (S2).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Bytes a server receives before it forwards them down the chain: small
/// enough that the next server starts early, large enough to be cheap.
pub const PIECE_BYTES: usize = 512 * 1024;

/// An idle pooled connection older than this is closed, not reused.
const IDLE_REUSE: Duration = Duration::from_secs(30);

/// A push fails once no byte of it moved for this long per server from
/// its next hop to the end of the chain: each hop waits longer than the
/// one after it, so the server next to a stalled one gives up on it first
/// (and answers how far the data got) while those before it still wait.
/// A healthy server takes a push into memory as it comes: seconds without
/// a byte moving mean it stopped.
pub const PUSH_STALL_PER_HOP: Duration = Duration::from_secs(2);

/// How long a new connection may take: past the kernel's first SYN
/// retransmission (after 1 s), so one lost SYN or SYN-ACK on a lossy
/// link costs a second, not the mutation (a dead host's kernel answers
/// no SYN and costs this much; a killed process's answers at once).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2_500);

/// Idle connections kept per server.
const IDLE_PER_ADDR: usize = 16;

/// How a call that may rightly wait long (a forwarded mutation waits for
/// the peer's disk) finds out that the peer's process stopped answering
/// (`DataPool::call_probed`): after `after` without an answer, the peer
/// is pinged on a connection of its own, and `misses` pings in a row not
/// answered within `wait` each fail the call. A stopped process (SIGSTOP,
/// a frozen host) answers no ping, though its kernel still takes its
/// connections; a live one with a slow disk answers at once. Its answer
/// says how long its oldest outstanding disk I/O has waited: past
/// `disk_stalled` the call fails at once, as for a stopped process (a
/// disk that stopped completing I/O under a server that is otherwise well
/// held its writers for the whole call timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub after: Duration,
    pub wait: Duration,
    pub misses: u32,
    pub disk_stalled: Duration,
    /// The chunk the call is about: the peer answers for the disk holding
    /// it (0: any of its disks), so one hung disk of several holds only
    /// its own chunks' calls.
    pub chunk: u64,
}

/// The probe of a mutation, at the client (of the primary) and at the
/// primary (of each secondary it forwards to): a stopped secondary costs
/// its writers about 3 s, not the 10 s peer timeout, and a stopped primary
/// its lease, not the client's 15 s call timeout.
pub const PROBE: Probe = Probe {
    after: Duration::from_secs(1),
    wait: Duration::from_secs(1),
    misses: 2,
    // A device I/O takes milliseconds, a queue of them on a slow disk
    // under load well under a second; none completing for this long is a
    // hung device.
    disk_stalled: Duration::from_secs(3),
    chunk: 0,
};

/// [`PROBE`] of a call about chunk `handle`.
pub fn probe_of(handle: u64) -> Probe {
    Probe {
        chunk: handle,
        ..PROBE
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Push = 1,
    Read = 2,
    /// A client's mutation at a chunk's primary (`MutateRequest`, answered
    /// with a `MutateReply`); no payload: the data was pushed.
    Mutate = 3,
    /// A primary's mutation forwarded to a secondary (`ApplyRequest`,
    /// `ApplyReply`).
    Apply = 4,
    /// Whether the server's process answers at all (`Empty`, answered at
    /// once; see [`Probe`]).
    Ping = 5,
    /// The cluster token, first on a connection to a server that has one
    /// (`HelloRequest`, answered with `Empty`).
    Hello = 6,
}

impl Op {
    /// The largest header the op takes: a mutation forwarded for a round
    /// of many small records names every record's data, so those get the
    /// control plane's message bound.
    pub fn max_header_bytes(self) -> usize {
        match self {
            Op::Push | Op::Read | Op::Ping | Op::Hello => MAX_HEADER_BYTES,
            Op::Mutate | Op::Apply => MAX_MESSAGE_BYTES,
        }
    }
}

const OK: u8 = 0;
const FAILED: u8 = 1;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A request's first bytes: magic, op and header length.
pub fn encode_request(op: Op, header: &impl Message) -> Vec<u8> {
    let h = header.encode_to_vec();
    let mut out = Vec::with_capacity(9 + h.len());
    out.extend_from_slice(&MAGIC);
    out.push(op as u8);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out
}

/// Parses the 9 bytes in front of a request's header.
pub fn parse_request_prefix(p: &[u8; 9]) -> io::Result<(Op, usize)> {
    if p[..4] != MAGIC {
        return Err(bad(format!(
            "not a gfs data-plane request: {:02x?}",
            &p[..4]
        )));
    }
    let op = match p[4] {
        1 => Op::Push,
        2 => Op::Read,
        3 => Op::Mutate,
        4 => Op::Apply,
        5 => Op::Ping,
        6 => Op::Hello,
        other => return Err(bad(format!("unknown data-plane op {other}"))),
    };
    let len = u32::from_le_bytes([p[5], p[6], p[7], p[8]]) as usize;
    if len > op.max_header_bytes() {
        return Err(bad(format!(
            "a data-plane header of {len} bytes exceeds {} for {op:?}",
            op.max_header_bytes()
        )));
    }
    Ok((op, len))
}

/// A successful reply's header.
pub fn encode_ok(header: &impl Message) -> Vec<u8> {
    reply(OK, &header.encode_to_vec())
}

/// A failed request's reply.
pub fn encode_err(detail: &ErrorDetail) -> Vec<u8> {
    let mut d = detail.clone();
    // An error message never makes a header too large to read.
    if d.message.len() > MAX_HEADER_BYTES / 2 {
        let mut cut = MAX_HEADER_BYTES / 2;
        while !d.message.is_char_boundary(cut) {
            cut -= 1;
        }
        d.message.truncate(cut);
    }
    reply(FAILED, &d.encode_to_vec())
}

fn reply(status: u8, h: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + h.len());
    out.push(status);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(h);
    out
}

/// Reads the next request's op and header; `None` at a clean end of the
/// connection between requests.
pub async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<(Op, Bytes)>> {
    let mut p = [0u8; 9];
    // The first byte tells a clean end from a torn request.
    if s.read(&mut p[..1]).await? == 0 {
        return Ok(None);
    }
    s.read_exact(&mut p[1..]).await?;
    let (op, len) = parse_request_prefix(&p)?;
    Ok(Some((op, read_exact_bytes(s, len).await?)))
}

/// Exactly `n` bytes, read straight into one buffer.
pub async fn read_exact_bytes<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(n);
    read_exact_into(s, &mut buf, n).await?;
    Ok(buf.freeze())
}

/// Exactly `n` more bytes, read by the kernel straight into `buf`'s free
/// room (nothing is zeroed first).
pub async fn read_exact_into<S: AsyncRead + Unpin, B: bytes::BufMut>(
    s: &mut S,
    buf: &mut B,
    n: usize,
) -> io::Result<()> {
    let mut got = 0;
    while got < n {
        let mut limited = (&mut *s).take((n - got) as u64);
        match limited.read_buf(buf).await? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the peer closed after {got} of {n} bytes"),
                ));
            }
            k => got += k,
        }
    }
    Ok(())
}

/// Reads a reply: its header, or the error it carries.
pub async fn read_reply<M: Message + Default, S: AsyncRead + Unpin>(
    s: &mut S,
) -> io::Result<Result<M, ErrorDetail>> {
    let mut p = [0u8; 5];
    s.read_exact(&mut p).await?;
    let len = u32::from_le_bytes([p[1], p[2], p[3], p[4]]) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(bad(format!("a reply header of {len} bytes")));
    }
    let h = read_exact_bytes(s, len).await?;
    match p[0] {
        OK => M::decode(h).map(Ok).map_err(|e| bad(e.to_string())),
        FAILED => ErrorDetail::decode(h)
            .map(Err)
            .map_err(|e| bad(e.to_string())),
        other => Err(bad(format!("unknown reply status {other}"))),
    }
}

/// Writes `head` and then `data` with as few system calls as the socket
/// allows.
pub async fn write_with<S: AsyncWrite + Unpin>(
    s: &mut S,
    head: Vec<u8>,
    data: impl Buf,
) -> io::Result<()> {
    let mut both = Bytes::from(head).chain(data);
    s.write_all_buf(&mut both).await
}

/// Data in several pieces, one after the other, written as one: a socket
/// takes them all with one vectored write (a record's header, payload and
/// padding; the pieces of a push that are already at hand).
#[derive(Clone, Debug, Default)]
pub struct Pieces(VecDeque<Bytes>);

impl Pieces {
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.0.push_back(piece);
        }
    }

    /// The pieces, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.0.iter()
    }
}

impl From<Vec<Bytes>> for Pieces {
    fn from(pieces: Vec<Bytes>) -> Self {
        let mut p = Pieces::default();
        pieces.into_iter().for_each(|b| p.push(b));
        p
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.0.front().map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.0.front_mut() else {
                panic!("advanced past the end of the pieces");
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.0.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, b) in dst.iter_mut().zip(&self.0) {
            *slot = io::IoSlice::new(b);
            n += 1;
        }
        n
    }
}

/// The client side of the data plane: idle connections per server, reused
/// one request at a time. Errors are statuses like the control plane's, so
/// callers read them with [`detail_of`]: a server that cannot be reached or
/// sends a broken reply is `Unavailable`.
#[derive(Debug, Default)]
pub struct DataPool {
    idle: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
    /// Presented first on every new connection (`Op::Hello`), if set.
    token: Option<Token>,
}

impl DataPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool whose connections present `token` before anything else.
    pub fn with_token(token: Option<Token>) -> Self {
        Self {
            token,
            ..Self::default()
        }
    }

    /// An idle connection that is still open, or a new one.
    async fn take(&self, addr: &str) -> Result<TcpStream, Status> {
        loop {
            let found = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.get_mut(addr).and_then(Vec::pop)
            };
            let Some((s, since)) = found else { break };
            // Closed by the server (restarted, idle timeout) or holding
            // stray bytes: not reusable.
            if since.elapsed() < IDLE_REUSE
                && matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            {
                return Ok(s);
            }
        }
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unavailable(addr, "connecting timed out"))?
            .map_err(|e| unavailable(addr, &e.to_string()))?;
        s.set_nodelay(true)
            .map_err(|e| unavailable(addr, &e.to_string()))?;
        match &self.token {
            Some(t) => hello(s, t, addr).await,
            None => Ok(s),
        }
    }

    fn give_back(&self, addr: &str, s: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < IDLE_PER_ADDR {
            v.push((s, Instant::now()));
        }
    }

    /// Reads `req.length` (at most [`MAX_FRAME_BYTES`]) bytes; returns the
    /// data (less at the chunk's end) and the chunk's length there.
    pub async fn read(
        &self,
        addr: &str,
        req: &ReadRequest,
        timeout: Duration,
    ) -> Result<(Bytes, u64), Status> {
        let mut buf = BytesMut::with_capacity(req.length.min(MAX_FRAME_BYTES as u64) as usize);
        let (_, chunk_length) = self.read_into(addr, req, &mut buf, timeout).await?;
        Ok((buf.freeze(), chunk_length))
    }

    /// As [`DataPool::read`], appended to `dst` by the kernel straight into
    /// its free room (give it room for `req.length` bytes, or it grows):
    /// how many bytes came, and the chunk's length there.
    pub async fn read_into<B: bytes::BufMut + Send>(
        &self,
        addr: &str,
        req: &ReadRequest,
        dst: &mut B,
        timeout: Duration,
    ) -> Result<(usize, u64), Status> {
        if req.length > MAX_FRAME_BYTES as u64 {
            return Err(error(
                ErrorKind::InvalidArgument,
                format!(
                    "a read returns at most {MAX_FRAME_BYTES} bytes, {} were asked for",
                    req.length
                ),
            ));
        }
        self.exchange(addr, (timeout, None), async |s: &mut Watched| {
            s.write_all(&encode_request(Op::Read, req)).await?;
            match read_reply::<ReadHead, _>(s).await? {
                Ok(head) if head.data_bytes > req.length => Err(bad(format!(
                    "{} bytes answered for a read of {}",
                    head.data_bytes, req.length
                ))),
                Ok(head) => {
                    let n = head.data_bytes as usize;
                    read_exact_into(s, dst, n).await?;
                    Ok(Ok((n, head.chunk_length)))
                }
                Err(d) => Ok(Err(d)),
            }
        })
        .await
    }

    /// Pushes `total` bytes, arriving as pieces on `pieces`, to `addr`,
    /// which forwards them to `header.chain`. Ends the connection if
    /// `pieces` closes early. Fails after `timeout`, or once nothing moved
    /// for [`PUSH_STALL_PER_HOP`] per server of the chain from `addr` on
    /// (time spent waiting for `pieces` not counted). The reply's
    /// `lag_us` starts with this hop's lag.
    pub async fn push(
        &self,
        addr: &str,
        header: &PushHeader,
        mut pieces: mpsc::Receiver<Bytes>,
        timeout: Duration,
    ) -> Result<PushReply, Status> {
        let total = header.total_bytes;
        let hops = u32::try_from(header.chain.len() + 1).unwrap_or(u32::MAX);
        let stall = PUSH_STALL_PER_HOP.saturating_mul(hops);
        self.exchange(addr, (timeout, Some(stall)), async |s: &mut Watched| {
            let mut head = encode_request(Op::Push, header);
            let mut sent = 0u64;
            let mut written = Ok(());
            loop {
                // Waiting for data of our own: the peer is not stalled.
                s.watch().pause(true);
                let next = pieces.recv().await;
                s.watch().pause(false);
                let Some(p) = next else { break };
                // With the pieces already at hand: one write for all.
                let mut at_hand = Pieces::default();
                at_hand.push(p);
                while let Ok(more) = pieces.try_recv() {
                    at_hand.push(more);
                }
                sent += at_hand.remaining() as u64;
                if sent > total {
                    return Err(bad(format!("more than the {total} bytes announced")));
                }
                written = write_with(s, std::mem::take(&mut head), at_hand).await;
                if written.is_err() {
                    break;
                }
            }
            if written.is_ok() && sent < total {
                return Err(bad(format!("only {sent} of the {total} bytes announced")));
            }
            if written.is_ok() && !head.is_empty() {
                s.write_all(&head).await?;
            }
            // Every byte is with the kernel: from here to the answer is
            // this hop's lag, less what the server then waited for the
            // servers after it.
            let last_write = Instant::now();
            // A server that refused the header answers and closes: its
            // answer says more than the failed write.
            match read_reply::<PushReply, _>(s).await {
                Ok(Ok(mut r)) => {
                    let took = u64::try_from(last_write.elapsed().as_micros()).unwrap_or(u64::MAX);
                    r.lag_us.insert(0, took.saturating_sub(r.waited_us));
                    Ok(Ok(r))
                }
                Ok(Err(d)) => Ok(Err(d)),
                Err(e) => written.and(Err(e)),
            }
        })
        .await
    }

    /// A request without payload (`Op::Mutate`, `Op::Apply`) and its
    /// answer, bounded by `timeout`.
    pub async fn call<Q: Message, A: Message + Default>(
        &self,
        addr: &str,
        op: Op,
        req: &Q,
        timeout: Duration,
    ) -> Result<A, Status> {
        let head = encode_request(op, req);
        self.exchange(addr, (timeout, None), async |s: &mut Watched| {
            s.write_all(&head).await?;
            read_reply::<A, _>(s).await
        })
        .await
    }

    /// As [`call`](Self::call), but failed early if the server stops
    /// answering pings meanwhile (`probe`).
    pub async fn call_probed<Q: Message, A: Message + Default>(
        &self,
        addr: &str,
        op: Op,
        req: &Q,
        (timeout, probe): (Duration, Probe),
    ) -> Result<A, Status> {
        let silent = async {
            tokio::time::sleep(probe.after).await;
            let mut missed = 0;
            loop {
                let started = Instant::now();
                match self.ping_about(addr, probe.wait, probe.chunk).await {
                    Some(r) if Duration::from_millis(r.disk_stalled_ms) >= probe.disk_stalled => {
                        return format!(
                            "no answer, and its disks have completed no I/O for {:?}",
                            Duration::from_millis(r.disk_stalled_ms)
                        );
                    }
                    Some(_) => {
                        missed = 0;
                        tokio::time::sleep(probe.wait.saturating_sub(started.elapsed())).await;
                    }
                    None => {
                        missed += 1;
                        if missed >= probe.misses {
                            return format!(
                                "no answer, nor to {} pings in a row (the last for {:?})",
                                probe.misses,
                                started.elapsed()
                            );
                        }
                    }
                }
            }
        };
        tokio::select! {
            r = self.call(addr, op, req, timeout) => r,
            why = silent => Err(unavailable(addr, &why)),
        }
    }

    /// Whether the server at `addr` answers a ping within `wait`: any
    /// answer, also a refusal (a server that does not know the op).
    pub async fn ping(&self, addr: &str, wait: Duration) -> bool {
        self.ping_about(addr, wait, 0).await.is_some()
    }

    /// The answer to a ping about the disk holding chunk `handle` (0: any
    /// disk) within `wait`, if any (a refusal answers as nothing
    /// outstanding).
    pub async fn ping_about(&self, addr: &str, wait: Duration, handle: u64) -> Option<PingReply> {
        let req = PingRequest { handle };
        match self.call::<_, PingReply>(addr, Op::Ping, &req, wait).await {
            Ok(r) => Some(r),
            Err(s) if detail_of(&s).kind() != ErrorKind::Unavailable => Some(PingReply::default()),
            Err(_) => None,
        }
    }

    /// One request on a pooled connection, bounded by `timeout`, and with
    /// `stall`, also by how long no byte may move while the caller is not
    /// waiting for data of its own (`Watch::pause`): the connection goes
    /// back to the pool only after a complete answer.
    async fn exchange<T>(
        &self,
        addr: &str,
        (timeout, stall): (Duration, Option<Duration>),
        call: impl AsyncFnOnce(&mut Watched) -> io::Result<Result<T, ErrorDetail>>,
    ) -> Result<T, Status> {
        let mut s = Watched::new(self.take(addr).await?);
        let watch = s.watch().clone();
        let stalled = async {
            match stall {
                Some(d) => watch.stalled(d).await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            r = tokio::time::timeout(timeout, call(&mut s)) => match r {
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Ok(Err(d))) => Err(status(d)),
                Ok(Err(e)) => Err(unavailable(addr, &e.to_string())),
                Err(_) => Err(unavailable(addr, "no answer in time")),
            },
            () = stalled => Err(unavailable(
                addr,
                &format!("nothing moved for {:?}", stall.unwrap_or_default()),
            )),
        };
        if out.is_ok() {
            self.give_back(addr, s.into_inner());
        }
        out
    }
}

/// Presents `token` on the new connection `s`; `s` once the server took
/// it.
async fn hello(mut s: TcpStream, token: &Token, addr: &str) -> Result<TcpStream, Status> {
    let req = HelloRequest {
        token: Bytes::copy_from_slice(token.as_bytes()),
    };
    let answer = async {
        s.write_all(&encode_request(Op::Hello, &req)).await?;
        read_reply::<crate::wire::chunk::Empty, _>(&mut s).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, answer).await {
        Ok(Ok(Ok(_))) => Ok(s),
        Ok(Ok(Err(d))) => Err(status(d)),
        Ok(Err(e)) => Err(unavailable(addr, &e.to_string())),
        Err(_) => Err(unavailable(addr, "no answer to the token in time")),
    }
}

fn unavailable(addr: &str, why: &str) -> Status {
    error(ErrorKind::Unavailable, format!("chunkserver {addr}: {why}"))
}

/// What a server answers for a failed request: the status's detail.
pub fn encode_status(s: &Status) -> Vec<u8> {
    encode_err(&detail_of(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::chunk::MutateRequest;

    #[test]
    fn request_prefixes_round_trip_and_refuse_garbage() {
        let req = ReadRequest {
            handle: 7,
            version: 2,
            offset: 65536,
            length: 4096,
        };
        let b = encode_request(Op::Read, &req);
        let p: [u8; 9] = b[..9].try_into().unwrap();
        let (op, len) = parse_request_prefix(&p).unwrap();
        assert_eq!((op, len), (Op::Read, b.len() - 9));
        assert_eq!(ReadRequest::decode(&b[9..]).unwrap(), req);

        let http2: [u8; 9] = *b"PRI * HTT";
        assert!(parse_request_prefix(&http2).is_err());
        let mut op9 = p;
        op9[4] = 9;
        assert!(
            parse_request_prefix(&op9)
                .unwrap_err()
                .to_string()
                .contains("op 9")
        );
        let mut huge = p;
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_request_prefix(&huge).is_err());

        // Mutations travel on the data plane too; a forwarded round may
        // name many records' data, so its header may be larger.
        let m = MutateRequest {
            handle: 3,
            data_id: 11,
            length: 4096,
            ..Default::default()
        };
        let b = encode_request(Op::Mutate, &m);
        let (op, len) = parse_request_prefix(&b[..9].try_into().unwrap()).unwrap();
        assert_eq!((op, len), (Op::Mutate, b.len() - 9));
        assert_eq!(MutateRequest::decode(&b[9..]).unwrap(), m);
        let large = (MAX_HEADER_BYTES + 1) as u32;
        for (op, ok) in [(3u8, true), (4, true), (1, false), (2, false)] {
            let mut q = p;
            q[4] = op;
            q[5..9].copy_from_slice(&large.to_le_bytes());
            assert_eq!(parse_request_prefix(&q).is_ok(), ok, "op {op}");
        }
        let mut q = p;
        q[4] = 4;
        q[5..9].copy_from_slice(&((MAX_MESSAGE_BYTES + 1) as u32).to_le_bytes());
        assert!(parse_request_prefix(&q).is_err());
    }

    /// A writer that takes at most `max` bytes per call, as a full
    /// socket does.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            self.calls += 1;
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn pieces_are_written_whole_and_in_order_however_the_socket_splits_them() {
        let parts = [&b"head"[..], b"", b"payload of the record", b"\0\0\0"];
        let pieces = Pieces::from(
            parts
                .iter()
                .map(|p| Bytes::copy_from_slice(p))
                .collect::<Vec<_>>(),
        );
        assert_eq!(pieces.iter().count(), 3, "empty pieces are left out");
        let want: Vec<u8> = [&b"REQ"[..]]
            .iter()
            .chain(&parts)
            .flat_map(|p| p.iter().copied())
            .collect();
        for max in [1, 2, 5, 7, 100] {
            let mut w = Trickle {
                got: Vec::new(),
                max,
                calls: 0,
            };
            write_with(&mut w, b"REQ".to_vec(), pieces.clone())
                .await
                .unwrap();
            assert_eq!(w.got, want, "at most {max} bytes a call");
            assert_eq!(w.calls, want.len().div_ceil(max), "every call filled");
        }
    }

    #[tokio::test]
    async fn replies_read_back_as_headers_or_errors() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let head = ReadHead {
            chunk_length: 10,
            data_bytes: 3,
        };
        write_with(&mut a, encode_ok(&head), Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let long = "x".repeat(MAX_HEADER_BYTES);
        a.write_all(&encode_err(&ErrorDetail {
            kind: ErrorKind::StaleVersion as i32,
            message: long,
            leader_id: 0,
            leader_addr: String::new(),
        }))
        .await
        .unwrap();
        a.write_all(&[7, 0, 0, 0, 0]).await.unwrap();
        assert_eq!(read_reply::<ReadHead, _>(&mut b).await.unwrap(), Ok(head));
        assert_eq!(&read_exact_bytes(&mut b, 3).await.unwrap()[..], b"abc");
        let d = read_reply::<ReadHead, _>(&mut b)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(d.kind(), ErrorKind::StaleVersion);
        assert_eq!(d.message.len(), MAX_HEADER_BYTES / 2);
        assert!(read_reply::<ReadHead, _>(&mut b).await.is_err(), "status 7");
    }

    #[tokio::test]
    async fn pieces_are_read_into_their_stretch_of_one_buffer_in_place() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"0123456789").await.unwrap();
        drop(a);
        let mut whole = BytesMut::with_capacity(10);
        let start = whole.as_ptr();
        let mut second = whole.split_off(6);
        read_exact_into(&mut b, &mut whole, 6).await.unwrap();
        read_exact_into(&mut b, &mut second, 4).await.unwrap();
        assert_eq!(second.as_ptr(), start.wrapping_add(6), "no reallocation");
        whole.unsplit(second);
        assert_eq!((&whole[..], whole.as_ptr()), (&b"0123456789"[..], start));
        let e = read_exact_into(&mut b, &mut whole, 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A server that answers pings at once and every other request after
    /// `delay`, with an empty reply.
    async fn slow_server(delay: Duration) -> String {
        slow_disk_server(delay, 0).await
    }

    /// As `slow_server`, its pings saying its disks have completed no I/O
    /// for `stalled_ms`.
    async fn slow_disk_server(delay: Duration, stalled_ms: u64) -> String {
        use crate::wire::chunk::Empty;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some((op, _))) = read_request(&mut s).await {
                        let answer = if op == Op::Ping {
                            encode_ok(&PingReply {
                                disk_stalled_ms: stalled_ms,
                            })
                        } else {
                            tokio::time::sleep(delay).await;
                            encode_ok(&Empty {})
                        };
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    const QUICK: Probe = Probe {
        after: Duration::from_millis(50),
        wait: Duration::from_millis(50),
        misses: 2,
        disk_stalled: Duration::from_millis(500),
        chunk: 0,
    };

    /// An `Apply` with an empty header, probed `QUICK`ly, within 20 s.
    async fn probed_empty_call(
        pool: &DataPool,
        addr: &str,
    ) -> Result<crate::wire::chunk::Empty, Status> {
        let empty = crate::wire::chunk::Empty {};
        let limits = (Duration::from_secs(20), QUICK);
        pool.call_probed(addr, Op::Apply, &empty, limits).await
    }

    #[tokio::test]
    async fn a_call_to_a_server_that_stopped_answering_fails_on_its_pings() {
        // Bound, never accepting: its kernel takes connections and bytes,
        // as a stopped process's does, and nothing answers.
        let stopped = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = stopped.local_addr().unwrap().to_string();
        let pool = DataPool::new();
        let started = Instant::now();
        let r = probed_empty_call(&pool, &addr).await;
        let e = r.unwrap_err();
        assert_eq!(detail_of(&e).kind(), ErrorKind::Unavailable);
        assert!(e.message().contains("2 pings in a row"), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not the whole timeout"
        );
        assert!(!pool.ping(&addr, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_call_to_a_server_whose_disk_stopped_fails_on_its_ping() {
        // Alive, but its disks have completed nothing for 60 s.
        let addr = slow_disk_server(Duration::from_secs(30), 60_000).await;
        let pool = DataPool::new();
        let started = Instant::now();
        let e = probed_empty_call(&pool, &addr).await.unwrap_err();
        assert_eq!(detail_of(&e).kind(), ErrorKind::Unavailable);
        assert!(e.message().contains("completed no I/O for 60s"), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "not the call");
        // A disk behind by less than `disk_stalled` is only slow: waited.
        let addr = slow_disk_server(Duration::from_millis(300), 100).await;
        assert!(probed_empty_call(&pool, &addr).await.is_ok());
        let r = pool.ping_about(&addr, Duration::from_secs(1), 7).await;
        assert_eq!(
            r,
            Some(PingReply {
                disk_stalled_ms: 100
            })
        );
    }

    #[tokio::test]
    async fn a_slow_answer_from_a_server_that_answers_pings_is_waited_for() {
        use crate::wire::chunk::Empty;
        let addr = slow_server(Duration::from_millis(400)).await;
        let pool = DataPool::new();
        let r = probed_empty_call(&pool, &addr).await;
        assert_eq!(r.unwrap(), Empty {}, "eight pings' worth of waiting");
        assert!(pool.ping(&addr, Duration::from_secs(1)).await);
        // A server that does not know the op refuses it: an answer too.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let old = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let refusal = encode_err(&ErrorDetail {
                kind: ErrorKind::InvalidArgument as i32,
                message: "unknown data-plane op 5".into(),
                leader_id: 0,
                leader_addr: String::new(),
            });
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            s.write_all(&refusal).await.unwrap();
        });
        assert!(pool.ping(&old, Duration::from_secs(1)).await);
    }

    /// splitmix64: a seeded stream of random words, for the random peer.
    struct Words(u64);

    impl Words {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// A random answer: a good or unknown status, a length that may lie,
    /// a header of random bytes or a read's head claiming any amount of
    /// data, and fewer or more bytes than it said.
    fn random_answer(w: &mut Words) -> Vec<u8> {
        let status = match w.below(4) {
            0 | 1 => OK,
            2 => FAILED,
            _ => w.next() as u8,
        };
        let mut header = if w.below(2) == 0 {
            ReadHead {
                chunk_length: w.next() >> w.below(64),
                data_bytes: w.next() >> w.below(64),
            }
            .encode_to_vec()
        } else {
            let n = w.below(64) as usize;
            w.bytes(n)
        };
        let len = match w.below(5) {
            0 => w.next() as u32,
            1 => (header.len() as u32).saturating_add(w.below(8) as u32),
            _ => header.len() as u32,
        };
        header.truncate(len as usize);
        let mut b = vec![status];
        b.extend_from_slice(&len.to_le_bytes());
        b.extend(header);
        let n = w.below(8192) as usize;
        b.extend(w.bytes(n));
        b
    }

    /// A peer that reads whatever comes and answers each connection with
    /// `random_answer`, seeded per connection, then hangs up.
    async fn random_peer() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut seed = 0x7261_6e64_6f6d_u64;
            while let Ok((mut s, _)) = l.accept().await {
                seed += 1;
                tokio::spawn(async move {
                    let mut w = Words(seed);
                    let mut sink = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_millis(5), s.read(&mut sink)).await;
                    let _ = s.write_all(&random_answer(&mut w)).await;
                });
            }
        });
        addr
    }

    /// What any peer answers reaches the caller as a value or an error,
    /// in bounded time: never a panic, a hang or a read past the request.
    #[tokio::test]
    async fn random_answers_from_a_peer_are_values_or_errors() {
        use crate::wire::chunk::{ApplyReply, ApplyRequest};
        let addr = random_peer().await;
        let pool = DataPool::new();
        let wait = Duration::from_secs(2);
        let mut failed = 0;
        for i in 0..300u64 {
            let started = Instant::now();
            let ok = match i % 4 {
                0 => {
                    let req = ReadRequest {
                        handle: i,
                        version: 1,
                        offset: 0,
                        length: 4096,
                    };
                    match pool.read(&addr, &req, wait).await {
                        Ok((data, _)) => {
                            assert!(data.len() <= 4096, "a read returned {} bytes", data.len());
                            true
                        }
                        Err(_) => false,
                    }
                }
                1 => pool
                    .call::<_, ApplyReply>(&addr, Op::Apply, &ApplyRequest::default(), wait)
                    .await
                    .is_ok(),
                2 => pool.ping(&addr, wait).await,
                _ => {
                    let (tx, rx) = mpsc::channel(1);
                    tx.send(Bytes::from_static(&[7u8; 512])).await.unwrap();
                    drop(tx);
                    let h = PushHeader {
                        data_id: i + 1,
                        total_bytes: 512,
                        chain: Vec::new(),
                    };
                    pool.push(&addr, &h, rx, wait).await.is_ok()
                }
            };
            failed += usize::from(!ok);
            assert!(
                started.elapsed() < wait * 2,
                "call {i} took {:?}",
                started.elapsed()
            );
        }
        eprintln!("random answers: {failed} of 300 calls failed");
        assert!(failed > 0, "every random answer was taken");
    }

    #[tokio::test]
    async fn requests_end_cleanly_only_between_requests() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let h = PushHeader {
            data_id: 1,
            total_bytes: 5,
            chain: vec!["127.0.0.1:1".into()],
        };
        let bytes = encode_request(Op::Push, &h);
        a.write_all(&bytes).await.unwrap();
        a.write_all(&bytes[..4]).await.unwrap();
        drop(a);
        let (op, got) = read_request(&mut b).await.unwrap().unwrap();
        assert_eq!((op, PushHeader::decode(got).unwrap()), (Op::Push, h));
        assert!(read_request(&mut b).await.is_err(), "torn request");
        let (a, mut b) = tokio::io::duplex(16);
        drop(a);
        assert!(read_request(&mut b).await.unwrap().is_none());
    }
}
