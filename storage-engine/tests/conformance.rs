//! The conformance suite: every backend (io_uring, portable, and the fault
//! injector with nothing armed) must pass every case, against a plain
//! in-memory model of each chunk.

mod common;

use common::{CHUNK, Harness, Kind, MAX_REQUEST, h, pattern, v};
use gfs_storage_engine::{ChunkInfo, StoreError};
use rand::{Rng, SeedableRng, rngs::StdRng};

macro_rules! for_every_backend {
    ($($case:ident),* $(,)?) => {
        mod uring { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Kind::Uring).await } )* }
        mod portable { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Kind::Portable).await } )* }
        mod faulty_off { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Kind::Faulty).await } )* }
        mod portable_buffered { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(super::Kind::Buffered).await } )* }
    };
}

for_every_backend!(
    unaligned_appends_read_back_exactly,
    overwrites_and_gaps_match_the_model_and_survive_reopen,
    pad_fills_the_chunk_with_zeros_and_then_it_is_full,
    versions_are_durable,
    delete_removes_the_chunk_for_good,
    bad_requests_get_clear_errors,
    random_operations_match_the_model,
    leftovers_of_interrupted_creates_and_deletes_are_removed,
    usage_counts_bytes_per_directory,
    concurrent_appends_to_one_chunk_are_serialised,
    prepared_appends_match_the_model_whatever_happened_in_between,
    received_appends_are_written_where_they_lie,
    a_create_whose_caller_goes_away_still_completes,
    a_create_told_the_chunk_exists_finds_it,
    new_chunks_write_over_the_files_of_deleted_full_chunks,
    the_pool_of_deleted_chunks_files_is_bounded_and_checked_at_open,
    appends_in_flight_together_match_the_model,
    chunk_files_are_allocated_ahead_and_trimmed_at_open,
);

async fn chunk_files_are_allocated_ahead_and_trimmed_at_open(kind: Kind) {
    use std::os::unix::fs::MetadataExt;
    const K: u64 = 1024;
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(30), v(1)).await.expect("create");
    let file = hs.chunks_dir().join("000000000000001e.chunk");
    let size = || std::fs::metadata(&file).expect("stat").len() / K;
    let piece = pattern(30, 64 << 10);
    let (mut want, mut sizes) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        store.append(h(30), &piece).await.expect("append");
        want.extend_from_slice(&piece);
        sizes.push(size());
    }
    // The file doubles ahead of the data, its blocks allocated (no holes).
    assert_eq!(sizes, [64, 128, 256, 256, 512]);
    let meta = std::fs::metadata(&file).expect("stat");
    assert!(meta.blocks() * 512 >= 512 * K, "{} blocks", meta.blocks());
    // Only the data is ever served.
    assert_eq!(read_all(&store, 30, want.len()).await, want);
    assert!(matches!(
        store.read(h(30), 320 * K, 1).await,
        Err(StoreError::OutOfRange { .. })
    ));
    // A restart gives the space ahead back and keeps every byte.
    drop(store);
    let (store, report) = hs.open().await;
    assert!(report.cut.is_empty(), "{report:?}");
    assert_eq!(size(), 320);
    assert_eq!(read_all(&store, 30, want.len()).await, want);
    // Appends after the restart grow it again from there.
    store.append(h(30), &piece).await.expect("append");
    assert_eq!(size(), 640);
    want.extend_from_slice(&piece);
    assert_eq!(read_all(&store, 30, want.len()).await, want);
}

async fn unaligned_appends_read_back_exactly(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(1), v(1)).await.expect("create");
    let mut model = Vec::new();
    for (i, len) in [1usize, 4095, 4097, 65_535, 65_537, 200_000, 3, 131_072]
        .iter()
        .enumerate()
    {
        let data = pattern(i as u64, *len);
        let off = store.append(h(1), &data).await.expect("append");
        assert_eq!(off, model.len() as u64);
        model.extend_from_slice(&data);
    }
    assert_eq!(
        store.info(h(1)).await.expect("info").length,
        model.len() as u64
    );
    assert_eq!(read_all(&store, 1, model.len()).await, model);
    for (off, len) in [
        (0, MAX_REQUEST as usize),
        (1, 10),
        (4095, 2),
        (65_530, 70_000),
        (model.len() - 1, 1),
    ] {
        let got = store
            .read(h(1), off as u64, len as u64)
            .await
            .expect("read");
        assert_eq!(&got[..], &model[off..off + len], "read {off}+{len}");
    }
}

