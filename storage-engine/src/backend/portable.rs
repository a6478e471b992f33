//! pread / pwrite / fdatasync on a small pool of threads. Works on any
//! filesystem; with O_DIRECT files it is still zero-copy to the device.

use std::io;
use std::os::unix::fs::FileExt;
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use super::{IoBackend, IoCallback, IoOp};

#[derive(Debug)]
pub struct PortableBackend {
    tx: Sender<(IoOp, IoCallback)>,
}

impl PortableBackend {
    pub fn new(threads: u32, name: &str) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..threads {
            let rx: Receiver<(IoOp, IoCallback)> = rx.clone();
            thread::Builder::new()
                .name(format!("gfs-io-{name}-{i}"))
                .spawn(move || {
                    for (op, done) in rx {
                        done(execute(op));
                    }
                })?;
        }
        Ok(Self { tx })
    }
}

fn execute(op: IoOp) -> io::Result<()> {
    match op {
        IoOp::Read { file, offset, buf } => {
            // SAFETY: this thread is the only user of the window until `done`
            // runs (the backend contract in `buf::IoSlice`).
            let window = unsafe { buf.as_mut_slice_unchecked() };
            file.read_exact_at(window, offset)
        }
        IoOp::Write { file, offset, buf } => file.write_all_at(buf.as_slice(), offset),
        IoOp::Sync { file } => file.sync_data(),
    }
}

impl IoBackend for PortableBackend {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn submit(&self, op: IoOp, done: IoCallback) {
        if let Err(crossbeam_channel::SendError((op, done))) = self.tx.send((op, done)) {
            drop(op);
            done(Err(io::Error::other("portable I/O threads are gone")));
        }
    }
}
