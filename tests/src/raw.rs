//! Raw gRPC calls for bad-input tests: bodies sent as they are, to reach
//! a server's decoder with anything, and seeded random bodies shaped like
//! protobuf or not.

use bytes::{Buf, BufMut, Bytes};
use rand::Rng;
use rand::rngs::StdRng;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use tonic::transport::Channel;

/// Sends bytes as they are, to reach the server's decoder with anything.
#[derive(Debug, Default, Clone)]
pub struct RawCodec;

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

/// One unary call of `method` with `body` as its message, whatever it is;
/// the answer's bytes, undecoded.
pub async fn raw_unary(ch: Channel, method: &str, body: Vec<u8>) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch).max_encoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = method
        .parse()
        .map_err(|_| tonic::Status::invalid_argument(format!("method path {method}")))?;
    grpc.unary(tonic::Request::new(Bytes::from(body)), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A body shaped like protobuf (fields of random numbers and wire types,
/// varints from the edges, strings that are sometimes paths) or plain
/// random bytes.
pub fn random_body(rng: &mut StdRng) -> Vec<u8> {
    let mut b = Vec::new();
    if rng.random_bool(0.3) {
        let n = rng.random_range(0..256);
        b.extend((0..n).map(|_| rng.random::<u8>()));
        return b;
    }
    fn varint(b: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            b.push((v as u8) | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
    }
    for _ in 0..rng.random_range(1..6) {
        // Mostly the low field numbers every request uses, in the wire
        // types they have.
        let field: u64 = if rng.random_bool(0.8) {
            rng.random_range(1..5)
        } else {
            rng.random_range(1..16)
        };
        let wire: u64 = [0, 0, 0, 2, 2, 2, 2, 1, 5, 3, 7][rng.random_range(0..11)];
        varint(&mut b, field << 3 | wire);
        match wire {
            0 => {
                let v = match rng.random_range(0..4) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => rng.random_range(0..1000),
                    _ => rng.random(),
                };
                varint(&mut b, v);
            }
            2 => {
                let s: Vec<u8> = match rng.random_range(0..4) {
                    0 | 1 => format!("/r{}/{}", rng.random_range(0..3), rng.random_range(0..5))
                        .into_bytes(),
                    2 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
                    _ => Vec::new(),
                };
                // Sometimes a length that lies.
                let len = if rng.random_bool(0.1) {
                    rng.random::<u32>() as u64
                } else {
                    s.len() as u64
                };
                varint(&mut b, len);
                b.extend(s);
            }
            1 => b.extend(rng.random::<u64>().to_le_bytes()),
            5 => b.extend(rng.random::<u32>().to_le_bytes()),
            _ => {}
        }
    }
    b
}

/// How a server took a spray of random bodies.
#[derive(Debug, Default)]
pub struct Sprayed {
    /// Calls answered with a value.
    pub taken: usize,
    /// Calls answered with an error.
    pub refused: usize,
    /// Calls not answered within the wait: method and round.
    pub late: Vec<(String, usize)>,
}

/// `rounds` rounds of one `random_body` (seeded by `seed`) to each of
/// `methods` over `ch`, each call given `wait` to answer.
pub async fn spray(
    ch: &Channel,
    methods: &[&str],
    rounds: usize,
    seed: u64,
    wait: Duration,
) -> Sprayed {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Sprayed::default();
    for round in 0..rounds {
        for method in methods {
            let call = raw_unary(ch.clone(), method, random_body(&mut rng));
            match tokio::time::timeout(wait, call).await {
                Ok(Ok(_)) => out.taken += 1,
                Ok(Err(_)) => out.refused += 1,
                Err(_) => out.late.push((method.to_string(), round)),
            }
        }
    }
    out
}
