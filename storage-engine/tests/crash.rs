//! The crash test: a child process appends records to chunks in a loop and
//! syncs now and then; the parent SIGKILLs it at random points, at least 20
//! times. After each kill the parent recovers the store and checks that
//! every byte synced before the kill is intact, that every byte below the
//! recovered length is exactly what was appended there, and that nothing
//! past the recovered length is served. The child deletes full chunks
//! behind it, so later chunks are written over their files (the store's
//! pool of deleted chunks' files) and recover with stale bytes past their
//! length.
//!
//! The child is this same test binary, re-run with `crash_child` selected
//! and the store directory in `GFS_CRASH_DIR`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{CHUNK, Kind, MAX_REQUEST, config_for, h, v};
use gfs_storage_engine::{ChunkStore, StoreError};
use rand::{Rng, SeedableRng, rngs::StdRng};

const KILLS: usize = 24;
/// The child deletes the chunk this far behind the one it fills next.
const DELETE_BEHIND: u64 = 2;
const DIR_ENV: &str = "GFS_CRASH_DIR";
const SEED_ENV: &str = "GFS_CRASH_SEED";

/// The byte at `offset` of chunk `handle`: every append writes this
/// pattern, so any prefix of any chunk can be checked.
fn byte_at(handle: u64, offset: u64) -> u8 {
    let x = (offset ^ (handle << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

fn expected(handle: u64, offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|o| byte_at(handle, o))
        .collect()
}

#[test]
#[ignore = "run by crash_test as its child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Alternate backends: the same files must recover whichever wrote them.
        let kind = if seed.is_multiple_of(2) {
            Kind::Uring
        } else {
            Kind::Portable
        };
        let cfg = config_for(std::path::Path::new(&dir), kind, false);
        let (store, _) = ChunkStore::open(cfg).await.expect("child opens the store");
        let mut rng = StdRng::seed_from_u64(seed);
        // Continue on the newest chunk, or start the first.
        let mut current = store.list().await.last().map_or(1, |c| c.handle.0);
        if store.info(h(current)).await.is_err() {
            store.create(h(current), v(1)).await.expect("create");
        }
        let mut appends = 0u64;
        loop {
            let length = store.info(h(current)).await.expect("info").length;
            let len = rng.random_range(1..=MAX_REQUEST as usize * 3 / 8);
            match store
                .append(h(current), &expected(current, length, len))
                .await
            {
                Ok(off) => assert_eq!(off, length),
                Err(StoreError::ChunkFull { .. }) => {
                    store.sync(h(current)).await.expect("sync");
                    println!("synced {current} {length}");
                    // Delete a full chunk from a while ago, so later chunks
                    // are written over its file (the pool of deleted
                    // chunks' files). Said before it starts: the kill may
                    // come at any point of the delete.
                    if let Some(old) = current.checked_sub(DELETE_BEHIND).filter(|&c| c > 0)
                        && store.info(h(old)).await.is_ok()
                    {
                        println!("deleting {old}");
                        store.delete(h(old)).await.expect("delete");
                    }
                    current += 1;
                    store.create(h(current), v(1)).await.expect("create");
                    continue;
                }
                Err(e) => panic!("append: {e}"),
            }
            appends += 1;
            if appends.is_multiple_of(16) {
                let synced_len = store.info(h(current)).await.expect("info").length;
                store.sync(h(current)).await.expect("sync");
                println!("synced {current} {synced_len}");
            }
        }
    });
}

#[test]
fn crash_test() {
    common::init_tracing();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    let exe = std::env::current_exe().expect("own test binary");
    let mut rng = StdRng::seed_from_u64(0xc7a5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Highest length each chunk was acknowledged as synced at.
    let mut synced: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cuts = 0;
    let mut deleted = 0;
    // Chunks below this one were complete at an earlier check and are not
    // read again until the final round.
    let mut unchanged_below = 0;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, &dir)
            .env(SEED_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        // Read acknowledgements on a thread so the kill can come at any time.
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                let what = words.next();
                let c: Option<u64> = words.next().and_then(|w| w.parse().ok());
                let l: Option<u64> = words.next().and_then(|w| w.parse().ok());
                match (what, c, l) {
                    (Some("synced"), Some(c), Some(l)) => acks.push((c, Some(l))),
                    (Some("deleting"), Some(c), None) => acks.push((c, None)),
                    _ => {}
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(60..300)));
        assert!(
            child.try_wait().expect("poll child").is_none(),
            "child died on its own"
        );
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap child");
        for (c, l) in reader.join().expect("reader thread") {
            match l {
                Some(l) => {
                    let e = synced.entry(c).or_insert(0);
                    *e = (*e).max(l);
                }
                // Gone, or still whole if the kill came first.
                None => {
                    synced.remove(&c);
                    deleted += 1;
                }
            }
        }

        let checked = rt.block_on(async {
            let cfg = config_for(&dir, Kind::Uring, false);
            let (store, report) = ChunkStore::open(cfg).await.expect("recovery");
            assert!(report.quarantined.is_empty(), "round {round}: {report:?}");
            cuts += report.cut.len();
            let chunks = store.list().await;
            for (&c, &l) in &synced {
                let info = chunks.iter().find(|i| i.handle == h(c));
                let info =
                    info.unwrap_or_else(|| panic!("round {round}: synced chunk {c} is gone"));
                assert!(
                    info.length >= l,
                    "round {round}: chunk {c} has {} < synced {l}",
                    info.length
                );
            }
            let mut bytes = 0;
            let last_round = round + 1 == KILLS;
            for info in chunks
                .iter()
                .filter(|i| last_round || i.handle.0 >= unchanged_below)
            {
                let mut at = 0;
                while at < info.length {
                    let n = (info.length - at).min(MAX_REQUEST);
                    let got = store
                        .read(info.handle, at, n)
                        .await
                        .expect("every kept byte verifies");
                    assert!(
                        got[..] == expected(info.handle.0, at, n as usize)[..],
                        "round {round}: chunk {} differs in {at}+{n}",
                        info.handle
                    );
                    at += n;
                }
                bytes += info.length;
                assert!(matches!(
                    store.read(info.handle, info.length, 1).await,
                    Err(StoreError::OutOfRange { .. })
                ));
                assert!(info.length <= CHUNK);
            }
            unchanged_below = chunks.last().map_or(0, |i| i.handle.0);
            bytes
        });
        tracing::info!(round, checked, "--- recovered after SIGKILL");
    }
    assert!(
        !synced.is_empty(),
        "the child acknowledged no sync in {KILLS} rounds"
    );
    assert!(
        deleted > 0,
        "the child deleted no chunk, so no chunk reused a deleted one's file"
    );
    eprintln!(
        "crash test: {KILLS} kills, {} chunks synced, {deleted} deleted (their files reused), \
         {cuts} torn tails cut",
        synced.len()
    );
}
