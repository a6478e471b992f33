//! The order of one chunk's mutations at a replica: each waits for the
//! one it follows (the primary numbers them; pipelined rounds of appends
//! may arrive out of order).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use gfs_proto::wire::{ErrorKind, error};
use tonic::Status;

use super::appends::Queued;
use super::{Ordered, Shared};
use crate::order::Turn;

/// A chunk's ordering lock, a signal after each applied mutation (a write
/// that arrived ahead of the one before it waits for it), and the record
/// appends waiting for the lock: its next holder commits them together.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) order: tokio::sync::Mutex<Ordered>,
    pub(super) applied: tokio::sync::Notify,
    pub(super) appends: Mutex<VecDeque<Queued>>,
    /// Signalled when an append joins `appends`, so a drain waiting on a
    /// round in flight plans the next one at once.
    pub(super) queued: tokio::sync::Notify,
    /// The last mutation processed here (pipelined rounds wait for it).
    pub(super) turn: Mutex<Turn>,
    /// At the primary: the secondaries that failed a mutation of this
    /// chunk at its current version.
    pub(super) missed: Mutex<Missed>,
    /// At the primary: the last mutation of this chunk that failed here
    /// (its serial, and why). A round of appends planned while it was in
    /// flight was placed after it, as if it had landed.
    failed_here: Mutex<Option<(u64, Status)>>,
}

/// Secondaries that failed a mutation of a chunk at one version. One that
/// missed a mutation is stale at that version whatever it answers later
/// (its writer reports it and the masters version it out), so the
/// primary sends it no more of the version's mutations: a stalled
/// secondary costs the mutations in flight one peer timeout, not each of
/// those queued behind them another.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Missed {
    version: u64,
    ids: Vec<u64>,
}

impl Missed {
    /// Those that missed a mutation at `version`.
    pub(super) fn at(&self, version: u64) -> &[u64] {
        if self.version == version {
            &self.ids
        } else {
            &[]
        }
    }

    /// `ids` failed a mutation at `version` (those of another version are
    /// forgotten: a new version was granted without them, or with them
    /// back).
    pub(super) fn add(&mut self, version: u64, ids: &[u64]) {
        if self.version != version {
            *self = Self {
                version,
                ids: Vec::new(),
            };
        }
        for id in ids {
            if !self.ids.contains(id) {
                self.ids.push(*id);
            }
        }
    }
}

/// Marks a mutation processed at this replica when dropped, however its
/// handling ended, so the one that follows it never waits in vain.
struct Processed<'a> {
    slot: &'a Slot,
    run: u64,
    serial: u64,
}

