//! Criterion micro-benchmarks of the storage engine: CRC32C, an append's
//! preparation, append and read.
//! Run with `cargo bench -p gfs-benches`; under `cargo test` each runs once.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gfs_proto::{ChunkHandle, ChunkVersion};
use gfs_storage_engine::{ChunkStore, StoreConfigFile, StoreError};

fn random(len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut v);
    v
}

/// CRC-32C as gfs-rs computes it (`gfs_proto::crc`, crc-fast) and, beside
/// it, the `crc32c` crate it replaced.
fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [4 << 10, 64 << 10, 1 << 20] {
        let data = random(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("gfs", size), &data, |b, d| {
            b.iter(|| gfs_proto::crc::crc32c(std::hint::black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("crc32c-crate", size), &data, |b, d| {
            b.iter(|| crc32c::crc32c(std::hint::black_box(d)))
        });
    }
    g.finish();
}

struct Bench {
    rt: tokio::runtime::Runtime,
    store: ChunkStore,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir_in(
            std::env::var_os("GFS_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = StoreConfigFile::for_dir(dir.path().join("store"));
        let (store, _) = rt.block_on(ChunkStore::open(cfg)).expect("open store");
        Self {
            rt,
            store,
            next: 1,
            _dir: dir,
        }
    }

    fn fresh_chunk(&mut self) -> ChunkHandle {
        let h = ChunkHandle(self.next);
        self.next += 1;
        self.rt
            .block_on(self.store.create(h, ChunkVersion(1)))
            .expect("create");
        h
    }
}

/// An append's costly part off the chunk's lock: copying the pieces it
/// arrived in (two 512 KiB network pieces, unaligned by a record header)
/// into an aligned buffer, with the CRC32C of every block.
fn prepare(c: &mut Criterion) {
    let mut g = c.benchmark_group("prepare");
    let bench = Bench::new();
    let data = random(1 << 20);
    let (a, b) = data.split_at(512 << 10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function(BenchmarkId::from_parameter(data.len()), |bn| {
        bn.iter(|| {
            let p = bench
                .store
                .prepare(4096 + 28, std::hint::black_box(&[a, b]));
            assert!(p.is_some(), "memory for a preparation");
        })
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for size in [1000usize, 4 << 10, 1 << 20] {
        let mut bench = Bench::new();
        let data = random(size);
        let mut h = bench.fresh_chunk();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| match bench.rt.block_on(bench.store.append(h, &data)) {
                Ok(_) => {}
                Err(StoreError::ChunkFull { .. }) => {
                    let old = h;
                    h = bench.fresh_chunk();
                    bench.rt.block_on(bench.store.delete(old)).expect("delete");
                    bench
                        .rt
                        .block_on(bench.store.append(h, &data))
                        .expect("append");
                }
                Err(e) => panic!("append: {e}"),
            })
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let mut bench = Bench::new();
    let h = bench.fresh_chunk();
    let mib = random(1 << 20);
    for _ in 0..16 {
        bench
            .rt
            .block_on(bench.store.append(h, &mib))
            .expect("fill");
    }
    for size in [4u64 << 10, 1 << 20, 8 << 20] {
        let mut at = 0u64;
        g.throughput(Throughput::Bytes(size));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                let got = bench
                    .rt
                    .block_on(bench.store.read(h, at, size))
                    .expect("read");
                at = (at + size) % (16 << 20);
                got
            })
        });
    }
    g.finish();
}

criterion_group!(benches, crc, prepare, append, read);
criterion_main!(benches);
