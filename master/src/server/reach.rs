//! A leader that no chunkserver reaches hands its leadership to a master
//! they do reach.
//!
//! Raft keeps a leader as long as its own messages reach the followers.
//! Cut the way in to it (a firewall on its port, a one-way fault of its
//! network) while its way out still works, and it stays leader: its
//! AppendEntries still arrive and their answers come back on its own
//! connections, while no client and no chunkserver can reach it. Clients
//! told by the followers to go to it waited out their whole deadline
//! ("no master answered within 30s"), for as long as the fault lasted.
//!
//! Every chunkserver heartbeats every master, so the masters can tell: a
//! leader that has heard no chunkserver for eight of their usual heartbeat
//! gaps ([`ask_after_ms`], 4 s with the default 500 ms heartbeats), while
//! a follower has heard one since (asked twice, [`confirm_after`] apart,
//! each time having heard one at least that much more lately than the
//! leader: [`Silence`]), asks that follower to take over
//! (`admin::hand_over`). A cluster with no chunkserver up, or one that no
//! master hears, changes nothing.

use std::sync::Arc;
use std::time::Duration;

use gfs_proto::wire::master::Empty;
use gfs_proto::wire::master::master_admin_client::MasterAdminClient;

use super::network::channel;
use super::node::{Node, now_ms};

/// How often a master checks.
const EVERY: Duration = Duration::from_secs(1);
/// How long a follower's answer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// After a hand-over, how long before the next one.
const AGAIN_AFTER: Duration = Duration::from_secs(10);
/// How long a hand-over may take.
const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

/// How long after a first answer naming a successor the followers are
/// asked again, given the longest usual gap between a server's
/// heartbeats: every server falling silent at once (all down, or cut off
/// from every master) leaves a follower that heard their last heartbeats
/// up to a gap later than the leader counting them live for that much
/// longer. Asked again two gaps later, it counts them too.
pub fn confirm_after(longest_gap_ms: u64) -> Duration {
    Duration::from_millis(longest_gap_ms.saturating_mul(2).max(1_000))
}

/// How long a leader must have heard no chunkserver before it asks its
/// followers, given the longest usual gap between a server's heartbeats:
/// eight gaps, at least 4 s (a loaded host delays heartbeats; a needless
/// hand-over costs an election), at most the chunkserver timeout.
pub fn ask_after_ms(longest_gap_ms: u64, timeout_ms: u64) -> u64 {
    longest_gap_ms.saturating_mul(8).max(4_000).min(timeout_ms)
}

/// Whether a leader since `leader_since_ms` has heard no chunkserver for
/// `timeout_ms` at `now_ms`, its newest heartbeat from any server being
/// `newest_ms` (`None`: it knows of no server, and so misses none).
pub fn unreached(
    now_ms: u64,
    leader_since_ms: u64,
    newest_ms: Option<u64>,
    timeout_ms: u64,
) -> bool {
    let Some(newest) = newest_ms else {
        return false;
    };
    now_ms.saturating_sub(newest.max(leader_since_ms)) >= timeout_ms
}

/// What a follower answered: its id, the chunkservers it counts live, the
/// leader it follows, how long ago it heard a chunkserver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub id: u64,
    pub live: u64,
    pub leader: u64,
    pub heard_ms_ago: Option<u64>,
}

/// How long the leader has heard no chunkserver, and what a follower must
/// have heard to take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    pub ms: u64,
    /// The chunkserver timeout: a silence this long needs only a follower
    /// that counts some server live.
    pub timeout_ms: u64,
    /// Shorter ones need a follower that heard a server at least this much
    /// more lately than the leader did: when every server falls silent at
    /// once, each master's last heartbeat is within a gap of the others'
    /// ([`confirm_after`]).
    pub margin_ms: u64,
}

impl Silence {
    fn heard_by(&self, a: &Answer) -> bool {
        a.live > 0
            && (self.ms >= self.timeout_ms
                || a.heard_ms_ago
                    .is_some_and(|h| self.ms.saturating_sub(h) >= self.margin_ms))
    }
}

