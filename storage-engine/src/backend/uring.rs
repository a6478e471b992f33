//! io_uring backend: one ring on one dedicated thread per data directory.
//!
//! Callers hand operations to the thread over a channel and poke an eventfd;
//! the ring always has a read of that eventfd outstanding, so the thread
//! sleeps in one place (`submit_and_wait`) whether it waits for new work or
//! for completions. Up to `depth` device I/Os are in flight at once; short
//! transfers are resubmitted for the remainder, so callers only ever see
//! whole transfers or errors.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use io_uring::{IoUring, opcode, squeue, types};

use super::{IoBackend, IoCallback, IoOp};
use crate::buf::Arena;

const WAKE: u64 = u64::MAX;

#[derive(Debug)]
pub struct UringBackend {
    tx: Option<Sender<(IoOp, IoCallback)>>,
    registered: bool,
    wake: OwnedFd,
    thread: Option<thread::JoinHandle<()>>,
}

/// Checks that this kernel lets us create a ring at all (seccomp, sysctl
/// `kernel.io_uring_disabled`, old kernels).
pub fn probe() -> Result<(), String> {
    IoUring::new(2).map(drop).map_err(|e| e.to_string())
}

impl UringBackend {
    /// Starts the ring thread. With an arena, the arena is registered with
    /// the ring and I/O into it uses fixed-buffer operations; if the kernel
    /// refuses the registration (RLIMIT_MEMLOCK), plain operations are used
    /// and a warning says so.
    pub fn new(depth: u32, name: &str, arena: Option<Arc<Arena>>) -> io::Result<Self> {
        let ring = IoUring::new((depth + 1).next_power_of_two())?;
        let arena = arena.and_then(|a| {
            let (base, len) = a.region();
            let iov = [libc::iovec { iov_base: base.cast(), iov_len: len }];
            // SAFETY: the arena is kept alive by the worker, which owns the
            // ring, for as long as the registration exists.
            match unsafe { ring.submitter().register_buffers(&iov) } {
                Ok(()) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, bytes = len, "io_uring refused to register the buffer arena; using plain I/O");
                    None
                }
            }
        });
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a freshly created descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let (tx, rx) = crossbeam_channel::unbounded();
        let registered = arena.is_some();
        let mut worker = Worker::new(ring, depth as usize, rx, wake.try_clone()?, arena);
        let thread = thread::Builder::new()
            .name(format!("gfs-uring-{name}"))
            .spawn(move || worker.run())?;
        Ok(Self {
            tx: Some(tx),
            registered,
            wake,
            thread: Some(thread),
        })
    }

    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

impl IoBackend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn registered_buffers(&self) -> bool {
        self.registered
    }

    fn submit(&self, op: IoOp, done: IoCallback) {
        // A write into the page cache (the metadata files' checksum entries
        // and headers, a few hundred bytes) is done here and now: through
        // the ring it crossed to the ring's thread and then to one of
        // io_uring's own workers, which punts buffered writes, and back,
        // three thread hand-offs for a copy of microseconds (6.5 % of the
        // CPU time of record appends, BENCHMARKS.md, 2026-12-01).
        if let IoOp::Write { file, offset, buf } = &op
            && !is_direct(file)
        {
            use std::os::unix::fs::FileExt;
            return done(file.write_all_at(buf.as_slice(), *offset));
        }
        let Some(tx) = &self.tx else {
            return done(Err(io::Error::other("io_uring backend is shut down")));
        };
        if let Err(crossbeam_channel::SendError((op, done))) = tx.send((op, done)) {
            drop(op);
            return done(Err(io::Error::other("io_uring thread is gone")));
        }
        self.poke();
    }
}

