//! S1 and S2 on the data plane, at random: a chunkserver fed hundreds of
//! connections of seeded random frames (unknown ops, lengths past every
//! limit, torn headers, random protobuf bytes, hostile field values) never
//! panics, and afterwards still takes a push and answers a ping.
//!
//! Its own test binary: the panic hook it installs counts every panic of
//! the process, so no other test may share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gfs_chunkserver::config::ConfigFile;
use gfs_proto::data::{DataPool, MAGIC, Op, encode_request};
use gfs_proto::wire::chunk::{MutateRequest, PushHeader, ReadRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 400;
const AT_ONCE: usize = 16;

/// A value from the edges a parser gets wrong as often as from the middle.
fn edgy(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..6) {
        0 => 0,
        1 => u64::MAX,
        2 => u64::MAX - rng.random_range(0..4096),
        3 => 1 << rng.random_range(0..64),
        4 => rng.random_range(0..1 << 20),
        _ => rng.random(),
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random()).collect()
}

/// One connection's bytes. No frame names another server: a push's chain
/// and a mutation's secondaries stay empty, so nothing here makes the
/// server connect anywhere (random strings would be looked up as hosts).
fn frame(rng: &mut StdRng) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    match rng.random_range(0..7) {
        // An op byte and a length, then random bytes that may fall short
        // of it or run past it. Push and Mutate are left to the shaped
        // cases below (their random bodies could name peers).
        0 | 1 => {
            let known = [Op::Read, Op::Apply, Op::Ping];
            let op = loop {
                let op: u8 = if rng.random_bool(0.6) {
                    known[rng.random_range(0..known.len())] as u8
                } else {
                    rng.random()
                };
                if op != Op::Push as u8 && op != Op::Mutate as u8 {
                    break op;
                }
            };
            b.push(op);
            let len: u32 = if rng.random_bool(0.3) {
                rng.random()
            } else {
                rng.random_range(0..512)
            };
            b.extend_from_slice(&len.to_le_bytes());
            let n = rng.random_range(0..(len as usize).min(1024) + 64);
            b.extend(random_bytes(rng, n));
        }
        // A header cut anywhere.
        2 => {
            b.push(rng.random_range(0..8));
            let cut = rng.random_range(0..4);
            b.extend_from_slice(&rng.random::<u32>().to_le_bytes()[..cut]);
        }
        // A push of hostile size, followed by fewer or more bytes.
        3 => {
            let h = PushHeader {
                data_id: edgy(rng),
                total_bytes: if rng.random_bool(0.5) {
                    rng.random_range(0..256 * 1024)
                } else {
                    edgy(rng)
                },
                chain: Vec::new(),
            };
            b = encode_request(Op::Push, &h);
            let n = rng.random_range(0..300 * 1024);
            b.extend(random_bytes(rng, n));
        }
        // A mutation with hostile fields and no secondaries.
        4 => {
            let m = MutateRequest {
                handle: edgy(rng),
                version: edgy(rng),
                kind: rng.random_range(-1..5),
                offset: edgy(rng),
                data_id: edgy(rng),
                length: edgy(rng),
                secondaries: Vec::new(),
                lease_expires_ms: edgy(rng),
                client_id: edgy(rng),
                seq: edgy(rng),
                sync: rng.random(),
            };
            b = encode_request(Op::Mutate, &m);
        }
        // A read anywhere, of any length.
        5 => {
            let r = ReadRequest {
                handle: edgy(rng),
                version: edgy(rng),
                offset: edgy(rng),
                length: edgy(rng),
            };
            b = encode_request(Op::Read, &r);
        }
        // Neither plane: no magic at all.
        _ => {
            let n = rng.random_range(1..2048);
            b = random_bytes(rng, n);
        }
    }
    b
}

/// Sends `bytes`, reads whatever comes back for a moment, hangs up.
async fn send(addr: &str, bytes: Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.write_all(&bytes).await;
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(Duration::from_millis(100), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_never_panic_a_chunkserver_nor_stop_it() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));

    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let cfg = ConfigFile {
        id: Some(1),
        listen: Some(addr),
        data_dirs: vec![dir.path().to_path_buf()],
        // Nobody listens there: heartbeats are refused at once.
        masters: vec!["127.0.0.1:1".into()],
        // Small chunks: a random apply that creates one costs little disk.
        chunk_size_bytes: Some(1 << 20),
        ..ConfigFile::default()
    }
    .validate()
    .expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gfs_chunkserver::run(cfg, listener, async {
        let _ = stopped.await;
    }));
    let addr = addr.to_string();
    let pool = DataPool::new();
    let mut up = false;
    for _ in 0..100 {
        if pool.ping(&addr, Duration::from_millis(500)).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the chunkserver never answered a ping");

    let mut rng = StdRng::seed_from_u64(0x6753_5f66_757a_7a21);
    let frames: Vec<Vec<u8>> = (0..CONNECTIONS).map(|_| frame(&mut rng)).collect();
    let mut frames = frames.into_iter();
    loop {
        let batch: Vec<_> = frames.by_ref().take(AT_ONCE).collect();
        if batch.is_empty() {
            break;
        }
        let sends = batch.into_iter().map(|f| {
            let addr = addr.clone();
            tokio::spawn(async move { send(&addr, f).await })
        });
        for s in sends.collect::<Vec<_>>() {
            s.await.expect("sender");
        }
    }

    // Still serving: a ping, and a well-formed push stored.
    assert!(
        pool.ping(&addr, Duration::from_secs(2)).await,
        "no answer to a ping after the random frames"
    );
    let data = Bytes::from(vec![0x42u8; 64 * 1024]);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(data.clone()).await.expect("feed");
    drop(tx);
    let header = PushHeader {
        data_id: 0x5eed,
        total_bytes: data.len() as u64,
        chain: Vec::new(),
    };
    let reply = pool
        .push(&addr, &header, rx, Duration::from_secs(5))
        .await
        .expect("a push after the random frames");
    assert_eq!(reply.stored, 1);
    assert!(!server.is_finished(), "the chunkserver stopped");
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a frame panicked the chunkserver"
    );

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
