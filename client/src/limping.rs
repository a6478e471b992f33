//! Limping chunkservers: one that answers, heartbeats and stores every
//! push, but whose hop holds pushes up far longer than the others' (a
//! failing NIC, a link dropping to a fraction of its rate, a starved
//! process). Nothing fails, so nothing else reports it, and every chain it
//! sits in moves at its pace: with one of four servers behind a 200 KB/s
//! link, eight appenders ran 11 times slower.
//!
//! Each push's answer says how long each hop of its chain held the data
//! up (`PushReply::lag_us`: from the sender's last byte to the receiver's
//! answer, less the receiver's own wait for the servers after it), and
//! each hop is put down to its receiver. A server is limping when the
//! median of its recent hops is at least [`FLOOR`] and at least [`RATIO`]
//! times the median of every other server's recent hops, and hops from two
//! senders or more (the client counts as one) were that slow: a
//! comparison, not a rate floor, so a busy network or a loaded host, which
//! slows every hop, convicts nobody. A hop sent by a server found
//! limping, or by the one being judged, says nothing of its receiver (a
//! limping NIC is slow both ways), so servers are judged one at a time,
//! the slowest first. Writers push along a chain in an order of their own each time
//! (`Client`): a client whose own link is the slow one then slows a
//! third of every server's hops, not most of one server's.
//!
//! The evidence is the process's (`shared`), every client's pushes
//! together, servers named by address: a process of many light writers
//! each saw too few hops of its own (eight appenders of one test process
//! pushed through a 200 KB/s link 31 times in 17 s between them).
//!
//! The writer reports a limping server as failed with its next mutation of
//! each chunk whose chain holds it (once per chunk, while two other
//! replicas remain): the masters give the chunk a new version without it
//! (taking its lease back first if it is the primary) and place new chunks
//! elsewhere for a while; re-replication brings the chunk back to its
//! replication factor.
//!
//! [`Hops`] is pure: the caller passes the time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A hop this slow or slower may be a limping server's ...
pub const FLOOR: Duration = Duration::from_millis(250);
/// ... if it is this many times slower than the other servers' hops.
pub const RATIO: u32 = 10;
/// Hops older than this say nothing.
const WINDOW: Duration = Duration::from_secs(30);
/// The recent hops kept per server.
const KEEP: usize = 16;
/// Fewer hops than this, of the server or of all the others, convict
/// nobody.
const MIN_HOPS: usize = 4;
/// A limping server stays so this long after the hops that convicted
/// it, unless they convict it again.
const LIMPING_FOR: Duration = Duration::from_secs(30);

/// The process's evidence, servers named by their addresses.
pub fn shared() -> MutexGuard<'static, Hops<String>> {
    static SHARED: LazyLock<Mutex<Hops<String>>> = LazyLock::new(Mutex::default);
    SHARED.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Debug)]
struct Hop<K> {
    at: Instant,
    lag: Duration,
    /// The server that sent it; `None` for the client (this process).
    from: Option<K>,
}

/// What pushes found of each server's hops, servers named by `K`.
#[derive(Debug)]
pub struct Hops<K> {
    into: HashMap<K, VecDeque<Hop<K>>>,
    /// Servers found limping, and when last.
    limping: HashMap<K, Instant>,
    /// `(chunk handle, server)` pairs already reported.
    reported: HashSet<(u64, K)>,
}

