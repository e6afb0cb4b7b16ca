//! The dashboard's chart: how many requests were hits, coalesced followers
//! and misses in each interval, in a ring of a fixed number of slots.
//!
//! A task samples [`IdempotencyLayer::stats`](tower_idempotency::IdempotencyLayer::stats)
//! once per interval and records the difference from the previous sample.
//! The ring is allocated once, at its full size: its memory is
//! `slots × size_of::<Slot>()` (32 bytes a slot; 360 slots, an hour at the
//! default 10 s, are 11.25 KiB) whatever the traffic.

use std::{
    collections::VecDeque,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tower_idempotency::Stats;

/// One interval's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// When the interval ended, in milliseconds since the Unix epoch.
    pub at: u64,
    /// Requests answered from a stored entry (either tier).
    pub hits: u64,
    /// Requests that shared a concurrent identical request's response.
    pub coalesced: u64,
    /// Requests that found nothing and called the upstream.
    pub misses: u64,
}

/// The last `capacity` intervals, oldest first.
#[derive(Debug)]
pub struct History {
    slots: VecDeque<Slot>,
    capacity: usize,
    /// The counters at the previous sample: hits, coalesced, misses.
    previous: (u64, u64, u64),
}

impl History {
    /// An empty ring of `capacity` slots (at least one), counting from
    /// `start`.
    pub fn new(capacity: usize, start: &Stats) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: VecDeque::with_capacity(capacity),
            capacity,
            previous: totals(start),
        }
    }

    /// Records the interval that ends now, at `at` (ms since the epoch),
    /// dropping the oldest slot when the ring is full.
    pub fn record(&mut self, at: u64, stats: &Stats) {
        let now = totals(stats);
        let slot = Slot {
            at,
            hits: now.0.saturating_sub(self.previous.0),
            coalesced: now.1.saturating_sub(self.previous.1),
            misses: now.2.saturating_sub(self.previous.2),
        };
        self.previous = now;
        if self.slots.len() == self.capacity {
            self.slots.pop_front();
        }
        self.slots.push_back(slot);
    }

    /// The slots, oldest first.
    pub fn slots(&self) -> Vec<Slot> {
        self.slots.iter().copied().collect()
    }

    /// Bytes the ring holds on to, whatever it contains.
    pub fn memory_bound(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

fn totals(stats: &Stats) -> (u64, u64, u64) {
    (stats.hits.total(), stats.coalesced, stats.misses)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hits: u64, coalesced: u64, misses: u64) -> Stats {
        let mut stats = Stats::default();
        stats.hits.l1 = hits;
        stats.coalesced = coalesced;
        stats.misses = misses;
        stats
    }

    #[test]
    fn records_differences_and_keeps_the_last_slots() {
        let mut history = History::new(3, &stats(1, 0, 1));
        let bound = history.memory_bound();
        assert_eq!(bound, 3 * 32);
        for (at, hits) in (1..=5).zip([2, 4, 4, 9, 10]) {
            history.record(at, &stats(hits, at, 2 * at));
        }
        let slots = history.slots();
        assert_eq!(slots.len(), 3);
        assert_eq!(
            slots.iter().map(|s| (s.at, s.hits)).collect::<Vec<_>>(),
            [(3, 0), (4, 5), (5, 1)]
        );
        assert!(slots.iter().all(|s| s.coalesced == 1 && s.misses == 2));
        assert_eq!(history.memory_bound(), bound, "the ring never grows");
    }
}
