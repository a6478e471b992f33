//! `gfs-bench meta-memory`: bytes of master memory per file and per chunk,
//! for N files in a realistic tree (dated log directories of part files),
//! measured by a counting global allocator around the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};
use gfs_master::state::{Command, MasterState, Request};
use gfs_proto::GfsPath;
use serde::Serialize;

/// Counts live heap bytes and allocations.
pub struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn snapshot() -> (usize, usize) {
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    )
}

#[derive(clap::Args, Debug)]
pub struct MetaMemoryArgs {
    /// Number of files.
    #[arg(long, default_value_t = 1_000_000)]
    pub files: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub files: u64,
    pub chunks: u64,
    pub bytes_per_file: f64,
    pub bytes_per_chunk: f64,
    /// Heap allocations per file (each costs the allocator ~16 bytes more).
    pub allocations_per_file: f64,
    pub average_path_bytes: f64,
    pub limit_bytes: u64,
    /// CPU cost of the layout: microseconds per applied create, and per
    /// stat of a random file.
    pub create_us: f64,
    pub stat_us: f64,
}

/// `/logs/<service>/<day>/<hour>/part-<n>`: 8 services, days, 24 hours,
/// 100 parts an hour.
fn path_of(i: u64) -> String {
    let part = i % 100;
    let hour = (i / 100) % 24;
    let service = (i / 2400) % 8;
    let day = i / 19_200;
    format!(
        "/logs/svc-{service}/2026-{:02}-{:02}/{hour:02}/part-{part:05}.log",
        1 + day / 28 % 12,
        1 + day % 28
    )
}

pub fn run(args: &MetaMemoryArgs) -> Result<Report> {
    let mut st = MasterState::new(64 << 20);
    let apply = |st: &mut MasterState, cmd| {
        st.apply(Request {
            client: 0,
            seq: 0,
            now_ms: 1,
            cmd,
        })
    };
    let mut path_bytes = 0u64;
    // Directories first, so the per-file figure covers files only.
    for i in (0..args.files).step_by(100) {
        let p = path_of(i);
        let dir = GfsPath::parse(&p)?.parent().expect("files have parents");
        apply(
            &mut st,
            Command::Mkdir {
                path: dir,
                parents: true,
            },
        )
        .ok();
    }
    let _ = st.take_dirty();
    let (b0, a0) = snapshot();
    let started = std::time::Instant::now();
    for i in 0..args.files {
        let p = path_of(i);
        path_bytes += p.len() as u64;
        if let Err(e) = apply(
            &mut st,
            Command::Create {
                path: GfsPath::parse(&p)?,
                replication: 3,
            },
        ) {
            bail!("create {p}: {e}");
        }
    }
    let _ = st.take_dirty();
    let create_us = started.elapsed().as_secs_f64() * 1e6 / args.files as f64;
    let (b1, a1) = snapshot();
    for i in 0..args.files {
        let path = GfsPath::parse(&path_of(i))?;
        if let Err(e) = apply(
            &mut st,
            Command::AddChunk {
                path,
                index: 0,
                replicas: vec![],
            },
        ) {
            bail!("add chunk: {e}");
        }
    }
    let _ = st.take_dirty();
    let (b2, _) = snapshot();
    let n = args.files as f64;
    // Stats in a scattered order (a multiplicative hash of the index).
    let stats = args.files.min(200_000);
    let started = std::time::Instant::now();
    for i in 0..stats {
        let path = GfsPath::parse(&path_of(i.wrapping_mul(2_654_435_761) % args.files))?;
        if st.stat(&path).is_err() {
            bail!("stat {path}: missing");
        }
    }
    let stat_us = started.elapsed().as_secs_f64() * 1e6 / stats as f64;
    Ok(Report {
        files: args.files,
        chunks: args.files,
        bytes_per_file: (b1 - b0) as f64 / n,
        bytes_per_chunk: (b2 - b1) as f64 / n,
        allocations_per_file: (a1 - a0) as f64 / n,
        average_path_bytes: path_bytes as f64 / n,
        limit_bytes: 64,
        create_us,
        stat_us,
    })
}

pub fn print_table(r: &Report) {
    println!(
        "master memory for {} files in dated log directories (average path {:.0} bytes), one chunk each",
        r.files, r.average_path_bytes
    );
    println!("{:<10} {:>12} {:>8}", "", "bytes each", "limit");
    println!(
        "{:<10} {:>12.1} {:>8}",
        "file", r.bytes_per_file, r.limit_bytes
    );
    println!(
        "{:<10} {:>12.1} {:>8}",
        "chunk", r.bytes_per_chunk, r.limit_bytes
    );
    println!(
        "(heap bytes requested, {:.1} allocations per file on top)",
        r.allocations_per_file
    );
    println!(
        "cost: {:.2} us per applied create, {:.2} us per stat",
        r.create_us, r.stat_us
    );
}