impl<K> Default for Hops<K> {
    fn default() -> Self {
        Self {
            into: HashMap::new(),
            limping: HashMap::new(),
            reported: HashSet::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord + Debug> Hops<K> {
    /// Records one push along `chain` (in push order) and the lags its
    /// answer gave (`lag_us`, the client's own hop first; extra or missing
    /// entries are ignored), then judges again.
    pub fn record(&mut self, chain: &[K], lag_us: &[u64], now: Instant) {
        let senders = std::iter::once(None).chain(chain.iter().cloned().map(Some));
        for ((to, from), &us) in chain.iter().zip(senders).zip(lag_us) {
            let hops = self.into.entry(to.clone()).or_default();
            if hops.len() == KEEP {
                hops.pop_front();
            }
            hops.push_back(Hop {
                at: now,
                lag: Duration::from_micros(us),
                from,
            });
        }
        self.judge(now);
    }

    /// Whether `id` is limping now.
    pub fn is_limping<Q>(&self, id: &Q, now: Instant) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.limping
            .get(id)
            .is_some_and(|at| now.saturating_duration_since(*at) < LIMPING_FOR)
    }

    /// The first limping server among `replicas` of chunk `handle` not
    /// yet reported for it; it counts as reported from here on.
    pub fn to_report<'a>(
        &mut self,
        handle: u64,
        replicas: impl IntoIterator<Item = &'a K>,
        now: Instant,
    ) -> Option<K>
    where
        K: 'a,
    {
        let id = replicas
            .into_iter()
            .find(|id| {
                self.is_limping(id, now) && !self.reported.contains(&(handle, (*id).clone()))
            })?
            .clone();
        self.reported.insert((handle, id.clone()));
        Some(id)
    }

    fn judge(&mut self, now: Instant) {
        self.limping
            .retain(|_, at| now.saturating_duration_since(*at) < LIMPING_FOR);
        let limping = &self.limping;
        self.reported.retain(|(_, id)| limping.contains_key(id));
        for hops in self.into.values_mut() {
            while hops
                .front()
                .is_some_and(|h| now.saturating_duration_since(h.at) >= WINDOW)
            {
                hops.pop_front();
            }
        }
        self.into.retain(|_, hops| !hops.is_empty());
        // One at a time, the slowest first: the hops each sent say nothing
        // once it is found limping.
        let mut judged = HashSet::new();
        while let Some((id, its)) = self.slowest_limping(&judged) {
            if !self.limping.contains_key(&id) {
                tracing::warn!(
                    server = ?id,
                    median_ms = its.as_secs_f64() * 1e3,
                    "a chunkserver's hops hold pushes up far longer than the others': reporting it with the next mutation of each chunk it holds"
                );
            }
            self.limping.insert(id.clone(), now);
            judged.insert(id);
        }
    }

    /// The slowest server not in `judged` whose hops find it limping, and
    /// the median of its hops.
    fn slowest_limping(&self, judged: &HashSet<K>) -> Option<(K, Duration)> {
        let limping = &self.limping;
        // Hops sent by a limping server, or by the one being judged, say
        // nothing of their receivers.
        let telling = |hops: &VecDeque<Hop<K>>, judging: Option<&K>| -> Vec<Hop<K>> {
            hops.iter()
                .filter(|h| {
                    h.from
                        .as_ref()
                        .is_none_or(|f| !limping.contains_key(f) && Some(f) != judging)
                })
                .cloned()
                .collect()
        };
        let mut suspects: Vec<(Duration, &K)> = self
            .into
            .iter()
            .filter(|(id, _)| !judged.contains(*id))
            .map(|(id, hops)| (telling(hops, None), id))
            .filter(|(h, _)| h.len() >= MIN_HOPS)
            .filter(|(h, _)| {
                // Slow from two senders or more: not one sender's way out.
                let slow: HashSet<Option<&K>> = h
                    .iter()
                    .filter(|h| h.lag >= FLOOR)
                    .map(|h| h.from.as_ref())
                    .collect();
                slow.len() >= 2
            })
            .map(|(h, id)| (median(h.iter().map(|h| h.lag).collect()), id))
            .collect();
        suspects.sort_unstable_by(|a, b| b.cmp(a));
        // The others' hops compared against its, less the ones it sent.
        suspects
            .into_iter()
            .take_while(|(m, _)| *m >= FLOOR)
            .find(|(its, id)| {
                let others: Vec<Duration> = self
                    .into
                    .iter()
                    .filter(|(other, _)| other != id)
                    .flat_map(|(_, hops)| telling(hops, Some(id)))
                    .map(|h| h.lag)
                    .collect();
                others.len() >= MIN_HOPS && *its >= median(others).saturating_mul(RATIO)
            })
            .map(|(its, id)| (id.clone(), its))
    }
}

/// The lower median: more than half must be this slow.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes along `chain` at `t0 + at_ms`, each hop taking its lag in
    /// ms (the first, the client's own, 5 ms).
    fn push(h: &mut Hops<u64>, t0: Instant, at_ms: u64, chain: &[u64], lag_ms: &[u64]) {
        let us: Vec<u64> = std::iter::once(5)
            .chain(lag_ms.iter().copied())
            .map(|l| l * 1000)
            .collect();
        h.record(chain, &us, t0 + Duration::from_millis(at_ms));
    }

