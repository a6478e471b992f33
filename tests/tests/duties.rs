//! The leader's background duties against real processes: re-replication
//! after a chunkserver dies for good (fewest replicas first), no clones
//! when it comes back within the grace period, stale replicas collected
//! (R10), a wiped chunkserver refilled (R13), deleted files kept for their
//! retention and then freed on every chunkserver.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use gfs_client::Client;
use gfs_tests::cluster::{Cluster, Spec};
use gfs_tests::random_bytes;

const MIB: usize = 1 << 20;

async fn write_file(c: &Client, path: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = random_bytes(len, seed);
    c.create(path, 0).await.expect("create");
    c.write_at(path, 0, &data).await.expect("write");
    data
}

async fn assert_reads(c: &Client, path: &str, data: &[u8]) {
    let got = c.read_at(path, 0, data.len() as u64).await.expect("read");
    assert!(got[..] == data[..], "{path} reads back different bytes");
}

/// Node ids holding each chunk of `path`, by handle.
async fn replicas(c: &Client, path: &str) -> Vec<(u64, HashSet<u64>)> {
    c.chunks(path)
        .await
        .expect("chunks")
        .into_iter()
        .map(|ch| (ch.handle, ch.replicas.iter().map(|r| r.node_id).collect()))
        .collect()
}

