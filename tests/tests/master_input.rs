//! Bad input against the master services (RELIABILITY.md S1, S3, S5) and
//! leases across a failover. Every bad request gets a clear error, touches
//! no state, and the process stays up.

#![allow(clippy::unwrap_used)] // a test states its expectations by unwrapping

use std::time::Duration;

use gfs_proto::wire::master::master_chunkserver_client::MasterChunkserverClient;
use gfs_proto::wire::master::{ChunkReport, HeartbeatRequest};
use gfs_proto::wire::{ErrorKind, detail_of};
use gfs_tests::masters::{MasterCluster, Timings};
use gfs_tests::raw::{Sprayed, raw_unary, spray};
use tonic::transport::Channel;

async fn raw_call(ch: Channel, method: &str, body: Vec<u8>) -> tonic::Status {
    match raw_unary(ch, method, body).await {
        Ok(r) => panic!("{method} accepted garbage, answered {r:?}"),
        Err(s) => s,
    }
}

async fn leader_channel(c: &MasterCluster) -> Channel {
    let l = c.leader(Duration::from_secs(10)).await.expect("leader");
    Channel::from_shared(format!("http://{}", c.masters[l].addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_malformed_protobuf_is_invalid_argument_and_the_master_stays_up() {
    let c = MasterCluster::start(3, Timings::default()).expect("start");
    let ch = leader_channel(&c).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // path field (2) claims 5 bytes, one follows
        ("/gfs.master.v1.MasterMeta/Create", vec![0x12, 0x05, b'/']),
        // path field (2) with the varint wire type
        ("/gfs.master.v1.MasterMeta/Create", vec![0x10, 0x01]),
        // huge length prefix
        (
            "/gfs.master.v1.MasterMeta/Mkdir",
            vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, b'/'],
        ),
        // truncated varint
        ("/gfs.master.v1.MasterMeta/Stat", vec![0x10, 0xff]),
        // well-formed envelope, undecodable Raft payload
        (
            "/gfs.master.v1.Raft/AppendEntries",
            vec![0x0a, 0x03, 0xff, 0xfe, 0xfd],
        ),
        ("/gfs.master.v1.Raft/Vote", vec![0x0a, 0x01, 0x07]),
        ("/gfs.master.v1.MasterChunkserver/Heartbeat", vec![0x08]),
    ];
    for (method, body) in cases {
        let s = raw_call(ch.clone(), method, body.clone()).await;
        assert_eq!(
            s.code(),
            tonic::Code::InvalidArgument,
            "{method} {body:?}: {s:?}"
        );
    }
    // Over the size limit: refused before decoding (S2's bound).
    let s = raw_call(
        ch.clone(),
        "/gfs.master.v1.MasterMeta/Create",
        vec![0u8; 17 << 20],
    )
    .await;
    assert!(
        matches!(
            s.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{s:?}"
    );
    // Still up, still serving, nothing created.
    let cl = c.client();
    cl.create("/ok", 0).await.expect("create after garbage");
    let names: Vec<String> = cl
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["ok"]);
}

/// Every method a client or a peer master may call, but those that take
/// an address (a heartbeat, adding a master): random bytes there could
/// name a host, and the masters would call it.
const RANDOM_TARGETS: [&str; 16] = [
    "/gfs.master.v1.MasterMeta/Mkdir",
    "/gfs.master.v1.MasterMeta/Create",
    "/gfs.master.v1.MasterMeta/Stat",
    "/gfs.master.v1.MasterMeta/List",
    "/gfs.master.v1.MasterMeta/Rename",
    "/gfs.master.v1.MasterMeta/Delete",
    "/gfs.master.v1.MasterMeta/Undelete",
    "/gfs.master.v1.MasterMeta/ListDeleted",
    "/gfs.master.v1.MasterMeta/Snapshot",
    "/gfs.master.v1.MasterMeta/SetPolicy",
    "/gfs.master.v1.MasterMeta/Locate",
    "/gfs.master.v1.MasterMeta/WriteChunk",
    "/gfs.master.v1.MasterMeta/ReportLength",
    "/gfs.master.v1.Raft/AppendEntries",
    "/gfs.master.v1.Raft/Vote",
    "/gfs.master.v1.Raft/InstallSnapshot",
];

/// S1 at random: seeded random bodies, shaped like protobuf or not, to
/// every method but those that take an address. Whatever each answers,
/// no master panics and the cluster still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_random_bodies_to_every_method_panic_no_master() {
    let c = MasterCluster::start(3, Timings::default()).expect("start");
    let ch = leader_channel(&c).await;
    let wait = Duration::from_secs(5);
    let Sprayed {
        taken,
        refused,
        late,
    } = spray(&ch, &RANDOM_TARGETS, 100, 0x5331_7261_6e64, wait).await;
    if let Some((method, round)) = late.first() {
        panic!("{method} (round {round}) did not answer in 5 s");
    }
    assert!(refused > 0 && taken > 0, "refused {refused}, taken {taken}");
    // Still serving (a random vote may have cost the leader its term).
    let cl = c.client();
    cl.create("/after-random", 0)
        .await
        .expect("create after random bodies");
    cl.stat("/after-random", false).await.expect("stat");
    for i in 0..3 {
        let log = c.log_text(i);
        assert!(
            !log.contains("panicked"),
            "master {} panicked:\n{}",
            i + 1,
            c.log_tail(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bad_paths_are_rejected_before_touching_state() {
    let c = MasterCluster::start(1, Timings::default()).expect("start");
    let cl = c.client();
    c.leader(Duration::from_secs(10)).await.expect("leader");
    let long_component = format!("/{}", "a".repeat(256));
    let long_path = "/abcdefgh".repeat(512);
    for p in [
        "/a/../b",
        "/a/./b",
        "//a",
        "/a/",
        "",
        "a/b",
        "/a\0b",
        long_component.as_str(),
        long_path.as_str(),
    ] {
        let e = cl.create(p, 0).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath, "{p:?}: {e}");
        let e = cl.mkdir(p, true).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath, "{p:?}: {e}");
        let e = cl.rename("/x", p).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath, "{p:?}: {e}");
        let e = cl.stat(p, false).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidPath, "{p:?}: {e}");
    }
    // Non-UTF-8 cannot even be a protobuf string.
    let l = c.leader(Duration::from_secs(1)).await.unwrap();
    let ch = Channel::from_shared(format!("http://{}", c.masters[l].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = raw_call(
        ch,
        "/gfs.master.v1.MasterMeta/Create",
        vec![0x12, 0x03, b'/', 0xff, 0xfe],
    )
    .await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(cl.list("/").await.unwrap().is_empty(), "state was touched");
}

fn beat(id: u64, addr: &str, chunks: &[(u64, u64)], extend: &[u64]) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: id,
        addr: addr.into(),
        rack: format!("rack{id}"),
        capacity_bytes: 1 << 40,
        used_bytes: id << 30,
        draining: false,
        full_report: true,
        chunks: chunks
            .iter()
            .map(|(h, v)| ChunkReport {
                handle: *h,
                version: *v,
                length: 0,
            })
            .collect(),
        extend_leases: extend.to_vec(),
        changed: Vec::new(),
        removed: Vec::new(),
        relinquish: Vec::new(),
        disk_stalled_ms: 0,
    }
}

