//! Clocks that disagree: chunkservers, clients and master leaders whose
//! wall clock is skewed against the others' (libfaketime). Leases are stamped by the
//! leader's clock; a primary times them by its estimate of that clock
//! (`gfs_chunkserver::leader_clock`), a client by its monotonic clock, so
//! neither wall clock matters.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gfs_client::RecordReader;
use gfs_proto::data::DataPool;
use gfs_proto::wire::ErrorKind;
use gfs_proto::wire::chunk::chunkserver_client::ChunkserverClient;
use gfs_proto::wire::chunk::{MutateRequest, MutationKind};
use gfs_proto::wire::detail_of;
use gfs_tests::clock;
use gfs_tests::cluster::{Cluster, Spec};
use gfs_tests::random_bytes;

/// A cluster whose chunkservers' clocks are skewed by `skews` (seconds,
/// one per server from the first), or `None` without libfaketime.
async fn skewed_cluster(skews: &[i64]) -> Option<Cluster> {
    Cluster::on_skewed_clocks(Spec {
        skewed_clocks: skews.iter().copied().enumerate().collect(),
        ..Spec::default()
    })
    .await
}

/// Three of four chunkservers' clocks 30 s ahead, 30 s behind and 90 s
/// ahead of the masters' (leases here are 3 s): every write and append
/// goes through at once and reads back. Before leases were timed by the
/// leader's clock, a server ahead refused every lease it was given as
/// expired, and each chunk it was primary of took no mutation at all
/// (the writes failed after the 40 s deadline, "no valid lease").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunkservers_whose_clocks_disagree_take_writes_and_appends() {
    let Some(cluster) = skewed_cluster(&[30, -30, 90]).await else {
        return;
    };
    let c = cluster.client();
    let mut primaries = BTreeSet::new();
    for f in 0..6u64 {
        let path = format!("/f{f}");
        c.create(&path, 0).await.expect("create");
        let data = random_bytes((3 << 20) + 100, f);
        tokio::time::timeout(Duration::from_secs(15), c.write_at(&path, 0, &data))
            .await
            .unwrap_or_else(|_| panic!("writing {path} took over 15 s"))
            .expect("write");
        for ch in c.chunks(&path).await.expect("chunks") {
            primaries.insert(ch.primary);
        }
        let got = c.read_at(&path, 0, data.len() as u64).await.expect("read");
        assert!(got[..] == data[..], "{path} reads back other bytes");
    }
    let skewed: BTreeSet<u64> = [1, 2, 3].into();
    assert!(
        primaries.intersection(&skewed).count() > 0,
        "no skewed server was ever primary: {primaries:?}"
    );
    // Appenders to one file, across chunk boundaries.
    c.create("/log", 0).await.expect("create the log");
    let appenders: Vec<_> = (0..4u64)
        .map(|a| {
            let c = cluster.client();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..24u64 {
                    let rec = random_bytes(64 << 10, 1_000 * a + i);
                    tokio::time::timeout(Duration::from_secs(15), c.append("/log", &rec))
                        .await
                        .unwrap_or_else(|_| panic!("an append took over 15 s"))
                        .expect("append");
                    acked.push(rec);
                }
                acked
            })
        })
        .collect();
    let mut acked = BTreeSet::new();
    for a in appenders {
        acked.extend(a.await.expect("appender"));
    }
    let mut rr = RecordReader::open(&c, "/log").await.expect("records");
    let mut seen = 0;
    while let Some(r) = rr.next().await.expect("next record") {
        assert!(acked.contains(&r.data[..]), "a record nobody appended");
        seen += 1;
    }
    assert_eq!(seen, acked.len(), "every acknowledged record exactly once");
}

/// A master leader whose clock is 30 s behind the chunkservers', then
/// one 30 s ahead: the leases each grants (stamped by its clock) are
/// honoured, so a write of new chunks goes through at once under each.
/// Before, under the one behind, every lease it granted had expired by the
/// chunkservers' clocks and the write failed after its 40 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_from_master_leaders_whose_clocks_disagree_are_honoured() {
    let Some(cluster) = Cluster::on_skewed_clocks(Spec {
        skewed_master_clocks: vec![(0, -30), (1, 30)],
        ..Spec::default()
    })
    .await
    else {
        return;
    };
    let c = cluster.client();
    for (leader, path) in [(0, "/behind"), (1, "/ahead")] {
        cluster
            .masters
            .make_leader(leader)
            .await
            .expect("hand over");
        c.create(path, 0).await.expect("create");
        let data = random_bytes((3 << 20) + 7, leader as u64);
        tokio::time::timeout(Duration::from_secs(15), c.write_at(path, 0, &data))
            .await
            .unwrap_or_else(|_| panic!("writing {path} took over 15 s"))
            .expect("write");
        let led = cluster.masters.leader(Duration::from_secs(10)).await;
        assert_eq!(led.expect("a leader"), leader, "the write ran under it");
        let got = c.read_at(path, 0, data.len() as u64).await.expect("read");
        assert!(got[..] == data[..], "{path} reads back other bytes");
    }
}