/// `line` without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Clone lines ("re-replicated" with a chunk handle) in the leader's log,
/// in order.
fn cloned_handles(cluster: &Cluster, leader: usize) -> Vec<u64> {
    cluster
        .masters
        .log_text(leader)
        .lines()
        .filter(|l| l.contains("re-replicated"))
        .map(strip_ansi)
        .filter_map(|l| {
            let at = l.find("chunk=")? + "chunk=".len();
            let hex: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_chunkserver_s_chunks_return_to_full_replication_fewest_first() {
    let spec = Spec {
        chunkservers: 5,
        // One clone at a time, slow enough that the order shows.
        clones_per_server: 1,
        clone_rate_bytes_per_s: 8 << 20,
        ..Spec::default()
    };
    let mut cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let data = write_file(&c, "/f", 12 * MIB, 1).await;
    let before = replicas(&c, "/f").await;
    assert!(before.iter().all(|(_, r)| r.len() == 3));
    // Kill the two servers that share the most chunks, for good.
    let mut pairs: HashMap<(u64, u64), usize> = HashMap::new();
    for (_, r) in &before {
        let mut v: Vec<u64> = r.iter().copied().collect();
        v.sort_unstable();
        for i in 0..v.len() {
            for j in i + 1..v.len() {
                *pairs.entry((v[i], v[j])).or_default() += 1;
            }
        }
    }
    // The pair sharing the most chunks that also leaves some chunks with
    // two replicas.
    let mut ranked: Vec<((u64, u64), usize)> = pairs.into_iter().collect();
    ranked.sort_by_key(|(k, n)| (std::cmp::Reverse(*n), *k));
    let split = |a: u64, b: u64| {
        let on = |both: bool| -> HashSet<u64> {
            before
                .iter()
                .filter(|(_, r)| {
                    if both {
                        r.contains(&a) && r.contains(&b)
                    } else {
                        r.contains(&a) != r.contains(&b)
                    }
                })
                .map(|(h, _)| *h)
                .collect()
        };
        (on(true), on(false))
    };
    let ((a, b), (single, double)) = ranked
        .iter()
        .map(|((a, b), _)| ((*a, *b), split(*a, *b)))
        .find(|(_, (s, d))| !s.is_empty() && !d.is_empty())
        .expect("a pair of servers sharing some chunks but not all");
    assert!(!single.is_empty(), "some chunk lives on both {a} and {b}");
    for id in [a, b] {
        let i = cluster.server_index(id).expect("known");
        cluster.kill_server(i).expect("kill");
    }
    let start = Instant::now();
    cluster
        .wait_dead(&[a, b], Duration::from_secs(10))
        .await
        .expect("dead");
    // Until healthy, watching fsck: each copy shows as being made, never
    // as a stale replica (its replica is at version 0 until whole).
    let (mut copying_seen, mut stale_seen) = (0, 0);
    let healthy = loop {
        let r = cluster.fsck().await.expect("fsck");
        for ch in r.files.iter().flat_map(|f| &f.chunks) {
            copying_seen = copying_seen.max(ch.copying);
            stale_seen = stale_seen.max(ch.stale);
        }
        if r.under_replicated == 0 && r.missing == 0 && r.replicas_pending_deletion == 0 {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(70),
            "not healthy: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(copying_seen >= 1, "no copy seen being made");
    assert_eq!(stale_seen, 0, "a copy being made was counted stale");
    let took = start.elapsed();
    assert_eq!(healthy.clones_failed, 0, "{healthy:?}");
    assert!(healthy.clones_done as usize >= 2 * single.len() + double.len());
    let after = replicas(&c, "/f").await;
    for (h, r) in &after {
        assert_eq!(r.len(), 3, "chunk {h:x}: {r:?}");
        assert!(!r.contains(&a) && !r.contains(&b), "dead servers listed");
    }
    assert_reads(&c, "/f", &data).await;
    // Once the leader sees chunks down to one replica, every one of them
    // gets its first clone before any chunk that still has two. (The two
    // servers are declared dead a heartbeat or so apart: in between, the
    // chunks of the first one alone are short, and rightly copied first.)
    let leader = cluster
        .masters
        .leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let order = cloned_handles(&cluster, leader);
    let first_single = order
        .iter()
        .position(|h| single.contains(h))
        .unwrap_or_else(|| panic!("no single cloned: order {order:x?} singles {single:x?}"));
    // No double after the first single: every double was copied while
    // only the first server was known dead, which is also right.
    let next_double = order[first_single..]
        .iter()
        .position(|h| double.contains(h))
        .map_or(order.len(), |i| i + first_single);
    let singles_first: HashSet<u64> = order[..next_double].iter().copied().collect();
    assert!(
        single.is_subset(&singles_first),
        "single-replica chunks {single:x?} not all before the next double: {order:x?}"
    );
    eprintln!(
        "re-replicated {} chunks ({} bytes) in {took:?}",
        healthy.clones_done, healthy.bytes_cloned
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_within_the_grace_period_causes_no_clones() {
    let spec = Spec {
        rereplication_grace_ms: 20_000,
        ..Spec::default()
    };
    let mut cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let data = write_file(&c, "/g", 4 * MIB, 2).await;
    cluster.kill_server(0).expect("kill");
    // Dead by the heartbeat timeout (2 s), within the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = cluster.fsck().await.expect("fsck");
    assert_eq!(r.clones_done + r.clones_in_flight, 0, "{r:?}");
    // `gfs admin fsck` exits 1 while replicas are down, 0 when healthy.
    assert!(r.under_replicated > 0, "server 1 held a replica: {r:?}");
    assert_eq!(fsck_exit(&cluster), Some(1));
    cluster.restart_server(0).expect("restart");
    cluster
        .wait_servers(4, Duration::from_secs(20))
        .await
        .expect("back");
    let r = cluster
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy");
    assert_eq!(r.clones_done + r.clones_in_flight, 0, "{r:?}");
    assert_eq!(fsck_exit(&cluster), Some(0));
    assert_reads(&c, "/g", &data).await;
}

/// Every master killed and restarted while every chunk is fully
/// replicated: the new leader hears from the chunkservers over its first
/// heartbeats, and orders no copy meanwhile (it had: a chunk whose other
/// replicas had not reported yet looked short; 2-4 needless clones of 48
/// chunks, each revoking its chunk's lease first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_every_master_copies_nothing() {
    let mut cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let data = write_file(&c, "/many", 48 * MIB, 5).await;
    for i in 0..3 {
        cluster.masters.kill(i).expect("kill");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        cluster.masters.restart(i).expect("restart");
    }
    cluster
        .masters
        .leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    // Past the chunkserver timeout (2 s): the duties run again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = cluster
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy");
    let clones = (r.clones_done, r.clones_in_flight, r.clones_failed);
    assert_eq!(clones, (0, 0, 0), "clones done, in flight, failed");
    for h in cluster.chunk_handles() {
        assert_eq!(cluster.chunk_replicas(h), 3, "replica files of chunk {h}");
    }
    assert_reads(&c, "/many", &data).await;
}

/// The exit code of `gfs admin fsck` against the cluster.
fn fsck_exit(cluster: &Cluster) -> Option<i32> {
    std::process::Command::new(gfs_tests::binary("gfs").expect("gfs binary"))
        .args(["admin", "fsck"])
        .env("GFS_MASTERS", cluster.masters.addrs().join(","))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run gfs")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r10_stale_replicas_are_collected() {
    let spec = Spec {
        // The stale server is back before its chunks would be cloned.
        rereplication_grace_ms: 60_000,
        ..Spec::default()
    };
    let mut cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let first = random_bytes(300_000, 3);
    c.create("/s", 0).await.expect("create");
    c.write_at("/s", 0, &first).await.expect("write");
    let chunk = c.chunks("/s").await.expect("chunks").remove(0);
    let victim_id = gfs_tests::a_secondary(&chunk);
    let victim = cluster.server_index(victim_id).expect("known");
    cluster.kill_server(victim).expect("kill");
    // A write while it is down: the survivors move to a new version.
    let second = random_bytes(300_000, 4);
    c.write_at("/s", 300_000, &second).await.expect("write");
    cluster.restart_server(victim).expect("restart");
    cluster
        .wait_servers(4, Duration::from_secs(20))
        .await
        .expect("back");
    // Its old replica is deleted; the chunk is whole again (a clone, here
    // or elsewhere, at the current version).
    let r = cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .expect("stale replica collected");
    let ch = r
        .files
        .iter()
        .find(|f| f.path == "/s")
        .expect("listed")
        .chunks[0];
    assert_eq!((ch.stale, ch.live), (0, 3), "{ch:?}");
    let mut all = first.clone();
    all.extend_from_slice(&second);
    assert_reads(&c, "/s", &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r13_a_wiped_chunkserver_rejoins_empty_and_its_chunks_are_copied() {
    let mut cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let data = write_file(&c, "/w", 5 * MIB, 5).await;
    // The server holding most replicas (chunks placed at once can all go
    // to the same three servers).
    let victim = (0..cluster.servers.len())
        .max_by_key(|i| cluster.chunk_files(*i))
        .expect("servers");
    let (before, victim_id) = (cluster.chunk_files(victim), cluster.servers[victim].id);
    assert!(before > 0, "server {victim_id} holds chunks");
    cluster.wipe_server(victim).expect("wipe");
    // Until the leader has its new, empty report (or already repairs).
    let start = Instant::now();
    loop {
        let r = cluster.fsck().await.expect("fsck");
        let held = r
            .servers
            .iter()
            .find(|s| s.node_id == victim_id)
            .map(|s| s.chunks);
        if held == Some(0) || r.clones_done > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("re-replicated");
    assert!(r.clones_done as usize >= before, "{r:?}");
    assert_reads(&c, "/w", &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_files_are_kept_for_their_retention_then_freed_everywhere() {
    let spec = Spec {
        retention_ms: 6_000,
        ..Spec::default()
    };
    let cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    let m = c.master();
    let data = write_file(&c, "/keep", 3 * MIB, 6).await;
    let files = |cluster: &Cluster| {
        (0..cluster.servers.len())
            .map(|i| cluster.chunk_files(i))
            .sum::<usize>()
    };
    assert_eq!(files(&cluster), 9, "3 chunks x 3 replicas");

    // Delete then undelete within retention: the data is all there.
    let id = m.delete("/keep", false).await.expect("delete");
    let listed = m.list_deleted(0, 100).await.expect("ls --deleted");
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        (listed.entries[0].path.as_str(), listed.entries[0].bytes),
        ("/keep", data.len() as u64)
    );
    assert_eq!(m.undelete(id).await.expect("undelete"), "/keep");
    assert_reads(&c, "/keep", &data).await;

    // Deleted for good: after retention its chunks leave every disk.
    let start = Instant::now();
    m.delete("/keep", false).await.expect("delete");
    assert!(
        c.read_at("/keep", 0, 10).await.is_err(),
        "a deleted file is not readable"
    );
    loop {
        if files(&cluster) == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{} chunk files left",
            files(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(5_500),
        "freed before the retention ran out ({:?})",
        start.elapsed()
    );
    assert!(m.list_deleted(0, 100).await.expect("ls").entries.is_empty());

    // --purge frees at once, and so does deleting a deleted path.
    write_file(&c, "/p", MIB, 7).await;
    write_file(&c, "/q", MIB, 8).await;
    let purged = m.delete_with("/p", false, true).await.expect("purge");
    assert_eq!((purged.deleted_id, purged.purged), (0, 1));
    m.delete("/q", false).await.expect("delete");
    let again = m
        .delete_with("/q", false, false)
        .await
        .expect("delete again");
    assert_eq!(again.purged, 1);
    let start = Instant::now();
    while files(&cluster) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "purged chunks not freed: {} files",
            files(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decommission_under_active_ingestion_loses_nothing() {
    use tokio::io::AsyncWriteExt;
    let mut cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let m = c.master();
    let data = random_bytes(10 * MIB, 9);
    let writer = {
        let c = c.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let mut w = gfs_client::Writer::create(&c, "/ingest")
                .await
                .expect("create");
            for piece in data.chunks(256 * 1024) {
                w.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            w.close().await.expect("close")
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    m.decommission(1, false).await.expect("decommission");
    let written = writer.await.expect("writer");
    assert_eq!(written, data.len() as u64);
    // Drained: the status says so once server 1 holds nothing.
    let start = Instant::now();
    loop {
        let leader = cluster
            .masters
            .leader(Duration::from_secs(5))
            .await
            .expect("leader");
        let s = cluster.masters.client_of(leader).status_of(0).await;
        let drained = s.as_ref().ok().and_then(|s| {
            s.draining
                .iter()
                .find(|d| d.node_id == 1)
                .map(|d| d.safe_to_remove)
        });
        if drained == Some(true) && cluster.chunk_files(0) == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not drained: {s:?}, {} chunk files left",
            cluster.chunk_files(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then it can go: nothing is lost, nothing under-replicated.
    cluster.kill_server(0).expect("kill");
    let fresh = cluster.client();
    assert_reads(&fresh, "/ingest", &data).await;
    for (h, r) in replicas(&fresh, "/ingest").await {
        assert!(!r.contains(&1), "chunk {h:x} still on the drained server");
    }
    let r = cluster.fsck().await.expect("fsck");
    assert_eq!((r.under_replicated, r.missing), (0, 0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_chunkserver_receives_replicas_from_fuller_ones() {
    let spec = Spec {
        small_disks: (0..4).map(|i| (i, 40 << 20)).collect(),
        ..Spec::default()
    };
    let mut cluster = Cluster::start(spec).await.expect("cluster");
    let c = cluster.client();
    cluster.kill_server(3).expect("kill");
    cluster
        .wait_dead(&[4], Duration::from_secs(10))
        .await
        .expect("dead");
    let data = write_file(&c, "/fill", 8 * MIB, 10).await;
    assert_eq!(cluster.chunk_files(3), 0);
    cluster.restart_server(3).expect("restart");
    // Moves until the disks are within 10 % of each other, never below
    // three replicas.
    let start = Instant::now();
    loop {
        let r = cluster.fsck().await.expect("fsck");
        assert_eq!(r.missing, 0);
        let used: Vec<f64> = r
            .servers
            .iter()
            .map(|s| s.used_bytes as f64 / s.capacity_bytes.max(1) as f64)
            .collect();
        let spread =
            used.iter().cloned().fold(0.0, f64::max) - used.iter().cloned().fold(1.0, f64::min);
        if cluster.chunk_files(3) >= 2 && spread < 0.12 && r.replicas_pending_deletion == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not rebalanced: used {used:?}, {} chunks on the new server",
            cluster.chunk_files(3)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .expect("healthy");
    assert_eq!(r.under_replicated, 0);
    assert_reads(&c, "/fill", &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_policy_sets_replication_and_a_short_retention() {
    let cluster = Cluster::start(Spec::default()).await.expect("cluster");
    let c = cluster.client();
    let m = c.master();
    m.mkdir("/tmp/jobs", true).await.expect("mkdir");
    m.set_policy("/tmp", 2, 1_000).await.expect("policy");
    let data = write_file(&c, "/tmp/jobs/part", 2 * MIB, 12).await;
    assert_eq!(
        m.stat("/tmp/jobs/part", false)
            .await
            .expect("stat")
            .replication,
        2
    );
    for (h, r) in replicas(&c, "/tmp/jobs/part").await {
        assert_eq!(r.len(), 2, "chunk {h:x}");
    }
    let dir = m.stat("/tmp", false).await.expect("stat dir");
    assert_eq!((dir.replication, dir.retention_ms), (2, 1_000));
    let files = |cluster: &Cluster| {
        (0..cluster.servers.len())
            .map(|i| cluster.chunk_files(i))
            .sum::<usize>()
    };
    assert_eq!(files(&cluster), 4);
    assert_reads(&c, "/tmp/jobs/part", &data).await;
    // Deleted below /tmp: gone after one second, not the default day.
    m.delete("/tmp/jobs/part", false).await.expect("delete");
    let start = Instant::now();
    while files(&cluster) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} chunk files left",
            files(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
