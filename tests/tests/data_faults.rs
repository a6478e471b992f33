//! Faults on the data path against real processes: corrupt and truncated
//! replicas (R9), a stale replica back from the dead (R10), a primary cut
//! off from the masters while it holds a lease (R7), requests without a
//! valid lease or version and oversized ones (S2, S4).

use std::time::{Duration, Instant};

use gfs_proto::data::{DataPool, Op};
use gfs_proto::wire::ErrorKind;
use gfs_proto::wire::chunk::chunkserver_client::ChunkserverClient;
use gfs_proto::wire::chunk::{MutateRequest, MutationKind, PushHeader};
use gfs_proto::wire::detail_of;
use gfs_tests::cluster::{Cluster, Spec};
use gfs_tests::metrics::{scrape, sum};
use gfs_tests::random_bytes;
use gfs_tests::raw::spray;

fn chunk_file(c: &Cluster, server: usize, handle: u64) -> std::path::PathBuf {
    c.servers[server]
        .data_dir
        .join("chunks")
        .join(format!("{handle:016x}.chunk"))
}

fn flip(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open chunk file");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    b[0] ^= 0x40;
    f.write_all_at(&b, at).expect("write byte");
    f.sync_all().expect("sync");
}

/// Reads must drop the page cache's copy of a file we changed behind the
/// server's back (the servers use O_DIRECT, but be sure).
fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// Writes `data` through `w` in 256 KiB pieces, as an ingesting program
/// would, and closes it.
async fn write_in_pieces(mut w: gfs_client::Writer, data: &[u8]) -> std::io::Result<u64> {
    use tokio::io::AsyncWriteExt;
    for part in data.chunks(256 << 10) {
        w.write_all(part).await?;
    }
    w.close().await
}

