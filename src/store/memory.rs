//! L1: an in-process `moka` cache weighed in bytes.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use moka::{
    future::Cache,
    notification::{ListenerFuture, RemovalCause},
    policy::EvictionPolicy,
    Expiry,
};

use crate::{
    key::{BuildKeyHasher, Key},
    record::{now_millis, Record},
};

/// The share of the budget kept for entries that have been replayed, in
/// fifths.
const PROTECTED_FIFTHS: u64 = 1;

/// The in-process cache: a byte budget, and per-entry expiry equal to the
/// entry's remaining time to live.
///
/// Eviction is segmented LRU. A new entry lands in the probation segment
/// (four fifths of the budget); its first replay copies it into the
/// protected segment (one fifth), where only entries replayed at least once
/// compete, and the probation copy ages out.
/// A flood of one-off misses churns probation and never reaches an entry
/// that is being replayed. An entry pushed out of the protected segment
/// goes back to probation, as the most recent there, rather than away.
///
/// moka's own admission policy (TinyLFU) is not used: it counts how often
/// keys are read only once a cache is half full, and sizes that count for
/// the entries present at that moment, so an entry that served every request
/// while the cache filled up looked like a one-off and was evicted by the
/// first flood of misses.
///
/// Cheap to clone: moka's caches are themselves shared handles.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    probation: Cache<Key, Arc<Record>, BuildKeyHasher>,
    protected: Cache<Key, Arc<Record>, BuildKeyHasher>,
    /// The protected segment's budget: a larger record stays in probation.
    protected_capacity: u64,
    /// How many inserts have completed, in stripes by key: see
    /// [`MemoryStore::generation`].
    generations: Arc<[AtomicU64; STRIPES]>,
}

/// Stripes of [`MemoryStore::generation`]: enough that concurrent misses on
/// different keys seldom share one.
const STRIPES: usize = 64;

/// Expires each entry when its record does, wherever it was created.
struct UntilRecordExpires;

impl Expiry<Key, Arc<Record>> for UntilRecordExpires {
    fn expire_after_create(&self, _: &Key, record: &Arc<Record>, _: Instant) -> Option<Duration> {
        Some(record.ttl_at(now_millis()))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        record: &Arc<Record>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(record.ttl_at(now_millis()))
    }
}

