//! Three real `gfs-master` processes under faults (RELIABILITY.md R2, R4,
//! R5, R13, graceful hand-over) with a workload whose every reply is
//! predicted (see `gfs_tests::history`).

#![allow(clippy::unwrap_used)] // a test states its expectations by unwrapping

use std::time::Duration;

use gfs_proto::wire::ErrorKind;
use gfs_tests::disk::SmallDisk;
use gfs_tests::history::Workload;
use gfs_tests::link::Shape;
use gfs_tests::masters::{MasterCluster, Partition, Timings};
use gfs_tests::metrics::{scrape, sum};

const LEADER_WAIT: Duration = Duration::from_secs(10);

fn assert_clean(c: &MasterCluster, report: &gfs_tests::history::Report) {
    if !report.violations.is_empty() {
        for i in 0..c.masters.len() {
            eprintln!("--- master {} log tail ---\n{}", i + 1, c.log_tail(i));
        }
    }
    assert!(
        report.violations.is_empty(),
        "{} violations, first: {:?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(5)]
    );
    assert!(
        report.ops > 50,
        "too little work to mean anything: {}",
        report.ops
    );
}

async fn start() -> MasterCluster {
    let c = MasterCluster::start(3, Timings::default()).expect("start masters");
    c.leader(LEADER_WAIT).await.expect("a leader");
    c
}

/// Mutations go to whichever master leads; reads go through a client that
/// starts at the last master, so a read that is not linearizable (served
/// by a follower behind the leader) shows up as a violation.
fn workload(c: &MasterCluster, root: &str) -> Workload {
    let mut reversed = c.addrs();
    reversed.reverse();
    let checker = gfs_client::MasterClient::new(&reversed, Default::default()).expect("addrs");
    Workload::start(c.client(), checker, 3, root)
}

/// Three times: after `apart`, kill -9 the leader, and restart it 400 ms
/// later.
async fn kill_the_leader_three_times(c: &mut MasterCluster, apart: Duration) {
    for _ in 0..3 {
        tokio::time::sleep(apart).await;
        let l = c.leader(LEADER_WAIT).await.expect("a leader");
        c.kill(l).expect("kill leader");
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.restart(l).expect("restart");
    }
}

/// R2: kill -9 the leader three times under load; every reply stays
/// exactly as predicted and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_kill_the_leader_repeatedly() {
    let mut c = start().await;
    let w = workload(&c, "/r2");
    kill_the_leader_three_times(&mut c, Duration::from_millis(800)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
}

