//! The record ids a [`crate::RecordReader`] has delivered, so that it
//! delivers each once: per client, the runs of consecutive sequence
//! numbers seen. A client numbers its records 0, 1, 2, ... and a reader
//! sees most of them, so its memory grows with the gaps (records in other
//! files, appends given up), not with the records: a file of a billion
//! records from a few clients costs a few runs, where a set of every id
//! cost tens of GB.

use std::collections::{BTreeMap, HashMap};

use gfs_proto::record::RecordId;

/// Record ids seen, as runs of sequence numbers per client.
#[derive(Debug, Default)]
pub struct Seen {
    /// Per client: the first sequence number of each run, and its last.
    runs: HashMap<u64, BTreeMap<u64, u64>>,
}

impl Seen {
    /// Records `id`; whether it is new (false: it was seen before).
    pub fn insert(&mut self, id: RecordId) -> bool {
        let runs = self.runs.entry(id.client_id).or_default();
        let seq = id.seq;
        let before = runs.range(..=seq).next_back().map(|(&s, &l)| (s, l));
        if before.is_some_and(|(_, last)| last >= seq) {
            return false;
        }
        // Runs that end just before it and start just after it join it.
        let joins_before = before.filter(|&(_, last)| last + 1 == seq);
        let after = seq.checked_add(1).and_then(|n| runs.remove_entry(&n));
        let last = after.map_or(seq, |(_, l)| l);
        match joins_before {
            Some((start, _)) => runs.insert(start, last),
            None => runs.insert(seq, last),
        };
        true
    }

    /// Runs held, over all clients (what the memory grows with).
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng};

    use super::*;

    fn id(client_id: u64, seq: u64) -> RecordId {
        RecordId { client_id, seq }
    }

    #[test]
    fn each_id_is_new_once_and_runs_join_whatever_the_order() {
        let mut s = Seen::default();
        assert!(s.insert(id(1, 5)));
        assert!(!s.insert(id(1, 5)));
        // Another client's 5 is another record.
        assert!(s.insert(id(2, 5)));
        assert!(s.insert(id(1, 7)));
        assert_eq!(s.runs(), 3);
        // 6 joins 5 and 7 into one run.
        assert!(s.insert(id(1, 6)));
        assert_eq!(s.runs(), 2);
        for seq in 5..=7 {
            assert!(!s.insert(id(1, seq)));
        }
        assert!(s.insert(id(1, 4)));
        assert!(s.insert(id(1, 8)));
        assert_eq!(s.runs(), 2);
        assert!(!s.insert(id(1, 4)) && !s.insert(id(1, 8)));
    }

    #[test]
    fn the_ends_of_the_numbers_are_ids_like_any_other() {
        let mut s = Seen::default();
        assert!(s.insert(id(0, u64::MAX)));
        assert!(s.insert(id(0, 0)));
        assert!(s.insert(id(0, u64::MAX - 1)));
        assert!(!s.insert(id(0, u64::MAX)));
        assert!(!s.insert(id(0, 0)));
        assert_eq!(s.runs(), 2);
    }

    #[test]
    fn a_million_records_of_a_few_clients_out_of_order_hold_a_few_runs() {
        use rand::seq::SliceRandom;
        let mut s = Seen::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Four pipelining clients: each one's records land shuffled within
        // blocks of 16, a retried copy now and then, and one in 10 000
        // given up (a gap for good).
        let each: Vec<Vec<u64>> = (0..4)
            .map(|_| {
                let mut seqs: Vec<u64> = (0..250_000).collect();
                seqs.chunks_mut(16).for_each(|b| b.shuffle(&mut rng));
                seqs.retain(|_| rng.random_range(0..10_000) != 0);
                seqs
            })
            .collect();
        let given_up = 4 * 250_000 - each.iter().map(Vec::len).sum::<usize>();
        let (mut at, mut most) = ([0usize; 4], 0);
        while let Some(c) = (0..4)
            .filter(|&c| at[c] < each[c].len())
            .max_by_key(|_| rng.random::<u32>())
        {
            let seq = each[c][at[c]];
            assert!(s.insert(id(c as u64, seq)));
            if rng.random_range(0..100) == 0 {
                assert!(!s.insert(id(c as u64, seq)));
            }
            at[c] += 1;
            most = most.max(s.runs());
        }
        // The runs open within each client's block of 16, and the gaps.
        assert!(given_up > 0);
        assert!(most <= 4 * 16 + given_up, "{most} runs");
        assert_eq!(s.runs(), 4 + given_up);
    }

    #[test]
    fn it_answers_as_a_set_of_every_id_would() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (mut s, mut set) = (Seen::default(), HashSet::new());
        for _ in 0..200_000 {
            let i = id(rng.random_range(0..3), rng.random_range(0..2_000));
            assert_eq!(s.insert(i), set.insert(i), "{i:?}");
        }
        assert!(s.runs() < set.len());
    }
}
