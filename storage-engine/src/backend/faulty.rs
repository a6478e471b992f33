//! A backend that wraps another and injects faults on command, for tests.
//!
//! Faults are armed as "the next N operations of this kind" so tests are
//! deterministic: arm, perform the operation, check the outcome.

use std::io;
use std::sync::{Arc, Mutex};

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
}

/// Shared switchboard: tests keep one handle, the backend another.
#[derive(Debug, Default, Clone)]
pub struct FaultSwitch(Arc<Mutex<Faults>>);

impl FaultSwitch {
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
    inner: Box<dyn IoBackend>,
    switch: FaultSwitch,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn IoBackend>, switch: FaultSwitch) -> Self {
        Self { inner, switch }
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
        let s = &self.switch;
        let fail = |op: IoOp, done: IoCallback, code| {
            drop(op);
            done(Err(errno(code)))
        };
        match op {
            IoOp::Read { .. } if s.take(|f| &mut f.read_eio) => fail(op, done, libc::EIO),
            IoOp::Read { file, offset, buf } if s.take(|f| &mut f.flip_bit_on_read) => {
                let window = buf.clone();
                self.inner.submit(
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
                self.inner.submit(
                    IoOp::Write {
                        file,
                        offset,
                        buf: torn,
                    },
                    Box::new(move |_| done(Err(errno(libc::EIO)))),
                );
            }
            IoOp::Sync { .. } if s.take(|f| &mut f.sync_eio) => fail(op, done, libc::EIO),
            op => self.inner.submit(op, done),
        }
    }
}