/// Fake chunkservers heartbeating to every master.
async fn heartbeat_all(c: &MasterCluster, chunks: &[(u64, u64)]) {
    for m in &c.masters {
        let Ok(ch) = Channel::from_shared(format!("http://{}", m.addr))
            .unwrap()
            .connect()
            .await
        else {
            continue;
        };
        let mut cs = MasterChunkserverClient::new(ch);
        for id in 1..=3u64 {
            let _ = cs
                .heartbeat(beat(id, &format!("127.0.0.1:{}", 9000 + id), chunks, &[]))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_bad_handles_offsets_and_reports_get_clear_errors() {
    let c = MasterCluster::start(1, Timings::default()).expect("start");
    let l = c.leader(Duration::from_secs(10)).await.expect("leader");
    let cl = c.client();
    heartbeat_all(&c, &[]).await;
    cl.create("/f", 0).await.unwrap();
    // Skipping chunk indexes, lengths past the chunks, overflowing values.
    let e = cl.write_chunk("/f", 1, &[]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let e = cl.report_length("/f", u64::MAX).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(cl.locate("/f", u64::MAX).await.unwrap().is_none());
    let e = cl.undelete(u64::MAX).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = cl.write_chunk("/nope", 0, &[]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // Nonsense heartbeats.
    let ch = Channel::from_shared(format!("http://{}", c.masters[l].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut cs = MasterChunkserverClient::new(ch);
    for bad in [
        beat(0, "127.0.0.1:1", &[], &[]),
        beat(4, "", &[], &[]),
        HeartbeatRequest {
            used_bytes: u64::MAX,
            ..beat(5, "127.0.0.1:1", &[], &[])
        },
    ] {
        let s = cs.heartbeat(bad).await.unwrap_err();
        assert_eq!(detail_of(&s).kind(), ErrorKind::InvalidArgument, "{s:?}");
    }
    // Extending a lease on an unknown handle extends nothing.
    let r = cs
        .heartbeat(beat(1, "127.0.0.1:9001", &[], &[424242]))
        .await
        .unwrap();
    assert!(r.get_ref().extended.is_empty());
    // The file is intact.
    let info = cl.stat("/f", false).await.unwrap();
    assert_eq!((info.length, info.chunks), (0, 0));
}