/// `gfs` with its wall clock 45 s ahead of the masters' puts a file, and
/// with it 45 s behind gets it back unchanged: a client times its cached
/// leases by its monotonic clock (`lease_left_ms`), and the leases it
/// names to primaries are the leader's stamps, whatever its own clock
/// says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_clock_disagrees_puts_and_gets() {
    let Some(cluster) = skewed_cluster(&[]).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = random_bytes((5 << 20) + 4321, 9);
    let (src, out) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&src, &data).expect("write local");
    let gfs = |skew: i64, args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(gfs_tests::binary("gfs").expect("gfs binary"))
            .args(args)
            .env("GFS_MASTERS", cluster.masters.addrs().join(","))
            .envs(clock::skewed(skew))
            .output()
            .expect("run gfs");
        assert!(
            o.status.success(),
            "gfs {args:?} with its clock {skew:+} s: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    gfs(45, &["put".as_ref(), src.as_os_str(), "/put".as_ref()]);
    gfs(-45, &["get".as_ref(), "/put".as_ref(), out.as_os_str()]);
    assert!(
        std::fs::read(&out).expect("read local") == data,
        "the file came back changed"
    );
}

/// A primary whose clock is 30 s behind the masters' stops taking
/// mutations under a lease once the leader's clock passes its expiry.
/// Before, it took one for 30 s more: a write claiming the expired lease
/// (no secondaries named) was applied and acknowledged on that replica
/// alone, at the chunk's current version, a replica the others no longer
/// equalled without the masters knowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_behind_the_masters_clock_honours_the_leaders_expiry() {
    let Some(cluster) = skewed_cluster(&[-30]).await else {
        return;
    };
    let c = cluster.client();
    // Files until the skewed server (id 1) is some chunk's primary.
    let mut found = None;
    for f in 0..16u64 {
        let path = format!("/f{f}");
        c.create(&path, 0).await.expect("create");
        c.write_at(&path, 0, &random_bytes(4 << 20, f))
            .await
            .expect("write");
        found = c
            .chunks(&path)
            .await
            .expect("chunks")
            .into_iter()
            .find(|ch| ch.primary == 1)
            .map(|ch| (path, ch));
        if found.is_some() {
            break;
        }
    }
    let (path, chunk) = found.expect("server 1 was the primary of no chunk of 16 files");
    // The leader's last word on the lease, until it has run out there.
    let mut claim = chunk.lease_expires_ms;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = c
            .chunks(&path)
            .await
            .expect("chunks")
            .into_iter()
            .find(|ch| ch.handle == chunk.handle)
            .expect("the chunk");
        if now.primary == 0 {
            break;
        }
        assert_eq!(now.version, chunk.version, "no other lease came");
        claim = claim.max(now.lease_expires_ms);
        assert!(Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = &cluster.servers[0].addr;
    let pool = DataPool::new();
    let late = bytes::Bytes::from_static(b"LATE!");
    let pushed = gfs_tests::push_data(&pool, std::slice::from_ref(addr), 77, late)
        .await
        .expect("push");
    assert_eq!(pushed.stored, 1);
    let mut cs = ChunkserverClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let late = cs
        .mutate(MutateRequest {
            handle: chunk.handle,
            version: chunk.version,
            kind: MutationKind::Write as i32,
            offset: 0,
            data_id: 77,
            length: 5,
            secondaries: Vec::new(),
            lease_expires_ms: claim,
            client_id: 0,
            seq: 0,
            sync: false,
        })
        .await;
    match late {
        Ok(r) => panic!(
            "a mutation under a lease the leader let expire was taken: {:?}",
            r.into_inner()
        ),
        Err(s) => assert_eq!(detail_of(&s).kind(), ErrorKind::NotPrimary, "{s:?}"),
    }
    let (head, _) = gfs_tests::read_replica(addr, chunk.handle, chunk.version, 0, 5)
        .await
        .expect("read the replica");
    assert_ne!(&head[..], b"LATE!", "the late write landed");
}