/// `path` reads back as `data`, whole.
async fn assert_reads_back(c: &gfs_client::Client, path: &str, data: &[u8]) {
    let got = c.read_at(path, 0, data.len() as u64).await.expect("read");
    assert!(got[..] == data[..], "read back differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r9_corrupt_or_truncated_replicas_are_never_served() {
    // No re-replication: a fresh copy would make "every replica bad" moot.
    let spec = Spec {
        repair_interval_ms: 3_600_000,
        ..Spec::default()
    };
    let cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let data = random_bytes(900_000, 9);
    c.create("/f", 0).await.expect("create");
    c.write_at("/f", 0, &data).await.expect("write");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let idx: Vec<usize> = chunk
        .replicas
        .iter()
        .map(|r| cluster.server_index(r.node_id).expect("known"))
        .collect();
    assert_eq!(idx.len(), 3);

    // One replica with a flipped bit, another truncated: every read still
    // returns the right bytes, from the replica that is whole.
    flip(&chunk_file(&cluster, idx[0], chunk.handle), 300_000);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(chunk_file(&cluster, idx[1], chunk.handle))
        .expect("open");
    f.set_len(128 * 1024).expect("truncate");
    drop_caches();
    for _ in 0..10 {
        let got = c.read_at("/f", 0, data.len() as u64).await.expect("read");
        assert!(got[..] == data[..], "a read returned wrong bytes");
    }

    // Every replica bad: a clear error, in bounded time, no endless retry.
    flip(&chunk_file(&cluster, idx[2], chunk.handle), 300_000);
    if chunk_file(&cluster, idx[0], chunk.handle).exists() {
        flip(&chunk_file(&cluster, idx[0], chunk.handle), 500_000);
    }
    drop_caches();
    let c2 = cluster.client();
    let start = Instant::now();
    let e = c2
        .read_at("/f", 0, data.len() as u64)
        .await
        .expect_err("no replica is whole");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            e.kind,
            ErrorKind::Corrupt | ErrorKind::NotFound | ErrorKind::Internal | ErrorKind::Unavailable
        ),
        "{e}"
    );
    // The server whose replica failed its checksum says so in its metrics.
    let m = scrape(&cluster.servers[idx[2]].metrics)
        .await
        .expect("scrape");
    assert!(
        sum(&m, "gfs_chunkserver_checksum_failures_total", &[]) >= 1.0,
        "{m}"
    );
    assert!(sum(&m, "gfs_chunkserver_data_failures_total", &[("op", "read")]) >= 1.0);
    // The corrupt replicas were quarantined and the masters no longer list
    // them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = c
            .chunks("/f")
            .await
            .expect("chunks")
            .remove(0)
            .replicas
            .len();
        if left < 3 {
            break;
        }
        assert!(Instant::now() < deadline, "corrupt replicas still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// R10: a replica that missed writes while down comes back at an old
/// version; it is never read and never listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_a_stale_replica_is_never_read() {
    // No re-replication: it could copy the chunk back to the victim.
    let spec = Spec {
        repair_interval_ms: 3_600_000,
        ..Spec::default()
    };
    let mut cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let old = random_bytes(500_000, 1);
    let new = random_bytes(500_000, 2);
    c.create("/f", 0).await.expect("create");
    c.write_at("/f", 0, &old).await.expect("write old");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let victim = gfs_tests::a_secondary(&chunk);
    let vi = cluster.server_index(victim).expect("known");
    cluster.kill_server(vi).expect("kill");
    c.write_at("/f", 0, &new)
        .await
        .expect("write new without it");
    cluster.restart_server(vi).expect("restart");
    cluster
        .wait_servers(4, Duration::from_secs(20))
        .await
        .expect("back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = c.chunks("/f").await.expect("chunks").remove(0);
    assert!(
        now.version > chunk.version,
        "the failure bumped the version"
    );
    assert!(
        now.replicas.iter().all(|r| r.node_id != victim),
        "the stale replica is listed: {now:?}"
    );
    for _ in 0..20 {
        let fresh = cluster.client();
        let got = fresh
            .read_at("/f", 0, new.len() as u64)
            .await
            .expect("read");
        assert!(got[..] == new[..], "stale bytes were served");
    }
    // Asked directly at the current version, the stale replica refuses
    // (or is gone already: the leader has it deleted).
    let s = gfs_tests::read_replica(&cluster.servers[vi].addr, now.handle, now.version, 0, 10)
        .await
        .expect_err("stale");
    assert!(
        matches!(
            detail_of(&s).kind(),
            ErrorKind::StaleVersion | ErrorKind::NotFound
        ),
        "{s:?}"
    );
}

/// R7: the primary of a chunk four clients are writing is cut off from the
/// masters (nftables) while it holds the lease, past the lease's end, then
/// healed. It may go on ordering mutations until its lease runs out, and
/// the masters grant the next one only after that: never two primaries
/// accepting mutations of one chunk version. Checked on the history: every
/// acknowledged write reads back (each write has a 4 KiB slot of its own,
/// so a write acknowledged by a deposed primary would be missing), a write
/// that failed left its slot either written or untouched, and every
/// replica of the chunk is byte-identical after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r7_a_primary_cut_off_from_the_masters_never_shares_its_chunk() {
    use gfs_tests::masters::Partition;
    if !Partition::available() {
        eprintln!("skipped: needs root and nft (scripts/setup installs nftables)");
        return;
    }
    const SLOT: usize = 4096;
    const WRITERS: usize = 4;
    let cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let chunk_bytes = cluster.spec.chunk_size_bytes as usize;
    c.create("/r7", 0).await.expect("create");
    c.write_at("/r7", 0, &vec![0u8; chunk_bytes])
        .await
        .expect("prefill the chunk");
    let before = c.chunks("/r7").await.expect("chunks").remove(0);
    assert_ne!(before.primary, 0, "the prefill left a lease");
    let payload = |slot: usize| random_bytes(SLOT, 7_000 + slot as u64);
    let rounds = chunk_bytes / SLOT / WRITERS;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let c = cluster.client();
            tokio::spawn(async move {
                let mut history = Vec::new();
                for i in 0..rounds {
                    let slot = i * WRITERS + w;
                    let at = (slot * SLOT) as u64;
                    let acked = c.write_at("/r7", at, &payload(slot)).await.is_ok();
                    history.push((slot, acked));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                history
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let primary = cluster
        .servers
        .iter()
        .find(|s| s.id == before.primary)
        .expect("the primary is one of ours");
    let masters = cluster.masters.addrs();
    let masters: Vec<&str> = masters.iter().map(String::as_str).collect();
    let cut = Partition::between(&[primary.addr.as_str()], &masters).expect("nft partition");
    cluster
        .wait_dead(&[before.primary], Duration::from_secs(10))
        .await
        .expect("the cut-off primary is dead for the masters");
    // Past the lease (3 s) and its grace: the masters grant a new one.
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    drop(cut);
    let mut history = Vec::new();
    for w in writers {
        history.extend(w.await.expect("writer"));
    }
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("back to full replication");
    let after = c.chunks("/r7").await.expect("chunks").remove(0);
    assert!(after.version > before.version, "the lease moved: {after:?}");
    let got = c.read_at("/r7", 0, chunk_bytes as u64).await.expect("read");
    assert_eq!(got.len(), chunk_bytes);
    let mut lost = Vec::new();
    for &(slot, acked) in &history {
        let here = &got[slot * SLOT..(slot + 1) * SLOT];
        let written = here == &payload(slot)[..];
        if acked && !written {
            lost.push(slot);
        }
        assert!(
            written || here.iter().all(|b| *b == 0),
            "slot {slot} holds neither its write nor nothing"
        );
    }
    assert!(lost.is_empty(), "acknowledged writes lost: slots {lost:?}");
    let acked = history.iter().filter(|(_, a)| *a).count();
    assert!(
        acked > history.len() / 2,
        "{acked} of {} acknowledged",
        history.len()
    );
    for r in &after.replicas {
        let (data, _) =
            gfs_tests::read_replica(&r.addr, after.handle, after.version, 0, chunk_bytes as u64)
                .await
                .expect("read a replica");
        assert!(data[..] == got[..], "replica on {} differs", r.addr);
    }
}

/// S2, S4, S5 on a chunkserver: no lease, old version, oversized or
/// out-of-range requests get clear errors and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_mutations_without_lease_or_version_and_bad_requests_are_refused() {
    let cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    c.create("/f", 0).await.expect("create");
    c.write_at("/f", 0, b"hello").await.expect("write");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let primary = chunk
        .replicas
        .iter()
        .find(|r| r.node_id == chunk.primary)
        .expect("primary listed");
    let mut cs = ChunkserverClient::connect(format!("http://{}", primary.addr))
        .await
        .expect("connect");
    let mutate = |lease: u64, version: u64| MutateRequest {
        handle: chunk.handle,
        version,
        kind: MutationKind::Write as i32,
        offset: 0,
        data_id: 42,
        length: 5,
        secondaries: Vec::new(),
        lease_expires_ms: lease,
        client_id: 0,
        seq: 0,
        sync: false,
    };
    fn kind<T>(r: Result<tonic::Response<T>, tonic::Status>) -> ErrorKind {
        match r {
            Ok(_) => ErrorKind::Unspecified,
            Err(s) => detail_of(&s).kind(),
        }
    }
    // A replica that is not the primary has no lease to honour.
    let other = chunk
        .replicas
        .iter()
        .find(|r| r.node_id != chunk.primary)
        .expect("a secondary");
    let mut sec = ChunkserverClient::connect(format!("http://{}", other.addr))
        .await
        .expect("connect");
    assert_eq!(
        kind(sec.mutate(mutate(0, chunk.version)).await),
        ErrorKind::NotPrimary
    );
    // The primary with the lease but an old version, or data never pushed.
    let lease = chunk.lease_expires_ms;
    assert_eq!(
        kind(cs.mutate(mutate(lease, chunk.version - 1)).await),
        ErrorKind::DataMissing,
        "data is checked before the chunk"
    );
    // Bad kinds, sizes and ranges.
    let mut bad = mutate(lease, chunk.version);
    bad.kind = 77;
    assert_eq!(kind(cs.mutate(bad).await), ErrorKind::InvalidArgument);
    let mut bad = mutate(lease, chunk.version);
    bad.offset = u64::MAX - 2;
    assert_eq!(kind(cs.mutate(bad).await), ErrorKind::InvalidArgument);
    let read = |version: u64, offset: u64, length: u64| {
        gfs_tests::read_replica(&primary.addr, chunk.handle, version, offset, length)
    };
    fn read_kind<T>(r: Result<T, tonic::Status>) -> ErrorKind {
        r.map_or_else(|s| detail_of(&s).kind(), |_| ErrorKind::Unspecified)
    }
    assert_eq!(
        read_kind(read(chunk.version + 5, 0, 5).await),
        ErrorKind::StaleVersion
    );
    assert_eq!(
        read_kind(read(chunk.version, 0, 64 << 20).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        read_kind(read(chunk.version, u64::MAX, 5).await),
        ErrorKind::Unspecified
    );
    assert_eq!(
        read_kind(gfs_tests::read_replica(&primary.addr, 0xdead_beef, 1, 0, 1).await),
        ErrorKind::NotFound
    );
    // The data plane refuses broken and oversized pushes, and stays up.
    data_plane_refuses_bad_input(&primary.addr).await;
    // With the data pushed: an old version is refused (fencing).
    let pool = DataPool::new();
    let hello = bytes::Bytes::from_static(b"HELLO");
    let pushed = gfs_tests::push_data(&pool, std::slice::from_ref(&primary.addr), 42, hello)
        .await
        .expect("push");
    assert_eq!(pushed.stored, 1);
    assert_eq!(
        kind(cs.mutate(mutate(lease, chunk.version - 1)).await),
        ErrorKind::StaleVersion
    );
    // An oversized message is refused and the server stays up.
    let mut big = mutate(lease, chunk.version);
    big.secondaries = (0..200_000)
        .map(|i| gfs_proto::wire::chunk::Replica {
            node_id: i,
            addr: "x".repeat(100),
        })
        .collect();
    assert_ne!(kind(cs.mutate(big.clone()).await), ErrorKind::Unspecified);
    // The same refusals over the data plane, which clients and primaries
    // use for mutations.
    fn framed_kind<T>(r: Result<T, tonic::Status>) -> ErrorKind {
        r.map_or_else(|s| detail_of(&s).kind(), |_| ErrorKind::Unspecified)
    }
    let t = Duration::from_secs(5);
    let call = |addr: &str, m: MutateRequest| {
        let (pool, addr) = (&pool, addr.to_string());
        async move {
            framed_kind(
                pool.call::<_, gfs_proto::wire::chunk::MutateReply>(&addr, Op::Mutate, &m, t)
                    .await,
            )
        }
    };
    assert_eq!(
        call(&other.addr, mutate(0, chunk.version)).await,
        ErrorKind::NotPrimary
    );
    assert_eq!(
        call(&primary.addr, mutate(lease, chunk.version - 1)).await,
        ErrorKind::StaleVersion
    );
    let mut bad = mutate(lease, chunk.version);
    bad.kind = 77;
    assert_eq!(call(&primary.addr, bad).await, ErrorKind::InvalidArgument);
    // A header past the bound: refused, or the connection closed under
    // the sender's feet.
    let refused = call(&primary.addr, big).await;
    assert!(
        matches!(refused, ErrorKind::InvalidArgument | ErrorKind::Unavailable),
        "{refused:?}"
    );
    let forwarded = gfs_proto::wire::chunk::ApplyRequest {
        handle: chunk.handle,
        version: chunk.version,
        kind: 77,
        ..Default::default()
    };
    let apply = |req: gfs_proto::wire::chunk::ApplyRequest| {
        let (pool, addr) = (&pool, other.addr.clone());
        async move {
            framed_kind(
                pool.call::<_, gfs_proto::wire::chunk::ApplyReply>(&addr, Op::Apply, &req, t)
                    .await,
            )
        }
    };
    assert_eq!(apply(forwarded).await, ErrorKind::InvalidArgument);
    // A mutation forwarded at a version older than the secondary's: the
    // masters granted a new one since, so the primary's lease is over
    // (NotPrimary, which the primary passes on as StaleVersion instead of
    // reporting the secondary failed); nothing is applied.
    let world = bytes::Bytes::from_static(b"WORLD");
    let pushed = gfs_tests::push_data(&pool, std::slice::from_ref(&other.addr), 43, world)
        .await
        .expect("push");
    assert_eq!(pushed.stored, 1);
    let late = gfs_proto::wire::chunk::ApplyRequest {
        handle: chunk.handle,
        version: chunk.version - 1,
        kind: MutationKind::Write as i32,
        offset: 0,
        data_ids: vec![43],
        length: 5,
        serial: 1,
        ..Default::default()
    };
    assert_eq!(apply(late).await, ErrorKind::NotPrimary);
    let (data, _) = gfs_tests::read_replica(&other.addr, chunk.handle, chunk.version, 0, 5)
        .await
        .expect("read the secondary");
    assert_eq!(&data[..], b"hello");
    // Nothing changed: the file still reads "hello".
    assert_eq!(&c.read_at("/f", 0, 100).await.expect("read")[..], b"hello");
}

/// A lease granted before a failover is honoured by the next leader: same
/// primary, same version, no second grant; the primary's extension
/// requests go on being honoured, another server's are not.
/// S6: with a cluster token, a client that does not present it, or
/// presents another, is refused before any handler runs, by the masters'
/// and chunkservers' gRPC services and by the data plane (pings excepted);
/// the servers themselves, and clients holding the token, work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s6_without_the_cluster_token_nothing_is_served() {
    let token = "s6-the-cluster-token-0123456789";
    let spec = Spec {
        auth_token: Some(token.into()),
        ..Spec::default()
    };
    // The masters elect a leader and every chunkserver heartbeats in: the
    // servers present the token to each other.
    let cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let data = random_bytes(2_500_000, 61);
    c.create("/ok", 0).await.expect("create with the token");
    c.write_at("/ok", 0, &data)
        .await
        .expect("write with the token");
    assert_reads_back(&c, "/ok", &data).await;

    let wrong = gfs_proto::auth::Token::new("s6-another-token-0123456789").expect("token");
    let masters = cluster.masters.addrs();
    for presented in [None, Some(wrong.clone())] {
        let opts = gfs_client::ClientOptions {
            master: gfs_client::MasterOptions {
                auth_token: presented.clone(),
                deadline: Duration::from_secs(5),
                ..Default::default()
            },
            ..Default::default()
        };
        let stranger = gfs_client::Client::with_options(&masters, opts).expect("client");
        let e = stranger.create("/nope", 0).await.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Unauthenticated, "{e}");
        assert!(e.message.contains("token"), "{e}");
        let e = stranger.read_at("/ok", 0, 10).await.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Unauthenticated, "{e}");

        // Straight to a chunkserver: its gRPC service, then its data plane.
        let addr = &cluster.servers[0].addr;
        let mut cs =
            gfs_proto::wire::chunk_client_from(addr, None, presented.as_ref()).expect("client");
        let e = cs
            .counters(gfs_proto::wire::chunk::Empty {})
            .await
            .expect_err("refused");
        assert_eq!(detail_of(&e).kind(), ErrorKind::Unauthenticated, "{e:?}");
        let pool = DataPool::with_token(presented.clone());
        let chain: Vec<String> = cluster.servers[..3]
            .iter()
            .map(|s| s.addr.clone())
            .collect();
        let e = gfs_tests::push_data(&pool, &chain, 77, bytes::Bytes::from(vec![7u8; 4096]))
            .await
            .expect_err("push refused");
        assert_eq!(detail_of(&e).kind(), ErrorKind::Unauthenticated, "{e:?}");
        let chunk = c.chunks("/ok").await.expect("chunks").remove(0);
        let holder = cluster
            .server_index(chunk.replicas[0].node_id)
            .expect("known");
        let req = gfs_proto::wire::chunk::ReadRequest {
            handle: chunk.handle,
            version: chunk.version,
            offset: 0,
            length: 4096,
        };
        let e = pool
            .read(&cluster.servers[holder].addr, &req, Duration::from_secs(5))
            .await
            .expect_err("read refused");
        assert_eq!(detail_of(&e).kind(), ErrorKind::Unauthenticated, "{e:?}");
        // A ping says only that the process is alive: it needs no token.
        assert!(pool.ping(addr, Duration::from_secs(2)).await);
    }
    // Nothing the strangers asked for happened.
    let e = c.stat("/nope").await.expect_err("never created");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert_reads_back(&c, "/ok", &data).await;
    // The refusals are counted.
    let m = scrape(&cluster.servers[0].metrics).await.expect("scrape");
    assert!(
        sum(&m, "gfs_chunkserver_data_unauthenticated_total", &[]) >= 2.0,
        "{m}"
    );
    let mut refused = 0.0;
    for master in &cluster.masters.masters {
        let m = scrape(&master.metrics).await.expect("scrape");
        refused += sum(&m, "gfs_grpc_calls_total", &[("code", "Unauthenticated")]);
    }
    assert!(refused >= 4.0, "{refused}");

    // The command line takes the token from GFS_AUTH_TOKEN_FILE.
    let file = &cluster.masters.token.as_ref().expect("a token").0;
    let gfs = |token: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(gfs_tests::binary("gfs").expect("gfs binary"));
        cmd.args(["stat", "/ok"])
            .env("GFS_MASTERS", masters.join(","))
            .env_remove("GFS_AUTH_TOKEN_FILE");
        if let Some(t) = token {
            cmd.env("GFS_AUTH_TOKEN_FILE", t);
        }
        cmd.output().expect("run gfs")
    };
    let o = gfs(Some(file));
    assert!(o.status.success(), "{o:?}");
    let o = gfs(None);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("token"),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_survive_a_leader_kill() {
    use gfs_proto::wire::master::master_chunkserver_client::MasterChunkserverClient;
    use gfs_proto::wire::master::{ChunkReport, HeartbeatRequest};
    let mut cluster = Cluster::start(Spec {
        chunkservers: 3,
        lease_ms: 20_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    c.create("/data", 3).await.expect("create");
    c.write_at("/data", 0, b"before the failover")
        .await
        .expect("write");
    let first = c.chunks("/data").await.expect("chunks").remove(0);
    assert_ne!(first.primary, 0, "{first:?}");
    assert_eq!(first.replicas.len(), 3, "{first:?}");
    let l = cluster
        .masters
        .leader(Duration::from_secs(10))
        .await
        .expect("leader");
    cluster.masters.kill(l).expect("kill");
    cluster
        .wait_servers(3, Duration::from_secs(20))
        .await
        .expect("servers report to the new leader");
    let again = c
        .master()
        .write_chunk("/data", 0, &[])
        .await
        .expect("write_chunk");
    assert_eq!(
        (again.handle, again.version, again.primary),
        (first.handle, first.version, first.primary),
        "the new leader re-granted instead of honouring the lease"
    );
    c.write_at("/data", 0, b"after the failover!")
        .await
        .expect("write");
    assert_eq!(
        &c.read_at("/data", 0, 100).await.expect("read")[..],
        b"after the failover!"
    );
    let nl = cluster
        .masters
        .leader(Duration::from_secs(1))
        .await
        .expect("leader");
    let mut ms =
        MasterChunkserverClient::connect(format!("http://{}", cluster.masters.masters[nl].addr))
            .await
            .expect("connect");
    let beat = |id: u64, extend: Vec<u64>| {
        let s = &cluster.servers[cluster.server_index(id).expect("server")];
        HeartbeatRequest {
            node_id: id,
            addr: s.addr.clone(),
            rack: format!("rack-{}", (id - 1) % 2),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            draining: false,
            full_report: false,
            chunks: Vec::<ChunkReport>::new(),
            extend_leases: extend,
            changed: Vec::new(),
            removed: Vec::new(),
            relinquish: Vec::new(),
            disk_stalled_ms: 0,
        }
    };
    let r = ms
        .heartbeat(beat(first.primary, vec![first.handle]))
        .await
        .expect("beat");
    assert_eq!(r.get_ref().extended, [first.handle]);
    let other = first.primary % 3 + 1;
    let r = ms
        .heartbeat(beat(other, vec![first.handle]))
        .await
        .expect("beat");
    assert!(r.get_ref().extended.is_empty());
}

/// A chunk written without pause keeps its primary and version across
/// several lease lengths: the primary's heartbeats have the leader extend
/// its lease before it runs out (no new grant, which would bump the
/// version), while asking only once some of it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_chunk_keeps_its_lease_across_several_lease_lengths() {
    let cluster = Cluster::start(Spec {
        chunkservers: 3,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    c.create("/busy", 3).await.expect("create");
    c.write_at("/busy", 0, b"first").await.expect("write");
    let first = c.chunks("/busy").await.expect("chunks").remove(0);
    let lease = Duration::from_millis(cluster.spec.lease_ms);
    let until = Instant::now() + lease * 3;
    let mut writes = 0u64;
    while Instant::now() < until {
        let at = (writes % 64) * 4096;
        c.write_at("/busy", at, &writes.to_le_bytes())
            .await
            .expect("write");
        writes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = c.chunks("/busy").await.expect("chunks").remove(0);
    assert_eq!(
        (now.handle, now.version, now.primary),
        (first.handle, first.version, first.primary),
        "after {writes} writes over {:?} the chunk was granted anew instead of its lease extended",
        lease * 3
    );
}

/// A new version reaches the replicas at the grant, not only with the next
/// mutation: a chunk whose version was bumped (a replica reported failed)
/// and then never written again still reads at the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_bump_without_a_later_write_keeps_the_chunk_readable() {
    let mut cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let data = random_bytes(300_000, 3);
    c.create("/f", 0).await.expect("create");
    c.write_at("/f", 0, &data).await.expect("write");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let victim = gfs_tests::a_secondary(&chunk);
    cluster
        .kill_server(cluster.server_index(victim).expect("known"))
        .expect("kill");
    // What a client does after a secondary failed, and then it stops.
    let bumped = c
        .master()
        .write_chunk("/f", 0, &[victim])
        .await
        .expect("write_chunk");
    assert!(bumped.version > chunk.version, "{bumped:?}");
    assert!(bumped.replicas.iter().all(|r| r.node_id != victim));
    let fresh = cluster.client();
    let got = fresh
        .read_at("/f", 0, data.len() as u64)
        .await
        .expect("read");
    assert!(got[..] == data[..]);
}

/// Every replica misses a grant's new version: the masters' calls to the
/// chunkservers are dropped (their heartbeats still pass) while a writer's
/// report of a failed secondary makes the leader grant the chunk again.
/// The grant stays unconfirmed and the replicas that did not take it stay
/// the chunk's, so once the calls pass again the grant completes and the
/// chunk reads and writes, its data intact. (They were forgotten: the
/// chunk then had no replica at all until every server's next full
/// report, which a running master never asks for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_that_miss_every_new_version_stay_the_chunks() {
    use gfs_tests::masters::Partition;
    if !Partition::available() {
        eprintln!("skipped: needs root and nft (scripts/setup installs nftables)");
        return;
    }
    let cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let data = random_bytes(300_000, 5);
    c.create("/f", 0).await.expect("create");
    c.write_at("/f", 0, &data).await.expect("write");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let masters = cluster.masters.addrs();
    let masters: Vec<&str> = masters.iter().map(String::as_str).collect();
    let servers: Vec<&str> = cluster.servers.iter().map(|s| s.addr.as_str()).collect();
    let cut = Partition::calls(&masters, &servers).expect("nft");
    let impatient = gfs_client::MasterClient::new(
        &cluster.masters.addrs(),
        gfs_client::MasterOptions {
            // One attempt, waited for to its end: every round of the grant.
            deadline: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(20),
            ..Default::default()
        },
    )
    .expect("addrs");
    let e = impatient
        .write_chunk("/f", 0, &[gfs_tests::a_secondary(&chunk)])
        .await
        .expect_err("no replica can take a new version");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    drop(cut);
    let start = std::time::Instant::now();
    let fresh = cluster.client();
    loop {
        match fresh.read_at("/f", 0, data.len() as u64).await {
            Ok(got) => {
                assert!(got[..] == data[..], "the chunk reads back otherwise");
                break;
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "the chunk is still unreadable 20 s after the calls pass again: {e}; {:?}",
                c.chunks("/f").await
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.write_at("/f", 0, &data[..1000])
        .await
        .expect("a write after");
}

/// A writer that reports every replica of a chunk failed (each failed one
/// of its mutations, as on a lossy network): they still hold every
/// acknowledged mutation, and with no other replica they stay the
/// chunk's, at a new version. (They were forgotten, and the chunk had no
/// replica left.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_of_every_replica_failed_keeps_them_the_chunks() {
    let cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let data = random_bytes(200_000, 6);
    c.create("/f", 0).await.expect("create");
    c.write_at("/f", 0, &data).await.expect("write");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let all: Vec<u64> = chunk.replicas.iter().map(|r| r.node_id).collect();
    let bumped = c
        .master()
        .write_chunk("/f", 0, &all)
        .await
        .expect("a grant over the failed replicas");
    assert!(bumped.version > chunk.version, "{bumped:?}");
    let mut kept: Vec<u64> = bumped.replicas.iter().map(|r| r.node_id).collect();
    kept.sort_unstable();
    let mut all = all;
    all.sort_unstable();
    assert_eq!(kept, all, "{bumped:?}");
    let got = cluster
        .client()
        .read_at("/f", 0, data.len() as u64)
        .await
        .expect("read");
    assert!(got[..] == data[..]);
}

/// A leader killed after logging a lease grant but before any replica
/// took the new version: every replica is one version behind the chunk
/// table. The next leader completes the grant over them, so the chunk
/// stays readable and writable, its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_between_a_grant_and_the_new_version_leaves_the_chunk_usable() {
    let mut cluster = Cluster::start(Spec {
        chunkservers: 3,
        lease_ms: 1_000,
        lease_grace_ms: 200,
        // Stopped servers still count as live while the grant runs.
        chunkserver_timeout_ms: 10_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    let data = random_bytes(300_000, 11);
    c.create("/f", 3).await.expect("create");
    c.write_at("/f", 0, &data).await.expect("write");
    let before = c.chunks("/f").await.expect("chunks").remove(0);
    // The lease runs out, so the next write needs a new grant.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.chunks("/f").await.expect("chunks")[0].primary != 0 {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The replicas cannot take the new version: the grant is logged, then
    // the leader waits for them, and dies.
    for i in 0..3 {
        cluster.signal_server(i, libc::SIGSTOP).expect("stop");
    }
    let leader = cluster
        .masters
        .leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let master = c.master().clone();
    let grant = tokio::spawn(async move { master.write_chunk("/f", 0, &[]).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.masters.kill(leader).expect("kill the leader");
    for i in 0..3 {
        cluster.signal_server(i, libc::SIGCONT).expect("cont");
    }
    let _ = grant.await;
    // A fresh client, so nothing is cached from before.
    let fresh = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match fresh.read_at("/f", 0, data.len() as u64).await {
            Ok(got) if got.len() == data.len() => break got,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the chunk stayed unreadable after the failover: {other:?} {:?}",
                    fresh.chunks("/f").await
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(got[..] == data[..]);
    fresh
        .write_at("/f", 0, b"after the failover")
        .await
        .expect("write after the failover");
    let after = fresh.chunks("/f").await.expect("chunks").remove(0);
    assert!(
        after.version >= before.version + 2,
        "the grant the dead leader logged was never superseded: {before:?} -> {after:?}"
    );
    assert_eq!(after.replicas.len(), 3, "{after:?}");
    assert_eq!(
        &fresh.read_at("/f", 0, 18).await.expect("read")[..],
        b"after the failover"
    );
}

/// A replica that stops heartbeating during a lease is versioned out
/// before a writer is sent elsewhere, never just left out: left out, it
/// would miss the write and, heartbeating again at the same version, pass
/// for current with the old bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_silent_during_a_lease_is_versioned_out_not_left_behind() {
    let cluster = Cluster::start(Spec {
        chunkservers: 3,
        lease_ms: 30_000,
        chunkserver_timeout_ms: 1_500,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    c.create("/f", 3).await.expect("create");
    c.write_at("/f", 0, b"old bytes").await.expect("write");
    let before = c.chunks("/f").await.expect("chunks").remove(0);
    let silent = gfs_tests::a_secondary(&before);
    let i = cluster.server_index(silent).expect("known");
    cluster.signal_server(i, libc::SIGSTOP).expect("stop");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // A new writer asks the masters while the lease is still live.
    let w = cluster.client();
    w.write_at("/f", 0, b"new bytes").await.expect("write");
    cluster.signal_server(i, libc::SIGCONT).expect("cont");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = c.chunks("/f").await.expect("chunks").remove(0);
    assert!(after.version > before.version, "{before:?} -> {after:?}");
    for r in &after.replicas {
        let (data, _) = gfs_tests::read_replica(&r.addr, after.handle, after.version, 0, 9)
            .await
            .expect("read a listed replica");
        assert_eq!(&data[..], b"new bytes", "replica n{} is listed", r.node_id);
    }
    let stale = &cluster.servers[i].addr;
    if let Ok((data, _)) = gfs_tests::read_replica(stale, before.handle, after.version, 0, 9).await
    {
        assert_eq!(
            &data[..],
            b"new bytes",
            "the silent replica passes for current"
        );
    }
}

/// A stalled chunkserver (stopped, as a hung disk or a paused VM leaves
/// it) costs a reader about a second, not the 15 s call timeout: a read
/// not answered after a second (`hedge_after`) is asked of another
/// replica too, and the slow server is tried last from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_replica_costs_a_reader_a_second_not_the_call_timeout() {
    let cluster = Cluster::start(Spec {
        chunkservers: 3,
        // The masters keep listing the stopped server: the client alone
        // has to go around it.
        chunkserver_timeout_ms: 60_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    let data = random_bytes(8 << 20, 41);
    c.create("/f", 3).await.expect("create");
    c.write_at("/f", 0, &data).await.expect("write");
    assert_eq!(
        c.read_at("/f", 0, 1 << 20).await.expect("read"),
        data[..1 << 20]
    );
    // Three servers, three replicas: every chunk has one on the stopped
    // server, and a 4 MiB read's eight pieces go to all three.
    cluster.signal_server(0, libc::SIGSTOP).expect("stop");
    let started = Instant::now();
    let mut got = Vec::new();
    for at in [0u64, 4 << 20] {
        let piece = c.read_at("/f", at, 4 << 20).await;
        got.push((at, piece));
    }
    let took = started.elapsed();
    cluster.signal_server(0, libc::SIGCONT).expect("cont");
    for (at, piece) in got {
        let piece = piece.expect("read with a replica stopped");
        assert!(
            piece[..] == data[at as usize..at as usize + (4 << 20)],
            "bytes at {at}"
        );
    }
    assert!(
        took < Duration::from_secs(8),
        "8 MiB took {took:?} with one replica stopped"
    );
}

/// A chunkserver that stalls (stopped: a hung disk, a paused VM) while
/// still listed as live costs a writer seconds, not leases and timeouts.
/// The first new chunk is placed on it as its primary (ties go to the
/// lowest id); it does not take the chunk's version, so the chunk is
/// granted again at once to another replica (no client was ever given
/// the first lease, so nothing waits for it to expire), the server is
/// placed on last for the next chunks, and the copy that brings the chunk
/// back to three replicas does not go to it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_chunkserver_costs_a_writer_seconds_not_a_lease() {
    let cluster = Cluster::start(Spec {
        // The masters keep listing the stopped server, and a lease lasts
        // longer than the write may take: nothing may wait one out.
        chunkserver_timeout_ms: 60_000,
        lease_ms: 60_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    let data = random_bytes(8 << 20, 43);
    cluster.signal_server(0, libc::SIGSTOP).expect("stop");
    let started = Instant::now();
    let written = match gfs_client::Writer::create(&c, "/f").await {
        Ok(w) => write_in_pieces(w, &data).await,
        Err(e) => Err(std::io::Error::other(e)),
    };
    let took = started.elapsed();
    cluster.signal_server(0, libc::SIGCONT).expect("cont");
    written.expect("write with a chunkserver stopped");
    assert!(
        took < Duration::from_secs(10),
        "8 MiB took {took:?} with a chunkserver stopped"
    );
    assert_reads_back(&c, "/f", &data).await;
    let stopped = cluster.servers[0].id;
    for chunk in c.chunks("/f").await.expect("chunks") {
        assert!(
            chunk.replicas.iter().all(|r| r.node_id != stopped),
            "chunk {} lists the stopped server: {chunk:?}",
            chunk.index
        );
    }
}

/// A chunkserver that stalls in the middle of a large write, while it is
/// the primary of the chunk written, its lease live: the writer waits out
/// at most that lease and a few push timeouts, never one
/// timeout per piece in flight (pieces waiting their turn to push take
/// the chain the masters give after the stalled server was versioned
/// out), and the file reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunkserver_stalling_mid_write_costs_at_most_a_lease() {
    let cluster = Cluster::start(Spec {
        // One chunk, already leased and written to when its server stops.
        chunk_size_bytes: 64 << 20,
        chunkserver_timeout_ms: 60_000,
        lease_ms: 10_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    let data = random_bytes(24 << 20, 47);
    let mut w = gfs_client::Writer::create(&c, "/f").await.expect("create");
    use tokio::io::AsyncWriteExt;
    let (first, rest) = data.split_at(4 << 20);
    w.write_all(first).await.expect("write");
    w.flush().await.expect("flush");
    // The worst server to lose: the chunk's primary.
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let stopped = cluster.server_index(chunk.primary).expect("known");
    cluster.signal_server(stopped, libc::SIGSTOP).expect("stop");
    let started = Instant::now();
    let written = write_in_pieces(w, rest).await;
    let took = started.elapsed();
    cluster.signal_server(stopped, libc::SIGCONT).expect("cont");
    written.expect("write with a chunkserver stopped");
    assert!(
        took < Duration::from_secs(30),
        "20 MiB took {took:?} with the primary stopped"
    );
    assert_reads_back(&c, "/f", &data).await;
}

/// Writes 60 MiB into one 64 MiB chunk with `lease_ms` leases and stops
/// the server `pick` names (of the chunk's first grant) 100 ms after the
/// last 56 MiB started, while mutations whose data it took are in flight;
/// checks the write succeeded and reads back whole. How long the 56 MiB
/// took.
async fn stall_mid_write(
    lease_ms: u64,
    pick: fn(&gfs_proto::wire::master::ChunkInfo) -> u64,
    seed: u64,
) -> Duration {
    let cluster = Cluster::start(Spec {
        chunk_size_bytes: 64 << 20,
        chunkserver_timeout_ms: 60_000,
        lease_ms,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    let data = random_bytes(60 << 20, seed);
    let mut w = gfs_client::Writer::create(&c, "/f").await.expect("create");
    use tokio::io::AsyncWriteExt;
    let (first, rest) = data.split_at(4 << 20);
    w.write_all(first).await.expect("write");
    w.flush().await.expect("flush");
    let chunk = c.chunks("/f").await.expect("chunks").remove(0);
    let stopped = cluster.server_index(pick(&chunk)).expect("known");
    let rest = rest.to_vec();
    let started = Instant::now();
    let writer = tokio::spawn(async move { write_in_pieces(w, &rest).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.signal_server(stopped, libc::SIGSTOP).expect("stop");
    let written = writer.await.expect("writer");
    let took = started.elapsed();
    cluster.signal_server(stopped, libc::SIGCONT).expect("cont");
    written.expect("write with a server stopped");
    assert_reads_back(&c, "/f", &data).await;
    took
}

/// A secondary that stalls in the middle of a large write: the primary
/// waits for a forwarded mutation as long as a disk may take, but pings a
/// secondary that has not answered for a second and gives up on one that
/// answers no ping either (`data::PROBE`), so the writer loses seconds,
/// not the 10 s peer timeout, and the file reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secondary_stalling_mid_write_costs_seconds_not_the_peer_timeout() {
    let took = stall_mid_write(60_000, gfs_tests::a_secondary, 53).await;
    assert!(
        took < Duration::from_secs(8),
        "56 MiB took {took:?} with a secondary stopped"
    );
}

/// The chunk's primary stalls while mutations are in flight: the writer
/// pings it once a mutation has waited a second, gives up on it when it
/// answers no ping (`data::PROBE`), and then waits for its lease to end
/// (4 s here), not for the 15 s call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_stalling_mid_write_costs_its_lease_not_the_call_timeout() {
    let took = stall_mid_write(4_000, |c| c.primary, 59).await;
    assert!(
        took < Duration::from_secs(12),
        "56 MiB took {took:?} with the primary stopped"
    );
}

/// R11 (chunkserver side): one chunkserver's disk fills up during
/// ingestion. The write completes on the others, no chunk counts the full
/// server as a replica unless it holds the whole chunk, and new chunks are
/// placed elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r11_a_full_disk_on_a_chunkserver_costs_no_data() {
    let Some(cluster) = Cluster::on_small_disks(Spec {
        small_disks: vec![(0, 2 << 20)],
        min_free_bytes: 1 << 20,
        ..Spec::default()
    })
    .await
    else {
        return;
    };
    let c = cluster.client();
    let data = random_bytes(10 << 20, 11);
    let w = gfs_client::Writer::create(&c, "/big")
        .await
        .expect("create");
    write_in_pieces(w, &data).await.expect("write");
    assert_reads_back(&c, "/big", &data).await;
    let full = cluster.servers[0].id;
    let chunks = c.chunks("/big").await.expect("chunks");
    for chunk in &chunks {
        // Every listed replica holds the whole chunk at the current version.
        for r in &chunk.replicas {
            let (_, chunk_length) =
                gfs_tests::read_replica(&r.addr, chunk.handle, chunk.version, 0, 0)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("replica {} of chunk {}: {e}", r.node_id, chunk.index)
                    });
            assert_eq!(
                chunk_length,
                1 << 20,
                "replica {} of chunk {} is partial",
                r.node_id,
                chunk.index
            );
        }
    }
    // Once full, the server gets no new chunks.
    let last = chunks.last().expect("chunks");
    assert!(
        last.replicas.iter().all(|r| r.node_id != full),
        "a new chunk was placed on the full server: {last:?}"
    );
}

/// R11 (master side) during ingestion: the master leader's disk is full
/// when a client starts writing a file of 24 chunks (each a grant and a
/// version confirmation in the log), and kept full. The other two masters
/// go on; the write ends without an error and reads back equal; once
/// space frees the full master serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r11_a_full_disk_on_the_master_leader_mid_ingestion_costs_nothing() {
    let Some(cluster) = Cluster::on_small_disks(Spec {
        small_master_disks: (0..3).map(|i| (i, 64 << 20)).collect(),
        ..Spec::default()
    })
    .await
    else {
        return;
    };
    let c = cluster.client();
    let m = &cluster.masters;
    let full = m.leader(Duration::from_secs(10)).await.expect("a leader");
    let disk = m.disk(full).expect("a small disk");
    disk.fill().expect("fill");
    let data = random_bytes(24 << 20, 12);
    let writer = {
        let (c, data) = (c.clone(), data.clone());
        tokio::spawn(async move {
            let w = gfs_client::Writer::create(&c, "/big")
                .await
                .expect("create");
            write_in_pieces(w, &data).await
        })
    };
    // Kept full while the write goes on: a restarting store frees a little.
    let start = Instant::now();
    while !writer.is_finished() && start.elapsed() < Duration::from_secs(60) {
        disk.fill().expect("fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = writer.await.expect("join").expect("the write");
    assert_eq!(written, data.len() as u64);
    assert!(
        m.log_text(full).contains("No space left on device"),
        "the leader's store never failed: the test filled nothing"
    );
    disk.free().expect("free");
    assert_reads_back(&c, "/big", &data).await;
    let start = Instant::now();
    let serving =
        |s: &gfs_proto::wire::master::StatusReply| s.state == "leader" || s.state == "follower";
    while !m
        .client_of(full)
        .status_of(0)
        .await
        .is_ok_and(|s| serving(&s))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "master {} not back 30 s after space freed:\n{}",
            full + 1,
            m.log_tail(full)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// R11, every disk full: the writer gets a clear `NO_SPACE` error in
/// bounded time, not a retry loop to its deadline.
///
/// (It once ended in `UNAVAILABLE` after 40 s: the full replicas were
/// dropped, the leader answered "no live replica" as `UNAVAILABLE`, and
/// the client went round the masters with it for 30 s; meanwhile the
/// leader kept ordering clones to full servers, which closed the chunk to
/// writes. Now the leader says `NO_REPLICA`, a writer whose replicas ran
/// out of space turns that into `NO_SPACE`, and a server that failed a
/// clone is not sent another for 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r11_every_disk_full_is_a_clear_error() {
    let Some(cluster) = Cluster::on_small_disks(Spec {
        small_disks: (0..4).map(|i| (i, 3 << 20)).collect(),
        ..Spec::default()
    })
    .await
    else {
        return;
    };
    let c = cluster.client();
    c.create("/big", 0).await.expect("create");
    let start = Instant::now();
    let mut err = None;
    for i in 0..16u64 {
        if let Err(e) = c.write_at("/big", i << 20, &random_bytes(1 << 20, i)).await {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("4 disks of 3 MiB cannot hold 16 MiB three times");
    assert!(
        matches!(e.kind, ErrorKind::NoSpace),
        "expected NO_SPACE, got {e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
}

/// R11 with chunk stores sharing one filesystem, as the chunkservers of
/// `gfs cluster start` do: the files of one store's deleted chunks, kept
/// for its next creates (`recycle`), give way as another fills the
/// filesystem, before that one runs out. (They were kept, 64 a store,
/// until the store holding them failed a write of its own; `gfs-bench
/// figure3` at N = 16 then ran a local cluster out of space with 16 GiB of
/// them on the disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_kept_files_of_deleted_chunks_give_way_to_a_store_sharing_the_disk() {
    use gfs_proto::{ChunkHandle, ChunkVersion};
    use gfs_storage_engine::{ChunkStore, StoreConfigFile, StoreError};
    const MIB: u64 = 1 << 20;
    if !gfs_tests::disk::SmallDisk::available() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let disk = gfs_tests::disk::SmallDisk::mount(root.path(), 16 * MIB).expect("tmpfs");
    let open = |name: &str| {
        let mut cfg = StoreConfigFile::for_dir(disk.path().join(name));
        cfg.chunk_size_bytes = MIB;
        cfg.max_request_bytes = MIB;
        async move { ChunkStore::open(cfg).await.expect("open").0 }
    };
    let (a, b) = (open("a").await, open("b").await);
    let data = random_bytes(MIB as usize, 5);
    for i in 1..=8 {
        a.create(ChunkHandle(i), ChunkVersion(1))
            .await
            .expect("create");
        a.write_at(ChunkHandle(i), 0, &data).await.expect("write");
    }
    for i in 1..=8 {
        a.delete(ChunkHandle(i)).await.expect("delete");
    }
    assert!(
        a.usage()[0].pooled_bytes >= 4 * MIB,
        "nothing kept: the test shows nothing"
    );
    // The other store fills the filesystem a chunk at a time; the first
    // trims its pool as its chunkserver does, once a heartbeat.
    let mut written = 0;
    for i in 100..200 {
        let h = ChunkHandle(i);
        let done = match b.create(h, ChunkVersion(1)).await {
            Ok(()) => b.write_at(h, 0, &data).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => written += 1,
            Err(StoreError::NoSpace { .. }) => break,
            Err(e) => panic!("chunk {i}: {e}"),
        }
        a.trim_pools().await;
    }
    let left = a.usage()[0].pooled_bytes;
    drop((a, b));
    assert!(
        written >= 12,
        "the second store wrote {written} MiB of 16 (the first kept {left} bytes of deleted chunks)"
    );
}

/// S2 on the data plane, with raw bytes: an unknown op, a header length
/// past the limit and a push larger than a server takes each get a clear
/// error; a push that stops mid-data and bytes that are neither plane
/// leave the server serving.
async fn data_plane_refuses_bad_input(addr: &str) {
    use gfs_proto::data::{MAGIC, encode_request, read_reply};
    use gfs_proto::wire::chunk::PushReply;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    async fn refused(addr: &str, bytes: &[u8]) -> ErrorKind {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("send");
        let reply =
            tokio::time::timeout(Duration::from_secs(5), read_reply::<PushReply, _>(&mut s))
                .await
                .expect("an answer in time")
                .expect("a well-formed answer");
        reply.map_or_else(|d| d.kind(), |r| panic!("accepted: {r:?}"))
    }
    let mut unknown_op = MAGIC.to_vec();
    unknown_op.extend_from_slice(&[9, 0, 0, 0, 0]);
    assert_eq!(refused(addr, &unknown_op).await, ErrorKind::InvalidArgument);
    let mut huge_header = MAGIC.to_vec();
    huge_header.push(Op::Push as u8);
    huge_header.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        refused(addr, &huge_header).await,
        ErrorKind::InvalidArgument
    );
    let too_big = PushHeader {
        data_id: 7,
        total_bytes: 1 << 40,
        chain: Vec::new(),
    };
    assert_eq!(
        refused(addr, &encode_request(Op::Push, &too_big)).await,
        ErrorKind::InvalidArgument
    );
    for op in [Op::Read, Op::Mutate, Op::Apply] {
        let mut bad_proto = MAGIC.to_vec();
        bad_proto.push(op as u8);
        bad_proto.extend_from_slice(&3u32.to_le_bytes());
        bad_proto.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            refused(addr, &bad_proto).await,
            ErrorKind::InvalidArgument,
            "{op:?}"
        );
    }
    // A push that stops after 3 of 10 bytes, and plain garbage.
    let torn = PushHeader {
        data_id: 8,
        total_bytes: 10,
        chain: Vec::new(),
    };
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut bytes = encode_request(Op::Push, &torn);
    bytes.extend_from_slice(b"abc");
    s.write_all(&bytes).await.expect("send");
    drop(s);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[0x5a; 4096]).await.expect("send");
    drop(s);
}

/// A record append's mutation may reach the replicas before its data (a
/// client sends both at once): each waits for its own copy while the push
/// is under way, and one whose data never comes answers `DataMissing`
/// after a short grace instead of waiting on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutation_ahead_of_its_data_waits_for_it_and_no_longer() {
    use gfs_proto::record::{self, RecordId};
    use gfs_proto::wire::chunk::{MutateReply, Replica};
    let cluster = Cluster::start(Spec {
        lease_ms: 60_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    c.create("/log", 0).await.expect("create");
    c.append_bytes("/log", bytes::Bytes::from_static(b"first"))
        .await
        .expect("append");
    let chunk = c.chunks("/log").await.expect("chunks").remove(0);
    let primary = chunk
        .replicas
        .iter()
        .find(|r| r.node_id == chunk.primary)
        .expect("primary listed");
    let id = RecordId {
        client_id: 77,
        seq: 1,
    };
    let payload = random_bytes(200_000, 5);
    let frame = bytes::Bytes::from(record::encode(id, &payload));
    let mutate = |data_id: u64| MutateRequest {
        handle: chunk.handle,
        version: chunk.version,
        kind: MutationKind::Append as i32,
        offset: 0,
        data_id,
        length: frame.len() as u64,
        secondaries: chunk
            .replicas
            .iter()
            .filter(|r| r.node_id != chunk.primary)
            .map(|r| Replica {
                node_id: r.node_id,
                addr: r.addr.clone(),
            })
            .collect(),
        lease_expires_ms: chunk.lease_expires_ms,
        client_id: id.client_id,
        seq: id.seq,
        sync: false,
    };
    let pool = DataPool::new();
    let t = Duration::from_secs(20);
    // The mutation first; the data 100 ms later, down the whole chain.
    let chain: Vec<String> = chunk.replicas.iter().map(|r| r.addr.clone()).collect();
    let push = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gfs_tests::push_data(&pool, &chain, 0xfeed, frame.clone()).await
    };
    let early = mutate(0xfeed);
    let call = pool.call::<_, MutateReply>(&primary.addr, Op::Mutate, &early, t);
    let (pushed, applied) = tokio::join!(push, call);
    assert_eq!(pushed.expect("push").stored, 3);
    let applied = applied.expect("the mutation waited for its data");
    assert!(applied.failed.is_empty(), "{applied:?}");
    let mut rr = gfs_client::RecordReader::open(&c, "/log")
        .await
        .expect("records");
    let mut got = Vec::new();
    while let Some(r) = rr.next().await.expect("next") {
        got.push(r);
    }
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    assert_eq!((got[1].id, &got[1].data[..]), (id, &payload[..]));
    // Data that never comes: refused after the grace, not the 20 s.
    let started = Instant::now();
    let never = pool
        .call::<_, MutateReply>(&primary.addr, Op::Mutate, &mutate(0xdead), t)
        .await
        .expect_err("no data");
    let waited = started.elapsed();
    assert_eq!(
        detail_of(&never).kind(),
        ErrorKind::DataMissing,
        "{never:?}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
}

/// The chunkserver's gRPC methods that name no other server (a mutation
/// names its secondaries, a clone its source: random bytes there could
/// name a host the server would call).
const CHUNKSERVER_RANDOM_TARGETS: [&str; 6] = [
    "/gfs.chunk.v1.Chunkserver/Apply",
    "/gfs.chunk.v1.Chunkserver/Delete",
    "/gfs.chunk.v1.Chunkserver/Revoke",
    "/gfs.chunk.v1.Chunkserver/CopyLocal",
    "/gfs.chunk.v1.Chunkserver/SetVersion",
    "/gfs.chunk.v1.Chunkserver/Counters",
];

/// S1 at random on a chunkserver's control plane: seeded random bodies,
/// shaped like protobuf or not, to every method that names no other
/// server. Whatever each answers, no chunkserver panics and the cluster
/// still writes and reads a file back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_random_bodies_to_a_chunkservers_methods_panic_none() {
    let cluster = Cluster::start(Spec {
        chunkservers: 3,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let c = cluster.client();
    let data = random_bytes(3 << 20, 43);
    c.create("/before", 3).await.expect("create");
    c.write_at("/before", 0, &data).await.expect("write");
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", cluster.servers[0].addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    // An apply may wait for data or its turn up to the peer timeout; not
    // answering within the wait is an answer in time too.
    let sprayed = spray(
        &ch,
        &CHUNKSERVER_RANDOM_TARGETS,
        150,
        0x6373_7261_6e64,
        Duration::from_millis(300),
    )
    .await;
    let (taken, refused) = (sprayed.taken, sprayed.refused + sprayed.late.len());
    assert!(refused > 0 && taken > 0, "refused {refused}, taken {taken}");
    // Random deletes and versions may have hit the file's chunks on this
    // server: the file is read from the replicas that still hold it.
    assert_eq!(
        c.read_at("/before", 0, data.len() as u64)
            .await
            .expect("read after random bodies"),
        data
    );
    let more = random_bytes(1 << 20, 44);
    c.create("/after", 3).await.expect("create after");
    c.write_at("/after", 0, &more).await.expect("write after");
    assert_eq!(
        c.read_at("/after", 0, more.len() as u64)
            .await
            .expect("read"),
        more
    );
    for i in 0..cluster.servers.len() {
        assert!(
            !cluster.server_log_text(i).contains("panicked"),
            "chunkserver {} panicked:\n{}",
            i + 1,
            cluster.server_log(i)
        );
    }
}

/// Three chunkservers and a fourth in this process whose disk misbehaves
/// on command (`Cluster::add_faulty_server`), with an 8 MiB file written
/// while it was well (so it holds replicas of most of its chunks): the
/// cluster, the faulty server's index, a client, the file's bytes.
async fn cluster_with_a_faulty_disk() -> (Cluster, usize, gfs_client::Client, Vec<u8>) {
    let mut cluster = Cluster::start(Spec {
        chunkservers: 3,
        // As long as a production lease: a primary on the failing disk
        // must not cost its writers the lease.
        lease_ms: 10_000,
        ..Spec::default()
    })
    .await
    .expect("cluster");
    let f = cluster.add_faulty_server().await.expect("faulty server");
    let c = cluster.client();
    c.create("/before", 0).await.expect("create");
    let before = random_bytes(8 << 20, 1);
    c.write_at("/before", 0, &before)
        .await
        .expect("write before");
    (cluster, f, c, before)
}

/// Two writers of 8 MiB files each, started at once: the time each took.
async fn two_writers(cluster: &Cluster) -> Vec<(String, Vec<u8>, Duration)> {
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let c = cluster.client();
            tokio::spawn(async move {
                let path = format!("/w{w}");
                c.create(&path, 0).await.expect("create");
                let data = random_bytes(8 << 20, 10 + w);
                let t = Instant::now();
                c.write_at(&path, 0, &data).await.expect("write");
                (path, data, t.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for w in writers {
        out.push(w.await.expect("writer"));
    }
    out
}

/// Whether `path` reads back as `data`.
async fn reads_back(c: &gfs_client::Client, path: &str, data: &[u8]) -> bool {
    let got = c.read_at(path, 0, data.len() as u64).await.expect("read");
    got[..] == data[..]
}

/// A gray failure: one server's disk stops completing writes while the
/// server itself stays well, heartbeating and answering pings, so the
/// masters go on counting it live. Its pings say how long its disks have
/// completed no I/O, and past 3 s (`PROBE.disk_stalled`) its callers fail
/// the call (a client's to it as primary, a primary's forward to it) and
/// it gives up every lease it holds: writers get past it in seconds
/// (3.1-4.2 s here), where they waited out the peer timeout (10 s), the
/// call timeout (15 s) or, for a primary, its lease (10 s here, as in
/// production). It is versioned out of their chunks, which are copied
/// back to full replication elsewhere; a file written after gets no
/// replica on it (a server reported failed is placed last); every file
/// reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_that_stops_completing_writes_is_worked_around() {
    let (cluster, f, c, before) = cluster_with_a_faulty_disk().await;
    let hung = cluster.faulty[f].id;
    cluster.faulty[f].faults.arm(|x| x.hold_write = u32::MAX);
    for (path, data, took) in two_writers(&cluster).await {
        assert!(took < Duration::from_secs(9), "{path} took {took:?}");
        assert!(
            reads_back(&c, &path, &data).await,
            "{path} reads back other bytes"
        );
    }
    assert!(
        reads_back(&c, "/before", &before).await,
        "/before reads back other bytes"
    );
    c.create("/after", 0).await.expect("create");
    let after = random_bytes(4 << 20, 3);
    c.write_at("/after", 0, &after).await.expect("write after");
    for ch in c.chunks("/after").await.expect("chunks") {
        let on: Vec<u64> = ch.replicas.iter().map(|r| r.node_id).collect();
        assert!(
            !on.contains(&hung),
            "chunk {} of /after placed on the hung server: {on:?}",
            ch.index
        );
    }
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("back to full replication");
}

/// A server whose disks stop completing I/O says so in its heartbeats,
/// and the masters place new chunks on it last before any writer has
/// met the stall: here the stall comes from a write of the test's own,
/// straight to the server's store, which nobody reports. Four new chunks
/// the masters place then get no replica on it (without the heartbeat's
/// figure, chunk 1 went to it in both runs tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_whose_disks_stall_is_placed_on_last_before_any_writer_meets_it() {
    let (cluster, f, c, _) = cluster_with_a_faulty_disk().await;
    let server = &cluster.faulty[f];
    server.faults.arm(|x| x.hold_write = u32::MAX);
    let store = server.store.clone();
    // Held until the server is healed when the test ends.
    let held = tokio::spawn(async move {
        let h = gfs_proto::ChunkHandle(0xd15c);
        let _ = store.create(h, gfs_proto::ChunkVersion(1)).await;
        let _ = store.write_at(h, 0, &[7u8; 4096]).await;
    });
    // Past the stall bound (3 s) and a few heartbeats.
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert!(
        server.store.stalled_for() >= Duration::from_secs(3),
        "the disk stalled"
    );
    // Where the masters place four new chunks (no data written: a write
    // would get past the server on its own, by the probe).
    c.create("/after", 0).await.expect("create");
    for index in 0..4 {
        let ch = c.master().write_chunk("/after", index, &[]).await;
        let on: Vec<u64> = ch
            .expect("a new chunk")
            .replicas
            .iter()
            .map(|r| r.node_id)
            .collect();
        assert!(
            !on.contains(&server.id),
            "chunk {index} placed on the stalled server: {on:?}"
        );
    }
    let data = random_bytes(4 << 20, 5);
    c.write_at("/after", 0, &data).await.expect("write");
    assert!(reads_back(&c, "/after", &data).await);
    drop(held);
}

/// A disk that fails every write with EIO, then every read too: writers
/// get past it at once (it is versioned out), and every file reads back
/// right from the other replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_that_fails_with_eio_is_worked_around() {
    let (cluster, f, c, before) = cluster_with_a_faulty_disk().await;
    cluster.faulty[f].faults.arm(|x| x.write_eio = u32::MAX);
    for (path, data, took) in two_writers(&cluster).await {
        assert!(took < Duration::from_secs(30), "{path} took {took:?}");
        assert!(
            reads_back(&c, &path, &data).await,
            "{path} reads back other bytes"
        );
    }
    cluster.faulty[f].faults.arm(|x| x.read_eio = u32::MAX);
    assert!(
        reads_back(&c, "/before", &before).await,
        "/before reads back other bytes"
    );
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("back to full replication");
}
