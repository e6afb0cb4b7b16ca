//! L1: an in-process `moka` cache weighed in bytes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{future::Cache, Expiry};

use crate::{
    key::Key,
    record::{now_millis, Record},
};

/// The in-process cache: a byte budget, and per-entry expiry equal to the
/// entry's remaining time to live.
///
/// Cheap to clone: moka's cache is itself a shared handle.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    cache: Cache<Key, Arc<Record>>,
}

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
        let cache = Cache::builder()
            .name("tower-idempotency-l1")
            .max_capacity(capacity_bytes)
            .weigher(|_: &Key, record: &Arc<Record>| record.weight())
            .expire_after(UntilRecordExpires)
            .build();
        Self { cache }
    }

    pub(crate) async fn get(&self, key: &Key) -> Option<Arc<Record>> {
        let record = self.cache.get(key).await?;
        // moka expires on its own clock; the record's wall-clock deadline is
        // the authority (an entry from L2 may be close to it).
        record.is_fresh_at(now_millis()).then_some(record)
    }

    pub(crate) async fn insert(&self, key: Key, record: Arc<Record>) {
        self.cache.insert(key, record).await;
    }

    pub(crate) async fn remove(&self, key: &Key) {
        self.cache.invalidate(key).await;
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Entries and weighed bytes, after pending maintenance.
    pub(crate) async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