impl Slot {
    /// Runs `apply` once the mutation it follows (`after` of primary run
    /// `run`) was processed here, and marks mutation `serial` processed
    /// whatever the outcome. A predecessor that has not arrived after
    /// `patience` (`PEER_TIMEOUT` but in tests) fails this one.
    pub(super) async fn in_turn<T>(
        &self,
        (run, serial, after): (u64, u64, u64),
        patience: Duration,
        apply: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let _done = Processed {
            slot: self,
            run,
            serial,
        };
        let started = tokio::time::Instant::now();
        let deadline = started + patience;
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if Shared::lock(&self.turn).ready(run, after) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(error(
                    ErrorKind::Unavailable,
                    format!("mutation {after}, which this one follows, never arrived here"),
                ));
            }
        }
        let waited = started.elapsed();
        let r = apply.await;
        tracing::trace!(
            serial,
            wait_ms = waited.as_secs_f64() * 1e3,
            apply_ms = (started.elapsed() - waited).as_secs_f64() * 1e3,
            "in turn"
        );
        r
    }

    /// At the primary: mutation `serial` failed here.
    pub(super) fn failed_here(&self, serial: u64, why: &Status) {
        *Shared::lock(&self.failed_here) = Some((serial, why.clone()));
    }

    /// At the primary, once mutation `after` was processed here: why a
    /// mutation placed after it cannot be applied, if `after` failed here.
    /// Its offset assumed `after`'s bytes, which this replica does not
    /// hold: written anyway, it would leave a hole of that size in front
    /// of it (or be refused as too large a write, an error that says
    /// nothing of the cause). It fails as `after` did.
    pub(super) fn follows_a_failure(&self, after: u64) -> Result<(), Status> {
        match &*Shared::lock(&self.failed_here) {
            Some((serial, why)) if after != 0 && *serial == after => {
                let kind = gfs_proto::wire::detail_of(why).kind();
                Err(error(
                    kind,
                    format!(
                        "mutation {after}, which this one follows, failed here: {}",
                        why.message()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Processed<'_> {
    fn drop(&mut self) {
        Shared::lock(&self.slot.turn).processed(self.run, self.serial);
        self.slot.applied.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::service::invalid;

    const PATIENCE: Duration = Duration::from_millis(300);

    /// Runs mutation `serial` (following `after`) of run 7 on `slot`,
    /// logging when it is applied.
    fn mutation(
        slot: &Arc<Slot>,
        log: &Arc<Mutex<Vec<u64>>>,
        serial: u64,
        after: u64,
        result: Result<(), Status>,
    ) -> tokio::task::JoinHandle<Result<(), Status>> {
        let (slot, log) = (slot.clone(), log.clone());
        tokio::spawn(async move {
            slot.in_turn((7, serial, after), PATIENCE, async {
                Shared::lock(&log).push(serial);
                result
            })
            .await
        })
    }

    #[tokio::test]
    async fn pipelined_mutations_apply_in_serial_order_whatever_their_arrival() {
        let (slot, log) = (Arc::new(Slot::default()), Arc::new(Mutex::new(Vec::new())));
        let third = mutation(&slot, &log, 3, 2, Ok(()));
        let second = mutation(&slot, &log, 2, 1, Err(invalid("data missing")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            Shared::lock(&log).is_empty(),
            "nothing runs before mutation 1"
        );
        let first = mutation(&slot, &log, 1, 0, Ok(()));
        assert!(first.await.unwrap().is_ok());
        // A failed mutation still lets the next one go.
        assert!(second.await.unwrap().is_err());
        assert!(third.await.unwrap().is_ok());
        assert_eq!(*Shared::lock(&log), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_predecessor_that_never_comes_fails_the_mutation_after_a_while() {
        let (slot, log) = (Arc::new(Slot::default()), Arc::new(Mutex::new(Vec::new())));
        let orphan = mutation(&slot, &log, 5, 4, Ok(()));
        let started = std::time::Instant::now();
        let e = orphan.await.unwrap().unwrap_err();
        assert!(started.elapsed() >= PATIENCE);
        assert!(e.message().contains("never arrived"), "{}", e.message());
        assert!(Shared::lock(&log).is_empty());
        // The one after it is not held up in turn.
        assert!(mutation(&slot, &log, 6, 5, Ok(())).await.unwrap().is_ok());
        assert_eq!(*Shared::lock(&log), vec![6]);
    }

    #[test]
    fn a_mutation_placed_after_a_failed_one_fails_as_it_did() {
        let slot = Slot::default();
        assert!(slot.follows_a_failure(4).is_ok());
        slot.failed_here(4, &error(ErrorKind::NoSpace, "no space left in /d"));
        let e = slot.follows_a_failure(4).unwrap_err();
        assert_eq!(gfs_proto::wire::detail_of(&e).kind(), ErrorKind::NoSpace);
        assert_eq!(
            e.message(),
            "mutation 4, which this one follows, failed here: no space left in /d"
        );
        // Only the one placed right after it; nothing follows serial 0.
        assert!(slot.follows_a_failure(3).is_ok());
        assert!(slot.follows_a_failure(0).is_ok());
    }

    #[test]
    fn secondaries_that_missed_a_mutation_are_known_only_at_its_version() {
        let mut m = Missed::default();
        assert_eq!(m.at(3), &[] as &[u64]);
        m.add(3, &[4]);
        m.add(3, &[2, 4]);
        assert_eq!(m.at(3), &[4, 2]);
        assert_eq!(m.at(4), &[] as &[u64]);
        // A new version starts afresh.
        m.add(5, &[1]);
        assert_eq!(m.at(5), &[1]);
        assert_eq!(m.at(3), &[] as &[u64]);
    }
}