/// The master `me` hands over to, from the followers' answers, after
/// `silence`: the one that hears the most chunkservers, among those that
/// heard one the leader did not ([`Silence`]), and only while every one
/// that answered still follows `me` (one that follows another says `me`
/// is a leader of the past: stopped a while, say, and not told yet;
/// handing over would only unseat the real one).
pub fn successor(me: u64, answers: &[Answer], silence: Silence) -> Option<u64> {
    if answers.iter().any(|a| a.leader != me) {
        return None;
    }
    answers
        .iter()
        .filter(|a| silence.heard_by(a))
        .max_by_key(|a| (a.live, std::cmp::Reverse(a.id)))
        .map(|a| a.id)
}

/// Checks every [`EVERY`] until the task is dropped.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since = None;
    loop {
        tick.tick().await;
        if !node.is_leader() {
            leader_since = None;
            continue;
        }
        let now = now_ms();
        let since = *leader_since.get_or_insert(now);
        let newest = node.soft().newest_heartbeat_ms();
        let gap = node.soft().longest_gap_ms();
        let timeout = node.cfg.chunkserver_timeout_ms;
        let after = ask_after_ms(gap, timeout);
        if !unreached(now, since, newest, after) {
            continue;
        }
        let silence = |now: u64, newest: Option<u64>| Silence {
            ms: now.saturating_sub(newest.unwrap_or(0).max(since)),
            timeout_ms: timeout,
            margin_ms: u64::try_from(confirm_after(gap).as_millis()).unwrap_or(u64::MAX),
        };
        let first = ask_followers(&node).await;
        if successor(node.cfg.id, &first, silence(now, newest)).is_none() {
            continue;
        }
        tokio::time::sleep(confirm_after(gap)).await;
        let (now, newest) = (now_ms(), node.soft().newest_heartbeat_ms());
        if !node.is_leader() || !unreached(now, since, newest, after) {
            continue;
        }
        let answers = ask_followers(&node).await;
        let Some(to) = successor(node.cfg.id, &answers, silence(now, newest)) else {
            continue;
        };
        tracing::warn!(
            silent_ms = now.saturating_sub(newest.unwrap_or(0).max(since)),
            to,
            ?answers,
            "no chunkserver has reached this leader while a follower hears them: handing over"
        );
        match super::admin::hand_over(&node, to, HAND_OVER_WAIT).await {
            Ok(()) => tracing::info!(to, "handed over"),
            Err(e) => tracing::warn!(to, error = %e.message(), "hand-over failed"),
        }
        tokio::time::sleep(AGAIN_AFTER).await;
        leader_since = None;
    }
}