async fn overwrites_and_gaps_match_the_model_and_survive_reopen(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(2), v(3)).await.expect("create");
    let mut model = pattern(9, 300_000);
    store.append(h(2), &model[..200_000]).await.expect("append");
    store.append(h(2), &model[200_000..]).await.expect("append");
    // Overwrite across two block boundaries, starting and ending unaligned.
    let patch = pattern(10, 140_000);
    assert_eq!(
        store.write_at(h(2), 60_001, &patch).await.expect("write"),
        300_000
    );
    model[60_001..200_001].copy_from_slice(&patch);
    // Overwrite inside one block.
    store.write_at(h(2), 5, b"hello").await.expect("write");
    model[5..10].copy_from_slice(b"hello");
    // Overwrite the tail and extend.
    let tail = pattern(11, 10_000);
    assert_eq!(
        store.write_at(h(2), 295_000, &tail).await.expect("write"),
        305_000
    );
    model.truncate(295_000);
    model.extend_from_slice(&tail);
    // A gap is zero-filled.
    assert_eq!(
        store.write_at(h(2), 310_000, b"xyz").await.expect("write"),
        310_003
    );
    model.resize(310_000, 0);
    model.extend_from_slice(b"xyz");

    let all = read_all(&store, 2, model.len()).await;
    assert_eq!(all, model);
    drop(store);
    let (store, report) = hs.open().await;
    assert_eq!(report.chunks, 1);
    assert!(
        report.cut.is_empty() && report.quarantined.is_empty(),
        "{report:?}"
    );
    assert_eq!(read_all(&store, 2, model.len()).await, model);
    assert_eq!(store.info(h(2)).await.expect("info").version, v(3));
}

async fn read_all(store: &gfs_storage_engine::ChunkStore, n: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let take = (len - out.len()).min(MAX_REQUEST as usize);
        let got = store
            .read(h(n), out.len() as u64, take as u64)
            .await
            .expect("read");
        out.extend_from_slice(&got);
    }
    out
}

async fn pad_fills_the_chunk_with_zeros_and_then_it_is_full(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(3), v(1)).await.expect("create");
    store.append(h(3), &pattern(1, 1000)).await.expect("append");
    assert_eq!(store.pad_to_end(h(3)).await.expect("pad"), CHUNK);
    let tail = store.read(h(3), 1000, 100_000).await.expect("read");
    assert!(tail.iter().all(|&b| b == 0));
    match store.append(h(3), b"x").await {
        Err(StoreError::ChunkFull {
            free: 0,
            requested: 1,
            ..
        }) => {}
        other => panic!("expected ChunkFull, got {other:?}"),
    }
    // A record that does not fit is refused whole.
    store.create(h(4), v(1)).await.expect("create");
    for _ in 0..3 {
        store
            .append(h(4), &[1; MAX_REQUEST as usize])
            .await
            .expect("append");
    }
    store
        .append(h(4), &[2; MAX_REQUEST as usize - 10])
        .await
        .expect("append");
    store
        .append(h(4), b"0123456789")
        .await
        .expect("fits exactly");
    assert!(matches!(
        store.append(h(4), b"z").await,
        Err(StoreError::ChunkFull { .. })
    ));
}

async fn versions_are_durable(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(5), v(1)).await.expect("create");
    store.append(h(5), b"abc").await.expect("append");
    for n in 2..6 {
        store.set_version(h(5), v(n)).await.expect("set version");
    }
    drop(store);
    let (store, _) = hs.open().await;
    assert_eq!(
        store.list().await,
        vec![ChunkInfo {
            handle: h(5),
            version: v(5),
            length: 3
        }]
    );
}

/// A chunkserver creates a chunk inside an RPC handler, which is dropped
/// when the caller (the master, after 1 s) gives up. The create must still
/// complete: dropped half-way, it left its files on disk, the chunk unknown
/// to the store and its handle marked as being created for good, so every
/// later mutation of it failed (`chunk ... does not exist`).
async fn a_create_whose_caller_goes_away_still_completes(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    {
        // Polled once (its files are being made off the runtime), then dropped.
        let mut create = std::pin::pin!(store.create(h(9), v(1)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(create.as_mut().poll(&mut cx).is_pending());
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.info(h(9)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chunk never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    store.append(h(9), b"after").await.expect("append");
    assert!(matches!(
        store.create(h(9), v(1)).await,
        Err(StoreError::AlreadyExists(_))
    ));
    drop(store);
    let (store, _) = hs.open().await;
    assert_eq!(store.info(h(9)).await.expect("info").length, 5);
}

/// Two creates of one chunk at once (the master's `SetVersion` retried
/// while the first is still making the files): whichever is told the chunk
/// already exists must find it at once, not `NotFound` until the other
/// create ends.
async fn a_create_told_the_chunk_exists_finds_it(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    for i in 0..16 {
        let handle = h(200 + i);
        let both = [(); 2].map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let created = store.create(handle, v(1)).await;
                (created, store.info(handle).await)
            })
        });
        let mut fresh = 0;
        for task in both {
            let (created, info) = task.await.expect("create task");
            match created {
                Ok(()) => fresh += 1,
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => panic!("create: {e}"),
            }
            assert_eq!(info.expect("info right after create").length, 0);
        }
        assert_eq!(fresh, 1, "exactly one create makes chunk {handle}");
    }
}