impl MemoryStore {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let protected_capacity = capacity_bytes / 5 * PROTECTED_FIFTHS;
        let probation = Cache::builder()
            .name("tower-idempotency-l1")
            .max_capacity(capacity_bytes - protected_capacity)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_: &Key, record: &Arc<Record>| record.weight())
            .expire_after(UntilRecordExpires)
            .build_with_hasher(BuildKeyHasher::default());
        let demote_into = probation.clone();
        let protected = Cache::builder()
            .name("tower-idempotency-l1-protected")
            .max_capacity(protected_capacity)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_: &Key, record: &Arc<Record>| record.weight())
            .expire_after(UntilRecordExpires)
            .async_eviction_listener(move |key, record, cause| -> ListenerFuture {
                let probation = demote_into.clone();
                Box::pin(async move {
                    if cause == RemovalCause::Size {
                        probation.insert(*key, record).await;
                    }
                })
            })
            .build_with_hasher(BuildKeyHasher::default());
        Self {
            probation,
            protected,
            protected_capacity,
            generations: Arc::new([const { AtomicU64::new(0) }; STRIPES]),
        }
    }

    fn stripe(&self, key: &Key) -> &AtomicU64 {
        // Keys are SHA-256 output: any byte spreads them evenly. Not the
        // first, which picks the flight map's shard.
        &self.generations[usize::from(key.as_bytes()[1]) % STRIPES]
    }

    /// A count that moves whenever an insert of `key` (or of a key sharing
    /// its stripe) has completed. A miss that reads the same generation
    /// before its look-up and later knows nobody stored `key` in between:
    /// it need not look again.
    pub(crate) fn generation(&self, key: &Key) -> u64 {
        self.stripe(key).load(Ordering::Acquire)
    }

    pub(crate) async fn get(&self, key: &Key) -> Option<Arc<Record>> {
        self.get_at(key, now_millis()).await
    }

    /// [`get`](Self::get), fresh at `now` (milliseconds since the epoch):
    /// a hit reads the clock once, for this and for its `age`.
    pub(crate) async fn get_at(&self, key: &Key, now: u64) -> Option<Arc<Record>> {
        // moka expires on its own clock; the record's wall-clock deadline is
        // the authority (an entry from L2 may be close to it). Probation
        // first: a refreshed entry lands there and must shadow the old one.
        //
        // A segment without the key is passed over without a `get`: moka
        // records every `get`, a miss too, and that record (with the
        // housekeeping it triggers) was most of what a miss cost here, for
        // an eviction policy (LRU) that has no use for misses.
        if self.probation.contains_key(key) {
            if let Some(record) = self.probation.get(key).await {
                if !record.is_fresh_at(now) {
                    return None;
                }
                self.promote(*key, &record).await;
                return Some(record);
            }
        }
        if !self.protected.contains_key(key) {
            return None;
        }
        let record = self.protected.get(key).await?;
        record.is_fresh_at(now).then_some(record)
    }

    /// Copies a replayed entry into the protected segment. The probation
    /// copy is not removed: it ages out there like any other entry. Moving
    /// it (insert here, remove there) let a concurrent reader miss it in
    /// both segments, and a miss there is a second upstream call
    /// (`races::an_entry_moving_between_segments_is_never_missing`). Each
    /// segment keeps its own budget, so the copy never takes the whole
    /// over the budget.
    async fn promote(&self, key: Key, record: &Arc<Record>) {
        if u64::from(record.weight()) > self.protected_capacity || self.protected.contains_key(&key)
        {
            return;
        }
        self.protected.insert(key, Arc::clone(record)).await;
    }

    pub(crate) async fn insert(&self, key: Key, record: Arc<Record>) {
        self.probation.insert(key, record).await;
        self.protected.invalidate(&key).await;
        self.stripe(&key).fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) async fn remove(&self, key: &Key) {
        self.probation.invalidate(key).await;
        self.protected.invalidate(key).await;
    }

    pub(crate) fn clear(&self) {
        self.probation.invalidate_all();
        self.protected.invalidate_all();
    }

    /// Entries and weighed bytes, after pending maintenance.
    pub(crate) async fn usage(&self) -> (u64, u64) {
        self.protected.run_pending_tasks().await;
        self.probation.run_pending_tasks().await;
        (
            self.probation.entry_count() + self.protected.entry_count(),
            self.probation.weighted_size() + self.protected.weighted_size(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode, Version};

    fn key(n: u64) -> Key {
        let mut bytes = [0u8; 32];
        // Spread like a digest: the high bytes vary too.
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        bytes[..8].copy_from_slice(&mixed.to_be_bytes());
        bytes[8..16].copy_from_slice(&n.to_be_bytes());
        Key::from_hex(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap()
    }

    fn record(body_len: usize) -> Arc<Record> {
        let now = now_millis();
        Arc::new(Record {
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body_len]),
            trailers: None,
            created_at: now,
            expires_at: now + 3_600_000,
            meta: Bytes::new(),
            info: Default::default(),
        })
    }

    /// A gateway's life: a hot entry replayed many times, then a flood of
    /// one-off misses ten times the budget. The protected segment must keep
    /// the hot entry over the one-hit wonders.
    #[tokio::test]
    async fn a_hot_entry_survives_a_flood_of_one_off_misses() {
        const BUDGET: u64 = 1024 * 1024;
        const BODY: usize = 1024;
        let store = MemoryStore::new(BUDGET);
        let per_entry = u64::from(record(BODY).weight());
        let capacity_entries = BUDGET / per_entry;

        let hot = key(u64::MAX);
        store.insert(hot, record(BODY)).await;
        for _ in 0..10_000 {
            assert!(store.get(&hot).await.is_some());
        }
        for n in 0..capacity_entries * 10 {
            let one_off = key(n);
            assert!(store.get(&one_off).await.is_none());
            store.insert(one_off, record(BODY)).await;
        }
        let (entries, weighed) = store.usage().await;
        assert!(weighed <= BUDGET, "{weighed} bytes over the budget");
        assert!(
            store.get(&hot).await.is_some(),
            "the hot entry was evicted ({entries} entries, {weighed} bytes)"
        );
    }

    /// The same flood with the hot entry replayed all along.
    #[tokio::test]
    async fn an_entry_replayed_during_a_flood_stays() {
        const BUDGET: u64 = 1024 * 1024;
        const BODY: usize = 1024;
        let store = MemoryStore::new(BUDGET);
        let capacity_entries = BUDGET / u64::from(record(BODY).weight());
        let hot = key(u64::MAX);
        store.insert(hot, record(BODY)).await;
        for n in 0..capacity_entries * 10 {
            assert!(store.get(&key(n)).await.is_none());
            store.insert(key(n), record(BODY)).await;
            if n % 10 == 0 {
                assert!(store.get(&hot).await.is_some(), "lost after {n} misses");
            }
        }
    }

    #[tokio::test]
    async fn a_refreshed_entry_replaces_a_protected_one() {
        let store = MemoryStore::new(1024 * 1024);
        let k = key(1);
        let old = record(10);
        store.insert(k, Arc::clone(&old)).await;
        // The first replay promotes it.
        assert!(Arc::ptr_eq(&store.get(&k).await.unwrap(), &old));
        assert!(Arc::ptr_eq(&store.get(&k).await.unwrap(), &old));
        let new = record(20);
        store.insert(k, Arc::clone(&new)).await;
        assert!(Arc::ptr_eq(&store.get(&k).await.unwrap(), &new));
        assert!(Arc::ptr_eq(&store.get(&k).await.unwrap(), &new));
        store.remove(&k).await;
        assert!(store.get(&k).await.is_none());
    }

    /// More replayed entries than the protected segment holds: those pushed
    /// out go back to probation, and the whole stays within the budget.
    #[tokio::test]
    async fn entries_pushed_out_of_the_protected_segment_are_still_hits() {
        const BUDGET: u64 = 256 * 1024;
        const BODY: usize = 1024;
        let store = MemoryStore::new(BUDGET);
        let per_entry = u64::from(record(BODY).weight());
        // Twice what the protected fifth holds, well within the whole budget.
        let n = BUDGET / 5 / per_entry * 2;
        for i in 0..n {
            store.insert(key(i), record(BODY)).await;
            assert!(store.get(&key(i)).await.is_some(), "promoted");
        }
        let (entries, weighed) = store.usage().await;
        assert!(weighed <= BUDGET, "{weighed} bytes over the budget");
        let hits = {
            let mut hits = 0;
            for i in 0..n {
                hits += u64::from(store.get(&key(i)).await.is_some());
            }
            hits
        };
        assert_eq!(hits, n, "{entries} entries, {weighed} bytes");
    }

    #[tokio::test]
    async fn a_zero_budget_stores_nothing_and_does_not_panic() {
        let store = MemoryStore::new(0);
        store.insert(key(1), record(10)).await;
        assert!(store.get(&key(1)).await.is_none());
        assert_eq!(store.usage().await, (0, 0));
    }
}

