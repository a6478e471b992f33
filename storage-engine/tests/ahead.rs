//! Appends ahead (`store::ahead`): a chunk's next append is accepted while
//! the one before it is still on its way to the disk. Held writes stand in
//! for a slow disk and, with the files copied meanwhile, for a crash.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Harness, Kind, h, pattern, v};
use gfs_storage_engine::{ChunkStore, Landing, StoreError};

/// Longer than any step here takes when nothing waits for a held write.
const SOON: Duration = Duration::from_secs(5);
/// How long a step that waits for a held write is watched not finishing.
const A_WHILE: Duration = Duration::from_millis(200);

/// 12 KiB landed: a sector-aligned end in the middle of the first block.
const BASE: u64 = 12_288;

async fn chunk_with_base(kind: Kind) -> (Harness, ChunkStore, Vec<u8>) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(1), v(1)).await.expect("create");
    let base = pattern(1, BASE as usize);
    store.append(h(1), &base).await.expect("append");
    (hs, store, base)
}

/// Submits an append at `at`, which must be accepted without waiting for
/// the disk.
async fn submit(store: &ChunkStore, at: u64, data: &[u8]) -> Landing {
    tokio::time::timeout(SOON, store.submit_prepared(h(1), at, &[data], None))
        .await
        .expect("accepted without waiting for the appends in flight")
        .expect("accepted")
}