async fn delete_removes_the_chunk_for_good(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(6), v(1)).await.expect("create");
    store.create(h(7), v(1)).await.expect("create");
    store.append(h(6), b"doomed").await.expect("append");
    store.delete(h(6)).await.expect("delete");
    assert!(matches!(
        store.read(h(6), 0, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(h(6)).await,
        Err(StoreError::NotFound(_))
    ));
    let left: Vec<_> = std::fs::read_dir(hs.chunks_dir())
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.starts_with("0000000000000006"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(store);
    let (store, _) = hs.open().await;
    assert_eq!(
        store
            .list()
            .await
            .iter()
            .map(|c| c.handle)
            .collect::<Vec<_>>(),
        vec![h(7)]
    );
    // The handle can be used again.
    store.create(h(6), v(2)).await.expect("recreate");
}

async fn bad_requests_get_clear_errors(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(8), v(1)).await.expect("create");
    store.append(h(8), &[1; 100]).await.expect("append");
    assert!(matches!(
        store.create(h(8), v(1)).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.read(h(99), 0, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.append(h(99), b"x").await,
        Err(StoreError::NotFound(_))
    ));
    let err = store.read(h(8), 50, 51).await.expect_err("past the end");
    assert_eq!(
        err.to_string(),
        "chunk 0000000000000008: range 50+51 is outside its length 100"
    );
    assert!(matches!(
        store.read(h(8), u64::MAX, 2).await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.read(h(8), 100, 1).await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(store.read(h(8), 100, 0).await.expect("empty read").len(), 0);
    assert!(matches!(
        store.read(h(8), 0, MAX_REQUEST + 1).await,
        Err(StoreError::TooLarge { .. })
    ));
    let big = vec![0u8; MAX_REQUEST as usize + 1];
    assert!(matches!(
        store.append(h(8), &big).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        store.write_at(h(8), u64::MAX - 1, b"ab").await,
        Err(StoreError::ChunkFull { .. })
    ));
    assert!(matches!(
        store.write_at(h(8), CHUNK, b"a").await,
        Err(StoreError::ChunkFull { free: 0, .. })
    ));
    // Nothing above changed the chunk.
    assert_eq!(
        &store.read(h(8), 0, 100).await.expect("read")[..],
        &[1; 100][..]
    );
}

/// Opens the store again; nothing may have been cut or quarantined.
/// Reads a random range of a chunk and checks it against its model.
async fn read_some(
    store: &gfs_storage_engine::ChunkStore,
    handle: gfs_proto::ChunkHandle,
    model: &[u8],
    rng: &mut StdRng,
    step: u64,
) {
    let off = rng.random_range(0..model.len());
    let len = rng.random_range(0..=(model.len() - off).min(MAX_REQUEST as usize));
    let got = store
        .read(handle, off as u64, len as u64)
        .await
        .expect("read");
    assert_eq!(&got[..], &model[off..off + len], "step {step}");
}

async fn reopen_clean(hs: &Harness) -> gfs_storage_engine::ChunkStore {
    let (store, report) = hs.open().await;
    assert!(
        report.cut.is_empty() && report.quarantined.is_empty(),
        "{report:?}"
    );
    store
}

async fn random_operations_match_the_model(kind: Kind) {
    let hs = Harness::new(kind);
    let (mut store, _) = hs.open().await;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut models: Vec<Vec<u8>> = vec![Vec::new(); 3];
    for (i, _) in models.iter().enumerate() {
        store.create(h(100 + i as u64), v(1)).await.expect("create");
    }
    for step in 0..300u64 {
        let c = rng.random_range(0..models.len());
        let handle = h(100 + c as u64);
        let model = &mut models[c];
        match rng.random_range(0..10) {
            0..=3 => {
                let len = rng.random_range(1..40_000);
                let data = pattern(step, len);
                match store.append(handle, &data).await {
                    Ok(off) => {
                        assert_eq!(off, model.len() as u64);
                        model.extend_from_slice(&data);
                    }
                    Err(StoreError::ChunkFull { .. }) => {
                        assert!(model.len() + len > CHUNK as usize)
                    }
                    Err(e) => panic!("append: {e}"),
                }
            }
            4..=5 if !model.is_empty() => {
                let off = rng.random_range(0..model.len());
                let len = rng.random_range(1..70_000).min(CHUNK as usize - off);
                let data = pattern(step, len);
                store
                    .write_at(handle, off as u64, &data)
                    .await
                    .expect("write_at");
                if off + len > model.len() {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            6..=7 if !model.is_empty() => read_some(&store, handle, model, &mut rng, step).await,
            8 => store.sync(handle).await.expect("sync"),
            9 if step % 3 == 0 => {
                drop(store);
                store = reopen_clean(&hs).await;
            }
            _ => {}
        }
    }
    for (i, model) in models.iter().enumerate() {
        let info = store.info(h(100 + i as u64)).await.expect("info");
        assert_eq!(info.length, model.len() as u64);
        assert_eq!(read_all(&store, 100 + i as u64, model.len()).await, *model);
    }
}

/// Appends submitted without waiting for the ones before them to land
/// (`ahead`), mixed with reads, overwrites, syncs and unaligned appends,
/// which wait for them: every landing reports its own end, every read the
/// model, in memory and after a reopen.
async fn appends_in_flight_together_match_the_model(kind: Kind) {
    use std::collections::VecDeque;
    let hs = Harness::new(kind);
    let (mut store, _) = hs.open().await;
    let mut rng = StdRng::seed_from_u64(0xa4ead);
    let mut handle = h(300);
    store.create(handle, v(1)).await.expect("create");
    let mut model: Vec<u8> = Vec::new();
    let mut models = Vec::new();
    let mut flying: VecDeque<(gfs_storage_engine::Landing, u64)> = VecDeque::new();
    for step in 0..240u64 {
        let aligned = rng.random_range(0..4) > 0;
        let len = if aligned {
            4_096 * rng.random_range(1..=12)
        } else {
            rng.random_range(1..20_000)
        };
        if model.len() + len > CHUNK as usize {
            for (l, end) in flying.drain(..) {
                assert_eq!(l.landed().await.expect("lands"), end);
            }
            models.push((handle, std::mem::take(&mut model)));
            handle = h(handle.0 + 1);
            store.create(handle, v(1)).await.expect("create");
        }
        match rng.random_range(0..10) {
            0..=4 => {
                let data = pattern(step, len);
                let at = model.len() as u64;
                let parts: [&[u8]; 1] = [&data];
                let prepared = if rng.random() {
                    store.prepare(at, &parts)
                } else {
                    None
                };
                let landing = store
                    .submit_prepared(handle, at, &parts, prepared)
                    .await
                    .expect("accepted");
                model.extend_from_slice(&data);
                flying.push_back((landing, model.len() as u64));
            }
            5 | 6 => {
                if let Some((l, end)) = flying.pop_front() {
                    assert_eq!(l.landed().await.expect("lands"), end, "step {step}");
                }
            }
            7 if !model.is_empty() => read_some(&store, handle, &model, &mut rng, step).await,
            8 if !model.is_empty() => {
                let off = rng.random_range(0..model.len());
                let n = rng.random_range(1..5_000).min(model.len() - off);
                let data = pattern(step + 1_000, n);
                store
                    .write_at(handle, off as u64, &data)
                    .await
                    .expect("write_at");
                model[off..off + n].copy_from_slice(&data);
            }
            9 => store.sync(handle).await.expect("sync"),
            _ => {}
        }
        if step % 80 == 79 {
            for (l, end) in flying.drain(..) {
                assert_eq!(l.landed().await.expect("lands"), end);
            }
            drop(store);
            store = reopen_clean(&hs).await;
        }
    }
    for (l, end) in flying.drain(..) {
        assert_eq!(l.landed().await.expect("lands"), end);
    }
    models.push((handle, model));
    for (handle, model) in &models {
        assert_eq!(
            store.info(*handle).await.expect("info").length,
            model.len() as u64
        );
        assert_eq!(read_all(&store, handle.0, model.len()).await, *model);
    }
    drop(store);
    let store = reopen_clean(&hs).await;
    for (handle, model) in &models {
        assert_eq!(read_all(&store, handle.0, model.len()).await, *model);
    }
}

/// Appends 5000 bytes unprepared at the chunk's end, which must complete
/// within 10 s whatever memory `holders` hold; the model grows by them.
async fn append_in_its_turn(
    store: &gfs_storage_engine::ChunkStore,
    handle: gfs_proto::ChunkHandle,
    model: &mut Vec<u8>,
    holders: &str,
) {
    let tail = pattern(7, 5000);
    let parts: [&[u8]; 1] = [&tail];
    let unprepared = store.write_prepared(handle, model.len() as u64, &parts, None);
    tokio::time::timeout(std::time::Duration::from_secs(10), unprepared)
        .await
        .unwrap_or_else(|_| panic!("a write in its turn waits on memory {holders} hold"))
        .expect("an unprepared write");
    model.extend_from_slice(&tail);
}

/// Appends prepared ahead of the chunk's lock (copied and checksummed
/// without it) land as plain appends do, also when the chunk changed in
/// between (the preparation no longer fits and the write is filled the
/// ordinary way) and when the cached tail sector is gone (a reopen).
async fn prepared_appends_match_the_model_whatever_happened_in_between(kind: Kind) {
    let mut hs = Harness::new(kind);
    let (mut store, _) = hs.open().await;
    let handle = h(13);
    store.create(handle, v(1)).await.expect("create");
    let mut rng = StdRng::seed_from_u64(0xfeed);
    let mut model = Vec::new();
    let mut step = 0u64;
    while model.len() + 300_000 < CHUNK as usize {
        step += 1;
        // Mostly records within a block; every tenth spans several.
        let len = match step % 10 {
            0 => rng.random_range(65_000..MAX_REQUEST as usize),
            _ => rng.random_range(1..6000),
        };
        let data = pattern(step, len);
        let off = model.len() as u64;
        let prepared = store.prepare(off, &[&data[..len / 3], &data[len / 3..]]);
        assert!(prepared.is_some(), "step {step}: memory is free");
        match rng.random_range(0..6) {
            // The chunk grows first: the write overwrites what landed.
            0 => {
                let other = pattern(step + 1000, rng.random_range(1..5000));
                store.append(handle, &other).await.expect("append");
                model.extend_from_slice(&other);
            }
            // Another write lands first, at the same offset.
            1 => {
                let other = pattern(step + 2000, len + 7);
                store.write_at(handle, off, &other).await.expect("write");
                model.extend_from_slice(&other);
            }
            _ => {}
        }
        let end = store
            .write_prepared(handle, off, &[&data], prepared)
            .await
            .expect("write prepared");
        let at = off as usize;
        if model.len() < at + len {
            model.resize(at + len, 0);
        }
        model[at..at + len].copy_from_slice(&data);
        assert_eq!(end, model.len() as u64, "step {step}");
        if step.is_multiple_of(17) {
            drop(store);
            store = reopen_clean(&hs).await;
        }
    }
    assert_eq!(read_all(&store, 13, model.len()).await, model);

    // Nothing to prepare, or more than a request or the chunk holds.
    assert!(store.prepare(0, &[]).is_none());
    assert!(
        store
            .prepare(0, &[&vec![1; MAX_REQUEST as usize + 1]])
            .is_none()
    );
    assert!(store.prepare(CHUNK - 10, &[&[1; 11]]).is_none());
    // Preparations take free memory or nothing: they never wait for it,
    // and what they hold never keeps a write in its turn waiting.
    let big = vec![2u8; MAX_REQUEST as usize];
    let held: Vec<_> = std::iter::from_fn(|| store.prepare(0, &[&big]))
        .take(64)
        .collect();
    assert!(held.len() < 64, "the memory bound stops preparations");
    let off = model.len() as u64;
    assert!(store.prepare(off, &[&pattern(7, 5000)]).is_none());
    append_in_its_turn(&store, handle, &mut model, "preparations").await;
    drop(held);

    // Every checksum on the disk agrees with the data.
    drop(store);
    hs.verify_on_open = true;
    let store = reopen_clean(&hs).await;
    assert_eq!(read_all(&store, 13, model.len()).await, model);
}

/// Receives `data` into the store's memory in `parts` (each filled in two
/// steps, as a socket would), checking that the `Bytes` views handed out
/// while filling are the data.
fn receive(
    store: &gfs_storage_engine::ChunkStore,
    data: &[u8],
    parts: &[usize],
) -> Vec<gfs_storage_engine::Received> {
    let mut at = 0;
    let mut out = Vec::new();
    for &n in parts {
        let mut r = store.receiving(n).expect("memory is free");
        let mut views = Vec::new();
        for step in [n / 2, n - n / 2] {
            r.unfilled(step).copy_from_slice(&data[at..at + step]);
            views.push(r.advance(step));
            at += step;
        }
        assert_eq!(views.concat(), &data[at - n..at]);
        let done = r.finish().expect("every byte filled");
        assert_eq!(done.bytes(), &data[at - n..at]);
        out.push(done);
    }
    assert_eq!(at, data.len());
    out
}

/// Appends of data received into the store's memory are written from
/// where it lies when they land on a sector; otherwise, or when the chunk
/// changed in between, the data is copied as before. Either way the chunk
/// matches the model, every checksum agrees, and what follows the data in
/// its last sector on the disk is zeros, never a recycled buffer's bytes.
async fn received_appends_are_written_where_they_lie(kind: Kind) {
    let mut hs = Harness::new(kind);
    let (mut store, _) = hs.open().await;
    let handle = h(14);
    store.create(handle, v(1)).await.expect("create");
    let mut rng = StdRng::seed_from_u64(0xa11e);
    let mut model = Vec::new();
    let mut step = 0u64;
    let mut in_place = 0;
    while model.len() + MAX_REQUEST as usize + 75_000 < CHUNK as usize {
        step += 1;
        // Whole sectors mostly (a writer's pieces, framed records), split
        // in up to three received parts, now and then across several
        // blocks; now and then an odd length, after which the next append
        // is not on a sector.
        let len = match step % 5 {
            0 => rng.random_range(1..70_000),
            1 if step.is_multiple_of(3) => MAX_REQUEST as usize,
            _ => rng.random_range(1..=16) * 4096,
        };
        let mut parts = Vec::new();
        let mut left = len;
        while left > 0 {
            let whole = (left / 4096) * 4096;
            let n = if whole > 4096 && parts.len() < 2 {
                rng.random_range(1..whole / 4096) * 4096
            } else {
                left
            };
            parts.push(n);
            left -= n;
        }
        let data = pattern(step, len);
        let received = receive(&store, &data, &parts);
        let off = model.len() as u64;
        let prepared = store.prepare_received(off, &received);
        assert_eq!(prepared.is_some(), off.is_multiple_of(4096), "step {step}");
        in_place += usize::from(prepared.is_some());
        if step.is_multiple_of(7) {
            // The chunk grows first: the preparation no longer fits.
            let other = pattern(step + 1000, rng.random_range(1..5000));
            store.append(handle, &other).await.expect("append");
            model.extend_from_slice(&other);
        }
        let slices: Vec<&[u8]> = received.iter().map(|r| r.bytes()).collect();
        let end = store
            .write_prepared(handle, off, &slices, prepared)
            .await
            .expect("write received");
        let at = off as usize;
        model.resize(model.len().max(at + len), 0);
        model[at..at + len].copy_from_slice(&data);
        assert_eq!(end, model.len() as u64, "step {step}");
        if step.is_multiple_of(11) {
            drop(store);
            store = reopen_clean(&hs).await;
        }
    }
    assert!(
        in_place >= 5,
        "only {in_place} appends were written in place"
    );
    assert_eq!(read_all(&store, 14, model.len()).await, model);

    // What cannot be written in place: off a sector, a part before the
    // last that is not whole sectors, more than a request or the chunk
    // holds, nothing at all.
    let off = (model.len() as u64).next_multiple_of(4096);
    let two = receive(&store, &pattern(1, 9000), &[5000, 4000]);
    assert!(store.prepare_received(off, &two).is_none());
    let one = receive(&store, &pattern(2, 4096), &[4096]);
    assert!(store.prepare_received(off + 512, &one).is_none());
    assert!(store.prepare_received(CHUNK - 2048, &one).is_none());
    assert!(store.prepare_received(off, &[]).is_none());
    assert!(store.receiving(0).is_none());
    assert!(store.receiving(MAX_REQUEST as usize + 1).is_none());

    // Receive buffers take free memory or nothing, and what they hold
    // never keeps a write in its turn waiting.
    let held: Vec<_> = std::iter::from_fn(|| store.receiving(MAX_REQUEST as usize))
        .take(64)
        .collect();
    assert!(held.len() < 64, "the memory bound stops receive buffers");
    // They hold at most half of what preparations may (a push can wait
    // long for its mutation): a copied preparation still finds memory.
    let copied = store.prepare(model.len() as u64, &[&pattern(8, MAX_REQUEST as usize)]);
    assert!(copied.is_some(), "received data left no memory to prepare");
    drop(copied);
    append_in_its_turn(&store, handle, &mut model, "receive buffers").await;
    drop(held);

    // A buffer last filled with 0xff, received again for fewer bytes and
    // appended on a sector: the rest of its sector reaches the disk as zeros.
    let junk = receive(&store, &vec![0xff; 8192], &[8192]);
    drop(junk);
    let pad = vec![0u8; model.len().next_multiple_of(4096) - model.len()];
    store.append(handle, &pad).await.expect("pad to a sector");
    model.extend_from_slice(&pad);
    let short = receive(&store, &pattern(3, 100), &[100]);
    let off = model.len() as u64;
    let prepared = store.prepare_received(off, &short);
    assert!(prepared.is_some());
    let slices = [short[0].bytes()];
    store
        .write_prepared(handle, off, &slices, prepared)
        .await
        .expect("short received write");
    model.extend_from_slice(short[0].bytes());
    store.sync(handle).await.expect("sync");
    let file = std::fs::read(hs.chunks_dir().join(format!("{}.chunk", h(14)))).expect("file");
    let sector = &file[off as usize..off as usize + 4096];
    assert_eq!(&sector[..100], short[0].bytes());
    assert!(sector[100..].iter().all(|&b| b == 0), "stale bytes on disk");

    // Every checksum on the disk agrees with the data.
    drop(store);
    hs.verify_on_open = true;
    let store = reopen_clean(&hs).await;
    assert_eq!(read_all(&store, 14, model.len()).await, model);
}

async fn leftovers_of_interrupted_creates_and_deletes_are_removed(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(9), v(1)).await.expect("create");
    drop(store);
    let chunks = hs.chunks_dir();
    // A create that died before its metadata was renamed into place, and a
    // delete that died after removing the metadata.
    std::fs::write(chunks.join("000000000000000a.chunk"), b"").expect("write");
    std::fs::write(chunks.join("000000000000000a.meta.tmp"), b"partial").expect("write");
    std::fs::write(chunks.join("000000000000000b.chunk"), vec![0u8; 4096]).expect("write");
    let (store, report) = hs.open().await;
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert_eq!(report.chunks, 1);
    assert_eq!(store.list().await.len(), 1);
    let mut names: Vec<_> = std::fs::read_dir(&chunks)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["0000000000000009.chunk", "0000000000000009.meta"]
    );
}

async fn usage_counts_bytes_per_directory(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(11), v(1)).await.expect("create");
    store.append(h(11), &[7; 12_345]).await.expect("append");
    let u = &store.usage()[0];
    assert_eq!(u.used_bytes, 12_345);
    assert!(u.free_bytes > 0 && u.total_bytes >= u.free_bytes);
    assert_eq!(u.poisoned, None);
    drop(store);
    let (store, _) = hs.open().await;
    assert_eq!(store.usage()[0].used_bytes, 12_345);
}

async fn concurrent_appends_to_one_chunk_are_serialised(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    store.create(h(12), v(1)).await.expect("create");
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for i in 0..10u8 {
                let rec = vec![t * 16 + i; 1000 + usize::from(t) * 7];
                placed.push((store.append(h(12), &rec).await.expect("append"), rec));
            }
            placed
        }));
    }
    let mut total = 0;
    for task in tasks {
        for (off, rec) in task.await.expect("task") {
            let got = store
                .read(h(12), off, rec.len() as u64)
                .await
                .expect("read");
            assert_eq!(&got[..], &rec[..]);
            total += rec.len() as u64;
        }
    }
    assert_eq!(store.info(h(12)).await.expect("info").length, total);
}