/// What each other voter that answers says.
async fn ask_followers(node: &Node) -> Vec<Answer> {
    let peers: Vec<(u64, String)> = {
        let m = node.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter(|id| *id != node.cfg.id)
            .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
            .collect()
    };
    let mut answers = Vec::new();
    for (id, addr) in peers {
        let Ok(ch) = channel(
            &addr,
            Some(node.cfg.listen.ip()),
            node.cfg.auth_token.as_ref(),
        ) else {
            continue;
        };
        let mut admin = MasterAdminClient::new(ch);
        if let Ok(Ok(r)) = tokio::time::timeout(ASK_TIMEOUT, admin.status(Empty {})).await {
            let r = r.into_inner();
            answers.push(Answer {
                id,
                live: r.chunkservers,
                leader: r.leader_id,
                heard_ms_ago: r.heard_ms_ago,
            });
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_unreached_once_no_server_was_heard_for_a_timeout_of_its_leading() {
        // Heard 2 s ago, timeout 3 s: reached.
        assert!(!unreached(10_000, 0, Some(8_000), 3_000));
        assert!(unreached(11_000, 0, Some(8_000), 3_000));
        // Just elected: a timeout of its own leading first, whatever it
        // heard as a follower.
        assert!(!unreached(11_000, 9_000, Some(1_000), 3_000));
        assert!(unreached(12_000, 9_000, Some(1_000), 3_000));
        // No server known: nothing missed.
        assert!(!unreached(u64::MAX, 0, None, 3_000));
    }

    /// A leader silent for 5 s (a 15 s timeout, a 1 s margin).
    const LONG: Silence = Silence {
        ms: 5_000,
        timeout_ms: 15_000,
        margin_ms: 1_000,
    };

    /// A follower that heard a server 200 ms ago.
    fn answer(id: u64, live: u64, leader: u64) -> Answer {
        Answer {
            id,
            live,
            leader,
            heard_ms_ago: Some(200),
        }
    }

    #[test]
    fn the_leader_asks_after_eight_heartbeat_gaps_at_least_4_s_at_most_a_timeout() {
        assert_eq!(ask_after_ms(500, 15_000), 4_000);
        assert_eq!(ask_after_ms(0, 15_000), 4_000);
        assert_eq!(ask_after_ms(1_000, 15_000), 8_000);
        assert_eq!(ask_after_ms(200, 2_000), 2_000);
        assert_eq!(ask_after_ms(u64::MAX, 15_000), 15_000);
    }

    #[test]
    fn the_successor_is_the_follower_hearing_the_most_servers() {
        let a = |id, live| answer(id, live, 1);
        assert_eq!(successor(1, &[a(2, 4), a(3, 3)], LONG), Some(2));
        assert_eq!(successor(1, &[a(2, 0), a(3, 3)], LONG), Some(3));
        assert_eq!(
            successor(1, &[a(2, 3), a(3, 3)], LONG),
            Some(2),
            "ties: the lower id"
        );
        assert_eq!(
            successor(1, &[a(2, 0), a(3, 0)], LONG),
            None,
            "nobody hears a server"
        );
        assert_eq!(successor(1, &[], LONG), None, "nobody answered");
        assert_eq!(successor(1, &[a(3, 3)], LONG), Some(3), "one answered");
    }

    #[test]
    fn before_a_timeout_only_a_follower_that_heard_a_server_since_takes_over() {
        let heard = |ago| Answer {
            heard_ms_ago: ago,
            ..answer(2, 4, 1)
        };
        // Every server fell silent at once: the follower heard its last
        // heartbeat at most a gap after the leader did.
        assert_eq!(successor(1, &[heard(Some(4_600))], LONG), None);
        assert_eq!(successor(1, &[heard(Some(4_001))], LONG), None);
        assert_eq!(successor(1, &[heard(Some(4_000))], LONG), Some(2));
        assert_eq!(successor(1, &[heard(None)], LONG), None, "says nothing");
        // Past a timeout, counting servers live is enough.
        let timed_out = Silence { ms: 15_000, ..LONG };
        assert_eq!(successor(1, &[heard(None)], timed_out), Some(2));
        assert_eq!(successor(1, &[heard(Some(14_500))], timed_out), Some(2));
    }

    #[test]
    fn followers_are_asked_again_two_heartbeat_gaps_later() {
        assert_eq!(confirm_after(0), Duration::from_secs(1));
        assert_eq!(confirm_after(200), Duration::from_secs(1));
        assert_eq!(confirm_after(1_000), Duration::from_secs(2));
        assert_eq!(confirm_after(u64::MAX), Duration::from_millis(u64::MAX));
    }

    #[test]
    fn a_leader_its_followers_no_longer_follow_hands_nothing_over() {
        let follows = |leader| answer(2, 4, leader);
        assert_eq!(successor(1, &[follows(1)], LONG), Some(2));
        assert_eq!(successor(1, &[follows(3)], LONG), None);
        assert_eq!(successor(1, &[follows(1), answer(3, 4, 3)], LONG), None);
        assert_eq!(
            successor(1, &[follows(0)], LONG),
            None,
            "following nobody yet"
        );
    }
}
