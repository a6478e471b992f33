//! A backend that wraps another and injects faults on command, for tests.
//!
//! Faults are armed as "the next N operations of this kind" so tests are
//! deterministic: arm, perform the operation, check the outcome.

use std::io;
use std::sync::{Arc, Condvar, Mutex};

use super::{IoBackend, IoCallback, IoOp};
use crate::layout::SECTOR_BYTES;

/// Faults waiting to happen, each a count of operations still to hit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Faults {
    /// Reads that complete with one bit flipped in the returned data.
    pub flip_bit_on_read: u32,
    /// Reads that fail with EIO.
    pub read_eio: u32,
    /// Data writes (at least one sector long) that write only their first
    /// half, then fail with EIO, as a write interrupted by a crash.
    pub torn_write: u32,
    /// Writes that fail with ENOSPC, writing nothing.
    pub write_enospc: u32,
    /// Writes that fail with EIO, writing nothing.
    pub write_eio: u32,
    /// fdatasyncs that fail with EIO.
    pub sync_eio: u32,
    /// Data writes (at least one sector long) held back, not even
    /// submitted, until `FaultSwitch::release`: a slow disk, or, if the
    /// test copies the files meanwhile, a crash before they were written.
    pub hold_write: u32,
}

/// Shared switchboard: tests keep one handle, the backend another.
#[derive(Debug, Default, Clone)]
pub struct FaultSwitch(Arc<Mutex<Faults>>, Arc<Gate>);

/// Held writes wait here: each for a release after it was held.
#[derive(Debug, Default)]
struct Gate {
    releases: Mutex<u64>,
    opened: Condvar,
}

impl FaultSwitch {
    /// Lets every write held so far go to the disk.
    pub fn release(&self) {
        *self.1.releases.lock().expect("gate lock") += 1;
        self.1.opened.notify_all();
    }

    /// Blocks until a release after `seen` releases.
    fn wait_release(&self, seen: u64) {
        let mut n = self.1.releases.lock().expect("gate lock");
        while *n == seen {
            n = self.1.opened.wait(n).expect("gate lock");
        }
    }

    pub fn arm(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.0.lock().expect("fault switch lock"));
    }

    pub fn pending(&self) -> Faults {
        self.0.lock().expect("fault switch lock").clone()
    }

    fn take(&self, pick: impl FnOnce(&mut Faults) -> &mut u32) -> bool {
        let mut faults = self.0.lock().expect("fault switch lock");
        let n = pick(&mut faults);
        if *n > 0 {
            *n -= 1;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn IoBackend>,
    switch: FaultSwitch,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn IoBackend>, switch: FaultSwitch) -> Self {
        Self {
            inner: Arc::from(inner),
            switch,
        }
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl IoBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn registered_buffers(&self) -> bool {
        self.inner.registered_buffers()
    }

    fn submit(&self, op: IoOp, done: IoCallback) {
        dispatch(&self.switch, &self.inner, op, done);
    }
}

/// Submits `op` to `inner`, or fails, tears or holds it as the switch says.
fn dispatch(s: &FaultSwitch, inner: &Arc<dyn IoBackend>, op: IoOp, done: IoCallback) {
    let fail = |op: IoOp, done: IoCallback, code| {
        drop(op);
        done(Err(errno(code)))
    };
    match op {
        IoOp::Read { .. } if s.take(|f| &mut f.read_eio) => fail(op, done, libc::EIO),
        IoOp::Read { file, offset, buf } if s.take(|f| &mut f.flip_bit_on_read) => {
            let window = buf.clone();
            inner.submit(
                IoOp::Read { file, offset, buf },
                Box::new(move |r| {
                    if r.is_ok() && !window.is_empty() {
                        // SAFETY: the read completed and `done` has not run, so
                        // this I/O still owns its window exclusively.
                        let bytes = unsafe { window.as_mut_slice_unchecked() };
                        let mid = bytes.len() / 2;
                        bytes[mid] ^= 0x10;
                    }
                    drop(window);
                    done(r)
                }),
            );
        }
        IoOp::Write { ref buf, .. }
            if buf.len() >= SECTOR_BYTES as usize && s.take(|f| &mut f.hold_write) =>
        {
            let seen = *s.1.releases.lock().expect("gate lock");
            let (s, inner) = (s.clone(), inner.clone());
            // Released, it meets the faults armed by then.
            std::thread::spawn(move || {
                s.wait_release(seen);
                dispatch(&s, &inner, op, done);
            });
        }
        IoOp::Write { .. } if s.take(|f| &mut f.write_enospc) => fail(op, done, libc::ENOSPC),
        IoOp::Write { .. } if s.take(|f| &mut f.write_eio) => fail(op, done, libc::EIO),
        IoOp::Write { file, offset, buf }
            if buf.len() >= SECTOR_BYTES as usize && s.take(|f| &mut f.torn_write) =>
        {
            let half = (buf.len() / 2)
                .next_multiple_of(SECTOR_BYTES as usize)
                .min(buf.len());
            let torn = buf.new_sub(0, half);
            drop(buf);
            inner.submit(
                IoOp::Write {
                    file,
                    offset,
                    buf: torn,
                },
                Box::new(move |_| done(Err(errno(libc::EIO)))),
            );
        }
        IoOp::Sync { .. } if s.take(|f| &mut f.sync_eio) => fail(op, done, libc::EIO),
        op => inner.submit(op, done),
    }
}
