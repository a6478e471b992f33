//! Async helpers over a backend: submit several operations at once and wait
//! for all of them, and small blocking file-system steps.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::backend::{IoBackend, IoOp};
use crate::buf::{AlignedBuf, IoSlice};

/// Submits every operation before waiting for any, so they are all in flight
/// together, then returns the first error (all operations have completed by
/// then, so no buffer is still in use by the device).
pub async fn run_all(backend: &dyn IoBackend, ops: Vec<IoOp>) -> io::Result<()> {
    submit_all(backend, ops).wait().await
}

/// Operations submitted together, not yet waited for.
#[derive(Debug)]
pub struct Submitted(Vec<oneshot::Receiver<io::Result<()>>>);

/// Submits every operation now; `Submitted::wait` waits for them.
pub fn submit_all(backend: &dyn IoBackend, ops: Vec<IoOp>) -> Submitted {
    let mut waits = Vec::with_capacity(ops.len());
    for op in ops {
        let (tx, rx) = oneshot::channel();
        backend.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        waits.push(rx);
    }
    Submitted(waits)
}

impl Submitted {
    /// Waits for every operation; the first error, once all completed.
    pub async fn wait(self) -> io::Result<()> {
        let mut first_err = None;
        for rx in self.0 {
            let r = rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("I/O backend dropped a request")));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Splits `[0, len)` of `buf`, to live at `file_offset` in the file, into
/// windows of at most `io_size` bytes: one operation each.
pub fn split(
    buf: &Arc<AlignedBuf>,
    buf_offset: usize,
    len: usize,
    file_offset: u64,
    io_size: usize,
    mut make: impl FnMut(u64, IoSlice) -> IoOp,
) -> Vec<IoOp> {
    windows(len, io_size)
        .map(|(at, n)| {
            make(
                file_offset + at as u64,
                IoSlice::new(buf.clone(), buf_offset + at, n),
            )
        })
        .collect()
}

/// `[0, len)` as `(start, length)` windows of `io_size`, except that a last
/// window shorter than a quarter of `io_size` joins the one before it. A
/// 1 MiB record append framed to 1 MiB + 4 KiB is then one request, not a
/// 1 MiB and a 4 KiB one: where the filesystem serialises writes that
/// extend a file (ext4 with O_DIRECT), the second waited for the first,
/// and appends into new chunk files ran ~11 % slower (BENCHMARKS.md,
/// 2026-11-23, night).
fn windows(len: usize, io_size: usize) -> impl Iterator<Item = (usize, usize)> {
    let io_size = io_size.max(1);
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let mut n = io_size.min(len - at);
        if len - at - n < io_size / 4 {
            n = len - at;
        }
        let w = (at, n);
        at += n;
        Some(w)
    })
}

pub fn open_data(path: &Path, direct: bool, create: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Checks that `dir`'s filesystem accepts O_DIRECT for aligned I/O. Only a
/// refusal (EINVAL, at open or at the write) counts: a full disk must not
/// demote a directory to buffered I/O.
pub fn probe_direct(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(".direct-probe");
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let buf = AlignedBuf::zeroed(crate::layout::SECTOR_BYTES as usize);
        f.write_all_at(buf.as_slice(), 0)
    })();
    let _ = std::fs::remove_file(&path);
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Free and total bytes of the filesystem holding `dir`.
pub fn disk_space(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize;
    Ok((st.f_bavail * unit, st.f_blocks * unit))
}

#[cfg(test)]
mod tests {
    use super::windows;

    #[test]
    fn a_short_last_window_joins_the_one_before_it() {
        let w = |len| windows(len, 1024).collect::<Vec<_>>();
        assert_eq!(w(0), vec![]);
        assert_eq!(w(100), vec![(0, 100)]);
        assert_eq!(w(1024), vec![(0, 1024)]);
        assert_eq!(w(1024 + 255), vec![(0, 1279)]);
        assert_eq!(w(1024 + 256), vec![(0, 1024), (1024, 256)]);
        assert_eq!(w(3 * 1024 + 4), vec![(0, 1024), (1024, 1024), (2048, 1028)]);
    }
}