#[cfg(test)]
mod races {
    use super::*;

    fn record() -> Arc<Record> {
        let now = now_millis();
        Arc::new(Record {
            status: http::StatusCode::OK,
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"answer"),
            trailers: None,
            created_at: now,
            expires_at: now + 60_000,
            meta: bytes::Bytes::new(),
            info: Default::default(),
        })
    }

    /// Readers racing the first replay's move to the protected segment
    /// always find the entry in one segment or the other, once it is in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_entry_moving_between_segments_is_never_missing() {
        let store = MemoryStore::new(64 << 20);
        for round in 0..2000u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&round.to_be_bytes());
            let key = Key::from_bytes(bytes);
            let inserted = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let readers: Vec<_> = (0..6)
                .map(|_| {
                    let store = store.clone();
                    let inserted = Arc::clone(&inserted);
                    tokio::spawn(async move {
                        loop {
                            let was_in = inserted.load(std::sync::atomic::Ordering::SeqCst);
                            let found = store.get(&key).await.is_some();
                            if was_in {
                                return found;
                            }
                            if found {
                                // Seen: every later look-up must see it too.
                                return store.get(&key).await.is_some();
                            }
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            store.insert(key, record()).await;
            inserted.store(true, std::sync::atomic::Ordering::SeqCst);
            for reader in readers {
                assert!(
                    reader.await.unwrap(),
                    "round {round}: the entry was missing"
                );
            }
        }
    }
}
