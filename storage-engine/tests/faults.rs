//! One test per injected fault, plus damage done to the files on disk.

mod common;

use std::time::Duration;

use common::{CHUNK, Harness, Kind, MAX_REQUEST, h, pattern, v};
use gfs_storage_engine::{ChunkStore, StoreError};

async fn store_with(kind: Kind, data: &[u8]) -> (Harness, ChunkStore) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(1), v(1)).await.expect("create");
    store.append(h(1), data).await.expect("append");
    (hs, store)
}

/// Flips one bit in the middle of block `block` of chunk 1's data file.
fn flip_on_disk(hs: &Harness, block: u64) {
    use std::os::unix::fs::FileExt;
    let path = hs.chunks_dir().join("0000000000000001.chunk");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let at = block * 65_536 + 1_000;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x04], at).expect("write");
    f.sync_all().expect("sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flip_on_read_is_caught_by_the_read_and_by_the_scrubber() {
    let data = pattern(1, 200_000);
    let (hs, store) = store_with(Kind::Faulty, &data).await;
    hs.faults.arm(|f| f.flip_bit_on_read = 1);
    match store.read(h(1), 0, 200_000).await {
        Err(StoreError::Corrupt { handle, block }) => {
            assert_eq!(handle, h(1));
            assert!(block < 4);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The flip happened in memory; the disk is fine, so a retry succeeds.
    assert_eq!(
        &store.read(h(1), 0, 200_000).await.expect("read")[..],
        &data[..]
    );

    hs.faults.arm(|f| f.flip_bit_on_read = 1);
    let found = store.scrub_pass(0, Duration::ZERO).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].handle, h(1));
    assert!(
        found[0].reason.starts_with("checksum mismatch in block"),
        "{}",
        found[0].reason
    );
    assert!(store.scrub_pass(0, Duration::ZERO).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flip_on_disk_is_never_served_and_the_scrubber_reports_it() {
    let data = pattern(2, 250_000);
    let (hs, store) = store_with(Kind::Uring, &data).await;
    flip_on_disk(&hs, 2);
    let err = store
        .read(h(1), 140_000, 10)
        .await
        .expect_err("corrupt block");
    assert_eq!(
        err.to_string(),
        "chunk 0000000000000001: checksum mismatch in block 2"
    );
    // Blocks that are intact still read.
    assert_eq!(
        &store.read(h(1), 0, 131_072).await.expect("read")[..],
        &data[..131_072]
    );
    let (task, mut rx) = store.spawn_scrubber();
    let report = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("scrubber reports in time")
        .expect("scrubber alive");
    task.abort();
    assert_eq!(report.handle, h(1));
    assert_eq!(report.reason, "checksum mismatch in block 2");
    // An overwrite touching the damaged block refuses to bless it.
    assert!(matches!(
        store.write_at(h(1), 140_000, b"x").await,
        Err(StoreError::Corrupt { block: 2, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_verification_at_open_quarantines_damaged_synced_data() {
    let hs = {
        let (hs, store) = store_with(Kind::Uring, &pattern(3, 200_000)).await;
        store.sync(h(1)).await.expect("sync");
        hs
    };
    flip_on_disk(&hs, 1);
    let mut hs = hs;
    hs.verify_on_open = true;
    let (store, report) = hs.open().await;
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(report.quarantined[0].handle, h(1));
    assert_eq!(
        report.quarantined[0].reason,
        "block 1: synced data fails its checksum"
    );
    assert!(store.list().await.is_empty());
    let moved: Vec<_> = std::fs::read_dir(hs.root().join("quarantine"))
        .expect("quarantine dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_with_no_valid_header_is_quarantined_not_deleted() {
    let (hs, store) = store_with(Kind::Uring, b"precious").await;
    drop(store);
    let meta = hs.chunks_dir().join("0000000000000001.meta");
    let mut image = std::fs::read(&meta).expect("read meta");
    image[..8192].fill(0xff);
    std::fs::write(&meta, image).expect("write meta");
    let (store, report) = hs.open().await;
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].reason, "no valid header");
    assert!(store.list().await.is_empty());
    assert_eq!(
        std::fs::read_dir(hs.root().join("quarantine"))
            .expect("dir")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_is_cut_at_recovery() {
    let before = pattern(4, 100_000);
    let (hs, store) = store_with(Kind::Faulty, &before).await;
    store.sync(h(1)).await.expect("sync");
    hs.faults.arm(|f| f.torn_write = 1);
    let err = store
        .append(h(1), &pattern(5, 150_000))
        .await
        .expect_err("torn");
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    // The store refuses writes until it is reopened, and still serves reads.
    assert!(matches!(
        store.append(h(1), b"x").await,
        Err(StoreError::Poisoned { .. })
    ));
    assert_eq!(
        &store.read(h(1), 0, 100_000).await.expect("read")[..],
        &before[..]
    );
    drop(store);

    let (store, report) = hs.open().await;
    assert_eq!(report.cut.len(), 1, "{report:?}");
    let (handle, claimed, recovered) = report.cut[0];
    assert_eq!((handle, claimed), (h(1), 250_000));
    // The torn append's first I/O wrote only its first half; the blocks it
    // completed may survive (they verify), everything from the first block
    // that does not is cut.
    assert!(
        (100_000..250_000).contains(&recovered),
        "recovered {recovered}"
    );
    assert_eq!(
        recovered % 65_536,
        0,
        "the cut falls on the first failing block"
    );
    assert_eq!(store.info(h(1)).await.expect("info").length, recovered);
    let got = store
        .read(h(1), 0, recovered)
        .await
        .expect("every kept byte verifies");
    assert_eq!(&got[..100_000], &before[..]);
    assert_eq!(
        &got[100_000..],
        &pattern(5, 150_000)[..recovered as usize - 100_000]
    );
    assert!(matches!(
        store.read(h(1), recovered, 1).await,
        Err(StoreError::OutOfRange { .. })
    ));
    // Appending resumes at the cut, and the discarded tail never comes back.
    let after = pattern(6, 5_000);
    assert_eq!(store.append(h(1), &after).await.expect("append"), recovered);
    drop(store);
    let (store, report) = hs.open().await;
    assert!(report.cut.is_empty(), "{report:?}");
    assert_eq!(
        store.info(h(1)).await.expect("info").length,
        recovered + 5_000
    );
    assert_eq!(
        &store.read(h(1), recovered, 5_000).await.expect("read")[..],
        &after[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_is_a_clear_error_that_leaves_earlier_data_intact() {
    let before = pattern(7, 70_001);
    let (hs, store) = store_with(Kind::Faulty, &before).await;
    hs.faults.arm(|f| f.write_enospc = 1);
    let err = store
        .append(h(1), &pattern(8, 50_000))
        .await
        .expect_err("no space");
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert_eq!(store.info(h(1)).await.expect("info").length, 70_001);
    assert_eq!(
        &store.read(h(1), 0, 70_001).await.expect("read")[..],
        &before[..]
    );
    // Not poisoned: once space is back, appends continue where they were.
    assert_eq!(store.usage()[0].poisoned, None);
    assert_eq!(store.append(h(1), b"more").await.expect("append"), 70_001);
    drop(store);
    let (store, report) = hs.open().await;
    assert!(report.quarantined.is_empty(), "{report:?}");
    let got = store.read(h(1), 0, 70_005).await.expect("read");
    assert_eq!(&got[..70_001], &before[..]);
    assert_eq!(&got[70_001..], b"more");
}

/// Out of space, a directory gives its pool of deleted chunks' files back
/// to the filesystem: the chunks being written need the space more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_gives_the_pool_of_deleted_chunks_files_back() {
    let (hs, store) = store_with(Kind::Faulty, b"data").await;
    store.create(h(2), v(1)).await.expect("create");
    let whole = pattern(9, CHUNK as usize);
    for part in whole.chunks(MAX_REQUEST as usize) {
        store.append(h(2), part).await.expect("append");
    }
    store.delete(h(2)).await.expect("delete");
    assert_eq!(store.usage()[0].pooled_bytes, CHUNK);
    let recycle = hs.root().join("recycle");
    assert_eq!(std::fs::read_dir(&recycle).expect("list").count(), 1);
    hs.faults.arm(|f| f.write_enospc = 1);
    let err = store.append(h(1), b"more").await.expect_err("no space");
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert_eq!(store.usage()[0].pooled_bytes, 0);
    assert_eq!(std::fs::read_dir(&recycle).expect("list").count(), 0);
    assert_eq!(store.append(h(1), b"more").await.expect("append"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_refuses_all_later_writes() {
    let (hs, store) = store_with(Kind::Faulty, b"data").await;
    store.create(h(2), v(1)).await.expect("create");
    hs.faults.arm(|f| f.sync_eio = 1);
    let err = store.sync(h(1)).await.expect_err("fsync fails");
    assert!(matches!(err, StoreError::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("write or fsync failed"), "{err}");
    // Never retried, and every kind of write is refused, on every chunk.
    assert_eq!(hs.faults.pending().sync_eio, 0);
    assert!(matches!(
        store.sync(h(1)).await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.append(h(2), b"x").await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.write_at(h(1), 0, b"x").await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.set_version(h(1), v(2)).await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.create(h(3), v(1)).await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.delete(h(2)).await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.pad_to_end(h(2)).await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(store.usage()[0].poisoned.is_some());
    // Reads still work.
    assert_eq!(&store.read(h(1), 0, 4).await.expect("read")[..], b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_write_poisons_and_eio_on_read_does_not() {
    let (hs, store) = store_with(Kind::Faulty, b"abc").await;
    hs.faults.arm(|f| f.read_eio = 1);
    let err = store.read(h(1), 0, 3).await.expect_err("eio");
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert_eq!(&store.read(h(1), 0, 3).await.expect("read")[..], b"abc");
    assert_eq!(store.append(h(1), b"d").await.expect("append"), 3);

    hs.faults.arm(|f| f.write_eio = 1);
    assert!(matches!(
        store.append(h(1), b"e").await,
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(
        store.append(h(1), b"f").await,
        Err(StoreError::Poisoned { .. })
    ));
}

/// A real full disk: a small tmpfs. Needs root to mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_gives_no_space_and_keeps_what_was_written() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let hs = Harness::new(Kind::Uring);
    std::fs::create_dir_all(hs.root()).expect("mkdir");
    let mnt = hs.root();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());

    let (store, _) = hs.open().await;
    let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut hit = false;
    'fill: for c in 1..10u64 {
        match store.create(h(c), v(1)).await {
            Ok(()) => {}
            Err(StoreError::NoSpace { .. }) => {
                hit = true;
                break;
            }
            Err(e) => panic!("create: {e}"),
        }
        loop {
            let rec = pattern(c, 50_000);
            match store.append(h(c), &rec).await {
                Ok(_) => written.push((c, rec)),
                Err(StoreError::NoSpace { .. }) => {
                    hit = true;
                    break 'fill;
                }
                Err(StoreError::ChunkFull { .. }) => break,
                Err(e) => panic!("append: {e}"),
            }
        }
    }
    assert!(hit, "a 3 MiB tmpfs must fill up");
    assert!(!written.is_empty());
    let check = |store: ChunkStore, written: Vec<(u64, Vec<u8>)>| async move {
        let mut offsets = std::collections::HashMap::new();
        for (c, rec) in &written {
            let off = offsets.entry(*c).or_insert(0u64);
            let got = store
                .read(h(*c), *off, rec.len() as u64)
                .await
                .expect("read");
            assert_eq!(&got[..], &rec[..]);
            *off += rec.len() as u64;
        }
    };
    check(store.clone(), written.clone()).await;
    drop(store);
    let (store, report) = hs.open().await;
    assert!(report.quarantined.is_empty(), "{report:?}");
    check(store, written).await;
    let _ = CHUNK;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_keeps_to_its_rate_and_skips_busy_chunks() {
    let (_hs, store) = store_with(Kind::Uring, &pattern(9, 250_000)).await;
    store.create(h(2), v(1)).await.expect("create");
    store
        .append(h(2), &pattern(10, 250_000))
        .await
        .expect("append");
    // Both chunks were just written: with a one-hour idle rule nothing is read.
    let started = std::time::Instant::now();
    assert!(
        store
            .scrub_pass(1, Duration::from_secs(3600))
            .await
            .is_empty()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "busy chunks are skipped, not throttled"
    );
    // 500,000 bytes at 1,000,000 bytes/s cannot take less than half a second.
    let started = std::time::Instant::now();
    assert!(store.scrub_pass(1_000_000, Duration::ZERO).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

/// One random act of damage to the files of a data directory: bytes
/// overwritten, a file cut short or grown, a file removed, or a stray file
/// with a chunk's name or another. What it did, for the failure message.
fn damage(dir: &std::path::Path, rng: &mut rand::rngs::StdRng) -> String {
    use rand::Rng;
    use std::os::unix::fs::FileExt;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("chunks dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let junk = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<u8> {
        (0..n).map(|_| rng.random()).collect()
    };
    if files.is_empty() || rng.random_bool(0.15) {
        let name = match rng.random_range(0..4) {
            0 => format!("{:016x}.meta", rng.random_range(1..10u64)),
            1 => format!("{:016x}.chunk", rng.random_range(1..10u64)),
            2 => "not-a-chunk".to_string(),
            _ => format!("{:016x}.meta", rng.random::<u64>()),
        };
        let n = rng.random_range(0..20_000);
        std::fs::write(dir.join(&name), junk(rng, n)).expect("stray file");
        return format!("wrote a stray {name} of {n} bytes");
    }
    let path = &files[rng.random_range(0..files.len())];
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let len = std::fs::metadata(path).expect("metadata").len();
    let writable = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
    };
    match rng.random_range(0..5) {
        0 | 1 => {
            let at = rng.random_range(0..len.max(1));
            let n = rng.random_range(1..9000);
            let f = writable();
            f.write_all_at(&junk(rng, n), at).expect("overwrite");
            format!("overwrote {n} bytes of {name} at {at}")
        }
        2 => {
            let to = rng.random_range(0..len.max(1));
            let f = writable();
            f.set_len(to).expect("truncate");
            format!("cut {name} from {len} to {to} bytes")
        }
        3 => {
            let n = rng.random_range(1..100_000);
            let f = writable();
            f.write_all_at(&junk(rng, n), len).expect("grow");
            format!("grew {name} by {n} bytes")
        }
        _ => {
            std::fs::remove_file(path).expect("remove");
            format!("removed {name}")
        }
    }
}

/// Seeded random damage to chunk files between runs (overwritten, cut,
/// grown, removed, stray files beside them): the store still opens, and
/// every chunk either reads back a prefix of what was written, never other
/// bytes, or fails its reads with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_damage_to_chunk_files_never_yields_other_bytes() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6461_6d61_6765);
    for round in 0..24u64 {
        let mut hs = Harness::new(Kind::Uring);
        let mut written = Vec::new();
        {
            let (store, _) = hs.open().await;
            for k in 1..=5u64 {
                let data = pattern(round * 10 + k, rng.random_range(1..300_000));
                store.create(h(k), v(k)).await.expect("create");
                for piece in data.chunks(MAX_REQUEST as usize) {
                    store.append(h(k), piece).await.expect("append");
                }
                if k % 2 == 1 {
                    store.sync(h(k)).await.expect("sync");
                }
                written.push(data);
            }
        }
        let acts: Vec<String> = (0..rng.random_range(1..5))
            .map(|_| damage(&hs.chunks_dir(), &mut rng))
            .collect();
        hs.verify_on_open = rng.random_bool(0.5);
        let (store, _) = ChunkStore::open(hs.config()).await.unwrap_or_else(|e| {
            panic!("round {round}: the store did not open after {acts:?}: {e}")
        });
        for (i, want) in written.iter().enumerate() {
            let k = i as u64 + 1;
            let Ok(info) = store.info(h(k)).await else {
                continue;
            };
            assert!(
                info.length <= want.len() as u64,
                "round {round}, chunk {k}: {} bytes after {acts:?}, {} written",
                info.length,
                want.len()
            );
            let mut at = 0u64;
            while at < info.length {
                let n = (info.length - at).min(MAX_REQUEST);
                let Ok(got) = store.read(h(k), at, n).await else {
                    break;
                };
                if got.is_empty() {
                    break;
                }
                let end = at as usize + got.len();
                assert!(
                    got[..] == want[at as usize..end],
                    "round {round}, chunk {k}: other bytes at {at} after {acts:?}"
                );
                at += got.len() as u64;
            }
        }
    }
}

/// A directory whose disk stops completing I/O shows in
/// `stalled_for_chunk` for its own chunks only, and in `stalled_for`
/// (the whole store); both go back to zero once the I/O completes. New
/// chunks go to the other directory, though the stalled one holds fewer
/// bytes, and the store says it can take them (`stalled_for_new_chunks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_directory_shows_for_its_own_chunks_only_and_gets_no_new_ones() {
    let hs = Harness::new(Kind::Faulty);
    let second = hs.root().with_file_name("d1");
    let mut cfg = hs.config();
    cfg.dirs.push(second);
    let (store, _) = ChunkStore::open_with_faults(cfg, hs.faults.clone())
        .await
        .expect("store opens");
    // Chunks spread: the second goes to the directory with fewer bytes.
    store.create(h(1), v(1)).await.expect("create 1");
    store
        .append(h(1), &pattern(1, 65_536))
        .await
        .expect("append 1");
    store.create(h(2), v(1)).await.expect("create 2");
    store
        .append(h(2), &pattern(2, 4_096))
        .await
        .expect("append 2");
    assert_eq!(store.stalled_for(), Duration::ZERO);
    // The disk of chunk 2, which new chunks would go to, stops.
    hs.faults.arm(|f| f.hold_write = 1);
    let held = {
        let store = store.clone();
        tokio::spawn(async move { store.append(h(2), &pattern(3, 4_096)).await })
    };
    tokio::time::sleep(gfs_storage_engine::STALLED_DIR + Duration::from_millis(200)).await;
    assert!(store.stalled_for_chunk(h(2)) >= gfs_storage_engine::STALLED_DIR);
    assert_eq!(
        store.stalled_for_chunk(h(1)),
        Duration::ZERO,
        "the other disk"
    );
    assert_eq!(
        store.stalled_for_chunk(h(9)),
        Duration::ZERO,
        "no such chunk"
    );
    assert!(store.stalled_for() >= gfs_storage_engine::STALLED_DIR);
    assert_eq!(store.stalled_for_new_chunks(), Duration::ZERO);
    store.create(h(3), v(1)).await.expect("create 3");
    store
        .append(h(3), &pattern(4, 4_096))
        .await
        .expect("append 3");
    assert_eq!(
        store.stalled_for_chunk(h(3)),
        Duration::ZERO,
        "chunk 3 went to the stalled disk"
    );
    hs.faults.release();
    held.await.expect("task").expect("the held append lands");
    assert_eq!(store.stalled_for(), Duration::ZERO);
}
