//! The seam between the store and the device: a backend executes single
//! reads, writes and fdatasyncs on open files, each completed by a callback.
//!
//! The interface is synchronous to submit and completion-based, so it is
//! object-safe and needs no runtime: the io_uring backend runs its ring on a
//! dedicated thread, the portable one uses a thread pool, and the
//! fault-injecting one wraps either. Contract of every backend:
//! - a write completes with the whole window written, or with an error;
//! - a read completes with the whole window filled, or with an error
//!   (reading past the end of the file is `UnexpectedEof`);
//! - the operation (and with it the backend's reference to its buffer) is
//!   dropped before the callback runs, so the submitter can reclaim the
//!   buffer as soon as it learns of the completion.

pub mod faulty;
pub mod portable;
pub mod timed;
pub mod uring;

use std::fs::File;
use std::io;
use std::sync::Arc;

use crate::buf::IoSlice;

#[derive(Debug)]
pub enum IoOp {
    Read {
        file: Arc<File>,
        offset: u64,
        buf: IoSlice,
    },
    Write {
        file: Arc<File>,
        offset: u64,
        buf: IoSlice,
    },
    /// fdatasync
    Sync { file: Arc<File> },
}

impl IoOp {
    /// Bytes the operation moves when it succeeds.
    pub fn len(&self) -> usize {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => buf.len(),
            IoOp::Sync { .. } => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Called once when an operation completes, from the backend's thread.
pub type IoCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

pub trait IoBackend: Send + Sync + std::fmt::Debug {
    /// Short name for logs and benchmark output.
    fn name(&self) -> &'static str;

    /// Queues `op`; `done` is called exactly once when it completes.
    fn submit(&self, op: IoOp, done: IoCallback);

    /// Whether I/O into the store's buffer arena uses registered buffers.
    fn registered_buffers(&self) -> bool {
        false
    }
}

/// Which backend a directory gets, and why (for the log line).
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    pub kind: ChosenBackend,
    pub direct: bool,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChosenBackend {
    Uring,
    Portable,
}

/// Picks a backend from what the directory's probes found. Pure, so the
/// fallback rules are tested by exact output.
pub fn choose(
    wanted: crate::config::BackendKind,
    uring_probe: Result<(), String>,
    direct_probe: Result<(), String>,
) -> Result<Choice, String> {
    use crate::config::BackendKind;
    let direct = direct_probe.is_ok();
    match (wanted, uring_probe, direct_probe) {
        (BackendKind::Uring, Err(e), _) => Err(format!("io_uring was asked for but fails: {e}")),
        (BackendKind::Uring, Ok(()), Err(e)) => {
            Err(format!("io_uring was asked for but O_DIRECT fails: {e}"))
        }
        (BackendKind::Uring | BackendKind::Auto, Ok(()), Ok(())) => Ok(Choice {
            kind: ChosenBackend::Uring,
            direct: true,
            reason: "io_uring and O_DIRECT both work".into(),
        }),
        (BackendKind::Auto, Err(e), _) => Ok(Choice {
            kind: ChosenBackend::Portable,
            direct,
            reason: format!("io_uring is unavailable ({e})"),
        }),
        (BackendKind::Auto, Ok(()), Err(e)) => Ok(Choice {
            kind: ChosenBackend::Portable,
            direct: false,
            reason: format!("O_DIRECT is unavailable ({e}), so I/O is buffered"),
        }),
        (BackendKind::Portable, _, d) => Ok(Choice {
            kind: ChosenBackend::Portable,
            direct,
            reason: match d {
                Ok(()) => "the portable backend was asked for".into(),
                Err(e) => format!("the portable backend was asked for; O_DIRECT fails ({e})"),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;

    #[test]
    fn auto_prefers_uring_and_falls_back_with_a_reason() {
        let ok = || Ok(());
        let c = choose(BackendKind::Auto, ok(), ok()).expect("choice");
        assert_eq!((c.kind, c.direct), (ChosenBackend::Uring, true));

        let c = choose(BackendKind::Auto, Err("EPERM".into()), ok()).expect("choice");
        assert_eq!((c.kind, c.direct), (ChosenBackend::Portable, true));
        assert_eq!(c.reason, "io_uring is unavailable (EPERM)");

        let c = choose(BackendKind::Auto, ok(), Err("EINVAL".into())).expect("choice");
        assert_eq!((c.kind, c.direct), (ChosenBackend::Portable, false));
        assert_eq!(
            c.reason,
            "O_DIRECT is unavailable (EINVAL), so I/O is buffered"
        );
    }

    #[test]
    fn an_explicit_uring_request_that_cannot_be_met_is_an_error() {
        assert_eq!(
            choose(BackendKind::Uring, Ok(()), Err("EINVAL".into())),
            Err("io_uring was asked for but O_DIRECT fails: EINVAL".into())
        );
    }
}