/// Whether `file` was opened with O_DIRECT (its writes go to the device).
fn is_direct(file: &std::fs::File) -> bool {
    // SAFETY: F_GETFL only reads the flags of a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        self.tx = None;
        self.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Pending {
    op: IoOp,
    done: IoCallback,
    /// Bytes already transferred (short transfers are resumed).
    moved: usize,
}

struct Worker {
    ring: IoUring,
    /// The registered arena (buffer index 0), if registration succeeded.
    /// Declared after the ring so it outlives the registration.
    arena: Option<Arc<Arena>>,
    depth: usize,
    rx: Receiver<(IoOp, IoCallback)>,
    wake: OwnedFd,
    wake_buf: Box<u64>,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    in_flight: usize,
}

impl Worker {
    fn new(
        ring: IoUring,
        depth: usize,
        rx: Receiver<(IoOp, IoCallback)>,
        wake: OwnedFd,
        arena: Option<Arc<Arena>>,
    ) -> Self {
        Self {
            ring,
            arena,
            depth,
            rx,
            wake,
            wake_buf: Box::new(0),
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
        }
    }

    fn run(&mut self) {
        self.arm_wake();
        let mut open = true;
        loop {
            while open && self.in_flight < self.depth {
                match self.rx.try_recv() {
                    Ok((op, done)) => self.start(op, done),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if !open && self.in_flight == 0 {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    self.fail_all(&e);
                    return;
                }
            }
            let completed: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (key, res) in completed {
                if key == WAKE {
                    self.arm_wake();
                } else {
                    self.complete(key as usize, res);
                }
            }
        }
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            (&raw mut *self.wake_buf).cast(),
            8,
        )
        .build()
        .user_data(WAKE);
        self.push(&sqe);
    }

    fn push(&mut self, sqe: &squeue::Entry) {
        // SAFETY: every buffer an entry points to outlives the operation: the
        // wake buffer lives in self, and I/O windows are kept alive by the
        // `Pending` in `slots` until the completion is reaped.
        while unsafe { self.ring.submission().push(sqe) }.is_err() {
            // The queue holds depth + 1 entries, so this only happens when the
            // kernel has not consumed earlier ones yet.
            let _ = self.ring.submit();
        }
    }

    fn start(&mut self, op: IoOp, done: IoCallback) {
        let slot = self
            .free
            .pop()
            .expect("in_flight < depth leaves a free slot");
        self.slots[slot] = Some(Pending { op, done, moved: 0 });
        self.in_flight += 1;
        self.issue(slot);
    }

    fn issue(&mut self, slot: usize) {
        let p = self.slots[slot].as_ref().expect("issued slot is occupied");
        let rest = |buf: &crate::buf::IoSlice| {
            // SAFETY: moved < buf.len(), so the pointer stays inside the window.
            (
                unsafe { buf.as_ptr().add(p.moved) },
                (buf.len() - p.moved) as u32,
            )
        };
        let fixed = |buf: &crate::buf::IoSlice| self.arena.is_some() && buf.is_registered();
        let sqe = match &p.op {
            IoOp::Read { file, offset, buf } => {
                let (ptr, len) = rest(buf);
                let (fd, at) = (types::Fd(file.as_raw_fd()), offset + p.moved as u64);
                if fixed(buf) {
                    opcode::ReadFixed::new(fd, ptr, len, 0).offset(at).build()
                } else {
                    opcode::Read::new(fd, ptr, len).offset(at).build()
                }
            }
            IoOp::Write { file, offset, buf } => {
                let (ptr, len) = rest(buf);
                let (fd, at) = (types::Fd(file.as_raw_fd()), offset + p.moved as u64);
                if fixed(buf) {
                    opcode::WriteFixed::new(fd, ptr, len, 0).offset(at).build()
                } else {
                    opcode::Write::new(fd, ptr, len).offset(at).build()
                }
            }
            IoOp::Sync { file } => opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        self.push(&sqe.user_data(slot as u64));
    }

    fn complete(&mut self, slot: usize, res: i32) {
        let Some(p) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            tracing::error!(slot, "io_uring completion for an empty slot");
            return;
        };
        let outcome = if res < 0 {
            Some(Err(io::Error::from_raw_os_error(-res)))
        } else if matches!(p.op, IoOp::Sync { .. }) {
            Some(Ok(()))
        } else {
            p.moved += res as usize;
            if p.moved >= p.op.len() {
                Some(Ok(()))
            } else if res == 0 {
                Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "transfer hit end of file",
                )))
            } else {
                None
            }
        };
        match outcome {
            None => self.issue(slot),
            Some(result) => {
                let Pending { op, done, .. } = self.slots[slot].take().expect("slot checked above");
                self.free.push(slot);
                self.in_flight -= 1;
                drop(op);
                done(result);
            }
        }
    }

    fn fail_all(&mut self, e: &io::Error) {
        tracing::error!(error = %e, "io_uring submission failed; failing every pending I/O");
        let queued: Vec<_> = self.rx.try_iter().collect();
        let pending = self
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .map(|p| (p.op, p.done));
        for (op, done) in pending.chain(queued) {
            drop(op);
            done(Err(io::Error::new(e.kind(), e.to_string())));
        }
    }
}