/// R4: SIGSTOP the leader past the election timeout. A request it received
/// while stopped is never acknowledged, and once resumed it serves no stale
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_stopped_leader_acknowledges_nothing_and_reads_nothing_stale() {
    let mut c = start().await;
    let w = workload(&c, "/r4");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = c.leader(LEADER_WAIT).await.expect("a leader");
    c.stop(old).expect("SIGSTOP");
    // A create sent to the stopped leader alone.
    let lonely = c.client_of(old);
    let mut opts = gfs_client::MasterOptions {
        deadline: Duration::from_secs(4),
        attempt_timeout: Duration::from_secs(4),
        ..Default::default()
    };
    opts.backoff_max = Duration::from_millis(50);
    let stuck = gfs_client::MasterClient::new(&[c.masters[old].addr.clone()], opts).unwrap();
    let pending = tokio::spawn(async move { stuck.create("/r4-stuck", 0).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new = c.leader(LEADER_WAIT).await.expect("a new leader");
    assert_ne!(new, old);
    // Written while the old leader sleeps.
    let cl = c.client();
    cl.create("/r4-during", 0)
        .await
        .expect("create during the stop");
    c.cont(old).expect("SIGCONT");
    match lonely.stat("/r4-during", false).await {
        Ok(_) => {}
        Err(e) => assert!(
            matches!(e.kind, ErrorKind::NotLeader | ErrorKind::Unavailable),
            "old leader answered a linearizable read wrongly: {e}"
        ),
    }
    let stuck_result = pending.await.expect("join");
    assert!(
        stuck_result.is_err(),
        "the deposed leader acknowledged a create: {stuck_result:?}"
    );
    let e = cl.stat("/r4-stuck", false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
}

/// R3: partition the leader away from the other masters (nftables), then
/// heal. The majority elects a new leader; the old one acknowledges nothing
/// and serves no stale linearizable read; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_partitioned_leader_acknowledges_nothing() {
    if !Partition::available() {
        eprintln!("skipped: needs root and nft (scripts/setup installs nftables)");
        return;
    }
    let c = start().await;
    let w = workload(&c, "/r3");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = c.leader(LEADER_WAIT).await.expect("a leader");
    let cut = Partition::isolate(&c, old).expect("nft partition");
    // The majority side elects a leader of its own.
    let start = std::time::Instant::now();
    let new = loop {
        let mut found = None;
        for i in (0..3).filter(|i| *i != old) {
            if let Ok(s) = c.client_of(i).status_of(0).await
                && s.state == "leader"
            {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(start.elapsed() < LEADER_WAIT, "majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cl = c.client();
    c.client_of(new)
        .create("/r3-during", 0)
        .await
        .expect("create on the majority");
    // The isolated master: a linearizable read never misses that create,
    // and a create sent to it alone is never acknowledged.
    match c.client_of(old).stat("/r3-during", false).await {
        Ok(_) => panic!("the isolated master confirmed a read without a quorum"),
        Err(e) => assert!(
            matches!(e.kind, ErrorKind::NotLeader | ErrorKind::Unavailable),
            "{e}"
        ),
    }
    let e = c.client_of(old).create("/r3-lost", 0).await.unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::NotLeader | ErrorKind::Unavailable),
        "{e}"
    );
    // Stale reads are allowed there, and say so by being explicit.
    let _ = c.client_of(old).stat("/", true).await.expect("stale read");
    drop(cut);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let e = cl.stat("/r3-lost", false).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    cl.stat("/r3-during", false)
        .await
        .expect("acknowledged create kept");
    let report = w.finish().await;
    assert_clean(&c, &report);
}

/// R5: kill -9 every master at once and restart them; in-flight mutations
/// are retried by the client and everything acknowledged is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_kill_every_master_and_restart() {
    let mut c = start().await;
    let w = workload(&c, "/r5");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 0..3 {
        c.kill(i).expect("kill");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        c.restart(i).expect("restart");
    }
    c.leader(LEADER_WAIT).await.expect("a leader after restart");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
}

/// R13: a follower whose data directory is wiped rejoins by Raft snapshot
/// (the leader has compacted its log) with no manual step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_wiped_master_rejoins_by_snapshot() {
    let timings = Timings {
        snapshot_every: Some(40),
        ..Timings::default()
    };
    let mut c = MasterCluster::start(3, timings).expect("start");
    let l = c.leader(LEADER_WAIT).await.expect("leader");
    let w = workload(&c, "/r13");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
    let f = (l + 1) % 3;
    c.wipe(f).expect("wipe");
    let want = c.client_of(l).status_of(0).await.expect("leader status");
    let start = std::time::Instant::now();
    loop {
        if let Ok(s) = c.client_of(f).status_of(0).await
            && s.applied_index >= want.applied_index
        {
            assert_eq!(
                s.files, want.files,
                "rejoined master holds the same namespace"
            );
            assert!(s.snapshot_index > 0, "caught up without a snapshot: {s:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "wiped master did not catch up:\n{}",
            c.log_tail(f)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its applied state serves stale reads of what was written before.
    let listed = c
        .client_of(f)
        .list_page("/r13", "", 100, true)
        .await
        .expect("stale list");
    assert_eq!(listed.entries.len(), 3);
}

/// SIGTERM on the leader hands leadership over before exiting; the cluster
/// keeps serving and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over() {
    let mut c = start().await;
    let cl = c.client();
    cl.create("/before", 0).await.expect("create");
    let l = c.leader(LEADER_WAIT).await.expect("leader");
    let status = c.terminate(l).expect("terminate");
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        c.log_tail(l)
    );
    assert!(
        c.log_tail(l).contains("leadership handed over"),
        "{}",
        c.log_tail(l)
    );
    let nl = c.leader(LEADER_WAIT).await.expect("new leader");
    assert_ne!(nl, l);
    cl.create("/after", 0)
        .await
        .expect("create after hand-over");
    cl.stat("/before", false).await.expect("nothing lost");
}

/// How long a master whose disk filled up may take to serve again once
/// space frees (it starts again from its store every 4 s at most).
const RECOVERY: Duration = Duration::from_secs(30);

/// Masters on small disks (R11): a tmpfs of 64 MiB each.
fn on_small_disks() -> Option<MasterCluster> {
    if !SmallDisk::available() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return None;
    }
    let c = MasterCluster::start(
        3,
        Timings {
            small_disks: (0..3).map(|i| (i, 64 << 20)).collect(),
            ..Timings::default()
        },
    )
    .expect("start masters");
    Some(c)
}

/// Keeps master `i`'s disk full for `hold` (a restarting master frees
/// some space as its store recovers: taken back at once), and waits until
/// the master says, in its answers, that it is out of service for want of
/// space.
async fn hold_full(c: &MasterCluster, i: usize, hold: Duration) {
    let disk = c.disk(i).expect("a small disk");
    let start = std::time::Instant::now();
    let mut said = None;
    while start.elapsed() < hold || said.is_none() {
        disk.fill().expect("fill");
        if said.is_none()
            && let Err(e) = c.client_of(i).status_of(0).await
            && e.message.contains("out of service")
        {
            said = Some(e);
        }
        assert!(
            start.elapsed() < hold + RECOVERY,
            "master {} never said it was out of service:\n{}",
            i + 1,
            c.log_tail(i)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = said.expect("checked above");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("No space left on device"), "{e}");
}

/// Waits until master `i` serves again (leads, or follows the leader
/// with everything the leader had applied when this was called).
async fn rejoined(c: &MasterCluster, i: usize) {
    let first = c.leader(LEADER_WAIT).await.expect("a leader");
    let target = c
        .client_of(first)
        .status_of(0)
        .await
        .expect("status")
        .applied_index;
    let start = std::time::Instant::now();
    loop {
        // Masters that all came back at once may still change leader.
        let leader = c.leader(Duration::from_secs(1)).await;
        let s = c.client_of(i).status_of(0).await;
        if let (Ok(leader), Ok(s)) = (&leader, &s)
            && s.state == if i == *leader { "leader" } else { "follower" }
            && s.leader_id == c.masters[*leader].id
            && s.applied_index >= target
        {
            return;
        }
        if start.elapsed() > RECOVERY {
            for j in 0..c.masters.len() {
                eprintln!(
                    "--- master {}: {:?}\n{}",
                    j + 1,
                    c.client_of(j).status_of(0).await,
                    c.log_tail(j)
                );
            }
            panic!(
                "master {} not back {RECOVERY:?} after space freed: {s:?}",
                i + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_no_panic(c: &MasterCluster) {
    for i in 0..c.masters.len() {
        assert!(c.is_running(i), "master {} exited", i + 1);
        let log = c.log_text(i);
        assert!(
            !log.contains("panicked"),
            "master {} panicked:\n{log}",
            i + 1
        );
    }
}

/// R11 (master side): the leader's disk fills up under load. The other
/// two go on (a new leader; the workload sees no error and loses nothing),
/// the full master stays up and answers that it is out of service and
/// why, and once space frees it rejoins by itself and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_full_disk_on_the_leader_costs_nothing() {
    let Some(c) = on_small_disks() else { return };
    let full = c.leader(LEADER_WAIT).await.expect("a leader");
    let w = workload(&c, "/r11");
    tokio::time::sleep(Duration::from_millis(500)).await;
    hold_full(&c, full, Duration::from_secs(3)).await;
    // Its metrics stay up through the outage and say it is out of service
    // (between its attempts to start again from its store).
    let start = std::time::Instant::now();
    loop {
        c.disk(full).unwrap().fill().expect("fill");
        let text = scrape(&c.masters[full].metrics).await.expect("scrape");
        if sum(&text, "gfs_master_serving", &[]) == 0.0 {
            break;
        }
        assert!(start.elapsed() < RECOVERY, "still serving:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = c.leader(LEADER_WAIT).await.expect("a new leader");
    assert_ne!(new, full, "the full master still leads");
    c.disk(full).unwrap().free().expect("free");
    rejoined(&c, full).await;
    let text = scrape(&c.masters[full].metrics).await.expect("scrape");
    assert_eq!(sum(&text, "gfs_master_serving", &[]), 1.0, "{text}");
    assert!(
        sum(&text, "gfs_master_raft_leader_id", &[]) >= 1.0,
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
    assert_no_panic(&c);
}

/// R11, every master's disk full: a mutation fails in bounded time with
/// an error that says why, nothing acknowledged before is lost, and once
/// space frees the cluster serves again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_every_master_disk_full_is_a_clear_error_then_heals() {
    let Some(c) = on_small_disks() else { return };
    c.leader(LEADER_WAIT).await.expect("a leader");
    let cl = c.client();
    cl.mkdir("/before", true).await.expect("mkdir");
    cl.mkdir("/during", true).await.expect("mkdir");
    for i in 0..20 {
        cl.create(&format!("/before/{i}"), 0).await.expect("create");
    }
    for i in 0..3 {
        c.disk(i).unwrap().fill().expect("fill");
    }
    let impatient = gfs_client::MasterClient::new(
        &c.addrs(),
        gfs_client::MasterOptions {
            deadline: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut i = 0;
    let e = loop {
        // The first creates may still fit in what a store had in hand.
        for d in 0..3 {
            c.disk(d).unwrap().fill().expect("fill");
        }
        match impatient.create(&format!("/during/{i}"), 0).await {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "creates still succeed on full disks"
        );
    };
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(
        e.message.contains("out of service") && e.message.contains("No space left on device"),
        "an error that does not say why: {e}"
    );
    for d in 0..3 {
        c.disk(d).unwrap().free().expect("free");
    }
    let start = std::time::Instant::now();
    while let Err(e) = cl.create("/after", 0).await {
        assert!(
            start.elapsed() < RECOVERY,
            "no create {RECOVERY:?} after space freed: {e}"
        );
    }
    let listed = cl.list("/before").await.expect("list");
    assert_eq!(listed.len(), 20, "{listed:?}");
    for j in 0..i {
        cl.stat(&format!("/during/{j}"), false)
            .await
            .expect("an acknowledged create");
    }
    for d in 0..3 {
        rejoined(&c, d).await;
    }
    assert_no_panic(&c);
}

/// Round trips between the masters longer than their heartbeat interval
/// (30 ms by default): a link delaying 25 ms each way in front of every
/// master (`link::Link`), so each Raft call, client call and read's
/// confirmation costs 50 ms or more, while the leader is killed three
/// times. Every reply stays as predicted and work goes on. (Before the
/// floor on openraft's timeouts, `gfs_master::runtime`, every
/// AppendEntries was cut at 30 ms: the leader stayed the leader and
/// committed nothing; 3 operations were answered in 8 s, the rest failed
/// after their 30 s deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_longer_than_a_heartbeat_between_masters_cost_nothing() {
    let links = (0..3).map(|i| (i, Shape::delay_ms(25))).collect();
    let mut c = MasterCluster::start(
        3,
        Timings {
            links,
            ..Timings::default()
        },
    )
    .expect("start masters");
    c.leader(LEADER_WAIT).await.expect("a leader");
    let w = workload(&c, "/far");
    kill_the_leader_three_times(&mut c, Duration::from_millis(1000)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
}

/// Lossy links between the masters: nftables drops 10 % of the packets
/// between any two of them, at random, both ways, for 5 s. Raft's
/// messages run late (TCP retransmits) and leaders may change, but every
/// reply of the workload stays as predicted and nothing acknowledged is
/// lost; once the links heal, every master follows one leader with
/// everything applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_links_between_masters_lose_nothing() {
    if !Partition::available() {
        eprintln!("skipped: needs root and nft (scripts/setup installs nftables)");
        return;
    }
    let c = start().await;
    let w = workload(&c, "/lossy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addrs = c.addrs();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let loss = Partition::lossy(&addrs, &addrs, 10).expect("nft");
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(loss);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = w.finish().await;
    assert_clean(&c, &report);
    for i in 0..c.masters.len() {
        rejoined(&c, i).await;
    }
}
