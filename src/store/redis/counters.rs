//! Counting without a round trip per request: hits answered from L1 and the
//! fleet totals are added up locally and flushed to Redis in batches, every
//! flush interval and before every analytics read.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex, PoisonError, Weak,
    },
};

use super::{
    scripts,
    store::{Inner, RedisStore},
};
use crate::{key::Key, record::now_millis, store::l2::FleetCounter};

/// The fields of the fleet counters' hash, in [`FleetCounter`] order.
const FLEET_FIELDS: [&str; 6] = [
    "hits_l1",
    "hits_l2",
    "misses",
    "coalesced",
    "upstream_calls",
    "stored",
];

/// Counts not yet sent to Redis.
#[derive(Default)]
pub(super) struct Pending {
    /// Fleet totals, indexed by [`FleetCounter`].
    fleet: [AtomicU64; 6],
    /// L1 hits per entry: (namespace tag, key).
    hits: Mutex<HashMap<(String, Key), u64>>,
}

/// How long the fleet counters outlive their last flush.
const STATS_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

impl RedisStore {
    /// Counts a hit answered from L1 against the entry, flushed later.
    pub(crate) fn count_l1_hit(&self, ns: &str, key: &Key) {
        let mut hits = self
            .inner
            .pending
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *hits.entry((ns.to_owned(), *key)).or_default() += 1;
    }

    /// Adds to a fleet counter, flushed later.
    pub(crate) fn count(&self, counter: FleetCounter, n: u64) {
        self.inner.pending.fleet[counter as usize].fetch_add(n, Relaxed);
    }
}

impl Inner {
    /// Sends the counters kept locally.
    pub(super) async fn flush(&self) {
        let _flushing = self.flushing.lock().await;
        let stats_key = self.stats_key();
        let mut fleet = redis::pipe();
        let mut any = false;
        for (counter, field) in self.pending.fleet.iter().zip(FLEET_FIELDS) {
            let n = counter.swap(0, Relaxed);
            if n > 0 {
                fleet
                    .cmd("HINCRBY")
                    .arg(self.stats_key())
                    .arg(field)
                    .arg(n)
                    .ignore();
                any = true;
            }
        }
        let mut conn = self.conn.clone();
        if any {
            // Counters nobody updates for a month go away with the rest.
            fleet
                .cmd("PEXPIRE")
                .arg(&stats_key)
                .arg(STATS_TTL_MS)
                .ignore();
            let _: Result<(), _> = self
                .run(
                    Some(&stats_key),
                    self.settings.write_timeout,
                    fleet.query_async(&mut conn),
                )
                .await;
        }
        let hits = std::mem::take(
            &mut *self
                .pending
                .hits
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let now = now_millis();
        for ((ns, key), n) in hits {
            let names = self.names(&ns, &key);
            let mut invocation = scripts::ADD_HITS.prepare_invoke();
            invocation.key(&names.entry).arg(n).arg(now);
            let _: Result<i64, _> = self
                .run(
                    Some(&names.entry),
                    self.settings.write_timeout,
                    invocation.invoke_async(&mut conn),
                )
                .await;
        }
    }
}

/// Flushes every flush interval, for as long as the store lives.
pub(super) async fn flush_periodically(inner: Weak<Inner>) {
    let Some(every) = inner.upgrade().map(|i| i.settings.flush_interval) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.flush().await;
    }
}