/// Several data directories (one per disk): chunks spread over them, usage
/// is per directory, and a restart finds every chunk where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_directories_are_served_by_one_store() {
    common::init_tracing();
    let tmp = tempfile::tempdir().expect("temp dir");
    let cfg = || gfs_storage_engine::StoreConfigFile {
        dirs: vec![tmp.path().join("disk0"), tmp.path().join("disk1")],
        ..common::config_for(&tmp.path().join("unused"), Kind::Uring, false)
    };
    let (store, report) = gfs_storage_engine::ChunkStore::open(cfg())
        .await
        .expect("open");
    assert_eq!(report.backends.len(), 2);
    for n in 0..8 {
        store.create(h(n), v(1)).await.expect("create");
        store
            .append(h(n), &pattern(n, 10_000 + n as usize))
            .await
            .expect("append");
    }
    let usage = store.usage();
    assert_eq!(usage.len(), 2);
    assert_eq!(
        usage.iter().map(|u| u.used_bytes).sum::<u64>(),
        (0..8).map(|n| 10_000 + n).sum()
    );
    let on_disk = |d: &str| {
        std::fs::read_dir(tmp.path().join(d).join("chunks"))
            .expect("list")
            .count()
            / 2
    };
    assert_eq!(on_disk("disk0") + on_disk("disk1"), 8);
    // Both directories sit on one filesystem here, so the tie-break spreads them.
    assert!(
        on_disk("disk0") >= 3 && on_disk("disk1") >= 3,
        "{} / {}",
        on_disk("disk0"),
        on_disk("disk1")
    );
    drop(store);
    let (store, report) = gfs_storage_engine::ChunkStore::open(cfg())
        .await
        .expect("reopen");
    assert_eq!(report.chunks, 8);
    for n in 0..8u64 {
        let len = 10_000 + n;
        assert_eq!(
            &store.read(h(n), 0, len).await.expect("read")[..],
            &pattern(n, len as usize)[..]
        );
    }
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    n.sort();
    n
}

