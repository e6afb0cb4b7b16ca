//! [`RedisStore`], and the state its clones share.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError, Weak,
    },
};

use tokio::task::JoinHandle;

use super::{
    breaker::Breakers, builder::Settings, connection::Conn, counters::Pending, waiters::Waiters,
};
use crate::store::memory::MemoryStore;

/// A Redis (or Redis Cluster) L2 shared by every instance of an application.
///
/// Cheap to clone. Build one per process and give it to the layer with
/// [`Builder::redis`](crate::Builder::redis):
///
/// ```no_run
/// use tower_idempotency::{IdempotencyLayer, RedisStore};
///
/// # async fn build() -> Result<(), tower_idempotency::StoreError> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let layer = IdempotencyLayer::builder().redis(redis).build();
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// # Layout in Redis
///
/// Every key starts with the configured [prefix](super::builder::RedisStoreBuilder::prefix)
/// (default `tidem`) and a tag of the namespace, and hash-tags the request's
/// key so that an entry and its lease share a Redis Cluster slot:
///
/// | key | type | what |
/// |---|---|---|
/// | `tidem:<ns>:{<key>}` | hash | `r` the record, `hits`, `last_hit_at`, `created_at` (ms); expires with the entry |
/// | `tidem:<ns>:{<key>}:lease` | string | the token of the instance calling upstream for this key |
/// | `tidem:stats` | hash | fleet counters: `hits_l1`, `hits_l2`, `misses`, `coalesced`, `upstream_calls`, `stored`; expires 30 days after the last flush |
/// | `tidem:events` | channel | completions (wake waiters), answers not stored (waiters go through), refreshes and purges (evict L1 everywhere) |
///
/// `<ns>` is 16 hex digits of the SHA-256 of the namespace, `<key>` the
/// request's [`Key`](crate::Key) in hex. Every key expires: an entry with its
/// record (its time to live is at most ten years), a lease within its lease
/// time, the counters a month after they last changed.
///
/// # Round trips
///
/// An L2 hit is one round trip (a Lua script that reads the entry and counts
/// the hit); a miss is two (look-up-or-claim, then store-and-release-and-
/// notify). Hits answered from L1 are counted locally and flushed in
/// batches every [`flush_interval`](super::builder::RedisStoreBuilder::flush_interval), as
/// are the fleet totals ([`fleet_stats`](RedisStore::fleet_stats)).
///
/// # Single flight across instances
///
/// The instance whose look-up finds neither an entry nor a lease claims the
/// [lease](super::builder::RedisStoreBuilder::lease) and calls upstream; it renews the lease
/// while the call runs. Instances that find the lease held wait for a
/// message on the events channel, looking again every
/// [`poll_interval`](super::builder::RedisStoreBuilder::poll_interval) in case one is lost,
/// and take the lease over when it runs out. A lease is released on every
/// path: by the store-and-release script when the call completes, else when
/// its leader fails, panics or is cancelled.
///
/// # Failure
///
/// Every operation has a [timeout](super::builder::RedisStoreBuilder::timeout). On error or
/// timeout the request proceeds as if there were no L2; the error is counted
/// and logged once per burst, and a
/// [circuit breaker](super::builder::RedisStoreBuilder::circuit_breaker) stops trying for a
/// while after repeated failures, then probes. On a cluster there is a
/// breaker per range of slots, so a failing node only affects the keys it
/// owns. Bytes under our keys that do not decode are a miss and a log line.
///
/// Purges and refreshes reach every instance's L1 through the events
/// channel. When the subscription to it breaks (a restart, a cluster
/// failover) it moves to another node, and since messages may have been
/// missed meanwhile, every L1 on the store is cleared.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

/// What the clones of one [`RedisStore`] share.
pub(super) struct Inner {
    pub(super) conn: Conn,
    pub(super) prefix: String,
    pub(super) settings: Settings,
    pub(super) breakers: Breakers,
    pub(super) waiters: Arc<Waiters>,
    /// The L1 caches of the live layers on this store, evicted from when a
    /// purge or a refresh message arrives. A layer's engine holds its
    /// subscription: a dropped layer's L1 is not kept alive here.
    pub(super) subscribers: Mutex<Vec<Weak<L1Subscription>>>,
    pub(super) pending: Pending,
    /// Held while counters are sent, so a reader that flushes first sees
    /// every count a concurrent flush took.
    pub(super) flushing: tokio::sync::Mutex<()>,
    pub(super) errors: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) decode_errors: AtomicU64,
    /// This process's name in lease tokens and refresh messages.
    pub(super) instance: String,
    pub(super) leases: AtomicU64,
    /// The background tasks (subscription, flusher), stopped with the store.
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisStore {
    /// How many live layers' L1 caches this store evicts from on a purge or
    /// a refresh elsewhere.
    #[doc(hidden)]
    pub fn l1_subscribers(&self) -> usize {
        self.inner.subscribers().len()
    }

    /// Subscribes a layer's L1 to purges and refreshes made anywhere, for as
    /// long as the returned subscription lives.
    pub(crate) fn attach(&self, l1: MemoryStore) -> Arc<L1Subscription> {
        let subscription = Arc::new(L1Subscription { l1 });
        let mut subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.push(Arc::downgrade(&subscription));
        subscription
    }

    pub(crate) fn poll_interval(&self) -> std::time::Duration {
        self.inner.settings.poll_interval
    }

    /// Operations that failed or timed out.
    pub(crate) fn errors(&self) -> u64 {
        self.inner.errors.load(Relaxed)
    }

    /// Operations skipped while the circuit breaker was open.
    pub(crate) fn skipped(&self) -> u64 {
        self.inner.skipped.load(Relaxed)
    }

    /// Stored values that did not decode.
    pub(crate) fn decode_errors(&self) -> u64 {
        self.inner.decode_errors.load(Relaxed)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A layer's L1, subscribed to purges and refreshes made anywhere while
/// its engine holds this.
pub(crate) struct L1Subscription {
    pub(super) l1: MemoryStore,
}

impl Inner {
    pub(super) fn tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lease token no other claim has used: this instance and a sequence.
    pub(super) fn next_token(&self) -> String {
        format!("{}-{}", self.instance, self.leases.fetch_add(1, Relaxed))
    }

    /// Evicts `key` from every live layer's L1.
    pub(super) async fn evict(&self, key: &crate::key::Key) {
        for subscriber in self.subscribers() {
            subscriber.l1.remove(key).await;
        }
    }

    /// Clears every live layer's L1.
    pub(super) fn clear_l1(&self) {
        self.subscribers()
            .iter()
            .for_each(|subscriber| subscriber.l1.clear());
    }

    /// The live layers' L1 subscriptions; forgets those of dropped layers.
    fn subscribers(&self) -> Vec<Arc<L1Subscription>> {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.iter().filter_map(Weak::upgrade).collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks().drain(..).for_each(|task| task.abort());
    }
}