    const NONE: [u64; 0] = [];

    /// The servers limping at `now`, least first.
    fn limping(h: &Hops<u64>, now: Instant) -> Vec<u64> {
        let mut v: Vec<u64> = h
            .into
            .keys()
            .copied()
            .filter(|id| h.is_limping(id, now))
            .collect();
        v.sort_unstable();
        v
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_server_whose_hops_are_far_slower_than_the_others_is_limping() {
        let t0 = Instant::now();
        let mut h: Hops<u64> = Hops::default();
        push(&mut h, t0, 0, &[1, 2, 3], &[900, 3]);
        push(&mut h, t0, 1, &[3, 2, 4], &[1200, 2]);
        push(&mut h, t0, 2, &[4, 1, 2], &[2, 700]);
        assert_eq!(limping(&h, at(t0, 2)), NONE, "three hops convict nobody");
        push(&mut h, t0, 3, &[3, 2, 1], &[800, 4]);
        assert_eq!(limping(&h, at(t0, 3)), [2]);
        // Reported once per chunk, only for chunks it holds.
        let now = at(t0, 6);
        assert_eq!(h.to_report(7, &[1, 3, 4], now), None);
        assert_eq!(h.to_report(7, &[1, 2, 3], now), Some(2));
        assert_eq!(h.to_report(7, &[1, 2, 3], now), None);
        assert_eq!(h.to_report(8, &[2, 3, 4], now), Some(2));
        // It stays limping for a while after the hops that convicted it,
        // then its chunks are no longer reported.
        let end = at(t0, 3) + LIMPING_FOR;
        assert_eq!(limping(&h, end - Duration::from_millis(1)), [2]);
        assert_eq!(limping(&h, end), NONE);
        assert_eq!(h.to_report(9, &[2, 3, 4], end), None);
    }

    /// Hops into 2 from 1 and 3 taking `slow` ms, the others 2-4 ms.
    fn one_slower(slow: u64) -> Hops<u64> {
        let t0 = Instant::now();
        let mut h: Hops<u64> = Hops::default();
        for i in 0..4 {
            push(&mut h, t0, i, &[1, 2, 3], &[slow, 3]);
            push(&mut h, t0, i, &[3, 2, 4], &[slow, 2]);
            push(&mut h, t0, i, &[1, 3, 4], &[4, 2]);
        }
        h
    }

    #[test]
    fn a_server_is_limping_only_at_the_floor_and_ratio_and_from_two_senders() {
        let now = Instant::now() + Duration::from_secs(1);
        assert_eq!(limping(&one_slower(250), now), [2]);
        assert_eq!(limping(&one_slower(249), now), NONE, "below the floor");
        // A loaded host: every hop slow, one slower but not ten times.
        let t0 = Instant::now();
        let mut h: Hops<u64> = Hops::default();
        for i in 0..8 {
            push(&mut h, t0, i, &[1, 2, 3], &[900, 400]);
            push(&mut h, t0, i, &[3, 4, 1], &[300, 500]);
        }
        assert_eq!(limping(&h, now), NONE);
        // Slow only from one sender: that sender's way out, not 2's in.
        let mut h: Hops<u64> = Hops::default();
        for i in 0..6 {
            push(&mut h, t0, i, &[1, 2, 3], &[900, 3]);
            push(&mut h, t0, i, &[3, 4, 1], &[2, 3]);
        }
        assert_eq!(limping(&h, now), NONE);
    }

    #[test]
    fn the_clients_own_slow_hop_convicts_nobody() {
        // The client's own link is the slow one. Pushed to each server
        // first in turn, every server has its share of slow hops.
        let t0 = Instant::now();
        let mut h: Hops<u64> = Hops::default();
        let orders = [[1, 2, 3], [2, 3, 1], [3, 1, 2]];
        for i in 0..15 {
            h.record(&orders[i % 3], &[2_000_000, 3000, 3000], at(t0, i as u64));
        }
        assert_eq!(limping(&h, at(t0, 15)), NONE);
        // Always to 1 first: slow hops into 1 from one sender only.
        let mut h: Hops<u64> = Hops::default();
        for i in 0..8 {
            h.record(&[1, 2, 3], &[2_000_000, 3000, 3000], at(t0, i));
        }
        assert_eq!(limping(&h, at(t0, 8)), NONE);
    }

    #[test]
    fn a_limping_senders_hops_do_not_convict_the_servers_after_it() {
        // Server 2 is slow both ways: the hop into it and the hop out of
        // it are slow.
        let t0 = Instant::now();
        let mut h: Hops<u64> = Hops::default();
        for i in 0..6 {
            push(&mut h, t0, i * 10, &[3, 2, 1], &[1400, 1500]);
            push(&mut h, t0, i * 10 + 5, &[1, 2, 4], &[1500, 1300]);
            push(&mut h, t0, i * 10 + 5, &[4, 1, 3], &[2, 3]);
        }
        let now = at(t0, 60);
        assert_eq!(limping(&h, now), [2]);
        // Out of the chains (no more hops into it), its old hops out still
        // do not convict 1 or 4.
        for i in 0..6 {
            push(&mut h, t0, 100 + i * 10, &[1, 3, 4], &[3, 2]);
        }
        let now = at(t0, 160);
        assert_eq!(limping(&h, now), [2]);
        assert_eq!(h.to_report(5, &[1, 3, 4], now), None);
    }

    #[test]
    fn two_limping_servers_are_both_found() {
        let t0 = Instant::now();
        let mut h = Hops::default();
        for i in 0..4 {
            push(&mut h, t0, i, &[1, 2, 5], &[900, 3]);
            push(&mut h, t0, i, &[3, 2, 4], &[1200, 2]);
            push(&mut h, t0, i, &[1, 5, 3], &[2, 600]);
            push(&mut h, t0, i, &[4, 3, 1], &[700, 2]);
            push(&mut h, t0, i, &[1, 4, 5], &[3, 2]);
        }
        assert_eq!(limping(&h, at(t0, 4)), [2, 3]);
        // One each per chunk, its first limping replica first.
        let now = at(t0, 4);
        assert_eq!(h.to_report(1, &[3, 2, 4], now), Some(3));
        assert_eq!(h.to_report(1, &[3, 2, 4], now), Some(2));
        assert_eq!(h.to_report(1, &[3, 2, 4], now), None);
    }

    #[test]
    fn old_hops_say_nothing() {
        let t0 = Instant::now();
        let mut h = one_slower(900);
        assert_eq!(limping(&h, at(t0, 10)), [2]);
        // Long after: the old slow hops have aged out; new ones are fast.
        let late = (WINDOW + LIMPING_FOR).as_millis() as u64 + 100;
        for i in 0..4 {
            push(&mut h, t0, late + i, &[1, 2, 3], &[2, 3]);
            push(&mut h, t0, late + i, &[3, 2, 4], &[2, 3]);
        }
        assert_eq!(limping(&h, at(t0, late + 4)), NONE);
        let hops = h.into.values().flatten();
        assert!(hops.into_iter().all(|h| h.at >= at(t0, late)), "aged out");
    }

    #[test]
    fn answers_with_more_or_fewer_lags_than_the_chain_are_taken_as_far_as_they_go() {
        let t0 = Instant::now();
        let mut h: Hops<u64> = Hops::default();
        h.record(&[1, 2], &[5, 6, 7, 8], t0);
        h.record(&[1, 2, 3], &[5, 6], t0);
        h.record(&[1, 2, 3], &[5], t0);
        h.record(&[1, 2, 3], &[], t0);
        h.record(&[], &[u64::MAX, 1], t0);
        h.record(&[1, 2], &[u64::MAX, u64::MAX], t0);
        assert_eq!(h.into[&1].len(), 4);
        assert_eq!(h.into[&2].len(), 3);
        assert!(!h.into.contains_key(&3));
    }
}