/// Fills chunk `n` to the end with `pattern(seed)`.
async fn fill_chunk(store: &gfs_storage_engine::ChunkStore, n: u64, seed: u64) {
    store.create(h(n), v(1)).await.expect("create");
    let data = pattern(seed, CHUNK as usize);
    for part in data.chunks(MAX_REQUEST as usize) {
        store.append(h(n), part).await.expect("append");
    }
}

async fn new_chunks_write_over_the_files_of_deleted_full_chunks(kind: Kind) {
    let hs = Harness::new(kind);
    let (store, _) = hs.open().await;
    fill_chunk(&store, 20, 1).await;
    store.create(h(21), v(1)).await.expect("create");
    store.append(h(21), &[5; 10_000]).await.expect("append");
    assert_eq!(store.usage()[0].pooled_bytes, 0);
    store.delete(h(20)).await.expect("delete");
    // A chunk that is not whole is not kept: its blocks are not all there.
    store.delete(h(21)).await.expect("delete");
    assert_eq!(names(&hs.recycle_dir()), vec!["0000000000000014.free"]);
    assert!(names(&hs.chunks_dir()).is_empty());
    // The pooled file counts as free space.
    let u = &store.usage()[0];
    assert_eq!(u.pooled_bytes, CHUNK);
    assert!(u.free_bytes >= CHUNK);

    // The next chunk takes the file over, stale bytes and all, and none of
    // them is ever served.
    store.create(h(22), v(1)).await.expect("create");
    assert!(names(&hs.recycle_dir()).is_empty());
    assert_eq!(store.usage()[0].pooled_bytes, 0);
    let file = hs.chunks_dir().join("0000000000000016.chunk");
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), CHUNK);
    let data = pattern(2, 10_000);
    store.append(h(22), &data).await.expect("append");
    assert_eq!(store.read(h(22), 0, 10_000).await.expect("read"), data);
    assert!(matches!(
        store.read(h(22), 0, 10_001).await,
        Err(StoreError::OutOfRange { .. })
    ));
    store.append(h(22), &data).await.expect("append");
    assert_eq!(store.read(h(22), 10_000, 10_000).await.expect("read"), data);

    // A restart recovers it at its length and trims the stale tail.
    drop(store);
    let (store, report) = hs.open().await;
    assert!(
        report.cut.is_empty() && report.quarantined.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        store.info(h(22)).await.expect("info"),
        ChunkInfo {
            handle: h(22),
            version: v(1),
            length: 20_000
        }
    );
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), 20_480);
    let mut both = data.clone();
    both.extend_from_slice(&data);
    assert_eq!(store.read(h(22), 0, 20_000).await.expect("read"), both);
}

