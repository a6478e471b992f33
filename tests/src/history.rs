//! A metadata workload whose results are known in advance. Each worker owns
//! its own directory and walks its files through create, stat, rename,
//! delete; every reply is compared with what a linearizable namespace must
//! answer at that point, and every stat goes through a second, independent
//! client (another connection, possibly another master), so a read that
//! misses an acknowledged mutation is caught too. At the end the surviving
//! files are listed and compared with the model: nothing acknowledged may
//! be lost, nothing deleted may come back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gfs_client::{MasterClient, MasterError};
use gfs_proto::wire::ErrorKind;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
pub struct Report {
    pub ops: u64,
    /// Every unexpected reply, with the operation; must stay empty.
    pub violations: Vec<String>,
}

/// The names a worker's directory must hold: updated after each ack.
type Model = Arc<Mutex<BTreeSet<String>>>;

#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    workers: Vec<(JoinHandle<Report>, String, Model)>,
    /// When each acknowledged mutation returned (for failover timing).
    pub acked: Arc<Mutex<Vec<Instant>>>,
    checker: MasterClient,
}

fn expect_ok<T>(r: &mut Report, what: &str, res: Result<T, MasterError>) -> Option<T> {
    r.ops += 1;
    match res {
        Ok(v) => Some(v),
        Err(e) => {
            r.violations.push(format!("{what}: {e}"));
            None
        }
    }
}

fn expect_missing<T: std::fmt::Debug>(r: &mut Report, what: &str, res: Result<T, MasterError>) {
    r.ops += 1;
    match res {
        Err(e) if e.kind == ErrorKind::NotFound => {}
        other => r
            .violations
            .push(format!("{what}: expected NotFound, got {other:?}")),
    }
}

impl Workload {
    /// Starts `workers` workers under `root`, mutating through `client` and
    /// reading through `checker`.
    pub fn start(client: MasterClient, checker: MasterClient, workers: usize, root: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for w in 0..workers {
            let dir = format!("{root}/w{w}");
            let model = Arc::new(Mutex::new(BTreeSet::new()));
            let h = tokio::spawn(run(
                client.clone(),
                checker.clone(),
                dir.clone(),
                stop.clone(),
                acked.clone(),
                model.clone(),
            ));
            handles.push((h, dir, model));
        }
        Self {
            stop,
            workers: handles,
            acked,
            checker,
        }
    }

    /// Stops the workers, then checks every directory against its model.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Report::default();
        for (h, dir, model) in self.workers {
            match h.await {
                Ok(r) => {
                    total.ops += r.ops;
                    total.violations.extend(r.violations);
                }
                Err(e) => total.violations.push(format!("worker {dir} panicked: {e}")),
            }
            let expected = model.lock().expect("model").clone();
            match self.checker.list(&dir).await {
                Ok(entries) => {
                    let got: BTreeSet<String> = entries.into_iter().map(|e| e.name).collect();
                    if got != expected {
                        let lost: Vec<_> = expected.difference(&got).collect();
                        let extra: Vec<_> = got.difference(&expected).collect();
                        total
                            .violations
                            .push(format!("{dir}: lost {lost:?}, unexpected {extra:?}"));
                    }
                }
                Err(e) => total.violations.push(format!("list {dir}: {e}")),
            }
        }
        total
    }
}

async fn run(
    c: MasterClient,
    checker: MasterClient,
    dir: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Instant>>>,
    model: Model,
) -> Report {
    let mut r = Report::default();
    let ack = |acked: &Mutex<Vec<Instant>>| acked.lock().expect("acked").push(Instant::now());
    if expect_ok(&mut r, "mkdir", c.mkdir(&dir, true).await).is_none() {
        return r;
    }
    ack(&acked);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && r.violations.is_empty() {
        let f = format!("{dir}/f{n}");
        let g = format!("{dir}/g{n}");
        if expect_ok(&mut r, &format!("create {f}"), c.create(&f, 0).await).is_none() {
            break;
        }
        ack(&acked);
        model.lock().expect("model").insert(format!("f{n}"));
        if let Some(info) = expect_ok(&mut r, &format!("stat {f}"), checker.stat(&f, false).await)
            && (info.is_dir || info.length != 0)
        {
            r.violations.push(format!("stat {f}: wrong inode {info:?}"));
        }
        match n % 3 {
            0 => {
                if expect_ok(&mut r, &format!("rename {f}"), c.rename(&f, &g).await).is_none() {
                    break;
                }
                ack(&acked);
                {
                    let mut m = model.lock().expect("model");
                    m.remove(&format!("f{n}"));
                    m.insert(format!("g{n}"));
                }
                expect_missing(
                    &mut r,
                    &format!("stat {f} after rename"),
                    checker.stat(&f, false).await,
                );
                expect_ok(&mut r, &format!("stat {g}"), checker.stat(&g, false).await);
            }
            1 => {
                if expect_ok(&mut r, &format!("delete {f}"), c.delete(&f, false).await).is_none() {
                    break;
                }
                ack(&acked);
                model.lock().expect("model").remove(&format!("f{n}"));
                expect_missing(
                    &mut r,
                    &format!("stat {f} after delete"),
                    checker.stat(&f, false).await,
                );
            }
            _ => {}
        }
        n += 1;
    }
    r
}
