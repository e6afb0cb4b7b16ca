//! [`RedisStore`], and the state its clones share.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use tokio::{runtime::Handle, sync::broadcast, task::JoinHandle};

use super::{
    breaker::Breakers,
    builder::Settings,
    connection::Conn,
    counters::Pending,
    stream::{Leading, Readers},
    waiters::Waiters,
};
use crate::store::invalidation::Invalidation;

/// A Redis (or Redis Cluster) L2 shared by every instance of an application.
///
/// Cheap to clone. Build one per process and give it to the layer with
/// [`Builder::redis`](crate::builder::Builder::redis):
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
/// | `tidem:<ns>:{<key>}:stream` | stream | the answer being recorded, for waiters elsewhere to follow live, written only once one asks; expires shortly after its end |
/// | `tidem:stats` | hash | fleet counters: `hits_l1`, `hits_l2`, `misses`, `coalesced`, `upstream_calls`, `stored`; expires 30 days after the last flush |
/// | `tidem:<ns>:{<key>}:buckets` | string | how many requests asked for this key's sample buckets; expires with the entries |
/// | `tidem:{tenants}` | sorted set | tenant ids by requests, the heaviest 1,000 kept; expires 30 days after the last flush |
/// | `tidem:{tenants}:<id>` | hash | one tenant's `requests`, `upstream_calls`, `calls_saved`, `tokens_saved`, `micro_dollars_saved`; expires likewise |
/// | `tidem:events` | channel | completions (wake waiters), answers not stored (waiters go through), refreshes and purges (evict L1 everywhere), asks for a key's stream |
///
/// `<ns>` is 16 hex digits of the SHA-256 of the namespace, `<key>` the
/// request's [`Key`](crate::key::Key) in hex. Every key expires: an entry with its
/// record (its time to live is at most ten years), a lease within its lease
/// time, the counters a month after they last changed.
///
/// # Round trips
///
/// An L2 hit is one round trip, a plain `HGET` of the record, which costs
/// Redis what a `GET` does; a miss is three (that read, a Lua script that
/// looks up again or claims the lease atomically, then store-and-release-
/// and-notify), as it pays for an upstream call anyway. Hits, whether
/// answered from L1 or read from L2, are counted locally and flushed in
/// batches every [`flush_interval`](super::builder::RedisStoreBuilder::flush_interval), as
/// are the fleet totals ([`fleet_stats`](RedisStore::fleet_stats)); every
/// analytics read flushes this instance's counts first.
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
    /// The remote streams local waiters follow, read by one task.
    pub(super) readers: Arc<Readers>,
    /// The leases this store holds, which another instance's want may
    /// start a stream for.
    pub(super) leading: Leading,
    /// Purges and refreshes made anywhere, for the L1 caches of the layers
    /// on this store. Each engine holds its own receiver: no L1 is kept
    /// alive here.
    pub(super) invalidations: broadcast::Sender<Invalidation>,
    /// The runtime the store was connected on, which runs its tasks.
    pub(super) runtime: Handle,
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
        self.inner.invalidations.receiver_count()
    }

    /// A new receiver of the purges and refreshes made anywhere from now on,
    /// for an L1 to follow.
    pub(crate) fn invalidations(&self) -> broadcast::Receiver<Invalidation> {
        self.inner.invalidations.subscribe()
    }

    /// The runtime the store was connected on, where its tasks run.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.inner.runtime
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

impl Inner {
    pub(super) fn tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lease token no other claim has used: this instance and a sequence.
    pub(super) fn next_token(&self) -> String {
        format!("{}-{}", self.instance, self.leases.fetch_add(1, Relaxed))
    }

    /// Tells every L1 on this store (no L1 listening is not an error).
    pub(super) fn invalidate(&self, invalidation: Invalidation) {
        let _ = self.invalidations.send(invalidation);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks().drain(..).for_each(|task| task.abort());
    }
}