async fn the_pool_of_deleted_chunks_files_is_bounded_and_checked_at_open(kind: Kind) {
    let mut hs = Harness::new(kind);
    hs.recycle_chunk_files = Some(1);
    let (store, _) = hs.open().await;
    fill_chunk(&store, 30, 3).await;
    fill_chunk(&store, 31, 4).await;
    store.delete(h(30)).await.expect("delete");
    store.delete(h(31)).await.expect("delete");
    assert_eq!(names(&hs.recycle_dir()), vec!["000000000000001e.free"]);
    drop(store);
    // What a crash or another program could leave there: a short file and
    // a stranger. Both go at open; the whole file stays.
    std::fs::write(hs.recycle_dir().join("0000000000000040.free"), [1; 4096]).expect("write");
    std::fs::write(hs.recycle_dir().join("notes.txt"), b"x").expect("write");
    let (store, _) = hs.open().await;
    assert_eq!(names(&hs.recycle_dir()), vec!["000000000000001e.free"]);
    // The pool survives a restart, and feeds the next create.
    fill_chunk(&store, 32, 5).await;
    assert!(names(&hs.recycle_dir()).is_empty());
    assert_eq!(
        read_all(&store, 32, CHUNK as usize).await,
        pattern(5, CHUNK as usize)
    );
    // With no pool, a deleted chunk's files simply go.
    drop(store);
    hs.recycle_chunk_files = Some(0);
    let (store, _) = hs.open().await;
    store.delete(h(32)).await.expect("delete");
    assert!(names(&hs.recycle_dir()).is_empty());
    assert!(names(&hs.chunks_dir()).is_empty());
}
