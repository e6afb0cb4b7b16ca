//! Sample buckets: up to `n` stored answers for a request that asks for
//! variety. The first `n` requests with a key each get their own bucket
//! (and call upstream); later ones get one of the `n` at random, which is a
//! hit once that bucket's answer is stored, or a follower while it is being
//! made.
//!
//! A bucket is a key of its own, derived from the request's key and the
//! bucket's number, so everything else (L1, flights, L2, leases) works on it
//! unchanged. Which bucket comes next is counted in the shared store when
//! there is one (one count for every instance), else here.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::{key::Job, Engine};
use crate::key::Key;

/// The most answers kept per request.
pub(crate) const MAX_BUCKETS: u32 = 1000;

/// How many local counts are kept: past it, the expired go, then any. A
/// count that is lost only restarts the round, whose buckets are stored.
const MAX_COUNTS: usize = 10_000;

/// The local counts of requests per key, when no shared store counts them.
#[derive(Default)]
pub(super) struct Buckets {
    counts: Mutex<HashMap<Key, (u64, Instant)>>,
}

impl Buckets {
    /// The count of `key`'s requests, this one included.
    fn next(&self, key: &Key, ttl: Duration) -> u64 {
        let now = Instant::now();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_COUNTS && !counts.contains_key(key) {
            counts.retain(|_, (_, expires)| *expires > now);
            if counts.len() >= MAX_COUNTS {
                if let Some(any) = counts.keys().next().copied() {
                    counts.remove(&any);
                }
            }
        }
        let expires = now.checked_add(ttl).unwrap_or(now);
        let entry = counts.entry(*key).or_insert((0, expires));
        if entry.1 <= now {
            *entry = (0, expires);
        }
        entry.0 += 1;
        entry.0
    }
}

impl Engine {
    /// Moves `job` to one of `n` buckets of its key: the next unfilled one,
    /// or, once all are, one at random (then `job.bucketed` is set: its
    /// answer counts as a bucket hit).
    pub(super) async fn pick_bucket(&self, job: &mut Job, n: u32) {
        let n = u64::from(n.clamp(1, MAX_BUCKETS));
        let count = match self.l2.bucket_count(&job.ns, &job.key, job.ttl).await {
            Some(count) => count,
            None => self.buckets.next(&job.key, job.ttl),
        };
        let bucket = if count <= n {
            count - 1
        } else {
            job.bucketed = true;
            std::collections::hash_map::RandomState::new().hash_one(count) % n
        };
        job.key = job.key.bucket(bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_restart_when_they_expire_and_stay_bounded() {
        let buckets = Buckets::default();
        let key = Key::from_bytes([1; 32]);
        assert_eq!(buckets.next(&key, Duration::from_secs(60)), 1);
        assert_eq!(buckets.next(&key, Duration::from_secs(60)), 2);
        let short = Key::from_bytes([2; 32]);
        assert_eq!(buckets.next(&short, Duration::ZERO), 1);
        assert_eq!(buckets.next(&short, Duration::ZERO), 1, "expired at once");
        for i in 0..(MAX_COUNTS as u32 + 100) {
            let mut bytes = [0; 32];
            bytes[..4].copy_from_slice(&i.to_be_bytes());
            bytes[31] = 9;
            buckets.next(&Key::from_bytes(bytes), Duration::from_secs(60));
        }
        assert!(buckets.counts.lock().unwrap().len() <= MAX_COUNTS);
    }
}