async fn read(store: &ChunkStore, at: u64, len: u64) -> Vec<u8> {
    tokio::time::timeout(SOON, store.read(h(1), at, len))
        .await
        .expect("a read of what landed does not wait")
        .expect("read")
        .to_vec()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// The store's files as they are now, in a directory of their own: what
/// the process would leave if it died at this moment (the page cache, where
/// the metadata is written, survives a process crash).
fn crash_copy(hs: &Harness) -> Harness {
    let copy = Harness::new(hs.kind);
    copy_tree(&hs.root(), &copy.root());
    copy
}

/// Two appends after `BASE` (20 KiB, 8 KiB), the first one's write held
/// back, the second's on the disk.
async fn the_first_of_two_held(hs: &Harness, store: &ChunkStore) -> (Landing, Landing) {
    hs.faults.arm(|f| f.hold_write = 1);
    let (a, b) = (pattern(2, 20_480), pattern(3, 8_192));
    let la = submit(store, BASE, &a).await;
    let lb = submit(store, BASE + 20_480, &b).await;
    tokio::time::sleep(A_WHILE).await;
    (la, lb)
}

/// A clean reopen finds `want` in chunk 1.
async fn reopened_holds(hs: &Harness, want: &[u8]) {
    let (store, report) = hs.open().await;
    assert!(
        report.cut.is_empty() && report.quarantined.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        store.info(h(1)).await.expect("info").length,
        want.len() as u64
    );
    assert_eq!(read(&store, 0, want.len() as u64).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_accepted_while_earlier_ones_are_on_the_disk() {
    let (hs, store, base) = chunk_with_base(Kind::Faulty).await;
    hs.faults.arm(|f| f.hold_write = 2);
    let (a, b, c) = (pattern(2, 20_480), pattern(3, 8_192), pattern(4, 4_096));
    let la = submit(&store, BASE, &a).await;
    let lb = submit(&store, BASE + 20_480, &b).await;
    let end = BASE + 28_672;
    // The chunk's length counts what was accepted; readers get what landed
    // without waiting, and wait for the rest.
    assert_eq!(store.info(h(1)).await.expect("info").length, end);
    assert_eq!(read(&store, 0, BASE).await, base);
    let tail = {
        let store = store.clone();
        tokio::spawn(async move { store.read(h(1), BASE, 4_096).await })
    };
    // Two appends are on the disk (`appends_ahead` = 2): a third waits for
    // one of them to land.
    let third = {
        let (store, c) = (store.clone(), c.clone());
        tokio::spawn(async move {
            let landing = store.submit_prepared(h(1), end, &[&c], None).await?;
            landing.landed().await
        })
    };
    tokio::time::sleep(A_WHILE).await;
    assert!(!tail.is_finished(), "a read past what landed waits");
    assert!(!third.is_finished(), "a third append waits for room");

    hs.faults.release();
    assert_eq!(la.landed().await.expect("lands"), BASE + 20_480);
    assert_eq!(lb.landed().await.expect("lands"), end);
    assert_eq!(third.await.expect("task").expect("lands"), end + 4_096);
    assert_eq!(&tail.await.expect("task").expect("read")[..], &a[..4_096]);
    let want = [base, a, b, c].concat();
    assert_eq!(read(&store, 0, want.len() as u64).await, want);
    drop(store);
    reopened_holds(&hs, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_an_earlier_append_landed_keeps_what_had_landed() {
    let (hs, store, base) = chunk_with_base(Kind::Faulty).await;
    // The first append's write is held back: not on the disk. The second
    // is written, and must not write its checksums before the first has
    // landed: they share the first block, and its entry would replace the
    // one that describes the landed data.
    let (la, lb) = the_first_of_two_held(&hs, &store).await;
    let crashed = crash_copy(&hs);
    hs.faults.release();
    assert_eq!(la.landed().await.expect("lands"), BASE + 20_480);
    assert_eq!(lb.landed().await.expect("lands"), BASE + 28_672);

    let (store, report) = crashed.open().await;
    assert!(report.quarantined.is_empty(), "{report:?}");
    assert_eq!(store.info(h(1)).await.expect("info").length, BASE);
    assert_eq!(read(&store, 0, BASE).await, base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_withdraws_the_ones_accepted_after_it() {
    let (hs, store, base) = chunk_with_base(Kind::Faulty).await;
    let (la, lb) = the_first_of_two_held(&hs, &store).await;
    // The held write meets a full disk when it goes.
    hs.faults.arm(|f| f.write_enospc = 1);
    hs.faults.release();
    let err = la.landed().await.expect_err("no space");
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    let err = lb.landed().await.expect_err("withdrawn");
    assert!(matches!(err, StoreError::Withdrawn(_)), "{err}");

    // Back to what landed, in memory and on the disk; appends go on from there.
    assert_eq!(store.info(h(1)).await.expect("info").length, BASE);
    assert_eq!(store.usage()[0].used_bytes, BASE);
    assert_eq!(store.usage()[0].poisoned, None);
    assert!(matches!(
        store.read(h(1), BASE, 1).await,
        Err(StoreError::OutOfRange { .. })
    ));
    let c = pattern(4, 5_000);
    assert_eq!(store.append(h(1), &c).await.expect("append"), BASE);
    let want = [base, c].concat();
    assert_eq!(read(&store, 0, want.len() as u64).await, want);
    drop(store);
    reopened_holds(&hs, &want).await;
}

/// A mutation placed at the chunk's end after others in flight (a
/// primary's next round of record appends) is refused once one of those
/// failed, where a plain write would be put past a hole of their size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_placed_after_a_failed_append_is_refused_not_put_past_a_hole() {
    let (hs, store, base) = chunk_with_base(Kind::Faulty).await;
    let (la, lb) = the_first_of_two_held(&hs, &store).await;
    // Placed after both, while they are in flight.
    let next = BASE + 20_480 + 8_192;
    let third = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .submit_at_end(h(1), next, &[&pattern(5, 4_096)], None)
                .await
        })
    };
    hs.faults.arm(|f| f.write_enospc = 1);
    hs.faults.release();
    assert!(la.landed().await.is_err() && lb.landed().await.is_err());
    let refused = match tokio::time::timeout(SOON, third).await {
        Ok(Ok(Err(e))) => e,
        Ok(Ok(Ok(_))) => panic!("written past a hole"),
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(refused, StoreError::NotAtEnd { offset, length, .. } if offset == next && length == BASE),
        "{refused}"
    );
    assert_eq!(store.info(h(1)).await.expect("info").length, BASE);
    // At the end it goes; a plain write past the end fills the gap.
    let d = pattern(6, 4_096);
    let landing = store
        .submit_at_end(h(1), BASE, &[&d], None)
        .await
        .expect("at the end");
    assert_eq!(landing.landed().await.expect("landed"), BASE + 4_096);
    let e = pattern(7, 4_096);
    let gap_end = store
        .write_prepared(h(1), BASE + 8_192, &[&e], None)
        .await
        .expect("past the end");
    assert_eq!(gap_end, BASE + 12_288);
    let want = [base, d, vec![0; 4_096], e].concat();
    assert_eq!(read(&store, 0, want.len() as u64).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_mutations_wait_for_the_appends_in_flight() {
    let (hs, store, base) = chunk_with_base(Kind::Faulty).await;
    hs.faults.arm(|f| f.hold_write = 1);
    let a = pattern(2, 20_480);
    let la = submit(&store, BASE, &a).await;
    // An overwrite of landed data, a sync and a version change wait for the
    // append; so does an unaligned append, which rewrites its sector.
    let over = {
        let store = store.clone();
        tokio::spawn(async move { store.write_at(h(1), 100, b"over").await })
    };
    let sync = {
        let store = store.clone();
        tokio::spawn(async move { store.sync(h(1)).await })
    };
    tokio::time::sleep(A_WHILE).await;
    assert!(!over.is_finished() && !sync.is_finished());
    // Nothing new goes ahead while they wait: not even accepted.
    let next = {
        let store = store.clone();
        let at = BASE + 20_480;
        tokio::spawn(async move { store.submit_prepared(h(1), at, &[&[9; 4_096]], None).await })
    };
    tokio::time::sleep(A_WHILE).await;
    assert!(!next.is_finished());
    hs.faults.release();
    assert_eq!(la.landed().await.expect("lands"), BASE + 20_480);
    over.await.expect("task").expect("overwrite");
    sync.await.expect("task").expect("sync");
    let landing = next.await.expect("task").expect("accepted");
    let at = landing.landed().await.expect("lands") - 4_096;
    let mut want = [base, a].concat();
    want[100..104].copy_from_slice(b"over");
    want.resize(want.len() + 4_096, 9);
    assert_eq!(at, BASE + 20_480);
    assert_eq!(read(&store, 0, want.len() as u64).await, want);
    drop(store);
    reopened_holds(&hs, &want).await;
}
